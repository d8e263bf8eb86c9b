"""A content hash of a table's rows: what an approval or a check is bound to, whatever the file looks like."""

from __future__ import annotations

import hashlib
import json
from datetime import date, datetime
from typing import Any

import pyarrow as pa


def table_sha256(table: pa.Table) -> str:
    """SHA-256 of the rows of ``table`` (every column, values as canonical JSON), independent of row order
    and of the Parquet encoding: one edited value gives another hash."""
    rows = sorted(json.dumps(r, sort_keys=True, separators=(",", ":"), default=_canonical) for r in table.to_pylist())
    digest = hashlib.sha256()
    for row in rows:
        digest.update(row.encode())
        digest.update(b"\n")
    return digest.hexdigest()


def _canonical(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)
