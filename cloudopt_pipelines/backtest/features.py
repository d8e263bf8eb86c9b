"""The features stage over a trace: the pipeline's own SQL models, run by DuckDB on a temporary lake.

What is backtested is what ships: the training window of every VM is written as ``utilization_5m``
partitions (one per day of 288 samples, from ``TRACE_START``), and the runner
(``sqlmodels/runner.py``) builds ``stg_utilization_5m``, ``stg_cluster_metrics_5m`` (empty: traces
have no cluster series), ``utilization_daily`` and ``utilization_window`` over exactly those days,
as the pipeline does for an account. The recommender's profile is then read from the window row
(``profile_from_features``), and the ordered series for the burstable credit replay from the
``stg_utilization_5m`` rows. ``activity_profile`` is not run: the backtest scores right-sizing only.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cloudopt_pipelines.backtest.traces import VmTrace
from cloudopt_pipelines.optimizers.sizing import SAMPLES_PER_DAY, CpuSeries, cpu_series
from cloudopt_pipelines.sqlmodels.runner import execute_model, execute_model_batch, load_models
from cloudopt_pipelines.sqlmodels.sources import MODELS_DIR, SOURCE_PARTITIONING, source_schemas
from cloudopt_pipelines.storage.lake import Lake
from cloudopt_pipelines.storage.schemas import UTILIZATION_5M

ACCOUNT = "000000000000"
# A Monday at 00:00 UTC: sample k of a trace is TRACE_START + 5k minutes (the traces' own dates are
# not kept; only whole days and the order matter to the models the backtest reads).
TRACE_START = date(2026, 1, 5)
MODELS = ("stg_utilization_5m", "stg_cluster_metrics_5m", "utilization_daily", "utilization_window")


@dataclass(frozen=True)
class TraceFeatures:
    """One VM's training window as the recommender sees it: its ``utilization_window`` row (None: no
    sample) and its ordered ``stg_utilization_5m`` CPU in % (for the credit replay only)."""

    window: dict[str, Any] | None
    cpu_pct: np.ndarray
    cpu_peak_pct: np.ndarray

    def series(self, vcpu: float, provisioned_vcpu: float | None = None) -> CpuSeries:
        return cpu_series(self.cpu_pct, self.cpu_peak_pct, vcpu, provisioned_vcpu)


def run_feature_models(
    lake: Lake,
    account_id: str,
    days: Sequence[date],
    names: Sequence[str] = MODELS,
    window_days: int | None = None,
    models_dir: Path = MODELS_DIR,
) -> None:
    """Run the models ``names`` (in that order) for one account over ``days``, as the pipeline does:
    a daily model for every day (a batch model in one statement), a window model for the last day
    only, over ``window_days`` (default: its header's). The source partitions must be in ``lake``."""
    models = {m.name: m for m in load_models(models_dir, set(SOURCE_PARTITIONING))}
    known = {**SOURCE_PARTITIONING, **{name: m.partitioned_by for name, m in models.items()}}
    schemas = source_schemas()
    con = duckdb.connect()
    try:
        for name in names:
            model = models[name]
            if model.window_days is not None:
                execute_model(model, lake, known, account_id, days[-1], con, window_days, schemas)
            else:
                execute_model_batch(model, lake, known, [(account_id, d) for d in days], con, None, schemas)
    finally:
        con.close()


def utilization_5m_rows(vm: VmTrace, samples: int, account_id: str = ACCOUNT) -> pa.Table:
    """The first ``samples`` 5-minute samples of ``vm`` as ``utilization_5m`` rows (missing samples:
    no row; a missing memory or 5-minute average: NULL)."""
    peak = vm.cpu_pct[:samples]
    avg = vm.cpu_avg_pct[:samples]
    present = ~(np.isnan(peak) & np.isnan(avg))
    steps = np.flatnonzero(present)
    start = np.datetime64(datetime(TRACE_START.year, TRACE_START.month, TRACE_START.day), "us")
    ts = start + steps.astype("int64") * np.timedelta64(300, "s")
    days = np.datetime64(TRACE_START, "D") + (steps // SAMPLES_PER_DAY).astype("int64")

    def floats(values: np.ndarray) -> pa.Array:
        return pa.array(values, pa.float64(), mask=np.isnan(values))

    mem = vm.mem_pct[:samples][steps] if vm.mem_pct is not None else np.full(steps.size, np.nan)
    nulls = np.full(steps.size, np.nan)
    return pa.table(
        {
            "account_id": pa.array([account_id] * steps.size, pa.string()),
            "date": pa.array(days, pa.date32()),
            "resource_id": pa.array([vm.resource_id] * steps.size, pa.string()),
            "ts": pa.array(ts, pa.timestamp("us", tz="UTC")),
            "cpu_pct": floats(avg[steps]),
            "cpu_max_pct": floats(peak[steps]),
            "mem_pct": floats(mem),
            "net_in_bytes": floats(nulls),
            "net_out_bytes": floats(nulls),
            "source": pa.array(["trace"] * steps.size, pa.string()),
        },
        schema=UTILIZATION_5M,
    )


def trace_features(
    vms: Sequence[VmTrace], samples: int, models_dir: Path = MODELS_DIR, root: Path | None = None
) -> dict[str, TraceFeatures]:
    """Run the feature models over the first ``samples`` samples of every VM; one entry per VM.

    The window of ``utilization_window`` is the training window's whole days (ceil(samples / 288)),
    so coverage is measured against them. ``root`` keeps the lake (for a reader who wants to look);
    by default it lives in a temporary folder removed afterwards.
    """
    if root is not None:
        return _run(vms, samples, models_dir, Path(root))
    with tempfile.TemporaryDirectory(prefix="cloudopt-backtest-") as tmp:
        return _run(vms, samples, models_dir, Path(tmp))


def _run(vms: Sequence[VmTrace], samples: int, models_dir: Path, root: Path) -> dict[str, TraceFeatures]:
    lake = Lake(root)
    n_days = max(1, math.ceil(samples / SAMPLES_PER_DAY))
    days = [TRACE_START + timedelta(days=i) for i in range(n_days)]
    rows = pa.concat_tables([utilization_5m_rows(vm, samples) for vm in vms]) if vms else UTILIZATION_5M.empty_table()
    for d in days:
        part = rows.filter(pc.equal(rows["date"], pa.scalar(d, pa.date32())))
        lake.write("utilization_5m", part, ACCOUNT, d)
    run_feature_models(lake, ACCOUNT, days, MODELS, n_days, models_dir)
    windows = {r["resource_id"]: r for r in lake.read("utilization_window", ACCOUNT, days[-1]).to_pylist()}
    stg = pa.concat_tables([lake.read("stg_utilization_5m", ACCOUNT, d) for d in days])
    stg = stg.sort_by([("resource_id", "ascending"), ("ts", "ascending")])
    ids = stg["resource_id"].to_numpy(zero_copy_only=False).astype(str)
    cpu = stg["cpu_pct"].to_numpy(zero_copy_only=False).astype(float)
    peak = stg["cpu_peak_pct"].to_numpy(zero_copy_only=False).astype(float)
    out: dict[str, TraceFeatures] = {}
    bounds = np.flatnonzero(ids[1:] != ids[:-1]) + 1 if ids.size else np.array([], int)
    starts = np.concatenate([[0], bounds]) if ids.size else np.array([], int)
    ends = np.concatenate([bounds, [ids.size]]) if ids.size else np.array([], int)
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        rid = str(ids[s])
        out[rid] = TraceFeatures(windows.get(rid), cpu[s:e], peak[s:e])
    empty = np.array([], dtype=float)
    for vm in vms:
        out.setdefault(vm.resource_id, TraceFeatures(windows.get(vm.resource_id), empty, empty))
    return out


__all__ = [
    "ACCOUNT",
    "MODELS",
    "TRACE_START",
    "TraceFeatures",
    "run_feature_models",
    "trace_features",
    "utilization_5m_rows",
]
