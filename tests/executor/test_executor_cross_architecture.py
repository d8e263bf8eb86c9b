"""Issue 17 defect 10: a resize that changes the CPU architecture is refused in place, and the plan marks it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cloudopt_pipelines.backtest.traces import read_trace
from cloudopt_pipelines.catalog.prices import build_price_catalog, build_reserved_prices
from cloudopt_pipelines.optimizers.commitments import ReservedRates
from cloudopt_pipelines.optimizers.sizing import Catalog
from cloudopt_pipelines.optimizers.standalone import Instance, Samples, optimize_standalone_instance
from tests.executor.conftest import dev_instance, executor_aws, instance, plan_row

TRACES = Path(__file__).resolve().parents[1] / "data" / "standalone" / "azure_v1_4vms_14days_cpu_5min.csv.gz"


def arm64_image(ec2) -> str:
    return ec2.describe_images(Filters=[{"Name": "architecture", "Values": ["arm64"]}])["Images"][0]["ImageId"]


def test_x86_to_graviton_and_back_are_refused_naming_both_types_and_architectures(home, ec2, moto_url) -> None:
    x86 = dev_instance(ec2)  # m5.xlarge on an x86_64 image
    arm = ec2.run_instances(
        ImageId=arm64_image(ec2),
        MinCount=1,
        MaxCount=1,
        InstanceType="m6g.xlarge",
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "env", "Value": "dev"}]}],
    )["Instances"][0]["InstanceId"]
    same = dev_instance(ec2)
    home.write_plan(
        [
            plan_row(x86, "resize", {"instance_type": "r6g.large", "market": "on_demand"}),
            plan_row(
                arm,
                "resize",
                {"instance_type": "m5.large", "market": "on_demand"},
                current_config='{"instance_type": "m6g.xlarge", "market": "on_demand"}',
            ),
            plan_row(same, "resize", {"instance_type": "m5.large", "market": "on_demand"}),
        ]
    )
    home.approve_all()
    decisions = {d.resource_id: d for d in home.run(executor_aws(moto_url)).decisions}
    for iid, text in (
        (x86, "from m5.xlarge (x86_64) to r6g.large (arm64)"),
        (arm, "from m6g.xlarge (arm64) to m5.large (x86_64)"),
    ):
        d = decisions[iid]
        assert d.outcome == "skipped" and d.reason.startswith("refused: cross-architecture resize"), d.reason
        assert f"instance {iid} {text}" in d.reason and "Fix:" in d.reason
        assert d.api_calls == []
    assert instance(ec2, x86)["InstanceType"] == "m5.xlarge" and instance(ec2, arm)["InstanceType"] == "m6g.xlarge"
    assert decisions[same].outcome == "applied" and instance(ec2, same)["InstanceType"] == "m5.large"


def test_a_plan_flagged_cross_architecture_is_refused_even_when_the_live_check_passes(home, ec2, moto_url) -> None:
    iid = dev_instance(ec2)
    flagged = {"instance_type": "m5.large", "market": "on_demand", "cross_architecture": True}
    home.write_plan([plan_row(iid, "resize+schedule", {**flagged, "custodian_offhours": "off=(M-F,19)"})])
    home.approve_all()
    decision = home.run(executor_aws(moto_url), mode="dry_run").decisions[0]
    assert decision.outcome == "skipped" and "cross-architecture" in decision.reason


def test_the_recommender_marks_graviton_resizes_cross_architecture() -> None:
    vm = next(v for v in read_trace(TRACES) if v.resource_id == "azure-1061254")
    ts = np.datetime64("2026-11-16T00:00:00") + np.arange(vm.samples) * np.timedelta64(300, "s")
    samples = Samples(
        ts=ts.astype("datetime64[us]"),
        cpu_pct=vm.cpu_avg_pct,
        cpu_peak_pct=vm.cpu_pct,
        mem_pct=vm.mem_pct,
        net_bytes=None,
    )
    catalog, reserved = Catalog(build_price_catalog()), ReservedRates(build_reserved_prices())
    rec = optimize_standalone_instance("i-1", Instance("i-1", "m5.xlarge", "us-east-1"), samples, catalog, reserved)
    resizes = [o for o in rec.options if o.action == "resize"]
    arm = [o for o in resizes if catalog.get("us-east-1", o.proposed_config["instance_type"]).architecture == "arm64"]
    x86 = [o for o in resizes if o not in arm]
    assert arm and x86
    assert all(o.proposed_config["cross_architecture"] is True for o in arm)
    assert all(o.proposed_config["architecture"] == "arm64" for o in arm)
    assert not any("cross_architecture" in o.proposed_config for o in x86)
