"""Dangerous configurations are refused in one line naming the setting and the fix, before anything is
read or changed: no blast-radius limit, the collector holding the executor's write role. An apply with no
approval changes nothing; a config that lowers protection is refused or floored
(tests/executor/test_executor_safety_floors.py)."""

from __future__ import annotations

import pytest
import yaml

from cloudopt_pipelines.executor.policy import MAX_BLAST_RADIUS, ExecutorPolicy, PolicyError
from cloudopt_pipelines.executor_cli import execute_command
from cloudopt_pipelines.settings import SettingsError, load_settings
from tests.executor.conftest import DAY, dev_instance, executor_aws, instance, plan_row
from tests.executor.test_executor_asset import resources


@pytest.mark.parametrize("limit", ["max_actions_per_run", "max_actions_per_day", "max_actions_per_account"])
def test_a_limit_above_the_ceiling_is_no_blast_radius_and_is_refused(limit: str) -> None:
    assert getattr(ExecutorPolicy(**{limit: MAX_BLAST_RADIUS}), limit) == MAX_BLAST_RADIUS
    with pytest.raises(PolicyError) as refused:
        ExecutorPolicy(**{limit: MAX_BLAST_RADIUS + 1})
    message = str(refused.value)
    assert "\n" not in message and f"{limit}: {MAX_BLAST_RADIUS + 1}" in message and "no blast-radius limit" in message


def test_execute_with_an_unlimited_blast_radius_config_fails_in_one_line_and_changes_nothing(
    home, ec2, moto_url, tmp_path, monkeypatch
) -> None:
    iid = dev_instance(ec2)
    home.write_plan([plan_row(iid, "stop", {"state": "stopped"})])
    home.approve_all()
    config_file = tmp_path / "executor.yaml"
    config_file.write_text(yaml.safe_dump({"max_actions_per_day": 1_000_000, "max_calls_per_second": 0}))
    monkeypatch.setenv("CLOUDOPT_HOME", str(home.root))
    lines: list[str] = []
    code = execute_command(
        DAY, "apply", config_file, resources=resources(home, moto_url), echo=lambda m="", **_: lines.append(str(m))
    )
    assert code == 1
    (line,) = [line for line in lines if "no blast-radius limit" in line]
    assert "max_actions_per_day: 1000000" in line and "\n" not in line
    assert instance(ec2, iid)["State"]["Name"] == "running"
    assert home.paths.audit().decisions(DAY) == []


def test_apply_without_an_approval_changes_nothing(home, ec2, moto_url) -> None:
    iid = dev_instance(ec2)
    home.write_plan([plan_row(iid, "stop", {"state": "stopped"})])
    (decision,) = home.run(executor_aws(moto_url), mode="apply").decisions
    assert decision.outcome == "skipped" and decision.reason.startswith("not approved")
    assert instance(ec2, iid)["State"]["Name"] == "running"


@pytest.mark.parametrize("role", ["CloudoptReadOnly", "arn:aws:iam::{account_id}:role/Cloudopt"])
def test_the_collector_never_collects_with_the_executors_write_role(role: str) -> None:
    env = {"CLOUDOPT_ASSUME_ROLE": role, "CLOUDOPT_EXECUTOR_ROLE": role}
    with pytest.raises(SettingsError) as refused:
        load_settings(env)
    message = str(refused.value)
    assert "\n" not in message and "name the same role" in message and "its own role" in message
    settings = load_settings({**env, "CLOUDOPT_EXECUTOR_ROLE": "CloudoptExecutor"})
    assert (settings.aws.assume_role, settings.executor.role) == (role, "CloudoptExecutor")
