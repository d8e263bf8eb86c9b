"""The summary printed at the end of ``make demo``: what ran, what was found, where to look next.

One function per paragraph, each reading the lake on its own, so that a paragraph can change without
touching the others.
"""

import json
import shutil
import sys
from pathlib import Path

import duckdb

from cloudopt_pipelines.orchestration import PLAN_OUTCOME_ACCOUNT, RangeResult
from cloudopt_pipelines.settings import Settings
from cloudopt_pipelines.storage.lake import Lake, open_lake
from cloudopt_pipelines.storage.schemas import UNION_VIEWS


def demo_summary(settings: Settings, result: RangeResult, seconds: float, try_sql: str) -> str:
    """A short report: partitions, resources analysed, top recommendations, the plan and why its total
    differs, what was measured but not optimised, the warehouse and a query to try."""
    lake = open_lake(settings.lake_url)
    con = lake.attach(duckdb.connect())
    lines = partition_lines(result, seconds)
    lines += resource_lines(lake, con)
    lines += recommendation_lines(lake, con)
    lines += plan_lines(lake, con)
    lines += not_optimised_lines(lake, con, settings)
    lines += next_step_lines(settings, try_sql)
    return "\n".join(lines)


def partition_lines(result: RangeResult, seconds: float) -> list[str]:
    """What ran: account-days and daily plans, materialised now or kept from an earlier run."""
    accounts = [o for o in result.outcomes if o.account_id != PLAN_OUTCOME_ACCOUNT]
    plans = [o for o in result.outcomes if o.account_id == PLAN_OUTCOME_ACCOUNT]

    def count(outcomes: list) -> str:
        ran = [o for o in outcomes if not o.skipped]
        text = f"{sum(o.success for o in ran)}/{len(ran)} materialised"
        kept = len(outcomes) - len(ran)
        return text + (f", {kept} kept from an earlier run" if kept else "")

    lines = [
        f"Partitions: {len(accounts)} account-days ({len(result.accounts)} accounts x {len(result.days)} days): "
        f"{count(accounts)}; {len(plans)} daily plans: {count(plans)}; {seconds:.0f} s",
    ]
    if result.skipped:
        lines.append("            (partitions already materialised are kept: 'cloudopt demo --force' redoes them)")
    return lines


def resource_lines(lake: Lake, con: duckdb.DuckDBPyConnection) -> list[str]:
    """What was measured: resources by kind and deployment type, and the utilisation samples."""
    lines: list[str] = []
    if lake.exists("resources"):
        kinds = con.execute(
            f"SELECT resource_kind, coalesce(deployment_type, '-') AS dt, count(DISTINCT resource_id) "
            f"FROM read_parquet({lake.parquet_source('resources')}, hive_partitioning = false) "
            "GROUP BY ALL ORDER BY ALL"
        ).fetchall()
        total = sum(n for _, _, n in kinds)
        detail = ", ".join(f"{n} {kind}" + (f" ({dt})" if dt != "-" else "") for kind, dt, n in kinds)
        lines.append(f"Resources measured: {total}: {detail}")
    if lake.exists("utilization_daily"):
        samples, series = con.execute(
            f"SELECT sum(samples), count(DISTINCT resource_id) "
            f"FROM read_parquet({lake.parquet_source('utilization_daily')}, hive_partitioning = false)"
        ).fetchone()
        lines.append(f"Utilisation: {samples:,} 5-minute samples over {series} instances")
    return lines


def _recommendations_source(lake: Lake) -> str | None:
    tables = [t for t in lake.tables() if t.startswith(UNION_VIEWS["recommendations"])]
    if not tables:
        return None
    files = lake.parquet_source(*tables)
    return f"read_parquet({files}, hive_partitioning = false, union_by_name = true)"


def recommendation_lines(lake: Lake, con: duckdb.DuckDBPyConnection, top_n: int = 5) -> list[str]:
    """The latest day's best option per resource: how many resources would change, what they save."""
    recs = _recommendations_source(lake)
    if recs is None:
        return []
    top = con.execute(
        f"""
        SELECT account_id, resource_id, action, current_config, proposed_config, monthly_savings_usd,
               savings_pct, confidence, details, finding, rationale
        FROM {recs}
        WHERE is_best AND action <> 'keep' AND date = (SELECT max(date) FROM {recs})
        ORDER BY monthly_savings_usd DESC
        """
    ).fetchall()
    lines: list[str] = ["Recommendations: no resource to change on the latest day"] if not top else []
    if top:
        total = sum(row[5] for row in top)
        lines += [
            f"Recommendations (latest day, each resource's best option on its own): {len(top)} resources to change, "
            f"saving ${total:,.2f} per month; top {min(top_n, len(top))}:"
        ]
        for row in top[:top_n]:
            account, resource, action, current, proposed, savings, pct, confidence, details, finding, why = row
            change = f"{_config(current)} -> {_config(proposed)}"
            lines.append(
                f"  {account} {resource:<24} {action:<16} {change:<36} saves ${savings:>9,.2f}/month"
                f" ({pct or 0:.0f} %, confidence {confidence:.0%})"
            )
            lines.extend(f"      {text}" for text in _in_words(details, proposed, finding, why))
    waiting = con.execute(
        f"""
        SELECT resource_id, details FROM {recs}
        WHERE is_best AND finding = 'gathering-data' AND date = (SELECT max(date) FROM {recs})
        ORDER BY resource_id
        """
    ).fetchall()
    if waiting:
        first, words = waiting[0][0], _details(waiting[0][1]).get("confidence_words") or "gathering data"
        lines.append(
            f"Gathering data (no change until 30 hours of data): {len(waiting)} instance(s), e.g. {first}: {words}"
        )
    return lines


def plan_lines(lake: Lake, con: duckdb.DuckDBPyConnection) -> list[str]:
    """The latest plan's savings, and why they differ from the recommendations' total."""
    if not lake.exists("portfolio_plan"):
        return []
    plan = f"read_parquet({lake.parquet_source('portfolio_plan')}, hive_partitioning = false)"
    day, status, resources, changes, savings, upfront, reserved, reserved_savings = con.execute(
        f"""
        SELECT max(date), any_value(solver_status), count(*), count(*) FILTER (WHERE action <> 'keep'),
               sum(monthly_savings_usd), sum(one_time_cost_usd),
               count(*) FILTER (WHERE action = 'reserve'), sum(monthly_savings_usd) FILTER (WHERE action = 'reserve')
        FROM {plan}
        WHERE date = (SELECT max(date) FROM {plan})
        """
    ).fetchone()
    lines = [
        f"Portfolio plan {day} ({status}): {changes} changes over {resources} resources, saving "
        f"${savings or 0:,.2f} per month for ${upfront or 0:,.2f} upfront, within config/constraints.yaml"
    ]
    recs = _recommendations_source(lake)
    if recs is None:
        return lines
    best, held, kept = con.execute(
        f"""
        WITH best AS (
            SELECT account_id, resource_id, monthly_savings_usd
            FROM {recs} WHERE is_best AND date = (SELECT max(date) FROM {recs})
        ), kept AS (
            SELECT account_id, resource_id FROM {plan}
            WHERE action = 'keep' AND date = (SELECT max(date) FROM {plan})
        )
        SELECT (SELECT sum(monthly_savings_usd) FROM best),
               (SELECT sum(b.monthly_savings_usd) FILTER (WHERE b.monthly_savings_usd > 0)
                FROM kept JOIN best AS b USING (account_id, resource_id)),
               (SELECT count(*) FROM kept)
        """
    ).fetchone()
    held_text = f", whose best options would save ${held:,.2f} per month" if held else ""
    keeps = (
        f"keeps {kept} resources as they are{held_text} (protected ones, and what its risk, availability or budget "
        "limits hold back)"
        if kept
        else ""
    )
    reserves = (
        f"reserves {reserved} instances (${reserved_savings or 0:,.2f} per month of its savings, the upfront above), "
        "which is never a single resource's best option"
        if reserved
        else ""
    )
    savings, best = savings or 0, best or 0
    # Lead with what moves the plan's total the way it differs from the recommendations'.
    why = [keeps, reserves] if savings < best else [reserves, keeps]
    reasons = "; ".join(w for w in why if w) or "it weighs every resource under the fleet's limits"
    lines.append(
        f"  The plan saves ${abs(savings - best):,.2f} per month {'less' if savings < best else 'more'} than the "
        f"recommendations (${best:,.2f}) because it chooses across the fleet: it {reasons}."
    )
    return lines


def not_optimised_lines(lake: Lake, con: duckdb.DuckDBPyConnection, settings: Settings) -> list[str]:
    """Resources measured on the latest day that no selected optimiser recommends for, apart from the members
    of a group (a cluster's instances, a node pool's nodes) whose group has rows of its own."""
    from cloudopt_pipelines.optimizers.base import select_optimizers

    recs = _recommendations_source(lake)
    if recs is None or not lake.exists("resources"):
        return []
    inventory = lake.parquet_source("resources")
    rows = con.execute(
        f"""
        WITH inventory AS (
            SELECT * FROM read_parquet({inventory}, hive_partitioning = false)
            WHERE date = (SELECT max(date) FROM read_parquet({inventory}, hive_partitioning = false))
        ), recommended AS (SELECT DISTINCT resource_id FROM {recs} WHERE date = (SELECT max(date) FROM {recs})),
        pooled_clusters AS (
            SELECT DISTINCT split_part(resource_id, '/nodepool/', 1) AS cluster FROM recommended
            WHERE resource_id LIKE '%/nodepool/%'
        )
        SELECT resource_kind, coalesce(deployment_type, '-'),
               parent_id IN (SELECT resource_id FROM recommended)
               OR (resource_kind = 'k8s_node'
                   AND split_part(resource_id, '/node/', 1) IN (SELECT cluster FROM pooled_clusters)) AS in_group,
               count(DISTINCT resource_id)
        FROM inventory WHERE resource_id NOT IN (SELECT resource_id FROM recommended)
        GROUP BY ALL ORDER BY 4 DESC, 1, 2
        """
    ).fetchall()
    grouped = [(kind, dt, n) for kind, dt, in_group, n in rows if in_group]
    alone = [(kind, dt, n) for kind, dt, in_group, n in rows if not in_group]
    lines = []
    if grouped:
        lines.append(
            f"Optimised as members of their group: {sum(n for *_, n in grouped)} resources ({_kinds(grouped)}); "
            "their cluster or node-pool rows carry the change and its saving."
        )
    if alone:
        covered = "; ".join(
            f"{o.name}: {', '.join(o.deployment_types)} {', '.join(o.resource_kinds)}"
            for o in select_optimizers(settings.deployment_types)
        )
        lines += [
            f"Measured, not optimised: {sum(n for *_, n in alone)} resources on the latest day ({_kinds(alone)}).",
            f"  No selected optimiser has a row for them (optimisers: {covered}); their rows are in the warehouse.",
        ]
        if any(kind == "ec2_instance" and dt == "kubernetes" for kind, dt, _ in alone):
            lines.append(
                "  EKS nodes are sized through their cluster's node pools once the cluster is in "
                "CLOUDOPT_K8S_CLUSTERS (README, Configuration, 'Kubernetes')."
            )
    return lines


def _kinds(rows: list[tuple[str, str, int]]) -> str:
    return ", ".join(f"{n} {kind}" + (f" ({dt})" if dt != "-" else "") for kind, dt, n in rows)


def next_step_lines(settings: Settings, try_sql: str) -> list[str]:
    return [
        f"Warehouse: {settings.warehouse_path}",
        f'Try:       {_cloudopt()} sql "{try_sql}"',
        f"      or   python -c \"import duckdb; print(duckdb.connect('{settings.warehouse_path}', "
        f"read_only=True).sql('FROM fleet_daily LIMIT 5'))\"",
        "UI:        make dev   (then open http://127.0.0.1:3000)",
        f"Act:       {_cloudopt()} approve --date D --list, then {_cloudopt()} execute --date D --demo-target "
        "(a local AWS seeded with the demo fleet; README, 'Trying the act stage')",
    ]


def _details(text: str | None) -> dict:
    try:
        value = json.loads(text or "{}")
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _in_words(
    details_text: str | None, proposed: str | None, finding: str | None = None, rationale: str | None = None
) -> list[str]:
    """The reason and confidence of a best row, and the alternative of the other architecture (or, when the
    best option is of the other architecture, the same-architecture one). A row without a reason in its
    details (an idle volume or address) gives its finding and the first sentence of its rationale."""
    details = _details(details_text)
    out = []
    if details.get("reason"):
        out.append(f"why: {details['reason']}; {details.get('confidence_words') or ''}".rstrip("; "))
    elif finding and rationale:
        out.append(f"why: {finding}: {rationale.split('. ', 1)[0].rstrip('.')}")
    chosen = _details(proposed).get("instance_type")
    for key, label in (("same_architecture_option", "same architecture"), ("other_architecture_option", "Graviton")):
        alt = details.get(key)
        if alt and alt.get("instance_type") != chosen:
            if key == "other_architecture_option" and alt.get("architecture") != "arm64":
                label = "other architecture"
            out.append(
                f"{label}: {alt['instance_type']} ({alt['architecture']}) saves "
                f"${alt['monthly_savings_usd']:,.2f}/month, risk {alt['performance_risk']:g}, "
                f"migration effort {alt['migration_effort']}"
            )
    return out


def _config(text: str | None) -> str:
    """A short human form of a current/proposed config JSON: its instance type and market, or its action."""
    try:
        config = json.loads(text or "{}")
    except json.JSONDecodeError:
        return str(text)
    if config.get("idle_timeout_seconds"):
        return f"auto-terminate after {config['idle_timeout_seconds'] // 60} idle min"
    if config.get("max_units"):
        return f"managed scaling {config['min_units']}-{config['max_units']}"
    if config.get("instance_groups"):
        return " + ".join(
            f"{g['count']} {g['instance_type']}" + (" (spot)" if g.get("market") == "SPOT" else "")
            for g in config["instance_groups"]
        )
    if "desired_count" in config:
        return f"{config['desired_count']} x {config.get('cpu')}/{config.get('memory')} MiB"
    if "instance_type" in config:
        market = config.get("market", "on_demand")
        count = f"{config['count']} x " if config.get("count") else ""
        return count + str(config["instance_type"]) + ("" if market == "on_demand" else f" ({market})")
    return str(config.get("config") or config.get("action") or text)


def _cloudopt() -> str:
    """How to call the cloudopt command from here: plain when on PATH, else the virtualenv's script."""
    if shutil.which("cloudopt"):
        return "cloudopt"
    script = Path(sys.executable).with_name("cloudopt")
    try:
        return str(script.relative_to(Path.cwd()))
    except ValueError:
        return str(script)
