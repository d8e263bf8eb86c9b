"""The secret scan of tests/secret_scan.py finds a secret wherever one can hide, compressed or not."""

from pathlib import Path

import dagster as dg
import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from tests.secret_scan import scan

SECRET = {"CANARY": "planted-CANARY-31f9c0"}


def test_the_scan_finds_a_secret_in_every_kind_of_output(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    clean, _ = scan(SECRET, home)
    assert clean == []

    # A Parquet value, dictionary-encoded and zstd-compressed: not in the file's bytes as such.
    pq.write_table(pa.table({"note": [SECRET["CANARY"]] * 1000}), home / "part.parquet", compression="zstd")
    with duckdb.connect(str(home / "warehouse.duckdb")) as con:
        con.execute("CREATE TABLE t AS SELECT ? AS v FROM range(5000)", [SECRET["CANARY"]])
    (home / "audit.jsonl").write_text(f'{{"reason": "{SECRET["CANARY"]}"}}\n')

    @dg.asset
    def leaky(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        context.log.info(f"token {SECRET['CANARY']}")
        return dg.MaterializeResult(metadata={"header": SECRET["CANARY"]})

    instance = dg.DagsterInstance.ephemeral()
    assert dg.materialize([leaky], instance=instance).success
    found, counts = scan(SECRET, home, {"stdout": f"x {SECRET['CANARY']}"}, instance)
    where = " | ".join(found)
    for place in ("stdout", "part.parquet (values)", "warehouse.duckdb (tables and views)", "audit.jsonl", "event log"):
        assert place in where, (place, found)
    assert counts["runs"] == 1 and counts["parquet"] == 1 and counts["duckdb"] == 1
