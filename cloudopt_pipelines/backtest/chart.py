"""A dependency-free SVG chart of backtest results: savings against violations, one panel per trace."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any
from xml.sax.saxutils import escape

_W, _H = 420, 320
_M = {"left": 56, "right": 16, "top": 34, "bottom": 44}
_COLORS = {
    "compute-optimizer-like": "#d62728",
    "cost-explorer-like": "#9467bd",
    "krr-like": "#8c564b",
    "vpa-like": "#e377c2",
    "kubecost-like": "#2ca02c",
}


def _panel(report: dict[str, Any], title: str, x0: float) -> list[str]:
    pts = report["strategies"]
    xs = [p["violation_rate_pct"] for p in pts]
    ys = [p["savings_pct"] for p in pts]
    xmax = max(max(xs) * 1.1, 0.05)
    ymin, ymax = min(min(ys), 0.0), max(ys)
    ymin, ymax = math.floor(ymin / 10) * 10, math.ceil(ymax / 10) * 10 + 5
    pw = _W - _M["left"] - _M["right"]
    ph = _H - _M["top"] - _M["bottom"]

    def sx(x: float) -> float:
        return x0 + _M["left"] + pw * x / xmax

    def sy(y: float) -> float:
        return _M["top"] + ph * (1 - (y - ymin) / (ymax - ymin))

    out = [
        f'<text x="{x0 + _W / 2}" y="18" text-anchor="middle" font-size="13" font-weight="bold">{escape(title)}</text>',
        f'<rect x="{x0 + _M["left"]}" y="{_M["top"]}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>',
        f'<text x="{x0 + _W / 2}" y="{_H - 8}" text-anchor="middle" font-size="11">'
        "violations (% of 5-min intervals)</text>",
        f'<text x="{x0 + 14}" y="{_M["top"] + ph / 2}" font-size="11" text-anchor="middle" '
        f'transform="rotate(-90 {x0 + 14} {_M["top"] + ph / 2})">savings %</text>',
    ]
    for k in range(5):
        xv = xmax * k / 4
        out.append(
            f'<text x="{sx(xv)}" y="{_H - _M["bottom"] + 14}" font-size="9" text-anchor="middle">{xv:.2f}</text>'
        )
        yv = ymin + (ymax - ymin) * k / 4
        out.append(f'<text x="{x0 + _M["left"] - 4}" y="{sy(yv) + 3}" font-size="9" text-anchor="end">{yv:.0f}</text>')
        out.append(
            f'<line x1="{x0 + _M["left"]}" x2="{x0 + _M["left"] + pw}" y1="{sy(yv)}" y2="{sy(yv)}" stroke="#eee"/>'
        )
    ours = sorted((p for p in pts if p["kind"] == "ours"), key=lambda p: p["violation_rate_pct"])
    front, best = [], -math.inf
    for p in ours:  # the Pareto front: more savings for each step up in violations
        if p["savings_pct"] > best:
            front.append(p)
            best = p["savings_pct"]
    if len(front) > 1:
        path = " ".join(f"{sx(p['violation_rate_pct']):.1f},{sy(p['savings_pct']):.1f}" for p in front)
        out.append(f'<polyline points="{path}" fill="none" stroke="#1f77b4" stroke-width="1.5"/>')
    for p in ours:
        is_default = p["strategy"] == report["dominance"].get("default", {}).get("strategy")
        r = 5 if is_default else 3
        fill = "#ff7f0e" if is_default else "#1f77b4"
        out.append(
            f'<circle cx="{sx(p["violation_rate_pct"]):.1f}" cy="{sy(p["savings_pct"]):.1f}" r="{r}" fill="{fill}">'
            f"<title>{escape(p['strategy'])}: {p['savings_pct']:.1f} %, "
            f"{p['violation_rate_pct']:.3f} %</title></circle>"
        )
    for p in pts:
        if p["kind"] != "baseline":
            continue
        cx, cy = sx(p["violation_rate_pct"]), sy(p["savings_pct"])
        color = _COLORS.get(p["strategy"], "#333")
        out.append(
            f'<rect x="{cx - 4:.1f}" y="{cy - 4:.1f}" width="8" height="8" fill="{color}">'
            f"<title>{escape(p['strategy'])}: {p['savings_pct']:.1f} %, {p['violation_rate_pct']:.3f} %</title></rect>"
        )
    return out


def curves_svg(reports: Sequence[tuple[str, dict[str, Any]]]) -> str:
    """One panel per (title, report): our settings (blue, default orange, front as a line), baselines squares."""
    width = _W * len(reports)
    body: list[str] = []
    for i, (title, report) in enumerate(reports):
        body.extend(_panel(report, title, i * _W))
    legend_y = _H + 14
    legend = [
        f'<circle cx="20" cy="{legend_y}" r="3" fill="#1f77b4"/>'
        f'<text x="28" y="{legend_y + 4}" font-size="11">ours (each risk setting; line = best trade-off)</text>',
        f'<circle cx="300" cy="{legend_y}" r="5" fill="#ff7f0e"/>'
        f'<text x="308" y="{legend_y + 4}" font-size="11">ours, shipped default SizingPolicy()</text>',
    ]
    x = 480
    for name, color in _COLORS.items():
        legend.append(
            f'<rect x="{x}" y="{legend_y - 4}" width="8" height="8" fill="{color}"/>'
            f'<text x="{x + 12}" y="{legend_y + 4}" font-size="11">{name}</text>'
        )
        x += 160
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{_H + 28}" '
        f'font-family="sans-serif" viewBox="0 0 {width} {_H + 28}">\n'
        '<rect width="100%" height="100%" fill="white"/>\n' + "\n".join(body + legend) + "\n</svg>\n"
    )
