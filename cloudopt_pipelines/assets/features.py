"""Features stage: one asset per SQL model in ``dbt_like_sql/``, run by DuckDB over the lake."""


import re
from pathlib import Path

import dagster as dg
import duckdb
import pyarrow as pa

from cloudopt_pipelines.partitions import account_daily_partitions, daily_partitions, split_account_day
from cloudopt_pipelines.resources.storage import REPO_SQL_DIR, LakeResource
from cloudopt_pipelines.sqlmodels.runner import SqlModel, load_models, run_model

# Tables the models may read that other stages write, with their partitioning and asset key.
SOURCE_TABLES: dict[str, tuple[str, list[str]]] = {
    "resources": ("account_date", ["raw", "resources"]),
    "utilization_5m": ("account_date", ["raw", "utilization_5m"]),
    "price_catalog": ("none", ["raw", "price_catalog"]),
    "reserved_prices": ("none", ["raw", "reserved_prices"]),
}
_PARTITIONS = {"account_date": account_daily_partitions, "date": daily_partitions, "none": None}
_GRAIN_COLUMNS = re.compile(r"\(([^)]*)\)")


def grain_columns(model: SqlModel) -> list[str]:
    """The key columns named in a model's grain, e.g. '(account_id, date, resource_id)'."""
    match = _GRAIN_COLUMNS.search(model.grain)
    return [c.strip() for c in match.group(1).split(",")] if match else []


def model_key(model: SqlModel) -> dg.AssetKey:
    return dg.AssetKey([model.group, model.name])


def build_sql_model_assets(models_dir: Path = REPO_SQL_DIR) -> list[dg.AssetsDefinition]:
    """An asset per model file (marts excluded: they are warehouse views)."""
    models = load_models(models_dir, set(SOURCE_TABLES))
    keys = {name: dg.AssetKey(key) for name, (_, key) in SOURCE_TABLES.items()}
    keys.update({m.name: model_key(m) for m in models})
    partitioning = {name: part for name, (part, _) in SOURCE_TABLES.items()}
    partitioning.update({m.name: m.partitioned_by for m in models})
    return [_model_asset(m, keys, partitioning) for m in models]


def _model_asset(model: SqlModel, keys: dict[str, dg.AssetKey], partitioning: dict[str, str]) -> dg.AssetsDefinition:
    key = model_key(model)
    deps = [keys[d] for d in model.dependencies(set(keys))]
    grain = grain_columns(model)
    check_specs = [
        dg.AssetCheckSpec(
            "unique_grain",
            asset=key,
            description=f"No two rows share the grain ({', '.join(grain)}).",
            blocking=True,
        ),
        dg.AssetCheckSpec(
            "percentages_in_range",
            asset=key,
            description="Every *_pct column is within 0-100 (a warning: some sources report over 100 %).",
        ),
    ]

    @dg.asset(
        key=key,
        deps=deps,
        partitions_def=_PARTITIONS[model.partitioned_by],
        group_name=model.group,
        description=f"{model.description}\n\nGrain: {model.grain}. SQL: dbt_like_sql/{model.path.name}",
        kinds={"duckdb", "sql", "parquet"},
        check_specs=check_specs,
        metadata={"grain": model.grain, "sql_file": f"dbt_like_sql/{model.path.name}"},
    )
    def _asset(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
        account_id = day = None
        if model.partitioned_by == "account_date":
            account_id, day = split_account_day(context)
        elif model.partitioned_by == "date":
            from datetime import date

            day = date.fromisoformat(context.partition_key)
        result = run_model(model, lake.get_lake(), partitioning, account_id, day)
        duplicates = _duplicate_keys(result, grain)
        out_of_range = _pct_out_of_range(result)
        return dg.MaterializeResult(
            metadata={"dagster/row_count": result.num_rows},
            check_results=[
                dg.AssetCheckResult(
                    check_name="unique_grain",
                    passed=duplicates == 0,
                    metadata={"duplicate_keys": duplicates},
                ),
                dg.AssetCheckResult(
                    check_name="percentages_in_range",
                    passed=not out_of_range,
                    severity=dg.AssetCheckSeverity.WARN,
                    metadata={"rows_out_of_range": dg.MetadataValue.json(out_of_range)},
                ),
            ],
        )

    return _asset


def _duplicate_keys(table: pa.Table, grain: list[str]) -> int:
    if not grain or table.num_rows == 0:
        return 0
    con = duckdb.connect()
    con.register("t", table)
    cols = ", ".join(grain)
    return int(con.execute(f"SELECT count(*) FROM (SELECT {cols} FROM t GROUP BY {cols} HAVING count(*) > 1)").fetchone()[0])


def _pct_out_of_range(table: pa.Table) -> dict[str, int]:
    pct = [c for c in table.column_names if c.endswith("_pct") and pa.types.is_floating(table.schema.field(c).type)]
    if not pct or table.num_rows == 0:
        return {}
    con = duckdb.connect()
    con.register("t", table)
    counts = con.execute(
        "SELECT " + ", ".join(f"count(*) FILTER (WHERE {c} < 0 OR {c} > 100) AS {c}" for c in pct) + " FROM t"
    ).fetchone()
    return {c: int(n) for c, n in zip(pct, counts, strict=True) if n}
