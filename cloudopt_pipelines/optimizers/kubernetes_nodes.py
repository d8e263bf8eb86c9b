"""Node pools of Kubernetes clusters: bin packing of the recommended requests, the spot mix, the steady
on-demand floor, consolidation and the node-pool recommendation rows. Pure logic (pyarrow, PuLP/HiGHS);
this module never imports Dagster.

The entry point, called by ``optimizers/kubernetes.py`` once the workload rows are known::

    recommend_node_pools(
        workloads: pa.Table,                  # k8s_workloads rows (storage.schemas.K8S_WORKLOADS), any clusters
        recommended: RecommendedRequests,     # {(resource_id, container): (cpu_cores, mem_bytes)}, or a
                                              # pa.Table / list of dicts with those four columns
        catalog: PriceCatalog | pa.Table,     # catalog.prices (the price_catalog table or its PriceCatalog)
        *,
        settings: NodePoolSettings | None = None,
        workload_savings: Mapping[str, float] | pa.Table | None = None,  # workload resource_id -> monthly
                                              # saving of its best row (what the workload rows claim), or
                                              # the workload rows themselves (best_workload_savings)
        node_usage: pa.Table | None = None,   # k8s_container_usage rows; scope 'node' ones find idle nodes
        account_id: str | None = None,        # default: each pool's own (the nodes' account_id)
        day: date | None = None,              # default: each pool's own (the nodes' date)
        eni_limits: Mapping[str, tuple[int, int]] | None = None,  # default: the embedded table
    ) -> pa.Table                             # storage.schemas.RECOMMENDATIONS, the node-pool rows

One ``k8s_nodepool`` row per option and pool (``<cluster>/nodepool/<name>``): ``keep`` (today's nodes),
``rightsize_on_demand`` (``resize_nodepool``: the cheapest packing of the recommended requests on
on-demand nodes) and, when some workloads are spot-ready, ``rightsize_spot_mix`` (``resize_nodepool``:
spot-ready pods on diversified spot nodes, the rest on on-demand). ``docs/kubernetes.md`` ("Node pools")
documents every formula and setting; the rules in short:

- allocatable per node type: EKS's kube-reserved (CPU 6 % of the first core, 1 % of the second, 0.5 % of
  the next two, 0.25 % above four; memory 255 MiB + 11 MiB per pod), the 100 MiB hard-eviction threshold
  and the hypervisor's share of memory (``vm_memory_overhead_pct``); the allocatable a node of that type
  reports today wins when it is smaller;
- max pods per node: ENIs x (IPv4 addresses per ENI - 1) + 2, capped by ``max_pods_cap``;
- every DaemonSet's pod on every node (its requests and one pod slot);
- pods are spread over the pool's zones (skew at most one per workload) and each zone is packed alone;
  taints (NoSchedule / NoExecute) admit only the workloads that tolerate them; ``node_selector`` and
  ``nodepool`` pin a workload to pools; ``anti_affinity`` puts at most one pod of a workload per node;
- each (pool, zone, market) packing is first-fit-decreasing with consolidation and, when it has at most
  ``milp_max_variables`` variables and time is left, a MILP (PuLP + HiGHS, ``milp_time_limit_s``); the
  cheaper wins and its gap to a lower bound (the best of the LP relaxation over node counts, the same
  with whole nodes, and HiGHS's MILP bound) is reported.

Also here: ``pool_unit_costs`` (USD per core-hour and GiB-hour of each pool, for pricing request cuts),
``best_workload_savings`` (what workload rows claim), ``spot_readiness``, ``pack`` and the formulae.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date
from functools import lru_cache
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from cloudopt_pipelines.catalog.prices import EMBEDDED, HOURS_PER_MONTH, PriceCatalog
from cloudopt_pipelines.storage.schemas import RECOMMENDATIONS
from cloudopt_pipelines.vocabulary import PROTECT_TAG_KEY, is_protected

MIB = 2.0**20
GIB = 2.0**30
SPOT_ANNOTATION = "cloudopt.io/spot"
#: A node label that marks its pool protected (as the ``cloudopt:protect`` tag does).
PROTECT_LABEL = "cloudopt.io/protect"
#: Spot Advisor interruption bands, in the order of ``interruption_range_index``.
SPOT_BANDS = ("<5%", "5-10%", "10-15%", "15-20%", ">20%")
_WORKLOAD_KINDS = ("deployment", "statefulset", "replicaset", "cronjob", "job", "jobgroup", "pod")
_JOB_KINDS = ("cronjob", "job", "jobgroup")
_LOCAL_STATE_VOLUMES = ("emptyDir", "persistentVolumeClaim", "hostPath", "ephemeral")
_REGION = re.compile(r"^([a-z]{2}(?:-gov)?-[a-z]+-\d+)")

RecommendedRequests = Mapping[tuple[str, str], tuple[float, float]] | pa.Table | Sequence[Mapping[str, Any]]


class NodePoolInputError(ValueError):
    """Input the node-pool optimiser cannot use; the message names the thing and the fix."""


@dataclass(frozen=True)
class NodePoolSettings:
    """Every knob of the node-pool optimiser (``docs/kubernetes.md``, "Node pools", has the table)."""

    vm_memory_overhead_pct: float = 7.5  # Karpenter's vmMemoryOverheadPercent default
    eviction_hard_mem_mib: float = 100.0
    max_pods_cap: int = 250  # EKS's recommended ceiling, even with prefix delegation
    default_max_pods: int = 110  # kubelet default, for a type without ENI data
    min_pod_cpu_cores: float = 0.025  # a container with neither recommendation nor request
    min_pod_mem_bytes: float = 250 * MIB
    zone_spread: bool = True
    families: tuple[str, ...] | None = None  # None: the pool's families and c/m/r of the same architecture
    min_node_vcpu: int = 2
    max_node_vcpu: int = 64
    allow_burstable: bool = False  # t-types only when the pool runs them already
    milp_time_limit_s: float = 3.0  # per packing
    milp_time_budget_s: float = 10.0  # all the MILPs of one call together
    milp_skip_gap_pct: float = 1.0  # first-fit-decreasing this close to the bound: no MILP
    ffd_open_types: int = 8  # types first-fit-decreasing opens nodes with (every type for downsizing)
    milp_max_variables: int = 6000
    milp_max_types: int = 6
    min_spot_types: int = 15  # Karpenter's diversification
    max_spot_band: int = 3  # highest interruption_range_index admitted (3: 15-20 %)
    spot_base_risk: float = 0.15
    spot_risk_per_band: float = 0.1
    spot_short_diversity_risk: float = 0.15
    spot_require_volume_info: bool = False  # True: no spot without collected volumes
    resize_risk: float = 0.1
    max_risk: float = 0.6  # best option: the cheapest one at or under this risk
    min_monthly_savings_usd: float = 10.0
    min_savings_pct: float = 5.0
    max_nodes_headroom_pct: float = 20.0
    consolidation_cpu_pct: float = 20.0  # a node under both is under-used
    consolidation_mem_pct: float = 30.0
    risk_setting: str = "balanced"

    def __post_init__(self) -> None:
        if self.min_spot_types < 1:
            raise NodePoolInputError("NodePoolSettings.min_spot_types must be at least 1")
        if not 0 <= self.max_spot_band < len(SPOT_BANDS):
            raise NodePoolInputError(f"NodePoolSettings.max_spot_band must be 0..{len(SPOT_BANDS) - 1}")
        if self.min_node_vcpu > self.max_node_vcpu:
            raise NodePoolInputError("NodePoolSettings.min_node_vcpu is above max_node_vcpu")


# ------------------------------------------------------------------------------------------ formulae


def eni_max_pods(enis: int, ipv4_per_eni: int) -> int:
    """The VPC CNI's pod limit of a node: one address per ENI is the node's own, plus two host-network pods."""
    return enis * (ipv4_per_eni - 1) + 2


def eks_reserved_cpu_cores(vcpu: float) -> float:
    """EKS AMI kube-reserved CPU: 6 % of the first core, 1 % of the second, 0.5 % of the next two, 0.25 %
    of every core above four."""
    steps = ((1.0, 0.06), (1.0, 0.01), (2.0, 0.005))
    left, out = float(vcpu), 0.0
    for width, share in steps:
        take = min(left, width)
        out += take * share
        left -= take
    return out + max(left, 0.0) * 0.0025


def eks_reserved_mem_bytes(max_pods: int) -> float:
    """EKS AMI kube-reserved memory: 255 MiB plus 11 MiB per pod the node may run."""
    return (255.0 + 11.0 * max_pods) * MIB


@lru_cache(maxsize=4)
def _embedded_eni_limits(path: str) -> dict[str, tuple[int, int]]:
    rows = pq.read_table(path).to_pylist()
    return {r["instance_type"]: (r["max_network_interfaces"], r["ipv4_addresses_per_interface"]) for r in rows}


def load_eni_limits(data_dir: Path = EMBEDDED) -> dict[str, tuple[int, int]]:
    """instance type -> (max network interfaces, IPv4 addresses per interface), from the embedded table."""
    path = data_dir / "eni_limits.parquet"
    if not path.exists():
        raise FileNotFoundError(f"ENI limits missing at {path}; rebuild them with scripts/build_embedded_data.py")
    return dict(_embedded_eni_limits(str(path)))


@dataclass(frozen=True)
class NodeType:
    """One instance type as a node: what pods may use of it, and what it costs per hour."""

    instance_type: str
    vcpu: float
    memory_gib: float
    max_pods: int
    cpu: float  # allocatable cores
    mem: float  # allocatable bytes
    usd_per_hour: float
    family: str = ""
    band: float | None = None  # mean Spot Advisor band index of the types standing behind a spot price
    spot_types: tuple[str, ...] = ()
    is_estimate: bool = False


def node_type(
    row: Mapping[str, Any],
    settings: NodePoolSettings,
    eni: Mapping[str, tuple[int, int]],
    observed: tuple[float, float] | None = None,
    spot: bool = False,
) -> NodeType | None:
    """A catalogue row as a node type (on-demand or spot price); None when it has no such price."""
    price = row.get("spot_usd_per_hour") if spot else row.get("ondemand_usd_per_hour")
    if price is None:
        return None
    it = row["instance_type"]
    limits = eni.get(it)
    pods = eni_max_pods(*limits) if limits else settings.default_max_pods
    pods = min(pods, settings.max_pods_cap)
    vcpu, mem_gib = float(row["vcpu"]), float(row["memory_gib"])
    cpu = vcpu - eks_reserved_cpu_cores(vcpu)
    mem = (
        mem_gib * GIB * (1 - settings.vm_memory_overhead_pct / 100)
        - eks_reserved_mem_bytes(pods)
        - settings.eviction_hard_mem_mib * MIB
    )
    if observed is not None:
        cpu, mem = min(cpu, observed[0]), min(mem, observed[1])
    if cpu <= 0 or mem <= 0:
        return None
    band = None
    if spot:
        label = row.get("spot_interruption_band")
        band = float(SPOT_BANDS.index(label)) if label in SPOT_BANDS else None
    return NodeType(
        instance_type=it,
        vcpu=vcpu,
        memory_gib=mem_gib,
        max_pods=pods,
        cpu=cpu,
        mem=mem,
        usd_per_hour=float(price),
        family=str(row.get("family") or it.split(".")[0]),
        band=band,
        spot_types=(it,) if spot else (),
        is_estimate=bool(row.get("is_estimate")),
    )


# ------------------------------------------------------------------------------------------ packing


@dataclass(frozen=True)
class Item:
    """``count`` identical pods of one workload (in one zone and market)."""

    workload: str
    cpu: float
    mem: float
    count: int
    anti_affinity: bool = False


@dataclass(frozen=True)
class Capacity:
    """What each node gives after the DaemonSets: cores, bytes and pod slots."""

    cpu: float
    mem: float
    pods: int


@dataclass
class Node:
    instance_type: str
    pods: dict[str, int] = field(default_factory=dict)
    cpu: float = 0.0
    mem: float = 0.0
    count: int = 0


@dataclass
class Packing:
    """One bin packing: its nodes, cost per hour, lower bound and how it was found."""

    nodes: list[Node]
    usd_per_hour: float
    lower_bound_usd_per_hour: float
    method: str  # milp_optimal, milp_time_limit, ffd, ffd=milp_optimal, empty
    unplaced: dict[str, int] = field(default_factory=dict)
    lp_relaxation_usd_per_hour: float = 0.0  # the LP alone (the bound is the best of it and stronger ones)

    @property
    def gap_pct(self) -> float:
        if self.usd_per_hour <= 0:
            return 0.0
        return max(0.0, 100.0 * (self.usd_per_hour - self.lower_bound_usd_per_hour) / self.usd_per_hour)

    def counts(self) -> Counter[str]:
        return Counter(n.instance_type for n in self.nodes)


def _capacity(t: NodeType, ds: tuple[float, float, int]) -> Capacity:
    return Capacity(t.cpu - ds[0], t.mem - ds[1], t.max_pods - ds[2])


def _fits_one(item: Item, cap: Capacity) -> bool:
    return item.cpu <= cap.cpu + 1e-9 and item.mem <= cap.mem + 1e-6 and cap.pods >= 1


def first_fit_decreasing(items: Sequence[Item], t: NodeType, cap: Capacity) -> tuple[list[Node], dict[str, int]]:
    """Pods largest first (by the larger of their CPU and memory shares of the node), each on the first
    open node with room, a new node of type ``t`` when none has; a pod too large for ``t`` is returned
    as unplaced. Anti-affinity: at most one pod of such a workload per node."""
    order = sorted(items, key=lambda i: (-max(i.cpu / max(cap.cpu, 1e-9), i.mem / max(cap.mem, 1e-9)), i.workload))
    nodes: list[Node] = []
    unplaced: dict[str, int] = {}
    for item in order:
        if not _fits_one(item, cap):
            unplaced[item.workload] = unplaced.get(item.workload, 0) + item.count
            continue
        left = item.count
        start = 0  # pods of one item are identical: a node that refused one refuses the next
        while left:
            placed = False
            for j in range(start, len(nodes)):
                n = nodes[j]
                if (
                    n.cpu + item.cpu <= cap.cpu + 1e-9
                    and n.mem + item.mem <= cap.mem + 1e-6
                    and n.count < cap.pods
                    and not (item.anti_affinity and item.workload in n.pods)
                ):
                    n.pods[item.workload] = n.pods.get(item.workload, 0) + 1
                    n.cpu += item.cpu
                    n.mem += item.mem
                    n.count += 1
                    left -= 1
                    placed = True
                    start = j if not item.anti_affinity else j + 1
                    break
                start = j + 1
            if not placed:
                nodes.append(Node(t.instance_type))
                start = len(nodes) - 1
    return nodes, unplaced


def _downsize(nodes: list[Node], types: Sequence[NodeType], caps: Mapping[str, Capacity]) -> list[Node]:
    """Each node moved to the cheapest type that still holds its pods."""
    by_cost = sorted(types, key=lambda t: (t.usd_per_hour, t.instance_type))
    for n in nodes:
        for t in by_cost:
            c = caps[t.instance_type]
            if n.cpu <= c.cpu + 1e-9 and n.mem <= c.mem + 1e-6 and n.count <= c.pods:
                n.instance_type = t.instance_type
                break
    return nodes


def consolidate(nodes: list[Node], items: Sequence[Item], caps: Mapping[str, Capacity], tries: int = 12) -> list[Node]:
    """Karpenter's deletion consolidation: the least-loaded node's pods are moved to the other nodes
    (fullest first) when every one of them fits there; repeated until no node among the ``tries`` least
    loaded can be emptied."""
    size = {i.workload: i for i in items}
    while len(nodes) > 1:
        done = False
        for victim in sorted(nodes, key=lambda n: (n.cpu / max(caps[n.instance_type].cpu, 1e-9), n.count))[:tries]:
            others = sorted((n for n in nodes if n is not victim), key=lambda n: -n.cpu)
            load = {id(n): [n.cpu, n.mem, n.count] for n in others}
            moves: list[tuple[Node, str]] = []
            ok = True
            for w, q in victim.pods.items():
                it = size[w]
                for _ in range(q):
                    target = next(
                        (
                            n
                            for n in others
                            if load[id(n)][0] + it.cpu <= caps[n.instance_type].cpu + 1e-9
                            and load[id(n)][1] + it.mem <= caps[n.instance_type].mem + 1e-6
                            and load[id(n)][2] < caps[n.instance_type].pods
                            and not (it.anti_affinity and (w in n.pods or any(m is n and mw == w for m, mw in moves)))
                        ),
                        None,
                    )
                    if target is None:
                        ok = False
                        break
                    lo = load[id(target)]
                    lo[0], lo[1], lo[2] = lo[0] + it.cpu, lo[1] + it.mem, lo[2] + 1
                    moves.append((target, w))
                if not ok:
                    break
            if not ok:
                continue
            for target, w in moves:
                it = size[w]
                target.pods[w] = target.pods.get(w, 0) + 1
                target.cpu += it.cpu
                target.mem += it.mem
                target.count += 1
            nodes.remove(victim)
            done = True
            break
        if not done:
            break
    return nodes


def _cost(nodes: Iterable[Node], price: Mapping[str, float]) -> float:
    return sum(price[n.instance_type] for n in nodes)


def ffd_best(
    items: Sequence[Item], types: Sequence[NodeType], ds: tuple[float, float, int], open_types: int | None = None
) -> tuple[list[Node], dict[str, int]]:
    """First-fit-decreasing opened with each type in turn (the ``open_types`` cheapest per unit of
    capacity the pods need, and the largest type), then consolidated, each node then moved to the
    cheapest type that holds it; the cheapest result (fewest unplaced pods first)."""
    caps = {t.instance_type: _capacity(t, ds) for t in types}
    price = {t.instance_type: t.usd_per_hour for t in types}
    best: tuple[int, float, list[Node], dict[str, int]] | None = None
    openers = list(types)
    if open_types is not None and len(openers) > open_types:
        ranked = sorted(openers, key=lambda t: (_unit_cost(t, items, ds), t.instance_type))
        largest = max(openers, key=lambda t: (t.cpu, t.mem, -t.usd_per_hour))
        openers = ranked[:open_types] + ([largest] if largest not in ranked[:open_types] else [])
    for t in openers:
        if caps[t.instance_type].pods < 1:
            continue
        nodes, unplaced = first_fit_decreasing(items, t, caps[t.instance_type])
        nodes = _downsize(consolidate(nodes, items, caps), types, caps)
        key = (sum(unplaced.values()), _cost(nodes, price))
        if best is None or key < best[:2]:
            best = (*key, nodes, unplaced)
    if best is None:
        return [], {i.workload: i.count for i in items}
    return best[2], best[3]


def _unit_cost(t: NodeType, items: Sequence[Item], ds: tuple[float, float, int]) -> float:
    """USD per hour of a type per unit of the capacity the pods need, CPU and memory weighted by demand."""
    need_cpu = sum(i.cpu * i.count for i in items)
    need_mem = sum(i.mem * i.count for i in items) / GIB
    c = _capacity(t, ds)
    if c.cpu <= 0 or c.mem <= 0 or c.pods <= 0:
        return math.inf
    per_node = max(need_cpu / c.cpu, need_mem / (c.mem / GIB), sum(i.count for i in items) / c.pods, 1e-9)
    return t.usd_per_hour * per_node


class Budget:
    """Seconds of MILP left for one call: each packing's MILP gets the lesser of its limit and this."""

    def __init__(self, seconds: float) -> None:
        import time

        self._clock = time.monotonic
        self._end = self._clock() + seconds

    def left(self) -> float:
        return max(0.0, self._end - self._clock())


def _solver(time_limit: float, mip: bool = True, **options: float) -> Any:
    import pulp

    # No ``threads``: HiGHS's scheduler is global to the process and refuses a run asking for another thread
    # count than it was started with (the plan's LP may have started it first), which left every bound 0.
    return pulp.HiGHS(msg=False, mip=mip, timeLimit=float(time_limit), **options)


def lp_lower_bound(
    items: Sequence[Item], types: Sequence[NodeType], ds: tuple[float, float, int], integer: bool = False
) -> float:
    """The relaxation over node counts: the cheapest mix of nodes whose total CPU, memory and pod slots
    cover the pods, with, for each workload, at least one node (one per pod under anti-affinity) of a type
    that holds its pod. Fractional counts: the LP relaxation; ``integer``: whole nodes (a stronger bound,
    HiGHS's bound when its time runs out). Any packing costs at least this."""
    import pulp

    caps = [(t, _capacity(t, ds)) for t in types]
    caps = [(t, c) for t, c in caps if c.cpu > 0 and c.mem > 0 and c.pods > 0]
    if not items or not caps:
        return 0.0
    prob = pulp.LpProblem("nodes_bound", pulp.LpMinimize)
    cat = pulp.LpInteger if integer else pulp.LpContinuous
    n = [prob.add_variable(f"n{k}", 0, None, cat) for k in range(len(caps))]
    prob += pulp.lpSum(t.usd_per_hour * v for (t, _), v in zip(caps, n, strict=True))
    prob += pulp.lpSum(c.cpu * v for (_, c), v in zip(caps, n, strict=True)) >= sum(i.cpu * i.count for i in items)
    prob += pulp.lpSum(c.mem / GIB * v for (_, c), v in zip(caps, n, strict=True)) >= sum(
        i.mem / GIB * i.count for i in items
    )
    prob += pulp.lpSum(c.pods * v for (_, c), v in zip(caps, n, strict=True)) >= sum(i.count for i in items)
    needs: dict[tuple[int, ...], int] = {}
    for i in items:
        fits = tuple(k for k, (_, c) in enumerate(caps) if _fits_one(i, c))
        if fits:
            needs[fits] = max(needs.get(fits, 0), i.count if i.anti_affinity else 1)
    for fits, least in needs.items():
        prob += pulp.lpSum(n[k] for k in fits) >= least
    prob.solve(_solver(2.0, mip=integer))
    if pulp.LpStatus[prob.status] == "Optimal" and prob.sol_status == pulp.LpSolutionOptimal:
        return float(pulp.value(prob.objective) or 0.0)
    if integer:
        try:
            bound = float(prob.solverModel.getInfo().mip_dual_bound)
        except Exception:  # no HiGHS model handle: fall back to the LP
            bound = math.nan
        return bound if math.isfinite(bound) else lp_lower_bound(items, types, ds)
    return 0.0


def _milp(
    items: Sequence[Item],
    types: Sequence[NodeType],
    ds: tuple[float, float, int],
    incumbent: float,
    settings: NodePoolSettings,
    time_limit: float,
) -> tuple[list[Node], float, str] | None:
    """Exact packing: node slots per type (no more of a type than the incumbent's cost allows), pods of each
    workload as integer counts per slot. Returns (nodes, HiGHS lower bound, status) or None."""
    import pulp

    caps = {t.instance_type: _capacity(t, ds) for t in types}
    slots: list[tuple[NodeType, int]] = []
    for t in types:
        c = caps[t.instance_type]
        if c.pods < 1 or not any(_fits_one(i, c) for i in items):
            continue
        slots += [(t, k) for k in range(math.floor(incumbent / t.usd_per_hour + 1e-9))]
    if not slots:
        return None
    pairs = [
        (i, s)
        for i in range(len(items))
        for s in range(len(slots))
        if _fits_one(items[i], caps[slots[s][0].instance_type])
    ]
    if len(slots) + len(pairs) > settings.milp_max_variables:
        return None
    prob = pulp.LpProblem("nodes_milp", pulp.LpMinimize)
    y = [prob.add_variable(f"y{s}", 0, 1, pulp.LpBinary) for s in range(len(slots))]
    x: dict[tuple[int, int], Any] = {}
    for i, s in pairs:
        it = items[i]
        cap = caps[slots[s][0].instance_type]
        top = (
            1
            if it.anti_affinity
            else min(it.count, cap.pods, int(cap.cpu // max(it.cpu, 1e-9)) if it.cpu > 0 else it.count)
        )
        if it.mem > 0:
            top = min(top, int(cap.mem // it.mem))
        if top >= 1:
            x[(i, s)] = prob.add_variable(f"x{i}_{s}", 0, top, pulp.LpInteger)
    prob += pulp.lpSum(slots[s][0].usd_per_hour * y[s] for s in range(len(slots)))
    by_item: dict[int, list[Any]] = defaultdict(list)
    by_slot: dict[int, list[tuple[int, Any]]] = defaultdict(list)
    for (i, s), v in x.items():
        by_item[i].append(v)
        by_slot[s].append((i, v))
    for i, it in enumerate(items):
        if not by_item[i]:
            return None
        prob += pulp.lpSum(by_item[i]) == it.count
    for s, (t, k) in enumerate(slots):
        cap = caps[t.instance_type]
        members = by_slot[s]
        prob += pulp.lpSum(items[i].cpu * v for i, v in members) <= cap.cpu * y[s]
        prob += pulp.lpSum(items[i].mem / GIB * v for i, v in members) <= cap.mem / GIB * y[s]
        prob += pulp.lpSum(v for _, v in members) <= cap.pods * y[s]
        for i, v in members:
            if items[i].anti_affinity:
                prob += v <= y[s]
        if k > 0:  # identical slots of one type are used in order: fewer symmetric solutions
            prob += y[s] <= y[s - 1]
    # Only a strictly cheaper packing is of use: HiGHS prunes everything at or above the incumbent, and
    # "infeasible" then proves the incumbent optimal.
    cutoff = incumbent * (1 - 1e-7) - 1e-9
    solver = _solver(time_limit, objective_bound=cutoff)
    try:
        prob.solve(solver)
    except pulp.PulpSolverError:
        return None
    try:
        dual = float(prob.solverModel.getInfo().mip_dual_bound)
    except Exception:  # a PuLP without the HiGHS model handle: no bound beyond the LP's
        dual = math.nan
    dual = dual if math.isfinite(dual) else 0.0
    if prob.status == pulp.LpStatusInfeasible:
        return [], incumbent, "incumbent_optimal"
    if prob.sol_status not in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible):
        # Out of time with nothing cheaper: the optimum is under the cutoff (then at least the bound) or not.
        return [], min(dual, incumbent), "milp_no_better"
    status = "milp_optimal" if prob.sol_status == pulp.LpSolutionOptimal else "milp_time_limit"
    nodes: list[Node] = []
    for s, (t, _) in enumerate(slots):
        if (y[s].varValue or 0) < 0.5:
            continue
        n = Node(t.instance_type)
        for i, v in by_slot[s]:
            q = round(v.varValue or 0)
            if q:
                n.pods[items[i].workload] = q
                n.cpu += items[i].cpu * q
                n.mem += items[i].mem * q
                n.count += q
        nodes.append(n)
    if status == "milp_optimal":
        dual = max(dual, _cost(nodes, {t.instance_type: t.usd_per_hour for t in types}) * (1 - 1e-6))
    return nodes, dual, status


def pack(
    items: Sequence[Item],
    types: Sequence[NodeType],
    daemonset_overhead: tuple[float, float, int] = (0.0, 0.0, 0),
    settings: NodePoolSettings | None = None,
    budget: Budget | None = None,
) -> Packing:
    """The cheapest packing of ``items`` on nodes of ``types`` found by first-fit-decreasing and, when the
    model is small enough and time is left, the MILP; always with the lower bound it is measured against."""
    settings = settings or NodePoolSettings()
    items = [i for i in items if i.count > 0]
    if not items:
        return Packing([], 0.0, 0.0, "empty")
    price = {t.instance_type: t.usd_per_hour for t in types}
    nodes, unplaced = ffd_best(items, types, daemonset_overhead, settings.ffd_open_types)
    placeable = [i for i in items if i.workload not in unplaced]
    cost = _cost(nodes, price)
    lp = lp_lower_bound(placeable, types, daemonset_overhead)
    lb = max(lp, lp_lower_bound(placeable, types, daemonset_overhead, integer=True)) if cost > lp * (1 + 1e-6) else lp
    method = "ffd"
    limit = min(settings.milp_time_limit_s, budget.left() if budget is not None else math.inf)
    if placeable and cost > lb * (1 + settings.milp_skip_gap_pct / 100) and limit > 0.05:
        milp_types = _milp_types(placeable, types, nodes, daemonset_overhead, settings, cost)
        found = _milp(placeable, milp_types, daemonset_overhead, cost, settings, limit)
        if found is not None:
            m_nodes, bound, status = found
            if len(milp_types) < len(types):
                bound = 0.0  # a bound over some types only does not bound the whole problem
            lb = max(lb, bound)
            if m_nodes and _cost(m_nodes, price) < cost - 1e-9:
                nodes, cost, method = m_nodes, _cost(m_nodes, price), status
            elif status == "incumbent_optimal" and len(milp_types) == len(types):
                method = "ffd=milp_optimal"
            else:
                method = "ffd"
    return Packing(nodes, cost, min(lb, cost), method, unplaced, min(lp, cost))


def _milp_types(
    items: Sequence[Item],
    types: Sequence[NodeType],
    ffd_nodes: Sequence[Node],
    ds: tuple[float, float, int],
    settings: NodePoolSettings,
    incumbent: float,
) -> list[NodeType]:
    """The types the MILP chooses among: all when few or when the model over all of them stays within
    ``milp_max_variables`` (so that it can prove optimality), else those first-fit-decreasing used and
    the cheapest per unit of the capacity the pods need."""
    slots = sum(math.floor(incumbent / t.usd_per_hour + 1e-9) for t in types if t.usd_per_hour > 0)
    if len(types) <= settings.milp_max_types or slots * (1 + len(items)) <= settings.milp_max_variables:
        return list(types)

    def unit_cost(t: NodeType) -> float:
        return _unit_cost(t, items, ds)

    used = {n.instance_type for n in ffd_nodes}
    chosen = [t for t in types if t.instance_type in used]
    for t in sorted(types, key=unit_cost):
        if len(chosen) >= settings.milp_max_types:
            break
        if t not in chosen:
            chosen.append(t)
    return chosen


# ------------------------------------------------------------------------------------------ inputs


def _loads(text: Any, default: Any) -> Any:
    if text is None or text == "":
        return default
    if isinstance(text, (dict, list)):
        return text
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return default


def region_of_zone(zone: str | None) -> str | None:
    """``us-east-1a`` -> ``us-east-1`` (local and wavelength zones too: ``us-west-2-lax-1a``)."""
    if not zone:
        return None
    m = _REGION.match(zone)
    return m.group(1) if m else None


def _recommended_map(recommended: RecommendedRequests | None) -> dict[tuple[str, str], tuple[float, float]]:
    if recommended is None:
        return {}
    if isinstance(recommended, Mapping):
        return {(str(k[0]), str(k[1])): (float(v[0]), float(v[1])) for k, v in recommended.items()}
    rows = recommended.to_pylist() if isinstance(recommended, pa.Table) else list(recommended)
    out: dict[tuple[str, str], tuple[float, float]] = {}
    for r in rows:
        missing = [k for k in ("resource_id", "container", "cpu_cores", "mem_bytes") if k not in r]
        if missing:
            raise NodePoolInputError(
                f"recommended requests need the columns resource_id, container, cpu_cores, mem_bytes; "
                f"missing {', '.join(missing)}"
            )
        if r["cpu_cores"] is None or r["mem_bytes"] is None:
            continue
        out[(str(r["resource_id"]), str(r["container"]))] = (float(r["cpu_cores"]), float(r["mem_bytes"]))
    return out


def _toleration_matches(tol: Mapping[str, Any], taint: Mapping[str, Any]) -> bool:
    if tol.get("effect") and tol.get("effect") != taint.get("effect"):
        return False
    if tol.get("operator") == "Exists":
        return not tol.get("key") or tol.get("key") == taint.get("key")
    return tol.get("key") == taint.get("key") and (tol.get("value") or "") == (taint.get("value") or "")


def tolerates(tolerations: Sequence[Mapping[str, Any]], taints: Sequence[Mapping[str, Any]]) -> bool:
    """True when every NoSchedule / NoExecute taint is matched by a toleration (PreferNoSchedule never bars)."""
    return all(
        any(_toleration_matches(t, taint) for t in tolerations)
        for taint in taints
        if taint.get("effect") in ("NoSchedule", "NoExecute")
    )


@dataclass
class Workload:
    resource_id: str
    cluster: str
    kind: str
    namespace: str
    name: str
    pods: int
    min_pods: int
    max_pods: int
    cpu: float  # per pod, recommended
    mem: float
    cpu_now: float  # per pod, today's requests
    mem_now: float
    labels: dict[str, str]
    attributes: dict[str, Any]
    covered: bool  # every container had a recommendation
    spot_ready: bool = False
    spot_reason: str = ""
    pool: str | None = None

    @property
    def anti_affinity(self) -> bool:
        return bool(self.attributes.get("anti_affinity"))


@dataclass
class Pool:
    cluster: str
    name: str
    nodes: list[dict[str, Any]]
    taints: list[dict[str, Any]]
    labels: dict[str, str]

    @property
    def resource_id(self) -> str:
        return f"{self.cluster}/nodepool/{self.name}"

    @property
    def zones(self) -> list[str | None]:
        return sorted({n["zone"] for n in self.nodes if n["zone"]}) or [None]


UNPOOLED = "unpooled"


def _pools(rows: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], Pool]:
    by: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if (r["object_kind"] or "").lower() == "node":
            by[(r["cluster"], r["nodepool"] or UNPOOLED)].append(dict(r))
    pools = {}
    for (cluster, name), nodes in sorted(by.items()):
        taint_sets = [
            {
                json.dumps(t, sort_keys=True)
                for t in _loads(n["taints"], [])
                if t.get("effect") in ("NoSchedule", "NoExecute")
            }
            for n in nodes
        ]
        common = set.intersection(*taint_sets) if taint_sets else set()
        label_sets = [set(_loads(n["labels"], {}).items()) for n in nodes]
        labels = dict(set.intersection(*label_sets)) if label_sets else {}
        pools[(cluster, name)] = Pool(cluster, name, nodes, [json.loads(t) for t in sorted(common)], labels)
    return pools


def _workloads(
    rows: Sequence[Mapping[str, Any]],
    recommended: Mapping[tuple[str, str], tuple[float, float]],
    settings: NodePoolSettings,
) -> tuple[list[Workload], list[Workload]]:
    """(workloads, daemonsets) with per-pod requests summed over containers."""
    hpas: dict[str, Mapping[str, Any]] = {}
    pdbs: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    by_id: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for r in rows:
        kind = (r["object_kind"] or "").lower()
        if kind == "hpa" and r["target_id"]:
            hpas[r["target_id"]] = r
        elif kind == "pdb" and r["target_id"]:
            pdbs[r["target_id"]].append(r)
        elif kind in _WORKLOAD_KINDS or kind == "daemonset":
            by_id[r["resource_id"]].append(r)
    workloads, daemonsets = [], []
    for rid, containers in sorted(by_id.items()):
        first = containers[0]
        kind = first["object_kind"].lower()
        cpu = mem = cpu_now = mem_now = 0.0
        covered = True
        for c in containers:
            now = (c["cpu_request_cores"] or 0.0, c["mem_request_bytes"] or 0.0)
            rec = recommended.get((rid, c["container"] or ""))
            if rec is None:
                covered = False
                rec = now
            cpu += rec[0]
            mem += rec[1]
            cpu_now += now[0]
            mem_now += now[1]
        cpu, mem = max(cpu, settings.min_pod_cpu_cores), max(mem, settings.min_pod_mem_bytes)
        if kind in ("deployment", "statefulset", "replicaset"):
            pods = int(first["replicas"] if first["replicas"] is not None else first["pods"] or 0)
        elif kind == "pod":
            pods = 1
        elif kind == "daemonset":
            pods = int(first["replicas"] or 0)
        else:
            pods = int(first["pods"] or 0)
        hpa = hpas.get(rid)
        lo = hi = pods
        if hpa is not None:
            lo = int(hpa["min_replicas"] if hpa["min_replicas"] is not None else pods)
            hi = int(hpa["max_replicas"] if hpa["max_replicas"] is not None else pods)
            pods = int(hpa["current_replicas"] or pods)
        if kind in _JOB_KINDS:
            lo = 0
        w = Workload(
            resource_id=rid,
            cluster=first["cluster"],
            kind=kind,
            namespace=first["namespace"] or "",
            name=first["name"] or "",
            pods=pods,
            min_pods=min(lo, pods),
            max_pods=max(hi, pods),
            cpu=cpu,
            mem=mem,
            cpu_now=cpu_now,
            mem_now=mem_now,
            labels=_loads(first["labels"], {}),
            attributes=_loads(first["attributes"], {}),
            covered=covered,
        )
        if kind == "daemonset":
            daemonsets.append(w)
        else:
            w.spot_ready, w.spot_reason = spot_readiness(w, pdbs.get(rid, []), settings)
            workloads.append(w)
    return workloads, daemonsets


def spot_readiness(w: Workload, pdbs: Sequence[Mapping[str, Any]], settings: NodePoolSettings) -> tuple[bool, str]:
    """Whether a workload may run on spot nodes, and why. The ``cloudopt.io/spot`` annotation (or label)
    decides when present; otherwise a Deployment with more than one replica, a PodDisruptionBudget that
    allows a disruption, and no local state (emptyDir, PVC, hostPath or ephemeral volumes)."""
    annotations = w.attributes.get("annotations") or {}
    flag = annotations.get(SPOT_ANNOTATION, w.labels.get(SPOT_ANNOTATION))
    if flag is not None:
        text = str(flag).strip().lower()
        if text in ("true", "false"):
            return text == "true", f"annotation {SPOT_ANNOTATION}={text}"
    if w.kind != "deployment":
        return False, f"a {w.kind}, not a Deployment"
    if w.pods <= 1:
        return False, "a single replica"
    if not pdbs:
        return False, "no PodDisruptionBudget"
    if not any(_pdb_allows(p, w.pods) for p in pdbs):
        return False, "its PodDisruptionBudget allows no disruption"
    volumes = w.attributes.get("volumes")
    if volumes is None:
        if settings.spot_require_volume_info:
            return False, "volumes not collected (spot_require_volume_info)"
        return True, "Deployment, >1 replica, PDB allows disruption; volumes not collected, assumed stateless"
    local = sorted({k for v in volumes for k in (v if isinstance(v, Mapping) else {v: 1}) if k in _LOCAL_STATE_VOLUMES})
    if local:
        return False, f"local state ({', '.join(local)} volume)"
    return True, "Deployment, >1 replica, PDB allows disruption, no local state"


def _pdb_allows(pdb: Mapping[str, Any], replicas: int) -> bool:
    a = _loads(pdb["attributes"], {})
    if a.get("disruptions_allowed") is not None:
        return int(a["disruptions_allowed"]) > 0

    def count(v: Any) -> int:
        if isinstance(v, str) and v.endswith("%"):
            return math.floor(replicas * float(v[:-1]) / 100)
        return int(v)

    if a.get("max_unavailable") is not None:
        return count(a["max_unavailable"]) > 0
    if a.get("min_available") is not None:
        v = a["min_available"]
        need = math.ceil(replicas * float(v[:-1]) / 100) if isinstance(v, str) and v.endswith("%") else int(v)
        return need < replicas
    return False


def eligible_pools(w: Workload, pools: Sequence[Pool]) -> list[Pool]:
    """The cluster's pools the workload may run in: its ``nodepool`` pin, its ``node_selector`` against
    the labels every node of the pool has, and the pool's taints against its ``tolerations``."""
    a = w.attributes
    out = []
    for p in pools:
        if p.cluster != w.cluster:
            continue
        if a.get("nodepool") and a["nodepool"] != p.name:
            continue
        selector = a.get("node_selector") or {}
        if any(p.labels.get(k) != v for k, v in selector.items()):
            continue
        if not tolerates(a.get("tolerations") or [], p.taints):
            continue
        out.append(p)
    return out


def _hard_tainted(pool: Pool) -> bool:
    return any(t.get("effect") in ("NoSchedule", "NoExecute") for t in pool.taints)


def _choose_pool(w: Workload, pools: Sequence[Pool]) -> Pool | None:
    """Tainted pools the workload tolerates are dedicated to it: they come first; then the largest."""
    eligible = eligible_pools(w, pools)
    if not eligible:
        return None
    return max(
        eligible, key=lambda p: (_hard_tainted(p), sum(n["allocatable_cpu_cores"] or 0 for n in p.nodes), p.name)
    )


def spread_over_zones(
    workloads: Sequence[Workload], zones: Sequence[str | None], count: str = "pods"
) -> dict[str | None, list[tuple[Workload, int]]]:
    """Each workload's pods over the zones with a skew of at most one (``topologySpreadConstraints`` on
    ``topology.kubernetes.io/zone``, maxSkew 1): the remainder goes to the zones with the least CPU so far."""
    out: dict[str | None, list[tuple[Workload, int]]] = {z: [] for z in zones}
    load = dict.fromkeys(zones, 0.0)
    for w in sorted(workloads, key=lambda w: (-w.cpu * getattr(w, count), w.resource_id)):
        n = getattr(w, count)
        if n <= 0:
            continue
        base, rest = divmod(n, len(zones))
        extra = set(sorted(zones, key=lambda z: (load[z], str(z)))[:rest])
        for z in zones:
            q = base + (1 if z in extra else 0)
            if q:
                out[z].append((w, q))
                load[z] += q * w.cpu
    return out


# ------------------------------------------------------------------------------------------ pools


def _catalog_rows(catalog: PriceCatalog | pa.Table) -> tuple[PriceCatalog, dict[str, list[dict[str, Any]]]]:
    table = catalog if isinstance(catalog, pa.Table) else None
    pc = catalog if isinstance(catalog, PriceCatalog) else PriceCatalog(catalog)
    rows = table.to_pylist() if table is not None else list(pc._rows.values())
    by_region: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_region[r["region"]].append(r)
    return pc, by_region


def candidate_rows(
    region_rows: Sequence[Mapping[str, Any]], current: Sequence[Mapping[str, Any]], settings: NodePoolSettings
) -> list[Mapping[str, Any]]:
    """The catalogue rows a pool may move to: the pool's architecture, current generation, no GPU, within
    the vCPU range, in ``families`` (default: the pool's families and c, m, r of the newest generations);
    today's types always."""
    archs = {r["architecture"] for r in current} or {"x86_64"}
    gpu = any((r.get("gpu_count") or 0) > 0 for r in current)
    burst = settings.allow_burstable or any(r.get("burstable") for r in current)
    fams = set(settings.families) if settings.families else {r["family"] for r in current}
    names = {r["instance_type"] for r in current}
    out = []
    for r in region_rows:
        if r["instance_type"] in names:
            out.append(r)
            continue
        if r["architecture"] not in archs or r["generation"] != "current" or ((r.get("gpu_count") or 0) > 0) != gpu:
            continue
        if r.get("burstable") and not burst:
            continue
        if not settings.min_node_vcpu <= (r["vcpu"] or 0) <= settings.max_node_vcpu:
            continue
        fam = r["family"] or ""
        if settings.families is None:
            if fam not in fams and not re.fullmatch(r"[cmr][5-8][a-z]*", fam):
                continue
            if re.search(r"(n|d|dn|en|z|b|flex)$", fam[2:]) and fam not in fams:
                continue  # network-, disk- and frequency-tuned variants cost more for the same shape
        elif fam not in fams:
            continue
        out.append(r)
    return out


def _prune_dominated(types: Sequence[NodeType]) -> list[NodeType]:
    """Drop a type when another holds at least as much of everything for no more money."""
    out = []
    for t in types:
        if not any(
            o is not t
            and o.cpu >= t.cpu
            and o.mem >= t.mem
            and o.max_pods >= t.max_pods
            and o.usd_per_hour <= t.usd_per_hour
            and (o.usd_per_hour, o.instance_type) < (t.usd_per_hour, t.instance_type)
            for o in types
        ):
            out.append(t)
    return sorted(out, key=lambda t: (t.usd_per_hour, t.instance_type))


def diversified_spot_types(
    od: Sequence[NodeType], spot: Mapping[str, NodeType], settings: NodePoolSettings
) -> list[NodeType]:
    """Spot node types priced as a diversified fleet: for each shape, the ``min_spot_types`` cheapest spot
    types of its size class (same vCPU, else up to twice) that hold at least its allocatable; its price
    and interruption band are their mean. A shape with fewer types keeps the ones it has (reported)."""
    pool = [s for s in spot.values() if s.band is not None and s.band <= settings.max_spot_band]
    out = []
    for t in od:
        if t.instance_type not in spot:
            continue
        same = [
            s
            for s in pool
            if s.vcpu == t.vcpu and s.cpu >= t.cpu - 1e-9 and s.mem >= t.mem and s.max_pods >= t.max_pods
        ]
        if len(same) < settings.min_spot_types:
            same = [
                s
                for s in pool
                if t.vcpu <= s.vcpu <= 2 * t.vcpu
                and s.cpu >= t.cpu - 1e-9
                and s.mem >= t.mem
                and s.max_pods >= t.max_pods
            ]
        same = sorted(same, key=lambda s: (s.usd_per_hour, s.instance_type))[: settings.min_spot_types]
        if not same:
            continue
        out.append(
            replace(
                t,
                usd_per_hour=sum(s.usd_per_hour for s in same) / len(same),
                band=sum(s.band or 0.0 for s in same) / len(same),
                spot_types=tuple(s.instance_type for s in same),
            )
        )
    return _prune_dominated(out)


@dataclass
class PoolPlan:
    """The packings of one pool for one option, zone by zone."""

    zones: dict[str | None, Packing]
    spot_zones: dict[str | None, Packing] = field(default_factory=dict)

    def all(self) -> list[tuple[str | None, str, Packing]]:
        return [(z, "on_demand", p) for z, p in self.zones.items()] + [
            (z, "spot", p) for z, p in self.spot_zones.items()
        ]

    @property
    def usd_per_hour(self) -> float:
        return sum(p.usd_per_hour for _, _, p in self.all())

    @property
    def lower_bound(self) -> float:
        return sum(p.lower_bound_usd_per_hour for _, _, p in self.all())

    @property
    def gap_pct(self) -> float:
        c = self.usd_per_hour
        return 0.0 if c <= 0 else max(0.0, 100 * (c - self.lower_bound) / c)

    def methods(self) -> list[str]:
        return sorted({p.method for _, _, p in self.all()})

    def unplaced(self) -> dict[str, int]:
        out: Counter[str] = Counter()
        for _, _, p in self.all():
            out.update(p.unplaced)
        return dict(out)


def plan_pool(
    workloads: Sequence[Workload],
    zones: Sequence[str | None],
    od_types: Sequence[NodeType],
    spot_types: Sequence[NodeType],
    ds: tuple[float, float, int],
    settings: NodePoolSettings,
    use_spot: bool,
    count: str = "pods",
    exact: bool = True,
    budget: Budget | None = None,
) -> PoolPlan:
    """Spread over zones, then pack each zone: spot-ready pods on spot types when ``use_spot``."""
    zs = list(zones) if settings.zone_spread else [zones[0]]
    od_part = [w for w in workloads if not (use_spot and w.spot_ready)]
    spot_part = [w for w in workloads if use_spot and w.spot_ready]

    def run(part: Sequence[Workload], types: Sequence[NodeType]) -> dict[str | None, Packing]:
        out = {}
        for z, members in spread_over_zones(part, zs, count).items():
            items = [Item(w.resource_id, w.cpu, w.mem, q, w.anti_affinity) for w, q in members]
            if exact:
                out[z] = pack(items, types, ds, settings, budget)
            else:
                nodes, unplaced = ffd_best(items, types, ds, settings.ffd_open_types)
                price = {t.instance_type: t.usd_per_hour for t in types}
                out[z] = Packing(nodes, _cost(nodes, price), 0.0, "ffd", unplaced)
        return out

    plan = PoolPlan(run(od_part, od_types))
    if spot_part:
        plan.spot_zones = run(spot_part, spot_types)
    return plan


# ------------------------------------------------------------------------------------------ rows


def _consolidation(pool: Pool, node_usage: pa.Table | None, settings: NodePoolSettings) -> list[dict[str, Any]]:
    """Nodes that could go: cordoned or not ready, and (with node usage) those under both thresholds."""
    usage: dict[str, tuple[float, float]] = {}
    if node_usage is not None and node_usage.num_rows:
        acc: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for r in node_usage.select(["resource_id", "scope", "cpu_cores", "mem_bytes"]).to_pylist():
            if r["scope"] == "node" and r["cpu_cores"] is not None:
                acc[r["resource_id"]].append((r["cpu_cores"], r["mem_bytes"] or 0.0))
        usage = {k: (sum(c for c, _ in v) / len(v), max(m for _, m in v)) for k, v in acc.items()}
    out = []
    for n in pool.nodes:
        a = _loads(n["attributes"], {})
        reason = None
        if a.get("unschedulable"):
            reason = "cordoned"
        elif a.get("ready") not in (None, "True"):
            reason = "not ready"
        elif n["resource_id"] in usage and n["allocatable_cpu_cores"] and n["allocatable_mem_bytes"]:
            cpu, mem = usage[n["resource_id"]]
            cpu_pct = 100 * cpu / n["allocatable_cpu_cores"]
            mem_pct = 100 * mem / n["allocatable_mem_bytes"]
            if cpu_pct < settings.consolidation_cpu_pct and mem_pct < settings.consolidation_mem_pct:
                reason = f"under-used: mean CPU {cpu_pct:.0f} %, peak memory {mem_pct:.0f} % of allocatable"
        if reason:
            out.append({"node": n["name"], "instance_type": n["instance_type"], "zone": n["zone"], "reason": reason})
    return out


def _nodes_json(plan: PoolPlan) -> list[dict[str, Any]]:
    c: Counter[tuple[str, str, str | None]] = Counter()
    for z, market, p in plan.all():
        for n in p.nodes:
            c[(n.instance_type, "spot" if market == "spot" else "on-demand", z)] += 1
    return [
        {"instance_type": it, "count": k, "capacity_type": ct, "zone": z}
        for (it, ct, z), k in sorted(c.items(), key=lambda kv: (kv[0][0], kv[0][1], str(kv[0][2])))
    ]


def plan_counts(plan: PoolPlan) -> Counter[str]:
    """Nodes per instance type over every zone and market of a plan."""
    return Counter(n.instance_type for _, _, p in plan.all() for n in p.nodes)


def _floor(plan: PoolPlan, region: str | None) -> list[dict[str, Any]]:
    c: Counter[tuple[str, str | None]] = Counter()
    for z, market, p in plan.all():
        if market == "on_demand":
            for n in p.nodes:
                c[(n.instance_type, z)] += 1
    return [
        {"instance_type": it, "zone": z, "region": region, "count": k, "node_hours_per_month": k * HOURS_PER_MONTH}
        for (it, z), k in sorted(c.items(), key=lambda kv: (kv[0][0], str(kv[0][1])))
    ]


def pool_unit_costs(workloads: pa.Table, catalog: PriceCatalog | pa.Table) -> dict[str, dict[str, float]]:
    """Per pool id: USD per allocatable core-hour and GiB-hour of today's nodes (spot nodes at their
    spot price), half the node price on each; what workload rows price request cuts with."""
    pc, _ = _catalog_rows(catalog)
    out: dict[str, dict[str, float]] = {}
    for pool in _pools(workloads.to_pylist()).values():
        usd = cpu = mem = 0.0
        for n in pool.nodes:
            region = region_of_zone(n["zone"])
            if not n["instance_type"] or not region or (region, n["instance_type"]) not in pc:
                continue
            row = pc.get(region, n["instance_type"])
            price = (
                row["spot_usd_per_hour"]
                if n["capacity_type"] == "spot" and row["spot_usd_per_hour"]
                else row["ondemand_usd_per_hour"]
            )
            usd += price
            cpu += n["allocatable_cpu_cores"] or row["vcpu"]
            mem += (n["allocatable_mem_bytes"] or row["memory_gib"] * GIB) / GIB
        if usd and cpu and mem:
            out[pool.resource_id] = {"usd_per_core_hour": usd / 2 / cpu, "usd_per_gib_hour": usd / 2 / mem}
    return out


def best_workload_savings(rows: pa.Table) -> dict[str, float]:
    """resource_id -> monthly saving of the best option of every ``k8s_workload`` row in a
    RECOMMENDATIONS table (what the workload rows claim; missing savings count as 0)."""
    out: dict[str, float] = {}
    for r in rows.select(["resource_id", "resource_kind", "is_best", "monthly_savings_usd"]).to_pylist():
        if r["resource_kind"] == "k8s_workload" and r["is_best"]:
            out[r["resource_id"]] = out.get(r["resource_id"], 0.0) + max(0.0, r["monthly_savings_usd"] or 0.0)
    return out


def recommend_node_pools(
    workloads: pa.Table,
    recommended: RecommendedRequests | None,
    catalog: PriceCatalog | pa.Table,
    *,
    settings: NodePoolSettings | None = None,
    workload_savings: Mapping[str, float] | pa.Table | None = None,
    node_usage: pa.Table | None = None,
    account_id: str | None = None,
    day: date | None = None,
    eni_limits: Mapping[str, tuple[int, int]] | None = None,
) -> pa.Table:
    """Node-pool rows (``RECOMMENDATIONS`` shape) for every pool of every cluster in ``workloads``."""
    settings = settings or NodePoolSettings()
    missing = [c for c in ("object_kind", "cluster", "resource_id", "nodepool") if c not in workloads.column_names]
    if missing:
        raise NodePoolInputError(f"workloads is not a k8s_workloads table: missing {', '.join(missing)}")
    rows = workloads.to_pylist()
    if not rows:
        return RECOMMENDATIONS.empty_table()
    eni = dict(eni_limits) if eni_limits is not None else load_eni_limits()
    pc, by_region = _catalog_rows(catalog)
    rec = _recommended_map(recommended)
    saved = (
        best_workload_savings(workload_savings)
        if isinstance(workload_savings, pa.Table)
        else dict(workload_savings or {})
    )
    pools = _pools(rows)
    wls, dss = _workloads(rows, rec, settings)
    assigned: dict[tuple[str, str], list[Workload]] = defaultdict(list)
    unplaceable: dict[str, list[str]] = defaultdict(list)
    for w in wls:
        if w.pods <= 0 and w.max_pods <= 0:
            continue
        p = _choose_pool(w, list(pools.values()))
        if p is None:
            unplaceable[w.cluster].append(w.resource_id)
            continue
        w.pool = p.name
        assigned[(p.cluster, p.name)].append(w)
    out: list[dict[str, Any]] = []
    budget = Budget(settings.milp_time_budget_s)
    ds_by_pool = {
        key: [
            d
            for d in dss
            if d.cluster == pool.cluster
            and all(pool.labels.get(k) == v for k, v in (d.attributes.get("node_selector") or {}).items())
        ]
        for key, pool in pools.items()
    }
    ds_nodes: dict[str, int] = defaultdict(int)
    for key, ds_here in ds_by_pool.items():
        for d in ds_here:
            ds_nodes[d.resource_id] += len(pools[key].nodes)
    for key, pool in pools.items():
        ds_here = ds_by_pool[key]
        ds = (sum(d.cpu for d in ds_here), sum(d.mem for d in ds_here), len(ds_here))
        # which workload rows' cost runs on this pool (a DaemonSet's split by node count): the plan's
        # adapter counts the node money once with it (KubernetesOptimizer.candidates)
        claims = {w.resource_id: 1.0 for w in assigned.get(key, [])}
        for d in ds_here:
            if ds_nodes[d.resource_id]:
                claims[d.resource_id] = round(len(pool.nodes) / ds_nodes[d.resource_id], 6)
        # a workload no pool can take runs somewhere today: the cluster's largest pool reports and claims it
        left_out = unplaceable.pop(pool.cluster, []) if pool is _largest(pools.values(), pool.cluster) else []
        claims.update(dict.fromkeys(left_out, 1.0))
        out += _with_claims(
            claims,
            _pool_rows(
                pool,
                assigned.get(key, []),
                ds,
                ds_here,
                pc,
                by_region,
                eni,
                settings,
                saved,
                node_usage,
                left_out,
                account_id or pool.nodes[0]["account_id"],
                day or pool.nodes[0]["date"],
                budget,
            ),
        )
    table = pa.Table.from_pylist(out, schema=RECOMMENDATIONS)
    return table


def _with_claims(claims: Mapping[str, float], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` with ``details.workload_claims``: workload resource_id -> share of its cost on this pool."""
    for r in rows:
        details = json.loads(r.get("details") or "{}")
        details["workload_claims"] = dict(sorted(claims.items()))
        r["details"] = json.dumps(details, sort_keys=True, default=str)
    return rows


def _largest(pools: Iterable[Pool], cluster: str) -> Pool | None:
    mine = [p for p in pools if p.cluster == cluster]
    return max(mine, key=lambda p: (len(p.nodes), p.name)) if mine else None


def _pool_rows(
    pool: Pool,
    workloads: Sequence[Workload],
    ds: tuple[float, float, int],
    daemonsets: Sequence[Workload],
    pc: PriceCatalog,
    by_region: Mapping[str, Sequence[Mapping[str, Any]]],
    eni: Mapping[str, tuple[int, int]],
    settings: NodePoolSettings,
    saved: Mapping[str, float],
    node_usage: pa.Table | None,
    unplaceable: Sequence[str],
    account_id: str,
    day: date,
    budget: Budget,
) -> list[dict[str, Any]]:
    region = next((region_of_zone(n["zone"]) for n in pool.nodes if region_of_zone(n["zone"])), None)
    current_rows, current_cost, unpriced = [], 0.0, []
    observed: dict[str, tuple[float, float]] = {}
    for n in pool.nodes:
        it = n["instance_type"]
        if not it or not region or (region, it) not in pc:
            unpriced.append(it or "?")
            continue
        row = pc.get(region, it)
        current_rows.append(row)
        spot = n["capacity_type"] == "spot" and row["spot_usd_per_hour"] is not None
        current_cost += row["spot_usd_per_hour"] if spot else row["ondemand_usd_per_hour"]
        if n["allocatable_cpu_cores"] and n["allocatable_mem_bytes"]:
            o = observed.get(it, (math.inf, math.inf))
            observed[it] = (min(o[0], n["allocatable_cpu_cores"]), min(o[1], n["allocatable_mem_bytes"]))
    current_cfg = {
        "cluster": pool.cluster,
        "nodepool": pool.name,
        "nodes": [
            {"instance_type": it, "count": k, "capacity_type": ct, "zone": z}
            for (it, ct, z), k in sorted(
                Counter((n["instance_type"], n["capacity_type"], n["zone"]) for n in pool.nodes).items(), key=str
            )
        ],
    }
    base = {
        "account_id": account_id,
        "date": day,
        "resource_id": pool.resource_id,
        "resource_kind": "k8s_nodepool",
        "deployment_type": "kubernetes",
        "region": region,
        "zone": pool.zones[0] if len(pool.zones) == 1 else None,
        "current_config": json.dumps(current_cfg, sort_keys=True),
        "one_time_cost_usd": 0.0,
        "protected": any(
            is_protected(_loads(n["labels"], {}), key) for n in pool.nodes for key in (PROTECT_LABEL, PROTECT_TAG_KEY)
        ),
        "risk_setting": settings.risk_setting,
        "is_estimate": any(r.get("is_estimate") for r in current_rows),
    }
    keep_vcpu = sum(r["vcpu"] for r in current_rows)
    keep_mem = sum(r["memory_gib"] for r in current_rows)
    keep = {
        **base,
        "option_name": "keep",
        "action": "keep",
        "market": "mixed"
        if {n["capacity_type"] for n in pool.nodes} >= {"spot", "on-demand"}
        else ("spot" if all(n["capacity_type"] == "spot" for n in pool.nodes) else "on_demand"),
        "proposed_config": json.dumps(
            {
                **current_cfg,
                "spot_instance_types": [],
                "min_nodes": None,
                "max_nodes": None,
                "lp_lower_bound_usd": None,
                "gap_pct": None,
            },
            sort_keys=True,
        ),
        "vcpu": float(keep_vcpu),
        "memory_gib": float(keep_mem),
        "monthly_cost_current_usd": current_cost * HOURS_PER_MONTH,
        "monthly_cost_proposed_usd": current_cost * HOURS_PER_MONTH,
        "monthly_savings_usd": 0.0,
        "savings_pct": 0.0,
        "performance_risk": 0.0,
        "migration_effort": "VeryLow",
        "confidence": 1.0,
    }
    if unpriced or not region:
        why = (
            f"node types not in the price catalogue for {region}: {', '.join(sorted(set(unpriced)))}"
            if region
            else "nodes have no zone label"
        )
        keep.update(
            finding="unpriced",
            rank=1,
            is_best=True,
            rationale=f"kept as it is: {why}; refresh the catalogue (price_catalog asset)",
            confidence=0.0,
            details=json.dumps({"reason": why}),
            # No costs: the plan leaves an unpriceable resource as it is and names it.
            monthly_cost_current_usd=None,
            monthly_cost_proposed_usd=None,
            monthly_savings_usd=None,
            savings_pct=None,
        )
        return [keep]
    if not workloads:
        keep.update(
            finding="no_workloads",
            rank=1,
            is_best=True,
            rationale="no workload is assigned to this pool (DaemonSets only): its nodes are consolidation candidates",
            details=json.dumps(
                {
                    "consolidation_candidates": _consolidation(pool, node_usage, settings),
                    "daemonset_overhead": {"cpu_cores": ds[0], "mem_bytes": ds[1], "pods": ds[2]},
                }
            ),
        )
        return [keep]

    cands = candidate_rows(by_region.get(region, []), current_rows, settings)
    od_all = [t for r in cands if (t := node_type(r, settings, eni, observed.get(r["instance_type"]))) is not None]
    od_types = _prune_dominated(od_all)
    spot_raw = {
        t.instance_type: t
        for r in cands
        if (t := node_type(r, settings, eni, observed.get(r["instance_type"]), spot=True)) is not None
    }
    spot_types = diversified_spot_types(od_types, spot_raw, settings)
    zones = pool.zones

    plans: dict[str, PoolPlan] = {
        "rightsize_on_demand": plan_pool(
            workloads, zones, od_types, spot_types, ds, settings, use_spot=False, budget=budget
        )
    }
    if any(w.spot_ready for w in workloads) and spot_types:
        plans["rightsize_spot_mix"] = plan_pool(
            workloads, zones, od_types, spot_types, ds, settings, use_spot=True, budget=budget
        )
    already = sum(max(0.0, saved.get(w.resource_id, 0.0)) for w in workloads)
    coverage = sum(w.covered for w in workloads) / len(workloads)
    req_cpu = sum(w.cpu * w.pods for w in workloads)
    req_mem = sum(w.mem * w.pods for w in workloads)
    od_price = {t.instance_type: t for t in od_types}
    sp_price = {t.instance_type: t for t in spot_types}
    options = [keep]
    for name, plan in plans.items():
        use_spot = name == "rightsize_spot_mix"
        floor_plan = plan_pool(
            workloads, zones, od_types, spot_types, ds, settings, use_spot, count="min_pods", exact=False
        )
        peak_plan = plan_pool(
            workloads, zones, od_types, spot_types, ds, settings, use_spot, count="max_pods", exact=False
        )
        unspread = (
            plan_pool(
                workloads, zones, od_types, spot_types, ds, replace(settings, zone_spread=False), use_spot, exact=False
            )
            if settings.zone_spread and len(zones) > 1
            else None
        )
        n_nodes = sum(len(p.nodes) for _, _, p in plan.all())
        min_nodes = max(sum(len(p.nodes) for _, _, p in floor_plan.all()), 1)
        max_nodes = max(
            math.ceil(sum(len(p.nodes) for _, _, p in peak_plan.all()) * (1 + settings.max_nodes_headroom_pct / 100)),
            n_nodes,
        )
        cost = plan.usd_per_hour * HOURS_PER_MONTH
        gross = keep["monthly_cost_current_usd"] - cost
        own = max(0.0, gross - already)
        alloc_cpu = sum(
            (od_price if m == "on_demand" else sp_price)[n.instance_type].cpu for _, m, p in plan.all() for n in p.nodes
        )
        alloc_mem = sum(
            (od_price if m == "on_demand" else sp_price)[n.instance_type].mem for _, m, p in plan.all() for n in p.nodes
        )
        vcpu = sum(
            (od_price if m == "on_demand" else sp_price)[n.instance_type].vcpu
            for _, m, p in plan.all()
            for n in p.nodes
        )
        mem_gib = sum(
            (od_price if m == "on_demand" else sp_price)[n.instance_type].memory_gib
            for _, m, p in plan.all()
            for n in p.nodes
        )
        spot_used = sorted({n.instance_type for z, m, p in plan.all() if m == "spot" for n in p.nodes})
        diversified = sorted({s for it in spot_used for s in sp_price[it].spot_types})
        risk = settings.resize_risk
        spot_note = ""
        if use_spot and spot_used:
            band = max(sp_price[it].band or 0.0 for it in spot_used)
            short = min(len(sp_price[it].spot_types) for it in spot_used) < settings.min_spot_types
            risk = min(
                1.0,
                settings.spot_base_risk
                + settings.spot_risk_per_band * band
                + (settings.spot_short_diversity_risk if short else 0.0),
            )
            spot_note = f"; spot over {len(diversified)} types (mean interruption band {SPOT_BANDS[round(band)]})" + (
                f", fewer than the {settings.min_spot_types} wanted" if short else ""
            )
        unplaced = plan.unplaced()
        proposed = {
            "cluster": pool.cluster,
            "nodepool": pool.name,
            "nodes": _nodes_json(plan),
            "spot_instance_types": diversified,
            "min_nodes": min_nodes,
            "max_nodes": max_nodes,
            "lp_lower_bound_usd": round(plan.lower_bound * HOURS_PER_MONTH, 2),
            "gap_pct": round(plan.gap_pct, 3),
        }
        zone_cost = {
            str(z): round(sum(p.usd_per_hour for zz, _, p in plan.all() if zz == z) * HOURS_PER_MONTH, 2)
            for z in plan.zones
        }
        details = {
            "method": plan.methods(),
            "packings": [
                {
                    "zone": z,
                    "market": m,
                    "nodes": len(p.nodes),
                    "usd_per_month": round(p.usd_per_hour * HOURS_PER_MONTH, 2),
                    "lp_lower_bound_usd": round(p.lower_bound_usd_per_hour * HOURS_PER_MONTH, 2),
                    "lp_relaxation_usd": round(p.lp_relaxation_usd_per_hour * HOURS_PER_MONTH, 2),
                    "gap_pct": round(p.gap_pct, 3),
                    "method": p.method,
                }
                for z, m, p in plan.all()
            ],
            "zones": zone_cost,
            "zone_spread": {
                "zones": len(zones),
                "unspread_ffd_usd": round(unspread.usd_per_hour * HOURS_PER_MONTH, 2) if unspread else None,
                "spread_cost_usd": round(max(0.0, cost - unspread.usd_per_hour * HOURS_PER_MONTH), 2)
                if unspread
                else 0.0,
            },
            "spot_fleets": [
                {
                    "shape": it,
                    "instance_types": list(sp_price[it].spot_types),
                    "usd_per_hour": round(sp_price[it].usd_per_hour, 6),
                    "mean_band_index": round(sp_price[it].band or 0.0, 3),
                    "mean_band": SPOT_BANDS[round(sp_price[it].band or 0.0)],
                }
                for it in spot_used
            ],
            "on_demand_floor": _floor(floor_plan, region),
            "gross_monthly_savings_usd": round(gross, 2),
            "workload_rows_savings_usd": round(already, 2),
            "daemonset_overhead": {
                "cpu_cores": ds[0],
                "mem_bytes": ds[1],
                "pods": ds[2],
                "daemonsets": [d.resource_id for d in daemonsets],
            },
            "spot_ready": {w.resource_id: w.spot_reason for w in workloads if w.spot_ready} if use_spot else {},
            "not_spot_ready": {w.resource_id: w.spot_reason for w in workloads if not w.spot_ready} if use_spot else {},
            "consolidation_candidates": _consolidation(pool, node_usage, settings),
            "unplaced_pods": unplaced,
            "unplaceable_workloads": list(unplaceable),
            "request_coverage": round(coverage, 4),
        }
        savings_pct = 100 * own / keep["monthly_cost_current_usd"] if keep["monthly_cost_current_usd"] else 0.0
        today = keep["monthly_cost_current_usd"]
        mix_text = ", ".join(f"{k} x {it}" for it, k in sorted(plan_counts(plan).items()))
        rationale = (
            f"{n_nodes} node(s) ({mix_text}) "
            f"for {sum(w.pods for w in workloads)} pods at their recommended requests, {len(zones)} zone(s), "
            f"{ds[2]} DaemonSet pod(s) per node; ${cost:,.0f}/month against ${today:,.0f} today, "
            f"{plan.gap_pct:.1f} % above the LP lower bound (${plan.lower_bound * HOURS_PER_MONTH:,.0f}); "
            f"${own:,.0f} counted here beyond the ${already:,.0f} the workload rows claim{spot_note}"
        )
        if unplaced:
            rationale += (
                f"; {sum(unplaced.values())} pod(s) fit no candidate type (left out: {', '.join(sorted(unplaced))})"
            )
        options.append(
            {
                **base,
                "option_name": name,
                "action": "resize_nodepool",
                "market": "mixed" if use_spot else "on_demand",
                "proposed_config": json.dumps(proposed, sort_keys=True),
                "vcpu": float(vcpu),
                "memory_gib": float(mem_gib),
                "monthly_cost_current_usd": keep["monthly_cost_current_usd"],
                "monthly_cost_proposed_usd": cost,
                "monthly_savings_usd": own,
                "savings_pct": savings_pct,
                "performance_risk": risk,
                "migration_effort": "Medium" if use_spot else "Low",
                "projected_cpu_pct": 100 * (req_cpu + ds[0] * n_nodes) / alloc_cpu if alloc_cpu else None,
                "projected_memory_pct": 100 * (req_mem + ds[1] * n_nodes) / alloc_mem if alloc_mem else None,
                "confidence": round(0.5 + 0.45 * coverage - (0.2 if unplaced else 0.0), 4),
                "is_estimate": base["is_estimate"] or use_spot or any(t.is_estimate for t in od_types),
                "rationale": rationale,
                "details": json.dumps(details, sort_keys=True, default=str),
                "finding": "over_provisioned" if gross > 0 else "under_provisioned",
            }
        )
    _rank(options, settings, keep["monthly_cost_current_usd"])
    return options


def _rank(options: list[dict[str, Any]], settings: NodePoolSettings, current: float) -> None:
    """Best: the option with the most saving at or under ``max_risk`` whose saving passes both thresholds;
    else keep (no saving claimed). Ranks: best first, then by saving."""
    keep = options[0]
    ok = [
        o
        for o in options[1:]
        if o["performance_risk"] <= settings.max_risk
        and o["monthly_savings_usd"] >= settings.min_monthly_savings_usd
        and (100 * o["monthly_savings_usd"] / current if current else 0.0) >= settings.min_savings_pct
        and not json.loads(o["details"])["unplaced_pods"]
    ]
    best = max(ok, key=lambda o: (o["monthly_savings_usd"], -o["performance_risk"]), default=keep)
    if best is keep:
        keep["finding"] = keep.get("finding") or "optimal"
        keep["rationale"] = keep.get("rationale") or (
            "kept: no resize saves at least "
            f"${settings.min_monthly_savings_usd:.0f}/month and {settings.min_savings_pct:.0f} %"
            " beyond the workload rows"
            f" within risk {settings.max_risk}"
        )
    else:
        keep["finding"] = keep.get("finding") or best["finding"]
        keep["rationale"] = keep.get("rationale") or "today's nodes, unchanged"
    keep.setdefault("details", json.dumps({}))
    order = [
        best,
        *sorted((o for o in options if o is not best), key=lambda o: (-o["monthly_savings_usd"], o["option_name"])),
    ]
    for rank, o in enumerate(order, 1):
        o["rank"] = rank
        o["is_best"] = o is best
