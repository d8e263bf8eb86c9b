"""Issue 18: the executor's run lock goes with its store. Real PostgreSQL (session advisory lock), S3 on the
moto server behind the proxy that makes its conditional writes atomic (lease object), real processes."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from cloudopt_pipelines.executor.lock import (
    PG_LOCK_TABLE,
    ExecutorBusy,
    ExecutorLockLost,
    S3Lease,
    executor_lock,
    new_holder,
)
from cloudopt_pipelines.executor.store import PostgresStore, S3Store, open_store
from tests.executor import test_executor_store as store_tests
from tests.executor.conftest import dev_instance, executor_aws, instance, plan_row
from tests.executor.test_executor_store import BUCKET, StoreHome

# The store tests' servers: a throwaway PostgreSQL, a bucket on moto and the proxy of atomic conditional writes.
postgres_dsn = store_tests.postgres_dsn
s3_store_url = store_tests.s3_store_url
atomic_s3 = store_tests.atomic_s3

ROOT = Path(__file__).resolve().parents[2]
BOUND_S = 120.0  # how long a wait may take on a busy machine before the test fails: never a pass condition
HOLDER = """
import sys
from pathlib import Path
from cloudopt_pipelines.executor.lock import executor_lock
from cloudopt_pipelines.executor.store import open_store
home, url, lease = sys.argv[1], sys.argv[2], float(sys.argv[3])
with executor_lock(Path(home), "execute 2026-11-20 --mode apply", open_store(url), lease, run_id="run-elsewhere"):
    print("locked", flush=True)
    sys.stdin.read()
"""


@pytest.fixture(params=["postgres", "s3"])
def shared(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The URL of a shared executor store; S3 goes through the atomic proxy (so does every child process)."""
    if request.param == "postgres":
        dsn = request.getfixturevalue("postgres_dsn")
        _clear_holder(dsn)
        return f"{dsn}?application_name=lock-{tmp_path.name}"
    url = f"{request.getfixturevalue('s3_store_url')}/{tmp_path.name}"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", request.getfixturevalue("atomic_s3"))
    return url


def _clear_holder(dsn: str) -> None:
    open_store(dsn)  # creates the tables
    with psycopg2.connect(dsn) as con, con.cursor() as cur:
        cur.execute(f"DELETE FROM {PG_LOCK_TABLE}")


def _holder_process(home: Path, url: str, lease_seconds: float = 60.0) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(home), url, str(lease_seconds)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def _backend_gone(dsn: str, backend: int) -> None:
    """Wait until the server has ended the session ``backend`` (it notices a dead client by itself)."""
    deadline = time.monotonic() + BOUND_S
    while True:
        with psycopg2.connect(dsn) as con, con.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (backend,))
            if cur.fetchone()[0] == 0:
                return
        assert time.monotonic() < deadline, f"PostgreSQL still has the killed holder's session {backend}"
        time.sleep(0.05)


def test_another_pod_fails_naming_the_holder_and_a_killed_holder_frees_the_lock(
    shared: str, tmp_path: Path, ec2: Any, moto_url: str
) -> None:
    home = StoreHome(tmp_path / "pod-b")  # not the holder's home: only the store is shared
    home.store = shared
    iid = dev_instance(ec2)
    home.write_plan([plan_row(iid, "stop", {"state": "stopped"})])
    home.approve_all()
    lease = 2.0
    holder = _holder_process(tmp_path / "pod-a", shared, lease)
    try:
        with pytest.raises(ExecutorBusy) as busy:
            home.run(executor_aws(moto_url))
        message = str(busy.value)
        assert f"pid {holder.pid}" in message and "execute 2026-11-20 --mode apply" in message
        assert "run_id run-elsewhere" in message and "one executor at a time per store" in message
        assert "pod-a" not in message and "executor.lock" not in message  # not a file lock of some home
        assert instance(ec2, iid)["State"]["Name"] == "running"  # nothing was done
        assert home.paths.audit().records() == []
        if shared.startswith("postgresql"):
            assert "cloudopt_executor_lock" in message
            with psycopg2.connect(shared) as con, con.cursor() as cur:
                cur.execute(f"SELECT backend_pid FROM {PG_LOCK_TABLE}")
                backend = cur.fetchone()[0]
        else:
            assert f"s3://{BUCKET}/" in message and "lock.json" in message
    finally:
        holder.send_signal(signal.SIGKILL)  # a crash: nothing releases the lock on the way out
        holder.wait()
    if shared.startswith("postgresql"):
        _backend_gone(shared, backend)  # PostgreSQL ends the session, and with it the lock, at once
    else:
        store = open_store(shared)
        assert isinstance(store, S3Store)
        key = f"{store.prefix}/lock.json"
        last_renewal = store.client.get_object(Bucket=store.bucket, Key=key)["LastModified"]  # S3's clock
        deadline = time.monotonic() + lease + BOUND_S
        while True:  # the dead holder's lease stays until it expires; then the next holder takes it over
            try:
                with executor_lock(tmp_path / "pod-c", "execute 2026-11-20 --mode apply", store):
                    taken = store.client.get_object(Bucket=store.bucket, Key=key)["LastModified"]
                break
            except ExecutorBusy:
                assert time.monotonic() < deadline, "the dead holder's lease was never taken over"
                time.sleep(0.2)
        assert (taken - last_renewal).total_seconds() >= lease  # not before the lease ran out
    result = home.run(executor_aws(moto_url))
    assert result.decisions[0].outcome == "applied"
    assert instance(ec2, iid)["State"]["Name"] == "stopped"


def _contend(url: str, home: str, endpoint: str, start: Any, done: Any, results: Any) -> None:
    """One pod: take the lock once the start is given; if it got it, hold it until the test says done."""
    if endpoint:
        os.environ["AWS_ENDPOINT_URL_S3"] = endpoint
    store = open_store(url)
    start.wait()
    try:
        with executor_lock(Path(home), "execute 2026-11-20 --mode apply", store, run_id=f"run-{os.getpid()}"):
            results.put(("held", os.getpid(), ""))
            done.wait(600)
    except ExecutorBusy as exc:
        results.put(("busy", os.getpid(), str(exc)))


def test_two_processes_contending_exactly_one_holds_the_other_is_told_who(shared: str, tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    start, done, results = ctx.Event(), ctx.Event(), ctx.Queue()
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3", "") if shared.startswith("s3") else ""
    procs = [
        ctx.Process(target=_contend, args=(shared, str(tmp_path / f"pod-{n}"), endpoint, start, done, results))
        for n in (1, 2)
    ]
    for p in procs:
        p.start()
    start.set()
    try:
        answers = sorted(results.get(timeout=600) for _ in procs)
    finally:
        done.set()
        for p in procs:
            p.join(timeout=600)
    assert [p.exitcode for p in procs] == [0, 0]
    assert [a[0] for a in answers] == ["busy", "held"]
    (_, _, message), (_, holder_pid, _) = answers
    assert f"pid {holder_pid}" in message and f"run_id run-{holder_pid}" in message
    with executor_lock(tmp_path / "pod-3", "rollback a-1 --mode apply", open_store(shared)) as held:
        assert held["pid"] == os.getpid()  # the holder's block ended: released


@pytest.mark.parametrize("kind", ["file", "postgres", "s3"])
def test_the_lock_is_released_after_the_block_even_when_it_fails(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    store: PostgresStore | S3Store | None = None
    if kind == "postgres":
        _clear_holder(request.getfixturevalue("postgres_dsn"))
        store = open_store(request.getfixturevalue("postgres_dsn"))
    elif kind == "s3":
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", request.getfixturevalue("atomic_s3"))
        store = open_store(f"{request.getfixturevalue('s3_store_url')}/{tmp_path.name}")
    with pytest.raises(RuntimeError, match="boom"):
        with executor_lock(tmp_path, "execute 2026-11-20 --mode apply", store, run_id="first"):
            with pytest.raises(ExecutorBusy, match="run_id first"):  # held inside the block, by this very process
                # Another pod's home for a shared store; the file lock is that of one home.
                with executor_lock(tmp_path / "other" if store else tmp_path, "rollback a-1 --mode apply", store):
                    pass
            raise RuntimeError("boom")
    with executor_lock(tmp_path, "execute 2026-11-20 --mode apply", store, run_id="second") as held:
        assert held["run_id"] == "second"
    if isinstance(store, S3Store):  # nothing left behind
        with pytest.raises(store.client.exceptions.NoSuchKey):
            store.client.get_object(Bucket=store.bucket, Key=f"{store.prefix}/lock.json")
    if isinstance(store, PostgresStore):
        with psycopg2.connect(store.dsn) as con, con.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 2")
            assert cur.fetchone()[0] == 0
            cur.execute(f"SELECT holder FROM {PG_LOCK_TABLE}")
            assert cur.fetchone()[0]["run_id"] == "second"  # the last holder, for the record


@pytest.fixture
def s3_store(s3_store_url: str, atomic_s3: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> S3Store:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", atomic_s3)
    return S3Store(f"{s3_store_url}/{tmp_path.name}")


def _lease_object(store: S3Store, holder: dict[str, Any], lease_seconds: float) -> None:
    body = json.dumps({"holder": holder, "lease_seconds": lease_seconds, "renewed": "2026-11-20T12:00:00+00:00"})
    store.client.put_object(Bucket=store.bucket, Key=f"{store.prefix}/lock.json", Body=body.encode())


def test_s3_a_live_lease_is_respected_and_an_expired_one_taken_over(s3_store: S3Store, tmp_path: Path) -> None:
    dead = {"pid": 4242, "host": "pod-a", "operation": "execute 2026-11-20 --mode apply", "run_id": "gone"}
    _lease_object(s3_store, dead, lease_seconds=3600)  # renewed just now, for an hour
    with pytest.raises(ExecutorBusy, match="pid 4242 on pod-a: execute 2026-11-20 --mode apply, run_id gone"):
        with executor_lock(tmp_path, "execute 2026-11-20 --mode apply", s3_store):
            pass
    # A lease over by the time it was written (the taker adds a second for the whole-second headers).
    _lease_object(s3_store, dead, lease_seconds=-1)
    with executor_lock(tmp_path, "execute 2026-11-20 --mode apply", s3_store, run_id="mine"):
        body = s3_store.client.get_object(Bucket=s3_store.bucket, Key=f"{s3_store.prefix}/lock.json")["Body"]
        lease = json.loads(body.read())
        assert lease["holder"]["run_id"] == "mine" and lease["holder"]["pid"] == os.getpid()


def test_s3_the_heartbeat_renews_the_lease_while_held(s3_store: S3Store) -> None:
    lease = S3Lease(s3_store, new_holder("execute 2026-11-20 --mode apply"), lease_seconds=0.9)
    lease.acquire()
    lease.start()
    try:
        seen, deadline = {lease.etag}, time.monotonic() + BOUND_S
        while len(seen) < 3:  # two renewals, each a conditional PUT on the ETag before it
            assert time.monotonic() < deadline, "the lease was never renewed"
            time.sleep(0.05)
            seen.add(lease.etag)
        head = s3_store.client.get_object(Bucket=s3_store.bucket, Key=lease.key)
        assert head["ETag"] in seen and lease.lost is None
    finally:
        assert lease.release() is None
    with pytest.raises(s3_store.client.exceptions.NoSuchKey):
        s3_store.client.get_object(Bucket=s3_store.bucket, Key=lease.key)


def test_s3_a_lease_taken_over_during_the_run_is_reported_and_left_to_its_new_holder(
    s3_store: S3Store, tmp_path: Path
) -> None:
    other = {"pid": 7, "host": "pod-c", "operation": "rollback a-1 --mode apply"}
    with pytest.raises(ExecutorLockLost, match=r"was lost during the run.*check the audit"):
        with executor_lock(tmp_path, "execute 2026-11-20 --mode apply", s3_store):
            _lease_object(s3_store, other, lease_seconds=3600)  # what a taker would write, unconditionally here
    body = s3_store.client.get_object(Bucket=s3_store.bucket, Key=f"{s3_store.prefix}/lock.json")["Body"]
    assert json.loads(body.read())["holder"] == other  # not deleted: it is not ours


def test_postgres_a_connection_lost_during_the_run_is_reported(postgres_dsn: str, tmp_path: Path) -> None:
    _clear_holder(postgres_dsn)
    store = open_store(postgres_dsn)
    with pytest.raises(ExecutorLockLost, match=r"was lost during the run.*check the audit"):
        with executor_lock(tmp_path, "execute 2026-11-20 --mode apply", store):
            with psycopg2.connect(postgres_dsn) as con, con.cursor() as cur:
                cur.execute(f"SELECT pg_terminate_backend(backend_pid) FROM {PG_LOCK_TABLE}")
    with executor_lock(tmp_path, "execute 2026-11-20 --mode apply", store) as held:
        assert held["pid"] == os.getpid()
