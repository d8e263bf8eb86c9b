"""The tables and the chart of docs/backtests.md, from the JSON reports of the four published traces.

``python -m cloudopt_pipelines.backtest.tables azure.json bitbrains.json google.json planetlab.json``
prints the Markdown of each trace's table and dominance list and writes ``docs/backtests.svg``
(``--svg PATH`` elsewhere). Nothing is recomputed: every figure is the report's.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cloudopt_pipelines.backtest.chart import curves_svg

TITLES = {
    "azure": "Azure V1",
    "bitbrains": "Bitbrains Rnd",
    "google": "Google cluster-data 2011",
    "planetlab": "PlanetLab 2011-03-03",
}
#: How each trace may be shared (the data folder's README): in the doc's headings.
LICENCE = {"azure": "ship-ok", "bitbrains": "research-only", "google": "ship-ok", "planetlab": "research-only"}


def front(strategies: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Our settings no other setting of ours dominates on the printed figures, fewest violations first
    (of settings with the same figures, the first listed)."""
    ours = [s for s in strategies if s["kind"] == "ours"]

    def key(s: dict[str, Any]) -> tuple[float, float]:
        return round(s["savings_pct"], 2), round(s["violation_rate_pct"], 4)

    out, seen = [], set()
    for s in ours:
        sa, va = key(s)
        beaten = any(
            (sb >= sa and vb <= va and (sb > sa or vb < va)) for sb, vb in (key(o) for o in ours if o is not s)
        )
        if not beaten and key(s) not in seen:
            seen.add(key(s))
            out.append(s)
    return sorted(out, key=lambda s: (s["violation_rate_pct"], s["savings_pct"]))


def _row(s: dict[str, Any], mark: str = "") -> str:
    return (
        f"| {s['strategy']}{mark} | {s['savings_pct']:.1f} | {s['violation_rate_pct']:.3f} | "
        f"{s['worst_overload_pct']:.0f} | {s['vms_with_violations']}/{s['vms']} | {s['vms_changed']} |"
    )


def _settings(n: int) -> str:
    return f"{n} setting" + ("" if n == 1 else "s")


def section(report: dict[str, Any]) -> str:
    """One trace: the defaults, the front of our settings and the baselines, then who dominates whom."""
    strategies = report["strategies"]
    dom = report["dominance"]
    on_front = {s["strategy"] for s in front(strategies)}
    lines = [
        f"`{Path(report['trace']).name}`: {report['vms_backtested']} VMs backtested of {report['vms_read']} read; "
        f"{report['split_note']} (train {report['train_samples']} / test {report['test_samples']} samples).",
        "",
        "| strategy | savings % | violated intervals % | worst overload % | VMs with violations | VMs changed |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    defaults = [s for s in strategies if s["strategy"].startswith("ours default")]
    for s in defaults:
        lines.append(_row(s, " (front)" if s["strategy"] in on_front else ""))
    for s in front(strategies):
        if s not in defaults:
            lines.append(_row(s, " (front)"))
    for s in strategies:
        if s["kind"] == "baseline":
            lines.append(_row(s))
    lines.append("")
    by_name = {s["strategy"]: s for s in strategies}
    for name, d in dom["baselines"].items():
        head = f"- {name} ({d['savings_pct']:.1f} %, {d['violation_rate_pct']:.3f} %): "
        if d["dominated"]:
            best = max((by_name[w] for w in d["by"]), key=lambda s: s["savings_pct"])
            lines.append(
                head + f"**dominated** by {_settings(len(d['by']))}, e.g. {best['strategy']} "
                f"({best['savings_pct']:.1f} %, {best['violation_rate_pct']:.3f} %)"
            )
        elif "nearest" in d:
            n = d["nearest"]
            tie = " (a tie: the same figures)" if n["savings_short_by_pct"] <= 0.005 else ""
            lines.append(
                head + f"**not dominated**; nearest at no more violations {n['strategy']} "
                f"({n['savings_pct']:.1f} %, {n['violation_rate_pct']:.3f} %), "
                f"{n['savings_short_by_pct']:.2f} points short{tie}"
            )
        else:
            lines.append(head + "**not dominated**; no setting of ours has as few violated intervals")
    if "default" in dom:
        d = dom["default"]
        where = "on our curve" if d["on_curve"] else f"dominated by {_settings(len(d['dominated_by']))} of ours"
        under = "under" if d["under_1_pct"] else "**over**"
        lines.append(f"- default: {d['violation_rate_pct']:.3f} % violated intervals ({under} 1 %), {where}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    svg = Path("docs/backtests.svg")
    if "--svg" in args:
        i = args.index("--svg")
        svg = Path(args[i + 1])
        del args[i : i + 2]
    if not args:
        print(__doc__)
        return 2
    reports = []
    for path in args:
        report = json.loads(Path(path).read_text())
        name = next((k for k in TITLES if k in Path(path).stem), Path(path).stem)
        reports.append((TITLES.get(name, name), report))
        heading = TITLES.get(name, name) + (f" ({LICENCE[name]})" if name in LICENCE else "")
        print(f"### {heading}\n\n{section(report)}\n")
    svg.write_text(curves_svg(reports))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
