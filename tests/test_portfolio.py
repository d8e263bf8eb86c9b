"""The portfolio plan's pure logic: config validation, candidates and interactions, infeasibility, the CLI."""

import json
import xml.etree.ElementTree as ET
from datetime import date
from pathlib import Path

import pyarrow as pa
import pytest

from cloudopt_pipelines.optimizers.portfolio import (
    CONFIG_ENV,
    Candidate,
    CandidateOption,
    ConfigError,
    build_problem,
    candidates_from_recommendations,
    label_candidates,
    load_config,
    merge_candidates,
    parse_config,
    plan_table,
    solve_problem,
    verify_plan,
)
from cloudopt_pipelines.plan_cli import EXIT_BAD_INPUT, EXIT_NO_PLAN, EXIT_OK, plan_command
from cloudopt_pipelines.storage.schemas import PORTFOLIO_PLAN, RECOMMENDATIONS

DAY = date(2026, 11, 16)


def rec_rows(resource: str, options: list[tuple], account: str = "123456789012", protected: bool = False) -> list[dict]:
    """Recommendation rows: (option_name, action, market, monthly cost, upfront, risk, vcpu)."""
    keep_cost = next(o[3] for o in options if o[0] == "keep")
    return [
        {
            "account_id": account,
            "date": DAY,
            "resource_id": resource,
            "resource_kind": "ec2_instance",
            "deployment_type": "standalone",
            "region": "us-east-1",
            "zone": "us-east-1a",
            "option_name": name,
            "action": action,
            "rank": 1,
            "is_best": False,
            "finding": "over-provisioned",
            "current_config": '{"instance_type": "m5.xlarge"}',
            "proposed_config": "{}",
            "market": market,
            "vcpu": vcpu,
            "memory_gib": 4.0 * vcpu,
            "monthly_cost_current_usd": keep_cost,
            "monthly_cost_proposed_usd": cost,
            "monthly_savings_usd": keep_cost - cost,
            "savings_pct": 0.0,
            "one_time_cost_usd": upfront,
            "performance_risk": risk,
            "migration_effort": "Low",
            "projected_cpu_pct": None,
            "projected_memory_pct": None,
            "confidence": 0.5,
            "is_estimate": False,
            "protected": protected,
            "risk_setting": "default",
            "rationale": f"because {name}",
            "details": "{}",
        }
        for name, action, market, cost, upfront, risk, vcpu in options
    ]


def resources_table(tags: dict[str, dict[str, str]], account: str = "123456789012") -> pa.Table:
    return pa.Table.from_pylist(
        [
            {
                "account_id": account,
                "resource_id": rid,
                "tags": json.dumps(t),
                "team": None,
                "service": None,
                "env": None,
            }
            for rid, t in tags.items()
        ]
    )


WEB = [
    ("keep", "keep", "on_demand", 140.0, 0.0, 0.0, 4),
    ("resize:m7g.large", "resize", "on_demand", 60.0, 0.0, 1.0, 2),
    ("ri_3y_all_upfront:m7g.large", "reserve", "reserved", 25.0, 900.0, 1.0, 2),
    ("spot:m7g.large", "spot", "spot", 20.0, 0.0, 2.0, 2),
]


def problem_for(rows: list[dict], tags: dict, config: dict):
    table = pa.Table.from_pylist(rows, schema=RECOMMENDATIONS)
    candidates, notes = merge_candidates(candidates_from_recommendations(table))
    cfg = parse_config(config, "test.yaml")
    return build_problem(candidates, label_candidates(candidates, resources_table(tags), cfg), cfg, DAY, notes)


# --------------------------------------------------------------------------------------- config


def test_the_default_constraints_file_is_valid_and_documents_prod() -> None:
    config = load_config(environ={})
    assert config.source.endswith("config/constraints.yaml")
    assert config.environments["prod"]["max_performance_risk"] == 1
    assert config.environments["prod"]["min_on_demand_share"] == 1.0
    assert config.group_tags == ("team", "service") and config.default_group == "ungrouped"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("environments:\n  prod:\n    max_risk: 1\n", "environments.prod.max_risk"),
        ("environments:\n  prod:\n    min_on_demand_share: 1.5\n", "environments.prod.min_on_demand_share"),
        ("portfolio:\n  max_changes: 2.5\n", "portfolio.max_changes"),
        ("portfolio:\n  monthly_budget_usd: lots\n", "portfolio.monthly_budget_usd"),
        ("groups:\n  web:\n    allowed_regions: us-east-1\n", "groups.web.allowed_regions"),
        ("grouping:\n  group_tags: team\n", "grouping.group_tags"),
        ("budget: 10\n", "budget"),
    ],
)
def test_config_errors_name_the_key_and_the_file(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "constraints.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(environ={CONFIG_ENV: str(path)})
    assert str(path) in str(err.value) and f"'{key}'" in str(err.value)


def test_config_file_missing_or_not_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=rf"{CONFIG_ENV}"):
        load_config(environ={CONFIG_ENV: str(tmp_path / "nope.yaml")})
    bad = tmp_path / "bad.yaml"
    bad.write_text("groups: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(bad), environ={})


# ----------------------------------------------------------------------------------- candidates


def test_a_commitment_is_an_alternative_of_its_resource_never_stacked_on_a_resize() -> None:
    problem = problem_for(rec_rows("i-web", WEB), {"i-web": {"team": "web", "env": "dev"}}, {})
    solution = solve_problem(problem)
    table = plan_table(problem, solution)
    assert table.num_rows == 1 and table.schema == PORTFOLIO_PLAN
    row = table.to_pylist()[0]
    # one option per resource: the spot option (cheapest) wins alone; savings are not summed over options
    assert row["option_name"] == "spot:m7g.large"
    assert row["monthly_savings_usd"] == pytest.approx(120.0)
    assert solution.monthly_savings_usd == pytest.approx(120.0)
    assert verify_plan(table, problem) == []


def test_prod_rules_filter_risky_options_but_never_keep_and_the_reason_says_why() -> None:
    risky = [("keep", "keep", "on_demand", 100.0, 0.0, 3.0, 4), ("resize:x", "resize", "on_demand", 50.0, 0.0, 2.0, 2)]
    rows = rec_rows("i-db", risky) + rec_rows("i-web", WEB)
    config = {"environments": {"prod": {"max_performance_risk": 1, "min_on_demand_share": 1.0}}}
    problem = problem_for(rows, {"i-db": {"service": "db"}, "i-web": {"team": "web", "env": "production"}}, config)
    labels = {k.split("/")[1]: v for k, v in problem.labels.items()}
    assert labels["i-db"].cell == "db/prod"  # no env tag = prod; service when no team
    assert labels["i-web"].cell == "web/prod"  # alias production -> prod
    table = plan_table(problem, solve_problem(problem))
    chosen = {r["resource_id"]: r for r in table.to_pylist()}
    assert chosen["i-db"]["option_name"] == "keep"  # keep's own risk 3 never excludes it
    assert "resize:x excluded by max_performance_risk 1" in chosen["i-db"]["reason"]
    # spot is filtered by risk 2 > 1 and on-demand share 1.0: the reserved option, cheapest allowed
    assert chosen["i-web"]["option_name"] == "ri_3y_all_upfront:m7g.large"
    assert verify_plan(table, problem) == []


def test_upfront_cap_picks_the_next_best_and_names_the_blocking_constraint() -> None:
    rows = rec_rows("i-web", WEB[:3])
    problem = problem_for(rows, {"i-web": {"team": "web"}}, {"portfolio": {"max_one_time_cost_usd": 500}})
    row = plan_table(problem, solve_problem(problem)).to_pylist()[0]
    assert row["option_name"] == "resize:m7g.large"
    assert "ri_3y_all_upfront:m7g.large" in row["reason"] and "max_one_time_cost_usd" in row["reason"]


def test_two_recommenders_on_one_resource_merge_into_alternatives() -> None:
    opt = CandidateOption
    ec2 = Candidate("1", "i-a", (opt("keep", "keep", 100.0), opt("resize:b", "resize", 60.0)), source="ec2")
    k8s = Candidate(
        "1", "i-a", (opt("keep", "keep", 90.0), opt("resize:b", "resize", 55.0)), source="k8s", protected=True
    )
    merged, notes = merge_candidates([ec2], [k8s])
    assert len(merged) == 1 and merged[0].protected
    assert [o.name for o in merged[0].options] == ["k8s:resize:b", "keep", "resize:b"]
    assert merged[0].keep.monthly_cost_usd == 100.0 and "keep costs" in notes[0]


def test_conflicting_duplicate_rows_and_missing_keep_are_errors() -> None:
    rows = rec_rows("i-a", WEB)
    rows.append({**rows[1], "monthly_cost_proposed_usd": 1.0})
    with pytest.raises(ValueError, match=r"two different rows for option 'resize:m7g\.large'"):
        candidates_from_recommendations(pa.Table.from_pylist(rows, schema=RECOMMENDATIONS))
    rows = [r for r in rec_rows("i-a", WEB) if r["option_name"] != "keep"]
    with pytest.raises(ValueError, match="i-a has no 'keep' row"):
        candidates_from_recommendations(pa.Table.from_pylist(rows, schema=RECOMMENDATIONS))


def test_infeasible_budget_writes_keeps_only_and_surfaces_the_explanation() -> None:
    problem = problem_for(rec_rows("i-web", WEB), {"i-web": {"team": "web"}}, {"portfolio": {"monthly_budget_usd": 5}})
    solution = solve_problem(problem)
    assert solution.status == "infeasible"
    table = plan_table(problem, solution)
    row = table.to_pylist()[0]
    assert row["option_name"] == "keep" and row["solver_status"] == "infeasible"
    assert "no feasible plan" in row["reason"] and "monthly_budget_usd" in row["reason"]
    violations = verify_plan(table, problem)
    assert any("no feasible plan" in v for v in violations)


def test_the_plan_id_depends_on_date_input_and_constraints_only() -> None:
    rows, tags = rec_rows("i-web", WEB), {"i-web": {"team": "web"}}
    first = problem_for(rows, tags, {}).plan_id
    assert problem_for(list(reversed(rows)), tags, {}).plan_id == first
    assert problem_for(rows, tags, {"portfolio": {"max_changes": 0}}).plan_id != first


# ------------------------------------------------------------------------------------------ CLI

INSTANCES = [
    {
        "id": f"i-{n}",
        "group": "web",
        "options": [
            {"name": "keep", "monthly_cost_usd": 100.0, "vcpu": 4, "zone": "a"},
            {"name": "resize", "monthly_cost_usd": 60.0, "vcpu": 2, "performance_risk": 1, "zone": "a"},
            {"name": "spot", "monthly_cost_usd": 30.0, "vcpu": 2, "market": "spot", "performance_risk": 3, "zone": "a"},
        ],
    }
    for n in range(4)
]


class Echo:
    def __init__(self) -> None:
        self.out: list[str] = []
        self.err: list[str] = []

    def __call__(self, text: str = "", err: bool = False) -> None:
        (self.err if err else self.out).append(text)


def write(tmp_path: Path, name: str, data) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


def test_cli_what_if_prints_the_table_and_json(tmp_path: Path) -> None:
    inp = write(tmp_path, "instances.json", INSTANCES)
    cons = write(tmp_path, "constraints.json", {"max_spot_share": {"web": 0.5}})
    echo = Echo()
    assert plan_command(inp, cons, echo=echo) == EXIT_OK
    text = "\n".join(echo.out)
    assert "status: optimal" in text and "| i-0" in text and "check: every constraint holds" in text
    echo = Echo()
    assert plan_command(inp, cons, as_json=True, echo=echo) == EXIT_OK
    payload = json.loads(echo.out[0])
    assert payload["violations"] == [] and len(payload["plan"]) == 4
    spot = sum(1 for r in payload["plan"] if r["market"] == "spot")
    assert spot == 2  # half the vCPU on spot at most: 2 of 4 equal instances
    assert payload["solution"]["monthly_savings_usd"] == pytest.approx(2 * 70 + 2 * 40)


def test_cli_infeasible_and_bad_input(tmp_path: Path) -> None:
    inp = write(tmp_path, "instances.json", INSTANCES)
    echo = Echo()
    code = plan_command(inp, write(tmp_path, "c.json", {"monthly_budget_usd": 10}), echo=echo)
    assert code == EXIT_NO_PLAN and "raise monthly_budget_usd" in "\n".join(echo.out)
    echo = Echo()
    assert plan_command(inp, write(tmp_path, "d.json", {"max_chnages": 1}), echo=echo) == EXIT_BAD_INPUT
    assert "max_chnages" in echo.err[0]
    echo = Echo()
    assert plan_command(str(tmp_path / "missing.json"), echo=echo) == EXIT_BAD_INPUT
    assert "does not exist" in echo.err[0]


@pytest.mark.parametrize("sweep", ["budget", "max_changes"])
def test_cli_sweep_prints_the_curve_and_writes_an_svg_chart(tmp_path: Path, sweep: str) -> None:
    inp = write(tmp_path, "instances.json", INSTANCES)
    chart = tmp_path / "curve.svg"
    echo = Echo()
    assert plan_command(inp, None, sweep=sweep, steps=5, chart=str(chart), echo=echo) == EXIT_OK
    assert f"chart: {chart}" in echo.out
    root = ET.fromstring(chart.read_text())
    ns = "{http://www.w3.org/2000/svg}"
    assert root.find(f"{ns}polyline") is not None
    assert len(root.findall(f"{ns}circle")) >= 2
    echo = Echo()
    assert plan_command(inp, None, sweep=sweep, steps=5, as_json=True, echo=echo) == EXIT_OK
    points = json.loads(echo.out[0])
    costs = [p["total_monthly_cost_usd"] for p in points]
    if sweep == "max_changes":  # more changes allowed, never more cost
        assert costs == sorted(costs, reverse=True) and points[0]["changes"] == 0
    else:  # more budget, never more risk
        risks = [p["average_performance_risk"] for p in points]
        assert risks == sorted(risks, reverse=True)
