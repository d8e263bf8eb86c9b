"""The shared optimiser interface: the registry, selection by deployment type, the asset factory, the
plan merging every optimiser's candidates, and the warehouse's one ``recommendations`` view."""

import json
from datetime import date
from pathlib import Path
from typing import ClassVar

import dagster as dg
import duckdb
import pyarrow as pa
import pytest
from pydantic import BaseModel, Field

from cloudopt_pipelines.assets.plan import build_portfolio_plan_asset, read_plan_inputs
from cloudopt_pipelines.assets.recommendations import (
    DEPLOYMENT_TYPE_TAG,
    build_recommendation_asset,
    recommendation_key,
    settings_config_class,
)
from cloudopt_pipelines.catalog.prices import build_price_catalog, build_reserved_prices
from cloudopt_pipelines.definitions import build_definitions
from cloudopt_pipelines.optimizers.base import (
    DeploymentOptimizer,
    FeatureInput,
    OptimizerInputs,
    Recommendations,
    UnknownDeploymentTypeError,
    all_optimizers,
    select_optimizers,
)
from cloudopt_pipelines.optimizers.portfolio import Candidate, candidates_from_recommendations
from cloudopt_pipelines.optimizers.standalone_ec2 import StandaloneEc2Optimizer, StandaloneSettings
from cloudopt_pipelines.partitions import ACCOUNTS_PARTITIONS_NAME, account_day_key
from cloudopt_pipelines.resources.storage import LakeResource
from cloudopt_pipelines.settings import Settings, load_settings, parse_deployment_types
from cloudopt_pipelines.storage.lake import Lake
from cloudopt_pipelines.storage.schemas import RECOMMENDATIONS, RESOURCES
from cloudopt_pipelines.storage.warehouse import build_warehouse

ACCOUNT = "123456789012"
DAY = date(2026, 11, 16)


class ToySettings(BaseModel):
    monthly_cost_usd: float = Field(default=10.0, description="What every group costs after the change.")


class ToyGroupOptimizer(DeploymentOptimizer):
    """A second optimiser, as the Kubernetes and cluster ones will plug in: every ASG shrinks to a fixed cost."""

    name: ClassVar[str] = "toy_groups"
    deployment_types: ClassVar[tuple[str, ...]] = ("asg",)
    resource_kinds: ClassVar[tuple[str, ...]] = ("asg",)
    inputs: ClassVar[tuple[FeatureInput, ...]] = (FeatureInput("utilization_daily", window_days=3),)
    settings_type: ClassVar[type[BaseModel]] = ToySettings
    description: ClassVar[str] = "Toy group optimiser."

    def recommend(self, inputs: OptimizerInputs, settings: BaseModel) -> Recommendations:
        assert isinstance(settings, ToySettings)
        rows = []
        for res in inputs.inventory.to_pylist():
            for option, cost in (("keep", 100.0), ("shrink", settings.monthly_cost_usd)):
                rows.append(_row(res["resource_id"], option, cost))
        table = pa.Table.from_pylist(rows, schema=RECOMMENDATIONS) if rows else RECOMMENDATIONS.empty_table()
        return Recommendations(table=table, summary={"groups": float(inputs.inventory.num_rows)})

    def candidates(self, recommendations: pa.Table) -> list[Candidate]:
        return candidates_from_recommendations(recommendations, source=self.name)


def _row(resource_id: str, option: str, cost: float) -> dict:
    return {
        "account_id": ACCOUNT,
        "date": DAY,
        "resource_id": resource_id,
        "resource_kind": "asg",
        "deployment_type": "asg",
        "region": "us-east-1",
        "zone": None,
        "option_name": option,
        "action": "keep" if option == "keep" else "resize",
        "rank": 1 if option != "keep" else 2,
        "is_best": option != "keep",
        "current_config": "{}",
        "proposed_config": "{}",
        "market": "on_demand",
        "vcpu": 2.0,
        "memory_gib": 4.0,
        "monthly_cost_current_usd": 100.0,
        "monthly_cost_proposed_usd": cost,
        "monthly_savings_usd": 100.0 - cost,
        "savings_pct": 100.0 - cost,
        "one_time_cost_usd": 0.0,
        "performance_risk": 0.0,
        "migration_effort": "VeryLow",
        "confidence": 1.0,
        "is_estimate": False,
        "protected": False,
        "rationale": "toy",
        "details": "{}",
    }


def _inventory() -> pa.Table:
    rows = [
        {"account_id": ACCOUNT, "date": DAY, "resource_id": "asg-1", "resource_kind": "asg", "deployment_type": "asg"},
        {"account_id": ACCOUNT, "date": DAY, "resource_id": "i-1", "resource_kind": "ec2_instance"}
        | {"deployment_type": "standalone"},
        {"account_id": ACCOUNT, "date": DAY, "resource_id": "i-2", "resource_kind": "ec2_instance"}
        | {"deployment_type": "asg"},
        {"account_id": ACCOUNT, "date": DAY, "resource_id": "vol-1", "resource_kind": "ebs_volume"}
        | {
            "deployment_type": "asg",
            "attributes": json.dumps({"attached_to": "i-2", "volume_type": "gp3", "size_gib": 8}),
        },
    ]
    return pa.Table.from_pylist(rows, schema=RESOURCES)


def test_registry_lists_the_optimisers_with_their_declarations() -> None:
    registered = {o.name: o for o in all_optimizers()}
    assert list(registered) == ["standalone_ec2", "kubernetes", "clusters"]
    standalone, kubernetes = registered["standalone_ec2"], registered["kubernetes"]
    assert kubernetes.name == "kubernetes" and kubernetes.table_name == "recommendations_kubernetes"
    assert kubernetes.deployment_types == ("kubernetes",) and "k8s_workload" in kubernetes.resource_kinds
    assert {i.table for i in kubernetes.inputs} == {
        "container_usage_histogram",
        "k8s_usage_daily",
        "k8s_workloads",
        "k8s_container_usage",  # node-scope rows, for the node pools
    }
    assert standalone.name == "standalone_ec2" and standalone.table_name == "recommendations_standalone_ec2"
    assert standalone.deployment_types == ("standalone",)
    assert {"ec2_instance", "ebs_volume", "elastic_ip"} <= set(standalone.resource_kinds)
    assert standalone.inputs and all(i.window_days >= 1 for i in standalone.inputs)
    assert standalone.settings_type is StandaloneSettings
    clusters = registered["clusters"]
    assert clusters.table_name == "recommendations_clusters"
    assert clusters.deployment_types == ("ecs", "emr", "custom_cluster")


def test_select_takes_only_the_optimisers_own_deployment_types_and_kinds() -> None:
    inventory = _inventory()
    assert StandaloneEc2Optimizer().select(inventory)["resource_id"].to_pylist() == ["i-1", "vol-1"]
    assert ToyGroupOptimizer().select(inventory)["resource_id"].to_pylist() == ["asg-1"]


def test_deployment_types_choose_the_optimisers_and_an_unknown_one_is_refused() -> None:
    registered = (StandaloneEc2Optimizer(), ToyGroupOptimizer())
    assert [o.name for o in select_optimizers(None, registered)] == ["standalone_ec2", "toy_groups"]
    assert [o.name for o in select_optimizers(["asg"], registered)] == ["toy_groups"]
    with pytest.raises(UnknownDeploymentTypeError, match=r"'ecs'.*use any of standalone, asg"):
        select_optimizers(["ecs"], registered)


@pytest.mark.parametrize("raw", ["", " , ", "standalone,warp"])
def test_cloudopt_deployment_types_is_validated(raw: str) -> None:
    with pytest.raises(ValueError, match="CLOUDOPT_DEPLOYMENT_TYPES"):
        parse_deployment_types(raw)


def test_cloudopt_deployment_types_is_read_once_into_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOUDOPT_DEPLOYMENT_TYPES", " Standalone ,standalone")
    assert load_settings().deployment_types == ("standalone",)
    monkeypatch.delenv("CLOUDOPT_DEPLOYMENT_TYPES")
    assert load_settings().deployment_types is None


def test_the_run_config_is_derived_from_the_settings_model() -> None:
    config_class = settings_config_class(StandaloneEc2Optimizer())
    assert issubclass(config_class, dg.Config)
    assert set(config_class.model_fields) == set(StandaloneSettings.model_fields)
    for name, field in StandaloneSettings.model_fields.items():
        assert config_class.model_fields[name].default == field.default
        assert config_class.model_fields[name].description == field.description


def test_definitions_make_one_tagged_asset_per_selected_optimiser(tmp_path: Path) -> None:
    defs = build_definitions(Settings(home=tmp_path, env="demo", deployment_types=("standalone",)))
    graph = defs.resolve_asset_graph()
    node = graph.get(dg.AssetKey(["recommendations", "standalone_ec2"]))
    assert node.tags[DEPLOYMENT_TYPE_TAG] == "standalone"
    plan = graph.get(dg.AssetKey(["plan", "portfolio_plan"]))
    assert dg.AssetKey(["recommendations", "standalone_ec2"]) in plan.parent_keys
    assert dg.AssetKey(["raw", "resources"]) in plan.parent_keys
    selected = dg.AssetSelection.tag(DEPLOYMENT_TYPE_TAG, "standalone").resolve(graph)
    assert selected == {dg.AssetKey(["recommendations", "standalone_ec2"])}


def test_a_second_optimiser_plugs_in_end_to_end(tmp_path: Path) -> None:
    """Asset from the factory, its window read through the partition mapping, the plan merging both
    optimisers' candidates, and the warehouse's recommendations view over both tables."""
    toy = ToyGroupOptimizer()
    lake = Lake(tmp_path / "lake")
    lake.write("resources", _inventory(), ACCOUNT, DAY)
    for d in (date(2026, 11, 15), DAY):
        lake.write("utilization_daily", pa.table({"resource_id": ["asg-1"], "day_seen": [d]}), ACCOUNT, d)
    lake.write("price_catalog", build_price_catalog())
    lake.write("reserved_prices", build_reserved_prices())
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(ACCOUNTS_PARTITIONS_NAME, [ACCOUNT])

    asset = build_recommendation_asset(toy)
    assert asset.key == recommendation_key(toy)
    result = dg.materialize(
        [asset],
        instance=instance,
        partition_key=account_day_key(ACCOUNT, DAY),
        resources={"lake": LakeResource(root=str(lake.root))},
        run_config={"ops": {"recommendations__toy_groups": {"config": {"monthly_cost_usd": 25.0}}}},
    )
    assert result.success
    meta = result.asset_materializations_for_node("recommendations__toy_groups")[0].metadata
    assert meta["window_days_found/utilization_daily"].value == 2  # 3-day window, 2 days exist
    assert meta["groups"].value == 1.0
    written = lake.read("recommendations_toy_groups", ACCOUNT, DAY)
    assert (
        written.filter(pa.compute.equal(written["option_name"], "shrink"))["monthly_cost_proposed_usd"][0].as_py()
        == 25.0
    )

    standalone_rows = [
        _row("i-1", "keep", 50.0) | {"resource_kind": "ec2_instance", "deployment_type": "standalone"},
        _row("i-1", "resize:m5.large", 30.0) | {"resource_kind": "ec2_instance", "deployment_type": "standalone"},
    ]
    lake.write(
        "recommendations_standalone_ec2",
        pa.Table.from_pylist(standalone_rows, schema=RECOMMENDATIONS),
        ACCOUNT,
        DAY,
        schema=RECOMMENDATIONS,
    )
    accounts, candidate_sets, unpriced, resources = read_plan_inputs(lake, DAY, (StandaloneEc2Optimizer(), toy))
    assert accounts == [ACCOUNT] and resources is not None and resources.num_rows == 4
    assert unpriced == []
    assert [[c.resource_id for c in cs] for cs in candidate_sets] == [["i-1"], ["asg-1"]]
    assert {c.source for cs in candidate_sets for c in cs} == {"standalone_ec2", "toy_groups"}

    plan_asset = build_portfolio_plan_asset((StandaloneEc2Optimizer(), toy))
    assert {recommendation_key(toy), recommendation_key(StandaloneEc2Optimizer())} <= set(
        plan_asset.asset_deps[plan_asset.key]
    )
    plan = dg.materialize(
        [plan_asset],
        instance=instance,
        partition_key=DAY.isoformat(),
        resources={"lake": LakeResource(root=str(lake.root))},
    )
    assert plan.success
    planned = {r["resource_id"]: r["option_name"] for r in lake.read("portfolio_plan", day=DAY).to_pylist()}
    assert planned == {"asg-1": "shrink", "i-1": "resize:m5.large"}

    build = build_warehouse(lake, tmp_path / "warehouse.duckdb")
    assert "recommendations" in build.views and "recommendations" not in build.empty_views
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as con:
        kinds = con.execute("SELECT DISTINCT deployment_type FROM recommendations ORDER BY 1").fetchall()
    assert kinds == [("asg",), ("standalone",)]
    assert json.loads(written["details"][0].as_py()) == {}


def test_seed_names_keep_working() -> None:
    from cloudopt_pipelines.optimizers import (
        LinearOptimizer,
        analyze_utilization,
        optimize_standalone_instance,
        recommend_resize,
        recommend_schedule,
    )

    solution = LinearOptimizer(
        [
            {
                "id": "i-1",
                "options": [
                    {"name": "keep", "monthly_cost_usd": 10.0},
                    {"name": "resize:t3.small", "monthly_cost_usd": 4.0},
                ],
            }
        ],
        {},
    ).solve()
    assert solution.choices == {"i-1": "resize:t3.small"}
    assert all(callable(f) for f in (analyze_utilization, optimize_standalone_instance, recommend_resize))
    assert callable(recommend_schedule)
