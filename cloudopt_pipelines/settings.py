"""Every ``CLOUDOPT_*`` setting, parsed and validated in one place.

Nothing here runs at import: :func:`load_settings` reads the environment when it is called (the Dagster
loader calls it once, when it loads ``definitions.defs``; the commands call it when they start), and the
rest of the code takes the :class:`Settings` it returns. Secrets are not kept here: for the external ids
only whether they are set is recorded, and the resources read their values at run time through
``dg.EnvVar`` (``resources/environments.py``). Every error names the variable and the fix. This module
never imports Dagster.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

ENVIRONMENTS = ("demo", "aws")
#: Sources of inventory and metrics; several can run side by side (the Kubernetes source comes next).
SOURCES = ("aws",)
DEFAULT_HOME = ".cloudopt"
DEFAULT_REGION = "us-east-1"
DEFAULT_AWS_MAX_ATTEMPTS = 10
DEFAULT_PLAN_DEADLINE_HOURS = 12.0
DEFAULT_BACKFILL_PARTITIONS_PER_RUN = 14
DEFAULT_CLUSTER_TAG_KEY = "cloudopt:cluster"
EXTERNAL_ID_VAR = "CLOUDOPT_EXTERNAL_ID"
EXECUTOR_EXTERNAL_ID_VAR = "CLOUDOPT_EXECUTOR_EXTERNAL_ID"
#: The first daily partition: fixed, so that every deployment and every code location has one partition set.
START_DATE = "2026-01-01"

_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d{1,2}$")
_ROLE_NAME = re.compile(r"^[\w+=,.@-]{1,64}$")
_EXTERNAL_ID = re.compile(r"^[\w+=,.@:/-]{2,1224}$")
# An EC2 tag key: up to 128 characters, letters, digits, spaces and + - = . _ : / @ (no aws: prefix).
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_TAG_KEY = re.compile(r"^(?!aws:)[\w +=.:/@-]{1,128}$")


class SettingsError(ValueError):
    """A setting with a value the pipeline cannot use; the message names the variable and the fix."""


@dataclass(frozen=True)
class AwsSourceSettings:
    """Where the AWS source collects. The external id itself stays in ``CLOUDOPT_EXTERNAL_ID``."""

    regions: tuple[str, ...] = (DEFAULT_REGION,)
    accounts: tuple[str, ...] = ()
    assume_role: str | None = None
    external_id_set: bool = False
    endpoint_url: str | None = None
    profile: str | None = None
    max_attempts: int = DEFAULT_AWS_MAX_ATTEMPTS
    cluster_tag_key: str = DEFAULT_CLUSTER_TAG_KEY


@dataclass(frozen=True)
class ExecutorSettings:
    """The executor's own write role. Its external id itself stays in ``CLOUDOPT_EXECUTOR_EXTERNAL_ID``."""

    role: str | None = None
    external_id_set: bool = False
    store: str | None = None
    """``CLOUDOPT_EXECUTOR_STORE``: None for files under CLOUDOPT_HOME, else a postgresql:// or s3:// URL."""


@dataclass(frozen=True)
class Settings:
    """The settings every part of the pipeline shares, read once from the environment."""

    home: Path
    env: str = "demo"
    sources: tuple[str, ...] = ("aws",)
    aws: AwsSourceSettings = field(default_factory=AwsSourceSettings)
    executor: ExecutorSettings = field(default_factory=ExecutorSettings)
    plan_constraints: Path | None = None
    utilization_window_days: int | None = None
    batch_max_rows: int | None = None
    backfill_partitions_per_run: int = DEFAULT_BACKFILL_PARTITIONS_PER_RUN
    deployment_types: tuple[str, ...] | None = None  # None: every optimiser runs
    plan_deadline: timedelta = timedelta(hours=DEFAULT_PLAN_DEADLINE_HOURS)
    k8s_clusters_file: Path | None = None  # None: no Kubernetes collection
    lake_s3_url: str | None = None  # CLOUDOPT_LAKE_URL=s3://...; None: the local lake under home

    @property
    def lake_dir(self) -> Path:
        return self.home / "lake"

    @property
    def lake_url(self) -> str:
        """Where the lake lives: ``CLOUDOPT_LAKE_URL`` (``s3://bucket/prefix`` or a directory), else ``home/lake``."""
        return self.lake_s3_url or str(self.lake_dir)

    @property
    def warehouse_path(self) -> Path:
        return self.home / "warehouse.duckdb"

    @property
    def dagster_home(self) -> Path:
        return self.home / "dagster"

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Parse and validate every ``CLOUDOPT_*`` variable (and the AWS ones the pipeline uses) of ``environ``
    (default: the process environment); raises :class:`SettingsError` naming the variable and the fix."""
    env = os.environ if environ is None else environ
    if _get(env, "CLOUDOPT_START_DATE"):
        raise SettingsError(
            f"CLOUDOPT_START_DATE is no longer read: daily partitions start on {START_DATE} in every "
            "deployment (cloudopt_pipelines/settings.py START_DATE); unset CLOUDOPT_START_DATE"
        )
    aws = _aws_source(env)
    executor = ExecutorSettings(
        role=_role(env, "CLOUDOPT_EXECUTOR_ROLE", "CloudoptExecutor"),
        external_id_set=_external_id_set(env, EXECUTOR_EXTERNAL_ID_VAR),
        store=executor_store(env),
    )
    if executor.role is not None and executor.role == aws.assume_role:
        raise SettingsError(
            f"CLOUDOPT_EXECUTOR_ROLE and CLOUDOPT_ASSUME_ROLE name the same role ({executor.role}): the collector "
            "would collect with write permissions; give the executor its own role (docs/iam/executor-policy.json) "
            "and the collector the read-only one (docs/iam/collector-readonly-policy.json)"
        )
    return Settings(
        home=_home(env),
        env=_environment(env),
        sources=_sources(env),
        aws=aws,
        executor=executor,
        plan_constraints=plan_constraints(env),
        utilization_window_days=utilization_window_days(env),
        batch_max_rows=batch_max_rows(env),
        backfill_partitions_per_run=backfill_partitions_per_run(env),
        deployment_types=parse_deployment_types(env.get("CLOUDOPT_DEPLOYMENT_TYPES")),
        plan_deadline=parse_plan_deadline_hours(env.get("CLOUDOPT_PLAN_DEADLINE_HOURS", "")),
        k8s_clusters_file=k8s_clusters_file(env),
        lake_s3_url=lake_url(env),
    )


def executor_store(env: Mapping[str, str]) -> str | None:
    """``CLOUDOPT_EXECUTOR_STORE``: where approvals, the audit and exports live when several pods run the
    executor: ``postgresql://user@host:port/database`` (the password from ``PGPASSWORD`` or ``~/.pgpass``,
    never in the URL) or ``s3://bucket/prefix``; unset or ``file``: files under ``$CLOUDOPT_HOME``."""
    raw = _get(env, "CLOUDOPT_EXECUTOR_STORE")
    if raw is None or raw.strip().lower() == "file":
        return None
    value = raw.strip()
    scheme, sep, rest = value.partition("://")
    if scheme in ("postgresql", "postgres") and sep:
        if ":" in rest.rpartition("@")[0]:
            # The value holds a secret: never repeat it.
            raise SettingsError(
                "CLOUDOPT_EXECUTOR_STORE has a password in its URL (value not shown): it would end up in logs; "
                "give postgresql://user@host:port/database and the password in PGPASSWORD or ~/.pgpass"
            )
        return value
    if scheme == "s3" and sep and _BUCKET.match(rest.split("/", 1)[0]):
        return value.rstrip("/")
    raise SettingsError(
        f"CLOUDOPT_EXECUTOR_STORE={value!r} is none of: file (the default), postgresql://user@host:port/database, "
        "s3://bucket/prefix"
    )


def lake_url(env: Mapping[str, str]) -> str | None:
    """``CLOUDOPT_LAKE_URL``: ``s3://bucket/prefix`` puts the lake on S3 (endpoint, region and credentials
    from the usual AWS variables, ``AWS_ENDPOINT_URL_S3`` first); unset, the lake is ``$CLOUDOPT_HOME/lake``.
    A local directory is accepted too (``file://`` optional) and returned as an absolute path."""
    raw = _get(env, "CLOUDOPT_LAKE_URL")
    if raw is None:
        return None
    if raw.startswith("s3://"):
        bucket = raw.removeprefix("s3://").split("/", 1)[0]
        if not _BUCKET.match(bucket):
            raise SettingsError(
                f"CLOUDOPT_LAKE_URL={raw!r} has no valid bucket name ({bucket!r}): use s3://bucket/prefix with a "
                "bucket of 3-63 lower-case letters, digits, '.' and '-'"
            )
        return raw.rstrip("/")
    if "://" in raw and not raw.startswith("file://"):
        raise SettingsError(
            f"CLOUDOPT_LAKE_URL={raw!r} is neither s3://bucket/prefix nor a local directory: only S3 and local "
            "lakes are supported"
        )
    path = Path(raw.removeprefix("file://")).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise SettingsError(f"CLOUDOPT_LAKE_URL={raw!r} is a file: point it at a directory or s3://bucket/prefix")
    return str(path)


def parse_accounts(raw: str, variable: str = "CLOUDOPT_ACCOUNTS") -> list[str]:
    """A comma-separated list of AWS account ids, sorted and deduplicated, leading zeros kept."""
    accounts = _split(raw)
    bad = [a for a in accounts if not (len(a) == 12 and a.isdigit())]
    if bad:
        raise SettingsError(
            f"{variable} has {bad}, not 12-digit AWS account ids: give them comma-separated, "
            "keeping leading zeros (e.g. 012345678901,123456789012)"
        )
    return sorted(set(accounts))


def parse_deployment_types(raw: str | None) -> tuple[str, ...] | None:
    """``CLOUDOPT_DEPLOYMENT_TYPES``: comma-separated deployment types whose optimisers run; unset: all.

    Each name must be one an optimiser handles (checked against the registry); a list that names nothing
    (only commas or blanks) is refused, since it would silently run no optimiser.
    """
    if raw is None:
        return None
    from cloudopt_pipelines.optimizers.base import UnknownDeploymentTypeError, select_optimizers

    types = tuple(dict.fromkeys(t.strip().lower() for t in raw.split(",") if t.strip()))
    if not types:
        raise SettingsError(
            f"CLOUDOPT_DEPLOYMENT_TYPES={raw!r} names no deployment type; unset it to run every optimiser, "
            "or list some, e.g. 'standalone'"
        )
    try:
        select_optimizers(types)
    except UnknownDeploymentTypeError as exc:
        raise SettingsError(str(exc)) from None
    return types


def parse_plan_deadline_hours(raw: str) -> timedelta:
    """``CLOUDOPT_PLAN_DEADLINE_HOURS``: how long after the end of day D the plan of D waits for missing
    accounts (hours, 0 to 744; empty: 12)."""
    if not raw.strip():
        return timedelta(hours=DEFAULT_PLAN_DEADLINE_HOURS)
    try:
        hours = float(raw)
    except ValueError:
        hours = -1.0
    if not 0 <= hours <= 24 * 31:
        raise SettingsError(
            f"CLOUDOPT_PLAN_DEADLINE_HOURS={raw!r} is not a number of hours between 0 and 744; "
            f"it is how long after the end of a UTC day its plan waits for missing accounts "
            f"(default {DEFAULT_PLAN_DEADLINE_HOURS:g})"
        )
    return timedelta(hours=hours)


def k8s_clusters_file(environ: Mapping[str, str] | None = None) -> Path | None:
    """``CLOUDOPT_K8S_CLUSTERS``: the Kubernetes clusters file (docs/kubernetes.md); unset: no Kubernetes
    collection. Its content is validated when the definitions are built (``sources/kubernetes_config.py``)."""
    value = _get(os.environ if environ is None else environ, "CLOUDOPT_K8S_CLUSTERS")
    return None if value is None else Path(value).expanduser()


def plan_constraints(environ: Mapping[str, str] | None = None) -> Path | None:
    """``CLOUDOPT_PLAN_CONSTRAINTS``: the portfolio plan's constraints file; unset: ``config/constraints.yaml``."""
    value = _get(os.environ if environ is None else environ, "CLOUDOPT_PLAN_CONSTRAINTS")
    return None if value is None else Path(value).expanduser()


def utilization_window_days(environ: Mapping[str, str] | None = None) -> int | None:
    """``CLOUDOPT_UTILIZATION_WINDOW_DAYS``: days of the ``utilization_window`` model; unset: its header's."""
    raw = _get(os.environ if environ is None else environ, "CLOUDOPT_UTILIZATION_WINDOW_DAYS")
    if raw is None:
        return None
    days = _whole_number(raw)
    if days is None or not 1 <= days <= 366:
        raise SettingsError(
            f"CLOUDOPT_UTILIZATION_WINDOW_DAYS={raw!r} is not a whole number of days from 1 to 366: "
            "set it to e.g. 7, 14, 32 or 93, or unset it for the model's 14"
        )
    return days


def batch_max_rows(environ: Mapping[str, str] | None = None) -> int | None:
    """``CLOUDOPT_BATCH_MAX_ROWS``: input rows per batch statement; unset: the runner's default."""
    return _positive_count(environ, "CLOUDOPT_BATCH_MAX_ROWS", "rows", "64000000 (about 40 bytes of memory a row)")


def backfill_partitions_per_run(environ: Mapping[str, str] | None = None) -> int:
    """``CLOUDOPT_BACKFILL_PARTITIONS_PER_RUN``: the most account x day partitions one backfill run of the
    collection and feature assets materialises (Dagster's ``BackfillPolicy.multi_run``); default 14."""
    count = _positive_count(
        environ,
        "CLOUDOPT_BACKFILL_PARTITIONS_PER_RUN",
        "partitions",
        f"{DEFAULT_BACKFILL_PARTITIONS_PER_RUN} (1: a run per partition)",
    )
    return DEFAULT_BACKFILL_PARTITIONS_PER_RUN if count is None else count


def _positive_count(environ: Mapping[str, str] | None, name: str, unit: str, example: str) -> int | None:
    """A positive whole number from ``name``; None when unset; anything else refused naming the variable."""
    raw = _get(os.environ if environ is None else environ, name)
    if raw is None:
        return None
    count = _whole_number(raw)
    if count is None or count < 1:
        raise SettingsError(
            f"{name}={raw!r} is not a positive whole number of {unit}: set it to e.g. {example}, "
            "or unset it for the default"
        )
    return count


# ---------------------------------------------------------------------------------------- parsers


def _get(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name, "").strip()
    return value or None


def _split(raw: str) -> list[str]:
    return [part.strip() for part in raw.split(",") if part.strip()]


def _whole_number(raw: str) -> int | None:
    try:
        return int(raw.replace("_", ""))
    except ValueError:
        return None


def _home(env: Mapping[str, str]) -> Path:
    home = Path(_get(env, "CLOUDOPT_HOME") or DEFAULT_HOME).expanduser().resolve()
    if home.exists() and not home.is_dir():
        raise SettingsError(
            f"CLOUDOPT_HOME={str(home)!r} is a file: point CLOUDOPT_HOME at a directory (it holds the lake, "
            "the warehouse and the Dagster instance)"
        )
    return home


def _environment(env: Mapping[str, str]) -> str:
    value = (_get(env, "CLOUDOPT_ENV") or "demo").lower()
    if value not in ENVIRONMENTS:
        raise SettingsError(
            f"CLOUDOPT_ENV={value!r} is not one of {', '.join(ENVIRONMENTS)}: "
            "use 'demo' for the embedded data or 'aws' for real accounts"
        )
    return value


def _sources(env: Mapping[str, str]) -> tuple[str, ...]:
    raw = _get(env, "CLOUDOPT_SOURCES")
    names = [s.lower() for s in _split(raw)] if raw else ["aws"]
    unknown = [s for s in names if s not in SOURCES]
    if unknown or not names:
        raise SettingsError(
            f"CLOUDOPT_SOURCES={raw!r} names {unknown or 'no source'}: list one or more of "
            f"{', '.join(SOURCES)}, comma-separated (default: aws)"
        )
    return tuple(dict.fromkeys(names))


def _aws_source(env: Mapping[str, str]) -> AwsSourceSettings:
    regions = _split(_get(env, "CLOUDOPT_REGIONS") or "")
    bad = [r for r in regions if not _REGION.match(r)]
    if bad:
        raise SettingsError(
            f"CLOUDOPT_REGIONS has {bad}, not AWS region names: give them comma-separated, e.g. us-east-1,eu-west-1"
        )
    fallback = _get(env, "AWS_REGION") or _get(env, "AWS_DEFAULT_REGION") or DEFAULT_REGION
    attempts_raw = _get(env, "AWS_MAX_ATTEMPTS")
    attempts = DEFAULT_AWS_MAX_ATTEMPTS if attempts_raw is None else _whole_number(attempts_raw)
    if attempts is None or attempts < 1:
        raise SettingsError(
            f"AWS_MAX_ATTEMPTS={attempts_raw!r} is not a positive whole number of attempts: set it to e.g. 10"
        )
    return AwsSourceSettings(
        regions=tuple(dict.fromkeys(regions)) or (fallback,),
        accounts=tuple(parse_accounts(_get(env, "CLOUDOPT_ACCOUNTS") or "")),
        assume_role=_role(env, "CLOUDOPT_ASSUME_ROLE", "CloudoptReadOnly"),
        external_id_set=_external_id_set(env, EXTERNAL_ID_VAR),
        endpoint_url=_get(env, "AWS_ENDPOINT_URL"),
        profile=_get(env, "AWS_PROFILE"),
        max_attempts=attempts,
        cluster_tag_key=parse_cluster_tag_key(_get(env, "CLOUDOPT_CLUSTER_TAG_KEY")),
    )


def parse_cluster_tag_key(raw: str | None) -> str:
    """``CLOUDOPT_CLUSTER_TAG_KEY``: the EC2 tag whose value names the custom cluster an instance belongs to
    (default ``cloudopt:cluster``); its members are sized as one group, never as standalone instances."""
    if raw is None or not raw.strip():
        return DEFAULT_CLUSTER_TAG_KEY
    key = raw.strip()
    if not _TAG_KEY.match(key):
        raise SettingsError(
            f"CLOUDOPT_CLUSTER_TAG_KEY={raw!r} is not an EC2 tag key one can set (up to 128 letters, digits, "
            f"spaces and + - = . _ : / @, not starting with aws:); use e.g. {DEFAULT_CLUSTER_TAG_KEY}"
        )
    return key


def _role(env: Mapping[str, str], variable: str, example: str) -> str | None:
    role = _get(env, variable)
    if role is None:
        return None
    if role.startswith("arn:"):
        ok = ":role/" in role
    elif "{account_id}" in role:
        ok = False  # a template must be a whole ARN
    else:
        ok = bool(_ROLE_NAME.match(role))
    if not ok:
        raise SettingsError(
            f"{variable}={role!r} is neither an IAM role name nor a role ARN: set it to a name such as "
            f"'{example}' or an ARN template such as 'arn:aws:iam::{{account_id}}:role/{example}'"
        )
    return role


def _external_id_set(env: Mapping[str, str], variable: str) -> bool:
    value = _get(env, variable)
    if value is None:
        return False
    if not _EXTERNAL_ID.match(value):
        # The value is a secret: never repeat it.
        raise SettingsError(
            f"{variable} is not a valid STS external id (value not shown): use 2 to 1224 letters, digits "
            "or any of + = , . @ : / - _, as the role's trust policy names it"
        )
    return True
