"""The CPU credit replay of burstable types (AWS rules) on real Azure V1 series, and what rows say of it."""

from pathlib import Path

import numpy as np
import pytest

from cloudopt_pipelines.backtest.traces import read_trace
from cloudopt_pipelines.catalog.prices import build_price_catalog
from cloudopt_pipelines.optimizers.sizing import (
    Catalog,
    SizingPolicy,
    analyze_utilization,
    recommend_resize,
    simulate_credits,
)

DATA = Path(__file__).parent / "data" / "standalone"
REGION = "us-east-1"


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog(build_price_catalog())


@pytest.fixture(scope="module")
def azure():
    return {v.resource_id: v for v in read_trace(DATA / "azure_v1_4vms_14days_cpu_5min.csv.gz")}


def replay_one_by_one(demand, t, start=0.0):
    """The AWS rule written interval by interval: earn baseline x 5 credits, spend all use, clip 0..24 h."""
    baseline = t.burstable_baseline_pct / 100 * t.vcpu
    cap = baseline * 60 * 24
    balance = min(start, cap)  # a balance is never above 24 h of earnings
    capacity = []
    for d in np.nan_to_num(demand):
        capacity.append(min(t.vcpu, baseline + balance / 5))
        balance = min(cap, max(0.0, balance + 5 * baseline - 5 * min(d, capacity[-1])))
    return np.array(capacity), balance


@pytest.mark.parametrize("itype", ["t3.micro", "t3a.large", "t4g.xlarge", "t3.2xlarge"])
@pytest.mark.parametrize("start", [0.0, 50.0, 1e9])
def test_vectorised_replay_equals_the_interval_by_interval_rule_on_real_series(azure, catalog, itype, start):
    t = catalog.get(REGION, itype)
    for vm in azure.values():
        demand = np.nan_to_num(vm.cpu_avg_pct) / 100 * t.vcpu * 0.9
        capacity, balance = simulate_credits(demand, t, start)
        want_capacity, want_balance = replay_one_by_one(demand, t, start)
        np.testing.assert_allclose(capacity, want_capacity, rtol=1e-9, atol=1e-7)
        assert balance == pytest.approx(want_balance, abs=1e-6)


def test_many_series_replay_at_once(azure, catalog):
    t = catalog.get(REGION, "t3.large")
    rows = np.stack([np.nan_to_num(v.cpu_avg_pct) / 100 * 2 for v in azure.values()])
    capacity, balance = simulate_credits(rows, t, np.array([0.0, 10.0, 100.0, 864.0]))
    for i, row in enumerate(rows):
        one, closing = simulate_credits(row, t, [0.0, 10.0, 100.0, 864.0][i])
        np.testing.assert_allclose(capacity[i], one)
        assert balance[i] == pytest.approx(closing)


def test_use_at_the_baseline_nets_zero_and_all_use_is_spent(catalog):
    t = catalog.get(REGION, "t3.large")  # 2 vCPU, 30 % baseline = 0.6 vCPU, 36 credits an hour, 864 at most
    at_baseline = np.full(288, 0.6)
    capacity, balance = simulate_credits(at_baseline, t, 100.0)
    assert balance == pytest.approx(100.0) and capacity.min() >= 0.6
    idle_hour = np.zeros(12)
    assert simulate_credits(idle_hour, t)[1] == pytest.approx(36.0)
    assert simulate_credits(np.zeros(288 * 3), t)[1] == pytest.approx(864.0)  # capped at 24 h of earnings
    # Twice the baseline drains a full balance in 24 h (earned 0.6, spent 1.2 vCPU-minutes a minute).
    twice = np.full(288 * 2, 1.2)
    capacity, balance = simulate_credits(twice, t, 864.0)
    assert capacity[287] == pytest.approx(1.2) and capacity[300] == pytest.approx(0.6) and balance == 0.0


def test_a_resized_instance_starts_without_launch_credits(catalog):
    t = catalog.get(REGION, "t3a.xlarge")  # 4 vCPU, 40 % baseline = 1.6 vCPU
    spike = np.array([4.0, 4.0, 0.0, 0.0])
    capacity, _ = simulate_credits(spike, t)
    assert capacity[0] == pytest.approx(1.6)  # no credits yet: held at the baseline
    assert capacity[2] == pytest.approx(1.6)  # what it earned went into the throttled intervals


def test_burstable_rows_state_the_credit_mode_and_use_against_the_baseline(azure, catalog):
    vm = azure["azure-1739024"]  # spiky maxima near 100 %, averages near 5 %
    t = catalog.get(REGION, "m5.xlarge")
    prof = analyze_utilization(vm.cpu_avg_pct, cpu_max_pct=vm.cpu_pct, vcpu=t.vcpu, memory_gib=t.memory_gib)
    rec = recommend_resize(prof, "m5.xlarge", REGION, catalog, SizingPolicy(max_options=40))
    burstable = [o for o in rec.options if o.instance_type.startswith(("t3", "t4g"))]
    fixed = [o for o in rec.options if not o.instance_type.startswith(("t3", "t4g"))]
    assert burstable and fixed
    for o in burstable:
        assert o.credit_mode == "standard" and o.cpu_limit == "burstable_baseline"
        baseline = catalog.get(REGION, o.instance_type).burstable_baseline_pct / 100 * o.vcpu
        assert o.projected_cpu_pct == pytest.approx(100 * prof.cpu_mean_vcpu / baseline, abs=0.01)
        assert "zero launch credits" in " ".join(o.notes)
    for o in fixed:
        assert o.credit_mode is None and o.cpu_limit == "vcpu"
        assert o.projected_cpu_pct == pytest.approx(100 * rec.demand.cpu_percentile_vcpu / o.vcpu, abs=0.01)


def test_the_remembered_replay_is_the_replay_of_each_size_and_baseline(azure, catalog):
    from cloudopt_pipelines.optimizers.sizing import CpuSeries

    vm = azure["azure-1739024"]
    for itype in ("t3.large", "t3a.large", "t3.xlarge", "t4g.medium"):
        t = catalog.get(REGION, itype)
        mean = np.nan_to_num(vm.cpu_avg_pct) / 100 * t.vcpu
        series = CpuSeries(mean, np.maximum(mean, np.nan_to_num(vm.cpu_pct) / 100 * t.vcpu))
        capacity, _ = simulate_credits(series.mean_vcpu, t)
        first = series.credit_ratio(t)
        np.testing.assert_array_equal(first, series.peak_vcpu / capacity)
        assert series.credit_ratio(t) is first  # replayed once
    large, large_a = catalog.get(REGION, "t3.large"), catalog.get(REGION, "t3a.large")
    series = CpuSeries(np.full(288, 1.0), np.full(288, 1.5))
    assert (large.vcpu, large.burstable_baseline_pct) == (large_a.vcpu, large_a.burstable_baseline_pct) == (2, 30.0)
    assert series.credit_ratio(large) is series.credit_ratio(large_a)  # same rule, same replay
    xlarge = catalog.get(REGION, "t3.xlarge")
    assert not np.array_equal(series.credit_ratio(xlarge), series.credit_ratio(large))
