"""Kubernetes access of the executor: the official client, its own identity, every patch recorded. No Dagster.

``KubernetesAccess`` reaches the clusters of the clusters file (``CLOUDOPT_K8S_CLUSTERS``) through each
entry's ``executor_kubeconfig`` / ``executor_context`` (the identity bound to the write ClusterRole of
docs/kubernetes.md), falling back to the collector's ``kubeconfig`` / ``context``. Reads are plain gets;
writes are PATCHes with an explicit patch type, rate limited and recorded for the audit, or sent with
``dryRun=All`` (validated by the server, never persisted, never recorded as a change).

``KubernetesTarget`` is the execution target the engine sees: plug-ins keyed by (resource kind, action),
live reads, recording and errors that name the cluster, the server and the fix.
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cloudopt_pipelines.executor.aws import ExecutorError
from cloudopt_pipelines.executor.model import ApiCall, PlannedAction
from cloudopt_pipelines.executor.policy import ExecutorPolicy, RateLimiter
from cloudopt_pipelines.sources.kubernetes_config import ClusterConfig, ClustersConfig

# Every Kubernetes API call the executor makes: (apiGroup, resource, verb). The write ClusterRole of
# docs/kubernetes.md (and docs/k8s/executor-clusterrole.yaml) lists exactly these; a test keeps them equal
# and checks them against the requests of a real run.
API_CALLS: tuple[tuple[str, str, str], ...] = (
    ("", "namespaces", "get"),
    ("apps", "daemonsets", "get"),
    ("apps", "daemonsets", "patch"),
    ("apps", "deployments", "get"),
    ("apps", "deployments", "patch"),
    ("apps", "statefulsets", "get"),
    ("apps", "statefulsets", "patch"),
    ("autoscaling", "horizontalpodautoscalers", "get"),
    ("autoscaling", "horizontalpodautoscalers", "patch"),
    ("batch", "cronjobs", "get"),
    ("batch", "cronjobs", "patch"),
)
PATCH_TYPES = {
    "strategic": "application/strategic-merge-patch+json",
    "merge": "application/merge-patch+json",
}
FIELD_MANAGER = "cloudopt-executor"


@dataclass(frozen=True)
class ObjectKind:
    """A kind the executor reads or patches, and where its pod template's containers are."""

    kind: str
    group: str
    version: str
    plural: str
    containers_path: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


_TEMPLATE = ("spec", "template", "spec", "containers")
KINDS: dict[str, ObjectKind] = {
    "deployment": ObjectKind("Deployment", "apps", "v1", "deployments", _TEMPLATE),
    "statefulset": ObjectKind("StatefulSet", "apps", "v1", "statefulsets", _TEMPLATE),
    "daemonset": ObjectKind("DaemonSet", "apps", "v1", "daemonsets", _TEMPLATE),
    "cronjob": ObjectKind("CronJob", "batch", "v1", "cronjobs", ("spec", "jobTemplate", *_TEMPLATE)),
    "hpa": ObjectKind("HorizontalPodAutoscaler", "autoscaling", "v2", "horizontalpodautoscalers"),
    "namespace": ObjectKind("Namespace", "", "v1", "namespaces"),
}


def build_executor_client(cluster: ClusterConfig) -> Any:
    """The official client for ``cluster`` as the executor: its executor kubeconfig and context when the entry
    names them, else the collector's; without any kubeconfig, the in-cluster service account."""
    import kubernetes

    kubeconfig = cluster.executor_kubeconfig or cluster.kubeconfig
    context = cluster.executor_context or (cluster.context if not cluster.executor_kubeconfig else None)
    try:
        if kubeconfig:
            return kubernetes.config.new_client_from_config(
                config_file=kubeconfig, context=context, persist_config=False
            )
        configuration = kubernetes.client.Configuration()
        kubernetes.config.load_incluster_config(client_configuration=configuration)
        return kubernetes.client.ApiClient(configuration)
    except (kubernetes.config.ConfigException, OSError, ValueError) as exc:
        where = (
            f"kubeconfig {kubeconfig}" + (f" context {context!r}" if context else "") if kubeconfig else "in-cluster"
        )
        raise ExecutorError(
            f"cluster {cluster.name!r}: cannot load the executor's {where} configuration: {exc}. Fix: set "
            "executor_kubeconfig / executor_context of the cluster in the clusters file (docs/kubernetes.md)",
            unreachable=True,
        ) from None


class KubernetesAccess:
    """The executor's API clients, one per cluster, with patch recording, rate limiting and clear errors."""

    def __init__(
        self,
        clusters: ClustersConfig,
        client_factory: Callable[[ClusterConfig], Any] = build_executor_client,
        rate_limiter: RateLimiter | None = None,
    ) -> None:
        self.clusters = clusters
        self.client_factory = client_factory
        self.rate_limiter = rate_limiter or RateLimiter(0)
        self._clients: dict[str, Any] = {}
        self._local = threading.local()
        self._lock = threading.Lock()

    def cluster(self, name: str, account_id: str, resource_id: str) -> ClusterConfig:
        """The clusters-file entry of ``name``, which must bill to the plan row's account."""
        try:
            cluster = self.clusters.get(name)
        except KeyError:
            raise ExecutorError(
                f"{resource_id}: cluster {name!r} is not in the clusters file {self.clusters.path}; add it "
                "(CLOUDOPT_K8S_CLUSTERS, docs/kubernetes.md) or re-plan"
            ) from None
        if cluster.account_id != account_id:
            raise ExecutorError(
                f"{resource_id}: the plan row is for account {account_id}, but cluster {name!r} bills to account "
                f"{cluster.account_id} in {self.clusters.path}: refused; fix the clusters file or re-plan"
            )
        return cluster

    def client(self, cluster: ClusterConfig) -> Any:
        with self._lock:
            if cluster.name not in self._clients:
                self._clients[cluster.name] = self.client_factory(cluster)
            return self._clients[cluster.name]

    def _timeout(self, cluster: ClusterConfig) -> tuple[float, float]:
        return (min(10.0, cluster.api_timeout_s), cluster.api_timeout_s)

    def _remember(self, cluster: ClusterConfig, what: str) -> None:
        self._local.last = (cluster.name, what, getattr(self.client(cluster).configuration, "host", "?"))

    def get(self, cluster: ClusterConfig, kind: ObjectKind, namespace: str | None, name: str) -> dict[str, Any] | None:
        """The object as the API server returns it (camelCase dict), or None when it does not exist (404)."""
        import kubernetes

        client = self.client(cluster)
        path = _path(kind, namespace, name)
        self._remember(cluster, f"GET {path}")
        try:
            data = _raw_call(client, "GET", path, [], {"Accept": "application/json"}, None, self._timeout(cluster))
            if data.status == 404:
                return None
            if data.status >= 300:
                raise kubernetes.client.ApiException(http_resp=data)
            return json.loads(data.data)
        except kubernetes.client.ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def patch(
        self,
        cluster: ClusterConfig,
        kind: ObjectKind,
        namespace: str,
        name: str,
        body: Mapping[str, Any],
        patch_type: str,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """PATCH the object (``patch_type`` ``strategic`` or ``merge``); with ``dry_run`` the server runs every
        stage (``dryRun=All``) and persists nothing. Returns the object the server stored (or would store)."""
        import kubernetes

        client = self.client(cluster)
        path = _path(kind, namespace, name)
        query = [("fieldManager", FIELD_MANAGER), *([("dryRun", "All")] if dry_run else [])]
        self._remember(cluster, f"PATCH {path}" + (" (dryRun=All)" if dry_run else ""))
        call = ApiCall("k8s:patch", patch_params(cluster, kind, namespace, name, body, patch_type), "sent")
        calls: list[ApiCall] | None = None if dry_run else getattr(self._local, "calls", None)
        if not dry_run:
            self.rate_limiter.acquire()
        if calls is not None:
            calls.append(call)
        index = len(calls) - 1 if calls is not None else -1

        def mark(status: str) -> None:
            if calls is not None:
                calls[index] = ApiCall(call.api, call.params, status)

        try:
            headers = {"Accept": "application/json", "Content-Type": PATCH_TYPES[patch_type]}
            data = _raw_call(client, "PATCH", path, query, headers, dict(body), self._timeout(cluster))
            if data.status >= 300:
                raise kubernetes.client.ApiException(http_resp=data)
        except kubernetes.client.ApiException as exc:
            mark(f"error: {exc.status} {_status_reason(exc)}")
            raise
        except Exception as exc:
            mark(f"error: {type(exc).__name__}")
            raise
        mark("ok")
        return json.loads(data.data)

    @contextmanager
    def recording(self) -> Iterator[list[ApiCall]]:
        """Record the patches sent inside the block (dry-run validations are not changes: not recorded)."""
        calls: list[ApiCall] = []
        previous = getattr(self._local, "calls", None)
        self._local.calls = calls
        try:
            yield calls
        finally:
            self._local.calls = previous

    def describe_error(self, exc: BaseException, account_id: str, doing: str) -> ExecutorError:
        """An ``ExecutorError`` naming the cluster, the server, the request and a fix."""
        import kubernetes

        if isinstance(exc, ExecutorError):
            return exc
        cluster, request, server = getattr(self._local, "last", ("?", "(no request yet)", "?"))
        where = f"cluster {cluster!r} (account {account_id}) at {server}: {request}"
        if isinstance(exc, kubernetes.client.ApiException):
            message = _status_message(exc)
            fixes = {
                401: "refresh the credentials of the executor's kubeconfig (executor_kubeconfig)",
                403: "bind the executor's identity to the cloudopt-executor ClusterRole of docs/kubernetes.md",
                404: "the object no longer exists; re-run the plan",
                409: "the object changed between the executor's read and its patch; re-run: the live state is read "
                "again and nothing is applied twice",
                422: "the API server refuses the patch as invalid; re-plan (the executor applies only valid plans)",
            }
            fix = fixes.get(int(exc.status or 0), "check the API server's health, then re-run")
            return ExecutorError(
                f"Kubernetes API call failed for {where} while {doing}: HTTP {exc.status} {_status_reason(exc)}: "
                f"{message}. Fix: {fix}",
                code=str(exc.status),
            )
        text = (str(exc).splitlines() or [type(exc).__name__])[0]
        return ExecutorError(
            f"Kubernetes API call failed for {where} while {doing}: {type(exc).__name__}: {text}. Fix: check the "
            "network path to the API server (and its certificate authority in the kubeconfig), then re-run: "
            "what was applied is read live and never applied twice",
            unreachable=True,
        )


def _raw_call(
    client: Any,
    method: str,
    path: str,
    query: list[tuple[str, str]],
    headers: dict[str, str],
    body: dict[str, Any] | None,
    timeout: tuple[float, float],
) -> Any:
    """One request through the official client's ``ApiClient``, as a response with ``status`` and ``data``
    (bytes). Clients generated by openapi-generator 7 split it in ``param_serialize`` + ``call_api``; the
    earlier generation (``call_api(resource_path, method, ...)``, still what some releases ship) raises
    ``ApiException`` for a status outside 2xx itself, which the callers handle alike."""
    if hasattr(client, "param_serialize"):
        response = client.call_api(
            *client.param_serialize(
                method=method,
                resource_path=path,
                query_params=query,
                header_params=headers,
                body=body,
                auth_settings=["BearerToken"],
            ),
            _request_timeout=timeout,
        )
        response.read()
        return response
    return client.call_api(
        path,
        method,
        query_params=query,
        header_params=headers,
        body=body,
        auth_settings=["BearerToken"],
        _preload_content=False,
        _return_http_data_only=True,
        _request_timeout=timeout,
    )


def _path(kind: ObjectKind, namespace: str | None, name: str) -> str:
    base = f"/apis/{kind.group}/{kind.version}" if kind.group else f"/api/{kind.version}"
    scope = f"/namespaces/{namespace}" if namespace else ""
    return f"{base}{scope}/{kind.plural}/{name}"


def _status(exc: Any) -> dict[str, Any]:
    try:
        value = json.loads(exc.body or "{}")
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _status_reason(exc: Any) -> str:
    return str(_status(exc).get("reason") or exc.reason or "")


def _status_message(exc: Any) -> str:
    return str(_status(exc).get("message") or exc.reason or "").rstrip(".")


def patch_params(
    cluster: ClusterConfig, kind: ObjectKind, namespace: str, name: str, body: Mapping[str, Any], patch_type: str
) -> dict[str, Any]:
    """How a patch is recorded in the audit: the object, the patch type and body, and its kubectl equivalent."""
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    context = cluster.executor_context or cluster.context
    kubectl = (
        f"kubectl{f' --context {context}' if context else ''} -n {namespace} patch {kind.kind.lower()} {name} "
        f"--type {patch_type} -p '{text}'"
    )
    return {
        "cluster": cluster.name,
        "apiVersion": kind.api_version,
        "kind": kind.kind,
        "namespace": namespace,
        "name": name,
        "patch_type": patch_type,
        "body": copy.deepcopy(dict(body)),
        "kubectl": kubectl,
    }


@dataclass
class KubernetesContext:
    """What a Kubernetes plug-in may use: the executor's access for one account, and the policy."""

    access: KubernetesAccess
    account_id: str
    policy: ExecutorPolicy
    now: Callable[[], Any]

    def cluster(self, name: str, resource_id: str) -> ClusterConfig:
        return self.access.cluster(name, self.account_id, resource_id)


class KubernetesTarget:
    """Kubernetes clusters of the clusters file through the official client: workload requests and limits,
    HPAs, and node-pool advice (``kubernetes_plugins()``)."""

    name = "kubernetes"

    def __init__(self, access: KubernetesAccess, plugins: Mapping[tuple[str, str], Any] | None = None) -> None:
        from cloudopt_pipelines.executor.actions.kubernetes import kubernetes_plugins

        self.access = access
        self._plugins = dict(plugins if plugins is not None else kubernetes_plugins())

    def plugins(self) -> Mapping[tuple[str, str], Any]:
        return self._plugins

    def default_region(self) -> str:
        return ""

    def context(
        self, account_id: str, region: str, policy: ExecutorPolicy, now: Callable[[], datetime]
    ) -> KubernetesContext:
        return KubernetesContext(self.access, account_id, policy, now)

    def read_live(self, plugin: Any, ctx: Any, action: PlannedAction) -> Any:
        return plugin.read(ctx, action)

    def recording(self) -> Any:
        return self.access.recording()

    def describe_error(self, exc: BaseException, account_id: str, region: str, doing: str) -> ExecutorError:
        return self.access.describe_error(exc, account_id, doing)

    def limit_rate(self, calls_per_second: float) -> None:
        self.access.rate_limiter = self.access.rate_limiter.at_rate(calls_per_second)
