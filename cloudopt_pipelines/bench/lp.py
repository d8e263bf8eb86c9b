"""Benchmark of the linear portfolio optimiser on seeded random fleets (no dagster).

>>> rows = run_lp_benchmark(sizes=(1000,), solvers=("highs",))
>>> print(format_table(rows))
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from cloudopt_pipelines.bench.harness import Line, Report
from cloudopt_pipelines.optimizers.linear import LinearOptimizer, check_plan

REGIONS = ("us-east-1", "us-west-2", "eu-west-1")
ZONE_SUFFIXES = ("a", "b", "c")
VCPU_SIZES = (2, 4, 8, 16, 32, 64)
HOURS_PER_MONTH = 730.0


def generate_instances(
    n: int, options_per_resource: int = 8, seed: int = 0, n_groups: int | None = None
) -> list[dict[str, Any]]:
    """Random fleet: ``n`` resources with ``options_per_resource`` options each.

    Options are, in order: keep, graviton, rightsize, spot, reserved (partly upfront),
    savings_plan, schedule, terminate, then extra resize variants; the list is cut
    to ``options_per_resource`` (keep always stays).
    """
    if options_per_resource < 1:
        raise ValueError("options_per_resource must be >= 1")
    rng = np.random.default_rng(seed)
    n_groups = n_groups or max(4, min(200, n // 500))
    group = rng.integers(0, n_groups, n)
    home = group % len(REGIONS)
    other = rng.random(n) < 0.1
    region_i = np.where(other, rng.integers(0, len(REGIONS), n), home)
    zone_i = rng.integers(0, len(ZONE_SUFFIXES), n)
    spot_zone_i = rng.integers(0, len(ZONE_SUFFIXES), n)
    vcpu = rng.choice(VCPU_SIZES, n, p=(0.25, 0.3, 0.2, 0.15, 0.07, 0.03))
    mem_per = rng.choice((2.0, 4.0, 8.0), n)
    price = vcpu * 0.0416 * HOURS_PER_MONTH * (mem_per / 4.0) ** 0.5 * rng.uniform(0.85, 1.15, n)
    f = rng.uniform(0.9, 1.1, (n, 12))
    idle = rng.random(n) < 0.1
    upfront = rng.random(n) < 0.5
    out = []
    for i in range(n):
        c = float(price[i])
        v = int(vcpu[i])
        m = float(v * mem_per[i])
        reg = REGIONS[int(region_i[i])]
        zone = reg + ZONE_SUFFIXES[int(zone_i[i])]
        half = max(v // 2, 1)
        fi = f[i]
        opts = [
            ("keep", "keep", c, 0.0, zone, "on_demand", 0, v, m),
            ("graviton", "resize", 0.8 * c * fi[0], 0.0, zone, "on_demand", 1, v, m),
            ("rightsize", "resize", c * half / v * fi[1], 0.0, zone, "on_demand", 2, half, m * half / v),
            ("spot", "spot", c * 0.35 * fi[2], 0.0, reg + ZONE_SUFFIXES[int(spot_zone_i[i])], "spot", 2, v, m),
            ("reserved", "commit", 0.62 * c * fi[3], 3.0 * c if upfront[i] else 0.0, zone, "reserved", 0, v, m),
            ("savings_plan", "commit", 0.72 * c * fi[4], 0.0, zone, "savings_plan", 0, v, m),
            ("schedule", "schedule", 0.45 * c * fi[5], 0.0, zone, "on_demand", 3, v, m),
            ("terminate", "terminate", 0.0, 0.0, zone, "stopped", 1 if idle[i] else 5, 0, 0.0),
        ]  # fmt: skip
        k = 0
        while len(opts) < options_per_resource:
            scale = 0.25 * (k % 6 + 1)
            opts.append((f"resize-{k}", "resize", c * scale * fi[6 + k % 6], 0.0, zone, "on_demand",
                         1 + k % 3, max(int(v * scale), 1), m * scale))  # fmt: skip
            k += 1
        out.append({
            "id": f"i-{i:08x}",
            "account_id": f"{100000000000 + int(group[i]) % 7:012d}",
            "group": f"g{int(group[i]):03d}",
            "region": reg,
            "options": [
                {"name": o[0], "action": o[1], "monthly_cost_usd": round(o[2], 2),
                 "one_time_cost_usd": round(o[3], 2), "region": reg, "zone": o[4],
                 "market": o[5], "performance_risk": o[6], "vcpu": o[7], "memory_gib": o[8]}
                for o in opts[:options_per_resource]
            ],
        })  # fmt: skip
    return out


def perturbed(instances: Sequence[dict[str, Any]], rng: np.random.Generator, spread: float = 0.02) -> list[dict]:
    """The same fleet a day later: every option's monthly cost moved by up to ``spread`` (prices and use change)."""
    out = []
    for inst in instances:
        options = [
            {**o, "monthly_cost_usd": round(o["monthly_cost_usd"] * float(rng.uniform(1 - spread, 1 + spread)), 2)}
            for o in inst["options"]
        ]
        out.append({**inst, "options": options})
    return out


def generate_constraints(instances: Sequence[dict[str, Any]], seed: int = 0) -> dict[str, Any]:
    """Constraints that bind on :func:`generate_instances` fleets (every family used)."""
    rng = np.random.default_rng(seed + 1)
    vcpu: dict[str, float] = {}
    mem: dict[str, float] = {}
    regions: dict[str, set[str]] = {}
    baseline = 0.0
    upfront = 0.0
    for r in instances:
        keep = next(o for o in r["options"] if o["name"] == "keep")
        g = r["group"]
        vcpu[g] = vcpu.get(g, 0.0) + keep["vcpu"]
        mem[g] = mem.get(g, 0.0) + keep["memory_gib"]
        regions.setdefault(g, set()).add(r["region"])
        baseline += keep["monthly_cost_usd"]
        upfront += max(o["one_time_cost_usd"] for o in r["options"])
    groups = sorted(vcpu)
    n = len(instances)
    restricted = [g for g in groups if rng.random() < 0.1]
    protected = sorted(
        instances[i]["id"] for i in rng.choice(n, size=max(n // 100, 1), replace=False)
    ) if n else []  # fmt: skip
    return {
        "monthly_budget_usd": round(0.8 * baseline, 2),
        "max_one_time_cost_usd": round(0.3 * upfront, 2),
        "max_performance_risk": 4,
        "max_average_performance_risk": 1.2,
        "min_on_demand_share": {"*": 0.6},
        "max_spot_share": {"*": 0.35},
        "min_zones": {"*": 2},
        "allowed_regions": {g: sorted(regions[g]) for g in restricted},
        "min_capacity_vcpu": {g: round(0.8 * vcpu[g], 1) for g in groups},
        "min_capacity_memory_gib": {g: round(0.75 * mem[g], 1) for g in groups},
        "max_changes": int(0.5 * n),
        "protected_ids": protected,
    }


def run_lp_benchmark(
    sizes: Sequence[int] = (1000, 10000, 100000),
    options_per_resource: int = 8,
    solvers: Sequence[str] = ("highs", "cbc"),
    seed: int = 0,
    *,
    cbc_max_size: int = 10000,
    mip_gap: float = 1e-3,
    time_limit_s: float = 300.0,
    shadow_prices: bool = False,
    threads: int | None = None,
) -> list[dict[str, Any]]:
    """Solve generated fleets; one row per size x solver.

    ``build_seconds`` covers input validation, matrix assembly and handing the model to
    the solver; ``solve_seconds`` is the MIP solve; ``total_seconds`` is the wall time
    of ``LinearOptimizer(...)`` + ``solve()`` (plus the LP relaxation for shadow prices
    when ``shadow_prices=True``).  CBC is skipped above ``cbc_max_size`` resources.
    """
    rows = []
    for size in sizes:
        t0 = time.perf_counter()
        instances = generate_instances(size, options_per_resource, seed)
        constraints = generate_constraints(instances, seed)
        gen_s = time.perf_counter() - t0
        for solver in solvers:
            row: dict[str, Any] = {
                "size": size,
                "options_per_resource": options_per_resource,
                "variables": size * options_per_resource,
                "solver": solver,
                "generate_seconds": round(gen_s, 3),
            }
            if solver == "cbc" and size > cbc_max_size:
                row.update(status="skipped", note=f"CBC skipped above cbc_max_size={cbc_max_size}")
                rows.append(row)
                continue
            t1 = time.perf_counter()
            opt = LinearOptimizer(
                instances, constraints, solver=solver, mip_gap=mip_gap,
                time_limit_s=time_limit_s, shadow_prices=shadow_prices, explain=False,
                threads=threads, fallback=False,
            )  # fmt: skip
            sol = opt.solve()
            total = time.perf_counter() - t1
            row.update(
                status=sol.status,
                build_seconds=round(sol.build_seconds, 3),
                solve_seconds=round(sol.solve_seconds, 3),
                total_seconds=round(total, 3),
                gap=sol.mip_gap,
                objective=sol.total_monthly_cost_usd,
                baseline=sol.baseline_monthly_cost_usd,
                binding=len(sol.binding_constraints),
                note="; ".join(sol.notes)
                or ("CBC reports no gap (<= mip_gap when optimal)" if sol.mip_gap is None else ""),
            )
            rows.append(row)
    return rows


_COLUMNS = (
    ("size", "size"),
    ("solver", "solver"),
    ("status", "status"),
    ("build_seconds", "build s"),
    ("solve_seconds", "solve s"),
    ("total_seconds", "total s"),
    ("gap", "gap"),
    ("objective", "objective USD"),
    ("note", "note"),
)


def _fmt(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key == "gap":
        return f"{value:.2e}"
    if key == "objective":
        return f"{value:,.2f}"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Plain-text table of :func:`run_lp_benchmark` rows."""
    cells = [[title for _, title in _COLUMNS]]
    cells += [[_fmt(k, r.get(k)) for k, _ in _COLUMNS] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(_COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


TARGET_SECONDS = 60.0
BASELINE_SIZE = 2_000  # the PuLP model takes minutes at 10,000


#: process CPU seconds of the last :func:`_solve` per label (a loaded machine stretches the wall time, not these)
CPU_SECONDS: dict[str, float] = {}


def _solve(instances, constraints, solver: str, mip_gap: float, warm_start=None, label: str = "") -> tuple[Any, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    sol = LinearOptimizer(
        instances, constraints, solver=solver, mip_gap=mip_gap, time_limit_s=600.0,
        shadow_prices=False, explain=False, fallback=False, warm_start=warm_start,
    ).solve()  # fmt: skip
    if label:
        CPU_SECONDS[label] = time.process_time() - c0
    return sol, time.perf_counter() - t0


def run(
    quick: bool = False,
    progress: Any = print,
    size: int | None = None,
    options: int = 8,
    mip_gap: float = 1e-3,
    seed: int = 0,
) -> Report:
    """The harness's entry. At ``BASELINE_SIZE`` resources our HiGHS model against the plain PuLP model of
    the same fleet (HiGHS through PuLP), both to ``mip_gap``; at ``size`` (100,000 unless quick) our model
    alone, its cost against its LP bound and its time against the small size's, scaled linearly. Every
    plan is checked by :func:`check_plan`, independent of the model."""
    report = Report("lp", quick)
    instances = generate_instances(BASELINE_SIZE, options, seed)
    constraints = generate_constraints(instances, seed)
    ours, ours_s = _solve(instances, constraints, "highs", mip_gap)
    progress(f"lp {BASELINE_SIZE:,} x {options}: ours {ours.status} in {ours_s:.1f} s, gap {ours.mip_gap}")
    base, base_s = _solve(instances, constraints, "highs_pulp", mip_gap)
    progress(f"lp {BASELINE_SIZE:,} x {options}: PuLP model {base.status} in {base_s:.1f} s")
    ours_ok = ours.status == "optimal" and not check_plan(instances, constraints, ours.choices)
    base_ok = base.status == "optimal" and not check_plan(instances, constraints, base.choices)
    same = (
        ours_ok
        and base_ok
        and abs(ours.total_monthly_cost_usd - base.total_monthly_cost_usd)
        <= (2 * mip_gap * abs(base.total_monthly_cost_usd))
    )
    report.lines.append(
        Line(
            f"lp {BASELINE_SIZE:,} x {options}",
            f"LinearOptimizer (HiGHS) to {mip_gap:g} gap",
            "the same model through PuLP",
            ours_s,
            base_s,
            same,
            note=f"plans pass check_plan; {ours.total_monthly_cost_usd:,.2f} vs "
            f"{base.total_monthly_cost_usd:,.2f} USD/month",
        )
    )
    details: dict[str, Any] = {
        "options": options, "mip_gap": mip_gap, "seed": seed,
        BASELINE_SIZE: {"ours_s": ours_s, "pulp_s": base_s, "gap": ours.mip_gap, "timings": ours.timings},
    }  # fmt: skip
    size = size or (10_000 if quick else 100_000)
    big = generate_instances(size, options, seed)
    big_constraints = generate_constraints(big, seed)
    sol, secs = _solve(big, big_constraints, "highs", mip_gap, label="cold")
    progress(f"lp {size:,} x {options}: ours {sol.status} in {secs:.1f} s, gap {sol.mip_gap}")
    checked = sol.status == "optimal" and not check_plan(big, big_constraints, sol.choices)
    gap = sol.mip_gap if sol.mip_gap is not None else float("nan")
    cost = sol.total_monthly_cost_usd or 0.0
    report.lines += [
        Line(
            f"lp {size:,} x {options} cost",
            "plan cost",
            "LP lower bound",
            cost,
            cost * (1 - gap),
            checked,
            unit="USD / month",
            target=f"gap <= {mip_gap:g}",
            met=checked and gap <= mip_gap,
            note="plan passes check_plan" if checked else "plan FAILS check_plan or not optimal",
        ),
        Line(
            f"lp {size:,} x {options} time",
            "solve",
            f"{BASELINE_SIZE:,} x {options} time x {size // BASELINE_SIZE}",
            secs,
            ours_s * size / BASELINE_SIZE,
            None,
            target=f"< {TARGET_SECONDS:g} s" if size >= 100_000 else "",
            met=secs < TARGET_SECONDS if size >= 100_000 else None,
            note=f"ratio < 1: better than linear in the fleet; {CPU_SECONDS['cold']:.1f} s process CPU",
        ),
    ]
    today = perturbed(big, np.random.default_rng(seed + 1))
    cold, cold_s = _solve(today, big_constraints, "highs", mip_gap, label="next_day_cold")
    warm, warm_s = _solve(today, big_constraints, "highs", mip_gap, warm_start=sol.choices, label="next_day_warm")
    progress(f"lp {size:,} x {options} next day: cold {cold_s:.1f} s, from yesterday's plan {warm_s:.1f} s")
    both = all(s.status == "optimal" and not check_plan(today, big_constraints, s.choices) for s in (cold, warm))
    report.lines.append(
        Line(
            f"lp {size:,} x {options} next day",
            f"solve from yesterday's plan ({warm.method})",
            "the same solve, cold",
            warm_s,
            cold_s,
            both
            and abs(warm.total_monthly_cost_usd - cold.total_monthly_cost_usd)
            <= 2 * mip_gap * abs(cold.total_monthly_cost_usd),
            target=f"< {TARGET_SECONDS:g} s" if size >= 100_000 else "",
            met=warm_s < TARGET_SECONDS if size >= 100_000 else None,
            note="costs moved by up to 2 %; both plans pass check_plan, costs within the gap; process CPU "
            f"{CPU_SECONDS['next_day_warm']:.1f} s warm, {CPU_SECONDS['next_day_cold']:.1f} s cold",
        )
    )
    details[size] = {
        "seconds": secs,
        "cold_next_day_s": cold_s,
        "warm_next_day_s": warm_s,
        "cpu_s": dict(CPU_SECONDS),
        "status": sol.status,
        "gap": sol.mip_gap,
        "timings": sol.timings,
    }
    report.details = details
    return report


if __name__ == "__main__":  # pragma: no cover
    print(format_table(run_lp_benchmark()))
