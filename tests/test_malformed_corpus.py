"""Every case of the malformed metric-input corpus is cleaned with a recorded reason or rejected clearly.

The corpus (``tests/data/malformed/``, written by its ``generate.py``) holds NaN, infinite, negative and
above-100 % values, numbers and non-numbers as text, duplicate timestamps, clock skew, missing samples and
days, truncated pages, unknown instance types and empty accounts. Each case goes through the shipped
path: the lake write (which refuses what does not fit the schema), the SQL feature models on a real
Parquet lake, and for some the recommender; the outcome is compared with the manifest, whose numbers the
generator computes by a plain reference of its own.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import math
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from cloudopt_pipelines.backtest.features import MODELS, run_feature_models
from cloudopt_pipelines.catalog.prices import build_price_catalog
from cloudopt_pipelines.optimizers.sizing import Catalog
from cloudopt_pipelines.optimizers.standalone import STANDALONE_FEATURE_INPUTS, recommend_account
from cloudopt_pipelines.storage.lake import Lake
from cloudopt_pipelines.storage.schemas import RESOURCES

CORPUS_DIR = Path(__file__).resolve().parent / "data" / "malformed"
CASES = {
    c["case"]: c for c in map(json.loads, gzip.decompress((CORPUS_DIR / "corpus.jsonl.gz").read_bytes()).splitlines())
}
MANIFEST: dict[str, dict[str, Any]] = json.loads((CORPUS_DIR / "manifest.json").read_text())
ACCOUNT = "000011112222"
COLUMNS = {"cpu": "cpu_pct", "max": "cpu_max_pct", "mem": "mem_pct", "in": "net_in_bytes", "out": "net_out_bytes"}
INTEGERS = (
    "samples",
    "cpu_samples",
    "mem_samples",
    "nonfinite_samples",
    "out_of_range_samples",
    "duplicate_samples",
    "gaps",
    "longest_gap_minutes",
)
FLOATS = ("coverage_pct", "cpu_mean_pct", "cpu_max_pct", "mem_max_pct", "net_in_bytes")


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog(build_price_catalog())


def _value(value: Any) -> Any:
    if isinstance(value, dict):
        return {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}[value["f"]]
    return value


def utilization_rows(account: str, day: str, stored: dict[str, Any]) -> pa.Table:
    """The case's rows as a collector hands them over: a column with any text in it is a column of text."""
    rows, ids = stored["rows"], stored["resources"]
    midnight = datetime.combine(date.fromisoformat(day), datetime.min.time(), UTC)
    columns: dict[str, pa.Array] = {
        "account_id": pa.array([account] * len(rows), pa.string()),
        "date": pa.array([date.fromisoformat(day)] * len(rows), pa.date32()),
        "resource_id": pa.array([None if r[0] is None else ids[r[0]] for r in rows], pa.string()),
        "ts": pa.array(
            [None if r[1] is None else midnight + timedelta(seconds=r[1]) for r in rows], pa.timestamp("us", tz="UTC")
        ),
    }
    for k, name in enumerate(COLUMNS.values()):
        values = [_value(r[2 + k]) for r in rows]
        text = any(isinstance(v, str) for v in values)
        columns[name] = pa.array(values, pa.string() if text else pa.float64())
    columns["source"] = pa.array(["corpus"] * len(rows), pa.string())
    return pa.table(columns)


def resources_rows(account: str, day: str, rows: list[dict[str, Any]]) -> pa.Table:
    base = {
        "account_id": account,
        "date": date.fromisoformat(day),
        "resource_kind": "ec2_instance",
        "deployment_type": "standalone",
        "region": "us-east-1",
        "state": "running",
        "tags": '{"env": "dev"}',
        "attributes": "{}",
    }
    rows = [{**base, "resource_id": r["r"], "instance_type": r["instance_type"]} for r in rows]
    return pa.Table.from_pylist(rows, schema=RESOURCES)


def test_the_corpus_is_what_its_generator_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = importlib.util.spec_from_file_location("malformed_generate", CORPUS_DIR / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "HERE", tmp_path)
    module.main()
    for name in ("corpus.jsonl.gz", "manifest.json"):
        assert (tmp_path / name).read_bytes() == (CORPUS_DIR / name).read_bytes(), f"regenerate {name}"
    assert len(MANIFEST) >= 100 and MANIFEST.keys() == CASES.keys()
    categories = {m["category"] for m in MANIFEST.values()}
    assert {
        "nan",
        "inf",
        "negative",
        "above_100",
        "strings",
        "duplicate_timestamps",
        "clock_skew",
        "missing_days",
        "unknown_instance_types",
        "empty_accounts",
        "truncated_pages",
    } <= categories


def _check_daily(lake: Lake, account: str, day: str, expected: dict[str, dict[str, Any]]) -> None:
    daily = {r["resource_id"]: r for r in lake.read("utilization_daily", account, day).to_pylist()}
    assert daily.keys() == expected.keys()
    for resource_id, want in expected.items():
        got = daily[resource_id]
        for column in INTEGERS:
            assert got[column] == want[column], (resource_id, column, got[column], want[column])
        for column in FLOATS:
            if want[column] is None:
                assert got[column] is None, (resource_id, column, got[column])
            else:
                assert got[column] == pytest.approx(want[column], rel=1e-9), (resource_id, column)
        # Never silently wrong: no statistic is NaN or infinite, whatever the input held.
        assert all(math.isfinite(v) for v in got.values() if isinstance(v, float)), (resource_id, got)


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_each_malformed_input_is_cleaned_with_a_reason_or_rejected_clearly(
    name: str, tmp_path: Path, catalog: Catalog
) -> None:
    case, expect = CASES[name], MANIFEST[name]
    lake, account = Lake(tmp_path / "lake"), ACCOUNT
    days = sorted(case["days"])
    outcome = expect["outcome"]

    if outcome == "rejected":
        [day] = days
        with pytest.raises(ValueError) as error:
            lake.write("utilization_5m", utilization_rows(account, day, case["days"][day]), account, day)
        message = str(error.value)
        for part in expect["error"]:
            assert part in message, f"{part!r} not named in: {message}"
        assert lake.partitions("utilization_5m") == []  # nothing half-written
        return

    for day in days:
        lake.write("utilization_5m", utilization_rows(account, day, case["days"][day]), account, day)
    daily_models = ("stg_utilization_5m", "stg_cluster_metrics_5m", "utilization_daily")

    if outcome == "cleaned":
        [day] = days
        run_feature_models(lake, account, [date.fromisoformat(day)], daily_models)
        _check_daily(lake, account, day, expect["daily"])
    elif outcome == "window":
        run_feature_models(lake, account, [date.fromisoformat(d) for d in days], daily_models)
        last = date(2026, 11, 16)
        run_feature_models(lake, account, [last], ("utilization_window",), window_days=14)
        window = {r["resource_id"]: r for r in lake.read("utilization_window", account, last).to_pylist()}
        assert {k: window[k]["days_with_data"] for k in window} == expect["days_with_data"]
    else:
        assert outcome == "recommended"
        [day] = days
        resources = resources_rows(account, day, case["resources"])
        lake.write("resources", resources, account, day)
        run_feature_models(lake, account, [date.fromisoformat(day)], (*MODELS, "activity_profile"), window_days=14)
        features = {table: lake.read(table, account, day) for table in STANDALONE_FEATURE_INPUTS}
        rows = recommend_account(account, date.fromisoformat(day), resources, features, catalog).table.to_pylist()
        assert {r["resource_id"] for r in rows} == set(expect["resources"])
        for resource_id, want in expect["resources"].items():
            mine = [r for r in rows if r["resource_id"] == resource_id]
            best = [r for r in mine if r["is_best"]]
            assert len(best) == 1
            if want.get("analysed"):
                assert not best[0]["rationale"].startswith("Not analysed"), best[0]["rationale"]
                continue
            assert best[0]["action"] == want["action"] and best[0]["confidence"] == want["confidence"]
            for phrase in want["says"]:
                assert phrase in best[0]["rationale"], best[0]["rationale"]
