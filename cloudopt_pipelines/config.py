"""Where things live and which sources run: one place that reads the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

ENVIRONMENTS = ("demo", "aws")
DEFAULT_PLAN_DEADLINE_HOURS = 12.0


@dataclass(frozen=True)
class Settings:
    """The settings every part of the pipeline shares, read once from the environment."""

    home: Path
    env: str
    plan_deadline: timedelta = timedelta(hours=DEFAULT_PLAN_DEADLINE_HOURS)

    @property
    def lake_dir(self) -> Path:
        return self.home / "lake"

    @property
    def warehouse_path(self) -> Path:
        return self.home / "warehouse.duckdb"

    @property
    def dagster_home(self) -> Path:
        return self.home / "dagster"


def load_settings() -> Settings:
    """Read ``CLOUDOPT_HOME`` (default ``./.cloudopt``), ``CLOUDOPT_ENV`` (default ``demo``) and
    ``CLOUDOPT_PLAN_DEADLINE_HOURS`` (default 12)."""
    home = Path(os.environ.get("CLOUDOPT_HOME", ".cloudopt")).expanduser().resolve()
    env = os.environ.get("CLOUDOPT_ENV", "demo").strip().lower()
    if env not in ENVIRONMENTS:
        raise ValueError(
            f"CLOUDOPT_ENV={env!r} is not one of {', '.join(ENVIRONMENTS)}; "
            "use 'demo' for the embedded data or 'aws' for real accounts"
        )
    deadline = parse_plan_deadline_hours(os.environ.get("CLOUDOPT_PLAN_DEADLINE_HOURS", ""))
    return Settings(home=home, env=env, plan_deadline=deadline)


def parse_plan_deadline_hours(raw: str) -> timedelta:
    """How long after the end of day D the plan of D waits for missing accounts (hours, >= 0; empty: 12)."""
    if not raw.strip():
        return timedelta(hours=DEFAULT_PLAN_DEADLINE_HOURS)
    try:
        hours = float(raw)
    except ValueError:
        hours = -1.0
    if not 0 <= hours <= 24 * 31:
        raise ValueError(
            f"CLOUDOPT_PLAN_DEADLINE_HOURS={raw!r} is not a number of hours between 0 and 744; "
            f"it is how long after the end of a UTC day its plan waits for missing accounts "
            f"(default {DEFAULT_PLAN_DEADLINE_HOURS:g})"
        )
    return timedelta(hours=hours)


def configured_accounts() -> list[str]:
    """Account ids from ``CLOUDOPT_ACCOUNTS`` (comma-separated), validated as 12-digit strings."""
    raw = os.environ.get("CLOUDOPT_ACCOUNTS", "")
    return parse_accounts(raw) if raw.strip() else []


def parse_accounts(raw: str) -> list[str]:
    """Parse a comma-separated list of AWS account ids, keeping leading zeros."""
    accounts = [a.strip() for a in raw.split(",") if a.strip()]
    bad = [a for a in accounts if not (len(a) == 12 and a.isdigit())]
    if bad:
        raise ValueError(f"account id(s) {bad} are not 12-digit AWS account ids (keep leading zeros)")
    return sorted(set(accounts))
