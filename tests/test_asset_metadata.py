"""Owners, column schemas, freshness policies and the recommendation checks, on real definitions and runs."""

from datetime import date
from pathlib import Path

import dagster as dg
import pyarrow as pa

from cloudopt_pipelines.assets.metadata import recommendation_violations
from cloudopt_pipelines.definitions import build_definitions
from cloudopt_pipelines.orchestration import ensure_instance
from cloudopt_pipelines.settings import Settings
from cloudopt_pipelines.storage.schemas import RECOMMENDATIONS, RESOURCES
from tests.conftest import DEMO_ACCOUNTS, DEMO_DAYS

CHECKS = ("no_negative_savings", "no_proposal_above_current_cost", "best_option_within_risk_limit")


def _graph(tmp_path: Path, env: str):
    return build_definitions(Settings(home=tmp_path, env=env)).resolve_asset_graph()


def test_every_asset_has_owners_and_lake_tables_their_column_schema(tmp_path: Path) -> None:
    graph = _graph(tmp_path, "demo")
    for key in graph.get_all_asset_keys():
        assert graph.get(key).owners, key
    resources = graph.get(dg.AssetKey(["raw", "resources"])).metadata["dagster/column_schema"]
    assert [c.name for c in resources.columns] == RESOURCES.names
    recs = graph.get(dg.AssetKey(["recommendations", "standalone_ec2"])).metadata["dagster/column_schema"]
    assert [c.name for c in recs.columns] == RECOMMENDATIONS.names


def test_daily_assets_have_freshness_policies_with_real_accounts_only(tmp_path: Path) -> None:
    aws, demo = _graph(tmp_path, "aws"), _graph(tmp_path, "demo")
    partitioned = [k for k in aws.get_all_asset_keys() if aws.get(k).partitions_def is not None]
    assert partitioned
    for key in partitioned:
        assert isinstance(aws.get(key).freshness_policy, dg.FreshnessPolicy), key
        assert demo.get(key).freshness_policy is None  # the demo's days are in the past by design


def _table(**columns) -> pa.Table:
    n = len(next(iter(columns.values())))
    base = {name: [None] * n for name in RECOMMENDATIONS.names}
    return pa.Table.from_pydict({**base, **columns}, schema=RECOMMENDATIONS)


def test_violations_find_each_broken_rule_and_nothing_else() -> None:
    table = _table(
        resource_id=["ok", "negative", "dearer", "risky", "risky-not-best", "dearer-not-best", "upsize"],
        is_best=[True, True, True, True, False, False, True],
        finding=["over-provisioned", "idle", "over-provisioned", "over-provisioned", None, None, "under-provisioned"],
        monthly_cost_current_usd=[100.0] * 7,
        monthly_cost_proposed_usd=[60.0, 100.0, 120.0, 50.0, 40.0, 130.0, 150.0],
        monthly_savings_usd=[40.0, -5.0, 0.0, 50.0, 60.0, -30.0, -50.0],
        performance_risk=[1.0, 0.0, 0.0, 2.5, 3.0, 0.0, 0.0],
    )
    found = {name: t.column("resource_id").to_pylist() for name, t in recommendation_violations(table, 2.0).items()}
    assert found == {
        "no_negative_savings": ["negative"],
        "no_proposal_above_current_cost": ["dearer"],
        "best_option_within_risk_limit": ["risky"],
    }


def test_recommendation_checks_ran_per_partition_in_the_daily_runs(demo_home: Settings) -> None:
    instance = ensure_instance(demo_home)
    key = dg.AssetKey(["recommendations", "standalone_ec2"])
    for name in CHECKS:
        history = instance.event_log_storage.get_asset_check_execution_history(dg.AssetCheckKey(key, name), limit=50)
        evaluations = [r.event.dagster_event.event_specific_data for r in history if r.event]
        partitions = {e.partition for e in evaluations}
        expected = {f"{a}|{d.isoformat()}" for a in DEMO_ACCOUNTS for d in DEMO_DAYS}
        assert expected <= partitions, (name, partitions)
        assert all(e.passed for e in evaluations), name
        assert all(e.metadata["rows_checked"].value > 0 for e in evaluations)
    assert date.fromisoformat(sorted(partitions)[0].split("|")[1]) == DEMO_DAYS[0]


def test_flat_metadata_keeps_numbers_plottable_and_never_dumps_json_for_plain_shapes() -> None:
    from cloudopt_pipelines.assets.metadata import flat_metadata

    meta = flat_metadata(
        {
            "samples": 288,
            "resources_by_kind": {"ec2_instance": 21, "ebs_volume": 2},
            "regions": ["us-east-1", "us-west-2"],
            "throttled": [{"api": "ec2:DescribeInstances", "retries": 3}],
            "nested": {"a": {"b": 1}},
        }
    )
    assert meta["samples"] == 288
    assert meta["resources_by_kind/ec2_instance"] == 21 and meta["resources_by_kind/ebs_volume"] == 2
    assert meta["regions"].value == "us-east-1, us-west-2"
    assert "| ec2:DescribeInstances |" in meta["throttled"].value
    assert isinstance(meta["nested"], dg.JsonMetadataValue)
