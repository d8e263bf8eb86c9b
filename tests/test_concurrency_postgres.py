"""Runs of different partitions at the same time, on a Dagster instance backed by a real PostgreSQL server."""

import itertools
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path

import dagster as dg
import duckdb
import pytest
from dagster._core.execution.backfill import PartitionBackfill

from cloudopt_pipelines.automation import BACKFILL_IN_PROGRESS, CATALOG_JOB, WAREHOUSE_JOB, WAREHOUSE_SENSOR
from cloudopt_pipelines.bench.e2e import ScaledDemoSource, build_fleet
from cloudopt_pipelines.definitions import build_definitions
from cloudopt_pipelines.orchestration import ensure_instance, register_accounts
from cloudopt_pipelines.resources.sources import DemoSourceResource
from cloudopt_pipelines.settings import Settings
from cloudopt_pipelines.sources.base import Collected, Collector
from cloudopt_pipelines.sources.demo import DemoCollector
from cloudopt_pipelines.storage.lake import Lake
from tests.conftest import DEMO_ACCOUNTS, DEMO_DAYS
from tests.processes import terminate

RENDEZVOUS_TIMEOUT_SECONDS = 300
REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TEMPLATE = REPO / "deploy" / "dagster.postgres.yaml"
MAX_CONCURRENT_RUNS = 3
BACKFILL_ACCOUNTS = 3
BACKFILL_DAYS = 14
# What DuckDB says when a second process opens a database file another one writes.
# The collection and the daily statistics, as tests/test_ui_backfill.py backfills them.
BACKFILLED = (
    ["raw", "resources"],
    ["raw", "utilization_5m"],
    ["raw", "cluster_metrics_5m"],
    ["features", "stg_utilization_5m"],
    ["features", "stg_cluster_metrics_5m"],
    ["features", "utilization_daily"],
)
DUCKDB_LOCK_ERRORS = ("Could not set lock", "Conflicting lock")
PG_BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)), None)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_postgres(*args: str) -> None:
    subprocess.run(["runuser", "-u", "postgres", "--", *args], check=True, capture_output=True)


@contextmanager
def running_postgres(database: str, prefix: str, options: str = "") -> Iterator[int]:
    """A throwaway PostgreSQL server (Debian's binaries, installed by .ci/run) on a free loopback port with
    an empty ``database``; yields the port, stops the server and removes its files at the end."""
    if PG_BIN is None or shutil.which("runuser") is None:
        pytest.fail("PostgreSQL server binaries not found: install Debian's 'postgresql' package (.ci/run does)")
    # Not under pytest's tmp_path: the postgres user cannot enter root's private temp folders.
    root = Path(tempfile.mkdtemp(prefix=prefix))
    root.chmod(0o755)
    shutil.chown(root, "postgres")
    port = _free_port()
    _as_postgres(str(PG_BIN / "initdb"), "-D", str(root / "data"), "-U", "postgres", "--auth=trust")
    server_options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 {options}".rstrip()
    _as_postgres(
        str(PG_BIN / "pg_ctl"), "-D", str(root / "data"), "-o", server_options, "-l", str(root / "log"), "-w", "start"
    )
    try:
        subprocess.run(
            ["psql", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-c", f"CREATE DATABASE {database}"],
            check=True,
            capture_output=True,
        )
        yield port
    finally:
        _as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(root / "data"), "-m", "fast", "stop")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres() -> Iterator[int]:
    """A throwaway PostgreSQL server on a free loopback port with the database ``dagster``."""
    with running_postgres("dagster", "cloudopt-pg-", "-c max_connections=200") as port:
        yield port


class _RendezvousCollector(DemoCollector):
    """The demo fleet, but an account's inventory is served only once every party's run has asked for
    its own: both runs are then under way at once, however fast or busy the machine is."""

    def __init__(self, folder: Path, parties: int) -> None:
        super().__init__()
        self.folder, self.parties = folder, parties

    def collect_inventory(self, account_id: str, day: date) -> Collected:
        (self.folder / account_id).touch()
        deadline = time.monotonic() + RENDEZVOUS_TIMEOUT_SECONDS
        while len(list(self.folder.iterdir())) < self.parties:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the other run never reached its inventory within {RENDEZVOUS_TIMEOUT_SECONDS} s")
            time.sleep(0.05)
        return super().collect_inventory(account_id, day)


class _RendezvousSource(DemoSourceResource):
    """The demo source whose runs meet at the inventory step (see ``_RendezvousCollector``)."""

    folder: str
    parties: int

    def get_collector(self) -> Collector:
        return _RendezvousCollector(Path(self.folder), self.parties)


def _run_one_account(home: str, account: str, day: str, result_queue) -> None:
    from cloudopt_pipelines.orchestration import run_range

    settings = Settings(home=Path(home), env="demo")
    source = _RendezvousSource(folder=str(Path(home) / "rendezvous"), parties=len(DEMO_ACCOUNTS))
    try:
        outcome = run_range(
            date.fromisoformat(day),
            date.fromisoformat(day),
            accounts=[account],
            settings=settings,
            source=source,
            progress=lambda _: None,
        )
        result_queue.put((account, [o.error for o in outcome.failed]))
    except BaseException as exc:  # reported to the parent, which asserts on it
        result_queue.put((account, [repr(exc)]))


def test_parallel_runs_of_different_partitions_never_conflict(postgres: int, tmp_path: Path) -> None:
    home = tmp_path / "cloudopt"
    (home / "dagster").mkdir(parents=True)
    (home / "rendezvous").mkdir()
    # SQLAlchemy 2.1 maps postgresql:// to psycopg 3, which dagster-postgres's NOTIFY does not support.
    (home / "dagster" / "dagster.yaml").write_text(
        f"""
storage:
  postgres:
    postgres_db:
      hostname: 127.0.0.1
      port: {postgres}
      username: postgres
      password: ''
      db_name: dagster
      scheme: postgresql+psycopg2
concurrency:
  pools:
    default_limit: 1
telemetry:
  enabled: false
"""
    )
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    day = DEMO_DAYS[0].isoformat()
    workers = [context.Process(target=_run_one_account, args=(str(home), a, day, results)) for a in DEMO_ACCOUNTS]
    for worker in workers:
        worker.start()
    outcomes = dict(results.get(timeout=600) for _ in workers)
    for worker in workers:
        worker.join(timeout=60)
    assert outcomes == {a: [] for a in DEMO_ACCOUNTS}

    instance = dg.DagsterInstance.from_config(str(home / "dagster"))
    assert type(instance.run_storage).__name__ == "PostgresRunStorage"
    expected = {f"{a}|{day}" for a in DEMO_ACCOUNTS}
    for key in (["raw", "resources"], ["raw", "utilization_5m"], ["features", "utilization_daily"]):
        assert instance.get_materialized_partitions(dg.AssetKey(key)) == expected
    runs = instance.get_runs(filters=dg.RunsFilter(job_name="daily_pipeline"))
    assert len(runs) == 2 and all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
    started = sorted(instance.get_run_record_by_id(r.run_id).start_time for r in runs)
    ended = sorted(instance.get_run_record_by_id(r.run_id).end_time for r in runs)
    assert started[1] < ended[0], "the two runs did not overlap in time; the rendezvous failed"

    lake = Lake(home / "lake")
    assert lake.partitions("utilization_daily") == [(a, day) for a in DEMO_ACCOUNTS]
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(DISTINCT account_id) FROM utilization_daily").fetchall() == [(2,)]
    assert not list((home / "lake" / ".staging").iterdir())


def _template_env(port: int) -> dict[str, str]:
    return {
        "DAGSTER_PG_HOST": "127.0.0.1",
        "DAGSTER_PG_PORT": str(port),
        "DAGSTER_PG_USER": "postgres",
        "DAGSTER_PG_PASSWORD": "",
        "DAGSTER_PG_DB": "dagster",
    }


def postgres_home(port: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Settings, dict[str, str]]:
    """A CLOUDOPT_HOME on the shipped PostgreSQL template reaching the server on ``port``, and the
    environment a `cloudopt` or `dagster-daemon` subprocess needs for it."""
    home = tmp_path / "cloudopt"
    (home / "dagster").mkdir(parents=True)
    shutil.copy(TEMPLATE, home / "dagster" / "dagster.yaml")
    for name, value in _template_env(port).items():
        monkeypatch.setenv(name, value)
    env = {**os.environ, "CLOUDOPT_HOME": str(home), "DAGSTER_HOME": str(home / "dagster"), "CLOUDOPT_ENV": "demo"}
    settings = Settings(home=home, env="demo")
    assert type(ensure_instance(settings).run_storage).__name__ == "PostgresRunStorage"
    return settings, env


def test_postgres_template_passes_dagsters_own_instance_schema(tmp_path: Path) -> None:
    from dagster._core.instance.config import dagster_instance_config

    shutil.copy(TEMPLATE, tmp_path / "dagster.yaml")
    config, _ = dagster_instance_config(str(tmp_path))
    assert config["storage"]["postgres"]["postgres_db"]["port"] == {"env": "DAGSTER_PG_PORT"}
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert config["run_launcher"]["class"] == "DefaultRunLauncher"
    assert config["concurrency"]["runs"]["max_concurrent_runs"] == MAX_CONCURRENT_RUNS > 1

    # The same checks refuse a misspelt key, and a run limit in two places: they are not vacuous.
    (tmp_path / "dagster.yaml").write_text(TEMPLATE.read_text().replace("run_coordinator:", "run_coordinater:"))
    with pytest.raises(dg.DagsterInvalidConfigError):
        dagster_instance_config(str(tmp_path))
    conflicting = TEMPLATE.read_text().replace(
        "class: QueuedRunCoordinator", "class: QueuedRunCoordinator\n  config:\n    max_concurrent_runs: 2"
    )
    (tmp_path / "dagster.yaml").write_text(conflicting)
    with pytest.raises(dg.DagsterInvalidConfigError, match="max_concurrent_runs"):
        dagster_instance_config(str(tmp_path))


def _wait(predicate, what: str, log: Path, bound_s: float = 1200) -> None:
    """Wait for ``predicate`` (the bound is for a hung daemon, not a speed)."""
    deadline = time.monotonic() + bound_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {bound_s:.0f} s: {log.read_text()[-3000:]}")
        time.sleep(2)


def _fleet_workspace(folder: Path) -> Path:
    """A workspace whose one location (named as the package's) serves ``tests/scaleout_location.py``."""
    workspace = folder / "workspace.yaml"
    workspace.write_text(
        "load_from:\n"
        "  - python_module:\n"
        "      module_name: tests.scaleout_location\n"
        f"      working_directory: {REPO}\n"
        "      location_name: cloudopt_pipelines\n"
    )
    return workspace


def test_backfill_on_postgres_runs_several_runs_at_once_through_the_daemons_queue(
    postgres: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "cloudopt"
    (home / "dagster").mkdir(parents=True)
    shutil.copy(TEMPLATE, home / "dagster" / "dagster.yaml")
    for name, value in _template_env(postgres).items():
        monkeypatch.setenv(name, value)
    # BACKFILL_ACCOUNTS accounts of the demo's real traces under new ids, over the demo's 14 days.
    fleet_dir = tmp_path / "fleet"
    accounts = build_fleet(fleet_dir, accounts=BACKFILL_ACCOUNTS, instances=21, days=BACKFILL_DAYS)
    monkeypatch.setenv("CLOUDOPT_TEST_FLEET_DIR", str(fleet_dir))
    env = {**os.environ, "CLOUDOPT_HOME": str(home), "DAGSTER_HOME": str(home / "dagster"), "CLOUDOPT_ENV": "demo"}
    settings = Settings(home=home, env="demo")
    instance = ensure_instance(settings)  # the template is left as it is
    assert type(instance.run_storage).__name__ == "PostgresRunStorage"
    assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
    assert instance.get_concurrency_config().run_queue_config.max_concurrent_runs == MAX_CONCURRENT_RUNS

    fleet = DemoCollector(fleet_dir)
    days = fleet.days
    assert len(days) == BACKFILL_DAYS and days == DemoCollector().days
    keys = [f"{a}|{d.isoformat()}" for a in accounts for d in days]
    register_accounts(instance, accounts)
    defs = build_definitions(settings, ScaledDemoSource(data_dir=str(fleet_dir)))
    assert defs.resolve_job_def(CATALOG_JOB).execute_in_process(instance=instance).success
    assert defs.resolve_job_def(WAREHOUSE_JOB).execute_in_process(instance=instance).success  # only the backfill is new
    before = {r.run_id for r in instance.get_runs()}

    # An asset backfill as the UI launches one, of the collection and the daily statistics: the daemon
    # makes the runs (the assets' backfill policy: one run per account's 14 days), the queue starts at
    # most MAX_CONCURRENT_RUNS at once, each with the multiprocess executor.
    graph = defs.resolve_asset_graph()
    assert {graph.get(dg.AssetKey(k)).backfill_policy for k in BACKFILLED} == {
        dg.BackfillPolicy.multi_run(BACKFILL_DAYS)
    }
    backfill_id = "scaleout"
    # Dagster's own backfill code calls its deprecated AssetSelection.sources (as the UI's does).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        backfill = PartitionBackfill.from_asset_partitions(
            backfill_id=backfill_id,
            asset_graph=graph,
            partition_names=keys,
            asset_selection=[dg.AssetKey(k) for k in BACKFILLED],
            backfill_timestamp=time.time(),
            tags={},
            dynamic_partitions_store=instance,
            all_partitions=False,
            title="scale-out",
            description=None,
            run_config={"execution": {"config": {"multiprocess": {"start_method": {"forkserver": {}}}}}},
        )
    instance.add_backfill(backfill)
    by_sensor = dg.RunsFilter(job_name=WAREHOUSE_JOB, tags={"dagster/sensor_name": WAREHOUSE_SENSOR})

    def backfill_runs() -> list[dg.DagsterRun]:
        return instance.get_runs(filters=dg.RunsFilter(tags={"dagster/backfill": backfill_id}))

    def finished() -> bool:
        done = instance.get_backfill(backfill_id).status.value not in BACKFILL_IN_PROGRESS
        refreshes = instance.get_runs(filters=by_sensor)
        return done and bool(refreshes) and all(r.is_finished for r in [*backfill_runs(), *refreshes])

    log_path = tmp_path / "daemon.log"
    with open(log_path, "wb") as log:
        daemon = subprocess.Popen(
            [str(BIN / "dagster-daemon"), "run", "-w", str(_fleet_workspace(tmp_path))],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait(finished, "the backfill and the warehouse refresh after it", log_path)
        finally:
            terminate(daemon)
    daemon_log = log_path.read_text()

    assert instance.get_backfill(backfill_id).status.value in ("COMPLETED", "COMPLETED_SUCCESS"), daemon_log[-3000:]
    runs = backfill_runs()
    assert runs and {r.status for r in runs} == {dg.DagsterRunStatus.SUCCESS}, daemon_log[-3000:]
    # One run per account, each over its 14 days: the range tags of Dagster's backfill policy.
    ranges = sorted(
        (r.tags["dagster/asset_partition_range_start"], r.tags["dagster/asset_partition_range_end"]) for r in runs
    )
    assert ranges == [(f"{a}|{days[0].isoformat()}", f"{a}|{days[-1].isoformat()}") for a in sorted(accounts)]
    # Several at once: some run started before another had ended.
    spans = sorted((rec.start_time, rec.end_time) for rec in (instance.get_run_record_by_id(r.run_id) for r in runs))
    assert any(later[0] < earlier[1] for earlier, later in itertools.pairwise(spans)), spans
    for run in runs:
        messages = [e.message or "" for e in instance.all_logs(run.run_id)]
        # The multiprocess executor ran it (each step in a process of its own), not the in-process one.
        assert any("multiprocess executor" in m for m in messages), f"run {run.run_id}: {messages[:10]}"
        assert not [m for m in messages if any(lock in m for lock in DUCKDB_LOCK_ERRORS)]
    assert not [m for m in DUCKDB_LOCK_ERRORS if m in daemon_log], daemon_log[-3000:]

    # Every partition of every asset materialised exactly once.
    for path in BACKFILLED:
        records = instance.fetch_materializations(dg.AssetKey(path), limit=len(keys) + 5).records
        assert sorted(r.partition_key for r in records) == sorted(keys), path

    # Rows conserved: the lake holds what the demo source serves, and so does the warehouse.
    lake = Lake(home / "lake")
    expected = {
        "resources": sum(fleet.collect_inventory(a, d).table.num_rows for a in accounts for d in days),
        "utilization_5m": sum(fleet.collect_metrics(a, d).table.num_rows for a in accounts for d in days),
    }
    assert all(expected.values())
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as con:
        for table, rows in expected.items():
            assert lake.partitions(table) == sorted((a, d.isoformat()) for a in accounts for d in days), table
            assert sum(lake.read(table, a, d).num_rows for a, d in lake.partitions(table)) == rows, table
            assert con.execute(f"SELECT count(*) FROM {table}").fetchone() == (rows,), table
        daily = con.execute("SELECT count(DISTINCT account_id || '|' || CAST(date AS VARCHAR)) FROM utilization_daily")
        assert daily.fetchone() == (len(keys),)
    # The warehouse was rebuilt once, after the last run of the backfill, not once per run.
    refreshes = [r for r in instance.get_runs(filters=dg.RunsFilter(job_name=WAREHOUSE_JOB)) if r.run_id not in before]
    assert len(refreshes) == 1 and refreshes[0].status == dg.DagsterRunStatus.SUCCESS, daemon_log[-3000:]
    assert instance.get_run_record_by_id(refreshes[0].run_id).start_time >= max(end for _, end in spans)
    assert not list((home / "lake" / ".staging").iterdir())
