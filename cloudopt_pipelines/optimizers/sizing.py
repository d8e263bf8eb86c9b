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
- **Cap.** A CPU metric measured as a share of the instance cannot show demand above it, so the demand
  with headroom is capped at the current vCPU unless the instance is saturated (>= 1 % of 5-minute
  averages at >= 90 %, or any sample above its cores): headroom alone never up-sizes.
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
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pyarrow as pa

from cloudopt_pipelines.storage.schemas import MAX_PRICE_USD_PER_HOUR

HOURS_PER_MONTH = 730.0
SAMPLES_PER_DAY = 288

CPU_PERCENTILES = (90.0, 95.0, 99.5)
CPU_HEADROOMS_PCT = (0.0, 20.0, 30.0)
MEMORY_HEADROOMS_PCT = (10.0, 20.0, 30.0)

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

FINDINGS = ("over-provisioned", "under-provisioned", "optimized", "idle")
MIGRATION_EFFORTS = ("VeryLow", "Low", "Medium", "High")
_FINDING_LABEL = {
    "over-provisioned": "Over-provisioned",
    "under-provisioned": "Under-provisioned",
    "optimized": "Optimized",
    "idle": "Idle",
}


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
    cap_at_current: bool = True
    floor_at_max: bool = False  # never ask for less than the window's maximum (the most cautious setting)

    def __post_init__(self) -> None:
        if self.cpu_percentile not in CPU_PERCENTILES:
            raise SizingError(f"cpu_percentile must be one of {CPU_PERCENTILES}, not {self.cpu_percentile}")
        if self.cpu_headroom_pct not in CPU_HEADROOMS_PCT:
            raise SizingError(f"cpu_headroom_pct must be one of {CPU_HEADROOMS_PCT}, not {self.cpu_headroom_pct}")
        if self.memory_headroom_pct not in MEMORY_HEADROOMS_PCT:
            raise SizingError(
                f"memory_headroom_pct must be one of {MEMORY_HEADROOMS_PCT}, not {self.memory_headroom_pct}"
            )

    @property
    def name(self) -> str:
        name = f"p{self.cpu_percentile:g}+{self.cpu_headroom_pct:g}% mem+{self.memory_headroom_pct:g}%"
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


@dataclass(frozen=True)
class CpuSeries:
    """The ordered 5-minute CPU of one instance (vCPU), only for what needs the order: the burstable
    credit replay spends credits interval by interval, which no percentile can stand in for."""

    mean_vcpu: np.ndarray  # 5-minute averages (the peak where a slot has no average)
    peak_vcpu: np.ndarray  # 5-minute maxima where the source gives them, else the averages


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

    @property
    def min_memory_gib(self) -> float:
        return self.memory_gib if self.memory_gib is not None else (self.memory_floor_gib or 0.0)


def required_capacity(profile: UtilizationProfile, policy: SizingPolicy) -> Demand:
    """The vCPU, memory and network a candidate must provide under ``policy``."""
    p_cpu = profile.cpu_vcpu(policy.cpu_percentile)
    factor = adaptive_factor(profile) if policy.adaptive else 1.0
    headroom = (1 + policy.cpu_headroom_pct / 100) * factor
    vcpu = p_cpu * headroom
    if policy.floor_at_max and profile.samples:
        vcpu = max(vcpu, profile.cpu_max_vcpu)
    if policy.cap_at_current and not profile.is_saturated and profile.capacity_vcpu:
        # Headroom on a metric capped at 100 % cannot prove a need above the current size.
        vcpu = min(vcpu, profile.capacity_vcpu)
    mem = None
    if profile.has_memory:
        mem = profile.mem_max_gib * (1 + policy.memory_headroom_pct / 100)
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

    @property
    def family(self) -> str:
        return family_of(self.instance_type)

    @property
    def monthly_usd(self) -> float:
        return self.ondemand_usd_per_hour * HOURS_PER_MONTH

    @property
    def burstable_baseline_pct(self) -> float | None:
        return burstable_baseline_pct(self.instance_type)

    @property
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
    """Types ``current`` may move to in its region under ``policy``, cheapest first (current included)."""
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
    demand_vcpu: np.ndarray, instance: InstanceType, start_balance: float | None = None
) -> tuple[np.ndarray, float]:
    """Replay 5-minute *average* CPU demand (vCPU) on a burstable type in standard mode.

    Returns the capacity (vCPU) available in each interval and the closing credit balance. One credit is
    one vCPU at 100 % for one minute; a t3/t4g earns ``baseline x vCPU x 60`` credits an hour and keeps
    at most 24 hours of earnings. With credits left the instance bursts to all its vCPUs; with none it
    is held at its baseline. The balance starts full (a long-running instance under its baseline).
    Credits are spent by the average use of each interval; the 5-minute maxima are then compared with
    the capacity of that interval.
    """
    baseline = (instance.burstable_baseline_pct or 100.0) / 100 * instance.vcpu
    earn = baseline * 5  # credits per 5 minutes
    cap = baseline * 60 * 24
    balance = cap if start_balance is None else start_balance
    capacity = np.empty_like(demand_vcpu)
    for i, d in enumerate(demand_vcpu):
        if balance > 0:
            use = min(d, instance.vcpu)
            capacity[i] = instance.vcpu
        else:
            use = min(d, baseline)
            capacity[i] = baseline
        balance = min(cap, balance + earn - max(use - baseline, 0.0) * 5)
        balance = max(balance, 0.0)
    return capacity, balance


def burstable_fits(profile: UtilizationProfile, instance: InstanceType, demand: Demand) -> tuple[bool, str]:
    """Does the CPU profile fit this burstable type's baseline credits?

    The mean is the window's (``utilization_window.cpu_mean_pct``); whether the credits last needs the
    ordered series (``profile.series``): without it the answer is no.
    """
    baseline_pct = instance.burstable_baseline_pct
    if baseline_pct is None:
        return False, "not a burstable type"
    baseline_vcpu = baseline_pct / 100 * instance.vcpu
    mean = profile.cpu_mean_vcpu
    if mean * (1 + demand.cpu_headroom_pct / 100) > baseline_vcpu:
        return False, (
            f"mean CPU {mean:.2f} vCPU with headroom exceeds the {baseline_pct:g} % baseline "
            f"({baseline_vcpu:.2f} vCPU) of {instance.instance_type}"
        )
    if profile.series is None:
        return False, f"no 5-minute series to replay the CPU credits of {instance.instance_type}"
    capacity, _ = simulate_credits(profile.series.mean_vcpu, instance)
    if np.any(capacity < instance.vcpu):
        return False, f"the CPU credits of {instance.instance_type} run out in the window"
    return True, f"mean CPU stays under the {baseline_pct:g} % baseline and credits never run out"


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
        cpu_capacity, _ = simulate_credits(profile.series.mean_vcpu, instance)
        ratio = profile.series.peak_vcpu / cpu_capacity
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

    @property
    def best(self) -> SizingOption:
        return self.options[0] if self.options else self.current


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
) -> ResizeRecommendation:
    """Rank every candidate type that fits the demand of ``profile`` by monthly on-demand cost.

    The current type is always one of the options (``is_current``); the first option is the cheapest
    that fits. When the current type does not fit, the finding is under-provisioned and the options
    are up-sizes (negative savings).
    """
    policy = policy or RISK_SETTINGS[DEFAULT_RISK_SETTING]
    current = catalog.get(region, instance_type)
    demand = required_capacity(profile, policy)
    # Memory is measured in GiB of the current instance; the floor without data is its memory.
    if demand.memory_gib is None:
        demand = replace(demand, memory_floor_gib=current.memory_gib)
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
            projected_cpu_pct=round(100 * demand.cpu_percentile_vcpu / t.vcpu, 2),
            projected_memory_pct=(round(100 * profile.mem_max_gib / t.memory_gib, 2) if profile.has_memory else None),
            is_current=t.instance_type == current.instance_type,
            is_estimate=t.is_estimate,
            notes=tuple(notes),
            rank=rank,
        )

    kept = chosen[: policy.max_options]
    # Always show the cheapest fit of the same architecture and of the same family, when they exist.
    for wanted in (
        lambda t: t.architecture == current.architecture,
        lambda t: t.family == current.family,
    ):
        extra = next((c for c in chosen if wanted(c[0])), None)
        if extra is not None and extra not in kept:
            kept.append(extra)
    options = [option(t, note, i + 1) for i, (t, note) in enumerate(kept)]
    current_option = next((o for o in options if o.is_current), None)
    if current_option is None:
        current_option = option(current, current_why, len(options) + 1)
    if profile.is_idle:
        finding = "idle"
    elif not current_fits:
        finding = "under-provisioned"
    elif options and not options[0].is_current and options[0].monthly_cost_usd < current_option.monthly_cost_usd:
        finding = "over-provisioned"
    else:
        finding = "optimized"
    confidence = round(data_confidence(profile), 3)
    rec = ResizeRecommendation(
        instance_type=instance_type,
        region=region,
        finding=finding,
        options=tuple(options),
        current=current_option,
        demand=demand,
        confidence=confidence,
        rationale="",
        policy=policy,
    )
    return replace(rec, rationale=resize_rationale(profile, rec, current))


#: Confidence is at most this when any sample is outside 0-100 % (a percentage metric cannot be).
OUT_OF_RANGE_MAX_CONFIDENCE = 0.5


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
            f"needs {d.memory_gib:.2f} GiB."
        )
    else:
        parts.append(
            f"No memory data (CloudWatch agent not reporting): memory is never sized below the current "
            f"{current.memory_gib:g} GiB."
        )
    best = rec.best
    if rec.finding == "under-provisioned":
        parts.append(
            f"The current type does not fit; {best.instance_type} does, at ${-best.monthly_savings_usd:.2f}/month more."
        )
    elif not best.is_current:
        parts.append(
            f"Cheapest fit: {best.instance_type} ({best.vcpu} vCPU, {best.memory_gib:g} GiB) saves "
            f"${best.monthly_savings_usd:.2f}/month ({best.savings_pct:.1f} %), performance risk "
            f"{best.performance_risk:g}, migration effort {best.migration_effort}."
        )
    else:
        parts.append("No cheaper type fits.")
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
    parts.append(
        f"Confidence {rec.confidence:.2f}: {profile.samples} of {profile.expected_samples} five-minute samples "
        f"over {profile.days_with_data} day(s)."
    )
    return " ".join(parts)


def cheapest_fit(
    profile: UtilizationProfile, demand: Demand, current: InstanceType, candidates: Sequence[InstanceType]
) -> InstanceType | None:
    """The cheapest of ``candidates`` (sorted cheapest first) that meets ``demand``: ``recommend_resize``'s
    first option, without pricing every other fit (what the backtest calls thousands of times)."""
    for cand in candidates:
        if cand.vcpu < demand.vcpu or cand.memory_gib < demand.min_memory_gib - 1e-9:
            continue
        if fits(profile, cand, demand, current)[0]:
            return cand
    return None
