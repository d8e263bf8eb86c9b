"""Where things live and which sources run: one place that reads the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ENVIRONMENTS = ("demo", "aws")


@dataclass(frozen=True)
class Settings:
    """The settings every part of the pipeline shares, read once from the environment."""

    home: Path
    env: str

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
    """Read ``CLOUDOPT_HOME`` (default ``./.cloudopt``) and ``CLOUDOPT_ENV`` (default ``demo``)."""
    home = Path(os.environ.get("CLOUDOPT_HOME", ".cloudopt")).expanduser().resolve()
    env = os.environ.get("CLOUDOPT_ENV", "demo").strip().lower()
    if env not in ENVIRONMENTS:
        raise ValueError(
            f"CLOUDOPT_ENV={env!r} is not one of {', '.join(ENVIRONMENTS)}; "
            "use 'demo' for the embedded data or 'aws' for real accounts"
        )
    return Settings(home=home, env=env)


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
