"""The faster recommender gives exactly the answers of the straightforward code it replaced.

Each speed-up is checked against a reference that does the work the plain way, on real traces: the
demo fleet (Azure V1 CPU, Google cluster-data memory) through the shipped feature models, replicated
with new ids so that the window has many chunks and many resources, and the Azure V1 snippets of
tests/data/standalone. The whole account is then recommended twice, once with the references patched
in, and the tables must be equal, row for row.
"""

from dataclasses import fields, replace
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from cloudopt_pipelines.backtest.traces import read_trace
from cloudopt_pipelines.bench.recommend import RecommendInputs, scaled, seed_inputs
from cloudopt_pipelines.catalog.prices import build_price_catalog, build_reserved_prices
from cloudopt_pipelines.optimizers import schedules, sizing, standalone
from cloudopt_pipelines.optimizers.commitments import ReservedRates
from cloudopt_pipelines.optimizers.schedules import HOURS_PER_WEEK, hour_of_week_profile
from cloudopt_pipelines.optimizers.sizing import (
    RISK_SETTINGS,
    Catalog,
    burstable_baseline_pct,
    candidate_types,
    family_of,
    network_gbps,
    scan_candidate_types,
)
from cloudopt_pipelines.optimizers.standalone import (
    Instance,
    Samples,
    _split_by_resource,
    optimize_standalone_instance,
    recommend_account,
)

AZURE = Path(__file__).parent / "data" / "standalone" / "azure_v1_4vms_14days_cpu_5min.csv.gz"
ACCOUNT = "123456789012"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> RecommendInputs:
    return scaled(seed_inputs(tmp_path_factory.mktemp("lake"), ACCOUNT), 3)


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog(build_price_catalog())


def _reference_split(table: pa.Table) -> dict[str, Samples]:
    """One filter per resource, as the ad-hoc path does."""
    ids = sorted(set(table["resource_id"].to_pylist()))
    return {rid: Samples.from_table(table, rid) for rid in ids}


def _reference_hour_of_week_profile(timestamps, cpu_pct, tz="UTC", q=95.0):
    """The former implementation: a mask and a percentile per bucket."""
    from zoneinfo import ZoneInfo

    zone = ZoneInfo(tz)
    ts = np.asarray(timestamps)
    values = np.asarray(cpu_pct, dtype=float)
    if ts.size == 0:
        return np.full(HOURS_PER_WEEK, np.nan), np.zeros(HOURS_PER_WEEK, dtype=int)
    seconds = ts.astype("datetime64[s]").astype(np.int64)
    hours = seconds // 3600
    uniq, inverse = np.unique(hours, return_inverse=True)
    offsets = np.array(
        [int(datetime.fromtimestamp(int(h) * 3600, zone).utcoffset().total_seconds()) for h in uniq], dtype=np.int64
    )
    bucket = (((seconds + offsets[inverse]) // 3600) + 3 * 24) % HOURS_PER_WEEK
    profile = np.full(HOURS_PER_WEEK, np.nan)
    counts = np.zeros(HOURS_PER_WEEK, dtype=int)
    ok = ~np.isnan(values)
    for b in range(HOURS_PER_WEEK):
        sel = (bucket == b) & ok
        counts[b] = int(sel.sum())
        if counts[b]:
            profile[b] = float(np.percentile(values[sel], q))
    return profile, counts


def _assert_samples_equal(a: Samples, b: Samples) -> None:
    for f in fields(Samples):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            assert x is not None and y is not None, f.name
            np.testing.assert_array_equal(x, y, err_msg=f.name)
        else:
            assert x == y, f.name


def test_split_by_resource_equals_one_filter_per_resource(fleet):
    raw = fleet.features["stg_utilization_5m"]
    assert raw.num_columns and len(raw["resource_id"].chunks) > 3  # a window read from many files
    split, ref = _split_by_resource(raw), _reference_split(raw)
    assert set(split) == set(ref) and len(split) == len(set(raw["resource_id"].to_pylist()))
    for rid in ref:
        _assert_samples_equal(split[rid], ref[rid])


@pytest.mark.parametrize("setting", sorted(RISK_SETTINGS))
def test_candidate_memo_equals_a_scan_of_the_catalogue(setting, catalog):
    policies = [RISK_SETTINGS[setting], replace(RISK_SETTINGS[setting], allow_graviton=False, allow_burstable=False)]
    for region in ("us-east-1", "eu-west-1"):
        for current in catalog.region(region)[::7]:
            for policy in policies:
                first = candidate_types(catalog, current, policy)
                first.clear()  # a caller changing its list must not change the next answer
                assert candidate_types(catalog, current, policy) == scan_candidate_types(catalog, current, policy)


def test_parsed_catalogue_attributes_equal_the_parsers(catalog):
    for t in catalog.region("us-east-1"):
        assert t.family == family_of(t.instance_type)
        assert t.network_gbps == network_gbps(t.network_performance)
        assert t.burstable_baseline_pct == burstable_baseline_pct(t.instance_type)


@pytest.mark.parametrize("tz", ["UTC", "America/New_York", "Asia/Kolkata"])
def test_hour_of_week_profile_equals_a_mask_per_bucket(tz):
    start = np.datetime64("2026-03-02T00:00", "us")  # the trace crosses the US switch to daylight time
    for vm in read_trace(AZURE):
        ts = start + np.arange(vm.samples) * np.timedelta64(5, "m")
        values = vm.cpu_pct.copy()
        values[::97] = np.nan
        got, ref = hour_of_week_profile(ts, values, tz), _reference_hour_of_week_profile(ts, values, tz)
        np.testing.assert_array_equal(got[0], ref[0])
        np.testing.assert_array_equal(got[1], ref[1])
        assert (got[1] > 0).all()


def test_the_account_table_is_the_one_the_plain_code_gives(fleet, catalog, monkeypatch):
    reserved = ReservedRates(build_reserved_prices())
    args = (ACCOUNT, fleet.day, fleet.resources, fleet.features)
    fast = recommend_account(*args, Catalog(build_price_catalog()), reserved)
    rows = fleet.resources.to_pylist()
    instances = [Instance.from_row(r) for r in rows if r["resource_kind"] == "ec2_instance"]
    instances = [i for i in instances if i.deployment_type == "standalone"][:6]
    split = _split_by_resource(fleet.features["stg_utilization_5m"])
    fast_adhoc = [optimize_standalone_instance(i.resource_id, i, split[i.resource_id], catalog) for i in instances]

    monkeypatch.setattr(standalone, "_split_by_resource", _reference_split)
    monkeypatch.setattr(sizing, "candidate_types", scan_candidate_types)
    monkeypatch.setattr(standalone, "hour_of_week_profile", _reference_hour_of_week_profile)
    monkeypatch.setattr(schedules, "hour_of_week_profile", _reference_hour_of_week_profile)
    plain = recommend_account(*args, Catalog(build_price_catalog()), reserved)
    assert fast.table.num_rows > 3 * 40
    assert fast.table.equals(plain.table)
    assert fast.commitments == plain.commitments and fast.notes == plain.notes
    plain_adhoc = [optimize_standalone_instance(i.resource_id, i, split[i.resource_id], catalog) for i in instances]
    assert [r.options for r in fast_adhoc] == [r.options for r in plain_adhoc]
