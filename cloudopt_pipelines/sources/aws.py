"""The AWS collector: inventory and CloudWatch metrics of many accounts and regions, with boto3 only.

One ``AwsCollector`` reaches every account the same way: it assumes the configured read-only role in
each account (credentials cached per account and refreshed before they expire) and builds one boto3
client per account, region and service, lazily. Every paginated API is followed to the end; every
failure comes back as a ``CollectorError`` that names the endpoint, account, region, API call and
the fix. The IAM actions called here are exactly those in ``docs/iam/collector-readonly-policy.json``
(a test keeps the two in step). This module never imports Dagster.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import boto3
import pyarrow as pa
from botocore.exceptions import BotoCoreError, ClientError

from cloudopt_pipelines.aws.sessions import DEFAULT_ROLE_SESSION_NAME as DEFAULT_ROLE_SESSION_NAME
from cloudopt_pipelines.aws.sessions import AwsSessions, AwsSettings
from cloudopt_pipelines.sources.base import (
    SCHEDULABLE_STATUSES,
    UNREACHABLE,
    Collected,
    classify_deployment,
    tag_columns,
)
from cloudopt_pipelines.storage.schemas import CLUSTER_METRICS_5M, RESOURCES, UTILIZATION_5M, conform
from cloudopt_pipelines.vocabulary import CUSTOM_CLUSTER

log = logging.getLogger(__name__)

SOURCE = "aws"
PERIOD_SECONDS = 300
MAX_QUERIES_PER_CALL = 500  # the GetMetricData limit on MetricDataQueries per request
MAX_DATAPOINTS_PER_CALL = 100_800  # the GetMetricData limit on datapoints returned per call (then NextToken)
# What list_account_statuses() returns for ids given in CLOUDOPT_ACCOUNTS (not looked up).
CONFIGURED = "CONFIGURED"
# STS answers that mean "this account or its role cannot be used", as opposed to the service failing.
REFUSED_CODES = frozenset({"AccessDenied", "AccessDeniedException", "InvalidClientTokenId", "RegionDisabledException"})

EMR_ACTIVE_STATES = ("STARTING", "BOOTSTRAPPING", "RUNNING", "WAITING", "TERMINATING")
EMR_STEPS_KEPT = 50  # newest steps kept in the cluster's attributes
ECS_CLUSTER_METRICS = ("CPUUtilization", "MemoryUtilization", "CPUReservation", "MemoryReservation")
ECS_SERVICE_METRICS = ("CPUUtilization", "MemoryUtilization")
#: Container Insights for ECS services: used and reserved CPU units and MiB of the service's tasks
ECS_INSIGHTS_NAMESPACE = "ECS/ContainerInsights"
ECS_INSIGHTS_METRICS = ("CpuUtilized", "CpuReserved", "MemoryUtilized", "MemoryReserved")
EMR_METRICS = (
    "YARNMemoryAvailablePercentage",
    "ContainerPending",
    "AppsRunning",
    "CoreNodesRunning",
    "TaskNodesRunning",
    "IsIdle",
)
# (namespace, metric, stat) -> utilization_5m column, for EC2 instances.
EC2_SERIES = (
    ("AWS/EC2", "CPUUtilization", "Average", "cpu_pct"),
    ("AWS/EC2", "CPUUtilization", "Maximum", "cpu_max_pct"),
    ("AWS/EC2", "NetworkIn", "Sum", "net_in_bytes"),
    ("AWS/EC2", "NetworkOut", "Sum", "net_out_bytes"),
)
MEM_SERIES = ("CWAgent", "mem_used_percent", "Average", "mem_pct")
PERCENT_COLUMNS = ("cpu_pct", "cpu_max_pct", "mem_pct")


class CollectorError(RuntimeError):
    """An AWS call failed; the message names the endpoint, account, region, API call and the fix.

    ``code`` is AWS's error code (``AccessDenied``, ...), empty when the call got no answer."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


@dataclass
class _CallStats:
    """API calls made for one partition (shared by the worker threads of that partition)."""

    calls: Counter[str] = field(default_factory=Counter)
    retries: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_call(self, name: str) -> None:
        with self.lock:
            self.calls[name] += 1

    def add_retries(self, n: int) -> None:
        with self.lock:
            self.retries += n


@dataclass(frozen=True)
class _Where:
    account_id: str
    region: str


def plan_get_metric_data(series: int, points_per_series: int) -> tuple[int, int]:
    """Queries per ``GetMetricData`` call and the calls that makes for ``series`` series of
    ``points_per_series`` points, no series split over two calls. CloudWatch takes 500 queries a request
    and returns 100,800 datapoints a response; for a day of 5-minute points (288, and 100,800 = 350 x
    288) that is ``max(ceil(series / 500), ceil(points / 100,800))`` calls, the least possible."""
    per_call = max(1, min(MAX_QUERIES_PER_CALL, MAX_DATAPOINTS_PER_CALL // max(points_per_series, 1)))
    return per_call, math.ceil(series / per_call)


class AwsCollector:
    """Collects one AWS account's inventory and metrics for one UTC day, across the configured regions."""

    name = SOURCE

    def __init__(
        self,
        settings: AwsSettings | None = None,
        *,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.settings = settings or AwsSettings()
        self._clock = clock or (lambda: datetime.now(UTC))
        self._local = threading.local()
        self._aws = AwsSessions(
            self.settings,
            user_agent="cloudopt-collector",
            clock=self._clock,
            errors=lambda account, region, role: self._errors(_Where(account, region), role_arn=role),
            on_client=self._hook_client,
            error_type=CollectorError,
            no_role_hint="set CLOUDOPT_ASSUME_ROLE (or AwsResource.assume_role) to the read-only role "
            "created in every member account (see docs/aws.md)",
        )
        self._lock = self._aws.lock

    # ----------------------------------------------------------------------------------- accounts

    def list_accounts(self) -> list[str]:
        """Account ids to collect: ``accounts`` from the settings, else the ACTIVE accounts of the organisation."""
        statuses = self.list_account_statuses()
        return sorted(a for a, status in statuses.items() if status in SCHEDULABLE_STATUSES)

    def list_account_statuses(self) -> dict[str, str]:
        """Every account id with its status: ACTIVE, SUSPENDED, ... from AWS Organizations, or for accounts
        given by settings ``CONFIGURED`` when the collector gets credentials for it and ``UNREACHABLE``
        when it cannot (a mistyped id, a role missing there)."""
        if self.settings.accounts:
            return {a: self._configured_status(a) for a in self.settings.accounts}
        where = _Where(self.caller_account(), self.settings.regions[0])
        statuses: dict[str, str] = {}
        with self._partition(_CallStats()), self._errors(where):
            organizations = self._base_client("organizations", where.region)
            for page in organizations.get_paginator("list_accounts").paginate(PaginationConfig=self._pages()):
                for account in page.get("Accounts", []):
                    statuses[account["Id"]] = account.get("State") or account.get("Status") or "UNKNOWN"
        return dict(sorted(statuses.items()))

    def _configured_status(self, account_id: str) -> str:
        """CONFIGURED if credentials for ``account_id`` can be had (its role assumed, or the base credentials'
        own account), UNREACHABLE if they are refused or no role is configured for it. Any other error (the
        endpoint down, throttling past the retries) is the source's, not the account's: it is raised."""
        caller = self.caller_account(account_id)
        if account_id != caller and self.settings.role_arn(account_id) is None:
            log.warning("account %s is configured but no role to assume there is (CLOUDOPT_ASSUME_ROLE)", account_id)
            return UNREACHABLE
        try:
            self.session_for(account_id)
        except CollectorError as exc:
            if exc.code in REFUSED_CODES:
                log.warning("account %s is configured but cannot be reached: %s", account_id, exc)
                return UNREACHABLE
            raise
        return CONFIGURED

    def caller_account(self, for_account: str = "(base credentials)") -> str:
        """The account id of the base credentials (``sts:GetCallerIdentity``), looked up once.

        ``for_account`` is the account being collected, named in the error if the lookup fails.
        """
        return self._aws.caller_account(for_account)

    def session_for(self, account_id: str) -> boto3.Session:
        """A boto3 session for ``account_id``: the base session for its own account, else the assumed role
        (credentials cached per account and refreshed before they expire; ``cloudopt_pipelines.aws``)."""
        return self._aws.session_for(account_id)

    @property
    def base_session(self) -> boto3.Session:
        """The boto3 session of the base credentials (profile or default chain)."""
        return self._aws.base_session()

    # ------------------------------------------------------------------------------------ clients

    def _base_client(self, service: str, region: str) -> Any:
        return self._aws.base_client(service, region)

    def client(self, account_id: str, service: str, region: str) -> Any:
        """The cached boto3 client of ``service`` for ``account_id`` in ``region`` (built on first use)."""
        return self._aws.client(account_id, service, region)

    def _hook_client(self, client: Any, account: str) -> None:
        client.meta.events.register("before-call", self._before_call)
        client.meta.events.register("after-call", self._after_call)

    def _before_call(self, model: Any, **_: Any) -> None:
        prefix = _iam_prefix(model.service_model.signing_name)
        self._local.last_call = f"{prefix}:{model.name}"
        stats: _CallStats | None = getattr(self._local, "stats", None)
        if stats is not None:
            stats.add_call(f"{prefix}:{model.name}")

    def _after_call(self, parsed: Mapping[str, Any] | None = None, **_: Any) -> None:
        stats: _CallStats | None = getattr(self._local, "stats", None)
        retries = int(((parsed or {}).get("ResponseMetadata") or {}).get("RetryAttempts") or 0)
        if stats is not None and retries:
            stats.add_retries(retries)

    def _pages(self) -> dict[str, int]:
        return {"PageSize": self.settings.page_size} if self.settings.page_size else {}

    # ----------------------------------------------------------------------------------- plumbing

    class _Scope:
        def __init__(self, collector: AwsCollector, stats: _CallStats) -> None:
            self.collector, self.stats, self.previous = collector, stats, None

        def __enter__(self) -> _CallStats:
            self.previous = getattr(self.collector._local, "stats", None)
            self.collector._local.stats = self.stats
            return self.stats

        def __exit__(self, *exc: object) -> None:
            self.collector._local.stats = self.previous

    def _partition(self, stats: _CallStats) -> AwsCollector._Scope:
        return AwsCollector._Scope(self, stats)

    class _ErrorScope:
        def __init__(self, collector: AwsCollector, where: _Where, role_arn: str | None) -> None:
            self.collector, self.where, self.role_arn = collector, where, role_arn

        def __enter__(self) -> None:
            return None

        def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: object) -> bool:
            if exc is None or isinstance(exc, CollectorError):
                return False
            if isinstance(exc, BotoCoreError | ClientError):
                raise self.collector._collector_error(exc, self.where, self.role_arn) from None
            return False

    def _errors(self, where: _Where, role_arn: str | None = None) -> AwsCollector._ErrorScope:
        return AwsCollector._ErrorScope(self, where, role_arn)

    def _collector_error(self, exc: BotoCoreError | ClientError, where: _Where, role_arn: str | None) -> CollectorError:
        call = getattr(self._local, "last_call", None) or "(unknown call)"
        code = ""
        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            service = call.split(":", 1)[0]
            call = f"{service}:{exc.operation_name}"
        endpoint = getattr(exc, "kwargs", {}).get("endpoint_url") or self._endpoint_for(call, where.region)
        fix = _fix_for(exc, code, call, where, role_arn)
        return CollectorError(
            f"AWS call {call} failed for account {where.account_id} in region {where.region} "
            f"at endpoint {endpoint}: {_clean(exc)}. Fix: {fix}",
            code=code,
        )

    def _endpoint_for(self, call: str, region: str) -> str:
        service = call.split(":", 1)[0]
        with self._lock:
            for (_, _service, reg), client in self._aws.clients():
                if reg == region and _iam_prefix(client.meta.service_model.signing_name) == service:
                    return str(client.meta.endpoint_url)
        return self.settings.endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or "(default AWS endpoint)"

    def _for_regions(self, account_id: str, work: Callable[[str], Any]) -> list[Any]:
        """Run ``work(region)`` for every region (a few at a time), keeping region order."""
        stats = getattr(self._local, "stats", None)

        def run(region: str) -> Any:
            with self._partition(stats or _CallStats()), self._errors(_Where(account_id, region)):
                return work(region)

        regions = list(self.settings.regions)
        workers = max(1, min(self.settings.region_concurrency, len(regions)))
        if workers == 1:
            return [run(r) for r in regions]
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cloudopt-aws") as pool:
            return list(pool.map(run, regions))

    def _metadata(self, account_id: str, stats: _CallStats, rows: int) -> dict[str, Any]:
        return {
            "account_id": account_id,
            "regions": list(self.settings.regions),
            "rows": rows,
            "api_calls": dict(sorted(stats.calls.items())),
            "api_calls_total": int(sum(stats.calls.values())),
            "http_retries": int(stats.retries),
        }

    # ---------------------------------------------------------------------------------- inventory

    def collect_inventory(self, account_id: str, day: date) -> Collected:
        """Rows of ``resources`` for ``account_id``: instances, groups, clusters, volumes and addresses."""
        stats = _CallStats()
        with self._partition(stats):
            self.session_for(account_id)
            per_region = self._for_regions(account_id, lambda r: self._inventory_region(account_id, r, day))
        rows = [row for region_rows in per_region for row in region_rows]
        table = conform(_table(rows, RESOURCES), RESOURCES, "resources")
        metadata = self._metadata(account_id, stats, table.num_rows)
        metadata["rows_by_kind"] = dict(sorted(Counter(r["resource_kind"] for r in rows).items()))
        metadata["instances_by_deployment_type"] = dict(
            sorted(Counter(r["deployment_type"] for r in rows if r["resource_kind"] == "ec2_instance").items())
        )
        return Collected(table=table, metadata=metadata)

    def _inventory_region(self, account_id: str, region: str, day: date) -> list[dict[str, Any]]:
        base = {"account_id": account_id, "date": day, "region": region, "source": SOURCE}
        asgs = self._auto_scaling_groups(account_id, region)
        ecs_clusters, ecs_services, container_instances = self._ecs(account_id, region)
        ecs_tasks = self._ecs_tasks(account_id, region, [c["clusterArn"] for c in ecs_clusters])
        task_definitions = self._task_definitions(
            account_id,
            region,
            [s.get("taskDefinition") for s in ecs_services] + [t.get("taskDefinitionArn") for t in ecs_tasks],
        )
        emr_clusters = self._emr(account_id, region)
        emr_steps = self._emr_steps(account_id, region, [c["Id"] for c, _ in emr_clusters])
        cluster_tag_key = self.settings.cluster_tag_key
        emr_member = self._emr_members(account_id, region, [c["Id"] for c, _ in emr_clusters])
        eks_clusters, nodegroups = self._eks(account_id, region)
        instances = self._instances(account_id, region)
        volumes = self._volumes(account_id, region)
        addresses = self._unassociated_addresses(account_id, region)

        asg_arn = {g["AutoScalingGroupName"]: g["AutoScalingGroupARN"] for g in asgs}
        asg_of_instance = {i["InstanceId"]: g["AutoScalingGroupName"] for g in asgs for i in g.get("Instances", [])}
        nodegroup_of_asg = {
            a["name"]: ng for ng in nodegroups for a in (ng.get("resources") or {}).get("autoScalingGroups", [])
        }
        emr_arn = {c["Id"]: c.get("ClusterArn") or c["Id"] for c, _ in emr_clusters}
        eks_arn = {c["name"]: c.get("arn") or c["name"] for c in eks_clusters}
        ecs_member = {ci["ec2InstanceId"]: ci for ci in container_instances if ci.get("ec2InstanceId")}

        rows: list[dict[str, Any]] = []
        deployment_of: dict[str, str] = {}
        for inst in instances:
            iid = inst["InstanceId"]
            tags = _tags(inst.get("Tags"))
            # Membership seen through the APIs counts as much as the tags AWS puts on members.
            seen = dict(tags)
            if iid in asg_of_instance:
                seen.setdefault("aws:autoscaling:groupName", asg_of_instance[iid])
                ng = nodegroup_of_asg.get(seen["aws:autoscaling:groupName"])
                if ng is not None:
                    seen.setdefault("eks:cluster-name", ng["clusterName"])
            if iid in emr_member:
                seen.setdefault("aws:elasticmapreduce:job-flow-id", emr_member[iid])
            container = ecs_member.get(iid)
            deployment = classify_deployment(seen, ecs_member=container is not None, cluster_tag_key=cluster_tag_key)
            deployment_of[iid] = deployment
            asg_name = seen.get("aws:autoscaling:groupName")
            emr_id = seen.get("aws:elasticmapreduce:job-flow-id")
            eks_name = seen.get("eks:cluster-name") or next(
                (k.split("/", 3)[-1] for k in seen if k.startswith("kubernetes.io/cluster/")), None
            )
            parent = {
                "emr": emr_arn.get(emr_id or "", emr_id),
                "kubernetes": eks_arn.get(eks_name or "", eks_name),
                "ecs": container["clusterArn"] if container else seen.get("aws:ecs:clusterName"),
                "asg": asg_arn.get(asg_name or "", asg_name),
                CUSTOM_CLUSTER: seen.get(cluster_tag_key),
                "standalone": None,
            }[deployment]
            lifecycle = inst.get("InstanceLifecycle") or "on-demand"
            attributes = {
                "auto_scaling_group": asg_name,
                "ecs_cluster_arn": container["clusterArn"] if container else None,
                "ecs_container_instance_arn": container["containerInstanceArn"] if container else None,
                "ecs_registered_resources": _ecs_resources(container, "registeredResources"),
                "ecs_remaining_resources": _ecs_resources(container, "remainingResources"),
                "ecs_running_tasks": container.get("runningTasksCount") if container else None,
                "emr_cluster_id": emr_id,
                "eks_cluster": eks_name,
                "eks_nodegroup": seen.get("eks:nodegroup-name"),
                "image_id": inst.get("ImageId"),
                "vpc_id": inst.get("VpcId"),
                "subnet_id": inst.get("SubnetId"),
                "tenancy": (inst.get("Placement") or {}).get("Tenancy"),
                "ebs_optimized": inst.get("EbsOptimized"),
                "monitoring": (inst.get("Monitoring") or {}).get("State"),
                "spot_instance_request_id": inst.get("SpotInstanceRequestId"),
                "capacity_reservation_id": inst.get("CapacityReservationId"),
                "membership_source": "tags" if seen == tags and not container else "api",
                "custom_cluster": seen.get(cluster_tag_key) if deployment == CUSTOM_CLUSTER else None,
            }
            rows.append(
                {
                    **base,
                    **tag_columns(tags),
                    "resource_id": iid,
                    "resource_kind": "ec2_instance",
                    "deployment_type": deployment,
                    "zone": (inst.get("Placement") or {}).get("AvailabilityZone"),
                    "instance_type": inst.get("InstanceType"),
                    "state": (inst.get("State") or {}).get("Name"),
                    "platform": _platform(inst),
                    "architecture": inst.get("Architecture"),
                    "lifecycle": lifecycle,
                    "launch_time": inst.get("LaunchTime"),
                    "parent_id": parent,
                    "attributes": _json(attributes),
                }
            )

        for g in asgs:
            tags = _tags(g.get("Tags"))
            nodegroup = nodegroup_of_asg.get(g["AutoScalingGroupName"])
            in_k8s = (
                nodegroup is not None
                or "eks:cluster-name" in tags
                or any(k.startswith("kubernetes.io/cluster/") for k in tags)
            )
            lt = g.get("LaunchTemplate") or {}
            rows.append(
                {
                    **base,
                    **tag_columns(tags),
                    "name": g["AutoScalingGroupName"],
                    "resource_id": g["AutoScalingGroupARN"],
                    "resource_kind": "asg",
                    "deployment_type": "kubernetes" if in_k8s else "asg",
                    "zone": ",".join(g.get("AvailabilityZones") or []) or None,
                    "state": g.get("Status") or "active",
                    "launch_time": g.get("CreatedTime"),
                    "parent_id": nodegroup["nodegroupArn"] if nodegroup else None,
                    "attributes": _json(
                        {
                            "min_size": g.get("MinSize"),
                            "desired_capacity": g.get("DesiredCapacity"),
                            "max_size": g.get("MaxSize"),
                            "instance_ids": sorted(i["InstanceId"] for i in g.get("Instances", [])),
                            "launch_template": lt.get("LaunchTemplateName") or lt.get("LaunchTemplateId"),
                            "launch_configuration": g.get("LaunchConfigurationName"),
                            "mixed_instances_policy": g.get("MixedInstancesPolicy"),
                            "capacity_rebalance": g.get("CapacityRebalance"),
                        }
                    ),
                }
            )

        for v in volumes:
            attached = [a["InstanceId"] for a in v.get("Attachments", []) if a.get("InstanceId")]
            tags = _tags(v.get("Tags"))
            rows.append(
                {
                    **base,
                    **tag_columns(tags),
                    "resource_id": v["VolumeId"],
                    "resource_kind": "ebs_volume",
                    "deployment_type": deployment_of.get(attached[0]) if attached else None,
                    "zone": v.get("AvailabilityZone"),
                    "state": v.get("State"),
                    "launch_time": v.get("CreateTime"),
                    "parent_id": attached[0] if attached else None,
                    "attributes": _json(
                        {
                            "attached_to": attached[0] if attached else None,
                            "attached_instances": attached,
                            "volume_type": v.get("VolumeType"),
                            "size_gib": v.get("Size"),
                            "iops": v.get("Iops"),
                            "throughput_mibps": v.get("Throughput"),
                            "encrypted": v.get("Encrypted"),
                            "snapshot_id": v.get("SnapshotId") or None,
                        }
                    ),
                }
            )

        for a in addresses:
            tags = _tags(a.get("Tags"))
            rows.append(
                {
                    **base,
                    **tag_columns(tags),
                    "resource_id": a.get("AllocationId") or a.get("PublicIp"),
                    "resource_kind": "elastic_ip",
                    "zone": a.get("NetworkBorderGroup"),
                    "state": "unassociated",
                    "attributes": _json(
                        # Only unassociated addresses are listed (_unassociated_addresses).
                        {"public_ip": a.get("PublicIp"), "domain": a.get("Domain"), "associated_with": None}
                    ),
                }
            )

        members_by_cluster = Counter(ci.get("clusterArn") for ci in container_instances)
        for c in ecs_clusters:
            tags = _tags(c.get("tags"), key="key", value="value")
            rows.append(
                {
                    **base,
                    **tag_columns(tags),
                    "name": c.get("clusterName"),
                    "resource_id": c["clusterArn"],
                    "resource_kind": "ecs_cluster",
                    "deployment_type": "ecs",
                    "state": c.get("status"),
                    "attributes": _json(
                        {
                            "registered_container_instances": c.get("registeredContainerInstancesCount"),
                            "container_instances_seen": members_by_cluster.get(c["clusterArn"], 0),
                            "running_tasks": c.get("runningTasksCount"),
                            "pending_tasks": c.get("pendingTasksCount"),
                            "active_services": c.get("activeServicesCount"),
                            "capacity_providers": c.get("capacityProviders") or [],
                            "default_capacity_provider_strategy": c.get("defaultCapacityProviderStrategy") or [],
                            "settings": {s["name"]: s.get("value") for s in c.get("settings") or []},
                            "tasks": [
                                _task_summary(t, task_definitions)
                                for t in ecs_tasks
                                if t.get("clusterArn") == c["clusterArn"]
                            ],
                        }
                    ),
                }
            )
        for s in ecs_services:
            tags = _tags(s.get("tags"), key="key", value="value")
            strategy = s.get("capacityProviderStrategy") or []
            definition = task_definitions.get(s.get("taskDefinition") or "", {})
            rows.append(
                {
                    **base,
                    **tag_columns(tags),
                    "name": s.get("serviceName"),
                    "resource_id": s["serviceArn"],
                    "resource_kind": "ecs_service",
                    "deployment_type": "ecs",
                    "state": s.get("status"),
                    "launch_time": s.get("createdAt"),
                    "lifecycle": _ecs_lifecycle(strategy),
                    "parent_id": s.get("clusterArn"),
                    "attributes": _json(
                        {
                            "desired_count": s.get("desiredCount"),
                            "running_count": s.get("runningCount"),
                            "pending_count": s.get("pendingCount"),
                            "launch_type": s.get("launchType"),
                            "capacity_provider_strategy": strategy,
                            "scheduling_strategy": s.get("schedulingStrategy"),
                            "task_definition": s.get("taskDefinition"),
                            "task_definition_revision": definition.get("family_revision"),
                            "task_cpu": definition.get("cpu"),
                            "task_memory": definition.get("memory"),
                            "requires_compatibilities": definition.get("requires_compatibilities"),
                            "task_definition_error": definition.get("error"),
                            "tasks_seen": sum(
                                1
                                for t in ecs_tasks
                                if t.get("group") == f"service:{s.get('serviceName')}"
                                and t.get("clusterArn") == s.get("clusterArn")
                            ),
                        }
                    ),
                }
            )

        for c, collection in emr_clusters:
            tags = _tags(c.get("Tags"))
            fleets = c.get("InstanceCollectionType") == "INSTANCE_FLEET"
            status = c.get("Status") or {}
            timeline = status.get("Timeline") or {}
            rows.append(
                {
                    **base,
                    **tag_columns(tags),
                    "name": c.get("Name"),
                    "resource_id": c.get("ClusterArn") or c["Id"],
                    "resource_kind": "emr_cluster",
                    "deployment_type": "emr",
                    "zone": (c.get("Ec2InstanceAttributes") or {}).get("Ec2AvailabilityZone"),
                    "state": status.get("State"),
                    "launch_time": timeline.get("CreationDateTime"),
                    "attributes": _json(
                        {
                            "cluster_id": c["Id"],
                            "release_label": c.get("ReleaseLabel"),
                            "instance_collection_type": c.get("InstanceCollectionType") or "INSTANCE_GROUP",
                            "instance_groups": [] if fleets else collection,
                            "instance_fleets": collection if fleets else [],
                            # WAITING means up with no step running: idle. IsIdle in cluster_metrics_5m
                            # gives the idle time per 5 minutes.
                            "idle": status.get("State") == "WAITING",
                            "ready_time": timeline.get("ReadyDateTime"),
                            "normalized_instance_hours": c.get("NormalizedInstanceHours"),
                            "auto_terminate": c.get("AutoTerminate"),
                            "auto_termination_idle_timeout": c.get("AutoTerminationIdleTimeout"),
                            "managed_scaling_policy": c.get("ManagedScalingComputeLimits"),
                            "policy_errors": c.get("PolicyErrors") or [],
                            "steps": emr_steps.get(c["Id"], [])[:EMR_STEPS_KEPT],
                            "steps_running": sum(
                                1 for st in emr_steps.get(c["Id"], []) if st["state"] in ("PENDING", "RUNNING")
                            ),
                            "last_step_end": max(
                                (st["end"] for st in emr_steps.get(c["Id"], []) if st.get("end")), default=None
                            ),
                            "applications": [a.get("Name") for a in c.get("Applications") or [] if a.get("Name")],
                        }
                    ),
                }
            )

        for c in eks_clusters:
            tags = dict(c.get("tags") or {})
            rows.append(
                {
                    **base,
                    **tag_columns(tags),
                    "name": c["name"],
                    "resource_id": c.get("arn") or c["name"],
                    "resource_kind": "eks_cluster",
                    "deployment_type": "kubernetes",
                    "state": c.get("status"),
                    "launch_time": c.get("createdAt"),
                    "attributes": _json({"version": c.get("version"), "platform_version": c.get("platformVersion")}),
                }
            )
        for ng in nodegroups:
            tags = dict(ng.get("tags") or {})
            scaling = ng.get("scalingConfig") or {}
            types = ng.get("instanceTypes") or []
            rows.append(
                {
                    **base,
                    **tag_columns(tags),
                    "name": ng["nodegroupName"],
                    "resource_id": ng.get("nodegroupArn") or ng["nodegroupName"],
                    "resource_kind": "eks_nodegroup",
                    "deployment_type": "kubernetes",
                    "instance_type": types[0] if len(types) == 1 else None,
                    "state": ng.get("status"),
                    "lifecycle": "spot" if ng.get("capacityType") == "SPOT" else "on-demand",
                    "launch_time": ng.get("createdAt"),
                    "parent_id": eks_arn.get(ng["clusterName"], ng["clusterName"]),
                    "attributes": _json(
                        {
                            "capacity_type": ng.get("capacityType"),
                            "min_size": scaling.get("minSize"),
                            "desired_size": scaling.get("desiredSize"),
                            "max_size": scaling.get("maxSize"),
                            "instance_types": types,
                            "ami_type": ng.get("amiType"),
                            "auto_scaling_groups": [
                                a["name"] for a in (ng.get("resources") or {}).get("autoScalingGroups", [])
                            ],
                        }
                    ),
                }
            )
        return rows

    def _instances(self, account_id: str, region: str) -> list[dict[str, Any]]:
        ec2 = self.client(account_id, "ec2", region)
        found: list[dict[str, Any]] = []
        for page in ec2.get_paginator("describe_instances").paginate(PaginationConfig=self._pages()):
            for reservation in page.get("Reservations", []):
                found.extend(reservation.get("Instances", []))
        return found

    def _volumes(self, account_id: str, region: str) -> list[dict[str, Any]]:
        ec2 = self.client(account_id, "ec2", region)
        paginator = ec2.get_paginator("describe_volumes")
        return [v for page in paginator.paginate(PaginationConfig=self._pages()) for v in page.get("Volumes", [])]

    def _unassociated_addresses(self, account_id: str, region: str) -> list[dict[str, Any]]:
        ec2 = self.client(account_id, "ec2", region)
        # DescribeAddresses is not paginated: one call returns every address of the region.
        addresses = ec2.describe_addresses().get("Addresses", [])
        return [
            a for a in addresses if not (a.get("AssociationId") or a.get("InstanceId") or a.get("NetworkInterfaceId"))
        ]

    def _auto_scaling_groups(self, account_id: str, region: str) -> list[dict[str, Any]]:
        autoscaling = self.client(account_id, "autoscaling", region)
        paginator = autoscaling.get_paginator("describe_auto_scaling_groups")
        return [
            g for page in paginator.paginate(PaginationConfig=self._pages()) for g in page.get("AutoScalingGroups", [])
        ]

    def _ecs(
        self, account_id: str, region: str
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
        ecs = self.client(account_id, "ecs", region)
        arns = [
            arn
            for page in ecs.get_paginator("list_clusters").paginate(PaginationConfig=self._pages())
            for arn in page.get("clusterArns", [])
        ]
        clusters: list[dict[str, Any]] = []
        for chunk in _chunks(arns, 100):
            response = ecs.describe_clusters(clusters=chunk, include=["SETTINGS", "STATISTICS", "TAGS"])
            clusters.extend(response.get("clusters", []))
        services: list[dict[str, Any]] = []
        members: list[dict[str, Any]] = []
        for cluster in arns:
            service_arns = [
                arn
                for page in ecs.get_paginator("list_services").paginate(cluster=cluster, PaginationConfig=self._pages())
                for arn in page.get("serviceArns", [])
            ]
            for chunk in _chunks(service_arns, 10):
                response = ecs.describe_services(cluster=cluster, services=chunk, include=["TAGS"])
                services.extend(response.get("services", []))
            member_arns = [
                arn
                for page in ecs.get_paginator("list_container_instances").paginate(
                    cluster=cluster, PaginationConfig=self._pages()
                )
                for arn in page.get("containerInstanceArns", [])
            ]
            for chunk in _chunks(member_arns, 100):
                response = ecs.describe_container_instances(cluster=cluster, containerInstances=chunk)
                for ci in response.get("containerInstances", []):
                    members.append({**ci, "clusterArn": cluster})
        return clusters, services, members

    def _emr(self, account_id: str, region: str) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
        emr = self.client(account_id, "emr", region)
        summaries = [
            c
            for page in emr.get_paginator("list_clusters").paginate(ClusterStates=list(EMR_ACTIVE_STATES))
            for c in page.get("Clusters", [])
        ]
        found: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
        for summary in summaries:
            cluster = emr.describe_cluster(ClusterId=summary["Id"])["Cluster"]
            cluster = {**cluster, **self._emr_policies(account_id, region, summary["Id"])}
            if cluster.get("InstanceCollectionType") == "INSTANCE_FLEET":
                fleets = [
                    {
                        "id": f.get("Id"),
                        "type": f.get("InstanceFleetType"),
                        "target_on_demand": f.get("TargetOnDemandCapacity"),
                        "target_spot": f.get("TargetSpotCapacity"),
                        "provisioned_on_demand": f.get("ProvisionedOnDemandCapacity"),
                        "provisioned_spot": f.get("ProvisionedSpotCapacity"),
                        "instance_types": [
                            {"instance_type": t.get("InstanceType"), "weight": t.get("WeightedCapacity")}
                            for t in f.get("InstanceTypeSpecifications", [])
                        ],
                        "state": (f.get("Status") or {}).get("State"),
                    }
                    for page in emr.get_paginator("list_instance_fleets").paginate(ClusterId=summary["Id"])
                    for f in page.get("InstanceFleets", [])
                ]
                found.append((cluster, fleets))
            else:
                groups = [
                    {
                        "id": g.get("Id"),
                        "role": g.get("InstanceGroupType"),
                        "instance_type": g.get("InstanceType"),
                        "market": g.get("Market"),
                        "requested": g.get("RequestedInstanceCount"),
                        "running": g.get("RunningInstanceCount"),
                        "state": (g.get("Status") or {}).get("State"),
                    }
                    for page in emr.get_paginator("list_instance_groups").paginate(ClusterId=summary["Id"])
                    for g in page.get("InstanceGroups", [])
                ]
                found.append((cluster, sorted(groups, key=lambda g: (str(g["role"]), str(g["instance_type"])))))
        return found

    def _ecs_tasks(self, account_id: str, region: str, cluster_arns: Iterable[str]) -> list[dict[str, Any]]:
        """Every running task of the clusters (DescribeTasks, 100 a call), with its cluster ARN."""
        ecs = self.client(account_id, "ecs", region)
        tasks: list[dict[str, Any]] = []
        for cluster in cluster_arns:
            task_arns = [
                arn
                for page in ecs.get_paginator("list_tasks").paginate(cluster=cluster, PaginationConfig=self._pages())
                for arn in page.get("taskArns", [])
            ]
            for chunk in _chunks(task_arns, 100):
                for task in ecs.describe_tasks(cluster=cluster, tasks=chunk).get("tasks", []):
                    tasks.append({**task, "clusterArn": task.get("clusterArn") or cluster})
        return tasks

    def _task_definitions(self, account_id: str, region: str, arns: Iterable[str | None]) -> dict[str, dict[str, Any]]:
        """Task size of each task definition (DescribeTaskDefinition): task-level cpu and memory, else the
        sum over its containers. One that cannot be read gets ``error`` (its service keeps a row that says
        why) instead of failing the account's partition."""
        ecs = self.client(account_id, "ecs", region)
        found: dict[str, dict[str, Any]] = {}
        for arn in sorted({a for a in arns if a}):
            try:
                definition = ecs.describe_task_definition(taskDefinition=arn)["taskDefinition"]
            except ClientError as exc:
                code = str(exc.response.get("Error", {}).get("Code", ""))
                found[arn] = {"error": f"ecs:DescribeTaskDefinition {arn} failed: {code or _clean(exc)}"}
                continue
            found[arn] = _task_size(definition)
        return found

    def _emr_policies(self, account_id: str, region: str, cluster_id: str) -> dict[str, Any]:
        """The cluster's auto-termination idle timeout and managed-scaling limits (None: no policy). A call that
        fails is named in ``PolicyErrors`` (the policy is then unknown), never a failed partition."""
        emr = self.client(account_id, "emr", region)
        found: dict[str, Any] = {
            "AutoTerminationIdleTimeout": None,
            "ManagedScalingComputeLimits": None,
            "PolicyErrors": [],
        }
        try:
            policy = emr.get_auto_termination_policy(ClusterId=cluster_id).get("AutoTerminationPolicy") or {}
            found["AutoTerminationIdleTimeout"] = policy.get("IdleTimeout")
        except ClientError as exc:
            found["PolicyErrors"].append(f"elasticmapreduce:GetAutoTerminationPolicy: {_error_code(exc)}")
        try:
            scaling = emr.get_managed_scaling_policy(ClusterId=cluster_id).get("ManagedScalingPolicy") or {}
            found["ManagedScalingComputeLimits"] = scaling.get("ComputeLimits")
        except ClientError as exc:
            found["PolicyErrors"].append(f"elasticmapreduce:GetManagedScalingPolicy: {_error_code(exc)}")
        return found

    def _emr_steps(self, account_id: str, region: str, cluster_ids: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
        """Steps of each EMR cluster, newest first (ListSteps): name, state, start and end times."""
        emr = self.client(account_id, "emr", region)
        steps: dict[str, list[dict[str, Any]]] = {}
        for cluster_id in cluster_ids:
            found = []
            for page in emr.get_paginator("list_steps").paginate(ClusterId=cluster_id):
                for step in page.get("Steps", []):
                    status = step.get("Status") or {}
                    timeline = status.get("Timeline") or {}
                    found.append(
                        {
                            "name": step.get("Name"),
                            "state": status.get("State"),
                            "created": _iso(timeline.get("CreationDateTime")),
                            "start": _iso(timeline.get("StartDateTime")),
                            "end": _iso(timeline.get("EndDateTime")),
                        }
                    )
            steps[cluster_id] = sorted(found, key=lambda st: st["created"] or "", reverse=True)
        return steps

    def _emr_members(self, account_id: str, region: str, cluster_ids: Iterable[str]) -> dict[str, str]:
        """EC2 instance id -> EMR cluster id, from the cluster's own list (tags may be missing)."""
        emr = self.client(account_id, "emr", region)
        members: dict[str, str] = {}
        for cluster_id in cluster_ids:
            for page in emr.get_paginator("list_instances").paginate(ClusterId=cluster_id):
                for instance in page.get("Instances", []):
                    if instance.get("Ec2InstanceId"):
                        members[instance["Ec2InstanceId"]] = cluster_id
        return members

    def _eks(self, account_id: str, region: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        eks = self.client(account_id, "eks", region)
        names = [
            n
            for page in eks.get_paginator("list_clusters").paginate(PaginationConfig=self._pages())
            for n in page.get("clusters", [])
        ]
        clusters: list[dict[str, Any]] = []
        nodegroups: list[dict[str, Any]] = []
        for name in names:
            clusters.append(eks.describe_cluster(name=name)["cluster"])
            for page in eks.get_paginator("list_nodegroups").paginate(clusterName=name, PaginationConfig=self._pages()):
                for ng in page.get("nodegroups", []):
                    nodegroups.append(eks.describe_nodegroup(clusterName=name, nodegroupName=ng)["nodegroup"])
        return clusters, nodegroups

    # ------------------------------------------------------------------------------------ metrics

    def collect_metrics(self, account_id: str, day: date) -> Collected:
        """Rows of ``utilization_5m``: CPU average and maximum, agent memory (null without the agent), network."""
        table, metadata, summary = self._collect_series(
            account_id, lambda r: self._metrics_region(account_id, r, day), UTILIZATION_5M, "utilization_5m"
        )
        metadata["instances"] = int(summary["instances"])
        metadata["instances_with_memory"] = int(summary["mem_series"])
        for key in ("missing_points", "duplicate_points", "out_of_range_points", "outside_day_points"):
            metadata[key] = int(summary[key])
        return Collected(table=table, metadata=metadata)

    def _collect_series(
        self,
        account_id: str,
        per_region: Callable[[str], tuple[list[dict[str, Any]], Counter[str]]],
        schema: pa.Schema,
        table_name: str,
    ) -> tuple[pa.Table, dict[str, Any], Counter[str]]:
        """Collect CloudWatch series region by region into one table, with the call metadata of the partition."""
        stats = _CallStats()
        with self._partition(stats):
            self.session_for(account_id)
            results = self._for_regions(account_id, per_region)
        rows: list[dict[str, Any]] = []
        summary: Counter[str] = Counter()
        for region_rows, region_summary in results:
            rows.extend(region_rows)
            summary.update(region_summary)
        table = conform(_table(rows, schema), schema, table_name)
        metadata = self._metadata(account_id, stats, table.num_rows)
        metadata.update(self._metric_call_metadata(stats, summary))
        return table, metadata, summary

    def _metric_call_metadata(self, stats: _CallStats, summary: Counter[str]) -> dict[str, Any]:
        return {
            "metric_series": int(summary["series"]),
            "min_get_metric_data_calls": int(summary["min_calls"]),
            "get_metric_data_calls": int(stats.calls.get("cloudwatch:GetMetricData", 0)),
            "series_without_data": int(summary["series_without_data"]),
            "partial_data_results": int(summary["partial"]),
        }

    def _listed_series(self, account_id: str, region: str, namespace: str, metric: str) -> list[dict[str, Any]]:
        cloudwatch = self.client(account_id, "cloudwatch", region)
        paginator = cloudwatch.get_paginator("list_metrics")
        return [
            m for page in paginator.paginate(Namespace=namespace, MetricName=metric) for m in page.get("Metrics", [])
        ]

    def _metrics_region(self, account_id: str, region: str, day: date) -> tuple[list[dict[str, Any]], Counter[str]]:
        instance_ids = {i["InstanceId"] for i in self._instances(account_id, region)}
        # Instances terminated before today's inventory still have series for up to two weeks.
        for metric in self._listed_series(account_id, region, "AWS/EC2", "CPUUtilization"):
            dims = _dims(metric.get("Dimensions"))
            if set(dims) == {"InstanceId"}:
                instance_ids.add(dims["InstanceId"])
        mem_dims: dict[str, list[dict[str, str]]] = {}
        for metric in self._listed_series(account_id, region, MEM_SERIES[0], MEM_SERIES[1]):
            dims = metric.get("Dimensions") or []
            iid = _dims(dims).get("InstanceId")
            # Several series for one instance (agent dimensions changed): the one with fewest dimensions.
            if iid and (iid not in mem_dims or len(dims) < len(mem_dims[iid])):
                mem_dims[iid] = dims

        queries: list[tuple[str, str, str, str, str, list[dict[str, str]]]] = []
        for iid in sorted(instance_ids):
            for namespace, metric, stat, column in EC2_SERIES:
                queries.append((iid, column, namespace, metric, stat, [{"Name": "InstanceId", "Value": iid}]))
            if iid in mem_dims:
                queries.append((iid, MEM_SERIES[3], MEM_SERIES[0], MEM_SERIES[1], MEM_SERIES[2], mem_dims[iid]))

        results, summary = self._get_metric_data(account_id, region, day, [q[2:] for q in queries])
        summary["instances"] = len(instance_ids)
        summary["mem_series"] = len(mem_dims)

        # One row per instance and timestamp; a timestamp returned twice for one series gives a second
        # row rather than overwriting the first (duplicates stay visible).
        cells: dict[tuple[str, datetime], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        for (iid, column, *_), points in zip(queries, results, strict=True):
            for ts, value in points:
                cells[(iid, ts)][column].append(value)
                if column in PERCENT_COLUMNS and not 0.0 <= value <= 100.0:
                    summary["out_of_range_points"] += 1
        rows: list[dict[str, Any]] = []
        for (iid, ts), columns in sorted(cells.items()):
            for k in range(max(len(v) for v in columns.values())):
                row: dict[str, Any] = {"account_id": account_id, "date": day, "resource_id": iid, "ts": ts}
                for _, _, _, column in (*EC2_SERIES, MEM_SERIES):
                    values = columns.get(column, [])
                    row[column] = values[k] if k < len(values) else None
                row["source"] = SOURCE
                rows.append(row)
        return rows, summary

    def _get_metric_data(
        self,
        account_id: str,
        region: str,
        day: date,
        series: Sequence[tuple[str, str, str, list[dict[str, str]]]],
    ) -> tuple[list[list[tuple[datetime, float]]], Counter[str]]:
        """Points of each (namespace, metric, stat, dimensions) for the UTC day, in the fewest calls: at
        most 500 queries and 100,800 datapoints a call (:func:`plan_get_metric_data`); a page cut at the
        datapoint limit is continued with its NextToken."""
        start = datetime.combine(day, time(0), tzinfo=UTC)
        end = start + timedelta(days=1)
        summary: Counter[str] = Counter()
        expected = int(timedelta(days=1).total_seconds()) // PERIOD_SECONDS
        per_call, summary["min_calls"] = plan_get_metric_data(len(series), expected)
        summary["series"] = len(series)
        results: list[list[tuple[datetime, float]]] = [[] for _ in series]
        if not series:
            return results, summary
        cloudwatch = self.client(account_id, "cloudwatch", region)
        paginator = cloudwatch.get_paginator("get_metric_data")
        final_status: dict[int, str | None] = {}
        for offset in range(0, len(series), per_call):
            chunk = series[offset : offset + per_call]
            queries = [
                {
                    "Id": f"q{offset + i}",
                    "MetricStat": {
                        "Metric": {"Namespace": ns, "MetricName": metric, "Dimensions": dims},
                        "Period": PERIOD_SECONDS,
                        "Stat": stat,
                    },
                    "ReturnData": True,
                }
                for i, (ns, metric, stat, dims) in enumerate(chunk)
            ]
            pages = paginator.paginate(
                MetricDataQueries=queries, StartTime=start, EndTime=end, ScanBy="TimestampAscending"
            )
            for page in pages:
                for result in page.get("MetricDataResults", []):
                    index = int(result["Id"][1:])
                    # PartialData on a page with a NextToken is continued on the next page.
                    final_status[index] = result.get("StatusCode")
                    for ts, value in zip(result.get("Timestamps", []), result.get("Values", []), strict=False):
                        ts = ts.astimezone(UTC)
                        if not start <= ts < end:
                            summary["outside_day_points"] += 1
                            continue
                        results[index].append((ts, float(value)))
        summary["partial"] += sum(status not in (None, "Complete") for status in final_status.values())
        for points in results:
            stamps = [ts for ts, _ in points]
            distinct = len(set(stamps))
            summary["duplicate_points"] += len(stamps) - distinct
            summary["missing_points"] += max(0, expected - distinct) if points else 0
            summary["series_without_data"] += 0 if points else 1
            points.sort(key=lambda p: p[0])
        return results, summary

    # ---------------------------------------------------------------------------- cluster metrics

    def collect_cluster_metrics(self, account_id: str, day: date) -> Collected:
        """Rows of ``cluster_metrics_5m``: ECS cluster and service use and reservation, EMR YARN and node series."""
        table, metadata, summary = self._collect_series(
            account_id,
            lambda r: self._cluster_metrics_region(account_id, r, day),
            CLUSTER_METRICS_5M,
            "cluster_metrics_5m",
        )
        metadata["ecs_clusters"] = int(summary["ecs_clusters"])
        metadata["ecs_services"] = int(summary["ecs_services"])
        metadata["emr_clusters"] = int(summary["emr_clusters"])
        metadata["missing_points"] = int(summary["missing_points"])
        metadata["duplicate_points"] = int(summary["duplicate_points"])
        return Collected(table=table, metadata=metadata)

    def _cluster_metrics_region(
        self, account_id: str, region: str, day: date
    ) -> tuple[list[dict[str, Any]], Counter[str]]:
        ecs = self.client(account_id, "ecs", region)
        cluster_arns = [
            arn
            for page in ecs.get_paginator("list_clusters").paginate(PaginationConfig=self._pages())
            for arn in page.get("clusterArns", [])
        ]
        # CloudWatch matches a query's dimensions as a set, moto only in the order they were put: ask with
        # the order ListMetrics gives (the canonical one when the series is not listed).
        listed = {
            frozenset(_dims(m.get("Dimensions")).items()): m.get("Dimensions") or []
            for metric in ("CPUUtilization", "MemoryUtilization")
            for m in self._listed_series(account_id, region, "AWS/ECS", metric)
        }
        # Container Insights only where it is on (a cluster setting): its service series are listed, or not
        # asked for.
        insights = {
            frozenset(_dims(m.get("Dimensions")).items()): m.get("Dimensions") or []
            for m in self._listed_series(account_id, region, ECS_INSIGHTS_NAMESPACE, "CpuUtilized")
        }
        series: list[tuple[str, str, str, str, list[dict[str, str]]]] = []
        services = 0

        def with_insights(resource_id: str, dims: list[dict[str, str]]) -> None:
            listed = insights.get(frozenset(_dims(dims).items()))
            if listed is not None:
                series.extend((resource_id, ECS_INSIGHTS_NAMESPACE, m, "Average", listed) for m in ECS_INSIGHTS_METRICS)

        for arn in cluster_arns:
            cluster_name = arn.rsplit("/", 1)[-1]
            dims = [{"Name": "ClusterName", "Value": cluster_name}]
            series.extend((arn, "AWS/ECS", m, "Average", dims) for m in ECS_CLUSTER_METRICS)
            for page in ecs.get_paginator("list_services").paginate(cluster=arn, PaginationConfig=self._pages()):
                for service_arn in page.get("serviceArns", []):
                    services += 1
                    service_dims = [*dims, {"Name": "ServiceName", "Value": service_arn.rsplit("/", 1)[-1]}]
                    service_dims = listed.get(frozenset(_dims(service_dims).items()), service_dims)
                    series.extend((service_arn, "AWS/ECS", m, "Average", service_dims) for m in ECS_SERVICE_METRICS)
                    with_insights(service_arn, service_dims)
        emr = self.client(account_id, "emr", region)
        emr_clusters = [
            c
            for page in emr.get_paginator("list_clusters").paginate(ClusterStates=list(EMR_ACTIVE_STATES))
            for c in page.get("Clusters", [])
        ]
        for c in emr_clusters:
            dims = [{"Name": "JobFlowId", "Value": c["Id"]}]
            resource_id = c.get("ClusterArn") or c["Id"]
            series.extend((resource_id, "AWS/ElasticMapReduce", m, "Average", dims) for m in EMR_METRICS)

        results, summary = self._get_metric_data(account_id, region, day, [s[1:] for s in series])
        summary["ecs_clusters"] = len(cluster_arns)
        summary["ecs_services"] = services
        summary["emr_clusters"] = len(emr_clusters)
        rows = [
            {
                "account_id": account_id,
                "date": day,
                "resource_id": resource_id,
                "ts": ts,
                "namespace": namespace,
                "metric": metric,
                "stat": stat,
                "value": value,
                "source": SOURCE,
            }
            for (resource_id, namespace, metric, stat, _), points in zip(series, results, strict=True)
            for ts, value in points
        ]
        return rows, summary


# ---------------------------------------------------------------------------------------- helpers


def _iam_prefix(signing_name: str) -> str:
    """The IAM service prefix of a botocore signing name (CloudWatch signs as ``monitoring``)."""
    return {"monitoring": "cloudwatch"}.get(signing_name, signing_name)


def _chunks(items: Sequence[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield list(items[i : i + size])


def _tags(raw: Iterable[Mapping[str, Any]] | None, key: str = "Key", value: str = "Value") -> dict[str, str]:
    return {str(t[key]): str(t.get(value, "")) for t in raw or [] if key in t}


def _dims(raw: Iterable[Mapping[str, str]] | None) -> dict[str, str]:
    return {d["Name"]: d.get("Value", "") for d in raw or []}


def _platform(inst: Mapping[str, Any]) -> str:
    if inst.get("PlatformDetails"):
        return str(inst["PlatformDetails"])
    # EC2 leaves Platform empty for Linux and sets it to "windows" for Windows.
    return "Windows" if inst.get("Platform") == "windows" else "Linux/UNIX"


def _ecs_resources(container: Mapping[str, Any] | None, key: str) -> dict[str, Any] | None:
    if not container:
        return None
    found: dict[str, Any] = {}
    for r in container.get(key) or []:
        if r.get("type") == "INTEGER":
            found[r["name"]] = r.get("integerValue")
    return found or None


def _task_size(definition: Mapping[str, Any]) -> dict[str, Any]:
    """CPU units and MiB of a task definition: its task-level values, else the sum over its containers
    (``memory``, else ``memoryReservation``); None when neither says."""
    containers = definition.get("containerDefinitions") or []

    def total(task_key: str, container_keys: tuple[str, ...]) -> int | None:
        value = definition.get(task_key)
        if value not in (None, ""):
            try:
                return int(str(value))
            except ValueError:
                return None
        parts = [next((c[k] for k in container_keys if c.get(k)), None) for c in containers]
        return int(sum(p for p in parts if p)) if any(parts) else None

    family, revision = definition.get("family"), definition.get("revision")
    return {
        "family_revision": f"{family}:{revision}" if family and revision is not None else None,
        "cpu": total("cpu", ("cpu",)),
        "memory": total("memory", ("memory", "memoryReservation")),
        "requires_compatibilities": list(definition.get("requiresCompatibilities") or []),
    }


def _task_summary(task: Mapping[str, Any], definitions: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """One running task as the cluster's attributes keep it: its size (the task's own, else its definition's),
    where it runs, and what started it (``service:<name>`` group, a schedule rule, a person)."""
    definition = definitions.get(task.get("taskDefinitionArn") or "", {})

    def number(value: Any, fallback: Any) -> int | None:
        try:
            return int(str(value)) if value not in (None, "") else fallback
        except ValueError:
            return fallback

    return {
        "task_definition": definition.get("family_revision") or task.get("taskDefinitionArn"),
        "cpu": number(task.get("cpu"), definition.get("cpu")),
        "memory": number(task.get("memory"), definition.get("memory")),
        "launch_type": task.get("launchType"),
        "capacity_provider": task.get("capacityProviderName"),
        "container_instance": task.get("containerInstanceArn"),
        "group": task.get("group"),
        "started_by": task.get("startedBy"),
        "zone": task.get("availabilityZone"),
    }


def _error_code(exc: ClientError) -> str:
    error = exc.response.get("Error", {})
    status = (exc.response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
    return str(error.get("Code") or f"HTTP {status}")


def _iso(value: Any) -> str | None:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    return str(value) if value else None


def _ecs_lifecycle(strategy: Sequence[Mapping[str, Any]]) -> str | None:
    providers = {str(s.get("capacityProvider", "")) for s in strategy}
    if not providers:
        return None
    if providers <= {"FARGATE_SPOT"}:
        return "spot"
    if "FARGATE_SPOT" in providers:
        return "mixed"
    return None


def _json(value: Mapping[str, Any]) -> str:
    return json.dumps(value, default=_json_default, sort_keys=True, separators=(",", ":"))


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def _table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    if not rows:
        return schema.empty_table()
    columns = {f.name: pa.array([_arrow_value(r.get(f.name), f.type) for r in rows], type=f.type) for f in schema}
    return pa.table(columns, schema=schema)


def _arrow_value(value: Any, type_: pa.DataType) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    if pa.types.is_string(type_) and value is not None and not isinstance(value, str):
        return str(value)
    return value


def _clean(exc: BaseException) -> str:
    text = str(exc).strip().rstrip(".")
    return text.splitlines()[0] if text else type(exc).__name__


def _fix_for(exc: BotoCoreError | ClientError, code: str, call: str, where: _Where, role_arn: str | None) -> str:
    from botocore.exceptions import (
        ConnectionClosedError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        ReadTimeoutError,
    )

    if isinstance(exc, EndpointConnectionError | ConnectTimeoutError | ConnectionClosedError):
        return (
            "check that the endpoint is reachable (endpoint_url / AWS_ENDPOINT_URL, proxy, VPC endpoints) "
            "and that the region is enabled in the account"
        )
    if isinstance(exc, ReadTimeoutError):
        return "raise read_timeout_seconds or lower page_size; the service answered too slowly"
    if isinstance(exc, NoCredentialsError):
        return "provide base credentials (AWS_PROFILE, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or an instance role)"
    if call == "sts:AssumeRole" or role_arn:
        return (
            f"create role {role_arn or '(unset)'} in account {where.account_id} with the read-only policy of "
            "docs/iam/collector-readonly-policy.json and a trust policy that lets the collector's identity "
            "assume it (with the configured external id), or remove the account from CLOUDOPT_ACCOUNTS"
        )
    if code in {"Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequestsException"}:
        return "raise max_attempts (adaptive retries) or lower region_concurrency; the API kept throttling"
    if code in {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "UnauthorizedException"}:
        return (
            f"allow {call} in the collector role of account {where.account_id} "
            "(docs/iam/collector-readonly-policy.json lists every action the collector needs)"
        )
    if code in {"AuthFailure", "UnrecognizedClientException", "InvalidClientTokenId", "OptInRequired"}:
        return f"enable region {where.region} for account {where.account_id} or remove it from CLOUDOPT_REGIONS"
    if code in {"ExpiredToken", "ExpiredTokenException", "RequestExpired"}:
        return "refresh the base credentials (the session token expired) and check the machine clock"
    if code == "AWSOrganizationsNotInUseException":
        return "set CLOUDOPT_ACCOUNTS to the account ids to collect (this account is not in an organisation)"
    return "see the AWS error above; docs/aws.md describes the configuration"
