"""Features stage: one asset per SQL model in ``dbt_like_sql/``, run by DuckDB over the lake.

Every model asset carries four checks, shown in the Dagster UI:

- ``unique_grain`` (error, blocking): no two rows share the key columns of the model's grain.
- ``percentages_in_range`` (warning): every ``*_pct`` value is within 0-100 (some sources report
  more, e.g. ECS CPUUtilization or agent memory: kept, never clipped).
- ``coverage_above_threshold`` (warning, models with a ``coverage_pct`` column): the mean coverage of
  the partition is at least ``-- coverage_warn_below: N`` of the header (default 50 %).
- ``rows_present`` (error): the model wrote rows whenever its inputs had rows.

Every partitioned model shares the collection assets' backfill policy
(``BackfillPolicy.multi_run``, at most ``CLOUDOPT_BACKFILL_PARTITIONS_PER_RUN`` partitions a run): a
backfill over many partitions materialises them in runs of one account's days or one day's accounts
(Dagster holds fixed the dimension of a multi-partition range with fewer keys). A batch model
(``-- batch: true``) computes a run's partitions in one DuckDB statement per chunk, any other model
partition by partition. Over several partitions the checks evaluate the whole run: each check passes
when it passes for every partition, and its metadata names the partitions that fail.

Window models (``-- window_days: N``) depend on their ``window_over`` models through a
``TimeWindowPartitionMapping(start_offset=-(N-1))`` on the date dimension, so the UI shows which days
feed a partition. Days missing inside the window are allowed (coverage says so); a window without
any data is an error naming the partition (see ``sqlmodels/runner.py``).
"""

import re
from datetime import date
from pathlib import Path

import dagster as dg
import duckdb
import pyarrow as pa

from cloudopt_pipelines.assets.metadata import batch_metadata, json_value, partition_label
from cloudopt_pipelines.partitions import account_daily_partitions, account_days_of_run, daily_partitions
from cloudopt_pipelines.project_files import sql_models_dir
from cloudopt_pipelines.resources.storage import LakeResource
from cloudopt_pipelines.settings import DEFAULT_BACKFILL_PARTITIONS_PER_RUN, batch_max_rows
from cloudopt_pipelines.sqlmodels.runner import (
    DEFAULT_MAX_BATCH_ROWS,
    ModelRun,
    SqlModel,
    iter_model_batch,
    load_models,
)
from cloudopt_pipelines.sqlmodels.sources import source_schemas

# Tables the models may read that other stages write, with their partitioning and asset key.
SOURCE_TABLES: dict[str, tuple[str, list[str]]] = {
    "resources": ("account_date", ["raw", "resources"]),
    "utilization_5m": ("account_date", ["raw", "utilization_5m"]),
    "cluster_metrics_5m": ("account_date", ["raw", "cluster_metrics_5m"]),
    # Written only when CLOUDOPT_K8S_CLUSTERS names a clusters file; the models read them as optional sources.
    "k8s_workloads": ("account_date", ["raw", "k8s_workloads"]),
    "k8s_container_usage": ("account_date", ["raw", "k8s_container_usage"]),
    "price_catalog": ("none", ["raw", "price_catalog"]),
    "reserved_prices": ("none", ["raw", "reserved_prices"]),
}
DEFAULT_COVERAGE_WARN_BELOW = 50.0
_PARTITIONS = {"account_date": account_daily_partitions, "date": daily_partitions, "none": None}
_GRAIN_COLUMNS = re.compile(r"\(([^)]*)\)")


def max_batch_rows() -> int:
    """Input rows per batch statement: CLOUDOPT_BATCH_MAX_ROWS, else the runner's default."""
    return batch_max_rows() or DEFAULT_MAX_BATCH_ROWS


def grain_columns(model: SqlModel) -> list[str]:
    """The key columns named in a model's grain, e.g. '(account_id, date, resource_id)'."""
    match = _GRAIN_COLUMNS.search(model.grain)
    return [c.strip() for c in match.group(1).split(",")] if match else []


def model_key(model: SqlModel) -> dg.AssetKey:
    return dg.AssetKey([model.group, model.name])


def window_days_for(model: SqlModel, overrides: dict[str, int] | None = None) -> int | None:
    """The window of a window model: an explicit override (CLOUDOPT_UTILIZATION_WINDOW_DAYS through the
    definitions), else its header."""
    if model.window_days is None:
        return None
    if overrides and model.name in overrides:
        return int(overrides[model.name])
    return model.window_days


def build_sql_model_assets(
    models_dir: Path | None = None,
    window_days: dict[str, int] | None = None,
    backfill_policy: dg.BackfillPolicy | None = None,
) -> list[dg.AssetsDefinition]:
    """An asset per model file of ``models_dir`` (default: the package's ``dbt_like_sql``; marts excluded:
    they are warehouse views). Every partitioned model gets ``backfill_policy`` (default: runs of at most
    ``DEFAULT_BACKFILL_PARTITIONS_PER_RUN`` partitions)."""
    policy = backfill_policy or collection_backfill_policy(DEFAULT_BACKFILL_PARTITIONS_PER_RUN)
    models = load_models(models_dir or sql_models_dir(), set(SOURCE_TABLES))
    keys = {name: dg.AssetKey(key) for name, (_, key) in SOURCE_TABLES.items()}
    keys.update({m.name: model_key(m) for m in models})
    partitioning = {name: part for name, (part, _) in SOURCE_TABLES.items()}
    partitioning.update({m.name: m.partitioned_by for m in models})
    return [_model_asset(m, keys, partitioning, window_days_for(m, window_days), policy) for m in models]


def window_mapping(days: int) -> dg.MultiPartitionMapping:
    """account x date -> the same account's ``days`` days ending with the partition's day."""
    return dg.MultiPartitionMapping(
        {
            "account": dg.DimensionPartitionMapping("account", dg.IdentityPartitionMapping()),
            "date": dg.DimensionPartitionMapping(
                "date",
                dg.TimeWindowPartitionMapping(
                    start_offset=-(days - 1), end_offset=0, allow_nonexistent_upstream_partitions=True
                ),
            ),
        }
    )


def collection_backfill_policy(partitions_per_run: int) -> dg.BackfillPolicy:
    """The backfill policy of the collection assets and the feature models: runs of at most
    ``partitions_per_run`` partitions (1: Dagster's run per partition)."""
    return dg.BackfillPolicy.multi_run(max_partitions_per_run=partitions_per_run)


def _model_asset(
    model: SqlModel,
    keys: dict[str, dg.AssetKey],
    partitioning: dict[str, str],
    window: int | None,
    backfill_policy: dg.BackfillPolicy,
) -> dg.AssetsDefinition:
    key = model_key(model)
    deps = []
    for dep in model.dependencies(set(keys)):
        if window and dep in model.window_over and partitioning[dep] == "account_date":
            deps.append(dg.AssetDep(keys[dep], partition_mapping=window_mapping(window)))
        else:
            deps.append(dg.AssetDep(keys[dep]))
    grain = grain_columns(model)
    has_coverage = "coverage_pct" in model.sql
    threshold = float(model.header.get("coverage_warn_below", DEFAULT_COVERAGE_WARN_BELOW))
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
        dg.AssetCheckSpec(
            "rows_present",
            asset=key,
            description="The model wrote rows for the partition whenever its inputs had rows (an error).",
        ),
    ]
    if has_coverage:
        check_specs.append(
            dg.AssetCheckSpec(
                "coverage_above_threshold",
                asset=key,
                description=f"The partition's mean coverage_pct is at least {threshold:g} % (a warning).",
            )
        )
    window_text = f" Window: {window} days ending with the partition's day." if window else ""

    @dg.asset(
        key=key,
        deps=deps,
        partitions_def=_PARTITIONS[model.partitioned_by],
        group_name=model.group,
        description=f"{model.description}\n\nGrain: {model.grain}.{window_text} SQL: dbt_like_sql/{model.path.name}",
        kinds={"duckdb", "sql", "parquet"},
        check_specs=check_specs,
        backfill_policy=backfill_policy if model.partitioned_by != "none" else None,
        metadata={
            "grain": model.grain,
            "sql_file": f"dbt_like_sql/{model.path.name}",
            **({"window_days": window} if window else {}),
        },
    )
    def _asset(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
        partitions = _run_partitions(context, model.partitioned_by)
        runs = iter_model_batch(
            model,
            lake.get_lake(),
            partitioning,
            partitions,
            window_days=window,
            source_schemas=source_schemas(),
            max_batch_rows=max_batch_rows(),
        )
        if len(partitions) == 1:
            run = next(runs)
            return dg.MaterializeResult(
                metadata=run_metadata(run), check_results=check_results(model, run, grain, threshold, has_coverage)
            )
        # Checks and counts per partition as each chunk is written; the rows themselves are let go.
        rows, input_rows, checks = [], 0, []
        for run in runs:
            rows.append(run.table.num_rows)
            input_rows += run.input_rows
            checks.append(check_results(model, run, grain, threshold, has_coverage))
        return dg.MaterializeResult(
            metadata=batch_metadata(partitions, rows, input_rows),
            check_results=batch_check_results(partitions, checks),
        )

    return _asset


def _run_partitions(context: dg.AssetExecutionContext, partitioned_by: str) -> list[tuple[str | None, date | None]]:
    """(account_id, day) of every partition the run materialises: one, or a backfill's range."""
    if partitioned_by == "none":
        return [(None, None)]
    if partitioned_by == "date":
        return [(None, date.fromisoformat(str(key))) for key in context.partition_keys]
    return list(account_days_of_run(context))


def batch_check_results(
    partitions: list[tuple[str | None, date | None]], per_partition: list[list[dg.AssetCheckResult]]
) -> list[dg.AssetCheckResult]:
    """One result per check over a run of many partitions: passed when every partition passed."""
    out = []
    for index, first in enumerate(per_partition[0]):
        results = [checks[index] for checks in per_partition]
        pairs = zip(partitions, results, strict=True)
        failed = {partition_label(p): dict(r.metadata) for p, r in pairs if not r.passed}
        out.append(
            dg.AssetCheckResult(
                check_name=first.check_name,
                passed=not failed,
                severity=first.severity,
                metadata={
                    "partitions": len(results),
                    "failed_partitions": dg.MetadataValue.json(
                        {k: {m: json_value(v) for m, v in meta.items()} for k, meta in failed.items()}
                    ),
                },
            )
        )
    return out


def run_metadata(run: ModelRun) -> dict:
    meta: dict = {"dagster/row_count": run.table.num_rows}
    for name, read in run.inputs.items():
        meta[f"input/{name}/rows"] = read.rows
        if read.absent_source:
            meta[f"input/{name}"] = "absent: read as an empty table (optional source)"
        elif read.missing:
            meta[f"input/{name}/missing_partitions"] = dg.MetadataValue.json(read.missing)
    if run.window_days:
        meta["window_days"] = run.window_days
        meta["window_start"] = run.window_start.isoformat()
    return meta


def check_results(
    model: SqlModel, run: ModelRun, grain: list[str], threshold: float, has_coverage: bool
) -> list[dg.AssetCheckResult]:
    """The four checks' results for one partition run (see the module docstring)."""
    result = run.table
    duplicates = _duplicate_keys(result, grain)
    out_of_range = _pct_out_of_range(result)
    sources = _expected_sources(model, run)
    input_rows = sum(run.inputs[s].rows for s in sources)
    results = [
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
        dg.AssetCheckResult(
            check_name="rows_present",
            passed=result.num_rows > 0 or input_rows == 0,
            severity=dg.AssetCheckSeverity.ERROR,
            metadata={"rows": result.num_rows, "input_rows": input_rows, "inputs": ", ".join(sources) or "none"},
        ),
    ]
    if has_coverage:
        mean, below = _coverage(result, threshold)
        results.append(
            dg.AssetCheckResult(
                check_name="coverage_above_threshold",
                passed=mean is None or mean >= threshold,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={
                    "mean_coverage_pct": mean if mean is not None else dg.MetadataValue.null(),
                    "rows_below_threshold": below,
                    "threshold_pct": threshold,
                },
            )
        )
    return results


def _expected_sources(model: SqlModel, run: ModelRun) -> list[str]:
    """The inputs whose rows should produce output rows (``-- expect_rows_from:``, default: all)."""
    raw = model.header.get("expect_rows_from")
    if raw is None:
        return sorted(run.inputs)
    names = [n.strip() for n in raw.replace(" ", ",").split(",") if n.strip() and n.strip() != "none"]
    return [n for n in names if n in run.inputs]


def _duplicate_keys(table: pa.Table, grain: list[str]) -> int:
    if not grain or table.num_rows == 0:
        return 0
    con = duckdb.connect()
    con.register("t", table)
    cols = ", ".join(grain)
    return int(
        con.execute(f"SELECT count(*) FROM (SELECT {cols} FROM t GROUP BY {cols} HAVING count(*) > 1)").fetchone()[0]
    )


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


def _coverage(table: pa.Table, threshold: float) -> tuple[float | None, int]:
    if "coverage_pct" not in table.column_names or table.num_rows == 0:
        return None, 0
    con = duckdb.connect()
    con.register("t", table)
    mean, below = con.execute(
        "SELECT avg(coverage_pct), count(*) FILTER (WHERE coverage_pct < $t) FROM t", {"t": threshold}
    ).fetchone()
    return (round(float(mean), 3) if mean is not None else None), int(below)
