"""Real parts for the Kubernetes tests: a real Prometheus with backfilled history, and the API stand-in.

- ``prometheus``: Debian's ``prometheus`` binary (``.ci/run`` installs it) on a free loopback port with
  an empty scrape configuration, its TSDB backfilled by ``promtool tsdb create-blocks-from openmetrics``
  from the real traces of ``world.py``; started once per session.
- ``apiservers``: one ``FakeApiServer`` per test cluster over HTTPS, with a certificate signed by a CA of
  the test's own (``openssl``), and a generated kubeconfig with one context per cluster.
- ``clusters_file``: a ``CLOUDOPT_K8S_CLUSTERS`` file naming both.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.k8s.executor_world import executor_cluster, executor_home  # noqa: F401 (fixtures "cluster", "home")
from tests.k8s.fake_apiserver import FakeApiServer, Store
from tests.k8s.world import Cluster, bulk_cluster, prod_cluster, write_openmetrics

TOKEN = "test-token-7Hk2Lm9Q"
PROM_TOKEN_ENV = "CLOUDOPT_TEST_PROM_TOKEN"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Prometheus:
    url: str
    process: subprocess.Popen


def _need(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.fail(f"{binary} is not installed: apt-get install -y prometheus (as .ci/run does)")
    return path


def start_prometheus(data_dir: Path, port: int) -> subprocess.Popen:
    config = data_dir.parent / "prometheus.yml"
    config.write_text("global:\n  scrape_interval: 5m\nscrape_configs: []\n")
    log = (data_dir.parent / "prometheus.log").open("w")
    return subprocess.Popen(
        [
            _need("prometheus"),
            f"--config.file={config}",
            f"--storage.tsdb.path={data_dir}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=100y",
            "--query.lookback-delta=5m",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def wait_ready(url: str, process: subprocess.Popen, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"prometheus exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"prometheus at {url} not ready after {timeout_s}s")


@pytest.fixture(scope="session")
def world() -> list[Cluster]:
    return [prod_cluster(), bulk_cluster()]


@pytest.fixture(scope="session")
def prometheus_tsdb(tmp_path_factory: pytest.TempPathFactory, world: list[Cluster]) -> Path:
    """A Prometheus data directory holding the two days of history (built once per session)."""
    root = tmp_path_factory.mktemp("prom-tsdb")
    text = write_openmetrics(world, root / "history.om")
    data = root / "data"
    data.mkdir()
    subprocess.run(
        [_need("promtool"), "tsdb", "create-blocks-from", "openmetrics", str(text), str(data)],
        check=True,
        capture_output=True,
    )
    text.unlink()
    return data


@pytest.fixture(scope="session")
def prometheus(tmp_path_factory: pytest.TempPathFactory, prometheus_tsdb: Path) -> Iterator[Prometheus]:
    """A real Prometheus serving the backfilled history on a free loopback port."""
    root = tmp_path_factory.mktemp("prom-run")
    data = root / "data"
    shutil.copytree(prometheus_tsdb, data)
    port = free_port()
    process = start_prometheus(data, port)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process)
        yield Prometheus(url, process)
    finally:
        process.terminate()
        process.wait(timeout=30)


def make_ca(root: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it: (ca.crt, server.crt, server.key)."""
    ca_key, ca_crt = root / "ca.key", root / "ca.crt"
    key, csr, crt, ext = root / "server.key", root / "server.csr", root / "server.crt", root / "san.ext"
    run = lambda *args: subprocess.run(["openssl", *args], check=True, capture_output=True)  # noqa: E731
    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        str(ca_key),
        "-out",
        str(ca_crt),
        "-days",
        "2",
        "-subj",
        "/CN=test-cluster-ca",
    )
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", "/CN=kube-apiserver")
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca_crt),
        "-CAkey",
        str(ca_key),
        "-CAcreateserial",
        "-out",
        str(crt),
        "-days",
        "2",
        "-extfile",
        str(ext),
    )
    return ca_crt, crt, key


@dataclass
class ApiServers:
    servers: dict[str, FakeApiServer]
    kubeconfig: Path
    ca: Path
    other_ca: Path  # a CA that did not sign the servers' certificates

    def store(self, cluster: str) -> Store:
        return self.servers[cluster].store


def write_kubeconfig(path: Path, servers: dict[str, str], ca: Path, current: str) -> Path:
    import base64

    ca_data = base64.b64encode(ca.read_bytes()).decode()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": n, "cluster": {"server": url, "certificate-authority-data": ca_data}} for n, url in servers.items()
        ],
        "users": [{"name": "collector", "user": {"token": TOKEN}}],
        "contexts": [{"name": f"ctx-{n}", "context": {"cluster": n, "user": "collector"}} for n in servers],
        "current-context": f"ctx-{current}",
    }
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="session")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, Path]:
    """(ca.crt, server.crt, server.key, another CA that signed nothing here)."""
    ca, crt, key = make_ca(tmp_path_factory.mktemp("ca"))
    other_ca, _, _ = make_ca(tmp_path_factory.mktemp("other-ca"))
    return ca, crt, key, other_ca


@pytest.fixture
def apiservers(
    tmp_path: Path, world: list[Cluster], certificates: tuple[Path, Path, Path, Path]
) -> Iterator[ApiServers]:
    """A fresh stand-in API server per cluster (state changes stay in the test) and their kubeconfig."""
    ca, crt, key, other_ca = certificates
    servers: dict[str, FakeApiServer] = {}
    try:
        for cluster in world:
            store = Store()
            for obj in cluster.objects:
                store.add(obj)
            servers[cluster.name] = FakeApiServer(store, TOKEN, str(crt), str(key)).start()
        # the current context is deliberately the bulk cluster: entries must select theirs by `context`
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", {n: s.url for n, s in servers.items()}, ca, "bulk")
        yield ApiServers(servers, kubeconfig, ca, other_ca)
    finally:
        for server in servers.values():
            server.stop()


def clusters_yaml(apis: ApiServers, prometheus_url: str, **overrides: object) -> dict:
    entries = []
    for name, account in (("prod-eks", "123456789012"), ("bulk", "210987654321")):
        entry = {
            "name": name,
            "account_id": account,
            "kubeconfig": str(apis.kubeconfig),
            "context": f"ctx-{name}",
            "prometheus_url": prometheus_url,
            "prometheus_selector": f'cluster="{name}"',
            "scrape_interval": "5m",
        }
        entry.update(overrides)
        entries.append(entry)
    return {"clusters": entries}


@pytest.fixture
def clusters_file(tmp_path: Path, apiservers: ApiServers, prometheus: Prometheus) -> Path:
    path = tmp_path / "clusters.yaml"
    path.write_text(yaml.safe_dump(clusters_yaml(apiservers, prometheus.url), sort_keys=False))
    return path
