"""The demo's Kubernetes cluster: recorded objects and Prometheus responses, served through the real collectors.

``make demo`` has no cluster and no Prometheus, so ``serving_demo_cluster`` starts, on loopback, the
Kubernetes API stand-in (``cloudopt_pipelines/testing/k8s_apiserver.py``) holding the recorded objects and a
Prometheus that replays the recorded responses (``cloudopt_pipelines/testing/prometheus_replay.py``), writes a
kubeconfig and a clusters file for them, and yields the file for ``CLOUDOPT_K8S_CLUSTERS``. The official
client, the ``PrometheusClient`` and the collector then run exactly as against a real cluster.

The recording (``data/k8s_demo_cluster.json.gz``) comes from ``scripts/record_k8s_demo.py``: the test
cluster ``prod-eks`` of ``tests/k8s/world.py`` (real Azure V1 CPU and Google cluster-data 2011 memory
traces, see tests/data/README.md) queried from a real Prometheus backfilled with ``promtool``.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import yaml

from cloudopt_pipelines.testing.k8s_apiserver import FakeApiServer, Store
from cloudopt_pipelines.testing.prometheus_replay import ReplayPrometheus

DEMO_CLUSTER_DATA = Path(__file__).resolve().parent / "data" / "k8s_demo_cluster.json.gz"
DEMO_CLUSTER = "prod-eks"
DEMO_ACCOUNT = "123456789012"
DEMO_TOKEN = "cloudopt-demo-token"  # the stand-in's own token; not a credential of anything real
CLUSTERS_ENV = "CLOUDOPT_K8S_CLUSTERS"
T = TypeVar("T")


def demo_cluster_entry(kubeconfig: str, prometheus_url: str) -> dict[str, Any]:
    """The clusters-file entry of the demo cluster; recording and replay use the same one (queries must match)."""
    return {
        "name": DEMO_CLUSTER,
        "account_id": DEMO_ACCOUNT,
        "kubeconfig": kubeconfig,
        "context": f"demo-{DEMO_CLUSTER}",
        "prometheus_url": prometheus_url,
        "prometheus_selector": f'cluster="{DEMO_CLUSTER}"',
        "scrape_interval": "5m",
    }


def write_demo_kubeconfig(path: Path, server_url: str) -> Path:
    """A kubeconfig for the loopback stand-in (plain HTTP, bearer token)."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": DEMO_CLUSTER, "cluster": {"server": server_url}}],
        "users": [{"name": "demo", "user": {"token": DEMO_TOKEN}}],
        "contexts": [{"name": f"demo-{DEMO_CLUSTER}", "context": {"cluster": DEMO_CLUSTER, "user": "demo"}}],
        "current-context": f"demo-{DEMO_CLUSTER}",
    }
    path.write_text(yaml.safe_dump(config))
    return path


@contextmanager
def serving_demo_cluster(workdir: Path) -> Iterator[Path]:
    """Serve the recorded demo cluster on loopback while the block runs; yields its clusters file."""
    with gzip.open(DEMO_CLUSTER_DATA, "rt") as handle:
        recording = json.load(handle)
    store = Store()
    for obj in recording["objects"]:
        store.add(obj)
    api = FakeApiServer(store, DEMO_TOKEN).start()
    prometheus = ReplayPrometheus(recording["prometheus"]).start()
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        kubeconfig = write_demo_kubeconfig(workdir / "kubeconfig", api.url)
        clusters = workdir / "clusters.yaml"
        entry = demo_cluster_entry(str(kubeconfig), prometheus.url)
        clusters.write_text(yaml.safe_dump({"clusters": [entry]}, sort_keys=False))
        yield clusters
    finally:
        api.stop()
        prometheus.stop()


def with_demo_cluster(home: Path, run: Callable[[], T]) -> T:
    """``run()`` with the demo cluster served and ``CLOUDOPT_K8S_CLUSTERS`` pointing at it (restored after)."""
    with serving_demo_cluster(home / "k8s-demo") as clusters_file:
        previous = os.environ.get(CLUSTERS_ENV)
        os.environ[CLUSTERS_ENV] = str(clusters_file)
        try:
            return run()
        finally:
            if previous is None:
                os.environ.pop(CLUSTERS_ENV, None)
            else:
                os.environ[CLUSTERS_ENV] = previous
