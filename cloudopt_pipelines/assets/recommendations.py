"""Recommendations stage: every option for every standalone instance and orphaned resource, per account x day."""

from datetime import date, timedelta

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from cloudopt_pipelines.optimizers.commitments import ReservedRates
from cloudopt_pipelines.optimizers.sizing import DEFAULT_RISK_SETTING, RISK_SETTINGS, Catalog
from cloudopt_pipelines.optimizers.standalone import (
    RECOMMENDATIONS,
    STANDALONE_FEATURE_INPUTS,
    StandaloneConfig,
    recommend_account,
    recommendations_summary,
)
from cloudopt_pipelines.partitions import account_daily_partitions, split_account_day
from cloudopt_pipelines.resources.storage import LakeResource
from cloudopt_pipelines.storage.lake import Lake

RECOMMENDATIONS_PREFIX = "recommendations"


class StandaloneRecommendationsConfig(dg.Config):
    """Run configuration of the standalone optimiser (the defaults are the issue's defaults)."""

    window_days: int = Field(default=14, description="Trailing days of stg_utilization_5m to read.")
    risk_setting: str = Field(
        default=DEFAULT_RISK_SETTING, description=f"One of {', '.join(RISK_SETTINGS)} (see docs/standalone.md)."
    )
    environment_tag_keys: list[str] = Field(
        default=["env", "environment", "Environment"], description="Tags that say production or not."
    )
    spot_workload_values: list[str] = Field(
        default=["stateless", "fault-tolerant"], description="Values of tag 'workload' that allow Spot."
    )


def read_window(
    lake: Lake, account_id: str, day: date, window_days: int, table: str = "stg_utilization_5m"
) -> tuple[pa.Table, list[date]]:
    """The partitions of ``table`` in the trailing window that exist, and which days they are."""
    tables, days = [], []
    for offset in range(window_days - 1, -1, -1):
        d = day - timedelta(days=offset)
        if lake.partition_file(table, account_id, d) is not None:
            tables.append(lake.read(table, account_id, d))
            days.append(d)
    if not tables:
        return pa.table({"resource_id": pa.array([], pa.string())}), days
    common = [c for c in tables[0].column_names if all(c in t.column_names for t in tables)]
    return pa.concat_tables([t.select(common) for t in tables], promote_options="permissive"), days


@dg.asset(
    key=[RECOMMENDATIONS_PREFIX, "recommendations"],
    partitions_def=account_daily_partitions,
    deps=[
        *(dg.AssetKey(["features", name]) for name in STANDALONE_FEATURE_INPUTS),
        dg.AssetKey(["raw", "resources"]),
        dg.AssetKey(["raw", "price_catalog"]),
        dg.AssetKey(["raw", "reserved_prices"]),
    ],
    kinds={"python", "parquet"},
    group_name="recommendations",
)
def recommendations(
    context: dg.AssetExecutionContext, config: StandaloneRecommendationsConfig, lake: LakeResource
) -> dg.MaterializeResult:
    """Right-sizing, schedules, Spot, idle and commitment options for every standalone EC2 instance of
    one account (never group or cluster members), plus unattached EBS volumes and idle Elastic IPs.
    One row per (resource, option), ranked by monthly cost; reads the feature tables of
    STANDALONE_FEATURE_INPUTS that exist in the lake (missing days lower the confidence)."""
    account_id, day = split_account_day(context)
    store = lake.get_lake()
    features, found = {}, {}
    for name, window in STANDALONE_FEATURE_INPUTS.items():
        features[name], found[name] = read_window(store, account_id, day, window, name)
    days = found["stg_utilization_5m"]
    result = recommend_account(
        account_id,
        day,
        store.read("resources", account_id, day),
        features,
        Catalog(store.read("price_catalog")),
        ReservedRates(store.read("reserved_prices")),
        StandaloneConfig(
            risk_setting=config.risk_setting,
            window_days=config.window_days,
            environment_tag_keys=tuple(config.environment_tag_keys),
            spot_workload_values=tuple(config.spot_workload_values),
        ),
    )
    path = store.write("recommendations", result.table, account_id, day, schema=RECOMMENDATIONS)
    summary = recommendations_summary(result.table)
    best = result.table.filter(pc.equal(result.table["is_best"], True)) if result.table.num_rows else None
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": result.table.num_rows,
            "path": dg.MetadataValue.path(str(path)),
            "window_days_found": len(days),
            "window_days_wanted": config.window_days,
            "resources": summary["resources"],
            "best_monthly_savings_usd": summary["best_monthly_savings_usd"],
            "orphan_monthly_savings_usd": summary.get("orphan_monthly_savings_usd", 0.0),
            "commitments": dg.MetadataValue.json(result.commitments_table()),
            "preview": dg.MetadataValue.md(
                _preview(best, ["resource_id", "finding", "option_name", "monthly_savings_usd", "performance_risk"])
            ),
        }
    )


def _preview(table: pa.Table | None, columns: list[str], rows: int = 10) -> str:
    if table is None or table.num_rows == 0:
        return "_no rows_"
    top = table.sort_by([("monthly_savings_usd", "descending")]).select(columns).slice(0, rows)
    return top.to_pandas().to_markdown(index=False)
