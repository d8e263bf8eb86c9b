"""A proxy in front of moto that answers EMR's policy calls as the EMR API reference documents them.

moto answers HTTP 500 to PutAutoTerminationPolicy, GetAutoTerminationPolicy, RemoveAutoTerminationPolicy,
PutManagedScalingPolicy, GetManagedScalingPolicy and RemoveManagedScalingPolicy (README limits). This proxy
keeps those policies per cluster id, with the documented shapes and validation (an idle timeout of 60 s to
7 days; compute limits with a unit type, a minimum and a maximum, the minimum not above the maximum; a
cluster moto does not know is an ``InvalidRequestException``), and forwards every other request to moto.
moto's DescribeCluster omits ``InstanceCollectionType``: for the cluster ids in ``fleets`` the proxy adds
``INSTANCE_FLEET`` to moto's answer, as AWS reports a cluster created with instance fleets.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import boto3

from tests.aws.conftest import forward, free_port

UNIT_TYPES = ("InstanceFleetUnits", "Instances", "VCPU")
POLICY_CALLS = tuple(
    f"{verb}{what}Policy" for verb in ("Put", "Get", "Remove") for what in ("AutoTermination", "ManagedScaling")
)


@dataclass
class EmrPolicyApi:
    """Forwards to moto; keeps auto-termination and managed-scaling policies itself."""

    upstream: str
    auto_termination: dict[str, dict[str, Any]] = field(default_factory=dict)
    managed_scaling: dict[str, dict[str, Any]] = field(default_factory=dict)
    fleets: set[str] = field(default_factory=set)
    calls: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _known(self, cluster_id: str) -> bool:
        emr = boto3.client(
            "emr", region_name="us-east-1", endpoint_url=self.upstream, aws_access_key_id="x", aws_secret_access_key="y"
        )
        try:
            emr.describe_cluster(ClusterId=cluster_id)
        except emr.exceptions.ClientError:
            return False
        return True

    def answer(self, operation: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with self.lock:
            self.calls.append(operation)
        cid = str(body.get("ClusterId") or "")
        if not cid or not self._known(cid):
            return 400, {"__type": "InvalidRequestException", "Message": f"Cluster id '{cid}' is not valid."}
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

    @contextlib.contextmanager
    def serve(self) -> Iterator[str]:
        api, upstream = self, urllib.parse.urlsplit(self.upstream)

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                return None

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                target = self.headers.get("X-Amz-Target", "")
                service, _, operation = target.partition(".")
                if service == "ElasticMapReduce" and operation in POLICY_CALLS:
                    status, answer = api.answer(operation, json.loads(body or b"{}"))
                    payload = json.dumps(answer).encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/x-amz-json-1.1")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                if (
                    target == "ElasticMapReduce.DescribeCluster"
                    and json.loads(body or b"{}").get("ClusterId") in api.fleets
                ):
                    conn = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=60)
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                    conn.request(self.command, self.path, body=body, headers=headers)
                    answer = json.loads(conn.getresponse().read())
                    conn.close()
                    answer["Cluster"]["InstanceCollectionType"] = "INSTANCE_FLEET"
                    payload = json.dumps(answer).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/x-amz-json-1.1")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                forward(self, upstream, body)

            do_GET = do_POST = do_PUT = do_DELETE = _forward

        server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}"
        finally:
            server.shutdown()
            server.server_close()
            thread.join()
