"""The Dagster resources that reach Kubernetes clusters and their Prometheus (``CLOUDOPT_K8S_CLUSTERS``)."""

from typing import Any

import dagster as dg
from pydantic import Field, PrivateAttr

from cloudopt_pipelines.resources.sources import SourceResource
from cloudopt_pipelines.sources.base import Collector
from cloudopt_pipelines.sources.kubernetes import (
    KubernetesCollector,
    WithKubernetes,
    build_api_client,
    default_prometheus,
)
from cloudopt_pipelines.sources.kubernetes_config import ClusterConfig, ClustersConfig, load_clusters
from cloudopt_pipelines.sources.prometheus import PrometheusClient


class KubernetesResource(dg.ConfigurableResource):
    """The Kubernetes clusters of the clusters file, read through the official ``kubernetes`` client.

    Each entry's ``kubeconfig`` and ``context`` choose the API server (the context overrides the
    kubeconfig's current one; its certificate authority is honoured and TLS verified); without a
    kubeconfig the in-cluster service account is used. The collector only lists objects: the read-only
    ClusterRole it needs is in ``docs/kubernetes.md``. API clients are built on first use, one per cluster.
    """

    clusters_file: str = Field(description="Path of the clusters file (CLOUDOPT_K8S_CLUSTERS); see docs/kubernetes.md.")

    _clusters: ClustersConfig | None = PrivateAttr(default=None)
    _clients: dict[str, Any] = PrivateAttr(default_factory=dict)

    def clusters(self) -> ClustersConfig:
        """The validated clusters file, read once."""
        if self._clusters is None:
            self._clusters = load_clusters(self.clusters_file)
        return self._clusters

    def api_client(self, cluster: ClusterConfig) -> Any:
        """The official client's ``ApiClient`` for ``cluster``, built on first use."""
        if cluster.name not in self._clients:
            self._clients[cluster.name] = build_api_client(cluster)
        return self._clients[cluster.name]


class PrometheusResource(dg.ConfigurableResource):
    """The Prometheus-compatible endpoint of each cluster of the clusters file (plain HTTP API, so Thanos,
    Mimir, VictoriaMetrics and Amazon Managed Prometheus behind a SigV4 proxy work too).

    Credentials are read from the environment variables each entry names (bearer token or basic auth),
    never from the file, and never written to logs or metadata. Queries are planned to return at most the
    entry's ``max_series`` series over at most ``max_range`` each.
    """

    clusters_file: str = Field(description="Path of the clusters file (CLOUDOPT_K8S_CLUSTERS); see docs/kubernetes.md.")

    def get_client(self, cluster: ClusterConfig) -> PrometheusClient:
        """A client for ``cluster``'s Prometheus with its own query counters (one per collection)."""
        return default_prometheus(cluster)


def kubernetes_collector(
    kubernetes: KubernetesResource, prometheus: PrometheusResource | None = None
) -> KubernetesCollector:
    """The pure collector over both resources' clusters and clients."""
    return KubernetesCollector(
        kubernetes.clusters().clusters,
        api_factory=kubernetes.api_client,
        prometheus_factory=prometheus.get_client if prometheus is not None else default_prometheus,
    )


class KubernetesInventorySource(SourceResource):
    """Another source (demo or AWS) with the Kubernetes clusters' nodes, node pools and workloads added to
    its ``resources`` inventory, and the clusters' accounts added to its accounts."""

    base: dg.ResourceDependency[SourceResource]
    kubernetes: dg.ResourceDependency[KubernetesResource]

    def get_collector(self) -> Collector:
        return WithKubernetes(self.base.get_collector(), kubernetes_collector(self.kubernetes))  # type: ignore[return-value]
