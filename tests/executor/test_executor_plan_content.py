"""Issue 17 defect 9: approvals and the plan check are bound to the plan rows' content hash, not the plan id."""

from __future__ import annotations

import pyarrow as pa
import pytest

from cloudopt_pipelines.executor.model import PlanError
from cloudopt_pipelines.executor.service import approve
from cloudopt_pipelines.storage.digest import table_sha256
from cloudopt_pipelines.storage.schemas import PORTFOLIO_PLAN
from tests.executor.conftest import DAY, dev_instance, executor_aws, instance, plan_row


def edit_plan(home, resource_id: str, **changes: object) -> None:
    """Edit one row of the plan partition by hand, keeping its plan id."""
    rows = home.lake.read("portfolio_plan", day=DAY).to_pylist()
    for r in rows:
        if r["resource_id"] == resource_id:
            r.update(changes)
    home.lake.write("portfolio_plan", pa.Table.from_pylist(rows, schema=PORTFOLIO_PLAN), day=DAY)


def test_a_hand_edited_plan_partition_keeping_its_plan_id_is_refused(home, ec2, moto_url) -> None:
    iid, kept = dev_instance(ec2), dev_instance(ec2)
    home.write_plan([plan_row(iid, "stop", {"state": "stopped"}), plan_row(kept, "keep", {}, option_name="keep")])
    home.approve_all()
    edit_plan(home, kept, action="stop", option_name="stop")  # keep edited to stop, same plan_id
    aws = executor_aws(moto_url)
    for attempt in (
        lambda: home.run(aws, mode="dry_run"),
        lambda: approve(home.lake, home.paths, DAY, "eve", checks=home.checks),
    ):
        with pytest.raises(PlanError) as refused:
            attempt()
        message = str(refused.value)
        assert "is not the one its constraint check passed on" in message and "plan-1" in message
        assert "re-materialise plan/portfolio_plan" in message
    assert home.paths.audit().records() == []
    assert instance(ec2, kept)["State"]["Name"] == "running" and instance(ec2, iid)["State"]["Name"] == "running"


def test_an_approval_is_bound_to_the_rows_it_approved(home, ec2, moto_url) -> None:
    iid = dev_instance(ec2)
    home.write_plan([plan_row(iid, "stop", {"state": "stopped"})])
    home.approve_all()
    edit_plan(home, iid, monthly_savings_usd=999.0)
    home.write_check("plan-1", passed=True)  # even if the check were run again on the edited rows
    decision = home.run(executor_aws(moto_url)).decisions[0]
    assert decision.outcome == "skipped" and "rows changed since, under the same plan id" in decision.reason
    assert "approve again" in decision.reason
    assert instance(ec2, iid)["State"]["Name"] == "running"
    home.approve_all(by="frank")  # approving the rows as they are now works
    assert home.run(executor_aws(moto_url)).decisions[0].outcome == "applied"


def test_the_content_hash_ignores_row_order_and_sees_every_value() -> None:
    rows = [{**plan_row(f"i-{n}", "stop", {}), "date": DAY, "plan_id": "p"} for n in range(3)]
    table = pa.Table.from_pylist(rows, schema=PORTFOLIO_PLAN)
    assert table_sha256(table) == table_sha256(pa.Table.from_pylist(rows[::-1], schema=PORTFOLIO_PLAN))
    rows[1]["reason"] = "edited"
    assert table_sha256(table) != table_sha256(pa.Table.from_pylist(rows, schema=PORTFOLIO_PLAN))
