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
from cloudopt_pipelines.report_cli import register_report_command
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
register_report_command(app)

TRY_SQL = "SELECT * FROM fleet_daily ORDER BY date, account_id LIMIT 10"


def _parse_day(value: str, option: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise _usage_error(f"{option} {value!r} is not a date: give a UTC day as YYYY-MM-DD, e.g. 2026-11-16") from None


def _output_format(as_json: bool, as_csv: bool) -> str:
    """The --json / --csv flags of a reporting command (one at most; neither: a table)."""
    if as_json and as_csv:
        raise _usage_error("--json and --csv print the same rows two ways: give one of them")
    return "json" if as_json else "csv" if as_csv else "table"


JSON_OPTION = typer.Option("--json", help="Print JSON instead of a table.")
CSV_OPTION = typer.Option("--csv", help="Print CSV instead of a table.")


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
            "interrupted: the run in progress was stopped; materialised partitions are kept, "
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
        parsed = parse_accounts(raw, variable="--accounts")
    except ValueError as exc:
        raise _usage_error(str(exc)) from None
    if not parsed:
        raise _usage_error(
            f"--accounts {raw!r} names no account; give 12-digit ids separated by commas, or leave "
            "--accounts out to run every account the source reaches"
        )
    return parsed


def _quiet_dagster() -> None:
    """Keep Dagster's beta and preview warnings and its debug logs out of the user's output, without
    importing Dagster (a read-only command should not pay for it)."""
    import warnings

    os.environ.setdefault("DAGSTER_CLI_API_GRPC_LOG_LEVEL", "WARNING")
    logging.getLogger("dagster").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".* is currently in (beta|preview)")


def _show_progress() -> bool:
    """A progress bar only for a person at a terminal: never in CI, a pipe or a log file."""
    return sys.stdout.isatty() and not os.environ.get("CI")


@contextmanager
def _range_progress(label: str) -> Iterator[tuple]:
    """(echo, tracker) for a range run: with a terminal, a rich bar with elapsed time and ETA, the lines
    printed above it; otherwise plain lines and no bar."""
    from cloudopt_pipelines.orchestration import ProgressTracker

    if not _show_progress():
        yield typer.echo, ProgressTracker()
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("elapsed"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        transient=True,
    )

    class Tracker(ProgressTracker):
        task = None

        def start(self, total: int) -> None:
            self.task = bar.add_task(label, total=total)

        def advance(self) -> None:
            if self.task is not None:
                bar.advance(self.task)

    with bar:
        yield (lambda line: bar.console.print(line, markup=False, highlight=False)), Tracker()


def _silence_solver_banner() -> None:
    """HiGHS prints its banner on stdout (from C) when the first solver of a process is made, before any
    option can turn it off: make that first one with stdout pointed at /dev/null."""
    try:
        import highspy
    except ImportError:
        return
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
            highspy.Highs()
    finally:
        os.dup2(saved, 1)
        os.close(saved)


@app.command()
def run(
    start: Annotated[str, typer.Option("--start", help="First UTC day, YYYY-MM-DD.")],
    end: Annotated[str, typer.Option("--end", help="Last UTC day (inclusive), YYYY-MM-DD.")],
    accounts: Annotated[
        str | None,
        typer.Option("--accounts", help="Comma-separated 12-digit account ids (default: all the source reaches)."),
    ] = None,
    refresh_catalog: Annotated[bool, typer.Option(help="Rebuild the price catalogue first.")] = False,
    only_missing: Annotated[
        bool, typer.Option("--only-missing", help="Keep the partitions already materialised; run the others.")
    ] = False,
) -> None:
    """Materialise every account x day in [start, end] through Dagster (one run per partition, as a
    backfill does), then refresh the warehouse. Exits 1 if any partition failed, 2 for a range or
    accounts that cannot run, 130 when interrupted."""
    first, last = _parse_day(start, "--start"), _parse_day(end, "--end")
    account_list = _account_option(accounts)
    _quiet_dagster()
    _silence_solver_banner()
    from cloudopt_pipelines.definitions import partitions_for
    from cloudopt_pipelines.orchestration import day_range, run_range

    settings = load_settings()
    try:
        day_range(first, last, partitions_for(settings))
    except ValueError as exc:
        raise _usage_error(str(exc)) from None
    with _range_errors(), _range_progress("cloudopt run") as (echo, tracker):
        result = run_range(
            first,
            last,
            account_list,
            settings=settings,
            refresh_catalog=refresh_catalog,
            progress=echo,
            skip_done=only_missing,
            tracker=tracker,
        )
    done = len(result.outcomes) - len(result.failed)
    typer.echo(f"{done}/{len(result.outcomes)} partitions materialised; warehouse: {result.warehouse_path}")
    if result.failed:
        for failure in result.failed:
            typer.echo(f"  failed: {failure.day} account {failure.account_id}: {failure.error}", err=True)
        raise typer.Exit(1)


@app.command()
def demo(
    force: Annotated[
        bool, typer.Option("--force", help="Materialise every partition again, even those already done.")
    ] = False,
) -> None:
    """Run the whole pipeline on the embedded demo data (2 accounts x 14 days) and print a summary. A second
    run keeps the partitions already materialised (--force redoes them). Exits 1 if any partition failed,
    130 when interrupted."""
    _quiet_dagster()
    _silence_solver_banner()
    from cloudopt_pipelines.orchestration import run_range
    from cloudopt_pipelines.partitions import demo_partitions
    from cloudopt_pipelines.summary import demo_summary

    settings = load_settings()
    if settings.env != "demo":
        raise _usage_error("'cloudopt demo' runs on the embedded data: unset CLOUDOPT_ENV or set it to demo")
    window = demo_partitions()
    first, last = window.first_day, window.last_day or window.first_day
    typer.echo(f"cloudopt demo: {first} to {last}, home {settings.home}")
    started = time.monotonic()
    from cloudopt_pipelines.demo.kubernetes import with_demo_cluster

    with _range_errors(), _range_progress("cloudopt demo") as (echo, tracker):

        def run_demo():  # the settings again: with_demo_cluster has set CLOUDOPT_K8S_CLUSTERS
            return run_range(first, last, settings=load_settings(), progress=echo, skip_done=not force, tracker=tracker)

        result = with_demo_cluster(settings.home, run_demo)
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
    as_json: Annotated[bool, JSON_OPTION] = False,
    as_csv: Annotated[bool, CSV_OPTION] = False,
    output: Annotated[
        Path | None,
        typer.Option("--output", help="Write the rows to this file instead: .csv, .parquet or .json by its suffix."),
    ] = None,
) -> None:
    """Run one read-only query on the warehouse and print the result as a table (money with two decimals),
    JSON or CSV, or write it to a CSV, Parquet or JSON file. Only queries and EXPLAIN run: no file outside
    the warehouse and the lake can be read, none written, no extension loaded."""
    import duckdb

    from cloudopt_pipelines.output import FILE_SUFFIXES, render, write_rows
    from cloudopt_pipelines.storage.warehouse import MAX_SQL_ROWS, analyst_query

    fmt = _output_format(as_json, as_csv)
    if not 1 <= max_rows <= MAX_SQL_ROWS:
        raise _usage_error(f"--max-rows must be between 1 and {MAX_SQL_ROWS} (got {max_rows})")
    if output is not None and output.suffix.lower() not in FILE_SUFFIXES:
        raise _usage_error(f"--output {output}: write a .csv, .parquet or .json file (the suffix picks the format)")
    settings = load_settings()
    try:
        result = analyst_query(settings.warehouse_path, query, max_rows, lake_root=settings.lake_url)
    except (duckdb.Error, FileNotFoundError, PermissionError, ValueError) as exc:
        typer.echo(f"error: {str(exc).strip()}", err=True)
        raise typer.Exit(2) from None
    if output is not None:
        write_rows(output, result.columns, result.rows)
        typer.echo(f"wrote {len(result.rows)} rows to {output}", err=True)
    else:
        typer.echo(render(fmt, result.columns, result.rows))
    if result.truncated:
        typer.echo(f"(first {max_rows} rows kept; raise --max-rows or add a LIMIT)", err=True)


@app.command()
def warehouse(
    verify_all: Annotated[
        bool,
        typer.Option(
            "--verify-all",
            help="Hash every lake file again, even those an earlier rebuild verified and that are unchanged since.",
        ),
    ] = False,
) -> None:
    """Rebuild the warehouse from the lake now (what every run ends with), checking each file its views name
    against the SHA-256 recorded when it was written. A damaged or unreadable file is left out of its view
    and printed with the command that re-materialises it. Exits 1 if any file was left out."""
    from cloudopt_pipelines.project_files import marts_dir
    from cloudopt_pipelines.storage.lake import open_lake
    from cloudopt_pipelines.storage.warehouse import build_warehouse

    settings = load_settings()
    build = build_warehouse(open_lake(settings.lake_url), settings.warehouse_path, marts_dir(), verify_all=verify_all)
    for warning in build.warnings:
        typer.echo(f"warning: {warning}", err=True)
    typer.echo(
        f"warehouse {build.path}: {len(build.views)} views, {len(build.marts)} marts; lake files hashed "
        f"{build.files_hashed}, verified before and unchanged {build.files_from_cache}, left out {len(build.left_out)}"
    )
    if build.left_out:
        raise typer.Exit(1)


ACCOUNTS_PARTITIONS_NAME = "accounts"  # cloudopt_pipelines.partitions, without importing Dagster's definitions
# Keys of dagster.yaml that move the instance's storage off the default SQLite files under DAGSTER_HOME.
_STORAGE_KEYS = ("storage", "run_storage", "event_log_storage", "schedule_storage")


def _registered_accounts(settings) -> list[str]:
    """The account partitions registered in the instance. The default SQLite instance is read straight from
    its index database, read-only and without importing Dagster (a read-only command starts in a fraction of
    a second); an instance configured with other storage (Postgres) is opened through Dagster."""
    import sqlite3

    import yaml

    home = settings.dagster_home
    config_file = home / "dagster.yaml"
    config = (yaml.safe_load(config_file.read_text()) or {}) if config_file.exists() else {}
    if not any(key in config for key in _STORAGE_KEYS):
        index = home / "history" / "runs" / "index.db"
        if not index.exists():
            return []  # no run has registered anything yet
        with sqlite3.connect(f"{index.as_uri()}?mode=ro", uri=True) as conn:
            try:
                rows = conn.execute(
                    "SELECT partition FROM dynamic_partitions WHERE partitions_def_name = ? ORDER BY id",
                    (ACCOUNTS_PARTITIONS_NAME,),
                ).fetchall()
            except sqlite3.OperationalError:  # an index from before any partition was added
                return []
        return sorted(r[0] for r in rows)
    from cloudopt_pipelines.instance import ensure_instance

    return sorted(ensure_instance(settings).get_dynamic_partitions(ACCOUNTS_PARTITIONS_NAME))


def _collector(settings):
    """The source's collector, without building the definitions (the demo's needs no Dagster at all)."""
    if settings.env == "demo":
        from cloudopt_pipelines.sources.demo import DemoCollector

        return DemoCollector()
    from cloudopt_pipelines.resources.environments import resources_for

    return resources_for(settings)["source"].get_collector()


@app.command()
def accounts(
    as_json: Annotated[bool, JSON_OPTION] = False,
    as_csv: Annotated[bool, CSV_OPTION] = False,
) -> None:
    """List the account partitions registered in the Dagster instance, each with its status at the source
    (ACTIVE or CONFIGURED ones are scheduled; UNREACHABLE ones are ids the source does not list)."""
    from cloudopt_pipelines.sources.base import UNREACHABLE

    fmt = _output_format(as_json, as_csv)
    settings = load_settings()
    registered = _registered_accounts(settings)
    try:
        statuses = _collector(settings).list_account_statuses()
    except Exception as exc:  # the list still helps when the source is down
        typer.echo(f"warning: statuses unavailable ({str(exc).splitlines()[0]})", err=True)
        statuses = None
    if fmt != "table":
        from cloudopt_pipelines.output import render

        rows = [(a, None if statuses is None else statuses.get(a, UNREACHABLE)) for a in registered]
        typer.echo(render(fmt, ["account_id", "status"], rows))
        return
    for account in registered:
        if statuses is None:
            typer.echo(account)
        else:
            status = statuses.get(account, UNREACHABLE)
            note = " (the source does not list it: check the id)" if status == UNREACHABLE else ""
            typer.echo(f"{account}  {status}{note}")


@app.command()
def info(as_json: Annotated[bool, JSON_OPTION] = False) -> None:
    """Show where the lake, the warehouse and the Dagster instance live, and what the lake holds."""
    from cloudopt_pipelines.storage.lake import open_lake

    settings = load_settings()
    if as_json:
        import json

        lake = open_lake(settings.lake_url)
        described = {
            "home": str(settings.home),
            "env": settings.env,
            "lake": settings.lake_url,
            "warehouse": str(settings.warehouse_path),
            "dagster_home": str(settings.dagster_home),
            "partitions_by_table": {t: len(lake.partitions(t)) for t in lake.tables()},
        }
        typer.echo(json.dumps(described, indent=1))
        return
    typer.echo(f"CLOUDOPT_HOME  {settings.home}")
    typer.echo(f"CLOUDOPT_ENV   {settings.env}")
    typer.echo(f"lake           {settings.lake_url}")
    typer.echo(f"warehouse      {settings.warehouse_path}")
    typer.echo(f"DAGSTER_HOME   {settings.dagster_home}")
    lake = open_lake(settings.lake_url)
    for table in lake.tables():
        typer.echo(f"  {table:<28} {len(lake.partitions(table))} partition(s)")


_Quick = Annotated[bool, typer.Option("--quick", help="The small sizes (what `make bench` runs).")]
_Json = Annotated[bool, typer.Option("--json", help="Print the results as JSON (progress goes to stderr).")]
_Results = Annotated[
    Path, typer.Option("--results-dir", help="Where the JSON results are written (one file a run, and *-latest.json).")
]


@contextmanager
def _stdout_to_stderr(active: bool) -> Iterator[None]:
    """While ``active``, whatever is written to standard output (even by C code) goes to standard error."""
    if not active:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _bench(names: list[str], quick: bool, as_json: bool, results_dir: Path, **options: object) -> None:
    """Run benchmarks through the harness: a ratio table each (or JSON), results written, exit 1 when an
    answer disagrees with its baseline's."""
    import json

    from cloudopt_pipelines.bench.harness import BENCHMARKS, format_report, write_json

    given = {k: v for k, v in options.items() if v is not None}
    reports = []
    for name in names:
        with _stdout_to_stderr(as_json):  # solvers print banners on file descriptor 1
            report = BENCHMARKS[name].run(quick, progress=lambda line: typer.echo(line, err=as_json), **given)
        path = write_json(report, results_dir)
        if not as_json:
            typer.echo(format_report(report))
            typer.echo(f"results: {path}\n")
        reports.append(report)
    if as_json:
        out = [r.to_dict() for r in reports]
        typer.echo(json.dumps(out[0] if len(out) == 1 else out, indent=2, default=str))
    if not all(r.ok for r in reports):
        bad = ", ".join(r.benchmark for r in reports if not r.ok)
        typer.echo(f"error: an answer differs from its baseline's in: {bad}", err=True)
        raise typer.Exit(1)


@bench_app.callback(invoke_without_command=True)
def bench_all(
    ctx: typer.Context, quick: _Quick = False, as_json: _Json = False, results_dir: _Results = Path("bench-results")
) -> None:
    """Benchmarks against a baseline measured in the same run, on the same data, same answer checked.
    Without a command: every registered benchmark (`cloudopt bench --quick` is `make bench`)."""
    if ctx.invoked_subcommand is None:
        from cloudopt_pipelines.bench.harness import BENCHMARKS

        _bench(list(BENCHMARKS), quick, as_json, results_dir)


@bench_app.command("features")
def bench_features(
    quick: _Quick = False,
    as_json: _Json = False,
    results_dir: _Results = Path("bench-results"),
    resources: Annotated[int | None, typer.Option(help="Resources to replicate the real traces onto.")] = None,
    days: Annotated[int | None, typer.Option(help="Days of 5-minute samples per resource.")] = None,
    accounts: Annotated[int | None, typer.Option(help="Accounts the resources are spread over.")] = None,
    window_days: Annotated[int | None, typer.Option(help="Window of utilization_window (default: all days).")] = None,
    threads: Annotated[int | None, typer.Option(help="DuckDB threads (default 2).")] = None,
    pandas: Annotated[bool | None, typer.Option("--pandas/--no-pandas", help="Also time the pandas baseline.")] = None,
    workdir: Annotated[Path | None, typer.Option(help="Where to build the lake (default: a temp dir).")] = None,
    rounds: Annotated[int | None, typer.Option(help="Rounds of every timed step; the fastest counts.")] = None,
) -> None:
    """utilization_daily, utilization_window and staging against plain GROUP BY / scan floors and pandas."""
    _bench(
        ["features"], quick, as_json, results_dir, resources=resources, days=days, accounts=accounts,
        window_days=window_days, threads=threads, pandas=pandas, workdir=workdir, rounds=rounds,
    )  # fmt: skip


@bench_app.command("collect")
def bench_collect(
    quick: _Quick = False,
    as_json: _Json = False,
    results_dir: _Results = Path("bench-results"),
    instances: Annotated[int | None, typer.Option(help="Instances seeded into the moto server.")] = None,
    days: Annotated[int | None, typer.Option(help="Days of 5-minute metrics seeded per instance.")] = None,
    page_size: Annotated[int | None, typer.Option(help="Page size of paginated list calls.")] = None,
) -> None:
    """The AWS collector on a local moto server behind the CloudWatch limits proxy: GetMetricData calls
    against the real minimum, and time against a plain boto3 loop over the same queries."""
    _bench(["collect"], quick, as_json, results_dir, instances=instances, days=days, page_size=page_size)


@bench_app.command("recommend")
def bench_recommend(
    quick: _Quick = False, as_json: _Json = False, results_dir: _Results = Path("bench-results")
) -> None:
    """The standalone EC2 recommender at 1x, 10x and 100x the demo account: CPU per instance (flat) against
    each instance recommended alone."""
    _bench(["recommend"], quick, as_json, results_dir)


@bench_app.command("lp")
def bench_lp(
    quick: _Quick = False,
    as_json: _Json = False,
    results_dir: _Results = Path("bench-results"),
    size: Annotated[int | None, typer.Option(help="Resources of the generated fleet (default 100000).")] = None,
    options: Annotated[int | None, typer.Option(help="Options per resource (default 8).")] = None,
    mip_gap: Annotated[float | None, typer.Option(help="Relative MIP gap to stop at (default 0.001).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the generated fleet.")] = None,
) -> None:
    """The portfolio LP (HiGHS, presolve, dominated options dropped, warm start from yesterday's plan)
    against the plain PuLP model of the same fleet; every plan checked independently."""
    _bench(["lp"], quick, as_json, results_dir, size=size, options=options, mip_gap=mip_gap, seed=seed)


@bench_app.command("e2e")
def bench_e2e(
    quick: _Quick = False,
    as_json: _Json = False,
    results_dir: _Results = Path("bench-results"),
    accounts: Annotated[int | None, typer.Option(help="Accounts (default 5; --quick 2).")] = None,
    instances: Annotated[int | None, typer.Option(help="Instances per account (default 2,000; --quick 60).")] = None,
    days: Annotated[int | None, typer.Option(help="Days (default 14; --quick 2).")] = None,
    executor: Annotated[
        str | None,
        typer.Option(help="multiprocess (each step a process; the default) or in_process (the default with --quick)."),
    ] = None,
    max_concurrent: Annotated[int, typer.Option(help="Step processes at once (multiprocess executor).")] = 2,
    start_method: Annotated[
        str, typer.Option(help="forkserver (step processes forked from one that imported the pipeline) or spawn.")
    ] = "forkserver",
) -> None:
    """Collection to plan through Dagster (multiprocess executor) on a fleet derived from the demo's real
    traces: time per stage and peak RSS, against the sum of the steps' own time."""
    sizes = {k: v for k, v in {"accounts": accounts, "instances": instances, "days": days}.items() if v is not None}
    _bench(
        ["e2e"],
        quick,
        as_json,
        results_dir,
        executor=executor,
        max_concurrent=max_concurrent,
        start_method=start_method,
        **sizes,
    )


def _register_other_benchmarks() -> None:
    """A benchmark registered by another module (``harness.register``) gets a command of its name."""
    from cloudopt_pipelines.bench.harness import BENCHMARKS

    def command_for(name: str):
        def command(
            quick: _Quick = False, as_json: _Json = False, results_dir: _Results = Path("bench-results")
        ) -> None:
            _bench([name], quick, as_json, results_dir)

        command.__doc__ = BENCHMARKS[name].summary
        return command

    known = {c.name for c in bench_app.registered_commands}
    for name in BENCHMARKS:
        if name not in known:
            bench_app.command(name)(command_for(name))


_register_other_benchmarks()


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
    trace: Annotated[
        str | None, typer.Option("--trace", help="Trace file (CSV or CSV.GZ; see docs/backtests.md).")
    ] = None,
    preset: Annotated[
        str | None,
        typer.Option("--preset", help="A published trace and split: azure, bitbrains, google or planetlab."),
    ] = None,
    data_dir: Annotated[
        str, typer.Option("--data-dir", help="Folder of the published trace files (with --preset).")
    ] = "../shared/data/vm_traces",
    train_days: Annotated[float | None, typer.Option("--train-days", help="Days to recommend on (14).")] = None,
    test_days: Annotated[float | None, typer.Option("--test-days", help="Days to replay (7).")] = None,
    train_hours: Annotated[float | None, typer.Option("--train-hours", help="Hours to recommend on.")] = None,
    test_hours: Annotated[float | None, typer.Option("--test-hours", help="Hours to replay.")] = None,
    min_days: Annotated[int, typer.Option("--min-days", help="PlanetLab: VMs seen on at least N days.")] = 8,
    day: Annotated[str | None, typer.Option("--day", help="PlanetLab: only this day (2011-03-03).")] = None,
    allow_graviton: Annotated[
        bool, typer.Option("--allow-graviton", help="Add Graviton (arm64) to every strategy's candidates.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print every VM's choice per strategy as JSON.")] = False,
    fmt: Annotated[str, typer.Option("--format", help="auto, long, azure, bitbrains, gcd or planetlab.")] = "auto",
    max_vms: Annotated[int | None, typer.Option("--max-vms", help="Only the first N VMs (by id).")] = None,
    output: Annotated[str | None, typer.Option("--output", help="Also write the output to this file.")] = None,
) -> None:
    """Right-size each VM on the training window, replay the test window, and compare our risk settings
    with Compute-Optimizer-, Cost-Explorer-, KRR-, VPA- and Kubecost-like baselines (savings vs
    violations), all on the same candidates and credit rule. Exits 1 when a baseline is not dominated
    or the default setting is off the curve, 2 for a bad trace or request."""
    from cloudopt_pipelines.backtest import backtest_command

    code = backtest_command(
        trace,
        train_days,
        test_days,
        as_json,
        fmt,
        max_vms,
        output,
        echo=typer.echo,
        preset=preset,
        data_dir=data_dir,
        train_hours=train_hours,
        test_hours=test_hours,
        min_days=min_days,
        day=day,
        allow_graviton=allow_graviton,
    )
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


if __name__ == "__main__":
    main()
