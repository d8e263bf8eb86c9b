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
the fleet. Both give the same rows for the same instance (checked).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from cloudopt_pipelines.backtest.features import MODELS, run_feature_models
from cloudopt_pipelines.catalog.prices import build_price_catalog
from cloudopt_pipelines.optimizers.sizing import Catalog
from cloudopt_pipelines.sources.demo import DemoCollector
from cloudopt_pipelines.storage.lake import Lake

ACCOUNT = "123456789012"


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


def _timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def with_seed(fn: Any) -> Any:
    with tempfile.TemporaryDirectory(prefix="cloudopt-bench-recommend-") as tmp:
        return fn(seed_inputs(Path(tmp)))
