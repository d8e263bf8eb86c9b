"""Kubernetes collection against the stand-in API server and a real Prometheus with real traces."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cloudopt_pipelines.sources.kubernetes import KubernetesCollector
from cloudopt_pipelines.sources.kubernetes_config import load_clusters
from cloudopt_pipelines.storage.schemas import RESOURCE_KINDS
from tests.k8s.world import BULK_ACCOUNT, DAYS, MIB, PROD_ACCOUNT, STEP_S, _traces


def collector(clusters_file: Path) -> KubernetesCollector:
    return KubernetesCollector(load_clusters(clusters_file).clusters)


def rows(table) -> list[dict]:
    return table.to_pylist()


def ts(day_index: int, step: int) -> datetime:
    day = DAYS[0]
    return datetime.combine(day, datetime.min.time(), tzinfo=UTC).fromtimestamp(
        datetime.combine(day, datetime.min.time(), tzinfo=UTC).timestamp() + (288 * day_index + step) * STEP_S, tz=UTC
    )


def test_inventory_nodes_workloads_autoscalers_with_readable_ids(clusters_file: Path) -> None:
    resources, workloads, meta = collector(clusters_file).collect_inventory(PROD_ACCOUNT, DAYS[0])
    res = {r["resource_id"]: r for r in rows(resources)}
    assert {r["resource_kind"] for r in res.values()} <= set(RESOURCE_KINDS)
    assert all(r["deployment_type"] == "kubernetes" and r["source"] == "kubernetes" for r in res.values())
    # the entry's context wins over the kubeconfig's current one (which points at the bulk cluster)
    node = res["prod-eks/node/ip-10-0-3-30.ec2.internal"]
    assert (node["parent_id"], node["instance_type"], node["zone"], node["lifecycle"]) == (
        "i-0a1b2c3d4e5f60003",
        "c6g.xlarge",
        "us-east-1c",
        "spot",
    )
    assert res["prod-eks/node/ip-10-0-1-10.ec2.internal"]["lifecycle"] == "on-demand"
    assert {"prod-eks/nodepool/general", "prod-eks/nodepool/spot-arm"} <= set(res)

    by = {(r["resource_id"], r["container"]): r for r in rows(workloads)}
    app = by[("prod-eks/shop/deployment/web", "app")]
    assert (app["cpu_request_cores"], app["cpu_limit_cores"], app["mem_request_bytes"], app["mem_limit_bytes"]) == (
        0.5,
        1.0,
        512 * MIB,
        1024 * MIB,
    )
    assert (app["replicas"], app["ready_replicas"], app["pods"], app["qos_class"]) == (3, 3, 3, "Burstable")
    assert ("prod-eks/shop/deployment/web", "istio-proxy") in by
    db = by[("prod-eks/shop/statefulset/db", "postgres")]
    assert (db["restarts"], db["last_termination_reason"]) == (2, "OOMKilled")
    assert by[("prod-eks/kube-system/daemonset/aws-node", "aws-node")]["pods"] == 3
    assert by[("prod-eks/batch/cronjob/report", "report")]["pods"] == 1  # the live Job's pod, through the Job
    group = by[("prod-eks/batch/jobgroup/daily_pipeline", "dagster")]
    assert group["pods"] == 2 and sorted(json.loads(group["attributes"])["jobs"]) == [
        "dagster-run-3f2a9c1e",
        "dagster-run-8b7d6e5f",
    ]
    assert by[("prod-eks/shop/pod/debug-shell", "shell")]["replicas"] == 1
    hpa = by[("prod-eks/shop/hpa/web", None)]
    assert (hpa["target_id"], hpa["min_replicas"], hpa["max_replicas"], hpa["current_replicas"]) == (
        "prod-eks/shop/deployment/web",
        2,
        10,
        3,
    )
    assert json.loads(hpa["metrics"])[0]["resource"]["target"]["averageUtilization"] == 70
    assert by[("prod-eks/shop/vpa/web", None)]["target_id"] == "prod-eks/shop/deployment/web"
    assert by[("prod-eks/shop/pdb/web", None)]["target_id"] == "prod-eks/shop/deployment/web"
    spot = by[("prod-eks/node/ip-10-0-3-30.ec2.internal", None)]
    assert (spot["capacity_type"], spot["nodepool"], spot["allocatable_cpu_cores"]) == ("spot", "spot-arm", 3.92)
    assert json.loads(spot["taints"]) == [{"key": "spot", "value": "true", "effect": "NoSchedule"}]
    assert {r["name"] for r in rows(workloads) if r["object_kind"] == "namespace"} == {"shop", "batch", "kube-system"}
    assert meta["clusters"]["prod-eks"]["has_vpa"] is True


def test_usage_per_workload_container_from_real_traces(clusters_file: Path) -> None:
    cpu, mem = _traces()
    table, meta = collector(clusters_file).collect_usage(PROD_ACCOUNT, DAYS[0])
    data = rows(table)
    assert {r["container"] for r in data if r["scope"] == "container"}.isdisjoint({"", "POD"})
    get = {(r["resource_id"], r["container"], r["ts"]): r for r in data}
    assert len({r["ts"] for r in data}) == 288 and min(r["ts"] for r in data) == ts(0, 0)
    # step 100: the three current web pods (traces 0,1,2), memory summed and the largest pod kept
    app = get[("prod-eks/shop/deployment/web", "app", ts(0, 100))]
    expected = [round(mem[i][100] / 100 * 1024 * MIB) for i in range(3)]
    assert app["replicas"] == 3
    assert app["mem_bytes"] == pytest.approx(sum(expected)) and app["mem_bytes_max"] == pytest.approx(max(expected))
    # rate over 10 minutes (twice the 5-minute scrape interval) of the replayed CPU
    assert app["cpu_cores"] == pytest.approx(sum((cpu[i][99] + cpu[i][100]) / 200 for i in range(3)), rel=1e-6)
    # step 10: the old ReplicaSet's pod (gone from the API) still counts for the Deployment
    assert get[("prod-eks/shop/deployment/web", "app", ts(0, 10))]["replicas"] == 3
    # the CronJob's Job of that day is gone from the API: kube_job_owner maps it to the CronJob
    report = [r for r in data if r["resource_id"] == "prod-eks/batch/cronjob/report"]
    assert [r["ts"] for r in report] == [ts(0, s) for s in range(12, 18)]
    dagster = [r for r in data if r["resource_id"] == "prod-eks/batch/jobgroup/daily_pipeline"]
    # the live run (12 steps) and a run gone from the API, grouped by kube_pod_labels (10 steps)
    assert len(dagster) == 22 and all(r["replicas"] == 1 for r in dagster)
    oom = [r for r in data if r["resource_id"] == "prod-eks/shop/statefulset/db" and r["oom_kills"]]
    assert [(r["ts"], r["restarts"], r["oom_kills"]) for r in oom] == [(ts(0, 100), 1, 1)]
    throttled = [r["cpu_throttled_ratio"] for r in data if r["resource_id"] == "prod-eks/shop/deployment/web"]
    assert all(r is None or 0 <= r <= 1 for r in throttled)
    nodes = {r["resource_id"] for r in data if r["scope"] == "node"}
    assert nodes == {f"prod-eks/node/ip-10-0-{i}-{i}0.ec2.internal" for i in (1, 2, 3)}
    assert meta["prometheus_queries"] > 0 and meta["prometheus_largest_response_series"] > 0


def test_series_limit_holds_on_a_cluster_larger_than_one_batch(tmp_path: Path, apiservers, prometheus) -> None:
    import yaml

    from tests.k8s.conftest import clusters_yaml

    path = tmp_path / "clusters.yaml"
    path.write_text(yaml.safe_dump(clusters_yaml(apiservers, prometheus.url, max_series=25)))
    table, meta = collector(path).collect_usage(BULK_ACCOUNT, DAYS[1])
    stats = meta["clusters"]["bulk"]
    assert stats["prometheus_largest_response_series"] <= 25
    assert stats["prometheus_batches"] > 3  # 70 container series at most 25 a batch, plus the nodes
    data = [r for r in rows(table) if r["scope"] == "container"]
    per = {}
    for r in data:
        per.setdefault(r["resource_id"], set()).add(r["ts"])
    assert sorted(per) == [f"bulk/apps/deployment/svc{d}" for d in range(7)]
    assert all(len(v) == 288 for v in per.values())
    assert {r["replicas"] for r in data} == {10}


def test_more_nodes_than_max_series_are_split_not_refused(
    tmp_path: Path, apiservers, prometheus, clusters_file
) -> None:
    import yaml

    from tests.k8s.conftest import clusters_yaml

    whole, _ = collector(clusters_file).collect_usage(PROD_ACCOUNT, DAYS[0])
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(clusters_yaml(apiservers, prometheus.url, max_series=2)))
    split, meta = collector(path).collect_usage(PROD_ACCOUNT, DAYS[0])
    stats = meta["clusters"]["prod-eks"]
    # three nodes at most two a batch, the 18 container series in slices of at most 2 (a web pod has 2 containers)
    assert stats["prometheus_largest_response_series"] <= 2
    assert stats["prometheus_queries_by_endpoint"]["series"] == 2
    key = lambda r: (r["resource_id"], r.get("container") or "", r["ts"])  # noqa: E731
    nodes = sorted((r for r in rows(split) if r["scope"] == "node"), key=key)
    assert {r["resource_id"] for r in nodes} == {
        "prod-eks/node/ip-10-0-1-10.ec2.internal",
        "prod-eks/node/ip-10-0-2-20.ec2.internal",
        "prod-eks/node/ip-10-0-3-30.ec2.internal",
    }
    # the same rows as in one batch: splitting changes the queries, never the data (sums of pods read in other
    # batches may differ in the last bits only)
    got, want = sorted(rows(split), key=key), sorted(rows(whole), key=key)
    assert [key(r) for r in got] == [key(r) for r in want]
    for a, b in zip(got, want, strict=True):
        assert a == {k: pytest.approx(v, rel=1e-12) if isinstance(v, float) else v for k, v in b.items()}


def test_a_day_longer_than_max_range_is_split_into_aligned_pieces(tmp_path: Path, apiservers, prometheus) -> None:

    whole, meta_whole = collector(_file(tmp_path / "a.yaml", apiservers, prometheus)).collect_usage(
        PROD_ACCOUNT, DAYS[1]
    )
    split, meta = collector(_file(tmp_path / "b.yaml", apiservers, prometheus, max_range="6h")).collect_usage(
        PROD_ACCOUNT, DAYS[1]
    )
    stats = meta["clusters"]["prod-eks"]
    assert stats["time_chunks"] == 4 and stats["prometheus_longest_range_seconds"] <= 6 * 3600
    assert meta_whole["clusters"]["prod-eks"]["prometheus_longest_range_seconds"] <= 86400
    key = lambda r: (r["resource_id"], str(r["container"]), r["ts"])  # noqa: E731
    assert sorted(rows(split), key=key) == sorted(rows(whole), key=key)
    # the OOM kill of day 2 (step 388 = 100 of the day) is counted once, in either layout
    assert sum(r["oom_kills"] or 0 for r in rows(split)) == 1


def _file(path: Path, apis, prometheus, **overrides) -> Path:
    import yaml

    from tests.k8s.conftest import clusters_yaml

    path.write_text(yaml.safe_dump(clusters_yaml(apis, prometheus.url, **overrides)))
    return path


def test_the_demo_cluster_replays_exactly_what_the_real_prometheus_answers(tmp_path: Path, prometheus) -> None:
    """The recording in demo/data is current: the real Prometheus gives the same rows for the same queries."""
    import yaml

    from cloudopt_pipelines.demo.kubernetes import DEMO_ACCOUNT, demo_cluster_entry, serving_demo_cluster

    key = lambda r: (r["resource_id"], str(r["container"]), r["ts"])  # noqa: E731
    with serving_demo_cluster(tmp_path / "demo") as clusters:
        entry = yaml.safe_load(clusters.read_text())["clusters"][0]
        live = tmp_path / "live.yaml"
        live.write_text(yaml.safe_dump({"clusters": [demo_cluster_entry(entry["kubeconfig"], prometheus.url)]}))
        for day in DAYS:
            replayed, _ = collector(clusters).collect_usage(DEMO_ACCOUNT, day)
            real, _ = collector(live).collect_usage(DEMO_ACCOUNT, day)
            assert replayed.num_rows > 0
            assert sorted(rows(replayed), key=key) == sorted(rows(real), key=key)
        _res, workloads, _meta = collector(clusters).collect_inventory(DEMO_ACCOUNT, DAYS[0])
    assert "prod-eks/shop/deployment/web" in workloads.column("resource_id").to_pylist()


def test_cloudopt_demo_serves_its_cluster_for_the_run_and_restores_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from cloudopt_pipelines.demo.kubernetes import DEMO_ACCOUNT, with_demo_cluster

    monkeypatch.delenv("CLOUDOPT_K8S_CLUSTERS", raising=False)

    def run() -> int:
        clusters = load_clusters(os.environ["CLOUDOPT_K8S_CLUSTERS"]).clusters
        usage, _ = KubernetesCollector(clusters).collect_usage(DEMO_ACCOUNT, DAYS[1])
        return usage.num_rows

    assert with_demo_cluster(tmp_path, run) > 0
    assert "CLOUDOPT_K8S_CLUSTERS" not in os.environ
