"""Where the executor keeps its append-only records (approvals, audit) and its exports, behind one interface.

``CLOUDOPT_EXECUTOR_STORE`` chooses the backend:

- unset or ``file``: JSONL files under ``$CLOUDOPT_HOME`` (one machine; appends serialised by ``flock``);
- ``postgresql://user@host:port/db``: one table of records, appends serialised per stream by a transaction
  advisory lock, so any number of pods share the executor's state;
- ``s3://bucket/prefix``: one object per record, named by its sequence number and written with
  ``If-None-Match: *``, so two writers can never take the same number (S3 conditional writes).

The executor's run lock goes with the store (``executor/lock.py``): a file lock, a PostgreSQL session
advisory lock (holder in ``cloudopt_executor_lock``), or an S3 lease object.

Every backend offers the same two guarantees: an append is never lost nor half visible (append-only), and
``append_if(records, expected)`` appends only when the stream still holds exactly ``expected`` records
(compare-and-set: a decision taken on what was read is recorded only if nothing was added since).
Exports (the purchase lists) are whole documents replaced atomically. This module never imports Dagster.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

STREAMS = ("approvals", "audit")
SEQ_DIGITS = 12
S3_APPEND_ATTEMPTS = 1000


class StoreConflict(RuntimeError):
    """``append_if`` found the stream changed since it was read."""


class RecordLog(Protocol):
    """One append-only stream of JSON records."""

    location: str

    def append(self, records: Sequence[dict[str, Any]]) -> None: ...

    def append_if(self, records: Sequence[dict[str, Any]], expected: int) -> None:
        """Append only if the stream holds exactly ``expected`` records; else raise ``StoreConflict``."""
        ...

    def read(self) -> list[dict[str, Any]]: ...


class DocumentStore(Protocol):
    """Whole documents (the exports), each replaced atomically."""

    def put(self, name: str, body: bytes) -> str:
        """Write ``name`` (replacing it); returns where it is."""
        ...


# ---------------------------------------------------------------------------------------------- files


class JsonlLog:
    """Records as lines of one JSONL file: appends fsync'd and serialised by an exclusive ``flock``."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.location = str(self.path)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def append(self, records: Sequence[dict[str, Any]]) -> None:
        from cloudopt_pipelines.executor.approvals import append_jsonl

        with self._locked():
            append_jsonl(self.path, records)

    def append_if(self, records: Sequence[dict[str, Any]], expected: int) -> None:
        from cloudopt_pipelines.executor.approvals import append_jsonl

        with self._locked():
            found = len(self.read())
            if found != expected:
                raise StoreConflict(f"{self.path} holds {found} records, not the {expected} read: read it again")
            append_jsonl(self.path, records)

    def read(self) -> list[dict[str, Any]]:
        from cloudopt_pipelines.executor.approvals import read_jsonl

        return read_jsonl(self.path)  # type: ignore[return-value]


class FileDocuments:
    """Documents as files of one directory, each written to a temporary name and renamed over the old one."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)

    def put(self, name: str, body: bytes) -> str:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / name
        tmp = path.with_name(f".{name}.{uuid.uuid4().hex}.tmp")
        tmp.write_bytes(body)
        os.replace(tmp, path)
        return str(path)


# ------------------------------------------------------------------------------------------ PostgreSQL

_PG_SCHEMA = """
CREATE TABLE IF NOT EXISTS cloudopt_executor_records (
    stream TEXT NOT NULL,
    seq BIGINT NOT NULL,
    record JSONB NOT NULL,
    written_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (stream, seq)
);
CREATE TABLE IF NOT EXISTS cloudopt_executor_documents (
    name TEXT PRIMARY KEY,
    body BYTEA NOT NULL,
    written_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS cloudopt_executor_lock (
    name TEXT PRIMARY KEY,
    holder JSONB NOT NULL,
    backend_pid INTEGER NOT NULL,
    since TIMESTAMPTZ NOT NULL DEFAULT now()
);
"""


class PostgresStore:
    """The executor's records in PostgreSQL: ``(stream, seq)`` is the primary key, so a sequence number is
    taken once; each append holds the stream's transaction advisory lock while it numbers its records."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        with self._connect() as con, con.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(hashtext('cloudopt_executor_schema'))")
            cur.execute(_PG_SCHEMA)

    def _connect(self) -> Any:
        import psycopg2

        return psycopg2.connect(self.dsn, connect_timeout=10)

    def log(self, stream: str) -> PostgresLog:
        return PostgresLog(self, stream)

    def put(self, name: str, body: bytes) -> str:
        with self._connect() as con, con.cursor() as cur:
            cur.execute(
                "INSERT INTO cloudopt_executor_documents (name, body) VALUES (%s, %s) "
                "ON CONFLICT (name) DO UPDATE SET body = EXCLUDED.body, written_at = now()",
                (name, body),
            )
        return f"{redacted(self.dsn)}#cloudopt_executor_documents/{name}"


class PostgresLog:
    """One stream of ``PostgresStore``."""

    def __init__(self, store: PostgresStore, stream: str) -> None:
        self.store, self.stream = store, stream
        self.location = f"{redacted(store.dsn)}#cloudopt_executor_records/{stream}"

    def append(self, records: Sequence[dict[str, Any]]) -> None:
        self._append(records, None)

    def append_if(self, records: Sequence[dict[str, Any]], expected: int) -> None:
        self._append(records, expected)

    def _append(self, records: Sequence[dict[str, Any]], expected: int | None) -> None:
        con = self.store._connect()
        try:
            with con, con.cursor() as cur:
                cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"cloudopt_executor:{self.stream}",))
                cur.execute(
                    "SELECT count(*), coalesce(max(seq), 0) FROM cloudopt_executor_records WHERE stream = %s",
                    (self.stream,),
                )
                count, last = cur.fetchone()
                if expected is not None and count != expected:
                    raise StoreConflict(
                        f"{self.location} holds {count} records, not the {expected} read: read it again"
                    )
                for offset, record in enumerate(records, start=1):
                    cur.execute(
                        "INSERT INTO cloudopt_executor_records (stream, seq, record) VALUES (%s, %s, %s)",
                        (self.stream, last + offset, json.dumps(record, sort_keys=True, default=str)),
                    )
        finally:
            con.close()

    def read(self) -> list[dict[str, Any]]:
        con = self.store._connect()
        try:
            with con, con.cursor() as cur:
                cur.execute(
                    "SELECT record FROM cloudopt_executor_records WHERE stream = %s ORDER BY seq", (self.stream,)
                )
                return [row[0] for row in cur.fetchall()]
        finally:
            con.close()


def redacted(dsn: str) -> str:
    """The DSN without its password (it ends up in messages and metadata)."""
    scheme, sep, rest = dsn.partition("://")
    if not sep or "@" not in rest:
        return dsn
    userinfo, _, host = rest.rpartition("@")
    return f"{scheme}://{userinfo.split(':', 1)[0]}@{host}"


# ------------------------------------------------------------------------------------------------ S3


class S3Store:
    """The executor's records on S3 under ``s3://bucket/prefix/executor/``: record N of a stream is the
    object ``<stream>/<N>.json``, PUT with ``If-None-Match: *`` so that exactly one writer gets each number."""

    def __init__(self, url: str, client: Any | None = None) -> None:
        import boto3

        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        self.bucket, self.prefix = bucket, "/".join(p for p in (prefix.strip("/"), "executor") if p)
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        self.client = client or boto3.client("s3", endpoint_url=endpoint)

    def log(self, stream: str) -> S3Log:
        return S3Log(self, stream)

    def put(self, name: str, body: bytes) -> str:
        key = f"{self.prefix}/exports/{name}"
        self.client.put_object(Bucket=self.bucket, Key=key, Body=body)
        return f"s3://{self.bucket}/{key}"


class S3Log:
    """One stream of ``S3Store``."""

    def __init__(self, store: S3Store, stream: str) -> None:
        self.store, self.stream = store, stream
        self.base = f"{store.prefix}/{stream}/"
        self.location = f"s3://{store.bucket}/{self.base}"

    def _keys(self) -> list[str]:
        pages = self.store.client.get_paginator("list_objects_v2").paginate(Bucket=self.store.bucket, Prefix=self.base)
        keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
        return sorted(k for k in keys if k.endswith(".json") and k[len(self.base) : -5].isdigit())

    def _put_new(self, seq: int, record: dict[str, Any]) -> bool:
        from botocore.exceptions import ClientError

        body = json.dumps(record, sort_keys=True, default=str).encode()
        try:
            self.store.client.put_object(
                Bucket=self.store.bucket, Key=f"{self.base}{seq:0{SEQ_DIGITS}d}.json", Body=body, IfNoneMatch="*"
            )
            return True
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or exc.response.get(
                "ResponseMetadata", {}
            ).get("HTTPStatusCode") in (409, 412):
                return False
            raise

    def append(self, records: Sequence[dict[str, Any]]) -> None:
        for record in records:
            seq = len(self._keys()) + 1
            for _ in range(S3_APPEND_ATTEMPTS):
                if self._put_new(seq, record):
                    break
                seq += 1  # another writer took this number: the next one
            else:
                raise RuntimeError(f"could not append to {self.location}: {S3_APPEND_ATTEMPTS} numbers taken")

    def append_if(self, records: Sequence[dict[str, Any]], expected: int) -> None:
        found = len(self._keys())
        if found != expected or not records:
            if found != expected:
                raise StoreConflict(f"{self.location} holds {found} records, not the {expected} read: read it again")
            return
        if not self._put_new(expected + 1, records[0]):
            raise StoreConflict(f"{self.location} changed while appending: read it again")
        self.append(records[1:])

    def read(self) -> list[dict[str, Any]]:
        records = []
        for key in self._keys():
            for attempt in range(3):
                try:
                    body = self.store.client.get_object(Bucket=self.store.bucket, Key=key)["Body"].read()
                    break
                except self.store.client.exceptions.NoSuchKey:
                    if attempt == 2:
                        raise
                    time.sleep(0.2)
            records.append(json.loads(body))
        return records


# --------------------------------------------------------------------------------------------- choice


def open_store(url: str) -> PostgresStore | S3Store:
    """The shared backend named by a ``CLOUDOPT_EXECUTOR_STORE`` URL."""
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresStore(url)
    return S3Store(url)
