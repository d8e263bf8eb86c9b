"""The recommender on broken samples: infinite values (defect 12) and CPU above 100 % (defect 13).

Through the shipped path: raw ``utilization_5m`` partitions, the SQL feature models run by the project's
runner on a real Parquet lake, and ``recommend_account`` on the feature tables the asset passes.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from cloudopt_pipelines.backtest.features import MODELS, run_feature_models
from cloudopt_pipelines.catalog.prices import build_price_catalog
from cloudopt_pipelines.optimizers.sizing import (
    PROFILE_PERCENTILES,
    RISK_SETTINGS,
    Catalog,
    NonFiniteStatistic,
    UtilizationProfile,
    required_capacity,
)
from cloudopt_pipelines.optimizers.standalone import STANDALONE_FEATURE_INPUTS, recommend_account
from cloudopt_pipelines.storage.lake import Lake
from cloudopt_pipelines.storage.schemas import RESOURCES, UTILIZATION_5M

ACCOUNT = "000011112222"
START = date(2026, 11, 2)  # a Monday
DAYS = [START + timedelta(days=i) for i in range(14)]
N = 14 * 288
NOT_A_NUMBER = re.compile(r"\b(nan|inf)\s*(%|vcpu|gib)", re.IGNORECASE)  # "P99.5 ... is nan %"
BROKEN, CLEAN, OVER, FEW = "i-00000000000000inf", "i-000000000000clean", "i-00000000000000300", "i-00000000000000few"


def busy() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    cpu = rng.uniform(55, 70, N)
    return cpu, cpu + rng.uniform(0, 10, N)


def fleet() -> dict[str, tuple[str, np.ndarray, np.ndarray]]:
    """resource id -> (instance type, 5-minute CPU averages, 5-minute CPU maxima), 14 days each."""
    cpu, peak = busy()
    broken = peak.copy()
    broken[np.arange(0, N, 130)] = math.inf  # 32 of 4032: the top of the distribution is infinite
    over = np.random.default_rng(5).uniform(150, 300, N)  # a percentage metric cannot be here
    few = peak.copy()
    few[:3] = [150.0, 220.0, 180.0]
    return {
        BROKEN: ("m5.xlarge", cpu, broken),
        CLEAN: ("m5.xlarge", cpu, peak),
        OVER: ("m5.large", over, over),
        FEW: ("m5.xlarge", cpu, few),
    }


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog(build_price_catalog())


@pytest.fixture(scope="module")
def recommended(tmp_path_factory, catalog) -> tuple[dict[str, dict], dict[str, list[dict]]]:
    """The fleet through the feature models and the recommender: window rows and recommendation rows by id."""
    lake = Lake(Path(tmp_path_factory.mktemp("lake")))
    instances = fleet()
    start = datetime.combine(START, datetime.min.time(), tzinfo=UTC)
    for d, day in enumerate(DAYS):
        rows, inventory = [], []
        for rid, (instance_type, cpu, peak) in instances.items():
            for i in range(d * 288, (d + 1) * 288):
                rows.append(
                    {
                        "account_id": ACCOUNT,
                        "date": day,
                        "resource_id": rid,
                        "ts": start + timedelta(seconds=300 * i),
                        "cpu_pct": float(cpu[i]),
                        "cpu_max_pct": float(peak[i]),
                        "source": "test",
                    }
                )
            inventory.append(
                {
                    "account_id": ACCOUNT,
                    "date": day,
                    "resource_id": rid,
                    "resource_kind": "ec2_instance",
                    "deployment_type": "standalone",
                    "region": "us-east-1",
                    "instance_type": instance_type,
                    "state": "running",
                    "tags": json.dumps({"env": "prod"}),
                    "attributes": "{}",
                }
            )
        lake.write("utilization_5m", pa.Table.from_pylist(rows, schema=UTILIZATION_5M), ACCOUNT, day)
        lake.write("resources", pa.Table.from_pylist(inventory, schema=RESOURCES), ACCOUNT, day)
    run_feature_models(lake, ACCOUNT, DAYS, (*MODELS, "activity_profile"))
    last = DAYS[-1]
    features = {
        name: lake.read(name, ACCOUNT, last)
        if days == 1
        else pa.concat_tables(lake.read(name, ACCOUNT, d) for d in DAYS)
        for name, days in STANDALONE_FEATURE_INPUTS.items()
    }
    table = recommend_account(ACCOUNT, last, lake.read("resources", ACCOUNT, last), features, catalog).table
    windows = {r["resource_id"]: r for r in features["utilization_window"].to_pylist()}
    by_resource: dict[str, list[dict]] = {}
    for r in table.to_pylist():
        by_resource.setdefault(r["resource_id"], []).append(r)
    return windows, by_resource


def best(rows: list[dict]) -> dict:
    [row] = [r for r in rows if r["is_best"]]
    return row


def test_infinite_samples_are_excluded_and_never_drive_a_resize(recommended) -> None:
    windows, recs = recommended
    assert windows[BROKEN]["nonfinite_samples"] == 32 and windows[BROKEN]["samples"] == N  # the averages stand in
    assert windows[CLEAN]["nonfinite_samples"] == 0
    assert all(math.isfinite(v) for v in windows[BROKEN].values() if isinstance(v, float))
    broken, clean = recs[BROKEN], recs[CLEAN]
    assert {r["finding"] for r in broken} == {r["finding"] for r in clean}
    assert best(broken)["option_name"] == best(clean)["option_name"]
    assert best(broken)["vcpu"] >= 4  # the busy instance is never cut to a small type
    text = " ".join(r["rationale"] for r in broken)
    assert not NOT_A_NUMBER.search(text)
    assert all("32 sample(s) with a NaN or infinite value were excluded" in r["rationale"] for r in broken)
    assert not any("NaN or infinite" in r["rationale"] for r in clean)


def test_a_statistic_that_is_not_finite_is_refused_by_name() -> None:
    quantiles = dict.fromkeys(PROFILE_PERCENTILES, 1.0) | {99.5: math.nan}
    profile = UtilizationProfile(
        vcpu=4, memory_gib=16, cpu_peak_quantiles_vcpu=quantiles, cpu_mean_vcpu=1.0, mem_quantiles_gib=None,
        net_peak_bps=None, net_bytes_per_day=None, samples=2, expected_samples=288, days_with_data=1,
        capacity_vcpu=4,
    )  # fmt: skip
    with pytest.raises(NonFiniteStatistic, match=r"CPU P99\.5 of the 5-minute maxima is nan .*no recommendation"):
        required_capacity(profile, RISK_SETTINGS["balanced"])


def test_cpu_above_100_percent_lowers_confidence_and_the_upsize_says_why(recommended) -> None:
    windows, recs = recommended
    assert windows[OVER]["out_of_range_samples"] == N
    rows = recs[OVER]
    assert {r["finding"] for r in rows} == {"under-provisioned"}
    assert all(r["confidence"] <= 0.5 for r in rows)
    upsizes = [r for r in rows if r["action"] == "resize"]
    assert upsizes and all(r["vcpu"] >= 4 for r in upsizes)
    for r in upsizes:
        assert f"{N} of {N} samples are outside 0-100 % (CPU up to 300 %)" in r["rationale"]
        assert "check the metric source before acting on it" in r["rationale"]


def test_a_few_out_of_range_samples_cap_confidence_and_are_named(recommended) -> None:
    windows, recs = recommended
    assert windows[FEW]["out_of_range_samples"] == 3
    keep = next(r for r in recs[FEW] if r["option_name"] == "keep")
    # The coverage is capped at 0.5 (then times recency and stability); the clean VM keeps full coverage.
    assert keep["confidence"] <= 0.5 and "(coverage 0.50)" in json.loads(keep["details"])["confidence_words"]
    assert "3 of 4032 samples are outside 0-100 % (CPU up to 220 %)" in keep["rationale"]
    assert all("(coverage 1.00)" in json.loads(r["details"])["confidence_words"] for r in recs[CLEAN])
    assert max(r["confidence"] for r in recs[CLEAN]) > keep["confidence"]
