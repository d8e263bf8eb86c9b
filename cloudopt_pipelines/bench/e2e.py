"""End-to-end scale benchmark: collection to plan through Dagster on a fleet derived from the demo's real traces.

The fleet keeps the demo's shapes with new ids: account ``k`` copies the structure of demo account
``k mod 2`` (its groups, clusters, volumes and addresses) and holds ``instances`` instances, copy ``j``
of demo instance ``i`` replaying that instance's real series (Azure V1 CPU, Google cluster-data memory);
day ``d`` replays demo day ``d mod 7``. Both are written as a demo data folder (``fleet.json``,
``metrics.parquet``) and served by the demo collector, so every asset runs as in production: the daily
job per account x day, the plan per day, the warehouse, on a fresh Dagster instance and lake.

Reported per stage (raw, features, recommendations, plan, warehouse): the steps' own time from the
Dagster event log, and the run's wall time against the sum of its steps (what orchestration adds);
the peak RSS of this process and, sampled from /proc (:class:`DescendantsRss`), of every process
below it at one moment. ``--quick``: 2 accounts x 60 instances x 2 days.

``executor="multiprocess"`` (the default without ``--quick``, as the Dagster daemon runs a job): every run goes through
``dagster.execute_job`` with the multiprocess executor (``max_concurrent`` step processes, 2 by
default: the machine's cores; forked from a server that imported the pipeline once, ``start_method``),
in the order of ``cloudopt run`` (the catalogue, every account x day,
the plan of each day, the warehouse); each step process rebuilds the definitions over the scaled
fleet (:func:`bench_job`). ``executor="in_process"`` (the default with ``--quick``): ``run_range``
itself, the code path of ``cloudopt run``.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import tempfile
import threading
import time
import warnings
from collections import defaultdict
from collections.abc import Callable
from contextlib import contextmanager
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cloudopt_pipelines.bench.harness import Line, Report
from cloudopt_pipelines.procfs import PARENT_PID, stat_fields
from cloudopt_pipelines.resources.sources import SourceResource
from cloudopt_pipelines.sources.base import Collector
from cloudopt_pipelines.sources.demo import DEMO_DATA, DemoCollector

FULL = {"accounts": 5, "instances": 2000, "days": 14}
QUICK = {"accounts": 2, "instances": 60, "days": 2}
SEED_DAYS = 7
SLOTS = 288


class ScaledDemoSource(SourceResource):
    """The demo collector over a generated demo data folder."""

    data_dir: str

    def get_collector(self) -> Collector:
        return DemoCollector(Path(self.data_dir))


def build_fleet(out: Path, accounts: int, instances: int, days: int) -> list[str]:
    """Write ``fleet.json`` and ``metrics.parquet`` of the scaled fleet into ``out``; returns the account ids."""
    seed = json.loads((DEMO_DATA / "fleet.json").read_text())
    metrics = pq.read_table(DEMO_DATA / "metrics.parquet").sort_by([("resource_id", "ascending"), ("ts", "ascending")])
    series = {
        rid: metrics.filter(pa.compute.equal(metrics["resource_id"], rid))
        for rid in set(metrics["resource_id"].to_pylist())
    }
    start = date.fromisoformat(seed["start"])
    out.mkdir(parents=True, exist_ok=True)
    fleet: dict[str, Any] = {"start": seed["start"], "days": days, "accounts": []}
    writer = None
    ids = []
    try:
        for k in range(accounts):
            template = seed["accounts"][k % len(seed["accounts"])]
            account_id = f"{900000000001 + k:012d}"
            ids.append(account_id)
            base = template["instances"]
            copies = []
            for n in range(instances):
                src = base[n % len(base)]
                copy = json.loads(json.dumps(src))
                copy["resource_id"] = f"i-{k + 1:02x}{n:015x}"
                copy["tags"]["Name"] = f"{src['tags'].get('Name', 'instance')}-{n}"
                copy["seed_id"] = src["resource_id"]
                copies.append(copy)
            fleet["accounts"].append({**template, "account_id": account_id, "name": f"scale-{k}", "instances": copies})
            for d in range(days):
                day_start = np.datetime64(start + timedelta(days=d), "us")
                parts = []
                for copy in copies:
                    s = series.get(copy["seed_id"])
                    if s is None:
                        continue
                    src_day = s.slice((d % SEED_DAYS) * SLOTS, SLOTS)
                    offsets = np.arange(src_day.num_rows, dtype="timedelta64[m]") * 5
                    parts.append(
                        {
                            "cpu_pct": src_day["cpu_pct"].to_numpy(zero_copy_only=False),
                            "cpu_max_pct": src_day["cpu_max_pct"].to_numpy(zero_copy_only=False),
                            "mem_pct": src_day["mem_pct"].to_numpy(zero_copy_only=False),
                            "ts": day_start + offsets,
                            "resource_id": copy["resource_id"],
                        }
                    )
                n_rows = sum(len(p["ts"]) for p in parts)
                table = pa.table(
                    {
                        "account_id": pa.array([account_id] * n_rows),
                        "resource_id": pa.array([p["resource_id"] for p in parts for _ in range(len(p["ts"]))]),
                        "ts": pa.array(np.concatenate([p["ts"] for p in parts]), pa.timestamp("us", tz="UTC")),
                        "cpu_pct": np.concatenate([p["cpu_pct"] for p in parts]),
                        "cpu_max_pct": np.concatenate([p["cpu_max_pct"] for p in parts]),
                        "mem_pct": pa.array(np.concatenate([p["mem_pct"] for p in parts]), from_pandas=True),
                    }
                )
                if writer is None:
                    writer = pq.ParquetWriter(out / "metrics.parquet", table.schema, compression="zstd")
                writer.write_table(table, row_group_size=SLOTS * 500)
    finally:
        if writer is not None:
            writer.close()
    for instance in (i for a in fleet["accounts"] for i in a["instances"]):
        instance.pop("seed_id")
    (out / "fleet.json").write_text(json.dumps(fleet))
    return ids


def bench_job(name: str, data_dir: str) -> dg.JobDefinition:
    """The job ``name`` of the definitions over the scaled fleet in ``data_dir`` (what each step process of
    the multiprocess executor rebuilds; CLOUDOPT_HOME and CLOUDOPT_ENV come from the environment)."""
    from cloudopt_pipelines.definitions import build_definitions
    from cloudopt_pipelines.settings import load_settings

    # a step process prints nothing but the run's own log (the beta / preview notices are known)
    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    warnings.filterwarnings("ignore", category=dg.PreviewWarning)
    return build_definitions(load_settings(), ScaledDemoSource(data_dir=data_dir)).resolve_job_def(name)


def run_multiprocess(
    settings: Any,
    data_dir: Path,
    accounts: list[str],
    days: list[date],
    progress: Callable[[str], None] = print,
    max_concurrent: int = 2,
    start_method: str = "forkserver",
) -> list[tuple[str, date | None, bool, str]]:
    """Every run of ``cloudopt run`` over ``days`` x ``accounts``, each with the multiprocess executor;
    returns (what, day, success, run id) per run. ``start_method``: ``forkserver`` (step processes forked
    from one server that has imported the pipeline once) or ``spawn`` (Dagster's default: a fresh
    interpreter per step, which imports everything again)."""
    from cloudopt_pipelines.assets.plan import PLAN_JOB
    from cloudopt_pipelines.automation import CATALOG_JOB, DAILY_JOB, WAREHOUSE_JOB
    from cloudopt_pipelines.instance import PRELOADED_MODULES
    from cloudopt_pipelines.orchestration import (
        QUIET_RUN_CONFIG,
        TAG_LAUNCHED_BY,
        ensure_instance,
        process_tags,
        register_accounts,
    )
    from cloudopt_pipelines.partitions import account_daily_partitions, account_day_key, daily_partitions

    instance = ensure_instance(settings)
    register_accounts(instance, accounts)
    start: dict[str, Any] = (
        {"forkserver": {"preload_modules": [__name__, *PRELOADED_MODULES]}}  # what the definitions' executor preloads
        if start_method == "forkserver"
        else {start_method: {}}
    )
    multiprocess = {"max_concurrent": max_concurrent, "start_method": start}
    run_config = {**QUIET_RUN_CONFIG, "execution": {"config": {"multiprocess": multiprocess}}}
    runs: list[tuple[str, date | None, bool, str]] = []

    def one(name: str, what: str, day: date | None, tags: dict[str, str]) -> None:
        job = dg.build_reconstructable_job(__name__, "bench_job", (name, str(data_dir)))
        result = dg.execute_job(
            job, instance, run_config=run_config, tags={**process_tags(), TAG_LAUNCHED_BY: "cloudopt bench e2e", **tags}
        )
        runs.append((what, day, result.success, result.run_id))
        progress(f"[{what}] {day or ''} {'ok' if result.success else 'FAILED'} ({result.run_id})")

    one(CATALOG_JOB, "catalog", None, {})
    for day in days:
        for account in accounts:
            key = str(account_day_key(account, day))
            one(DAILY_JOB, account, day, dict(account_daily_partitions.get_tags_for_partition_key(key)))
    for day in days:
        one(PLAN_JOB, "plan", day, dict(daily_partitions.get_tags_for_partition_key(day.isoformat())))
    one(WAREHOUSE_JOB, "warehouse", None, {})
    return runs


@contextmanager
def _environment(home: Path) -> Any:
    saved = {k: os.environ.get(k) for k in ("CLOUDOPT_HOME", "CLOUDOPT_ENV", "DAGSTER_HOME")}
    os.environ.update({"CLOUDOPT_HOME": str(home), "CLOUDOPT_ENV": "demo"})
    os.environ.pop("DAGSTER_HOME", None)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _stage(step_key: str) -> str:
    head = step_key.split("__", 1)[0]
    return head if head in ("raw", "features", "recommendations", "plan", "actions", "warehouse") else "other"


def _first_failure(instance: dg.DagsterInstance, run_id: str) -> str:
    """The first step failure's message of a run (empty when none was recorded)."""
    for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE):
        data = record.dagster_event.event_specific_data
        if data is not None and data.error is not None:
            return data.error.message.strip()
    return ""


class DescendantsRss:
    """Samples, from /proc, the resident memory of every process below this one (run workers, step
    processes, the forkserver and its forks) every ``interval_s``: ``peak_total_mb`` is the largest sum
    seen at one moment, ``peak_one_mb`` the largest single process. (``RUSAGE_CHILDREN`` sees only
    children that have been waited for, never the forks of a forkserver.) Zero where there is no /proc."""

    def __init__(self, interval_s: float = 0.5):
        self.interval_s = interval_s
        self.peak_total_mb = 0.0
        self.peak_one_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def __enter__(self) -> DescendantsRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def sample(self) -> None:
        rss = _descendant_rss_mb(os.getpid())
        if rss:
            self.peak_total_mb = max(self.peak_total_mb, sum(rss))
            self.peak_one_mb = max(self.peak_one_mb, max(rss))


def _descendant_rss_mb(root: int) -> list[float]:
    parents: dict[int, int] = {}
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        fields = stat_fields(int(entry.name))
        if fields is not None:  # else gone meanwhile
            parents[int(entry.name)] = int(fields[PARENT_PID])
    below, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - below
        below |= frontier
    page_mb = os.sysconf("SC_PAGE_SIZE") / 2**20
    out = []
    for pid in below:
        try:
            out.append(int((proc / str(pid) / "statm").read_text().split()[1]) * page_mb)
        except (OSError, IndexError, ValueError):
            continue
    return out


def _definitions_in_a_fork(queue: Any) -> None:
    """In a process forked from the forkserver: the definitions' rebuild as a step does it (CPU seconds)."""
    warnings.simplefilter("ignore")
    started = time.process_time()
    from cloudopt_pipelines.definitions import defs

    keys = sorted(key.to_user_string() for key in defs().resolve_asset_graph().get_all_asset_keys())
    queue.put((time.process_time() - started, keys))


def forked_definitions(preload: list[str], rounds: int = 5) -> tuple[float, list[str]]:
    """The median CPU seconds of the definitions' rebuild in a step forked from a forkserver that preloaded
    ``preload`` (a forkserver of its own per call), and the asset keys it built."""
    import multiprocessing
    import statistics
    from multiprocessing import forkserver

    # One forkserver per process: stop any running one (a multiprocess run's, or the other preload's), so
    # that this one starts with ``preload``, and stop it after, whatever happens.
    forkserver._forkserver._stop()
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(preload)
    seconds, keys = [], []
    try:
        for _ in range(rounds):
            queue = context.Queue()
            process = context.Process(target=_definitions_in_a_fork, args=(queue,))
            process.start()
            cpu, keys = queue.get(timeout=600)
            process.join()
            seconds.append(cpu)
    finally:
        forkserver._forkserver._stop()
    return statistics.median(seconds), keys


def preload_line() -> Line:
    """What a forked step spends rebuilding the definitions: with the executor's preload, against a
    forkserver that only imported the definitions module."""
    from cloudopt_pipelines.instance import PRELOADED_MODULES

    ours, our_keys = forked_definitions(list(PRELOADED_MODULES))
    baseline, baseline_keys = forked_definitions(["cloudopt_pipelines.definitions"])
    return Line(
        "definitions per forked step",
        f"rebuild in a step forked from the executor's forkserver ({', '.join(PRELOADED_MODULES)}), CPU",
        "the same from a forkserver that imported cloudopt_pipelines.definitions only",
        ours,
        baseline,
        our_keys == baseline_keys,
        note=f"median of 5 forks each; {len(our_keys)} asset keys, the same in both",
    )


def _peak_rss_mb() -> tuple[float, float]:
    return (
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    )


def run(
    quick: bool = False,
    progress: Callable[[str], None] = print,
    executor: str | None = None,
    max_concurrent: int = 2,
    start_method: str = "forkserver",
    **sizes: int,
) -> Report:
    """Generate the fleet, run every account x day, the plans and the warehouse; see the module docstring.

    ``executor``: ``multiprocess`` by default, ``in_process`` with ``quick`` (``make bench`` stays
    within its 5 minutes: a step process costs seconds of its own on a busy machine)."""
    executor = executor or ("in_process" if quick else "multiprocess")
    if executor not in ("multiprocess", "in_process"):
        raise ValueError(f"unknown executor {executor!r}: use multiprocess or in_process")
    from cloudopt_pipelines.orchestration import ensure_instance, run_range
    from cloudopt_pipelines.settings import load_settings

    params = {**(QUICK if quick else FULL), **sizes}
    report = Report("e2e", quick)
    root = Path(tempfile.mkdtemp(prefix="cloudopt-bench-e2e-"))
    try:
        t0 = time.perf_counter()
        accounts = build_fleet(root / "data", params["accounts"], params["instances"], params["days"])
        progress(f"fleet {params} written in {time.perf_counter() - t0:.1f} s")
        collector = DemoCollector(root / "data")
        days = collector.days
        with _environment(root / "home"):
            settings = load_settings()
            t1 = time.perf_counter()
            with DescendantsRss() as sampler:
                if executor == "multiprocess":
                    runs = run_multiprocess(
                        settings, root / "data", accounts, days, progress, max_concurrent, start_method
                    )
                else:
                    result = run_range(
                        days[0], days[-1], accounts, settings, ScaledDemoSource(data_dir=str(root / "data")), progress
                    )
                    runs = [(o.account_id, o.day, o.success, o.run_id) for o in result.outcomes]
            wall = time.perf_counter() - t1
            instance = ensure_instance(settings)
            steps: dict[str, float] = defaultdict(float)
            for *_, run_id in runs:
                if not run_id:
                    continue
                for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_SUCCESS):
                    event = record.dagster_event
                    steps[_stage(event.step_key or "")] += event.event_specific_data.duration_ms / 1000
            errors = {run_id: _first_failure(instance, run_id) for what, day, ok, run_id in runs if not ok and run_id}
        failed = [(what, day, errors.get(run_id, "")) for what, day, ok, run_id in runs if not ok]
        rss_self, rss_children = _peak_rss_mb()
        total_steps = sum(steps.values())
        report.lines.append(
            Line(
                f"e2e {params['accounts']} x {params['instances']:,} x {params['days']} d",
                f"every account x day, plans, warehouse ({executor} executor), wall",
                "the sum of its steps' own time",
                wall,
                total_steps,
                not failed,
                note=f"{len(runs)} runs, {len(failed)} failed; peak RSS {rss_self:,.0f} MB this process, "
                f"{sampler.peak_total_mb:,.0f} MB its descendants at once (largest one "
                f"{max(sampler.peak_one_mb, rss_children):,.0f} MB)",
                target="peak RSS < 4 GiB (this process + its descendants)",
                met=rss_self + max(sampler.peak_total_mb, rss_children) < 4096,
            )
        )
        for stage, secs in sorted(steps.items(), key=lambda kv: -kv[1]):
            report.lines.append(Line(f"stage {stage}", "its steps", "all steps", secs, total_steps, None))
        with _environment(root / "home"):
            report.lines.append(preload_line())
        report.details = {
            **params,
            "instances_total": params["accounts"] * params["instances"],
            "wall_s": wall,
            "stage_step_s": dict(steps),
            "peak_rss_mb": rss_self,
            "peak_rss_children_mb": rss_children,
            "peak_rss_descendants_total_mb": sampler.peak_total_mb,
            "peak_rss_descendant_one_mb": sampler.peak_one_mb,
            "failed": [f"{what} {day}: {error[:300]}" for what, day, error in failed],
            "executor": f"multiprocess (max_concurrent {max_concurrent}, start_method {start_method})"
            if executor == "multiprocess"
            else "in_process (run_range)",
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return report
