"""The Kubernetes raw assets in the real Dagster pipeline, beside the demo source, and their faults."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dagster as dg
import pytest
import yaml

from cloudopt_pipelines.automation import DAILY_JOB
from cloudopt_pipelines.definitions import build_definitions
from cloudopt_pipelines.orchestration import ensure_instance, register_accounts
from cloudopt_pipelines.partitions import account_day_key
from cloudopt_pipelines.settings import Settings
from cloudopt_pipelines.storage.lake import Lake
from tests.k8s.conftest import ApiServers, Prometheus, clusters_yaml, free_port
from tests.k8s.world import BULK_ACCOUNT, DAYS, PROD_ACCOUNT

DAY = DAYS[0]


K8S_KEYS = [dg.AssetKey(["raw", "k8s_workloads"]), dg.AssetKey(["raw", "k8s_container_usage"])]


def _run(home: Path, clusters: Path, monkeypatch: pytest.MonkeyPatch, accounts: list[str], only_k8s: bool = False):
    monkeypatch.setenv("CLOUDOPT_K8S_CLUSTERS", str(clusters))  # for code that reads the settings itself
    settings = Settings(home=home, env="demo", k8s_clusters_file=clusters)
    defs = build_definitions(settings)
    instance = ensure_instance(settings)
    register_accounts(instance, accounts)
    defs.resolve_job_def("refresh_price_catalog").execute_in_process(instance=instance)
    if only_k8s:
        job = defs.resolve_implicit_global_asset_job_def()
        run = lambda a: job.execute_in_process(  # noqa: E731
            instance=instance, partition_key=account_day_key(a, DAY), raise_on_error=False, asset_selection=K8S_KEYS
        )
    else:
        run = lambda a: defs.resolve_job_def(DAILY_JOB).execute_in_process(  # noqa: E731
            instance=instance, partition_key=account_day_key(a, DAY), raise_on_error=False
        )
    results = {a: run(a) for a in accounts}
    return results, Lake(settings.lake_dir)


def _failure_text(result) -> str:
    out = []
    for event in result.all_events:
        if event.is_step_failure:
            err = event.step_failure_data.error
            while err is not None:
                out.append(err.message)
                err = err.cause
    return "\n".join(out)


def test_daily_job_collects_kubernetes_beside_the_demo_fleet(
    clusters_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    results, lake = _run(tmp_path / "home", clusters_file, monkeypatch, [PROD_ACCOUNT])
    assert results[PROD_ACCOUNT].success, _failure_text(results[PROD_ACCOUNT])
    inventory = lake.read("resources", PROD_ACCOUNT, DAY).to_pylist()
    kinds = {r["resource_kind"] for r in inventory if r["source"] == "kubernetes"}
    assert kinds == {"k8s_node", "k8s_nodepool", "k8s_workload"}
    assert any(r["source"] == "demo" for r in inventory)  # the demo fleet is still there
    workloads = lake.read("k8s_workloads", PROD_ACCOUNT, DAY)
    assert "prod-eks/shop/deployment/web" in workloads.column("resource_id").to_pylist()
    usage = lake.read("k8s_container_usage", PROD_ACCOUNT, DAY)
    assert usage.num_rows > 0
    meta = results[PROD_ACCOUNT].asset_materializations_for_node("raw__k8s_container_usage")[0].metadata
    assert meta["prometheus_queries"].value > 0
    assert meta["prometheus_largest_response_series"].value <= 5000
    assert meta["prometheus_series_returned"].value > 0


@pytest.fixture
def broken_prometheus() -> dict[str, str]:
    """A slow Prometheus (answers after 3 s) and one that returns HTTP 503, on loopback."""

    class Slow(BaseHTTPRequestHandler):
        def log_message(self, *a: object) -> None:
            pass

        def do_POST(self) -> None:
            time.sleep(3)
            self.send_response(200)
            self.end_headers()

    class Failing(Slow):
        def do_POST(self) -> None:
            body = b'{"status":"error","errorType":"unavailable","error":"TSDB not ready"}'
            self.send_response(503)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    servers = {name: ThreadingHTTPServer(("127.0.0.1", 0), h) for name, h in (("slow", Slow), ("error", Failing))}
    for s in servers.values():
        threading.Thread(target=s.serve_forever, daemon=True).start()
    yield {name: f"http://127.0.0.1:{s.server_address[1]}" for name, s in servers.items()}
    for s in servers.values():
        s.shutdown()
        s.server_close()


@pytest.mark.parametrize(
    ("fault", "expected"),
    [("down", "prometheus_url"), ("slow", "prometheus_timeout"), ("error", "HTTP 503")],
)
def test_prometheus_fault_fails_that_account_only_naming_cluster_and_fix_and_writes_nothing(
    fault: str,
    expected: str,
    apiservers: ApiServers,
    prometheus: Prometheus,
    broken_prometheus: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bad_url = f"http://127.0.0.1:{free_port()}" if fault == "down" else broken_prometheus[fault]
    config = clusters_yaml(apiservers, prometheus.url, prometheus_timeout="1s")
    config["clusters"][0]["prometheus_url"] = bad_url  # prod-eks only; bulk keeps the real one
    path = tmp_path / "clusters.yaml"
    path.write_text(yaml.safe_dump(config))
    results, lake = _run(tmp_path / "home", path, monkeypatch, [PROD_ACCOUNT, BULK_ACCOUNT], only_k8s=True)
    assert not results[PROD_ACCOUNT].success
    text = _failure_text(results[PROD_ACCOUNT])
    assert "prod-eks" in text and expected in text and "Fix:" in text
    assert (PROD_ACCOUNT, DAY.isoformat()) not in lake.partitions("k8s_container_usage")
    assert results[BULK_ACCOUNT].success, _failure_text(results[BULK_ACCOUNT])
    assert lake.read("k8s_container_usage", BULK_ACCOUNT, DAY).num_rows > 0


def test_unreachable_cluster_fails_its_account_while_others_proceed(
    clusters_file: Path, apiservers: ApiServers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    apiservers.servers["prod-eks"].stop()
    results, lake = _run(tmp_path / "home", clusters_file, monkeypatch, [PROD_ACCOUNT, BULK_ACCOUNT], only_k8s=True)
    assert not results[PROD_ACCOUNT].success
    text = _failure_text(results[PROD_ACCOUNT])
    assert "prod-eks" in text and "Fix:" in text
    assert (PROD_ACCOUNT, DAY.isoformat()) not in lake.partitions("k8s_workloads")
    assert results[BULK_ACCOUNT].success
