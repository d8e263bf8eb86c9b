"""`cloudopt approve`, `cloudopt execute` and `cloudopt rollback`: the executor from the command line.

`execute` materialises ``actions/executed_actions`` for one date partition through Dagster, on the
persistent instance under ``$CLOUDOPT_HOME/dagster`` (the UI shows the run). `approve` and `rollback`
work on the records under ``$CLOUDOPT_HOME`` directly. With ``--demo-target`` (the demo only), `execute`
and `rollback` act on the demo's local AWS (``demo/aws_target.py``: a moto server seeded with the demo
fleet, started once per home and left running; `cloudopt demo-target --stop` stops it). Heavy imports
stay inside the functions so that ``cloudopt --help`` stays fast.
"""

import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Annotated, Any

import typer

from cloudopt_pipelines.settings import Settings, load_settings

Echo = Callable[..., None]
EXECUTED_ACTIONS_OP = "actions__executed_actions"


def _parse_day(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        typer.echo(f"error: --date {value!r} is not a date: give a UTC day as YYYY-MM-DD, e.g. 2026-11-16", err=True)
        raise typer.Exit(2) from None


def approve_command(
    day: date,
    actions: str | None,
    all_actions: bool,
    by: str | None,
    list_only: bool,
    settings: Settings | None = None,
    echo: Echo = typer.echo,
    fmt: str = "table",
) -> int:
    """List the plan's actions, or record an approval; returns the exit code."""

    from cloudopt_pipelines.assets.plan import plan_check_reader
    from cloudopt_pipelines.executor import ApprovalError, ExecutorPaths, PlanError, PlanNotFound, approve, read_plan
    from cloudopt_pipelines.orchestration import ensure_instance
    from cloudopt_pipelines.storage.lake import open_lake

    settings = settings or load_settings()
    lake, paths = open_lake(settings.lake_url), ExecutorPaths(settings.home, store=settings.executor.store)
    checks = plan_check_reader(ensure_instance(settings))
    try:
        plan_id, planned = read_plan(lake, day, checks)
        if list_only or (not actions and not all_actions):
            from cloudopt_pipelines.output import render

            rows = [
                (a.action_id, a.account_id, a.resource_id, a.action, a.option_name, a.monthly_savings_usd)
                for a in planned
            ]
            columns = ["action_id", "account_id", "resource_id", "action", "option_name", "monthly_savings_usd"]
            if fmt != "table":
                echo(render(fmt, columns, rows))
                return 0
            echo(f"plan {plan_id or '(empty)'} of {day}: {len(planned)} action(s)")
            echo(render("table", columns, rows))
            if not list_only:
                echo("approve with --actions ID,ID,... or --all, and --by NAME", err=True)
                return 2
            return 0
        if not by:
            echo("error: an approval needs the approver's name: --by NAME", err=True)
            return 2
        ids = [a.strip() for a in (actions or "").split(",") if a.strip()]
        approval = approve(lake, paths, day, by, ids, all_actions, checks=checks)
    except (PlanNotFound, ApprovalError, PlanError) as exc:
        echo(f"error: {exc}", err=True)
        return 2
    covered = [a for a in planned if approval.covers(a)]
    echo(
        f"approval {approval.approval_id} by {approval.approved_by} of plan {plan_id} ({day}): "
        f"{len(covered)} action(s); recorded in {paths.approvals().log.location}"
    )
    left_out = [a.action_id for a in planned if all_actions and not approval.covers(a) and not a.is_commitment]
    if left_out:
        echo(f"not covered by --all (approve them by id): {', '.join(left_out)}")
    return 0


@contextmanager
def kubernetes_executor(settings: Settings) -> Iterator[Any]:
    """The ``KubernetesExecutorResource`` of the settings (``CLOUDOPT_K8S_CLUSTERS``). In the demo without a
    clusters file, the demo cluster (the recorded objects on the loopback API stand-in) is served for the
    command, so its rows are patched (or dry-run) against it as against a real cluster; it is served afresh
    from the recording each time (state changed there lasts for one command)."""
    from cloudopt_pipelines.resources.executor import KubernetesExecutorResource

    if settings.k8s_clusters_file is not None or settings.env != "demo":
        yield KubernetesExecutorResource.from_settings(settings)
        return
    from cloudopt_pipelines.demo.kubernetes import serving_demo_cluster

    with serving_demo_cluster(settings.home / "k8s-demo") as clusters_file:
        yield KubernetesExecutorResource(clusters_file=str(clusters_file))


def materialise_executed_actions(
    day: date,
    mode: str,
    settings: Settings | None = None,
    config: Mapping[str, Any] | None = None,
    resources: Mapping[str, Any] | None = None,
) -> Any:
    """Materialise ``actions/executed_actions`` for ``day`` through Dagster on the persistent instance."""
    from cloudopt_pipelines.orchestration import QUIET_RUN_CONFIG

    settings = settings or load_settings()
    run_config = {
        **QUIET_RUN_CONFIG,
        "ops": {EXECUTED_ACTIONS_OP: {"config": {**(config or {}), "mode": mode}}},
    }
    with kubernetes_executor(settings) as k8s_executor:
        return _materialise(day, mode, settings, run_config, {"k8s_executor": k8s_executor, **(resources or {})})


def _materialise(day: date, mode: str, settings: Settings, run_config: Any, resources: Mapping[str, Any]) -> Any:
    import dagster as dg

    from cloudopt_pipelines.assets.actions import executed_actions
    from cloudopt_pipelines.orchestration import ensure_instance, process_tags, recover_dead_runs
    from cloudopt_pipelines.resources.executor import AwsExecutorResource
    from cloudopt_pipelines.resources.storage import LakeResource
    from cloudopt_pipelines.storage.lake import sweep_leftovers

    instance = ensure_instance(settings)
    # A killed execute or rollback leaves its run STARTED and its staged partition: settle both first.
    recover_dead_runs(instance)
    sweep_leftovers(settings.lake_dir)
    return dg.materialize(
        [executed_actions],
        instance=instance,
        partition_key=day.isoformat(),
        run_config=run_config,
        resources={
            "lake": LakeResource(root=settings.lake_url),
            "aws_executor": AwsExecutorResource.from_env(home=settings.home),
            **resources,
        },
        raise_on_error=False,
        tags={"cloudopt/launched_by": "cloudopt execute", "cloudopt/mode": mode, **process_tags()},
    )


@contextmanager
def demo_target_aws(settings: Settings, echo: Echo) -> Iterator[Any]:
    """The ``AwsExecutorResource`` of the demo target (started if needed), with its dummy credentials set for
    the command."""
    from cloudopt_pipelines.demo.aws_target import demo_credentials, demo_executor_resource, ensure_demo_target

    url = ensure_demo_target(settings.home, lambda line: echo(line, err=True))
    echo(f"demo AWS target: {url} (the demo fleet; nothing reaches AWS)", err=True)
    with demo_credentials():
        yield demo_executor_resource(settings.home, url)


def _demo_target_refused(settings: Settings, echo: Echo) -> bool:
    if settings.env == "demo":
        return False
    echo(
        f"error: --demo-target acts on the demo fleet's local AWS, not on CLOUDOPT_ENV={settings.env}: "
        "leave it out to act on AWS, or set CLOUDOPT_ENV=demo",
        err=True,
    )
    return True


def execute_command(
    day: date,
    mode: str,
    config_file: Path | None = None,
    settings: Settings | None = None,
    resources: Mapping[str, Any] | None = None,
    echo: Echo = typer.echo,
    demo_target: bool = False,
) -> int:
    """Run the executor on ``day`` and print its decisions; 1 if an action failed or the run failed.
    ``demo_target``: against the demo's local AWS instead of AWS."""
    import yaml
    from tabulate import tabulate

    from cloudopt_pipelines.executor.model import MODES
    from cloudopt_pipelines.orchestration import _first_error
    from cloudopt_pipelines.storage.lake import open_lake

    if mode not in MODES:
        echo(f"error: --mode must be one of {', '.join(MODES)} (got {mode!r})", err=True)
        return 2
    try:
        config = (yaml.safe_load(config_file.read_text()) or {}) if config_file else {}
    except OSError as exc:
        echo(f"error: --config {config_file}: {exc.strerror or exc}; give an existing YAML file", err=True)
        return 2
    except yaml.YAMLError as exc:
        echo(f"error: --config {config_file} is not valid YAML: {str(exc).splitlines()[0]}", err=True)
        return 2
    if not isinstance(config, Mapping):
        echo(f"error: --config {config_file} must hold a mapping of executor settings", err=True)
        return 2
    settings = settings or load_settings()
    if demo_target:
        if _demo_target_refused(settings, echo):
            return 2
        with demo_target_aws(settings, echo) as aws_executor:
            result = materialise_executed_actions(
                day, mode, settings, config, {"aws_executor": aws_executor, **(resources or {})}
            )
    else:
        result = materialise_executed_actions(day, mode, settings, config, resources)
    if not result.success:
        echo(f"error: {_first_error(result)}", err=True)
        return 1
    table = open_lake(settings.lake_url).read("executed_actions", day=day)
    rows = [r for r in table.to_pylist() if r["run_id"] == result.run_id]
    echo(f"cloudopt execute {day} --mode {mode}: run {result.run_id}")
    echo(
        tabulate(
            [(r["action_id"], r["resource_id"], r["action"], r["outcome"], (r["reason"] or "")[:100]) for r in rows],
            headers=["action_id", "resource", "action", "outcome", "reason"],
        )
    )
    for r in rows:
        patches = [c for c in json.loads(r["api_calls"] or "[]") if c.get("params", {}).get("kubectl")]
        if patches:
            echo(f"{r['action_id']} {r['resource_id']}: {r['outcome']}, Kubernetes patch(es) {_sent(r['outcome'])}:")
            for c in patches:
                echo(f"  {c['params']['kubectl']}")
    failed = [r for r in rows if r["outcome"] == "failed"]
    for r in failed:
        echo(f"failed: {r['action_id']} {r['resource_id']}: {r['error']}", err=True)
    return 1 if failed else 0


def _sent(outcome: str) -> str:
    return {"would_apply": "an apply would send", "failed": "planned"}.get(outcome, "sent")


def rollback_command(
    action_id: str,
    mode: str,
    by: str,
    settings: Settings | None = None,
    aws: Any = None,
    echo: Echo = typer.echo,
    demo_target: bool = False,
) -> int:
    """Undo one applied action from its recorded state; exit 2 on a clear refusal, 1 on an AWS failure.
    ``demo_target``: on the demo's local AWS instead of AWS."""
    from cloudopt_pipelines.executor import ExecutorError, ExecutorPaths, rollback
    from cloudopt_pipelines.executor.targets import AwsTarget, ExecutionTarget
    from cloudopt_pipelines.resources.executor import AwsExecutorResource
    from cloudopt_pipelines.storage.lake import open_lake

    if not by.strip():
        echo("error: a rollback needs the name of who rolls back: --by NAME (not empty)", err=True)
        return 2
    settings = settings or load_settings()
    paths = ExecutorPaths(settings.home, store=settings.executor.store)
    if demo_target and aws is None:
        if _demo_target_refused(settings, echo):
            return 2
        with demo_target_aws(settings, echo) as resource:
            return rollback_command(action_id, mode, by, settings, resource.get_aws(), echo)
    aws = aws or AwsExecutorResource.from_env(home=settings.home).get_aws()
    try:
        with kubernetes_executor(settings) as k8s_executor:
            k8s = k8s_executor.get_target()
            targets = [aws if isinstance(aws, ExecutionTarget) else AwsTarget(aws), *([k8s] if k8s else [])]
            decision = rollback(open_lake(settings.lake_url), paths, action_id, mode, by, targets)
    except ValueError as exc:
        echo(f"error: {exc}", err=True)
        return 2
    except ExecutorError as exc:
        refused = type(exc).__name__ in ("RollbackRefused", "RollbackError")
        echo(f"{'refused' if refused else 'error'}: {exc}", err=True)
        return 2 if refused else 1
    echo(f"{decision.outcome}: {action_id} ({decision.action} of {decision.resource_id}): {decision.reason}")
    for call in decision.api_calls:
        params = call["params"]
        echo(
            f"  {params['kubectl']}"
            if isinstance(params, dict) and params.get("kubectl")
            else f"  {call['api']} {params}"
        )
    if mode == "dry_run":
        echo("dry run: nothing changed; re-run with --mode apply")
    return 0


def exit_process(code: int) -> None:
    """End the command with ``code``. As the process's own top-level command (its stdout is the process's),
    flush everything and leave with ``os._exit``: the records are already fsync'd and the run is in the
    instance, and the native thread pools that Parquet reads leave behind (Arrow's, with DuckDB loaded) must
    not be torn down by C++ static destructors at exit, which once in a while aborts the process with
    "terminate called without an active exception" (rc 134) after a successful run. Called in-process (tests,
    another command), it only raises ``typer.Exit``."""
    if sys.stdout is not sys.__stdout__ or sys.stderr is not sys.__stderr__:
        raise typer.Exit(code)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


DEMO_TARGET_OPTION = typer.Option(
    "--demo-target",
    help="Act on the demo's local AWS (a moto server seeded with the demo fleet, started if needed), not on AWS.",
)


def register_executor_commands(app: typer.Typer) -> None:
    """Add `approve`, `execute` and `rollback` to the `cloudopt` app."""

    @app.command()
    def approve(
        date_: Annotated[str, typer.Option("--date", help="UTC day of the plan, YYYY-MM-DD.")],
        actions: Annotated[str | None, typer.Option("--actions", help="Comma-separated action ids.")] = None,
        all_actions: Annotated[
            bool, typer.Option("--all", help="Approve every action of the plan (terminate still needs its id).")
        ] = False,
        by: Annotated[str | None, typer.Option("--by", help="Who approves; recorded with the approval.")] = None,
        list_only: Annotated[bool, typer.Option("--list", help="List the plan's actions and ids only.")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="With --list: print JSON instead of a table.")] = False,
        as_csv: Annotated[bool, typer.Option("--csv", help="With --list: print CSV instead of a table.")] = False,
    ) -> None:
        """Approve actions of a day's portfolio plan (append-only record under $CLOUDOPT_HOME/approvals/).
        An approval is for the plan id it names: re-materialising the plan makes it stale."""
        if as_json and as_csv:
            typer.echo("error: --json and --csv print the same rows two ways: give one of them", err=True)
            raise typer.Exit(2)
        fmt = "json" if as_json else "csv" if as_csv else "table"
        code = approve_command(_parse_day(date_), actions, all_actions, by, list_only or fmt != "table", fmt=fmt)
        raise typer.Exit(code)

    @app.command()
    def execute(
        date_: Annotated[str, typer.Option("--date", help="UTC day of the plan, YYYY-MM-DD.")],
        mode: Annotated[str, typer.Option("--mode", help="dry_run (report the calls) or apply.")] = "dry_run",
        config: Annotated[
            Path | None, typer.Option("--config", help="YAML run config of executed_actions (limits, windows, ...).")
        ] = None,
        demo_target: Annotated[bool, DEMO_TARGET_OPTION] = False,
    ) -> None:
        """Materialise actions/executed_actions for a day through Dagster: apply the approved actions (dry run
        unless --mode apply) and print every decision. Exits 1 if an action failed."""
        exit_process(execute_command(_parse_day(date_), mode, config, demo_target=demo_target))

    @app.command()
    def rollback(
        action_id: Annotated[str, typer.Argument(help="The action id to undo (act-...).")],
        by: Annotated[str, typer.Option("--by", help="Who rolls back; recorded in the audit.")],
        mode: Annotated[str, typer.Option("--mode", help="dry_run (report the calls) or apply.")] = "dry_run",
        demo_target: Annotated[bool, DEMO_TARGET_OPTION] = False,
    ) -> None:
        """Undo an applied action from its recorded state (resize back, restart, re-tag, restore a deleted
        volume from its snapshot). Refuses clearly what cannot be undone (released Elastic IPs, terminations)."""
        exit_process(rollback_command(action_id, mode, by, demo_target=demo_target))

    @app.command("demo-target")
    def demo_target_command(
        stop: Annotated[bool, typer.Option("--stop", help="Stop it (what was applied there is lost).")] = False,
    ) -> None:
        """Start (or show) the demo's local AWS: a moto server on the loopback seeded with the demo fleet, that
        `cloudopt execute --demo-target` and `cloudopt rollback --demo-target` act on. No AWS credentials."""
        from cloudopt_pipelines.demo.aws_target import DemoTargetError, ensure_demo_target, stop_demo_target

        settings = load_settings()
        if stop:
            typer.echo("stopped" if stop_demo_target(settings.home) else "no demo AWS target was running")
            return
        if _demo_target_refused(settings, typer.echo):
            raise typer.Exit(2)
        try:
            typer.echo(ensure_demo_target(settings.home, lambda line: typer.echo(line, err=True)))
        except DemoTargetError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
