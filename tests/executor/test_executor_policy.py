"""The executor's pure decisions: cron windows, protection, production, blast radius, rate, approvals, plan rows."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, date, datetime

import pyarrow as pa
import pytest

from cloudopt_pipelines.executor.approvals import ApprovalError, find_approval, new_approval
from cloudopt_pipelines.executor.model import PlanError, action_id_for, actions_from_plan
from cloudopt_pipelines.executor.policy import (
    BlastRadius,
    ChangeWindow,
    Cron,
    ExecutorPolicy,
    PolicyError,
    RateLimiter,
)
from cloudopt_pipelines.storage.schemas import PORTFOLIO_PLAN

DAY = date(2026, 11, 20)


@pytest.mark.parametrize(
    ("expression", "moment", "expected"),
    [
        ("0 22 * * 1-5", datetime(2026, 11, 20, 22, 0), True),  # Friday 22:00
        ("0 22 * * 1-5", datetime(2026, 11, 21, 22, 0), False),  # Saturday
        ("*/15 * * * *", datetime(2026, 11, 21, 3, 45), True),
        ("*/15 * * * *", datetime(2026, 11, 21, 3, 46), False),
        ("30 2 1 * sun", datetime(2026, 11, 1, 2, 30), True),  # both day fields: either matches
        ("30 2 1 * sun", datetime(2026, 11, 22, 2, 30), True),
        ("30 2 1 * sun", datetime(2026, 11, 23, 2, 30), False),
        ("0 0 * jan,nov 7", datetime(2026, 11, 22, 0, 0), True),  # 7 = Sunday, month names
    ],
)
def test_cron_matches(expression: str, moment: datetime, expected: bool) -> None:
    assert Cron.parse(expression).matches(moment) is expected


@pytest.mark.parametrize("bad", ["0 25 * * *", "* * *", "61 * * * *", "a b c d e", "5-1 * * * *"])
def test_bad_cron_is_a_clear_error(bad: str) -> None:
    with pytest.raises(PolicyError, match="cron"):
        Cron.parse(bad)


def test_window_open_closed_and_next_opening_in_its_time_zone() -> None:
    window = ChangeWindow(cron="0 22 * * 1-5", duration_minutes=120, timezone="Europe/Paris", name="nightly")
    assert window.is_open(datetime(2026, 11, 20, 21, 30, tzinfo=UTC))  # 22:30 in Paris
    assert not window.is_open(datetime(2026, 11, 20, 12, 0, tzinfo=UTC))
    nxt = window.next_opening(datetime(2026, 11, 20, 12, 0, tzinfo=UTC))
    assert nxt is not None and nxt.isoformat() == "2026-11-20T22:00:00+01:00"
    with pytest.raises(PolicyError, match="time zone"):
        ChangeWindow(cron="0 22 * * *", duration_minutes=60, timezone="Mars/Olympus")


def test_windows_govern_by_action_type_and_environment() -> None:
    policy = ExecutorPolicy(
        change_windows=(
            ChangeWindow(cron="0 22 * * *", duration_minutes=60, action_types=("resize",), name="resizes"),
            ChangeWindow(cron="0 3 * * *", duration_minutes=60, environments=("staging",), name="staging"),
        )
    )
    noon = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
    ok, why = policy.window_check("resize", {"env": "dev"}, noon)
    assert not ok and "resizes" in why and "next opens 2026-11-20T22:00:00+00:00" in why
    assert policy.window_check("stop", {"env": "dev"}, noon) == (True, "")  # no window governs it: at once
    ok, why = policy.window_check("stop", {"env": "staging"}, noon)
    assert not ok and "staging" in why
    assert policy.window_check("resize", {"env": "dev"}, datetime(2026, 11, 20, 22, 10, tzinfo=UTC))[0]


def test_protection_and_production_from_tags() -> None:
    policy = ExecutorPolicy()
    assert policy.protection({"cloudopt:protect": "TRUE"})[0]
    assert not policy.protection({"cloudopt:protect": "false"})[0]
    assert ExecutorPolicy(protect_tag_key="do-not-touch").protection({"do-not-touch": "yes"})[0]
    ok, why = policy.production_check("resize", {"env": "prod"})
    assert not ok and "production" in why
    assert policy.production_check("stop", {})[0] is False  # untagged counts as production
    assert policy.production_check("delete_volume", {"Environment": "production"})[0]
    assert policy.production_check("resize", {"env": "dev"})[0]
    with pytest.raises(PolicyError, match="production_allowed_actions may not include"):
        ExecutorPolicy(production_allowed_actions=("resize",))  # a safety floor (issue 17 defect 15)


def test_blast_radius_per_run_and_per_account() -> None:
    blast = BlastRadius(per_run=3, per_account=2)
    admitted = [blast.admit(a)[0] for a in ["a", "a", "a", "b", "b"]]
    assert admitted == [True, True, False, True, False]
    assert "max_actions_per_run=3" in blast.admit("c")[1]


def test_rate_limiter_spaces_calls() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    limiter = RateLimiter(4.0, clock=lambda: now[0], sleep=sleep)
    for _ in range(5):
        limiter.acquire()
    assert slept == pytest.approx([0.25] * 4)
    assert limiter.waited == pytest.approx(1.0)


def plan_table(plan_ids: list[str], actions: list[str]) -> pa.Table:
    rows = [
        {
            "date": DAY,
            "plan_id": p,
            "account_id": "123456789012",
            "resource_id": f"i-{n}",
            "region": "us-east-1",
            "option_name": a,
            "action": a,
            "proposed_config": "{}",
            "monthly_savings_usd": float(n),
        }
        for n, (p, a) in enumerate(zip(plan_ids, actions, strict=True))
    ]
    return pa.Table.from_pylist(rows, schema=PORTFOLIO_PLAN)


def test_plan_rows_become_actions_with_stable_ids() -> None:
    plan_id, actions = actions_from_plan(plan_table(["p1"] * 3, ["keep", "stop", "terminate"]), DAY)
    assert plan_id == "p1"
    assert [a.action for a in actions] == ["terminate", "stop"]  # keep is no action; by savings
    assert actions[0].action_id == action_id_for("p1", "123456789012", "i-2", "terminate")
    assert actions_from_plan(plan_table(["p1"] * 3, ["keep", "stop", "terminate"]), DAY)[1] == actions
    with pytest.raises(PlanError, match="several plan ids"):
        actions_from_plan(plan_table(["p1", "p2"], ["stop", "stop"]), DAY)


def test_approvals_all_never_covers_terminate_and_stale_ones_approve_nothing() -> None:
    _, actions = actions_from_plan(plan_table(["p1"] * 2, ["stop", "terminate"]), DAY)
    stop, terminate = sorted(actions, key=lambda a: a.action)
    everything = new_approval("p1", DAY, actions, "alice", all_actions=True)
    assert find_approval(stop, [everything])[0] == everything
    approval, why = find_approval(terminate, [everything])
    assert approval is None and "--all does not cover it" in why
    named = new_approval("p1", DAY, actions, "bob", [terminate.action_id])
    assert find_approval(terminate, [everything, named])[0] == named

    _, replanned = actions_from_plan(plan_table(["p2"] * 2, ["stop", "terminate"]), DAY)
    approval, why = find_approval(min(replanned, key=lambda a: a.action), [everything])
    assert approval is None and "stale approval" in why and "p1" in why and "p2" in why
    with pytest.raises(ApprovalError, match="not actions of plan"):
        new_approval("p1", DAY, actions, "alice", ["act-000000000000"])
    with pytest.raises(ApprovalError, match="--by"):
        new_approval("p1", DAY, actions, " ", all_actions=True)


def test_executor_package_never_imports_dagster() -> None:
    code = (
        "import sys, cloudopt_pipelines.executor, cloudopt_pipelines.executor.actions; "
        "sys.exit(1 if 'dagster' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
