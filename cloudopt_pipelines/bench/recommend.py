"""Benchmark of the standalone EC2 recommender on a fleet replicated from the demo's real traces (no Dagster).

The seed is the demo's first account through the shipped feature models (``utilization_window``,
``activity_profile`` and ``stg_utilization_5m`` over its 7 days, real Azure V1 CPU and Google
cluster-data memory). A fleet of scale ``k`` holds ``k`` copies of every inventory row and feature
row, copy ``j`` with the id ``<id>-x<j>`` (same shapes, new ids): the recommender must then spend the
same time per instance at every scale. The ``stg_utilization_5m`` copies stay separate chunks, as a
window read from many partition files is.

Measured in the same run: ``recommend_account`` at each scale (seconds per standalone instance, the
curve must be flat), against the floor of the same instances recommended one by one with their rows
already split (``optimize_standalone_instance`` on the seed's inputs, repeated ``k`` times): what is
left above it is the account-level work (reading, splitting, writing rows), which must not grow with
the fleet. Both give the same rows for the same instance (checked), and the first copy's rows are the
same at every scale. Times are process CPU seconds (single-threaded code), the least of the rounds.

Then the Kubernetes recommender (``bench/kubernetes.py``): seeded clusters of 200 and 2,000 pods (quick:
40 and 200), workloads and node pools, cost per pod against KRR-like requests packed first-fit-decreasing
in the same run, the seconds against the 60-second target, and cost per pod at 2,000 / at 200 pods.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from cloudopt_pipelines.backtest.features import MODELS, run_feature_models
from cloudopt_pipelines.bench.harness import Line, Report
from cloudopt_pipelines.bench.kubernetes import kubernetes_lines
from cloudopt_pipelines.catalog.prices import build_price_catalog, build_reserved_prices
from cloudopt_pipelines.optimizers.commitments import ReservedRates
from cloudopt_pipelines.optimizers.schedules import HourOfWeek
from cloudopt_pipelines.optimizers.sizing import Catalog
from cloudopt_pipelines.optimizers.standalone import (
    Instance,
    InstanceFeatures,
    StandaloneConfig,
    _hours_by_resource,
    _no_hours,
    _on_day,
    _split_by_resource,
    instance_rows,
    optimize_standalone_instance,
    recommend_account,
)
from cloudopt_pipelines.sources.demo import DemoCollector
from cloudopt_pipelines.storage.lake import Lake

ACCOUNT = "123456789012"
SCALES = (1, 10, 100)
FLAT_RATIO = 1.5  # cost per instance at the largest scale over that at a smaller one


@dataclass(frozen=True)
class RecommendInputs:
    """What ``recommend_account`` reads for one account and day."""

    day: date
    resources: pa.Table
    features: dict[str, pa.Table]

    @property
    def standalone_instances(self) -> int:
        kinds = self.resources["resource_kind"].to_pylist()
        types = self.resources["deployment_type"].to_pylist()
        return sum(k == "ec2_instance" and t == "standalone" for k, t in zip(kinds, types, strict=True))


def seed_inputs(root: Path, account: str = ACCOUNT, days: int = 7) -> RecommendInputs:
    """The demo account's first ``days`` days through the shipped feature models, as the pipeline builds them."""
    collector = DemoCollector()
    lake = Lake(root)
    window = collector.days[:days]
    for d in window:
        lake.write("resources", collector.collect_inventory(account, d).table, account, d)
        lake.write("utilization_5m", collector.collect_metrics(account, d).table, account, d)
    run_feature_models(lake, account, window, (*MODELS, "activity_profile"))
    day = window[-1]
    features = {
        "utilization_window": lake.read("utilization_window", account, day),
        "activity_profile": lake.read("activity_profile", account, day),
        "stg_utilization_5m": pa.concat_tables([lake.read("stg_utilization_5m", account, d) for d in window]),
    }
    return RecommendInputs(day, lake.read("resources", account, day), features)


def _renamed(table: pa.Table, suffix: str) -> pa.Table:
    if "resource_id" not in table.column_names or not suffix:
        return table
    i = table.column_names.index("resource_id")
    return table.set_column(i, "resource_id", pc.binary_join_element_wise(table["resource_id"], suffix, ""))


def scaled(seed: RecommendInputs, copies: int) -> RecommendInputs:
    """``copies`` copies of every row of ``seed``, copy ``j`` with ids ``<id>-x<j>`` (copy 0 keeps the ids)."""
    if copies < 1:
        raise ValueError(f"copies must be at least 1, not {copies}")
    suffixes = [""] + [f"-x{j}" for j in range(1, copies)]

    def rep(table: pa.Table) -> pa.Table:
        return pa.concat_tables([_renamed(table, s) for s in suffixes])

    return RecommendInputs(seed.day, rep(seed.resources), {k: rep(v) for k, v in seed.features.items()})


def bench_catalog() -> Catalog:
    return Catalog(build_price_catalog())


def _cpu(fn: Callable[[], Any], repeat: int) -> tuple[Any, float]:
    """The result of ``fn()`` and the process CPU seconds of one call, averaged over ``repeat`` calls
    (single-threaded code: CPU time is what other processes on a shared machine disturb least)."""
    c0 = time.process_time()
    for _ in range(repeat):
        out = fn()
    return out, (time.process_time() - c0) / repeat


def _floor_rows(seed: RecommendInputs, catalog: Catalog, reserved: ReservedRates) -> Callable[[], list[dict]]:
    """The baseline: each standalone instance recommended alone from inputs already split per instance."""
    day, config = seed.day, StandaloneConfig()
    windows = {r["resource_id"]: r for r in _on_day(seed.features["utilization_window"], day).to_pylist()}
    activity = _hours_by_resource(_on_day(seed.features["activity_profile"], day))
    series = _split_by_resource(seed.features["stg_utilization_5m"])
    instances = [
        Instance.from_row(r)
        for r in seed.resources.to_pylist()
        if r["resource_kind"] == "ec2_instance" and r["deployment_type"] == "standalone" and r["state"] == "running"
    ]
    no_hours = HourOfWeek(*_no_hours(), "UTC")
    inputs = [
        (i, InstanceFeatures(windows.get(i.resource_id), activity.get(i.resource_id, no_hours), series[i.resource_id]))
        for i in instances
    ]

    def one_by_one() -> list[dict]:
        rows: list[dict] = []
        for inst, feats in inputs:
            rec = optimize_standalone_instance(inst.resource_id, inst, feats, catalog, reserved, config)
            rows.extend(instance_rows(ACCOUNT, day, rec, config))
        return rows

    return one_by_one


def _ec2_rows(table: pa.Table) -> list[dict]:
    rows = [r for r in table.to_pylist() if r["resource_kind"] == "ec2_instance"]
    return sorted(rows, key=lambda r: (r["resource_id"], r["rank"]))


def run(
    quick: bool = False,
    progress: Callable[[str], None] = print,
    scales: tuple[int, ...] = SCALES,
    k8s_sizes: tuple[int, ...] | None = None,
) -> Report:
    """Recommend the seed account at every scale and the floor; see the module docstring.

    Every timed block covers at least ``top x seed`` instances (``top`` the largest scale; a smaller
    scale is repeated), and the rounds go over the scales in turn, the least time of each counting, so
    that a change of the machine's load hits every scale alike."""
    rounds = 1 if quick else 3
    catalog, reserved = bench_catalog(), ReservedRates(build_reserved_prices())
    report = Report("recommend", quick)
    top = max(scales)
    if quick:
        top = min(top, 10)  # at least 100 instance recommendations a block
    with tempfile.TemporaryDirectory(prefix="cloudopt-bench-recommend-") as tmp:
        seed = seed_inputs(Path(tmp))
        n_seed = seed.standalone_instances
        floor = _floor_rows(seed, catalog, reserved)
        fleets = {k: scaled(seed, k) for k in scales}
        per_instance: dict[int, float] = {}
        floor_per = float("inf")
        tables: dict[int, pa.Table] = {}
        for _ in range(rounds):
            floor_rows, cpu = _cpu(floor, max(1, top))
            floor_per = min(floor_per, cpu / n_seed)
            for k, fleet in fleets.items():

                def recommend(fleet: RecommendInputs = fleet) -> pa.Table:
                    return recommend_account(
                        ACCOUNT, fleet.day, fleet.resources, fleet.features, catalog, reserved
                    ).table

                tables[k], cpu = _cpu(recommend, max(1, top // k))
                per_instance[k] = min(per_instance.get(k, float("inf")), cpu / fleet.standalone_instances)
                progress(f"recommend {k}x: {1000 * cpu / fleet.standalone_instances:.1f} ms CPU an instance")
        seed_rows: list[dict] = []
        for k in scales:
            n = fleets[k].standalone_instances
            copy0 = [r for r in _ec2_rows(tables[k]) if "-x" not in r["resource_id"]]
            if k == min(scales):
                seed_rows = copy0
                same = k == 1 and copy0 == sorted(floor_rows, key=lambda r: (r["resource_id"], r["rank"]))
            else:
                same = copy0 == seed_rows and len(_ec2_rows(tables[k])) == k * len(seed_rows)
            report.lines.append(
                Line(
                    f"recommend {k}x",
                    f"recommend_account over {n:,} standalone instances",
                    "each instance alone, its inputs already split",
                    per_instance[k],
                    floor_per,
                    same,
                    unit="CPU s / instance",
                    note="same rows as the floor" if k == 1 else "first copy's rows = the 1x rows",
                )
            )
        largest = max(scales)
        for base in sorted(s for s in scales if s < largest)[:2]:
            ratio = per_instance[largest] / per_instance[base]
            report.lines.append(
                Line(
                    f"scaling {largest}x / {base}x",
                    f"at {largest}x",
                    f"at {base}x",
                    per_instance[largest],
                    per_instance[base],
                    None,
                    unit="CPU s / instance",
                    target=f"flat (<= {FLAT_RATIO:g})",
                    met=ratio <= FLAT_RATIO,
                )
            )
        report.details = {
            "seed_standalone_instances": n_seed,
            "seed_days": 7,
            "cpu_ms_per_instance": {f"{k}x": round(1000 * v, 3) for k, v in per_instance.items()},
            "floor_cpu_ms_per_instance": round(1000 * floor_per, 3),
            "rounds": rounds,
        }
    k8s, k8s_result = kubernetes_lines(quick, progress, k8s_sizes)
    report.lines += k8s
    report.details["kubernetes"] = k8s_result
    return report
