"""The Parquet lake: one immutable file per table partition, swapped in atomically.

Layout: ``<lake>/<table>/account_id=<id>/date=<YYYY-MM-DD>/part-<uuid>.parquet`` for account x day
tables, ``<lake>/<table>/date=<YYYY-MM-DD>/part-<uuid>.parquet`` for day tables and
``<lake>/<table>/part-<uuid>.parquet`` for unpartitioned ones.

A write builds the new partition directory under ``<lake>/.staging`` and then swaps it with the
live one in a single ``renameat2(RENAME_EXCHANGE)`` (plain ``rename`` for a first write). A reader
therefore sees the old partition or the new one, never half of one and never both. Files are never
rewritten in place: DuckDB reopens a file between planning and scanning a query, and a file replaced
under the same name in between would mix two versions. With a new name per version, a query that
overlaps a rewrite of the very same partition fails with "file not found" and can simply be rerun.
Writers of different partitions never share a path, so they run in parallel freely.

Every file is written with Parquet page checksums (CRC32), which pyarrow verifies, and with the
SHA-256 of the whole file beside it (``part-<uuid>.parquet.sha256``, swapped in with it): DuckDB,
which runs the feature models, verifies no page checksum and reads a flipped bit in a data page as
wrong numbers. ``Lake.read`` and ``Lake.verified_file`` (the file the SQL models read) check the
digest first, so a damaged file fails the read naming the file and its repair (a file written
before digests existed has none and is read unchecked). A staging
directory is named after the writer's process: ``sweep_leftovers`` removes those of processes that
are gone (a killed run) and any older than a write could take.
"""

import ctypes
import errno
import hashlib
import os
import re
import shutil
import socket
import time
import uuid
from datetime import date
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from cloudopt_pipelines.storage.schemas import TABLES, conform

STAGING = ".staging"
TABLE_NAME = re.compile(r"[a-z][a-z0-9_]*")
STALE_STAGING_S = 6 * 3600.0
"""A staging directory this old is a leftover whatever its process: one partition is written in seconds."""
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths; False where the system cannot (then the caller falls back)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, f"cannot swap {a} with {b}: {os.strerror(err)}")


# Rows per Parquet row group. DuckDB reads a file's row groups in parallel, one per thread: a partition
# of one account-day (288 rows an instance) in one group would keep a per-partition step on one core.
# 131,072 rows (455 instances) gives an account of 1,000 instances five groups.
ROW_GROUP_ROWS = 131_072
DIGEST_SUFFIX = ".sha256"
_HASH_CHUNK = 1 << 20


class CorruptFileError(OSError):
    """A lake file whose bytes no longer match the SHA-256 recorded when it was written."""


class Lake:
    """Reads and writes table partitions under one root directory (``open_lake`` also opens one on S3)."""

    is_local = True

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    @property
    def url(self) -> str:
        """Where the lake lives, as ``CLOUDOPT_LAKE_URL`` names it."""
        return str(self.root)

    def attach(self, con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
        """Let ``con`` read this lake's files (nothing to do for a local lake); returns ``con``."""
        return con

    def parquet_source(self, *tables: str) -> str | None:
        """``read_parquet``'s first argument for every live file of ``tables`` (globs here); None if none."""
        globs = [quote_literal(self.glob(t)) for t in tables if self.exists(t)]
        if not globs:
            return None
        return globs[0] if len(globs) == 1 else "[" + ", ".join(globs) + "]"

    def num_rows(self, file: Path | str) -> int:
        """Rows of one live file (from its footer, or what its partition's manifest recorded)."""
        return self.read_footer(file).num_rows

    def read_footer(self, file: Path | str) -> pq.FileMetaData:
        """The Parquet footer of one file, read from the file itself (an error if it is not readable)."""
        return pq.read_metadata(file)

    def recorded_sha256(self, file: Path | str) -> str | None:
        """The SHA-256 recorded when ``file`` was written, None for a file from before digests."""
        try:
            return digest_path(Path(file)).read_text().strip()
        except FileNotFoundError:
            return None

    def file_stamp(self, file: Path | str) -> tuple[int, int] | None:
        """(size, mtime_ns) of ``file``: a file is never rewritten in place, so while these hold, a digest
        checked once still holds (None on a backend whose objects are immutable by name)."""
        stat = os.stat(file)
        return (stat.st_size, stat.st_mtime_ns)

    def actual_sha256(self, file: Path | str) -> str:
        """SHA-256 of the bytes of ``file`` as stored now."""
        return file_sha256(Path(file))

    def sweep(self, now: float | None = None) -> list[str]:
        """Remove what killed writers left (see ``sweep_leftovers``); returns what was removed."""
        return [str(p) for p in sweep_leftovers(self.root, now)]

    def table_dir(self, table: str) -> Path:
        return self.root / table

    def partition_dir(self, table: str, account_id: str | None = None, day: date | str | None = None) -> Path:
        path = self.table_dir(table)
        if account_id is not None:
            path = path / f"account_id={account_id}"
        if day is not None:
            path = path / f"date={_iso(day)}"
        return path

    def partition_file(self, table: str, account_id: str | None = None, day: date | str | None = None) -> Path | None:
        """The live file of one partition, or None when the partition was never written."""
        directory = self.partition_dir(table, account_id, day)
        files = sorted(directory.glob("part-*.parquet")) if directory.is_dir() else []
        return files[0] if files else None

    def glob(self, table: str) -> str:
        """The glob that matches every partition file of ``table`` (for DuckDB views)."""
        depth = self._partition_depth(table)
        return str(self.table_dir(table).joinpath(*(["*"] * depth), "part-*.parquet"))

    def _partition_depth(self, table: str) -> int:
        base = self.table_dir(table)
        for depth, pattern in ((2, "*/*/part-*.parquet"), (1, "*/part-*.parquet"), (0, "part-*.parquet")):
            if base.is_dir() and next(base.glob(pattern), None) is not None:
                return depth
        return 0

    def exists(self, table: str) -> bool:
        base = self.table_dir(table)
        return base.is_dir() and next(base.rglob("part-*.parquet"), None) is not None

    def tables(self) -> list[str]:
        """Every table with at least one partition written (folders that are not table names are not tables)."""
        if not self.root.is_dir():
            return []
        return sorted(
            p.name for p in self.root.iterdir() if p.is_dir() and is_table_name(p.name) and self.exists(p.name)
        )

    def ignored_folders(self) -> list[str]:
        """Visible folders of the lake that are not table names (a copy such as ``price_catalog backup``)."""
        if not self.root.is_dir():
            return []
        return sorted(
            p.name
            for p in self.root.iterdir()
            if p.is_dir() and not p.name.startswith(".") and not is_table_name(p.name)
        )

    def files(self, table: str) -> list[Path]:
        """Every partition file of ``table``, sorted."""
        base = self.table_dir(table)
        return sorted(base.rglob("part-*.parquet")) if base.is_dir() else []

    def write(
        self,
        table: str,
        data: pa.Table,
        account_id: str | None = None,
        day: date | str | None = None,
        schema: pa.Schema | None = None,
    ) -> Path:
        """Replace one partition of ``table`` with ``data``, atomically; returns the file written."""
        data = checked_for_write(table, data, schema)
        live = self.partition_dir(table, account_id, day)
        live.parent.mkdir(parents=True, exist_ok=True)
        stage = self.root / STAGING / f"{_writer()}-{uuid.uuid4().hex}"
        stage.mkdir(parents=True)
        name = f"part-{uuid.uuid4().hex}.parquet"
        try:
            pq.write_table(
                data, stage / name, compression="zstd", write_page_checksum=True, row_group_size=ROW_GROUP_ROWS
            )
            with open(stage / name, "rb") as handle:
                os.fsync(handle.fileno())
            write_digest(stage / name)
            if live.is_dir() and not _only_parts(live):
                raise FileExistsError(f"{live} holds files the lake did not write; move them away first")
            self._swap_in(stage, live)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        return live / name

    def _swap_in(self, stage: Path, live: Path) -> None:
        if live.is_dir():
            if _exchange(stage, live):
                return  # stage now holds the old version and is removed by the caller
            # No atomic exchange on this file system: hide the old version, then reveal the new one.
            hidden = stage.with_name(stage.name + ".old")
            os.rename(live, hidden)
            os.rename(stage, live)
            shutil.rmtree(hidden, ignore_errors=True)
            return
        try:
            os.rename(stage, live)
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not _exchange(stage, live):
                raise

    def read(self, table: str, account_id: str | None = None, day: date | str | None = None) -> pa.Table:
        """Read one partition; a clear error names the partition and how to produce it."""
        path = self.partition_file(table, account_id, day)
        if path is None:
            where = ", ".join(p for p in (account_id and f"account {account_id}", day and f"date {_iso(day)}") if p)
            raise FileNotFoundError(
                f"lake table '{table}' has no partition for {where or 'the whole table'} under "
                f"{self.partition_dir(table, account_id, day)}; materialise '{table}' for it first "
                "(cloudopt run --start ... --end ...)"
            )
        data = path.read_bytes()
        verify_digest(path, table, self, data)
        try:
            return pq.read_table(pa.BufferReader(data), page_checksum_verification=True)
        except (OSError, pa.ArrowException) as exc:
            raise OSError(
                f"lake file {path} cannot be read ({str(exc).splitlines()[0]}): {repair_hint(self, table, path)}"
            ) from exc

    def verified_file(self, table: str, account_id: str | None = None, day: date | str | None = None) -> Path | None:
        """The live file of one partition after checking its SHA-256 (``CorruptFileError`` if it does not
        match), or None when the partition was never written: what readers that open the file
        themselves (DuckDB) go through."""
        path = self.partition_file(table, account_id, day)
        if path is not None:
            verify_digest(path, table, self)
        return path

    def partitions(self, table: str) -> list[tuple[str | None, str | None]]:
        """(account_id, date) of every partition written, sorted."""
        found: list[tuple[str | None, str | None]] = []
        base = self.table_dir(table)
        for path in base.rglob("part-*.parquet") if base.is_dir() else []:
            parts = dict(p.split("=", 1) for p in path.relative_to(base).parts[:-1] if "=" in p)
            found.append((parts.get("account_id"), parts.get("date")))
        return sorted(found, key=lambda key: (key[0] or "", key[1] or ""))


def file_sha256(path: Path, data: bytes | None = None) -> str:
    """SHA-256 of the bytes of ``path`` (of ``data`` when the caller has them already)."""
    if data is not None:
        return hashlib.sha256(data).hexdigest()
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def digest_path(path: Path) -> Path:
    """Where the SHA-256 of the part file ``path`` is kept: beside it, in the same partition folder."""
    return path.with_name(path.name + DIGEST_SUFFIX)


def write_digest(path: Path) -> Path:
    """Record the SHA-256 of the part file ``path`` beside it (before the partition is swapped in)."""
    target = digest_path(path)
    target.write_text(file_sha256(path) + "\n")
    return target


def verify_digest(path: Path, table: str, lake: Lake, data: bytes | None = None) -> None:
    """Raise ``CorruptFileError`` naming ``path`` and its repair when its bytes do not match the SHA-256
    recorded at write time; a file without a recorded digest (written before digests) passes."""
    try:
        recorded = digest_path(path).read_text().strip()
    except FileNotFoundError:
        return
    check_sha256(path, file_sha256(path, data), recorded, table, lake)


def check_sha256(path: Path | str, actual: str, recorded: str, table: str, lake: Lake) -> None:
    """Raise ``CorruptFileError`` naming ``path`` and its repair when ``actual`` is not the SHA-256
    ``recorded`` when the file was written."""
    if actual != recorded:
        raise CorruptFileError(
            f"lake file {path} is damaged (its SHA-256 is {actual[:12]}..., {recorded[:12]}... when written): "
            f"{repair_hint(lake, table, path)}"
        )


def checked_for_write(table: str, data: pa.Table, schema: pa.Schema | None) -> pa.Table:
    """``data`` conformed to ``schema`` (the table's registered schema by default), once ``table`` is
    known to be a lake table name: what every backend's ``write`` does first."""
    if not is_table_name(table):
        raise ValueError(f"{table!r} is not a lake table name (lower-case letters, digits and '_')")
    schema = schema if schema is not None else TABLES.get(table)
    return conform(data, schema, table) if schema is not None else data


def is_table_name(name: str) -> bool:
    """A lake table name: lower-case letters, digits and '_', starting with a letter."""
    return TABLE_NAME.fullmatch(name) is not None


def quote_identifier(name: str) -> str:
    """``name`` as a quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    """``value`` as a quoted SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


def repair_hint(lake: Lake, table: str, file: Path | str) -> str:
    """The command that rewrites the partition holding ``file`` (a rewrite replaces the whole partition)."""
    base = str(lake.table_dir(table)).rstrip("/") + "/"
    relative = str(file)[len(base) :] if str(file).startswith(base) else ""
    parts = dict(p.split("=", 1) for p in relative.split("/")[:-1] if "=" in p)
    day, account = parts.get("date"), parts.get("account_id")
    if day is None:
        return f"rebuild '{table}' (cloudopt run --start DAY --end DAY --refresh-catalog)"
    accounts = f" --accounts {account}" if account else ""
    return f"re-materialise that partition (cloudopt run --start {day} --end {day}{accounts})"


def sweep_leftovers(root: Path, now: float | None = None) -> list[Path]:
    """Remove staging directories of writers that are gone or older than ``STALE_STAGING_S``; returns them.

    A writer's directory is named ``<pid>@<host>-<uuid>`` and is left alone while that process runs;
    one of another machine (a shared lake) or without a pid (an older version) only once it is stale.
    """
    staging = Path(root) / STAGING
    if not staging.is_dir():
        return []
    now = time.time() if now is None else now
    removed: list[Path] = []
    for entry in staging.iterdir():
        try:
            age = now - entry.lstat().st_mtime
        except FileNotFoundError:
            continue
        pid, _, host = entry.name.rsplit("-", 1)[0].partition("@")
        writer_gone = host == socket.gethostname() and pid.isdigit() and not _process_alive(int(pid))
        if writer_gone or age > STALE_STAGING_S:
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def _writer() -> str:
    return f"{os.getpid()}@{socket.gethostname()}"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _only_parts(directory: Path) -> bool:
    return all(p.is_file() and p.name.startswith("part-") for p in directory.iterdir())


def _iso(day: date | str) -> str:
    return day.isoformat() if isinstance(day, date) else str(day)


def open_lake(url: str | Path) -> Lake:
    """The lake at ``url``: ``s3://bucket/prefix`` (``S3Lake``) or a local directory (``Lake``)."""
    text = str(url)
    if text.startswith("s3://"):
        from cloudopt_pipelines.storage.s3lake import S3Lake

        return S3Lake(text)
    return Lake(Path(text.removeprefix("file://")))
