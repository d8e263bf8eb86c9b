"""Readers that turn public VM traces into one 5-minute series per VM (the backtest's input).

Every reader returns :class:`VmTrace` objects: CPU as % of the VM's provisioned cores (the 5-minute
maximum where the trace has one, as CloudWatch ``Maximum``), memory as % of provisioned memory where
the trace has it (else None), and the provisioned size where the trace gives it. Missing samples are
NaN, never zeros. Formats (see ``../shared/data/README.md`` for the files):

- ``long``: our own long format, ``resource_id, timestamp, cpu_pct[, cpu_max_pct][, mem_pct][, instance_type]``;
- ``azure``: Azure Public Dataset V1 extract, ``vm_id, step_5min, avg_cpu_pct, max_cpu_pct``;
- ``bitbrains``: GWA-T-12 Rnd, ``vm_id, timestamp_s, cpu_cores, cpu_usage_pct, mem_capacity_provisioned_kb,
  mem_usage_kb, ...`` (``cpu_cores = 0`` rows are monitoring gaps: missing);
- ``gcd``: Google cluster-data 2011 per-job "VMs", ``vm_id, step_5min, cpu_util_pct, mem_util_pct`` (one day);
- ``planetlab``: CoMon/PlanetLab VM-days, ``day, vm_id, step_5min, cpu_util_pct``. ``day`` (yyyymmdd)
  keeps that one day (the published split: 2011-03-03, 1,052 VMs); otherwise a VM's days, not
  consecutive in the calendar, are concatenated in date order and only VMs seen on at least
  ``min_days`` days are kept.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np

STEP_SECONDS = 300
FORMATS = ("long", "azure", "bitbrains", "gcd", "planetlab")


class TraceError(ValueError):
    """A trace file the readers cannot use; the message names the file and what is wrong."""


@dataclass(frozen=True)
class VmTrace:
    """One VM's 5-minute series (NaN where a sample is missing)."""

    resource_id: str
    cpu_pct: np.ndarray  # 5-minute maximum where the trace has it, else the average
    cpu_avg_pct: np.ndarray
    mem_pct: np.ndarray | None
    instance_type: str | None = None
    provisioned_vcpu: float | None = None
    provisioned_memory_gib: float | None = None
    start_epoch_s: int = 0

    @property
    def samples(self) -> int:
        return int(self.cpu_pct.size)


def detect_format(path: Path) -> str:
    """The reader for ``path`` from its name (the shared trace files) or else its header."""
    name = path.name.lower()
    for fmt in ("azure", "bitbrains", "gcd", "planetlab"):
        if name.startswith(fmt):
            return fmt
    columns = _columns(path)
    if {"resource_id", "timestamp", "cpu_pct"} <= set(columns):
        return "long"
    if {"vm_id", "step_5min", "avg_cpu_pct"} <= set(columns):
        return "azure"
    if {"vm_id", "step_5min", "cpu_util_pct", "mem_util_pct"} <= set(columns):
        return "gcd"
    if {"day", "vm_id", "step_5min", "cpu_util_pct"} <= set(columns):
        return "planetlab"
    if {"vm_id", "timestamp_s", "cpu_usage_pct"} <= set(columns):
        return "bitbrains"
    raise TraceError(
        f"cannot tell the format of {path} (columns {columns}); pass --format, one of {', '.join(FORMATS)}"
    )


def read_trace(
    path: str | Path,
    fmt: str = "auto",
    *,
    max_vms: int | None = None,
    min_days: int = 8,
    day: str | None = None,
) -> list[VmTrace]:
    """Every VM of a trace file, sorted by id (``max_vms`` keeps the first ones). ``min_days`` and
    ``day`` (yyyymmdd or yyyy-mm-dd) apply to PlanetLab only."""
    path = Path(path)
    if not path.exists():
        raise TraceError(f"trace file {path} does not exist")
    fmt = detect_format(path) if fmt == "auto" else fmt
    readers = {
        "long": _read_long,
        "azure": _read_azure,
        "bitbrains": _read_bitbrains,
        "gcd": _read_gcd,
        "planetlab": lambda p: _read_planetlab(p, min_days, day),
    }
    if fmt not in readers:
        raise TraceError(f"unknown trace format {fmt!r}; one of {', '.join(FORMATS)}")
    vms = sorted(readers[fmt](path), key=lambda v: v.resource_id)
    return vms[:max_vms] if max_vms else vms


def _connect() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    return con


def _columns(path: Path) -> list[str]:
    con = _connect()
    return [d[0] for d in con.execute(f"SELECT * FROM read_csv_auto('{path}') LIMIT 0").description]


def _grouped(con: duckdb.DuckDBPyConnection, sql: str) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
    """Run ``sql`` (ordered by vm, step) and yield one dict of column arrays per VM."""
    table = con.execute(sql).fetchnumpy()
    ids = np.asarray(table["vm"]).astype(str)
    if ids.size == 0:
        return
    bounds = np.flatnonzero(ids[1:] != ids[:-1]) + 1
    starts = np.concatenate([[0], bounds])
    ends = np.concatenate([bounds, [ids.size]])
    for s, e in zip(starts, ends, strict=True):
        yield ids[s], {k: v[s:e] for k, v in table.items() if k != "vm"}


def _dense(steps: np.ndarray, values: np.ndarray, length: int | None = None) -> np.ndarray:
    """Scatter values onto a regular 5-minute grid, NaN where no sample exists."""
    n = int(steps.max()) + 1 if length is None else length
    out = np.full(n, np.nan)
    out[steps.astype(int)] = values.astype(float)
    return out


def _float(values: np.ndarray) -> np.ndarray:
    """Floats with NaN for SQL NULL (DuckDB's fetchnumpy gives masked arrays or None objects)."""
    if isinstance(values, np.ma.MaskedArray):
        return np.ma.filled(values.astype(float), np.nan)
    if values.dtype == object:
        return np.asarray([np.nan if v is None else v for v in values], dtype=float)
    return values.astype(float)


def _read_azure(path: Path) -> Iterator[VmTrace]:
    con = _connect()
    sql = f"""
        SELECT CAST(vm_id AS VARCHAR) AS vm, step_5min AS step, avg_cpu_pct AS avg, max_cpu_pct AS mx
        FROM read_csv_auto('{path}') ORDER BY vm, step
    """
    for vm, cols in _grouped(con, sql):
        avg = _dense(cols["step"], _float(cols["avg"]))
        mx = _dense(cols["step"], _float(cols["mx"]))
        yield VmTrace(f"azure-{vm}", np.where(np.isnan(mx), avg, mx), avg, None)


def _read_gcd(path: Path) -> Iterator[VmTrace]:
    con = _connect()
    sql = f"""
        SELECT CAST(vm_id AS VARCHAR) AS vm, step_5min AS step, cpu_util_pct AS cpu, mem_util_pct AS mem
        FROM read_csv_auto('{path}') ORDER BY vm, step
    """
    for vm, cols in _grouped(con, sql):
        cpu = _dense(cols["step"], _float(cols["cpu"]))
        yield VmTrace(vm, cpu, cpu, _dense(cols["step"], _float(cols["mem"])))


def _read_planetlab(path: Path, min_days: int, day: str | None = None) -> Iterator[VmTrace]:
    con = _connect()
    where = ""
    if day is not None:
        digits = day.replace("-", "")
        if not (digits.isdigit() and len(digits) == 8):
            raise TraceError(f"PlanetLab day {day!r}: give it as yyyymmdd or yyyy-mm-dd (for example 2011-03-03)")
        where, min_days = f"WHERE CAST(day AS VARCHAR) = '{digits}'", 1
    sql = f"""
        WITH t AS (SELECT day, vm_id, step_5min, cpu_util_pct FROM read_csv_auto('{path}') {where}),
        keep AS (SELECT vm_id FROM t GROUP BY vm_id HAVING count(DISTINCT day) >= {int(min_days)}),
        days AS (SELECT DISTINCT vm_id, day, dense_rank() OVER (PARTITION BY vm_id ORDER BY day) - 1 AS k
                 FROM t WHERE vm_id IN (SELECT vm_id FROM keep))
        SELECT t.vm_id AS vm, days.k * 288 + t.step_5min AS step, CAST(t.cpu_util_pct AS DOUBLE) AS cpu
        FROM t JOIN days USING (vm_id, day) ORDER BY vm, step
    """
    for vm, cols in _grouped(con, sql):
        cpu = _dense(cols["step"], _float(cols["cpu"]))
        yield VmTrace(vm, cpu, cpu, None)


def _read_bitbrains(path: Path) -> Iterator[VmTrace]:
    con = _connect()
    sql = f"""
        WITH t AS (SELECT * FROM read_csv_auto('{path}')),
        origin AS (SELECT min(timestamp_s) AS t0 FROM t)
        SELECT CAST(vm_id AS VARCHAR) AS vm,
               CAST((timestamp_s - origin.t0) // 300 AS BIGINT) AS step,
               max(CASE WHEN cpu_cores > 0 THEN cpu_usage_pct END) AS cpu,
               max(CASE WHEN cpu_cores > 0 THEN mem_usage_kb END) AS mem_used_kb,
               max(CASE WHEN cpu_cores > 0 THEN cpu_cores END) AS cores,
               max(CASE WHEN cpu_cores > 0 THEN mem_capacity_provisioned_kb END) AS mem_kb,
               any_value(origin.t0) AS t0
        FROM t, origin
        GROUP BY ALL ORDER BY vm, step
    """
    for vm, cols in _grouped(con, sql):
        cores = _float(cols["cores"])
        mem_kb = _float(cols["mem_kb"])
        if np.isnan(cores).all():
            continue
        vcpu = float(np.nanmax(cores))
        mem_gib = float(np.nanmax(mem_kb)) / 1024 / 1024
        cpu = _dense(cols["step"], _float(cols["cpu"]))
        # Memory as % of the VM's largest provisioned size (the capacity column dips in a few rows).
        mem = _dense(cols["step"], _float(cols["mem_used_kb"]), cpu.size) / float(np.nanmax(mem_kb)) * 100
        yield VmTrace(f"bitbrains-{vm}", cpu, cpu, mem, None, vcpu, mem_gib, int(cols["t0"][0]))


def _read_long(path: Path) -> Iterator[VmTrace]:
    con = _connect()
    cols = set(_columns(path))
    mx = "cpu_max_pct" if "cpu_max_pct" in cols else "cpu_pct"
    mem = "mem_pct" if "mem_pct" in cols else "NULL"
    itype = "instance_type" if "instance_type" in cols else "NULL"
    sql = f"""
        WITH t AS (SELECT * FROM read_csv_auto('{path}')),
        origin AS (SELECT min(epoch(CAST(timestamp AS TIMESTAMPTZ))) AS t0 FROM t)
        SELECT CAST(resource_id AS VARCHAR) AS vm,
               CAST((epoch(CAST(timestamp AS TIMESTAMPTZ)) - origin.t0) // 300 AS BIGINT) AS step,
               max(CAST(cpu_pct AS DOUBLE)) AS avg, max(CAST({mx} AS DOUBLE)) AS mx,
               max(CAST({mem} AS DOUBLE)) AS mem, any_value(CAST({itype} AS VARCHAR)) AS itype
        FROM t, origin GROUP BY ALL ORDER BY vm, step
    """
    for vm, c in _grouped(con, sql):
        avg = _dense(c["step"], _float(c["avg"]))
        peak = _dense(c["step"], _float(c["mx"]))
        mem_arr = _dense(c["step"], _float(c["mem"]))
        types = [t for t in c["itype"] if t]
        yield VmTrace(
            vm,
            np.where(np.isnan(peak), avg, peak),
            avg,
            None if np.isnan(mem_arr).all() else mem_arr,
            types[0] if types else None,
        )
