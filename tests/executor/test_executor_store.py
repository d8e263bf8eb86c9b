"""The executor's approvals, audit and exports in a shared store: a real PostgreSQL server and S3 on the moto
server, against the files of one machine (the default)."""

from __future__ import annotations

import contextlib
import multiprocessing
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3
import pytest

from cloudopt_pipelines.executor import rollback
from cloudopt_pipelines.executor.approvals import ApprovalStore, new_approval
from cloudopt_pipelines.executor.audit import AuditLog
from cloudopt_pipelines.executor.model import actions_from_plan
from cloudopt_pipelines.executor.service import ExecutorPaths
from cloudopt_pipelines.executor.store import JsonlLog, StoreConflict, open_store
from cloudopt_pipelines.settings import SettingsError, load_settings
from tests.aws.conftest import forward, free_port
from tests.executor.conftest import DAY, Home, dev_instance, executor_aws, instance, plan_row
from tests.test_concurrency_postgres import running_postgres

RESIZE = {"instance_type": "m5.large", "market": "on_demand"}
BUCKET = "cloudopt-executor-state"
APPENDS_PER_PROCESS = 150


@pytest.fixture(scope="module")
def postgres_dsn() -> Iterator[str]:
    """A throwaway PostgreSQL server (Debian's binaries, installed by .ci/run) and the DSN of its database."""
    with running_postgres("cloudopt", "cloudopt-pg-store-") as port:
        yield f"postgresql://postgres@127.0.0.1:{port}/cloudopt"


@pytest.fixture(scope="module")
def s3_store_url(moto_url: str) -> Iterator[str]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ENDPOINT_URL_S3", moto_url)
        boto3.client("s3", endpoint_url=moto_url).create_bucket(Bucket=BUCKET)
        yield f"s3://{BUCKET}/state"


@contextlib.contextmanager
def atomic_conditional_puts(upstream: str) -> Iterator[str]:
    """A proxy to moto whose conditional writes (PUT with ``If-None-Match`` or ``If-Match``, DELETE with
    ``If-Match``) are atomic, as S3 documents them: moto checks the key and stores the object in two steps,
    so two racing PUTs of one new key (or on one ETag) could both win."""
    target, lock = urllib.parse.urlsplit(upstream), threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            return None

        def _forward(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.command in ("PUT", "DELETE") and (
                self.headers.get("If-None-Match") or self.headers.get("If-Match")
            ):
                with lock:
                    forward(self, target, body)
            else:
                forward(self, target, body)

        do_GET = do_PUT = do_POST = do_DELETE = _forward

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def atomic_s3(moto_url: str) -> Iterator[str]:
    """The URL of ``atomic_conditional_puts`` in front of the moto server."""
    with atomic_conditional_puts(moto_url) as url:
        yield url


class StoreHome(Home):
    """A home whose executor records live in a shared store."""

    store: str = ""

    @property
    def paths(self) -> ExecutorPaths:
        return ExecutorPaths(self.root, store=self.store)


@pytest.fixture(params=["postgres", "s3"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        dsn = request.getfixturevalue("postgres_dsn")
        return f"{dsn}?application_name=test-{tmp_path.name}"
    return f"{request.getfixturevalue('s3_store_url')}/{tmp_path.name}"


def test_approve_execute_audit_and_rollback_round_trip_in_the_shared_store(
    store_url: str, tmp_path: Path, ec2, moto_url: str
) -> None:
    if store_url.startswith("postgresql"):
        _truncate(store_url)
    home = StoreHome(tmp_path / "cloudopt")
    home.store = store_url
    iid = dev_instance(ec2)
    home.write_plan([plan_row(iid, "resize", RESIZE)])
    home.approve_all()
    aws = executor_aws(moto_url)
    decision = home.run(aws).decisions[0]
    assert decision.outcome == "applied" and decision.approved_by == "alice"
    assert instance(ec2, iid)["InstanceType"] == "m5.large"
    # Nothing went to the local files: another pod with the same store (and signing key) sees it all.
    assert not (home.root / "approvals").exists() and not (home.root / "audit").exists()
    other = ExecutorPaths(home.root, store=store_url)
    assert [a.approved_by for a in other.approvals().for_day(DAY)] == ["alice"]
    records = other.audit().records()
    assert [r["event"] for r in records if r["action_id"] == decision.action_id] == ["intent", "decision"]
    assert all(other.audit().verification_error(r) is None for r in records)
    undone = rollback(home.lake, other, decision.action_id, "apply", "carol", aws)
    assert undone.outcome == "rolled_back" and instance(ec2, iid)["InstanceType"] == "m5.xlarge"
    outcomes = [r["outcome"] for r in home.lake.read("executed_actions", day=DAY).to_pylist()]
    assert outcomes == ["applied", "rolled_back"]
    location = other.exports.put("purchases-check.json", b'{"purchases": []}')
    assert location.endswith("purchases-check.json")


def test_approvals_compare_and_set_in_every_store(store_url: str, tmp_path: Path) -> None:
    if store_url.startswith("postgresql"):
        _truncate(store_url)
    for approvals in (
        ApprovalStore(tmp_path / "files"),
        ApprovalStore(tmp_path / "unused", open_store(store_url).log("approvals")),
    ):
        home = Home(tmp_path / f"plan-{id(approvals)}")
        actions = home.write_plan([plan_row("i-0123456789abcdef0", "resize", RESIZE)])
        plan_id = actions[0].plan_id
        seen = len(approvals.all())
        approvals.append(new_approval(plan_id, DAY, actions, "alice", all_actions=True), expected=seen)
        with pytest.raises(StoreConflict, match="read it again"):
            approvals.append(new_approval(plan_id, DAY, actions, "bob", all_actions=True), expected=seen)
        assert [a.approved_by for a in approvals.for_day(DAY)] == ["alice"]
        assert actions_from_plan(home.lake.read("portfolio_plan", day=DAY), DAY)[0] == plan_id


def _append_audit(kind: str, where: str, key_file: str, writer: int, start, result) -> None:
    """One writer process: ``APPENDS_PER_PROCESS`` intents, one append each."""
    log = JsonlLog(Path(where) / "actions.jsonl") if kind == "file" else open_store(where).log("audit")
    audit = AuditLog(Path(key_file).parent, key_file, log)
    start.wait()
    for n in range(APPENDS_PER_PROCESS):
        audit.intent({"run_id": f"w{writer}", "action_id": f"a{writer}-{n}", "date": DAY.isoformat()})
    result.put(writer)


@pytest.mark.parametrize("kind", ["file", "postgres", "s3"])
def test_two_processes_appending_audit_at_once_lose_nothing(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    if kind == "file":
        where = str(tmp_path / "audit")
    elif kind == "postgres":
        where = request.getfixturevalue("postgres_dsn")
        _truncate(where)
    else:
        where = f"{request.getfixturevalue('s3_store_url')}/{tmp_path.name}"
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", request.getfixturevalue("atomic_s3"))
    key_file = str(tmp_path / "keys" / "audit.key")
    AuditLog(tmp_path / "keys", key_file).sign({})  # the key exists before both start
    ctx = multiprocessing.get_context("spawn")
    start, result = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_append_audit, args=(kind, where, key_file, w, start, result)) for w in (1, 2)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(timeout=600)
        assert p.exitcode == 0
    log = JsonlLog(Path(where) / "actions.jsonl") if kind == "file" else open_store(where).log("audit")
    assert kind != "s3" or log.location.startswith(f"s3://{BUCKET}/")
    records = AuditLog(tmp_path / "keys", key_file, log).records()
    ids = [r["action_id"] for r in records]
    assert len(ids) == 2 * APPENDS_PER_PROCESS and len(set(ids)) == len(ids)
    audit = AuditLog(tmp_path / "keys", key_file, log)
    assert all(audit.verification_error(r) is None for r in records)
    for writer in (1, 2):  # each writer's records in its own order
        mine = [i for i in ids if i.startswith(f"a{writer}-")]
        assert mine == [f"a{writer}-{n}" for n in range(APPENDS_PER_PROCESS)]


def test_executor_store_setting(tmp_path: Path) -> None:
    base = {"CLOUDOPT_HOME": str(tmp_path)}
    assert load_settings(base).executor.store is None
    assert load_settings({**base, "CLOUDOPT_EXECUTOR_STORE": "file"}).executor.store is None
    url = "postgresql://cloudopt@db:5432/cloudopt"
    assert load_settings({**base, "CLOUDOPT_EXECUTOR_STORE": url}).executor.store == url
    assert load_settings({**base, "CLOUDOPT_EXECUTOR_STORE": "s3://my-bucket/x/"}).executor.store == "s3://my-bucket/x"
    with pytest.raises(SettingsError, match="password in its URL") as err:
        load_settings({**base, "CLOUDOPT_EXECUTOR_STORE": "postgresql://cloudopt:hunter2secret@db/cloudopt"})
    assert "hunter2secret" not in str(err.value)
    with pytest.raises(SettingsError, match="none of"):
        load_settings({**base, "CLOUDOPT_EXECUTOR_STORE": "redis://cache"})


def _truncate(dsn: str) -> None:
    """The module shares one database: each test starts from empty streams."""
    import psycopg2

    open_store(dsn)  # creates the tables
    with psycopg2.connect(dsn) as con, con.cursor() as cur:
        cur.execute("TRUNCATE cloudopt_executor_records, cloudopt_executor_documents")
