"""Schemas of the source tables the models may read even before their collector writes them."""

import pyarrow as pa

from cloudopt_pipelines.storage.schemas import TABLES


def source_schemas() -> dict[str, pa.Schema]:
    """Every lake table's schema (storage/schemas.py): an optional source that is absent is read as
    an empty table of its schema, so stg_cluster_metrics_5m runs before any cluster series exist."""
    return dict(TABLES)
