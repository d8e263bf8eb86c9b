"""An HTTP proxy in front of a moto server that answers ``GetMetricData`` with CloudWatch's real limits.

moto returns every datapoint of every query in one response; CloudWatch returns at most
:data:`~cloudopt_pipelines.sources.aws.MAX_DATAPOINTS_PER_CALL` (100,800) datapoints a call and at most
500 queries a request. Over the limit, AWS cuts the results in query order, marks a result that has more
points ``PartialData`` and returns a ``NextToken``; the next call with that token (and the same
queries) continues where the page stopped. This proxy does the same: it asks moto once for everything,
keeps what is over the limit and serves it page by page. Every other request is relayed unchanged.
Used by the tests and ``cloudopt bench collect``; never in production.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import socket
import threading
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cloudopt_pipelines.sources.aws import MAX_DATAPOINTS_PER_CALL, MAX_QUERIES_PER_CALL

_TARGET = "GraniteServiceVersion20100801.GetMetricData"


@dataclass
class _Pending:
    fingerprint: str
    results: list[dict[str, Any]]  # what is left, in query order


@dataclass
class CloudWatchLimitsProxy:
    """Forwards to ``upstream`` (a moto server); pages ``GetMetricData`` at ``max_datapoints`` a call."""

    upstream: str
    max_datapoints: int = MAX_DATAPOINTS_PER_CALL
    calls: int = 0  # GetMetricData requests answered
    truncated: int = 0  # answers cut at the limit (with a NextToken)
    points_served: int = 0
    largest_page: int = 0
    _pending: dict[str, _Pending] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, body: bytes, relay: Any) -> tuple[int, bytes]:
        """Status and JSON body of the answer to one ``GetMetricData`` request."""
        request = json.loads(body or b"{}")
        queries = request.get("MetricDataQueries") or []
        if len(queries) > MAX_QUERIES_PER_CALL:
            return 400, _error(
                "ValidationError",
                f"The collection MetricDataQueries must not have a size greater than {MAX_QUERIES_PER_CALL}.",
            )
        token = request.pop("NextToken", None)
        fingerprint = _fingerprint(request)
        with self._lock:
            self.calls += 1
            pending = self._pending.pop(token, None) if token else None
        if token and (pending is None or pending.fingerprint != fingerprint):
            return 400, _error("InvalidNextToken", "The service couldn't process the NextToken.")
        if pending is None:
            request.pop("MaxDatapoints", None)
            status, data = relay(json.dumps(request).encode())
            if status != 200:
                return status, data
            upstream = json.loads(data)
            results, messages = upstream.get("MetricDataResults", []), upstream.get("Messages", [])
        else:
            results, messages = pending.results, []
        limit = min(self.max_datapoints, int(request.get("MaxDatapoints") or self.max_datapoints))
        page, rest = _cut(results, limit)
        out: dict[str, Any] = {"MetricDataResults": page, "Messages": messages}
        served = sum(len(r.get("Values", [])) for r in page)
        with self._lock:
            self.points_served += served
            self.largest_page = max(self.largest_page, served)
            if rest:
                new_token = uuid.uuid4().hex
                self._pending[new_token] = _Pending(fingerprint, rest)
                out["NextToken"] = new_token
                self.truncated += 1
        return 200, json.dumps(out).encode()

    @contextlib.contextmanager
    def serve(self) -> Iterator[str]:
        """Listen on a free loopback port; yield its URL."""
        proxy = self
        target = urllib.parse.urlsplit(self.upstream)

        def relay(method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, list, bytes]:
            conn = http.client.HTTPConnection(target.hostname, target.port, timeout=300)
            try:
                conn.request(method, path, body=body, headers=headers)
                response = conn.getresponse()
                return response.status, response.getheaders(), response.read()
            finally:
                conn.close()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                return None

            def _send(self, status: int, headers: list[tuple[str, str]], data: bytes) -> None:
                self.send_response(status)
                skip = ("transfer-encoding", "connection", "content-length", "server", "date")
                for key, value in headers:
                    if key.lower() not in skip:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                if self.headers.get("X-Amz-Target") == _TARGET:

                    def upstream(new_body: bytes) -> tuple[int, bytes]:
                        sent = {k: v for k, v in headers.items() if k.lower() != "content-length"}
                        sent["Content-Length"] = str(len(new_body))
                        status, _, data = relay("POST", self.path, sent, new_body)
                        return status, data

                    status, data = proxy.answer(body, upstream)
                    self._send(status, [("Content-Type", "application/x-amz-json-1.0")], data)
                    return
                status, response_headers, data = relay(self.command, self.path, headers, body)
                self._send(status, response_headers, data)

            do_GET = do_POST = do_PUT = do_DELETE = _handle

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.shutdown()
            server.server_close()
            thread.join()


def _cut(results: list[dict[str, Any]], limit: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The first ``limit`` datapoints in query order (a result cut short is ``PartialData``) and the rest."""
    page: list[dict[str, Any]] = []
    rest: list[dict[str, Any]] = []
    budget = limit
    for result in results:
        n = len(result.get("Values", []))
        if budget >= n:
            page.append(result)
            budget -= n
            continue
        if budget > 0:
            head = {**result, "Timestamps": result["Timestamps"][:budget], "Values": result["Values"][:budget]}
            page.append({**head, "StatusCode": "PartialData"})
        rest.append({**result, "Timestamps": result["Timestamps"][budget:], "Values": result["Values"][budget:]})
        budget = 0
    return page, rest


def _fingerprint(request: dict[str, Any]) -> str:
    """What must be the same in a call continuing with a NextToken: the queries and the time range."""
    keep = {k: request.get(k) for k in ("MetricDataQueries", "StartTime", "EndTime", "ScanBy")}
    return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()


def _error(code: str, message: str) -> bytes:
    return json.dumps({"__type": code, "message": message}).encode()
