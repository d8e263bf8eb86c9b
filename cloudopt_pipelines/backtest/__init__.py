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
    CandidateSet,
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
    "PRESETS",
    "CandidateSet",
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


#: The four published traces and their splits, one command each (``--preset NAME``): the file in the
#: shared data folder and the options it runs with.
PRESETS: dict[str, dict[str, Any]] = {
    "azure": {"file": "azure_v1_100vms_cpu_5min_long.csv.gz", "train_days": 14, "test_days": 7},
    "bitbrains": {"file": "bitbrains_rnd_2013-07_vm1-100_5min.csv.gz", "train_days": 14, "test_days": 7},
    "google": {"file": "gcd_vms_cpu_mem_5min_long.csv.gz", "train_days": 16 / 24, "test_days": 8 / 24},
    "planetlab": {
        "file": "planetlab_cpu_5min_long.csv.gz",
        "train_days": 16 / 24,
        "test_days": 8 / 24,
        "day": "2011-03-03",
    },
}
DEFAULT_DATA_DIR = "../shared/data/vm_traces"


def backtest_report(
    trace: str | Path,
    train_days: float = 14,
    test_days: float = 7,
    fmt: str = "auto",
    max_vms: int | None = None,
    catalog_table: Any = None,
    min_days: int = 8,
    day: str | None = None,
    allow_graviton: bool = False,
) -> dict[str, Any]:
    """Run the standalone backtest on one trace file and return the full report (JSON-ready).

    ``min_days`` and ``day`` select PlanetLab VMs (see ``read_trace``); ``allow_graviton`` adds the
    other architecture to the one candidate set every strategy chooses from."""
    from cloudopt_pipelines.catalog.prices import build_price_catalog
    from cloudopt_pipelines.optimizers.sizing import Catalog

    vms = read_trace(trace, fmt, max_vms=max_vms, min_days=min_days, day=day)
    if not vms:
        raise TraceError(f"trace {trace} has no VM with usable samples")
    catalog = Catalog(catalog_table if catalog_table is not None else build_price_catalog())
    candidates = CandidateSet(allow_graviton=allow_graviton)
    split, results = run_backtest(vms, catalog, train_days, test_days, candidates=candidates)
    return {
        "trace": str(trace),
        "candidates": {"allow_graviton": allow_graviton, "allow_burstable": True, "credits_start": 0},
        "planetlab_day": day,
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
    trace: str | None,
    train_days: float | None = None,
    test_days: float | None = None,
    as_json: bool = False,
    fmt: str = "auto",
    max_vms: int | None = None,
    output: str | None = None,
    echo: Callable[[str], None] = print,
    *,
    preset: str | None = None,
    data_dir: str = DEFAULT_DATA_DIR,
    train_hours: float | None = None,
    test_hours: float | None = None,
    min_days: int = 8,
    day: str | None = None,
    allow_graviton: bool = False,
) -> int:
    """``cloudopt backtest standalone``: print the table (or the whole JSON); returns the exit code.

    ``preset`` runs one of the four published traces with its split (``PRESETS``); hours override
    days. 0 when every baseline is dominated by a setting of ours and the default is on the curve
    with under 1 % violations, 1 otherwise (the report says which baseline and why), 2 for an
    unusable trace or request.
    """
    options: dict[str, Any] = {"train_days": 14.0, "test_days": 7.0, "day": day}
    if preset is not None:
        if preset not in PRESETS:
            echo(f"error: unknown preset {preset!r}; one of {', '.join(PRESETS)}")
            return 2
        options.update(PRESETS[preset])
        trace = trace or str(Path(data_dir) / PRESETS[preset]["file"])
    if trace is None:
        echo("error: give --trace FILE or --preset NAME (" + ", ".join(PRESETS) + ")")
        return 2
    for name, days, hours in (("train", train_days, train_hours), ("test", test_days, test_hours)):
        if hours is not None:
            options[f"{name}_days"] = hours / 24
        elif days is not None:
            options[f"{name}_days"] = days
        if options[f"{name}_days"] <= 0:
            echo(f"error: the {name} window must be longer than 0 (--{name}-days or --{name}-hours)")
            return 2
    try:
        report = backtest_report(
            trace,
            options["train_days"],
            options["test_days"],
            fmt,
            max_vms,
            min_days=min_days,
            day=options.get("day"),
            allow_graviton=allow_graviton,
        )
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
        if d["dominated"]:
            lines.append(f"{name}: dominated by {', '.join(d['by'])}")
        elif "nearest" in d:
            n = d["nearest"]
            lines.append(
                f"{name}: NOT dominated; nearest {n['strategy']} saves {n['savings_short_by_pct']:.1f} points less "
                f"at {n['violation_rate_pct']:.3f} % against {d['violation_rate_pct']:.3f} %"
            )
        else:
            lines.append(f"{name}: NOT dominated; no setting of ours has as few violated intervals")
    if "default" in dom:
        d = dom["default"]
        lines.append(
            f"default {d['strategy']}: {'on' if d['on_curve'] else 'NOT on'} the curve, "
            f"violations {d['violation_rate_pct']:.3f} % ({'under' if d['under_1_pct'] else 'over'} 1 %)"
        )
    return "\n".join(lines)
