"""A small Kubernetes API server for tests: the project's only stand-in, kept honest.

No kube-apiserver can be installed here, so this speaks the parts of the Kubernetes REST API the
collector uses, in the shapes the real server returns, to the official ``kubernetes`` client:

- discovery: ``/version``, ``/api``, ``/api/v1``, ``/apis``, ``/apis/<group>/<version>``;
- list (cluster-wide and namespaced) and get, with ``labelSelector`` (``=``, ``==``, ``!=``, ``in``,
  ``notin``, ``key``, ``!key``), ``limit``/``continue`` pagination and a list ``resourceVersion``;
  a continue token from an older resourceVersion than the store's is refused with 410 Expired, as the
  real server does once etcd has compacted;
- PATCH with ``application/merge-patch+json`` (RFC 7386) and ``application/strategic-merge-patch+json``
  (lists of named objects such as containers merged by ``name``), which bumps resourceVersion and,
  for a spec change, ``metadata.generation`` (a patch that changes nothing bumps nothing, as on a real
  server); a ``metadata.resourceVersion`` in the body is a precondition (409 Conflict when stale); the
  result is validated as the real server does for what the executor changes (container resource
  quantities, requests not above limits, HPA replica bounds and targets: 422 Invalid); ``dryRun=All``
  runs every stage and returns the result without persisting it (any other dryRun value: 400);
- bearer-token authentication (401 otherwise), over HTTPS with a certificate from a test CA (plain HTTP
  on loopback for the demo);
- errors as ``Status`` objects.

Objects are plain dicts in the camelCase wire format (``tests/k8s/world.py`` builds them); the
client's own deserialisation (with client-side validation) checks their shape. Used by ``tests/k8s`` and
by the demo's cluster (``cloudopt_pipelines/demo/kubernetes.py``); nothing in production imports it.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import ssl
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass(frozen=True)
class Kind:
    """One served resource type."""

    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    namespaced: bool
    verbs: tuple[str, ...] = ("get", "list", "patch")

    @property
    def group_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


KINDS: tuple[Kind, ...] = (
    Kind("", "v1", "nodes", "Node", False),
    Kind("", "v1", "namespaces", "Namespace", False),
    Kind("", "v1", "pods", "Pod", True),
    Kind("apps", "v1", "deployments", "Deployment", True),
    Kind("apps", "v1", "replicasets", "ReplicaSet", True),
    Kind("apps", "v1", "statefulsets", "StatefulSet", True),
    Kind("apps", "v1", "daemonsets", "DaemonSet", True),
    Kind("batch", "v1", "jobs", "Job", True),
    Kind("batch", "v1", "cronjobs", "CronJob", True),
    Kind("autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler", True),
    Kind("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", True),
)
VPA_KIND = Kind("autoscaling.k8s.io", "v1", "verticalpodautoscalers", "VerticalPodAutoscaler", True)

# Strategic merge patch merges these lists element by element on the key (the patchMergeKey of the
# Kubernetes API types); every other list is replaced, as in merge patch.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
}


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


def status_body(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def parse_selector(raw: str) -> list[tuple[str, str, set[str]]]:
    """A label selector as (key, operator, values) requirements; raises ApiError 400 when malformed."""
    reqs: list[tuple[str, str, set[str]]] = []
    for part in re.findall(r"(?:[^,(]|\([^)]*\))+", raw):
        part = part.strip()
        if not part:
            continue
        m = re.fullmatch(r"([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)", part)
        if m:
            reqs.append((m[1], m[2], {v.strip() for v in m[3].split(",") if v.strip()}))
            continue
        m = re.fullmatch(r"([\w./-]+)\s*(==|!=|=)\s*([\w./-]*)", part)
        if m:
            reqs.append((m[1], "!=" if m[2] == "!=" else "=", {m[3]}))
            continue
        m = re.fullmatch(r"(!?)([\w./-]+)", part)
        if m:
            reqs.append((m[2], "!exists" if m[1] else "exists", set()))
            continue
        raise ApiError(400, "BadRequest", f"unable to parse requirement: {part!r}")
    return reqs


def matches(labels: dict[str, str], reqs: list[tuple[str, str, set[str]]]) -> bool:
    for key, op, values in reqs:
        have = key in labels
        value = labels.get(key)
        if op == "=" and not (have and value in values):
            return False
        if op == "!=" and have and value in values:
            return False
        if op == "in" and not (have and value in values):
            return False
        if op == "notin" and have and value in values:
            return False
        if op == "exists" and not have:
            return False
        if op == "!exists" and have:
            return False
    return True


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def strategic_merge_patch(target: Any, patch: Any, field: str | None = None) -> Any:
    """Kubernetes strategic merge patch for the list fields in MERGE_KEYS; otherwise merge patch."""
    if isinstance(patch, list) and field in MERGE_KEYS and isinstance(target, list):
        key = MERGE_KEYS[field]
        out = copy.deepcopy(target)
        for item in patch:
            if not isinstance(item, dict) or key not in item:
                raise ApiError(422, "Invalid", f"strategic merge patch: every item of {field} needs {key!r}")
            if item.get("$patch") == "delete":
                out = [o for o in out if o.get(key) != item[key]]
                continue
            for i, existing in enumerate(out):
                if existing.get(key) == item[key]:
                    out[i] = strategic_merge_patch(existing, item)
                    break
            else:
                out.append(copy.deepcopy(item))
        return out
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = strategic_merge_patch(out.get(key), value, key)
    return out


_QUANTITY = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+|E[+-]?\d+|[numkMGTPE]|[KMGTPE]i)?$")
_SUFFIX = {
    "n": Fraction(1, 10**9),
    "u": Fraction(1, 10**6),
    "m": Fraction(1, 1000),
    "": Fraction(1),
    "k": Fraction(10**3),
    "M": Fraction(10**6),
    "G": Fraction(10**9),
    "T": Fraction(10**12),
    "P": Fraction(10**15),
    "E": Fraction(10**18),
    **{f"{p}i": Fraction(1024 ** (i + 1)) for i, p in enumerate("KMGTPE")},
}


def quantity(text: Any, where: str, what: str) -> Fraction:
    """A resource quantity's value; 422 Invalid with the API server's wording when it is not one."""
    raw = str(text)
    match = _QUANTITY.match(raw)
    if not match or isinstance(text, bool):
        raise ApiError(
            422,
            "Invalid",
            f"{what}: Invalid value: {json.dumps(text)}: quantities must match the regular expression "
            "'^([+-]?[0-9.]+)([eEinumkKMGTPE]*[-+]?[0-9]*)$'",
        )
    number, suffix = raw[: match.start(2)] if match.group(2) else raw, match.group(2) or ""
    if suffix[:1] in ("e", "E") and len(suffix) > 1:
        return Fraction(number) * Fraction(10) ** int(suffix[1:])
    return Fraction(number) * _SUFFIX[suffix]


def _pod_spec(kind: Kind, obj: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    spec = obj.get("spec") or {}
    if kind.kind == "Pod":
        return "spec", spec
    if kind.kind == "CronJob":
        return "spec.jobTemplate.spec.template.spec", (
            ((spec.get("jobTemplate") or {}).get("spec") or {}).get("template") or {}
        ).get("spec") or {}
    if kind.kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        return "spec.template.spec", (spec.get("template") or {}).get("spec") or {}
    return None


def validate(kind: Kind, obj: dict[str, Any]) -> None:
    """The checks the real API server makes on what a patch may change here: container resource quantities
    (valid, not negative, requests not above limits) and HPA replica bounds and utilisation targets."""
    errors: list[str] = []
    found = _pod_spec(kind, obj)
    if found is not None:
        path, pod_spec = found
        for field_name in ("initContainers", "containers"):
            for i, c in enumerate(pod_spec.get(field_name) or []):
                where = f"{path}.{field_name}[{i}].resources"
                resources = c.get("resources") or {}
                values: dict[str, dict[str, Fraction]] = {}
                for section in ("requests", "limits"):
                    for resource, amount in (resources.get(section) or {}).items():
                        value = quantity(amount, where, f"{where}.{section}[{resource}]")
                        if value < 0:
                            errors.append(
                                f'{where}.{section}[{resource}]: Invalid value: "{amount}": must be greater than or '
                                "equal to 0"
                            )
                        values.setdefault(section, {})[resource] = value
                for resource, request in values.get("requests", {}).items():
                    limit = values.get("limits", {}).get(resource)
                    if limit is not None and request > limit:
                        errors.append(
                            f'{where}.requests: Invalid value: "{resources["requests"][resource]}": must be less '
                            f"than or equal to {resource} limit of {resources['limits'][resource]}"
                        )
    if kind.kind == "HorizontalPodAutoscaler":
        spec = obj.get("spec") or {}
        low, high = spec.get("minReplicas", 1), spec.get("maxReplicas")
        if not isinstance(low, int) or low < 1:
            errors.append(f"spec.minReplicas: Invalid value: {json.dumps(low)}: must be greater than or equal to 1")
        if not isinstance(high, int) or (isinstance(low, int) and high < low):
            errors.append(
                f"spec.maxReplicas: Invalid value: {json.dumps(high)}: must be greater than or equal to `minReplicas`"
            )
        for i, metric in enumerate(spec.get("metrics") or []):
            target = ((metric.get("resource") or {}).get("target")) or {}
            utilisation = target.get("averageUtilization")
            if target.get("type") == "Utilization" and (not isinstance(utilisation, int) or utilisation < 1):
                errors.append(
                    f"spec.metrics[{i}].resource.target.averageUtilization: Invalid value: {json.dumps(utilisation)}: "
                    "must be greater than 0"
                )
    if errors:
        group = f".{kind.group}" if kind.group else ""
        name = (obj.get("metadata") or {}).get("name")
        raise ApiError(422, "Invalid", f'{kind.kind}{group} "{name}" is invalid: {"; ".join(errors)}')


class Store:
    """The cluster's state: objects by kind, one global resourceVersion counter, as etcd keeps it."""

    def __init__(self, git_version: str = "v1.30.4", with_vpa: bool = True) -> None:
        self.kinds = (*KINDS, VPA_KIND) if with_vpa else KINDS
        self.git_version = git_version
        self.objects: dict[str, dict[tuple[str, str], dict[str, Any]]] = {k.plural: {} for k in self.kinds}
        self.resource_version = 1000
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str]] = []  # (method, path with query) of every request served
        # called after each list page is served (outside the lock): tests change the cluster mid-list
        self.after_page: Callable[[Store, Kind], None] | None = None
        # (plural, namespace, name) -> the error the next persisted patch of that object fails with
        self.patch_faults: dict[tuple[str, str, str], ApiError] = {}

    def kind(self, group: str, version: str, plural: str) -> Kind:
        for k in self.kinds:
            if (k.group, k.version, k.plural) == (group, version, plural):
                return k
        raise ApiError(
            404, "NotFound", f"the server could not find the requested resource ({group}/{version} {plural})"
        )

    def add(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create an object (as a controller or kubectl would); returns the stored copy."""
        kind = next(k for k in self.kinds if k.kind == obj["kind"] and k.group_version == obj["apiVersion"])
        with self.lock:
            self.resource_version += 1
            stored = copy.deepcopy(obj)
            meta = stored.setdefault("metadata", {})
            meta.setdefault(
                "uid", str(uuid.uuid5(uuid.NAMESPACE_URL, f"{kind.plural}/{meta.get('namespace')}/{meta['name']}"))
            )
            meta.setdefault("creationTimestamp", "2024-03-01T00:00:00Z")
            meta["resourceVersion"] = str(self.resource_version)
            meta.setdefault("generation", 1)
            self.objects[kind.plural][(meta.get("namespace", ""), meta["name"])] = stored
            return stored

    def delete(self, kind: str, namespace: str, name: str) -> None:
        plural = next(k.plural for k in self.kinds if k.kind == kind)
        with self.lock:
            self.resource_version += 1
            del self.objects[plural][(namespace, name)]

    def list(self, kind: Kind, namespace: str | None, query: dict[str, str]) -> dict[str, Any]:
        reqs = parse_selector(query.get("labelSelector", ""))
        limit = int(query.get("limit") or 0)
        with self.lock:
            rv = self.resource_version
            offset = 0
            if query.get("continue"):
                try:
                    token = json.loads(base64.b64decode(query["continue"]))
                    token_rv, offset = int(token["rv"]), int(token["start"])
                except (ValueError, KeyError) as exc:
                    raise ApiError(400, "BadRequest", f"continue key is not valid: {exc}") from exc
                if token_rv != rv:
                    raise ApiError(
                        410,
                        "Expired",
                        "The provided continue parameter is too old to display a consistent list result. "
                        "You can start a new list without the continue parameter.",
                    )
            items = [
                copy.deepcopy(o)
                for (ns, _name), o in sorted(self.objects[kind.plural].items())
                if (namespace is None or ns == namespace) and matches(o["metadata"].get("labels") or {}, reqs)
            ]
        page = items[offset : offset + limit] if limit else items[offset:]
        if self.after_page is not None:
            self.after_page(self, kind)
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        if limit and offset + limit < len(items):
            meta["continue"] = base64.b64encode(json.dumps({"rv": rv, "start": offset + limit}).encode()).decode()
            meta["remainingItemCount"] = len(items) - offset - limit
        return {"kind": f"{kind.kind}List", "apiVersion": kind.group_version, "metadata": meta, "items": page}

    def get(self, kind: Kind, namespace: str, name: str) -> dict[str, Any]:
        with self.lock:
            obj = self.objects[kind.plural].get((namespace, name))
            if obj is None:
                raise ApiError(404, "NotFound", f'{kind.plural}.{kind.group or "core"} "{name}" not found')
            return copy.deepcopy(obj)

    def patch(
        self, kind: Kind, namespace: str, name: str, content_type: str, body: Any, dry_run: str | None = None
    ) -> dict[str, Any]:
        if dry_run is not None and dry_run != "All":
            raise ApiError(400, "BadRequest", f'dryRun: Unsupported value: "{dry_run}": supported values: "All"')
        with self.lock:
            obj = self.objects[kind.plural].get((namespace, name))
            if obj is None:
                raise ApiError(404, "NotFound", f'{kind.plural}.{kind.group or "core"} "{name}" not found')
            wanted_rv = ((body or {}).get("metadata") or {}).get("resourceVersion") if isinstance(body, dict) else None
            if wanted_rv is not None and str(wanted_rv) != obj["metadata"].get("resourceVersion"):
                raise ApiError(
                    409,
                    "Conflict",
                    f'Operation cannot be fulfilled on {kind.plural}.{kind.group or "core"} "{name}": the object '
                    "has been modified; please apply your changes to the latest version and try again",
                )
            if content_type == "application/merge-patch+json":
                new = merge_patch(obj, body)
            elif content_type == "application/strategic-merge-patch+json":
                new = strategic_merge_patch(obj, body)
            else:
                raise ApiError(
                    415, "UnsupportedMediaType", f"the body of the request was in an unknown format: {content_type}"
                )
            if new["metadata"].get("name") != name:
                raise ApiError(422, "Invalid", "metadata.name: Invalid value: field is immutable")
            new["metadata"]["resourceVersion"] = obj["metadata"].get("resourceVersion")
            validate(kind, new)
            if new == obj:
                return copy.deepcopy(obj)  # a no-op patch: nothing stored, nothing bumped
            if new.get("spec") != obj.get("spec"):
                new["metadata"]["generation"] = int(obj["metadata"].get("generation", 1)) + 1
            if dry_run == "All":
                return copy.deepcopy(new)  # every stage ran; nothing persisted, resourceVersion unchanged
            fault = self.patch_faults.pop((kind.plural, namespace, name), None)
            if fault is not None:
                raise fault
            self.resource_version += 1
            new["metadata"]["resourceVersion"] = str(self.resource_version)
            self.objects[kind.plural][(namespace, name)] = new
            return copy.deepcopy(new)

    # discovery documents
    def groups(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for k in self.kinds:
            if k.group:
                out.setdefault(k.group, [])
                if k.version not in out[k.group]:
                    out[k.group].append(k.version)
        return out

    def resource_list(self, group: str, version: str) -> dict[str, Any]:
        kinds = [k for k in self.kinds if (k.group, k.version) == (group, version)]
        if not kinds:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({group}/{version})")
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": kinds[0].group_version,
            "resources": [
                {
                    "name": k.plural,
                    "singularName": k.kind.lower(),
                    "namespaced": k.namespaced,
                    "kind": k.kind,
                    "verbs": list(k.verbs),
                }
                for k in kinds
            ],
        }


class _Handler(BaseHTTPRequestHandler):
    server: FakeApiServer

    def log_message(self, *args: object) -> None:  # quiet in tests
        pass

    def _send(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self, method: str) -> None:
        store = self.server.store
        store.requests.append((method, self.path))
        try:
            if self.headers.get("Authorization") != f"Bearer {self.server.token}":
                raise ApiError(401, "Unauthorized", "Unauthorized")
            url = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            body = None
            if method == "PATCH":
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"null")
            self._send(200, self._route(method, url.path.rstrip("/"), query, body))
        except ApiError as exc:
            self._send(exc.code, status_body(exc.code, exc.reason, exc.message))

    def _route(self, method: str, path: str, query: dict[str, str], body: Any) -> dict[str, Any]:
        store = self.server.store
        parts = [p for p in path.split("/") if p]
        if method == "GET" and parts == ["version"]:
            return {
                "major": "1",
                "minor": store.git_version.split(".")[1],
                "gitVersion": store.git_version,
                "gitCommit": "4cb4b56fe9ee3dd0fb8ab1b6ed8a7e1c4a6d6a1b",
                "gitTreeState": "clean",
                "buildDate": "2024-08-15T08:10:41Z",
                "goVersion": "go1.22.5",
                "compiler": "gc",
                "platform": "linux/amd64",
            }
        if method == "GET" and parts == ["api"]:
            return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
        if method == "GET" and parts == ["apis"]:
            return {
                "kind": "APIGroupList",
                "apiVersion": "v1",
                "groups": [
                    {
                        "name": g,
                        "versions": [{"groupVersion": f"{g}/{v}", "version": v} for v in vs],
                        "preferredVersion": {"groupVersion": f"{g}/{vs[0]}", "version": vs[0]},
                    }
                    for g, vs in store.groups().items()
                ],
            }
        if parts[:1] == ["api"] and len(parts) >= 2:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({path})")
        if not rest:
            return store.resource_list(group, version)
        namespace: str | None = None
        if rest[0] == "namespaces" and len(rest) >= 3:
            namespace, rest = rest[1], rest[2:]
        kind = store.kind(group, version, rest[0])
        name = rest[1] if len(rest) > 1 else None
        if namespace is not None and not kind.namespaced:
            raise ApiError(404, "NotFound", f"{kind.plural} is not namespaced")
        if method == "GET" and name is None:
            return store.list(kind, namespace, query)
        if name is None:
            raise ApiError(405, "MethodNotAllowed", f"{method} is not allowed on a list")
        if kind.namespaced and namespace is None:
            raise ApiError(404, "NotFound", f"{kind.plural} is namespaced: use /namespaces/<ns>/{kind.plural}/{name}")
        if method == "GET":
            return store.get(kind, namespace or "", name)
        if method == "PATCH":
            content_type = self.headers.get("Content-Type", "").split(";")[0].strip()
            return store.patch(kind, namespace or "", name, content_type, body, query.get("dryRun"))
        raise ApiError(405, "MethodNotAllowed", f"{method} is not allowed")

    def do_GET(self) -> None:
        self._handle("GET")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_DELETE(self) -> None:
        self._handle("DELETE")


class FakeApiServer(ThreadingHTTPServer):
    """The server on a free loopback port, HTTPS with ``certfile``/``keyfile`` (plain HTTP without them);
    ``store`` is its state."""

    daemon_threads = True

    def __init__(self, store: Store, token: str, certfile: str | None = None, keyfile: str | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.store, self.token = store, token
        self.tls = certfile is not None
        if certfile is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(certfile, keyfile)
            self.socket = context.wrap_socket(self.socket, server_side=True)
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.server_address[1]}"

    def start(self) -> FakeApiServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


def paths_requested(store: Store) -> Iterator[str]:
    for _method, path in store.requests:
        yield urlsplit(path).path
