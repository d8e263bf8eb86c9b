"""The ``cloudopt`` command line: run ranges through Dagster, the demo, SQL on the warehouse, benchmarks."""

import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Annotated

import typer

from cloudopt_pipelines.executor_cli import register_executor_commands
from cloudopt_pipelines.settings import load_settings, parse_accounts

app = typer.Typer(
    help="cloudopt: cloud-cost optimisation pipelines on Dagster.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
bench_app = typer.Typer(help="Benchmarks that print ratios against a baseline measured in the same run.")
app.add_typer(bench_app, name="bench")
backtest_app = typer.Typer(help="Backtests of the optimisers on public VM traces.")
app.add_typer(backtest_app, name="backtest")
register_executor_commands(app)

DEMO_START = date(2026, 11, 16)
DEMO_END = date(2026, 11, 22)
TRY_SQL = "SELECT * FROM fleet_daily ORDER BY date, account_id LIMIT 10"


def _parse_day(value: str, option: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a date as YYYY-MM-DD", param_hint=option) from None


INTERRUPTED = 130


def _usage_error(message: str) -> typer.Exit:
    """Print a one-line usage error; the caller raises the returned exit (code 2)."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


@contextmanager
def _range_errors() -> Iterator[None]:
    """Turn what can go wrong in a range run into one line and an exit code: 2 for a request that cannot
    run (bad range or accounts), 1 for a failure, 130 when interrupted (Ctrl-C or SIGTERM)."""
    try:
        yield
    except KeyboardInterrupt:
        typer.echo(
            "interrupted: the run in progress was marked failed; materialised partitions are kept, "
            "run the command again to finish",
            err=True,
        )
        raise typer.Exit(INTERRUPTED) from None
    except ValueError as exc:
        raise _usage_error(str(exc)) from None
    except (RuntimeError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


def _account_option(raw: str | None) -> list[str] | None:
    """The --accounts option: None when not given; given, it must name at least one valid id."""
    if raw is None:
        return None
    try:
        parsed = parse_accounts(raw)
    except ValueError as exc:
        raise _usage_error(f"--accounts: {exc}") from None
    if not parsed:
        raise _usage_error(
            f"--accounts {raw!r} names no account; give 12-digit ids separated by commas, or leave "
            "--accounts out to run every account the source reaches"
        )
    return parsed


def _quiet_dagster() -> None:
    import warnings

    import dagster as dg

    os.environ.setdefault("DAGSTER_CLI_API_GRPC_LOG_LEVEL", "WARNING")
    logging.getLogger("dagster").setLevel(logging.WARNING)
    for category in (dg.BetaWarning, dg.PreviewWarning):
        warnings.filterwarnings("ignore", category=category)


@app.command()
def run(
    start: Annotated[str, typer.Option("--start", help="First UTC day, YYYY-MM-DD.")],
    end: Annotated[str, typer.Option("--end", help="Last UTC day (inclusive), YYYY-MM-DD.")],
    accounts: Annotated[
        str | None,
        typer.Option("--accounts", help="Comma-separated 12-digit account ids (default: all the source reaches)."),
    ] = None,
    refresh_catalog: Annotated[bool, typer.Option(help="Rebuild the price catalogue first.")] = False,
) -> None:
    """Materialise every account x day in [start, end] through Dagster (one run per partition, as a
    backfill does), then refresh the warehouse. Exits 1 if any partition failed, 2 for a range or
    accounts that cannot run, 130 when interrupted."""
    first, last = _parse_day(start, "--start"), _parse_day(end, "--end")
    account_list = _account_option(accounts)
    _quiet_dagster()
    from cloudopt_pipelines.orchestration import day_range, run_range

    try:
        day_range(first, last)
    except ValueError as exc:
        raise _usage_error(str(exc)) from None
    with _range_errors():
        result = run_range(first, last, account_list, refresh_catalog=refresh_catalog, progress=typer.echo)
    done = len(result.outcomes) - len(result.failed)
    typer.echo(f"{done}/{len(result.outcomes)} partitions materialised; warehouse: {result.warehouse_path}")
    if result.failed:
        for failure in result.failed:
            typer.echo(f"  failed: {failure.day} account {failure.account_id}: {failure.error}", err=True)
        raise typer.Exit(1)


@app.command()
def demo() -> None:
    """Run the whole pipeline on the embedded demo data (2 accounts x 7 days) and print a summary.
    Exits 1 if any partition failed, 130 when interrupted."""
    _quiet_dagster()
    from cloudopt_pipelines.orchestration import run_range
    from cloudopt_pipelines.summary import demo_summary

    settings = load_settings()
    if settings.env != "demo":
        raise typer.BadParameter("'cloudopt demo' runs on the embedded data: unset CLOUDOPT_ENV or set it to demo")
    typer.echo(f"cloudopt demo: {DEMO_START} to {DEMO_END}, home {settings.home}")
    started = time.monotonic()
    from cloudopt_pipelines.demo.kubernetes import with_demo_cluster

    with _range_errors():
        result = with_demo_cluster(settings.home, lambda: run_range(DEMO_START, DEMO_END, progress=typer.echo))
    typer.echo("")
    typer.echo(demo_summary(settings, result, time.monotonic() - started, TRY_SQL))
    if result.failed:
        raise typer.Exit(1)


@app.command()
def plan(
    input_path: Annotated[
        str | None, typer.Option("--input", help="Resources and their options, JSON (docs/linear_optimizer.md).")
    ] = None,
    constraints: Annotated[
        str | None,
        typer.Option(
            "--constraints",
            help="With --input: LP constraints, JSON or YAML. With --date: a constraints file as "
            "config/constraints.yaml (default: $CLOUDOPT_PLAN_CONSTRAINTS, else that file).",
        ),
    ] = None,
    day: Annotated[
        str | None, typer.Option("--date", help="Plan the lake's recommendations of this UTC day (writes nothing).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    sweep: Annotated[
        str | None, typer.Option("--sweep", help="budget (cost against risk) or max_changes (cost against changes).")
    ] = None,
    steps: Annotated[int, typer.Option("--steps", help="Points of the sweep.")] = 10,
    chart: Annotated[
        str | None, typer.Option("--chart", help="With --sweep: write the curve to this SVG file.")
    ] = None,
    time_limit: Annotated[float, typer.Option("--time-limit", help="Seconds per solve.")] = 60.0,
) -> None:
    """What-if runs of the portfolio optimiser: the plan as a table (or JSON), or with --sweep the Pareto curve
    of cost against risk or changes, as a table and an SVG chart. Exits 1 without a feasible plan, 2 on bad input."""
    from cloudopt_pipelines.plan_cli import plan_command

    code = plan_command(
        input_path,
        constraints,
        as_json=as_json,
        sweep=sweep,
        steps=steps,
        chart=chart,
        day=day,
        time_limit_s=time_limit,
        echo=typer.echo,
    )
    if code:
        raise typer.Exit(code)


@app.command()
def sql(
    query: Annotated[str, typer.Argument(help="One SQL query to run on the warehouse, read-only.")],
    max_rows: Annotated[
        int, typer.Option(help="Rows to print at most, 1 to 10000 (read bigger results with DuckDB directly).")
    ] = 50,
) -> None:
    """Run one read-only query on the warehouse and print the result as a table. Only queries and EXPLAIN
    run: no file outside the warehouse and the lake can be read, none written, no extension loaded."""
    import duckdb

    from cloudopt_pipelines.storage.warehouse import MAX_SQL_ROWS, analyst_query

    if not 1 <= max_rows <= MAX_SQL_ROWS:
        raise _usage_error(f"--max-rows must be between 1 and {MAX_SQL_ROWS} (got {max_rows})")
    settings = load_settings()
    try:
        result = analyst_query(settings.warehouse_path, query, max_rows, lake_root=settings.lake_dir)
    except (duckdb.Error, FileNotFoundError, PermissionError, ValueError) as exc:
        typer.echo(f"error: {str(exc).strip()}", err=True)
        raise typer.Exit(2) from None
    from tabulate import tabulate

    typer.echo(tabulate(result.rows, headers=result.columns, tablefmt="github", floatfmt=".4g"))
    if result.truncated:
        typer.echo(f"(first {max_rows} rows shown; raise --max-rows or add a LIMIT)", err=True)


@app.command()
def accounts() -> None:
    """List the account partitions registered in the Dagster instance, each with its status at the source
    (ACTIVE or CONFIGURED ones are scheduled; UNREACHABLE ones are ids the source does not list)."""
    from cloudopt_pipelines.definitions import source_for
    from cloudopt_pipelines.orchestration import ensure_instance
    from cloudopt_pipelines.partitions import ACCOUNTS_PARTITIONS_NAME
    from cloudopt_pipelines.sources.base import UNREACHABLE

    settings = load_settings()
    instance = ensure_instance(settings)
    try:
        statuses = source_for(settings).get_collector().list_account_statuses()
    except Exception as exc:  # the list still helps when the source is down
        typer.echo(f"warning: statuses unavailable ({str(exc).splitlines()[0]})", err=True)
        statuses = None
    for account in sorted(instance.get_dynamic_partitions(ACCOUNTS_PARTITIONS_NAME)):
        if statuses is None:
            typer.echo(account)
        else:
            status = statuses.get(account, UNREACHABLE)
            note = " (the source does not list it: check the id)" if status == UNREACHABLE else ""
            typer.echo(f"{account}  {status}{note}")


@app.command()
def info() -> None:
    """Show where the lake, the warehouse and the Dagster instance live, and what the lake holds."""
    from cloudopt_pipelines.storage.lake import Lake

    settings = load_settings()
    typer.echo(f"CLOUDOPT_HOME  {settings.home}")
    typer.echo(f"CLOUDOPT_ENV   {settings.env}")
    typer.echo(f"lake           {settings.lake_dir}")
    typer.echo(f"warehouse      {settings.warehouse_path}")
    typer.echo(f"DAGSTER_HOME   {settings.dagster_home}")
    lake = Lake(settings.lake_dir)
    for table in lake.tables():
        typer.echo(f"  {table:<28} {len(lake.partitions(table))} partition(s)")


@bench_app.command("features")
def bench_features(
    resources: Annotated[int, typer.Option(help="Resources to replicate the real traces onto.")] = 20_000,
    days: Annotated[int, typer.Option(help="Days of 5-minute samples per resource.")] = 7,
    accounts: Annotated[int, typer.Option(help="Accounts the resources are spread over.")] = 4,
    window_days: Annotated[int | None, typer.Option(help="Window of utilization_window (default: all days).")] = None,
    threads: Annotated[int, typer.Option(help="DuckDB threads.")] = 2,
    pandas: Annotated[bool, typer.Option("--pandas/--no-pandas", help="Also time the pandas baseline.")] = True,
    workdir: Annotated[Path | None, typer.Option(help="Where to build the lake (default: a temp dir).")] = None,
    rounds: Annotated[int, typer.Option(help="Rounds of every timed step; the fastest counts.")] = 3,
) -> None:
    """Time utilization_daily and utilization_window against a plain GROUP BY floor and pandas."""
    from cloudopt_pipelines.bench.features import format_report, run_features_benchmark

    result = run_features_benchmark(
        resources=resources,
        days=days,
        accounts=accounts,
        window_days=window_days,
        threads=threads,
        pandas=pandas,
        workdir=workdir,
        progress=typer.echo,
        rounds=rounds,
    )
    typer.echo(format_report(result))


@bench_app.command("collect")
def bench_collect(
    instances: Annotated[int, typer.Option(help="Instances seeded into the moto server.")] = 1000,
    days: Annotated[int, typer.Option(help="Days of 5-minute metrics seeded per instance.")] = 1,
    page_size: Annotated[int | None, typer.Option(help="Page size of paginated list calls.")] = None,
) -> None:
    """Seed a local moto server, collect one day, report API calls against the minimum and rows/s."""
    from cloudopt_pipelines.bench.collect import format_report, run_collect_benchmark

    typer.echo(format_report(run_collect_benchmark(instances=instances, days=days, page_size=page_size)))


@bench_app.command("lp")
def bench_lp(
    sizes: Annotated[str, typer.Option(help="Comma-separated fleet sizes (resources).")] = "1000,10000,100000",
    options: Annotated[int, typer.Option(help="Options per resource.")] = 8,
    solvers: Annotated[str, typer.Option(help="Comma-separated solvers: highs, cbc, highs_pulp.")] = "highs,cbc",
    cbc_max_size: Annotated[int, typer.Option(help="Skip CBC above this many resources.")] = 10_000,
    mip_gap: Annotated[float, typer.Option(help="Relative MIP gap to stop at.")] = 1e-3,
    seed: Annotated[int, typer.Option(help="Seed of the generated fleets.")] = 0,
) -> None:
    """Build and solve random fleets with group constraints: model-build and solve time and gap per solver."""
    from cloudopt_pipelines.bench.lp import format_table, run_lp_benchmark

    rows = run_lp_benchmark(
        sizes=tuple(int(s) for s in sizes.split(",") if s.strip()),
        options_per_resource=options,
        solvers=tuple(s.strip() for s in solvers.split(",") if s.strip()),
        seed=seed,
        cbc_max_size=cbc_max_size,
        mip_gap=mip_gap,
    )
    typer.echo(format_table(rows))


@bench_app.command("nodes")
def bench_nodes(
    sizes: Annotated[str, typer.Option(help="Comma-separated cluster sizes (pods).")] = "200,2000",
    seed: Annotated[int, typer.Option(help="Seed of the generated clusters.")] = 0,
) -> None:
    """Pack seeded clusters' node pools: cost per pod against a plain first-fit-decreasing on today's type,
    the gap to the LP bound, and how flat cost per pod stays from the smallest to the largest size."""
    from cloudopt_pipelines.bench.nodes import format_report, run_nodes_benchmark

    rows = run_nodes_benchmark(sizes=tuple(int(s) for s in sizes.split(",") if s.strip()), seed=seed)
    typer.echo(format_report(rows))


@bench_app.command("kubernetes")
def bench_kubernetes(
    quick: Annotated[bool, typer.Option(help="40 and 200 pods with a 2-second MILP budget (a smoke run).")] = False,
    sizes: Annotated[str, typer.Option(help="Comma-separated cluster sizes (pods); default 200,2000.")] = "",
    seed: Annotated[int, typer.Option(help="Seed of the generated clusters and usage.")] = 0,
) -> None:
    """Workload and node-pool recommendations end to end on seeded clusters: cost per pod against KRR-like
    requests packed by a plain first-fit-decreasing, and how flat it stays from the smallest size to the largest."""
    from cloudopt_pipelines.bench.kubernetes import format_report, run_kubernetes_benchmark

    chosen = tuple(int(s) for s in sizes.split(",") if s.strip()) or None
    typer.echo(format_report(run_kubernetes_benchmark(quick=quick, sizes=chosen, seed=seed)))


@backtest_app.command("standalone")
def backtest_standalone(
    trace: Annotated[str, typer.Option("--trace", help="Trace file (CSV or CSV.GZ; see docs/backtests.md).")],
    train_days: Annotated[float, typer.Option("--train-days", help="Days to recommend on.")] = 14,
    test_days: Annotated[float, typer.Option("--test-days", help="Days to replay on the recommendation.")] = 7,
    as_json: Annotated[bool, typer.Option("--json", help="Print every VM's choice per strategy as JSON.")] = False,
    fmt: Annotated[str, typer.Option("--format", help="auto, long, azure, bitbrains, gcd or planetlab.")] = "auto",
    max_vms: Annotated[int | None, typer.Option("--max-vms", help="Only the first N VMs (by id).")] = None,
    output: Annotated[str | None, typer.Option("--output", help="Also write the output to this file.")] = None,
) -> None:
    """Right-size each VM on the training window, replay the test window, and compare our risk settings
    with Compute-Optimizer-, Cost-Explorer-, KRR- and VPA-like baselines (savings vs violations).
    Exits 1 when a baseline is not dominated or the default setting is off the curve, 2 for a bad trace."""
    from cloudopt_pipelines.backtest import backtest_command

    code = backtest_command(trace, train_days, test_days, as_json, fmt, max_vms, output, echo=typer.echo)
    if code:
        raise typer.Exit(code)


@backtest_app.command("kubernetes")
def backtest_kubernetes(
    memory_trace: Annotated[
        str | None,
        typer.Option("--memory-trace", help="Pod memory (Alibaba 2026 pod memory, or vm_id/step_5min/mem_util_pct)."),
    ] = None,
    cpu_trace: Annotated[str | None, typer.Option("--cpu-trace", help="VM CPU, Azure V1 long format.")] = None,
    train_fraction: Annotated[
        float, typer.Option("--train-fraction", help="Share of each pod's samples to size on.")
    ] = 2 / 3,
    max_pods: Annotated[int | None, typer.Option("--max-pods", help="Only the first N pods (by id).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole report as JSON.")] = False,
) -> None:
    """Size each pod's requests on the first part of real container usage, replay the rest, and compare our
    settings with VPA-like, KRR, Goldilocks-like and Kubecost-like baselines (savings vs CPU over request and
    OOMs). Exits 1 when a baseline is not dominated, 2 for a missing or unusable trace."""
    from cloudopt_pipelines.backtest.kubernetes import kubernetes_backtest_command

    code = kubernetes_backtest_command(memory_trace, cpu_trace, train_fraction, max_pods, as_json, echo=typer.echo)
    if code:
        raise typer.Exit(code)


def main() -> None:
    """The console entry point: a bad setting (a ``CLOUDOPT_*`` variable, the clusters file) ends any
    command with one line naming it and the fix (exit 2), Ctrl-C with 130; never a traceback."""
    from cloudopt_pipelines.settings import SettingsError
    from cloudopt_pipelines.sources.kubernetes_config import ClustersFileError

    _quiet_dagster()
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
    except (SettingsError, ClustersFileError) as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
