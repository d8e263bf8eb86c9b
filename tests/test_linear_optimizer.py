"""Tests of the linear portfolio optimiser (cloudopt_pipelines.optimizers.linear)."""

from __future__ import annotations

import itertools
import json
import random

import numpy as np
import pytest

from cloudopt_pipelines.bench.lp import generate_constraints, generate_instances
from cloudopt_pipelines.optimizers import linear
from cloudopt_pipelines.optimizers.linear import (
    MARKETS,
    LinearOptimizer,
    Option,
    Resource,
    Solution,
    check_plan,
    pareto_sweep,
)

# ----------------------------------------------------------------------------- helpers


def opt(name, cost, **kw):
    d = {"name": name, "monthly_cost_usd": cost, "market": "on_demand", "vcpu": 4,
         "memory_gib": 16.0, "zone": "us-east-1a", "performance_risk": 0}  # fmt: skip
    d.update(kw)
    return d


def res(rid, options, group="web", region="us-east-1"):
    return {"id": rid, "account_id": "123456789012", "group": group, "region": region,
            "options": options}  # fmt: skip


def solve(instances, constraints=None, **kw):
    kw.setdefault("mip_gap", 0.0)
    return LinearOptimizer(instances, constraints, **kw).solve()


def plan_cost(instances, choices):
    return sum(next(o["monthly_cost_usd"] for o in r["options"] if o["name"] == choices[r["id"]]) for r in instances)


ZONES = ("us-east-1a", "us-east-1b", "us-east-1c")


def random_instances(rng: random.Random, n_res=6, n_opts=3, groups=("web", "db")):
    out = []
    for i in range(n_res):
        options = []
        for k in range(n_opts):
            market = "on_demand" if k == 0 else rng.choice(MARKETS)
            vcpu = 0 if market == "stopped" else rng.choice((1, 2, 4))
            options.append({
                "name": "keep" if k == 0 else f"opt{k}",
                "action": "keep" if k == 0 else "resize",
                "monthly_cost_usd": round(rng.uniform(5, 100), 2),
                "one_time_cost_usd": 0.0 if k == 0 else rng.choice((0.0, 0.0, 25.0, 60.0)),
                "region": rng.choice(("us-east-1", "us-east-1", "eu-west-1")),
                "zone": rng.choice(ZONES),
                "market": market,
                "performance_risk": 0 if k == 0 else rng.randint(0, 3),
                "vcpu": vcpu,
                "memory_gib": 2.0 * vcpu,
            })  # fmt: skip
        out.append(res(f"r{i}", options, group=groups[i % len(groups)]))
    return out


def random_constraints(rng: random.Random, instances):
    """A random subset of every constraint family, sized from the all-keep plan."""
    keep_cost = sum(r["options"][0]["monthly_cost_usd"] for r in instances)
    groups = sorted({r["group"] for r in instances})
    vcpu = {g: sum(r["options"][0]["vcpu"] for r in instances if r["group"] == g) for g in groups}
    pool = {
        "monthly_budget_usd": round(rng.uniform(0.3, 0.9) * keep_cost, 2),
        "max_one_time_cost_usd": rng.choice((0.0, 30.0, 100.0)),
        "max_performance_risk": rng.choice((1, 2)),
        "max_average_performance_risk": rng.choice((0.5, 1.0, 1.5)),
        "min_on_demand_share": {"*": rng.choice((0.3, 0.6))},
        "max_spot_share": {rng.choice(groups): rng.choice((0.0, 0.5))},
        "min_zones": {"*": rng.choice((1, 2))},
        "allowed_regions": {rng.choice(groups): ["us-east-1"]},
        "min_capacity_vcpu": {g: round(rng.uniform(0.3, 0.9) * vcpu[g], 1) for g in groups},
        "min_capacity_memory_gib": {rng.choice(groups): 4.0},
        "max_changes": rng.randint(1, len(instances)),
        "protected_ids": [rng.choice(instances)["id"]],
    }
    keys = rng.sample(sorted(pool), rng.randint(2, 6))
    return {k: pool[k] for k in keys}


def brute_force(instances, constraints):
    """Cheapest feasible plan by enumeration (feasibility judged by check_plan)."""
    best = None
    names = [[o["name"] for o in r["options"]] for r in instances]
    ids = [r["id"] for r in instances]
    for combo in itertools.product(*names):
        choices = dict(zip(ids, combo, strict=True))
        cost = plan_cost(instances, choices)
        if best is not None and cost >= best[0]:
            continue
        if not check_plan(instances, constraints, choices):
            best = (cost, choices)
    return best


# ------------------------------------------------------------------ optimality


@pytest.mark.parametrize("seed", range(40))
def test_optimal_against_brute_force(seed):
    rng = random.Random(seed)
    instances = random_instances(rng)
    constraints = random_constraints(rng, instances)
    best = brute_force(instances, constraints)
    sol = solve(instances, constraints)
    if best is None:
        assert sol.status == "infeasible"
        assert sol.choices == {}
        assert sol.explanation, "an infeasible plan must come with an explanation"
        return
    assert sol.status == "optimal"
    assert check_plan(instances, constraints, sol.choices) == []
    assert sol.total_monthly_cost_usd == pytest.approx(best[0], abs=1e-6)
    assert plan_cost(instances, sol.choices) == pytest.approx(sol.total_monthly_cost_usd)
    keep = sum(r["options"][0]["monthly_cost_usd"] for r in instances)
    assert sol.monthly_savings_usd == pytest.approx(keep - best[0])


@pytest.mark.parametrize("seed", range(6))
def test_highs_and_cbc_agree(seed):
    rng = random.Random(1000 + seed)
    instances = random_instances(rng, n_res=8, n_opts=4)
    constraints = random_constraints(rng, instances)
    highs = solve(instances, constraints, solver="highs")
    cbc = solve(instances, constraints, solver="cbc")
    assert highs.solver == "highs" and cbc.solver == "cbc"
    assert highs.status == cbc.status
    if highs.status == "optimal":
        assert highs.total_monthly_cost_usd == pytest.approx(cbc.total_monthly_cost_usd, abs=1e-6)
        assert check_plan(instances, constraints, cbc.choices) == []


@pytest.mark.parametrize("seed", range(6))
def test_highspy_direct_and_pulp_paths_give_identical_choices(seed):
    rng = random.Random(2000 + seed)
    instances = random_instances(rng, n_res=10, n_opts=4, groups=("a", "b", "c"))
    constraints = random_constraints(rng, instances)
    direct = solve(instances, constraints, solver="highs")
    via_pulp = solve(instances, constraints, solver="highs_pulp")
    assert direct.status == via_pulp.status
    assert direct.choices == via_pulp.choices


def test_lp_fix_path_on_generated_fleet_is_feasible_and_within_gap():
    instances = generate_instances(1000, 8, seed=3)
    constraints = generate_constraints(instances, seed=3)
    sol = LinearOptimizer(instances, constraints, mip_gap=1e-3).solve()
    ref = LinearOptimizer(instances, constraints, mip_gap=1e-3, solver="highs_pulp").solve()
    assert sol.status == ref.status == "optimal"
    assert (sol.method, ref.method) == ("lp_neighbourhood", "mip")
    assert check_plan(instances, constraints, sol.choices) == []
    assert check_plan(instances, constraints, ref.choices) == []
    # both within 0.1 % of the optimum, hence within ~0.2 % of each other
    assert sol.total_monthly_cost_usd == pytest.approx(ref.total_monthly_cost_usd, rel=2.1e-3)
    assert sol.mip_gap is not None and sol.mip_gap <= 1e-3


# ------------------------------------------------------- every constraint kind


def two(options_a, options_b, **kw):
    return [res("r1", options_a, **kw), res("r2", options_b, **kw)]


KEEP_SPOT = [opt("keep", 100), opt("spot", 30, market="spot", performance_risk=3)]
CAPACITY = [opt("keep", 100, vcpu=4, memory_gib=16),
            opt("small", 60, vcpu=2, memory_gib=8, performance_risk=1),
            opt("off", 0, vcpu=0, memory_gib=0, market="stopped", performance_risk=3)]  # fmt: skip

BINDING_CASES = {
    # name: (instances, constraints, binding constraint, expected cost)
    "monthly_budget_usd": (
        [res("r1", [opt("keep", 100), opt("cheap", 60, performance_risk=1)])],
        {"monthly_budget_usd": 60}, "monthly_budget_usd", 60,
    ),
    "max_one_time_cost_usd": (
        two(*[[opt("keep", 100), opt("ri", 50, market="reserved", one_time_cost_usd=100),
               opt("alt", 70)]] * 2),
        {"max_one_time_cost_usd": 100}, "max_one_time_cost_usd", 120,
    ),
    "max_performance_risk": (
        [res("r1", [*KEEP_SPOT, opt("small", 60, performance_risk=1)])],
        {"max_performance_risk": 2}, "max_performance_risk", 60,
    ),
    "max_average_performance_risk": (
        two(*[[opt("keep", 100), opt("spot", 30, market="spot", performance_risk=3),
               opt("small", 60, performance_risk=1)]] * 2),
        {"max_average_performance_risk": 2.0}, "max_average_performance_risk", 90,
    ),
    "min_on_demand_share": (
        two(KEEP_SPOT, KEEP_SPOT), {"min_on_demand_share": {"web": 0.5}},
        "min_on_demand_share[web]", 130,
    ),
    "max_spot_share": (
        two(KEEP_SPOT, KEEP_SPOT), {"max_spot_share": {"*": 0.5}}, "max_spot_share[web]", 130,
    ),
    "min_zones": (
        two([opt("keep", 100, zone="us-east-1a"), opt("spot", 30, market="spot")],
            [opt("keep", 100, zone="us-east-1b"), opt("spot", 30, market="spot")]),
        {"min_zones": {"web": 2}}, "min_zones[web]", 130,
    ),
    "allowed_regions": (
        [res("r1", [opt("keep", 100), opt("eu", 40, region="eu-west-1", zone="eu-west-1a"),
                    opt("small", 60)])],
        {"allowed_regions": {"web": ["us-east-1"]}}, "allowed_regions[web]", 60,
    ),
    "min_capacity_vcpu": (
        two(CAPACITY, CAPACITY), {"min_capacity_vcpu": {"web": 6}}, "min_capacity_vcpu[web]", 160,
    ),
    "min_capacity_memory_gib": (
        two(CAPACITY, CAPACITY), {"min_capacity_memory_gib": {"*": 24}},
        "min_capacity_memory_gib[web]", 160,
    ),
    "max_changes": (
        two(*[[opt("keep", 100), opt("cheap", 50)]] * 2), {"max_changes": 1}, "max_changes", 150,
    ),
    "protected_ids": (
        two(*[[opt("keep", 100), opt("cheap", 50)]] * 2), {"protected_ids": ["r1"]},
        "protected_ids[r1]", 150,
    ),
}  # fmt: skip


@pytest.mark.parametrize("family", sorted(BINDING_CASES))
def test_each_constraint_kind_is_enforced_and_binds(family):
    instances, constraints, name, expected = BINDING_CASES[family]
    free = solve(instances)
    # the unconstrained optimum violates the constraint, and check_plan says so
    violations = check_plan(instances, constraints, free.choices)
    if family != "monthly_budget_usd":  # the budget equals the optimum: only binds
        assert violations and all(v.startswith(family) for v in violations), violations
    sol = solve(instances, constraints)
    assert sol.status == "optimal"
    assert check_plan(instances, constraints, sol.choices) == []
    assert sol.total_monthly_cost_usd == pytest.approx(expected)
    assert name in sol.binding_constraints
    for solver in ("cbc", "highs_pulp"):
        other = solve(instances, constraints, solver=solver)
        assert other.total_monthly_cost_usd == pytest.approx(expected)


def test_min_zones_chooses_the_other_zone():
    instances, constraints, _, _ = BINDING_CASES["min_zones"]
    assert solve(instances, constraints).choices == {"r1": "spot", "r2": "keep"}


def test_star_applies_to_each_group_and_explicit_group_overrides():
    instances = [res("a1", KEEP_SPOT, group="a"), res("a2", KEEP_SPOT, group="a"),
                 res("b1", KEEP_SPOT, group="b"), res("b2", KEEP_SPOT, group="b")]  # fmt: skip
    sol = solve(instances, {"max_spot_share": {"*": 0.5, "b": None}})
    spots = {rid for rid, name in sol.choices.items() if name == "spot"}
    assert len(spots & {"a1", "a2"}) == 1  # per group, not fleet-wide
    assert spots >= {"b1", "b2"}  # None disables the default for group b
    sol = solve(instances, {"max_spot_share": {"*": 0.5, "b": 0.0}})
    assert not {"b1", "b2"} & {r for r, n in sol.choices.items() if n == "spot"}


def test_generated_fleet_with_every_constraint_kind_satisfies_check_plan():
    instances = generate_instances(400, 8, seed=11)
    constraints = generate_constraints(instances, seed=11)
    assert set(constraints) == set(linear.CONSTRAINT_KEYS)
    sol = LinearOptimizer(instances, constraints, mip_gap=1e-4).solve()
    assert sol.status == "optimal"
    assert check_plan(instances, constraints, sol.choices) == []
    assert sol.total_monthly_cost_usd < sol.baseline_monthly_cost_usd
    assert sol.binding_constraints  # the generator's constraints do bite


def test_check_plan_reports_incomplete_plans():
    instances = two(KEEP_SPOT, KEEP_SPOT)
    assert check_plan(instances, {}, {"r1": "keep"}) == ["r2: no option chosen"]
    assert check_plan(instances, {}, {"r1": "keep", "r2": "nope"}) == ["r2: unknown option 'nope'"]
    assert check_plan(instances, {}, {"r1": "keep", "r2": "keep", "x": "keep"}) == ["x: not in instances"]


# ------------------------------------------------------------------ infeasibility


def explanation(sol):
    assert sol.status == "infeasible"
    return {e["constraint"]: e for e in sol.explanation}


def test_infeasible_budget_names_budget_and_amount():
    instances, _, _, _ = BINDING_CASES["monthly_budget_usd"]
    sol = solve(instances, {"monthly_budget_usd": 59})
    exp = explanation(sol)
    assert set(exp) == {"monthly_budget_usd"}
    assert exp["monthly_budget_usd"]["relax_by"] == pytest.approx(1.0)
    assert exp["monthly_budget_usd"]["required"] == pytest.approx(60.0)


def test_infeasible_capacity_names_capacity_and_amount():
    instances = two(CAPACITY, CAPACITY)
    exp = explanation(solve(instances, {"min_capacity_vcpu": {"web": 12}}))
    assert set(exp) == {"min_capacity_vcpu[web]"}
    assert exp["min_capacity_vcpu[web]"]["relax_by"] == pytest.approx(4.0)
    assert exp["min_capacity_vcpu[web]"]["unit"] == "vCPU"


def test_infeasible_explanation_picks_the_smallest_set():
    # protected r1 and r2 keep 2 vCPU each; 8 vCPU needs both upgraded.  Relaxing the
    # capacity (one constraint) beats un-protecting both resources (two constraints).
    options = [opt("keep", 50, vcpu=2), opt("big", 150, vcpu=4)]
    instances = two(options, options)
    cons = {"protected_ids": ["r1", "r2"], "min_capacity_vcpu": {"web": 8}}
    exp = explanation(solve(instances, cons))
    assert set(exp) == {"min_capacity_vcpu[web]"}
    assert exp["min_capacity_vcpu[web]"]["relax_by"] == pytest.approx(4.0)
    # one protected resource: un-protecting r1 or lowering the capacity by 2 are both
    # single relaxations; the smaller relative one (2 of 8 vCPU) wins
    cons = {"protected_ids": ["r1"], "min_capacity_vcpu": {"web": 8}}
    exp = explanation(solve(instances, cons))
    assert set(exp) == {"min_capacity_vcpu[web]"}
    assert exp["min_capacity_vcpu[web]"]["relax_by"] == pytest.approx(2.0)


def test_infeasible_two_independent_constraints_are_both_named():
    instances = two(CAPACITY, CAPACITY)
    cons = {"min_capacity_vcpu": {"web": 10}, "min_zones": {"web": 2}}
    exp = explanation(solve(instances, cons))  # all options are in zone a
    assert set(exp) == {"min_capacity_vcpu[web]", "min_zones[web]"}
    assert exp["min_capacity_vcpu[web]"]["relax_by"] == pytest.approx(2.0)
    assert exp["min_zones[web]"]["relax_by"] == pytest.approx(1.0)


def test_infeasible_region_filter_suggests_the_region():
    instances = [res("r1", [opt("keep", 100, region="eu-west-1")], region="eu-west-1")]
    exp = explanation(solve(instances, {"allowed_regions": {"*": ["us-east-1"]}}))
    assert exp["allowed_regions[web]"]["relax_by"] == ["eu-west-1"]
    assert exp["allowed_regions[web]"]["resources"] == ["r1"]


def test_infeasible_share_reports_required_share():
    instances = two([opt("spot", 30, market="spot"), opt("keep", 10, market="spot")],
                    [opt("keep", 100)])  # fmt: skip
    exp = explanation(solve(instances, {"min_on_demand_share": {"web": 0.75}}))
    item = exp["min_on_demand_share[web]"]
    assert item["required"] == pytest.approx(0.5)
    assert item["relax_by"] == pytest.approx(0.25)


# ------------------------------------------------------------------- determinism


def test_same_input_same_plan_and_shuffle_invariance():
    instances = generate_instances(60, 6, seed=5)
    constraints = generate_constraints(instances, seed=5)
    a = LinearOptimizer(instances, constraints, mip_gap=1e-3).solve()
    b = LinearOptimizer(instances, constraints, mip_gap=1e-3).solve()
    rng = random.Random(0)
    shuffled = [dict(r, options=rng.sample(r["options"], len(r["options"]))) for r in instances]
    rng.shuffle(shuffled)
    c = LinearOptimizer(shuffled, constraints, mip_gap=1e-3).solve()
    assert a.status == "optimal"
    assert a.choices == b.choices == c.choices
    assert a.total_monthly_cost_usd == c.total_monthly_cost_usd


def test_tie_break_prefers_keep_then_one_time_cost_then_name():
    assert solve([res("r", [opt("b", 100), opt("keep", 100)])]).choices == {"r": "keep"}
    r = res("r", [opt("keep", 120), opt("a", 100, one_time_cost_usd=10), opt("b", 100)])
    assert solve([r]).choices == {"r": "b"}
    r = res("r", [opt("keep", 120), opt("b", 100), opt("a", 100)])
    assert solve([r]).choices == {"r": "a"}
    # equal costs everywhere: all keep, even with a loose gap
    many = [res(f"r{i}", [opt("z", 10), opt("keep", 10), opt("a", 10)]) for i in range(50)]
    sol = solve(many, mip_gap=0.01)
    assert set(sol.choices.values()) == {"keep"}


def test_tie_break_post_pass_respects_constraints():
    # keep ties with "a" but only "a" leaves the zone needed by min_zones
    instances = [res("r1", [opt("keep", 100, zone="us-east-1a"), opt("a", 100, zone="us-east-1b")]),
                 res("r2", [opt("keep", 100, zone="us-east-1a")])]  # fmt: skip
    sol = solve(instances, {"min_zones": {"web": 2}})
    assert sol.choices == {"r1": "a", "r2": "keep"}


# -------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("instances", "constraints", "match"),
    [
        ([res("r1", [opt("a", 1)])], None, "'r1' has no option named 'keep'"),
        ([res("r1", [opt("keep", 1)]), res("r1", [opt("keep", 2)])], None, "duplicate resource id 'r1'"),
        ([res("r1", [opt("keep", 1), opt("keep", 2)])], None, "'r1': duplicate option name 'keep'"),
        ([res("r1", [opt("keep", 1, market="preemptible")])], None, "unknown market 'preemptible'"),
        ([res("r1", [opt("keep", -5)])], None, "'r1' option 'keep': 'monthly_cost_usd' must be"),
        ([res("r1", [opt("keep", 1, one_time_cost_usd=-1)])], None, "one_time_cost_usd"),
        ([res("r1", [opt("keep", float("nan"))])], None, "finite"),
        ([res("r1", [opt("keep", "12")])], None, "must be a number"),
        ([res("r1", [{"name": "keep"}])], None, "'monthly_cost_usd' is required"),
        ([res("r1", [opt("keep", 1)])], {"budget": 5}, "valid keys are: monthly_budget_usd"),
        ([res("r1", [opt("keep", 1)])], {"min_zones": {"nope": 2}}, "unknown group 'nope'"),
        ([res("r1", [opt("keep", 1)])], {"max_spot_share": {"*": 1.5}}, "between 0 and 1"),
        ([res("r1", [opt("keep", 1)])], {"protected_ids": ["r9"]}, "unknown resource id 'r9'"),
        ([res("r1", [opt("keep", 1)])], {"max_changes": 1.5}, "integer"),
        ([res("r1", [opt("keep", 1)])], {"allowed_regions": {"*": "us-east-1"}}, "list of region"),
    ],
)  # fmt: skip
def test_validation_errors(instances, constraints, match):
    with pytest.raises(ValueError, match=match):
        LinearOptimizer(instances, constraints)


def test_solver_argument_validation():
    with pytest.raises(ValueError, match="unknown solver"):
        LinearOptimizer([res("r1", [opt("keep", 1)])], solver="gurobi")
    with pytest.raises(ValueError, match="mip_gap"):
        LinearOptimizer([res("r1", [opt("keep", 1)])], mip_gap=2)


def test_dataclass_input_equals_mapping_input():
    instances = two(CAPACITY, CAPACITY)
    typed = [
        Resource(id=r["id"], group=r["group"], region=r["region"], account_id=r["account_id"],
                 options=[Option(**o) for o in r["options"]])
        for r in instances
    ]  # fmt: skip
    cons = {"min_capacity_vcpu": {"web": 6}}
    assert solve(typed, cons).choices == solve(instances, cons).choices


# ---------------------------------------------------------------- serialisation


def test_json_round_trip_optimal_and_infeasible():
    instances = two(CAPACITY, CAPACITY)
    for cons in ({"min_capacity_vcpu": {"web": 6}}, {"min_capacity_vcpu": {"web": 99}}):
        sol = solve(instances, cons)
        text = sol.to_json()
        data = json.loads(text)
        assert data["status"] == sol.status
        back = Solution.from_json(text)
        assert back == sol
        assert back.to_dict() == sol.to_dict()
    assert data["explanation"][0]["constraint"] == "min_capacity_vcpu[web]"
    with pytest.raises(ValueError, match="unknown Solution field"):
        Solution.from_dict({**data, "bogus": 1})


def test_solution_fields():
    instances = two(CAPACITY, CAPACITY)
    sol = solve(instances, {"min_capacity_vcpu": {"web": 6}})
    assert sol.choices == {"r1": "keep", "r2": "small"} or sol.choices == {"r1": "small", "r2": "keep"}
    assert sol.total_one_time_cost_usd == 0
    assert sol.changes == 1
    assert sol.baseline_monthly_cost_usd == 200
    assert sol.monthly_savings_usd == pytest.approx(40)
    assert sol.solver == "highs"
    assert sol.build_seconds >= 0 and sol.solve_seconds >= 0
    assert sol.mip_gap is not None and sol.mip_gap <= 1e-9


# ---------------------------------------------------------------- shadow prices


@pytest.mark.parametrize("solver", ["highs", "cbc"])
def test_shadow_price_of_capacity(solver):
    # LP relaxation: 4 vCPU keep at 25 USD/vCPU is the marginal supply -> 25 USD/vCPU
    instances = two(CAPACITY, CAPACITY)
    sol = solve(instances, {"min_capacity_vcpu": {"web": 6}, "monthly_budget_usd": 1000},
                solver=solver)  # fmt: skip
    assert sol.shadow_prices["min_capacity_vcpu[web]"] == pytest.approx(25.0, abs=1e-3)
    assert sol.shadow_prices["monthly_budget_usd"] == pytest.approx(0.0, abs=1e-9)


def test_shadow_price_matches_finite_difference():
    instances = generate_instances(60, 5, seed=2)
    constraints = generate_constraints(instances, seed=2)
    g = sorted(constraints["min_capacity_vcpu"])[0]
    name = f"min_capacity_vcpu[{g}]"

    def lp_value(amount):
        cons = dict(constraints, min_capacity_vcpu={**constraints["min_capacity_vcpu"], g: amount})
        o = LinearOptimizer(instances, cons)
        model = linear._build_model(o._fleet, o._cons)
        raw = linear._solve_highs(model, integer=False, plain=True, time_limit=30, mip_gap=0,
                                  threads=None, seed=0)  # fmt: skip
        return raw.objective

    base = constraints["min_capacity_vcpu"][g]
    sol = LinearOptimizer(instances, constraints, solver="cbc").solve()
    fd = (lp_value(base + 0.01) - lp_value(base)) / 0.01
    assert sol.shadow_prices[name] == pytest.approx(fd, rel=1e-3, abs=1e-3)


# ----------------------------------------------------------------- fallback, sweep


def test_highs_failure_falls_back_to_cbc(monkeypatch):
    def broken(*args, **kwargs):
        raise linear._SolverFailure("boom")

    monkeypatch.setattr(linear, "_solve_highs", broken)
    instances, constraints, _, expected = BINDING_CASES["min_capacity_vcpu"]
    sol = solve(instances, constraints)
    assert sol.solver == "cbc"
    assert sol.total_monthly_cost_usd == pytest.approx(expected)
    assert any("fell back to CBC" in n for n in sol.notes)
    with pytest.raises(linear._SolverFailure):
        solve(instances, constraints, fallback=False)


def test_pareto_sweep_budget_trades_cost_for_risk():
    instances = generate_instances(40, 5, seed=4)
    constraints = {k: v for k, v in generate_constraints(instances, seed=4).items()
                   if k not in ("max_average_performance_risk",)}  # fmt: skip
    points = pareto_sweep(instances, constraints, sweep="budget", steps=4, mip_gap=0.0)
    assert len(points) == 4
    assert all(p["status"] == "optimal" for p in points)
    budgets = [p["monthly_budget_usd"] for p in points]
    risks = [p["average_performance_risk"] for p in points]
    assert budgets == sorted(budgets)
    assert all(p["total_monthly_cost_usd"] <= p["monthly_budget_usd"] + 1e-3 for p in points)
    assert all(b <= a + 1e-6 for a, b in itertools.pairwise(risks))
    assert risks[-1] < risks[0]


def test_pareto_sweep_max_changes_cost_decreases():
    instances = generate_instances(60, 5, seed=6)
    points = pareto_sweep(instances, {}, sweep="max_changes", steps=4)
    ks = [p["max_changes"] for p in points]
    costs = [p["total_monthly_cost_usd"] for p in points]
    assert ks[0] == 0 and ks == sorted(ks)
    assert costs[0] == pytest.approx(sum(r["options"][0]["monthly_cost_usd"] for r in instances
                                         if r["options"][0]["name"] == "keep"))  # fmt: skip
    assert all(b <= a + 1e-6 for a, b in itertools.pairwise(costs))
    assert all(p["changes"] <= p["max_changes"] for p in points)


def test_module_does_not_import_dagster():
    import ast
    import pathlib

    for mod in (linear, __import__("cloudopt_pipelines.bench.lp", fromlist=["x"])):
        tree = ast.parse(pathlib.Path(mod.__file__).read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not any(n.split(".")[0] == "dagster" for n in names)


def test_numpy_is_the_only_hard_dependency_of_the_result_types():
    sol = solve(two(CAPACITY, CAPACITY), {"min_capacity_vcpu": {"web": 6}})
    for value in sol.to_dict().values():
        assert not isinstance(value, np.generic)


def test_empty_fleet_is_trivially_optimal():
    sol = LinearOptimizer([], {}).solve()
    assert (sol.status, sol.choices, sol.total_monthly_cost_usd, sol.notes) == ("optimal", {}, 0.0, [])
    assert check_plan([], {}, {}) == []


def test_dominated_options_are_dropped_only_when_no_constraint_needs_them():
    instances = [res("r", [opt("keep", 100), opt("a", 50), opt("b", 60, vcpu=8, memory_gib=32)])]

    def columns(constraints):
        o = LinearOptimizer(instances, constraints)
        model = linear._build_model(o._fleet, o._cons)
        return sorted(o._fleet.names[j] for j in model.x_opt)

    # b costs more than a and offers nothing any active constraint values
    assert columns({}) == ["a"]  # keep is dominated too without max_changes
    assert columns({"max_changes": 1}) == ["a", "keep"]
    # with a capacity constraint b's extra vCPU matters
    assert columns({"min_capacity_vcpu": {"web": 2}}) == ["a", "b"]
    assert solve(instances, {"min_capacity_vcpu": {"web": 8}}).choices == {"r": "b"}


def test_full_mip_timeout_keeps_the_neighbourhood_plan(monkeypatch):
    instances = generate_instances(500, 6, seed=8)
    constraints = generate_constraints(instances, seed=8)
    real = linear._solve_highs
    full_cols = []

    def full_mip_times_out(model, **kw):
        if kw["integer"] and model.ncol == full_cols[0]:
            return linear._Raw("time_limit", None, None, None, None, 0.0)
        if kw["integer"]:  # neighbourhood MIPs: stop early, gap 0 is never accepted
            kw["mip_gap"] = 0.05
        return real(model, **kw)

    o = LinearOptimizer(instances, constraints, mip_gap=0.0)
    full_cols.append(linear._build_model(o._fleet, o._cons).ncol)
    monkeypatch.setattr(linear, "_solve_highs", full_mip_times_out)
    sol = o.solve()
    assert (sol.status, sol.method) == ("time_limit", "lp_neighbourhood")
    assert check_plan(instances, constraints, sol.choices) == []
    assert 0 < sol.mip_gap < 0.05
