"""Right-sizing of one EC2 instance from its utilisation over the window: pure logic, no Dagster.

The statistics come from the features stage: :func:`profile_from_features` reads one
``utilization_window`` row (percentiles, maxima, means, saturation, daily-peak spread and trend,
network peak), and only the burstable credit replay reads the ordered 5-minute series
(``stg_utilization_5m``, :func:`cpu_series`). :func:`analyze_utilization` computes the same profile
from raw samples with numpy, for tests and ad-hoc use.

The rules, in the order a reader would check them:

- **Demand.** CPU demand in vCPU is ``cpu_pct / 100 x vCPU of the current instance``, taken over the
  5-minute *maxima* (CloudWatch ``Maximum``, as Compute Optimizer does) at a chosen percentile
  (P90, P95 or P99.5; default P99.5) plus a headroom (0, 20 or 30 %; default 20 %). Memory demand is
  the *peak* of the CloudWatch-agent ``mem_used_percent`` plus a headroom (10, 20 or 30 %). Without
  memory data no candidate may have less memory than the current instance, and the rationale says so.
- **Headroom is never dropped.** When no candidate (the current type included) meets the demand with
  its headroom, the finding is under-provisioned and the cheapest type that does is the up-size option;
  nothing is labelled over-provisioned while its projected CPU is over the rule.
- **Architecture.** ``SizingPolicy.architecture`` ``"current"`` (the default, as Compute Optimizer's
  CURRENT preference): the best option keeps the CPU architecture; the cheapest fit of the other one
  (Graviton, with migration effort Medium) is still listed beside it. ``"any"`` lets it be the best.
- **Risk.** No option whose performance risk is above ``SizingPolicy.max_best_risk`` (default
  ``DEFAULT_MAX_BEST_RISK`` = 1: the window's maximum fits) is the best one.
- **Memory of production-critical instances** is never cut without memory data over the full window
  (``recommend_resize(keep_memory=True)``, decided by the optimiser from the tags and the coverage).
- **Adaptive headroom** (``SizingPolicy.adaptive``, off by default: on a validation split it moved along
  the savings/violations curve instead of above it, see docs/backtests.md): the headroom grows with the
  day-to-day variation of the daily peaks and with an upward trend between the window's halves.
- **Candidates** come from the price catalogue in the same region: the same family, other
  general-purpose / compute / memory families, newer generations, Graviton (``arm64``, flagged with a
  migration effort) and burstable ``t3``/``t3a``/``t4g`` only when the CPU profile fits the baseline
  credits (``BURSTABLE_BASELINE_PCT``, from the AWS documentation).
- **Network**: with network data the peak 5-minute throughput plus the CPU headroom must fit the
  candidate's class; without it the candidate's class may not drop below ``min(current, 5 Gbit/s)``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import numpy as np
import pyarrow as pa

from cloudopt_pipelines.storage.schemas import MAX_PRICE_USD_PER_HOUR

HOURS_PER_MONTH = 730.0
SAMPLES_PER_DAY = 288

CPU_PERCENTILES = (90.0, 95.0, 99.0, 99.5, 100.0)
CPU_HEADROOMS_PCT = (0.0, 5.0, 10.0, 15.0, 20.0, 30.0, 50.0)
MEMORY_HEADROOMS_PCT = (0.0, 5.0, 10.0, 20.0, 30.0)
# The memory percentile a policy may read instead of the peak, only where memory data covers the window.
MEMORY_PERCENTILES = (95.0, 99.0, 99.5, 100.0)

# Baseline CPU per vCPU of the burstable types (AWS EC2 User Guide, "Key concepts and definitions for
# burstable performance instances", baseline utilisation per vCPU). t3a has the same table as t3.
BURSTABLE_BASELINE_PCT: dict[str, float] = {
    "nano": 5.0,
    "micro": 10.0,
    "small": 20.0,
    "medium": 20.0,
    "large": 30.0,
    "xlarge": 40.0,
    "2xlarge": 40.0,
}
BURSTABLE_FAMILIES = ("t3", "t3a", "t4g")

# Families a standalone instance may move to: general purpose, compute and memory optimised,
# 5th generation and newer (no local-disk "d", network "n", "b", "z", "flex" or GPU variants).
DEFAULT_FAMILY_PATTERN = r"^[mcr][5-9][ag]?i?$"
IDLE_MAX_CPU_PCT = 1.0
# CPU is measured as a share of the instance, so it can never show demand above 100 %. An instance whose
# 5-minute *averages* sit at >= 90 % in at least 1 % of intervals is saturated: its demand may be higher.
SATURATION_PCT = 90.0
SATURATED_SHARE = 0.01
IDLE_MAX_NET_BYTES_PER_DAY = 5_000_000.0

FINDINGS = ("over-provisioned", "under-provisioned", "optimized", "idle", "gathering-data")
#: Below this many hours of CPU data in the window no change is recommended, only "gathering-data"
#: (Compute Optimizer's minimum: 30 hours of metrics in the 14-day window).
MIN_HOURS_OF_DATA = 30.0
#: Confidence falls to 0 when the newest sample is this many days older than the end of the day.
RECENCY_DAYS = 7.0
MIGRATION_EFFORTS = ("VeryLow", "Low", "Medium", "High")
_FINDING_LABEL = {
    "over-provisioned": "Over-provisioned",
    "under-provisioned": "Under-provisioned",
    "optimized": "Optimized",
    "idle": "Idle",
    "gathering-data": "Gathering data",
}


ARCHITECTURE_PREFERENCES = ("current", "any")
#: The best option's performance risk is at most this: 1 = the window's 5-minute maximum fits the type.
DEFAULT_MAX_BEST_RISK = 1.0


class SizingError(ValueError):
    """A request the sizing rules cannot answer (unknown type, a setting outside the allowed ones)."""


class NonFiniteStatistic(SizingError):
    """A statistic the sizing would rest on is NaN or infinite: no recommendation is made from it."""


@dataclass(frozen=True)
class SizingPolicy:
    """The risk setting: which percentile, how much headroom, which candidates."""

    cpu_percentile: float = 99.5
    cpu_headroom_pct: float = 20.0
    memory_headroom_pct: float = 20.0
    adaptive: bool = False
    allow_burstable: bool = True
    allow_graviton: bool = True
    allow_other_families: bool = True
    family_pattern: str = DEFAULT_FAMILY_PATTERN
    max_options: int = 5
    floor_at_max: bool = False  # never ask for less than the window's maximum (the most cautious setting)
    architecture: str = "current"  # "current": the best option keeps the architecture; "any": it may change
    max_best_risk: float = 1.0  # the highest performance risk the best option may have (DEFAULT_MAX_BEST_RISK)
    min_hours_of_data: float = 30.0  # under this, only "gathering-data" (MIN_HOURS_OF_DATA)
    upsize_on_headroom: bool = False  # True: an up-size resting on headroom alone may be the best option
    peak_share: float = 0.0  # CPU demand at least this share of the window's 5-minute maximum (0: off)
    memory_percentile: float = 100.0  # memory percentile read when memory data covers the full window
    recent_share: float = 1.0  # the CPU percentile is read over this newest share of the window (1: all of it)

    def __post_init__(self) -> None:
        if not 0.0 <= self.peak_share <= 1.0:
            raise SizingError(f"peak_share must be between 0 and 1 (a share of the maximum), not {self.peak_share}")
        if not 0.0 < self.recent_share <= 1.0:
            raise SizingError(f"recent_share must be over 0 and at most 1 (of the window), not {self.recent_share}")
        if self.memory_percentile not in MEMORY_PERCENTILES:
            raise SizingError(f"memory_percentile must be one of {MEMORY_PERCENTILES}, not {self.memory_percentile}")
        if self.cpu_percentile not in CPU_PERCENTILES:
            raise SizingError(f"cpu_percentile must be one of {CPU_PERCENTILES}, not {self.cpu_percentile}")
        if self.cpu_headroom_pct not in CPU_HEADROOMS_PCT:
            raise SizingError(f"cpu_headroom_pct must be one of {CPU_HEADROOMS_PCT}, not {self.cpu_headroom_pct}")
        if self.architecture not in ARCHITECTURE_PREFERENCES:
            raise SizingError(f"architecture must be one of {ARCHITECTURE_PREFERENCES}, not {self.architecture!r}")
        if self.memory_headroom_pct not in MEMORY_HEADROOMS_PCT:
            raise SizingError(
                f"memory_headroom_pct must be one of {MEMORY_HEADROOMS_PCT}, not {self.memory_headroom_pct}"
            )

    @property
    def name(self) -> str:
        name = f"p{self.cpu_percentile:g}+{self.cpu_headroom_pct:g}% mem+{self.memory_headroom_pct:g}%"
        if self.peak_share:
            name = name.replace("%", f"% max*{self.peak_share:g}", 1)
        if self.recent_share < 1.0:
            name = f"recent{100 * self.recent_share:g}% " + name
        if self.memory_percentile != 100.0:
            name = name.replace("mem+", f"mem P{self.memory_percentile:g}+", 1)
        return name + (" floor-max" if self.floor_at_max else "") + (" adaptive" if self.adaptive else "")


# Named risk settings, from the most frugal to the most cautious; "balanced" is the default.
RISK_SETTINGS: dict[str, SizingPolicy] = {
    "aggressive": SizingPolicy(cpu_percentile=90.0, cpu_headroom_pct=0.0, memory_headroom_pct=10.0),
    "lean": SizingPolicy(cpu_percentile=95.0, cpu_headroom_pct=0.0, memory_headroom_pct=10.0),
    "moderate": SizingPolicy(cpu_percentile=95.0, cpu_headroom_pct=20.0, memory_headroom_pct=20.0),
    "tight": SizingPolicy(cpu_percentile=99.5, cpu_headroom_pct=0.0, memory_headroom_pct=20.0),
    "balanced": SizingPolicy(),
    "cautious": SizingPolicy(cpu_percentile=99.5, cpu_headroom_pct=30.0, memory_headroom_pct=30.0, floor_at_max=True),
}
DEFAULT_RISK_SETTING = "balanced"


# The percentiles a profile carries: those of the ``utilization_window`` feature model (100 = maximum).
PROFILE_PERCENTILES = (50.0, 90.0, 95.0, 99.0, 99.5, 100.0)
_WINDOW_COLUMNS = {50.0: "p50", 90.0: "p90", 95.0: "p95", 99.0: "p99", 99.5: "p995", 100.0: "max"}
MIN_PEAK_DAY_SAMPLES = SAMPLES_PER_DAY // 4
#: Memory data "over the full window": at least this share of the window's expected 5-minute samples.
FULL_WINDOW_SHARE = 0.95


@dataclass(frozen=True)
class CpuSeries:
    """The ordered 5-minute CPU of one instance (vCPU), only for what needs the order: the burstable
    credit replay spends credits interval by interval, which no percentile can stand in for."""

    mean_vcpu: np.ndarray  # 5-minute averages (the peak where a slot has no average)
    peak_vcpu: np.ndarray  # 5-minute maxima where the source gives them, else the averages
    # peak / credit-limited capacity per (vCPU, baseline %): the fit test and the risk of a burstable
    # type read the same replay, and types of one size and baseline (t3 / t3a) share it
    _replays: dict[tuple[float, float], np.ndarray] = field(default_factory=dict, compare=False, repr=False)

    def credit_ratio(self, instance: InstanceType) -> np.ndarray:
        """Each interval's 5-minute maximum over the capacity the CPU credits of ``instance`` allow,
        replayed from zero launch credits (:func:`simulate_credits`)."""
        key = (float(instance.vcpu), float(instance.burstable_baseline_pct or 100.0))
        ratio = self._replays.get(key)
        if ratio is None:
            capacity, _ = simulate_credits(self.mean_vcpu, instance)
            ratio = self._replays[key] = self.peak_vcpu / capacity
        return ratio


@dataclass(frozen=True)
class DailyPeaks:
    """Spread and trend of the daily CPU peaks (vCPU), over days with a quarter of their samples."""

    days: int
    mean_vcpu: float
    std_vcpu: float
    first_half_mean_vcpu: float | None  # the first floor(days / 2) days, in date order
    second_half_mean_vcpu: float | None


@dataclass(frozen=True)
class UtilizationProfile:
    """What the utilisation of one instance over the window says, in vCPU and GiB of the current instance.

    The shipped recommender builds it from the ``utilization_window`` feature row
    (:func:`profile_from_features`); :func:`analyze_utilization` computes the same statistics from raw
    5-minute samples with numpy (same percentile method: linear interpolation, numpy's default).
    """

    vcpu: float
    memory_gib: float
    cpu_peak_quantiles_vcpu: dict[float, float]  # percentile (PROFILE_PERCENTILES) of the 5-minute maxima
    cpu_mean_vcpu: float  # mean of the 5-minute averages
    mem_quantiles_gib: dict[float, float] | None  # None: no memory data
    net_peak_bps: float | None  # None: no network data
    net_bytes_per_day: float | None
    samples: int
    expected_samples: int
    days_with_data: int
    daily_peaks: DailyPeaks | None = None
    capacity_vcpu: float = 0.0  # what 100 % CPU means in vCPU (the VM's own cores, else the instance's)
    saturated_share: float = 0.0  # share of 5-minute averages at or above SATURATION_PCT
    series: CpuSeries | None = None  # None: no ordered series (burstable types cannot be checked)
    nonfinite_samples: int = 0  # samples with a NaN (flagged by the features stage) or infinite value: excluded
    out_of_range_samples: int = 0  # samples with a CPU or memory percentage outside 0-100 (kept)
    max_sample_pct: float = 0.0  # the highest CPU percentage seen, to name it when out of range
    mem_samples: int = 0  # 5-minute memory samples in the window (the CloudWatch agent's)
    last_sample_age_hours: float | None = None  # end of the partition's day minus the newest sample; None: unknown

    @property
    def hours_of_data(self) -> float:
        return self.samples * 5 / 60

    @property
    def memory_over_full_window(self) -> bool:
        """Memory data for at least ``FULL_WINDOW_SHARE`` of the window's expected samples."""
        return bool(self.expected_samples) and self.mem_samples >= FULL_WINDOW_SHARE * self.expected_samples

    @property
    def is_saturated(self) -> bool:
        """Runs flat out often enough that the CPU metric, capped at 100 %, may hide the real demand; or
        the metric is not capped at all (a source that reports over 100 %, such as MHz-based traces)."""
        if self.saturated_share >= SATURATED_SHARE:
            return True
        return bool(self.capacity_vcpu) and self.cpu_max_vcpu > self.capacity_vcpu * 1.0001

    @property
    def coverage(self) -> float:
        return min(1.0, self.samples / self.expected_samples) if self.expected_samples else 0.0

    @property
    def has_memory(self) -> bool:
        return self.mem_quantiles_gib is not None

    def cpu_vcpu(self, q: float) -> float:
        """Percentile ``q`` of the 5-minute CPU maxima, in vCPU (0 without samples)."""
        if not self.samples:
            return 0.0
        return _quantile(self.cpu_peak_quantiles_vcpu, q, "CPU")

    def mem_gib(self, q: float = 100.0) -> float:
        """Percentile ``q`` of memory used, in GiB (0 without memory data)."""
        return _quantile(self.mem_quantiles_gib, q, "memory") if self.mem_quantiles_gib else 0.0

    @property
    def cpu_max_vcpu(self) -> float:
        return self.cpu_vcpu(100.0)

    @property
    def mem_max_gib(self) -> float:
        return self.mem_gib(100.0)

    def cpu_pct(self, q: float) -> float:
        """Percentile ``q`` of the 5-minute CPU maxima, as % of the current instance."""
        return self.cpu_vcpu(q) / self.vcpu * 100

    @property
    def cpu_max_pct(self) -> float:
        return self.cpu_pct(100.0)

    @property
    def cpu_mean_pct(self) -> float:
        return self.cpu_mean_vcpu / self.vcpu * 100

    @property
    def is_idle(self) -> bool:
        """Cost Explorer's idle rule (max CPU <= 1 %) plus low network where network is known."""
        if self.samples == 0:
            return False
        low_network = self.net_bytes_per_day is None or self.net_bytes_per_day <= IDLE_MAX_NET_BYTES_PER_DAY
        return self.cpu_max_pct <= IDLE_MAX_CPU_PCT and low_network


def _quantile(quantiles: dict[float, float], q: float, what: str) -> float:
    try:
        return quantiles[float(q)]
    except KeyError:
        raise SizingError(
            f"the {what} percentile {q:g} is not in the utilisation profile; it carries "
            f"{', '.join(f'{p:g}' for p in PROFILE_PERCENTILES)} (the utilization_window feature columns)"
        ) from None


def analyze_utilization(
    cpu_pct: Sequence[float] | np.ndarray,
    *,
    vcpu: float,
    memory_gib: float,
    cpu_max_pct: Sequence[float] | np.ndarray | None = None,
    mem_pct: Sequence[float] | np.ndarray | None = None,
    net_bytes: Sequence[float] | np.ndarray | None = None,
    window_days: float | None = None,
    provisioned_vcpu: float | None = None,
    provisioned_memory_gib: float | None = None,
) -> UtilizationProfile:
    """Turn 5-minute samples (in %, of ``provisioned_*`` or else of the instance) into a profile.

    The samples path, for tests and ad-hoc use: the recommender and the backtest read the same
    statistics from the feature models (:func:`profile_from_features`). ``cpu_max_pct`` is CloudWatch
    ``Maximum`` per 5 minutes (used for sizing where given; ``cpu_pct`` otherwise); NaN marks a missing
    sample. ``net_bytes`` is in+out bytes per 5 minutes. ``window_days`` sets the expected sample count
    that coverage and confidence are measured against. Days are consecutive runs of 288 samples.
    """
    base_vcpu = provisioned_vcpu or vcpu
    base_mem = provisioned_memory_gib or memory_gib
    avg = np.asarray(cpu_pct, dtype=float)
    peak = np.asarray(cpu_max_pct, dtype=float) if cpu_max_pct is not None else avg.copy()
    if peak.shape != avg.shape:
        raise SizingError(f"cpu_max_pct has {peak.size} samples but cpu_pct has {avg.size}")
    # An infinite sample is a broken source, not a load: excluded like a missing one, and counted.
    infinite = np.isinf(avg) | np.isinf(peak)
    avg, peak = _finite_or_nan(avg), _finite_or_nan(peak)
    peak = np.where(np.isnan(peak), avg, peak)
    present = ~np.isnan(peak)
    out_of_range = (peak < 0) | (peak > 100) | (avg < 0) | (avg > 100)
    peak_v = np.clip(peak[present], 0, None) / 100 * base_vcpu
    mean_v = np.clip(np.where(np.isnan(avg), peak, avg)[present], 0, None) / 100 * base_vcpu
    avg_present = avg[~np.isnan(avg)]
    mem = None
    mem_count = 0
    extra_nonfinite = extra_out_of_range = 0
    if mem_pct is not None:
        m = np.asarray(mem_pct, dtype=float)
        m_bad, m = np.isinf(m), _finite_or_nan(m)
        m_out = (m < 0) | (m > 100)
        if m.shape == avg.shape:
            infinite, out_of_range = infinite | m_bad, out_of_range | m_out
        else:
            extra_nonfinite, extra_out_of_range = int(m_bad.sum()), int(m_out.sum())
        m = m[~np.isnan(m)]
        if m.size:
            mem = _quantiles(np.clip(m, 0, None) / 100 * base_mem)
        mem_count = int(m.size)
    net_peak = net_day = None
    if net_bytes is not None:
        nb = np.asarray(net_bytes, dtype=float)
        if nb.shape == avg.shape:
            infinite = infinite | np.isinf(nb)
        else:
            extra_nonfinite += int(np.isinf(nb).sum())
        nb = _finite_or_nan(nb)
        nb = nb[~np.isnan(nb)]
        if nb.size:
            net_peak = float(nb.max()) * 8 / 300
            net_day = float(nb.sum()) / max(nb.size / SAMPLES_PER_DAY, 1 / SAMPLES_PER_DAY)
    daily = []
    for d in range(math.ceil(peak.size / SAMPLES_PER_DAY)):
        chunk = peak[d * SAMPLES_PER_DAY : (d + 1) * SAMPLES_PER_DAY]
        chunk = chunk[~np.isnan(chunk)]
        if chunk.size >= MIN_PEAK_DAY_SAMPLES:
            daily.append(float(chunk.max()) / 100 * base_vcpu)
    saturated = float((mean_v >= SATURATION_PCT / 100 * base_vcpu).mean()) if mean_v.size else 0.0
    expected = round((window_days if window_days is not None else peak.size / SAMPLES_PER_DAY) * SAMPLES_PER_DAY)
    return UtilizationProfile(
        vcpu=float(vcpu),
        memory_gib=float(memory_gib),
        cpu_peak_quantiles_vcpu=_quantiles(peak_v),
        cpu_mean_vcpu=float(np.clip(avg_present, 0, None).mean()) / 100 * base_vcpu if avg_present.size else 0.0,
        mem_quantiles_gib=mem,
        net_peak_bps=net_peak,
        net_bytes_per_day=net_day,
        samples=int(present.sum()),
        expected_samples=expected,
        days_with_data=len(daily),
        daily_peaks=_daily_peaks(np.asarray(daily)),
        capacity_vcpu=float(base_vcpu),
        saturated_share=saturated,
        series=CpuSeries(mean_v, peak_v),
        nonfinite_samples=int(infinite.sum()) + extra_nonfinite,
        out_of_range_samples=int(out_of_range.sum()) + extra_out_of_range,
        max_sample_pct=float(np.nanmax(peak)) if present.any() else 0.0,
        mem_samples=mem_count,
    )


def _finite_or_nan(values: np.ndarray) -> np.ndarray:
    return np.where(np.isfinite(values), values, np.nan)


def _quantiles(values: np.ndarray) -> dict[float, float]:
    if values.size == 0:
        return dict.fromkeys(PROFILE_PERCENTILES, 0.0)
    return {q: float(v) for q, v in zip(PROFILE_PERCENTILES, np.percentile(values, PROFILE_PERCENTILES), strict=True)}


def _daily_peaks(peaks: np.ndarray) -> DailyPeaks | None:
    if peaks.size == 0:
        return None
    half = peaks.size // 2
    return DailyPeaks(
        days=int(peaks.size),
        mean_vcpu=float(peaks.mean()),
        std_vcpu=float(peaks.std()),
        first_half_mean_vcpu=float(peaks[:half].mean()) if half else None,
        second_half_mean_vcpu=float(peaks[half:].mean()),
    )


def profile_from_features(
    window: Mapping[str, Any] | None,
    *,
    vcpu: float,
    memory_gib: float,
    series: CpuSeries | None = None,
    provisioned_vcpu: float | None = None,
    provisioned_memory_gib: float | None = None,
) -> UtilizationProfile:
    """The profile of one instance from its ``utilization_window`` row (the features stage).

    Percentages are of ``provisioned_*`` (the VM's own size, where a trace gives it) or else of the
    instance. ``series`` is the ordered 5-minute CPU (:func:`cpu_series`), needed only to replay a
    burstable type's credits; without it no burstable type is offered. ``window`` None (no row: no
    samples in the window) gives an empty profile. Negative percentages (out of range) count as 0.

    Bad samples, as the features stage counted them: ``nonfinite_samples`` (NaN or infinite, excluded
    from every statistic) are named in the rationale; ``out_of_range_samples`` (CPU or memory outside
    0-100 %, kept) cap the confidence and are named with the highest CPU seen. A statistic the sizing
    reads that is itself NaN or infinite (a partition not written by the shipped models) raises
    :class:`NonFiniteStatistic` naming the column: nothing is sized from it, never a silent 0.
    """
    base_vcpu = float(provisioned_vcpu or vcpu)
    base_mem = float(provisioned_memory_gib or memory_gib)
    row = dict(window or {})

    def pct(name: str) -> float | None:
        value = row.get(name)
        if value is None:
            return None
        value = float(value)
        if not math.isfinite(value):
            raise NonFiniteStatistic(
                f"utilization_window of {row.get('resource_id')}: {name} is {value} (not a finite number), so no "
                "recommendation is made from it; the models exclude NaN and infinite samples: re-materialise "
                "features/utilization_window for the window (and what it reads)"
            )
        return value

    def vcpu_of(value: float | None) -> float:
        return max(value or 0.0, 0.0) / 100 * base_vcpu

    cpu = {q: vcpu_of(pct(f"cpu_{col}_pct")) for q, col in _WINDOW_COLUMNS.items()}
    mem = None
    if row.get("mem_samples"):
        mem = {q: max(pct(f"mem_{col}_pct") or 0.0, 0.0) / 100 * base_mem for q, col in _WINDOW_COLUMNS.items()}
    net_peak = net_day = None
    net_max = pct("net_max_bytes")
    if row.get("net_samples") and net_max is not None:
        net_peak = net_max * 8 / 300
        total = (pct("net_in_bytes") or 0.0) + (pct("net_out_bytes") or 0.0)
        net_day = total / (int(row["net_samples"]) / SAMPLES_PER_DAY)
    peaks = None
    if row.get("cpu_daily_peak_days"):
        first, second = pct("cpu_daily_peak_first_half_pct"), pct("cpu_daily_peak_second_half_pct")
        peaks = DailyPeaks(
            days=int(row["cpu_daily_peak_days"]),
            mean_vcpu=vcpu_of(pct("cpu_daily_peak_mean_pct")),
            std_vcpu=(pct("cpu_daily_peak_std_pct") or 0.0) / 100 * base_vcpu,
            first_half_mean_vcpu=None if first is None else vcpu_of(first),
            second_half_mean_vcpu=None if second is None else vcpu_of(second),
        )
    return UtilizationProfile(
        vcpu=float(vcpu),
        memory_gib=float(memory_gib),
        cpu_peak_quantiles_vcpu=cpu,
        cpu_mean_vcpu=vcpu_of(pct("cpu_mean_pct")),
        mem_quantiles_gib=mem,
        net_peak_bps=net_peak,
        net_bytes_per_day=net_day,
        samples=int(row.get("samples") or 0),
        expected_samples=int(row.get("expected_samples") or 0),
        days_with_data=int(row.get("days_with_data") or 0),
        daily_peaks=peaks,
        capacity_vcpu=base_vcpu,
        saturated_share=(pct("cpu_saturated_share_pct") or 0.0) / 100,
        series=series,
        nonfinite_samples=int(row.get("nonfinite_samples") or 0),
        out_of_range_samples=int(row.get("out_of_range_samples") or 0),
        max_sample_pct=pct("cpu_max_pct") or 0.0,
        mem_samples=int(row.get("mem_samples") or 0),
    )


def cpu_series(
    cpu_pct: np.ndarray, cpu_peak_pct: np.ndarray, vcpu: float, provisioned_vcpu: float | None = None
) -> CpuSeries:
    """The ordered series for the credit replay from ``stg_utilization_5m`` columns (in %, NaN = NULL):
    slots without a CPU peak are left out, a slot without an average spends its peak."""
    base = provisioned_vcpu or vcpu
    avg = _finite_or_nan(np.asarray(cpu_pct, dtype=float))  # the models write NULL, never NaN or Inf
    peak = _finite_or_nan(np.asarray(cpu_peak_pct, dtype=float))
    peak = np.where(np.isnan(peak), avg, peak)
    present = ~np.isnan(peak)
    mean = np.where(np.isnan(avg), peak, avg)[present]
    return CpuSeries(np.clip(mean, 0, None) / 100 * base, np.clip(peak[present], 0, None) / 100 * base)


def adaptive_factor(profile: UtilizationProfile) -> float:
    """Extra headroom multiplier from day-to-day variation and trend of the daily peaks (>= 1).

    ``1 + cv`` where ``cv`` is the coefficient of variation of the daily peaks (capped at 0.5), times
    ``1 + growth`` where growth is the rise of the mean daily peak from the first half of the
    window to the second (capped at 0.5; falls are ignored). Days with under a quarter of their
    samples do not count. With under 3 days there is no trend to read: the factor is 1.
    """
    peaks = profile.daily_peaks
    if peaks is None or peaks.days < 3 or peaks.mean_vcpu <= 0:
        return 1.0
    cv = min(peaks.std_vcpu / peaks.mean_vcpu, 0.5)
    first, second = peaks.first_half_mean_vcpu or 0.0, peaks.second_half_mean_vcpu or 0.0
    growth = min(max((second - first) / first, 0.0), 0.5) if first > 0 else 0.0
    return (1 + cv) * (1 + growth)


@dataclass(frozen=True)
class Demand:
    """Capacity a candidate needs: vCPU, GiB (None: keep the current memory) and bit/s (None: unknown)."""

    vcpu: float
    memory_gib: float | None
    net_bps: float | None
    cpu_headroom_pct: float
    cpu_percentile_vcpu: float
    memory_floor_gib: float | None = None
    cpu_percentile: float = 100.0  # the percentile of the 5-minute maxima the rule reads (100 = maximum)
    floor_at_max: bool = False  # never less than the window's maximum, whatever the percentile
    peak_share: float = 0.0  # never less than this share of the window's maximum (0: off)
    recent_share: float = 1.0  # the percentile is of this newest share of the window's samples

    @property
    def min_memory_gib(self) -> float:
        return self.memory_gib if self.memory_gib is not None else (self.memory_floor_gib or 0.0)


def recent_samples(values: np.ndarray, share: float) -> np.ndarray:
    """The newest ``share`` of an ordered series (at least one sample)."""
    return values[-max(1, round(share * values.size)) :]


def required_capacity(profile: UtilizationProfile, policy: SizingPolicy) -> Demand:
    """The vCPU, memory and network a candidate must provide under ``policy``."""
    p_cpu = profile.cpu_vcpu(policy.cpu_percentile)
    recent = policy.recent_share < 1.0 and profile.series is not None and profile.series.peak_vcpu.size > 0
    if recent:
        # Recency: the percentile of the newest part of the window, which predicts the next days better
        # than old load (backtested, docs/backtests.md); without the ordered series, the whole window's.
        newest = recent_samples(profile.series.peak_vcpu, policy.recent_share)
        p_cpu = float(np.percentile(newest, policy.cpu_percentile))
    factor = adaptive_factor(profile) if policy.adaptive else 1.0
    headroom = (1 + policy.cpu_headroom_pct / 100) * factor
    vcpu = p_cpu * headroom
    if policy.floor_at_max and profile.samples:
        vcpu = max(vcpu, profile.cpu_max_vcpu)
    if policy.peak_share and profile.samples:
        # Peak-aware: a spiky window (maximum far above the percentile) keeps a share of its maximum.
        vcpu = max(vcpu, policy.peak_share * profile.cpu_max_vcpu)
    mem = None
    if profile.has_memory:
        # A percentile below the peak only where memory data covers the window: a partial one may miss the peak.
        mem_q = policy.memory_percentile if profile.memory_over_full_window else 100.0
        mem = profile.mem_gib(mem_q) * (1 + policy.memory_headroom_pct / 100)
    net = profile.net_peak_bps * (1 + policy.cpu_headroom_pct / 100) if profile.net_peak_bps is not None else None
    for name, value in (
        (f"CPU P{policy.cpu_percentile:g} of the 5-minute maxima", p_cpu),
        ("CPU demand with headroom", vcpu),
        ("peak memory with headroom", mem),
        ("peak network throughput", net),
    ):
        if value is not None and not math.isfinite(value):
            raise NonFiniteStatistic(
                f"{name} is {value} (not a finite number): no recommendation is made from it; "
                "the samples hold NaN or infinite values the features stage should have excluded"
            )
    return Demand(
        vcpu=vcpu,
        memory_gib=mem,
        net_bps=net,
        cpu_headroom_pct=(headroom - 1) * 100,
        cpu_percentile_vcpu=p_cpu,
        memory_floor_gib=None if mem is not None else profile.memory_gib,
        cpu_percentile=policy.cpu_percentile,
        floor_at_max=policy.floor_at_max,
        peak_share=policy.peak_share,
        recent_share=policy.recent_share if recent else 1.0,
    )


# ---------------------------------------------------------------------------------------------- catalogue


_SIZE_RE = re.compile(r"^(?P<family>[a-z0-9-]+)\.(?P<size>[a-z0-9]+)$")
_FAMILY_RE = re.compile(r"^(?P<cls>[a-z]+?)(?P<gen>\d+)(?P<suffix>[a-z-]*)$")


def family_of(instance_type: str) -> str:
    return instance_type.split(".", 1)[0]


def size_of(instance_type: str) -> str:
    return instance_type.split(".", 1)[1] if "." in instance_type else ""


def generation_of(family: str) -> int:
    m = _FAMILY_RE.match(family)
    return int(m.group("gen")) if m else 0


def class_of(family: str) -> str:
    m = _FAMILY_RE.match(family)
    return m.group("cls") if m else family


def network_gbps(label: str | None) -> float:
    """Peak bandwidth class of a catalogue ``network_performance`` label, in Gbit/s."""
    if not label:
        return 0.0
    text = label.lower()
    m = re.search(r"([\d.]+)\s*gigabit", text)
    if m:
        return float(m.group(1))
    for name, value in (("very low", 0.05), ("low to moderate", 0.3), ("low", 0.1), ("moderate", 0.5)):
        if name in text:
            return value
    return 1.0 if "high" in text else 0.0


def burstable_baseline_pct(instance_type: str) -> float | None:
    """Baseline CPU per vCPU (%) of a t3/t3a/t4g size; None for any other type."""
    if family_of(instance_type) not in BURSTABLE_FAMILIES:
        return None
    return BURSTABLE_BASELINE_PCT.get(size_of(instance_type))


@dataclass(frozen=True)
class InstanceType:
    """One catalogue row: a type offered in a region, with its prices."""

    instance_type: str
    region: str
    vcpu: int
    memory_gib: float
    architecture: str
    network_performance: str
    ondemand_usd_per_hour: float
    spot_usd_per_hour: float | None = None
    spot_interruption_band: str | None = None
    is_estimate: bool = False
    spot_is_estimate: bool = True

    # Parsed once per catalogue entry (cached in the instance, not a field): the candidate scan and
    # ``fits`` read them for every instance of the fleet.
    @cached_property
    def family(self) -> str:
        return family_of(self.instance_type)

    @property
    def monthly_usd(self) -> float:
        return self.ondemand_usd_per_hour * HOURS_PER_MONTH

    @cached_property
    def burstable_baseline_pct(self) -> float | None:
        return burstable_baseline_pct(self.instance_type)

    @cached_property
    def network_gbps(self) -> float:
        return network_gbps(self.network_performance)


class Catalog:
    """The price catalogue of one or more regions, indexed for candidate search.

    Built from the ``price_catalog`` lake table (or ``build_price_catalog()``); the errors name the
    type and region that are missing and how to refresh the catalogue.
    """

    def __init__(self, table: pa.Table | Iterable[dict[str, Any]]) -> None:
        rows = table.to_pylist() if isinstance(table, pa.Table) else list(table)
        # Every row as given (GPU and unpriced ones too), for optimisers that need the catalogue's other
        # columns (family, generation, burstable: the node-pool packing).
        self.rows: tuple[dict[str, Any], ...] = tuple(rows)
        self._types: dict[tuple[str, str], InstanceType] = {}
        for r in rows:
            if r.get("ondemand_usd_per_hour") is None or (r.get("gpu_count") or 0) > 0:
                continue
            for column in ("ondemand_usd_per_hour", "spot_usd_per_hour"):
                price = r.get(column)
                if price is not None and not (math.isfinite(price) and 0 <= price <= MAX_PRICE_USD_PER_HOUR):
                    raise SizingError(
                        f"price catalogue row {r.get('region')} {r.get('instance_type')}: {column} = {price!r} is "
                        f"not a finite price from 0 to {MAX_PRICE_USD_PER_HOUR:g} USD an hour; rebuild the "
                        "catalogue by materialising the price_catalog asset"
                    )
            self._types[(r["region"], r["instance_type"])] = InstanceType(
                instance_type=r["instance_type"],
                region=r["region"],
                vcpu=int(r["vcpu"]),
                memory_gib=float(r["memory_gib"]),
                architecture=r.get("architecture") or "x86_64",
                network_performance=r.get("network_performance") or "",
                ondemand_usd_per_hour=float(r["ondemand_usd_per_hour"]),
                spot_usd_per_hour=r.get("spot_usd_per_hour"),
                spot_interruption_band=r.get("spot_interruption_band"),
                is_estimate=bool(r.get("is_estimate")),
                spot_is_estimate=bool(r.get("spot_is_estimate", True)),
            )
        self._by_region: dict[str, list[InstanceType]] = {}
        self._candidates: dict[tuple[str, str, str, SizingPolicy], tuple[InstanceType, ...]] = {}
        for (region, _), t in sorted(self._types.items(), key=lambda kv: kv[1].ondemand_usd_per_hour):
            self._by_region.setdefault(region, []).append(t)

    def get(self, region: str, instance_type: str) -> InstanceType:
        try:
            return self._types[(region, instance_type)]
        except KeyError:
            raise SizingError(
                f"unknown instance type '{instance_type}' in region '{region}' (not in the price catalogue; "
                "check the type name, or refresh the catalogue by materialising the price_catalog asset)"
            ) from None

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self._types

    def region(self, region: str) -> list[InstanceType]:
        """Every type offered in ``region``, cheapest first."""
        if region not in self._by_region:
            raise SizingError(
                f"region '{region}' has no prices in the catalogue (regions: {', '.join(sorted(self._by_region))})"
            )
        return self._by_region[region]


def candidate_types(catalog: Catalog, current: InstanceType, policy: SizingPolicy) -> list[InstanceType]:
    """Types ``current`` may move to in its region under ``policy``, cheapest first (current included).

    Scanned once per (type, policy) and catalogue: a fleet has few distinct types."""
    key = (current.region, current.instance_type, current.architecture, policy)
    if key not in catalog._candidates:
        catalog._candidates[key] = tuple(scan_candidate_types(catalog, current, policy))
    return list(catalog._candidates[key])


def scan_candidate_types(catalog: Catalog, current: InstanceType, policy: SizingPolicy) -> list[InstanceType]:
    """:func:`candidate_types` without the memo: one pass over the region's catalogue."""
    pattern = re.compile(policy.family_pattern)
    out = []
    for t in catalog.region(current.region):
        if t.instance_type == current.instance_type:
            out.append(t)
            continue
        if "metal" in t.instance_type:
            continue
        same_family = t.family == current.family
        if t.family in BURSTABLE_FAMILIES:
            if not policy.allow_burstable or t.burstable_baseline_pct is None:
                continue
        elif not same_family and not pattern.match(t.family):
            continue
        if not same_family and not policy.allow_other_families and t.family not in BURSTABLE_FAMILIES:
            continue
        if t.architecture != current.architecture and not policy.allow_graviton:
            continue
        out.append(t)
    return out


def migration_effort(current: InstanceType, candidate: InstanceType) -> str:
    """Compute Optimizer's scale: VeryLow (same family), Low (other x86 family or burstable),
    Medium (another architecture: rebuild and test images for Graviton)."""
    if candidate.architecture != current.architecture:
        return "Medium"
    if candidate.family == current.family:
        return "VeryLow"
    return "Low"


# ---------------------------------------------------------------------------------------------- fit


def simulate_credits(
    demand_vcpu: np.ndarray, instance: InstanceType, start_balance: float | np.ndarray = 0.0
) -> tuple[np.ndarray, np.ndarray | float]:
    """Replay 5-minute *average* CPU demand (vCPU) on a burstable type in standard mode.

    Returns the capacity (vCPU) available in each interval and the closing credit balance. The AWS
    rule (EC2 User Guide, "Key concepts and definitions for burstable performance instances"): one
    credit is one vCPU at 100 % for one minute; the instance earns ``baseline x vCPU x 60`` credits an
    hour and spends one credit per vCPU-minute of *all* its use, so use at the baseline nets zero; the
    balance keeps at most 24 hours of earnings. In an interval the instance can use its baseline plus
    what the balance pays for, at most all its vCPUs; with no credits it is held at the baseline.

    The balance starts at ``start_balance`` (0 by default): T3, T3a and T4g get no launch credits, so a
    freshly resized instance starts empty. ``demand_vcpu`` may have leading dimensions (one series per
    row, replayed at once); time is the last axis.

    Vectorised: each interval maps the balance ``b`` to ``clip(b + 5 x (baseline - min(use, vCPU)), 0,
    cap)`` (throttled use nets to the same clip at 0), and maps of that form compose into one of the
    same form, so the balances are a prefix scan of those maps (log2(n) NumPy passes, no Python loop).
    """
    demand = np.nan_to_num(np.asarray(demand_vcpu, dtype=float))
    vcpu = float(instance.vcpu)
    baseline = (instance.burstable_baseline_pct or 100.0) / 100 * vcpu
    cap = baseline * 60 * 24
    shift = 5.0 * (baseline - np.minimum(np.maximum(demand, 0.0), vcpu))
    # Each interval's map is b -> clip(b + shift, low, high); compose them by doubling (Hillis-Steele).
    low = np.zeros_like(shift)
    high = np.full_like(shift, cap)
    n = shift.shape[-1] if shift.ndim else 0
    step = 1
    while step < n:
        # later ∘ earlier: (s1, l1, h1) then (s2, l2, h2) = (s1 + s2, clip(l1 + s2, l2, h2), clip(h1 + s2, l2, h2))
        s1, l1, h1 = shift[..., :-step], low[..., :-step], high[..., :-step]
        s2, l2, h2 = shift[..., step:], low[..., step:], high[..., step:]
        new_low = np.minimum(np.maximum(l1 + s2, l2), h2)  # clip(l1 + s2, l2, h2); l2 <= h2
        new_high = np.minimum(np.maximum(h1 + s2, l2), h2)
        shift = np.concatenate([shift[..., :step], s1 + s2], axis=-1)
        low = np.concatenate([low[..., :step], new_low], axis=-1)
        high = np.concatenate([high[..., :step], new_high], axis=-1)
        step *= 2
    start = np.clip(np.asarray(start_balance, dtype=float), 0.0, cap)
    after = np.clip(np.expand_dims(start, -1) + shift, low, high)  # balance at the end of each interval
    before = np.concatenate([np.broadcast_to(np.expand_dims(start, -1), (*after.shape[:-1], 1)), after[..., :-1]], -1)
    capacity = np.minimum(vcpu, baseline + before / 5.0)
    closing = after[..., -1] if n else np.broadcast_to(start, demand.shape[:-1]).copy()
    return capacity, (float(closing) if np.ndim(closing) == 0 else closing)


def burstable_fits(profile: UtilizationProfile, instance: InstanceType, demand: Demand) -> tuple[bool, str]:
    """Does the CPU profile fit this burstable type in standard credit mode, from zero launch credits?

    Two tests, both on the training window: the mean CPU with the headroom stays under the baseline
    (the balance does not drain over the window), and the strategy's own rule holds against the
    capacity the credits allow interval by interval: the percentile ``demand.cpu_percentile`` of the
    5-minute maxima divided by that capacity, times the headroom, is at most 1 (for a fixed type the
    same rule reads ``percentile x headroom <= vCPU``). The replay needs the ordered series
    (``profile.series``): without it the answer is no.
    """
    baseline_pct = instance.burstable_baseline_pct
    if baseline_pct is None:
        return False, "not a burstable type"
    baseline_vcpu = baseline_pct / 100 * instance.vcpu
    mean = profile.cpu_mean_vcpu
    factor = 1 + demand.cpu_headroom_pct / 100
    if mean * factor > baseline_vcpu:
        return False, (
            f"mean CPU {mean:.2f} vCPU with headroom exceeds the {baseline_pct:g} % baseline "
            f"({baseline_vcpu:.2f} vCPU) of {instance.instance_type}"
        )
    if profile.series is None:
        return False, f"no 5-minute series to replay the CPU credits of {instance.instance_type}"
    need = credit_limited_need(profile.series, instance, demand.cpu_percentile, demand.recent_share) * factor
    if demand.floor_at_max:
        need = max(need, credit_limited_need(profile.series, instance, 100.0))
    if demand.peak_share:
        need = max(need, demand.peak_share * credit_limited_need(profile.series, instance, 100.0))
    if need > 1.0 + 1e-9:
        return False, (
            f"from zero launch credits, P{demand.cpu_percentile:g} of the 5-minute maxima with headroom is "
            f"{100 * need:.0f} % of what the CPU credits of {instance.instance_type} allow"
        )
    return True, (
        "standard credit mode from zero launch credits: mean CPU with headroom is "
        f"{100 * mean * factor / baseline_vcpu:.0f} % "
        f"of the {baseline_pct:g} % baseline and P{demand.cpu_percentile:g} of the 5-minute maxima with headroom "
        f"{100 * need:.0f} % of the capacity the credits allow"
    )


def zero_credit_fit(demand: Demand, instance: InstanceType) -> bool:
    """Does the burstable type's baseline alone carry the demand (its percentile with headroom), as an
    instance that starts with no credits at any moment (a Spot replacement) needs?"""
    if instance.burstable_baseline_pct is None:
        return True
    return demand.vcpu <= instance.burstable_baseline_pct / 100 * instance.vcpu + 1e-9


def credit_limited_need(
    series: CpuSeries, instance: InstanceType, percentile: float, recent_share: float = 1.0
) -> float:
    """Percentile ``percentile`` of 5-minute maxima / credit-limited capacity on a burstable type
    replayed from zero credits (credits spent by the 5-minute averages), over the newest
    ``recent_share`` of the series (the replay itself always runs from the start)."""
    if series.peak_vcpu.size == 0:
        return 0.0
    return float(np.percentile(recent_samples(series.credit_ratio(instance), recent_share), percentile))


def _risk_from_quantiles(quantiles: dict[float, float], capacity: float) -> float:
    """The 0-4 score of a fixed capacity, read from the window's percentiles: over capacity in at most
    0.5 % of intervals is P99.5 <= capacity, at most 5 % is P95 <= capacity."""
    if quantiles[100.0] <= 0.8 * capacity:
        return 0.0
    if quantiles[100.0] <= capacity:
        return 1.0
    return 2.0 if quantiles[99.5] <= capacity else 3.0 if quantiles[95.0] <= capacity else 4.0


def performance_risk(profile: UtilizationProfile, instance: InstanceType, demand: Demand) -> float:
    """Compute Optimizer's 0-4 scale (0 very low ... 4 very high), the worst over CPU and memory.

    Per dimension, with the observed 5-minute demand on the candidate: 0 the maximum stays under 80 %
    of capacity; 1 under 100 %; 2 at most 0.5 % of intervals over; 3 at most 5 % over; 4 more. For a
    fixed capacity these are read from the window's percentiles; a burstable type's capacity moves
    with its credits, so its CPU is replayed on the ordered series. Without memory data the memory
    risk is 0 because memory is never reduced.
    """
    if not profile.samples:
        cpu_risk = 0.0
    elif instance.burstable_baseline_pct is not None and profile.series is not None:
        ratio = profile.series.credit_ratio(instance)  # zero launch credits
        if ratio.size == 0 or ratio.max() <= 0.8:
            cpu_risk = 0.0
        elif ratio.max() <= 1.0:
            cpu_risk = 1.0
        else:
            over = float((ratio > 1.0).mean())
            cpu_risk = 2.0 if over <= 0.005 else 3.0 if over <= 0.05 else 4.0
    else:
        cpu_risk = _risk_from_quantiles(profile.cpu_peak_quantiles_vcpu, float(instance.vcpu))
    risks = [cpu_risk]
    if profile.mem_quantiles_gib is not None:
        risks.append(_risk_from_quantiles(profile.mem_quantiles_gib, instance.memory_gib))
    return max(risks)


@dataclass(frozen=True)
class SizingOption:
    """One candidate type for an instance, with everything a person needs to choose it."""

    instance_type: str
    vcpu: int
    memory_gib: float
    architecture: str
    monthly_cost_usd: float
    monthly_savings_usd: float
    savings_pct: float
    performance_risk: float
    migration_effort: str
    projected_cpu_pct: float
    projected_memory_pct: float | None
    is_current: bool
    is_estimate: bool
    notes: tuple[str, ...] = ()
    rank: int = 0
    cpu_limit: str = "vcpu"  # what projected_cpu_pct is measured against: "vcpu" or "burstable_baseline"
    credit_mode: str | None = None  # "standard" for a burstable type (the mode its fit assumes), else None

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class ResizeRecommendation:
    """The right-sizing verdict for one instance."""

    instance_type: str
    region: str
    finding: str
    options: tuple[SizingOption, ...]  # ranked by monthly cost, current type included
    current: SizingOption
    demand: Demand
    confidence: float
    rationale: str
    policy: SizingPolicy
    memory_kept: bool = False  # memory never below the current type's (keep_memory)
    confidence_detail: Confidence | None = None
    demand_seen_over_current: bool = True  # observed demand (not headroom alone) exceeds the current type

    @property
    def best(self) -> SizingOption:
        """The cheapest option the policy lets be best: of the current architecture unless
        ``architecture="any"``, with a performance risk at most ``max_best_risk`` (an up-size of an
        under-provisioned instance also when it is less risky than the current type); else the current type."""
        if self.finding == "under-provisioned" and not self.demand_seen_over_current:
            return self.current  # the up-size is listed; headroom alone does not make it the best option
        return next((o for o in self.options if self.may_be_best(o)), self.current)

    def may_be_best(self, o: SizingOption) -> bool:
        if o.is_current:
            return True
        if self.policy.architecture == "current" and o.architecture != self.current.architecture:
            return False
        if o.performance_risk <= self.policy.max_best_risk:
            return True
        upsize = o.monthly_cost_usd > self.current.monthly_cost_usd
        return upsize and o.performance_risk < self.current.performance_risk

    @property
    def reason(self) -> str:
        """The finding and why, in one short sentence a FinOps engineer can check."""
        d, best, c = self.demand, self.best, self.current
        label = _FINDING_LABEL[self.finding].lower()
        if self.finding == "gathering-data":
            return (self.confidence_detail.words() if self.confidence_detail else "gathering data") + ": no change yet"
        if self.finding == "idle":
            return "idle: CPU at most 1 % over the window"
        limit = "of its baseline" if best.cpu_limit != "vcpu" else "of its vCPU"
        need = f"needs {d.vcpu:.2f} vCPU (P{self.policy.cpu_percentile:g} + {d.cpu_headroom_pct:.0f} % headroom)"
        if d.memory_gib is not None:
            need += f" and {d.min_memory_gib:.1f} GiB"
        if best.is_current:
            return f"{label}: {need}; {c.instance_type} has {c.vcpu} vCPU and {c.memory_gib:g} GiB"
        return (
            f"{label}: {need}; {best.instance_type} projects {best.projected_cpu_pct:.0f} % CPU {limit}, "
            f"risk {best.performance_risk:g}"
        )

    @property
    def other_architecture(self) -> SizingOption | None:
        """The cheapest fit of another architecture (Graviton from x86), listed beside the best."""
        return next((o for o in self.options if o.architecture != self.current.architecture), None)


def fits(
    profile: UtilizationProfile, instance: InstanceType, demand: Demand, current: InstanceType
) -> tuple[bool, str]:
    """Does ``instance`` meet ``demand``? Returns (fits, reason when it does not / note when it does)."""
    if instance.vcpu < demand.vcpu:
        return False, f"{instance.vcpu} vCPU < {demand.vcpu:.2f} needed"
    if instance.memory_gib < demand.min_memory_gib - 1e-9:
        what = "peak memory with headroom" if demand.memory_gib is not None else "current memory (no memory data)"
        return False, f"{instance.memory_gib:g} GiB < {demand.min_memory_gib:.2f} GiB ({what})"
    if demand.net_bps is not None:
        if instance.network_gbps * 1e9 < demand.net_bps:
            return False, f"network {instance.network_performance} below the peak {demand.net_bps / 1e9:.2f} Gbit/s"
    elif instance.network_gbps < min(current.network_gbps, 5.0):
        return False, f"network {instance.network_performance} below the current class (no network data)"
    if instance.burstable_baseline_pct is not None:
        ok, why = burstable_fits(profile, instance, demand)
        if not ok:
            return False, why
        return True, why
    return True, ""


def recommend_resize(
    profile: UtilizationProfile,
    instance_type: str,
    region: str,
    catalog: Catalog,
    policy: SizingPolicy | None = None,
    keep_memory: bool = False,
) -> ResizeRecommendation:
    """Rank every candidate type that fits the demand of ``profile`` by monthly on-demand cost.

    The current type is always one of the options (``is_current``); ``best`` is the cheapest the
    policy lets be best (architecture, risk). When the current type does not fit, the finding is
    under-provisioned and the options are up-sizes (negative savings); when nothing fits at all, the
    current type is the only option and the rationale says so. ``keep_memory`` never lets memory go
    below the current type's (a production-critical instance without memory data over the window).
    """
    policy = policy or RISK_SETTINGS[DEFAULT_RISK_SETTING]
    current = catalog.get(region, instance_type)
    demand = required_capacity(profile, policy)
    # Memory is measured in GiB of the current instance; the floor without data is its memory.
    if demand.memory_gib is None or keep_memory:
        demand = replace(demand, memory_floor_gib=current.memory_gib)
        if demand.memory_gib is not None and demand.memory_gib < current.memory_gib:
            demand = replace(demand, memory_gib=current.memory_gib)
    current_fits, current_why = fits(profile, current, demand, current)
    chosen: list[tuple[InstanceType, str]] = []
    for cand in candidate_types(catalog, current, policy):
        ok, note = fits(profile, cand, demand, current)
        if ok:
            chosen.append((cand, note))
    chosen.sort(key=lambda c: (c[0].ondemand_usd_per_hour, c[0].instance_type != current.instance_type))

    def option(t: InstanceType, note: str, rank: int) -> SizingOption:
        notes = [note] if note else []
        if t.is_estimate:
            notes.append("on-demand price derived from another region (estimate)")
        saving = current.monthly_usd - t.monthly_usd
        return SizingOption(
            instance_type=t.instance_type,
            vcpu=t.vcpu,
            memory_gib=t.memory_gib,
            architecture=t.architecture,
            monthly_cost_usd=round(t.monthly_usd, 4),
            monthly_savings_usd=round(saving, 4),
            savings_pct=round(100 * saving / current.monthly_usd, 3) if current.monthly_usd else 0.0,
            performance_risk=performance_risk(profile, t, demand),
            migration_effort="VeryLow" if t.instance_type == current.instance_type else migration_effort(current, t),
            projected_cpu_pct=_projected_cpu_pct(profile, t, demand),
            projected_memory_pct=(round(100 * profile.mem_max_gib / t.memory_gib, 2) if profile.has_memory else None),
            is_current=t.instance_type == current.instance_type,
            is_estimate=t.is_estimate,
            notes=tuple(notes),
            rank=rank,
            cpu_limit="burstable_baseline" if t.burstable_baseline_pct is not None else "vcpu",
            credit_mode="standard" if t.burstable_baseline_pct is not None else None,
        )

    kept = chosen[: policy.max_options]
    # Always show the cheapest fit of the same architecture, of the other one and of the same family.
    for wanted in (
        lambda t: t.architecture == current.architecture,
        lambda t: t.architecture != current.architecture,
        lambda t: t.family == current.family,
    ):
        extra = next((c for c in chosen if wanted(c[0])), None)
        if extra is not None and extra not in kept:
            kept.append(extra)
    # ... and the cheapest one the policy lets be best (architecture, risk), however far down it is.
    current_risk = performance_risk(profile, current, demand)
    for c in chosen:
        t = c[0]
        if policy.architecture == "current" and t.architecture != current.architecture:
            continue
        if t.instance_type == current.instance_type:
            break
        risk = performance_risk(profile, t, demand)
        upsize = t.ondemand_usd_per_hour > current.ondemand_usd_per_hour
        if risk <= policy.max_best_risk or (upsize and risk < current_risk):
            if c not in kept:
                kept.append(c)
            break
    kept.sort(key=lambda c: (c[0].ondemand_usd_per_hour, c[0].instance_type != current.instance_type))
    options = [option(t, note, i + 1) for i, (t, note) in enumerate(kept)]
    current_option = next((o for o in options if o.is_current), None)
    if current_option is None:
        current_option = option(current, current_why, len(options) + 1)
    trust = confidence_of(profile, policy.min_hours_of_data)
    confidence = trust.value
    if trust.gathering and not profile.is_idle:
        current_option = next((o for o in options if o.is_current), None) or option(current, current_why, 1)
        current_option = replace(current_option, rank=1)
        rec = ResizeRecommendation(
            instance_type=instance_type,
            region=region,
            finding="gathering-data",
            options=(current_option,),
            current=current_option,
            demand=demand,
            confidence=confidence,
            rationale="",
            policy=policy,
            memory_kept=keep_memory,
            confidence_detail=trust,
        )
        caveats = []
        if profile.out_of_range_samples:
            caveats.append(
                f"{profile.out_of_range_samples} of {profile.samples} samples are outside 0-100 % (CPU up to "
                f"{profile.max_sample_pct:.0f} %), which a percentage metric cannot be."
            )
        if profile.nonfinite_samples:
            caveats.append(f"{profile.nonfinite_samples} sample(s) with a NaN or infinite value were excluded.")
        return replace(
            rec,
            rationale=" ".join(
                [
                    f"Gathering data: {current.instance_type} is kept as it is; {trust.words()}.",
                    f"No change is recommended under {policy.min_hours_of_data:g} hours of data in the window.",
                    *caveats,
                ]
            ),
        )
    rec = ResizeRecommendation(
        instance_type=instance_type,
        region=region,
        finding="optimized",
        options=tuple(options),
        current=current_option,
        demand=demand,
        confidence=confidence,
        rationale="",
        policy=policy,
        memory_kept=keep_memory,
        confidence_detail=trust,
        demand_seen_over_current=policy.upsize_on_headroom or demand_seen_over(profile, current),
    )
    best = rec.best
    if profile.is_idle:
        finding = "idle"
    elif not current_fits:
        finding = "under-provisioned"
    elif not best.is_current and best.monthly_cost_usd < current_option.monthly_cost_usd:
        finding = "over-provisioned"
    else:
        finding = "optimized"
    rec = replace(rec, finding=finding)
    return replace(rec, rationale=resize_rationale(profile, rec, current))


def demand_seen_over(profile: UtilizationProfile, current: InstanceType) -> bool:
    """Has the window *shown* demand above the current type (saturated CPU, a 5-minute maximum over its
    vCPU, or a memory peak over its memory), rather than only the headroom on top of what fits?"""
    if profile.is_saturated or profile.cpu_max_vcpu > current.vcpu * 1.0001:
        return True
    return profile.has_memory and profile.mem_max_gib > current.memory_gib * 1.0001


def _projected_cpu_pct(profile: UtilizationProfile, t: InstanceType, demand: Demand) -> float:
    """CPU against what limits it: a fixed type's vCPU (the rule's percentile of the 5-minute maxima),
    a burstable type's baseline (the mean: sustained use is what the credits cannot carry)."""
    if t.burstable_baseline_pct is not None:
        return round(100 * profile.cpu_mean_vcpu / (t.burstable_baseline_pct / 100 * t.vcpu), 2)
    return round(100 * demand.cpu_percentile_vcpu / t.vcpu, 2)


#: Confidence is at most this when any sample is outside 0-100 % (a percentage metric cannot be).
OUT_OF_RANGE_MAX_CONFIDENCE = 0.5


@dataclass(frozen=True)
class Confidence:
    """How far a recommendation can be trusted: coverage x recency x stability, each 0-1.

    - coverage: usable samples / expected samples of the window (out-of-range samples count as missing;
      at most ``OUT_OF_RANGE_MAX_CONFIDENCE`` when there are any);
    - recency: 1 while the newest sample is at most a day older than the end of the partition's day,
      then down to 0 over ``RECENCY_DAYS`` (1 when unknown);
    - stability: 1 - the coefficient of variation of the daily CPU peaks (capped at 0.5), 0.5 with under
      3 days of peaks: an answer resting on peaks that move a lot day to day is less certain.

    ``gathering`` is true under ``MIN_HOURS_OF_DATA`` hours of data: then nothing but "gathering data".
    """

    value: float
    coverage: float
    recency: float
    stability: float
    hours: float
    days: int
    window_days: int
    gathering: bool
    min_hours: float = MIN_HOURS_OF_DATA

    def words(self) -> str:
        if self.gathering:
            return (
                f"gathering data: {self.days} of {self.window_days} days ({self.hours:.0f} of the "
                f"{self.min_hours:g} hours needed)"
            )
        level = "high" if self.value >= 0.8 else "medium" if self.value >= 0.5 else "low"
        return (
            f"{level} confidence {self.value:.2f}: {self.days} of {self.window_days} days of data "
            f"(coverage {self.coverage:.2f}), recency {self.recency:.2f}, stability of the daily peaks "
            f"{self.stability:.2f}"
        )


def confidence_of(profile: UtilizationProfile, min_hours: float = MIN_HOURS_OF_DATA) -> Confidence:
    """The :class:`Confidence` of a recommendation resting on ``profile``."""
    coverage = data_confidence(profile)
    age = profile.last_sample_age_hours
    recency = 1.0 if age is None else min(1.0, max(0.0, 1 - max(age - 24.0, 0.0) / (24 * RECENCY_DAYS)))
    peaks = profile.daily_peaks
    if peaks is None or peaks.days < 3:
        stability = 0.5
    elif peaks.mean_vcpu <= 0:
        stability = 1.0
    else:
        stability = 1 - min(peaks.std_vcpu / peaks.mean_vcpu, 0.5)
    window_days = round(profile.expected_samples / SAMPLES_PER_DAY) if profile.expected_samples else 0
    return Confidence(
        value=round(coverage * recency * stability, 3),
        coverage=round(coverage, 3),
        recency=round(recency, 3),
        stability=round(stability, 3),
        hours=profile.hours_of_data,
        days=profile.days_with_data,
        window_days=window_days,
        gathering=profile.hours_of_data < min_hours,
        min_hours=min_hours,
    )


def data_confidence(profile: UtilizationProfile) -> float:
    """Coverage of the window, counting out-of-range samples as missing, at most 0.5 when there are any."""
    if not profile.expected_samples:
        return 0.0
    usable = max(profile.samples - profile.out_of_range_samples, 0)
    confidence = min(1.0, usable / profile.expected_samples)
    return min(confidence, OUT_OF_RANGE_MAX_CONFIDENCE) if profile.out_of_range_samples else confidence


def resize_rationale(profile: UtilizationProfile, rec: ResizeRecommendation, current: InstanceType) -> str:
    d = rec.demand
    parts = [
        f"{_FINDING_LABEL[rec.finding]}: {current.instance_type} ({current.vcpu} vCPU, {current.memory_gib:g} GiB).",
        f"CPU P{rec.policy.cpu_percentile:g} of 5-minute maxima is {profile.cpu_pct(rec.policy.cpu_percentile):.1f} % "
        f"({d.cpu_percentile_vcpu:.2f} vCPU), max {profile.cpu_max_pct:.1f} %, mean {profile.cpu_mean_pct:.1f} %; "
        f"with {d.cpu_headroom_pct:.0f} % headroom it needs {d.vcpu:.2f} vCPU.",
    ]
    if d.memory_gib is not None:
        parts.append(
            f"Memory peak {profile.mem_max_gib:.2f} GiB plus {rec.policy.memory_headroom_pct:g} % headroom "
            f"needs {profile.mem_max_gib * (1 + rec.policy.memory_headroom_pct / 100):.2f} GiB."
        )
        if rec.memory_kept:
            parts.append(
                f"Production-critical with memory data for {profile.mem_samples} of {profile.expected_samples} "
                f"five-minute samples (not the full window): memory is never cut below the current "
                f"{current.memory_gib:g} GiB."
            )
    else:
        parts.append(
            f"No memory data (CloudWatch agent not reporting): memory is never sized below the current "
            f"{current.memory_gib:g} GiB."
        )
    best = rec.best
    upsizes = [o for o in rec.options if o.monthly_cost_usd > rec.current.monthly_cost_usd]
    same_arch = [o for o in upsizes if o.architecture == current.architecture]
    upsize = (same_arch or upsizes or [None])[0]
    if rec.finding == "under-provisioned" and best.is_current and upsize is not None:
        parts.append(
            f"Under the rule the current type is too small ({_shortfall(rec)}); the up-size {upsize.instance_type} "
            f"(${-upsize.monthly_savings_usd:.2f}/month more) is listed, but every 5-minute maximum (up to "
            f"{profile.cpu_max_pct:.0f} %) and memory peak fits {current.instance_type}: it stays the best option "
            "until demand is seen above it."
        )
    elif rec.finding == "under-provisioned" and best.is_current:
        parts.append(
            f"The current type does not meet this and no candidate does either (the largest is too small "
            f"or too risky): keep {current.instance_type}, under-provisioned; {_shortfall(rec)}."
        )
    elif rec.finding == "under-provisioned":
        parts.append(
            f"The current type does not fit ({_shortfall(rec)}); up-size to {best.instance_type} "
            f"({best.vcpu} vCPU, {best.memory_gib:g} GiB) at ${-best.monthly_savings_usd:.2f}/month more, "
            f"projected CPU {best.projected_cpu_pct:.0f} % of its {'baseline' if best.cpu_limit != 'vcpu' else 'vCPU'}."
        )
    elif not best.is_current:
        parts.append(
            f"Cheapest fit: {best.instance_type} ({best.vcpu} vCPU, {best.memory_gib:g} GiB) saves "
            f"${best.monthly_savings_usd:.2f}/month ({best.savings_pct:.1f} %), performance risk "
            f"{best.performance_risk:g}, migration effort {best.migration_effort}." + _credit_words(best)
        )
    else:
        parts.append("No cheaper type fits.")
    other = rec.other_architecture
    if other is not None and other.architecture != best.architecture:
        parts.append(
            f"Other architecture: {other.instance_type} ({other.architecture}) would cost "
            f"${other.monthly_cost_usd:.2f}/month (saving ${other.monthly_savings_usd:.2f}), migration effort "
            f"{other.migration_effort} (rebuild and test the images)"
            + (
                ", not offered as best: the policy keeps the architecture."
                if rec.policy.architecture == "current"
                else "."
            )
        )
    if profile.out_of_range_samples:
        parts.append(
            f"Caveat: {profile.out_of_range_samples} of {profile.samples} samples are outside 0-100 % (CPU up to "
            f"{profile.max_sample_pct:.0f} %), which a percentage metric cannot be: the data may be wrong, "
            f"confidence is at most {OUT_OF_RANGE_MAX_CONFIDENCE:g}"
            + (
                "; this up-size rests on them: check the metric source before acting on it."
                if rec.finding == "under-provisioned"
                else "."
            )
        )
    if profile.nonfinite_samples:
        parts.append(f"{profile.nonfinite_samples} sample(s) with a NaN or infinite value were excluded.")
    trust = rec.confidence_detail or confidence_of(profile)
    parts.append(f"Confidence: {trust.words()} ({profile.samples} of {profile.expected_samples} five-minute samples).")
    return " ".join(parts)


def _shortfall(rec: ResizeRecommendation) -> str:
    c = rec.current
    need = f"needs {rec.demand.vcpu:.2f} vCPU"
    return f"{need} against its {c.vcpu}, projected CPU {c.projected_cpu_pct:.0f} % of its vCPU" + (
        f", {rec.demand.min_memory_gib:.2f} GiB against {c.memory_gib:g}"
        if rec.demand.min_memory_gib > c.memory_gib + 1e-9
        else ""
    )


def _credit_words(o: SizingOption) -> str:
    if o.credit_mode is None:
        return ""
    return (
        f" Burstable, {o.credit_mode} credit mode: it fits from zero launch credits (a resized T3/T3a/T4g starts "
        f"with none), mean CPU at {o.projected_cpu_pct:.0f} % of its baseline; in unlimited mode the same use "
        "would incur no surplus credit charge."
    )


def cheapest_fit(
    profile: UtilizationProfile,
    demand: Demand,
    current: InstanceType,
    candidates: Sequence[InstanceType],
    policy: SizingPolicy | None = None,
) -> InstanceType | None:
    """The cheapest of ``candidates`` (sorted cheapest first) that meets ``demand``, without pricing
    every other fit (what the backtest calls thousands of times). With ``policy``, the choice is
    ``recommend_resize``'s ``best``: the policy's architecture and risk limit apply too."""
    current_risk: float | None = None
    for cand in candidates:
        if cand.vcpu < demand.vcpu or cand.memory_gib < demand.min_memory_gib - 1e-9:
            continue
        if policy is not None and policy.architecture == "current" and cand.architecture != current.architecture:
            continue
        if not fits(profile, cand, demand, current)[0]:
            continue
        if policy is None or cand.instance_type == current.instance_type:
            return cand
        upsize = cand.ondemand_usd_per_hour > current.ondemand_usd_per_hour
        if upsize and not policy.upsize_on_headroom and not demand_seen_over(profile, current):
            return current  # the best option of recommend_resize: an up-size on headroom alone is listed only
        risk = performance_risk(profile, cand, demand)
        if risk <= policy.max_best_risk:
            return cand
        if cand.ondemand_usd_per_hour > current.ondemand_usd_per_hour:
            if current_risk is None:
                current_risk = performance_risk(profile, current, demand)
            if risk < current_risk:
                return cand
    return None
