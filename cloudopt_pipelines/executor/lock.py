"""One executor run (execute or rollback) at a time per executor store; the lock goes with the store. No Dagster.

- file store (default): an exclusive ``flock`` on ``<home>/executor.lock``. The kernel releases it when the
  holding process ends, however it ends (SIGKILL included); the file itself only says who held it last.
- PostgreSQL store: a session-level advisory lock (``pg_try_advisory_lock``) held on a connection of its
  own for the block; the server releases it when the block ends or when that connection or its process
  dies (SIGKILL included). The row ``cloudopt_executor_lock`` names the holder.
- S3 store: a lease object ``<prefix>/executor/lock.json`` (holder and lease length) created with
  ``If-None-Match: *``, renewed by a heartbeat thread with ``If-Match`` on its ETag and deleted at the end.
  A lease not renewed for its length (its holder died) may be taken over, with ``If-Match`` on the ETag
  read, so two takers cannot both win. Expiry is judged on S3's clock (``Last-Modified`` against ``Date``).
"""

from __future__ import annotations

import email.utils
import fcntl
import json
import logging
import os
import socket
import threading
import time
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cloudopt_pipelines.executor.aws import ExecutorError
from cloudopt_pipelines.executor.store import PostgresStore, S3Store, redacted

LOCK_FILE = "executor.lock"
S3_LOCK_OBJECT = "lock.json"
S3_LEASE_SECONDS = 60.0
"""Default lease of the S3 lock: renewed every third of it, taken over after it without a renewal."""
HEADER_RESOLUTION_S = 1.0
PG_LOCK_TABLE = "cloudopt_executor_lock"
PG_LOCK_NAME = "run"

log = logging.getLogger(__name__)


def _int4(name: str) -> int:
    value = zlib.crc32(name.encode())
    return value - 2**32 if value >= 2**31 else value


# One store per database (its tables have fixed names), so one key per database: the two-int form keeps it
# apart from the one-bigint transaction locks the record appends take.
PG_LOCK_KEY = (_int4("cloudopt_executor"), _int4("run"))


class ExecutorBusy(ExecutorError):
    """Another executor run (execute or rollback) holds the lock of this home or store."""


class ExecutorLockLost(ExecutorError):
    """The lock was lost while the block ran (connection dropped, lease taken over): runs may have overlapped."""


def new_holder(operation: str, **details: Any) -> dict[str, Any]:
    """Who is taking the lock: pid, host, operation, start time and any ``details`` (run id, user)."""
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "operation": operation,
        "since": datetime.now(UTC).isoformat(timespec="seconds"),
        **details,
    }


@contextmanager
def executor_lock(
    home: Path,
    operation: str,
    store: PostgresStore | S3Store | None = None,
    lease_seconds: float = S3_LEASE_SECONDS,
    **details: Any,
) -> Iterator[dict[str, Any]]:
    """Hold the executor lock for the block: the file lock of ``home``, or that of the shared ``store``
    (PostgreSQL advisory lock, S3 lease of ``lease_seconds``); ``ExecutorBusy`` naming the holder if taken."""
    holder = new_holder(operation, **details)
    if store is None:
        with _file_lock(home, holder):
            yield holder
    elif isinstance(store, PostgresStore):
        with _postgres_lock(store, holder):
            yield holder
    else:
        with _s3_lock(store, holder, lease_seconds):
            yield holder


# ---------------------------------------------------------------------------------------------- files


@contextmanager
def _file_lock(home: Path, holder: dict[str, Any]) -> Iterator[None]:
    home.mkdir(parents=True, exist_ok=True)
    path = home / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        previous = _holder(path)
        os.close(fd)
        raise ExecutorBusy(
            f"another executor run holds {path} ({describe_holder(previous)}): one executor at a time per "
            f"home. Wait for it to finish and re-run; the lock is released as soon as that process ends "
            f"(even if it crashes)"
        ) from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder, default=str) + "\n").encode(), 0)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _holder(path: Path) -> Mapping[str, Any]:
    try:
        value = json.loads(path.read_text() or "{}")
    except (OSError, json.JSONDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def describe_holder(holder: Mapping[str, Any]) -> str:
    """``pid 4242 on host-a: execute 2026-11-20 apply, run 1a2b..., since ...`` (what is known of it)."""
    if not holder:
        return "holder unknown"
    parts = [f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}: {holder.get('operation', '?')}"]
    parts += [f"{k} {v}" for k, v in holder.items() if k not in ("pid", "host", "operation", "since")]
    if holder.get("since"):
        parts.append(f"since {holder['since']}")
    return ", ".join(parts)


# ------------------------------------------------------------------------------------------ PostgreSQL


@contextmanager
def _postgres_lock(store: PostgresStore, holder: dict[str, Any]) -> Iterator[None]:
    where = f"{redacted(store.dsn)}#{PG_LOCK_TABLE}"
    con = store._connect()
    con.autocommit = True  # a session lock: no transaction stays open for the run
    try:
        with con.cursor() as cur:
            cur.execute("SELECT pg_try_advisory_lock(%s, %s)", PG_LOCK_KEY)
            if not cur.fetchone()[0]:
                raise ExecutorBusy(
                    f"another executor run holds the executor lock of {where} ({_pg_holder(cur)}): one executor "
                    "at a time per store. Wait for it to finish and re-run; PostgreSQL releases the lock as soon "
                    "as that process or its connection ends (even if it crashes)"
                )
            cur.execute(
                f"INSERT INTO {PG_LOCK_TABLE} (name, holder, backend_pid) VALUES (%s, %s, pg_backend_pid()) "
                "ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, backend_pid = EXCLUDED.backend_pid, "
                "since = now()",
                (PG_LOCK_NAME, json.dumps(holder, default=str)),
            )
    except BaseException:
        con.close()
        raise
    try:
        yield
    finally:
        lost = _pg_unlock(con)
    if lost:
        raise ExecutorLockLost(
            f"the connection holding the executor lock of {where} was lost during the run ({lost}): PostgreSQL "
            "released the lock then, so another run may have overlapped this one: check the audit for decisions "
            "of two runs at once before running again"
        )


def _pg_holder(cur: Any) -> str:
    """The holder row, if it belongs to the backend that holds the lock now (else what is known)."""
    cur.execute(
        "SELECT l.pid, h.holder, h.backend_pid FROM pg_locks l "
        f"LEFT JOIN {PG_LOCK_TABLE} h ON h.name = %s "
        "WHERE l.locktype = 'advisory' AND l.granted AND l.database = "
        "(SELECT oid FROM pg_database WHERE datname = current_database()) "
        "AND l.classid = %s::bigint::oid AND l.objid = %s::bigint::oid AND l.objsubid = 2",
        (PG_LOCK_NAME, PG_LOCK_KEY[0] % 2**32, PG_LOCK_KEY[1] % 2**32),
    )
    row = cur.fetchone()
    if row is None:
        return "holder unknown: it has just released the lock"
    pid, record, backend = row
    if record is None or backend != pid:
        return f"holder not recorded yet, PostgreSQL backend {pid}"
    return describe_holder(record)


def _pg_unlock(con: Any) -> str | None:
    """Release the lock and close its connection; why it was no longer held, if it was not."""
    try:
        with con.cursor() as cur:
            cur.execute("SELECT pg_advisory_unlock(%s, %s)", PG_LOCK_KEY)
            return None if cur.fetchone()[0] else "the session no longer held it"
    except Exception as exc:  # psycopg2.Error, but the module is imported lazily
        return f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    finally:
        con.close()


# ------------------------------------------------------------------------------------------------ S3


def _conflict(exc: Exception) -> bool:
    """A conditional request that lost: the precondition failed, another one raced it, or the key is gone."""
    from botocore.exceptions import ClientError

    if not isinstance(exc, ClientError):
        return False
    code = exc.response.get("Error", {}).get("Code")
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey") or status in (404, 409, 412)


class S3Lease:
    """The lease object of one S3 store's executor lock (see the module docstring)."""

    def __init__(self, store: S3Store, holder: dict[str, Any], lease_seconds: float = S3_LEASE_SECONDS) -> None:
        if lease_seconds <= 0:
            raise ValueError(f"lease_seconds must be positive, not {lease_seconds}")
        self.store, self.holder, self.lease_seconds = store, holder, lease_seconds
        self.key = f"{store.prefix}/{S3_LOCK_OBJECT}"
        self.location = f"s3://{store.bucket}/{self.key}"
        self.etag: str | None = None
        self.lost: str | None = None
        self._renewed = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _body(self) -> bytes:
        lease = {
            "holder": self.holder,
            "lease_seconds": self.lease_seconds,
            "renewed": datetime.now(UTC).isoformat(timespec="microseconds"),
        }
        return json.dumps(lease, sort_keys=True, default=str).encode()

    def _put(self, **condition: str) -> None:
        response = self.store.client.put_object(Bucket=self.store.bucket, Key=self.key, Body=self._body(), **condition)
        self.etag, self._renewed = response["ETag"], time.monotonic()

    def _read(self) -> tuple[dict[str, Any], str, bool] | None:
        """The lease there (its record, ETag, whether it expired on S3's clock), or None if there is none."""
        try:
            response = self.store.client.get_object(Bucket=self.store.bucket, Key=self.key)
        except Exception as exc:
            if _conflict(exc):
                return None
            raise
        try:
            record = json.loads(response["Body"].read())
        except json.JSONDecodeError:
            record = {}
        record = record if isinstance(record, dict) else {}
        date = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
        now = email.utils.parsedate_to_datetime(date) if date else datetime.now(UTC)
        try:
            seconds = float(record.get("lease_seconds", S3_LEASE_SECONDS))
        except (TypeError, ValueError):
            seconds = S3_LEASE_SECONDS
        # Both headers are whole seconds: one more second so that a lease never ends early.
        expires = response["LastModified"] + timedelta(seconds=seconds + HEADER_RESOLUTION_S)
        record["expires"] = expires.isoformat(timespec="seconds")
        return record, response["ETag"], now >= expires

    def acquire(self) -> None:
        """Create the lease, or take over an expired one; ``ExecutorBusy`` naming the holder of a live one."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._acquire()
        except (ClientError, BotoCoreError) as exc:
            if isinstance(exc, ClientError) and _conflict(exc):
                raise
            raise ExecutorError(
                f"could not take the executor lease {self.location}: {exc}. The executor needs s3:GetObject, "
                "s3:PutObject and s3:DeleteObject on it (docs/deploy.md, executor state)"
            ) from exc

    def _acquire(self) -> None:
        record: dict[str, Any] = {}
        for _ in range(5):
            try:
                self._put(IfNoneMatch="*")
                return
            except Exception as exc:
                if not _conflict(exc):
                    raise
            current = self._read()
            if current is None:
                continue  # released meanwhile: create it again
            record, etag, expired = current
            if not expired:
                break
            try:
                self._put(IfMatch=etag)
                log.warning(
                    "took over the expired executor lease %s of %s (expired %s)",
                    self.location,
                    describe_holder(record.get("holder") or {}),
                    record["expires"],
                )
                return
            except Exception as exc:
                if not _conflict(exc):
                    raise
        raise ExecutorBusy(
            f"another executor run holds {self.location} ({describe_holder(record.get('holder') or {})}, lease "
            f"until {record.get('expires', '?')} unless renewed): one executor at a time per store. Wait for it "
            f"to finish and re-run; if that process died, its lease expires {record.get('lease_seconds', '?')} s "
            "after its last renewal and the next run takes it over"
        )

    def start(self) -> None:
        """Renew the lease every third of its length until ``release``."""
        self._thread = threading.Thread(target=self._heartbeat, name="executor-lease", daemon=True)
        self._thread.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.lease_seconds / 3):
            try:
                self._put(IfMatch=str(self.etag))
            except Exception as exc:
                if _conflict(exc):
                    self.lost = f"a renewal found the lease replaced ({type(exc).__name__}: {exc})"
                    return
                if time.monotonic() - self._renewed >= self.lease_seconds:
                    self.lost = f"no renewal for {self.lease_seconds} s, the last failing with {exc}"
                    return
                log.warning("could not renew the executor lease %s (will retry): %s", self.location, exc)

    def release(self) -> str | None:
        """Stop renewing and delete the lease if it is still ours; why it was lost, if it was."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.lost is None:
            try:
                self.store.client.delete_object(Bucket=self.store.bucket, Key=self.key, IfMatch=str(self.etag))
            except Exception as exc:
                if _conflict(exc):
                    self.lost = f"the lease was replaced by another holder ({type(exc).__name__}: {exc})"
                else:  # not worth hiding the run's own outcome for: the lease expires on its own
                    log.warning("could not delete the executor lease %s (it expires by itself): %s", self.location, exc)
        return self.lost


@contextmanager
def _s3_lock(store: S3Store, holder: dict[str, Any], lease_seconds: float) -> Iterator[None]:
    lease = S3Lease(store, holder, lease_seconds)
    lease.acquire()
    lease.start()
    try:
        yield
    finally:
        lost = lease.release()
    if lost:
        raise ExecutorLockLost(
            f"the executor lease {lease.location} was lost during the run: {lost}. Another run may have "
            "overlapped this one (its holder was not renewing for a whole lease): check the audit for decisions "
            "of two runs at once before running again"
        )
