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
    deployment_types: tuple[str, ...] | None = None  # None: every optimiser runs

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
    return Settings(
        home=home, env=env, deployment_types=parse_deployment_types(os.environ.get("CLOUDOPT_DEPLOYMENT_TYPES"))
    )


def parse_deployment_types(raw: str | None) -> tuple[str, ...] | None:
    """``CLOUDOPT_DEPLOYMENT_TYPES``: comma-separated deployment types whose optimisers run; unset: all.

    Each name must be one an optimiser handles (checked against the registry); an empty or blank list is
    refused, since it would silently run nothing.
    """
    if raw is None:
        return None
    from cloudopt_pipelines.optimizers.base import select_optimizers

    types = tuple(dict.fromkeys(t.strip().lower() for t in raw.split(",") if t.strip()))
    if not types:
        raise ValueError(
            f"CLOUDOPT_DEPLOYMENT_TYPES={raw!r} names no deployment type; unset it to run every optimiser, "
            "or list some, e.g. 'standalone'"
        )
    select_optimizers(types)  # raises naming the known types
    return types


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
