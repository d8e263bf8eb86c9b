"""Node pools: the packing against exact answers, each constraint, the spot rules, the node-pool rows."""

from __future__ import annotations

import copy
import itertools
import json
import math
import random
from datetime import date
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from cloudopt_pipelines.catalog.prices import HOURS_PER_MONTH, build_price_catalog
from cloudopt_pipelines.optimizers import kubernetes_nodes as kn
from cloudopt_pipelines.storage.schemas import K8S_WORKLOADS, RECOMMENDATIONS

GIB = 2.0**30
MIB = 2.0**20


@pytest.fixture(scope="module")
def catalog() -> pa.Table:
    return build_price_catalog()


def nt(name: str, cpu: float, mem_gib: float, price: float, pods: int = 110) -> kn.NodeType:
    return kn.NodeType(name, cpu, mem_gib, pods, cpu, mem_gib * GIB, price)


# ------------------------------------------------------------------------------------------ formulae


def test_max_pods_and_reserve_follow_the_eks_formulae() -> None:
    eni = kn.load_eni_limits()
    # eni-max-pods.txt of the EKS AMI: m5.large 29, m5.xlarge 58, t3.micro 4.
    assert kn.eni_max_pods(*eni["m5.large"]) == 29
    assert kn.eni_max_pods(*eni["m5.xlarge"]) == 58
    assert kn.eni_max_pods(*eni["t3.micro"]) == 4
    assert kn.eks_reserved_cpu_cores(1) == pytest.approx(0.06)
    assert kn.eks_reserved_cpu_cores(2) == pytest.approx(0.07)
    assert kn.eks_reserved_cpu_cores(8) == pytest.approx(0.09)
    assert kn.eks_reserved_mem_bytes(29) == pytest.approx(574 * MIB)  # m5.large's kube-reserved 574Mi


def test_node_type_allocatable_and_cap(catalog: pa.Table) -> None:
    row = next(r for r in catalog.to_pylist() if r["region"] == "us-east-1" and r["instance_type"] == "m5.xlarge")
    s = kn.NodePoolSettings()
    t = kn.node_type(row, s, kn.load_eni_limits())
    assert t is not None and t.max_pods == 58
    assert t.cpu == pytest.approx(4 - 0.08)
    assert t.mem == pytest.approx(16 * GIB * 0.925 - (255 + 11 * 58) * MIB - 100 * MIB)
    capped = kn.node_type(row, kn.NodePoolSettings(max_pods_cap=20), kn.load_eni_limits())
    assert capped is not None and capped.max_pods == 20 and capped.mem > t.mem
    observed = kn.node_type(row, s, kn.load_eni_limits(), observed=(3.5, 12 * GIB))
    assert observed is not None and observed.cpu == 3.5 and observed.mem == 12 * GIB
    assert kn.node_type(row, s, {}).max_pods == s.default_max_pods


# ------------------------------------------------------------------------------------------ exact


def _valid(p: kn.Packing, items: list[kn.Item], types: list[kn.NodeType], ds: tuple[float, float, int]) -> None:
    by = {t.instance_type: kn._capacity(t, ds) for t in types}
    size = {i.workload: i for i in items}
    placed: dict[str, int] = {}
    for n in p.nodes:
        c = by[n.instance_type]
        assert sum(size[w].cpu * q for w, q in n.pods.items()) <= c.cpu + 1e-9
        assert sum(size[w].mem * q for w, q in n.pods.items()) <= c.mem + 1e-6
        assert sum(n.pods.values()) <= c.pods
        for w, q in n.pods.items():
            assert not (size[w].anti_affinity and q > 1)
            placed[w] = placed.get(w, 0) + q
    assert placed == {i.workload: i.count for i in items if i.count}


def _can_place(pods: list[kn.Item], bins: list[kn.Capacity]) -> bool:
    """Backtracking: can every pod be put in one of ``bins`` (capacities, pod slots, anti-affinity)?"""
    load: list[list[Any]] = [[0.0, 0.0, 0, set()] for _ in bins]

    def place(k: int) -> bool:
        if k == len(pods):
            return True
        it = pods[k]
        for b, c in enumerate(bins):
            lo = load[b]
            if lo[0] + it.cpu > c.cpu + 1e-9 or lo[1] + it.mem > c.mem + 1e-6 or lo[2] >= c.pods:
                continue
            if it.anti_affinity and it.workload in lo[3]:
                continue
            added = it.workload not in lo[3]
            lo[0], lo[1], lo[2] = lo[0] + it.cpu, lo[1] + it.mem, lo[2] + 1
            lo[3].add(it.workload)
            if place(k + 1):
                return True
            lo[0], lo[1], lo[2] = lo[0] - it.cpu, lo[1] - it.mem, lo[2] - 1
            if added:
                lo[3].discard(it.workload)
        return False

    return place(0)


def _brute_force(items: list[kn.Item], types: list[kn.NodeType], ds: tuple[float, float, int]) -> float:
    """The cheapest multiset of nodes into which every pod can be placed, by enumeration."""
    pods = [i for i in items for _ in range(i.count)]
    caps = [kn._capacity(t, ds) for t in types]
    best = math.inf
    for counts in itertools.product(range(len(pods) + 1), repeat=len(types)):
        cost = sum(k * t.usd_per_hour for k, t in zip(counts, types, strict=True))
        if cost >= best or sum(counts) == 0:
            continue
        if _can_place(pods, [c for c, k in zip(caps, counts, strict=True) for _ in range(k)]):
            best = cost
    return best


@pytest.mark.parametrize("seed", range(12))
def test_packing_matches_brute_force_on_small_cases(seed: int) -> None:
    rng = random.Random(seed)
    types = [
        nt("small", 2.0, 4.0, 0.10, pods=rng.choice((3, 8))),
        nt("cpu", 4.0, 4.0, 0.17),
        nt("mem", 2.0, 16.0, 0.15),
    ][: rng.choice((2, 3))]
    items = [
        kn.Item(
            f"w{k}",
            rng.choice((0.5, 0.9, 1.4)),
            rng.choice((0.5, 1.5, 3.0)) * GIB,
            rng.randint(1, 3),
            rng.random() < 0.3,
        )
        for k in range(rng.randint(1, 3))
    ]
    ds = (rng.choice((0.0, 0.2)), rng.choice((0.0, 0.25)) * GIB, rng.choice((0, 1)))
    p = kn.pack(items, types, ds)
    _valid(p, items, types, ds)
    exact = _brute_force(items, types, ds)
    assert p.usd_per_hour == pytest.approx(exact)
    assert p.lower_bound_usd_per_hour <= p.usd_per_hour + 1e-9
    assert p.gap_pct >= 0


def test_milp_beats_first_fit_decreasing_where_ffd_is_poor() -> None:
    # 0.45 + 0.4 leave no room for a 0.2, so first-fit-decreasing opens a third node; 0.45 + 0.35 + 0.2
    # and 0.4 + 0.35 + 0.2 fill two.
    types = [nt("a", 1.0, 100.0, 1.0, pods=10)]
    items = [
        kn.Item("a", 0.45, GIB, 1),
        kn.Item("b", 0.4, GIB, 1),
        kn.Item("c", 0.35, GIB, 2),
        kn.Item("d", 0.2, GIB, 2),
    ]
    ffd_nodes, _ = kn.ffd_best(items, types, (0.0, 0.0, 0))
    assert len(ffd_nodes) == 3
    p = kn.pack(items, types)
    _valid(p, items, types, (0.0, 0.0, 0))
    assert len(p.nodes) == 2 == _brute_force(items, types, (0.0, 0.0, 0))
    assert p.method == "milp_optimal" and p.gap_pct == pytest.approx(0.0)


def test_milp_proves_first_fit_decreasing_optimal_when_relaxations_are_weak() -> None:
    # Three pods over half a node each: the relaxations say two nodes, no two pods share one.
    types = [nt("a", 1.0, 100.0, 1.0)]
    items = [kn.Item("w", 0.51, GIB, 3)]
    assert kn.lp_lower_bound(items, types, (0, 0, 0), integer=True) == pytest.approx(2.0)
    p = kn.pack(items, types)
    assert len(p.nodes) == 3
    assert p.method == "ffd=milp_optimal"
    assert p.lower_bound_usd_per_hour == pytest.approx(3.0) and p.gap_pct == pytest.approx(0.0)
    assert p.lp_relaxation_usd_per_hour == pytest.approx(1.53)
    # Without time for the MILP the gap to the relaxation is reported as it is.
    p = kn.pack(items, types, settings=kn.NodePoolSettings(milp_max_variables=0))
    assert p.method == "ffd" and p.gap_pct == pytest.approx(100 / 3)


def test_consolidation_empties_nodes_but_keeps_anti_affinity() -> None:
    caps = {"a": kn.Capacity(1.0, 100 * GIB, 10)}
    items = [kn.Item("x", 0.5, GIB, 1), kn.Item("y", 0.3, GIB, 1), kn.Item("z", 0.2, GIB, 1)]
    nodes = [kn.Node("a", {i.workload: 1}, i.cpu, i.mem, 1) for i in items]
    out = kn.consolidate(nodes, items, caps)
    assert len(out) == 1 and out[0].pods == {"x": 1, "y": 1, "z": 1}
    anti = [kn.Item("w", 0.1, GIB, 2, anti_affinity=True)]
    spread = [kn.Node("a", {"w": 1}, 0.1, GIB, 1), kn.Node("a", {"w": 1}, 0.1, GIB, 1)]
    assert len(kn.consolidate(spread, anti, caps)) == 2
    full = [
        kn.Node("a", {"x": 1}, 0.5, GIB, 1),
        kn.Node("a", {"x": 1}, 0.5, GIB, 1),
        kn.Node("a", {"y": 1}, 0.3, GIB, 1),
    ]
    assert len(kn.consolidate(full, items, {"a": kn.Capacity(0.75, 100 * GIB, 10)})) == 3


def test_lower_bound_is_the_lp_relaxation() -> None:
    types = [nt("a", 4.0, 16.0, 1.0)]
    items = [kn.Item("w", 1.0, GIB, 10)]
    assert kn.lp_lower_bound(items, types, (0.0, 0.0, 0)) == pytest.approx(2.5)
    assert kn.lp_lower_bound(items, types, (0.0, 0.0, 0), integer=True) == pytest.approx(3.0)
    p = kn.pack(items, types)
    assert p.usd_per_hour == pytest.approx(3.0)
    assert p.lp_relaxation_usd_per_hour == pytest.approx(2.5)
    assert p.lower_bound_usd_per_hour == pytest.approx(3.0)  # whole nodes: 3 is optimal
    assert p.gap_pct == pytest.approx(0.0)
    # Each workload needs a node of a type that holds its pod: the small cheap type cannot hold "big".
    two = [nt("cheap", 1.0, 2.0, 0.1), nt("large", 8.0, 32.0, 1.0)]
    mixed = [kn.Item("big", 4.0, GIB, 1), kn.Item("tiny", 0.1, MIB, 1)]
    assert kn.lp_lower_bound(mixed, two, (0.0, 0.0, 0)) == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------ constraints


def test_daemonset_overhead_takes_room_on_every_node() -> None:
    types = [nt("a", 4.0, 16.0, 1.0)]
    items = [kn.Item("w", 1.9, GIB, 2)]
    assert len(kn.pack(items, types).nodes) == 1
    assert len(kn.pack(items, types, (0.3, 0.0, 1)).nodes) == 2


def test_max_pods_per_node_binds() -> None:
    items = [kn.Item("w", 0.01, MIB, 10)]
    assert len(kn.pack(items, [nt("a", 4.0, 16.0, 1.0, pods=110)]).nodes) == 1
    assert len(kn.pack(items, [nt("a", 4.0, 16.0, 1.0, pods=5)]).nodes) == 2
    assert len(kn.pack(items, [nt("a", 4.0, 16.0, 1.0, pods=6)], (0.0, 0.0, 1)).nodes) == 2


def test_anti_affinity_puts_one_pod_per_node() -> None:
    types = [nt("a", 4.0, 16.0, 1.0)]
    assert len(kn.pack([kn.Item("w", 0.5, GIB, 3)], types).nodes) == 1
    p = kn.pack([kn.Item("w", 0.5, GIB, 3, anti_affinity=True)], types)
    assert len(p.nodes) == 3
    assert kn.lp_lower_bound([kn.Item("w", 0.5, GIB, 3, anti_affinity=True)], types, (0, 0, 0)) == pytest.approx(3.0)


def test_a_pod_larger_than_every_type_is_reported_not_dropped() -> None:
    p = kn.pack([kn.Item("huge", 9.0, GIB, 1), kn.Item("w", 1.0, GIB, 1)], [nt("a", 4.0, 16.0, 1.0)])
    assert p.unplaced == {"huge": 1}
    assert len(p.nodes) == 1


def _w(rid: str, pods: int, cpu: float = 1.0, **attrs: Any) -> kn.Workload:
    return kn.Workload(rid, "c", "deployment", "ns", rid, pods, pods, pods, cpu, GIB, cpu, GIB, {}, attrs, True)


def test_zone_spread_skew_is_at_most_one() -> None:
    zones = ["z1", "z2", "z3"]
    spread = kn.spread_over_zones([_w("a", 7), _w("b", 2), _w("c", 1)], zones)
    for rid, total in (("a", 7), ("b", 2), ("c", 1)):
        per_zone = [sum(q for w, q in spread[z] if w.resource_id == rid) for z in zones]
        assert sum(per_zone) == total
        assert max(per_zone) - min(per_zone) <= 1
    # A two-replica workload over two zones needs a node in each; without the spread one node holds both.
    types = [nt("a", 4.0, 16.0, 1.0)]
    spread_plan = kn.plan_pool([_w("a", 2)], ["z1", "z2"], types, [], (0, 0, 0), kn.NodePoolSettings(), False)
    packed = kn.plan_pool(
        [_w("a", 2)], ["z1", "z2"], types, [], (0, 0, 0), kn.NodePoolSettings(zone_spread=False), False
    )
    assert spread_plan.usd_per_hour == pytest.approx(2.0)
    assert packed.usd_per_hour == pytest.approx(1.0)


def test_taints_tolerations_and_node_selectors_choose_pools() -> None:
    gpu = kn.Pool(
        "c", "gpu", [], [{"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"}], {"accel": "gpu"}
    )
    soft = kn.Pool("c", "soft", [], [{"key": "x", "effect": "PreferNoSchedule"}], {"tier": "batch"})
    general = kn.Pool("c", "general", [], [], {})
    pools = [gpu, soft, general]
    assert [p.name for p in kn.eligible_pools(_w("a", 1), pools)] == ["soft", "general"]
    tol = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert kn._choose_pool(_w("a", 1, tolerations=tol), pools) is gpu
    assert kn._choose_pool(_w("a", 1, tolerations=[{"key": "nvidia.com/gpu", "value": "false"}]), pools) is not gpu
    assert [p.name for p in kn.eligible_pools(_w("a", 1, node_selector={"tier": "batch"}), pools)] == ["soft"]
    assert kn.eligible_pools(_w("a", 1, node_selector={"tier": "none"}), pools) == []
    assert kn._choose_pool(_w("a", 1, nodepool="general"), pools) is general


# ------------------------------------------------------------------------------------------ spot rules


def _pdb(allowed: int | None = 1, **a: Any) -> dict[str, Any]:
    return {"attributes": json.dumps({"disruptions_allowed": allowed, **a})}


def test_spot_readiness_rules_each_can_fail() -> None:
    s = kn.NodePoolSettings()
    ok = _w("a", 3)
    assert kn.spot_readiness(ok, [_pdb()], s)[0]
    assert not kn.spot_readiness(ok, [], s)[0]
    assert not kn.spot_readiness(ok, [_pdb(0)], s)[0]
    assert kn.spot_readiness(ok, [_pdb(None, max_unavailable="50%")], s)[0]
    assert not kn.spot_readiness(ok, [_pdb(None, min_available="100%")], s)[0]
    assert not kn.spot_readiness(_w("a", 1), [_pdb()], s)[0]
    sts = _w("a", 3)
    sts.kind = "statefulset"
    assert not kn.spot_readiness(sts, [_pdb()], s)[0]
    assert not kn.spot_readiness(_w("a", 3, volumes=[{"emptyDir": {}}]), [_pdb()], s)[0]
    assert kn.spot_readiness(_w("a", 3, volumes=[{"configMap": {}}]), [_pdb()], s)[0]
    assert not kn.spot_readiness(ok, [_pdb()], kn.NodePoolSettings(spot_require_volume_info=True))[0]
    # The annotation overrides both ways.
    assert kn.spot_readiness(_w("a", 1, annotations={"cloudopt.io/spot": "true"}), [], s) == (
        True,
        "annotation cloudopt.io/spot=true",
    )
    assert not kn.spot_readiness(_w("a", 3, annotations={"cloudopt.io/spot": "false"}), [_pdb()], s)[0]


def test_spot_types_are_diversified_and_priced_as_a_fleet(catalog: pa.Table) -> None:
    s = kn.NodePoolSettings()
    eni = kn.load_eni_limits()
    rows = [r for r in catalog.to_pylist() if r["region"] == "us-east-1"]
    current = [r for r in rows if r["instance_type"] == "m5.xlarge"]
    cands = kn.candidate_rows(rows, current, s)
    od = [t for r in cands if (t := kn.node_type(r, s, eni)) is not None and t.instance_type == "m5.xlarge"]
    spot = {t.instance_type: t for r in cands if (t := kn.node_type(r, s, eni, spot=True)) is not None}
    (fleet,) = kn.diversified_spot_types(od, spot, s)
    assert len(fleet.spot_types) == s.min_spot_types
    members = [spot[x] for x in fleet.spot_types]
    assert all(m.cpu >= od[0].cpu - 1e-9 and m.mem >= od[0].mem and m.max_pods >= od[0].max_pods for m in members)
    assert fleet.usd_per_hour == pytest.approx(sum(m.usd_per_hour for m in members) / len(members))
    assert fleet.usd_per_hour >= min(m.usd_per_hour for m in members)
    assert all((m.band or 0) <= s.max_spot_band for m in members)
    (few,) = kn.diversified_spot_types(od, spot, kn.NodePoolSettings(min_spot_types=3))
    assert len(few.spot_types) == 3 and few.usd_per_hour <= fleet.usd_per_hour


# ------------------------------------------------------------------------------------------ rows


def row(**kw: Any) -> dict[str, Any]:
    r = dict.fromkeys(K8S_WORKLOADS.names)
    r.update(
        account_id="123456789012",
        date=date(2026, 11, 17),
        cluster="prod-eks",
        labels="{}",
        attributes="{}",
        source="test",
    )
    r.update(kw)
    return r


def cluster_rows(nodes: int = 6, node_type: str = "m5.2xlarge", hpa_min: int | None = None) -> list[dict[str, Any]]:
    zones = ("us-east-1a", "us-east-1b", "us-east-1c")
    rows = [
        row(
            resource_id=f"prod-eks/node/n{k}",
            object_kind="node",
            name=f"n{k}",
            instance_type=node_type,
            zone=zones[k % 3],
            capacity_type="on-demand",
            nodepool="general",
            allocatable_cpu_cores=7.91,
            allocatable_mem_bytes=30 * GIB,
            taints="[]",
            attributes=json.dumps({"ready": "True"}),
        )
        for k in range(nodes)
    ]
    rows.append(
        row(
            resource_id="prod-eks/kube-system/daemonset/aws-node",
            object_kind="daemonset",
            namespace="kube-system",
            name="aws-node",
            container="aws-node",
            replicas=nodes,
            cpu_request_cores=0.025,
            mem_request_bytes=64 * MIB,
        )
    )
    for name, replicas, cpu, mem in (("cart", 6, 0.5, 1.0), ("api", 4, 1.0, 2.0), ("db", 2, 2.0, 8.0)):
        kind = "statefulset" if name == "db" else "deployment"
        rid = f"prod-eks/shop/{kind}/{name}"
        rows.append(
            row(
                resource_id=rid,
                object_kind=kind,
                namespace="shop",
                name=name,
                container="main",
                replicas=replicas,
                pods=replicas,
                cpu_request_cores=cpu,
                mem_request_bytes=mem * GIB,
            )
        )
    rows.append(
        row(
            resource_id="prod-eks/shop/pdb/cart",
            object_kind="pdb",
            namespace="shop",
            name="cart",
            target_id="prod-eks/shop/deployment/cart",
            attributes=json.dumps({"disruptions_allowed": 1}),
        )
    )
    if hpa_min is not None:
        rows.append(
            row(
                resource_id="prod-eks/shop/hpa/api",
                object_kind="hpa",
                namespace="shop",
                name="api",
                target_id="prod-eks/shop/deployment/api",
                min_replicas=hpa_min,
                max_replicas=12,
                current_replicas=4,
            )
        )
    return rows


REC = {
    ("prod-eks/shop/deployment/cart", "main"): (0.25, 0.5 * GIB),
    ("prod-eks/shop/deployment/api", "main"): (0.5, 1.0 * GIB),
    ("prod-eks/shop/statefulset/db", "main"): (1.5, 6.0 * GIB),
}


def _table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=K8S_WORKLOADS)


def test_node_pool_rows_follow_the_contract(catalog: pa.Table) -> None:
    out = kn.recommend_node_pools(_table(cluster_rows()), REC, catalog)
    assert out.schema.equals(RECOMMENDATIONS)
    rows = {r["option_name"]: r for r in out.to_pylist()}
    assert set(rows) == {"keep", "rightsize_on_demand", "rightsize_spot_mix"}
    assert sum(r["is_best"] for r in rows.values()) == 1
    assert sorted(r["rank"] for r in rows.values()) == [1, 2, 3]
    for r in rows.values():
        assert r["resource_id"] == "prod-eks/nodepool/general"
        assert r["resource_kind"] == "k8s_nodepool" and r["deployment_type"] == "kubernetes"
        assert r["action"] == ("keep" if r["option_name"] == "keep" else "resize_nodepool")
        cfg = json.loads(r["proposed_config"])
        assert set(cfg) == {
            "cluster",
            "nodepool",
            "nodes",
            "spot_instance_types",
            "min_nodes",
            "max_nodes",
            "lp_lower_bound_usd",
            "gap_pct",
        }
        assert r["rationale"]
    today = (
        6
        * catalog.filter(
            (pa.compute.field("region") == "us-east-1") & (pa.compute.field("instance_type") == "m5.2xlarge")
        )["ondemand_usd_per_hour"][0].as_py()
        * HOURS_PER_MONTH
    )
    assert rows["keep"]["monthly_cost_current_usd"] == pytest.approx(today)
    od = rows["rightsize_on_demand"]
    cfg = json.loads(od["proposed_config"])
    assert cfg["lp_lower_bound_usd"] <= od["monthly_cost_proposed_usd"] + 0.01
    assert cfg["gap_pct"] == pytest.approx(
        100 * (1 - cfg["lp_lower_bound_usd"] / od["monthly_cost_proposed_usd"]), abs=0.01
    )
    assert {n["zone"] for n in cfg["nodes"]} == {"us-east-1a", "us-east-1b", "us-east-1c"}
    assert all(n["capacity_type"] == "on-demand" for n in cfg["nodes"])
    assert od["monthly_savings_usd"] == pytest.approx(today - od["monthly_cost_proposed_usd"])
    mix = rows["rightsize_spot_mix"]
    mcfg = json.loads(mix["proposed_config"])
    assert len(mcfg["spot_instance_types"]) >= 15
    details = json.loads(mix["details"])
    assert set(details["spot_ready"]) == {"prod-eks/shop/deployment/cart"}  # api has no PDB, db is a StatefulSet
    assert mix["performance_risk"] > od["performance_risk"]
    (fleet,) = details["spot_fleets"]
    assert sorted(fleet["instance_types"]) == mcfg["spot_instance_types"] and fleet["mean_band"] in kn.SPOT_BANDS
    spread = json.loads(od["details"])["zone_spread"]
    # Three zones cost at least what one-zone packing does (cart's six pods spread two per zone).
    assert spread["zones"] == 3 and spread["unspread_ffd_usd"] <= od["monthly_cost_proposed_usd"] + 0.01
    assert 0 < od["projected_cpu_pct"] <= 100


def test_savings_count_only_beyond_the_workload_rows(catalog: pa.Table) -> None:
    table = _table(cluster_rows())
    free = {r["option_name"]: r for r in kn.recommend_node_pools(table, REC, catalog).to_pylist()}
    gross = free["rightsize_on_demand"]["monthly_savings_usd"]
    claimed = {"prod-eks/shop/deployment/cart": gross / 4, "prod-eks/shop/deployment/api": gross / 4}
    some = {
        r["option_name"]: r for r in kn.recommend_node_pools(table, REC, catalog, workload_savings=claimed).to_pylist()
    }
    assert some["rightsize_on_demand"]["monthly_savings_usd"] == pytest.approx(gross / 2)
    assert json.loads(some["rightsize_on_demand"]["details"])["workload_rows_savings_usd"] == pytest.approx(
        gross / 2, abs=0.01
    )
    workload_rows = pa.Table.from_pylist(
        [
            {"resource_id": rid, "resource_kind": "k8s_workload", "option_name": name, "is_best": best,
             "monthly_savings_usd": usd}
            for rid, usd in claimed.items()
            for name, best, usd in (("keep", False, 0.0), ("resize_requests", True, usd), ("other", False, 1e6))
        ],
        schema=RECOMMENDATIONS,
    )  # fmt: skip
    assert kn.best_workload_savings(workload_rows) == pytest.approx(claimed)
    from_rows = kn.recommend_node_pools(table, REC, catalog, workload_savings=workload_rows).to_pylist()
    assert next(r for r in from_rows if r["option_name"] == "rightsize_on_demand")[
        "monthly_savings_usd"
    ] == pytest.approx(gross / 2)
    everything = {"prod-eks/shop/deployment/cart": gross * 2}
    rows = {
        r["option_name"]: r
        for r in kn.recommend_node_pools(table, REC, catalog, workload_savings=everything).to_pylist()
    }
    assert rows["rightsize_on_demand"]["monthly_savings_usd"] == 0.0
    assert rows["keep"]["is_best"]  # nothing left to claim: the pool is kept


def test_a_pool_already_at_its_recommendation_is_kept(catalog: pa.Table) -> None:
    first = {r["option_name"]: r for r in kn.recommend_node_pools(_table(cluster_rows()), REC, catalog).to_pylist()}
    proposed = json.loads(first["rightsize_on_demand"]["proposed_config"])["nodes"]
    rows = [r for r in cluster_rows(nodes=0)]
    k = 0
    for n in proposed:
        for _ in range(n["count"]):
            rows.append(
                row(
                    resource_id=f"prod-eks/node/r{k}",
                    object_kind="node",
                    name=f"r{k}",
                    instance_type=n["instance_type"],
                    zone=n["zone"],
                    capacity_type="on-demand",
                    nodepool="general",
                    taints="[]",
                    attributes=json.dumps({"ready": "True"}),
                )
            )
            k += 1
    again = {r["option_name"]: r for r in kn.recommend_node_pools(_table(rows), REC, catalog).to_pylist()}
    assert again["keep"]["is_best"] and again["keep"]["monthly_savings_usd"] == 0.0
    assert again["rightsize_on_demand"]["monthly_savings_usd"] < 1.0
    strict = kn.NodePoolSettings(min_monthly_savings_usd=1e9)
    held = {
        r["option_name"]: r
        for r in kn.recommend_node_pools(_table(cluster_rows()), REC, catalog, settings=strict).to_pylist()
    }
    assert held["keep"]["is_best"] and "no resize saves" in held["keep"]["rationale"]


def test_floor_and_min_max_hints_follow_the_hpa(catalog: pa.Table) -> None:
    rows = cluster_rows(hpa_min=1)
    # A bigger api so that its replicas move node counts.
    for r in rows:
        if r["name"] == "api" and r["object_kind"] == "deployment":
            r["replicas"] = 4
    rec = dict(REC)
    rec[("prod-eks/shop/deployment/api", "main")] = (3.0, 6 * GIB)
    out = {r["option_name"]: r for r in kn.recommend_node_pools(_table(rows), rec, catalog).to_pylist()}
    od = out["rightsize_on_demand"]
    cfg = json.loads(od["proposed_config"])
    nodes = sum(n["count"] for n in cfg["nodes"])
    assert cfg["min_nodes"] <= nodes <= cfg["max_nodes"]
    assert cfg["max_nodes"] > nodes  # max 12 replicas of a 3-core pod
    floor = json.loads(od["details"])["on_demand_floor"]
    assert floor and all(f["node_hours_per_month"] == f["count"] * HOURS_PER_MONTH for f in floor)
    assert sum(f["count"] for f in floor) == cfg["min_nodes"]
    fixed = {
        r["option_name"]: r for r in kn.recommend_node_pools(_table(cluster_rows(hpa_min=4)), rec, catalog).to_pylist()
    }
    fixed_floor = json.loads(fixed["rightsize_on_demand"]["details"])["on_demand_floor"]
    assert sum(f["count"] for f in fixed_floor) >= sum(f["count"] for f in floor)


def test_consolidation_candidates(catalog: pa.Table) -> None:
    rows = cluster_rows()
    rows[0]["attributes"] = json.dumps({"ready": "True", "unschedulable": True})
    usage = pa.table(
        {
            "resource_id": ["prod-eks/node/n1", "prod-eks/node/n1", "prod-eks/node/n2"],
            "scope": ["node", "node", "node"],
            "cpu_cores": [0.2, 0.4, 6.0],
            "mem_bytes": [2 * GIB, 3 * GIB, 20 * GIB],
        }
    )
    out = kn.recommend_node_pools(_table(rows), REC, catalog, node_usage=usage).to_pylist()
    cands = json.loads(next(r for r in out if r["option_name"] == "rightsize_on_demand")["details"])[
        "consolidation_candidates"
    ]
    assert {c["node"]: c["reason"].split(":")[0] for c in cands} == {"n0": "cordoned", "n1": "under-used"}


def test_unpriced_node_type_keeps_the_pool_with_a_reason(catalog: pa.Table) -> None:
    out = kn.recommend_node_pools(_table(cluster_rows(node_type="m9.huge")), REC, catalog).to_pylist()
    assert [r["option_name"] for r in out] == ["keep"]
    assert out[0]["finding"] == "unpriced" and "m9.huge" in out[0]["rationale"]
    assert out[0]["monthly_cost_current_usd"] is None and out[0]["monthly_savings_usd"] is None


def test_clusters_of_several_accounts_in_one_call(catalog: pa.Table) -> None:
    other = []
    for r in cluster_rows():
        r = dict(r, cluster="analytics", account_id="000123456789")
        r["resource_id"] = r["resource_id"].replace("prod-eks/", "analytics/")
        if r["target_id"]:
            r["target_id"] = r["target_id"].replace("prod-eks/", "analytics/")
        other.append(r)
    rec = {**REC, **{(k[0].replace("prod-eks/", "analytics/"), k[1]): v for k, v in REC.items()}}
    out = kn.recommend_node_pools(_table(cluster_rows() + other), rec, catalog).to_pylist()
    by = {(r["account_id"], r["resource_id"]) for r in out}
    assert by == {("123456789012", "prod-eks/nodepool/general"), ("000123456789", "analytics/nodepool/general")}
    alone = {r["option_name"]: r for r in kn.recommend_node_pools(_table(cluster_rows()), REC, catalog).to_pylist()}
    both = {r["option_name"]: r for r in out if r["resource_id"] == "prod-eks/nodepool/general"}
    assert both["rightsize_on_demand"]["monthly_cost_proposed_usd"] == pytest.approx(
        alone["rightsize_on_demand"]["monthly_cost_proposed_usd"]
    )


def test_a_protected_pool_is_marked(catalog: pa.Table) -> None:
    rows = cluster_rows()
    rows[0]["labels"] = json.dumps({"cloudopt.io/protect": "true"})
    out = kn.recommend_node_pools(_table(rows), REC, catalog).to_pylist()
    assert out and all(r["protected"] for r in out)
    assert not any(r["protected"] for r in kn.recommend_node_pools(_table(cluster_rows()), REC, catalog).to_pylist())


def test_taints_keep_workloads_out_of_a_dedicated_pool(catalog: pa.Table) -> None:
    rows = cluster_rows()
    taint = json.dumps([{"key": "dedicated", "value": "batch", "effect": "NoSchedule"}])
    rows += [
        row(
            resource_id=f"prod-eks/node/b{k}",
            object_kind="node",
            name=f"b{k}",
            instance_type="c5.2xlarge",
            zone="us-east-1a",
            capacity_type="on-demand",
            nodepool="batch",
            allocatable_cpu_cores=7.91,
            allocatable_mem_bytes=14 * GIB,
            taints=taint,
            attributes=json.dumps({"ready": "True"}),
        )
        for k in range(2)
    ]
    out = kn.recommend_node_pools(_table(rows), REC, catalog).to_pylist()
    batch = [r for r in out if r["resource_id"] == "prod-eks/nodepool/batch"]
    assert [r["option_name"] for r in batch] == ["keep"] and batch[0]["finding"] == "no_workloads"
    for r in rows:
        if r["name"] == "cart" and r["object_kind"] == "deployment":
            r["attributes"] = json.dumps(
                {"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "batch", "effect": "NoSchedule"}]}
            )
    out = kn.recommend_node_pools(_table(rows), REC, catalog).to_pylist()
    batch = [r for r in out if r["resource_id"] == "prod-eks/nodepool/batch"]
    assert len(batch) > 1
    resize = next(r for r in batch if r["option_name"] == "rightsize_on_demand")
    assert "for 6 pods" in resize["rationale"]  # cart's six replicas, nothing else
    general = next(
        r for r in out if r["resource_id"] == "prod-eks/nodepool/general" and r["option_name"] == "rightsize_on_demand"
    )
    assert "for 6 pods" in general["rationale"]  # api and db


def test_bad_input_names_the_fix(catalog: pa.Table) -> None:
    with pytest.raises(kn.NodePoolInputError, match="not a k8s_workloads table"):
        kn.recommend_node_pools(pa.table({"x": [1]}), {}, catalog)
    with pytest.raises(kn.NodePoolInputError, match="missing mem_bytes"):
        kn.recommend_node_pools(
            _table(cluster_rows()), [{"resource_id": "a", "container": "b", "cpu_cores": 1}], catalog
        )
    assert kn.recommend_node_pools(_table([]), {}, catalog).num_rows == 0


def _with_band(catalog: pa.Table, band: str) -> pa.Table:
    i = catalog.schema.get_field_index("spot_interruption_band")
    values = pa.array([band if v is not None else None for v in catalog["spot_interruption_band"].to_pylist()])
    return catalog.set_column(i, "spot_interruption_band", values)


def test_spot_risk_rises_with_the_interruption_band(catalog: pa.Table) -> None:
    table = _table(cluster_rows())

    def mix(cat: pa.Table, **kw: Any) -> dict[str, Any] | None:
        out = kn.recommend_node_pools(table, REC, cat, settings=kn.NodePoolSettings(**kw)).to_pylist()
        return next((r for r in out if r["option_name"] == "rightsize_spot_mix"), None)

    calm, rough = mix(_with_band(catalog, "<5%")), mix(_with_band(catalog, "15-20%"))
    assert calm is not None and rough is not None
    assert rough["performance_risk"] > calm["performance_risk"]
    assert "15-20%" in rough["rationale"] and "<5%" in calm["rationale"]
    assert mix(_with_band(catalog, "15-20%"), max_spot_band=2) is None  # no spot type admitted: no spot option
    short = mix(catalog, min_spot_types=400)
    assert short is not None and "fewer than the 400 wanted" in short["rationale"]
    assert short["performance_risk"] > mix(catalog)["performance_risk"]


# ------------------------------------------------------------------------------------------ collected


def _prod_objects() -> list[dict[str, Any]]:
    """The collection tests' prod-eks cluster, with what the packing reads from pod templates: web (three
    replicas, a PDB allowing one disruption) spread one per node, the report CronJob tolerating the
    spot pool's taint, db annotated off spot."""
    from tests.k8s.world import prod_cluster

    objs = copy.deepcopy(prod_cluster().objects)
    for o in objs:
        if o["kind"] == "Deployment" and o["metadata"]["name"] == "web":
            o["spec"]["template"]["spec"]["affinity"] = {
                "podAntiAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": [
                        {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/hostname"}
                    ]
                }
            }
            o["spec"]["template"]["spec"]["volumes"] = [{"name": "conf", "configMap": {"name": "web"}}]
        if o["kind"] == "CronJob" and o["metadata"]["name"] == "report":
            spec = o["spec"]["jobTemplate"]["spec"]["template"]["spec"]
            spec["tolerations"] = [{"key": "spot", "operator": "Equal", "value": "true", "effect": "NoSchedule"}]
        if o["kind"] == "StatefulSet" and o["metadata"]["name"] == "db":
            o["metadata"].setdefault("annotations", {})["cloudopt.io/spot"] = "false"
    return objs


def test_node_pools_from_a_cluster_collected_through_the_api(
    tmp_path: Path, certificates: tuple[Path, Path, Path, Path], catalog: pa.Table
) -> None:
    import yaml

    from cloudopt_pipelines.sources.kubernetes import KubernetesCollector
    from cloudopt_pipelines.sources.kubernetes_config import load_clusters
    from tests.k8s.conftest import TOKEN, write_kubeconfig
    from tests.k8s.fake_apiserver import FakeApiServer, Store
    from tests.k8s.world import DAYS, PROD_ACCOUNT

    ca, crt, key, _ = certificates
    store = Store()
    for obj in _prod_objects():
        store.add(obj)
    server = FakeApiServer(store, TOKEN, str(crt), str(key)).start()
    try:
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", {"prod-eks": server.url}, ca, "prod-eks")
        entry = {
            "name": "prod-eks",
            "account_id": PROD_ACCOUNT,
            "kubeconfig": str(kubeconfig),
            "context": "ctx-prod-eks",
            "prometheus_url": "http://127.0.0.1:9",
        }
        (tmp_path / "clusters.yaml").write_text(yaml.safe_dump({"clusters": [entry]}))
        collector = KubernetesCollector(load_clusters(tmp_path / "clusters.yaml").clusters)
        _, workloads, _ = collector.collect_inventory(PROD_ACCOUNT, DAYS[0])
    finally:
        server.stop()
    attrs = {r["resource_id"]: json.loads(r["attributes"]) for r in workloads.to_pylist() if r["container"]}
    web, report = attrs["prod-eks/shop/deployment/web"], attrs["prod-eks/batch/cronjob/report"]
    assert web["anti_affinity"] is True and web["volumes"] == ["configMap"]
    assert report["tolerations"][0]["key"] == "spot"
    assert attrs["prod-eks/shop/statefulset/db"]["annotations"] == {"cloudopt.io/spot": "false"}

    rec = {
        (r["resource_id"], r["container"]): (
            0.6 * (r["cpu_request_cores"] or 0.1),
            0.8 * (r["mem_request_bytes"] or 2**28),
        )
        for r in workloads.to_pylist()
        if r["container"] and r["object_kind"] not in ("daemonset",)
    }
    out = kn.recommend_node_pools(workloads, rec, catalog)
    assert out.schema.equals(RECOMMENDATIONS)
    rows = out.to_pylist()
    pools = {r["resource_id"] for r in rows}
    assert pools == {"prod-eks/nodepool/general", "prod-eks/nodepool/spot-arm"}
    for pool in pools:
        assert sum(r["is_best"] for r in rows if r["resource_id"] == pool) == 1
    general = {r["option_name"]: r for r in rows if r["resource_id"] == "prod-eks/nodepool/general"}
    od = json.loads(general["rightsize_on_demand"]["proposed_config"])
    # web's three replicas one per node: at least three nodes, over the pool's two zones
    assert sum(n["count"] for n in od["nodes"]) >= 3
    assert {n["zone"] for n in od["nodes"]} == {"us-east-1a", "us-east-1b"}
    assert all(n["instance_type"] for n in od["nodes"])
    mix = json.loads(general["rightsize_spot_mix"]["details"])
    assert set(mix["spot_ready"]) == {"prod-eks/shop/deployment/web"}
    assert mix["not_spot_ready"]["prod-eks/shop/statefulset/db"] == "annotation cloudopt.io/spot=false"
    ds = json.loads(general["rightsize_on_demand"]["details"])["daemonset_overhead"]
    assert ds["daemonsets"] == ["prod-eks/kube-system/daemonset/aws-node"] and ds["pods"] == 1
    spot_arm = {r["option_name"]: r for r in rows if r["resource_id"] == "prod-eks/nodepool/spot-arm"}
    assert spot_arm["keep"]["market"] == "spot"
    assert "rightsize_on_demand" in spot_arm  # the report CronJob tolerates the pool's taint: it lands there
    cfg = json.loads(spot_arm["rightsize_on_demand"]["proposed_config"])
    assert all(kn.region_of_zone(n["zone"]) == "us-east-1" for n in cfg["nodes"])


def test_pool_unit_costs_split_todays_node_cost(catalog: pa.Table) -> None:
    price = catalog.filter(
        (pa.compute.field("region") == "us-east-1") & (pa.compute.field("instance_type") == "m5.2xlarge")
    )["ondemand_usd_per_hour"][0].as_py()
    costs = kn.pool_unit_costs(_table(cluster_rows()), catalog)
    assert costs["prod-eks/nodepool/general"]["usd_per_core_hour"] == pytest.approx(price / 2 / 7.91)
    assert costs["prod-eks/nodepool/general"]["usd_per_gib_hour"] == pytest.approx(price / 2 / 30)
    assert kn.pool_unit_costs(_table(cluster_rows(node_type="m9.huge")), catalog) == {}


def test_bounds_hold_after_another_solve_started_highs_with_other_threads() -> None:
    """HiGHS's scheduler is process-wide: the plan's LP (linear.py, ``threads`` set) may start it first."""
    import highspy

    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("threads", 2)
    h.addVar(0.0, 1.0)
    h.changeColCost(0, 1.0)
    h.run()
    types = [nt("a", 4.0, 16.0, 1.0)]
    assert kn.lp_lower_bound([kn.Item("w", 1.0, GIB, 10)], types, (0.0, 0.0, 0)) == pytest.approx(2.5)


def test_each_pool_claims_its_workloads_and_its_share_of_a_daemonset(catalog: pa.Table) -> None:
    """``details.workload_claims``: what the plan's adapter takes out of a pool's node cost (counted once)."""
    rows = cluster_rows(nodes=6)
    for r in rows[4:6]:  # two of the six nodes form a second pool, which the shop's pods do not select
        r["nodepool"] = "batch"
        r["taints"] = json.dumps([{"key": "batch", "value": "true", "effect": "NoSchedule"}])
    out = kn.recommend_node_pools(_table(rows), REC, catalog).to_pylist()
    claims = {}
    for r in out:
        c = json.loads(r["details"])["workload_claims"]
        assert claims.setdefault(r["resource_id"], c) == c  # every option of a pool names the same claims
    general, batch = claims["prod-eks/nodepool/general"], claims["prod-eks/nodepool/batch"]
    ds = "prod-eks/kube-system/daemonset/aws-node"
    assert general[ds] == pytest.approx(4 / 6, abs=1e-6) and batch[ds] == pytest.approx(2 / 6, abs=1e-6)
    shop = {f"prod-eks/shop/{k}" for k in ("deployment/cart", "deployment/api", "statefulset/db")}
    assert set(general) - {ds} == shop and set(batch) == {ds}
