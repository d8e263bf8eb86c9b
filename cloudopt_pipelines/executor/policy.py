"""The safety rules that do not need AWS: protection, production, blast radius, rate, change windows.

Every check returns ``(allowed, reason)`` so that the audit can say exactly why an action was skipped.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cloudopt_pipelines import vocabulary
from cloudopt_pipelines.vocabulary import (
    ENVIRONMENT_TAG_KEYS,
    K8S_PROTECT_KEY,
    K8S_PROTECTED_NAMESPACES,
    PRODUCTION_VALUES,
    PROTECT_TAG_KEY,
    PROTECT_TAG_VALUES,
)

# Actions that stop or terminate something (a requests patch restarts every pod of the workload, an HPA
# retune may remove pods): none of them ever reaches production.
STOPS_OR_TERMINATES = (
    "resize",
    "schedule",
    "resize+schedule",
    "stop",
    "terminate",
    "spot",
    "resize_requests",
    "tune_hpa",
    # ECS: a new deployment replaces every task, a scale-in stops some; EMR: a resize or scaling policy removes
    # nodes, an auto-termination policy terminates the cluster.
    "ecs_update_service",
    "emr_resize",
    "emr_managed_scaling",
    "emr_auto_termination",
)
PRODUCTION_ALLOWED_ACTIONS = ("delete_volume", "release_address", "reserve", "savings_plan")
# `--all` never covers these: each needs its own action id in the approval.
EXPLICIT_APPROVAL_ACTIONS = ("terminate",)
SCHEDULE_METHODS = ("custodian_tag", "instance_scheduler_tag", "stop_start")
#: The largest blast-radius limit a configuration may set: above it a limit no longer limits anything.
MAX_BLAST_RADIUS = 1000


class PolicyError(ValueError):
    """A policy setting that cannot work (a bad cron field, an unknown time zone) or would lower a safety floor."""


def is_protected_value(value: str | None) -> bool:
    """Does this value of the ``cloudopt:protect`` tag protect? Exactly the values the IAM ``Deny`` of
    docs/iam/executor-policy.json matches (``StringEqualsIgnoreCase`` on ``PROTECT_TAG_VALUES``): any case,
    no trimming. The one place protected values are recognised."""
    return value is not None and value.lower() in PROTECT_TAG_VALUES


# ------------------------------------------------------------------------------------------- cron

_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12), ("day of week", 0, 7))
_NAMES = {
    3: {m: i + 1 for i, m in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split())},
    4: {d: i for i, d in enumerate("sun mon tue wed thu fri sat".split())},
}


@dataclass(frozen=True)
class Cron:
    """A five-field cron expression (minute hour day-of-month month day-of-week; 0 or 7 = Sunday)."""

    expression: str
    fields: tuple[frozenset[int], ...]
    dom_any: bool
    dow_any: bool

    @classmethod
    def parse(cls, expression: str) -> Cron:
        parts = expression.split()
        if len(parts) != 5:
            raise PolicyError(f"cron {expression!r} needs 5 fields (minute hour day-of-month month day-of-week)")
        fields = tuple(_parse_field(p, i, expression) for i, p in enumerate(parts))
        dow = frozenset(0 if d == 7 else d for d in fields[4])
        return cls(expression, (*fields[:4], dow), parts[2] == "*", parts[4] == "*")

    def matches(self, t: datetime) -> bool:
        minute, hour, dom, month, dow = self.fields
        if t.minute not in minute or t.hour not in hour or t.month not in month:
            return False
        day_ok, weekday_ok = t.day in dom, (t.isoweekday() % 7) in dow
        # Classic cron: when both day fields are restricted, either may match.
        if not self.dom_any and not self.dow_any:
            return day_ok or weekday_ok
        return day_ok and weekday_ok


def _parse_field(text: str, index: int, expression: str) -> frozenset[int]:
    name, low, high = _FIELDS[index]
    values: set[int] = set()
    for item in text.lower().split(","):
        base, _, step_text = item.partition("/")
        try:
            step = int(step_text) if step_text else 1
            if base == "*":
                start, end = low, high
            elif "-" in base:
                a, b = base.split("-", 1)
                start, end = _value(a, index), _value(b, index)
            else:
                start = _value(base, index)
                end = high if step_text else start
        except ValueError:
            raise PolicyError(f"cron {expression!r}: {name} field {text!r} is not valid") from None
        if not (low <= start <= high and low <= end <= high) or start > end or step < 1:
            raise PolicyError(f"cron {expression!r}: {name} field {text!r} is outside {low}-{high}")
        values.update(range(start, end + 1, step))
    return frozenset(values)


def _value(text: str, index: int) -> int:
    names = _NAMES.get(index, {})
    return names[text] if text in names else int(text)


@dataclass(frozen=True)
class ChangeWindow:
    """A window in which changes may run: it opens at each cron time (in ``timezone``) for ``duration_minutes``.

    It governs the action types in ``action_types`` and the environments in ``environments`` (tag values,
    or ``production`` / ``non-production``); an empty list means all.
    """

    cron: str
    duration_minutes: int
    timezone: str = "UTC"
    action_types: tuple[str, ...] = ()
    environments: tuple[str, ...] = ()
    name: str = ""

    def __post_init__(self) -> None:
        Cron.parse(self.cron)
        if self.duration_minutes < 1 or self.duration_minutes > 7 * 24 * 60:
            raise PolicyError(f"change window {self.label}: duration_minutes must be 1 to 10080")
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise PolicyError(f"change window {self.label}: {self.timezone!r} is not an IANA time zone") from None

    @property
    def label(self) -> str:
        return self.name or f"'{self.cron}' {self.timezone}"

    def governs(self, action: str, environment: str | None, production: bool) -> bool:
        if self.action_types and action not in self.action_types:
            return False
        if not self.environments:
            return True
        kinds = {environment or "", "production" if production else "non-production"}
        return bool(kinds & set(self.environments))

    def is_open(self, now: datetime) -> bool:
        cron, local = Cron.parse(self.cron), now.astimezone(ZoneInfo(self.timezone)).replace(second=0, microsecond=0)
        return any(cron.matches(local - timedelta(minutes=k)) for k in range(self.duration_minutes))

    def next_opening(self, now: datetime, horizon_days: int = 8) -> datetime | None:
        cron = Cron.parse(self.cron)
        local = now.astimezone(ZoneInfo(self.timezone)).replace(second=0, microsecond=0)
        for k in range(1, horizon_days * 24 * 60):
            t = local + timedelta(minutes=k)
            if cron.matches(t):
                return t
        return None


# ----------------------------------------------------------------------------------------- policy


@dataclass(frozen=True)
class ExecutorPolicy:
    """Every safety setting of a run; the defaults are the documented defaults (docs/executor.md)."""

    protect_tag_key: str = PROTECT_TAG_KEY
    protect_tag_values: tuple[str, ...] = PROTECT_TAG_VALUES
    environment_tag_keys: tuple[str, ...] = ENVIRONMENT_TAG_KEYS
    production_values: tuple[str, ...] = PRODUCTION_VALUES
    untagged_is_production: bool = True
    production_allowed_actions: tuple[str, ...] = PRODUCTION_ALLOWED_ACTIONS
    max_actions_per_run: int = 20
    max_actions_per_day: int = 20
    max_actions_per_account: int = 10
    max_calls_per_second: float = 2.0
    change_windows: tuple[ChangeWindow, ...] = ()
    schedule_method: str = "custodian_tag"
    custodian_tag_key: str = "maid_offhours"
    instance_scheduler_tag_key: str = "Schedule"
    #: Kubernetes namespaces never changed (the built-in ones always: ``K8S_PROTECTED_NAMESPACES``)
    protected_namespaces: tuple[str, ...] = K8S_PROTECTED_NAMESPACES

    def __post_init__(self) -> None:
        # Safety floors: a configuration adds protect values, environment tags and production values, and
        # never removes the built-in ones; the protect tag cloudopt:protect always protects.
        object.__setattr__(self, "protect_tag_values", _with(self.protect_tag_values, PROTECT_TAG_VALUES, lower=True))
        object.__setattr__(self, "environment_tag_keys", _with(self.environment_tag_keys, ENVIRONMENT_TAG_KEYS))
        object.__setattr__(self, "production_values", _with(self.production_values, PRODUCTION_VALUES, lower=True))
        object.__setattr__(self, "protected_namespaces", _with(self.protected_namespaces, K8S_PROTECTED_NAMESPACES))
        if not self.untagged_is_production:
            raise PolicyError(
                "untagged_is_production: false would lower a safety floor: a resource without an environment tag "
                "always counts as production. Tag non-production resources (env=dev, ...) instead "
                "(docs/executor.md#safety-floors)"
            )
        lowering = [a for a in self.production_allowed_actions if a in STOPS_OR_TERMINATES]
        if lowering:
            raise PolicyError(
                f"production_allowed_actions may not include {lowering}: production never gets an action that "
                f"stops or terminates ({', '.join(STOPS_OR_TERMINATES)}), whatever the configuration; allowed are "
                f"for instance {', '.join(PRODUCTION_ALLOWED_ACTIONS)} (docs/executor.md#safety-floors)"
            )
        if self.schedule_method not in SCHEDULE_METHODS:
            raise PolicyError(f"schedule_method {self.schedule_method!r} is not one of {', '.join(SCHEDULE_METHODS)}")
        if min(self.max_actions_per_run, self.max_actions_per_day, self.max_actions_per_account) < 0:
            raise PolicyError("max_actions_per_run, max_actions_per_day and max_actions_per_account must be >= 0")
        for name in ("max_actions_per_run", "max_actions_per_day", "max_actions_per_account"):
            if getattr(self, name) > MAX_BLAST_RADIUS:
                raise PolicyError(
                    f"{name}: {getattr(self, name)} would lower a safety floor: above {MAX_BLAST_RADIUS} there is "
                    "no blast-radius limit; keep it at most that and let the rest go in later runs and days "
                    "(docs/executor.md#safety-floors)"
                )

    def protection(self, tags: Mapping[str, str], namespace: str | None = None) -> tuple[bool, str]:
        """(protected, why) from the live tags: the built-in ``cloudopt:protect`` tag (``cloudopt.io/protect``
        label or annotation on Kubernetes) always, and the configured ``protect_tag_key`` with any of
        ``protect_tag_values``; a Kubernetes object in one of ``protected_namespaces`` always."""
        if namespace is not None and namespace in self.protected_namespaces:
            return (
                True,
                f"protected: namespace {namespace} is in protected_namespaces {list(self.protected_namespaces)}",
            )
        for key in (PROTECT_TAG_KEY, K8S_PROTECT_KEY):
            value = tags.get(key)
            if is_protected_value(value):
                return True, f"protected: live {'tag' if key == PROTECT_TAG_KEY else 'label/annotation'} {key}={value}"
        value = tags.get(self.protect_tag_key)
        if value is not None and (is_protected_value(value) or value.lower() in self.protect_tag_values):
            return True, f"protected: live tag {self.protect_tag_key}={value}"
        return False, ""

    def in_force(self) -> dict[str, object]:
        """The effective settings (floors applied), as recorded with every audited decision."""
        return {
            "protect_tag_keys": sorted({PROTECT_TAG_KEY, self.protect_tag_key}),
            "protect_tag_values": list(self.protect_tag_values),
            "environment_tag_keys": list(self.environment_tag_keys),
            "production_values": list(self.production_values),
            "untagged_is_production": self.untagged_is_production,
            "production_allowed_actions": list(self.production_allowed_actions),
            "max_actions_per_run": self.max_actions_per_run,
            "max_actions_per_day": self.max_actions_per_day,
            "max_actions_per_account": self.max_actions_per_account,
            "max_calls_per_second": self.max_calls_per_second,
            "change_windows": [w.label for w in self.change_windows],
            "schedule_method": self.schedule_method,
            "protected_namespaces": list(self.protected_namespaces),
        }

    def environment(self, tags: Mapping[str, str]) -> tuple[str | None, bool]:
        """(environment tag value, is production) from the live tags: any production-like tag wins."""
        production = vocabulary.is_production(
            tags, self.environment_tag_keys, self.production_values, untagged=self.untagged_is_production
        )
        deciding = vocabulary.environment_of(tags, self.environment_tag_keys, self.production_values)
        return (deciding[1] if deciding else None), production

    def production_check(self, action: str, tags: Mapping[str, str]) -> tuple[bool, str]:
        env, production = self.environment(tags)
        if not production or action in self.production_allowed_actions:
            return True, ""
        where = f"live tag environment={env}" if env else "no environment tag (untagged counts as production)"
        return False, (
            f"production ({where}): action '{action}' is not in production_allowed_actions "
            f"{list(self.production_allowed_actions)}"
        )

    def window_check(self, action: str, tags: Mapping[str, str], now: datetime) -> tuple[bool, str]:
        """Allowed when no window governs the action, or when one of those that do is open now."""
        env, production = self.environment(tags)
        governing = [w for w in self.change_windows if w.governs(action, env, production)]
        if not governing:
            return True, ""
        open_now = [w for w in governing if w.is_open(now)]
        if open_now:
            return True, f"inside change window {open_now[0].label}"
        upcoming = [(t, w) for w in governing if (t := w.next_opening(now)) is not None]
        nxt = min(upcoming, key=lambda tw: tw[0].astimezone(UTC)) if upcoming else None
        when = f"; next opens {nxt[0].isoformat()} ({nxt[1].label})" if nxt else ""
        return False, f"outside change window(s) {', '.join(w.label for w in governing)}{when}"


def _with(values: Sequence[str], floor: Sequence[str], lower: bool = False) -> tuple[str, ...]:
    given = [v.lower() if lower else v for v in values]
    return tuple(dict.fromkeys([*given, *floor]))


@dataclass
class BlastRadius:
    """Counts changes: at most ``per_run`` in this run, ``per_day`` in all and ``per_account`` per account
    over the UTC day, the day's earlier changes (``before``, per account, from the audit) included."""

    per_run: int
    per_account: int
    per_day: int | None = None
    before: Counter[str] = field(default_factory=Counter)
    day: str = "today"
    admitted: Counter[str] = field(default_factory=Counter)

    def admit(self, account_id: str) -> tuple[bool, str]:
        total = sum(self.admitted.values())
        if total >= self.per_run:
            return False, f"blast radius: max_actions_per_run={self.per_run} reached in this run"
        earlier = sum(self.before.values())
        if self.per_day is not None and earlier + total >= self.per_day:
            return False, (
                f"blast radius: max_actions_per_day={self.per_day} reached for {self.day} "
                f"({earlier} change(s) by earlier runs that day, from the audit, and {total} by this run)"
            )
        if self.before[account_id] + self.admitted[account_id] >= self.per_account:
            return False, (
                f"blast radius: max_actions_per_account={self.per_account} reached for account {account_id} "
                f"on {self.day} ({self.before[account_id]} by earlier runs, {self.admitted[account_id]} by this run)"
            )
        self.admitted[account_id] += 1
        return True, ""


class RateLimiter:
    """At most ``per_second`` mutating calls a second (evenly spaced); 0 or less: no limit."""

    def __init__(
        self,
        per_second: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.interval = 1.0 / per_second if per_second > 0 else 0.0
        self._clock, self._sleep = clock, sleep
        self._next = 0.0
        self._lock = threading.Lock()
        self.waited = 0.0

    def acquire(self) -> None:
        if self.interval <= 0:
            return
        with self._lock:
            now = self._clock()
            wait = self._next - now
            if wait > 0:
                self._sleep(wait)
                self.waited += wait
                now += wait
            self._next = now + self.interval

    def at_rate(self, per_second: float) -> RateLimiter:
        """A fresh limiter at ``per_second`` with this one's clock and sleep (tests inject theirs)."""
        return RateLimiter(per_second, clock=self._clock, sleep=self._sleep)


def approval_needed_explicitly(action: str, explicit: Sequence[str] = EXPLICIT_APPROVAL_ACTIONS) -> bool:
    return action in explicit
