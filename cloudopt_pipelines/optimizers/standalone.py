"""The standalone EC2 optimiser: every recommendation for one instance, and the ``recommendations`` rows.

Pure logic (numpy, pyarrow), never Dagster: the ``recommendations`` asset reads the feature tables
named in :data:`STANDALONE_FEATURE_INPUTS` from the lake and calls :func:`recommend_account`; tests
and the backtest call the pieces directly.

The statistics are the features stage's (``dbt_like_sql/``): percentiles, maxima, means, saturation,
daily-peak spread and network peak from ``utilization_window``, the off-hours profile from
``activity_profile``. Only the burstable credit replay reads raw ``stg_utilization_5m`` rows: it spends
credits interval by interval, in order (docs/features.md, "Statistics that stay in Python").

Per standalone instance (``deployment_type == 'standalone'``; group and cluster members never) the
options are, each one row of the table with its own cost and risk:

1. ``keep`` the current type on demand (always present);
2. ``resize`` to each cheaper (or, when under-provisioned, larger) type that fits (``sizing``);
3. ``schedule`` the right-sized type off hours, non-production only (``schedules``);
4. ``spot`` for stateless / fault-tolerant, non-critical workloads (``standalone_actions``);
5. ``stop`` / ``terminate`` when idle over the window;
6. ``reserve`` / ``savings_plan`` on the right-sized type when it stays always-on (``commitments``,
   applied last, to what is left after the rest).

Account-level rows: one ``commitment`` row per (region, family) of steady usage with its quantity, and
the orphaned EBS volumes and Elastic IPs. Rows are ranked per resource by monthly cost (``rank`` 1 is
the cheapest); ``is_best`` marks the cheapest option whose performance risk is at most
``StandaloneConfig.max_best_risk`` (default ``DEFAULT_MAX_BEST_RISK`` = 1) and, unless
``StandaloneConfig.architecture`` is ``"any"``, of the current CPU architecture (``keep`` for
instances tagged ``cloudopt:protect``). The memory of a production-critical instance (tag
``criticality``) is never cut without memory data over the full window.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import date
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cloudopt_pipelines.optimizers.commitments import (
    CommitmentQuote,
    CommitmentRecommendation,
    ReservedRates,
    SteadyUsage,
    quote,
    recommend_commitments,
)
from cloudopt_pipelines.optimizers.schedules import (
    ENVIRONMENT_TAG_KEYS,
    HourOfWeek,
    ScheduleRecommendation,
    hour_of_week_from_features,
    hour_of_week_profile,
    is_group_member,
    is_production,
    schedule_from_profile,
    timezone_of,
)
from cloudopt_pipelines.optimizers.sizing import (
    DEFAULT_MAX_BEST_RISK,
    DEFAULT_RISK_SETTING,
    HOURS_PER_MONTH,
    RISK_SETTINGS,
    Catalog,
    InstanceType,
    NonFiniteStatistic,
    ResizeRecommendation,
    SizingPolicy,
    UtilizationProfile,
    analyze_utilization,
    candidate_types,
    cheapest_fit,
    cpu_series,
    performance_risk,
    profile_from_features,
    recommend_resize,
    zero_credit_fit,
)
from cloudopt_pipelines.optimizers.standalone_actions import (
    SPOT_WORKLOAD_TAG,
    SPOT_WORKLOAD_VALUES,
    find_orphans,
    interruption_risk,
    is_production_critical,
    recommend_spot,
)
from cloudopt_pipelines.storage.schemas import RECOMMENDATIONS, AttributesError
from cloudopt_pipelines.vocabulary import PROTECT_TAG_KEY, is_protected

PROTECT_TAG = PROTECT_TAG_KEY
#: Yesterday's best option stays best unless today's saves more than this % of the current monthly cost
#: more (or less), or its performance risk differs by HYSTERESIS_RISK or more (one step of the 0-4 scale).
HYSTERESIS_SAVINGS_PCT = 5.0
HYSTERESIS_RISK = 1.0
TS = pa.timestamp("us", tz="UTC")

# The lake tables recommend_account reads, each with the trailing days the asset passes (ending on the
# partition's day; 1 = that day only). utilization_window and activity_profile already cover their own
# window (the SQL models'); the raw rows are for the burstable credit replay only, over the default
# 14-day window of utilization_window.
STANDALONE_FEATURE_INPUTS: dict[str, int] = {
    "utilization_window": 1,
    "activity_profile": 1,
    "stg_utilization_5m": 14,
}
_REQUIRED_FEATURES = ("utilization_window", "activity_profile")
# Columns the recommender reads from each feature table (the newest ones first: a partition written
# before they existed must be re-materialised).
FEATURE_COLUMNS: dict[str, tuple[str, ...]] = {
    "utilization_window": (
        "nonfinite_samples",
        "cpu_saturated_share_pct",
        "cpu_daily_peak_days",
        "cpu_daily_peak_mean_pct",
        "cpu_daily_peak_std_pct",
        "cpu_daily_peak_first_half_pct",
        "cpu_daily_peak_second_half_pct",
        "resource_id",
        "samples",
        "expected_samples",
        "days_with_data",
        "cpu_mean_pct",
        "cpu_p50_pct",
        "cpu_p90_pct",
        "cpu_p95_pct",
        "cpu_p99_pct",
        "cpu_p995_pct",
        "cpu_max_pct",
        "mem_samples",
        "mem_p50_pct",
        "mem_p90_pct",
        "mem_p95_pct",
        "mem_p99_pct",
        "mem_p995_pct",
        "mem_max_pct",
        "net_samples",
        "net_in_bytes",
        "net_out_bytes",
        "net_max_bytes",
        "out_of_range_samples",
    ),
    "activity_profile": ("cpu_p95_pct", "resource_id", "hour_of_week", "samples", "timezone", "tz_source"),
    "stg_utilization_5m": ("resource_id", "ts", "cpu_pct", "cpu_peak_pct"),
}


# Proposed addition to storage/schemas.py (TABLES["recommendations"]); the asset passes it explicitly.
@dataclass(frozen=True)
class StandaloneConfig:
    """Every knob of the standalone optimiser, with the defaults the issue asks for."""

    risk_setting: str = DEFAULT_RISK_SETTING
    policy: SizingPolicy | None = None  # overrides risk_setting
    window_days: int = 14  # expected days of the raw-samples path; utilization_window has its own
    environment_tag_keys: tuple[str, ...] = ENVIRONMENT_TAG_KEYS
    spot_workload_tag: str = SPOT_WORKLOAD_TAG
    spot_workload_values: tuple[str, ...] = SPOT_WORKLOAD_VALUES
    schedule_idle_cpu_pct: float = 5.0
    max_best_risk: float = DEFAULT_MAX_BEST_RISK
    architecture: str = "current"  # "current" (Compute Optimizer's CURRENT preference) or "any"
    hysteresis_savings_pct: float = HYSTERESIS_SAVINGS_PCT
    hysteresis_risk: float = HYSTERESIS_RISK
    commitment_terms: tuple[int, ...] = (1, 3)

    @property
    def sizing_policy(self) -> SizingPolicy:
        if self.policy is not None:
            return self.policy
        if self.risk_setting not in RISK_SETTINGS:
            raise ValueError(f"unknown risk setting {self.risk_setting!r}; choose one of {', '.join(RISK_SETTINGS)}")
        return replace(
            RISK_SETTINGS[self.risk_setting], max_best_risk=self.max_best_risk, architecture=self.architecture
        )


@dataclass(frozen=True)
class Instance:
    """The inventory fields the optimiser needs (one ``resources`` row of kind ec2_instance)."""

    resource_id: str
    instance_type: str
    region: str
    zone: str | None = None
    deployment_type: str = "standalone"
    tags: Mapping[str, str] = field(default_factory=dict)
    state: str | None = "running"
    has_memory_agent: bool | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Instance:
        tags = json.loads(row.get("tags") or "{}")
        attributes = json.loads(row.get("attributes") or "{}")
        return cls(
            resource_id=row["resource_id"],
            instance_type=row["instance_type"],
            region=row["region"],
            zone=row.get("zone"),
            deployment_type=row.get("deployment_type") or "standalone",
            tags=tags,
            state=row.get("state"),
            has_memory_agent=attributes.get("cwagent_memory"),
        )


@dataclass(frozen=True)
class Samples:
    """The 5-minute series of one instance over the window, sorted by time; NaN where missing."""

    ts: np.ndarray  # datetime64[us], UTC
    cpu_pct: np.ndarray
    cpu_peak_pct: np.ndarray
    mem_pct: np.ndarray | None
    net_bytes: np.ndarray | None
    nonfinite_samples: int = 0  # samples the features stage flagged ``nonfinite`` (their NaN / Inf are NULL)

    @classmethod
    def from_table(cls, table: pa.Table, resource_id: str | None = None) -> Samples:
        """From ``stg_utilization_5m`` rows (``cpu_peak_pct``) or ``utilization_5m`` rows (``cpu_max_pct``)."""
        if resource_id is not None:
            table = table.filter(pc.equal(table["resource_id"], resource_id))
        table = table.sort_by("ts")
        ts = table["ts"].to_numpy().astype("datetime64[us]") if table.num_rows else np.array([], "datetime64[us]")

        def col(name: str) -> np.ndarray | None:
            if name not in table.column_names:
                return None
            arr = table[name].to_numpy(zero_copy_only=False).astype(float)
            return None if np.isnan(arr).all() else arr

        cpu = col("cpu_pct")
        cpu = cpu if cpu is not None else np.full(table.num_rows, np.nan)
        peak = col("cpu_peak_pct")
        if peak is None:
            peak = col("cpu_max_pct")
        peak = np.where(np.isnan(peak), cpu, peak) if peak is not None else cpu
        net_in, net_out = col("net_in_bytes"), col("net_out_bytes")
        net = None
        if net_in is not None or net_out is not None:
            net = np.nan_to_num(net_in if net_in is not None else 0.0) + np.nan_to_num(
                net_out if net_out is not None else 0.0
            )
        flagged = 0
        if "nonfinite" in table.column_names and table.num_rows:
            flagged = int(pc.sum(pc.cast(pc.fill_null(table["nonfinite"], False), pa.int64())).as_py() or 0)
        return cls(
            ts=ts, cpu_pct=cpu, cpu_peak_pct=peak, mem_pct=col("mem_pct"), net_bytes=net, nonfinite_samples=flagged
        )


@dataclass(frozen=True)
class InstanceFeatures:
    """The feature rows of one instance: its ``utilization_window`` row (None: no samples in the
    window), its ``activity_profile`` buckets, and its ordered ``stg_utilization_5m`` series (None: not
    read; then no burstable type can be checked)."""

    window: Mapping[str, Any] | None
    activity: HourOfWeek | pa.Table | None = None
    series: Samples | None = None
    as_of: date | None = None  # the partition's day: the recency of the newest sample is measured to its end


@dataclass(frozen=True)
class InstanceOption:
    """One row of ``recommendations`` for an instance, before ranking."""

    option_name: str
    action: str
    proposed_config: dict[str, Any]
    market: str
    vcpu: float
    memory_gib: float
    monthly_cost_usd: float
    one_time_cost_usd: float = 0.0
    performance_risk: float = 0.0
    migration_effort: str = "VeryLow"
    projected_cpu_pct: float | None = None
    projected_memory_pct: float | None = None
    is_estimate: bool = False
    rationale: str = ""
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class InstanceRecommendation:
    """Everything the optimiser says about one instance: the options with their savings."""

    instance: Instance
    profile: UtilizationProfile
    resize: ResizeRecommendation
    schedule: ScheduleRecommendation | None
    options: tuple[InstanceOption, ...]
    current_monthly_usd: float
    protected: bool
    always_on_type: str | None  # the type left always-on for commitments, None if scheduled/spot/idle

    @property
    def finding(self) -> str:
        return self.resize.finding

    @property
    def best(self) -> InstanceOption:
        return self.options[0]

    @property
    def monthly_savings_usd(self) -> float:
        return self.current_monthly_usd - self.best.monthly_cost_usd


def optimize_standalone_instance(
    instance_id: str,
    instance: Instance | Mapping[str, Any],
    samples: InstanceFeatures | Samples | pa.Table,
    catalog: Catalog,
    reserved: ReservedRates | None = None,
    config: StandaloneConfig | None = None,
) -> InstanceRecommendation:
    """Every recommendation for one standalone instance, each with its monthly savings.

    ``instance`` is an :class:`Instance` or a ``resources`` row. ``samples`` is the instance's
    :class:`InstanceFeatures` (what :func:`recommend_account` passes), or, for ad-hoc use, its raw
    5-minute rows over the window (:class:`Samples`, or a table holding them, filtered here by
    ``instance_id``) from which the same statistics are computed with numpy. Raises ``ValueError`` for
    group or cluster members, which are never sized one by one.
    """
    config = config or StandaloneConfig()
    inst = instance if isinstance(instance, Instance) else Instance.from_row(instance)
    if inst.resource_id != instance_id:
        raise ValueError(f"instance row is {inst.resource_id}, not {instance_id}")
    if inst.deployment_type != "standalone":
        raise ValueError(
            f"{instance_id} is a {inst.deployment_type} member: group and cluster members are sized with their "
            "group, never as standalone instances"
        )
    current = catalog.get(inst.region, inst.instance_type)
    if isinstance(samples, InstanceFeatures):
        series = samples.series
        profile = profile_from_features(
            samples.window,
            vcpu=current.vcpu,
            memory_gib=current.memory_gib,
            series=None if series is None else cpu_series(series.cpu_pct, series.cpu_peak_pct, current.vcpu),
        )
        if series is not None and samples.as_of is not None and series.ts.size:
            day_end = np.datetime64(samples.as_of, "us") + np.timedelta64(1, "D")
            age = (day_end - series.ts.max()) / np.timedelta64(1, "h")
            profile = replace(profile, last_sample_age_hours=float(age))

        def hours() -> HourOfWeek:
            if isinstance(samples.activity, HourOfWeek):
                return samples.activity
            rows = samples.activity if samples.activity is not None else []
            return hour_of_week_from_features(rows, inst.tags)
    else:
        series = samples if isinstance(samples, Samples) else Samples.from_table(samples, instance_id)
        profile = analyze_utilization(
            series.cpu_pct,
            cpu_max_pct=series.cpu_peak_pct,
            mem_pct=series.mem_pct,
            net_bytes=series.net_bytes,
            vcpu=current.vcpu,
            memory_gib=current.memory_gib,
            window_days=config.window_days,
        )
        if series.nonfinite_samples:  # stg rows: the features stage already made their NaN / Inf NULL
            profile = replace(profile, nonfinite_samples=profile.nonfinite_samples + series.nonfinite_samples)

        def hours() -> HourOfWeek:
            tz = timezone_of(inst.tags)
            finite_peaks = np.where(np.isfinite(series.cpu_peak_pct), series.cpu_peak_pct, np.nan)
            return HourOfWeek(*hour_of_week_profile(series.ts, finite_peaks, tz), tz)

    policy = config.sizing_policy
    # Memory data over part of the window may miss the peak a production-critical instance needs.
    keep_memory = is_production_critical(inst.tags) and not profile.memory_over_full_window
    resize = recommend_resize(profile, inst.instance_type, inst.region, catalog, policy, keep_memory=keep_memory)
    protected = is_protected(inst.tags)
    current_cost = current.monthly_usd
    options: list[InstanceOption] = []

    def sizing_row(o, action: str) -> InstanceOption:
        t = catalog.get(inst.region, o.instance_type)
        return InstanceOption(
            option_name="keep" if o.is_current else f"resize:{o.instance_type}",
            action=action,
            proposed_config={"instance_type": o.instance_type, "market": "on_demand", **_architecture_change(o)},
            market="on_demand",
            vcpu=float(o.vcpu),
            memory_gib=float(o.memory_gib),
            monthly_cost_usd=o.monthly_cost_usd,
            performance_risk=o.performance_risk,
            migration_effort=o.migration_effort,
            projected_cpu_pct=o.projected_cpu_pct,
            projected_memory_pct=o.projected_memory_pct,
            is_estimate=t.is_estimate,
            rationale=resize.rationale if not o.is_current else _keep_rationale(resize),
            details={
                "notes": list(o.notes),
                "architecture": o.architecture,
                "credit_mode": o.credit_mode,
                "projected_cpu_against": o.cpu_limit,
            },
        )

    def _architecture_change(o) -> dict[str, Any]:
        # An image of one architecture does not boot on the other: the executor refuses it in place.
        if o.architecture == resize.current.architecture:
            return {}
        return {"architecture": o.architecture, "cross_architecture": True}

    options.append(sizing_row(resize.current, "keep"))
    if resize.finding == "gathering-data":  # no change of any kind until there is enough data
        return InstanceRecommendation(
            instance=inst,
            profile=profile,
            resize=resize,
            schedule=None,
            options=tuple(options),
            current_monthly_usd=round(current_cost, 4),
            protected=protected,
            always_on_type=None,
        )
    for o in resize.options:
        if not o.is_current:
            options.append(sizing_row(o, "resize"))

    # The type everything else builds on: the cheapest fitting type (the current one if nothing fits better).
    target = resize.best
    target_type = catalog.get(inst.region, target.instance_type)
    target_cost = target_type.monthly_usd

    if profile.is_idle and inst.state in (None, "running"):
        options.append(
            InstanceOption(
                option_name="stop",
                action="stop",
                proposed_config={"state": "stopped"},
                market="stopped",
                vcpu=0.0,
                memory_gib=0.0,
                monthly_cost_usd=0.0,
                performance_risk=0.0,
                migration_effort="VeryLow",
                rationale=(
                    f"Idle over {profile.days_with_data} day(s): max CPU {profile.cpu_max_pct:.2f} % (<= 1 %)"
                    + (
                        ""
                        if profile.net_bytes_per_day is None
                        else f", network {profile.net_bytes_per_day / 1e6:.1f} MB/day"
                    )
                    + ". Stop it: instance hours stop, attached EBS volumes are still billed."
                ),
            )
        )
        options.append(
            InstanceOption(
                option_name="terminate",
                action="terminate",
                proposed_config={"state": "terminated", "snapshot_first": True},
                market="stopped",
                vcpu=0.0,
                memory_gib=0.0,
                monthly_cost_usd=0.0,
                performance_risk=1.0,
                migration_effort="Low",
                rationale="Idle over the window: snapshot its volumes, then terminate (also ends the EBS charges).",
            )
        )

    schedule = None
    if not is_production(inst.tags, config.environment_tag_keys) and not is_group_member(inst.tags):
        schedule = schedule_from_profile(
            hours(),
            inst.tags,
            target_cost,
            idle_cpu_pct=config.schedule_idle_cpu_pct,
            environment_tag_keys=config.environment_tag_keys,
        )
    if schedule is not None and not profile.is_idle:
        options.append(
            InstanceOption(
                option_name=f"schedule:{target.instance_type}",
                action="schedule" if target.is_current else "resize+schedule",
                proposed_config={
                    "instance_type": target.instance_type,
                    "custodian_offhours": schedule.custodian_tag,
                    "instance_scheduler_period": json.loads(schedule.instance_scheduler_period),
                },
                market="on_demand",
                vcpu=float(target.vcpu),
                memory_gib=float(target.memory_gib),
                monthly_cost_usd=round(target_cost - schedule.monthly_savings_usd, 4),
                performance_risk=target.performance_risk,
                migration_effort=target.migration_effort,
                projected_cpu_pct=target.projected_cpu_pct,
                projected_memory_pct=target.projected_memory_pct,
                is_estimate=target_type.is_estimate,
                rationale=schedule.rationale,
                details={"stopped_hours_per_week": schedule.stopped_hours_per_week, "timezone": schedule.timezone},
            )
        )

    # A Spot replacement can start at any moment, with no credits: a burstable type is offered on Spot
    # only when its baseline alone carries the demand (standard mode); else the cheapest fixed-capacity fit.
    spot_type, spot_note = target_type, ""
    if target_type.burstable_baseline_pct is not None and not zero_credit_fit(resize.demand, target_type):
        fixed = [t for t in candidate_types(catalog, current, policy) if t.burstable_baseline_pct is None]
        spot_type = cheapest_fit(profile, resize.demand, current, fixed, policy) or current
        spot_note = (
            f"{target.instance_type} is burstable and its baseline alone does not carry the demand (a Spot "
            f"replacement starts with no credits): Spot on {spot_type.instance_type} instead. "
        )
    spot = recommend_spot(
        inst.tags,
        spot_type.instance_type,
        spot_type.ondemand_usd_per_hour,
        spot_type.spot_usd_per_hour,
        spot_type.spot_interruption_band,
        workload_tag=config.spot_workload_tag,
        workload_values=config.spot_workload_values,
    )
    if spot is not None and not profile.is_idle:
        burstable_spot = spot_type.burstable_baseline_pct is not None
        spot_risk = performance_risk(profile, spot_type, resize.demand)
        options.append(
            InstanceOption(
                option_name=f"spot:{spot_type.instance_type}",
                action="spot",
                proposed_config={"instance_type": spot_type.instance_type, "market": "spot"}
                | ({"credit_specification": "standard"} if burstable_spot else {}),
                market="spot",
                vcpu=float(spot_type.vcpu),
                memory_gib=float(spot_type.memory_gib),
                monthly_cost_usd=spot.monthly_cost_usd,
                performance_risk=max(spot_risk, interruption_risk(spot.interruption_band)),
                migration_effort="Medium",
                projected_cpu_pct=round(100 * resize.demand.cpu_percentile_vcpu / spot_type.vcpu, 2)
                if not burstable_spot
                else target.projected_cpu_pct,
                projected_memory_pct=target.projected_memory_pct,
                is_estimate=True,
                rationale=spot_note
                + spot.rationale
                + (
                    " Standard credit mode (AWS advises it for Spot T instances): the baseline carries the demand."
                    if burstable_spot
                    else ""
                ),
                details={
                    "interruption_band": spot.interruption_band,
                    "spot_usd_per_hour": spot.spot_usd_per_hour,
                    "credit_mode": "standard" if burstable_spot else None,
                    "interruption_risk": interruption_risk(spot.interruption_band),
                },
            )
        )

    always_on = None
    if not profile.is_idle and schedule is None and spot is None and inst.state in (None, "running"):
        always_on = target.instance_type
        if reserved is not None:
            for q in _best_commitment_quotes(reserved, inst.region, target.instance_type, target_type, config):
                options.append(
                    InstanceOption(
                        option_name=f"{q.rate.name}:{target.instance_type}",
                        action="savings_plan" if "savings_plan" in q.rate.kind else "reserve",
                        proposed_config={
                            "instance_type": target.instance_type,
                            "commitment": q.rate.kind,
                            "term_years": q.rate.term_years,
                            "payment_option": q.rate.payment_option,
                        },
                        market="savings_plan" if "savings_plan" in q.rate.kind else "reserved",
                        vcpu=float(target.vcpu),
                        memory_gib=float(target.memory_gib),
                        monthly_cost_usd=q.recurring_monthly_usd,
                        one_time_cost_usd=q.upfront_usd,
                        performance_risk=target.performance_risk,
                        migration_effort=target.migration_effort,
                        projected_cpu_pct=target.projected_cpu_pct,
                        projected_memory_pct=target.projected_memory_pct,
                        is_estimate=q.rate.is_estimate or target_type.is_estimate,
                        rationale=(
                            f"Always-on after right-sizing and schedules: {q.rate.kind.replace('_', ' ')} "
                            f"{q.rate.term_years} yr {q.rate.payment_option.replace('_', ' ')} "
                            f"on {target.instance_type} "
                            f"({q.rate.discount_pct:.1f} % off on-demand) costs ${q.effective_monthly_usd:.2f}/month "
                            f"effective (upfront ${q.upfront_usd:.2f}), break-even {q.break_even_months:g} month(s). "
                            f"{q.rate.basis}."
                        ),
                        details=q.to_dict(),
                    )
                )

    options.sort(key=lambda o: (_effective_monthly(o), o.option_name != "keep", o.option_name))
    return InstanceRecommendation(
        instance=inst,
        profile=profile,
        resize=resize,
        schedule=schedule,
        options=tuple(options),
        current_monthly_usd=round(current_cost, 4),
        protected=protected,
        always_on_type=always_on,
    )


def _effective_monthly(o: InstanceOption) -> float:
    """Monthly cost with any upfront payment spread over the commitment term."""
    months = 12 * int(o.proposed_config.get("term_years", 0) or 0)
    return o.monthly_cost_usd + (o.one_time_cost_usd / months if months else 0.0)


def _best_commitment_quotes(
    reserved: ReservedRates, region: str, instance_type: str, target_type, config: StandaloneConfig
) -> list[CommitmentQuote]:
    """Per term: the best RI and the best Compute Savings Plan (highest saving), no-upfront first on ties."""
    chosen: list[CommitmentQuote] = []
    quotes = [
        quote(r, target_type.ondemand_usd_per_hour)
        for r in reserved.rates(region, instance_type, config.commitment_terms)
    ]
    for term in config.commitment_terms:
        for kind in ("reserved_instance", "compute_savings_plan"):
            pool = [q for q in quotes if q.rate.term_years == term and q.rate.kind == kind]
            if pool:
                chosen.append(max(pool, key=lambda q: (q.monthly_savings_usd, -q.upfront_usd)))
    return chosen


def _keep_rationale(resize: ResizeRecommendation) -> str:
    return f"Keep {resize.instance_type} on demand. " + resize.rationale


# ---------------------------------------------------------------------------------------------- account


@dataclass(frozen=True)
class AccountRecommendations:
    """The ``recommendations`` rows of one account and day, plus the commitment purchase per family."""

    table: pa.Table
    commitments: tuple[CommitmentRecommendation, ...]
    notes: tuple[str, ...] = ()  # resources left out, and why

    def commitments_table(self) -> list[dict[str, Any]]:
        """One dict per (region, family): what to buy, for a report or the asset metadata."""
        return [
            {
                "region": c.region,
                "family": c.family,
                "quantity": c.quantity,
                "unit_type": c.size_unit_type,
                "normalized_units": c.normalized_units,
                "commitment": c.best.rate.name,
                "monthly_savings_usd": c.best.monthly_savings_usd,
                "upfront_usd": c.best.upfront_usd,
                "break_even_months": c.best.break_even_months,
                "is_estimate": c.best.rate.is_estimate,
            }
            for c in self.commitments
        ]


def recommend_account(
    account_id: str,
    day: date,
    resources: pa.Table,
    features: Mapping[str, pa.Table],
    catalog: Catalog,
    reserved: ReservedRates | None = None,
    config: StandaloneConfig | None = None,
    previous: pa.Table | None = None,
) -> AccountRecommendations:
    """The ``recommendations`` rows of one account on one day (schema ``RECOMMENDATIONS``).

    ``previous`` is the day before's rows of this optimiser (or None): its best options are kept
    unless the saving or the risk moves by more than the hysteresis margins (:func:`best_option_name`).

    ``resources`` is that day's inventory; ``features`` the lake tables of
    :data:`STANDALONE_FEATURE_INPUTS` by name: the day's ``utilization_window`` and
    ``activity_profile`` rows (required) and the ``stg_utilization_5m`` rows of the trailing window
    (optional: only the burstable credit replay reads them; without them no burstable type is
    offered). Instances whose type is not in the catalogue get a ``keep`` row whose rationale says
    so, instead of failing the whole account. Commitments per (region, family) are computed from the
    instances left always-on (they are also an option on each such instance's rows).
    """
    config = config or StandaloneConfig()
    missing = [name for name in _REQUIRED_FEATURES if name not in features]
    if missing:
        raise ValueError(
            f"recommend_account for account {account_id} on {day} needs the feature table(s) {', '.join(missing)}; "
            f"pass every table of STANDALONE_FEATURE_INPUTS ({', '.join(STANDALONE_FEATURE_INPUTS)})"
        )
    for name, table in features.items():
        _check_columns(name, table, account_id, day)
    windows = {r["resource_id"]: r for r in _on_day(features["utilization_window"], day).to_pylist()}
    activity = _hours_by_resource(_on_day(features["activity_profile"], day))
    raw = features.get("stg_utilization_5m")
    by_resource = _split_by_resource(raw) if raw is not None else {}
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    steady: list[SteadyUsage] = []
    previous_best = previous_best_options(previous)
    for res in resources.to_pylist():
        kind = res.get("resource_kind")
        if kind in ("ebs_volume", "elastic_ip"):
            try:
                orphan = find_orphans(res["resource_id"], kind, res.get("attributes"))
            except AttributesError as exc:  # never guess "unattached" from attributes off the schema
                notes.append(f"{res['resource_id']} not analysed: {exc}")
                continue
            if orphan is not None:
                rows.extend(_orphan_rows(account_id, day, res, orphan))
            continue
        if kind != "ec2_instance" or res.get("deployment_type") != "standalone":
            continue
        if res.get("state") not in (None, "running"):
            continue
        inst = Instance.from_row(res)
        rid = inst.resource_id
        inputs = InstanceFeatures(
            windows.get(rid),
            activity.get(rid, HourOfWeek(*_no_hours(), "UTC")),
            by_resource.get(rid, _empty_samples()) if raw is not None else None,
            as_of=day,
        )
        try:
            rec = optimize_standalone_instance(rid, inst, inputs, catalog, reserved, config)
        except NonFiniteStatistic as exc:  # kept as it is, priced, with the reason
            rows.append(_unpriced_row(account_id, day, inst, str(exc), catalog.get(inst.region, inst.instance_type)))
            continue
        except ValueError as exc:  # unknown type or region, a bad zone tag: say so on the row, keep going
            rows.append(_unpriced_row(account_id, day, inst, str(exc)))
            continue
        rows.extend(instance_rows(account_id, day, rec, config, previous_best.get(rid)))
        if rec.always_on_type is not None:
            t = catalog.get(inst.region, rec.always_on_type)
            steady.append(SteadyUsage(inst.resource_id, inst.region, rec.always_on_type, t.ondemand_usd_per_hour))
    commitments = (
        tuple(recommend_commitments(steady, reserved, terms=config.commitment_terms)) if reserved is not None else ()
    )
    table = pa.Table.from_pylist(rows, schema=RECOMMENDATIONS) if rows else RECOMMENDATIONS.empty_table()
    return AccountRecommendations(table=table, commitments=commitments, notes=tuple(notes))


def previous_best_options(previous: pa.Table | None) -> dict[str, str]:
    """resource_id -> option_name of the best rows of a previous day's recommendations. A ``keep`` of a day
    that was still gathering data is no answer to hold on to, so it is left out."""
    if previous is None or previous.num_rows == 0 or "is_best" not in previous.column_names:
        return {}
    best = previous.filter(pc.fill_null(previous["is_best"], False))
    if "finding" in best.column_names:
        best = best.filter(pc.fill_null(pc.not_equal(best["finding"], "gathering-data"), True))
    return dict(zip(best["resource_id"].to_pylist(), best["option_name"].to_pylist(), strict=True))


def _check_columns(name: str, table: pa.Table, account_id: str, day: date) -> None:
    """A feature table with rows must have every column the recommender reads (never a silent default)."""
    missing = [c for c in FEATURE_COLUMNS.get(name, ()) if c not in table.column_names]
    if table.num_rows and missing:
        raise ValueError(
            f"feature table '{name}' for account {account_id} on {day} lacks column(s) {', '.join(missing)}: "
            f"its partitions were written by an older model; re-materialise features/{name} for the window "
            "(and what it reads) before the recommendations"
        )


def _on_day(table: pa.Table, day: date) -> pa.Table:
    """The rows of the partition's day (a feature table passed over more days keeps only that one)."""
    if table.num_rows == 0 or "date" not in table.column_names:
        return table
    return table.filter(pc.equal(table["date"], pa.scalar(day, pa.date32())))


def _no_hours() -> tuple[np.ndarray, np.ndarray]:
    return np.full(168, np.nan), np.zeros(168, dtype=int)


def _hours_by_resource(table: pa.Table) -> dict[str, HourOfWeek]:
    """``activity_profile`` rows as one :class:`HourOfWeek` per resource (vectorised: up to 168 rows each)."""
    if table.num_rows == 0:
        return {}
    ids = table["resource_id"].to_numpy(zero_copy_only=False).astype(str)
    bucket = table["hour_of_week"].to_numpy(zero_copy_only=False).astype(int)
    samples = table["samples"].to_numpy(zero_copy_only=False).astype(int)
    p95 = table["cpu_p95_pct"].to_numpy(zero_copy_only=False).astype(float)
    zones = table["timezone"].to_numpy(zero_copy_only=False).astype(str)
    sources = table["tz_source"].to_numpy(zero_copy_only=False).astype(str)
    order = np.argsort(ids, kind="stable")
    bounds = np.flatnonzero(ids[order][1:] != ids[order][:-1]) + 1
    out = {}
    for chunk in np.split(order, bounds):
        rid = ids[chunk[0]]
        if (sources[chunk] == "invalid_tag").any():
            # Left to hour_of_week_from_features, which names the tag when a schedule is considered.
            out[rid] = table.take(pa.array(chunk))
            continue
        values, counts = _no_hours()
        values[bucket[chunk]] = p95[chunk]
        counts[bucket[chunk]] = samples[chunk]
        out[rid] = HourOfWeek(values, counts, zones[chunk[0]])
    return out


def _may_be_best(o: InstanceOption, config: StandaloneConfig) -> bool:
    # Commitments are a portfolio decision (they come last, over all instances): never "best" alone.
    if o.market in ("reserved", "savings_plan") or o.performance_risk > config.max_best_risk:
        return False
    return not (o.proposed_config.get("cross_architecture") and config.sizing_policy.architecture == "current")


def best_option_name(
    rec: InstanceRecommendation, config: StandaloneConfig, previous_best: str | None = None
) -> tuple[str, str]:
    """The option marked best, and why when yesterday's best was kept (hysteresis) or ''.

    The cheapest option the rules allow (risk, architecture; the up-size when under-provisioned). When
    ``previous_best`` (yesterday's best option of this instance) is still an allowed option, it stays
    best unless today's choice saves more than ``config.hysteresis_savings_pct`` % of the current
    monthly cost more, or its risk differs by ``config.hysteresis_risk`` or more.
    """
    if rec.protected or rec.finding == "gathering-data":
        return "keep", ""
    if rec.finding == "under-provisioned":
        up = rec.resize.best  # the up-size (or keep when nothing fits): never a cheaper row under the rule
        best_name = "keep" if up.is_current else f"resize:{up.instance_type}"
    else:
        best_name = next((o.option_name for o in rec.options if _may_be_best(o, config)), "keep")
    if previous_best is None or previous_best == best_name:
        return best_name, ""
    by_name = {o.option_name: o for o in rec.options}
    prev, new = by_name.get(previous_best), by_name.get(best_name)
    if prev is None or new is None or not _may_be_best(prev, config):
        return best_name, ""
    saving_change = (_effective_monthly(prev) - _effective_monthly(new)) / (rec.current_monthly_usd or 1.0) * 100
    risk_change = abs(new.performance_risk - prev.performance_risk)
    if abs(saving_change) <= config.hysteresis_savings_pct and risk_change < config.hysteresis_risk:
        return previous_best, (
            f"Kept yesterday's best option {previous_best}: {best_name} would change the saving by "
            f"{saving_change:.1f} % of the current cost (margin {config.hysteresis_savings_pct:g} %) and the risk by "
            f"{risk_change:g} (margin {config.hysteresis_risk:g})."
        )
    return best_name, ""


def instance_rows(
    account_id: str,
    day: date,
    rec: InstanceRecommendation,
    config: StandaloneConfig,
    previous_best: str | None = None,
) -> list[dict[str, Any]]:
    """One row per option of one instance, ranked by effective monthly cost; ``previous_best`` is
    yesterday's best option (hysteresis, :func:`best_option_name`)."""
    inst = rec.instance
    current_config = json.dumps({"instance_type": inst.instance_type, "market": "on_demand"})
    best_name, kept_why = best_option_name(rec, config, previous_best)
    resize = rec.resize
    other = resize.other_architecture
    same = next((o for o in resize.options if o.architecture == resize.current.architecture), None)
    # What a person reads first: the finding, the confidence and the reason in words, and the best
    # option of each architecture (the summary and the UI show them beside the best row).
    trust: dict[str, Any] = {
        "reason": resize.reason,
        "confidence_words": resize.confidence_detail.words() if resize.confidence_detail else None,
        "same_architecture_option": None if same is None else _alternative(same),
        "other_architecture_option": None if other is None else _alternative(other),
    }
    out = []
    for rank, o in enumerate(rec.options, start=1):
        cost = _effective_monthly(o)
        savings = rec.current_monthly_usd - cost
        rationale = o.rationale
        if rec.protected:
            rationale = f"Protected by tag {PROTECT_TAG}: informational only, the plan keeps it. " + rationale
        if kept_why and o.option_name == best_name:
            rationale = kept_why + " " + rationale
        out.append(
            {
                "account_id": account_id,
                "date": day,
                "resource_id": inst.resource_id,
                "resource_kind": "ec2_instance",
                "deployment_type": inst.deployment_type,
                "region": inst.region,
                "zone": inst.zone,
                "option_name": o.option_name,
                "action": o.action,
                "rank": rank,
                "is_best": o.option_name == best_name,
                "finding": rec.finding,
                "current_config": current_config,
                "proposed_config": json.dumps(o.proposed_config, sort_keys=True),
                "market": o.market,
                "vcpu": o.vcpu,
                "memory_gib": o.memory_gib,
                "monthly_cost_current_usd": rec.current_monthly_usd,
                "monthly_cost_proposed_usd": round(cost, 4),
                "monthly_savings_usd": round(savings, 4),
                "savings_pct": round(100 * savings / rec.current_monthly_usd, 3) if rec.current_monthly_usd else 0.0,
                "one_time_cost_usd": o.one_time_cost_usd,
                "performance_risk": o.performance_risk,
                "migration_effort": o.migration_effort,
                "projected_cpu_pct": o.projected_cpu_pct,
                "projected_memory_pct": o.projected_memory_pct,
                "confidence": rec.resize.confidence,
                "is_estimate": o.is_estimate,
                "protected": rec.protected,
                "risk_setting": config.sizing_policy.name,
                "rationale": rationale,
                "details": json.dumps(o.details | trust, sort_keys=True, default=str),
            }
        )
    return out


def _alternative(o) -> dict[str, Any]:
    return {
        "instance_type": o.instance_type,
        "architecture": o.architecture,
        "monthly_savings_usd": o.monthly_savings_usd,
        "performance_risk": o.performance_risk,
        "migration_effort": o.migration_effort,
    }


def _split_by_resource(table: pa.Table) -> dict[str, Samples]:
    if table.num_rows == 0:
        return {}
    out = {}
    # One stable sort and one take of the whole table, then zero-copy slices: a take per resource on
    # a many-chunk window (one chunk a partition file) costs the whole table each time.
    grouped = table.take(pc.sort_indices(table["resource_id"])).combine_chunks()
    sorted_ids = grouped["resource_id"].to_numpy(zero_copy_only=False)
    bounds = np.flatnonzero(sorted_ids[1:] != sorted_ids[:-1]) + 1
    starts = np.concatenate(([0], bounds))
    ends = np.concatenate((bounds, [len(sorted_ids)]))
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        out[str(sorted_ids[start])] = Samples.from_table(grouped.slice(start, end - start))
    return out


def _empty_samples() -> Samples:
    empty = np.array([], dtype=float)
    return Samples(ts=np.array([], "datetime64[us]"), cpu_pct=empty, cpu_peak_pct=empty, mem_pct=None, net_bytes=None)


def _base_row(account_id: str, day: date, resource_id: str, kind: str, region: str | None, zone: str | None) -> dict:
    return {
        "account_id": account_id,
        "date": day,
        "resource_id": resource_id,
        "resource_kind": kind,
        "deployment_type": "standalone",
        "region": region,
        "zone": zone,
        "market": "on_demand",
        "vcpu": 0.0,
        "memory_gib": 0.0,
        "one_time_cost_usd": 0.0,
        "performance_risk": 0.0,
        "migration_effort": "VeryLow",
        "projected_cpu_pct": None,
        "projected_memory_pct": None,
        "confidence": 1.0,
        "protected": False,
        "risk_setting": None,
        "details": "{}",
    }


def _orphan_rows(account_id: str, day: date, res: Mapping[str, Any], orphan) -> list[dict[str, Any]]:
    base = _base_row(account_id, day, orphan.resource_id, orphan.resource_kind, res.get("region"), res.get("zone"))
    common = {"finding": "idle", "current_config": json.dumps({"config": orphan.current_config})}
    keep = {
        **base,
        **common,
        "option_name": "keep",
        "action": "keep",
        "rank": 2,
        "is_best": False,
        "proposed_config": json.dumps({"config": orphan.current_config}),
        "monthly_cost_current_usd": orphan.monthly_cost_usd,
        "monthly_cost_proposed_usd": orphan.monthly_cost_usd,
        "monthly_savings_usd": 0.0,
        "savings_pct": 0.0,
        "is_estimate": orphan.is_estimate,
        "rationale": "Keep as it is. " + orphan.rationale,
    }
    act = {
        **base,
        **common,
        "option_name": orphan.action,
        "action": orphan.action,
        "rank": 1,
        "is_best": True,
        "market": "stopped",
        "proposed_config": json.dumps({"action": orphan.action}),
        "monthly_cost_current_usd": orphan.monthly_cost_usd,
        "monthly_cost_proposed_usd": 0.0,
        "monthly_savings_usd": orphan.monthly_cost_usd,
        "savings_pct": 100.0,
        "performance_risk": 1.0,
        "is_estimate": orphan.is_estimate,
        "rationale": orphan.rationale,
    }
    return [act, keep]


def _unpriced_row(
    account_id: str, day: date, inst: Instance, error: str, priced: InstanceType | None = None
) -> dict[str, Any]:
    """The one ``keep`` row of an instance that was not analysed; without costs unless ``priced`` gives them."""
    base = _base_row(account_id, day, inst.resource_id, "ec2_instance", inst.region, inst.zone)
    cost = round(priced.monthly_usd, 4) if priced is not None else None
    return {
        **base,
        "option_name": "keep",
        "action": "keep",
        "rank": 1,
        "is_best": True,
        "finding": None,
        "current_config": json.dumps({"instance_type": inst.instance_type, "market": "on_demand"}),
        "proposed_config": json.dumps({"instance_type": inst.instance_type, "market": "on_demand"}),
        "monthly_cost_current_usd": cost,
        "monthly_cost_proposed_usd": cost,
        "vcpu": float(priced.vcpu) if priced is not None else 0.0,
        "memory_gib": priced.memory_gib if priced is not None else 0.0,
        "monthly_savings_usd": 0.0,
        "savings_pct": 0.0,
        "confidence": 0.0,
        "is_estimate": priced.is_estimate if priced is not None else True,
        "rationale": f"Not analysed: {error}" + (" Kept as it is." if priced is not None else ""),
    }


def recommendations_summary(table: pa.Table) -> dict[str, float]:
    """Numbers for the asset's metadata: rows, resources and the savings of the best options."""
    if table.num_rows == 0:
        return {"rows": 0, "resources": 0, "best_monthly_savings_usd": 0.0}
    best = table.filter(pc.equal(table["is_best"], True))
    instances = best.filter(pc.equal(best["resource_kind"], "ec2_instance"))
    return {
        "rows": table.num_rows,
        "resources": len(set(table["resource_id"].to_pylist())),
        "best_monthly_savings_usd": round(float(pc.sum(instances["monthly_savings_usd"]).as_py() or 0.0), 2),
        "orphan_monthly_savings_usd": round(
            float(
                pc.sum(
                    best.filter(pc.is_in(best["resource_kind"], pa.array(["ebs_volume", "elastic_ip"])))[
                        "monthly_savings_usd"
                    ]
                ).as_py()
                or 0.0
            ),
            2,
        ),
    }


__all__ = [
    "HOURS_PER_MONTH",
    "RECOMMENDATIONS",
    "STANDALONE_FEATURE_INPUTS",
    "AccountRecommendations",
    "Instance",
    "InstanceFeatures",
    "InstanceOption",
    "InstanceRecommendation",
    "Samples",
    "StandaloneConfig",
    "instance_rows",
    "optimize_standalone_instance",
    "recommend_account",
    "recommendations_summary",
]
