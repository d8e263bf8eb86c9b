"""Off-hours schedules for non-production instances: pure logic, no Dagster.

The schedule reads the hour-of-week activity profile (168 buckets, Monday 00:00 first, in the
instance's own time zone from tag ``tz`` / ``timezone``, else UTC): the ``activity_profile`` feature
model in the recommender (:func:`hour_of_week_from_features`), or :func:`hour_of_week_profile` over raw
5-minute samples. A bucket is *idle* when the
95th percentile of its 5-minute CPU maxima is at most ``idle_cpu_pct`` (default 5 %). The schedule
stops the instance over the longest run of hours idle on **every** weekday (wrapping midnight) and,
when Saturday and Sunday are idle all day, over the whole weekend. It is written two ways people
already use:

- a Cloud Custodian ``offhours`` / ``onhours`` tag value, e.g. ``off=(M-F,19);on=(M-F,7);tz=et``;
- an AWS Instance Scheduler period (``begintime``, ``endtime``, ``weekdays``) plus schedule time zone.

Savings count only the instance-hours stopped: attached EBS volumes are still billed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pyarrow as pa

from cloudopt_pipelines import vocabulary
from cloudopt_pipelines.vocabulary import ENVIRONMENT_TAG_KEYS, PRODUCTION_VALUES

HOURS_PER_WEEK = 168
HOURS_PER_MONTH = 730.0
TIMEZONE_TAG_KEYS = ("tz", "timezone", "Timezone", "TimeZone")
GROUP_TAG_KEYS = (
    "aws:autoscaling:groupName",
    "aws:ecs:clusterName",
    "eks:cluster-name",
    "aws:elasticmapreduce:job-flow-id",
)

# Cloud Custodian's tz abbreviations (c7n/filters/offhours.py TZ_ALIASES); other zones go as IANA names.
_CUSTODIAN_TZ = {
    "America/Los_Angeles": "pt",
    "America/New_York": "et",
    "America/Chicago": "ct",
    "America/Denver": "mt",
    "America/Phoenix": "mt",
    "Europe/London": "gmt",
    "Europe/Berlin": "cet",
    "Europe/Paris": "cet",
    "UTC": "utc",
    "Etc/UTC": "utc",
}
_DAY_LETTERS = "MTWHFSU"  # Custodian's day letters, Monday first
_DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class ScheduleError(ValueError):
    """Input the schedule rules cannot use (an unknown time zone, samples without timestamps)."""


def timezone_of(tags: Mapping[str, str], keys: Sequence[str] = TIMEZONE_TAG_KEYS) -> str:
    """The IANA zone from the instance's tags, else UTC; an unknown zone name is an error naming the tag."""
    for key in keys:
        if tags.get(key):
            name = tags[key]
            try:
                ZoneInfo(name)
            except (ZoneInfoNotFoundError, ValueError):
                raise ScheduleError(
                    f"tag {key}={name!r} is not an IANA time zone (e.g. 'America/New_York'); fix the tag"
                ) from None
            return name
    return "UTC"


def is_production(tags: Mapping[str, str], keys: Sequence[str] = ENVIRONMENT_TAG_KEYS) -> bool:
    """True when any environment tag says production; untagged instances count as production (safe side).

    The rule is :func:`cloudopt_pipelines.vocabulary.is_production`, the one the executor applies.
    """
    return vocabulary.is_production(tags, keys, PRODUCTION_VALUES)


def is_group_member(tags: Mapping[str, str]) -> bool:
    return any(k in tags for k in GROUP_TAG_KEYS) or any(k.startswith("kubernetes.io/cluster/") for k in tags)


def hour_of_week_profile(
    timestamps: Sequence[datetime] | np.ndarray, cpu_pct: Sequence[float] | np.ndarray, tz: str = "UTC", q: float = 95.0
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile ``q`` of CPU per hour-of-week bucket (Monday 00:00 local = 0) and the sample count per bucket.

    ``timestamps`` are timezone-aware datetimes or numpy ``datetime64`` in UTC. Buckets without samples
    are NaN.
    """
    zone = ZoneInfo(tz)
    ts = np.asarray(timestamps)
    values = np.asarray(cpu_pct, dtype=float)
    if ts.size != values.size:
        raise ScheduleError(f"{ts.size} timestamps but {values.size} CPU samples")
    if ts.size == 0:
        return np.full(HOURS_PER_WEEK, np.nan), np.zeros(HOURS_PER_WEEK, dtype=int)
    if np.issubdtype(ts.dtype, np.datetime64):
        seconds = ts.astype("datetime64[s]").astype(np.int64)
    else:
        seconds = np.array([int(t.timestamp()) for t in ts], dtype=np.int64)
    # Local offset per sample (DST-aware), computed once per distinct UTC hour.
    hours = seconds // 3600
    uniq, inverse = np.unique(hours, return_inverse=True)
    offsets = np.array(
        [int(datetime.fromtimestamp(int(h) * 3600, zone).utcoffset().total_seconds()) for h in uniq], dtype=np.int64
    )
    local = seconds + offsets[inverse]
    # 1970-01-01 was a Thursday: shift so that Monday 00:00 is bucket 0.
    bucket = ((local // 3600) + 3 * 24) % HOURS_PER_WEEK
    profile = np.full(HOURS_PER_WEEK, np.nan)
    counts = np.zeros(HOURS_PER_WEEK, dtype=int)
    ok = ~np.isnan(values)
    # One stable sort by bucket, then a percentile per run of equal buckets (not a mask per bucket).
    kept_bucket, kept_values = bucket[ok], values[ok]
    order = np.argsort(kept_bucket, kind="stable")
    kept_bucket, kept_values = kept_bucket[order], kept_values[order]
    present, starts, sizes = np.unique(kept_bucket, return_index=True, return_counts=True)
    counts[present] = sizes
    for b, start, size in zip(present.tolist(), starts.tolist(), sizes.tolist(), strict=True):
        profile[b] = float(np.percentile(kept_values[start : start + size], q))
    return profile, counts


@dataclass(frozen=True)
class ScheduleRecommendation:
    """A stop/start schedule and what it saves."""

    weekday_off_hour: int | None  # local hour the instance stops on weekdays (None: runs all night)
    weekday_on_hour: int | None
    weekend_off: bool
    stopped_hours_per_week: int
    custodian_tag: str
    instance_scheduler_period: str  # JSON
    timezone: str
    monthly_savings_usd: float
    rationale: str

    @property
    def running_fraction(self) -> float:
        return 1 - self.stopped_hours_per_week / HOURS_PER_WEEK


def _longest_circular_run(flags: np.ndarray) -> tuple[int, int]:
    """(start, length) of the longest run of True in a circular 24-hour array."""
    n = flags.size
    if flags.all():
        return 0, n
    best = (0, 0)
    start = int(np.argmin(flags))  # begin scanning just after an active hour
    run_start, run_len = None, 0
    for k in range(1, n + 1):
        i = (start + k) % n
        if flags[i]:
            if run_start is None:
                run_start, run_len = i, 0
            run_len += 1
            if run_len > best[1]:
                best = (run_start, run_len)
        else:
            run_start, run_len = None, 0
    return best


@dataclass(frozen=True)
class HourOfWeek:
    """P95 of the 5-minute CPU maxima per hour-of-week bucket (NaN: no sample), samples per bucket,
    and the zone the buckets are in."""

    p95_pct: np.ndarray
    samples: np.ndarray
    timezone: str


def hour_of_week_from_features(rows: pa.Table | Sequence[Mapping[str, object]], tags: Mapping[str, str]) -> HourOfWeek:
    """The buckets of one instance from its ``activity_profile`` rows (``cpu_p95_pct``, ``samples``).

    The model resolves the zone from the tags; a zone tag that is not an IANA name is an error
    naming the tag (as :func:`timezone_of`), never a silent UTC schedule.
    """
    records = rows.to_pylist() if isinstance(rows, pa.Table) else list(rows)
    p95 = np.full(HOURS_PER_WEEK, np.nan)
    counts = np.zeros(HOURS_PER_WEEK, dtype=int)
    zone = None
    for r in records:
        if r.get("tz_source") == "invalid_tag":
            timezone_of(tags)  # raises the error that names the tag
        zone = zone or r.get("timezone")
        b = int(r["hour_of_week"])
        counts[b] = int(r["samples"] or 0)
        p95[b] = np.nan if r.get("cpu_p95_pct") is None else float(r["cpu_p95_pct"])
    return HourOfWeek(p95, counts, zone or timezone_of(tags))


def recommend_schedule(
    timestamps: Sequence[datetime] | np.ndarray,
    cpu_max_pct: Sequence[float] | np.ndarray,
    tags: Mapping[str, str],
    monthly_instance_cost_usd: float,
    *,
    idle_cpu_pct: float = 5.0,
    min_stop_hours: int = 4,
    margin_hours: int = 1,
    min_days: int = 7,
    environment_tag_keys: Sequence[str] = ENVIRONMENT_TAG_KEYS,
) -> ScheduleRecommendation | None:
    """An off-hours schedule for a non-production standalone instance from raw 5-minute samples, or None.

    The samples path of :func:`schedule_from_profile` (which the recommender calls with the
    ``activity_profile`` features); the same rules and arguments.
    """
    if is_production(tags, environment_tag_keys) or is_group_member(tags):
        return None
    tz = timezone_of(tags)
    profile, counts = hour_of_week_profile(timestamps, cpu_max_pct, tz)
    return schedule_from_profile(
        HourOfWeek(profile, counts, tz),
        tags,
        monthly_instance_cost_usd,
        idle_cpu_pct=idle_cpu_pct,
        min_stop_hours=min_stop_hours,
        margin_hours=margin_hours,
        min_days=min_days,
        environment_tag_keys=environment_tag_keys,
    )


def schedule_from_profile(
    hours: HourOfWeek,
    tags: Mapping[str, str],
    monthly_instance_cost_usd: float,
    *,
    idle_cpu_pct: float = 5.0,
    min_stop_hours: int = 4,
    margin_hours: int = 1,
    min_days: int = 7,
    environment_tag_keys: Sequence[str] = ENVIRONMENT_TAG_KEYS,
) -> ScheduleRecommendation | None:
    """An off-hours schedule for a non-production standalone instance, or None.

    None when the instance is production (or has no environment tag), belongs to a group or cluster,
    has under ``min_days`` of samples, or has no idle run of at least ``min_stop_hours`` a night and no
    idle weekend. A bucket is idle when its P95 is at most ``idle_cpu_pct``. ``margin_hours`` of idle
    time is kept running on each side of the active period.
    """
    if is_production(tags, environment_tag_keys) or is_group_member(tags):
        return None
    tz = hours.timezone
    profile, counts = hours.p95_pct, hours.samples
    if int(counts.sum()) < min_days * 288 * 0.8 or (counts == 0).any():
        return None
    idle = profile <= idle_cpu_pct
    by_day = idle.reshape(7, 24)
    weekdays_idle = by_day[:5].all(axis=0)
    weekend_off = bool(by_day[5:].all())
    if weekdays_idle.all():
        return None  # idle around the clock: the idle rule (stop or terminate) applies, not a schedule
    start, length = _longest_circular_run(weekdays_idle)
    length -= 2 * margin_hours
    off_hour = on_hour = None
    if length >= min_stop_hours:
        off_hour = (start + margin_hours) % 24
        on_hour = (off_hour + length) % 24
        if off_hour <= on_hour:
            # An off period wholly after midnight cannot be one Instance Scheduler period; not offered.
            off_hour = on_hour = None
    if off_hour is None and not weekend_off:
        return None
    alias = _CUSTODIAN_TZ.get(tz, tz.lower())
    if off_hour is not None:
        days = "M-F" if weekend_off else "M-U"
        custodian = f"off=({days},{off_hour});on=({days},{on_hour});tz={alias}"
        events = [(d, off_hour, False) for d in range(5 if weekend_off else 7)]
        events += [(d, on_hour, True) for d in range(5 if weekend_off else 7)]
        period = {
            "name": f"office-hours-{on_hour:02d}-{off_hour:02d}",
            "begintime": f"{on_hour:02d}:00",
            "endtime": f"{off_hour:02d}:00",
            "weekdays": "mon-fri" if weekend_off else "mon-sun",
            "timezone": tz,
        }
    else:
        custodian = f"off=(S,0);on=(M,0);tz={alias}"
        events = [(5, 0, False), (0, 0, True)]
        period = {"name": "weekdays", "begintime": "00:00", "endtime": "23:59", "weekdays": "mon-fri", "timezone": tz}
    stopped = int(stopped_mask(events).sum())
    savings = monthly_instance_cost_usd * stopped / HOURS_PER_WEEK
    what = []
    if off_hour is not None:
        what.append(f"idle every weekday from {off_hour:02d}:00 to {on_hour:02d}:00 ({tz})")
    if weekend_off:
        what.append("idle all weekend")
    rationale = (
        f"Non-production ({_env(tags, environment_tag_keys)}) and {' and '.join(what)}: hour-of-week P95 of CPU "
        f"maxima at most {idle_cpu_pct:g} % (with {margin_hours} h margin). Stopping {stopped} of 168 hours a week "
        f"saves ${savings:.2f}/month of instance time; attached EBS volumes are still billed."
    )
    return ScheduleRecommendation(
        weekday_off_hour=off_hour,
        weekday_on_hour=on_hour,
        weekend_off=weekend_off,
        stopped_hours_per_week=int(stopped),
        custodian_tag=custodian,
        instance_scheduler_period=json.dumps(period, sort_keys=True),
        timezone=tz,
        monthly_savings_usd=round(savings, 4),
        rationale=rationale,
    )


def stopped_mask(events: Sequence[tuple[int, int, bool]]) -> np.ndarray:
    """Hours of the week (Monday 00:00 = 0) an instance is stopped under start/stop ``events``.

    Each event is (day 0-6, hour, running after it), as Custodian's ``on`` / ``off`` tags fire them.
    """
    at = {d * 24 + h: running for d, h, running in events}
    running = True
    for hour in range(2 * HOURS_PER_WEEK):  # the first week settles the state at Monday 00:00
        running = at.get(hour % HOURS_PER_WEEK, running)
    mask = np.zeros(HOURS_PER_WEEK, dtype=bool)
    for hour in range(HOURS_PER_WEEK):
        running = at.get(hour, running)
        mask[hour] = not running
    return mask


def _env(tags: Mapping[str, str], keys: Sequence[str]) -> str:
    values = vocabulary.environment_values(tags, keys)
    return ", ".join(f"{k}={v}" for k, v in values) if values else "no environment tag"
