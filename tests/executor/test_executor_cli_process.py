"""`cloudopt rollback --by ""` is a usage error (issue 17 defect 19); `cloudopt execute` in its own process
always exits cleanly, no native thread left running at exit (defect 24)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cloudopt_pipelines.cli import app
from tests.executor.conftest import DAY, EXECUTOR_ROLE, dev_instance, executor_aws, instance, plan_row

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("by", ["", "   ", "\t"])
def test_rollback_by_nobody_is_a_usage_error(home, ec2, moto_url, monkeypatch, by: str) -> None:
    iid = dev_instance(ec2)
    home.write_plan([plan_row(iid, "stop", {"state": "stopped"})])
    home.approve_all()
    action_id = home.run(executor_aws(moto_url)).decisions[0].action_id
    monkeypatch.setenv("CLOUDOPT_HOME", str(home.root))
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)
    result = CliRunner().invoke(app, ["rollback", action_id, "--by", by, "--mode", "apply"])
    assert result.exit_code == 2 and "--by NAME" in result.output
    assert instance(ec2, iid)["State"]["Name"] == "stopped"
    assert [r["outcome"] for r in home.paths.audit().decisions(DAY)] == ["applied"]


def test_cloudopt_execute_exits_cleanly_every_time(home, ec2, moto_url) -> None:
    iid = dev_instance(ec2)
    home.write_plan([plan_row(iid, "stop", {"state": "stopped"})])
    home.approve_all()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "CLOUDOPT_HOME": str(home.root),
        "AWS_ENDPOINT_URL": moto_url,
        "CLOUDOPT_EXECUTOR_ROLE": EXECUTOR_ROLE,
    }
    command = [sys.executable, "-c", "from cloudopt_pipelines.cli import app; app()", "execute", "--date", str(DAY)]
    for _ in range(4):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, (done.returncode, done.stdout[-2000:], done.stderr[-4000:])
        assert "terminate called" not in done.stderr and "would_apply" in done.stdout
    assert instance(ec2, iid)["State"]["Name"] == "running"
