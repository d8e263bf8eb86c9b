"""NaN and infinite samples never reach a statistic or a recommendation; they are counted (defect 12)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from cloudopt_pipelines.backtest.features import MODELS, run_feature_models
from cloudopt_pipelines.catalog.prices import build_price_catalog
from cloudopt_pipelines.optimizers.sizing import Catalog
from cloudopt_pipelines.optimizers.standalone import STANDALONE_FEATURE_INPUTS, recommend_account
from cloudopt_pipelines.storage.lake import Lake
from cloudopt_pipelines.storage.schemas import CLUSTER_METRICS_5M, RESOURCES, UTILIZATION_5M
from tests.test_features import ACCOUNT, DAY0, RTOL, run, ts_of

INF, NAN = math.inf, math.nan
A, B = "i-000000000000000aa", "i-000000000000000bb"
CLUSTER = "arn:aws:ecs:us-east-1:000011112222:cluster/c1"
NOT_A_NUMBER = re.compile(r"\b(nan|inf)\s*(%|vcpu|gib)", re.IGNORECASE)  # "P99.5 ... is nan %"


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog(build_price_catalog())


def write_partition(lake: Lake) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    cpu = rng.uniform(5, 40, 288)
    peak = cpu + rng.uniform(0, 10, 288)
    mem = rng.uniform(20, 60, 288)
    cpu_a, peak_a, mem_a = list(cpu), list(peak), list(mem)
    peak_a[10], cpu_a[20], mem_a[30], peak_a[40], cpu_a[40] = INF, NAN, -INF, NAN, INF
    rows = len(cpu)
    table = pa.table(
        {
            "account_id": [ACCOUNT] * 2 * rows,
            "date": [DAY0] * 2 * rows,
            "resource_id": [A] * rows + [B] * rows,
            "ts": [ts_of(i) for i in range(rows)] * 2,
            "cpu_pct": cpu_a + list(cpu),
            "cpu_max_pct": peak_a + list(peak),
            "mem_pct": mem_a + list(mem),
            "net_in_bytes": [1000.0] * (2 * rows - 1) + [INF],
            "net_out_bytes": pa.nulls(2 * rows, pa.float64()),
            "source": ["test"] * 2 * rows,
        }
    ).cast(UTILIZATION_5M)
    lake.write("utilization_5m", table, ACCOUNT, DAY0)
    cluster = pa.table(
        {
            "account_id": [ACCOUNT] * 3,
            "date": [DAY0] * 3,
            "resource_id": [CLUSTER] * 3,
            "ts": [ts_of(0), ts_of(1), ts_of(2)],
            "namespace": ["AWS/ECS"] * 3,
            "metric": ["CPUUtilization"] * 3,
            "stat": ["Average"] * 3,
            "value": [30.0, INF, 50.0],
            "source": ["test"] * 3,
        }
    ).cast(CLUSTER_METRICS_5M)
    lake.write("cluster_metrics_5m", cluster, ACCOUNT, DAY0)
    keep = np.ones(rows, bool)
    keep[[10, 40]] = False  # peaks gone: the one at 10 is inf, the one at 40 is NaN and its average inf
    return peak[keep], mem[np.arange(rows) != 30]


def test_nonfinite_samples_are_excluded_and_counted(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    finite_peaks, finite_mem = write_partition(lake)
    stg = [r for r in run(lake, "stg_utilization_5m", DAY0).table.to_pylist() if r["resource_id"] == A]
    flagged = [i for i, r in enumerate(stg) if r["nonfinite"]]
    assert flagged == [10, 20, 30, 40]
    assert stg[10]["cpu_peak_pct"] == stg[10]["cpu_pct"]  # inf maximum out: the average stands in
    assert stg[20]["cpu_pct"] is None and stg[30]["mem_pct"] is None and stg[40]["cpu_peak_pct"] is None
    assert not stg[30]["out_of_range"]  # non-finite is its own reason, not "out of range"
    run(lake, "stg_cluster_metrics_5m", DAY0)

    daily = {r["resource_id"]: r for r in run(lake, "utilization_daily", DAY0).table.to_pylist()}
    a = daily[A]
    assert a["nonfinite_samples"] == 4 and daily[B]["nonfinite_samples"] == 1
    assert daily[CLUSTER]["nonfinite_samples"] == 1 and daily[CLUSTER]["cpu_max_pct"] == 50.0
    peaks = np.concatenate([finite_peaks[:10], [stg[10]["cpu_pct"]], finite_peaks[10:]])
    assert a["cpu_p995_pct"] == pytest.approx(np.quantile(peaks, 0.995), rel=RTOL)
    assert a["cpu_max_pct"] == pytest.approx(peaks.max(), rel=RTOL)
    assert a["mem_max_pct"] == pytest.approx(finite_mem.max(), rel=RTOL)
    for row in daily.values():
        assert all(math.isfinite(v) for v in row.values() if isinstance(v, float)), row

    window = {r["resource_id"]: r for r in run(lake, "utilization_window", DAY0, window_days=7).table.to_pylist()}
    assert window[A]["nonfinite_samples"] == 4
    assert window[A]["cpu_p995_pct"] == pytest.approx(a["cpu_p995_pct"], rel=RTOL)
    for row in window.values():
        assert all(math.isfinite(v) for v in row.values() if isinstance(v, float)), row


def resources_row() -> pa.Table:
    return pa.Table.from_pylist(
        [
            {
                "account_id": ACCOUNT,
                "date": DAY0,
                "resource_id": A,
                "resource_kind": "ec2_instance",
                "deployment_type": "standalone",
                "region": "us-east-1",
                "instance_type": "m5.xlarge",
                "state": "running",
                "tags": '{"env": "prod"}',
                "attributes": "{}",
            }
        ],
        schema=RESOURCES,
    )


def feature_tables(lake: Lake) -> dict[str, pa.Table]:
    """The partition through the shipped models, and the tables the recommender reads (as the asset passes)."""
    write_partition(lake)
    lake.write("resources", resources_row(), ACCOUNT, DAY0)
    run_feature_models(lake, ACCOUNT, [DAY0], (*MODELS, "activity_profile"), window_days=7)
    return {name: lake.read(name, ACCOUNT, DAY0) for name in STANDALONE_FEATURE_INPUTS}


def test_the_recommender_on_the_feature_tables_names_the_excluded_samples(tmp_path: Path, catalog) -> None:
    features = feature_tables(Lake(tmp_path / "lake"))
    [window] = [r for r in features["utilization_window"].to_pylist() if r["resource_id"] == A]
    assert window["nonfinite_samples"] == 4
    recs = recommend_account(ACCOUNT, DAY0, resources_row(), features, catalog).table.to_pylist()
    assert recs and all(r["resource_id"] == A for r in recs)
    assert all(r["finding"] is not None for r in recs)  # sized from the finite statistics, not left out
    for r in recs:
        assert "4 sample(s) with a NaN or infinite value were excluded" in r["rationale"]
        assert not NOT_A_NUMBER.search(r["rationale"])
        assert all(math.isfinite(v) for v in r.values() if isinstance(v, float))


@pytest.mark.parametrize("column", ["cpu_p995_pct", "cpu_max_pct", "mem_max_pct", "cpu_daily_peak_std_pct"])
@pytest.mark.parametrize("value", [NAN, INF])
def test_a_window_statistic_that_is_not_finite_is_never_sized_from(tmp_path: Path, catalog, column, value) -> None:
    features = feature_tables(Lake(tmp_path / "lake"))
    window = features["utilization_window"].to_pylist()
    for row in window:
        if row["resource_id"] == A:
            row[column] = value  # a partition the shipped models did not write
    schema = features["utilization_window"].schema
    features = {**features, "utilization_window": pa.Table.from_pylist(window, schema=schema)}
    [row] = recommend_account(ACCOUNT, DAY0, resources_row(), features, catalog).table.to_pylist()
    price = catalog.get("us-east-1", "m5.xlarge").monthly_usd
    assert row["option_name"] == "keep" and row["is_best"] and row["confidence"] == 0.0
    assert row["monthly_cost_proposed_usd"] == pytest.approx(price) == row["monthly_cost_current_usd"]
    assert f"utilization_window of {A}: {column} is {value}" in row["rationale"]
    assert "no recommendation is made from it" in row["rationale"] and "re-materialise" in row["rationale"]
    assert row["rationale"].endswith("Kept as it is.")
