"""The persistent Dagster instance under ``$CLOUDOPT_HOME/dagster``: kept apart from the definitions so that
read-only commands (``cloudopt accounts``) open it without importing the assets."""

import os
from collections.abc import Mapping

import dagster as dg

from cloudopt_pipelines.settings import Settings

PREVIOUS_INSTANCE_YAML = """\
# The Dagster instance of cloudopt_pipelines (SQLite storage under this folder).
concurrency:
  pools:
    # Writers of the DuckDB warehouse (pool "duckdb_warehouse") run one at a time.
    default_limit: 1
telemetry:
  enabled: false
"""
INSTANCE_YAML = """\
# The Dagster instance of cloudopt_pipelines (SQLite storage under this folder).
concurrency:
  pools:
    # Writers of the DuckDB warehouse (pool "duckdb_warehouse") run one at a time.
    default_limit: 1
run_monitoring:
  # With the daemon (make dev): runs stuck before starting are failed, and the pool slots of
  # finished runs are freed. cloudopt run also fails runs whose process is gone.
  enabled: true
  start_timeout_seconds: 300
  free_slots_after_run_end_seconds: 60
telemetry:
  enabled: false
"""


def ensure_instance(settings: Settings) -> dg.DagsterInstance:
    """The persistent Dagster instance under ``$CLOUDOPT_HOME/dagster`` (created on first use)."""
    home = settings.dagster_home
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    # The file as an earlier version wrote it is upgraded; one edited by hand is left as it is.
    if not config.exists() or config.read_text() == PREVIOUS_INSTANCE_YAML:
        config.write_text(INSTANCE_YAML)
    return dg.DagsterInstance.from_config(str(home))


RUN_EXECUTOR_VAR = "CLOUDOPT_RUN_EXECUTOR"
RUN_EXECUTORS = ("multiprocess", "k8s_job")


def run_executor(environ: Mapping[str, str] | None = None) -> dg.ExecutorDefinition | None:
    """The executor of every job, from ``CLOUDOPT_RUN_EXECUTOR``: unset or ``multiprocess``, Dagster's default
    (each step in a process of the run's machine or pod); ``k8s_job``, each step a Kubernetes job of its own
    (``dagster_k8s.k8s_job_executor``, docs/deploy.md), which needs the ``k8s`` extra installed."""
    value = (os.environ if environ is None else environ).get(RUN_EXECUTOR_VAR, "").strip().lower()
    if value in ("", "multiprocess"):
        return None
    if value != "k8s_job":
        raise ValueError(
            f"{RUN_EXECUTOR_VAR}={value!r} is not one of {', '.join(RUN_EXECUTORS)}: unset it for Dagster's "
            "default, or set k8s_job on a Kubernetes deployment (docs/deploy.md)"
        )
    try:
        from dagster_k8s import k8s_job_executor
    except ImportError:
        raise ValueError(
            f"{RUN_EXECUTOR_VAR}=k8s_job needs dagster-k8s: install the package with its k8s extra "
            "(pip install 'cloudopt-pipelines[k8s]'), as the Dockerfile does"
        ) from None
    return k8s_job_executor
