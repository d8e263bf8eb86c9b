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
from collections.abc import Callable, Mapping
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
# strategies: per-pod statistics of the sizing window -> (cpu request, memory request, memory limit)

Sizing = tuple[np.ndarray, np.ndarray, np.ndarray]
Setting = tuple[int, float, float, float, float]  # CPU percentile, CPU %, CPU millicores, memory %, memory MiB
MIB = 2.0**20


def _weighted_quantile(values: np.ndarray, q: float, half_life: int = HALF_LIFE_STEPS) -> float:
    """VPA-like: samples weighted by 2^(age / half-life), the first value whose cumulative weight reaches q."""
    weights = 2.0 ** ((np.arange(len(values)) - len(values)) / half_life)
    order = np.argsort(values, kind="stable")
    cum = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cum, q * cum[-1])])


class Window:
    """Every pod sized on the first ``fraction`` of ``pods``' samples and replayed on the rest: the sizing
    statistics per pod (arrays in pod order) and the replayed samples, concatenated with their pod index."""

    def __init__(self, pods: list[Pod], fraction: float) -> None:
        cuts = [len(training_part(p, fraction).cpu) for p in pods]
        fit = [(p.cpu[:c], p.mem[:c]) for p, c in zip(pods, cuts, strict=True)]
        self.pods = len(pods)
        # the optimiser reads the decaying histogram (container_usage_histogram): the same weights here
        self.cpu_weighted = {q: np.array([_weighted_quantile(c, q / 100) for c, _ in fit]) for q in (50, 90, 95)}
        self.cpu_p95 = np.array([np.quantile(c, 0.95) for c, _ in fit])
        self.cpu_p99 = np.array([np.quantile(c, 0.99) for c, _ in fit])
        self.cpu_max = np.array([c.max() for c, _ in fit])
        self.mem_peak = np.array([m.max() for _, m in fit])
        self.test_cpu = np.concatenate([p.cpu[c:] for p, c in zip(pods, cuts, strict=True)])
        self.test_mem = np.concatenate([p.mem[c:] for p, c in zip(pods, cuts, strict=True)])
        self.test_pod = np.concatenate(
            [np.full(len(p.cpu) - c, i) for i, (p, c) in enumerate(zip(pods, cuts, strict=True))]
        )


def training_part(pod: Pod, fraction: float) -> Pod:
    """The samples a strategy may size on (the rest is the test window)."""
    cut = max(1, int(len(pod.cpu) * fraction))
    return Pod(pod.pod_id, pod.cpu[:cut], pod.mem[:cut])


def quantities(size: Sizing) -> Sizing:
    """Requests and limit as a patch writes them: whole millicores and MiB, rounded up (every strategy alike)."""
    cpu, mem, lim = size
    return (
        np.maximum(1, np.ceil(cpu * 1000 - 1e-6)) / 1000,
        np.maximum(1, np.ceil(mem / MIB - 1e-6)) * MIB,
        np.maximum(1, np.ceil(lim / MIB - 1e-6)) * MIB,
    )


def ours(setting: Setting) -> Callable[[Window], Sizing]:
    """The optimiser's rules with these settings (``size_container``, pod minimums; no limit policy but
    limit = request, the default), vectorised over pods; ``test_ours_is_the_optimisers_rules`` checks it
    against ``size_container`` pod by pod."""
    percentile, cpu_pct, cpu_m, mem_pct, mem_mib = setting
    s = KubernetesSettings()

    def size(w: Window) -> Sizing:
        cpu = np.maximum(w.cpu_weighted[percentile] * (1 + cpu_pct / 100) + cpu_m / 1000, s.min_cpu_millicores / 1000)
        mem = np.maximum(w.mem_peak * (1 + mem_pct / 100) + mem_mib * MIB, s.min_memory_mib * MIB)
        return cpu, mem, mem

    return size


def ours_one_pod(pod: Pod, setting: Setting) -> tuple[float, float, float]:
    """One pod through ``size_container``, the pod minimums and the rounding (the reference of :func:`ours`)."""
    percentile, cpu_pct, cpu_m, mem_pct, mem_mib = setting
    settings = KubernetesSettings(
        cpu_percentile=percentile,
        cpu_margin_pct=cpu_pct,
        cpu_margin_millicores=cpu_m,
        memory_margin_pct=mem_pct,
        memory_margin_mib=mem_mib,
    )
    usage = ContainerUsage(
        days=1,
        samples=len(pod.cpu),
        cpu_histogram={percentile: _weighted_quantile(pod.cpu, percentile / 100)},
        cpu_p99_daily_max=float(np.quantile(pod.cpu, 0.99)),
        mem_peak=float(pod.mem.max()),
    )
    spec = ContainerSpec("main", POD_CPU_CORES, None, POD_MEM_BYTES, POD_MEM_BYTES)
    plan = size_container(spec, usage, settings, date(2026, 1, 1), guaranteed=False, memory_hpa=False)
    apply_pod_minimums([plan], settings)
    _round([plan], settings, guaranteed=False)
    return plan.cpu_request or 0.0, plan.mem_request or 0.0, plan.mem_limit or plan.mem_request or 0.0


def vpa_like(w: Window) -> Sizing:
    cpu = np.maximum(w.cpu_weighted[90] * 1.15, 0.025)
    mem = np.maximum(w.mem_peak * 1.15, 250 * MIB)
    return cpu, mem, mem  # VPA keeps the limit/request ratio (1 here)


def krr(w: Window) -> Sizing:
    mem = w.mem_peak * 1.15
    return w.cpu_p95, mem, mem


def goldilocks_like(w: Window) -> Sizing:
    """Burstable QoS: requests at VPA's lower bound (P50), limits at its upper bound (P95), + 15 %."""
    lower = np.maximum(w.cpu_weighted[50] * 1.15, 0.025)
    mem = np.maximum(w.mem_peak * 1.15, 250 * MIB)  # one daily peak in the window: all bounds are that peak
    return lower, mem, mem


def kubecost_like(w: Window) -> Sizing:
    return w.cpu_max / 0.7, w.mem_peak / 0.7, w.mem_peak / 0.7


BASELINES: dict[str, Callable[[Window], Sizing]] = {
    "vpa_like": vpa_like,
    "krr": krr,
    "goldilocks_like": goldilocks_like,
    "kubecost_like": kubecost_like,
}
OUR_GRID: list[Setting] = [
    (p, c, cm, m, mm)
    for p in (50, 90, 95)
    for c in (0, 10, 15, 25, 50, 75, 100)
    for cm in (0, 10, 25, 50)
    for m in (5, 10, 15, 25, 35, 45)
    for mm in (0, 16, 64, 128)
]
DEFAULT: Setting = (90, 15, 0, 15, 0)
# validation folds inside the training window: (share of the training samples sized on, the rest validates)
VALIDATION_FOLDS = (1 / 2, 2 / 3)


def _name(setting: Setting) -> str:
    p, c, cm, m, mm = setting
    return f"ours_p{p}_cpu+{c:g}%+{cm:g}m_mem+{m:g}%+{mm:g}Mi"


def evaluate(w: Window, size: Callable[[Window], Sizing], ratio: float) -> dict[str, Any]:
    """One strategy on every pod of the window: its rounded requests, replayed on the window's test part."""
    cpu_req, mem_req, mem_lim = quantities(size(w))
    cost_now = w.pods * (POD_CPU_CORES * ratio + POD_MEM_BYTES / GIB)
    cost_new = float((cpu_req * ratio + mem_req / GIB).sum())
    intervals = len(w.test_cpu)
    cpu_viol = int((w.test_cpu > cpu_req[w.test_pod]).sum())
    oom_at = w.test_mem > mem_lim[w.test_pod]
    pods_oom = len(np.unique(w.test_pod[oom_at]))
    worst = 0.0
    if intervals:
        peak = np.full(w.pods, -np.inf)
        np.maximum.at(peak, w.test_pod, w.test_cpu)
        seen = np.isfinite(peak) & (cpu_req > 0)
        worst = float(100 * (peak[seen] / cpu_req[seen] - 1).max()) if seen.any() else 0.0
    return {
        "savings_pct": round(100 * (1 - cost_new / cost_now), 3) if cost_now else 0.0,
        "cpu_violation_pct": round(100 * cpu_viol / intervals, 4) if intervals else 0.0,
        "oom_interval_pct": round(100 * int(oom_at.sum()) / intervals, 4) if intervals else 0.0,
        "pods_with_oom": pods_oom,
        "worst_cpu_overload_pct": round(max(worst, 0.0), 1),
        "pods": w.pods,
        "test_intervals": intervals,
    }


def dominates(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """At least ``b``'s savings with no more CPU violations and no more OOM intervals, strictly better on one."""
    keys = ("savings_pct", "cpu_violation_pct", "oom_interval_pct")
    at_least = (
        a["savings_pct"] >= b["savings_pct"]
        and a["cpu_violation_pct"] <= b["cpu_violation_pct"]
        and a["oom_interval_pct"] <= b["oom_interval_pct"]
    )
    return at_least and any(a[k] != b[k] for k in keys)


def kubernetes_backtest(
    memory_trace: Path = DEFAULT_MEMORY_TRACE,
    cpu_trace: Path = DEFAULT_CPU_TRACE,
    train_fraction: float = 2 / 3,
    max_pods: int | None = None,
) -> dict[str, Any]:
    """Every strategy side by side on the same pods, windows, rounding and prices. For each baseline, the
    setting of ours that stands against it is chosen inside the training window only: among the settings
    that dominate it on every validation fold, the one with the most validation savings; the test window
    then says whether it dominates there."""
    if not 0 < train_fraction < 1:
        raise KubernetesTraceError(f"train_fraction must be between 0 and 1, got {train_fraction}")
    ratio = KubernetesSettings().cpu_to_memory_cost_ratio
    pods = read_pods(Path(memory_trace), Path(cpu_trace), max_pods)
    test = Window(pods, train_fraction)
    train = [
        Pod(
            p.pod_id,
            p.cpu[: max(1, int(len(p.cpu) * train_fraction))],
            p.mem[: max(1, int(len(p.cpu) * train_fraction))],
        )
        for p in pods
    ]
    folds = [Window(train, f) for f in VALIDATION_FOLDS]
    strategies = {_name(s): evaluate(test, ours(s), ratio) for s in OUR_GRID}
    baselines = {name: evaluate(test, f, ratio) for name, f in BASELINES.items()}
    validation = [{s: evaluate(w, ours(s), ratio) for s in OUR_GRID} for w in folds]
    dominance = {}
    for name, f in BASELINES.items():
        base_val = [evaluate(w, f, ratio) for w in folds]
        ok = [s for s in OUR_GRID if all(dominates(v[s], b) for v, b in zip(validation, base_val, strict=True))]
        chosen = max(ok, key=lambda s: (sum(v[s]["savings_pct"] for v in validation), s), default=None)
        won = chosen is not None and dominates(strategies[_name(chosen)], baselines[name])
        dominance[name] = {
            "dominated": won,
            "by": _name(chosen) if chosen else None,
            "validation_dominators": len(ok),
            "validation": [
                {"fold_fit_fraction": fr, "baseline": b, "chosen": v[chosen] if chosen else None}
                for fr, b, v in zip(VALIDATION_FOLDS, base_val, validation, strict=True)
            ],
            # for reading only: which settings would have won had they been chosen on the test window
            "test_dominators": [n for n, r in strategies.items() if dominates(r, baselines[name])],
        }
    return {
        "memory_trace": str(memory_trace),
        "cpu_trace": str(cpu_trace),
        "pods": len(pods),
        "train_fraction": train_fraction,
        "validation_folds": list(VALIDATION_FOLDS),
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
        shown = {report["default"], *(d["by"] for d in report["dominance"].values() if d["by"])}
        echo(f"{report['pods']} pods, memory {report['memory_trace']}, CPU {report['cpu_trace']}\n")
        echo(format_table(report, shown))
        for name, d in report["dominance"].items():
            if d["dominated"]:
                echo(f"{name}: dominated by {d['by']} (chosen on the validation folds)")
            elif d["by"]:
                echo(f"{name}: NOT dominated on the test window by {d['by']} (chosen on the validation folds)")
            else:
                echo(f"{name}: NOT dominated (no setting dominates it on every validation fold)")
    return 0 if report["all_dominated"] else 1
