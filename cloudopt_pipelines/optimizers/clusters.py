"""The cluster optimiser: ECS clusters and services, EMR clusters and custom clusters (pure, no Dagster).

The seed's three functions, in the order they run:

- :func:`analyze_cluster_utilization`: per cluster, capacity (from the price catalogue's instance specs,
  never from what ECS registers) versus reserved (tasks' CPU and memory, YARN memory) versus used
  (CloudWatch), by hour of week, with the idle hours of EMR clusters and the data coverage;
- :func:`optimize_cluster_size`: ECS service desired counts and task sizes (valid Fargate pairs only),
  the ECS cluster's instance type and count from packing its tasks, EMR core and task counts and
  managed-scaling bounds, custom clusters sized as one group;
- :func:`optimize_node_distribution`: Spot where it is safe (FARGATE_SPOT for spot-ready services, EMR
  task nodes on diversified Spot instance types, never primary or core unless configured), zone
  balance, and idle time removed (EMR auto-termination; a cluster busy only in a window of the week is
  a batch job that can run transient in that window).

Every row carries the current and proposed values, the saving, a risk, a confidence gated by coverage
(no cut before ``min_days_before_cut`` days of data), a rationale and the exact API calls (boto3 operation
and parameters) in ``proposed_config.api_calls``. ECS on EC2: the saving is counted once, on the nodes
(``ecs_cluster`` rows); its services' rows cost nothing and save nothing, they say which cut makes the
node saving possible. docs/clusters.md has every rule.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import pyarrow as pa

from cloudopt_pipelines.catalog.clusters import (
    emr_surcharge_usd_per_hour,
    fargate_rates,
    is_valid_fargate_size,
    smallest_fargate_size,
)
from cloudopt_pipelines.optimizers.sizing import HOURS_PER_MONTH, Catalog, InstanceType, SizingError, generation_of
from cloudopt_pipelines.optimizers.standalone_actions import spot_eligible
from cloudopt_pipelines.storage.schemas import RECOMMENDATIONS
from cloudopt_pipelines.vocabulary import (
    CUSTOM_CLUSTER,
    ECS,
    ECS_CLUSTER,
    ECS_SERVICE,
    EMR,
    EMR_CLUSTER,
    ENVIRONMENT_TAG_KEYS,
    is_production,
    is_protected,
)

CUSTOM_CLUSTER_KIND = "custom_cluster"
CUSTOM_CLUSTER_PREFIX = "cloudopt:cluster="
KEEP = "keep"
HOURS_OF_WEEK = 168
TERMINATED_STATES = ("TERMINATING", "TERMINATED", "TERMINATED_WITH_ERRORS", "INACTIVE", "DELETED")
#: Families the cluster node search may move to (current generations of general, compute, memory).
NODE_FAMILIES = ("m", "c", "r")
MIN_NODE_GENERATION = 5
YARN_MEMORY_SHARE = 0.75


@dataclass(frozen=True)
class ClusterConfig:
    """The optimiser's rules; ``ClustersSettings`` in optimizers/clusters_optimizer.py documents each."""

    window_days: int = 14
    min_days_before_cut: int = 7
    target_cpu_pct: float = 70.0
    target_mem_pct: float = 80.0
    node_fill_pct: float = 90.0
    node_memory_usable_pct: float = 90.0
    min_service_tasks: int = 1
    min_production_service_tasks: int = 2
    fargate_spot_weight: int = 3
    emr_idle_timeout_seconds: int = 3600
    emr_min_idle_hours_per_day: float = 2.0
    emr_min_core_nodes: int = 2
    emr_spot_core: bool = False
    emr_spot_types: int = 3
    max_best_risk: float = 2.0
    environment_tag_keys: tuple[str, ...] = ENVIRONMENT_TAG_KEYS


# ------------------------------------------------------------------------------------------ analysis


@dataclass
class Node:
    """One EC2 instance of a cluster, priced from the catalogue."""

    resource_id: str
    instance_type: str
    zone: str | None
    lifecycle: str
    spec: InstanceType | None
    attributes: dict[str, Any]

    @property
    def hourly_usd(self) -> float | None:
        if self.spec is None:
            return None
        if self.lifecycle == "spot" and self.spec.spot_usd_per_hour is not None:
            return self.spec.spot_usd_per_hour
        return self.spec.ondemand_usd_per_hour


@dataclass
class ClusterAnalysis:
    """What :func:`analyze_cluster_utilization` finds about one cluster or service."""

    resource_id: str
    resource_kind: str
    deployment_type: str
    name: str | None
    region: str
    zone: str | None
    state: str | None
    tags: dict[str, str]
    attributes: dict[str, Any]
    parent_id: str | None = None
    nodes: list[Node] = field(default_factory=list)
    capacity_vcpu: float | None = None
    capacity_mem_gib: float | None = None
    reserved_vcpu: float | None = None
    reserved_mem_gib: float | None = None
    used_cpu_p95_pct: float | None = None
    used_mem_max_pct: float | None = None
    yarn_mem_used_p95_pct: float | None = None
    containers_pending_max: float | None = None
    by_hour_of_week: dict[int, dict[str, Any]] = field(default_factory=dict)
    idle_hours_per_day: float | None = None
    idle_stretches_hours: list[float] = field(default_factory=list)
    #: True when the idle hours come from the cluster's own idle runs (``emr_idle_runs``), False when from
    #: the hours of the week that are idle in every week of the window
    idle_from_runs: bool = False
    #: where the ECS use comes from: ``ECS/ContainerInsights`` (preferred where present) or ``AWS/ECS``
    usage_source: str | None = None
    days_seen: int = 0
    hours_covered: int = 0
    notes: list[str] = field(default_factory=list)
    parent_protected: bool = False

    @property
    def protected(self) -> bool:
        """Its own protect tag, or its cluster's (a service of a protected ECS cluster is never changed)."""
        return self.parent_protected or is_protected(self.tags)

    def confidence(self, window_days: int) -> float:
        """Days of data over the window times hours of the week covered; 0 without data."""
        if self.days_seen <= 0:
            return 0.0
        return round(min(1.0, self.days_seen / window_days) * min(1.0, self.hours_covered / HOURS_OF_WEEK), 3)

    def summary(self) -> dict[str, Any]:
        keys = (
            "capacity_vcpu",
            "capacity_mem_gib",
            "reserved_vcpu",
            "reserved_mem_gib",
            "used_cpu_p95_pct",
            "used_mem_max_pct",
            "yarn_mem_used_p95_pct",
            "containers_pending_max",
            "idle_hours_per_day",
            "days_seen",
            "hours_covered",
        )
        out = {k: _round(getattr(self, k)) for k in keys}
        out["nodes"] = len(self.nodes)
        out["usage_source"] = self.usage_source
        out["idle_stretches_hours"] = self.idle_stretches_hours
        busy = sorted(h for h, b in self.by_hour_of_week.items() if not b.get("idle"))
        out["busy_hours_of_week"] = len(busy)
        return out


def analyze_cluster_utilization(
    inventory: Sequence[Mapping[str, Any]],
    activity_profile: Sequence[Mapping[str, Any]],
    cluster_daily: Sequence[Mapping[str, Any]],
    catalog: Catalog,
    idle_runs: Sequence[Mapping[str, Any]] = (),
) -> dict[str, ClusterAnalysis]:
    """Every ECS cluster and service, EMR cluster and custom cluster of the inventory, analysed.

    ``activity_profile`` is the ``cluster_activity_profile`` feature (hour of week, from the clusters' own
    CloudWatch series); ``cluster_daily`` the ``cluster_utilization_daily`` rows of the window (nodes'
    capacity and use, custom clusters included); ``idle_runs`` the ``emr_idle_runs`` rows (each run of idle
    5-minute samples of an EMR cluster over the window). Keys: the resource ids of the rows to write.
    """
    runs: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for row in idle_runs:
        runs[str(row["resource_id"])].append(row)
    profile: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for row in activity_profile:
        profile[str(row["resource_id"])].append(row)
    daily: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for row in cluster_daily:
        daily[str(row["cluster_id"])].append(row)

    found: dict[str, ClusterAnalysis] = {}
    members: dict[str, list[Node]] = defaultdict(list)
    for row in inventory:
        kind = row.get("resource_kind")
        if kind in (ECS_CLUSTER, ECS_SERVICE, EMR_CLUSTER):
            found[str(row["resource_id"])] = ClusterAnalysis(
                resource_id=str(row["resource_id"]),
                resource_kind=str(kind),
                deployment_type=EMR if kind == EMR_CLUSTER else ECS,
                name=row.get("name"),
                region=str(row.get("region") or ""),
                zone=row.get("zone"),
                state=row.get("state"),
                tags=_json_obj(row.get("tags")),
                attributes=_json_obj(row.get("attributes")),
                parent_id=row.get("parent_id"),
            )
        elif (
            kind == "ec2_instance" and row.get("deployment_type") in (ECS, EMR, CUSTOM_CLUSTER) and row.get("parent_id")
        ):
            region, itype = str(row.get("region") or ""), str(row.get("instance_type") or "")
            spec = catalog.get(region, itype) if (region, itype) in catalog else None
            node = Node(
                resource_id=str(row["resource_id"]),
                instance_type=itype,
                zone=row.get("zone"),
                lifecycle=str(row.get("lifecycle") or "on-demand"),
                spec=spec,
                attributes=_json_obj(row.get("attributes")),
            )
            parent = str(row["parent_id"])
            if row.get("deployment_type") == CUSTOM_CLUSTER:
                key = CUSTOM_CLUSTER_PREFIX + parent
                if key not in found:
                    found[key] = ClusterAnalysis(
                        resource_id=key,
                        resource_kind=CUSTOM_CLUSTER_KIND,
                        deployment_type=CUSTOM_CLUSTER,
                        name=parent,
                        region=str(row.get("region") or ""),
                        zone=None,
                        state="active",
                        tags=_json_obj(row.get("tags")),
                        attributes={},
                    )
                elif is_protected(_json_obj(row.get("tags"))):
                    found[key].tags.update(_json_obj(row.get("tags")))
                members[key].append(node)
            else:
                members[parent].append(node)

    for analysis in found.values():
        parent = found.get(analysis.parent_id or "")
        if analysis.resource_kind == ECS_SERVICE and parent is not None and is_protected(parent.tags):
            analysis.parent_protected = True
    for key, analysis in found.items():
        analysis.nodes = sorted(members.get(key, []), key=lambda n: n.resource_id)
        specs = [n.spec for n in analysis.nodes]
        if analysis.nodes and all(s is not None for s in specs):
            analysis.capacity_vcpu = float(sum(s.vcpu for s in specs if s))
            analysis.capacity_mem_gib = float(sum(s.memory_gib for s in specs if s))
        unknown = sorted({n.instance_type for n in analysis.nodes if n.spec is None})
        if unknown:
            analysis.notes.append(
                f"instance type(s) {', '.join(unknown)} of {analysis.resource_id} not in the price catalogue of "
                f"{analysis.region}; refresh it by materialising the price_catalog asset"
            )
        _reserved(analysis)
        _profile(analysis, profile.get(key, []))
        if analysis.resource_kind == EMR_CLUSTER and runs.get(key):
            _idle_runs(analysis, runs[key])
        if analysis.resource_kind == CUSTOM_CLUSTER_KIND or (
            analysis.resource_kind == ECS_CLUSTER and not analysis.days_seen
        ):
            _from_daily(analysis, daily.get(key, []))
    return found


def _reserved(a: ClusterAnalysis) -> None:
    if a.resource_kind == ECS_CLUSTER:
        tasks = [t for t in a.attributes.get("tasks") or [] if t.get("cpu") is not None and t.get("memory") is not None]
        if tasks:
            a.reserved_vcpu = sum(float(t["cpu"]) for t in tasks) / 1024
            a.reserved_mem_gib = sum(float(t["memory"]) for t in tasks) / 1024
    elif a.resource_kind == ECS_SERVICE:
        cpu, mem, count = (
            a.attributes.get("task_cpu"),
            a.attributes.get("task_memory"),
            a.attributes.get("desired_count"),
        )
        if cpu is not None and mem is not None and count is not None:
            a.reserved_vcpu = count * cpu / 1024
            a.reserved_mem_gib = count * mem / 1024


def _profile(a: ClusterAnalysis, rows: Sequence[Mapping[str, Any]]) -> None:
    if not rows:
        return
    a.days_seen = max(int(r.get("days_seen") or 0) for r in rows)
    a.hours_covered = len({int(r["hour_of_week"]) for r in rows})

    def peak(column: str) -> float | None:
        values = [float(r[column]) for r in rows if r.get(column) is not None and math.isfinite(float(r[column]))]
        return max(values) if values else None

    if a.resource_kind in (ECS_CLUSTER, ECS_SERVICE):
        insights = any(float(r.get("insights_share_pct") or 0) > 0 for r in rows)
        a.usage_source = "ECS/ContainerInsights" if insights else "AWS/ECS"
    a.used_cpu_p95_pct = peak("cpu_p95_pct")
    a.used_mem_max_pct = peak("mem_max_pct")
    a.yarn_mem_used_p95_pct = peak("yarn_mem_used_p95_pct")
    a.containers_pending_max = peak("containers_pending_max")
    for r in rows:
        h = int(r["hour_of_week"])
        idle_share = r.get("idle_share_pct")
        apps = r.get("apps_running_max")
        if idle_share is not None:
            idle = float(idle_share) >= 95.0
        elif apps is not None:
            idle = float(apps) == 0
        else:
            idle = None
        a.by_hour_of_week[h] = {
            "cpu_p95_pct": _round(r.get("cpu_p95_pct")),
            "cpu_reserved_mean_pct": _round(r.get("cpu_reserved_mean_pct")),
            "mem_reserved_mean_pct": _round(r.get("mem_reserved_mean_pct")),
            "mem_max_pct": _round(r.get("mem_max_pct")),
            "yarn_mem_used_p95_pct": _round(r.get("yarn_mem_used_p95_pct")),
            "idle": idle,
        }
    if a.resource_kind == EMR_CLUSTER:
        known = {h: b["idle"] for h, b in a.by_hour_of_week.items() if b["idle"] is not None}
        if known:
            a.idle_hours_per_day = round(sum(1 for v in known.values() if v) * HOURS_OF_WEEK / len(known) / 7, 2)
            a.idle_stretches_hours = _stretches(known)


def _idle_runs(a: ClusterAnalysis, rows: Sequence[Mapping[str, Any]]) -> None:
    """Idle hours a day and idle stretches from the cluster's own runs of idle samples: idle time that moves
    from week to week (idle all of one week, busy the next) leaves no hour of the week idle in every week."""
    days = max(int(r.get("days_seen") or 0) for r in rows)
    if days <= 0:
        return
    hours = sorted((float(r["idle_minutes"]) / 60 for r in rows), reverse=True)
    a.idle_hours_per_day = round(sum(hours) / days, 2)
    a.idle_stretches_hours = [round(h, 2) for h in hours]
    a.idle_from_runs = True


def _stretches(idle: Mapping[int, bool]) -> list[int]:
    """Lengths (hours) of the runs of idle hours of the week, wrapping Sunday night into Monday."""
    hours = [bool(idle.get(h, False)) for h in range(HOURS_OF_WEEK)]
    if all(hours):
        return [HOURS_OF_WEEK]
    start = hours.index(False)
    runs, current = [], 0
    for k in range(1, HOURS_OF_WEEK + 1):
        if hours[(start + k) % HOURS_OF_WEEK]:
            current += 1
        elif current:
            runs.append(current)
            current = 0
    return sorted(runs, reverse=True)


def _from_daily(a: ClusterAnalysis, rows: Sequence[Mapping[str, Any]]) -> None:
    seen = [r for r in rows if (r.get("node_samples") or 0) > 0]
    if not seen:
        return
    a.days_seen = len({r["date"] for r in seen})
    a.hours_covered = HOURS_OF_WEEK if a.days_seen >= 7 else 24 * a.days_seen
    cpu = [float(r["used_cpu_p95_pct"]) for r in seen if r.get("used_cpu_p95_pct") is not None]
    mem = [float(r["used_mem_max_pct"]) for r in seen if r.get("used_mem_max_pct") is not None]
    a.used_cpu_p95_pct = max(cpu) if cpu else None
    a.used_mem_max_pct = max(mem) if mem else None


# ------------------------------------------------------------------------------------------- options


@dataclass
class Option:
    """One option of one resource, before it becomes a ``RECOMMENDATIONS`` row."""

    name: str
    action: str
    monthly_cost_usd: float | None
    proposed: dict[str, Any]
    rationale: str
    risk: float = 0.0
    market: str = "on_demand"
    finding: str | None = None
    is_estimate: bool = False
    vcpu: float | None = None
    memory_gib: float | None = None
    effort: str = "Low"


@dataclass
class Plan:
    """Every option of one resource with what is current; ``best`` forced when set (else the cheapest allowed)."""

    analysis: ClusterAnalysis
    current: dict[str, Any]
    current_cost_usd: float | None
    options: list[Option]
    confidence: float
    finding: str
    best: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


def _keep(
    a: ClusterAnalysis, current: dict[str, Any], cost: float | None, rationale: str, vcpu=None, mem=None
) -> Option:
    return Option(
        KEEP,
        KEEP,
        cost,
        {**current, "api_calls": []},
        rationale,
        market=current.get("market", "on_demand"),
        vcpu=vcpu,
        memory_gib=mem,
    )


def _hold(plan: Plan, keep: Option, why: str, finding: str = "insufficient_data") -> Plan:
    """``plan`` with no cut: its keep option says why."""
    keep.rationale = why
    plan.finding = finding
    return plan


def _gate(a: ClusterAnalysis, config: ClusterConfig) -> str | None:
    """Why no cut may be proposed for ``a`` (None: cuts allowed)."""
    if a.state and str(a.state).upper() in TERMINATED_STATES:
        return f"{a.resource_kind} {a.resource_id} is {a.state}: terminated during the window, nothing to size"
    if a.days_seen == 0:
        return (
            f"no CloudWatch data for {a.resource_id} in the last {config.window_days} days: nothing is cut without it"
        )
    if a.days_seen < config.min_days_before_cut:
        return (
            f"{a.days_seen} day(s) of data for {a.resource_id}, fewer than the {config.min_days_before_cut} required "
            "before any cut (min_days_before_cut)"
        )
    return None


def _is_fargate(attributes: Mapping[str, Any]) -> bool:
    strategy = {str(s.get("capacityProvider")) for s in attributes.get("capacity_provider_strategy") or []}
    if strategy:
        return strategy <= {"FARGATE", "FARGATE_SPOT"}
    if attributes.get("launch_type"):
        return attributes["launch_type"] == "FARGATE"
    return list(attributes.get("requires_compatibilities") or []) == ["FARGATE"]


def _service_name(a: ClusterAnalysis) -> str:
    return a.name or a.resource_id.rsplit("/", 1)[-1]


def _update_service(a: ClusterAnalysis, **parameters: Any) -> dict[str, Any]:
    return {
        "service": "ecs",
        "operation": "UpdateService",
        "parameters": {"cluster": a.parent_id, "service": _service_name(a), **parameters},
    }


def _register_task_definition(base: str | None, cpu: int, memory: int) -> dict[str, Any]:
    # A new revision of the current definition, only cpu and memory changed: the executor reads the
    # rest (containers, roles, network mode) with DescribeTaskDefinition of ``base``.
    return {
        "service": "ecs",
        "operation": "RegisterTaskDefinition",
        "parameters": {"cpu": str(cpu), "memory": str(memory)},
        "from_task_definition": base,
    }


def optimize_cluster_size(
    analyses: Mapping[str, ClusterAnalysis], catalog: Catalog, config: ClusterConfig
) -> dict[str, Plan]:
    """Sizing options of every ECS service, ECS cluster, EMR cluster and custom cluster."""
    plans: dict[str, Plan] = {}
    for key, a in sorted(analyses.items()):
        if a.resource_kind == ECS_SERVICE:
            plans[key] = _ecs_service(a, catalog, config)
    for key, a in sorted(analyses.items()):
        if a.resource_kind == ECS_CLUSTER:
            services = [
                p for p in plans.values() if p.analysis.parent_id == key and p.analysis.resource_kind == ECS_SERVICE
            ]
            plans[key] = _ecs_cluster(a, services, catalog, config)
        elif a.resource_kind == EMR_CLUSTER:
            plans[key] = _emr_cluster(a, catalog, config)
        elif a.resource_kind == CUSTOM_CLUSTER_KIND:
            plans[key] = _custom_cluster(a, catalog, config)
    return plans


# ------------------------------------------------------------------------------------- ECS services


def _ecs_service(a: ClusterAnalysis, catalog: Catalog, config: ClusterConfig) -> Plan:
    attrs = a.attributes
    cpu, mem, count = attrs.get("task_cpu"), attrs.get("task_memory"), attrs.get("desired_count")
    fargate = _is_fargate(attrs)
    strategy = attrs.get("capacity_provider_strategy") or None
    current = {
        "cluster": a.parent_id,
        "service": _service_name(a),
        "desired_count": count,
        "cpu": cpu,
        "memory": mem,
        "task_definition": attrs.get("task_definition_revision") or attrs.get("task_definition"),
        "capacity_provider_strategy": strategy,
        "launch_type": "FARGATE" if fargate else (attrs.get("launch_type") or "EC2"),
        "market": "spot" if count and _spot_share(strategy, int(count)) >= 1.0 else "on_demand",
    }
    details: dict[str, Any] = {"analysis": a.summary(), "launch": current["launch_type"]}

    def done(reason: str, finding: str, cost: float | None) -> Plan:
        keep = _keep(a, current, cost, reason)
        return Plan(a, current, cost, [keep], a.confidence(config.window_days), finding, details=details)

    if attrs.get("task_definition_error"):
        return done(
            f"task definition unreadable, task size unknown: {attrs['task_definition_error']}",
            "task_definition_unreadable",
            None if fargate else 0.0,
        )
    if cpu is None or mem is None or count is None:
        return done(
            f"service {a.resource_id} has no task CPU/memory or desired count in the inventory",
            "insufficient_data",
            None if fargate else 0.0,
        )
    rates = None
    if fargate:
        try:
            rates = fargate_rates(catalog, a.region)
        except SizingError as exc:
            return done(str(exc), "unpriced", None)
        if not is_valid_fargate_size(cpu, mem):
            return done(
                f"task size {cpu} CPU units / {mem} MiB is not a valid Fargate pair (see docs/clusters.md); "
                "fix the task definition before sizing it",
                "invalid_fargate_size",
                round(count * rates.task_hour(cpu, mem) * HOURS_PER_MONTH, 2),
            )

    def monthly(n: int, c: int, m: int, spot_share: float = 0.0) -> float:
        if rates is None:
            return 0.0  # ECS on EC2: the cost and the saving are the nodes'
        on, spot = rates.task_hour(c, m), rates.task_hour(c, m, spot=True)
        return round(n * ((1 - spot_share) * on + spot_share * spot) * HOURS_PER_MONTH, 2)

    current_spot_share = _spot_share(strategy, count)
    cost = monthly(count, cpu, mem, current_spot_share)
    keep = _keep(
        a, current, cost, "current desired count and task size", vcpu=count * cpu / 1024, mem=count * mem / 1024
    )
    options = [keep]
    gate = _gate(a, config)
    if gate is not None or a.used_cpu_p95_pct is None:
        reason = gate or f"no CPUUtilization series for service {a.resource_id}: nothing is cut without it"
        keep.rationale = reason
        return Plan(a, current, cost, options, a.confidence(config.window_days), "insufficient_data", details=details)

    cpu_use = a.used_cpu_p95_pct / 100
    mem_use = (a.used_mem_max_pct if a.used_mem_max_pct is not None else 100.0) / 100
    need_cpu = cpu * cpu_use * 100 / config.target_cpu_pct
    need_mem = mem * mem_use * 100 / config.target_mem_pct
    production = is_production(a.tags, config.environment_tag_keys)
    min_tasks = max(config.min_service_tasks, config.min_production_service_tasks if production else 0)
    used = (
        f"CPU p95 {a.used_cpu_p95_pct:.0f} % and memory peak {mem_use * 100:.0f} % of the reservation "
        f"over {a.days_seen} d"
    )
    finding = "optimized"

    if fargate:
        size = smallest_fargate_size(need_cpu, need_mem)
    else:
        size = (max(128, _ceil_to(need_cpu, 128)), max(256, _ceil_to(need_mem, 128)))
    if size is not None and size != (cpu, mem):
        new_cpu, new_mem = size
        up = new_cpu > cpu or new_mem > mem
        finding = "under-provisioned" if up else "over-provisioned"
        calls = [
            _register_task_definition(current["task_definition"], new_cpu, new_mem),
            _update_service(a, taskDefinition=_family(current["task_definition"]), desiredCount=count),
        ]
        options.append(
            Option(
                "resize_tasks",
                "ecs_update_service",
                monthly(count, new_cpu, new_mem, current_spot_share),
                {**current, "cpu": new_cpu, "memory": new_mem, "api_calls": calls},
                f"{used}: {new_cpu} CPU units / {new_mem} MiB a task keeps CPU under {config.target_cpu_pct:.0f} % and "
                f"memory under {config.target_mem_pct:.0f} % (was {cpu} / {mem})"
                + ("" if fargate else "; the saving is counted on the cluster's nodes"),
                risk=0.5 if not up else 0.0,
                finding=finding,
                is_estimate=bool(rates and rates.is_estimate),
                vcpu=count * new_cpu / 1024,
                memory_gib=count * new_mem / 1024,
            )
        )
    tasks_needed = max(
        min_tasks,
        math.ceil(count * cpu_use * 100 / config.target_cpu_pct),
        math.ceil(count * mem_use * 100 / config.target_mem_pct),
    )
    if tasks_needed < count:
        finding = "over-provisioned"
        options.append(
            Option(
                "scale_in",
                "ecs_update_service",
                monthly(tasks_needed, cpu, mem, current_spot_share),
                {
                    **current,
                    "desired_count": tasks_needed,
                    "api_calls": [_update_service(a, desiredCount=tasks_needed)],
                },
                f"{used}: {tasks_needed} task(s) of the current size carry that load (was {count}; at least "
                f"{min_tasks} kept{' for production' if production else ''})"
                + ("" if fargate else "; the saving is counted on the cluster's nodes"),
                risk=1.0,
                finding="over-provisioned",
                is_estimate=bool(rates and rates.is_estimate),
                vcpu=tasks_needed * cpu / 1024,
                memory_gib=tasks_needed * mem / 1024,
            )
        )
    plan = Plan(a, current, cost, options, a.confidence(config.window_days), finding, details=details)
    if not fargate:
        # The cluster packs the resized tasks: that is the option its node saving assumes.
        resize = any(o.name == "resize_tasks" and not _grows(o, current) for o in options)
        plan.best = "resize_tasks" if resize and not a.protected else KEEP
    return plan


def _grows(option: Option, current: Mapping[str, Any]) -> bool:
    return option.proposed.get("cpu", 0) > (current.get("cpu") or 0) or option.proposed.get("memory", 0) > (
        current.get("memory") or 0
    )


def _spot_share(strategy: Sequence[Mapping[str, Any]] | None, count: int) -> float:
    """The share of a service's tasks on FARGATE_SPOT under its capacity-provider strategy."""
    if not strategy or count <= 0:
        return 0.0
    base = {str(s.get("capacityProvider")): int(s.get("base") or 0) for s in strategy}
    weights = {str(s.get("capacityProvider")): int(s.get("weight") or 0) for s in strategy}
    rest = max(0, count - sum(base.values()))
    total = sum(weights.values()) or 1
    spot = base.get("FARGATE_SPOT", 0) + rest * weights.get("FARGATE_SPOT", 0) / total
    return min(1.0, spot / count)


def _family(task_definition: str | None) -> str | None:
    if not task_definition:
        return None
    return task_definition.rsplit("/", 1)[-1].split(":", 1)[0]


# ------------------------------------------------------------------------------------- ECS clusters


def _pack(items: Sequence[tuple[float, float]], cpu: float, mem: float) -> int | None:
    """Nodes of ``cpu`` units and ``mem`` MiB first-fit decreasing needs for ``items`` (None: an item fits none)."""
    bins: list[list[float]] = []
    for c, m in sorted(items, key=lambda x: x[0] / cpu + x[1] / mem, reverse=True):
        if c > cpu or m > mem:
            return None
        for b in bins:
            if b[0] >= c and b[1] >= m:
                b[0] -= c
                b[1] -= m
                break
        else:
            bins.append([cpu - c, mem - m])
    return len(bins)


def _node_candidates(catalog: Catalog, region: str, current: InstanceType) -> list[InstanceType]:
    out = []
    for t in catalog.region(region):
        family = t.family
        if t.architecture != current.architecture or not family or family[0] not in NODE_FAMILIES:
            continue
        try:
            if generation_of(family) < MIN_NODE_GENERATION:
                continue
        except (ValueError, SizingError):
            continue
        if ".metal" in t.instance_type or not 2 <= t.vcpu <= 64:
            continue
        out.append(t)
    if current not in out:
        out.append(current)
    return out


def _zones(nodes: Sequence[Node]) -> list[str]:
    return sorted({n.zone for n in nodes if n.zone})


def _spread(count: int, zones: Sequence[str]) -> dict[str, int]:
    """``count`` nodes spread evenly over ``zones`` (availability first), the first zones taking the remainder."""
    if not zones:
        return {}
    base, extra = divmod(count, len(zones))
    return {z: base + (1 if k < extra else 0) for k, z in enumerate(zones)}


def _removed(nodes: Sequence[Node], target: Mapping[str, int], same_type: bool) -> list[Node]:
    """Nodes to remove to reach ``target`` per zone (all of them when the type changes), busiest zones first."""
    if not same_type:
        return list(nodes)
    by_zone: dict[str, list[Node]] = defaultdict(list)
    for n in nodes:
        by_zone[n.zone or ""].append(n)
    out = []
    for zone, members in sorted(by_zone.items()):
        keep = target.get(zone, 0)
        out.extend(sorted(members, key=lambda n: n.resource_id)[keep:])
    return out


def _node_calls(
    a: ClusterAnalysis, removed: Sequence[Node], added: Mapping[str, int], instance_type: str, ecs: bool
) -> list[dict[str, Any]]:
    """The calls from today's nodes to the proposed ones: new nodes first, then the old drained and stopped."""
    calls: list[dict[str, Any]] = []
    groups = sorted({n.attributes.get("auto_scaling_group") for n in a.nodes if n.attributes.get("auto_scaling_group")})
    if groups:
        for g in groups:
            calls.append(
                {
                    "service": "autoscaling",
                    "operation": "UpdateAutoScalingGroup",
                    "parameters": {"AutoScalingGroupName": g, "DesiredCapacity": sum(added.values()) or None},
                    "note": f"instance type {instance_type}: a new launch-template version when it changes",
                }
            )
        return calls
    image = next((n.attributes.get("image_id") for n in a.nodes if n.attributes.get("image_id")), None)
    subnet_of = {n.zone: n.attributes.get("subnet_id") for n in a.nodes if n.zone}
    for zone, n in sorted(added.items()):
        if n <= 0:
            continue
        params: dict[str, Any] = {"ImageId": image, "InstanceType": instance_type, "MinCount": n, "MaxCount": n}
        if subnet_of.get(zone):
            params["SubnetId"] = subnet_of[zone]
        else:
            params["Placement"] = {"AvailabilityZone": zone}
        calls.append({"service": "ec2", "operation": "RunInstances", "parameters": params})
    ids = [n.resource_id for n in removed]
    if ids and ecs:
        arns = [
            n.attributes.get("ecs_container_instance_arn")
            for n in removed
            if n.attributes.get("ecs_container_instance_arn")
        ]
        if arns:
            calls.append(
                {
                    "service": "ecs",
                    "operation": "UpdateContainerInstancesState",
                    "parameters": {"cluster": a.resource_id, "containerInstances": arns, "status": "DRAINING"},
                }
            )
    if ids:
        calls.append({"service": "ec2", "operation": "TerminateInstances", "parameters": {"InstanceIds": ids}})
    return calls


def _nodes_cost(nodes: Sequence[Node]) -> float | None:
    prices = [n.hourly_usd for n in nodes]
    if any(p is None for p in prices):
        return None
    return round(sum(p for p in prices if p is not None) * HOURS_PER_MONTH, 2)


def _ecs_cluster(a: ClusterAnalysis, services: Sequence[Plan], catalog: Catalog, config: ClusterConfig) -> Plan:
    nodes = a.nodes
    types = Counter(n.instance_type for n in nodes)
    current = {
        "cluster": a.resource_id,
        "instance_type": types.most_common(1)[0][0] if types else None,
        "count": len(nodes),
        "zones": dict(sorted(Counter(n.zone or "" for n in nodes).items())),
        "market": "spot" if nodes and all(n.lifecycle == "spot" for n in nodes) else "on_demand",
    }
    cost = _nodes_cost(nodes)
    details = {"analysis": a.summary()}
    keep = _keep(a, current, cost, "current container instances", vcpu=a.capacity_vcpu, mem=a.capacity_mem_gib)
    plan = Plan(a, current, cost, [keep], a.confidence(config.window_days), "optimized", details=details)
    if not nodes:
        keep.rationale = "no EC2 container instances (Fargate only or empty): the services' rows carry the cost"
        keep.monthly_cost_usd = 0.0
        return plan
    if cost is None:
        return _hold(plan, keep, a.notes[0] if a.notes else "a node's instance type is not priced", "unpriced")
    ec2_services = [s for s in services if s.current.get("launch_type") != "FARGATE"]
    unknown = [
        s.analysis.resource_id for s in ec2_services if s.current.get("cpu") is None or s.current.get("memory") is None
    ]
    if unknown:
        return _hold(
            plan, keep, f"task size unknown for {', '.join(unknown)}: the nodes cannot be packed", "insufficient_data"
        )
    # The cluster's own data gates the packing; a service without enough data is packed at its current size.
    gate = _gate(a, config)
    if gate is not None:
        return _hold(plan, keep, gate)

    items: list[tuple[float, float]] = []
    daemon: tuple[float, float] = (0.0, 0.0)
    assumed = []
    for s in ec2_services:
        chosen = next((o for o in s.options if o.name == s.best), s.options[0])
        c, m, n = chosen.proposed["cpu"], chosen.proposed["memory"], chosen.proposed["desired_count"]
        assumed.append(
            {"service": s.analysis.resource_id, "option": chosen.name, "cpu": c, "memory": m, "desired_count": n}
        )
        if s.analysis.attributes.get("scheduling_strategy") == "DAEMON":
            daemon = (daemon[0] + c, daemon[1] + m)
        else:
            items.extend([(float(c), float(m))] * int(n))
    service_groups = {f"service:{s.current['service']}" for s in ec2_services}
    batch = [
        (float(t["cpu"]), float(t["memory"]))
        for t in a.attributes.get("tasks") or []
        if t.get("group") not in service_groups
        and t.get("launch_type") != "FARGATE"
        and t.get("cpu")
        and t.get("memory")
    ]
    items.extend(batch)
    details["packed"] = {"services": assumed, "other_tasks": len(batch)}
    if not items:
        keep.rationale = (
            "no task placed on the container instances: nothing to pack (an idle cluster, see its services)"
        )
        plan.finding = "idle"
        return plan

    zones = _zones(nodes) or [""]
    production = is_production(a.tags, config.environment_tag_keys)
    min_nodes = max(len(zones), 2 if production else 1)
    base = catalog.get(a.region, current["instance_type"])
    fill = config.node_fill_pct / 100
    Choice = tuple[float, InstanceType, int]

    def search(tasks: Sequence[tuple[float, float]]) -> tuple[Choice | None, Choice | None]:
        best: Choice | None = None
        same: Choice | None = None
        for t in _node_candidates(catalog, a.region, base):
            cpu_units = t.vcpu * 1024 * fill - daemon[0]
            mem_mib = t.memory_gib * 1024 * config.node_memory_usable_pct / 100 * fill - daemon[1]
            if cpu_units <= 0 or mem_mib <= 0:
                continue
            n = _pack(tasks, cpu_units, mem_mib) if tasks else 0
            if n is None:
                continue
            n = max(n, min_nodes)
            monthly = round(n * t.ondemand_usd_per_hour * HOURS_PER_MONTH, 2)
            if best is None or monthly < best[0]:
                best = (monthly, t, n)
            if t.instance_type == current["instance_type"]:
                same = (monthly, t, n)
        return best, same

    best, same = search(items)
    reserved = sum(c for c, _ in items) / 1024
    plan.details["reserved_vcpu_packed"] = round(reserved, 3)
    _resize_options(
        plan,
        same,
        best,
        zones,
        lambda n, t: (
            f"the tasks ({len(items)}, {reserved:.2f} vCPU reserved after the services' recommended sizes) pack on "
            f"{n} x {t.instance_type} filled to {config.node_fill_pct:.0f} % "
            f"(was {len(nodes)} x {current['instance_type']}); "
            f"spread over {len(zones)} zone(s){', at least 2 nodes for production' if production else ''}"
        ),
        ecs=True,
        requires=[x for x in assumed if x["option"] != KEEP],
    )
    if batch:
        today = sum((s.current["cpu"] or 0) * (s.current["desired_count"] or 0) for s in ec2_services) / 1024
        _batch_to_fargate_spot(plan, items[: len(items) - len(batch)], batch, today, search, catalog, config)
    return plan


def _resize_options(
    plan: Plan,
    same: tuple[float, InstanceType, int] | None,
    best: tuple[float, InstanceType, int] | None,
    zones: Sequence[str],
    rationale: Any,
    ecs: bool,
    requires: list[dict[str, Any]] | None = None,
) -> None:
    """The ``resize_cluster`` options of an ECS or custom cluster's nodes: the cheapest count of today's type
    (``resize_cluster_same_type``) and the cheapest type and count (``resize_cluster``), each cheaper than today,
    spread evenly over the zones. ``rationale(n, type)`` says why."""
    a, nodes, current, cost = plan.analysis, plan.analysis.nodes, plan.current, plan.current_cost_usd or 0.0
    types = Counter(n.instance_type for n in nodes)
    for label, choice in (("resize_cluster_same_type", same), ("resize_cluster", best)):
        if choice is None or choice[0] >= cost - 0.01:
            continue
        if label == "resize_cluster" and same is not None and choice[1].instance_type == same[1].instance_type:
            continue
        monthly, t, n = choice
        target = _spread(n, zones)
        same_type = t.instance_type == current["instance_type"] and len(types) == 1
        removed = _removed(nodes, target, same_type)
        added = {
            z: max(0, k - (0 if not same_type else sum(1 for x in nodes if (x.zone or "") == z)))
            for z, k in target.items()
        }
        proposed: dict[str, Any] = {
            "cluster": a.resource_id,
            "instance_type": t.instance_type,
            "count": n,
            "zones": target,
        }
        if requires is not None:
            proposed["requires"] = requires
        proposed["api_calls"] = _node_calls(a, removed, added, t.instance_type, ecs=ecs)
        plan.options.append(
            Option(
                label,
                "resize_cluster",
                monthly,
                proposed,
                rationale(n, t),
                risk=0.5 if same_type else 1.0,
                finding="over-provisioned",
                is_estimate=t.is_estimate,
                vcpu=float(n * t.vcpu),
                memory_gib=float(n * t.memory_gib),
                effort="Medium" if same_type else "High",
            )
        )
        plan.finding = "over-provisioned"


def _batch_to_fargate_spot(
    plan: Plan,
    service_items: Sequence[tuple[float, float]],
    batch: Sequence[tuple[float, float]],
    services_vcpu: float,
    search: Any,
    catalog: Catalog,
    config: ClusterConfig,
) -> None:
    """Batch work (tasks no service owns: schedules, run-task) off the nodes: the nodes are packed for the
    services alone and the batch runs on FARGATE_SPOT for the hours it runs. Its task-hours come from the
    cluster's CPUReservation by hour of week above what the services reserve; without that series it is
    not estimated. Only for a spot-ready cluster (``spot_eligible`` of its tags: the batch may be interrupted)."""
    a = plan.analysis
    # Tasks carry no tags of their own in the inventory: the cluster's tags say whether its batch may be interrupted.
    ready, why = spot_eligible(a.tags)
    if not ready:
        plan.details["batch"] = {"tasks": len(batch), "spot_ready": {"ready": False, "why": why}}
        return
    hourly = [b.get("cpu_reserved_mean_pct") for b in a.by_hour_of_week.values()]
    known = [float(v) for v in hourly if v is not None]
    if not known or a.capacity_vcpu is None:
        plan.details["batch"] = {"tasks": len(batch), "estimated": False, "why": "no CPUReservation series"}
        return
    # What the cluster reserved each hour beyond its services (today's sizes) is the batch; its share of the
    # week scaled to the hours with data.
    batch_vcpu_week = (
        sum(max(0.0, v / 100 * a.capacity_vcpu - services_vcpu) for v in known) * HOURS_OF_WEEK / len(known)
    )
    if batch_vcpu_week <= 0:
        plan.details["batch"] = {"tasks": len(batch), "estimated": True, "vcpu_hours_week": 0.0}
        return
    gib_per_vcpu = sum(m for _, m in batch) / max(sum(c for c, _ in batch), 1)  # MiB per CPU unit = GiB per vCPU
    try:
        rates = fargate_rates(catalog, a.region)
    except SizingError:
        return
    spot_hour = (rates.vcpu_hour + gib_per_vcpu * rates.gb_hour) * (1 - rates.spot_discount)
    fargate_month = round(batch_vcpu_week * spot_hour * HOURS_PER_MONTH / HOURS_OF_WEEK, 2)
    best, _ = search(service_items)
    if best is None or plan.current_cost_usd is None:
        return
    monthly = round(best[0] + fargate_month, 2)
    if monthly >= plan.current_cost_usd - 0.01:
        return
    groups = sorted(
        {
            t.get("started_by") or ""
            for t in a.attributes.get("tasks") or []
            if not str(t.get("group") or "").startswith("service:")
        }
    )
    rules = [g.split("/", 1)[1] for g in groups if g.startswith("events-rule/")]
    strategy = [{"capacityProvider": "FARGATE_SPOT", "weight": 1}]
    zones = sorted(plan.current.get("zones") or {})
    plan.details["batch"] = {"tasks": len(batch), "estimated": True, "vcpu_hours_week": round(batch_vcpu_week, 2)}
    plan.options.append(
        Option(
            "batch_to_fargate_spot",
            "resize_cluster",
            monthly,
            {
                "cluster": a.resource_id,
                "instance_type": best[1].instance_type,
                "count": best[2],
                "zones": _spread(best[2], zones) if zones else {},
                "batch_capacity_provider_strategy": strategy,
                "api_calls": [
                    {
                        "service": "events",
                        "operation": "PutTargets",
                        "parameters": {
                            "Rule": rule,
                            "Targets": [{"EcsParameters": {"CapacityProviderStrategy": strategy, "LaunchType": None}}],
                        },
                        "note": "the current target of the rule (ListTargetsByRule), with this strategy (awsvpc)",
                    }
                    for rule in rules
                ],
            },
            f"{len(batch)} batch task(s) no service owns ({', '.join(groups) or 'run by hand'}) reserve about "
            f"{batch_vcpu_week:.0f} vCPU-hours a week beyond the services: on FARGATE_SPOT (about "
            f"{fargate_month:.2f} USD a month, Spot estimated) the nodes pack the services alone on "
            f"{best[2]} x {best[1].instance_type}",
            risk=1.5,
            market="spot",
            finding="over-provisioned",
            is_estimate=True,
            effort="High",
        )
    )


# ------------------------------------------------------------------------------------- EMR clusters


def _emr_cluster(a: ClusterAnalysis, catalog: Catalog, config: ClusterConfig) -> Plan:
    attrs = a.attributes
    fleets = attrs.get("instance_collection_type") == "INSTANCE_FLEET"
    groups = [g for g in attrs.get("instance_groups") or [] if g.get("role")]
    current_groups = [
        {
            "role": g["role"],
            "instance_type": g.get("instance_type"),
            "count": int(g.get("running") if g.get("running") is not None else g.get("requested") or 0),
            "market": g.get("market") or "ON_DEMAND",
        }
        for g in groups
    ]
    if fleets:
        # Fleet capacity as groups of its first instance type and market, one unit an instance: priced so, and
        # resized so only when every type weighs one unit (ModifyInstanceFleet target capacities).
        for f in attrs.get("instance_fleets") or []:
            types = [t.get("instance_type") for t in f.get("instance_types") or [] if t.get("instance_type")]
            for market, key in (("ON_DEMAND", "on_demand"), ("SPOT", "spot")):
                units = f.get(f"provisioned_{key}") or f.get(f"target_{key}") or 0
                if units:
                    role = f.get("type")
                    current_groups.append(
                        {
                            "role": role,
                            "instance_type": types[0] if types else None,
                            "count": int(units),
                            "market": market,
                            "fleet_id": f.get("id"),
                        }
                    )
    current: dict[str, Any] = {
        "cluster_id": attrs.get("cluster_id"),
        "instance_groups": current_groups,
        "auto_termination_idle_timeout": attrs.get("auto_termination_idle_timeout"),
    }
    details = {
        "analysis": a.summary(),
        "steps_running": attrs.get("steps_running"),
        "last_step_end": attrs.get("last_step_end"),
    }
    # YARN memory as EMR configures it by default: about 75 % of each worker's memory, the primary excluded.
    workers_mem = [
        catalog.get(a.region, g["instance_type"]).memory_gib * g["count"]
        for g in current_groups
        if g["role"] in ("CORE", "TASK") and g.get("instance_type") and (a.region, g["instance_type"]) in catalog
    ]
    if workers_mem:
        details["yarn_memory_gib"] = round(YARN_MEMORY_SHARE * sum(workers_mem), 2)

    def price(g: Mapping[str, Any]) -> float | None:
        t = g.get("instance_type")
        if not t or (a.region, t) not in catalog:
            return None
        spec = catalog.get(a.region, t)
        ec2 = (
            spec.spot_usd_per_hour
            if g["market"] == "SPOT" and spec.spot_usd_per_hour is not None
            else spec.ondemand_usd_per_hour
        )
        return ec2 + emr_surcharge_usd_per_hour(catalog, a.region, t)

    def monthly(gs: Sequence[Mapping[str, Any]]) -> float | None:
        prices = [price(g) for g in gs]
        if any(p is None for p in prices):
            return None
        return round(sum(p * g["count"] for p, g in zip(prices, gs, strict=True) if p is not None) * HOURS_PER_MONTH, 2)

    cost = monthly(current_groups) if current_groups else (_nodes_cost(a.nodes) if a.nodes else None)
    keep = _keep(a, current, cost, "current instance groups")
    plan = Plan(a, current, cost, [keep], a.confidence(config.window_days), "optimized", details=details)
    if a.state and str(a.state).upper() in TERMINATED_STATES:
        keep.monthly_cost_usd = 0.0
        return _hold(plan, keep, _gate(a, config) or "terminated", "terminated")
    if cost is None:
        missing = sorted({str(g.get("instance_type")) for g in current_groups if price(g) is None})
        keep.rationale = (
            f"instance type(s) {', '.join(missing)} of {a.resource_id} not in the price catalogue of {a.region}; "
            "refresh it by materialising the price_catalog asset"
            if missing
            else "no instance groups or priced nodes in the inventory"
        )
        plan.finding = "unpriced"
        return plan
    gate = _gate(a, config)
    if gate is not None:
        return _hold(plan, keep, gate)

    hourly = cost / HOURS_PER_MONTH
    cluster_id = attrs.get("cluster_id") or a.resource_id
    unknown = [str(e) for e in attrs.get("policy_errors") or []]
    # Idle time: an auto-termination policy ends the cluster after the timeout; the hours past it are saved.
    if (
        a.idle_hours_per_day is not None
        and a.idle_hours_per_day >= config.emr_min_idle_hours_per_day
        and not attrs.get("auto_termination_idle_timeout")
    ):
        timeout_h = config.emr_idle_timeout_seconds / 3600
        saved_hours = sum(max(0.0, s - timeout_h) for s in a.idle_stretches_hours)
        # Runs are over the days seen; hour-of-week stretches are already a week's.
        saved_per_week = saved_hours * 7 / max(a.days_seen, 1) if a.idle_from_runs else saved_hours
        saved = round(hourly * saved_per_week / 7 * (HOURS_PER_MONTH / 24), 2)
        if saved > 0.01:  # idle runs all shorter than the timeout save nothing
            always_idle = (
                a.idle_hours_per_day >= 24 * 0.99 if a.idle_from_runs else a.idle_stretches_hours == [HOURS_OF_WEEK]
            )
            busy = sorted(h for h, b in a.by_hour_of_week.items() if b.get("idle") is False)
            window = _window_text(busy)
            plan.options.append(
                Option(
                    "auto_terminate",
                    "emr_auto_termination",
                    round(cost - saved, 2),
                    {
                        **current,
                        "idle_timeout_seconds": config.emr_idle_timeout_seconds,
                        "api_calls": [
                            {
                                "service": "emr",
                                "operation": "PutAutoTerminationPolicy",
                                "parameters": {
                                    "ClusterId": cluster_id,
                                    "AutoTerminationPolicy": {"IdleTimeout": config.emr_idle_timeout_seconds},
                                },
                            }
                        ],
                    },
                    (
                        f"idle (no step or application) {a.idle_hours_per_day:.1f} h a day on average over "
                        f"{a.days_seen} d"
                        + (
                            ", the whole window: nothing ran"
                            if always_idle
                            else (
                                f"; {len(a.idle_stretches_hours)} idle run(s), the longest "
                                f"{a.idle_stretches_hours[0]:.1f} h"
                                if a.idle_from_runs
                                else f"; busy only {window}"
                            )
                        )
                        + f"; ending it after {config.emr_idle_timeout_seconds // 60} idle minutes saves "
                        f"{saved_per_week:.0f} cluster-hours a week"
                        + (
                            ""
                            if always_idle
                            else "; its batch work then runs as a transient cluster "
                            + ("when it comes" if a.idle_from_runs else "in that window")
                        )
                        + (f" (current policy unknown: {', '.join(unknown)})" if unknown else "")
                    ),
                    risk=1.5 if not always_idle else 0.5,
                    finding="idle" if always_idle else "over-provisioned",
                    is_estimate=True,
                    effort="Medium",
                )
            )
            plan.finding = "idle" if always_idle else "over-provisioned"
    if fleets:
        weights = {
            t.get("weight") for f in attrs.get("instance_fleets") or [] for t in f.get("instance_types") or []
        } - {None, 1}
        if weights:
            keep.rationale = (
                f"instance fleets with weighted capacities ({sorted(weights)}): units are not instances, no resize "
                "is proposed; auto-termination still is"
            )
            return plan
        core, task = _fleet_role(current_groups, "CORE"), _fleet_role(current_groups, "TASK")
    else:
        core = next((g for g in current_groups if g["role"] == "CORE"), None)
        task = next((g for g in current_groups if g["role"] == "TASK"), None)
    workers = (core["count"] if core else 0) + (task["count"] if task else 0)
    if core is None or workers == 0:
        return plan
    if attrs.get("managed_scaling_policy"):
        # Managed scaling already sets the counts: no resize or new bounds on top of it.
        plan.details["managed_scaling_policy"] = attrs["managed_scaling_policy"]
        return plan
    group_ids = {g.get("role"): g.get("id") for g in groups}
    use = a.yarn_mem_used_p95_pct
    if use is not None:
        pending = (a.containers_pending_max or 0) > 0
        need = max(config.emr_min_core_nodes, math.ceil(workers * use / config.target_mem_pct))
        if pending:
            need = max(need, workers)
        new_core = max(
            min(core["count"], need),
            config.emr_min_core_nodes if core["count"] >= config.emr_min_core_nodes else core["count"],
        )
        new_task = max(0, need - new_core)
        if need < workers:
            proposed = [dict(g) for g in current_groups if g["role"] == "MASTER"]
            proposed.append({**core, "count": new_core})
            if task or new_task:
                proposed.append({**(task or {**core, "role": "TASK"}), "role": "TASK", "count": new_task})
            calls = []
            if fleets:
                proposed, calls = _fleet_targets(current_groups, cluster_id, {"CORE": new_core, "TASK": new_task})
            for g in [] if fleets else proposed:
                if g["role"] in ("CORE", "TASK") and group_ids.get(g["role"]):
                    calls.append(
                        {
                            "service": "emr",
                            "operation": "ModifyInstanceGroups",
                            "parameters": {
                                "ClusterId": cluster_id,
                                "InstanceGroups": [
                                    {"InstanceGroupId": group_ids[g["role"]], "InstanceCount": g["count"]}
                                ],
                            },
                        }
                    )
            plan.options.append(
                Option(
                    "resize",
                    "emr_resize",
                    monthly(proposed),
                    {**current, "instance_groups": proposed, "api_calls": calls},
                    f"YARN memory used p95 {use:.0f} % of {workers} worker node(s) over {a.days_seen} d: "
                    f"{need} keep it under "
                    f"{config.target_mem_pct:.0f} %; task nodes go first, core nodes (HDFS) stay at least "
                    f"{config.emr_min_core_nodes}"
                    + ("; fleets' on-demand units are cut before their Spot units" if fleets else ""),
                    risk=1.0,
                    finding="over-provisioned",
                    is_estimate=True,
                    effort="Low",
                )
            )
            plan.finding = plan.finding if plan.finding == "idle" else "over-provisioned"
        # Managed scaling: as many workers as each hour of the week needs, between the core floor and today's size.
        needs = [
            max(core["count"], math.ceil(workers * b["yarn_mem_used_p95_pct"] / config.target_mem_pct))
            for b in a.by_hour_of_week.values()
            if b.get("yarn_mem_used_p95_pct") is not None
        ]
        if needs:
            mean_need = min(workers, sum(min(n, workers) for n in needs) / len(needs))
            worker_price = (
                (monthly([{**core, "count": 1}]) or 0.0) if not task else (monthly([{**task, "count": 1}]) or 0.0)
            )
            saving = round((workers - mean_need) * worker_price, 2)
            if saving > 0.01 and not pending:
                # Units count core and task instances; the primary node is outside managed scaling.
                min_units, max_units = core["count"], workers
                unit_type = "InstanceFleetUnits" if fleets else "Instances"
                plan.options.append(
                    Option(
                        "managed_scaling",
                        "emr_managed_scaling",
                        round(cost - saving, 2),
                        {
                            **current,
                            "min_units": min_units,
                            "max_units": max_units,
                            "max_core_units": core["count"],
                            "unit_type": unit_type,
                            "api_calls": [
                                {
                                    "service": "emr",
                                    "operation": "PutManagedScalingPolicy",
                                    "parameters": {
                                        "ClusterId": cluster_id,
                                        "ManagedScalingPolicy": {
                                            "ComputeLimits": {
                                                "UnitType": unit_type,
                                                "MinimumCapacityUnits": min_units,
                                                "MaximumCapacityUnits": max_units,
                                                "MaximumCoreCapacityUnits": core["count"],
                                            }
                                        },
                                    },
                                }
                            ],
                        },
                        f"YARN memory by hour of week needs {min(needs)} to {max(needs)} worker(s) "
                        f"(mean {mean_need:.1f} of "
                        f"{workers}): managed scaling between {min_units} and {max_units} instances follows it",
                        risk=1.0,
                        finding="over-provisioned",
                        is_estimate=True,
                    )
                )
    return plan


def _fleet_role(groups: Sequence[Mapping[str, Any]], role: str) -> dict[str, Any] | None:
    """A fleet role's on-demand and Spot parts as one group (their units summed)."""
    parts = [g for g in groups if g["role"] == role]
    if not parts:
        return None
    return {**parts[0], "count": sum(int(g["count"]) for g in parts)}


def _fleet_targets(
    groups: Sequence[Mapping[str, Any]], cluster_id: str, totals: Mapping[str, int]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Each core and task fleet cut to its role's new total, on-demand units first (they cost more), and the
    ``ModifyInstanceFleet`` calls for the fleets that change."""
    proposed = [dict(g) for g in groups if g["role"] == "MASTER"]
    calls = []
    for role, total in totals.items():
        parts = [g for g in groups if g["role"] == role]
        if not parts:
            continue
        spot = sum(int(g["count"]) for g in parts if g["market"] == "SPOT")
        new_spot = min(spot, total)
        new = {"SPOT": new_spot, "ON_DEMAND": total - new_spot}
        proposed.extend({**g, "count": new[g["market"]]} for g in parts if new[g["market"]] or len(parts) == 1)
        fleet_id = parts[0].get("fleet_id")
        if fleet_id and (new["SPOT"], new["ON_DEMAND"]) != (
            spot,
            sum(int(g["count"]) for g in parts if g["market"] == "ON_DEMAND"),
        ):
            calls.append(
                {
                    "service": "emr",
                    "operation": "ModifyInstanceFleet",
                    "parameters": {
                        "ClusterId": cluster_id,
                        "InstanceFleet": {
                            "InstanceFleetId": fleet_id,
                            "TargetOnDemandCapacity": new["ON_DEMAND"],
                            "TargetSpotCapacity": new["SPOT"],
                        },
                    },
                }
            )
    return proposed, calls


def _window_text(hours: Sequence[int]) -> str:
    """The busy hours of the week in words: a daily span when they form one, else how many and which days."""
    if not hours:
        return "never"
    names = "Mon Tue Wed Thu Fri Sat Sun".split()
    of_day = sorted({h % 24 for h in hours})
    weekdays = sorted({h // 24 for h in hours})
    days = "every day" if len(weekdays) == 7 else "on " + ", ".join(names[d] for d in weekdays)
    if len(of_day) < 24 and of_day == list(range(of_day[0], of_day[-1] + 1)):
        return f"{of_day[0]:02d}:00-{of_day[-1] + 1:02d}:00 UTC {days}"
    return f"{len(hours)} h a week, {days}"


# ----------------------------------------------------------------------------------- custom clusters


def _custom_cluster(a: ClusterAnalysis, catalog: Catalog, config: ClusterConfig) -> Plan:
    nodes = a.nodes
    types = Counter(n.instance_type for n in nodes)
    current = {
        "cluster": a.resource_id,
        "instance_type": types.most_common(1)[0][0] if types else None,
        "count": len(nodes),
        "zones": dict(sorted(Counter(n.zone or "" for n in nodes).items())),
        "market": "on_demand",
    }
    cost = _nodes_cost(nodes)
    keep = _keep(a, current, cost, "current members", vcpu=a.capacity_vcpu, mem=a.capacity_mem_gib)
    plan = Plan(
        a, current, cost, [keep], a.confidence(config.window_days), "optimized", details={"analysis": a.summary()}
    )
    if cost is None:
        return _hold(plan, keep, a.notes[0] if a.notes else "a member's instance type is not priced", "unpriced")
    gate = _gate(a, config)
    if gate is not None or a.used_cpu_p95_pct is None or a.capacity_vcpu is None:
        return _hold(plan, keep, gate or f"no CPU data for the members of {a.resource_id}", "insufficient_data")
    need_vcpu = a.capacity_vcpu * a.used_cpu_p95_pct / config.target_cpu_pct
    mem_known = a.used_mem_max_pct is not None and a.capacity_mem_gib is not None
    need_mem = a.capacity_mem_gib * a.used_mem_max_pct / config.target_mem_pct if mem_known else 0.0
    zones = _zones(nodes) or [""]
    production = is_production(a.tags, config.environment_tag_keys)
    min_nodes = max(len(zones), 2 if production else 1)
    base = catalog.get(a.region, current["instance_type"])
    best: tuple[float, InstanceType, int] | None = None
    same: tuple[float, InstanceType, int] | None = None
    for t in _node_candidates(catalog, a.region, base):
        n = max(min_nodes, math.ceil(need_vcpu / t.vcpu), math.ceil(need_mem / t.memory_gib) if mem_known else 0)
        if not mem_known and n * t.memory_gib < len(nodes) * base.memory_gib * 0.999:
            continue  # memory unknown: never less memory than today
        monthly = round(n * t.ondemand_usd_per_hour * HOURS_PER_MONTH, 2)
        if best is None or monthly < best[0]:
            best = (monthly, t, n)
        if t.instance_type == current["instance_type"]:
            same = (monthly, t, n)
    used = (
        f"members' CPU p95 {a.used_cpu_p95_pct:.0f} %"
        + (f" and memory peak {a.used_mem_max_pct:.0f} %" if mem_known else " (memory not reported: not reduced)")
        + f" of {len(nodes)} x {current['instance_type']} over {a.days_seen} d"
    )
    _resize_options(
        plan,
        same,
        best,
        zones,
        lambda n, t: (
            f"{used}: the group needs {need_vcpu:.1f} vCPU at {config.target_cpu_pct:.0f} %; "
            f"{n} x {t.instance_type} spread over {len(zones)} zone(s), sized as one cluster"
        ),
        ecs=False,
    )
    return plan


# ----------------------------------------------------------------------------- node distribution


def optimize_node_distribution(plans: Mapping[str, Plan], catalog: Catalog, config: ClusterConfig) -> dict[str, Plan]:
    """Spot and zone options added to the sizing plans: FARGATE_SPOT for spot-ready Fargate services, EMR
    task nodes on diversified Spot types (never primary or core unless ``emr_spot_core``), and a zone
    rebalance of clusters whose nodes lean on one zone."""
    for plan in plans.values():
        a = plan.analysis
        if _gate(a, config) is not None or plan.current_cost_usd is None:
            continue
        if a.resource_kind == ECS_SERVICE:
            _fargate_spot(plan, catalog, config)
        elif a.resource_kind == EMR_CLUSTER:
            _emr_spot(plan, catalog, config)
        elif a.resource_kind == ECS_CLUSTER and a.nodes and len(plan.options) > 0:
            services = [
                p
                for p in plans.values()
                if p.analysis.resource_kind == ECS_SERVICE and p.analysis.parent_id == a.resource_id
            ]
            _ecs_ec2_spot(plan, services, catalog, config)
        if a.resource_kind in (ECS_CLUSTER, CUSTOM_CLUSTER_KIND) and a.nodes:
            zones = plan.current.get("zones") or {}
            if len(zones) > 1 and max(zones.values()) - min(zones.values()) > 1:
                plan.details["zone_imbalance"] = zones
                plan.details["zone_balanced"] = _spread(len(a.nodes), sorted(zones))
    return plans


def schedule_batch_work(plans: Mapping[str, Plan], config: ClusterConfig) -> dict[str, Plan]:
    """Cost-aware scheduling of batch work with a flexible start: an EMR cluster busy only in a window of the
    week (steps that could start later or earlier) whose YARN memory fits, hour by hour, in the headroom another
    always-on EMR cluster of the region leaves in those hours, runs its steps there and ends; the saving is the
    batch cluster less the host's extra workers in the window (what managed scaling on it would add, so the
    host's own sizing options are not counted twice). Advisory (``schedule_batch``): the executor moves no steps and
    ends no cluster; the row's api_calls say how."""
    emr = {k: p for k, p in plans.items() if p.analysis.resource_kind == EMR_CLUSTER and p.current_cost_usd}
    for key, plan in sorted(emr.items()):
        a = plan.analysis
        busy = sorted(h for h, b in a.by_hour_of_week.items() if b.get("idle") is False)
        need_gib = plan.details.get("yarn_memory_gib")
        if (
            _gate(a, config) is not None
            or not busy
            or a.idle_hours_per_day is None
            or a.idle_hours_per_day < config.emr_min_idle_hours_per_day
            or not need_gib
        ):
            continue
        apps = set(a.attributes.get("applications") or [])
        best: tuple[float, Plan, float] | None = None
        for host_key, host in sorted(emr.items()):
            h_a = host.analysis
            host_gib = host.details.get("yarn_memory_gib")
            if (
                host_key == key
                or h_a.region != a.region
                or _gate(h_a, config) is not None
                or not host_gib
                or h_a.protected
                or not apps <= set(h_a.attributes.get("applications") or [])
                or (h_a.idle_hours_per_day or 0) >= config.emr_min_idle_hours_per_day  # a host that stays up
            ):
                continue
            worst = 0.0
            for h in busy:
                mine = a.by_hour_of_week[h].get("yarn_mem_used_p95_pct")
                theirs = (h_a.by_hour_of_week.get(h) or {}).get("yarn_mem_used_p95_pct")
                if mine is None or theirs is None:
                    worst = math.inf
                    break
                worst = max(worst, (theirs / 100 * host_gib + mine / 100 * need_gib) / host_gib * 100)
            if worst <= config.target_mem_pct and (best is None or worst < best[0]):
                best = (worst, host, host_gib)
        if best is None:
            continue
        worst, host, host_gib = best
        # The host's extra workers in the window, as managed scaling would add them (so the host's own sizing
        # options, priced on its use without the batch, are not double counted): its mean node price.
        host_groups = [g for g in host.current.get("instance_groups") or [] if g.get("role") in ("CORE", "TASK")]
        workers = sum(int(g["count"]) for g in host_groups)
        nodes = sum(int(g["count"]) for g in host.current.get("instance_groups") or [])
        if not workers or not nodes or not host.current_cost_usd:
            continue
        node_hour = host.current_cost_usd / HOURS_PER_MONTH / nodes

        def need(used_gib: float, gib: float = host_gib, n: int = workers) -> int:
            return math.ceil(n * used_gib / (gib * config.target_mem_pct / 100) - 1e-9)

        extra_week = 0
        for h in busy:
            theirs = host.analysis.by_hour_of_week[h]["yarn_mem_used_p95_pct"] / 100 * host_gib
            mine = a.by_hour_of_week[h]["yarn_mem_used_p95_pct"] / 100 * need_gib
            extra_week += max(0, need(theirs + mine) - need(theirs))
        extra_month = round(extra_week * node_hour * HOURS_PER_MONTH / HOURS_OF_WEEK, 2)
        if extra_month >= (plan.current_cost_usd or 0) - 0.01:
            continue
        host_id = host.analysis.attributes.get("cluster_id") or host.analysis.resource_id
        own_id = a.attributes.get("cluster_id") or a.resource_id
        window = _window_text(busy)
        plan.options.append(
            Option(
                "consolidate_batch",
                "schedule_batch",
                extra_month,
                {
                    **plan.current,
                    "host_cluster_id": host_id,
                    "window": window,
                    "busy_hours_of_week": busy,
                    "host_yarn_memory_peak_pct": round(worst, 1),
                    "host_extra_node_hours_week": extra_week,
                    "advisory": True,
                    "api_calls": [
                        {
                            "service": "emr",
                            "operation": "AddJobFlowSteps",
                            "parameters": {"JobFlowId": host_id, "Steps": "<the steps of " + own_id + ">"},
                            "note": f"submit the batch cluster's steps to {host_id} in {window}",
                        },
                        {
                            "service": "emr",
                            "operation": "TerminateJobFlows",
                            "parameters": {"JobFlowIds": [own_id]},
                            "note": "once its steps run on the host",
                        },
                    ],
                },
                f"busy only {window} ({len(busy)} h a week); in those hours its YARN memory (p95) and "
                f"{host.analysis.name or host_id}'s together peak at {worst:.0f} % of {host_id}'s YARN memory "
                f"(target {config.target_mem_pct:.0f} %): its steps run there and it ends; the host's extra "
                f"{extra_week} node-hour(s) a week in the window are its cost; advisory, the executor moves no steps",
                risk=1.5,
                finding="over-provisioned",
                is_estimate=True,
                effort="High",
            )
        )
    return dict(plans)


def _similar_spot_types(catalog: Catalog, region: str, base: InstanceType, n: int) -> list[InstanceType]:
    """Up to ``n`` types with ``base``'s vCPUs, memory within 25 % and architecture, cheapest Spot first,
    ``base`` included when it has a Spot price."""
    similar = sorted(
        (
            t
            for t in catalog.region(region)
            if t.vcpu == base.vcpu
            and abs(t.memory_gib - base.memory_gib) <= base.memory_gib * 0.25
            and t.architecture == base.architecture
            and t.spot_usd_per_hour is not None
        ),
        key=lambda t: (t.spot_usd_per_hour or math.inf, t.instance_type),
    )[:n]
    if base.spot_usd_per_hour is not None and base not in similar:
        similar = [base, *similar[: n - 1]]
    return similar


def _ecs_ec2_spot(plan: Plan, services: Sequence[Plan], catalog: Catalog, config: ClusterConfig) -> None:
    """An EC2 Spot capacity provider for a cluster whose every EC2 service is spot-ready: the packed node
    count (or today's) on diversified Spot types behind an Auto Scaling group with a managed capacity provider."""
    a = plan.analysis
    ec2 = [s for s in services if s.current.get("launch_type") != "FARGATE"]
    if not ec2:
        return
    not_ready = []
    for s in ec2:
        ok, why = spot_eligible(s.analysis.tags)
        if not ok or (s.current.get("desired_count") or 0) < 2:
            not_ready.append(f"{s.current['service']}: {why if not ok else 'fewer than 2 tasks'}")
    if not_ready:
        plan.details["spot_ready"] = {"ready": False, "why": "; ".join(not_ready)}
        return
    sized = [o for o in plan.options if o.action == "resize_cluster" and o.monthly_cost_usd is not None]
    chosen = min(sized, key=lambda o: o.monthly_cost_usd or math.inf) if sized else None
    itype = chosen.proposed["instance_type"] if chosen else plan.current["instance_type"]
    count = int(chosen.proposed["count"] if chosen else plan.current["count"])
    if (a.region, itype) not in catalog or count < 2:
        return
    types = _similar_spot_types(catalog, a.region, catalog.get(a.region, itype), config.emr_spot_types)
    if not types:
        return
    monthly = round(count * sum(t.spot_usd_per_hour or 0 for t in types) / len(types) * HOURS_PER_MONTH, 2)
    if plan.current_cost_usd is None or monthly >= plan.current_cost_usd - 0.01:
        return
    name = f"{a.name or a.resource_id.rsplit('/', 1)[-1]}-spot"
    zones = sorted((chosen.proposed.get("zones") if chosen else plan.current.get("zones")) or {})
    subnets = sorted({n.attributes.get("subnet_id") for n in a.nodes if n.attributes.get("subnet_id")})
    strategy = [{"capacityProvider": name, "weight": 1}]
    plan.details["spot_ready"] = {"ready": True, "why": "every EC2 service is spot-ready"}
    plan.options.append(
        Option(
            "resize_cluster_spot",
            "resize_cluster",
            monthly,
            {
                "cluster": a.resource_id,
                "instance_type": itype,
                "count": count,
                "market": "spot",
                "spot_instance_types": [t.instance_type for t in types],
                "zones": _spread(count, zones) if zones else {},
                "api_calls": [
                    {
                        "service": "autoscaling",
                        "operation": "CreateAutoScalingGroup",
                        "parameters": {
                            "AutoScalingGroupName": name,
                            "MinSize": 0,
                            "MaxSize": count * 2,
                            "DesiredCapacity": count,
                            "VPCZoneIdentifier": ",".join(subnets) or None,
                            "AvailabilityZones": None if subnets else zones,
                            "NewInstancesProtectedFromScaleIn": True,
                            "MixedInstancesPolicy": {
                                "LaunchTemplate": {
                                    "LaunchTemplateSpecification": {"LaunchTemplateName": f"{name}-nodes"},
                                    "Overrides": [{"InstanceType": t.instance_type} for t in types],
                                },
                                "InstancesDistribution": {
                                    "OnDemandPercentageAboveBaseCapacity": 0,
                                    "SpotAllocationStrategy": "price-capacity-optimized",
                                },
                            },
                        },
                        "note": f"launch template {name}-nodes: the cluster's ECS-optimised AMI and user data",
                    },
                    {
                        "service": "ecs",
                        "operation": "CreateCapacityProvider",
                        "parameters": {
                            "name": name,
                            "autoScalingGroupProvider": {
                                "autoScalingGroupArn": name,
                                "managedScaling": {"status": "ENABLED", "targetCapacity": int(config.node_fill_pct)},
                                "managedTerminationProtection": "ENABLED",
                            },
                        },
                        "note": f"autoScalingGroupArn: the ARN of group {name} (DescribeAutoScalingGroups)",
                    },
                    {
                        "service": "ecs",
                        "operation": "PutClusterCapacityProviders",
                        "parameters": {
                            "cluster": a.resource_id,
                            "capacityProviders": [name],
                            "defaultCapacityProviderStrategy": strategy,
                        },
                    },
                    *(
                        _update_service(s.analysis, capacityProviderStrategy=strategy, forceNewDeployment=True)
                        for s in ec2
                    ),
                ],
            },
            f"every EC2 service is spot-ready (tag workload, at least 2 tasks): {count} node(s) on Spot over "
            f"{', '.join(t.instance_type for t in types)} behind a managed capacity provider; Spot prices are the "
            "catalogue's estimates",
            risk=1.5,
            market="spot",
            finding="spot",
            is_estimate=True,
            vcpu=float(count * catalog.get(a.region, itype).vcpu),
            memory_gib=float(count * catalog.get(a.region, itype).memory_gib),
            effort="High",
        )
    )


def _fargate_spot(plan: Plan, catalog: Catalog, config: ClusterConfig) -> None:
    a, cur = plan.analysis, plan.current
    if cur.get("launch_type") != "FARGATE" or cur.get("cpu") is None or not cur.get("desired_count"):
        return
    ok, why = spot_eligible(a.tags)
    count = int(cur["desired_count"])
    if not ok or count < 2:
        plan.details["spot_ready"] = {
            "ready": False,
            "why": why if not ok else "fewer than 2 tasks: an interruption stops it",
        }
        return
    strategy = [
        {"capacityProvider": "FARGATE", "base": 1, "weight": 1},
        {"capacityProvider": "FARGATE_SPOT", "weight": config.fargate_spot_weight},
    ]
    share = _spot_share(strategy, count)
    if share <= _spot_share(cur.get("capacity_provider_strategy"), count):
        return
    rates = fargate_rates(catalog, a.region)
    on, spot = rates.task_hour(cur["cpu"], cur["memory"]), rates.task_hour(cur["cpu"], cur["memory"], spot=True)
    monthly = round(count * ((1 - share) * on + share * spot) * HOURS_PER_MONTH, 2)
    plan.details["spot_ready"] = {"ready": True, "why": why}
    plan.options.append(
        Option(
            "fargate_spot",
            "ecs_update_service",
            monthly,
            {
                **cur,
                "capacity_provider_strategy": strategy,
                "api_calls": [_update_service(a, capacityProviderStrategy=strategy, forceNewDeployment=True)],
            },
            f"spot-ready ({why}), {count} tasks: one stays on FARGATE, the rest {config.fargate_spot_weight}:1 on "
            f"FARGATE_SPOT ({share:.0%} of tasks, Spot estimated at 70 % below on-demand)",
            risk=1.5,
            market="spot",
            finding="spot",
            is_estimate=True,
            vcpu=count * cur["cpu"] / 1024,
            memory_gib=count * cur["memory"] / 1024,
        )
    )


def _emr_spot(plan: Plan, catalog: Catalog, config: ClusterConfig) -> None:
    a, cur = plan.analysis, plan.current
    groups = cur.get("instance_groups") or []
    task = next((g for g in groups if g["role"] == "TASK"), None)
    core = next((g for g in groups if g["role"] == "CORE"), None)
    # Task nodes hold no HDFS data: Spot for them is the rule; core nodes only when configured.
    if task is not None and task["market"] != "SPOT":
        target = task
    elif config.emr_spot_core and core is not None and core["market"] != "SPOT":
        target = core
    else:
        return
    if not target.get("instance_type") or (a.region, target["instance_type"]) not in catalog:
        return
    base = catalog.get(a.region, target["instance_type"])
    similar = _similar_spot_types(catalog, a.region, base, config.emr_spot_types)
    if base.spot_usd_per_hour is None or not similar:
        return
    mean_spot = sum(t.spot_usd_per_hour or 0 for t in similar) / len(similar)
    delta = (base.ondemand_usd_per_hour - mean_spot) * target["count"] * HOURS_PER_MONTH
    if delta <= 0.01:
        return
    proposed_groups = [dict(g) for g in groups if g is not target] + [{**target, "market": "SPOT"}]
    fleet = {
        "InstanceFleetType": target["role"],
        "TargetSpotCapacity": target["count"],
        "InstanceTypeConfigs": [{"InstanceType": t.instance_type, "WeightedCapacity": 1} for t in similar],
        "LaunchSpecifications": {
            "SpotSpecification": {
                "AllocationStrategy": "capacity-optimized",
                "TimeoutDurationMinutes": 20,
                "TimeoutAction": "SWITCH_TO_ON_DEMAND",
            }
        },
    }
    cluster_id = a.attributes.get("cluster_id") or a.resource_id
    plan.options.append(
        Option(
            "task_nodes_spot",
            "emr_resize",
            round(plan.current_cost_usd - delta, 2),
            {
                **cur,
                "instance_groups": proposed_groups,
                "spot_instance_types": [t.instance_type for t in similar],
                "api_calls": [
                    {
                        "service": "emr",
                        "operation": "AddInstanceGroups",
                        "parameters": {
                            "JobFlowId": cluster_id,
                            "InstanceGroups": [
                                {
                                    "Name": f"{target['role'].lower()}-spot-{t.instance_type}",
                                    "InstanceRole": target["role"],
                                    "Market": "SPOT",
                                    "InstanceType": t.instance_type,
                                    "InstanceCount": n,
                                }
                                for t, n in zip(similar, _split_count(target["count"], len(similar)), strict=True)
                                if n
                            ],
                        },
                    },
                    {
                        "service": "emr",
                        "operation": "ModifyInstanceGroups",
                        "parameters": {
                            "ClusterId": cluster_id,
                            "InstanceGroups": [
                                {
                                    "InstanceGroupId": next(
                                        (
                                            g.get("id")
                                            for g in a.attributes.get("instance_groups") or []
                                            if g.get("role") == target["role"]
                                        ),
                                        None,
                                    ),
                                    "InstanceCount": 0,
                                }
                            ],
                        },
                    },
                ],
                "instance_fleet": fleet,
            },
            f"{target['count']} {target['role'].lower()} node(s) of {target['instance_type']} on Spot, "
            f"diversified over "
            f"{', '.join(t.instance_type for t in similar)} (same vCPU, memory within 25 %); primary"
            + (" stays" if config.emr_spot_core else " and core stay")
            + " on-demand; Spot prices are the catalogue's estimates",
            risk=1.5,
            market="spot",
            finding="spot",
            is_estimate=True,
            effort="Medium",
        )
    )


def _split_count(n: int, parts: int) -> list[int]:
    base, extra = divmod(n, parts)
    return [base + (1 if k < extra else 0) for k in range(parts)]


# -------------------------------------------------------------------------------------------- rows


def plan_rows(
    account_id: str, day: date, plans: Mapping[str, Plan], config: ClusterConfig, risk_setting: str = "balanced"
) -> pa.Table:
    """Every plan's options as ``RECOMMENDATIONS`` rows, ranked by monthly cost, ``is_best`` marked."""
    rows: list[dict[str, Any]] = []
    for key in sorted(plans):
        plan = plans[key]
        a = plan.analysis
        protected = a.protected
        allowed = [o for o in plan.options if o.monthly_cost_usd is not None and o.risk <= config.max_best_risk]
        if protected:
            best = KEEP
        elif plan.best is not None:
            best = plan.best
        elif not allowed:
            best = KEEP
        else:
            best = min(allowed, key=lambda o: (o.monthly_cost_usd, o.risk, o.name)).name
        ranked = sorted(
            plan.options, key=lambda o: (math.inf if o.monthly_cost_usd is None else o.monthly_cost_usd, o.name)
        )
        for rank, o in enumerate(ranked, start=1):
            current = plan.current_cost_usd
            saving = None if current is None or o.monthly_cost_usd is None else round(current - o.monthly_cost_usd, 2)
            rows.append(
                {
                    "account_id": account_id,
                    "date": day,
                    "resource_id": a.resource_id,
                    "resource_kind": a.resource_kind,
                    "deployment_type": a.deployment_type,
                    "region": a.region,
                    "zone": a.zone,
                    "option_name": o.name,
                    "action": o.action,
                    "rank": rank,
                    "is_best": o.name == best,
                    "finding": o.finding or plan.finding,
                    "current_config": json.dumps(plan.current, sort_keys=True, default=str),
                    "proposed_config": json.dumps(o.proposed, sort_keys=True, default=str),
                    "market": o.market,
                    "vcpu": o.vcpu,
                    "memory_gib": o.memory_gib,
                    "monthly_cost_current_usd": current,
                    "monthly_cost_proposed_usd": o.monthly_cost_usd,
                    "monthly_savings_usd": saving,
                    "savings_pct": round(100 * saving / current, 2)
                    if saving is not None and current
                    else 0.0
                    if saving is not None
                    else None,
                    "one_time_cost_usd": 0.0,
                    "performance_risk": o.risk,
                    "migration_effort": "VeryLow" if o.name == KEEP else o.effort,
                    "projected_cpu_pct": None,
                    "projected_memory_pct": None,
                    "confidence": plan.confidence,
                    "is_estimate": o.is_estimate,
                    "protected": protected,
                    "risk_setting": risk_setting,
                    "rationale": (
                        "protected (cloudopt:protect): shown, never applied; " if protected and o.name != KEEP else ""
                    )
                    + o.rationale,
                    "details": json.dumps(plan.details, sort_keys=True, default=str),
                }
            )
    if not rows:
        return RECOMMENDATIONS.empty_table()
    return pa.Table.from_pylist(rows, schema=RECOMMENDATIONS)


# ------------------------------------------------------------------------------------------ helpers


def _json_obj(value: Any) -> dict[str, Any]:
    if isinstance(value, Mapping):
        return dict(value)
    if not value:
        return {}
    try:
        parsed = json.loads(value)
    except (TypeError, json.JSONDecodeError):
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _round(value: Any, digits: int = 3) -> Any:
    if isinstance(value, float):
        return round(value, digits) if math.isfinite(value) else None
    return value


def _ceil_to(value: float, step: int) -> int:
    return int(math.ceil(value / step) * step)
