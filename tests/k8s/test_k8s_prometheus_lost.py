"""A real Prometheus killed in the middle of the Kubernetes collection: the account's run fails naming the
cluster and the fix, nothing of its usage partition is written, and once Prometheus is back the retry
succeeds. (Prometheus down before the run: ``test_k8s_assets.py``.)

A Prometheus of the test's own serves a copy of the backfilled history; a small forwarding proxy in front
of it counts the queries and SIGKILLs the Prometheus process when the collection's third query arrives,
so the kill lands mid-collection whatever the machine's speed.
"""

from __future__ import annotations

import http.client
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from tests.k8s.conftest import ApiServers, Prometheus, clusters_yaml, free_port, start_prometheus, wait_ready
from tests.k8s.test_k8s_assets import DAY, _failure_text, _run
from tests.k8s.world import PROD_ACCOUNT

KILL_AT = 3


class KillingProxy:
    """Forwards to Prometheus; at request ``kill_at`` SIGKILLs it first (the request then finds it gone)."""

    def __init__(self, port: int, process: subprocess.Popen) -> None:
        self.port, self.process = port, process
        self.kill_at: int | None = KILL_AT
        self.seen = 0
        self.killed = False
        self.lock = threading.Lock()

    def serve(self) -> tuple[ThreadingHTTPServer, str]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                return None

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with proxy.lock:
                    proxy.seen += 1
                    if proxy.kill_at is not None and proxy.seen >= proxy.kill_at and not proxy.killed:
                        proxy.process.send_signal(signal.SIGKILL)
                        proxy.process.wait()
                        proxy.killed = True
                try:
                    upstream = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                    upstream.request(self.command, self.path, body=body or None, headers=headers)
                    answer = upstream.getresponse()
                    payload = answer.read()
                except OSError:
                    self.close_connection = True
                    self.connection.close()  # as the dead server's socket would: no answer at all
                    return
                self.send_response(answer.status)
                for key, value in answer.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _forward

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture
def own_prometheus(tmp_path: Path, prometheus_tsdb: Path) -> Iterator[tuple[Path, int, list[subprocess.Popen]]]:
    data = tmp_path / "prom" / "data"
    shutil.copytree(prometheus_tsdb, data)
    port = free_port()
    processes = [start_prometheus(data, port)]
    wait_ready(f"http://127.0.0.1:{port}", processes[0])
    try:
        yield data, port, processes
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
                process.wait(timeout=30)


def test_prometheus_killed_mid_collection_fails_the_account_cleanly_and_the_retry_succeeds(
    apiservers: ApiServers,
    prometheus: Prometheus,
    own_prometheus: tuple[Path, int, list[subprocess.Popen]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data, port, processes = own_prometheus
    proxy = KillingProxy(port, processes[0])
    server, url = proxy.serve()
    try:
        config = clusters_yaml(apiservers, prometheus.url, prometheus_timeout="5s")
        config["clusters"][0]["prometheus_url"] = url  # prod-eks through the proxy
        clusters = tmp_path / "clusters.yaml"
        clusters.write_text(yaml.safe_dump(config))
        home = tmp_path / "home"

        results, lake = _run(home, clusters, monkeypatch, [PROD_ACCOUNT], only_k8s=True)
        assert proxy.killed and proxy.seen > KILL_AT - 1
        assert not results[PROD_ACCOUNT].success
        text = _failure_text(results[PROD_ACCOUNT])
        assert "prod-eks" in text and "Fix:" in text
        assert (PROD_ACCOUNT, DAY.isoformat()) not in lake.partitions("k8s_container_usage")
        staging = lake.root / ".staging"
        assert not staging.exists() or not list(staging.iterdir())

        processes.append(start_prometheus(data, port))  # Prometheus back, on the same address
        wait_ready(f"http://127.0.0.1:{port}", processes[-1])
        proxy.kill_at = None
        results, lake = _run(home, clusters, monkeypatch, [PROD_ACCOUNT], only_k8s=True)
        assert results[PROD_ACCOUNT].success, _failure_text(results[PROD_ACCOUNT])
        assert lake.read("k8s_container_usage", PROD_ACCOUNT, DAY).num_rows > 0
    finally:
        server.shutdown()
        server.server_close()
