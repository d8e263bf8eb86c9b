"""Schemas of the source tables the models may read even before their collector writes them."""

from __future__ import annotations

import pyarrow as pa

from cloudopt_pipelines.storage.schemas import TABLES, TS

# The long table of cluster-level series the AWS collector writes (ECS clusters and services, EMR
# clusters, Container Insights pods). storage/schemas.py is its home once it lands there; this copy
# is used until then, so that stg_cluster_metrics_5m reads an absent partition as an empty table.
CLUSTER_METRICS_5M = pa.schema(
    [
        ("account_id", pa.string()),
        ("date", pa.date32()),
        ("resource_id", pa.string()),
        ("ts", TS),
        ("namespace", pa.string()),
        ("metric", pa.string()),
        ("stat", pa.string()),
        ("value", pa.float64()),
        ("source", pa.string()),
    ]
)


def source_schemas() -> dict[str, pa.Schema]:
    """Every source table's schema: storage/schemas.py's, plus the ones not there yet."""
    schemas = {"cluster_metrics_5m": CLUSTER_METRICS_5M}
    schemas.update(TABLES)
    return schemas
