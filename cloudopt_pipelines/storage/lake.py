"""The Parquet lake: one file per table partition, replaced atomically.

Layout: ``<lake>/<table>/account_id=<id>/date=<YYYY-MM-DD>/data.parquet`` for account x day
tables, ``<lake>/<table>/date=<YYYY-MM-DD>/data.parquet`` for day tables and
``<lake>/<table>/data.parquet`` for unpartitioned ones. A partition is written beside its final
name as a hidden temporary file and moved into place with ``os.replace``: readers see the old file
or the new one, never half of one, and writers of different partitions never share a path.
"""

from __future__ import annotations

import os
import uuid
from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from cloudopt_pipelines.storage.schemas import TABLES, conform

DATA_FILE = "data.parquet"


class Lake:
    """Reads and writes table partitions under one root directory."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def table_dir(self, table: str) -> Path:
        return self.root / table

    def partition_dir(self, table: str, account_id: str | None = None, day: date | str | None = None) -> Path:
        path = self.table_dir(table)
        if account_id is not None:
            path = path / f"account_id={account_id}"
        if day is not None:
            path = path / f"date={_iso(day)}"
        return path

    def partition_file(self, table: str, account_id: str | None = None, day: date | str | None = None) -> Path:
        return self.partition_dir(table, account_id, day) / DATA_FILE

    def glob(self, table: str) -> str:
        """The glob that matches every partition file of ``table`` (for DuckDB views)."""
        base = self.table_dir(table)
        depth = self._partition_depth(table)
        return str(base.joinpath(*(["*"] * depth), DATA_FILE))

    def _partition_depth(self, table: str) -> int:
        base = self.table_dir(table)
        if not base.exists():
            return 0
        for depth, pattern in ((2, f"*/*/{DATA_FILE}"), (1, f"*/{DATA_FILE}"), (0, DATA_FILE)):
            if next(base.glob(pattern), None) is not None:
                return depth
        return 0

    def exists(self, table: str) -> bool:
        base = self.table_dir(table)
        return base.exists() and next(base.rglob(DATA_FILE), None) is not None

    def write(
        self,
        table: str,
        data: pa.Table,
        account_id: str | None = None,
        day: date | str | None = None,
        schema: pa.Schema | None = None,
    ) -> Path:
        """Replace one partition of ``table`` with ``data``, atomically; returns the file written."""
        schema = schema if schema is not None else TABLES.get(table)
        if schema is not None:
            data = conform(data, schema, table)
        target = self.partition_file(table, account_id, day)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{DATA_FILE}.{uuid.uuid4().hex}.tmp"
        try:
            pq.write_table(data, tmp, compression="zstd")
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                tmp.unlink()
        return target

    def read(self, table: str, account_id: str | None = None, day: date | str | None = None) -> pa.Table:
        """Read one partition; a clear error names the partition and how to produce it."""
        path = self.partition_file(table, account_id, day)
        if not path.exists():
            where = ", ".join(p for p in (account_id and f"account {account_id}", day and f"date {_iso(day)}") if p)
            raise FileNotFoundError(
                f"lake table '{table}' has no partition for {where or 'the whole table'} at {path}; "
                f"materialise '{table}' for it first (cloudopt run --start ... --end ...)"
            )
        return pq.read_table(path)

    def partitions(self, table: str) -> list[tuple[str | None, str | None]]:
        """(account_id, date) of every partition written, sorted."""
        found: list[tuple[str | None, str | None]] = []
        for path in self.table_dir(table).rglob(DATA_FILE):
            parts = dict(p.split("=", 1) for p in path.relative_to(self.table_dir(table)).parts[:-1] if "=" in p)
            found.append((parts.get("account_id"), parts.get("date")))
        return sorted(found, key=lambda key: (key[0] or "", key[1] or ""))


def _iso(day: date | str) -> str:
    return day.isoformat() if isinstance(day, date) else str(day)
