"""One owner for each statistic: the recommender and the backtest size from the SQL feature models.

Real parts only: the shipped models in dbt_like_sql/ run by DuckDB through the project's runner on
a real Parquet lake, over real trace snippets (tests/data/standalone) and the demo fleet.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from cloudopt_pipelines.backtest.engine import run_backtest
from cloudopt_pipelines.backtest.features import (
    ACCOUNT,
    MODELS,
    TRACE_START,
    run_feature_models,
    trace_features,
    utilization_5m_rows,
)
from cloudopt_pipelines.backtest.traces import VmTrace, read_trace
from cloudopt_pipelines.catalog.prices import build_price_catalog
from cloudopt_pipelines.optimizers.schedules import (
    ScheduleError,
    hour_of_week_from_features,
    recommend_schedule,
    schedule_from_profile,
)
from cloudopt_pipelines.optimizers.sizing import (
    PROFILE_PERCENTILES,
    Catalog,
    adaptive_factor,
    analyze_utilization,
    profile_from_features,
    recommend_resize,
)
from cloudopt_pipelines.optimizers.standalone import (
    STANDALONE_FEATURE_INPUTS,
    Instance,
    InstanceFeatures,
    Samples,
    optimize_standalone_instance,
    recommend_account,
)
from cloudopt_pipelines.sqlmodels.sources import MODELS_DIR
from cloudopt_pipelines.storage.lake import Lake
from cloudopt_pipelines.storage.schemas import RESOURCES
from tests.test_standalone_optimizer import demo_features

DATA = Path(__file__).parent / "data" / "standalone"
AZURE = DATA / "azure_v1_4vms_14days_cpu_5min.csv.gz"
GCD = DATA / "gcd_3vms_1day_cpu_mem_5min.csv.gz"
REGION = "us-east-1"


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog(build_price_catalog())


@pytest.mark.parametrize(("trace", "instance_type"), [(AZURE, "m5.xlarge"), (GCD, "m5.2xlarge")])
def test_the_window_row_gives_the_profile_numpy_computes_from_the_samples(trace, instance_type, catalog):
    vms = read_trace(trace)
    samples = min(vm.samples for vm in vms)
    features = trace_features(vms, samples)
    t = catalog.get(REGION, instance_type)
    for vm in vms:
        f = features[vm.resource_id]
        sql = profile_from_features(f.window, vcpu=t.vcpu, memory_gib=t.memory_gib, series=f.series(t.vcpu))
        ref = analyze_utilization(
            vm.cpu_avg_pct[:samples],
            cpu_max_pct=vm.cpu_pct[:samples],
            mem_pct=None if vm.mem_pct is None else vm.mem_pct[:samples],
            vcpu=t.vcpu,
            memory_gib=t.memory_gib,
            window_days=f.window["window_days"],
        )
        assert sql.samples == ref.samples and sql.expected_samples == ref.expected_samples
        for q in PROFILE_PERCENTILES:
            assert sql.cpu_vcpu(q) == pytest.approx(ref.cpu_vcpu(q), rel=1e-9, abs=1e-12)
        assert sql.cpu_mean_vcpu == pytest.approx(ref.cpu_mean_vcpu, rel=1e-9)
        assert sql.saturated_share == pytest.approx(ref.saturated_share, abs=1e-12)
        assert sql.is_saturated == ref.is_saturated
        assert sql.has_memory == ref.has_memory
        if ref.has_memory:
            for q in PROFILE_PERCENTILES:
                assert sql.mem_gib(q) == pytest.approx(ref.mem_gib(q), rel=1e-9)
        assert (sql.daily_peaks is None) == (ref.daily_peaks is None)
        if ref.daily_peaks is not None:
            assert sql.daily_peaks.days == ref.daily_peaks.days
            assert sql.daily_peaks.std_vcpu == pytest.approx(ref.daily_peaks.std_vcpu, rel=1e-9, abs=1e-12)
            assert sql.daily_peaks.second_half_mean_vcpu == pytest.approx(ref.daily_peaks.second_half_mean_vcpu)
            assert sql.daily_peaks.mean_vcpu == pytest.approx(ref.daily_peaks.mean_vcpu)
            assert sql.daily_peaks.first_half_mean_vcpu == pytest.approx(ref.daily_peaks.first_half_mean_vcpu)
            assert adaptive_factor(sql) == pytest.approx(adaptive_factor(ref))
        np.testing.assert_allclose(sql.series.mean_vcpu, ref.series.mean_vcpu)
        assert (
            recommend_resize(sql, instance_type, REGION, catalog).best
            == recommend_resize(ref, instance_type, REGION, catalog).best
        )


def test_the_recommender_takes_its_percentiles_from_utilization_window(tmp_path, catalog):
    day, resources, features = demo_features(tmp_path, "123456789012", 7)
    window = features["utilization_window"].to_pylist()
    rid = next(
        r["resource_id"]
        for r in resources.to_pylist()
        if r["resource_kind"] == "ec2_instance" and r["deployment_type"] == "standalone" and r["state"] == "running"
    )
    row = next(r for r in window if r["resource_id"] == rid)
    row["cpu_p995_pct"] = 42.25  # a value no sample computation would give: the row is the source
    schema = features["utilization_window"].schema
    features = {**features, "utilization_window": pa.Table.from_pylist(window, schema=schema)}
    table = recommend_account("123456789012", day, resources, features, catalog).table
    keep = next(r for r in table.to_pylist() if r["resource_id"] == rid and r["option_name"] == "keep")
    assert "CPU P99.5 of 5-minute maxima is 42.2 %" in keep["rationale"]


def test_recommend_account_names_a_missing_feature_table(tmp_path, catalog):
    day, resources, features = demo_features(tmp_path, "123456789012", 1)
    with pytest.raises(ValueError, match="needs the feature table\\(s\\) utilization_window"):
        recommend_account("123456789012", day, resources, {"activity_profile": features["activity_profile"]}, catalog)
    assert STANDALONE_FEATURE_INPUTS["utilization_window"] == 1 and STANDALONE_FEATURE_INPUTS["activity_profile"] == 1


def test_a_feature_partition_from_an_older_model_is_named_not_read_as_zeros(tmp_path, catalog):
    day, resources, features = demo_features(tmp_path, "123456789012", 2)
    old = features["utilization_window"].drop_columns(["cpu_saturated_share_pct"])
    wanted = r"'utilization_window' .* lacks column\(s\) cpu_saturated_share_pct.*re-materialise"
    with pytest.raises(ValueError, match=wanted):
        recommend_account("123456789012", day, resources, {**features, "utilization_window": old}, catalog)


def test_without_raw_rows_no_burstable_type_is_offered(tmp_path, catalog):
    day, resources, features = demo_features(tmp_path, "123456789012", 7)
    with_raw = recommend_account("123456789012", day, resources, features, catalog).table.to_pylist()
    without = {k: v for k, v in features.items() if k != "stg_utilization_5m"}
    no_raw = recommend_account("123456789012", day, resources, without, catalog).table.to_pylist()
    burstable = ("resize:t3", "resize:t4g")
    assert any(r["option_name"].startswith(burstable) for r in with_raw)
    assert not any(r["option_name"].startswith(burstable) for r in no_raw)


def test_features_and_samples_paths_recommend_the_same(tmp_path, catalog):
    account = "123456789012"
    _, resources, features = demo_features(tmp_path, account, 7)
    windows = {r["resource_id"]: r for r in features["utilization_window"].to_pylist()}
    stg = features["stg_utilization_5m"]
    compared = 0
    for res in resources.to_pylist():
        if res["resource_kind"] != "ec2_instance" or res["deployment_type"] != "standalone":
            continue
        if res["state"] != "running":
            continue
        inst = Instance.from_row(res)
        rid = inst.resource_id
        raw = Samples.from_table(stg, rid)
        profile = features["activity_profile"]
        activity = profile.filter(pc.equal(profile["resource_id"], rid))
        by_features = optimize_standalone_instance(rid, inst, InstanceFeatures(windows[rid], activity, raw), catalog)
        by_samples = optimize_standalone_instance(rid, inst, raw, catalog)
        assert by_features.finding == by_samples.finding, rid
        assert [o.option_name for o in by_features.options] == [o.option_name for o in by_samples.options], rid
        assert [o.performance_risk for o in by_features.options] == [o.performance_risk for o in by_samples.options]
        compared += 1
    assert compared >= 5


def _dev_vm_lake(tmp_path: Path, tags: dict[str, str]) -> tuple[Lake, VmTrace, int]:
    vm = next(v for v in read_trace(AZURE) if v.resource_id == "azure-810877")
    vm = VmTrace(vm.resource_id, vm.cpu_avg_pct, vm.cpu_avg_pct, None)  # schedule on the averages
    lake = Lake(tmp_path / "lake")
    samples = vm.samples
    rows = utilization_5m_rows(vm, samples)
    days = sorted(set(rows["date"].to_pylist()))
    for d in days:
        lake.write("utilization_5m", rows.filter(pc.equal(rows["date"], pa.scalar(d, pa.date32()))), ACCOUNT, d)
        resource = {name: None for name in RESOURCES.names}
        resource.update(account_id=ACCOUNT, date=d, resource_id=vm.resource_id, resource_kind="ec2_instance")
        resource.update(tags=json.dumps(tags), deployment_type="standalone")
        lake.write("resources", pa.Table.from_pylist([resource], schema=RESOURCES), ACCOUNT, d)
    run_feature_models(lake, ACCOUNT, days, ("stg_utilization_5m", "activity_profile"))
    return lake, vm, samples


def test_the_schedule_from_activity_profile_is_the_samples_schedule(tmp_path):
    tags = {"env": "dev", "tz": "America/New_York"}
    lake, vm, samples = _dev_vm_lake(tmp_path, tags)
    last = TRACE_START + np.timedelta64(samples // 288 - 1, "D").astype(object)
    activity = lake.read("activity_profile", ACCOUNT, last)
    hours = hour_of_week_from_features(activity, tags)
    assert hours.timezone == "America/New_York"
    by_features = schedule_from_profile(hours, tags, 140.16)
    ts = np.datetime64(str(TRACE_START)) + np.arange(samples) * np.timedelta64(300, "s")
    by_samples = recommend_schedule(ts.astype("datetime64[us]"), vm.cpu_avg_pct, tags, 140.16)
    assert by_features is not None and by_features == by_samples


def test_a_bad_zone_tag_is_named_on_the_features_path(tmp_path):
    tags = {"env": "dev", "tz": "Mars/Olympus"}
    lake, _, samples = _dev_vm_lake(tmp_path, tags)
    last = TRACE_START + np.timedelta64(samples // 288 - 1, "D").astype(object)
    activity = lake.read("activity_profile", ACCOUNT, last)
    assert set(activity["tz_source"].to_pylist()) == {"invalid_tag"}
    with pytest.raises(ScheduleError, match="tz='Mars/Olympus'"):
        hour_of_week_from_features(activity, tags)


def test_the_backtest_sizes_from_the_sql_models_it_is_given(tmp_path, catalog):
    vms = read_trace(AZURE)
    shipped = {
        r.strategy.name: [c.recommended_type for c in r.choices]
        for r in run_backtest(vms, catalog, train_days=10, test_days=4)[1]
    }
    # The same models with utilization_window's CPU P99.5 doubled: the backtest must follow the SQL.
    models = tmp_path / "models"
    shutil.copytree(MODELS_DIR, models, ignore=shutil.ignore_patterns("marts"))
    sql = (models / "utilization_window.sql").read_text()
    assert "s.cpu_q[5] AS cpu_p995_pct" in sql
    doubled = sql.replace("s.cpu_q[5] AS cpu_p995_pct", "2 * s.cpu_q[5] AS cpu_p995_pct")
    (models / "utilization_window.sql").write_text(doubled)
    changed = {
        r.strategy.name: [c.recommended_type for c in r.choices]
        for r in run_backtest(vms, catalog, train_days=10, test_days=4, models_dir=models)[1]
    }
    assert changed["ours p99.5+0% mem+20% risk<=4"] != shipped["ours p99.5+0% mem+20% risk<=4"]
    assert changed["ours p90+0% mem+20% risk<=4"] == shipped["ours p90+0% mem+20% risk<=4"]  # P90 untouched
    assert set(MODELS) <= {p.stem for p in models.glob("*.sql")}
