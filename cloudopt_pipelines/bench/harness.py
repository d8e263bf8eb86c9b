"""One harness for every benchmark: a registry, the machine it ran on, ratios, JSON results.

Each benchmark measures our code and a fair baseline in the same run, on the same data, and checks
that both give the same answer; what it reports is the ratio (ours / baseline), never an absolute
time alone, because the machine is shared and its load changes between runs. A benchmark is a
module with ``run(quick: bool, progress) -> Report``, registered by name in :data:`BENCHMARKS`
(another deployment type adds its own with :func:`register`, e.g. Kubernetes node packing).
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import resource
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS_DIR = Path("bench-results")


@dataclass
class Line:
    """One measurement: our code and its baseline over the same work, and whether they agree."""

    name: str
    ours: str  # what was measured
    baseline: str  # what it is compared with
    ours_value: float
    baseline_value: float
    same_answer: bool | None  # None: the line compares no answer (e.g. a scaling point against 1x)
    unit: str = "s"  # of both values: wall seconds unless said
    target: str = ""  # the goal, in words
    met: bool | None = None
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.ours_value / self.baseline_value if self.baseline_value > 0 else float("inf")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": round(self.ratio, 4)}


@dataclass
class Report:
    benchmark: str
    quick: bool
    lines: list[Line] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=dict)
    started: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Every answer checked agrees (a target missed is reported, not a failure of the run)."""
        return all(line.same_answer is not False for line in self.lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "benchmark": self.benchmark,
            "quick": self.quick,
            "started": self.started,
            "seconds": round(self.seconds, 3),
            "machine": self.machine,
            "answers_agree": self.ok,
            "lines": [line.to_dict() for line in self.lines],
            "details": self.details,
        }


@dataclass(frozen=True)
class Benchmark:
    name: str
    module: str
    summary: str

    def run(self, quick: bool, progress: Callable[[str], None] = print, **options: Any) -> Report:
        started = datetime.now(UTC).isoformat(timespec="seconds")
        before = machine()
        t0 = time.perf_counter()
        report: Report = importlib.import_module(self.module).run(quick=quick, progress=progress, **options)
        report.seconds = time.perf_counter() - t0
        report.started = started
        after = machine()
        report.machine = {**before, "load_after": after["load"], "peak_rss_mb": after["peak_rss_mb"]}
        return report


BENCHMARKS: dict[str, Benchmark] = {}


def register(name: str, module: str, summary: str) -> None:
    """Add a benchmark: ``module`` has ``run(quick, progress, **options) -> Report``."""
    BENCHMARKS[name] = Benchmark(name, module, summary)


register("collect", "cloudopt_pipelines.bench.collect", "AWS collector on moto: API calls against the minimum")
register("features", "cloudopt_pipelines.bench.features", "feature models against plain GROUP BY / scan floors")
register("recommend", "cloudopt_pipelines.bench.recommend", "EC2 recommender: cost per instance at 1x, 10x, 100x")
register("lp", "cloudopt_pipelines.bench.lp", "portfolio LP against the plain PuLP model, plan checked")

register("e2e", "cloudopt_pipelines.bench.e2e", "collection to plan through Dagster: time per stage, peak RSS")


def machine() -> dict[str, Any]:
    """Cores, memory and load of the machine now (it is shared: the load goes with every number)."""
    mem_kb = 0
    try:
        for row in Path("/proc/meminfo").read_text().splitlines():
            if row.startswith("MemTotal:"):
                mem_kb = int(row.split()[1])
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 0
    return {
        "host": platform.node(),
        "cores": cores,
        "memory_gib": round(mem_kb / 2**20, 1),
        "load": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def format_report(report: Report) -> str:
    m = report.machine
    head = (
        f"{report.benchmark}{' (quick)' if report.quick else ''}: {report.seconds:.1f} s on {m.get('cores')} cores, "
        f"{m.get('memory_gib')} GiB, load {m.get('load')} -> {m.get('load_after')}"
    )
    cells = [["line", "ours", "baseline", "unit", "ours/baseline", "same answer", "target"]]
    for ln in report.lines:
        agree = "-" if ln.same_answer is None else "yes" if ln.same_answer else "NO"
        target = f"{ln.target}: {'met' if ln.met else 'NOT met'}" if ln.target and ln.met is not None else ln.target
        cells.append([ln.name, _num(ln.ours_value), _num(ln.baseline_value), ln.unit, f"{ln.ratio:.2f}", agree, target])
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    rows = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    rows.insert(1, "  ".join("-" * w for w in widths))
    notes = [f"  {ln.name}: {ln.ours} / {ln.baseline}" + (f"; {ln.note}" if ln.note else "") for ln in report.lines]
    return "\n".join([head, *rows, *notes])


def _num(value: float) -> str:
    return f"{value:,.0f}" if value >= 1000 or float(value).is_integer() else f"{value:.4g}"


def write_json(report: Report, results_dir: Path = RESULTS_DIR) -> Path:
    """``<results_dir>/<benchmark>-<UTC time>.json`` and ``<benchmark>-latest.json``."""
    results_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    text = json.dumps(report.to_dict(), indent=2, default=str)
    path = results_dir / f"{report.benchmark}{'-quick' if report.quick else ''}-{stamp}.json"
    path.write_text(text)
    (results_dir / f"{report.benchmark}{'-quick' if report.quick else ''}-latest.json").write_text(text)
    return path
