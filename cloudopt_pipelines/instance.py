"""The persistent Dagster instance under ``$CLOUDOPT_HOME/dagster``: kept apart from the definitions so that
read-only commands (``cloudopt accounts``) open it without importing the assets."""

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
