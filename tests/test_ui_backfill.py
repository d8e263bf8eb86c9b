"""A backfill launched the way the UI launches it: GraphQL on a real dagster-webserver, run by a real daemon."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from cloudopt_pipelines.automation import CATALOG_JOB, WAREHOUSE_JOB, WAREHOUSE_SENSOR
from cloudopt_pipelines.definitions import build_definitions, partitions_for
from cloudopt_pipelines.orchestration import ensure_instance, register_accounts
from cloudopt_pipelines.settings import Settings
from cloudopt_pipelines.storage.lake import Lake
from tests.conftest import DEMO_ACCOUNTS, DEMO_DAYS

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DAILY_ASSETS = [
    ["raw", "resources"],
    ["raw", "utilization_5m"],
    ["features", "stg_utilization_5m"],
    ["features", "utilization_daily"],
]
BACKFILLED = {
    "resources",
    "utilization_5m",
    "cluster_metrics_5m",
    "stg_utilization_5m",
    "stg_cluster_metrics_5m",
    "utilization_daily",
}

LAUNCH = """
mutation Launch($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
  }
}"""
STATUS = """
query Status($id: String!) {
  partitionBackfillOrError(backfillId: $id) { ... on PartitionBackfill { status } ... on PythonError { message } }
}"""
MATERIALIZED = """
query Materialized($path: [String!]!) {
  assetOrError(assetKey: {path: $path}) {
    ... on Asset { assetMaterializations(limit: 50) { partition } }
  }
}"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _graphql(url: str, query: str, variables: dict) -> dict:
    body = json.dumps({"query": query, "variables": variables}).encode()
    request = urllib.request.Request(f"{url}/graphql", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        payload = json.loads(response.read())
    assert "errors" not in payload, payload
    return payload["data"]


@pytest.fixture
def dagster_services(fresh_home: Settings, tmp_path: Path) -> Iterator[str]:
    """dagster-webserver and dagster-daemon on the home's instance, as `make dev` runs them."""
    instance = ensure_instance(fresh_home)
    register_accounts(instance, DEMO_ACCOUNTS)
    defs = build_definitions(fresh_home)
    defs.resolve_job_def(CATALOG_JOB).execute_in_process(instance=instance)
    defs.resolve_job_def(WAREHOUSE_JOB).execute_in_process(instance=instance)  # so only the backfill is new
    env = {
        **os.environ,
        "CLOUDOPT_HOME": str(fresh_home.home),
        "DAGSTER_HOME": str(fresh_home.dagster_home),
        "CLOUDOPT_ENV": "demo",
    }
    port = _free_port()
    logs = [open(tmp_path / name, "wb") for name in ("webserver.log", "daemon.log")]
    procs = [
        subprocess.Popen(
            [str(BIN / "dagster-webserver"), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
            cwd=REPO,
            env=env,
            stdout=logs[0],
            stderr=subprocess.STDOUT,
        ),
        subprocess.Popen(
            [str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"],
            cwd=REPO,
            env=env,
            stdout=logs[1],
            stderr=subprocess.STDOUT,
        ),
    ]
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600  # a bound, not a speed: a busy machine starts slowly
        while True:
            try:
                urllib.request.urlopen(f"{url}/server_info", timeout=5).read()
                break
            except OSError:
                if time.monotonic() > deadline or procs[0].poll() is not None:
                    raise RuntimeError((tmp_path / "webserver.log").read_text()[-3000:]) from None
                time.sleep(1)
        yield url
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        for log in logs:
            log.close()


def _backfill(url: str, selection: list[list[str]], keys: list[str], title: str, log: Path) -> str:
    """Launch a backfill as the UI does and wait until it is done (the wait is a bound, not a speed)."""
    params = {"assetSelection": [{"path": p} for p in selection], "partitionNames": keys, "title": title}
    launched = _graphql(url, LAUNCH, {"params": params})["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    deadline = time.monotonic() + 1200
    status = None
    while time.monotonic() < deadline:
        status = _graphql(url, STATUS, {"id": launched["backfillId"]})["partitionBackfillOrError"]["status"]
        if status in {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}:
            break
        time.sleep(2)
    assert status in {"COMPLETED", "COMPLETED_SUCCESS"}, (title, status, log.read_text()[-3000:])
    return launched["backfillId"]


def test_backfill_from_the_ui_materialises_the_range_and_the_ui_shows_it(
    dagster_services: str, fresh_home: Settings, tmp_path: Path
) -> None:
    keys = [f"{account}|{DEMO_DAYS[0].isoformat()}" for account in DEMO_ACCOUNTS]
    graph = build_definitions(fresh_home).resolve_asset_graph()
    demo = partitions_for(fresh_home).account_daily
    selection = [k.path for k in graph.get_all_asset_keys() if graph.get(k).partitions_def == demo]
    assert [p for p in DAILY_ASSETS if p not in selection] == []
    # The collection and the daily features: one backfill policy and identity mappings, so the daemon
    # makes one run of the range (both accounts of the day: the dimension with fewer keys held fixed).
    selection = [p for p in selection if p[-1] in BACKFILLED]
    backfill = _backfill(dagster_services, selection, keys, "collection and features", tmp_path / "daemon.log")

    instance = dg.DagsterInstance.from_config(str(fresh_home.dagster_home))
    for path in DAILY_ASSETS:
        assert instance.get_materialized_partitions(dg.AssetKey(path)) == set(keys), path
    backfill_runs = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/backfill": backfill}))
    assert [
        (r.tags["dagster/asset_partition_range_start"], r.tags["dagster/asset_partition_range_end"])
        for r in backfill_runs
    ] == [(keys[0], keys[-1])]

    # The daemon's warehouse_refresh sensor rebuilds the warehouse once after the backfill (its ticks
    # during a backfill wait for it); tests/test_automation.py holds N runs to exactly one rebuild.
    by_sensor = dg.RunsFilter(job_name=WAREHOUSE_JOB, tags={"dagster/sensor_name": WAREHOUSE_SENSOR})
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        refreshes = instance.get_runs(filters=by_sensor)
        if refreshes and all(r.is_finished for r in refreshes):
            break
        time.sleep(2)
    assert len(refreshes) == 1, (
        [(r.tags.get("dagster/run_key"), r.status) for r in refreshes],
        (tmp_path / "daemon.log").read_text()[-3000:],
    )
    assert {r.status for r in refreshes} == {dg.DagsterRunStatus.SUCCESS}, (tmp_path / "daemon.log").read_text()[-3000:]

    # The one run collected both partitions and computed utilization_daily's in one statement.
    runs = {
        name: {r.run_id for r in instance.fetch_materializations(dg.AssetKey(path), limit=10).records}
        for name, path in (("daily", ["features", "utilization_daily"]), ("raw", ["raw", "utilization_5m"]))
    }
    assert runs["daily"] == runs["raw"] == {backfill_runs[0].run_id}, runs
    lake = Lake(fresh_home.lake_dir)
    assert lake.partitions("utilization_daily") == [(a, DEMO_DAYS[0].isoformat()) for a in DEMO_ACCOUNTS]
    shown = _graphql(dagster_services, MATERIALIZED, {"path": ["features", "utilization_daily"]})
    assert {m["partition"] for m in shown["assetOrError"]["assetMaterializations"]} == set(keys)
