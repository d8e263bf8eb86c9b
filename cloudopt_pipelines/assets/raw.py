"""Raw stage: the price catalogue, and each account's inventory and 5-minute metrics per day.

A run materialises one account x day, or a backfill run's range of them (the collection assets share
the feature models' backfill policy, ``CLOUDOPT_BACKFILL_PARTITIONS_PER_RUN``): each partition is
collected and written atomically in turn, so a run that fails part way leaves every partition either
whole or as it was, and its retry collects them all again.
"""

from collections.abc import Callable
from datetime import date

import dagster as dg
import pyarrow as pa

from cloudopt_pipelines.assets.metadata import batch_metadata, json_value, partition_label
from cloudopt_pipelines.catalog.prices import build_price_catalog, build_reserved_prices
from cloudopt_pipelines.partitions import account_daily_partitions, account_days_of_run
from cloudopt_pipelines.resources.sources import SourceResource
from cloudopt_pipelines.resources.storage import LakeResource
from cloudopt_pipelines.sources.base import Collected

RAW_PREFIX = "raw"


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            [RAW_PREFIX, "price_catalog"],
            description="Instance specs with on-demand and spot prices per region (USD/hour); "
            "derived prices are flagged is_estimate / spot_is_estimate.",
            kinds={"parquet"},
            group_name="raw",
        ),
        dg.AssetSpec(
            [RAW_PREFIX, "reserved_prices"],
            description="Reserved-instance effective hourly rates per region, type, term and payment option.",
            kinds={"parquet"},
            group_name="raw",
        ),
    ],
)
def price_catalog(context: dg.AssetExecutionContext, lake: LakeResource):
    """Build the price catalogue and the reserved-rate table from the embedded public price files."""
    store = lake.get_lake()
    catalog = build_price_catalog()
    reserved = build_reserved_prices()
    store.write("price_catalog", catalog)
    store.write("reserved_prices", reserved)
    regions = len(set(catalog.column("region").to_pylist()))
    estimates = sum(catalog.column("is_estimate").to_pylist())
    yield dg.MaterializeResult(
        asset_key=[RAW_PREFIX, "price_catalog"],
        metadata={"dagster/row_count": catalog.num_rows, "regions": regions, "estimated_ondemand_rows": estimates},
    )
    yield dg.MaterializeResult(
        asset_key=[RAW_PREFIX, "reserved_prices"], metadata={"dagster/row_count": reserved.num_rows}
    )


@dg.asset(
    key=[RAW_PREFIX, "resources"],
    partitions_def=account_daily_partitions,
    kinds={"parquet", "aws"},
    group_name="raw",
)
def resources(context: dg.AssetExecutionContext, source: SourceResource, lake: LakeResource) -> dg.MaterializeResult:
    """Inventory of one account on one day: EC2 instances classified by deployment type, Auto Scaling
    groups, EBS volumes, Elastic IPs, ECS, EMR and EKS clusters."""
    collector = source.get_collector()
    preview = ["resource_id", "resource_kind", "deployment_type", "instance_type", "env"]
    return collect_and_store(context, lake, "resources", collector.collect_inventory, preview)


@dg.asset(
    key=[RAW_PREFIX, "utilization_5m"],
    partitions_def=account_daily_partitions,
    kinds={"parquet", "aws"},
    group_name="raw",
)
def utilization_5m(
    context: dg.AssetExecutionContext, source: SourceResource, lake: LakeResource
) -> dg.MaterializeResult:
    """5-minute CPU (average and maximum), memory and network samples of one account's instances
    on one day, as the source reported them (gaps and duplicates kept for the features stage)."""
    return collect_and_store(context, lake, "utilization_5m", source.get_collector().collect_metrics)


@dg.asset(
    key=[RAW_PREFIX, "cluster_metrics_5m"],
    partitions_def=account_daily_partitions,
    kinds={"parquet", "aws"},
    group_name="raw",
)
def cluster_metrics_5m(
    context: dg.AssetExecutionContext, source: SourceResource, lake: LakeResource
) -> dg.MaterializeResult:
    """5-minute CloudWatch series of one account's ECS clusters and services (CPU and memory
    utilisation and reservation) and EMR clusters (YARN memory, pending containers, running apps,
    node counts, idle) on one day, long format, as the source reported them."""
    return collect_and_store(context, lake, "cluster_metrics_5m", source.get_collector().collect_cluster_metrics)


def collect_and_store(
    context: dg.AssetExecutionContext,
    lake: LakeResource,
    table: str,
    collect: Callable[[str, date], Collected],
    preview_columns: list[str] | None = None,
) -> dg.MaterializeResult:
    """Collect and write every partition of the run in turn, each atomically. One partition is described
    in full (rows, path, preview, the collector's metadata); a range by its totals, as Dagster records
    the same metadata on each partition of it, with each partition's collector metadata by key."""
    store = lake.get_lake()
    partitions = account_days_of_run(context)
    if len(partitions) == 1:
        account_id, day = partitions[0]
        collected = collect(account_id, day)
        path = store.write(table, collected.table, account_id, day)
        shown = _preview(collected.table, preview_columns) if preview_columns else None
        preview = {"preview": dg.MetadataValue.md(shown)} if shown else {}
        return dg.MaterializeResult(
            metadata={
                "dagster/row_count": collected.table.num_rows,
                "path": dg.MetadataValue.path(str(path)),
                **preview,
                **_flat(collected.metadata),
            }
        )
    rows: list[int] = []
    collector: dict[str, dict[str, object]] = {}
    for index, (account_id, day) in enumerate(partitions):
        label = partition_label((account_id, day))
        try:
            collected = collect(account_id, day)
            store.write(table, collected.table, account_id, day)
        except Exception as exc:
            exc.add_note(
                f"while collecting {table} for {label}, partition {index + 1} of the run's {len(partitions)}: "
                f"the {index} before it are written, it and the rest are as they were; re-running the range "
                "collects them all"
            )
            raise
        rows.append(collected.table.num_rows)
        collector[label] = {name: json_value(value) for name, value in _flat(collected.metadata).items()}
        context.log.info(f"{table} {label}: {collected.table.num_rows} rows written")
    return dg.MaterializeResult(
        metadata={**batch_metadata(partitions, rows), "batch/collector": dg.MetadataValue.json(collector)}
    )


def _preview(table: pa.Table, columns: list[str], rows: int = 10) -> str:
    if table.num_rows == 0:
        return "_no rows_"
    return table.select(columns).slice(0, rows).to_pandas().to_markdown(index=False)


def _flat(metadata: dict) -> dict:
    """Collector metadata as Dagster metadata: numbers stay numbers (the UI plots them), mappings of
    numbers one number per key, lists text or tables (``assets/metadata.py``)."""
    from cloudopt_pipelines.assets.metadata import flat_metadata

    return flat_metadata(metadata)
