"""Backtest of the Kubernetes request sizing on real container usage (no Dagster).

``cloudopt backtest kubernetes`` calls :func:`kubernetes_backtest_command`. Each pod's memory series (the
Alibaba 2026 pod memory utilisation, a fraction of the pod's limit, or any long file with ``vm_id,
step_5min, mem_util_pct``) is resampled to 5-minute peaks; its CPU is a real VM's 5-minute average CPU
(Azure V1, pod i paired with VM i in id order), because no public trace has both. Units: a pod today
requests 2 cores and 4 GiB (the capacities the fractions are of), with the memory limit = request.

Every strategy sees the same training window (the first ``train_fraction`` of each pod's samples) and
is replayed on the rest: a CPU violation is a 5-minute interval whose usage is above the CPU request, an
OOM an interval whose memory is above the memory limit. Savings are priced at the nodes' cost split of the
optimiser (``cpu_to_memory_cost_ratio``: a core-hour costs 7.5 GiB-hours). Ours run through the
optimiser's own rules (``optimizers/kubernetes.py: size_container``, pod minimums, rounding) over a grid of
settings; the baselines are VPA-like (decaying P90 + 15 %, peak + 15 %), KRR (CPU P95 without buffer,
memory max + 15 %, exact), Goldilocks-like (burstable: requests at VPA's lower bound, limits at its upper
bound) and Kubecost-like (max / 0.7).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from cloudopt_pipelines.optimizers.kubernetes import (
    GIB,
    ContainerSpec,
    ContainerUsage,
    KubernetesSettings,
    _round,
    apply_pod_minimums,
    size_container,
)

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
DEFAULT_MEMORY_TRACE = SHARED / "container_traces" / "alibaba_genai_2026_pod_memory" / "pod_memory_util_anon.csv.gz"
DEFAULT_CPU_TRACE = SHARED / "vm_traces" / "azure_v1_100vms_cpu_5min_long.csv.gz"
POD_CPU_CORES = 2.0
POD_MEM_BYTES = 4.0 * GIB
HALF_LIFE_STEPS = 288  # 24 h of 5-minute steps


class KubernetesTraceError(ValueError):
    """A trace file the backtest cannot use; the message names the file and what is wrong."""


@dataclass(frozen=True)
class Pod:
    pod_id: str
    cpu: np.ndarray  # cores per 5-minute step
    mem: np.ndarray  # bytes, peak per 5-minute step


def _read_memory(path: Path) -> dict[str, np.ndarray]:
    """Per pod: memory as a fraction of its limit, peak per 5-minute step, steps without samples dropped."""
    if not path.exists():
        raise KubernetesTraceError(f"memory trace {path} does not exist (see docs/backtests.md, Kubernetes)")
    with gzip.open(path, "rt") if path.suffix == ".gz" else open(path) as f:
        header = f.readline().strip().split(",")
    con = duckdb.connect()
    if {"value", "timestamp_anon", "container_ip"} <= set(header):
        sql = f"""WITH t AS (SELECT container_ip, timestamp_anon, value,
                                    min(timestamp_anon) OVER () AS t0 FROM read_csv_auto('{path}'))
                  SELECT container_ip AS pod, CAST(floor((timestamp_anon - t0) / 300) AS BIGINT) AS step,
                         greatest(max(value), 0) AS frac
                  FROM t GROUP BY ALL ORDER BY pod, step"""
    elif {"vm_id", "step_5min", "mem_util_pct"} <= set(header):
        sql = f"""SELECT CAST(vm_id AS VARCHAR) AS pod, step_5min AS step, greatest(max(mem_util_pct), 0) / 100 AS frac
                  FROM read_csv_auto('{path}') WHERE mem_util_pct IS NOT NULL GROUP BY ALL ORDER BY pod, step"""
    else:
        raise KubernetesTraceError(
            f"memory trace {path}: columns {header} are neither (value, timestamp_anon, container_ip) nor "
            "(vm_id, step_5min, mem_util_pct)"
        )
    rows = con.execute(sql).fetchnumpy()
    out: dict[str, np.ndarray] = {}
    pods = rows["pod"]
    for pod in np.unique(pods):
        out[str(pod)] = np.asarray(rows["frac"][pods == pod], dtype=float)
    return out


def _read_cpu(path: Path) -> list[np.ndarray]:
    """Per VM in id order: average CPU as a fraction, per 5-minute step."""
    if not path.exists():
        raise KubernetesTraceError(f"CPU trace {path} does not exist (see docs/backtests.md, Kubernetes)")
    rows = (
        duckdb.connect()
        .execute(
            f"SELECT CAST(vm_id AS VARCHAR) AS vm, step_5min, avg_cpu_pct / 100 AS frac "
            f"FROM read_csv_auto('{path}') WHERE avg_cpu_pct IS NOT NULL ORDER BY vm, step_5min"
        )
        .fetchnumpy()
    )
    return [np.asarray(rows["frac"][rows["vm"] == vm], dtype=float) for vm in np.unique(rows["vm"])]


def read_pods(memory_trace: Path, cpu_trace: Path, max_pods: int | None = None, min_steps: int = 36) -> list[Pod]:
    """Pods with at least ``min_steps`` 5-minute memory peaks, each paired with a CPU series of its length."""
    memory = _read_memory(memory_trace)
    cpus = [c for c in _read_cpu(cpu_trace) if len(c) >= min_steps]
    if not cpus:
        raise KubernetesTraceError(f"CPU trace {cpu_trace} has no VM with {min_steps} steps")
    pods = []
    for i, (pod_id, frac) in enumerate(sorted(memory.items())):
        if len(frac) < min_steps:
            continue
        cpu = cpus[i % len(cpus)]
        n = min(len(frac), len(cpu))
        pods.append(Pod(pod_id, cpu[:n] * POD_CPU_CORES, frac[:n] * POD_MEM_BYTES))
        if max_pods and len(pods) >= max_pods:
            break
    if not pods:
        raise KubernetesTraceError(f"memory trace {memory_trace} has no pod with {min_steps} 5-minute steps")
    return pods


# ---------------------------------------------------------------------------------------------------
# strategies: train samples -> (cpu request, memory request, memory limit)

Sizing = tuple[float, float, float]


def _weighted_quantile(values: np.ndarray, q: float, half_life: int = HALF_LIFE_STEPS) -> float:
    """VPA-like: samples weighted by 2^(age / half-life), the first value whose cumulative weight reaches q."""
    weights = 2.0 ** ((np.arange(len(values)) - len(values)) / half_life)
    order = np.argsort(values, kind="stable")
    cum = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cum, q * cum[-1])])


def ours(percentile: int, cpu_margin: float, mem_margin: float) -> Callable[[Pod], Sizing]:
    """The optimiser's own rules (size_container, pod minimums, rounding) with these settings."""
    settings = KubernetesSettings(cpu_percentile=percentile, cpu_margin_pct=cpu_margin, memory_margin_pct=mem_margin)

    def size(pod: Pod) -> Sizing:
        usage = ContainerUsage(
            days=1,
            samples=len(pod.cpu),
            # the optimiser reads the decaying histogram (container_usage_histogram): the same weights here
            cpu_histogram={percentile: _weighted_quantile(pod.cpu, percentile / 100)},
            cpu_p99_daily_max=float(np.quantile(pod.cpu, 0.99)),
            mem_peak=float(pod.mem.max()),
        )
        spec = ContainerSpec("main", POD_CPU_CORES, None, POD_MEM_BYTES, POD_MEM_BYTES)
        plan = size_container(spec, usage, settings, date(2026, 1, 1), guaranteed=False, memory_hpa=False)
        apply_pod_minimums([plan], settings)
        _round([plan], settings, guaranteed=False)
        return plan.cpu_request or 0.0, plan.mem_request or 0.0, plan.mem_limit or plan.mem_request or 0.0

    return size


def vpa_like(pod: Pod) -> Sizing:
    cpu = max(_weighted_quantile(pod.cpu, 0.9) * 1.15, 0.025)
    mem = max(pod.mem.max() * 1.15, 250 * 2**20)
    return cpu, mem, mem  # VPA keeps the limit/request ratio (1 here)


def krr(pod: Pod) -> Sizing:
    mem = pod.mem.max() * 1.15
    return float(np.quantile(pod.cpu, 0.95)), mem, mem


def goldilocks_like(pod: Pod) -> Sizing:
    """Burstable QoS: requests at VPA's lower bound (P50), limits at its upper bound (P95), + 15 %."""
    lower = max(_weighted_quantile(pod.cpu, 0.5) * 1.15, 0.025)
    mem = max(pod.mem.max() * 1.15, 250 * 2**20)  # one daily peak in the window: all bounds are that peak
    return lower, mem, mem


def kubecost_like(pod: Pod) -> Sizing:
    return float(pod.cpu.max()) / 0.7, float(pod.mem.max()) / 0.7, float(pod.mem.max()) / 0.7


BASELINES: dict[str, Callable[[Pod], Sizing]] = {
    "vpa_like": vpa_like,
    "krr": krr,
    "goldilocks_like": goldilocks_like,
    "kubecost_like": kubecost_like,
}
OUR_GRID = [(p, c, m) for p in (50, 90, 95) for c in (0, 15, 30, 50, 100) for m in (5, 15, 30, 50)]
DEFAULT = (90, 15, 15)


def _name(setting: tuple[int, int, int]) -> str:
    return f"ours_p{setting[0]}_cpu+{setting[1]}_mem+{setting[2]}"


def evaluate(pods: list[Pod], size: Callable[[Pod], Sizing], train_fraction: float, ratio: float) -> dict[str, Any]:
    """One strategy on every pod: sized on the training part, replayed on the rest."""
    cost_now = cost_new = 0.0
    intervals = cpu_viol = oom = 0
    pods_oom = 0
    worst = 0.0
    for pod in pods:
        cut = max(1, int(len(pod.cpu) * train_fraction))
        train = Pod(pod.pod_id, pod.cpu[:cut], pod.mem[:cut])
        test_cpu, test_mem = pod.cpu[cut:], pod.mem[cut:]
        cpu_req, mem_req, mem_lim = size(train)
        cost_now += POD_CPU_CORES * ratio + POD_MEM_BYTES / GIB
        cost_new += cpu_req * ratio + mem_req / GIB
        intervals += len(test_cpu)
        cpu_viol += int((test_cpu > cpu_req).sum())
        k = int((test_mem > mem_lim).sum())
        oom += k
        pods_oom += k > 0
        if cpu_req > 0 and len(test_cpu):
            worst = max(worst, float(100 * (test_cpu.max() / cpu_req - 1)))
    return {
        "savings_pct": round(100 * (1 - cost_new / cost_now), 3) if cost_now else 0.0,
        "cpu_violation_pct": round(100 * cpu_viol / intervals, 4) if intervals else 0.0,
        "oom_interval_pct": round(100 * oom / intervals, 4) if intervals else 0.0,
        "pods_with_oom": pods_oom,
        "worst_cpu_overload_pct": round(worst, 1),
        "pods": len(pods),
        "test_intervals": intervals,
    }


def kubernetes_backtest(
    memory_trace: Path = DEFAULT_MEMORY_TRACE,
    cpu_trace: Path = DEFAULT_CPU_TRACE,
    train_fraction: float = 2 / 3,
    max_pods: int | None = None,
) -> dict[str, Any]:
    """Every strategy side by side on the same pods, windows and prices; which of ours dominates each baseline
    (at least its savings with no more CPU violations and no more OOM intervals)."""
    if not 0 < train_fraction < 1:
        raise KubernetesTraceError(f"train_fraction must be between 0 and 1, got {train_fraction}")
    ratio = KubernetesSettings().cpu_to_memory_cost_ratio
    pods = read_pods(Path(memory_trace), Path(cpu_trace), max_pods)
    strategies = {_name(s): evaluate(pods, ours(*s), train_fraction, ratio) for s in OUR_GRID}
    baselines = {name: evaluate(pods, f, train_fraction, ratio) for name, f in BASELINES.items()}

    def dominates(a: dict, b: dict) -> bool:
        return (
            a["savings_pct"] >= b["savings_pct"]
            and a["cpu_violation_pct"] <= b["cpu_violation_pct"]
            and a["oom_interval_pct"] <= b["oom_interval_pct"]
        )

    dominance = {
        name: {"dominated": bool(by := [o for o, r in strategies.items() if dominates(r, b)]), "by": by}
        for name, b in baselines.items()
    }
    return {
        "memory_trace": str(memory_trace),
        "cpu_trace": str(cpu_trace),
        "pods": len(pods),
        "train_fraction": train_fraction,
        "pod_today": {"cpu_cores": POD_CPU_CORES, "memory_gib": POD_MEM_BYTES / GIB},
        "default": _name(DEFAULT),
        "strategies": [{"strategy": n, "kind": "ours", **r} for n, r in strategies.items()]
        + [{"strategy": n, "kind": "baseline", **r} for n, r in baselines.items()],
        "dominance": dominance,
        "all_dominated": all(d["dominated"] for d in dominance.values()),
    }


def format_table(report: dict[str, Any], only: set[str] | None = None) -> str:
    lines = [
        "| strategy | savings % | CPU over request % of intervals | OOM % of intervals | pods with an OOM |",
        "|---|---:|---:|---:|---:|",
    ]
    for s in report["strategies"]:
        if only is not None and s["strategy"] not in only and s["kind"] == "ours":
            continue
        lines.append(
            f"| {s['strategy']} | {s['savings_pct']:.1f} | {s['cpu_violation_pct']:.2f} | "
            f"{s['oom_interval_pct']:.3f} | {s['pods_with_oom']}/{s['pods']} |"
        )
    return "\n".join(lines)


def kubernetes_backtest_command(
    memory_trace: str | None,
    cpu_trace: str | None,
    train_fraction: float,
    max_pods: int | None,
    as_json: bool,
    echo: Callable[[str], None] = print,
) -> int:
    """0 when every baseline is dominated by a setting of ours, 1 otherwise, 2 for an unusable trace."""
    try:
        report = kubernetes_backtest(
            Path(memory_trace) if memory_trace else DEFAULT_MEMORY_TRACE,
            Path(cpu_trace) if cpu_trace else DEFAULT_CPU_TRACE,
            train_fraction,
            max_pods,
        )
    except KubernetesTraceError as exc:
        echo(f"error: {exc}")
        return 2
    if as_json:
        echo(json.dumps(report, indent=1))
    else:
        shown = {report["default"], *(b for d in report["dominance"].values() for b in d["by"][:1])}
        echo(f"{report['pods']} pods, memory {report['memory_trace']}, CPU {report['cpu_trace']}\n")
        echo(format_table(report, shown))
        for name, d in report["dominance"].items():
            echo(
                f"{name}: "
                + (f"dominated by {d['by'][0]} (and {len(d['by']) - 1} more)" if d["dominated"] else "NOT dominated")
            )
    return 0 if report["all_dominated"] else 1
