"""The standalone backtest: trace readers, the split, the replay and the report (real trace snippets)."""

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from cloudopt_pipelines.backtest import (
    BASELINES,
    DEFAULT_SETTING,
    PRESETS,
    CandidateSet,
    backtest_command,
    backtest_report,
    default_strategies,
    dominance,
    read_trace,
    run_backtest,
)
from cloudopt_pipelines.backtest.engine import current_type_for, replay, split_samples
from cloudopt_pipelines.backtest.traces import TraceError, VmTrace, detect_format
from cloudopt_pipelines.catalog.prices import build_price_catalog
from cloudopt_pipelines.optimizers.sizing import Catalog, SizingPolicy

DATA = Path(__file__).parent / "data" / "standalone"
AZURE = DATA / "azure_v1_4vms_14days_cpu_5min.csv.gz"
GCD = DATA / "gcd_3vms_1day_cpu_mem_5min.csv.gz"
# The public data folder sits beside the checkout (../shared) in CI; worktrees sit one level deeper.
_ROOT = Path(__file__).resolve().parents[1]
SHARED = next(
    (p / "shared" / "data" / "vm_traces" for p in _ROOT.parents if (p / "shared" / "data" / "vm_traces").exists()),
    _ROOT.parent / "shared" / "data" / "vm_traces",
)


@pytest.fixture(scope="module")
def catalog_table():
    return build_price_catalog()


@pytest.fixture(scope="module")
def catalog(catalog_table):
    return Catalog(catalog_table)


def test_azure_reader_keeps_max_and_average():
    vms = read_trace(AZURE)
    assert [v.resource_id for v in vms] == ["azure-1061254", "azure-1663289", "azure-1739024", "azure-810877"]
    vm = vms[2]
    assert vm.samples == 4032 and vm.mem_pct is None
    assert np.nanmean(vm.cpu_pct) > 10 * np.nanmean(vm.cpu_avg_pct)  # maxima, not averages


def test_gcd_reader_keeps_memory_over_100_percent():
    vms = {v.resource_id: v for v in read_trace(GCD)}
    assert len(vms) == 3 and all(v.samples == 288 for v in vms.values())
    assert np.nanmax(vms["vm_6219557576_2"].mem_pct) > 200


def test_long_format_reader_and_format_detection(tmp_path):
    path = tmp_path / "mine.csv.gz"
    with gzip.open(path, "wt") as f:
        f.write("resource_id,timestamp,cpu_pct,mem_pct,instance_type\n")
        for k in range(10):
            f.write(f"i-1,2026-11-16T00:{k * 5:02d}:00Z,{k},{50 + k},c5.large\n")
        f.write("i-2,2026-11-16T00:10:00Z,3,,\n")
    assert detect_format(path) == "long"
    vms = {v.resource_id: v for v in read_trace(path)}
    assert vms["i-1"].instance_type == "c5.large" and vms["i-1"].samples == 10
    assert vms["i-1"].mem_pct[9] == 59
    assert vms["i-2"].mem_pct is None and np.isnan(vms["i-2"].cpu_pct[0])
    with pytest.raises(TraceError, match="does not exist"):
        read_trace(tmp_path / "missing.csv")


def test_split_is_proportional_when_the_trace_is_short():
    assert split_samples(8004, 14, 7).train == 14 * 288 and not split_samples(8004, 14, 7).scaled
    one_day = split_samples(288, 14, 7)
    assert one_day.scaled and one_day.train == 192 and one_day.test == 96
    assert "16.0 training hours" in one_day.note


def test_default_type_is_the_smallest_m5_covering_the_vm(catalog):
    flat = np.zeros(10)
    assert current_type_for(VmTrace("a", flat, flat, None, None, 2, 8), catalog).instance_type == "m5.large"
    assert current_type_for(VmTrace("b", flat, flat, None, None, 4, 17), catalog).instance_type == "m5.2xlarge"
    assert current_type_for(VmTrace("c", flat, flat, None), catalog).instance_type == "m5.xlarge"
    assert current_type_for(VmTrace("d", flat, flat, None, "c5.large"), catalog).instance_type == "c5.large"


def test_replay_counts_intervals_over_capacity(catalog):
    cpu = np.array([10.0, 60.0, 40.0, np.nan, 100.0])  # % of a 4-vCPU VM
    vm = VmTrace("x", np.concatenate([cpu, cpu]), np.concatenate([cpu, cpu]), None)
    split = split_samples(10, 0.5 * 10 / 288, 0.5 * 10 / 288)
    m5 = catalog.get("us-east-1", "m5.xlarge")
    c5l = catalog.get("us-east-1", "c5.large")  # 2 vCPU: 60 % and 100 % of 4 vCPU overflow
    assert replay(vm, m5, m5, split) == (4, 0, 0.0)
    intervals, violations, worst = replay(vm, m5, c5l, split)
    assert (intervals, violations) == (4, 2) and worst == pytest.approx(100.0)


def test_backtest_on_the_azure_snippet_reports_every_choice(catalog):
    vms = read_trace(AZURE)
    _, results = run_backtest(vms, catalog, train_days=10, test_days=4)
    names = [r.strategy.name for r in results]
    assert DEFAULT_SETTING in names and {b.name for b in BASELINES} <= set(names)
    for r in results:
        assert len(r.choices) == 4
        # The aggregate is recomputable from the per-VM choices.
        cur = sum(c.current_usd_per_hour for c in r.choices)
        rec = sum(c.recommended_usd_per_hour for c in r.choices)
        assert r.savings_pct == pytest.approx(100 * (1 - rec / cur))
    default = next(r for r in results if r.strategy.name == DEFAULT_SETTING)
    co = next(r for r in results if r.strategy.name == "compute-optimizer-like")
    assert default.strategy.policy == SizingPolicy()  # the shipped default is what is scored
    # Headroom is kept: the saturated VM is up-sized by both; the spiky one (maxima near 100 % of its
    # 4 vCPU, never over) is up-sized by the baseline and kept by ours (its up-size rests on headroom alone).
    by_vm = {c.resource_id: c for c in default.choices}
    co_vm = {c.resource_id: c for c in co.choices}
    assert by_vm["azure-1663289"].recommended_usd_per_hour > by_vm["azure-1663289"].current_usd_per_hour
    assert co_vm["azure-1663289"].recommended_usd_per_hour > co_vm["azure-1663289"].current_usd_per_hour
    assert co_vm["azure-1739024"].recommended_usd_per_hour > co_vm["azure-1739024"].current_usd_per_hour
    assert by_vm["azure-1739024"].recommended_type == by_vm["azure-1739024"].current_type
    # Baselines choose from the same candidates as ours, burstable types included.
    assert {b.name for b in BASELINES} >= {"kubecost-like", "krr-like"}
    picked = {c.recommended_type.split(".")[0] for r in results if r.strategy.kind == "baseline" for c in r.choices}
    assert picked & {"t3", "t3a"}
    dom = dominance(results)
    assert set(dom["baselines"]) == {b.name for b in BASELINES}
    assert dom["default"]["strategy"] == DEFAULT_SETTING


def test_every_strategy_gets_the_same_candidates_and_graviton_changes_them_for_all(catalog):
    vms = read_trace(AZURE)
    _, x86 = run_backtest(vms, catalog, train_days=10, test_days=4, candidates=CandidateSet())
    _, arm = run_backtest(vms, catalog, train_days=10, test_days=4, candidates=CandidateSet(allow_graviton=True))
    arch = {t.instance_type: t.architecture for t in catalog.region("us-east-1")}
    assert all(arch[c.recommended_type] == "x86_64" for r in x86 for c in r.choices)
    co = next(r for r in arm if r.strategy.name == "compute-optimizer-like")
    assert any(arch[c.recommended_type] == "arm64" for c in co.choices)  # the cache key holds allow_graviton
    default = next(r for r in arm if r.strategy.name == DEFAULT_SETTING)
    assert all(arch[c.recommended_type] == "x86_64" for c in default.choices)  # architecture "current"
    m5 = catalog.get("us-east-1", "m5.xlarge")
    assert CandidateSet().key(m5) != CandidateSet(allow_graviton=True).key(m5)


def test_replay_starts_burstable_types_at_zero_credits(catalog):
    cpu = np.array([100.0] * 3 + [1.0] * 5)  # % of a 4-vCPU VM: a burst right after the resize
    vm = VmTrace("x", np.concatenate([cpu, cpu]), np.concatenate([cpu, cpu]), None)
    split = split_samples(16, 8 / 288, 8 / 288)
    m5, t3a = catalog.get("us-east-1", "m5.xlarge"), catalog.get("us-east-1", "t3a.xlarge")
    intervals, violations, _ = replay(vm, m5, t3a, split)
    assert (intervals, violations) == (8, 3)  # no launch credits: held at the 40 % baseline


def test_one_command_per_published_trace(tmp_path, catalog_table, monkeypatch):
    import cloudopt_pipelines.catalog.prices as prices

    monkeypatch.setattr(prices, "build_price_catalog", lambda *a, **k: catalog_table)
    assert set(PRESETS) == {"azure", "bitbrains", "google", "planetlab"}
    assert PRESETS["planetlab"]["day"] == "2011-03-03" and PRESETS["google"]["train_days"] == 16 / 24
    data = tmp_path / "traces"
    data.mkdir()
    (data / PRESETS["google"]["file"]).write_bytes(GCD.read_bytes())  # the preset's file name, a real sample
    printed: list[str] = []
    code = backtest_command(None, preset="google", data_dir=str(data), as_json=True, echo=printed.append)
    report = json.loads(printed[0])
    assert code in (0, 1) and report["train_samples"] == 192 and report["test_samples"] == 96
    assert not report["split_scaled"]
    assert backtest_command(None, preset="nope", echo=printed.append) == 2
    assert backtest_command(str(GCD), train_hours=0, echo=printed.append) == 2
    hours = backtest_command(str(GCD), train_hours=12, test_hours=12, as_json=True, echo=printed.append)
    assert hours in (0, 1) and json.loads(printed[-1])["train_samples"] == 144


def test_command_writes_json_anyone_can_recompute(tmp_path, catalog_table, monkeypatch):
    import cloudopt_pipelines.catalog.prices as prices

    monkeypatch.setattr(prices, "build_price_catalog", lambda *a, **k: catalog_table)
    out = tmp_path / "gcd.json"
    printed: list[str] = []
    code = backtest_command(str(GCD), 14, 7, as_json=True, output=str(out), echo=printed.append)
    report = json.loads(out.read_text())
    assert code in (0, 1) and json.loads(printed[0]) == report
    assert report["split_scaled"] and report["train_samples"] == 192
    keys = {"resource_id", "strategy", "current_type", "recommended_type", "savings_pct", "violations"}
    assert keys <= set(report["choices"][0])
    assert len(report["choices"]) == 3 * len(report["strategies"])
    assert backtest_command(str(tmp_path / "nope.csv"), echo=printed.append) == 2


def test_text_output_names_each_baseline(tmp_path, catalog_table, monkeypatch):
    import cloudopt_pipelines.catalog.prices as prices

    monkeypatch.setattr(prices, "build_price_catalog", lambda *a, **k: catalog_table)
    printed: list[str] = []
    backtest_command(str(GCD), echo=printed.append)
    text = printed[0]
    assert "| strategy |" in text and "cost-explorer-like:" in text and "default ours" in text


@pytest.mark.parametrize("name", ["bitbrains_rnd_2013-07_vm1-100_5min.csv.gz", "planetlab_cpu_5min_long.csv.gz"])
def test_research_only_traces_are_read_from_the_shared_folder(name, catalog_table):
    path = SHARED / name
    if not path.exists():
        pytest.skip(f"{path} absent (research-only trace, never copied into the repository)")
    report = backtest_report(path, 14, 7, max_vms=3, catalog_table=catalog_table)
    assert report["vms_backtested"] == 3
    assert all(s["vms"] == 3 for s in report["strategies"])


def test_rule_families_are_scored_under_their_own_names():
    from cloudopt_pipelines.backtest import our_strategies

    cpu_only, with_memory = our_strategies(with_memory=False), our_strategies(with_memory=True)
    for strategies in (cpu_only, with_memory):
        names = [s.name for s in strategies]
        assert len(names) == len(set(names))  # no two settings under one name
        policies = [s.policy for s in strategies]
        assert any(p.recent_share < 1 for p in policies) and any(p.peak_share > 0 for p in policies)
        assert any(p.cpu_percentile == 100 and p.cpu_headroom_pct == 50 for p in policies)
    assert any(s.policy.memory_percentile < 100 for s in with_memory)
    assert all(s.policy.memory_percentile == 100 for s in cpu_only)  # no memory data: the peak rule only
    assert cpu_only[0].name == DEFAULT_SETTING and cpu_only[0].policy == SizingPolicy()


def test_a_setting_with_the_baselines_choices_ties_and_does_not_dominate(catalog):
    from cloudopt_pipelines.backtest import Choice, StrategyResult

    base = next(b for b in BASELINES if b.name == "cost-explorer-like")
    ours = next(s for s in default_strategies(False) if s.kind == "ours")

    def result(strategy, rec_price, violations):
        r = StrategyResult(strategy)
        r.choices.append(Choice("vm", strategy.name, "m5.xlarge", "x", 0.192, rec_price, 100, violations, 0.0))
        return r

    tie = dominance([result(ours, 0.096, 2), result(base, 0.096, 2)])
    assert not tie["baselines"]["cost-explorer-like"]["dominated"]
    assert tie["baselines"]["cost-explorer-like"]["nearest"]["savings_short_by_pct"] == 0
    better = dominance([result(ours, 0.096, 1), result(base, 0.096, 2)])
    assert better["baselines"]["cost-explorer-like"]["by"] == [ours.name]


def test_doc_tables_come_from_the_report(tmp_path, catalog_table):
    from cloudopt_pipelines.backtest.tables import front, main, section

    report = backtest_report(GCD, 14, 7, catalog_table=catalog_table)
    text = section(report)
    for name in (b.name for b in BASELINES):
        assert f"- {name} (" in text
    assert "- default:" in text and DEFAULT_SETTING in text
    ours = [s for s in report["strategies"] if s["kind"] == "ours"]
    on_front = front(report["strategies"])
    # Nothing of ours beats a front point on both figures.
    for f in on_front:
        better = [o for o in ours if o["savings_pct"] > f["savings_pct"]]
        assert not any(o["violation_rate_pct"] < f["violation_rate_pct"] for o in better)
    path = tmp_path / "google.json"
    path.write_text(json.dumps(report))
    svg = tmp_path / "chart.svg"
    assert main([str(path), "--svg", str(svg)]) == 0
    assert svg.read_text().startswith("<svg") and "kubecost-like" in svg.read_text()
