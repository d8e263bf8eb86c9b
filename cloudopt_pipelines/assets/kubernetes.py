"""Raw Kubernetes assets (only when ``CLOUDOPT_K8S_CLUSTERS`` is set): cluster objects and usage per account x day."""

from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import dagster as dg

from cloudopt_pipelines.assets.raw import RAW_PREFIX, collect_and_store
from cloudopt_pipelines.partitions import account_daily_partitions
from cloudopt_pipelines.resources.kubernetes import (
    KubernetesInventorySource,
    KubernetesResource,
    PrometheusResource,
    kubernetes_collector,
)
from cloudopt_pipelines.resources.sources import SourceResource
from cloudopt_pipelines.resources.storage import LakeResource
from cloudopt_pipelines.sources.base import Collected
from cloudopt_pipelines.sources.kubernetes_config import CLUSTERS_ENV, ClustersConfig, load_clusters


@dg.asset(
    key=[RAW_PREFIX, "k8s_workloads"],
    partitions_def=account_daily_partitions,
    kinds={"parquet", "kubernetes"},
    group_name="raw",
)
def k8s_workloads(
    context: dg.AssetExecutionContext, kubernetes: KubernetesResource, lake: LakeResource
) -> dg.MaterializeResult:
    """Objects of the Kubernetes clusters billing to one account, as listed that day: nodes (instance type,
    zone, capacity type, node pool, allocatable, taints), node pools, namespaces, workloads grouped by owner
    with one row per container (requests, limits, QoS, restarts, last termination reason), HPAs, VPAs and
    PodDisruptionBudgets."""
    collector = kubernetes_collector(kubernetes)

    def collect(account_id: str, day: date) -> Collected:
        _resources, table, meta = collector.collect_inventory(account_id, day)
        return Collected(table, meta)

    preview = ["resource_id", "object_kind", "container", "replicas", "cpu_request_cores"]
    return collect_and_store(context, lake, "k8s_workloads", collect, preview)


@dg.asset(
    key=[RAW_PREFIX, "k8s_container_usage"],
    partitions_def=account_daily_partitions,
    kinds={"parquet", "prometheus"},
    group_name="raw",
)
def k8s_container_usage(
    context: dg.AssetExecutionContext,
    kubernetes: KubernetesResource,
    prometheus: PrometheusResource,
    lake: LakeResource,
) -> dg.MaterializeResult:
    """5-minute usage of one account's Kubernetes clusters from Prometheus: per (workload, container) CPU
    cores, memory working set, CPU throttling, replicas, restarts and OOM kills, pods of an owner aggregated;
    and per node. Metadata reports the load put on Prometheus: queries, series returned, largest response."""
    collector = kubernetes_collector(kubernetes, prometheus)

    def collect(account_id: str, day: date) -> Collected:
        return Collected(*collector.collect_usage(account_id, day))

    return collect_and_store(context, lake, "k8s_container_usage", collect)


KUBERNETES_ASSETS = (k8s_workloads, k8s_container_usage)


def kubernetes_placeholders() -> list[dg.AssetSpec]:
    """Without a clusters file the feature models and ``recommendations/kubernetes`` still read these two
    tables (as empty): they stay in the graph as external assets that say how to collect them."""
    why = " Not collected: set CLOUDOPT_K8S_CLUSTERS to a clusters file (docs/kubernetes.md) to collect it."
    return [
        dg.AssetSpec(
            a.key,
            description=(a.descriptions_by_key[a.key] or "") + why,
            group_name="raw",
            partitions_def=account_daily_partitions,
            kinds={"parquet", "kubernetes"},
        )
        for a in KUBERNETES_ASSETS
    ]


@dataclass(frozen=True)
class KubernetesDefinitions:
    """What the Kubernetes collection adds to the definitions: its raw assets, its resources and the source
    whose inventory gains the clusters' nodes and workloads."""

    clusters: ClustersConfig
    assets: tuple[Any, ...] = KUBERNETES_ASSETS

    def resources(self) -> dict[str, Any]:
        return {
            "kubernetes": KubernetesResource(clusters_file=self.clusters.path),
            "prometheus": PrometheusResource(clusters_file=self.clusters.path),
        }

    def wrap_source(self, source: SourceResource) -> SourceResource:
        return KubernetesInventorySource(base=source, kubernetes=KubernetesResource(clusters_file=self.clusters.path))


def kubernetes_definitions(clusters_file: Path | None) -> KubernetesDefinitions | None:
    """The Kubernetes additions when ``clusters_file`` (``CLOUDOPT_K8S_CLUSTERS``, from the settings) names a
    clusters file (validated now, before anything runs), else None: the pipeline is then exactly the AWS
    or demo one."""
    return KubernetesDefinitions(load_clusters(str(clusters_file))) if clusters_file is not None else None


__all__ = [
    "CLUSTERS_ENV",
    "KUBERNETES_ASSETS",
    "KubernetesDefinitions",
    "kubernetes_definitions",
    "kubernetes_placeholders",
]
