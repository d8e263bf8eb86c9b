"""The persistent Dagster instance under ``$CLOUDOPT_HOME/dagster``: kept apart from the definitions so that
read-only commands (``cloudopt accounts``) open it without importing the assets."""

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

import dagster as dg

from cloudopt_pipelines.settings import Settings

if TYPE_CHECKING:
    from dagster._core.executor.base import Executor
    from dagster._core.executor.init import InitExecutorContext

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


PRELOADED_MODULES = ("cloudopt_pipelines.step_preload",)
"""What the step processes' forkserver imports once, so that no step pays for importing the pipeline and
parsing its SQL models."""


def _forkserver_by_default(init_context: "InitExecutorContext") -> "Executor":
    """Dagster's default executor, except that a multiprocess run whose config names no start method forks
    its step processes from a forkserver that has imported the pipeline, instead of spawning a fresh
    interpreter per step (which imports Dagster and the definitions again, a few seconds of CPU a step)."""
    from dagster._core.definitions.executor_definition import (
        _core_in_process_executor_creation,
        _core_multiprocess_executor_creation,
    )

    config = init_context.executor_config
    if "in_process" in config:
        return _core_in_process_executor_creation(config["in_process"])
    multiprocess = dict(config["multiprocess"])
    if not multiprocess.get("start_method"):
        multiprocess["start_method"] = {"forkserver": {"preload_modules": list(PRELOADED_MODULES)}}
    return _core_multiprocess_executor_creation(multiprocess)


def multi_or_forkserver_executor() -> dg.ExecutorDefinition:
    """Dagster's ``multi_or_in_process_executor`` (same name, same config: ``multiprocess`` or ``in_process``),
    whose multiprocess mode starts steps with ``forkserver`` unless the run config sets ``start_method``
    (``{spawn: {}}`` gives a fresh interpreter per step, Dagster's own default)."""
    default = dg.multi_or_in_process_executor
    return dg.ExecutorDefinition(
        name=default.name,
        config_schema=default.config_schema,
        requirements=default._requirements_fn,
        executor_creation_fn=_forkserver_by_default,
        description=_forkserver_by_default.__doc__,
    )


def run_executor(environ: Mapping[str, str] | None = None) -> dg.ExecutorDefinition:
    """The executor of every job, from ``CLOUDOPT_RUN_EXECUTOR``: unset or ``multiprocess``, Dagster's default
    (each step in a process of the run's machine or pod) with step processes forked from a forkserver that
    has imported the pipeline (``multi_or_forkserver_executor``); ``k8s_job``, each step a Kubernetes job of
    its own (``dagster_k8s.k8s_job_executor``, docs/deploy.md), which needs the ``k8s`` extra installed."""
    value = (os.environ if environ is None else environ).get(RUN_EXECUTOR_VAR, "").strip().lower()
    if value in ("", "multiprocess"):
        return multi_or_forkserver_executor()
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
