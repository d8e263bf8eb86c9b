"""``cloudopt plan``: what-if runs of the portfolio optimiser, and its Pareto sweeps as a table and an SVG chart.

The typer command in ``cli.py`` only parses options and calls :func:`plan_command`; everything here is
plain functions (no Dagster), testable without a command line.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import date
from html import escape
from pathlib import Path
from typing import Any

from cloudopt_pipelines.optimizers.linear import KEEP, LinearOptimizer, Solution, check_plan, pareto_sweep

SWEEPS = ("budget", "max_changes")
EXIT_OK, EXIT_NO_PLAN, EXIT_BAD_INPUT = 0, 1, 2


class PlanInputError(ValueError):
    """An input or constraints file that cannot be used (names the file and the fix)."""


def load_instances(path: str | Path) -> list[dict[str, Any]]:
    """Resources as ``LinearOptimizer`` takes them: a JSON list, or ``{"instances": [...]}``."""
    data = _read(path, "instances")
    if isinstance(data, Mapping) and "instances" in data:
        data = data["instances"]
    if not isinstance(data, list):
        raise PlanInputError(
            f"{path}: expected a JSON list of resources (each with 'id' and 'options'), got {type(data).__name__}"
        )
    return data


def load_constraints(path: str | Path | None) -> dict[str, Any]:
    """LP constraints (the keys of docs/linear_optimizer.md) from a JSON or YAML mapping; None = no constraint."""
    if path is None:
        return {}
    data = _read(path, "constraints")
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise PlanInputError(f"{path}: expected a mapping of constraints, got {type(data).__name__}")
    return dict(data)


MAX_INPUT_DEPTH = 32
"""Nesting levels an input file may have: the formats need four, and deeper input only exhausts the stack."""


def _read(path: str | Path, what: str) -> Any:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise PlanInputError(f"{what} file {path} does not exist")
    text = path.read_text()
    too_deep = PlanInputError(
        f"{path}: nested more than {MAX_INPUT_DEPTH} levels deep, far deeper than a {what} file nests (see "
        "docs/linear_optimizer.md)"
    )
    try:
        data = json.loads(text)
    except RecursionError:
        raise too_deep from None
    except json.JSONDecodeError as exc:
        if path.suffix.lower() == ".json":
            raise PlanInputError(f"{path}: not valid JSON: {exc}") from None
        try:
            data = yaml.safe_load(text)
        except RecursionError:
            raise too_deep from None
        except yaml.YAMLError as exc:
            raise PlanInputError(f"{path}: neither JSON nor YAML: {exc}") from None
    if _depth(data) > MAX_INPUT_DEPTH:
        raise too_deep
    return data


def _depth(data: Any) -> int:
    """How deeply lists and mappings nest in ``data`` (without recursion)."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, Mapping):
            children = list(item.values())
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        if level <= MAX_INPUT_DEPTH:
            stack.extend((child, level + 1) for child in children)
    return deepest


# ------------------------------------------------------------------------------------- output


def plan_rows(instances: Sequence[Mapping[str, Any]], solution: Solution) -> list[dict[str, Any]]:
    """One row per resource: the chosen option with its costs (keep when there is no plan)."""
    rows = []
    for inst in sorted(instances, key=lambda i: i["id"]):
        options = {o["name"]: o for o in inst["options"]}
        keep = options[KEEP]
        chosen = options.get(solution.choices.get(inst["id"], KEEP), keep)
        rows.append(
            {
                "id": inst["id"],
                "group": inst.get("group") or "default",
                "option": chosen["name"],
                "action": chosen.get("action") or chosen["name"],
                "market": chosen.get("market") or "on_demand",
                "monthly_cost_current_usd": float(keep["monthly_cost_usd"]),
                "monthly_cost_planned_usd": float(chosen["monthly_cost_usd"]),
                "monthly_savings_usd": float(keep["monthly_cost_usd"]) - float(chosen["monthly_cost_usd"]),
                "one_time_cost_usd": float(chosen.get("one_time_cost_usd") or 0.0),
                "performance_risk": float(chosen.get("performance_risk") or 0.0),
            }
        )
    return rows


def format_solution(instances: Sequence[Mapping[str, Any]], solution: Solution, violations: Sequence[str]) -> str:
    """The plan as a table (biggest savings first) with a summary, or the explanation when infeasible."""
    from tabulate import tabulate

    lines = [f"status: {solution.status} (solver {solution.solver}, {solution.solve_seconds:.2f} s)"]
    if solution.total_monthly_cost_usd is None:
        lines.append("no plan: " + _explanation(solution))
        return "\n".join(lines)
    rows = sorted(plan_rows(instances, solution), key=lambda r: (-r["monthly_savings_usd"], r["id"]))
    headers = [
        "resource",
        "group",
        "option",
        "action",
        "market",
        "now USD/mo",
        "plan USD/mo",
        "saves",
        "upfront",
        "risk",
    ]
    lines.append(tabulate([list(r.values()) for r in rows], headers=headers, tablefmt="github", floatfmt=",.2f"))
    lines += [
        f"monthly cost: {solution.baseline_monthly_cost_usd:,.2f} -> {solution.total_monthly_cost_usd:,.2f} USD "
        f"(saves {solution.monthly_savings_usd:,.2f}); one-time {solution.total_one_time_cost_usd:,.2f} USD; "
        f"{solution.changes} change(s) of {len(rows)}; average risk {solution.average_performance_risk:.3f}",
        "binding constraints: " + (", ".join(solution.binding_constraints) or "none"),
        "check: " + ("every constraint holds" if not violations else "; ".join(violations)),
    ]
    return "\n".join(lines)


def _explanation(solution: Solution) -> str:
    if solution.explanation:
        return "; ".join(item["message"] for item in solution.explanation)
    return "; ".join(solution.notes) or f"the solver stopped with status {solution.status}"


def format_sweep(points: Sequence[Mapping[str, Any]], sweep: str) -> str:
    from tabulate import tabulate

    key = "monthly_budget_usd" if sweep == "budget" else "max_changes"
    headers = [key, "status", "monthly cost", "savings", "one-time", "average risk", "changes"]
    rows = [
        [
            p[key],
            p["status"],
            p["total_monthly_cost_usd"],
            p["monthly_savings_usd"],
            p["total_one_time_cost_usd"],
            p["average_performance_risk"],
            p["changes"],
        ]
        for p in points
    ]
    return tabulate(rows, headers=headers, tablefmt="github", floatfmt=",.3f", missingval="-")


def sweep_svg(points: Sequence[Mapping[str, Any]], sweep: str, title: str | None = None) -> str:
    """The Pareto curve as a standalone SVG (plain strings): cost vs average risk, or changes vs cost."""
    if sweep == "budget":
        xkey, ykey = "total_monthly_cost_usd", "average_performance_risk"
        xlabel, ylabel = "monthly cost of the plan (USD)", "average performance risk (0-4)"
    else:
        xkey, ykey = "changes", "total_monthly_cost_usd"
        xlabel, ylabel = "changes (resources not kept)", "monthly cost of the plan (USD)"
    title = title or ("Cost against risk (budget sweep)" if sweep == "budget" else "Cost against changes")
    pts = [(float(p[xkey]), float(p[ykey]), p) for p in points if p.get(xkey) is not None and p.get(ykey) is not None]
    width, height, left, right, top, bottom = 720, 440, 90, 30, 50, 70
    pw, ph = width - left - right, height - top - bottom
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        'font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2}" y="28" text-anchor="middle" font-size="16">{escape(title)}</text>',
    ]
    if not pts:
        out.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle">no feasible point</text></svg>')
        return "\n".join(out) + "\n"
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, x1 = _padded(min(xs), max(xs))
    y0, y1 = _padded(min(ys), max(ys))

    def sx(v: float) -> float:
        return left + (v - x0) / (x1 - x0) * pw

    def sy(v: float) -> float:
        return top + ph - (v - y0) / (y1 - y0) * ph

    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>')
    for i in range(6):
        xv, yv = x0 + (x1 - x0) * i / 5, y0 + (y1 - y0) * i / 5
        out.append(f'<line x1="{sx(xv):.1f}" y1="{top + ph}" x2="{sx(xv):.1f}" y2="{top + ph + 5}" stroke="#444"/>')
        out.append(f'<text x="{sx(xv):.1f}" y="{top + ph + 20}" text-anchor="middle">{_tick(xv)}</text>')
        out.append(f'<line x1="{left - 5}" y1="{sy(yv):.1f}" x2="{left}" y2="{sy(yv):.1f}" stroke="#444"/>')
        out.append(f'<line x1="{left}" y1="{sy(yv):.1f}" x2="{left + pw}" y2="{sy(yv):.1f}" stroke="#eee"/>')
        out.append(f'<text x="{left - 8}" y="{sy(yv) + 4:.1f}" text-anchor="end">{_tick(yv)}</text>')
    out.append(f'<text x="{left + pw / 2}" y="{height - 20}" text-anchor="middle">{escape(xlabel)}</text>')
    out.append(
        f'<text x="20" y="{top + ph / 2}" text-anchor="middle" transform="rotate(-90 20 {top + ph / 2})">'
        f"{escape(ylabel)}</text>"
    )
    line = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y, _ in sorted(pts, key=lambda p: (p[0], p[1])))
    out.append(f'<polyline points="{line}" fill="none" stroke="#1f77b4" stroke-width="2"/>')
    for x, y, p in pts:
        label = escape(f"{xlabel}: {x:,.2f}; {ylabel}: {y:,.3f}; status {p.get('status')}")
        out.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="4" fill="#1f77b4"><title>{label}</title></circle>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _padded(lo: float, hi: float) -> tuple[float, float]:
    if math.isclose(lo, hi, rel_tol=1e-9, abs_tol=1e-9):
        pad = max(abs(lo) * 0.05, 1.0)
        return lo - pad, hi + pad
    pad = (hi - lo) * 0.05
    return lo - pad, hi + pad


def _tick(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"


# ------------------------------------------------------------------------------------- command


def plan_command(
    input_path: str | None,
    constraints_path: str | None = None,
    *,
    as_json: bool = False,
    sweep: str | None = None,
    steps: int = 10,
    chart: str | None = None,
    day: str | None = None,
    lake_dir: str | Path | None = None,
    time_limit_s: float = 60.0,
    echo: Callable[..., Any] = print,
) -> int:
    """What ``cloudopt plan`` does; returns the exit code (0 plan, 1 no feasible plan, 2 bad input).

    ``input_path`` + ``constraints_path``: LP instances and LP constraints (JSON/YAML). ``day`` instead of
    ``input_path``: the lake's recommendations of that day under the constraints *file*
    ``constraints_path`` (the asset's YAML format; default as the asset), nothing written.
    """
    if chart and not Path(chart).parent.is_dir():
        echo(f"error: --chart {chart}: folder {Path(chart).parent} does not exist; create it first", err=True)
        return EXIT_BAD_INPUT
    try:
        with _solver_chatter_to_stderr():
            instances, constraints = _inputs(input_path, constraints_path, day, lake_dir)
            if sweep is not None:
                if sweep not in SWEEPS:
                    raise PlanInputError(f"--sweep must be one of {', '.join(SWEEPS)}, got {sweep!r}")
                points = pareto_sweep(instances, constraints, sweep=sweep, steps=steps, time_limit_s=time_limit_s)
            else:
                solution = LinearOptimizer(instances, constraints, time_limit_s=time_limit_s).solve()
    except (PlanInputError, ValueError) as exc:
        echo(f"error: {exc}", err=True)
        return EXIT_BAD_INPUT

    if sweep is not None:
        if chart:
            try:
                Path(chart).write_text(sweep_svg(points, sweep))
            except OSError as exc:
                echo(f"error: --chart {chart}: cannot write it ({exc.strerror or exc})", err=True)
                return EXIT_BAD_INPUT
        if as_json:
            echo(json.dumps(_finite(points), indent=2, allow_nan=False))
        else:
            echo(format_sweep(points, sweep))
            if chart:
                echo(f"chart: {chart}")
        feasible = any(p["total_monthly_cost_usd"] is not None for p in points)
        return EXIT_OK if feasible else EXIT_NO_PLAN

    violations = check_plan(instances, constraints, solution.choices) if solution.choices else []
    if as_json:
        payload = {
            "solution": solution.to_dict(),
            "plan": plan_rows(instances, solution) if solution.choices else [],
            "violations": violations,
        }
        echo(json.dumps(payload, indent=2, sort_keys=True))
    else:
        echo(format_solution(instances, solution, violations))
    return EXIT_OK if solution.choices or not instances else EXIT_NO_PLAN


@contextmanager
def _solver_chatter_to_stderr() -> Iterator[None]:
    """HiGHS prints its banner on the process's stdout (C level): keep stdout clean for --json pipes."""
    try:
        sys.stdout.flush()
        out, err = sys.stdout.fileno(), sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # captured streams (tests) have no descriptor
        yield
        return
    saved = os.dup(out)
    os.dup2(err, out)
    try:
        yield
    finally:
        try:
            ctypes.CDLL(None).fflush(None)
        except (OSError, AttributeError):
            pass
        os.dup2(saved, out)
        os.close(saved)


def _inputs(
    input_path: str | None, constraints_path: str | None, day: str | None, lake_dir: str | Path | None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    if (input_path is None) == (day is None):
        raise PlanInputError("give exactly one of --input FILE (what-if on a file) or --date YYYY-MM-DD (the lake)")
    if input_path is not None:
        return load_instances(input_path), load_constraints(constraints_path)
    from cloudopt_pipelines.assets.plan import plan_problem
    from cloudopt_pipelines.optimizers.base import select_optimizers
    from cloudopt_pipelines.settings import load_settings
    from cloudopt_pipelines.storage.lake import open_lake

    try:
        when = date.fromisoformat(day)
    except ValueError:
        raise PlanInputError(f"--date {day!r} is not a date as YYYY-MM-DD") from None
    settings = load_settings()
    lake_dir = settings.lake_url if lake_dir is None else lake_dir
    _, problem = plan_problem(open_lake(lake_dir), when, select_optimizers(settings.deployment_types), constraints_path)
    return problem.instances, problem.constraints


def _finite(value: Any) -> Any:
    """JSON never carries NaN: an infeasible point's budget becomes null."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
