"""The `make demo` path with its recorded cluster: recommendations/kubernetes has rows for the demo cluster and
the day's portfolio plan includes them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cloudopt_pipelines.demo.kubernetes import DEMO_ACCOUNT, DEMO_CLUSTER, with_demo_cluster
from cloudopt_pipelines.orchestration import run_range
from cloudopt_pipelines.settings import load_settings
from cloudopt_pipelines.storage.lake import Lake
from tests.k8s.world import DAYS


def test_the_demo_cluster_gets_recommendations_and_the_plan_includes_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLOUDOPT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CLOUDOPT_ENV", "demo")
    monkeypatch.delenv("CLOUDOPT_K8S_CLUSTERS", raising=False)
    (tmp_path / "home").mkdir()

    def run():
        settings = load_settings()
        assert settings.k8s_clusters_file is not None
        return settings, run_range(DAYS[0], DAYS[-1], settings=settings, progress=lambda _: None)

    settings, result = with_demo_cluster(tmp_path / "home", run)
    assert not result.failed, result.failed
    lake = Lake(settings.lake_dir)
    day = DAYS[-1]
    rows = lake.read("recommendations_kubernetes", DEMO_ACCOUNT, day).to_pylist()
    assert rows and all(r["resource_id"].startswith(f"{DEMO_CLUSTER}/") for r in rows)
    assert {r["resource_kind"] for r in rows} >= {"k8s_workload"}
    assert any(r["action"] == "resize_requests" and r["is_best"] for r in rows)
    for r in rows:
        if r["action"] == "resize_requests" and json.loads(r["proposed_config"])["patch"] is not None:
            assert json.loads(r["proposed_config"])["kubectl"].startswith(f"kubectl --context {DEMO_CLUSTER} ")
    plan = {r["resource_id"]: r for r in lake.read("portfolio_plan", None, day).to_pylist()}
    workloads = {r["resource_id"] for r in rows if r["resource_kind"] == "k8s_workload"}
    assert workloads <= set(plan)
    assert any(plan[w]["action"] == "resize_requests" for w in workloads)
