"""Recommendations stage: one asset per deployment-type optimiser (``recommendations/<name>``), per account x day.

Every asset is made by :func:`build_recommendation_asset` from the optimiser's declaration: its feature
inputs become dependencies (a trailing window through a ``TimeWindowPartitionMapping``), its pydantic
settings model becomes the run configuration, and its lake table is ``recommendations_<name>``. The
warehouse's ``recommendations`` view is the union of all of them. An optimiser that declares
``reads_previous_day`` also depends on its own asset's partition of the same account the day before
(:func:`previous_day_mapping`; the first day has none) and gets those rows as ``inputs.previous``.
"""

from collections.abc import Sequence
from datetime import date, timedelta
from typing import Any

import dagster as dg
import pyarrow as pa
from pydantic import create_model

from cloudopt_pipelines.assets.features import window_mapping
from cloudopt_pipelines.assets.metadata import flat_metadata, recommendations_preview
from cloudopt_pipelines.optimizers.base import DeploymentOptimizer, FeatureInput, OptimizerInputs
from cloudopt_pipelines.optimizers.commitments import ReservedRates
from cloudopt_pipelines.optimizers.sizing import Catalog
from cloudopt_pipelines.partitions import account_daily_partitions, split_account_day
from cloudopt_pipelines.resources.storage import LakeResource
from cloudopt_pipelines.storage.lake import Lake
from cloudopt_pipelines.storage.schemas import RECOMMENDATIONS

RECOMMENDATIONS_PREFIX = "recommendations"
DEPLOYMENT_TYPE_TAG = "cloudopt/deployment_type"
RESOURCES_KEY = dg.AssetKey(["raw", "resources"])
PRICE_KEYS = (dg.AssetKey(["raw", "price_catalog"]), dg.AssetKey(["raw", "reserved_prices"]))


def recommendation_key(optimizer: DeploymentOptimizer) -> dg.AssetKey:
    return dg.AssetKey([RECOMMENDATIONS_PREFIX, optimizer.name])


def settings_config_class(optimizer: DeploymentOptimizer) -> type[dg.Config]:
    """The run configuration of an optimiser's asset, derived field by field from its settings model."""
    settings = optimizer.settings_type
    fields: dict[str, Any] = {name: (f.annotation, f) for name, f in settings.model_fields.items()}
    camel = "".join(part.capitalize() for part in optimizer.name.split("_"))
    return create_model(
        f"{camel}RecommendationsConfig",
        __base__=dg.Config,
        __doc__=f"Run configuration of the {optimizer.name} optimiser (from {settings.__name__}).",
        **fields,
    )


def previous_day_mapping() -> dg.MultiPartitionMapping:
    """account x date -> the same account's partition of the day before (none for the first day)."""
    return dg.MultiPartitionMapping(
        {
            "account": dg.DimensionPartitionMapping("account", dg.IdentityPartitionMapping()),
            "date": dg.DimensionPartitionMapping(
                "date",
                dg.TimeWindowPartitionMapping(
                    start_offset=-1, end_offset=-1, allow_nonexistent_upstream_partitions=True
                ),
            ),
        }
    )


def read_previous_day(lake: Lake, table: str, account_id: str, day: date) -> pa.Table | None:
    """This optimiser's rows of the day before, or None when that partition was never written."""
    previous = day - timedelta(days=1)
    if lake.partition_file(table, account_id, previous) is None:
        return None
    return lake.read(table, account_id, previous)


def read_inputs(lake: Lake, feature_inputs: Sequence[FeatureInput], account_id: str, day: date):
    """Each declared input's rows over its window (the days that exist), and which days those were."""
    tables: dict[str, pa.Table] = {}
    days_found: dict[str, tuple[date, ...]] = {}
    for feature in feature_inputs:
        parts, days = [], []
        for offset in range(feature.window_days - 1, -1, -1):
            d = day - timedelta(days=offset)
            if lake.partition_file(feature.table, account_id, d) is not None:
                parts.append(lake.read(feature.table, account_id, d))
                days.append(d)
        if parts:
            common = [c for c in parts[0].column_names if all(c in t.column_names for t in parts)]
            tables[feature.table] = pa.concat_tables([t.select(common) for t in parts], promote_options="permissive")
        else:
            tables[feature.table] = pa.table({"resource_id": pa.array([], pa.string())})
        days_found[feature.table] = tuple(days)
    return tables, days_found


def build_recommendation_asset(optimizer: DeploymentOptimizer) -> dg.AssetsDefinition:
    """The ``recommendations/<name>`` asset of one optimiser."""
    config_class = settings_config_class(optimizer)
    deployment_type = optimizer.deployment_types[0] if len(optimizer.deployment_types) == 1 else "clusters"
    deps = [dg.AssetDep(RESOURCES_KEY), *(dg.AssetDep(k) for k in PRICE_KEYS)]
    for feature in optimizer.inputs:
        key = dg.AssetKey(list(feature.asset_key_path))
        mapping = window_mapping(feature.window_days) if feature.window_days > 1 else None
        deps.append(dg.AssetDep(key, partition_mapping=mapping))
    if optimizer.reads_previous_day:
        deps.append(dg.AssetDep(recommendation_key(optimizer), partition_mapping=previous_day_mapping()))
    windows = ", ".join(f"{f.table} ({f.window_days} d)" for f in optimizer.inputs)
    previous_note = (
        " Reads its own partition of the day before (the same account), to keep yesterday's best option "
        "unless today's differs by more than the optimiser's margin; an asset backfill runs the days in order."
        if optimizer.reads_previous_day
        else ""
    )

    @dg.asset(
        name=optimizer.name,
        key_prefix=[RECOMMENDATIONS_PREFIX],
        partitions_def=account_daily_partitions,
        deps=deps,
        kinds={"python", "parquet"},
        group_name=RECOMMENDATIONS_PREFIX,
        tags={DEPLOYMENT_TYPE_TAG: deployment_type},
        description=(
            f"{optimizer.description} One row per (resource, option), ranked by monthly cost; lake table "
            f"{optimizer.table_name}. Reads raw/resources and {windows} (missing days lower the confidence)."
            f"{previous_note}"
        ),
    )
    def _asset(context: dg.AssetExecutionContext, config: config_class, lake: LakeResource) -> dg.MaterializeResult:  # type: ignore[valid-type]
        account_id, day = split_account_day(context)
        store = lake.get_lake()
        tables, days_found = read_inputs(store, optimizer.inputs, account_id, day)
        previous = (
            read_previous_day(store, optimizer.table_name, account_id, day) if optimizer.reads_previous_day else None
        )
        inputs = OptimizerInputs(
            account_id=account_id,
            day=day,
            inventory=optimizer.select(store.read("resources", account_id, day)),
            tables=tables,
            days_found=days_found,
            catalog=Catalog(store.read("price_catalog")),
            reserved=ReservedRates(store.read("reserved_prices")),
            previous=previous,
        )
        settings = optimizer.settings_type.model_validate(config.model_dump())
        result = optimizer.recommend(inputs, settings)
        path = store.write(optimizer.table_name, result.table, account_id, day, schema=RECOMMENDATIONS)
        return dg.MaterializeResult(
            metadata={
                "dagster/row_count": result.table.num_rows,
                "path": dg.MetadataValue.path(str(path)),
                "selected_resources": inputs.inventory.num_rows,
                **{f"window_days_found/{t}": len(d) for t, d in days_found.items()},
                **({"previous_day_found": previous is not None} if optimizer.reads_previous_day else {}),
                **{k: float(v) for k, v in result.summary.items()},
                **flat_metadata(dict(result.metadata)),
                "preview": dg.MetadataValue.md(recommendations_preview(result.table)),
            }
        )

    return _asset


def build_recommendation_assets(optimizers: Sequence[DeploymentOptimizer]) -> list[dg.AssetsDefinition]:
    return [build_recommendation_asset(o) for o in optimizers]
