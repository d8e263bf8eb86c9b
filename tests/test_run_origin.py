"""Runs made by `cloudopt run` belong to the code location workspace.yaml names, and re-execute from it.

The UI loads the location from workspace.yaml; a run it can re-execute without a "different version"
warning records that location's origin and the job snapshot the location serves now.
"""

import os
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._core.definitions.selector import JobSubsetSelector
from dagster._core.execution.plan.resume_retry import ReexecutionStrategy
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import WorkspaceFileTarget

from cloudopt_pipelines.assets.plan import PLAN_JOB
from cloudopt_pipelines.automation import CATALOG_JOB, DAILY_JOB, WAREHOUSE_JOB
from cloudopt_pipelines.orchestration import (
    LOCATION_NAME,
    TAG_LAUNCHED_BY,
    daemon_runs_queue,
    ensure_instance,
    run_range,
    run_worker_pid,
)
from cloudopt_pipelines.settings import Settings
from tests.conftest import DEMO_ACCOUNTS
from tests.processes import terminate

REPO = Path(__file__).resolve().parents[1]
WORKSPACE = REPO / "workspace.yaml"
BOUND_S = 600  # a hung run, not a speed
DAY = date(2026, 11, 16)


def test_workspace_yaml_names_the_location_runs_are_launched_in() -> None:
    [entry] = yaml.safe_load(WORKSPACE.read_text())["load_from"]
    assert entry["python_module"]["location_name"] == LOCATION_NAME
    assert entry["python_module"]["module_name"] == "cloudopt_pipelines.definitions"


def test_runs_of_cloudopt_run_have_the_locations_origin_and_re_execute(
    demo_home: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    instance = ensure_instance(demo_home)
    runs = instance.get_runs(filters=dg.RunsFilter(tags={TAG_LAUNCHED_BY: "cloudopt run"}))
    assert {r.job_name for r in runs} >= {DAILY_JOB, PLAN_JOB, WAREHOUSE_JOB, CATALOG_JOB}
    for run in runs:
        origin = run.remote_job_origin
        assert origin is not None, f"run {run.run_id} of {run.job_name} has no code location"
        assert origin.location_name == LOCATION_NAME
        # Executed by a run worker the run launcher started, not by the command's own process.
        assert run_worker_pid(instance, run.run_id) not in (None, run.tags["cloudopt/pid"])
    daily = next(r for r in runs if r.job_name == DAILY_JOB and r.status == dg.DagsterRunStatus.SUCCESS)

    # As the UI does: the location from workspace.yaml, the same job snapshot, a re-execution launched.
    # The code server reads the settings from the environment, as under `dagster dev`.
    monkeypatch.setenv("CLOUDOPT_HOME", str(demo_home.home))
    monkeypatch.setenv("CLOUDOPT_ENV", "demo")
    target = WorkspaceFileTarget(paths=[str(WORKSPACE)])
    with WorkspaceProcessContext(instance, target, version=dg.__version__) as context:
        request = context.create_request_context()
        location = request.get_code_location(daily.remote_job_origin.location_name)
        [repository] = location.get_repositories().values()
        assert repository.name == daily.remote_job_origin.repository_origin.repository_name
        remote_job = location.get_job(JobSubsetSelector(LOCATION_NAME, repository.name, DAILY_JOB, None))
        assert daily.job_snapshot_id == remote_job.identifying_job_snapshot_id, "the UI would warn: different version"
        again = instance.create_reexecuted_run(
            request_context=request,
            parent_run=daily,
            code_location=location,
            remote_job=remote_job,
            strategy=ReexecutionStrategy.ALL_STEPS,
            run_config={"execution": {"config": {"in_process": {}}}},
            use_parent_run_tags=True,
        )
        instance.launch_run(again.run_id, request)
        finished = _wait(instance, again.run_id)
    assert finished.status == dg.DagsterRunStatus.SUCCESS
    assert finished.parent_run_id == daily.run_id
    assert finished.tags["dagster/partition"] == daily.tags["dagster/partition"]


def _wait(instance: dg.DagsterInstance, run_id: str) -> dg.DagsterRun:
    deadline = time.monotonic() + BOUND_S
    while time.monotonic() < deadline:
        run = instance.get_run_by_id(run_id)
        assert run is not None
        if run.is_finished:
            return run
        time.sleep(1)
    raise AssertionError(f"run {run_id} did not finish within {BOUND_S} s")


def test_with_a_live_daemon_cloudopt_run_submits_a_backfill_to_the_queue(fresh_home: Settings) -> None:
    env = {**os.environ, "CLOUDOPT_HOME": str(fresh_home.home), "CLOUDOPT_ENV": "demo"}
    env["DAGSTER_HOME"] = str(fresh_home.dagster_home)
    instance = ensure_instance(fresh_home)
    assert isinstance(instance.run_coordinator, dg.QueuedRunCoordinator)
    assert not daemon_runs_queue(instance)  # no daemon yet: runs would be launched directly
    log_path = fresh_home.home / "daemon.log"
    with open(log_path, "wb") as log:
        daemon = subprocess.Popen(
            [str(Path(sys.executable).with_name("dagster-daemon")), "run", "-w", str(WORKSPACE)],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + BOUND_S
            while not daemon_runs_queue(instance):
                assert daemon.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
                time.sleep(1)
            result = run_range(DAY, DAY, [DEMO_ACCOUNTS[0]], settings=fresh_home, progress=lambda _: None)
        finally:
            terminate(daemon)
    assert not result.failed, result.failed
    [partition] = [o for o in result.outcomes if o.account_id == DEMO_ACCOUNTS[0]]
    run = instance.get_run_by_id(partition.run_id)
    backfill_id = run.tags.get("dagster/backfill")
    assert backfill_id is not None, "the partition did not run as part of a backfill"
    assert instance.get_backfill(backfill_id).status.value in ("COMPLETED", "COMPLETED_SUCCESS")
    assert run.remote_job_origin is not None and run.remote_job_origin.location_name == LOCATION_NAME
    assert run.tags["dagster/partition"] == f"{DEMO_ACCOUNTS[0]}|{DAY.isoformat()}"
