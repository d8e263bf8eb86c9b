"""The Parquet lake on S3: part files under fresh names, made visible by one manifest object per partition.

Layout under ``s3://bucket/prefix``:

- ``<table>/account_id=<id>/date=<YYYY-MM-DD>/part-<uuid>.parquet``: the data, as in the local lake
  (the batch SQL models read ``account_id`` and ``date`` from these paths);
- ``_manifests/<table>/account_id=<id>/date=<YYYY-MM-DD>/manifest.json``: the partition's live files.

S3 has no rename, but a PUT of one object is atomic: a write uploads its part file under a new name,
then PUTs the partition's manifest naming it. Readers only ever follow manifests, so they see the old
partition or the new one, never half of one; a writer killed before its manifest PUT leaves an
unreferenced part file that no reader sees and ``sweep`` deletes later. A file a newer manifest
superseded is kept for ``STALE_STAGING_S`` after that manifest was written, so a warehouse view or a
query planned over the old manifest keeps reading until the warehouse is rebuilt.

DuckDB reads the files through pyarrow's S3 client, registered on each connection (``attach``): the
httpfs extension is not needed (DuckDB would download it at first use, which a machine without
internet access cannot do). The endpoint, region and credentials come from the usual AWS variables
(``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``, ``AWS_REGION``, the credential chain).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from datetime import UTC, date, datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.arrow import ArrowFSWrapper
from pyarrow import fs

from cloudopt_pipelines.storage.lake import (
    _HASH_CHUNK,
    ROW_GROUP_ROWS,
    STALE_STAGING_S,
    CorruptFileError,
    Lake,
    _iso,
    check_sha256,
    checked_for_write,
    is_table_name,
    quote_literal,
    repair_hint,
)

MANIFESTS = "_manifests"
MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
HOLD_BEFORE_COMMIT_VAR = "CLOUDOPT_LAKE_HOLD_BEFORE_COMMIT"
"""Test hook: a file path; a writer touches it once its part file is uploaded and then waits before the
manifest PUT, so a test can kill the process exactly there (only writes of the table named by
``CLOUDOPT_LAKE_HOLD_TABLE``, when set)."""
HOLD_TABLE_VAR = "CLOUDOPT_LAKE_HOLD_TABLE"


class _DuckDBS3(ArrowFSWrapper):
    """pyarrow's S3 client as an fsspec file system answering ``s3://`` paths for DuckDB."""

    protocol = "s3"


def s3_filesystem(environ: dict[str, str] | None = None) -> fs.S3FileSystem:
    """pyarrow's S3 client configured from the AWS variables (endpoint override for a local S3 such as moto)."""
    env = os.environ if environ is None else environ
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    options: dict[str, object] = {
        "region": env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
        "connect_timeout": 10,
        "request_timeout": 60,
    }
    if endpoint:
        scheme, _, _ = endpoint.partition("://")
        options.update(endpoint_override=endpoint, scheme=scheme if scheme in ("http", "https") else "https")
    return fs.S3FileSystem(**options)


class S3Lake(Lake):
    """The lake under ``s3://bucket/prefix``: the same API as the local ``Lake``, over manifests."""

    is_local = False

    def __init__(self, url: str, filesystem: fs.S3FileSystem | None = None) -> None:
        if not url.startswith("s3://") or not url.removeprefix("s3://").split("/", 1)[0]:
            raise ValueError(
                f"lake URL {url!r} is not s3://bucket[/prefix]; set CLOUDOPT_LAKE_URL to e.g. s3://my-bucket/lake"
            )
        self.base = url.removeprefix("s3://").rstrip("/")
        self.root = f"s3://{self.base}"  # type: ignore[assignment]
        self.fs = filesystem or s3_filesystem()
        self._rows: dict[str, int] = {}
        self._digests: dict[str, str] = {}

    @property
    def url(self) -> str:
        return str(self.root)

    # ---------------------------------------------------------------- paths

    def table_dir(self, table: str) -> str:  # type: ignore[override]
        return f"{self.root}/{table}"

    def partition_dir(self, table: str, account_id: str | None = None, day: date | str | None = None) -> str:  # type: ignore[override]
        return f"{self.root}/{_partition_key(table, account_id, day)}"

    def _manifest_key(self, table: str, account_id: str | None, day: date | str | None) -> str:
        return f"{self.base}/{MANIFESTS}/{_partition_key(table, account_id, day)}/{MANIFEST}"

    # ---------------------------------------------------------------- manifests

    def _manifest(self, table: str, account_id: str | None, day: date | str | None) -> dict | None:
        key = self._manifest_key(table, account_id, day)
        try:
            with self.fs.open_input_stream(key) as stream:
                return _parsed_manifest(key, stream.read(), table, self)
        except FileNotFoundError:
            return None

    def _manifest_infos(self, table: str | None = None) -> list[fs.FileInfo]:
        base = f"{self.base}/{MANIFESTS}" + (f"/{table}" if table else "")
        try:
            infos = self.fs.get_file_info(fs.FileSelector(base, recursive=True, allow_not_found=True))
        except FileNotFoundError:
            return []
        return [i for i in infos if i.type == fs.FileType.File and i.base_name == MANIFEST]

    def _manifests(self, table: str) -> list[dict]:
        found = []
        for info in self._manifest_infos(table):
            try:
                with self.fs.open_input_stream(info.path) as stream:
                    found.append(_parsed_manifest(info.path, stream.read(), table, self))
            except FileNotFoundError:
                continue
        return found

    # ---------------------------------------------------------------- listing

    def partition_file(self, table: str, account_id: str | None = None, day: date | str | None = None) -> str | None:  # type: ignore[override]
        manifest = self._manifest(table, account_id, day)
        if not manifest or not manifest["files"]:
            return None
        self._rows.update({f["key"]: int(f["rows"]) for f in manifest["files"]})
        return f"s3://{manifest['files'][0]['key']}"

    def glob(self, table: str) -> str:
        raise NotImplementedError(
            "a lake on S3 is read through its manifests, not a glob: use Lake.parquet_source or Lake.files"
        )

    def parquet_source(self, *tables: str) -> str | None:
        files = [f for t in tables for f in self.files(t)]
        return "[" + ", ".join(quote_literal(f) for f in files) + "]" if files else None

    def exists(self, table: str) -> bool:
        return bool(self._manifest_infos(table))

    def tables(self) -> list[str]:
        return sorted(
            name for name in self._folders(f"{self.base}/{MANIFESTS}") if is_table_name(name) and self.exists(name)
        )

    def ignored_folders(self) -> list[str]:
        return sorted(
            name for name in self._folders(self.base) if not name.startswith((".", "_")) and not is_table_name(name)
        )

    def _folders(self, base: str) -> list[str]:
        infos = self.fs.get_file_info(fs.FileSelector(base, recursive=False, allow_not_found=True))
        return [i.base_name for i in infos if i.type == fs.FileType.Directory]

    def files(self, table: str) -> list[str]:  # type: ignore[override]
        entries = [f for m in self._manifests(table) for f in m["files"]]
        self._digests.update({f["key"]: f["sha256"] for f in entries if isinstance(f.get("sha256"), str)})
        return sorted(f"s3://{f['key']}" for f in entries)

    def recorded_sha256(self, file: Path | str) -> str | None:
        """The SHA-256 the manifest recorded for ``file`` (one ``files`` listed); None before digests."""
        return self._digests.get(str(file).removeprefix("s3://"))

    def file_stamp(self, file: Path | str) -> tuple[int, int] | None:
        return None  # an object is never rewritten under its name: its name and digest identify it

    def actual_sha256(self, file: Path | str) -> str:
        digest = hashlib.sha256()
        with self.fs.open_input_stream(str(file).removeprefix("s3://")) as stream:
            while chunk := stream.read(_HASH_CHUNK):
                digest.update(chunk)
        return digest.hexdigest()

    def partitions(self, table: str) -> list[tuple[str | None, str | None]]:
        found = [(m.get("account_id"), m.get("date")) for m in self._manifests(table)]
        return sorted(found, key=lambda key: (key[0] or "", key[1] or ""))

    def num_rows(self, file: Path | str) -> int:
        key = str(file).removeprefix("s3://")
        if key in self._rows:  # from its manifest: a part file is never rewritten under its name
            return self._rows[key]
        return self.read_footer(file).num_rows

    def read_footer(self, file: Path | str) -> pq.FileMetaData:
        with self.fs.open_input_file(str(file).removeprefix("s3://")) as handle:
            return pq.read_metadata(handle)

    # ---------------------------------------------------------------- read and write

    def attach(self, con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
        if "s3" not in con.list_filesystems():
            con.register_filesystem(_DuckDBS3(self.fs))
        return con

    def write(  # type: ignore[override]
        self,
        table: str,
        data: pa.Table,
        account_id: str | None = None,
        day: date | str | None = None,
        schema: pa.Schema | None = None,
    ) -> str:
        """Replace one partition: upload a new part file, then PUT the manifest naming it (atomic)."""
        data = checked_for_write(table, data, schema)
        key = f"{self.base}/{_partition_key(table, account_id, day)}/part-{uuid.uuid4().hex}.parquet"
        sink = pa.BufferOutputStream()
        pq.write_table(data, sink, compression="zstd", write_page_checksum=True, row_group_size=ROW_GROUP_ROWS)
        body = sink.getvalue()
        with self.fs.open_output_stream(key) as out:
            out.write(body)
        _hold_before_commit(table)
        manifest = {
            "format": MANIFEST_FORMAT,
            "table": table,
            "account_id": account_id,
            "date": _iso(day) if day is not None else None,
            "files": [{"key": key, "rows": data.num_rows, "sha256": hashlib.sha256(body).hexdigest()}],
            "written_at": datetime.now(UTC).isoformat(),
            "writer": f"{os.getpid()}@{os.uname().nodename}",
        }
        with self.fs.open_output_stream(self._manifest_key(table, account_id, day)) as out:
            out.write(json.dumps(manifest, indent=1).encode())
        return f"s3://{key}"

    def read(self, table: str, account_id: str | None = None, day: date | str | None = None) -> pa.Table:
        """Read one partition through its manifest; a clear error names the partition and how to produce it."""
        manifest = self._manifest(table, account_id, day)
        if manifest is None:
            where = ", ".join(p for p in (account_id and f"account {account_id}", day and f"date {_iso(day)}") if p)
            raise FileNotFoundError(
                f"lake table '{table}' has no partition for {where or 'the whole table'} under "
                f"{self.partition_dir(table, account_id, day)}; materialise '{table}' for it first "
                "(cloudopt run --start ... --end ...)"
            )
        parts = []
        for entry in manifest["files"]:
            path = f"s3://{entry['key']}"
            data = self._verified_bytes(table, entry)
            try:
                parts.append(pq.read_table(pa.BufferReader(data), page_checksum_verification=True))
            except (OSError, pa.ArrowException) as exc:
                raise OSError(
                    f"lake file {path} cannot be read ({str(exc).splitlines()[0]}): {repair_hint(self, table, path)}"
                ) from exc
        return pa.concat_tables(parts) if len(parts) != 1 else parts[0]

    def verified_file(self, table: str, account_id: str | None = None, day: date | str | None = None) -> str | None:  # type: ignore[override]
        """The live file of one partition after checking its SHA-256 against the one its manifest recorded
        (``CorruptFileError`` if they differ), or None when the partition was never written."""
        manifest = self._manifest(table, account_id, day)
        if not manifest or not manifest["files"]:
            return None
        self._rows.update({f["key"]: int(f["rows"]) for f in manifest["files"]})
        for entry in manifest["files"]:
            self._verified_bytes(table, entry)
        return f"s3://{manifest['files'][0]['key']}"

    def _verified_bytes(self, table: str, entry: dict) -> bytes:
        """The object's bytes, checked against the manifest's SHA-256 (a manifest from before digests has none)."""
        with self.fs.open_input_stream(entry["key"]) as stream:
            data = stream.read()
        recorded = entry.get("sha256")
        if recorded is not None:
            check_sha256(f"s3://{entry['key']}", hashlib.sha256(data).hexdigest(), recorded, table, self)
        return data

    def sweep(self, now: float | None = None) -> list[str]:
        """Delete part files no manifest names that are older than ``STALE_STAGING_S``, counted from their
        upload and from their partition's latest manifest (a superseded file outlives its replacement by
        that long); returns the deleted URLs."""
        now = time.time() if now is None else now
        live: set[str] = set()
        committed: dict[str, float] = {}
        for info in self._manifest_infos():
            partition = info.path[len(f"{self.base}/{MANIFESTS}/") : -len(f"/{MANIFEST}")]
            committed[partition] = info.mtime.timestamp() if info.mtime else now
            try:
                with self.fs.open_input_stream(info.path) as stream:
                    live.update(f["key"] for f in json.loads(stream.read())["files"])
            except FileNotFoundError:
                continue
        removed: list[str] = []
        for table in self._folders(self.base):
            if not is_table_name(table):
                continue
            infos = self.fs.get_file_info(fs.FileSelector(f"{self.base}/{table}", recursive=True, allow_not_found=True))
            for info in infos:
                if info.type != fs.FileType.File or not info.base_name.startswith("part-") or info.path in live:
                    continue
                partition = info.path[len(f"{self.base}/") : -len(f"/{info.base_name}")]
                uploaded = info.mtime.timestamp() if info.mtime else now
                if now - max(uploaded, committed.get(partition, uploaded)) > STALE_STAGING_S:
                    self.fs.delete_file(info.path)
                    removed.append(f"s3://{info.path}")
        return removed


def _parsed_manifest(key: str, body: bytes, table: str, lake: S3Lake) -> dict:
    """A manifest object's content; one that is not a manifest (truncated, edited by hand) raises
    ``CorruptFileError`` naming the object and the run that rewrites its partition."""
    try:
        manifest = json.loads(body)
        if not isinstance(manifest, dict) or not all(isinstance(f["key"], str) for f in manifest["files"]):
            raise ValueError("not a manifest")
        return manifest
    except (ValueError, KeyError, TypeError) as exc:
        data_path = f"s3://{key.replace(f'/{MANIFESTS}/', '/', 1)}"
        raise CorruptFileError(
            f"lake manifest s3://{key} is damaged ({exc}): {repair_hint(lake, table, data_path)}"
        ) from exc


def _partition_key(table: str, account_id: str | None, day: date | str | None) -> str:
    key = table
    if account_id is not None:
        key += f"/account_id={account_id}"
    if day is not None:
        key += f"/date={_iso(day)}"
    return key


def _hold_before_commit(table: str) -> None:
    marker = os.environ.get(HOLD_BEFORE_COMMIT_VAR)
    if not marker or os.environ.get(HOLD_TABLE_VAR, table) != table:
        return
    Path(marker).touch()
    while True:  # until the test kills this process
        time.sleep(1)
