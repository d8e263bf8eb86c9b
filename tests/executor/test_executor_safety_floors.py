"""Issue 17 defect 15: a run config (`cloudopt execute --config`) cannot lower the protection and production
rules, and every audited decision records the policy in force."""

from __future__ import annotations

import dagster as dg
import pytest
import yaml

from cloudopt_pipelines.assets.actions import executed_actions
from cloudopt_pipelines.executor_cli import EXECUTED_ACTIONS_OP, execute_command
from tests.executor.conftest import DAY, dev_instance, instance, plan_row, run_instance
from tests.executor.test_executor_asset import resources


def materialise(home, moto_url: str, config: dict) -> dg.ExecuteInPlaceResult:
    return dg.materialize(
        [executed_actions],
        partition_key=DAY.isoformat(),
        instance=home.instance,
        resources=resources(home, moto_url),
        run_config={"ops": {EXECUTED_ACTIONS_OP: {"config": {"mode": "apply", **config}}}},
        raise_on_error=False,
    )


def test_a_config_cannot_switch_off_protection(home, ec2, moto_url) -> None:
    shouting = dev_instance(ec2, **{"cloudopt:protect": "TRUE"})
    custom = dev_instance(ec2, **{"keep-me": "please"})
    home.write_plan([plan_row(shouting, "stop", {"state": "stopped"}), plan_row(custom, "stop", {"state": "stopped"})])
    home.approve_all()
    config = {"protect_tag_key": "keep-me", "protect_tag_values": ["please"], "max_calls_per_second": 0}
    assert materialise(home, moto_url, config).success
    decisions = {r["resource_id"]: r for r in home.paths.audit().decisions(DAY)}
    assert decisions[shouting]["outcome"] == "skipped" and "cloudopt:protect=TRUE" in decisions[shouting]["reason"]
    assert decisions[custom]["outcome"] == "skipped" and "keep-me=please" in decisions[custom]["reason"]
    assert instance(ec2, shouting)["State"]["Name"] == "running" and instance(ec2, custom)["State"]["Name"] == "running"
    policy = decisions[shouting]["policy"]
    assert policy["protect_tag_keys"] == ["cloudopt:protect", "keep-me"]
    assert set(policy["protect_tag_values"]) == {"please", "true", "1", "yes"}
    assert policy["untagged_is_production"] is True


@pytest.mark.parametrize(
    ("lowering", "message"),
    [
        ({"untagged_is_production": False}, "untagged_is_production: false would lower a safety floor"),
        ({"production_allowed_actions": ["resize", "stop"]}, "production_allowed_actions may not include"),
    ],
)
def test_a_config_cannot_open_production(home, ec2, moto_url, tmp_path, monkeypatch, lowering, message) -> None:
    prod, untagged = run_instance(ec2, {"env": "prod"}, "m5.xlarge"), run_instance(ec2, {}, "m5.xlarge")
    home.write_plan([plan_row(prod, "stop", {"state": "stopped"}), plan_row(untagged, "stop", {"state": "stopped"})])
    home.approve_all()
    config_file = tmp_path / "executor.yaml"
    config_file.write_text(yaml.safe_dump({**lowering, "production_values": ["nothing-is-prod"]}))
    monkeypatch.setenv("CLOUDOPT_HOME", str(home.root))
    lines: list[str] = []
    code = execute_command(
        DAY, "apply", config_file, resources=resources(home, moto_url), echo=lambda m="", **_: lines.append(str(m))
    )
    assert code == 1 and any(message in line for line in lines), lines
    assert instance(ec2, prod)["State"]["Name"] == "running" and instance(ec2, untagged)["State"]["Name"] == "running"

    # Values added to the production list never remove the built-in ones.
    config_file.write_text(yaml.safe_dump({"production_values": ["nothing-is-prod"], "max_calls_per_second": 0}))
    assert (
        execute_command(DAY, "apply", config_file, resources=resources(home, moto_url), echo=lambda *a, **k: None) == 0
    )
    reasons = {r["resource_id"]: r["reason"] for r in home.paths.audit().decisions(DAY)}
    assert "production (live tag environment=prod)" in reasons[prod]
    assert "untagged counts as production" in reasons[untagged]
    assert instance(ec2, prod)["State"]["Name"] == "running" and instance(ec2, untagged)["State"]["Name"] == "running"
