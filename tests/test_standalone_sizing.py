"""Right-sizing decisions on real Azure V1 and Google cluster-data snippets (tests/data/standalone)."""

from pathlib import Path

import numpy as np
import pytest

from cloudopt_pipelines.backtest.traces import VmTrace, read_trace
from cloudopt_pipelines.catalog.prices import build_price_catalog
from cloudopt_pipelines.optimizers.sizing import (
    BURSTABLE_BASELINE_PCT,
    RISK_SETTINGS,
    Catalog,
    SizingError,
    SizingPolicy,
    analyze_utilization,
    burstable_baseline_pct,
    network_gbps,
    recommend_resize,
    required_capacity,
    simulate_credits,
)

DATA = Path(__file__).parent / "data" / "standalone"
REGION = "us-east-1"


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog(build_price_catalog())


@pytest.fixture(scope="module")
def azure() -> dict[str, VmTrace]:
    return {v.resource_id: v for v in read_trace(DATA / "azure_v1_4vms_14days_cpu_5min.csv.gz")}


@pytest.fixture(scope="module")
def gcd() -> dict[str, VmTrace]:
    return {v.resource_id: v for v in read_trace(DATA / "gcd_3vms_1day_cpu_mem_5min.csv.gz")}


def profile_of(vm: VmTrace, catalog: Catalog, instance_type: str, with_memory: bool = True, **kw):
    t = catalog.get(REGION, instance_type)
    return analyze_utilization(
        vm.cpu_avg_pct,
        cpu_max_pct=vm.cpu_pct,
        mem_pct=vm.mem_pct if with_memory else None,
        vcpu=t.vcpu,
        memory_gib=t.memory_gib,
        **kw,
    )


def test_low_cpu_vm_is_over_provisioned_and_moves_to_a_cheaper_fit(azure, catalog):
    prof = profile_of(azure["azure-1061254"], catalog, "m5.xlarge")
    rec = recommend_resize(prof, "m5.xlarge", REGION, catalog)
    assert rec.finding == "over-provisioned"
    best = rec.best
    assert best.monthly_savings_usd > 0 and best.savings_pct > 0
    # CPU demand in vCPU = P99.5 of maxima x 4 vCPU x 1.2 must fit the candidate's vCPU.
    need = np.percentile(azure["azure-1061254"].cpu_pct, 99.5) / 100 * 4 * 1.2
    assert best.vcpu >= need
    # No memory data: never below the current 16 GiB, and the rationale says so.
    assert all(o.memory_gib >= 16 for o in rec.options)
    assert "No memory data" in rec.rationale
    costs = [o.monthly_cost_usd for o in rec.options]
    assert costs == sorted(costs)
    assert abs(rec.current.monthly_cost_usd - 0.192 * 730) < 1e-6


def test_saturated_vm_is_under_provisioned_and_up_size_shows_negative_savings(azure, catalog):
    prof = profile_of(azure["azure-1663289"], catalog, "m5.large")
    assert prof.is_saturated  # 7 % of its 5-minute averages are at >= 90 %
    rec = recommend_resize(prof, "m5.large", REGION, catalog)
    assert rec.finding == "under-provisioned"
    assert rec.best.vcpu > 2 and rec.best.monthly_savings_usd < 0
    assert "does not fit" in rec.rationale


def test_headroom_is_never_dropped_a_vm_over_the_rule_is_under_provisioned_with_an_up_size(azure, catalog):
    vm = azure["azure-1739024"]  # 5-minute maxima near 100 %, averages near 5 %: not saturated
    prof = profile_of(vm, catalog, "m5.xlarge")
    assert not prof.is_saturated
    demand = required_capacity(prof, SizingPolicy())
    assert demand.vcpu == pytest.approx(np.percentile(vm.cpu_pct, 99.5) / 100 * 4 * 1.2)
    assert demand.vcpu > 4
    rec = recommend_resize(prof, "m5.xlarge", REGION, catalog)
    assert rec.finding == "under-provisioned"
    upsize = [o for o in rec.options if o.monthly_savings_usd < 0]
    assert upsize and all(o.vcpu >= demand.vcpu for o in upsize)
    assert upsize[0].projected_cpu_pct <= 100 and rec.current.projected_cpu_pct * 1.2 > 100
    # Every 5-minute maximum fits the 4 vCPU: the up-size is listed, headroom alone does not make it best.
    assert not rec.demand_seen_over_current and rec.best.is_current
    assert "is listed, but every 5-minute maximum" in rec.rationale and "needs 4.79 vCPU against its 4" in rec.rationale
    # Demand seen over the current type (saturated): the up-size is the best option.
    busy = profile_of(azure["azure-1663289"], catalog, "m5.large")
    up = recommend_resize(busy, "m5.large", REGION, catalog)
    assert up.finding == "under-provisioned" and up.demand_seen_over_current and up.best.monthly_savings_usd < 0
    # Nothing labelled over-provisioned projects CPU above what limits it.
    for name in azure:
        for itype in ("m5.large", "m5.xlarge", "m5.2xlarge"):
            r = recommend_resize(profile_of(azure[name], catalog, itype), itype, REGION, catalog)
            if r.finding == "over-provisioned":
                assert r.best.projected_cpu_pct <= 100


def test_the_best_option_keeps_the_architecture_and_the_graviton_one_is_listed(azure, catalog):
    prof = profile_of(azure["azure-1061254"], catalog, "m5.xlarge")
    rec = recommend_resize(prof, "m5.xlarge", REGION, catalog)
    assert rec.best.architecture == "x86_64"
    other = rec.other_architecture
    assert other is not None and other.architecture == "arm64" and other.migration_effort == "Medium"
    assert f"Other architecture: {other.instance_type}" in rec.rationale
    anywhere = recommend_resize(prof, "m5.xlarge", REGION, catalog, SizingPolicy(architecture="any"))
    assert anywhere.best.monthly_cost_usd <= rec.best.monthly_cost_usd
    with pytest.raises(SizingError, match="architecture"):
        SizingPolicy(architecture="arm64")


def test_no_option_over_the_risk_limit_is_best(azure, catalog):
    prof = profile_of(azure["azure-1061254"], catalog, "m5.xlarge")  # max 3.1 vCPU, P99.5 0.66 vCPU
    rec = recommend_resize(prof, "m5.xlarge", REGION, catalog)
    assert rec.best.performance_risk <= 1.0 and rec.best.vcpu >= 4
    assert any(o.performance_risk > 1.0 and o.monthly_cost_usd < rec.best.monthly_cost_usd for o in rec.options)
    loose = recommend_resize(prof, "m5.xlarge", REGION, catalog, SizingPolicy(max_best_risk=2.0))
    assert loose.best.performance_risk == 2.0 and loose.best.vcpu == 2


def test_memory_is_kept_when_asked(gcd, catalog):
    vm = gcd["vm_6127640366_9"]
    prof = profile_of(vm, catalog, "m5.2xlarge")
    one_day = SizingPolicy(min_hours_of_data=0)  # a one-day trace: under the 30-hour minimum otherwise
    cut = recommend_resize(prof, "m5.2xlarge", REGION, catalog, one_day)
    kept = recommend_resize(prof, "m5.2xlarge", REGION, catalog, one_day, keep_memory=True)
    assert cut.best.memory_gib < 32
    assert all(o.memory_gib >= 32 for o in kept.options)


def test_burstable_only_when_the_cpu_profile_fits_its_baseline_credits(azure, catalog):
    spiky_but_low = profile_of(azure["azure-1739024"], catalog, "m5.xlarge")
    # Maxima touch 4 vCPU: only without CPU headroom does P99.5 fit what the credits allow from zero.
    policy = SizingPolicy(allow_graviton=False, cpu_headroom_pct=0.0, max_best_risk=4.0)
    rec = recommend_resize(spiky_but_low, "m5.xlarge", REGION, catalog, policy)
    assert rec.best.instance_type in ("t3a.xlarge", "t3.xlarge")
    assert "baseline" in " ".join(rec.best.notes)
    busy = profile_of(azure["azure-1663289"], catalog, "m5.large")  # mean 30 % of 2 vCPU = 0.6 vCPU
    rec_busy = recommend_resize(busy, "m5.large", REGION, catalog, SizingPolicy(max_options=50))
    burstable = [o for o in rec_busy.options if o.instance_type.startswith(("t3", "t4g"))]
    mean = busy.cpu_mean_vcpu
    for o in burstable:
        baseline = burstable_baseline_pct(o.instance_type) / 100 * o.vcpu
        assert mean * 1.2 <= baseline
    assert "t3.large" not in {o.instance_type for o in rec_busy.options}  # 0.6 vCPU baseline is too small


def test_burstable_baseline_table_matches_the_aws_documentation():
    assert BURSTABLE_BASELINE_PCT == {
        "nano": 5.0,
        "micro": 10.0,
        "small": 20.0,
        "medium": 20.0,
        "large": 30.0,
        "xlarge": 40.0,
        "2xlarge": 40.0,
    }
    assert burstable_baseline_pct("t3.large") == 30.0
    assert burstable_baseline_pct("t4g.xlarge") == 40.0
    assert burstable_baseline_pct("m5.large") is None


def test_credit_simulation_holds_the_instance_at_baseline_once_credits_run_out(catalog):
    t3 = catalog.get(REGION, "t3.large")  # 2 vCPU, 30 % baseline = 0.6 vCPU, 36 credits/hour
    flat_out = np.full(288 * 3, 2.0)
    capacity, balance = simulate_credits(flat_out, t3, start_balance=100.0)
    assert capacity[0] == 2 and capacity[-1] == pytest.approx(0.6)
    assert balance == pytest.approx(0.0, abs=3.0)


def test_memory_from_the_agent_sizes_memory_with_headroom(gcd, catalog):
    vm = gcd["vm_6127640366_9"]
    prof = profile_of(vm, catalog, "m5.2xlarge")
    assert prof.has_memory
    for headroom in (10.0, 20.0, 30.0):
        policy = SizingPolicy(memory_headroom_pct=headroom, min_hours_of_data=0)
        demand = required_capacity(prof, policy)
        assert demand.memory_gib == pytest.approx(np.nanmax(vm.mem_pct) / 100 * 32 * (1 + headroom / 100))
        rec = recommend_resize(prof, "m5.2xlarge", REGION, catalog, policy)
        assert all(o.memory_gib >= demand.memory_gib for o in rec.options if not o.is_current)


def test_memory_over_capacity_makes_the_instance_under_provisioned(gcd, catalog):
    vm = gcd["vm_6219557576_2"]  # memory up to 215 % of the VM, as in the source
    one_day = SizingPolicy(min_hours_of_data=0)
    rec = recommend_resize(profile_of(vm, catalog, "m5.large"), "m5.large", REGION, catalog, one_day)
    assert rec.finding == "under-provisioned"
    assert rec.best.memory_gib >= np.nanmax(vm.mem_pct) / 100 * 8


def test_idle_instance_uses_cost_explorers_rule(gcd, catalog):
    vm = gcd["vm_6127635923_5"]  # real load that peaks at 6 % of a 2-vCPU VM
    on_big = profile_of(vm, catalog, "m5.8xlarge", provisioned_vcpu=2, provisioned_memory_gib=8)
    assert on_big.cpu_max_pct <= 1.0 and on_big.is_idle
    assert recommend_resize(on_big, "m5.8xlarge", REGION, catalog).finding == "idle"
    on_small = profile_of(vm, catalog, "m5.large")
    assert not on_small.is_idle


@pytest.mark.parametrize("percentile", [90.0, 95.0, 99.5])
def test_percentile_settings_order_the_demand(azure, catalog, percentile):
    prof = profile_of(azure["azure-1061254"], catalog, "m5.xlarge")
    demand = required_capacity(prof, SizingPolicy(cpu_percentile=percentile, cpu_headroom_pct=0.0))
    vm = azure["azure-1061254"]
    assert demand.cpu_percentile_vcpu == pytest.approx(np.nanpercentile(vm.cpu_pct, percentile) / 100 * 4)


def test_settings_outside_the_allowed_ones_are_refused():
    with pytest.raises(SizingError, match="cpu_percentile"):
        SizingPolicy(cpu_percentile=50.0)
    with pytest.raises(SizingError, match="cpu_headroom_pct"):
        SizingPolicy(cpu_headroom_pct=12.0)
    with pytest.raises(SizingError, match="peak_share"):
        SizingPolicy(peak_share=1.5)
    with pytest.raises(SizingError, match="recent_share"):
        SizingPolicy(recent_share=0.0)
    with pytest.raises(SizingError, match="memory_percentile"):
        SizingPolicy(memory_percentile=50.0)
    assert set(RISK_SETTINGS) >= {"balanced", "cautious", "aggressive"}


def test_recent_share_reads_the_percentile_of_the_newest_samples(azure, catalog):
    vm = azure["azure-1061254"]
    prof = profile_of(vm, catalog, "m5.xlarge")
    peaks = vm.cpu_pct[~np.isnan(vm.cpu_pct)] / 100 * 4
    for share in (0.25, 0.5):
        demand = required_capacity(prof, SizingPolicy(cpu_percentile=95.0, cpu_headroom_pct=0.0, recent_share=share))
        newest = peaks[-round(share * peaks.size) :]
        assert demand.cpu_percentile_vcpu == pytest.approx(np.percentile(newest, 95))
        assert demand.recent_share == share
    whole = required_capacity(prof, SizingPolicy(cpu_percentile=95.0, cpu_headroom_pct=0.0))
    assert whole.cpu_percentile_vcpu == pytest.approx(np.percentile(peaks, 95))


def test_peak_share_keeps_a_share_of_the_maximum(azure, catalog):
    vm = azure["azure-1061254"]  # spiky: P90 11 %, maximum 77 %
    prof = profile_of(vm, catalog, "m5.xlarge")
    plain = required_capacity(prof, SizingPolicy(cpu_percentile=90.0, cpu_headroom_pct=0.0))
    aware = required_capacity(prof, SizingPolicy(cpu_percentile=90.0, cpu_headroom_pct=0.0, peak_share=0.9))
    assert plain.vcpu < 0.9 * prof.cpu_max_vcpu
    assert aware.vcpu == pytest.approx(0.9 * np.nanmax(vm.cpu_pct) / 100 * 4)


def test_memory_percentile_only_where_memory_covers_the_window(gcd, catalog):
    vm = gcd["vm_6127640366_9"]
    full = profile_of(vm, catalog, "m5.2xlarge")
    assert full.memory_over_full_window
    policy = SizingPolicy(memory_percentile=99.0, memory_headroom_pct=5.0)
    mem = vm.mem_pct[~np.isnan(vm.mem_pct)] / 100 * 32
    assert required_capacity(full, policy).memory_gib == pytest.approx(np.percentile(mem, 99) * 1.05)
    gaps = vm.mem_pct.copy()
    gaps[: gaps.size // 2] = np.nan  # half the window without memory data: the peak, not the percentile
    t = catalog.get(REGION, "m5.2xlarge")
    partial = analyze_utilization(vm.cpu_avg_pct, cpu_max_pct=vm.cpu_pct, mem_pct=gaps, vcpu=t.vcpu, memory_gib=32)
    assert not partial.memory_over_full_window
    assert required_capacity(partial, policy).memory_gib == pytest.approx(np.nanmax(gaps) / 100 * 32 * 1.05)


def test_graviton_candidates_carry_a_migration_effort_and_unknown_types_are_named(azure, catalog):
    prof = profile_of(azure["azure-1061254"], catalog, "m5.xlarge")
    rec = recommend_resize(prof, "m5.xlarge", REGION, catalog, SizingPolicy(allow_burstable=False, max_options=30))
    arm = [o for o in rec.options if o.architecture == "arm64"]
    assert arm and all(o.migration_effort == "Medium" for o in arm)
    assert all(o.performance_risk in (0.0, 1.0, 2.0, 3.0, 4.0) for o in rec.options)
    with pytest.raises(SizingError, match=r"unknown instance type 'm9\.huge'"):
        recommend_resize(prof, "m9.huge", REGION, catalog)


def test_network_classes_parse():
    assert network_gbps("Up to 10 Gigabit") == 10
    assert network_gbps("25 Gigabit") == 25
    assert network_gbps("Moderate") == 0.5


def test_confidence_follows_coverage(azure, catalog):
    vm = azure["azure-1061254"]
    full = profile_of(vm, catalog, "m5.xlarge", window_days=14)
    half = profile_of(vm, catalog, "m5.xlarge", window_days=28)
    assert full.coverage == pytest.approx(1.0)
    assert half.coverage == pytest.approx(0.5)
    half_rec = recommend_resize(half, "m5.xlarge", REGION, catalog)
    assert half_rec.confidence_detail.coverage == pytest.approx(0.5)
    assert half_rec.confidence == pytest.approx(0.5 * half_rec.confidence_detail.stability, abs=1e-3)


def test_under_30_hours_of_data_only_gathering_data_and_no_change(gcd, catalog):
    vm = gcd["vm_6219557576_2"]  # 24 hours, memory over the VM: would be an up-size with enough data
    prof = profile_of(vm, catalog, "m5.large", window_days=14)
    rec = recommend_resize(prof, "m5.large", REGION, catalog)
    assert rec.finding == "gathering-data"
    assert [o.instance_type for o in rec.options] == ["m5.large"] and rec.best.is_current
    assert "gathering data: 1 of 14 days (24 of the 30 hours needed)" in rec.rationale
    assert rec.confidence_detail.gathering and rec.confidence < 0.1


def test_confidence_combines_coverage_recency_and_stability(azure, catalog):
    vm = azure["azure-1061254"]
    prof = profile_of(vm, catalog, "m5.xlarge", window_days=14)
    fresh = recommend_resize(prof, "m5.xlarge", REGION, catalog).confidence_detail
    assert fresh.coverage == 1.0 and fresh.recency == 1.0 and 0.5 <= fresh.stability <= 1.0
    assert fresh.value == pytest.approx(fresh.coverage * fresh.recency * fresh.stability, abs=1e-3)
    from dataclasses import replace

    stale = recommend_resize(replace(prof, last_sample_age_hours=24 + 3.5 * 24), "m5.xlarge", REGION, catalog)
    assert stale.confidence_detail.recency == pytest.approx(0.5)
    assert stale.confidence == pytest.approx(fresh.value * 0.5, abs=2e-3)


def test_recent_share_reads_the_newest_credit_limited_ratios(azure, catalog):
    from cloudopt_pipelines.optimizers.sizing import credit_limited_need

    prof = profile_of(azure["azure-1061254"], catalog, "m5.xlarge")
    t3 = catalog.get(REGION, "t3.xlarge")
    capacity, _ = simulate_credits(prof.series.mean_vcpu, t3)  # replayed from zero over the whole window
    ratio = prof.series.peak_vcpu / capacity
    newest = ratio[-round(0.25 * ratio.size) :]
    assert credit_limited_need(prof.series, t3, 95.0, 0.25) == pytest.approx(np.percentile(newest, 95))
    assert credit_limited_need(prof.series, t3, 95.0) == pytest.approx(np.percentile(ratio, 95))
