"""What every asset shows in the UI beyond its own materialisations: owners, the column schema of its lake
table, freshness policies on the daily assets (AWS), and the checks on every optimiser's recommendations.

Applied once to the assembled assets by ``build_definitions`` (``describe_assets``), so a stage's own module
keeps only what it computes.
"""

import json
from collections.abc import Sequence
from datetime import date, timedelta

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc

from cloudopt_pipelines.optimizers.base import DeploymentOptimizer
from cloudopt_pipelines.resources.storage import LakeResource
from cloudopt_pipelines.storage.schemas import RECOMMENDATIONS, TABLES

#: Who answers for each stage (Dagster owners: an e-mail address or ``team:<name>``).
OWNERS_BY_GROUP: dict[str, list[str]] = {
    "raw": ["team:platform"],
    "features": ["team:platform"],
    "recommendations": ["team:finops"],
    "plan": ["team:finops"],
    "actions": ["team:finops", "team:platform"],
    "warehouse": ["team:analytics"],
}
DEFAULT_OWNERS = ["team:finops"]
# The schedule collects yesterday at 04:00 UTC; the plan waits for late accounts until its deadline.
ACCOUNT_DAILY_FRESHNESS = dg.FreshnessPolicy.cron(deadline_cron="0 8 * * *", lower_bound_delta=timedelta(hours=5))
DAILY_FRESHNESS = dg.FreshnessPolicy.cron(deadline_cron="0 14 * * *", lower_bound_delta=timedelta(hours=11))
CHECK_ROWS_SHOWN = 10
SHOWN_COLUMNS = [
    "resource_id",
    "option_name",
    "monthly_cost_current_usd",
    "monthly_cost_proposed_usd",
    "monthly_savings_usd",
    "performance_risk",
]


def table_of(key: dg.AssetKey) -> str | None:
    """The lake table behind an asset key with a declared schema (``storage/schemas.py``), if any."""
    prefix, name = key.path[0], key.path[-1]
    if prefix == "recommendations":
        return "recommendations"
    return name if name in TABLES else None


def column_schema(schema: pa.Schema) -> dg.TableSchema:
    """A table schema as Dagster's column schema (the UI's Columns tab)."""
    return dg.TableSchema(columns=[dg.TableColumn(name=f.name, type=str(f.type)) for f in schema])


def describe_assets(
    assets: Sequence[dg.AssetsDefinition | dg.AssetSpec], freshness: bool
) -> list[dg.AssetsDefinition | dg.AssetSpec]:
    """The assets with owners, ``dagster/column_schema`` for each lake table with a declared schema, and
    (``freshness``: with real accounts) a freshness policy on every partitioned daily asset."""

    def describe(spec: dg.AssetSpec) -> dg.AssetSpec:
        attributes: dict = {}
        if not spec.owners:
            attributes["owners"] = OWNERS_BY_GROUP.get(spec.group_name or "", DEFAULT_OWNERS)
        table = table_of(spec.key)
        if table is not None and "dagster/column_schema" not in spec.metadata:
            attributes["metadata"] = {**spec.metadata, "dagster/column_schema": column_schema(TABLES[table])}
        if freshness and spec.partitions_def is not None and spec.freshness_policy is None:
            multi = isinstance(spec.partitions_def, dg.MultiPartitionsDefinition)
            attributes["freshness_policy"] = ACCOUNT_DAILY_FRESHNESS if multi else DAILY_FRESHNESS
        return spec.replace_attributes(**attributes) if attributes else spec

    return list(dg.map_asset_specs(describe, assets))


# ---------------------------------------------------------------------------------------------- checks


def recommendation_violations(table: pa.Table, max_best_risk: float | None) -> dict[str, pa.Table]:
    """Rows breaking each rule a recommendation must keep: no negative savings, no proposal costing more than
    today, and every best option within the risk limit. Pure: no Dagster, no lake."""
    savings = pc.fill_null(table["monthly_savings_usd"], 0.0)
    current = pc.fill_null(table["monthly_cost_current_usd"], 0.0)
    proposed = pc.fill_null(table["monthly_cost_proposed_usd"], 0.0)
    best = pc.fill_null(table["is_best"], False)
    # what is recommended is each resource's best option; other options (dearer up-sizes and alternatives) are
    # listed for comparison, and an up-size that buys missing headroom may cost more on purpose
    upsize = pc.fill_null(pc.equal(table["finding"], "under-provisioned"), False)
    judged = pc.and_(best, pc.invert(upsize))
    out = {
        "no_negative_savings": table.filter(pc.and_(judged, pc.less(savings, -1e-9))),
        "no_proposal_above_current_cost": table.filter(pc.and_(judged, pc.greater(proposed, pc.add(current, 1e-9)))),
    }
    if max_best_risk is not None:
        risky = pc.greater(pc.fill_null(table["performance_risk"], 0.0), max_best_risk)
        out["best_option_within_risk_limit"] = table.filter(pc.and_(best, risky))
    return out


CHECK_DESCRIPTIONS = {
    "no_negative_savings": "No best option has negative monthly savings (an under-provisioned resource's up-size "
    "may: it buys headroom).",
    "no_proposal_above_current_cost": "No best option proposes a monthly cost above the resource's current cost "
    "(up-sizes of under-provisioned resources excepted).",
    "best_option_within_risk_limit": "Every best option's performance risk is at most the optimiser's "
    "max_best_risk (its run config, else its default).",
}


def _risk_limit(context: dg.AssetCheckExecutionContext, optimizer: DeploymentOptimizer, op_name: str) -> float | None:
    configured = ((context.run.run_config.get("ops") or {}).get(op_name) or {}).get("config") or {}
    if "max_best_risk" in configured:
        return float(configured["max_best_risk"])
    default = getattr(optimizer.settings_type(), "max_best_risk", None)
    return None if default is None else float(default)


def build_recommendation_checks(
    optimizers: Sequence[DeploymentOptimizer], partitions_def: dg.PartitionsDefinition
) -> list[dg.AssetChecksDefinition]:
    """Per partition, on every ``recommendations/<name>`` asset: one check per rule of
    :func:`recommendation_violations`, with the offending rows as a markdown table."""
    checks: list[dg.AssetChecksDefinition] = []
    for optimizer in optimizers:
        key = dg.AssetKey(["recommendations", optimizer.name])
        names = ["no_negative_savings", "no_proposal_above_current_cost"]
        if hasattr(optimizer.settings_type(), "max_best_risk"):
            names.append("best_option_within_risk_limit")
        checks.append(_checks_for(optimizer, key, names, partitions_def))
    return checks


def _checks_for(
    optimizer: DeploymentOptimizer, key: dg.AssetKey, names: list[str], partitions_def: dg.PartitionsDefinition
) -> dg.AssetChecksDefinition:
    op_name = "__".join(key.path)

    @dg.multi_asset_check(
        specs=[
            dg.AssetCheckSpec(n, asset=key, description=CHECK_DESCRIPTIONS[n], partitions_def=partitions_def)
            for n in names
        ],
        name=f"{op_name}__checks",
    )
    def _check(context: dg.AssetCheckExecutionContext, lake: LakeResource):
        from cloudopt_pipelines.partitions import split_account_day

        account_id, day = split_account_day(context)  # type: ignore[arg-type]
        table = lake.get_lake().read(optimizer.table_name, account_id, day)
        table = table.select([c for c in RECOMMENDATIONS.names if c in table.column_names])
        violations = recommendation_violations(table, _risk_limit(context, optimizer, op_name))
        for name in names:
            bad = violations[name]
            metadata: dict = {"violations": bad.num_rows, "rows_checked": table.num_rows}
            if bad.num_rows:
                shown = bad.select(SHOWN_COLUMNS).slice(0, CHECK_ROWS_SHOWN)
                metadata["first_violations"] = dg.MetadataValue.md(shown.to_pandas().to_markdown(index=False))
            yield dg.AssetCheckResult(
                asset_key=key,
                check_name=name,
                passed=bad.num_rows == 0,
                severity=dg.AssetCheckSeverity.ERROR,
                metadata=metadata,
            )

    return _check


# ------------------------------------------------------------------------------- metadata values


def flat_metadata(metadata: dict, prefix: str = "") -> dict:
    """Metadata a person can read and the UI can plot: numbers stay numbers, a mapping of numbers becomes
    one numeric entry per key (``resources_by_kind/ec2_instance``), a list of plain values one line of
    text, a list of records a markdown table; only what is none of these stays JSON."""
    out: dict = {}
    for key, value in metadata.items():
        name = f"{prefix}{key}"
        if isinstance(value, bool | str | int | float) or value is None:
            out[name] = value if value is not None else dg.MetadataValue.null()
        elif isinstance(value, dict) and all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in value.values()
        ):
            out.update({f"{name}/{k}": v for k, v in value.items()} or {name: 0})
        elif isinstance(value, list | tuple) and all(isinstance(v, str | int | float) for v in value):
            out[name] = dg.MetadataValue.text(", ".join(str(v) for v in value) or "none")
        elif isinstance(value, list | tuple) and value and all(isinstance(v, dict) for v in value):
            out[name] = dg.MetadataValue.md(_records_markdown(value))
        else:
            out[name] = dg.MetadataValue.json(value)
    return out


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _records_markdown(records: Sequence[dict], rows: int = 20) -> str:
    from tabulate import tabulate

    columns = list(dict.fromkeys(k for r in records for k in r))
    table = tabulate([[r.get(c) for c in columns] for r in records[:rows]], headers=columns, tablefmt="github")
    return table + (f"\n\n_{len(records) - rows} more rows_" if len(records) > rows else "")


# ------------------------------------------------------------------------------- recommendations preview

PREVIEW_ROWS = 10
PREVIEW_COLUMNS = (
    "resource",
    "finding",
    "best option",
    "saves $/month",
    "risk",
    "confidence",
    "why",
    "same architecture",
    "other architecture",
)
_REASON_CHARS = 200


def recommendations_preview(table: pa.Table, rows: int = PREVIEW_ROWS) -> str:
    """The top ``rows`` best options by monthly saving as a markdown table, in a FinOps engineer's words:
    the finding, the confidence ("gathering data: 1 of 14 days (24 of the 30 hours needed)"), the reason,
    and the alternatives of the same and of the other CPU architecture (from ``details``, when the
    optimiser gives them; else the confidence as a number and the rationale's first sentence)."""
    best = table.filter(pc.fill_null(pc.equal(table["is_best"], True), False)) if table.num_rows else table
    if best.num_rows == 0:
        return "_no rows_"
    top = best.sort_by([("monthly_savings_usd", "descending"), ("resource_id", "ascending")]).slice(0, rows)
    lines = ["| " + " | ".join(PREVIEW_COLUMNS) + " |", "|" + "---|" * len(PREVIEW_COLUMNS)]
    for row in top.to_pylist():
        details = _json_object(row.get("details"))
        chosen = _json_object(row.get("proposed_config")).get("instance_type")
        cells = [
            row["resource_id"],
            row.get("finding") or "",
            row.get("option_name") or "",
            f"{row.get('monthly_savings_usd') or 0:,.2f}",
            f"{row.get('performance_risk') or 0:g}",
            details.get("confidence_words") or _confidence_number(row.get("confidence")),
            details.get("reason") or _first_sentence(row.get("rationale") or ""),
            _alternative(details.get("same_architecture_option"), chosen),
            _alternative(details.get("other_architecture_option"), chosen),
        ]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    more = best.num_rows - top.num_rows
    waiting = pc.sum(pc.equal(best["finding"], "gathering-data")).as_py() or 0
    notes = [f"_{more} more resources in the lake table_" if more else ""]
    notes.append(f"_{waiting} resources gathering data: no change until the window has enough_" if waiting else "")
    return "\n".join(lines) + "".join(f"\n\n{n}" for n in notes if n)


def _json_object(text: str | None) -> dict:
    try:
        value = json.loads(text or "{}")
    except (json.JSONDecodeError, TypeError):
        return {}
    return value if isinstance(value, dict) else {}


def _confidence_number(value: float | None) -> str:
    return "" if value is None else f"confidence {value:.2f}"


def _first_sentence(text: str) -> str:
    head = text.split(". ", 1)[0]
    return head if len(head) <= _REASON_CHARS else head[: _REASON_CHARS - 1] + "…"


def _alternative(option: dict | None, chosen: str | None) -> str:
    if not option or not option.get("instance_type"):
        return "-"
    if option["instance_type"] == chosen:
        return "this option"
    savings = option.get("monthly_savings_usd") or 0.0
    money = f"saves ${savings:,.2f}" if savings >= 0 else f"costs ${-savings:,.2f} more"
    return (
        f"{option['instance_type']} ({option.get('architecture', '?')}): {money}/month, "
        f"risk {option.get('performance_risk', 0):g}, migration effort {option.get('migration_effort', '?')}"
    )


def _cell(value: str) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def partition_label(partition: tuple[str | None, date | None]) -> str:
    """``account|day`` (or either alone) of one partition, as the UI writes a key."""
    account_id, day = partition
    return "|".join(p for p in (account_id, day.isoformat() if day else None) if p)


def batch_metadata(
    partitions: Sequence[tuple[str | None, date | None]], rows: list[int], input_rows: int | None = None
) -> dict:
    """Metadata of a run over many partitions. Dagster records it on each partition of the run, so it
    names the batch's totals as such (no ``dagster/row_count``, which the UI would show per partition)."""
    return {
        "batch/partitions": len(rows),
        "batch/row_count": sum(rows),
        **({"batch/input_rows": input_rows} if input_rows is not None else {}),
        "batch/rows_per_partition_min": min(rows),
        "batch/rows_per_partition_max": max(rows),
        "batch/empty_partitions": dg.MetadataValue.json(
            [partition_label(p) for p, n in zip(partitions, rows, strict=True) if n == 0]
        ),
    }


def json_value(value: object) -> object:
    """A metadata value as plain JSON (what MetadataValue.json accepts; NaN becomes null)."""
    value = getattr(value, "value", value)
    if value is None or isinstance(value, (bool, int, str, list, dict)):
        return value
    if isinstance(value, float):
        return value if value == value else None  # NaN is not JSON
    return str(value)
