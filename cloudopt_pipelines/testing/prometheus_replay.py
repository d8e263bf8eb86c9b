"""A Prometheus that replays recorded HTTP API responses, for the demo (which cannot assume a Prometheus binary).

``RecordingPrometheusClient`` records every response a real Prometheus gave the collector;
``ReplayPrometheus`` serves those responses for exactly the same requests over the same HTTP API, so the demo
goes through the real ``PrometheusClient`` and collector. A request that was not recorded is answered with
HTTP 400 naming the fix (record again with ``scripts/record_k8s_demo.py``). Never used in production.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

from cloudopt_pipelines.sources.prometheus import PrometheusClient


def request_key(endpoint: str, params: dict[str, str]) -> str:
    """The canonical form of one API request: endpoint and sorted parameters."""
    return json.dumps([endpoint, sorted(params.items())], separators=(",", ":"))


@dataclass
class RecordingPrometheusClient(PrometheusClient):
    """A ``PrometheusClient`` that keeps every successful response, keyed by its request."""

    recorded: dict[str, Any] = field(default_factory=dict)

    def _call(self, endpoint: str, params: dict[str, str]) -> Any:
        data = super()._call(endpoint, params)
        self.recorded[request_key(endpoint, params)] = data
        return data


class _Handler(BaseHTTPRequestHandler):
    server: ReplayPrometheus

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        params = {k: v[-1] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
        endpoint = self.path.split("?", 1)[0].removeprefix("/api/v1/")
        data = self.server.responses.get(request_key(endpoint, params))
        if data is None:
            self._send(
                400,
                {
                    "status": "error",
                    "errorType": "bad_data",
                    "error": "request not recorded for the demo; record again with scripts/record_k8s_demo.py",
                },
            )
            return
        self._send(200, {"status": "success", "data": data})

    def do_GET(self) -> None:
        if self.path.startswith("/api/v1/status/buildinfo"):
            self._send(200, {"status": "success", "data": {"version": "replay"}})
        else:
            self._send(404, {"status": "error", "error": "not found"})


class ReplayPrometheus(ThreadingHTTPServer):
    """Serves recorded responses on a free loopback port."""

    daemon_threads = True

    def __init__(self, responses: dict[str, Any]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.responses = responses
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def start(self) -> ReplayPrometheus:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
