"""Kubernetes collection: cluster objects through the official client, usage history from Prometheus.

Pure code, no Dagster. For one cluster and one UTC day it produces:

- ``resources`` rows (nodes, node pools and workloads, ``deployment_type='kubernetes'``; a node's
  ``parent_id`` is its EC2 instance id, from ``spec.providerID``);
- ``k8s_workloads`` rows: nodes, node pools, namespaces, workloads grouped by owner (one row per
  container), HPAs, VPAs (where the CRD exists) and PodDisruptionBudgets;
- ``k8s_container_usage`` rows: 5-minute usage per (workload, container) and per node.

Ids are stable and readable: ``<cluster>/<namespace>/<kind>/<name>`` for a workload,
``<cluster>/node/<name>``, ``<cluster>/nodepool/<name>``, ``<cluster>/<namespace>/hpa/<name>``.

Prometheus is protected: every range query is planned so that it returns at most ``max_series`` series
and asks for at most ``max_range`` of history. The series are counted first with ``/api/v1/series``
(the index only), then namespaces are packed into batches, a namespace too large for one batch is split
by pod-name prefix, and nodes are packed into batches of ``max_series``; the load is reported (queries,
series, largest response).
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import pyarrow as pa

from cloudopt_pipelines.sources.base import tag_columns, tags_json
from cloudopt_pipelines.sources.kubernetes_config import ClusterConfig
from cloudopt_pipelines.sources.prometheus import PrometheusClient, PrometheusError
from cloudopt_pipelines.storage.schemas import K8S_CONTAINER_USAGE, K8S_WORKLOADS, RESOURCES, conform

SOURCE = "kubernetes"
VPA_GROUP, VPA_VERSION, VPA_PLURAL = "autoscaling.k8s.io", "v1", "verticalpodautoscalers"

# Every Kubernetes API call the collector makes: (apiGroup, resource, verb). docs/kubernetes.md's
# ClusterRole lists exactly these (a test keeps the two equal, and checks them against a real run).
API_CALLS: tuple[tuple[str, str, str], ...] = (
    ("", "namespaces", "list"),
    ("", "nodes", "list"),
    ("", "pods", "list"),
    ("apps", "daemonsets", "list"),
    ("apps", "deployments", "list"),
    ("apps", "replicasets", "list"),
    ("apps", "statefulsets", "list"),
    ("autoscaling", "horizontalpodautoscalers", "list"),
    ("autoscaling.k8s.io", "verticalpodautoscalers", "list"),
    ("batch", "cronjobs", "list"),
    ("batch", "jobs", "list"),
    ("policy", "poddisruptionbudgets", "list"),
)
NON_RESOURCE_URLS: tuple[str, ...] = ("/apis", "/version")

_CONTAINER_FILTER = 'container!="",container!="POD"'
# kube-state-metrics' owner metrics of ReplicaSets and Jobs, and the label naming the owned object
OWNER_METRICS = (("kube_replicaset_owner", "replicaset"), ("kube_job_owner", "job_name"))


class KubernetesCollectionError(RuntimeError):
    """Collecting a cluster failed; the message names the cluster, what failed and the fix."""


# ---------------------------------------------------------------------------------------------------
# Kubernetes API


def build_api_client(cluster: ClusterConfig) -> Any:
    """The official client for the cluster: its kubeconfig (``context`` overriding the current one,
    the CA in the kubeconfig honoured, TLS verified) or, without a kubeconfig, the in-cluster config."""
    import kubernetes

    try:
        if cluster.kubeconfig:
            return kubernetes.config.new_client_from_config(
                config_file=cluster.kubeconfig, context=cluster.context, persist_config=False
            )
        configuration = kubernetes.client.Configuration()
        kubernetes.config.load_incluster_config(client_configuration=configuration)
        return kubernetes.client.ApiClient(configuration)
    except (kubernetes.config.ConfigException, OSError, ValueError) as exc:
        where = f"kubeconfig {cluster.kubeconfig}" + (f" context {cluster.context!r}" if cluster.context else "")
        raise KubernetesCollectionError(
            f"cluster {cluster.name!r}: cannot load {where if cluster.kubeconfig else 'the in-cluster configuration'}: "
            f"{exc}. Fix: check kubeconfig and context in the clusters file (without a kubeconfig the collector "
            "must run in a pod with a service account)"
        ) from exc


@dataclass
class ApiStats:
    calls: Counter = field(default_factory=Counter)  # "group/resource" -> list requests (pages)
    objects: Counter = field(default_factory=Counter)
    restarted_lists: int = 0


class KubernetesApi:
    """Read-only listing of one cluster's objects, every page followed, as plain camelCase dicts."""

    def __init__(self, cluster: ClusterConfig, api_client: Any) -> None:
        self.cluster = cluster
        self.client = api_client
        self.stats = ApiStats()

    def _error(self, what: str, exc: Exception) -> KubernetesCollectionError:
        import kubernetes

        server = getattr(self.client.configuration, "host", "?")
        if isinstance(exc, kubernetes.client.ApiException):
            if exc.status in (401, 403):
                fix = (
                    "bind the collector's identity to the read-only ClusterRole of docs/kubernetes.md"
                    if exc.status == 403
                    else "refresh the kubeconfig's credentials"
                )
            else:
                fix = "check the API server's health, then run the partition again"
            return KubernetesCollectionError(
                f"cluster {self.cluster.name!r}: {what} at {server} failed with HTTP {exc.status} {exc.reason}. "
                f"Fix: {fix}"
            )
        return KubernetesCollectionError(
            f"cluster {self.cluster.name!r}: cannot reach the API server at {server} for {what} ({exc}). "
            "Fix: check the network path and, for a TLS error, that the kubeconfig's certificate-authority "
            "matches the server"
        )

    def _timeout(self) -> tuple[float, float]:
        return (min(10.0, self.cluster.api_timeout_s), self.cluster.api_timeout_s)

    def server_version(self) -> str:
        import kubernetes

        try:
            return kubernetes.client.VersionApi(self.client).get_code(_request_timeout=self._timeout()).git_version
        except Exception as exc:  # the client raises urllib3 and ApiException errors alike
            raise self._error("GET /version", exc) from exc

    def api_groups(self) -> set[str]:
        import kubernetes

        try:
            groups = kubernetes.client.ApisApi(self.client).get_api_versions(_request_timeout=self._timeout()).groups
        except Exception as exc:
            raise self._error("GET /apis", exc) from exc
        return {g.name for g in groups or []}

    def list_all(self, group: str, resource: str) -> list[dict[str, Any]]:
        """Every object of a kind across namespaces; a list whose continue token expired is restarted."""
        import kubernetes

        call = self._list_call(group, resource)
        for _attempt in range(3):
            items: list[dict[str, Any]] = []
            token: str | None = None
            try:
                while True:
                    self.stats.calls[f"{group or 'core'}/{resource}"] += 1
                    page = call(limit=self.cluster.page_size, _continue=token, _request_timeout=self._timeout())
                    page = page if isinstance(page, dict) else self.client.sanitize_for_serialization(page)
                    items += page.get("items") or []
                    token = (page.get("metadata") or {}).get("continue")
                    if not token:
                        self.stats.objects[resource] += len(items)
                        return items
            except kubernetes.client.ApiException as exc:
                if exc.status == 410:
                    self.stats.restarted_lists += 1
                    continue
                raise self._error(f"list {resource}", exc) from exc
            except Exception as exc:
                raise self._error(f"list {resource}", exc) from exc
        raise KubernetesCollectionError(
            f"cluster {self.cluster.name!r}: listing {resource} kept expiring (410) while the cluster changed; "
            "Fix: run the partition again, or raise page_size so a list needs fewer pages"
        )

    def _list_call(self, group: str, resource: str) -> Callable[..., Any]:
        import kubernetes

        c = kubernetes.client
        calls: dict[tuple[str, str], Callable[..., Any]] = {
            ("", "nodes"): c.CoreV1Api(self.client).list_node,
            ("", "namespaces"): c.CoreV1Api(self.client).list_namespace,
            ("", "pods"): c.CoreV1Api(self.client).list_pod_for_all_namespaces,
            ("apps", "deployments"): c.AppsV1Api(self.client).list_deployment_for_all_namespaces,
            ("apps", "replicasets"): c.AppsV1Api(self.client).list_replica_set_for_all_namespaces,
            ("apps", "statefulsets"): c.AppsV1Api(self.client).list_stateful_set_for_all_namespaces,
            ("apps", "daemonsets"): c.AppsV1Api(self.client).list_daemon_set_for_all_namespaces,
            ("batch", "jobs"): c.BatchV1Api(self.client).list_job_for_all_namespaces,
            ("batch", "cronjobs"): c.BatchV1Api(self.client).list_cron_job_for_all_namespaces,
            ("autoscaling", "horizontalpodautoscalers"): (
                c.AutoscalingV2Api(self.client).list_horizontal_pod_autoscaler_for_all_namespaces
            ),
            ("policy", "poddisruptionbudgets"): c.PolicyV1Api(
                self.client
            ).list_pod_disruption_budget_for_all_namespaces,
        }
        if (group, resource) == (VPA_GROUP, VPA_PLURAL):
            custom = c.CustomObjectsApi(self.client)
            return lambda **kw: custom.list_cluster_custom_object(VPA_GROUP, VPA_VERSION, VPA_PLURAL, **kw)
        return calls[(group, resource)]


@dataclass
class ClusterObjects:
    """One snapshot of a cluster's objects, by resource name, as the API returned them."""

    cluster: str
    server_version: str
    objects: dict[str, list[dict[str, Any]]]
    has_vpa: bool
    api_stats: ApiStats

    def of(self, resource: str) -> list[dict[str, Any]]:
        return self.objects.get(resource, [])


def read_cluster(cluster: ClusterConfig, api: KubernetesApi) -> ClusterObjects:
    """List every kind the collector reads (VPAs only where the CRD is served)."""
    version = api.server_version()
    has_vpa = VPA_GROUP in api.api_groups()
    objects: dict[str, list[dict[str, Any]]] = {}
    for group, resource, _verb in API_CALLS:
        if group == VPA_GROUP and not has_vpa:
            continue
        objects[resource] = api.list_all(group, resource)
    return ClusterObjects(cluster.name, version, objects, has_vpa, api.stats)


# ---------------------------------------------------------------------------------------------------
# quantities, owners, ids


def cpu_cores(quantity: str | None) -> float | None:
    if quantity is None:
        return None
    from kubernetes.utils.quantity import parse_quantity

    return float(parse_quantity(quantity))


def mem_bytes(quantity: str | None) -> float | None:
    return cpu_cores(quantity)  # the same quantity grammar; bytes for memory


def capacity_type(labels: dict[str, str]) -> str | None:
    raw = labels.get("karpenter.sh/capacity-type") or labels.get("eks.amazonaws.com/capacityType")
    if raw is None:
        return None
    return {"spot": "spot", "on-demand": "on-demand", "on_demand": "on-demand"}.get(raw.lower(), raw.lower())


def nodepool_of(labels: dict[str, str]) -> str | None:
    for key in (
        "karpenter.sh/nodepool",
        "karpenter.sh/provisioner-name",
        "eks.amazonaws.com/nodegroup",
        "alpha.eksctl.io/nodegroup-name",
        "cloud.google.com/gke-nodepool",
        "agentpool",
    ):
        if labels.get(key):
            return labels[key]
    return None


def ec2_instance_id(provider_id: str | None) -> str | None:
    m = re.match(r"^aws:///[^/]*/(i-[0-9a-f]+)$", provider_id or "")
    return m[1] if m else None


def workload_id(cluster: str, namespace: str, kind: str, name: str) -> str:
    return f"{cluster}/{namespace}/{kind}/{name}"


def _controller(obj: dict[str, Any]) -> tuple[str, str] | None:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    ref = next((r for r in refs if r.get("controller")), refs[0] if refs else None)
    return (ref["kind"], ref["name"]) if ref else None


@dataclass
class OwnerIndex:
    """Who owns what, from the live objects and from kube-state-metrics history (gone objects too)."""

    job_group_labels: tuple[str, ...]
    pod_owner: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)
    replicaset_owner: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)
    job_owner: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)
    job_group: dict[tuple[str, str], str] = field(default_factory=dict)  # (ns, job) -> group
    pod_group: dict[tuple[str, str], str] = field(default_factory=dict)  # (ns, pod) -> group

    def add_live(self, objects: ClusterObjects) -> None:
        for rs in objects.of("replicasets"):
            owner = _controller(rs)
            if owner:
                self.replicaset_owner[(rs["metadata"]["namespace"], rs["metadata"]["name"])] = owner
        for job in objects.of("jobs"):
            key = (job["metadata"]["namespace"], job["metadata"]["name"])
            owner = _controller(job)
            if owner:
                self.job_owner[key] = owner
            group = self._group(job["metadata"].get("labels") or {})
            if group:
                self.job_group[key] = group
        for pod in objects.of("pods"):
            key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
            self.pod_owner[key] = _controller(pod) or ("<none>", "<none>")
            group = self._group(pod["metadata"].get("labels") or {})
            if group:
                self.pod_group[key] = group

    def _group(self, labels: dict[str, str]) -> str | None:
        for key in self.job_group_labels:
            if labels.get(key):
                return labels[key]
        return None

    def workload_of_pod(self, namespace: str, pod: str) -> tuple[str, str]:
        """(kind, name) of the workload a pod belongs to; ('pod', name) for a bare pod."""
        kind, name = self.pod_owner.get((namespace, pod), ("<none>", "<none>"))
        return self.resolve(namespace, kind, name, pod)

    def resolve(self, namespace: str, kind: str, name: str, pod: str | None = None) -> tuple[str, str]:
        if kind == "ReplicaSet":
            owner = self.replicaset_owner.get((namespace, name))
            if owner and owner[0] not in ("<none>", ""):
                return owner[0].lower(), owner[1]
            return "replicaset", name
        if kind == "Job":
            group = self.job_group.get((namespace, name)) or (self.pod_group.get((namespace, pod)) if pod else None)
            if group:
                return "jobgroup", group
            owner = self.job_owner.get((namespace, name))
            if owner and owner[0] not in ("<none>", ""):
                return owner[0].lower(), owner[1]
            return "job", name
        if kind in ("<none>", ""):
            group = self.pod_group.get((namespace, pod)) if pod else None
            return ("jobgroup", group) if group else ("pod", pod or name)
        return kind.lower(), name


# ---------------------------------------------------------------------------------------------------
# inventory rows


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _ts(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None


def _workload_row(cluster: str, account_id: str, day: date, **values: Any) -> dict[str, Any]:
    row = {name: None for name in K8S_WORKLOADS.names}
    row.update(account_id=account_id, date=day, cluster=cluster, source=SOURCE, **values)
    return row


def inventory_tables(
    cluster: ClusterConfig, objects: ClusterObjects, account_id: str, day: date
) -> tuple[pa.Table, pa.Table]:
    """(``resources`` rows, ``k8s_workloads`` rows) of one cluster's snapshot."""
    c = cluster.name
    rows: list[dict[str, Any]] = []
    resources: list[dict[str, Any]] = []
    owners = OwnerIndex(cluster.job_group_labels)
    owners.add_live(objects)

    pools: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for n in objects.of("nodes"):
        m, spec, status = n["metadata"], n.get("spec") or {}, n.get("status") or {}
        labels = m.get("labels") or {}
        pool = nodepool_of(labels)
        alloc = status.get("allocatable") or {}
        ready = next((x["status"] for x in status.get("conditions") or [] if x.get("type") == "Ready"), "Unknown")
        node_id = f"{c}/node/{m['name']}"
        attrs = {
            "capacity": status.get("capacity"),
            "kubelet_version": (status.get("nodeInfo") or {}).get("kubeletVersion"),
            "provider_id": spec.get("providerID"),
            "unschedulable": bool(spec.get("unschedulable")),
        }
        common = dict(
            instance_type=labels.get("node.kubernetes.io/instance-type")
            or labels.get("beta.kubernetes.io/instance-type"),
            zone=labels.get("topology.kubernetes.io/zone"),
        )
        rows.append(
            _workload_row(
                c,
                account_id,
                day,
                resource_id=node_id,
                object_kind="node",
                name=m["name"],
                **common,
                capacity_type=capacity_type(labels),
                nodepool=pool,
                ec2_instance_id=ec2_instance_id(spec.get("providerID")),
                allocatable_cpu_cores=cpu_cores(alloc.get("cpu")),
                allocatable_mem_bytes=mem_bytes(alloc.get("memory")),
                taints=_json(spec.get("taints") or []),
                labels=tags_json(labels),
                attributes=_json({**attrs, "ready": ready}),
            )
        )
        resources.append(
            _resource_row(
                account_id,
                day,
                resource_id=node_id,
                resource_kind="k8s_node",
                region=labels.get("topology.kubernetes.io/region"),
                **common,
                state="ready" if ready == "True" else "not_ready",
                platform=(status.get("nodeInfo") or {}).get("operatingSystem"),
                architecture=labels.get("kubernetes.io/arch"),
                lifecycle=capacity_type(labels),
                launch_time=_ts(m.get("creationTimestamp")),
                parent_id=ec2_instance_id(spec.get("providerID")),
                name=m["name"],
                labels=labels,
                attributes={
                    "cluster": c,
                    "nodepool": pool,
                    "allocatable_cpu_cores": cpu_cores(alloc.get("cpu")),
                    "allocatable_mem_bytes": mem_bytes(alloc.get("memory")),
                    "taints": spec.get("taints") or [],
                },
            )
        )
        if pool:
            pools[pool].append(rows[-1])
    for pool, members in sorted(pools.items()):
        pool_id = f"{c}/nodepool/{pool}"
        types = sorted({r["instance_type"] for r in members if r["instance_type"]})
        rows.append(
            _workload_row(
                c,
                account_id,
                day,
                resource_id=pool_id,
                object_kind="nodepool",
                name=pool,
                replicas=len(members),
                capacity_type=members[0]["capacity_type"],
                nodepool=pool,
                instance_type=types[0] if len(types) == 1 else None,
                allocatable_cpu_cores=sum(r["allocatable_cpu_cores"] or 0 for r in members),
                allocatable_mem_bytes=sum(r["allocatable_mem_bytes"] or 0 for r in members),
                attributes=_json({"instance_types": types, "zones": sorted({r["zone"] for r in members if r["zone"]})}),
            )
        )
        resources.append(
            _resource_row(
                account_id,
                day,
                resource_id=pool_id,
                resource_kind="k8s_nodepool",
                instance_type=rows[-1]["instance_type"],
                lifecycle=members[0]["capacity_type"],
                parent_id=None,
                name=pool,
                labels={},
                state="active",
                attributes={"cluster": c, "nodes": len(members), "instance_types": types},
            )
        )
    for ns in objects.of("namespaces"):
        m = ns["metadata"]
        rows.append(
            _workload_row(
                c,
                account_id,
                day,
                resource_id=f"{c}/namespace/{m['name']}",
                object_kind="namespace",
                namespace=m["name"],
                name=m["name"],
                labels=tags_json(m.get("labels") or {}),
                attributes=_json({"phase": (ns.get("status") or {}).get("phase")}),
            )
        )

    workloads = _workloads(c, objects, owners)
    for wl in workloads.values():
        wid = workload_id(c, wl["namespace"], wl["kind"], wl["name"])
        qos = Counter(p.get("status", {}).get("qosClass") for p in wl["pods"]).most_common(1)
        for cont in wl["containers"]:
            res = cont.get("resources") or {}
            req, lim = res.get("requests") or {}, res.get("limits") or {}
            statuses = [
                s
                for p in wl["pods"]
                for s in (p.get("status") or {}).get("containerStatuses") or []
                if s["name"] == cont["name"]
            ]
            last = [s["lastState"]["terminated"] for s in statuses if (s.get("lastState") or {}).get("terminated")]
            last.sort(key=lambda t: t.get("finishedAt") or "")
            rows.append(
                _workload_row(
                    c,
                    account_id,
                    day,
                    resource_id=wid,
                    object_kind=wl["kind"],
                    namespace=wl["namespace"],
                    name=wl["name"],
                    container=cont["name"],
                    replicas=wl["replicas"],
                    ready_replicas=wl["ready"],
                    pods=len(wl["pods"]),
                    cpu_request_cores=cpu_cores(req.get("cpu")),
                    cpu_limit_cores=cpu_cores(lim.get("cpu")),
                    mem_request_bytes=mem_bytes(req.get("memory")),
                    mem_limit_bytes=mem_bytes(lim.get("memory")),
                    qos_class=qos[0][0] if qos else None,
                    restarts=sum(int(s.get("restartCount") or 0) for s in statuses),
                    last_termination_reason=last[-1].get("reason") if last else None,
                    labels=tags_json(wl["labels"]),
                    attributes=_json({**wl["attributes"], **wl["scheduling"]}),
                )
            )
        first = wl["containers"][0] if wl["containers"] else {}
        resources.append(
            _resource_row(
                account_id,
                day,
                resource_id=wid,
                resource_kind="k8s_workload",
                parent_id=f"{c}/namespace/{wl['namespace']}",
                name=wl["name"],
                labels=wl["labels"],
                state="active",
                attributes={
                    "cluster": c,
                    "namespace": wl["namespace"],
                    "kind": wl["kind"],
                    "replicas": wl["replicas"],
                    "containers": [x["name"] for x in wl["containers"]],
                    "first_container": first.get("name"),
                },
            )
        )

    for hpa in objects.of("horizontalpodautoscalers"):
        m, spec, status = hpa["metadata"], hpa.get("spec") or {}, hpa.get("status") or {}
        ref = spec.get("scaleTargetRef") or {}
        rows.append(
            _workload_row(
                c,
                account_id,
                day,
                resource_id=f"{c}/{m['namespace']}/hpa/{m['name']}",
                object_kind="hpa",
                namespace=m["namespace"],
                name=m["name"],
                target_id=workload_id(c, m["namespace"], ref.get("kind", "").lower(), ref.get("name", "")),
                min_replicas=spec.get("minReplicas", 1),
                max_replicas=spec.get("maxReplicas"),
                current_replicas=status.get("currentReplicas"),
                desired_replicas=status.get("desiredReplicas"),
                metrics=_json(spec.get("metrics") or []),
                attributes=_json({"behavior": spec.get("behavior"), "current_metrics": status.get("currentMetrics")}),
            )
        )
    for vpa in objects.of("verticalpodautoscalers"):
        m, spec = vpa["metadata"], vpa.get("spec") or {}
        ref = spec.get("targetRef") or {}
        rows.append(
            _workload_row(
                c,
                account_id,
                day,
                resource_id=f"{c}/{m['namespace']}/vpa/{m['name']}",
                object_kind="vpa",
                namespace=m["namespace"],
                name=m["name"],
                target_id=workload_id(c, m["namespace"], ref.get("kind", "").lower(), ref.get("name", "")),
                attributes=_json(
                    {
                        "update_mode": (spec.get("updatePolicy") or {}).get("updateMode"),
                        "recommendation": (vpa.get("status") or {}).get("recommendation"),
                    }
                ),
            )
        )
    for pdb in objects.of("poddisruptionbudgets"):
        m, spec, status = pdb["metadata"], pdb.get("spec") or {}, pdb.get("status") or {}
        selector = (spec.get("selector") or {}).get("matchLabels") or {}
        target = next(
            (
                workload_id(c, wl["namespace"], wl["kind"], wl["name"])
                for wl in workloads.values()
                if wl["namespace"] == m["namespace"] and selector and selector.items() <= wl["template_labels"].items()
            ),
            None,
        )
        rows.append(
            _workload_row(
                c,
                account_id,
                day,
                resource_id=f"{c}/{m['namespace']}/pdb/{m['name']}",
                object_kind="pdb",
                namespace=m["namespace"],
                name=m["name"],
                target_id=target,
                attributes=_json(
                    {
                        "min_available": spec.get("minAvailable"),
                        "max_unavailable": spec.get("maxUnavailable"),
                        "selector": selector,
                        "disruptions_allowed": status.get("disruptionsAllowed"),
                        "expected_pods": status.get("expectedPods"),
                    }
                ),
            )
        )
    workloads_table = conform(pa.Table.from_pylist(rows, schema=K8S_WORKLOADS), K8S_WORKLOADS, "k8s_workloads")
    resources_table = conform(pa.Table.from_pylist(resources, schema=RESOURCES), RESOURCES, "resources")
    return resources_table, workloads_table


def _resource_row(
    account_id: str, day: date, labels: dict[str, str], attributes: dict[str, Any], **values: Any
) -> dict[str, Any]:
    row = {name: None for name in RESOURCES.names}
    row.update(account_id=account_id, date=day, deployment_type="kubernetes", source=SOURCE, **values)
    row.update(tag_columns(labels))
    row["name"] = values.get("name")
    row["attributes"] = _json(attributes)
    return row


#: Annotations kept on workload rows (the rest can be large and is not read).
KEPT_ANNOTATION_PREFIX = "cloudopt.io/"


def scheduling_attributes(template: dict[str, Any], annotations: dict[str, str] | None = None) -> dict[str, Any]:
    """What the node-pool packing reads from a pod template: ``tolerations``, ``node_selector``,
    ``anti_affinity`` (a required pod anti-affinity on the hostname against the pods' own labels),
    ``volumes`` (the volume source kinds: ``emptyDir``, ``persistentVolumeClaim``, ...) and the
    ``cloudopt.io/`` ``annotations`` of the controller and its template (the template's win)."""
    meta, spec = template.get("metadata") or {}, template.get("spec") or {}
    own = meta.get("labels") or {}
    anti = False
    for term in ((spec.get("affinity") or {}).get("podAntiAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or []:
        selector = (term.get("labelSelector") or {}).get("matchLabels") or {}
        if term.get("topologyKey") == "kubernetes.io/hostname" and selector and selector.items() <= own.items():
            anti = True
    annotations = {
        k: v
        for k, v in {**(annotations or {}), **(meta.get("annotations") or {})}.items()
        if k.startswith(KEPT_ANNOTATION_PREFIX)
    }
    out: dict[str, Any] = {
        "volumes": sorted({k for v in spec.get("volumes") or [] for k in v if k != "name"}),
    }
    if spec.get("tolerations"):
        out["tolerations"] = spec["tolerations"]
    if spec.get("nodeSelector"):
        out["node_selector"] = spec["nodeSelector"]
    if anti:
        out["anti_affinity"] = True
    if annotations:
        out["annotations"] = annotations
    return out


def _workloads(cluster: str, objects: ClusterObjects, owners: OwnerIndex) -> dict[tuple[str, str, str], dict[str, Any]]:
    """Workloads keyed by (namespace, kind, name): controllers (with their template) and the pods they own."""
    out: dict[tuple[str, str, str], dict[str, Any]] = {}

    def add(
        ns: str,
        kind: str,
        name: str,
        template: dict[str, Any] | None,
        replicas: int | None,
        ready: int | None,
        labels: dict[str, str],
        attributes: dict[str, Any],
        annotations: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        wl = out.setdefault(
            (ns, kind, name),
            {
                "namespace": ns,
                "kind": kind,
                "name": name,
                "pods": [],
                "replicas": replicas,
                "ready": ready,
                "labels": labels,
                "attributes": attributes,
                "containers": ((template or {}).get("spec") or {}).get("containers") or [],
                "template_labels": ((template or {}).get("metadata") or {}).get("labels") or {},
                "scheduling": scheduling_attributes(template or {}, annotations),
            },
        )
        return wl

    for d in objects.of("deployments"):
        m = d["metadata"]
        add(
            m["namespace"],
            "deployment",
            m["name"],
            d["spec"].get("template"),
            d["spec"].get("replicas", 1),
            (d.get("status") or {}).get("readyReplicas", 0),
            m.get("labels") or {},
            {"strategy": (d["spec"].get("strategy") or {}).get("type")},
            annotations=m.get("annotations"),
        )
    for s in objects.of("statefulsets"):
        m = s["metadata"]
        add(
            m["namespace"],
            "statefulset",
            m["name"],
            s["spec"].get("template"),
            s["spec"].get("replicas", 1),
            (s.get("status") or {}).get("readyReplicas", 0),
            m.get("labels") or {},
            {},
            annotations=m.get("annotations"),
        )
    for ds in objects.of("daemonsets"):
        m, st = ds["metadata"], ds.get("status") or {}
        add(
            m["namespace"],
            "daemonset",
            m["name"],
            ds["spec"].get("template"),
            st.get("desiredNumberScheduled"),
            st.get("numberReady"),
            m.get("labels") or {},
            {},
            annotations=m.get("annotations"),
        )
    for cj in objects.of("cronjobs"):
        m, spec = cj["metadata"], cj.get("spec") or {}
        template = ((spec.get("jobTemplate") or {}).get("spec") or {}).get("template")
        add(
            m["namespace"],
            "cronjob",
            m["name"],
            template,
            None,
            None,
            m.get("labels") or {},
            {"schedule": spec.get("schedule"), "suspend": spec.get("suspend")},
            annotations=m.get("annotations"),
        )
    for job in objects.of("jobs"):
        m = job["metadata"]
        kind, name = owners.resolve(m["namespace"], "Job", m["name"])
        wl = add(
            m["namespace"],
            kind,
            name,
            (job.get("spec") or {}).get("template"),
            None,
            None,
            m.get("labels") or {} if kind == "job" else {},
            {"jobs": []} if kind in ("jobgroup", "job") else {},
        )
        if kind == "jobgroup":
            wl["attributes"].setdefault("jobs", []).append(m["name"])
            wl["attributes"]["group_labels"] = list(owners.job_group_labels)
    for pod in objects.of("pods"):
        m = pod["metadata"]
        kind, name = owners.workload_of_pod(m["namespace"], m["name"])
        wl = add(
            m["namespace"],
            kind,
            name,
            {"spec": pod.get("spec"), "metadata": {"labels": m.get("labels") or {}}},
            1 if kind == "pod" else None,
            None,
            m.get("labels") or {} if kind == "pod" else {},
            {},
        )
        wl["pods"].append(pod)
        if not wl["containers"]:
            wl["containers"] = (pod.get("spec") or {}).get("containers") or []
    for wl in out.values():
        if wl["kind"] == "pod":
            wl["ready"] = sum(1 for p in wl["pods"] if (p.get("status") or {}).get("phase") == "Running")
    return dict(sorted(out.items()))


# ---------------------------------------------------------------------------------------------------
# usage from Prometheus


def _escape(value: str) -> str:
    """A label value inside a PromQL regex string (RE2): escape the metacharacters, then the backslashes."""
    return re.sub(r"([.+*?()|\[\]{}^$\\])", r"\\\\\1", value)


@dataclass(frozen=True)
class Batch:
    """One slice of a cluster's series: label matchers and the series it is expected to return."""

    matchers: str
    series: int


@dataclass
class UsagePlan:
    batches: list[Batch]
    node_batches: list[Batch]


class UsageCollector:
    """Reads one cluster's day from Prometheus within its series and range limits."""

    def __init__(self, cluster: ClusterConfig, prom: PrometheusClient) -> None:
        self.cluster = cluster
        self.prom = prom

    def _sel(self, *extra: str) -> str:
        parts = [p for p in (self.cluster.prometheus_selector, *extra) if p]
        return ",".join(parts)

    def plan(self, at: float, range_s: int) -> UsagePlan:
        """Batches of at most ``max_series`` series, counted before any data is queried: one
        ``/api/v1/series`` call lists the piece's container series (index only, no samples). Whole
        namespaces are packed together; a namespace too large for one batch is split by pod-name prefix, as
        finely as needed; nodes are packed ``max_series`` to a batch (a cluster with more nodes than that
        gets several node batches)."""
        limit = self.cluster.max_series
        metric = f"container_memory_working_set_bytes{{{self._sel(_CONTAINER_FILTER)}}}"
        per_pod: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
        nodes: set[str] = set()
        for labels in self.prom.series(metric, at - range_s, at):
            # the queries aggregate by (namespace, pod, container): that is what a response can hold
            per_pod[labels.get("namespace", "")][labels.get("pod", "")].add(labels.get("container", ""))
            if labels.get("node"):
                nodes.add(labels["node"])
        per_ns = {ns: {pod: len(cs) for pod, cs in pods.items()} for ns, pods in per_pod.items()}
        totals = {ns: sum(pods.values()) for ns, pods in per_ns.items()}
        batches: list[Batch] = []
        small = sorted((ns, n) for ns, n in totals.items() if n <= limit)
        for group in _pack(small, limit):
            batches.append(Batch(f'namespace=~"{"|".join(_escape(ns) for ns, _ in group)}"', sum(n for _, n in group)))
        for ns in sorted(ns for ns, n in totals.items() if n > limit):
            batches += self._split(f'namespace="{ns}"', per_ns[ns], "")
        node_batches = [
            Batch(f'node=~"{"|".join(_escape(n) for n, _ in g)}"', len(g))
            for g in _pack(sorted((n, 1) for n in nodes), limit)
        ]
        return UsagePlan(batches, node_batches)

    def _split(self, base: str, pods: dict[str, int], prefix: str, label: str = "pod") -> list[Batch]:
        """Slices of one namespace by name prefix (``label``: pod, ReplicaSet or Job), one character longer at
        each level, from the counted series of each name."""
        limit = self.cluster.max_series
        n = len(prefix) + 1
        counts: Counter[str] = Counter()
        exact = 0
        for pod, series in pods.items():
            if not pod.startswith(prefix):
                continue
            if pod == prefix:
                exact += series  # a pod whose whole name is the prefix
            else:
                counts[pod[:n]] += series
        batches: list[Batch] = []
        if exact:
            if exact > limit:
                raise KubernetesCollectionError(
                    f"cluster {self.cluster.name!r}: {label} {prefix!r} ({base}) alone has {exact} series, more "
                    f"than max_series={limit}; Fix: raise max_series in the clusters file"
                )
            batches.append(Batch(f'{base},{label}="{prefix}"', exact))
        fitting = sorted((p, k) for p, k in counts.items() if k <= limit)
        for group in _pack(fitting, limit):
            regex = "|".join(_escape(p) for p, _ in group)
            batches.append(Batch(f'{base},{label}=~"({regex}).*"', sum(k for _, k in group)))
        for p in sorted(p for p, k in counts.items() if k > limit):
            batches += self._split(base, pods, p, label)
        return batches

    def collect(self, day: date, owners: OwnerIndex, account_id: str) -> tuple[pa.Table, dict[str, Any]]:
        c = self.cluster
        day_start = datetime.combine(day, datetime.min.time(), tzinfo=UTC).timestamp()
        chunks = _chunks(day_start, day_start + 86400, c.max_range_s, c.step_s)
        window = f"{c.rate_window_s}s"
        # the peak within each step, (t - step, t]: a series that stopped is not carried into the next step
        peak = f"{c.step_s - 1}s"
        pod_usage: dict[tuple[str, str, str, float], dict[str, float]] = defaultdict(dict)
        node_usage: dict[tuple[str, float], dict[str, float]] = defaultdict(dict)
        batches_run = 0
        for start, end in chunks:
            range_s = int(end - start)
            plan = self.plan(end, range_s)
            last = end - c.step_s
            for batch in plan.batches:
                batches_run += 1
                sel = self._sel(_CONTAINER_FILTER, batch.matchers)
                ksm = self._sel(batch.matchers)
                oom_sel = self._sel(batch.matchers, 'reason="OOMKilled"')
                by = "namespace,pod,container"
                queries = {
                    "cpu": f"sum by ({by}) (rate(container_cpu_usage_seconds_total{{{sel}}}[{window}]))",
                    "mem": f"max by ({by}) (max_over_time(container_memory_working_set_bytes{{{sel}}}[{peak}]))",
                    "throttled": (
                        f"sum by ({by}) (increase(container_cpu_cfs_throttled_periods_total{{{sel}}}[{window}]))"
                        f" / sum by ({by}) (increase(container_cpu_cfs_periods_total{{{sel}}}[{window}]))"
                    ),
                    "oom": f"max by ({by}) (kube_pod_container_status_last_terminated_reason{{{oom_sel}}})",
                }
                for metric, promql in queries.items():
                    for r in self.prom.query_range(promql, start, last, c.step_s):
                        m = r["metric"]
                        for t, v in r["values"]:
                            pod_usage[(m.get("namespace", ""), m.get("pod", ""), m.get("container", ""), float(t))][
                                metric
                            ] = float(v)
                restarts = f"max by ({by}) (kube_pod_container_status_restarts_total{{{ksm}}})"
                # the counter's value one step before the piece, so the first step's restarts are counted too
                # (an instant query: no range query reaches past max_range)
                before = {
                    (
                        r["metric"].get("namespace", ""),
                        r["metric"].get("pod", ""),
                        r["metric"].get("container", ""),
                    ): float(r["value"][1])
                    for r in self.prom.query(restarts, start - c.step_s)
                }
                for r in self.prom.query_range(restarts, start, last, c.step_s):
                    key = (
                        r["metric"].get("namespace", ""),
                        r["metric"].get("pod", ""),
                        r["metric"].get("container", ""),
                    )
                    previous = before.get(key)
                    for t, v in r["values"]:
                        value = float(v)
                        if previous is not None:
                            pod_usage[(*key, float(t))]["restarts"] = max(0.0, value - previous)
                        previous = value
                self._owners(owners, batch.matchers, end, range_s)
            for batch in plan.node_batches:
                batches_run += 1
                sel = self._sel(_CONTAINER_FILTER, batch.matchers)
                for metric, promql in {
                    "cpu": f"sum by (node) (rate(container_cpu_usage_seconds_total{{{sel}}}[{window}]))",
                    "mem": f"sum by (node) (max_over_time(container_memory_working_set_bytes{{{sel}}}[{peak}]))",
                }.items():
                    for r in self.prom.query_range(promql, start, last, c.step_s):
                        for t, v in r["values"]:
                            node_usage[(r["metric"].get("node", ""), float(t))][metric] = float(v)
            for metric, key, batch in self.owner_plan(end, range_s):
                self._controller_owners(owners, metric, key, batch.matchers, end, range_s)
        table = _usage_table(c.name, account_id, day, pod_usage, node_usage, owners)
        metadata = {
            **self.prom.stats.as_metadata(),
            "prometheus_batches": batches_run,
            "max_series": c.max_series,
            "time_chunks": len(chunks),
        }
        return table, metadata

    def _owners(self, owners: OwnerIndex, matchers: str, at: float, range_s: int) -> None:
        sel = self._sel(matchers)
        promql = f"max by (namespace,pod,owner_kind,owner_name) (max_over_time(kube_pod_owner{{{sel}}}[{range_s}s]))"
        for r in self.prom.query(promql, at):
            m = r["metric"]
            owners.pod_owner.setdefault(
                (m.get("namespace", ""), m.get("pod", "")),
                (m.get("owner_kind", "<none>"), m.get("owner_name", "<none>")),
            )
        labels = [f"label_{re.sub(r'[^a-zA-Z0-9_]', '_', k)}" for k in owners.job_group_labels]
        if labels:
            promql = f"max by (namespace,pod,{','.join(labels)}) (max_over_time(kube_pod_labels{{{sel}}}[{range_s}s]))"
            for r in self.prom.query(promql, at):
                m = r["metric"]
                group = next((m[k] for k in labels if m.get(k)), None)
                if group:
                    owners.pod_group.setdefault((m.get("namespace", ""), m.get("pod", "")), group)

    def owner_plan(self, at: float, range_s: int) -> list[tuple[str, str, Batch]]:
        """Batches of the ReplicaSet and Job owner queries (kube-state-metrics), at most ``max_series`` series
        each, counted first with one ``/api/v1/series`` listing: namespaces packed by their number of
        ReplicaSets (Jobs), a namespace with more than ``max_series`` split by name prefix."""
        limit = self.cluster.max_series
        keys = dict(OWNER_METRICS)
        names = "|".join(keys)
        counted: dict[str, dict[str, dict[str, int]]] = {m: defaultdict(dict) for m in keys}
        selector = self._sel('__name__=~"' + names + '"')
        for labels in self.prom.series("{" + selector + "}", at - range_s, at):
            metric = labels.get("__name__", "")
            if metric in keys:
                counted[metric][labels.get("namespace", "")][labels.get(keys[metric], "")] = 1
        plan: list[tuple[str, str, Batch]] = []
        for metric, key in OWNER_METRICS:
            totals = {ns: len(objs) for ns, objs in counted[metric].items()}
            for group in _pack(sorted((ns, n) for ns, n in totals.items() if n <= limit), limit):
                regex = "|".join(_escape(ns) for ns, _ in group)
                plan.append((metric, key, Batch(f'namespace=~"{regex}"', sum(n for _, n in group))))
            for ns in sorted(ns for ns, n in totals.items() if n > limit):
                for batch in self._split(f'namespace="{ns}"', counted[metric][ns], "", key):
                    plan.append((metric, key, batch))
        return plan

    def _controller_owners(
        self, owners: OwnerIndex, metric: str, key: str, matchers: str, at: float, range_s: int
    ) -> None:
        sel = self._sel(matchers)
        target = owners.replicaset_owner if metric == "kube_replicaset_owner" else owners.job_owner
        promql = f"max by (namespace,{key},owner_kind,owner_name) (max_over_time({metric}{{{sel}}}[{range_s}s]))"
        for r in self.prom.query(promql, at):
            m = r["metric"]
            target.setdefault(
                (m.get("namespace", ""), m.get(key, "")),
                (m.get("owner_kind", "<none>"), m.get("owner_name", "<none>")),
            )


def _pack(items: Iterable[tuple[str, int]], limit: int) -> Iterator[list[tuple[str, int]]]:
    """Consecutive groups of items whose sizes add up to at most ``limit`` (first fit, in order)."""
    group: list[tuple[str, int]] = []
    total = 0
    for name, n in items:
        if group and total + n > limit:
            yield group
            group, total = [], 0
        group.append((name, n))
        total += n
    if group:
        yield group


def _chunks(start: float, end: float, max_range_s: int, step_s: int) -> list[tuple[float, float]]:
    """[start, end) in pieces of at most ``max_range_s``, each a whole number of steps (aligned to the step)."""
    size = max(step_s, (max_range_s // step_s) * step_s)
    out = []
    t = start
    while t < end:
        out.append((t, min(end, t + size)))
        t += size
    return out


def _usage_table(
    cluster: str, account_id: str, day: date, pod_usage: dict, node_usage: dict, owners: OwnerIndex
) -> pa.Table:
    agg: dict[tuple[str, str, str, str, float], dict[str, Any]] = {}
    for (ns, pod, container, t), values in pod_usage.items():
        if "mem" not in values:
            # no working-set sample within the step: the container did not run then (a rate still
            # reaches back one window past its end, kube-state-metrics lingers)
            continue
        kind, name = owners.workload_of_pod(ns, pod)
        a = agg.setdefault(
            (ns, kind, name, container, t), {"cpu": [], "mem": [], "thr": [], "restarts": 0.0, "oom": 0.0}
        )
        if "cpu" in values:
            a["cpu"].append(values["cpu"])
        if "mem" in values:
            a["mem"].append(values["mem"])
        if "throttled" in values and not math.isnan(values["throttled"]):
            a["thr"].append(values["throttled"])
        restarts = values.get("restarts", 0.0)
        a["restarts"] += restarts
        if restarts and values.get("oom", 0.0) >= 1:
            a["oom"] += restarts
    rows: list[dict[str, Any]] = []
    for (ns, kind, name, container, t), a in sorted(agg.items()):
        rows.append(
            {
                "account_id": account_id,
                "date": day,
                "cluster": cluster,
                "resource_id": workload_id(cluster, ns, kind, name),
                "scope": "container",
                "namespace": ns,
                "workload_kind": kind,
                "workload": name,
                "container": container,
                "ts": datetime.fromtimestamp(t, tz=UTC),
                "cpu_cores": sum(a["cpu"]) if a["cpu"] else None,
                "cpu_cores_max": max(a["cpu"]) if a["cpu"] else None,
                "mem_bytes": sum(a["mem"]) if a["mem"] else None,
                "mem_bytes_max": max(a["mem"]) if a["mem"] else None,
                "cpu_throttled_ratio": max(a["thr"]) if a["thr"] else None,
                "replicas": len(a["mem"]),
                "restarts": int(a["restarts"]),
                "oom_kills": int(a["oom"]),
                "source": SOURCE,
            }
        )
    for (node_name, t), values in sorted(node_usage.items()):
        rows.append(
            {
                "account_id": account_id,
                "date": day,
                "cluster": cluster,
                "resource_id": f"{cluster}/node/{node_name}",
                "scope": "node",
                "namespace": None,
                "workload_kind": "node",
                "workload": node_name,
                "container": None,
                "ts": datetime.fromtimestamp(t, tz=UTC),
                "cpu_cores": values.get("cpu"),
                "cpu_cores_max": None,
                "mem_bytes": values.get("mem"),
                "mem_bytes_max": None,
                "cpu_throttled_ratio": None,
                "replicas": None,
                "restarts": None,
                "oom_kills": None,
                "source": SOURCE,
            }
        )
    return conform(pa.Table.from_pylist(rows, schema=K8S_CONTAINER_USAGE), K8S_CONTAINER_USAGE, "k8s_container_usage")


# ---------------------------------------------------------------------------------------------------
# the collector


ApiFactory = Callable[[ClusterConfig], Any]
PromFactory = Callable[[ClusterConfig], PrometheusClient]


def default_prometheus(cluster: ClusterConfig) -> PrometheusClient:
    token, basic = cluster.prometheus_auth()
    return PrometheusClient(
        url=cluster.prometheus_url,
        timeout_s=cluster.prometheus_timeout_s,
        bearer_token=token,
        basic_auth=basic,
        ca_file=cluster.prometheus_ca_file,
        tls_verify=cluster.prometheus_tls_verify,
    )


@dataclass
class KubernetesCollector:
    """Collects the clusters that bill to one account, for one UTC day."""

    clusters: tuple[ClusterConfig, ...]
    api_factory: ApiFactory = build_api_client
    prometheus_factory: PromFactory = default_prometheus

    def for_account(self, account_id: str) -> tuple[ClusterConfig, ...]:
        return tuple(c for c in self.clusters if c.account_id == account_id)

    @property
    def accounts(self) -> list[str]:
        return sorted({c.account_id for c in self.clusters})

    def read(self, cluster: ClusterConfig) -> ClusterObjects:
        return read_cluster(cluster, KubernetesApi(cluster, self.api_factory(cluster)))

    def collect_inventory(self, account_id: str, day: date) -> tuple[pa.Table, pa.Table, dict[str, Any]]:
        """(``resources`` rows, ``k8s_workloads`` rows, metadata) of every cluster of the account."""
        resources, workloads, meta = [], [], {}
        for cluster in self.for_account(account_id):
            objects = self.read(cluster)
            res, wl = inventory_tables(cluster, objects, account_id, day)
            resources.append(res)
            workloads.append(wl)
            meta[cluster.name] = {
                "server_version": objects.server_version,
                "has_vpa": objects.has_vpa,
                "api_list_requests": dict(sorted(objects.api_stats.calls.items())),
                "objects": dict(sorted(objects.api_stats.objects.items())),
                "restarted_lists": objects.api_stats.restarted_lists,
            }
        return (
            pa.concat_tables(resources) if resources else RESOURCES.empty_table(),
            pa.concat_tables(workloads) if workloads else K8S_WORKLOADS.empty_table(),
            {"clusters": meta, "cluster_count": len(meta)},
        )

    def collect_usage(self, account_id: str, day: date) -> tuple[pa.Table, dict[str, Any]]:
        """``k8s_container_usage`` rows of every cluster of the account, and the load put on Prometheus."""
        tables, meta = [], {}
        totals: Counter = Counter()
        for cluster in self.for_account(account_id):
            owners = OwnerIndex(cluster.job_group_labels)
            owners.add_live(self.read(cluster))
            prom = self.prometheus_factory(cluster)
            try:
                table, stats = UsageCollector(cluster, prom).collect(day, owners, account_id)
            except PrometheusError as exc:
                raise KubernetesCollectionError(
                    f"cluster {cluster.name!r} (account {account_id}, {day}): {exc}"
                ) from exc
            tables.append(table)
            meta[cluster.name] = stats
            for key in ("prometheus_queries", "prometheus_series_returned", "prometheus_batches"):
                totals[key] += stats[key]
            totals["prometheus_largest_response_series"] = max(
                totals["prometheus_largest_response_series"], stats["prometheus_largest_response_series"]
            )
            totals["prometheus_largest_response_bytes"] = max(
                totals["prometheus_largest_response_bytes"], stats["prometheus_largest_response_bytes"]
            )
        table = pa.concat_tables(tables) if tables else K8S_CONTAINER_USAGE.empty_table()
        return table, {**dict(totals), "clusters": meta}


@dataclass
class WithKubernetes:
    """A collector that adds the Kubernetes clusters billing to an account to another collector's inventory.

    Accounts are the other collector's plus those the clusters file names; ``collect_inventory`` appends the
    clusters' nodes, node pools and workloads to the ``resources`` rows. Everything else is delegated.
    """

    base: Any
    kubernetes: KubernetesCollector
    _base_account_ids: set[str] | None = field(default=None, init=False, repr=False)

    @property
    def name(self) -> str:
        return f"{self.base.name}+kubernetes"

    def list_accounts(self) -> list[str]:
        return sorted(set(self.base.list_accounts()) | set(self.kubernetes.accounts))

    def list_account_statuses(self) -> dict[str, str]:
        statuses = dict(self.base.list_account_statuses())
        for account in self.kubernetes.accounts:
            statuses.setdefault(account, "CONFIGURED")
        return statuses

    def collect_inventory(self, account_id: str, day: date) -> Any:
        from cloudopt_pipelines.sources.base import Collected

        collected = self.base.collect_inventory(account_id, day) if account_id in self._base_accounts() else None
        if not self.kubernetes.for_account(account_id):
            return collected if collected is not None else Collected(RESOURCES.empty_table())
        resources, _workloads, meta = self.kubernetes.collect_inventory(account_id, day)
        tables = [conform(collected.table, RESOURCES, "resources")] if collected is not None else []
        table = pa.concat_tables([*tables, resources])
        metadata = {**(collected.metadata if collected is not None else {}), "kubernetes_resources": resources.num_rows}
        return Collected(table, metadata | {"kubernetes_clusters": sorted(meta["clusters"])})

    def _base_accounts(self) -> set[str]:
        if self._base_account_ids is None:
            self._base_account_ids = set(self.base.list_accounts())
        return self._base_account_ids

    def collect_metrics(self, account_id: str, day: date) -> Any:
        return self._delegate("collect_metrics", account_id, day, "utilization_5m")

    def collect_cluster_metrics(self, account_id: str, day: date) -> Any:
        return self._delegate("collect_cluster_metrics", account_id, day, "cluster_metrics_5m")

    def _delegate(self, method: str, account_id: str, day: date, table: str) -> Any:
        from cloudopt_pipelines.sources.base import Collected
        from cloudopt_pipelines.storage.schemas import TABLES

        if account_id in self._base_accounts():
            return getattr(self.base, method)(account_id, day)
        return Collected(TABLES[table].empty_table())
