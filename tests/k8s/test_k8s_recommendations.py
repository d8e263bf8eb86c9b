"""Kubernetes recommendations end to end: the stand-in API server and a real Prometheus (backfilled from real
traces) collected by the daily job of a real Dagster instance, the feature models, recommendations/kubernetes,
the portfolio plan; then the recommended patch applied through the official client changes the object."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest

from cloudopt_pipelines.assets.plan import PLAN_JOB
from cloudopt_pipelines.automation import DAILY_JOB
from cloudopt_pipelines.definitions import build_definitions
from cloudopt_pipelines.orchestration import ensure_instance, register_accounts
from cloudopt_pipelines.partitions import account_day_key
from cloudopt_pipelines.settings import Settings
from cloudopt_pipelines.storage.lake import Lake
from tests.k8s.conftest import ApiServers
from tests.k8s.world import DAYS, PROD_ACCOUNT

QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
CONFIG = {"kube_contexts": {"prod-eks": "ctx-prod-eks"}}


@pytest.fixture
def pipeline(clusters_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CLOUDOPT_K8S_CLUSTERS", str(clusters_file))
    settings = Settings(home=tmp_path / "home", env="demo", k8s_clusters_file=clusters_file)
    defs = build_definitions(settings)
    instance = ensure_instance(settings)
    register_accounts(instance, [PROD_ACCOUNT])
    defs.resolve_job_def("refresh_price_catalog").execute_in_process(instance=instance)
    run_config = {**QUIET, "ops": {"recommendations__kubernetes": {"config": CONFIG}}}
    for day in DAYS:
        result = defs.resolve_job_def(DAILY_JOB).execute_in_process(
            instance=instance, partition_key=account_day_key(PROD_ACCOUNT, day), run_config=run_config
        )
        assert result.success
    return defs, instance, Lake(settings.lake_dir), result


def _by_resource(rows: list[dict]) -> dict[str, dict[str, dict]]:
    out: dict[str, dict[str, dict]] = {}
    for r in rows:
        out.setdefault(r["resource_id"], {})[r["option_name"]] = r
    return out


def test_recommendations_from_a_real_prometheus_and_api(pipeline, apiservers: ApiServers) -> None:
    defs, instance, lake, result = pipeline
    day = DAYS[-1]
    daily = lake.read("k8s_usage_daily", PROD_ACCOUNT, day).to_pylist()
    assert {r["resource_id"] for r in daily} >= {"prod-eks/shop/deployment/web", "prod-eks/shop/statefulset/db"}
    assert all(0 < r["coverage_pct"] <= 100 for r in daily)
    hist = lake.read("container_usage_histogram", PROD_ACCOUNT, day).to_pylist()
    assert ("prod-eks/shop/deployment/web", "app") in {(r["resource_id"], r["container"]) for r in hist}

    rows = lake.read("recommendations_kubernetes", PROD_ACCOUNT, day).to_pylist()
    options = _by_resource(rows)
    for rid, opts in options.items():
        assert "keep" in opts, rid
        assert sum(o["is_best"] for o in opts.values()) == 1, rid
    workloads = {rid for rid in options if "/hpa/" not in rid and "/nodepool/" not in rid}
    # the workloads of the API are there (Deployment, StatefulSet, CronJob, ...)
    expected = {"prod-eks/shop/deployment/web", "prod-eks/shop/statefulset/db", "prod-eks/batch/cronjob/report"}
    assert expected <= workloads
    # the StatefulSet was OOM-killed: its memory request is never cut
    db = options["prod-eks/shop/statefulset/db"]
    current_db = json.loads(db["keep"]["current_config"])["containers"]["postgres"]["requests"]["memory"]
    for o in db.values():
        new = json.loads(o["proposed_config"])["containers"]["postgres"]["requests"]["memory"]
        assert int(new[:-2]) >= int(current_db[:-2])
    assert "OOM" in db["keep"]["rationale"] or any("OOM" in o["rationale"] for o in db.values())
    # web is scaled by its HPA on CPU: a resize says so and carries the HPA with the requests
    web = options["prod-eks/shop/deployment/web"]
    assert any("HPA web" in o["rationale"] for o in web.values())
    # kube-system is protected
    assert all(o["protected"] for rid, opts in options.items() if "/kube-system/" in rid for o in opts.values())
    meta = result.asset_materializations_for_node("recommendations__kubernetes")[0].metadata
    assert meta["rows"].value == len(rows)
    # node pools are packed from the workloads' recommended requests; each claims only what they do not
    pools = {rid: opts for rid, opts in options.items() if "/nodepool/" in rid}
    assert pools, "no node-pool rows"
    for opts in pools.values():
        for o in opts.values():
            assert o["resource_kind"] == "k8s_nodepool" and o["action"] in ("keep", "resize_nodepool")
            if o["action"] == "resize_nodepool":
                details = json.loads(o["details"])
                net = max(0.0, details["gross_monthly_savings_usd"] - details["workload_rows_savings_usd"])
                assert o["monthly_savings_usd"] == pytest.approx(net, abs=0.02)
                assert details["workload_rows_savings_usd"] > 0  # the workload rows' best options are read

    # the plan includes them
    plan = defs.resolve_job_def(PLAN_JOB).execute_in_process(instance=instance, partition_key=day.isoformat())
    assert plan.success
    planned = {r["resource_id"]: r for r in lake.read("portfolio_plan", None, day).to_pylist()}
    assert workloads <= set(planned)
    assert all(planned[rid]["deployment_type"] == "kubernetes" for rid in workloads)
    # in the plan, a node pool saves only its own remainder, never the workload cuts again
    assert set(pools) <= set(planned)
    for rid, opts in pools.items():
        chosen = opts[planned[rid]["option_name"]]
        assert planned[rid]["monthly_savings_usd"] == pytest.approx(chosen["monthly_savings_usd"], abs=0.02)

    # the plan's current cost counts the nodes once: workloads and HPAs at their requests' share, each pool
    # at what is left of its node cost
    node_cost = sum(opts["keep"]["monthly_cost_current_usd"] for opts in pools.values())
    k8s_plan = [r for r in planned.values() if r["deployment_type"] == "kubernetes"]
    assert sum(r["monthly_cost_current_usd"] for r in k8s_plan) == pytest.approx(node_cost, rel=1e-6)
    # node-scope usage is a declared input of the optimiser's asset
    parents = defs.resolve_asset_graph().get(dg.AssetKey(["recommendations", "kubernetes"])).parent_keys
    assert dg.AssetKey(["raw", "k8s_container_usage"]) in parents

    # a resize's patch, applied through the official client, leaves the object with the proposed requests
    resized = [o for opts in options.values() for o in opts.values() if o["action"] == "resize_requests"]
    patchable = [o for o in resized if json.loads(o["proposed_config"])["patch"] is not None]
    assert patchable, "no patchable resize on the test cluster"
    proposal = json.loads(patchable[0]["proposed_config"])
    assert proposal["kubectl"].startswith(f"kubectl --context ctx-prod-eks -n {proposal['namespace']} patch ")
    import kubernetes

    api_client = kubernetes.config.new_client_from_config(
        config_file=str(apiservers.kubeconfig), context="ctx-prod-eks", persist_config=False
    )
    apps = kubernetes.client.AppsV1Api(api_client)
    patch = {"Deployment": apps.patch_namespaced_deployment, "StatefulSet": apps.patch_namespaced_stateful_set,
             "DaemonSet": apps.patch_namespaced_daemon_set}[proposal["kind"]]  # fmt: skip
    patched = patch(proposal["name"], proposal["namespace"], proposal["patch"])
    containers = {c.name: c.resources for c in patched.spec.template.spec.containers}
    for name, want in proposal["containers"].items():
        assert containers[name].requests == want["requests"]
        if "memory" in want["limits"]:
            assert (containers[name].limits or {}).get("memory") == want["limits"]["memory"]
        if want["limits"].get("cpu", "absent") is None:
            assert "cpu" not in (containers[name].limits or {})


def test_the_optimiser_runs_without_any_cluster(tmp_path: Path) -> None:
    """Without CLOUDOPT_K8S_CLUSTERS the Kubernetes models and recommendations write empty partitions."""
    settings = Settings(home=tmp_path / "home", env="demo")
    defs = build_definitions(settings)
    instance = ensure_instance(settings)
    register_accounts(instance, [PROD_ACCOUNT])
    defs.resolve_job_def("refresh_price_catalog").execute_in_process(instance=instance)
    result = defs.resolve_job_def(DAILY_JOB).execute_in_process(
        instance=instance, partition_key=account_day_key(PROD_ACCOUNT, DAYS[0]), run_config=QUIET
    )
    assert result.success
    lake = Lake(settings.lake_dir)
    assert lake.read("recommendations_kubernetes", PROD_ACCOUNT, DAYS[0]).num_rows == 0
    assert lake.read("k8s_usage_daily", PROD_ACCOUNT, DAYS[0]).num_rows == 0
    assert dg.AssetKey(["recommendations", "kubernetes"]) in defs.resolve_asset_graph().get_all_asset_keys()
