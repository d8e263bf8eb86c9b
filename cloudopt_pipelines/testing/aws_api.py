"""A proxy in front of a moto server that answers, as the AWS API references document them, the calls moto
fails or lacks for the cluster optimiser (README limits); every other request reaches moto unchanged.

- EMR policies: moto answers HTTP 500 to Put/Get/RemoveAutoTerminationPolicy and Put/Get/
  RemoveManagedScalingPolicy. The proxy keeps them per cluster id with the documented shapes and validation
  (an idle timeout of 60 s to 7 days; compute limits with a unit type, a minimum and a maximum, the minimum
  not above the maximum); a cluster moto does not know is an ``InvalidRequestException``.
- EMR instance fleets: moto has no ``ListInstanceFleets`` or ``ModifyInstanceFleet`` and its DescribeCluster
  omits ``InstanceCollectionType``. A test registers a cluster's fleets (:meth:`AwsApi.add_fleets`); the proxy
  then reports the cluster as ``INSTANCE_FLEET``, lists its fleets and changes their target capacities
  (the primary fleet's are fixed, as on EMR; a fleet that does not belong to the cluster is an
  ``InvalidRequestException``). Provisioned capacity follows the target at once.
- ECS deployments: moto leaves a service's primary deployment ``IN_PROGRESS`` for ever (its running count
  stays 0). After an ``UpdateService`` the proxy answers ``IN_PROGRESS`` for the next ``rollout_polls``
  DescribeServices of that service, then ``COMPLETED`` with the running count at the desired count (or
  ``FAILED`` for the services named in ``failing_rollouts``), as an ECS rolling deployment settles.

Used by tests/aws and tests/executor; nothing in production imports it.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import SplitResult

import boto3

UNIT_TYPES = ("InstanceFleetUnits", "Instances", "VCPU")
POLICY_CALLS = tuple(
    f"{verb}{what}Policy" for verb in ("Put", "Get", "Remove") for what in ("AutoTermination", "ManagedScaling")
)
FLEET_CALLS = ("ListInstanceFleets", "ModifyInstanceFleet")
ECS_TARGET = "AmazonEC2ContainerServiceV20141113"
JSON_TYPE = "application/x-amz-json-1.1"


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def relay(handler: BaseHTTPRequestHandler, upstream: SplitResult, body: bytes) -> tuple[int, list, bytes]:
    """Send one request of a proxy's ``handler`` to the server at ``upstream``: (status, headers, body)."""
    conn = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=60)
    headers = {k: v for k, v in handler.headers.items() if k.lower() not in ("host", "connection")}
    conn.request(handler.command, handler.path, body=body, headers=headers)
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, response.getheaders(), data


def send(handler: BaseHTTPRequestHandler, status: int, data: bytes, headers: list | None = None) -> None:
    """Answer a proxy's request with ``status`` and ``data`` (JSON of the AWS JSON protocol unless ``headers``)."""
    handler.send_response(status)
    for key, value in headers if headers is not None else [("Content-Type", JSON_TYPE)]:
        if key.lower() not in ("transfer-encoding", "connection", "content-length", "server", "date"):
            handler.send_header(key, value)
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


def forward(handler: BaseHTTPRequestHandler, upstream: SplitResult, body: bytes) -> None:
    """Relay one request of a test proxy's ``handler`` to the server at ``upstream`` and send its answer back."""
    status, headers, data = relay(handler, upstream, body)
    send(handler, status, data, headers)


@contextlib.contextmanager
def serve(handle: Any) -> Iterator[str]:
    """An HTTP server on a free loopback port whose every request goes to ``handle(handler, body)``; its URL."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            return None

        def _any(self) -> None:
            handle(self, self.rfile.read(int(self.headers.get("Content-Length") or 0)))

        do_GET = do_POST = do_PUT = do_DELETE = _any

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def region_of(handler: BaseHTTPRequestHandler) -> str:
    """The region a SigV4-signed request is for (its credential scope)."""
    auth = handler.headers.get("Authorization", "")
    scope = auth.split("Credential=", 1)[1].split(",", 1)[0].split("/") if "Credential=" in auth else []
    return scope[2] if len(scope) > 2 else "us-east-1"


def _invalid(message: str) -> tuple[int, dict[str, Any]]:
    return 400, {"__type": "InvalidRequestException", "Message": message}


@dataclass
class AwsApi:
    """Forwards to moto; answers EMR policies and instance fleets and settles ECS deployments itself."""

    upstream: str
    auto_termination: dict[str, dict[str, Any]] = field(default_factory=dict)
    managed_scaling: dict[str, dict[str, Any]] = field(default_factory=dict)
    fleets: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    rollout_polls: int = 2
    failing_rollouts: set[str] = field(default_factory=set)
    rollouts: dict[str, int] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_fleets(self, cluster_id: str, fleets: list[dict[str, Any]]) -> None:
        """Register ``cluster_id``'s fleets in the ``ListInstanceFleets`` shape (``Id``, ``InstanceFleetType``,
        ``TargetOnDemandCapacity``, ``TargetSpotCapacity``, ``InstanceTypeSpecifications``); status and
        provisioned capacity are filled in."""
        for f in fleets:
            f.setdefault("Status", {"State": "RUNNING"})
            f.setdefault("Name", str(f["InstanceFleetType"]).lower())
            f["ProvisionedOnDemandCapacity"] = f.get("TargetOnDemandCapacity", 0)
            f["ProvisionedSpotCapacity"] = f.get("TargetSpotCapacity", 0)
        self.fleets[cluster_id] = fleets

    def _known(self, cluster_id: str, region: str) -> bool:
        emr = boto3.client(
            "emr", region_name=region, endpoint_url=self.upstream, aws_access_key_id="x", aws_secret_access_key="y"
        )
        try:
            emr.describe_cluster(ClusterId=cluster_id)
        except emr.exceptions.ClientError:
            return False
        return True

    def answer(self, operation: str, body: dict[str, Any], region: str = "us-east-1") -> tuple[int, dict[str, Any]]:
        """EMR's answer to a policy or fleet call in ``region``: (HTTP status, JSON body)."""
        with self.lock:
            self.calls.append(operation)
        cid = str(body.get("ClusterId") or "")
        if not cid or not self._known(cid, region):
            return _invalid(f"Cluster id '{cid}' is not valid.")
        if operation in FLEET_CALLS:
            return self._fleet(operation, cid, body)
        store = self.auto_termination if "AutoTermination" in operation else self.managed_scaling
        if operation.startswith("Get"):
            found = store.get(cid)
            if found is None:
                return 200, {}
            key = "AutoTerminationPolicy" if store is self.auto_termination else "ManagedScalingPolicy"
            return 200, {key: found}
        if operation.startswith("Remove"):
            store.pop(cid, None)
            return 200, {}
        if store is self.auto_termination:
            timeout = (body.get("AutoTerminationPolicy") or {}).get("IdleTimeout")
            if not isinstance(timeout, int) or not 60 <= timeout <= 604800:
                return 400, {"__type": "ValidationException", "Message": "IdleTimeout must be 60 to 604800 seconds."}
            store[cid] = {"IdleTimeout": timeout}
            return 200, {}
        limits = (body.get("ManagedScalingPolicy") or {}).get("ComputeLimits") or {}
        low, high = limits.get("MinimumCapacityUnits"), limits.get("MaximumCapacityUnits")
        if (
            limits.get("UnitType") not in UNIT_TYPES
            or not isinstance(low, int)
            or not isinstance(high, int)
            or low > high
        ):
            return 400, {"__type": "ValidationException", "Message": f"ComputeLimits are not valid: {limits}"}
        store[cid] = {"ComputeLimits": limits}
        return 200, {}

    def _fleet(self, operation: str, cid: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        fleets = self.fleets.get(cid)
        if fleets is None:
            return _invalid(f"Cluster {cid} uses instance groups, not instance fleets.")
        if operation == "ListInstanceFleets":
            return 200, {"InstanceFleets": json.loads(json.dumps(fleets))}
        change = body.get("InstanceFleet") or {}
        fleet = next((f for f in fleets if f["Id"] == change.get("InstanceFleetId")), None)
        if fleet is None:
            return _invalid(f"Instance fleet {change.get('InstanceFleetId')} is not a fleet of cluster {cid}.")
        targets = {k: change[k] for k in ("TargetOnDemandCapacity", "TargetSpotCapacity") if k in change}
        if not targets or any(not isinstance(v, int) or isinstance(v, bool) or v < 0 for v in targets.values()):
            return 400, {"__type": "ValidationException", "Message": f"Target capacities are not valid: {change}"}
        if fleet["InstanceFleetType"] == "MASTER":
            return _invalid("The target capacity of the primary (MASTER) instance fleet cannot be modified.")
        with self.lock:
            fleet.update(targets)
            fleet["ProvisionedOnDemandCapacity"] = fleet.get("TargetOnDemandCapacity", 0)
            fleet["ProvisionedSpotCapacity"] = fleet.get("TargetSpotCapacity", 0)
        return 200, {}

    def _settle(self, answer: dict[str, Any]) -> dict[str, Any]:
        for svc in answer.get("services") or []:
            name = str(svc.get("serviceName"))
            primary = next((d for d in svc.get("deployments") or [] if d.get("status") == "PRIMARY"), None)
            if primary is None:
                continue
            with self.lock:
                left = self.rollouts.get(name, 0)
                if left > 0:
                    self.rollouts[name] = left - 1
            desired = int(svc.get("desiredCount") or 0)
            if left > 0:
                primary.update(rolloutState="IN_PROGRESS", runningCount=max(0, desired - 1), pendingCount=1)
            elif name in self.failing_rollouts:
                primary.update(rolloutState="FAILED", rolloutStateReason="ECS deployment circuit breaker: tasks failed")
            else:
                primary.update(rolloutState="COMPLETED", runningCount=desired, pendingCount=0)
                svc.update(runningCount=desired, pendingCount=0)
        return answer

    def _handle(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        target = handler.headers.get("X-Amz-Target", "")
        service, _, operation = target.partition(".")
        request = json.loads(body or b"{}") if target else {}
        upstream = urllib.parse.urlsplit(self.upstream)
        if service == "ElasticMapReduce" and operation in (*POLICY_CALLS, *FLEET_CALLS):
            status, answer = self.answer(operation, request, region_of(handler))
            send(handler, status, json.dumps(answer).encode())
            return
        if target == "ElasticMapReduce.DescribeCluster" and request.get("ClusterId") in self.fleets:
            status, headers, data = relay(handler, upstream, body)
            answer = json.loads(data)
            if status == 200:
                answer["Cluster"]["InstanceCollectionType"] = "INSTANCE_FLEET"
            send(handler, status, json.dumps(answer).encode())
            return
        if service == ECS_TARGET and operation in ("UpdateService", "DescribeServices"):
            status, headers, data = relay(handler, upstream, body)
            if status == 200 and operation == "UpdateService":
                with self.lock:
                    self.calls.append("UpdateService")
                    self.rollouts[str(request.get("service")).rsplit("/", 1)[-1]] = self.rollout_polls
            elif status == 200:
                data = json.dumps(self._settle(json.loads(data))).encode()
            send(handler, status, data, headers)
            return
        forward(handler, upstream, body)

    @contextlib.contextmanager
    def serve(self) -> Iterator[str]:
        """The proxy's URL while it runs."""
        with serve(self._handle) as url:
            yield url
