"""A small cluster for the executor tests, and Kubernetes plan rows as the Kubernetes optimiser writes them
(the row contract of issue 13: ``<cluster>/<namespace>/<kind>/<name>``, ``proposed_config`` with
``containers``, the strategic merge ``patch``, ``kubectl`` and ``hpa``)."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from cloudopt_pipelines.executor.kubernetes import KubernetesAccess, KubernetesTarget
from cloudopt_pipelines.sources.kubernetes_config import load_clusters
from cloudopt_pipelines.testing.k8s_apiserver import FakeApiServer, Store
from tests.executor.conftest import Home
from tests.k8s.world import container, meta

CLUSTER = "dev-eks"
ACCOUNT = "123456789012"


def namespace(name: str, labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": meta(
            name, labels={"kubernetes.io/metadata.name": name, **(labels or {})}, annotations=annotations or {}
        ),
        "status": {"phase": "Active"},
    }


def deployment(name: str, ns: str, containers: list[dict], annotations: dict[str, str] | None = None) -> dict:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta(name, ns, {"app": name}, annotations=annotations or {}),
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": containers}},
        },
        "status": {"replicas": 3, "readyReplicas": 3},
    }


def hpa(name: str, ns: str, target: str, min_replicas: int = 2, max_replicas: int = 10, cpu: int = 70) -> dict:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": meta(name, ns),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target},
            "minReplicas": min_replicas,
            "maxReplicas": max_replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": cpu}},
                }
            ],
        },
        "status": {"currentReplicas": 3, "desiredReplicas": 3},
    }


def cluster_objects() -> list[dict[str, Any]]:
    """``shop`` (env=dev): Deployment cart (app + istio-proxy) with HPA cart, Deployment legacy annotated
    cloudopt.io/protect; ``payments`` (env=prod): Deployment ledger; ``kube-system``: Deployment coredns;
    ``tools`` (env=dev, a namespace a run configures as protected): Deployment runner."""
    return [
        namespace("shop", {"env": "dev"}),
        namespace("payments", {"env": "prod"}),
        namespace("kube-system"),
        namespace("tools", {"env": "dev"}),
        deployment(
            "cart",
            "shop",
            [container("app", "500m", "1Gi", None, "1Gi"), container("istio-proxy", "100m", "128Mi", "200m", "256Mi")],
        ),
        hpa("cart", "shop", "cart"),
        deployment(
            "legacy", "shop", [container("app", "1", "2Gi", None, "2Gi")], annotations={"cloudopt.io/protect": "true"}
        ),
        deployment("ledger", "payments", [container("app", "1", "2Gi", None, "2Gi")]),
        deployment("coredns", "kube-system", [container("coredns", "100m", "70Mi", None, "170Mi")]),
        deployment("runner", "tools", [container("runner", "1", "1Gi", None, "1Gi")]),
    ]


def resources(requests: dict[str, Any], limits: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"requests": requests, **({"limits": limits} if limits is not None else {})}


def workload_row(
    namespace_: str,
    name: str,
    proposed: dict[str, dict[str, Any]],
    current: dict[str, dict[str, Any]],
    hpa_proposed: dict[str, Any] | None = None,
    hpa_current: dict[str, Any] | None = None,
    kind: str = "Deployment",
    savings: float = 40.0,
    cluster: str = CLUSTER,
) -> dict[str, Any]:
    """A ``resize_requests`` row of ``recommendations_kubernetes`` as it reaches the plan."""
    patch = {
        "spec": {"template": {"spec": {"containers": [{"name": n, "resources": dict(r)} for n, r in proposed.items()]}}}
    }
    resource_id = f"{cluster}/{namespace_}/{kind.lower()}/{name}"
    hpa = None
    if hpa_proposed is not None:
        hpa = {
            "name": hpa_proposed["name"],
            "resource_id": f"{cluster}/{namespace_}/hpa/{hpa_proposed['name']}",
            "min_replicas": hpa_proposed["min_replicas"],
            "max_replicas": hpa_proposed["max_replicas"],
            "target": hpa_proposed["target"],
            "patch": {
                "spec": {
                    "minReplicas": hpa_proposed["min_replicas"],
                    "maxReplicas": hpa_proposed["max_replicas"],
                    "metrics": [
                        {
                            "type": "Resource",
                            "resource": {"name": k, "target": {"type": "Utilization", "averageUtilization": v}},
                        }
                        for k, v in hpa_proposed["target"].items()
                    ],
                }
            },
        }
    proposed_config = {
        "cluster": cluster,
        "namespace": namespace_,
        "kind": kind,
        "name": name,
        "containers": proposed,
        "patch": patch,
        "kubectl": f"kubectl --context ctx-{cluster} -n {namespace_} patch {kind.lower()} {name} --type strategic "
        f"-p '{json.dumps(patch)}'",
        "hpa": hpa,
    }
    current_config = {"containers": current, "hpa": hpa_current}
    return _row(resource_id, "k8s_workload", "resize_requests", proposed_config, current_config, savings)


def hpa_row(namespace_: str, name: str, proposed: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
    patch = {
        "spec": {
            "minReplicas": proposed["min_replicas"],
            "maxReplicas": proposed["max_replicas"],
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {"name": k, "target": {"type": "Utilization", "averageUtilization": v}},
                }
                for k, v in proposed["target"].items()
            ],
        }
    }
    config = {"cluster": CLUSTER, "namespace": namespace_, "name": name, **proposed, "patch": patch, "kubectl": ""}
    return _row(f"{CLUSTER}/{namespace_}/hpa/{name}", "k8s_hpa", "tune_hpa", config, current, 12.0)


def nodepool_row() -> dict[str, Any]:
    config = {
        "cluster": CLUSTER,
        "nodepool": "general",
        "nodes": [{"instance_type": "m6i.large", "count": 3, "capacity_type": "on-demand", "zone": "us-east-1a"}],
        "spot_instance_types": [],
        "min_nodes": 2,
        "max_nodes": 6,
        "lp_lower_bound_usd": 180.0,
        "gap_pct": 3.0,
    }
    return _row(f"{CLUSTER}/nodepool/general", "k8s_nodepool", "resize_nodepool", config, {}, 90.0)


def _row(resource_id: str, kind: str, action: str, proposed: dict, current: dict, savings: float) -> dict[str, Any]:
    return {
        "account_id": ACCOUNT,
        "resource_id": resource_id,
        "resource_kind": kind,
        "deployment_type": "kubernetes",
        "region": "us-east-1",
        "zone": None,
        "group_name": CLUSTER,
        "env": None,
        "option_name": f"{action}:p90",
        "action": action,
        "market": "on_demand",
        "current_config": json.dumps(current),
        "proposed_config": json.dumps(proposed),
        "monthly_cost_current_usd": 100.0,
        "monthly_cost_proposed_usd": 100.0 - savings,
        "monthly_savings_usd": savings,
        "one_time_cost_usd": 0.0,
        "performance_risk": 0.1,
        "confidence": 0.9,
        "is_estimate": False,
        "protected": False,
        "reason": "test plan",
        "solver_status": "Optimal",
    }


def write_clusters_file(path: Path, kubeconfig: Path, context: str) -> Path:
    entry = {
        "name": CLUSTER,
        "account_id": ACCOUNT,
        "kubeconfig": str(kubeconfig),
        "context": "ctx-does-not-matter",
        "executor_kubeconfig": str(kubeconfig),
        "executor_context": context,
        # the executor never queries Prometheus; the field is required by the clusters file
        "prometheus_url": "http://127.0.0.1:9",
    }
    path.write_text(yaml.safe_dump({"clusters": [entry]}, sort_keys=False))
    return path


@dataclass
class ExecutorCluster:
    server: FakeApiServer
    clusters_file: Path

    @property
    def store(self) -> Store:
        return self.server.store

    def obj(self, plural: str, namespace: str, name: str) -> dict[str, Any]:
        return copy.deepcopy(self.store.objects[plural][(namespace, name)])

    def containers(self, name: str, namespace: str = "shop") -> dict[str, dict[str, Any]]:
        spec = self.obj("deployments", namespace, name)["spec"]["template"]["spec"]
        return {c["name"]: c["resources"] for c in spec["containers"]}

    def patches(self) -> list[str]:
        return [path for method, path in self.store.requests if method == "PATCH"]

    def target(self) -> KubernetesTarget:
        return KubernetesTarget(KubernetesAccess(load_clusters(self.clusters_file)))


@pytest.fixture(name="cluster")
def executor_cluster(tmp_path: Path, certificates) -> Iterator[ExecutorCluster]:
    """The executor tests' cluster on its own stand-in API server over HTTPS, and a clusters file for it."""
    from tests.k8s.conftest import TOKEN, write_kubeconfig

    ca, crt, key, _other = certificates
    store = Store()
    for obj in cluster_objects():
        store.add(obj)
    server = FakeApiServer(store, TOKEN, str(crt), str(key)).start()
    try:
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", {CLUSTER: server.url}, ca, CLUSTER)
        yield ExecutorCluster(server, write_clusters_file(tmp_path / "clusters.yaml", kubeconfig, f"ctx-{CLUSTER}"))
    finally:
        server.stop()


@pytest.fixture(name="home")
def executor_home(tmp_path: Path) -> Home:
    """A temporary CLOUDOPT_HOME (lake, Dagster instance, executor records)."""
    return Home(tmp_path / "cloudopt")
