"""Raw stage: the price catalogue, and each account's inventory and 5-minute metrics per day."""

from datetime import date

import dagster as dg
import pyarrow as pa

from cloudopt_pipelines.catalog.prices import build_price_catalog, build_reserved_prices
from cloudopt_pipelines.partitions import account_daily_partitions, split_account_day
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
    account_id, day = split_account_day(context)
    collected = source.get_collector().collect_inventory(account_id, day)
    preview = _preview(collected.table, ["resource_id", "resource_kind", "deployment_type", "instance_type", "env"])
    return _store(lake, "resources", collected, account_id, day, preview=dg.MetadataValue.md(preview))


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
    account_id, day = split_account_day(context)
    return _store(lake, "utilization_5m", source.get_collector().collect_metrics(account_id, day), account_id, day)


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
    account_id, day = split_account_day(context)
    collected = source.get_collector().collect_cluster_metrics(account_id, day)
    return _store(lake, "cluster_metrics_5m", collected, account_id, day)


def _store(
    lake: LakeResource, table: str, collected: Collected, account_id: str, day: date, **extra: object
) -> dg.MaterializeResult:
    """Write one collected partition to the lake and describe it for the UI."""
    path = lake.get_lake().write(table, collected.table, account_id, day)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": collected.table.num_rows,
            "path": dg.MetadataValue.path(str(path)),
            **extra,
            **_flat(collected.metadata),
        }
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
