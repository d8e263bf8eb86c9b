"""How the commands print rows: tables with money as money, JSON, CSV and Parquet files. No Dagster."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

FORMATS = ("table", "json", "csv")
FILE_SUFFIXES = (".csv", ".parquet", ".json")
MONEY_HINTS = ("usd", "cost", "saving", "price", "spend", "budget", "amount")


def is_money(column: str) -> bool:
    """Columns named like money (``monthly_savings_usd``, ``cost``, ``total_price``) print with two decimals."""
    name = column.lower()
    return any(hint in name for hint in MONEY_HINTS)


def format_value(column: str, value: Any) -> str:
    """One cell for a table: money with two decimals and thousands separators, other numbers in plain
    notation (never 1.235e+08), NULL as an empty cell."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, Decimal):
        value = float(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if is_money(column) or abs(value) >= 100:
            return f"{value:,.2f}"
        if value == int(value):
            return f"{value:.1f}"
        return f"{value:.4g}" if abs(value) >= 1e-4 else f"{value:.6f}"
    if isinstance(value, int):
        return f"{value:,}" if is_money(column) else str(value)
    return str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, Decimal)) and not isinstance(value, bool)


def table_text(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-style table; numbers right-aligned."""
    from tabulate import tabulate

    cells = [[format_value(c, v) for c, v in zip(columns, row, strict=True)] for row in rows]
    numeric = [all(_is_number(row[i]) for row in rows if row[i] is not None) for i in range(len(columns))]
    align = ["right" if n and rows else "left" for n in numeric]
    return tabulate(cells, headers=list(columns), tablefmt="github", colalign=align, disable_numparse=True)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    return value


def json_text(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """The rows as a JSON list of objects (numbers as numbers, dates as ISO strings)."""
    return json.dumps([{c: _jsonable(v) for c, v in zip(columns, row, strict=True)} for row in rows], indent=1)


def csv_text(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """The rows as CSV with a header (numbers unrounded, NULL as an empty field)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if v is None else _jsonable(v) for v in row])
    return out.getvalue()


def render(fmt: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Rows as ``table``, ``json`` or ``csv``."""
    if fmt == "json":
        return json_text(columns, rows)
    if fmt == "csv":
        return csv_text(columns, rows).rstrip("\n")
    return table_text(columns, rows)


def write_rows(path: Path, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Write rows to ``path`` as CSV, Parquet or JSON, by its suffix; ValueError for another suffix."""
    suffix = path.suffix.lower()
    if suffix not in FILE_SUFFIXES:
        raise ValueError(f"--output {path}: write a .csv, .parquet or .json file (the suffix picks the format)")
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist([dict(zip(columns, row, strict=True)) for row in rows])
        if not rows:
            table = pa.table({c: pa.array([], pa.null()) for c in columns})
        pq.write_table(table, path)
    elif suffix == ".csv":
        path.write_text(csv_text(columns, rows))
    else:
        path.write_text(json_text(columns, rows) + "\n")
