"""Issue 17 defect 8: one executor at a time per home (a lock a crash releases), and the blast radius per day."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from cloudopt_pipelines.executor import ExecutorBusy, ExecutorPolicy, execute_day
from tests.executor.conftest import DAY, NOW, dev_instance, executor_aws, instance, plan_row

ROOT = Path(__file__).resolve().parents[2]
HOLDER = """
import sys
from pathlib import Path
from cloudopt_pipelines.executor import executor_lock
with executor_lock(Path(sys.argv[1]), "execute 2026-11-20 --mode apply", run_id="run-elsewhere"):
    print("locked", flush=True)
    sys.stdin.read()
"""


def test_a_second_executor_fails_naming_the_holder_and_a_killed_holder_frees_the_lock(home, ec2, moto_url) -> None:
    iid = dev_instance(ec2)
    home.write_plan([plan_row(iid, "stop", {"state": "stopped"})])
    home.approve_all()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(home.root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(ExecutorBusy) as busy:
            home.run(executor_aws(moto_url))
        message = str(busy.value)
        assert f"pid {holder.pid}" in message and "execute 2026-11-20 --mode apply" in message
        assert "run_id run-elsewhere" in message and str(home.root / "executor.lock") in message
        assert instance(ec2, iid)["State"]["Name"] == "running"  # nothing was done
        assert home.paths.audit().records() == []
    finally:
        holder.send_signal(signal.SIGKILL)  # a crash: the kernel releases the lock
        holder.wait()
    assert home.run(executor_aws(moto_url)).decisions[0].outcome == "applied"
    assert instance(ec2, iid)["State"]["Name"] == "stopped"


def test_blast_radius_counts_every_run_of_the_day_from_the_audit(home, ec2, moto_url) -> None:
    ids = [dev_instance(ec2) for _ in range(3)]
    home.write_plan(
        [plan_row(i, "stop", {"state": "stopped"}, monthly_savings_usd=10.0 + n) for n, i in enumerate(ids)]
    )
    home.approve_all()
    aws = executor_aws(moto_url)
    for _ in range(2):  # one change per run, two runs
        outcomes = [d.outcome for d in home.run(aws, max_actions_per_run=1, max_actions_per_day=2).decisions]
        assert outcomes.count("applied") == 1
    third = home.run(aws, max_actions_per_run=1, max_actions_per_day=2).decisions
    left = next(d for d in third if d.resource_id == ids[0])
    assert left.outcome == "skipped" and "max_actions_per_day=2 reached for 2026-11-20 (UTC)" in left.reason
    assert "2 change(s) by earlier runs" in left.reason
    assert instance(ec2, ids[0])["State"]["Name"] == "running"

    per_account = home.run(aws, max_actions_per_account=2).decisions
    assert "max_actions_per_account=2 reached for account" in next(
        d.reason for d in per_account if d.resource_id == ids[0]
    )
    # The next UTC day starts a new count.
    result, _ = execute_day(
        home.lake,
        home.paths,
        DAY,
        "apply",
        aws,
        ExecutorPolicy(max_actions_per_day=2, max_calls_per_second=0),
        now=lambda: NOW + timedelta(days=1),
        checks=home.checks,
    )
    assert next(d for d in result.decisions if d.resource_id == ids[0]).outcome == "applied"
    assert instance(ec2, ids[0])["State"]["Name"] == "stopped"
