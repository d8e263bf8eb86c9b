"""Scan every output of a pipeline home for secrets: files byte for byte, and what compression hides
(Parquet values, DuckDB tables, the Dagster event log, run tags and config) read back as text."""

from collections.abc import Mapping
from pathlib import Path

import dagster as dg
import duckdb
import pyarrow.parquet as pq
from dagster._serdes import serialize_value


def _hits(secrets: Mapping[str, str], text: str | bytes, where: str) -> list[str]:
    found = []
    for name, value in secrets.items():
        needle = value.encode() if isinstance(text, bytes) else value
        if needle in text:
            found.append(f"{name} in {where}")
    return found


def _duckdb_text(path: Path) -> str:
    with duckdb.connect(str(path), read_only=True) as con:
        tables = con.execute(
            "SELECT table_schema, table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE'"
        ).fetchall()
        parts = [str(con.execute(f'SELECT * FROM "{s}"."{t}"').fetchall()) for s, t in tables]
        # Views over the lake are read too: what an analyst sees.
        views = con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()
        parts += [str(con.execute(f'SELECT * FROM "{v}"').fetchall()) for (v,) in views]
    return "\n".join(parts)


def scan(
    secrets: Mapping[str, str],
    home: Path,
    texts: Mapping[str, str] = {},
    instance: dg.DagsterInstance | None = None,
) -> tuple[list[str], dict[str, int]]:
    """Where any secret appears, and how many outputs of each kind were read (so a scan of nothing shows)."""
    found: list[str] = []
    counts = {"texts": 0, "files": 0, "parquet": 0, "duckdb": 0, "runs": 0, "events": 0}
    for where, text in texts.items():
        counts["texts"] += 1
        found += _hits(secrets, text, where)
    for path in sorted(p for p in home.rglob("*") if p.is_file()):
        counts["files"] += 1
        found += _hits(secrets, path.read_bytes(), str(path))
        if path.suffix == ".parquet":
            counts["parquet"] += 1
            found += _hits(secrets, str(pq.read_table(path).to_pylist()), f"{path} (values)")
        elif path.suffix == ".duckdb":
            counts["duckdb"] += 1
            found += _hits(secrets, _duckdb_text(path), f"{path} (tables and views)")
    if instance is not None:
        for record in instance.get_run_records():
            run = record.dagster_run
            counts["runs"] += 1
            found += _hits(secrets, serialize_value(run), f"run {run.run_id} (tags, config)")
            for event in instance.all_logs(run.run_id):
                counts["events"] += 1
                found += _hits(secrets, serialize_value(event), f"event log of run {run.run_id}")
    return found, counts
