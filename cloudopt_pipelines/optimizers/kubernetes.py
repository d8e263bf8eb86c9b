"""The Kubernetes optimiser: container requests and limits, HPA targets, one row per option (pure code, no Dagster).

``KubernetesOptimizer(cluster_config).optimize_cluster()`` (the seed's names) gives one cluster's
recommendations; behind the shared interface (``recommendations/kubernetes``) :meth:`KubernetesOptimizer.recommend`
runs it for every cluster of the account. The rules, each with its default (``KubernetesSettings``;
docs/kubernetes.md, "Recommendations"):

- CPU request: a percentile of the busiest pod's 5-minute CPU from the VPA-style decaying histogram
  (``container_usage_histogram``: P90 by default, as VPA's target) plus a margin (15 %).
- Memory request: the highest daily peak of the busiest pod over the history window (8 days) plus a
  margin (15 %). After an OOM kill: max(x1.2, +100 MiB) of the peak (or of the limit it hit), and no
  memory cut while an OOM is recent (7 days).
- Minimums per pod (25 millicores, 250 MiB), spread over the containers in proportion, as VPA.
- Throttling (the window's daily P95 of throttled CFS periods at or over 10 %) raises CPU: never a cut,
  and at least the window's P99.
- Limits: CPU limit removed, memory limit = memory request (configurable); the QoS class is shown and a
  Guaranteed workload stays Guaranteed (limits = requests) unless ``keep_guaranteed`` is off.
- HPA on CPU utilisation: requests and target together. Under such an HPA the requested CPU is about
  total usage / target whatever the request, so the CPU request is not cut and the saving comes from
  the target: target = mean per pod / the busiest pod's P95, clamped to 30-75 %; min replicas from the
  replica history (never above today's, never under 2 when today's is 2 or more), max replicas at least
  today's and what the peak needs.
  HPA on memory: no memory cut. HPA on a custom, external or absolute-value metric: requests sized per
  pod, the HPA left as it is (its replicas do not follow requests), with the reason.
- A change under ``min_change_pct`` (10 %) of both requests, or worth less than ``min_monthly_saving_usd``
  ($1), is left as it is: only the keep option, so a well-sized workload is not churned.
- No cut on less than ``min_history_hours`` (24 h: one daily cycle) of samples, or when the last sample is older than
  ``max_staleness_hours`` (24 h) at the end of the day; increases (OOM, throttling, BestEffort) still go.
- Savings: requests x mean running pods x the cluster's cost per core-hour and GiB-hour, from its nodes'
  EC2 prices (spot or on-demand as each node is), split between CPU and memory by a cost ratio.

Bad input never fails the cluster: a BestEffort container gets requests (a cost, with the reason), a
container without usage is kept, a rollout mid-window (requests changed) lowers the confidence, a node
type missing from the catalogue is left out of the rate (all missing: the rows are unpriced, with the
reason), a namespace without labels is noted.

Node pools: :func:`node_pool_rows` packs each workload's recommended requests (its best option) with
``optimizers.kubernetes_nodes.recommend_node_pools``; the ``nodepool_*`` settings are its knobs. A
node-pool row claims only the saving beyond its workloads' best options, so the plan counts none twice.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, ClassVar, Literal

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, Field, field_validator

from cloudopt_pipelines.optimizers.base import DeploymentOptimizer, FeatureInput, OptimizerInputs, Recommendations
from cloudopt_pipelines.optimizers.kubernetes_nodes import NodePoolInputError, NodePoolSettings, recommend_node_pools
from cloudopt_pipelines.optimizers.portfolio import Candidate, candidates_from_recommendations
from cloudopt_pipelines.optimizers.sizing import Catalog
from cloudopt_pipelines.storage.schemas import RECOMMENDATIONS
from cloudopt_pipelines.vocabulary import K8S_NODE, K8S_NODEPOOL, K8S_WORKLOAD, KUBERNETES

HOURS_PER_MONTH = 730.0
MIB = 1024.0 * 1024.0
GIB = 1024.0 * MIB
K8S_HPA = "k8s_hpa"
KEEP, RESIZE, TUNE_HPA = "keep", "resize_requests", "tune_hpa"
# Kinds whose pod template can be patched, and where in the object the template is.
TEMPLATE_PATH: dict[str, tuple[str, ...]] = {
    "deployment": ("spec", "template"),
    "statefulset": ("spec", "template"),
    "daemonset": ("spec", "template"),
    "cronjob": ("spec", "jobTemplate", "spec", "template"),
}
KIND_NAMES = {
    "deployment": "Deployment",
    "statefulset": "StatefulSet",
    "daemonset": "DaemonSet",
    "cronjob": "CronJob",
    "job": "Job",
    "jobgroup": "JobGroup",
    "pod": "Pod",
}
BATCH_KINDS = ("cronjob", "job", "jobgroup")
PROTECT_LABEL = "cloudopt.io/protect"


class KubernetesSettings(BaseModel):
    """Settings of the Kubernetes optimiser; the asset's run configuration is derived from this model
    (docs/kubernetes.md, "Recommendations", lists every one)."""

    cpu_percentile: int = Field(
        default=90,
        description="Percentile of the busiest pod's CPU the request covers: 50, 90 or 95 (VPA's lower/target/upper).",
    )
    cpu_margin_pct: float = Field(default=15.0, ge=0, le=400, description="Margin added to the CPU percentile, %.")
    memory_margin_pct: float = Field(default=15.0, ge=0, le=400, description="Margin added to the memory peak, %.")
    cpu_margin_millicores: float = Field(
        default=0.0, ge=0, description="Margin added to the CPU percentile on top of the %, millicores per container."
    )
    memory_margin_mib: float = Field(
        default=0.0, ge=0, description="Margin added to the memory peak on top of the %, MiB per container."
    )
    history_days: int = Field(
        default=8, ge=1, le=14, description="Days of daily memory peaks (and replica history) the window covers."
    )
    oom_bump_ratio: float = Field(default=1.2, ge=1, description="After an OOM kill: at least this x the peak.")
    oom_bump_mib: float = Field(default=100.0, ge=0, description="After an OOM kill: at least the peak + this MiB.")
    oom_recent_days: int = Field(default=7, ge=0, description="No memory cut while an OOM kill is this recent (days).")
    min_cpu_millicores: float = Field(default=25.0, ge=0, description="Smallest CPU request of a pod (millicores).")
    min_memory_mib: float = Field(default=250.0, ge=0, description="Smallest memory request of a pod (MiB).")
    throttling_ratio: float = Field(
        default=0.10, gt=0, le=1, description="Daily P95 of throttled CFS periods from which CPU is raised."
    )
    cpu_limit_policy: Literal["none", "keep", "ratio"] = Field(
        default="none", description="none: no CPU limit; keep: today's (raised to the request); ratio: request x ratio."
    )
    cpu_limit_ratio: float = Field(default=2.0, ge=1, description="CPU limit / request with cpu_limit_policy=ratio.")
    memory_limit_policy: Literal["equal_request", "keep", "ratio", "none"] = Field(
        default="equal_request",
        description="equal_request: limit = request; keep: today's (raised to the request); ratio; none: removed.",
    )
    memory_limit_ratio: float = Field(default=1.5, ge=1, description="Memory limit / request with policy ratio.")
    keep_guaranteed: bool = Field(default=True, description="A Guaranteed workload keeps limits = requests.")
    hpa_target_min_pct: float = Field(default=30.0, ge=1, le=100, description="Lowest HPA CPU target recommended, %.")
    hpa_target_max_pct: float = Field(default=75.0, ge=1, le=100, description="Highest HPA CPU target recommended, %.")
    hpa_min_target_change_pct: float = Field(
        default=5.0, ge=0, description="An HPA target moved by fewer points than this is left as it is."
    )
    min_change_pct: float = Field(
        default=10.0, ge=0, description="A request change under this % (CPU and memory alike) is left as it is."
    )
    min_monthly_saving_usd: float = Field(
        default=1.0, ge=0, description="A cut saving less than this a month is left as it is (increases still go)."
    )
    min_history_hours: float = Field(
        default=24.0, ge=0, description="No cut on fewer hours of usage samples (one daily cycle by default)."
    )
    full_confidence_days: int = Field(default=7, ge=1, description="Days of data for full confidence.")
    max_staleness_hours: float = Field(
        default=24.0, ge=0, description="No cut when the last sample is older than this at the end of the day."
    )
    cpu_to_memory_cost_ratio: float = Field(
        default=7.5, gt=0, description="Price of a vCPU-hour / a GiB-hour when a node's price is split (Kubecost-like)."
    )
    protected_namespaces: list[str] = Field(
        default=["kube-system", "kube-public", "kube-node-lease"], description="Namespaces never changed."
    )
    kube_contexts: dict[str, str] = Field(
        default={}, description="kubectl context of each cluster in the printed commands (default: the cluster name)."
    )
    max_best_risk: float = Field(default=2.0, ge=0, description="Highest risk an option may have to be the best one.")
    node_pools: bool = Field(
        default=True, description="Recommend node pools too (bin packing of the recommended requests)."
    )
    nodepool_families: list[str] | None = Field(
        default=None, description="Instance families a node pool may move to (none: the pool's and c/m/r)."
    )
    nodepool_min_node_vcpu: int = Field(default=2, ge=1, description="Smallest node type considered (vCPUs).")
    nodepool_max_node_vcpu: int = Field(default=64, ge=1, description="Largest node type considered (vCPUs).")
    nodepool_allow_burstable: bool = Field(
        default=False, description="Admit t-types to a pool that does not run them already."
    )
    nodepool_zone_spread: bool = Field(
        default=True, description="Spread each workload over the pool's zones and pack the zones apart."
    )
    nodepool_min_spot_types: int = Field(default=15, ge=1, description="Instance types a spot fleet is spread over.")
    nodepool_max_spot_band: int = Field(
        default=3, ge=0, le=4, description="Highest Spot Advisor band admitted (0 '<5%' ... 4 '>20%')."
    )
    nodepool_max_risk: float = Field(default=0.6, ge=0, description="Riskiest node-pool option that may be best.")
    nodepool_min_monthly_savings_usd: float = Field(
        default=10.0, ge=0, description="Least monthly saving for a node-pool resize to be best."
    )
    nodepool_min_savings_pct: float = Field(
        default=5.0, ge=0, description="Least saving, % of today's node cost, for a node-pool resize to be best."
    )
    nodepool_milp_time_limit_s: float = Field(default=3.0, gt=0, description="HiGHS time limit of one packing (s).")
    nodepool_milp_time_budget_s: float = Field(
        default=10.0, ge=0, description="Seconds all the MILPs of one cluster may take together."
    )
    nodepool_max_nodes_headroom_pct: float = Field(
        default=20.0, ge=0, description="Headroom on the max_nodes hint for the autoscaler, %."
    )

    @field_validator("cpu_percentile")
    @classmethod
    def _percentile(cls, value: int) -> int:
        if value not in (50, 90, 95):
            raise ValueError(f"cpu_percentile must be 50, 90 or 95 (the histogram's bounds), got {value}")
        return value

    def node_pool_settings(self) -> NodePoolSettings:
        """The ``nodepool_*`` settings as the node-pool optimiser's ``NodePoolSettings`` (the rest default)."""
        return NodePoolSettings(
            families=tuple(self.nodepool_families) if self.nodepool_families else None,
            min_node_vcpu=self.nodepool_min_node_vcpu,
            max_node_vcpu=self.nodepool_max_node_vcpu,
            allow_burstable=self.nodepool_allow_burstable,
            zone_spread=self.nodepool_zone_spread,
            min_spot_types=self.nodepool_min_spot_types,
            max_spot_band=self.nodepool_max_spot_band,
            max_risk=self.nodepool_max_risk,
            min_monthly_savings_usd=self.nodepool_min_monthly_savings_usd,
            min_savings_pct=self.nodepool_min_savings_pct,
            milp_time_limit_s=self.nodepool_milp_time_limit_s,
            milp_time_budget_s=self.nodepool_milp_time_budget_s,
            max_nodes_headroom_pct=self.nodepool_max_nodes_headroom_pct,
        )


# ---------------------------------------------------------------------------------------------------
# inputs


@dataclass(frozen=True)
class ContainerSpec:
    name: str
    cpu_request: float | None
    cpu_limit: float | None
    mem_request: float | None
    mem_limit: float | None


@dataclass
class Workload:
    cluster: str
    namespace: str
    kind: str
    name: str
    resource_id: str
    replicas: int | None
    qos: str | None
    containers: list[ContainerSpec]
    labels: dict[str, str]
    attributes: dict[str, Any]


@dataclass(frozen=True)
class Hpa:
    name: str
    namespace: str
    resource_id: str
    target_id: str
    min_replicas: int
    max_replicas: int
    metrics: list[dict[str, Any]]

    def utilization_target(self, resource: str) -> float | None:
        """The ``averageUtilization`` of the HPA's ``Resource`` metric on ``resource`` (cpu, memory), if any."""
        for m in self.metrics:
            res = m.get("resource") or {}
            target = res.get("target") or {}
            if m.get("type") == "Resource" and res.get("name") == resource and target.get("type") == "Utilization":
                return float(target.get("averageUtilization") or 0) or None
        return None

    def cpu_utilization_target(self) -> float | None:
        return self.utilization_target("cpu")

    def memory_utilization_target(self) -> float | None:
        return self.utilization_target("memory")

    def targets(self) -> dict[str, float | None]:
        """Today's utilisation targets by resource (``cpu`` always named, ``memory`` when the HPA has one)."""
        out: dict[str, float | None] = {"cpu": self.cpu_utilization_target()}
        if (mem := self.memory_utilization_target()) is not None:
            out["memory"] = mem
        return out

    def other_metrics(self) -> list[str]:
        """Metrics whose replicas do not follow the requests: custom, external, absolute values."""
        out = []
        for m in self.metrics:
            kind = m.get("type", "?")
            if kind == "Resource":
                res = m.get("resource") or {}
                if res.get("name") in ("cpu", "memory") and (res.get("target") or {}).get("type") == "Utilization":
                    continue
                out.append(f"{res.get('name', '?')} {(res.get('target') or {}).get('type', '?')}")
            else:
                spec = m.get(kind[:1].lower() + kind[1:]) or {}
                name = (spec.get("metric") or {}).get("name") or "?"
                out.append(f"{kind} metric {name!r}")
        return out

    def scales_on_memory(self) -> bool:
        return any(
            m.get("type") == "Resource" and (m.get("resource") or {}).get("name") == "memory" for m in self.metrics
        )


@dataclass
class ContainerUsage:
    """One container's usage over the window, from the feature tables."""

    days: int = 0
    samples: int = 0
    first_ts: datetime | None = None
    last_ts: datetime | None = None
    cpu_histogram: dict[int, float] = field(default_factory=dict)
    cpu_p90_daily_max: float | None = None
    cpu_p95_daily_max: float | None = None
    cpu_p99_daily_max: float | None = None
    cpu_max: float | None = None
    cpu_mean_per_pod: float | None = None
    mem_peak: float | None = None
    mem_mean_per_pod: float | None = None
    oom_kills: int = 0
    last_oom_day: date | None = None
    throttled_p95_max: float | None = None
    pod_slots: float = 0.0
    replicas_min: int | None = None
    replicas_max: int | None = None
    requests_seen: set[tuple[float | None, float | None]] = field(default_factory=set)
    restarts: int = 0

    @property
    def history_hours(self) -> float:
        return self.samples * 5 / 60


@dataclass(frozen=True)
class NodeRates:
    """The cluster's cost per allocatable core-hour and GiB-hour, from its priced nodes."""

    cpu_usd_per_core_hour: float
    mem_usd_per_gib_hour: float
    priced_nodes: int
    is_estimate: bool
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class ClusterInput:
    """Everything one cluster's recommendation reads (the seed's ``cluster_config``)."""

    account_id: str
    day: date
    cluster: str
    workloads: pa.Table
    usage_daily: pa.Table
    histogram: pa.Table
    catalog: Catalog | None
    days_found: tuple[date, ...] = ()
    inventory: pa.Table | None = None
    settings: KubernetesSettings = field(default_factory=KubernetesSettings)
    node_usage: pa.Table | None = None  # k8s_container_usage rows (scope 'node' ones find under-used nodes)


def _rows(table: pa.Table | None, cluster: str | None = None) -> list[dict[str, Any]]:
    if table is None or table.num_rows == 0 or "container" not in table.column_names:
        return []
    if cluster is not None and "cluster" in table.column_names:
        table = table.filter(pc.fill_null(pc.equal(table["cluster"], cluster), False))
    return table.to_pylist()


def _json_obj(text: str | None) -> Any:
    try:
        return json.loads(text) if text else {}
    except (TypeError, ValueError):
        return {}


def read_workloads(rows: list[dict[str, Any]]) -> tuple[dict[str, Workload], dict[str, Hpa], list[dict], dict]:
    """Workloads (with their containers), HPAs by target, node rows and namespaces' labels of one snapshot."""
    workloads: dict[str, Workload] = {}
    hpas: dict[str, Hpa] = {}
    nodes, namespaces = [], {}
    for r in rows:
        kind = r["object_kind"]
        if kind == "node":
            nodes.append(r)
        elif kind == "namespace":
            namespaces[r["name"]] = _json_obj(r.get("labels"))
        elif kind == "hpa":
            hpa = Hpa(
                name=r["name"],
                namespace=r["namespace"],
                resource_id=r["resource_id"],
                target_id=r["target_id"],
                min_replicas=int(r["min_replicas"] or 1),
                max_replicas=int(r["max_replicas"] or r["min_replicas"] or 1),
                metrics=_json_obj(r.get("metrics")) or [],
            )
            hpas[hpa.target_id] = hpa
        elif kind in KIND_NAMES and r.get("container"):
            wl = workloads.setdefault(
                r["resource_id"],
                Workload(
                    cluster=r["cluster"],
                    namespace=r["namespace"],
                    kind=kind,
                    name=r["name"],
                    resource_id=r["resource_id"],
                    replicas=r["replicas"],
                    qos=r["qos_class"],
                    containers=[],
                    labels=_json_obj(r.get("labels")),
                    attributes=_json_obj(r.get("attributes")),
                ),
            )
            wl.containers.append(
                ContainerSpec(
                    r["container"],
                    r["cpu_request_cores"],
                    r["cpu_limit_cores"],
                    r["mem_request_bytes"],
                    r["mem_limit_bytes"],
                )
            )
    return workloads, hpas, nodes, namespaces


def read_usage(
    daily: list[dict[str, Any]], histogram: list[dict[str, Any]], day: date, history_days: int
) -> dict[tuple[str, str], ContainerUsage]:
    """Per (workload, container): the window's usage (days within ``history_days`` ending with ``day``)."""
    start = day - timedelta(days=history_days - 1)
    out: dict[tuple[str, str], ContainerUsage] = defaultdict(ContainerUsage)
    mean_num: dict[tuple[str, str], float] = defaultdict(float)
    mean_den: dict[tuple[str, str], float] = defaultdict(float)
    mem_num: dict[tuple[str, str], float] = defaultdict(float)
    mem_den: dict[tuple[str, str], float] = defaultdict(float)

    def top(a: float | None, b: float | None) -> float | None:
        return b if a is None else a if b is None else max(a, b)

    for r in daily:
        d = r["date"]
        if not (start <= d <= day):
            continue
        key = (r["resource_id"], r["container"])
        u = out[key]
        u.days += 1
        u.samples += int(r["samples"] or 0)
        u.first_ts = r["first_ts"] if u.first_ts is None else min(u.first_ts, r["first_ts"])
        u.last_ts = r["last_ts"] if u.last_ts is None else max(u.last_ts, r["last_ts"])
        u.cpu_p90_daily_max = top(u.cpu_p90_daily_max, r["cpu_p90_cores"])
        u.cpu_p95_daily_max = top(u.cpu_p95_daily_max, r["cpu_p95_cores"])
        u.cpu_p99_daily_max = top(u.cpu_p99_daily_max, r["cpu_p99_cores"])
        u.cpu_max = top(u.cpu_max, r["cpu_max_cores"])
        u.mem_peak = top(u.mem_peak, r["mem_peak_bytes"])
        u.throttled_p95_max = top(u.throttled_p95_max, r["throttled_p95_ratio"])
        if r["oom_kills"]:
            u.oom_kills += int(r["oom_kills"])
            u.last_oom_day = d if u.last_oom_day is None else max(u.last_oom_day, d)
        u.restarts += int(r["restarts"] or 0)
        pods = float(r["replicas_mean"] or 0) * int(r["samples"] or 0)
        u.pod_slots += pods
        if r["cpu_mean_cores"] is not None:
            mean_num[key] += r["cpu_mean_cores"] * pods
            mean_den[key] += pods
        if r.get("mem_mean_bytes") is not None:
            mem_num[key] += r["mem_mean_bytes"] * pods
            mem_den[key] += pods
        for attr, value, pick in (("replicas_min", r["replicas_min"], min), ("replicas_max", r["replicas_max"], max)):
            if value is not None:
                seen = getattr(u, attr)
                setattr(u, attr, value if seen is None else pick(seen, value))
        u.requests_seen.add((r["cpu_request_cores"], r["mem_request_bytes"]))
    for key, num in mean_num.items():
        if mean_den[key] > 0:
            out[key].cpu_mean_per_pod = num / mean_den[key]
    for key, num in mem_num.items():
        if mem_den[key] > 0:
            out[key].mem_mean_per_pod = num / mem_den[key]
    for r in histogram:
        key = (r["resource_id"], r["container"])
        if key in out:
            out[key].cpu_histogram = {
                p: r[c]
                for p, c in ((50, "cpu_lower_cores"), (90, "cpu_target_cores"), (95, "cpu_upper_cores"))
                if r.get(c) is not None
            }
    return dict(out)


def region_of(zone: str | None) -> str | None:
    """``us-east-1a`` -> ``us-east-1`` (the zone's region: its name without the trailing letter)."""
    if not zone:
        return None
    return zone[:-1] if zone[-1].isalpha() else zone


def node_rates(
    nodes: list[dict[str, Any]], catalog: Catalog | None, settings: KubernetesSettings, regions: Mapping[str, str]
) -> tuple[NodeRates | None, list[str]]:
    """The cluster's cost per core-hour and GiB-hour: each priced node's hourly price (spot when its capacity
    type is spot) split into CPU and memory by ``cpu_to_memory_cost_ratio``, over the allocatable cores and GiB
    of those nodes. Nodes whose type is not in the catalogue are left out and named."""
    notes: list[str] = []
    cpu_usd = mem_usd = cores = gib = 0.0
    priced, estimate = 0, False
    for n in nodes:
        itype, name = n.get("instance_type"), n.get("name")
        region = regions.get(n["resource_id"]) or region_of(n.get("zone"))
        if catalog is None or not itype or not region or (region, itype) not in catalog:
            notes.append(
                f"node {name}: instance type {itype or 'unknown'} in {region or 'unknown region'} is not in the price "
                "catalogue (refresh it with the refresh_price_catalog job); left out of the cluster's rates"
            )
            continue
        t = catalog.get(region, itype)
        spot = (n.get("capacity_type") or "").lower() == "spot"
        price = t.spot_usd_per_hour if spot and t.spot_usd_per_hour is not None else t.ondemand_usd_per_hour
        estimate = estimate or (t.spot_is_estimate if spot else t.is_estimate)
        if spot and t.spot_usd_per_hour is None:
            notes.append(f"node {name}: no spot price for {itype}; priced on demand")
        alloc_cores = n.get("allocatable_cpu_cores") or float(t.vcpu)
        alloc_gib = (n.get("allocatable_mem_bytes") or t.memory_gib * GIB) / GIB
        weight = settings.cpu_to_memory_cost_ratio * t.vcpu
        cpu_share = weight / (weight + t.memory_gib)
        cpu_usd += price * cpu_share
        mem_usd += price * (1 - cpu_share)
        cores += alloc_cores
        gib += alloc_gib
        priced += 1
    if priced == 0 or cores <= 0 or gib <= 0:
        return None, notes
    return NodeRates(cpu_usd / cores, mem_usd / gib, priced, estimate, tuple(notes)), notes


# ---------------------------------------------------------------------------------------------------
# sizing


def cpu_quantity(cores: float | None) -> str | None:
    return None if cores is None else f"{max(1, math.ceil(cores * 1000 - 1e-6))}m"


def mem_quantity(nbytes: float | None) -> str | None:
    return None if nbytes is None else f"{max(1, math.ceil(nbytes / MIB - 1e-6))}Mi"


def _cores(q: str | None) -> float | None:
    return None if q is None else int(q[:-1]) / 1000


def _bytes(q: str | None) -> float | None:
    return None if q is None else int(q[:-2]) * MIB


def qos_class(containers: Iterable[tuple[float | None, float | None, float | None, float | None]]) -> str:
    """The pod's QoS class from (cpu request, cpu limit, memory request, memory limit) of each container
    (a limit without a request defaults the request to the limit, as the API server does)."""
    items = list(containers)
    if all(v is None for c in items for v in c):
        return "BestEffort"
    guaranteed = all(
        cl is not None and ml is not None and (cr is None or cr == cl) and (mr is None or mr == ml)
        for cr, cl, mr, ml in items
    )
    return "Guaranteed" if guaranteed else "Burstable"


@dataclass
class ContainerPlan:
    """One container: today's and the proposed requests and limits, and why."""

    spec: ContainerSpec
    cpu_request: float | None
    mem_request: float | None
    cpu_limit: float | None
    mem_limit: float | None
    cpu_limit_set: bool  # the patch names the CPU limit (a value, or null: removed)
    mem_limit_set: bool
    reasons: list[str] = field(default_factory=list)
    blocked_cut: list[str] = field(default_factory=list)


def size_container(
    spec: ContainerSpec,
    usage: ContainerUsage | None,
    s: KubernetesSettings,
    day: date,
    guaranteed: bool,
    memory_hpa: bool,
    cpu_hpa: bool = False,
) -> ContainerPlan:
    """The proposed requests and limits of one container (before the per-pod minimums)."""
    reasons: list[str] = []
    blocked: list[str] = []
    if usage is None or usage.samples == 0:
        return ContainerPlan(
            spec,
            spec.cpu_request,
            spec.mem_request,
            spec.cpu_limit,
            spec.mem_limit,
            False,
            False,
            [f"container {spec.name}: no usage samples in the window; left as it is"],
            ["no usage"],
        )
    cpu_base = usage.cpu_histogram.get(s.cpu_percentile)
    if cpu_base is None:
        cpu_base = usage.cpu_p90_daily_max
        reasons.append(f"container {spec.name}: no histogram row, the highest daily P90 used")
    # an absolute margin besides the relative one: small pods' spikes are large next to their usage
    cpu = None if cpu_base is None else cpu_base * (1 + s.cpu_margin_pct / 100) + s.cpu_margin_millicores / 1000
    throttled = usage.throttled_p95_max is not None and usage.throttled_p95_max >= s.throttling_ratio
    if throttled and cpu is not None:
        floor = max(spec.cpu_request or 0.0, usage.cpu_p99_daily_max or 0.0)
        if floor > cpu:
            cpu = floor
        reasons.append(
            f"container {spec.name}: throttled (daily P95 {usage.throttled_p95_max:.0%} of CFS periods): CPU not cut, "
            "at least the window's P99"
        )
    mem = None
    if usage.mem_peak is not None:
        mem = usage.mem_peak * (1 + s.memory_margin_pct / 100) + s.memory_margin_mib * MIB
    if usage.oom_kills and mem is not None:
        hit = max(usage.mem_peak or 0.0, spec.mem_limit or 0.0)
        bumped = max(hit * s.oom_bump_ratio, hit + s.oom_bump_mib * MIB)
        mem = max(mem, bumped)
        reasons.append(
            f"container {spec.name}: {usage.oom_kills} OOM kill(s) (last {usage.last_oom_day}): memory bumped to "
            f"max(x{s.oom_bump_ratio:g}, +{s.oom_bump_mib:g} MiB) of {hit / MIB:.0f} MiB"
        )
    if usage.last_oom_day is not None and (day - usage.last_oom_day).days < s.oom_recent_days:
        if spec.mem_request is not None and mem is not None and mem < spec.mem_request:
            mem = spec.mem_request
            blocked.append("memory: OOM kill recent")
    if memory_hpa and spec.mem_request is not None and mem is not None and mem < spec.mem_request:
        mem = spec.mem_request
        blocked.append("memory: the HPA scales on memory (a cut only adds replicas; its target carries the saving)")
    if cpu_hpa and spec.cpu_request is not None and cpu is not None and cpu < spec.cpu_request:
        cpu = spec.cpu_request
        blocked.append(
            "CPU: the HPA scales on CPU utilisation (a cut only adds replicas; its target carries the saving)"
        )
    if cpu is None:
        cpu = spec.cpu_request
    if mem is None:
        mem = spec.mem_request
    return _limits(ContainerPlan(spec, cpu, mem, None, None, False, False, reasons, blocked), s, guaranteed)


def _limits(p: ContainerPlan, s: KubernetesSettings, guaranteed: bool) -> ContainerPlan:
    spec = p.spec
    if guaranteed and s.keep_guaranteed:
        p.cpu_limit, p.mem_limit, p.cpu_limit_set, p.mem_limit_set = p.cpu_request, p.mem_request, True, True
        return p
    if s.cpu_limit_policy == "none":
        p.cpu_limit, p.cpu_limit_set = None, spec.cpu_limit is not None
    elif s.cpu_limit_policy == "ratio":
        p.cpu_limit, p.cpu_limit_set = (None if p.cpu_request is None else p.cpu_request * s.cpu_limit_ratio), True
    else:
        p.cpu_limit = spec.cpu_limit
        if spec.cpu_limit is not None and p.cpu_request is not None and spec.cpu_limit < p.cpu_request:
            p.cpu_limit, p.cpu_limit_set = p.cpu_request, True
    if s.memory_limit_policy == "equal_request":
        p.mem_limit, p.mem_limit_set = p.mem_request, True
    elif s.memory_limit_policy == "ratio":
        p.mem_limit, p.mem_limit_set = (None if p.mem_request is None else p.mem_request * s.memory_limit_ratio), True
    elif s.memory_limit_policy == "none":
        p.mem_limit, p.mem_limit_set = None, spec.mem_limit is not None
    else:
        p.mem_limit = spec.mem_limit
        if spec.mem_limit is not None and p.mem_request is not None and spec.mem_limit < p.mem_request:
            p.mem_limit, p.mem_limit_set = p.mem_request, True
    return p


def apply_pod_minimums(plans: list[ContainerPlan], s: KubernetesSettings) -> list[str]:
    """Raise the pod's requests to the per-pod minimums, spread over its containers in proportion (VPA)."""
    notes = []
    for attr, minimum, unit in (
        ("cpu_request", s.min_cpu_millicores / 1000, "millicores"),
        ("mem_request", s.min_memory_mib * MIB, "MiB"),
    ):
        total = sum(getattr(p, attr) or 0.0 for p in plans)
        if 0 < total < minimum:
            factor = minimum / total
            for p in plans:
                if getattr(p, attr) is not None:
                    setattr(p, attr, getattr(p, attr) * factor)
            shown = s.min_cpu_millicores if unit == "millicores" else s.min_memory_mib
            notes.append(f"pod minimum {shown:g} {unit} applied")
        elif total == 0 and plans:
            for p in plans:
                setattr(p, attr, minimum / len(plans))
            notes.append(f"no usage-based {attr.replace('_', ' ')}: the pod minimum")
    return notes


def _round(plans: list[ContainerPlan], s: KubernetesSettings, guaranteed: bool) -> None:
    """Requests and limits as the quantities the patch writes (whole millicores and MiB, rounded up)."""
    for p in plans:
        p.cpu_request = _cores(cpu_quantity(p.cpu_request))
        p.mem_request = _bytes(mem_quantity(p.mem_request))
        _limits(p, s, guaranteed)
        p.cpu_limit = _cores(cpu_quantity(p.cpu_limit))
        p.mem_limit = _bytes(mem_quantity(p.mem_limit))


# ---------------------------------------------------------------------------------------------------
# the recommendation of one workload


@dataclass
class WorkloadRecommendation:
    workload: Workload
    rows: list[dict[str, Any]]
    notes: list[str]


def _container_config(values: Iterable[tuple[str, float | None, float | None, float | None, float | None]]) -> dict:
    out = {}
    for name, cr, mr, cl, ml in values:
        requests = {k: v for k, v in (("cpu", cpu_quantity(cr)), ("memory", mem_quantity(mr))) if v is not None}
        limits = {k: v for k, v in (("cpu", cpu_quantity(cl)), ("memory", mem_quantity(ml))) if v is not None}
        out[name] = {"requests": requests, "limits": limits}
    return out


def workload_patch(kind: str, plans: list[ContainerPlan]) -> dict[str, Any] | None:
    """The strategic merge patch of the workload's pod template: containers by name, a limit set to null is
    removed, a limit not named is unchanged. None for kinds whose template cannot be patched."""
    path = TEMPLATE_PATH.get(kind)
    if path is None:
        return None
    containers = []
    for p in plans:
        requests = {"cpu": cpu_quantity(p.cpu_request), "memory": mem_quantity(p.mem_request)}
        limits: dict[str, str | None] = {}
        if p.cpu_limit_set:
            limits["cpu"] = cpu_quantity(p.cpu_limit)
        if p.mem_limit_set:
            limits["memory"] = mem_quantity(p.mem_limit)
        resources: dict[str, Any] = {"requests": {k: v for k, v in requests.items() if v is not None}}
        if limits:
            resources["limits"] = limits
        containers.append({"name": p.spec.name, "resources": resources})
    body: dict[str, Any] = {"spec": {"containers": containers}}
    for key in reversed(path):
        body = {key: body}
    return body


def kubectl_command(context: str, namespace: str, kind: str, name: str, patch: dict, patch_type: str) -> str:
    text = json.dumps(patch, separators=(",", ":"), sort_keys=True).replace("'", "'\\''")
    return f"kubectl --context {context} -n {namespace} patch {kind} {name} --type {patch_type} -p '{text}'"


class WorkloadSizer:
    """The options of one workload (keep, and a resize when the rules allow one)."""

    def __init__(self, ci: ClusterInput, rates: NodeRates | None, rate_notes: list[str]) -> None:
        self.ci, self.s, self.rates, self.rate_notes = ci, ci.settings, rates, rate_notes
        self.day_end = datetime.combine(ci.day + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
        self.days_in_window = max(
            1, len([d for d in ci.days_found if d > ci.day - timedelta(days=ci.settings.history_days)]) or 1
        )

    def cost(self, per_pod: list[tuple[float | None, float | None]], pods: float) -> float | None:
        """Monthly cost of ``pods`` mean running pods with these (cpu, memory) requests per container."""
        if self.rates is None:
            return None
        cores = sum(c or 0.0 for c, _ in per_pod)
        gib = sum(m or 0.0 for _, m in per_pod) / GIB
        hourly = pods * (cores * self.rates.cpu_usd_per_core_hour + gib * self.rates.mem_usd_per_gib_hour)
        return round(hourly * HOURS_PER_MONTH, 4)

    def recommend(
        self, wl: Workload, usage: Mapping[tuple[str, str], ContainerUsage], hpa: Hpa | None, ns_labels: dict | None
    ) -> WorkloadRecommendation:
        s, ci = self.s, self.ci
        usages = {c.name: usage.get((wl.resource_id, c.name)) for c in wl.containers}
        notes: list[str] = list(self.rate_notes)
        reasons: list[str] = []
        current_qos = wl.qos or qos_class(
            (c.cpu_request, c.cpu_limit, c.mem_request, c.mem_limit) for c in wl.containers
        )
        guaranteed = current_qos == "Guaranteed"
        best_effort = all(c.cpu_request is None and c.mem_request is None for c in wl.containers)
        if best_effort:
            reasons.append("BestEffort: no requests, so the scheduler cannot place it safely and it is evicted first")
        if ns_labels is not None and not ns_labels:
            reasons.append(f"namespace {wl.namespace} has no labels (no env or team): sized as any other")
        memory_hpa = bool(hpa and hpa.scales_on_memory())
        cpu_hpa = bool(hpa and hpa.cpu_utilization_target())
        plans = [size_container(c, usages[c.name], s, ci.day, guaranteed, memory_hpa, cpu_hpa) for c in wl.containers]
        for p in plans:
            reasons += p.reasons
        reasons += apply_pod_minimums(plans, s)
        # how much history, how recent, and whether the spec changed inside the window
        seen = [u for u in usages.values() if u is not None and u.samples > 0]
        hours = max((u.history_hours for u in seen), default=0.0)
        days = max((u.days for u in seen), default=0)
        last = max((u.last_ts for u in seen if u.last_ts), default=None)
        stale_h = None if last is None else (self.day_end - last).total_seconds() / 3600
        confidence = min(1.0, days / s.full_confidence_days)
        coverage = min(1.0, hours / (24 * days)) if days else 0.0
        if wl.kind not in BATCH_KINDS and coverage < 0.9:
            # a long-running workload seen for part of its days: gaps in the scrape, or pods that came and went
            confidence *= coverage
            reasons.append(f"usage covers {100 * coverage:.0f} % of the 5-minute slots of its {days} day(s)")
        rollout = any(len(u.requests_seen - {(None, None)}) > 1 for u in seen)
        if rollout:
            confidence *= 0.8
            reasons.append("rollout mid-window: the requests changed; usage before and after both counted")
        if any(u.restarts for u in seen):
            reasons.append(f"{sum(u.restarts for u in seen)} container restart(s) in the window")
        cut_block = []
        if wl.kind in BATCH_KINDS:
            # a Job runs part of the day: its minimum history is counted in days with runs
            need = max(1, math.ceil(s.min_history_hours / 24))
            if days < need:
                cut_block.append(f"runs on {days} day(s), under the minimum {need} (min_history_hours / 24)")
        elif hours < s.min_history_hours:
            cut_block.append(f"{hours:.0f} h of usage, under the minimum {s.min_history_hours:g} h")
        if stale_h is not None and stale_h > s.max_staleness_hours:
            cut_block.append(
                f"last sample {stale_h:.0f} h before the end of the day (over {s.max_staleness_hours:g} h)"
            )
            confidence *= 0.5
        if cut_block:
            for p in plans:
                if p.spec.cpu_request is not None and (p.cpu_request or 0) < p.spec.cpu_request:
                    p.cpu_request = p.spec.cpu_request
                if p.spec.mem_request is not None and (p.mem_request or 0) < p.spec.mem_request:
                    p.mem_request = p.spec.mem_request
            reasons.append("no cut: " + "; ".join(cut_block))
        _round(plans, s, guaranteed and s.keep_guaranteed)
        for p in plans:
            for b in p.blocked_cut:
                if b != "no usage":
                    reasons.append(f"container {p.spec.name}: no cut of {b}")

        # replicas: mean running pods over the window (a CronJob counts the hours it ran), and HPA-aware
        pod_slots = max((u.pod_slots for u in seen), default=0.0)
        pods_now = pod_slots / (288 * self.days_in_window) if pod_slots else float(wl.replicas or 0)
        current = [(c.cpu_request, c.mem_request) for c in wl.containers]
        proposed = [(p.cpu_request, p.mem_request) for p in plans]
        pods_new = pods_now
        hpa_config, hpa_current, hpa_row = None, None, None
        if hpa is not None:
            hpa_current = {
                "name": hpa.name,
                "resource_id": hpa.resource_id,
                "min_replicas": hpa.min_replicas,
                "max_replicas": hpa.max_replicas,
                "target": hpa.targets(),
                "metrics": hpa.metrics,
            }
            others = hpa.other_metrics()
            tunable = hpa.cpu_utilization_target() or hpa.memory_utilization_target()
            if others:
                reasons.append(
                    f"HPA {hpa.name} scales on {', '.join(others)}: replicas do not follow the requests, its "
                    "target is left as it is" + (" (the utilisation targets are still tuned)" if tunable else "")
                )
            if tunable:
                hpa_config, pods_new = self._hpa(wl, hpa, plans, seen, pods_now, reasons)
        # options
        cost_now = self.cost(current, pods_now)
        cost_new = self.cost(proposed, pods_new)
        changed, worth = self._worth(plans, cost_now, cost_new)
        rows_context = dict(
            wl=wl,
            current_qos=current_qos,
            pods_now=pods_now,
            confidence=round(confidence, 3),
            hpa_current=hpa_current,
        )
        keep = self._row(
            **rows_context,
            option=KEEP,
            action=KEEP,
            plans=None,
            cost=cost_now,
            cost_now=cost_now,
            pods=pods_now,
            risk=self._keep_risk(wl, seen, best_effort),
            reasons=reasons,
            usages=usages,
            hpa=None,
        )
        rows = [keep]
        protected = wl.namespace in s.protected_namespaces or str(wl.labels.get(PROTECT_LABEL, "")).lower() in (
            "true",
            "1",
            "yes",
        )
        hpa_changed = hpa_config is not None and (
            hpa_config["min_replicas"] != hpa.min_replicas  # type: ignore[union-attr]
            or hpa_config["max_replicas"] != hpa.max_replicas  # type: ignore[union-attr]
            or any(
                abs(new - (hpa.utilization_target(name) or 0)) >= s.hpa_min_target_change_pct  # type: ignore[union-attr]
                for name, new in hpa_config["target"].items()
            )
        )
        if changed and worth:
            rows.append(
                self._row(
                    **rows_context,
                    option=RESIZE,
                    action=RESIZE,
                    plans=plans,
                    cost=cost_new,
                    cost_now=cost_now,
                    pods=pods_new,
                    risk=self._resize_risk(plans, usages, confidence),
                    reasons=reasons,
                    usages=usages,
                    hpa=hpa_config if hpa_changed else None,
                )
            )
        elif hpa_changed and hpa is not None and hpa_config is not None:
            # requests as they are: only the target moves the replicas
            pods_hpa = pods_now * max(
                (hpa.utilization_target(name) or new) / new for name, new in hpa_config["target"].items()
            )
            pods_hpa = min(hpa_config["max_replicas"], max(hpa_config["min_replicas"], pods_hpa))
            hpa_row = self._hpa_rows(wl, hpa, hpa_config, cost_now, self.cost(current, pods_hpa), confidence, reasons)
        else:
            keep["finding"] = "well_sized" if seen else "no_usage"
            if seen and not cut_block:
                keep["rationale"] = (
                    f"Within {s.min_change_pct:g} % of the recommendation or under "
                    f"${s.min_monthly_saving_usd:g}/month: left as it is. " + keep["rationale"]
                )
        if hpa_row:
            rows_out = [*rows, *hpa_row]
        else:
            rows_out = rows
        _rank(rows_out, s.max_best_risk, protected)
        for r in rows_out:
            r["protected"] = protected
            if protected:
                r["rationale"] = (
                    f"Protected (namespace or label {PROTECT_LABEL}): informational only. " + r["rationale"]
                )
        return WorkloadRecommendation(wl, rows_out, notes)

    def _worth(self, plans: list[ContainerPlan], cost_now: float | None, cost_new: float | None) -> tuple[bool, bool]:
        s = self.s
        changed, increase = False, False
        for p in plans:
            for now, new in ((p.spec.cpu_request, p.cpu_request), (p.spec.mem_request, p.mem_request)):
                if new is None:
                    continue
                if now is None or now == 0:
                    changed = increase = True
                elif abs(new - now) / now * 100 >= s.min_change_pct:
                    changed = True
                    increase = increase or new > now
        if not changed:
            return False, False
        if increase:
            return True, True  # a safety increase goes whatever it costs
        saving = None if cost_now is None or cost_new is None else cost_now - cost_new
        return True, saving is None or saving >= s.min_monthly_saving_usd

    def _hpa(
        self,
        wl: Workload,
        hpa: Hpa,
        plans: list[ContainerPlan],
        seen: list[ContainerUsage],
        pods_now: float,
        reasons: list[str],
    ) -> tuple[dict[str, Any], float]:
        """The HPA's recommended utilisation targets (CPU and memory, each it has) and min/max replicas, and the
        mean pods they give with the recommended requests."""
        s = self.s
        scales: list[float] = []
        new_targets: dict[str, int] = {}
        texts = []
        for name in ("cpu", "memory"):
            target = hpa.utilization_target(name)
            if not target:
                continue
            # the busiest container's mean per pod over its high mark: the utilisation the pods run at when
            # the request covers the high mark (CPU: the P95; memory: the peak)
            if name == "cpu":
                main = max(seen, key=lambda u: u.cpu_mean_per_pod or 0.0, default=None)
                mean = main.cpu_mean_per_pod if main else None
                high = (main.cpu_histogram.get(95) or main.cpu_p95_daily_max) if main else None
                now = sum(c.cpu_request or 0.0 for c in wl.containers)
                new = sum(p.cpu_request or 0.0 for p in plans)
                basis = "mean per pod / busiest pod's P95"
            else:
                main = max(seen, key=lambda u: u.mem_mean_per_pod or 0.0, default=None)
                mean = main.mem_mean_per_pod if main else None
                high = main.mem_peak if main else None
                now = sum(c.mem_request or 0.0 for c in wl.containers)
                new = sum(p.mem_request or 0.0 for p in plans)
                basis = "mean per pod / busiest pod's peak"
            proposed = 100.0 * mean / high if mean and high and high > 0 else target
            proposed = round(min(s.hpa_target_max_pct, max(s.hpa_target_min_pct, proposed)))
            new_targets[name] = proposed
            # the HPA keeps mean usage per pod / request near the target: pods ~ total usage / (target x request)
            scales.append((now * target) / (new * proposed) if new > 0 and proposed > 0 else 1.0)
            texts.append(f"{'CPU' if name == 'cpu' else 'memory'} target {target:g} % -> {proposed} % ({basis})")
        # with several metrics the HPA follows the one asking for the most replicas
        scale = max(scales, default=1.0)
        floor = 2 if hpa.min_replicas >= 2 else 1
        seen_min = min((u.replicas_min for u in seen if u.replicas_min is not None), default=hpa.min_replicas)
        seen_max = max((u.replicas_max for u in seen if u.replicas_max is not None), default=hpa.max_replicas)
        new_min = max(floor, min(hpa.min_replicas, math.ceil(seen_min * scale)))
        new_max = max(hpa.max_replicas, math.ceil(seen_max * scale), new_min + 1)
        pods_new = min(new_max, max(new_min, pods_now * scale))
        reasons.append(
            f"HPA {hpa.name}: {', '.join(texts)}, clamped {s.hpa_target_min_pct:g}-{s.hpa_target_max_pct:g} %; "
            f"replicas {hpa.min_replicas}-{hpa.max_replicas} -> {new_min}-{new_max}; requests and target change "
            "together"
        )
        metrics = []
        for m in hpa.metrics:
            res = m.get("resource") or {}
            if (
                m.get("type") == "Resource"
                and res.get("name") in new_targets
                and (res.get("target") or {}).get("type") == "Utilization"
            ):
                value = int(new_targets[res["name"]])
                m = {**m, "resource": {**res, "target": {**res["target"], "averageUtilization": value}}}
            metrics.append(m)
        patch = {"spec": {"minReplicas": new_min, "maxReplicas": new_max, "metrics": metrics}}
        config = {
            "name": hpa.name,
            "resource_id": hpa.resource_id,
            "min_replicas": new_min,
            "max_replicas": new_max,
            "target": new_targets,
            "patch": patch,
            "kubectl": kubectl_command(self._context(), wl.namespace, "hpa", hpa.name, patch, "merge"),
        }
        return config, pods_new

    def _context(self) -> str:
        return self.s.kube_contexts.get(self.ci.cluster, self.ci.cluster)

    def _keep_risk(self, wl: Workload, seen: list[ContainerUsage], best_effort: bool) -> float:
        risk = 0.0
        if best_effort:
            risk += 2.0
        if any(u.oom_kills for u in seen):
            risk += 2.0
        return risk

    def _resize_risk(self, plans: list[ContainerPlan], usages: Mapping, confidence: float) -> float:
        risk = 0.5 * (1 - confidence)
        for p in plans:
            u = usages.get(p.spec.name)
            if u is None:
                continue
            if p.cpu_request and u.cpu_p99_daily_max:
                risk += 0.5 * max(0.0, u.cpu_p99_daily_max / p.cpu_request - 1)
            limit = p.mem_limit or p.mem_request
            if limit and u.mem_peak:
                risk += 4.0 * max(0.0, u.mem_peak * 1.05 / limit - 1)
        return round(min(risk, 4.0), 3)

    def _row(
        self,
        wl: Workload,
        current_qos: str,
        pods_now: float,
        confidence: float,
        hpa_current: dict | None,
        option: str,
        action: str,
        plans: list[ContainerPlan] | None,
        cost: float | None,
        cost_now: float | None,
        pods: float,
        risk: float,
        reasons: list[str],
        usages: Mapping[str, ContainerUsage | None],
        hpa: dict | None,
    ) -> dict[str, Any]:
        ci = self.ci
        current_containers = _container_config(
            (c.name, c.cpu_request, c.mem_request, c.cpu_limit, c.mem_limit) for c in wl.containers
        )
        current_config = {"containers": current_containers, "qos_class": current_qos, "hpa": hpa_current}
        if plans is None:
            proposed_config: dict[str, Any] = {"containers": current_containers, "qos_class": current_qos}
            cores = sum(c.cpu_request or 0 for c in wl.containers)
            gib = sum(c.mem_request or 0 for c in wl.containers) / GIB
            proj_cpu, proj_mem = _projected(
                [(c.cpu_request, c.mem_request, c.mem_limit, usages.get(c.name)) for c in wl.containers]
            )
        else:
            new_qos = qos_class((p.cpu_request, p.cpu_limit, p.mem_request, p.mem_limit) for p in plans)
            containers = {}
            for p in plans:
                entry: dict[str, Any] = {
                    "requests": {"cpu": cpu_quantity(p.cpu_request), "memory": mem_quantity(p.mem_request)}
                }
                limits: dict[str, str | None] = {}
                if p.cpu_limit_set:
                    limits["cpu"] = cpu_quantity(p.cpu_limit)
                if p.mem_limit_set:
                    limits["memory"] = mem_quantity(p.mem_limit)
                entry["limits"] = limits
                containers[p.spec.name] = entry
            patch = workload_patch(wl.kind, plans)
            kind = KIND_NAMES.get(wl.kind, wl.kind)
            proposed_config = {
                "cluster": wl.cluster,
                "namespace": wl.namespace,
                "kind": kind,
                "name": wl.name,
                "containers": containers,
                "qos_class": new_qos,
                "patch": patch,
                "kubectl": None
                if patch is None
                else kubectl_command(self._context(), wl.namespace, wl.kind, wl.name, patch, "strategic"),
                "hpa": hpa,
            }
            if patch is None:
                proposed_config["advisory"] = (
                    f"a {kind} has no patchable pod template: set these requests where its pods are made"
                )
            cores = sum(p.cpu_request or 0 for p in plans)
            gib = sum(p.mem_request or 0 for p in plans) / GIB
            proj_cpu, proj_mem = _projected(
                [(p.cpu_request, p.mem_request, p.mem_limit, usages.get(p.spec.name)) for p in plans]
            )
        saving = None if cost is None or cost_now is None else round(cost_now - cost, 4)
        rationale = "; ".join(reasons) or "Sized from usage"
        if cost is None:
            rationale = (
                "No node of the cluster is priced: " + "; ".join(self.rate_notes or ["no nodes"]) + ". " + rationale
            )
        details = {
            "pods_mean": round(pods, 3),
            "pods_mean_current": round(pods_now, 3),
            "rates": None
            if self.rates is None
            else {
                "cpu_usd_per_core_hour": round(self.rates.cpu_usd_per_core_hour, 6),
                "mem_usd_per_gib_hour": round(self.rates.mem_usd_per_gib_hour, 6),
                "priced_nodes": self.rates.priced_nodes,
            },
            "usage": {
                name: None
                if u is None
                else {
                    "days": u.days,
                    "history_hours": round(u.history_hours, 2),
                    "cpu_histogram_cores": u.cpu_histogram,
                    "cpu_p99_cores": u.cpu_p99_daily_max,
                    "cpu_max_cores": u.cpu_max,
                    "mem_peak_bytes": u.mem_peak,
                    "oom_kills": u.oom_kills,
                    "throttled_p95_max": u.throttled_p95_max,
                }
                for name, u in usages.items()
            },
            "notes": list(self.rate_notes),
        }
        return {
            "account_id": ci.account_id,
            "date": ci.day,
            "resource_id": wl.resource_id,
            "resource_kind": K8S_WORKLOAD,
            "deployment_type": KUBERNETES,
            "region": None,
            "zone": None,
            "option_name": option,
            "action": action,
            "rank": 1,
            "is_best": False,
            "finding": "over_provisioned" if saving and saving > 0 else "under_provisioned" if saving else "keep",
            "current_config": json.dumps(current_config, sort_keys=True),
            "proposed_config": json.dumps(proposed_config, sort_keys=True),
            "market": "on_demand",
            "vcpu": round(cores * pods, 4),
            "memory_gib": round(gib * pods, 4),
            "monthly_cost_current_usd": cost_now,
            "monthly_cost_proposed_usd": cost,
            "monthly_savings_usd": saving,
            "savings_pct": round(100 * saving / cost_now, 3) if saving is not None and cost_now else 0.0,
            "one_time_cost_usd": 0.0,
            "performance_risk": risk,
            "migration_effort": "VeryLow" if option == KEEP else "Low",
            "projected_cpu_pct": proj_cpu,
            "projected_memory_pct": proj_mem,
            "confidence": confidence,
            "is_estimate": True if self.rates is None else self.rates.is_estimate,
            "protected": False,
            "risk_setting": f"P{self.s.cpu_percentile}+{self.s.cpu_margin_pct:g}%",
            "rationale": rationale,
            "details": json.dumps(details, sort_keys=True, default=str),
        }

    def _hpa_rows(
        self,
        wl: Workload,
        hpa: Hpa,
        config: dict[str, Any],
        cost_now: float | None,
        cost_new: float | None,
        confidence: float,
        reasons: list[str],
    ) -> list[dict[str, Any]]:
        """HPA-only options (requests left as they are): keep and tune_hpa on ``<cluster>/<ns>/hpa/<name>``."""
        base = {
            "account_id": self.ci.account_id,
            "date": self.ci.day,
            "resource_id": hpa.resource_id,
            "resource_kind": K8S_HPA,
            "deployment_type": KUBERNETES,
            "region": None,
            "zone": None,
            "market": "on_demand",
            "vcpu": None,
            "memory_gib": None,
            "one_time_cost_usd": 0.0,
            "projected_cpu_pct": None,
            "projected_memory_pct": None,
            "confidence": confidence,
            "is_estimate": True if self.rates is None else self.rates.is_estimate,
            "protected": False,
            "risk_setting": f"P{self.s.cpu_percentile}+{self.s.cpu_margin_pct:g}%",
            "rationale": "; ".join(reasons),
            "details": json.dumps({"workload": wl.resource_id}),
            "current_config": json.dumps(
                {
                    "cluster": wl.cluster,
                    "namespace": wl.namespace,
                    "name": hpa.name,
                    "min_replicas": hpa.min_replicas,
                    "max_replicas": hpa.max_replicas,
                    "target": hpa.targets(),
                },
                sort_keys=True,
            ),
        }
        keep = {
            **base,
            "option_name": KEEP,
            "action": KEEP,
            "rank": 1,
            "is_best": False,
            "finding": "keep",
            "proposed_config": base["current_config"],
            "monthly_cost_current_usd": cost_now,
            "monthly_cost_proposed_usd": cost_now,
            "monthly_savings_usd": 0.0 if cost_now is not None else None,
            "savings_pct": 0.0,
            "performance_risk": 0.0,
            "migration_effort": "VeryLow",
        }
        saving = None if cost_now is None or cost_new is None else round(cost_now - cost_new, 4)
        proposed = {
            "cluster": wl.cluster,
            "namespace": wl.namespace,
            "name": hpa.name,
            "min_replicas": config["min_replicas"],
            "max_replicas": config["max_replicas"],
            "target": config["target"],
            "patch": config["patch"],
            "kubectl": config["kubectl"],
        }
        tune = {
            **base,
            "option_name": TUNE_HPA,
            "action": TUNE_HPA,
            "rank": 2,
            "is_best": False,
            "finding": "over_provisioned" if saving and saving > 0 else "under_provisioned",
            "proposed_config": json.dumps(proposed, sort_keys=True),
            "monthly_cost_current_usd": cost_now,
            "monthly_cost_proposed_usd": cost_new,
            "monthly_savings_usd": saving,
            "savings_pct": round(100 * saving / cost_now, 3) if saving is not None and cost_now else 0.0,
            "performance_risk": round(
                0.5 * (1 - confidence) + 0.5 * max(0, max(config["target"].values(), default=0) - 60) / 15, 3
            ),
            "migration_effort": "Low",
        }
        return [keep, tune]


def _projected(items: list[tuple[float | None, float | None, float | None, ContainerUsage | None]]) -> tuple:
    """P90 CPU / request and memory peak / limit (or request) of the busiest container, %."""
    cpu = mem = None
    for cr, mr, ml, u in items:
        if u is None:
            continue
        p90 = u.cpu_histogram.get(90) or u.cpu_p90_daily_max
        if cr and p90 is not None:
            cpu = max(cpu or 0.0, 100 * p90 / cr)
        cap = ml or mr
        if cap and u.mem_peak is not None:
            mem = max(mem or 0.0, 100 * u.mem_peak / cap)
    return (None if cpu is None else round(cpu, 2), None if mem is None else round(mem, 2))


def _rank(rows: list[dict[str, Any]], max_best_risk: float, protected: bool) -> None:
    """Rank each resource's options by proposed cost (unpriced last); the best is the cheapest option within
    the risk bound, keep when protected; an increase for safety (OOM, throttling, BestEffort) is the best."""
    by_resource: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_resource[r["resource_id"]].append(r)
    for options in by_resource.values():
        options.sort(
            key=lambda r: (
                math.inf if r["monthly_cost_proposed_usd"] is None else r["monthly_cost_proposed_usd"],
                r["option_name"],
            )
        )
        for i, r in enumerate(options, start=1):
            r["rank"] = i
        best = next(r for r in options if r["option_name"] == KEEP)
        if not protected:
            changes = [r for r in options if r["option_name"] != KEEP and r["performance_risk"] <= max_best_risk]
            keep_risk = best["performance_risk"]
            for r in changes:
                saving = r["monthly_savings_usd"]
                if (saving is not None and saving > 0) or keep_risk > r["performance_risk"]:
                    best = r
                    break
        best["is_best"] = True


# ---------------------------------------------------------------------------------------------------
# node pools (optimizers/kubernetes_nodes.py)


def recommended_requests(workload_rows: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], tuple[float, float]]:
    """(resource_id, container) -> (CPU cores, memory bytes) each workload is left with: its best option's
    proposed requests (a keep option proposes today's). A container without both requests is left out, so
    the packing uses what it runs with today (or the per-pod minimum)."""
    out: dict[tuple[str, str], tuple[float, float]] = {}
    for r in workload_rows:
        if r.get("resource_kind") != K8S_WORKLOAD or not r.get("is_best"):
            continue
        containers = (_json_obj(r.get("proposed_config")) or {}).get("containers") or {}
        for name, c in containers.items():
            requests = (c or {}).get("requests") or {}
            cpu, mem = _cores(requests.get("cpu")), _bytes(requests.get("memory"))
            if cpu is not None and mem is not None:
                out[(r["resource_id"], name)] = (cpu, mem)
    return out


def node_pool_rows(ci: ClusterInput, workload_rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """The cluster's node-pool rows: ``kubernetes_nodes.recommend_node_pools`` packs the *recommended*
    requests (each workload's best option) on the cluster's pools, and counts only the saving beyond what
    the workload rows already claim (docs/portfolio_plan.md). Node-scope usage, when the inputs carry it
    (``ClusterInput.node_usage``), finds under-used nodes. Input the packing cannot use becomes a note,
    never a failed partition."""
    s = ci.settings
    if not s.node_pools:
        return [], ["node-pool recommendations are off (node_pools = false)"]
    if ci.catalog is None or not ci.catalog.rows:
        return [], ["no price catalogue: no node-pool rows"]
    workloads = ci.workloads
    if workloads is None or workloads.num_rows == 0 or "cluster" not in workloads.column_names:
        return [], []
    workloads = workloads.filter(pc.fill_null(pc.equal(workloads["cluster"], ci.cluster), False))
    if workloads.num_rows == 0:
        return [], []
    node_usage = ci.node_usage
    if node_usage is not None and "cluster" in node_usage.column_names:
        node_usage = node_usage.filter(pc.fill_null(pc.equal(node_usage["cluster"], ci.cluster), False))
    savings = pa.Table.from_pylist(
        [r for r in workload_rows if r.get("resource_kind") == K8S_WORKLOAD], schema=RECOMMENDATIONS
    )
    try:
        table = recommend_node_pools(
            workloads,
            recommended_requests(workload_rows),
            pa.Table.from_pylist(list(ci.catalog.rows)),
            settings=s.node_pool_settings(),
            workload_savings=savings,
            node_usage=node_usage,
            account_id=ci.account_id,
            day=ci.day,
        )
    except NodePoolInputError as exc:
        return [], [f"no node-pool rows: {exc}"]
    return table.to_pylist(), []


# ---------------------------------------------------------------------------------------------------
# the optimiser


def _empty() -> pa.Table:
    return RECOMMENDATIONS.empty_table()


def node_scope(usage: pa.Table | None) -> pa.Table | None:
    """The ``scope = 'node'`` rows of a ``k8s_container_usage`` table (all the node-pool packing reads)."""
    if usage is None or usage.num_rows == 0 or "scope" not in usage.column_names:
        return None
    return usage.filter(pc.fill_null(pc.equal(usage["scope"], "node"), False))


def cluster_names(*tables: pa.Table | None) -> list[str]:
    found: set[str] = set()
    for t in tables:
        if t is not None and t.num_rows and "cluster" in t.column_names:
            found.update(c for c in t["cluster"].to_pylist() if c)
    return sorted(found)


class KubernetesOptimizer(DeploymentOptimizer):
    """Requests, limits and HPA targets of every workload of an account's Kubernetes clusters (the seed's
    ``KubernetesOptimizer(cluster_config).optimize_cluster()``), and node pools when
    ``optimizers/kubernetes_nodes.py`` is there."""

    name: ClassVar[str] = "kubernetes"
    deployment_types: ClassVar[tuple[str, ...]] = (KUBERNETES,)
    resource_kinds: ClassVar[tuple[str, ...]] = (K8S_WORKLOAD, K8S_NODE, K8S_NODEPOOL)
    inputs: ClassVar[tuple[FeatureInput, ...]] = (
        FeatureInput("container_usage_histogram", window_days=1),
        FeatureInput("k8s_usage_daily", window_days=14),
        FeatureInput("k8s_workloads", window_days=1, stage="raw"),
        # node-scope rows of the day: the node-pool packing finds under-used nodes with them
        FeatureInput("k8s_container_usage", window_days=1, stage="raw"),
    )
    settings_type: ClassVar[type[BaseModel]] = KubernetesSettings
    description: ClassVar[str] = (
        "Container requests and limits, HPA targets and replicas for every Kubernetes workload of the account's "
        "clusters (CLOUDOPT_K8S_CLUSTERS), priced at the nodes' cost per core-hour and GiB-hour."
    )

    def __init__(self, cluster_config: ClusterInput | None = None) -> None:
        self.cluster_config = cluster_config

    def optimize_cluster(self, cluster_config: ClusterInput | None = None) -> Recommendations:
        """One cluster's recommendations: every workload's options (and node pools when available)."""
        ci = cluster_config or self.cluster_config
        if ci is None:
            raise ValueError("KubernetesOptimizer.optimize_cluster needs a ClusterInput (the cluster_config)")
        s = ci.settings
        workloads, hpas, nodes, namespaces = read_workloads(_rows(ci.workloads, ci.cluster))
        usage = read_usage(_rows(ci.usage_daily, ci.cluster), _rows(ci.histogram), ci.day, s.history_days)
        regions = {}
        if ci.inventory is not None and ci.inventory.num_rows:
            for r in ci.inventory.select(["resource_id", "region"]).to_pylist():
                if r["region"]:
                    regions[r["resource_id"]] = r["region"]
        rates, rate_notes = node_rates(nodes, ci.catalog, s, regions)
        sizer = WorkloadSizer(ci, rates, rate_notes)
        rows: list[dict[str, Any]] = []
        notes: list[str] = [f"cluster {ci.cluster}: {n}" for n in rate_notes]
        for rid, wl in sorted(workloads.items()):
            rec = sizer.recommend(wl, usage, hpas.get(rid), namespaces.get(wl.namespace))
            rows += rec.rows
        gone = sorted({rid for rid, _c in usage} - set(workloads))
        if gone:
            notes.append(
                f"cluster {ci.cluster}: {len(gone)} workload(s) with usage but not in today's objects (gone from the "
                f"API), not recommended: {', '.join(gone[:5])}"
            )
        pool_rows, pool_notes = node_pool_rows(ci, list(rows))
        rows += pool_rows
        notes += [f"cluster {ci.cluster}: {n}" for n in pool_notes]
        table = pa.Table.from_pylist(rows, schema=RECOMMENDATIONS) if rows else _empty()
        return Recommendations(table=table, summary=summary(table), metadata={"notes": notes})

    def recommend(self, inputs: OptimizerInputs, settings: BaseModel) -> Recommendations:
        """Every cluster of the account (the clusters named in its k8s_workloads snapshot)."""
        s = settings if isinstance(settings, KubernetesSettings) else KubernetesSettings.model_validate(settings)
        workloads = inputs.tables.get("k8s_workloads")
        daily = inputs.tables.get("k8s_usage_daily")
        histogram = inputs.tables.get("container_usage_histogram")
        tables, notes = [], []
        for cluster in cluster_names(workloads):
            ci = ClusterInput(
                account_id=inputs.account_id,
                day=inputs.day,
                cluster=cluster,
                workloads=workloads,  # type: ignore[arg-type]
                usage_daily=daily,  # type: ignore[arg-type]
                histogram=histogram,  # type: ignore[arg-type]
                catalog=inputs.catalog,
                days_found=tuple(inputs.days_found.get("k8s_usage_daily", ())),
                inventory=inputs.inventory,
                settings=s,
                node_usage=node_scope(inputs.tables.get("k8s_container_usage")),
            )
            result = self.optimize_cluster(ci)
            tables.append(result.table)
            notes += list(result.metadata.get("notes", []))
        table = pa.concat_tables(tables) if tables else _empty()
        return Recommendations(table=table, summary=summary(table), metadata={"notes": notes})

    def candidates(self, recommendations: pa.Table) -> list[Candidate]:
        """Every row as an option, priced so the plan counts each dollar of node cost once
        (:func:`net_plan_costs`, docs/portfolio_plan.md)."""
        return candidates_from_recommendations(net_plan_costs(recommendations), source=self.name)


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def net_plan_costs(table: pa.Table) -> pa.Table:
    """``table`` priced for the plan, which sums each resource's keep cost as today's cost and keep-minus-option
    as its saving, so that the node money is counted once:

    - a workload's keep cost is its requests' share of the nodes; a node pool's keep cost is what is left
      of its node cost, today's cost minus the keep costs of the workloads running on it
      (``details.workload_claims``: a DaemonSet's split by node count; floor 0), and its resize saves
      only its own ``monthly_savings_usd`` (beyond the workload rows' best options);
    - a workload whose HPA alone changes (a ``k8s_hpa`` row carries the workload's cost) plans at 0, the
      HPA candidate holding its money;
    - a spot mix (market ``mixed``) is planned as ``spot``, so the plan's spot-share limits hold it to the
      stricter side.

    The recommendation rows themselves keep the packed cost (rationale, details) for people to read."""
    if table.num_rows == 0:
        return table
    rows = table.to_pylist()
    keep_cost: dict[tuple[str, str], float] = {}
    actions: dict[tuple[str, str], set[str]] = defaultdict(set)
    for r in rows:
        if r["resource_kind"] == K8S_WORKLOAD:
            key = (r["account_id"], r["resource_id"])
            actions[key].add(r["action"])
            if r["action"] == KEEP and _finite(r["monthly_cost_current_usd"]):
                keep_cost[key] = float(r["monthly_cost_current_usd"])
    by_hpa = {
        (r["account_id"], (_json_obj(r["details"]) or {}).get("workload"))
        for r in rows
        if r["resource_kind"] == K8S_HPA and _finite(r["monthly_cost_current_usd"])
    }
    moved = {k for k in by_hpa if k in keep_cost and actions[k] == {KEEP}}
    # pools without claims (rows from before they were recorded): the cluster's workloads in proportion
    pool_cost: dict[tuple[str, str], float] = defaultdict(float)
    workload_cost: dict[tuple[str, str], float] = defaultdict(float)
    for (account, rid), cost in keep_cost.items():
        workload_cost[(account, rid.split("/", 1)[0])] += cost
    for r in rows:
        if r["resource_kind"] == K8S_NODEPOOL and r["action"] == KEEP and _finite(r["monthly_cost_current_usd"]):
            pool_cost[(r["account_id"], r["resource_id"].split("/", 1)[0])] += r["monthly_cost_current_usd"]
    for r in rows:
        key = (r["account_id"], r["resource_id"])
        if r["resource_kind"] == K8S_WORKLOAD and key in moved:
            r["monthly_cost_current_usd"] = r["monthly_cost_proposed_usd"] = r["monthly_savings_usd"] = 0.0
        if r["resource_kind"] != K8S_NODEPOOL or not _finite(r["monthly_cost_current_usd"]):
            continue
        claims = (_json_obj(r["details"]) or {}).get("workload_claims")
        if claims is not None:
            claimed = sum(share * keep_cost.get((r["account_id"], w), 0.0) for w, share in claims.items())
        else:
            cluster = (r["account_id"], r["resource_id"].split("/", 1)[0])
            total = pool_cost.get(cluster, 0.0)
            claimed = workload_cost.get(cluster, 0.0) * r["monthly_cost_current_usd"] / total if total else 0.0
        left = max(0.0, r["monthly_cost_current_usd"] - claimed)
        r["monthly_cost_current_usd"] = left
        own = 0.0 if r["action"] == KEEP else max(0.0, r["monthly_savings_usd"] or 0.0)
        r["monthly_cost_proposed_usd"] = max(0.0, left - own)
        r["monthly_savings_usd"] = left - r["monthly_cost_proposed_usd"]
        if r["market"] == "mixed":
            r["market"] = "spot"
    return pa.Table.from_pylist(rows, schema=table.schema)


net_node_pool_costs = net_plan_costs  # the earlier name


def summary(table: pa.Table) -> dict[str, float]:
    """Numbers for the asset's metadata: rows, workloads, and the best options' savings and resizes."""
    if table.num_rows == 0:
        return {"rows": 0, "resources": 0, "best_monthly_savings_usd": 0.0, "resizes": 0}
    best = table.filter(pc.equal(table["is_best"], True))
    return {
        "rows": table.num_rows,
        "resources": len(set(table["resource_id"].to_pylist())),
        "best_monthly_savings_usd": round(float(pc.sum(best["monthly_savings_usd"]).as_py() or 0.0), 2),
        "resizes": int(pc.sum(pc.not_equal(best["action"], KEEP)).as_py() or 0),
    }


__all__ = [
    "ClusterInput",
    "KubernetesOptimizer",
    "KubernetesSettings",
    "net_node_pool_costs",
    "net_plan_costs",
    "node_pool_rows",
    "node_rates",
    "node_scope",
    "qos_class",
    "recommended_requests",
    "size_container",
]
