"""Schemas of the source tables the models may read even before their collector writes them."""

from pathlib import Path

import pyarrow as pa

from cloudopt_pipelines.storage.schemas import TABLES


def source_schemas() -> dict[str, pa.Schema]:
    """Every lake table's schema (storage/schemas.py): an optional source that is absent is read as
    an empty table of its schema, so stg_cluster_metrics_5m runs before any cluster series exist."""
    return dict(TABLES)


# The model files of the checkout (the assets read the same folder through resources/storage.py).
MODELS_DIR = Path(__file__).resolve().parents[2] / "dbt_like_sql"

# How the source tables are partitioned (the assets' SOURCE_TABLES says the same with their keys), for
# callers that run the models without Dagster, such as the backtest.
SOURCE_PARTITIONING: dict[str, str] = {
    "resources": "account_date",
    "utilization_5m": "account_date",
    "cluster_metrics_5m": "account_date",
    "k8s_workloads": "account_date",
    "k8s_container_usage": "account_date",
    "price_catalog": "none",
    "reserved_prices": "none",
}
