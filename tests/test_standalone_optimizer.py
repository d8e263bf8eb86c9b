"""The whole standalone optimiser: commitments, Spot, idle, orphans, the table and the Dagster asset."""

import json
from datetime import date, timedelta
from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from cloudopt_pipelines.backtest.features import MODELS, run_feature_models
from cloudopt_pipelines.backtest.traces import read_trace
from cloudopt_pipelines.catalog.prices import build_price_catalog, build_reserved_prices
from cloudopt_pipelines.optimizers.commitments import (
    ReservedRates,
    SteadyUsage,
    normalization_factor,
    quote,
    recommend_commitments,
)
from cloudopt_pipelines.optimizers.sizing import Catalog
from cloudopt_pipelines.optimizers.standalone import (
    RECOMMENDATIONS,
    STANDALONE_FEATURE_INPUTS,
    Instance,
    Samples,
    StandaloneConfig,
    optimize_standalone_instance,
    recommend_account,
)
from cloudopt_pipelines.optimizers.standalone_actions import find_orphans, spot_eligible
from cloudopt_pipelines.sources.demo import DemoCollector
from cloudopt_pipelines.storage.lake import Lake

DATA = Path(__file__).parent / "data" / "standalone"
START = np.datetime64("2026-11-16T00:00:00")


@pytest.fixture(scope="module")
def catalog_table() -> pa.Table:
    return build_price_catalog()


@pytest.fixture(scope="module")
def catalog(catalog_table) -> Catalog:
    return Catalog(catalog_table)


@pytest.fixture(scope="module")
def reserved() -> ReservedRates:
    return ReservedRates(build_reserved_prices())


@pytest.fixture(scope="module")
def azure():
    return {v.resource_id: v for v in read_trace(DATA / "azure_v1_4vms_14days_cpu_5min.csv.gz")}


def samples_of(vm, use_avg_as_peak: bool = False) -> Samples:
    ts = START + np.arange(vm.samples) * np.timedelta64(300, "s")
    return Samples(
        ts=ts.astype("datetime64[us]"),
        cpu_pct=vm.cpu_avg_pct,
        cpu_peak_pct=vm.cpu_avg_pct if use_avg_as_peak else vm.cpu_pct,
        mem_pct=vm.mem_pct,
        net_bytes=None,
    )


def test_reserved_rates_read_2017_and_mark_proxies_as_estimates(reserved):
    exact = reserved.discount("us-east-1", "m4.xlarge", 1, "standard", "no_upfront")
    assert exact == (38.0, False, "2017 reserved table")
    rate, estimate, basis = reserved.discount("us-east-1", "m5.xlarge", 3, "standard", "all_upfront")
    assert estimate and "m4.xlarge" in basis and rate == pytest.approx(62.5)
    assert reserved.discount("us-east-1", "t4g.large", 1, "standard", "no_upfront")[1] is True


def test_quote_break_even_and_upfront():
    from cloudopt_pipelines.optimizers.commitments import CommitmentRate

    q = quote(CommitmentRate("reserved_instance", 1, "all_upfront", "standard", 40.0, False, "t"), 0.2)
    assert q.upfront_usd == pytest.approx(0.12 * 8760, abs=0.01)
    assert q.monthly_savings_usd == pytest.approx(0.08 * 730)
    assert q.break_even_months == pytest.approx(0.12 * 8760 / (0.2 * 730), abs=0.01)
    no = quote(CommitmentRate("reserved_instance", 1, "no_upfront", "standard", 30.0, False, "t"), 0.2)
    assert no.break_even_months == 0 and no.upfront_usd == 0


def test_commitments_come_per_family_and_region_in_normalised_units(reserved):
    usage = [
        SteadyUsage("i-1", "us-east-1", "m5.xlarge", 0.192),
        SteadyUsage("i-2", "us-east-1", "m5.large", 0.096),
        SteadyUsage("i-3", "us-west-2", "c5.large", 0.085),
    ]
    recs = {(r.region, r.family): r for r in recommend_commitments(usage, reserved)}
    m5 = recs[("us-east-1", "m5")]
    assert m5.normalized_units == 12 and m5.quantity == 3 and m5.size_unit_type == "m5.large"
    assert m5.best.rate.is_estimate and m5.best.break_even_months <= 12
    assert recs[("us-west-2", "c5")].best.rate.term_years in (1, 3)
    assert normalization_factor("m5.12xlarge") == 96


def test_spot_needs_a_stateless_tag_and_no_critical_one():
    assert spot_eligible({"workload": "stateless"})[0]
    assert spot_eligible({"workload": "fault-tolerant"})[0]
    assert not spot_eligible({"workload": "stateless", "criticality": "production-critical"})[0]
    assert not spot_eligible({})[0]
    assert spot_eligible({"kind": "batch"}, workload_tag="kind", workload_values=("batch",))[0]


def test_orphans_are_priced_as_estimates():
    vol = find_orphans("vol-1", "ebs_volume", {"attached_to": None, "size_gib": 500, "volume_type": "gp2"})
    assert vol.monthly_cost_usd == 50.0 and vol.is_estimate and vol.action == "delete_volume"
    assert find_orphans("vol-2", "ebs_volume", {"attached_to": "i-1", "size_gib": 10, "volume_type": "gp3"}) is None
    eip = find_orphans("eip-1", "elastic_ip", {"associated_with": None})
    assert eip.monthly_cost_usd == pytest.approx(3.65)
    assert find_orphans("eip-2", "elastic_ip", {"associated_with": "eni-1"}) is None


def test_one_instance_gets_every_option_with_savings(azure, catalog, reserved):
    vm = azure["azure-1061254"]
    inst = Instance("i-1", "m5.xlarge", "us-east-1", "us-east-1a", tags={"env": "prod"})
    rec = optimize_standalone_instance("i-1", inst, samples_of(vm), catalog, reserved)
    names = [o.option_name for o in rec.options]
    assert "keep" in names and any(n.startswith("resize:") for n in names)
    assert any(o.market == "reserved" for o in rec.options) and any(o.market == "savings_plan" for o in rec.options)
    assert not any(o.action == "spot" for o in rec.options)  # no workload tag
    assert not any("schedule" in o.action for o in rec.options)  # production
    assert rec.finding == "over-provisioned" and rec.always_on_type is not None
    assert rec.current_monthly_usd == pytest.approx(0.192 * 730)


def test_spot_and_schedule_options_for_a_tagged_dev_instance(azure, catalog, reserved):
    vm = azure["azure-810877"]
    tags = {"env": "dev", "workload": "stateless"}
    inst = Instance("i-2", "m5.xlarge", "us-east-1", tags=tags)
    rec = optimize_standalone_instance("i-2", inst, samples_of(vm, use_avg_as_peak=True), catalog, reserved)
    spot = [o for o in rec.options if o.action == "spot"]
    assert spot and spot[0].is_estimate and spot[0].details["interruption_band"]
    sched = [o for o in rec.options if "schedule" in o.action]
    assert sched and "custodian_offhours" in sched[0].proposed_config
    assert rec.always_on_type is None  # scheduled or spot: no commitment
    assert not any(o.market in ("reserved", "savings_plan") for o in rec.options)


def test_spot_risk_follows_the_interruption_band_and_burstable_spot_needs_a_zero_credit_fit(azure, catalog):
    from cloudopt_pipelines.optimizers.sizing import zero_credit_fit
    from cloudopt_pipelines.optimizers.standalone_actions import INTERRUPTION_RISK, interruption_risk

    assert [interruption_risk(b) for b in ("<5%", "5-10%", "10-15%", "15-20%", ">20%")] == [1, 2, 3, 4, 4]
    assert interruption_risk(None) == 3 and sorted(INTERRUPTION_RISK.values()) == list(INTERRUPTION_RISK.values())
    tags = {"env": "dev", "workload": "stateless"}
    seen_burstable_target = False
    for name, vm in azure.items():
        inst = Instance(name, "m5.xlarge", "us-east-1", tags=tags)
        rec = optimize_standalone_instance(name, inst, samples_of(vm), catalog)
        for o in rec.options:
            if o.action != "spot":
                continue
            t = catalog.get("us-east-1", o.proposed_config["instance_type"])
            assert o.performance_risk >= interruption_risk(t.spot_interruption_band)
            if t.burstable_baseline_pct is not None:
                assert zero_credit_fit(rec.resize.demand, t) and o.details["credit_mode"] == "standard"
                assert o.proposed_config["credit_specification"] == "standard"
            target = catalog.get("us-east-1", rec.resize.best.instance_type)
            if target.burstable_baseline_pct is not None and not zero_credit_fit(rec.resize.demand, target):
                seen_burstable_target = True
                assert t.burstable_baseline_pct is None and "no credits" in o.rationale
    assert seen_burstable_target  # a spiky VM right-sized to t3a gets Spot on a fixed type


def test_group_members_are_refused(azure, catalog):
    inst = Instance("i-3", "m5.large", "us-east-1", deployment_type="asg")
    with pytest.raises(ValueError, match="asg member"):
        optimize_standalone_instance("i-3", inst, samples_of(azure["azure-1061254"]), catalog)


def demo_features(root: Path, account: str, days: int):
    """The demo's first ``days`` days through the feature models, as the pipeline builds them: the
    day, its inventory, and the feature tables of STANDALONE_FEATURE_INPUTS."""
    collector = DemoCollector()
    lake = Lake(root)
    window = collector.days[:days]
    for d in window:
        lake.write("resources", collector.collect_inventory(account, d).table, account, d)
        lake.write("utilization_5m", collector.collect_metrics(account, d).table, account, d)
    run_feature_models(lake, account, window, (*MODELS, "activity_profile"))
    day = window[-1]
    features = {
        "utilization_window": lake.read("utilization_window", account, day),
        "activity_profile": lake.read("activity_profile", account, day),
        "stg_utilization_5m": pa.concat_tables([lake.read("stg_utilization_5m", account, d) for d in window]),
    }
    assert set(features) == set(STANDALONE_FEATURE_INPUTS)
    return day, lake.read("resources", account, day), features


def test_account_table_covers_standalone_instances_and_orphans_only(tmp_path, catalog, reserved):
    day, resources, features = demo_features(tmp_path, "123456789012", 7)
    result = recommend_account("123456789012", day, resources, features, catalog, reserved)
    table = result.table
    assert table.schema.equals(RECOMMENDATIONS)
    rows = table.to_pylist()
    standalone = {
        r["resource_id"]
        for r in resources.to_pylist()
        if r["resource_kind"] == "ec2_instance" and r["deployment_type"] == "standalone"
    }
    instance_ids = {r["resource_id"] for r in rows if r["resource_kind"] == "ec2_instance"}
    assert instance_ids == standalone
    kinds = {r["resource_kind"] for r in rows}
    assert kinds == {"ec2_instance", "ebs_volume", "elastic_ip"}
    for rid in instance_ids | {r["resource_id"] for r in rows if r["resource_kind"] != "ec2_instance"}:
        mine = [r for r in rows if r["resource_id"] == rid]
        assert sum(r["is_best"] for r in mine) == 1
        assert sorted(r["rank"] for r in mine) == list(range(1, len(mine) + 1))
        assert any(r["option_name"] == "keep" for r in mine)
    protected = [r for r in rows if r["protected"]]
    assert protected and all(r["option_name"] == "keep" for r in protected if r["is_best"])
    # 7 of 14 window days: coverage 0.5 everywhere on the instances, times the recency and stability.
    confidences = {r["confidence"] for r in rows if r["resource_kind"] == "ec2_instance"}
    assert max(confidences) <= 0.5 and min(confidences) >= 0.25
    assert all(r["rationale"] for r in rows)
    # Savings are current minus proposed, as shown.
    for r in rows:
        if r["monthly_cost_current_usd"] is not None:
            assert r["monthly_savings_usd"] == pytest.approx(
                r["monthly_cost_current_usd"] - r["monthly_cost_proposed_usd"], abs=1e-3
            )
    assert result.commitments_table()


def test_unknown_type_in_the_inventory_is_reported_not_fatal(tmp_path, catalog):
    day, resources, features = demo_features(tmp_path, "123456789012", 1)
    rows = resources.to_pylist()
    rows[0]["instance_type"] = "m9.huge"
    broken = pa.Table.from_pylist(rows, schema=resources.schema)
    table = recommend_account("123456789012", day, broken, features, catalog).table
    row = [r for r in table.to_pylist() if r["resource_id"] == rows[0]["resource_id"]]
    assert len(row) == 1 and "unknown instance type 'm9.huge'" in row[0]["rationale"]


def test_asset_reads_the_trailing_window_from_the_lake(tmp_path, catalog_table):
    from cloudopt_pipelines.assets.recommendations import build_recommendation_asset
    from cloudopt_pipelines.optimizers.standalone_ec2 import StandaloneEc2Optimizer
    from cloudopt_pipelines.partitions import ACCOUNTS_PARTITIONS_NAME, account_day_key
    from cloudopt_pipelines.resources.storage import LakeResource

    account = "210987654321"
    lake = Lake(tmp_path / "lake")
    collector = DemoCollector()
    days = collector.days[:3]
    lake.write("price_catalog", catalog_table)
    lake.write("reserved_prices", build_reserved_prices())
    for d in days:
        lake.write("resources", collector.collect_inventory(account, d).table, account, d)
        lake.write("utilization_5m", collector.collect_metrics(account, d).table, account, d)
    run_feature_models(lake, account, days, (*MODELS, "activity_profile"))
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(ACCOUNTS_PARTITIONS_NAME, [account])
    result = dg.materialize(
        [build_recommendation_asset(StandaloneEc2Optimizer())],
        instance=instance,
        partition_key=account_day_key(account, days[-1]),
        resources={"lake": LakeResource(root=str(lake.root))},
        run_config={"ops": {"recommendations__standalone_ec2": {"config": {"risk_setting": "balanced"}}}},
    )
    assert result.success
    table = lake.read("recommendations_standalone_ec2", account, days[-1])
    assert table.num_rows > 0 and table.schema.equals(RECOMMENDATIONS)
    meta = result.asset_materializations_for_node("recommendations__standalone_ec2")[0].metadata
    assert meta["window_days_found/stg_utilization_5m"].value == 3
    confidence = pc.unique(table.filter(pc.equal(table["resource_kind"], "ec2_instance"))["confidence"])
    # Coverage 3 of 14 days, times recency and the stability of the daily peaks (0.5 under 3 days of peaks).
    assert max(confidence.to_pylist()) <= round(3 / 14, 3) and min(confidence.to_pylist()) >= round(3 / 14 / 2, 3)
    assert json.loads(table["current_config"][0].as_py())
    assert date.fromisoformat(str(days[-1])) - timedelta(days=2) == days[0]


def test_config_rejects_unknown_risk_settings():
    with pytest.raises(ValueError, match="unknown risk setting"):
        _ = StandaloneConfig(risk_setting="yolo").sizing_policy


@pytest.mark.parametrize(
    ("account", "over_rule", "ledger"),
    [
        ("123456789012", "i-01000000000000001", "i-01000000000000003"),
        ("210987654321", "i-02000000000000005", "i-02000000000000003"),
    ],
)
def test_the_demo_cases_of_the_issue(tmp_path, catalog, account, over_rule, ledger):
    day, resources, features = demo_features(tmp_path, account, 7)
    rows = recommend_account(account, day, resources, features, catalog).table.to_pylist()
    best = {r["resource_id"]: r for r in rows if r["is_best"] and r["resource_kind"] == "ec2_instance"}
    for r in best.values():  # same architecture unless configured, no best option above risk 1
        assert "cross_architecture" not in json.loads(r["proposed_config"])
        assert r["performance_risk"] <= 1.0
        if r["finding"] == "over-provisioned" and r["action"] == "resize":
            assert r["projected_cpu_pct"] * 1.2 <= 100 + 1e-6 or json.loads(r["details"])["credit_mode"]
    # Needs more than its vCPU with 20 % headroom: under-provisioned, never over-provisioned at 97 % CPU.
    r = best[over_rule]
    assert r["finding"] == "under-provisioned" and r["option_name"] == "keep"
    assert any(o["resource_id"] == over_rule and o["monthly_savings_usd"] < 0 for o in rows)  # the up-size option
    assert "is listed, but every 5-minute maximum" in r["rationale"]
    # Production-critical ledger database, memory data for 7 of 14 days: memory never cut, x86 kept.
    r = best[ledger]
    assert r["memory_gib"] >= 64 and "never cut below the current 64 GiB" in r["rationale"]
    details = json.loads(r["details"])
    assert details["other_architecture_option"]["architecture"] == "arm64"
    assert details["other_architecture_option"]["migration_effort"] == "Medium"
    assert "7 of 14 days" in details["confidence_words"]


def test_one_day_of_data_is_only_gathering_data(tmp_path, catalog):
    day, resources, features = demo_features(tmp_path, "123456789012", 1)
    rows = recommend_account("123456789012", day, resources, features, catalog).table.to_pylist()
    instances = [r for r in rows if r["resource_kind"] == "ec2_instance"]
    assert instances and all(r["finding"] == "gathering-data" for r in instances)
    assert all(r["option_name"] == "keep" for r in instances)  # no change of any kind
    assert all("gathering data: 1 of 14 days" in r["rationale"] for r in instances)


def test_previous_days_best_option_is_kept_within_the_margin(tmp_path, catalog):
    day, resources, features = demo_features(tmp_path, "123456789012", 7)
    today = recommend_account("123456789012", day, resources, features, catalog).table
    rows = today.to_pylist()
    # Yesterday's best, for each instance, the next allowed option within 5 % of the current cost.
    moved = {}
    for rid in {r["resource_id"] for r in rows if r["resource_kind"] == "ec2_instance"}:
        mine = [r for r in rows if r["resource_id"] == rid]
        b = next(r for r in mine if r["is_best"])
        for r in mine:
            cross = "cross_architecture" in json.loads(r["proposed_config"])
            close = abs(r["monthly_savings_usd"] - b["monthly_savings_usd"]) <= 0.05 * b["monthly_cost_current_usd"]
            if r is not b and r["action"] in ("keep", "resize") and not cross and close:
                if r["performance_risk"] == b["performance_risk"] and b["finding"] == "over-provisioned":
                    moved[rid] = r["option_name"]
                    break
    assert moved
    previous = pa.Table.from_pylist(
        [
            {**r, "is_best": r["option_name"] == moved.get(r["resource_id"], "")}
            for r in rows
            if r["resource_id"] in moved
        ],
        schema=RECOMMENDATIONS,
    )
    again = recommend_account("123456789012", day, resources, features, catalog, previous=previous).table.to_pylist()
    for rid, name in moved.items():
        kept = next(r for r in again if r["resource_id"] == rid and r["is_best"])
        assert kept["option_name"] == name and "Kept yesterday's best option" in kept["rationale"]
