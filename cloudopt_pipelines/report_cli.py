"""``cloudopt report``: materialise a day's savings report through Dagster, print where it is, open it."""

from __future__ import annotations

import json
import webbrowser
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime
from typing import Annotated, Any

import typer

from cloudopt_pipelines.settings import START_DATE, Settings, load_settings

Echo = Callable[..., Any]
REPORT_OP = "reports__savings_report"


def materialise_savings_report(
    day: date, settings: Settings | None = None, config: Mapping[str, Any] | None = None
) -> Any:
    """Materialise ``reports/savings_report`` for ``day`` on the persistent instance (the asset's own code)."""
    import dagster as dg

    from cloudopt_pipelines.assets.report import build_savings_report_asset
    from cloudopt_pipelines.optimizers.base import select_optimizers
    from cloudopt_pipelines.orchestration import QUIET_RUN_CONFIG, ensure_instance, process_tags
    from cloudopt_pipelines.resources.reports import ReportsResource
    from cloudopt_pipelines.resources.storage import LakeResource

    settings = settings or load_settings()
    asset = build_savings_report_asset(select_optimizers(settings.deployment_types))
    return dg.materialize(
        [asset],
        instance=ensure_instance(settings),
        partition_key=day.isoformat(),
        run_config={**QUIET_RUN_CONFIG, "ops": {REPORT_OP: {"config": dict(config or {})}}},
        resources={
            "lake": LakeResource(root=settings.lake_url),
            "reports": ReportsResource(root=str(settings.reports_dir)),
        },
        raise_on_error=False,
        tags={"cloudopt/launched_by": "cloudopt report", **process_tags()},
    )


def report_command(
    day_text: str,
    open_it: bool = False,
    as_json: bool = False,
    settings: Settings | None = None,
    echo: Echo = typer.echo,
    opener: Callable[[str], Any] = webbrowser.open,
) -> int:
    """Write the report of the day and print its headline (or JSON); 2 for a bad day, 1 if the run failed."""
    from cloudopt_pipelines.orchestration import _first_error
    from cloudopt_pipelines.report.render import HTML_NAME, JSON_NAME, PNG_NAME

    try:
        day = date.fromisoformat(day_text)
    except ValueError:
        echo(f"error: --date {day_text!r} is not a date as YYYY-MM-DD", err=True)
        return 2
    today = datetime.now(UTC).date()
    if not date.fromisoformat(START_DATE) <= day < today:
        echo(
            f"error: --date {day} is outside the daily partitions ({START_DATE} to the last complete UTC day)", err=True
        )
        return 2
    from cloudopt_pipelines.plan_cli import _solver_chatter_to_stderr

    settings = settings or load_settings()
    with _solver_chatter_to_stderr():
        result = materialise_savings_report(day, settings)
    if not result.success:
        echo(f"error: the savings report of {day} failed: {_first_error(result)}", err=True)
        return 1
    folder = settings.reports_dir / day.isoformat()
    document = json.loads((folder / JSON_NAME).read_text())
    headline, notes = document["headline"], document["notes"]
    html = folder / HTML_NAME
    if as_json:
        echo(json.dumps({"html": str(html), "png": str(folder / PNG_NAME), **document}, indent=2))
    else:
        for note in notes:
            echo(f"note: {note}", err=True)
        echo(f"savings report {day}: {html}")
        if not headline["resources"]:
            echo("  nothing planned that day: the report says why")
        else:
            echo(
                f"  monthly savings {headline['monthly_savings_usd']:,.2f} USD "
                f"({headline['changes']} change(s) over {headline['resources']} resource(s)); "
                f"cost {headline['monthly_cost_current_usd']:,.2f} -> {headline['monthly_cost_proposed_usd']:,.2f} "
                f"USD/month; realised {headline['realised_monthly_savings_usd']:,.2f} USD/month"
            )
        echo(f"  beside it: {PNG_NAME}, {JSON_NAME}, csv/ (one file per table)")
    if open_it:
        opener(html.as_uri())
    return 0


def register_report_command(app: typer.Typer) -> None:
    """Add `report` to the `cloudopt` app."""

    @app.command()
    def report(
        date_: Annotated[str, typer.Option("--date", help="UTC day of the plan, YYYY-MM-DD.")],
        open_it: Annotated[bool, typer.Option("--open", help="Open the page in the default browser.")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print the headline and tables as JSON.")] = False,
    ) -> None:
        """Write the savings report of a day (materialises reports/savings_report through Dagster):
        $CLOUDOPT_HOME/reports/DAY/savings_report.html, a PNG summary and every table as CSV and JSON.
        Exits 2 for a bad day, 1 if the report failed; a day without a plan gets a report that says so."""
        raise typer.Exit(report_command(date_, open_it, as_json))
