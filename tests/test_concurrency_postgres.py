"""Runs of different partitions at the same time, on a Dagster instance backed by a real PostgreSQL server."""

import multiprocessing
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from cloudopt_pipelines.resources.sources import DemoSourceResource
from cloudopt_pipelines.settings import Settings
from cloudopt_pipelines.sources.base import Collected, Collector
from cloudopt_pipelines.sources.demo import DemoCollector
from cloudopt_pipelines.storage.lake import Lake
from tests.conftest import DEMO_ACCOUNTS, DEMO_DAYS

RENDEZVOUS_TIMEOUT_SECONDS = 300
PG_BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)), None)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_postgres(*args: str) -> None:
    subprocess.run(["runuser", "-u", "postgres", "--", *args], check=True, capture_output=True)


@pytest.fixture
def postgres() -> Iterator[int]:
    """A throwaway PostgreSQL server on a free loopback port (installed by .ci/run)."""
    if PG_BIN is None or shutil.which("runuser") is None:
        pytest.fail("PostgreSQL server binaries not found: install Debian's 'postgresql' package (.ci/run does)")
    # Not under pytest's tmp_path: the postgres user cannot enter root's private temp folders.
    root = Path(tempfile.mkdtemp(prefix="cloudopt-pg-"))
    root.chmod(0o755)
    shutil.chown(root, "postgres")
    port = _free_port()
    _as_postgres(str(PG_BIN / "initdb"), "-D", str(root / "data"), "-U", "postgres", "--auth=trust")
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c max_connections=200"
    _as_postgres(
        str(PG_BIN / "pg_ctl"), "-D", str(root / "data"), "-o", options, "-l", str(root / "log"), "-w", "start"
    )
    try:
        subprocess.run(
            ["psql", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-c", "CREATE DATABASE dagster"],
            check=True,
            capture_output=True,
        )
        yield port
    finally:
        _as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(root / "data"), "-m", "fast", "stop")
        shutil.rmtree(root, ignore_errors=True)


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
