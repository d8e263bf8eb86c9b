"""The right-sizing backtest: recommend on a training window, replay the test window on the choice.

For each VM of a trace and each strategy:

1. map the VM onto its current type (the trace's ``instance_type``, else the smallest ``m5`` covering its
   provisioned cores and memory, else ``DEFAULT_INSTANCE_TYPE``);
2. build the utilisation profile of the *training* window only, with the pipeline's own feature
   models (``features.py``: the training samples become ``utilization_5m`` partitions of a temporary
   lake and the SQL runner builds ``utilization_window`` from them, as for an account), and pick the
   cheapest type that the strategy says fits, from **one candidate set for every strategy**
   (``CandidateSet``: us-east-1, the current architecture unless Graviton is allowed, the same
   families, burstable ``t3``/``t3a``/``t4g`` judged by **one credit rule**: ``sizing.burstable_fits``,
   the strategy's own percentile and headroom against the capacity the credits allow from zero);
3. replay the *test* window on that type: an interval violates when its CPU demand (5-minute maximum, in
   vCPU) exceeds the type's vCPU (for burstable types, the capacity its CPU credits allow at that
   moment, from **zero credits** at the start of the test window: T3/T3a/T4g have no launch credits)
   or its memory demand exceeds the type's memory.

A strategy that finds no candidate meeting its rule keeps the current type (as the recommender does).

Savings are on-demand price differences against the current type (``catalogue``, USD/hour); a strategy
that up-sizes an under-provisioned VM shows negative savings for it. Every choice is in the JSON so the
figures can be recomputed from the trace.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from cloudopt_pipelines.backtest.features import TraceFeatures, trace_features
from cloudopt_pipelines.backtest.traces import VmTrace
from cloudopt_pipelines.optimizers.sizing import (
    SAMPLES_PER_DAY,
    Catalog,
    Demand,
    InstanceType,
    SizingPolicy,
    UtilizationProfile,
    candidate_types,
    cheapest_fit,
    profile_from_features,
    required_capacity,
    simulate_credits,
)
from cloudopt_pipelines.sqlmodels.sources import MODELS_DIR

REGION = "us-east-1"
DEFAULT_INSTANCE_TYPE = "m5.xlarge"
DEFAULT_FAMILY = "m5"
DEFAULT_SETTING = "ours default (shipped SizingPolicy())"


@dataclass(frozen=True)
class CandidateSet:
    """The candidates every strategy chooses from (one set per run, whatever the strategy)."""

    allow_graviton: bool = False
    allow_burstable: bool = True

    def policy(self) -> SizingPolicy:
        return SizingPolicy(allow_burstable=self.allow_burstable, allow_graviton=self.allow_graviton)

    def key(self, current: InstanceType) -> tuple[Any, ...]:
        """Every option that changes the candidates (the cache key)."""
        p = self.policy()
        return (current.instance_type, p.allow_burstable, p.allow_graviton, p.allow_other_families, p.family_pattern)


@dataclass(frozen=True)
class Strategy:
    """How a strategy turns a training profile into the capacity it asks for. ``policy`` is None for
    a baseline (its rule is the demand alone); for ours it adds the policy's best-option rules
    (architecture, risk limit), exactly as ``recommend_resize``'s ``best``."""

    name: str
    kind: str  # "ours" | "baseline"
    demand: Callable[[UtilizationProfile], Demand]
    policy: SizingPolicy | None
    description: str


def _baseline(name: str, cpu_q: float, cpu_h: float, mem_q: float, mem_h: float, description: str) -> Strategy:
    def demand(profile: UtilizationProfile) -> Demand:
        cpu = profile.cpu_vcpu(cpu_q)
        mem = profile.mem_gib(mem_q) * (1 + mem_h / 100) if profile.has_memory else None
        return Demand(
            vcpu=cpu * (1 + cpu_h / 100),
            memory_gib=mem,
            net_bps=None,
            cpu_headroom_pct=cpu_h,
            cpu_percentile_vcpu=cpu,
            memory_floor_gib=None if mem is not None else profile.memory_gib,
            cpu_percentile=cpu_q,
        )

    return Strategy(name, "baseline", demand, None, description)


def _ours(policy: SizingPolicy, name: str | None = None) -> Strategy:
    def demand(profile: UtilizationProfile) -> Demand:
        return required_capacity(profile, policy)

    gate = f"best option at risk <= {policy.max_best_risk:g}" if policy.max_best_risk < 4 else "no risk limit"
    recent = f" of the newest {100 * policy.recent_share:g} % of the window" if policy.recent_share < 1 else ""
    peak = f"at least {policy.peak_share:g} x the window maximum " if policy.peak_share else ""
    memory = "peak" if policy.memory_percentile == 100 else f"P{policy.memory_percentile:g} (peak without full data)"
    return Strategy(
        name or f"ours {policy.name} risk<={policy.max_best_risk:g}",
        "ours",
        demand,
        policy,
        f"CPU P{policy.cpu_percentile:g} of 5-min maxima{recent} + {policy.cpu_headroom_pct:g} % "
        f"{'adaptive ' if policy.adaptive else ''}headroom "
        f"{'and at least the window maximum ' if policy.floor_at_max else ''}{peak}(never capped), memory {memory} + "
        f"{policy.memory_headroom_pct:g} %, {gate}, architecture {policy.architecture}",
    )


BASELINES: tuple[Strategy, ...] = (
    _baseline("compute-optimizer-like", 99.5, 20, 99.5, 20, "P99.5 of 5-min maxima + 20 % (CPU and memory)"),
    _baseline("cost-explorer-like", 100, 0, 100, 0, "maximum over the window (CPU and memory)"),
    _baseline("krr-like", 95, 0, 100, 15, "KRR simple: CPU P95, no buffer; memory max + 15 %"),
    _baseline("vpa-like", 90, 15, 90, 15, "P90 + 15 % (CPU and memory)"),
    _baseline("kubecost-like", 100, 100 / 0.7 - 100, 100, 100 / 0.7 - 100, "max / 0.7 (CPU and memory)"),
)


#: The first grid of risk settings (CPU percentile x headroom x memory headroom).
GRID_CPU_PERCENTILES = (90.0, 95.0, 99.5)
GRID_CPU_HEADROOMS_PCT = (0.0, 20.0, 30.0)
GRID_MEMORY_HEADROOMS_PCT = (10.0, 20.0, 30.0)


def _families(with_memory: bool) -> list[SizingPolicy]:
    """The rule families added to the grid, each chosen on validation splits inside the training
    windows (docs/backtests.md, "Choices made without the test windows"), never on a test window:

    - recency: the CPU percentile of the newest quarter or half of the window;
    - peak-aware: P90/P95 but at least 0.85/0.9 x the window maximum;
    - finer headroom: 5, 10 and 15 % on P90/P95/P99, and P99.5 + 5 % with the risk limit;
    - maximum + headroom: the window maximum + 20 % or + 50 % (the cautious end of the curve);
    - memory at peak + 0/5 % or P99 + 5 % / P95 + 10 % where memory data covers the window.
    """
    memory = ((100.0, 0.0), (100.0, 5.0), (99.0, 5.0), (95.0, 10.0)) if with_memory else ((100.0, 20.0),)
    cpu: list[dict[str, Any]] = []
    for share in (0.25, 0.5):
        for q in (95.0, 99.0):
            for h in (0.0, 5.0, 10.0):
                cpu.append({"cpu_percentile": q, "cpu_headroom_pct": h, "recent_share": share, "max_best_risk": 4.0})
    for q in (90.0, 95.0):
        for f in (0.85, 0.9):
            for risk in (2.0, 4.0):
                cpu.append({"cpu_percentile": q, "cpu_headroom_pct": 0.0, "peak_share": f, "max_best_risk": risk})
    for q in (90.0, 95.0, 99.0):
        for h in (5.0, 10.0, 15.0):
            cpu.append({"cpu_percentile": q, "cpu_headroom_pct": h, "max_best_risk": 4.0})
    cpu.append({"cpu_percentile": 99.0, "cpu_headroom_pct": 0.0, "max_best_risk": 4.0})
    cpu.append({"cpu_percentile": 99.5, "cpu_headroom_pct": 5.0, "max_best_risk": 1.0})
    for h in (20.0, 50.0):
        cpu.append({"cpu_percentile": 100.0, "cpu_headroom_pct": h, "max_best_risk": 1.0})
    return [
        SizingPolicy(**c, memory_percentile=mq, memory_headroom_pct=mh)  # type: ignore[arg-type]
        for c in cpu
        for mq, mh in memory
    ]


def our_strategies(with_memory: bool = True, adaptive: bool = False) -> tuple[Strategy, ...]:
    """The shipped default (``SizingPolicy()``: P99.5 + 20 %, best option at risk <= 1), then every
    risk setting of ours: the first grid (CPU percentile x CPU headroom x memory headroom when there is
    memory data, each without and with the default's risk limit), floor-max (the cautious setting) and
    the rule families of ``_families``."""
    memory = GRID_MEMORY_HEADROOMS_PCT if with_memory else (20.0,)
    grid = tuple(
        _ours(
            SizingPolicy(
                cpu_percentile=q,
                cpu_headroom_pct=h,
                memory_headroom_pct=m,
                adaptive=adaptive,
                max_best_risk=risk,
            )
        )
        for risk in (4.0, 1.0)
        for q in GRID_CPU_PERCENTILES
        for h in GRID_CPU_HEADROOMS_PCT
        for m in memory
    )
    floor = SizingPolicy(
        cpu_percentile=99.5, cpu_headroom_pct=30.0, memory_headroom_pct=30.0 if with_memory else 20.0, floor_at_max=True
    )
    default = _ours(SizingPolicy(adaptive=adaptive), DEFAULT_SETTING)
    # The rule the default replaced (an up-size on headroom alone is best), kept to show the difference.
    on_headroom = _ours(SizingPolicy(adaptive=adaptive, upsize_on_headroom=True), "ours default, up-size on headroom")
    families = tuple(_ours(replace(p, adaptive=adaptive)) for p in _families(with_memory))
    return (default, on_headroom, *grid, _ours(replace(floor, max_best_risk=4.0)), *families)


def default_strategies(with_memory: bool = True) -> tuple[Strategy, ...]:
    return (*our_strategies(with_memory), *BASELINES)


@dataclass(frozen=True)
class Split:
    train: int
    test: int
    scaled: bool
    note: str


def split_samples(total: int, train_days: float, test_days: float) -> Split:
    """Training and test sample counts; a trace shorter than both windows is split proportionally."""
    train, test = round(train_days * SAMPLES_PER_DAY), round(test_days * SAMPLES_PER_DAY)
    if train + test <= total:
        if train_days < 1 or test_days < 1:
            return Split(train, test, False, f"{train / 12:g} training hours, {test / 12:g} test hours")
        return Split(train, test, False, f"{train_days:g} training days, {test_days:g} test days")
    train = math.floor(total * train_days / (train_days + test_days))
    return Split(
        train,
        total - train,
        True,
        f"trace has {total / SAMPLES_PER_DAY:.1f} days, under {train_days:g}+{test_days:g}: split proportionally "
        f"into {train / 12:.1f} training hours and {(total - train) / 12:.1f} test hours",
    )


def current_type_for(vm: VmTrace, catalog: Catalog) -> InstanceType:
    """The type a VM is taken to run on: its own, else the smallest m5 covering its size, else the default."""
    if vm.instance_type:
        return catalog.get(REGION, vm.instance_type)
    if vm.provisioned_vcpu:
        need_mem = vm.provisioned_memory_gib or 0.0
        for family in (DEFAULT_FAMILY, "r5", "x1e", "x1", "u-6tb1"):
            fits = [
                t
                for t in catalog.region(REGION)
                if t.family == family
                and "metal" not in t.instance_type
                and t.vcpu >= vm.provisioned_vcpu
                and t.memory_gib >= need_mem
            ]
            if fits:
                return min(fits, key=lambda t: (t.ondemand_usd_per_hour, t.vcpu))
    return catalog.get(REGION, DEFAULT_INSTANCE_TYPE)


@dataclass
class Choice:
    """One VM under one strategy: what it picked and how the test window went."""

    resource_id: str
    strategy: str
    current_type: str
    recommended_type: str
    current_usd_per_hour: float
    recommended_usd_per_hour: float
    test_intervals: int
    violations: int
    worst_overload_pct: float

    @property
    def savings_pct(self) -> float:
        return 100 * (1 - self.recommended_usd_per_hour / self.current_usd_per_hour)

    def to_dict(self) -> dict[str, Any]:
        return {
            "resource_id": self.resource_id,
            "strategy": self.strategy,
            "current_type": self.current_type,
            "recommended_type": self.recommended_type,
            "current_usd_per_hour": self.current_usd_per_hour,
            "recommended_usd_per_hour": self.recommended_usd_per_hour,
            "savings_pct": round(self.savings_pct, 4),
            "test_intervals": self.test_intervals,
            "violations": self.violations,
            "violation_rate": round(self.violations / self.test_intervals, 6) if self.test_intervals else 0.0,
            "worst_overload_pct": round(self.worst_overload_pct, 3),
        }


@dataclass
class StrategyResult:
    strategy: Strategy
    choices: list[Choice] = field(default_factory=list)

    @property
    def savings_pct(self) -> float:
        cur = sum(c.current_usd_per_hour for c in self.choices)
        rec = sum(c.recommended_usd_per_hour for c in self.choices)
        return 100 * (1 - rec / cur) if cur else 0.0

    @property
    def violation_rate_pct(self) -> float:
        n = sum(c.test_intervals for c in self.choices)
        return 100 * sum(c.violations for c in self.choices) / n if n else 0.0

    @property
    def worst_overload_pct(self) -> float:
        return max((c.worst_overload_pct for c in self.choices), default=0.0)

    @property
    def vms_with_violations(self) -> int:
        return sum(1 for c in self.choices if c.violations)

    @property
    def changed(self) -> int:
        return sum(1 for c in self.choices if c.recommended_type != c.current_type)

    def summary(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy.name,
            "kind": self.strategy.kind,
            "rule": self.strategy.description,
            "savings_pct": round(self.savings_pct, 3),
            "violation_rate_pct": round(self.violation_rate_pct, 4),
            "worst_overload_pct": round(self.worst_overload_pct, 2),
            "vms_with_violations": self.vms_with_violations,
            "vms_changed": self.changed,
            "vms": len(self.choices),
        }


def _profile(vm: VmTrace, current: InstanceType, features: TraceFeatures) -> UtilizationProfile:
    """The training profile from the feature models' rows, as the recommender builds it."""
    return profile_from_features(
        features.window,
        vcpu=current.vcpu,
        memory_gib=current.memory_gib,
        series=features.series(current.vcpu, vm.provisioned_vcpu),
        provisioned_vcpu=vm.provisioned_vcpu,
        provisioned_memory_gib=vm.provisioned_memory_gib,
    )


def replay(vm: VmTrace, current: InstanceType, chosen: InstanceType, split: Split) -> tuple[int, int, float]:
    """(intervals, violations, worst overload %) of the test window on ``chosen``."""
    base_vcpu = vm.provisioned_vcpu or current.vcpu
    base_mem = vm.provisioned_memory_gib or current.memory_gib
    test = slice(split.train, split.train + split.test)
    cpu = vm.cpu_pct[test] / 100 * base_vcpu
    present = ~np.isnan(cpu)
    if chosen.burstable_baseline_pct is not None:
        # A resized T3/T3a/T4g starts with no credits (no launch credits); credits are spent by the
        # 5-minute averages and the maxima must fit the capacity left.
        spend = np.nan_to_num(vm.cpu_avg_pct[test] / 100 * base_vcpu)
        capacity, _ = simulate_credits(spend, chosen)
    else:
        capacity = np.full(cpu.shape, float(chosen.vcpu))
    ratio = np.where(present, np.nan_to_num(cpu) / capacity, 0.0)
    if vm.mem_pct is not None:
        mem = vm.mem_pct[test] / 100 * base_mem
        ratio = np.maximum(ratio, np.nan_to_num(mem) / chosen.memory_gib)
    intervals = int(present.sum())
    violations = int((ratio[present] > 1.0 + 1e-9).sum())
    worst = max(float(ratio[present].max()) - 1, 0.0) * 100 if intervals else 0.0
    return intervals, violations, worst


def run_backtest(
    vms: Sequence[VmTrace],
    catalog: Catalog,
    train_days: float = 14,
    test_days: float = 7,
    strategies: Sequence[Strategy] | None = None,
    models_dir: Path = MODELS_DIR,
    candidates: CandidateSet | None = None,
) -> tuple[Split, list[StrategyResult]]:
    """Backtest every strategy on every VM; the split is the same for all VMs of the trace, and so is
    the candidate set (``candidates``: same architecture and burstable types by default).

    The training profiles come from the SQL models in ``models_dir`` (the shipped ones by default).
    """
    with_memory = any(vm.mem_pct is not None for vm in vms)
    strategies = list(strategies or default_strategies(with_memory))
    candidates = candidates or CandidateSet()
    total = min((vm.samples for vm in vms), default=0)
    split = split_samples(total, train_days, test_days)
    results = [StrategyResult(s) for s in strategies]
    candidates_cache: dict[tuple[Any, ...], list[InstanceType]] = {}
    eligible = [vm for vm in vms if vm.samples >= split.train + split.test]
    features = trace_features(eligible, split.train, models_dir)
    for vm in eligible:
        current = current_type_for(vm, catalog)
        profile = _profile(vm, current, features[vm.resource_id])
        if profile.samples < split.train * 0.5:
            continue  # under half the training window: no recommendation, as in production
        key = candidates.key(current)
        if key not in candidates_cache:
            candidates_cache[key] = candidate_types(catalog, current, candidates.policy())
        pool = candidates_cache[key]
        for result in results:
            demand = result.strategy.demand(profile)
            if demand.memory_gib is None:
                demand = replace(demand, memory_floor_gib=current.memory_gib)
            chosen = cheapest_fit(profile, demand, current, pool, result.strategy.policy) or current
            intervals, violations, worst = replay(vm, current, chosen, split)
            result.choices.append(
                Choice(
                    vm.resource_id,
                    result.strategy.name,
                    current.instance_type,
                    chosen.instance_type,
                    current.ondemand_usd_per_hour,
                    chosen.ondemand_usd_per_hour,
                    intervals,
                    violations,
                    worst,
                )
            )
    return split, results


def _dominates(a: StrategyResult, b: StrategyResult) -> bool:
    """At least b's savings at no more violated intervals, strictly better on one (on the rounded
    figures the report prints: 0.001 % of intervals, 0.01 % of savings)."""
    sa, sb = round(a.savings_pct, 2), round(b.savings_pct, 2)
    va, vb = round(a.violation_rate_pct, 4), round(b.violation_rate_pct, 4)
    return sa >= sb and va <= vb and (sa > sb or va < vb)


def dominance(results: Sequence[StrategyResult], default: str = DEFAULT_SETTING) -> dict[str, Any]:
    """For each baseline, the settings of ours that dominate it (at least its savings at no more
    violated intervals, strictly better on one), and how far the nearest setting is when none does."""
    ours = [r for r in results if r.strategy.kind == "ours"]
    out: dict[str, Any] = {"baselines": {}}
    for b in (r for r in results if r.strategy.kind == "baseline"):
        winners = [o.strategy.name for o in ours if _dominates(o, b)]
        entry: dict[str, Any] = {
            "dominated": bool(winners),
            "by": winners,
            "savings_pct": round(b.savings_pct, 3),
            "violation_rate_pct": round(b.violation_rate_pct, 4),
        }
        if not winners:
            # The best of ours at no more violations (savings short of the baseline), if any.
            safe = [o for o in ours if round(o.violation_rate_pct, 4) <= round(b.violation_rate_pct, 4)]
            if safe:
                near = max(safe, key=lambda o: o.savings_pct)
                entry["nearest"] = {
                    "strategy": near.strategy.name,
                    "savings_pct": round(near.savings_pct, 3),
                    "violation_rate_pct": round(near.violation_rate_pct, 4),
                    "savings_short_by_pct": round(b.savings_pct - near.savings_pct, 3),
                }
        out["baselines"][b.strategy.name] = entry
    d = next((r for r in ours if r.strategy.name == default), None)
    if d is not None:
        beaten_by = [o.strategy.name for o in ours if o is not d and _dominates(o, d)]
        out["default"] = {
            "strategy": default,
            "on_curve": not beaten_by,
            "dominated_by": beaten_by,
            "violation_rate_pct": round(d.violation_rate_pct, 4),
            "under_1_pct": d.violation_rate_pct < 1.0,
        }
    out["all_dominated"] = all(v["dominated"] for v in out["baselines"].values())
    return out
