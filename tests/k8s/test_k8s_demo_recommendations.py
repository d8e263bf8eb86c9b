"""The `make demo` path with its recorded cluster: recommendations/kubernetes has rows for the demo cluster on
the demo's last day (its usage covers every demo day), the day's portfolio plan includes them, and
`cloudopt execute` on the demo prints the patches it would send to the staging namespace."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cloudopt_pipelines.demo.kubernetes import DEMO_ACCOUNT, DEMO_CLUSTER, with_demo_cluster
from cloudopt_pipelines.executor import ExecutorPaths
from cloudopt_pipelines.executor.approvals import new_approval
from cloudopt_pipelines.executor.model import actions_from_plan
from cloudopt_pipelines.executor_cli import execute_command
from cloudopt_pipelines.orchestration import run_range
from cloudopt_pipelines.settings import load_settings
from cloudopt_pipelines.sources.demo import DemoCollector
from cloudopt_pipelines.storage.lake import Lake


def test_the_demo_cluster_gets_recommendations_and_the_plan_includes_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLOUDOPT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CLOUDOPT_ENV", "demo")
    monkeypatch.delenv("CLOUDOPT_K8S_CLUSTERS", raising=False)
    (tmp_path / "home").mkdir()
    days = DemoCollector().days
    day = days[-1]

    def run():
        settings = load_settings()
        assert settings.k8s_clusters_file is not None
        return settings, run_range(days[-2], day, settings=settings, progress=lambda _: None)

    settings, result = with_demo_cluster(tmp_path / "home", run)
    assert not result.failed, result.failed
    lake = Lake(settings.lake_dir)
    rows = lake.read("recommendations_kubernetes", DEMO_ACCOUNT, day).to_pylist()
    assert rows and all(r["resource_id"].startswith(f"{DEMO_CLUSTER}/") for r in rows)
    assert {r["resource_kind"] for r in rows} >= {"k8s_workload", "k8s_nodepool"}
    # the recorded usage reaches the last demo day: the long-running workloads are not kept as stale
    web = [r for r in rows if r["resource_id"] == f"{DEMO_CLUSTER}/shop/deployment/web"]
    assert web and not any("before the end of the day" in r["rationale"] for r in web)
    assert any(r["action"] == "resize_requests" and r["is_best"] for r in rows)
    for r in rows:
        if r["action"] == "resize_requests" and json.loads(r["proposed_config"])["patch"] is not None:
            assert json.loads(r["proposed_config"])["kubectl"].startswith(f"kubectl --context {DEMO_CLUSTER} ")
    plan = {r["resource_id"]: r for r in lake.read("portfolio_plan", None, day).to_pylist()}
    workloads = {r["resource_id"] for r in rows if r["resource_kind"] == "k8s_workload"}
    assert workloads <= set(plan)
    resized = [w for w in workloads if plan[w]["action"] == "resize_requests"]
    assert any(w.startswith(f"{DEMO_CLUSTER}/shop/") for w in resized), resized

    # approve the plan's Kubernetes actions; the dry run reads the served cluster and prints the patches
    plan_id, actions = actions_from_plan(lake.read("portfolio_plan", day=day), day)
    ids = tuple(a.action_id for a in actions if a.resource_kind.startswith("k8s_"))
    assert ids
    ExecutorPaths(settings.home).approvals().append(new_approval(plan_id, day, actions, "alice", ids))
    lines: list[str] = []
    code = with_demo_cluster(
        settings.home,
        lambda: execute_command(day, "dry_run", settings=load_settings(), echo=lambda t="", err=False: lines.append(t)),
    )
    text = "\n".join(str(t) for t in lines)
    assert code == 0, text
    assert "would_apply" in text and "-n shop patch " in text and "--type strategic -p" in text
    # batch is unlabelled: production, so nothing is patched there
    assert "-n batch patch " not in text
