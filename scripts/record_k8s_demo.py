"""Record the demo's Kubernetes cluster: objects and Prometheus responses (cloudopt_pipelines/demo/data/).

Needs Debian's ``prometheus`` package (``promtool`` and ``prometheus``). Backfills a real Prometheus with the
test cluster ``prod-eks`` of ``tests/k8s/world.py`` (real traces, tests/data/README.md), runs the real
collector over the demo days through a recording client, and writes ``k8s_demo_cluster.json.gz``. The
usage covers every day of the demo fleet (``DemoCollector().days``, from ``demo/data/fleet.json``): re-run
this script when the demo's range changes.

    PYTHONPATH=. python scripts/record_k8s_demo.py
"""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import tempfile
from datetime import date
from pathlib import Path

from cloudopt_pipelines.demo.kubernetes import (
    DEMO_ACCOUNT,
    DEMO_CLUSTER_DATA,
    demo_cluster_entry,
    write_demo_kubeconfig,
)
from cloudopt_pipelines.sources.demo import DemoCollector
from cloudopt_pipelines.sources.kubernetes import KubernetesCollector
from cloudopt_pipelines.sources.kubernetes_config import parse_clusters
from cloudopt_pipelines.testing.k8s_apiserver import FakeApiServer, Store
from cloudopt_pipelines.testing.prometheus_replay import RecordingPrometheusClient
from tests.k8s.conftest import free_port, start_prometheus, wait_ready
from tests.k8s.world import FIRST_DAY, Cluster, over_days, prod_cluster, write_openmetrics

#: The namespace the demo labels non-production, so ``cloudopt execute`` on the demo shows its patches.
STAGING_NAMESPACE = "shop"


def demo_cluster(days: list[date]) -> Cluster:
    """``prod-eks`` with usage over every demo day (its long-running containers replay their traces) and
    the ``shop`` namespace labelled ``env=staging`` (the executor never changes production)."""
    if days[0] != FIRST_DAY:
        raise SystemExit(f"the demo starts on {days[0]}, the test cluster's history on {FIRST_DAY}: align them")
    cluster = over_days(prod_cluster(), len(days))
    for obj in cluster.objects:
        if obj["kind"] == "Namespace" and obj["metadata"]["name"] == STAGING_NAMESPACE:
            obj["metadata"]["labels"]["env"] = "staging"
    return cluster


def main() -> None:
    import yaml

    demo_days = DemoCollector().days
    cluster = demo_cluster(demo_days)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        text = write_openmetrics([cluster], root / "history.om")
        data = root / "data"
        data.mkdir()
        subprocess.run(
            [shutil.which("promtool") or "promtool", "tsdb", "create-blocks-from", "openmetrics", str(text), str(data)],
            check=True,
            capture_output=True,
        )
        port = free_port()
        process = start_prometheus(data, port)
        store = Store()
        for obj in cluster.objects:
            store.add(obj)
        api = FakeApiServer(store, "cloudopt-demo-token").start()
        try:
            url = f"http://127.0.0.1:{port}"
            wait_ready(url, process)
            kubeconfig = write_demo_kubeconfig(root / "kubeconfig", api.url)
            clusters = parse_clusters(yaml.safe_dump({"clusters": [demo_cluster_entry(str(kubeconfig), url)]})).clusters
            recorder = RecordingPrometheusClient(url=url)
            collector = KubernetesCollector(clusters, prometheus_factory=lambda _c: recorder)
            for day in demo_days:
                collector.collect_usage(DEMO_ACCOUNT, day)
        finally:
            api.stop()
            process.terminate()
            process.wait(timeout=30)
    recording = {
        "about": "recorded by scripts/record_k8s_demo.py from tests/k8s/world.py (real Azure V1 CPU and Google "
        "cluster-data 2011 memory traces, CC-BY-4.0, see tests/data/README.md)",
        "objects": cluster.objects,
        "prometheus": recorder.recorded,
    }
    with gzip.open(DEMO_CLUSTER_DATA, "wt") as out:
        json.dump(recording, out, separators=(",", ":"))
    print(f"wrote {DEMO_CLUSTER_DATA} ({DEMO_CLUSTER_DATA.stat().st_size} bytes, {len(recorder.recorded)} responses)")


if __name__ == "__main__":
    main()
