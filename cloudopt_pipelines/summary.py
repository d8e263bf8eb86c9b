"""The summary printed at the end of ``make demo``: what ran, what was found, where to look next."""

import json
import shutil
import sys
from pathlib import Path

import duckdb

from cloudopt_pipelines.orchestration import PLAN_OUTCOME_ACCOUNT, RangeResult
from cloudopt_pipelines.settings import Settings
from cloudopt_pipelines.storage.lake import Lake
from cloudopt_pipelines.storage.schemas import UNION_VIEWS


def demo_summary(settings: Settings, result: RangeResult, seconds: float, try_sql: str) -> str:
    """A short report: partitions, resources analysed, top recommendations, warehouse and a query to try."""
    lake = Lake(settings.lake_dir)
    con = duckdb.connect()
    accounts = [o for o in result.outcomes if o.account_id != PLAN_OUTCOME_ACCOUNT]
    plans = [o for o in result.outcomes if o.account_id == PLAN_OUTCOME_ACCOUNT]
    lines = [
        f"Partitions: {sum(o.success for o in accounts)}/{len(accounts)} account-days "
        f"({len(result.accounts)} accounts x {len(result.days)} days) and {sum(o.success for o in plans)}/"
        f"{len(plans)} daily plans materialised in {seconds:.0f} s",
    ]
    if lake.exists("resources"):
        kinds = con.execute(
            f"SELECT resource_kind, coalesce(deployment_type, '-') AS dt, count(DISTINCT resource_id) "
            f"FROM read_parquet('{lake.glob('resources')}', hive_partitioning = false) GROUP BY ALL ORDER BY ALL"
        ).fetchall()
        total = sum(n for _, _, n in kinds)
        detail = ", ".join(f"{n} {kind}" + (f" ({dt})" if dt != "-" else "") for kind, dt, n in kinds)
        lines.append(f"Resources analysed: {total}: {detail}")
    if lake.exists("utilization_daily"):
        samples, series = con.execute(
            f"SELECT sum(samples), count(DISTINCT resource_id) "
            f"FROM read_parquet('{lake.glob('utilization_daily')}', hive_partitioning = false)"
        ).fetchone()
        lines.append(f"Utilisation: {samples:,} 5-minute samples over {series} instances")
    rec_tables = [t for t in lake.tables() if t.startswith(UNION_VIEWS["recommendations"])]
    if rec_tables:
        recs = "[" + ", ".join(f"'{lake.glob(t)}'" for t in rec_tables) + "]"
        top = con.execute(
            f"""
            SELECT account_id, resource_id, action, current_config, proposed_config, monthly_savings_usd,
                   savings_pct, confidence, finding, details
            FROM read_parquet({recs}, hive_partitioning = false, union_by_name = true)
            WHERE is_best AND action <> 'keep'
              AND date = (SELECT max(date) FROM read_parquet({recs}, hive_partitioning = false, union_by_name = true))
            ORDER BY monthly_savings_usd DESC
            """
        ).fetchall()
        if top:
            total = sum(row[5] for row in top)
            lines.append(f"Recommendations: {len(top)} resources, ${total:,.2f} per month to save (latest day); top 5:")
            for account, resource, action, current, proposed, savings, pct, confidence, _, details in top[:5]:
                change = f"{_config(current)} -> {_config(proposed)}"
                lines.append(
                    f"  {account} {resource:<24} {action:<16} {change:<36} ${savings:>9,.2f}/month"
                    f" ({pct or 0:.0f} %, confidence {confidence:.2f})"
                )
                lines.extend(f"      {text}" for text in _in_words(details, proposed))
        waiting = con.execute(
            f"""
            SELECT resource_id, details
            FROM read_parquet({recs}, hive_partitioning = false, union_by_name = true)
            WHERE is_best AND finding = 'gathering-data'
              AND date = (SELECT max(date) FROM read_parquet({recs}, hive_partitioning = false, union_by_name = true))
            ORDER BY resource_id
            """
        ).fetchall()
        if waiting:
            first, words = waiting[0][0], _details(waiting[0][1]).get("confidence_words") or "gathering data"
            lines.append(
                f"Gathering data (no change until 30 hours of data): {len(waiting)} instance(s), e.g. {first}: {words}"
            )
    if lake.exists("portfolio_plan"):
        plan = lake.glob("portfolio_plan")
        row = con.execute(
            f"""
            SELECT max(date), any_value(solver_status), count(*), count(*) FILTER (WHERE action <> 'keep'),
                   sum(monthly_savings_usd), sum(one_time_cost_usd)
            FROM read_parquet('{plan}', hive_partitioning = false)
            WHERE date = (SELECT max(date) FROM read_parquet('{plan}', hive_partitioning = false))
            """
        ).fetchall()[0]
        day, status, resources, changes, savings, upfront = row
        lines.append(
            f"Portfolio plan {day} ({status}): {changes} changes over {resources} resources, "
            f"${savings or 0:,.2f} per month, ${upfront or 0:,.2f} upfront, within config/constraints.yaml"
        )
    lines += [
        f"Warehouse: {settings.warehouse_path}",
        f'Try:       {_cloudopt()} sql "{try_sql}"',
        f"      or   python -c \"import duckdb; print(duckdb.connect('{settings.warehouse_path}', "
        f"read_only=True).sql('FROM fleet_daily LIMIT 5'))\"",
        "UI:        make dev   (then open http://127.0.0.1:3000)",
    ]
    return "\n".join(lines)


def _details(text: str | None) -> dict:
    try:
        value = json.loads(text or "{}")
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _in_words(details_text: str | None, proposed: str | None) -> list[str]:
    """The reason and confidence of a best row, and the alternative of the other architecture."""
    details = _details(details_text)
    out = []
    if details.get("reason"):
        out.append(f"why: {details['reason']}; {details.get('confidence_words') or ''}".rstrip("; "))
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
