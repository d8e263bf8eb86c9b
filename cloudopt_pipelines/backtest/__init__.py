"""Backtests of the standalone right-sizing against public VM traces (no Dagster).

``backtest_command`` is what ``cloudopt backtest standalone --trace FILE ...`` calls.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cloudopt_pipelines.backtest.engine import (
    BASELINES,
    DEFAULT_INSTANCE_TYPE,
    DEFAULT_SETTING,
    Choice,
    Split,
    Strategy,
    StrategyResult,
    default_strategies,
    dominance,
    our_strategies,
    run_backtest,
)
from cloudopt_pipelines.backtest.traces import FORMATS, TraceError, VmTrace, read_trace

__all__ = [
    "BASELINES",
    "DEFAULT_INSTANCE_TYPE",
    "DEFAULT_SETTING",
    "FORMATS",
    "Choice",
    "Split",
    "Strategy",
    "StrategyResult",
    "TraceError",
    "VmTrace",
    "backtest_command",
    "backtest_report",
    "default_strategies",
    "dominance",
    "our_strategies",
    "read_trace",
    "run_backtest",
]


def backtest_report(
    trace: str | Path,
    train_days: float = 14,
    test_days: float = 7,
    fmt: str = "auto",
    max_vms: int | None = None,
    catalog_table: Any = None,
) -> dict[str, Any]:
    """Run the standalone backtest on one trace file and return the full report (JSON-ready)."""
    from cloudopt_pipelines.catalog.prices import build_price_catalog
    from cloudopt_pipelines.optimizers.sizing import Catalog

    vms = read_trace(trace, fmt, max_vms=max_vms)
    if not vms:
        raise TraceError(f"trace {trace} has no VM with usable samples")
    catalog = Catalog(catalog_table if catalog_table is not None else build_price_catalog())
    split, results = run_backtest(vms, catalog, train_days, test_days)
    return {
        "trace": str(trace),
        "vms_read": len(vms),
        "vms_backtested": len(results[0].choices) if results else 0,
        "train_samples": split.train,
        "test_samples": split.test,
        "split_scaled": split.scaled,
        "split_note": split.note,
        "region": "us-east-1",
        "default_instance_type": DEFAULT_INSTANCE_TYPE,
        "strategies": [r.summary() for r in results],
        "dominance": dominance(results),
        "choices": [c.to_dict() for r in results for c in r.choices],
    }


def format_table(report: dict[str, Any]) -> str:
    """The strategies side by side, as a GitHub markdown table."""
    lines = [
        "| strategy | savings % | violations % of intervals | worst overload % | VMs with violations | VMs changed |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for s in report["strategies"]:
        lines.append(
            f"| {s['strategy']} | {s['savings_pct']:.1f} | {s['violation_rate_pct']:.3f} | "
            f"{s['worst_overload_pct']:.0f} | {s['vms_with_violations']}/{s['vms']} | {s['vms_changed']} |"
        )
    return "\n".join(lines)


def backtest_command(
    trace: str,
    train_days: float = 14,
    test_days: float = 7,
    as_json: bool = False,
    fmt: str = "auto",
    max_vms: int | None = None,
    output: str | None = None,
    echo: Callable[[str], None] = print,
) -> int:
    """``cloudopt backtest standalone``: print the table (or the whole JSON); returns the exit code.

    0 when every baseline is dominated by a setting of ours and the default is on the curve with under
    1 % violations, 1 otherwise (the report says which baseline and why), 2 for an unusable trace.
    """
    try:
        report = backtest_report(trace, train_days, test_days, fmt, max_vms)
    except (TraceError, FileNotFoundError) as exc:
        echo(f"error: {exc}")
        return 2
    text = json.dumps(report, indent=1) if as_json else _text(report)
    if output:
        Path(output).write_text(text + "\n")
    echo(text)
    dom = report["dominance"]
    ok = dom["all_dominated"] and dom.get("default", {}).get("on_curve") and dom.get("default", {}).get("under_1_pct")
    return 0 if ok else 1


def _text(report: dict[str, Any]) -> str:
    dom = report["dominance"]
    lines = [
        f"trace {report['trace']}: {report['vms_backtested']} VMs, {report['split_note']}",
        "",
        format_table(report),
        "",
    ]
    for name, d in dom["baselines"].items():
        lines.append(f"{name}: " + (f"dominated by {', '.join(d['by'])}" if d["dominated"] else "NOT dominated"))
    if "default" in dom:
        d = dom["default"]
        lines.append(
            f"default {d['strategy']}: {'on' if d['on_curve'] else 'NOT on'} the curve, "
            f"violations {d['violation_rate_pct']:.3f} % ({'under' if d['under_1_pct'] else 'over'} 1 %)"
        )
    return "\n".join(lines)
