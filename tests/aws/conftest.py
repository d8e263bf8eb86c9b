"""A real moto server over HTTP, seeded through boto3 with a small AWS estate and real VM traces.

Layout of the seeded world (``AwsWorld``):

- management account ``123456789012`` (the dummy credentials' account), an AWS Organization with a
  member account (reached by assuming ``CloudoptReadOnly``) and a closed, SUSPENDED one;
- ``us-east-1`` of the management account: 6 standalone instances (prod/dev, two protected, one spot)
  carrying 3 days of Azure V1 CPU and, for three of them, one day of Google cluster-data memory; an
  Auto Scaling group of 2; an ECS cluster with a service and one container instance; an EMR cluster with
  2 tagged instances; an EKS cluster with a node group and 2 tagged nodes; an unattached volume and an
  unassociated Elastic IP (plus an associated one, which is not collected);
- ``us-west-2`` of the management account: 130 instances (> 500 CloudWatch series);
- ``eu-west-1``: nothing at all;
- ``us-east-1`` of the member account: 2 instances and an unattached volume.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pandas as pd
import pytest

from cloudopt_pipelines.sources.aws import AwsCollector, AwsSettings
from cloudopt_pipelines.sources.base import Collected
from cloudopt_pipelines.testing.aws_api import forward, free_port  # noqa: F401  (the tests' proxies import them here)

DATA = Path(__file__).resolve().parent.parent / "data"
AZURE_SAMPLE = DATA / "azure_v1_6vms_3days_cpu_5min.csv.gz"
GCD_SAMPLE = DATA / "gcd_4vms_1day_cpu_mem_5min.csv.gz"

MANAGEMENT_ACCOUNT = "123456789012"  # moto's account for unrecognised access keys
ROLE_NAME = "CloudoptReadOnly"
SECRET_KEY = "testing-secret-Zq8vX2rN4pL6"
EXTERNAL_ID = "cloudopt-external-id-Kd93"
LINUX_AMI = "ami-1e749f67"  # Ubuntu in moto's default AMI list
FIRST_DAY = date(2024, 3, 4)
DAYS = [FIRST_DAY + timedelta(days=k) for k in range(3)]
BULK_INSTANCES = 130


@dataclass
class AwsWorld:
    """What the seeding created: the ids tests compare the collected rows against."""

    endpoint: str
    member_account: str = ""
    suspended_account: str = ""
    standalone: list[str] = field(default_factory=list)
    protected: list[str] = field(default_factory=list)
    spot: str = ""
    asg_instances: list[str] = field(default_factory=list)
    ecs_instance: str = ""
    emr_instances: list[str] = field(default_factory=list)
    eks_instances: list[str] = field(default_factory=list)
    emr_cluster_id: str = ""
    unattached_volume: str = ""
    unassociated_eip: str = ""
    associated_eip: str = ""
    member_instances: list[str] = field(default_factory=list)
    bulk_instances: list[str] = field(default_factory=list)
    bulk_with_data: list[str] = field(default_factory=list)
    # instance id -> azure vm id / gcd vm id
    cpu_trace_of: dict[str, str] = field(default_factory=dict)
    mem_trace_of: dict[str, str] = field(default_factory=dict)
    ecs_trace_vm: str = ""


def wait_until_up(url: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/moto-api/", timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"moto server at {url} did not answer within {timeout} s") from None
            time.sleep(0.1)


def moto_server_command(port: int) -> list[str]:
    script = Path(sys.executable).with_name("moto_server")
    if script.exists():
        return [str(script), "-H", "127.0.0.1", "-p", str(port)]
    return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]


@contextlib.contextmanager
def running_moto_server(log_path: Path) -> Iterator[str]:
    """Start ``moto_server`` on a free loopback port, yield its URL, stop it."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(moto_server_command(port), stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until_up(url)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="session")
def aws_env() -> Iterator[None]:
    """Dummy credentials for the whole AWS test session, restored afterwards."""
    with pytest.MonkeyPatch.context() as mp:
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_ROLE_ARN"):
            mp.delenv(name, raising=False)
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("AWS_CONFIG_FILE", os.devnull)
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        yield


@pytest.fixture(scope="session")
def moto_url(aws_env: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a moto server subprocess that lives for the test session."""
    with running_moto_server(tmp_path_factory.mktemp("moto") / "moto_server.log") as url:
        yield url


@pytest.fixture(scope="session")
def world(moto_url: str) -> AwsWorld:
    """The seeded estate (see the module docstring)."""
    return seed_world(moto_url)


def build_collector(world: AwsWorld, clock: Callable[[], datetime] | None = None, **overrides: Any) -> AwsCollector:
    """A collector against the moto server: small pages (so pagination is exercised), the member role."""
    settings = AwsSettings(
        regions=("us-east-1",),
        endpoint_url=world.endpoint,
        assume_role=ROLE_NAME,
        external_id=EXTERNAL_ID,
        page_size=5,
        max_attempts=3,
        connect_timeout_seconds=2,
        read_timeout_seconds=60,
        region_concurrency=1,
    )
    return AwsCollector(replace(settings, **overrides), clock=clock)


@pytest.fixture
def make_collector(world: AwsWorld) -> Callable[..., AwsCollector]:
    """Build a fresh collector; keyword arguments override the settings."""
    return lambda clock=None, **overrides: build_collector(world, clock, **overrides)


@pytest.fixture(scope="session")
def collector(world: AwsWorld) -> AwsCollector:
    """One collector shared by the read-only tests."""
    return build_collector(world)


@pytest.fixture(scope="session")
def inventory(collector: AwsCollector) -> Collected:
    """The management account's us-east-1 inventory."""
    return collector.collect_inventory(MANAGEMENT_ACCOUNT, FIRST_DAY)


@pytest.fixture(scope="session")
def metrics_day1(collector: AwsCollector) -> Collected:
    """The management account's us-east-1 metrics of the first seeded day."""
    return collector.collect_metrics(MANAGEMENT_ACCOUNT, FIRST_DAY)


# ------------------------------------------------------------------------------------------ seeding


def client(endpoint: str, service: str, region: str = "us-east-1", **creds: str) -> Any:
    return boto3.client(service, endpoint_url=endpoint, region_name=region, **creds)


def run_instance(ec2: Any, tags: dict[str, str], instance_type: str = "m5.large", **extra: Any) -> str:
    spec: dict[str, Any] = {"ImageId": LINUX_AMI, "MinCount": 1, "MaxCount": 1, "InstanceType": instance_type}
    if tags:
        spec["TagSpecifications"] = [
            {"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}
        ]
    return str(ec2.run_instances(**spec, **extra)["Instances"][0]["InstanceId"])


def load_azure() -> pd.DataFrame:
    return pd.read_csv(AZURE_SAMPLE, dtype={"vm_id": str})


def load_gcd() -> pd.DataFrame:
    return pd.read_csv(GCD_SAMPLE, dtype={"vm_id": str})


def step_time(step: int) -> datetime:
    return datetime(FIRST_DAY.year, FIRST_DAY.month, FIRST_DAY.day, tzinfo=UTC) + timedelta(seconds=300 * int(step))


def put_metric_data(cloudwatch: Any, namespace: str, data: list[dict[str, Any]]) -> None:
    for i in range(0, len(data), 1000):
        cloudwatch.put_metric_data(Namespace=namespace, MetricData=data[i : i + 1000])


def seed_world(endpoint: str) -> AwsWorld:
    w = AwsWorld(endpoint=endpoint)
    org = client(endpoint, "organizations")
    org.create_organization(FeatureSet="ALL")
    w.member_account = org.create_account(AccountName="member", Email="member@example.com")["CreateAccountStatus"][
        "AccountId"
    ]
    w.suspended_account = org.create_account(AccountName="closed", Email="closed@example.com")["CreateAccountStatus"][
        "AccountId"
    ]
    org.close_account(AccountId=w.suspended_account)

    ec2 = client(endpoint, "ec2")
    standalone_tags = [
        {"Name": "web-prod-1", "env": "prod", "team": "web", "service": "shop", "cloudopt:protect": "true"},
        {"Name": "web-prod-2", "env": "prod", "team": "web", "service": "shop"},
        {"Name": "db-prod-1", "Environment": "prod", "Team": "data", "app": "orders", "cloudopt:protect": "true"},
        {"Name": "batch-dev-1", "env": "dev", "owner": "ml", "service": "train"},
        {"Name": "dev-box-1", "env": "dev", "team": "platform"},
        {"Name": "spot-dev-1", "env": "dev", "team": "platform"},
    ]
    for k, tags in enumerate(standalone_tags):
        extra = {"InstanceMarketOptions": {"MarketType": "spot"}} if tags["Name"].startswith("spot") else {}
        iid = run_instance(ec2, tags, "t3.large" if k % 2 else "m5.xlarge", **extra)
        w.standalone.append(iid)
        if tags.get("cloudopt:protect") == "true":
            w.protected.append(iid)
        if extra:
            w.spot = iid

    ec2.create_launch_template(
        LaunchTemplateName="web-asg-lt", LaunchTemplateData={"ImageId": LINUX_AMI, "InstanceType": "c5.large"}
    )
    autoscaling = client(endpoint, "autoscaling")
    autoscaling.create_auto_scaling_group(
        AutoScalingGroupName="web-asg",
        MixedInstancesPolicy={
            "LaunchTemplate": {
                "LaunchTemplateSpecification": {"LaunchTemplateName": "web-asg-lt"},
                "Overrides": [{"InstanceType": "c5.large"}, {"InstanceType": "c6i.large"}],
            },
            "InstancesDistribution": {"OnDemandBaseCapacity": 1, "OnDemandPercentageAboveBaseCapacity": 50},
        },
        MinSize=1,
        MaxSize=4,
        DesiredCapacity=2,
        AvailabilityZones=["us-east-1a"],
        Tags=[{"Key": "env", "Value": "prod", "PropagateAtLaunch": True}],
    )
    group = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=["web-asg"])["AutoScalingGroups"][0]
    w.asg_instances = sorted(i["InstanceId"] for i in group["Instances"])

    # An ECS container instance: a plain EC2 instance registered with the cluster (no tags).
    w.ecs_instance = run_instance(ec2, {}, "m5.large")
    ecs = client(endpoint, "ecs")
    ecs.create_cluster(clusterName="apps")
    document = {
        "instanceId": w.ecs_instance,
        "region": "us-east-1",
        "availabilityZone": "us-east-1a",
        "instanceType": "m5.large",
    }
    ecs.register_container_instance(cluster="apps", instanceIdentityDocument=json.dumps(document))
    ecs.register_task_definition(family="web", containerDefinitions=[{"name": "web", "image": "nginx", "memory": 256}])
    ecs.create_service(cluster="apps", serviceName="web", taskDefinition="web", desiredCount=2, launchType="EC2")

    emr = client(endpoint, "emr")
    w.emr_cluster_id = emr.run_job_flow(
        Name="etl",
        ReleaseLabel="emr-6.10.0",
        Instances={
            "InstanceGroups": [
                {"Name": "master", "InstanceRole": "MASTER", "InstanceType": "m5.xlarge", "InstanceCount": 1},
                {
                    "Name": "core",
                    "InstanceRole": "CORE",
                    "InstanceType": "r5.xlarge",
                    "InstanceCount": 2,
                    "Market": "SPOT",
                },
            ],
            "KeepJobFlowAliveWhenNoSteps": True,
        },
        JobFlowRole="EMR_EC2_DefaultRole",
        ServiceRole="EMR_DefaultRole",
    )["JobFlowId"]
    # moto's EMR launches untagged EC2 instances (found through ListInstances); real EMR also tags
    # them like the two below.
    w.emr_instances = sorted(i["Ec2InstanceId"] for i in emr.list_instances(ClusterId=w.emr_cluster_id)["Instances"])
    for role in ("MASTER", "CORE"):
        w.emr_instances.append(
            run_instance(
                ec2,
                {
                    "aws:elasticmapreduce:job-flow-id": w.emr_cluster_id,
                    "aws:elasticmapreduce:instance-group-role": role,
                },
                "r5.xlarge",
            )
        )

    eks = client(endpoint, "eks")
    eks.create_cluster(
        name="k8s",
        roleArn=f"arn:aws:iam::{MANAGEMENT_ACCOUNT}:role/eks",
        resourcesVpcConfig={"subnetIds": ["subnet-1"]},
    )
    eks.create_nodegroup(
        clusterName="k8s",
        nodegroupName="ng1",
        nodeRole=f"arn:aws:iam::{MANAGEMENT_ACCOUNT}:role/node",
        subnets=["subnet-1"],
        scalingConfig={"minSize": 1, "maxSize": 3, "desiredSize": 2},
        instanceTypes=["m5.large"],
        capacityType="SPOT",
    )
    # Nor does moto's EKS launch nodes; managed nodes carry these tags.
    for _ in range(2):
        w.eks_instances.append(
            run_instance(
                ec2,
                {"eks:cluster-name": "k8s", "eks:nodegroup-name": "ng1", "kubernetes.io/cluster/k8s": "owned"},
                "m5.large",
            )
        )

    w.unattached_volume = ec2.create_volume(AvailabilityZone="us-east-1a", Size=100, VolumeType="gp3", Iops=3000)[
        "VolumeId"
    ]
    w.unassociated_eip = ec2.allocate_address(Domain="vpc")["AllocationId"]
    w.associated_eip = ec2.allocate_address(Domain="vpc")["AllocationId"]
    ec2.associate_address(AllocationId=w.associated_eip, InstanceId=w.standalone[1])

    seed_metrics(w, client(endpoint, "cloudwatch"))

    # us-west-2: many instances, so that the metric series exceed one GetMetricData call.
    ec2_west = client(endpoint, "ec2", "us-west-2")
    reservation = ec2_west.run_instances(ImageId=LINUX_AMI, MinCount=BULK_INSTANCES, MaxCount=BULK_INSTANCES)
    w.bulk_instances = sorted(i["InstanceId"] for i in reservation["Instances"])
    azure = load_azure()
    first_vm = azure[azure.vm_id == azure.vm_id.iloc[0]]
    w.bulk_with_data = w.bulk_instances[:3]
    put_metric_data(
        client(endpoint, "cloudwatch", "us-west-2"),
        "AWS/EC2",
        [
            _cpu_datum(iid, row.step_5min, row.avg_cpu_pct, row.max_cpu_pct)
            for iid in w.bulk_with_data
            for row in first_vm[first_vm.step_5min < 12].itertuples()
        ],
    )

    # The member account, through the role the collector assumes.
    creds = client(endpoint, "sts").assume_role(
        RoleArn=f"arn:aws:iam::{w.member_account}:role/{ROLE_NAME}", RoleSessionName="seed"
    )["Credentials"]
    member = {
        "aws_access_key_id": creds["AccessKeyId"],
        "aws_secret_access_key": creds["SecretAccessKey"],
        "aws_session_token": creds["SessionToken"],
    }
    ec2_member = client(endpoint, "ec2", **member)
    for n in range(2):
        w.member_instances.append(run_instance(ec2_member, {"Name": f"staging-{n}", "env": "staging"}, "t3.medium"))
    ec2_member.create_volume(AvailabilityZone="us-east-1a", Size=20, VolumeType="gp2")
    return w


def _cpu_datum(instance_id: str, step: int, avg: float, peak: float) -> dict[str, Any]:
    # The trace gives the 5-minute average and maximum only: one sample whose sum is the average.
    return {
        "MetricName": "CPUUtilization",
        "Dimensions": [{"Name": "InstanceId", "Value": instance_id}],
        "Timestamp": step_time(step),
        "StatisticValues": {"SampleCount": 1.0, "Sum": float(avg), "Minimum": float(avg), "Maximum": float(peak)},
        "Unit": "Percent",
    }


def seed_metrics(w: AwsWorld, cloudwatch: Any) -> None:
    azure = load_azure()
    gcd = load_gcd()
    cpu: list[dict[str, Any]] = []
    for iid, (vm, rows) in zip(w.standalone, azure.groupby("vm_id", sort=False), strict=True):
        w.cpu_trace_of[iid] = vm
        cpu.extend(_cpu_datum(iid, r.step_5min, r.avg_cpu_pct, r.max_cpu_pct) for r in rows.itertuples())
    put_metric_data(cloudwatch, "AWS/EC2", cpu)

    vms = list(dict.fromkeys(gcd.vm_id))
    mem: list[dict[str, Any]] = []
    for iid, vm in zip(w.standalone[:3], vms[:3], strict=True):
        w.mem_trace_of[iid] = vm
        # The agent's usual dimensions when append_dimensions is on: InstanceId, ImageId, InstanceType.
        dims = [
            {"Name": "InstanceId", "Value": iid},
            {"Name": "ImageId", "Value": LINUX_AMI},
            {"Name": "InstanceType", "Value": "m5.xlarge"},
        ]
        mem.extend(
            {
                "MetricName": "mem_used_percent",
                "Dimensions": dims,
                "Timestamp": step_time(r.step_5min),
                "Value": float(r.mem_util_pct),
                "Unit": "Percent",
            }
            for r in gcd[gcd.vm_id == vm].itertuples()
        )
    put_metric_data(cloudwatch, "CWAgent", mem)

    w.ecs_trace_vm = vms[3]
    ecs_rows = gcd[gcd.vm_id == vms[3]]
    put_metric_data(
        cloudwatch,
        "AWS/ECS",
        [
            {
                "MetricName": metric,
                "Dimensions": [{"Name": "ClusterName", "Value": "apps"}],
                "Timestamp": step_time(r.step_5min),
                "Value": float(getattr(r, column)),
                "Unit": "Percent",
            }
            for metric, column in (("CPUUtilization", "cpu_util_pct"), ("MemoryUtilization", "mem_util_pct"))
            for r in ecs_rows.itertuples()
        ],
    )
