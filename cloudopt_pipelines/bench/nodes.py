"""Benchmark of node-pool packing at 200 and 2,000 pods (no dagster): cost per pod of our packing
(MILP / first-fit-decreasing over the candidate types, then the spot mix) against a plain
first-fit-decreasing on the pool's current instance type, both measured in the same run on the same
seeded cluster, the same requests and the same constraints (DaemonSets, max pods, zone spread,
anti-affinity).

>>> print(format_report(run_nodes_benchmark(sizes=(200,))))
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from datetime import date
from typing import Any

import numpy as np
import pyarrow as pa

from cloudopt_pipelines.catalog.prices import HOURS_PER_MONTH, PriceCatalog, build_price_catalog
from cloudopt_pipelines.optimizers import kubernetes_nodes as kn
from cloudopt_pipelines.storage.schemas import K8S_WORKLOADS

ACCOUNT = "123456789012"
DAY = date(2026, 11, 17)
REGION = "us-east-1"
ZONES = ("us-east-1a", "us-east-1b", "us-east-1c")
CURRENT_TYPE = "m5.2xlarge"
GIB = 2.0**30


def generate_cluster(
    pods: int, seed: int = 0, cluster: str = "bench"
) -> tuple[pa.Table, dict[tuple[str, str], tuple[float, float]]]:
    """A seeded cluster of about ``pods`` pods: one pool of ``CURRENT_TYPE`` nodes sized as today's
    requests need with 40 % headroom, three DaemonSets, Deployments (a third spot-ready with a PDB) and
    StatefulSets; recommended requests cut today's by a random 0-60 %."""
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    rec: dict[tuple[str, str], tuple[float, float]] = {}

    def row(**kw: Any) -> dict[str, Any]:
        r = dict.fromkeys(K8S_WORKLOADS.names)
        r.update(account_id=ACCOUNT, date=DAY, cluster=cluster, labels="{}", attributes="{}", source="bench")
        r.update(kw)
        return r

    for name, cpu, mem in (("aws-node", 0.025, 64), ("kube-proxy", 0.1, 64), ("node-exporter", 0.05, 100)):
        rows.append(
            row(
                resource_id=f"{cluster}/kube-system/daemonset/{name}",
                object_kind="daemonset",
                namespace="kube-system",
                name=name,
                container=name,
                replicas=0,
                cpu_request_cores=cpu,
                mem_request_bytes=mem * 2**20,
            )
        )
    made = 0
    total_cpu = total_mem = 0.0
    i = 0
    while made < pods:
        replicas = int(min(pods - made, rng.choice((1, 2, 3, 4, 6, 10), p=(0.2, 0.3, 0.2, 0.15, 0.1, 0.05))))
        cpu = float(rng.choice((0.1, 0.25, 0.5, 1.0, 2.0), p=(0.25, 0.3, 0.25, 0.15, 0.05)))
        mem = float(cpu * rng.choice((1.0, 2.0, 4.0, 8.0), p=(0.2, 0.4, 0.3, 0.1))) * GIB
        kind = "statefulset" if rng.random() < 0.1 else "deployment"
        ns = f"team{i % 7}"
        rid = f"{cluster}/{ns}/{kind}/app{i}"
        attrs: dict[str, Any] = {}
        if replicas > 2 and rng.random() < 0.3:
            attrs["anti_affinity"] = True
        rows.append(
            row(
                resource_id=rid,
                object_kind=kind,
                namespace=ns,
                name=f"app{i}",
                container="main",
                replicas=replicas,
                pods=replicas,
                cpu_request_cores=cpu,
                mem_request_bytes=mem,
                attributes=json.dumps(attrs),
            )
        )
        cut = 1 - rng.uniform(0.0, 0.6)
        rec[(rid, "main")] = (cpu * cut, mem * (1 - rng.uniform(0.0, 0.4)))
        if kind == "deployment" and replicas > 1 and rng.random() < 0.33:
            rows.append(
                row(
                    resource_id=f"{cluster}/{ns}/pdb/app{i}",
                    object_kind="pdb",
                    namespace=ns,
                    name=f"app{i}",
                    target_id=rid,
                    attributes=json.dumps({"max_unavailable": 1, "disruptions_allowed": 1}),
                )
            )
        made += replicas
        total_cpu += cpu * replicas
        total_mem += mem * replicas
        i += 1
    # Today's pool: as many nodes as today's requests need, plus 40 % headroom.
    node_cpu, node_mem = 7.9, 29.0 * GIB
    n_nodes = max(3, int(np.ceil(1.4 * max(total_cpu / (node_cpu - 0.175), total_mem / (node_mem - 0.23 * GIB)))))
    for k in range(n_nodes):
        rows.append(
            row(
                resource_id=f"{cluster}/node/n{k}",
                object_kind="node",
                name=f"n{k}",
                instance_type=CURRENT_TYPE,
                zone=ZONES[k % 3],
                capacity_type="on-demand",
                nodepool="general",
                allocatable_cpu_cores=node_cpu,
                allocatable_mem_bytes=node_mem,
                taints="[]",
                attributes=json.dumps({"ready": "True"}),
            )
        )
    return pa.Table.from_pylist(rows, schema=K8S_WORKLOADS), rec


def baseline_ffd(
    table: pa.Table, rec: dict[tuple[str, str], tuple[float, float]], catalog: PriceCatalog
) -> tuple[float, int]:
    """Plain first-fit-decreasing on ``CURRENT_TYPE`` only (Karpenter's order, no type choice, no spot),
    with the same constraints: USD per hour and nodes."""
    settings = kn.NodePoolSettings()
    wls, dss = kn._workloads(table.to_pylist(), rec, settings)
    ds = (sum(d.cpu for d in dss), sum(d.mem for d in dss), len(dss))
    eni = kn.load_eni_limits()
    t = kn.node_type(catalog.get(REGION, CURRENT_TYPE), settings, eni, (7.9, 29.0 * GIB))
    assert t is not None
    cap = kn._capacity(t, ds)
    cost, nodes = 0.0, 0
    for members in kn.spread_over_zones(wls, list(ZONES)).values():
        items = [kn.Item(w.resource_id, w.cpu, w.mem, q, w.anti_affinity) for w, q in members]
        packed, _ = kn.first_fit_decreasing(items, t, cap)
        cost += len(packed) * t.usd_per_hour
        nodes += len(packed)
    return cost, nodes


def run_nodes_benchmark(sizes: Sequence[int] = (200, 2000), seed: int = 0) -> list[dict[str, Any]]:
    """One row per size: pods, nodes, monthly cost per pod of each option and of the baseline, seconds."""
    catalog_table = build_price_catalog()
    catalog = PriceCatalog(catalog_table)
    out = []
    for n in sizes:
        table, rec = generate_cluster(n, seed=seed)
        pods = sum(r["replicas"] or 0 for r in table.to_pylist() if r["object_kind"] in ("deployment", "statefulset"))
        t0 = time.perf_counter()
        base_cost, base_nodes = baseline_ffd(table, rec, catalog)
        t_base = time.perf_counter() - t0
        t0 = time.perf_counter()
        rows = kn.recommend_node_pools(table, rec, catalog_table).to_pylist()
        t_ours = time.perf_counter() - t0
        by = {r["option_name"]: r for r in rows}
        od, mix = by["rightsize_on_demand"], by.get("rightsize_spot_mix")
        od_cfg = json.loads(od["proposed_config"])
        details = json.loads(od["details"])
        out.append(
            {
                "pods": pods,
                "baseline_nodes": base_nodes,
                "baseline_usd_per_pod": base_cost * HOURS_PER_MONTH / pods,
                "ondemand_nodes": sum(x["count"] for x in od_cfg["nodes"]),
                "ondemand_usd_per_pod": od["monthly_cost_proposed_usd"] / pods,
                "ondemand_gap_pct": od_cfg["gap_pct"],
                "methods": ",".join(details["method"]),
                "mix_usd_per_pod": mix["monthly_cost_proposed_usd"] / pods if mix else None,
                "today_usd_per_pod": od["monthly_cost_current_usd"] / pods,
                "baseline_s": t_base,
                "ours_s": t_ours,
            }
        )
    return out


def format_report(rows: Sequence[dict[str, Any]]) -> str:
    """A table, the ratio against the baseline and the flatness of cost per pod (largest / smallest size)."""
    lines = [
        f"{'pods':>6} {'base nodes':>10} {'base $/pod':>10} {'od nodes':>8} {'od $/pod':>9} {'od/base':>8} "
        f"{'gap %':>6} {'mix $/pod':>9} {'today $/pod':>11} {'ours s':>7} {'base s':>7}  method"
    ]
    for r in rows:
        mix = f"{r['mix_usd_per_pod']:9.2f}" if r["mix_usd_per_pod"] is not None else f"{'-':>9}"
        lines.append(
            f"{r['pods']:>6} {r['baseline_nodes']:>10} {r['baseline_usd_per_pod']:>10.2f} {r['ondemand_nodes']:>8} "
            f"{r['ondemand_usd_per_pod']:>9.2f} {r['ondemand_usd_per_pod'] / r['baseline_usd_per_pod']:>8.3f} "
            f"{r['ondemand_gap_pct']:>6.2f} {mix} {r['today_usd_per_pod']:>11.2f} {r['ours_s']:>7.2f} "
            f"{r['baseline_s']:>7.2f}  {r['methods']}"
        )
    if len(rows) > 1:
        small, large = rows[0], rows[-1]
        lines.append(
            f"flatness of on-demand cost per pod, {large['pods']} vs {small['pods']} pods: "
            f"{large['ondemand_usd_per_pod'] / small['ondemand_usd_per_pod']:.3f} (1.000 = flat); "
            f"baseline {large['baseline_usd_per_pod'] / small['baseline_usd_per_pod']:.3f}"
        )
    return "\n".join(lines)
