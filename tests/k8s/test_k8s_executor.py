"""The executor's Kubernetes target end to end: plan rows -> approval -> dry run (server-side dryRun=All) ->
apply -> verify -> rollback, through the official client against the API stand-in over real HTTPS."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cloudopt_pipelines.executor import ExecutorPolicy, rollback
from cloudopt_pipelines.testing.k8s_apiserver import ApiError
from tests.executor.conftest import DAY, NOW, Home
from tests.k8s.executor_world import (
    ExecutorCluster,
    hpa_row,
    nodepool_row,
    resources,
    workload_row,
)


def run(home: Home, cluster: ExecutorCluster, mode: str, **policy: Any) -> Any:
    from cloudopt_pipelines.executor import execute_day

    policy.setdefault("max_calls_per_second", 0)
    result, _ = execute_day(
        home.lake,
        home.paths,
        DAY,
        mode,
        [cluster.target()],
        ExecutorPolicy(**policy),
        now=lambda: NOW,
        checks=home.checks,
    )
    return result


CART_CURRENT = {
    "app": resources({"cpu": "500m", "memory": "1Gi"}, {"memory": "1Gi"}),
    "istio-proxy": resources({"cpu": "100m", "memory": "128Mi"}, {"cpu": "200m", "memory": "256Mi"}),
}
CART_HPA_CURRENT = {"name": "cart", "min_replicas": 2, "max_replicas": 10, "target": {"cpu": 70}}


def cart_row(**overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "proposed": {"app": resources({"cpu": "250m", "memory": "768Mi"}, {"memory": "768Mi"})},
        "current": CART_CURRENT,
        "hpa_proposed": {"name": "cart", "min_replicas": 2, "max_replicas": 12, "target": {"cpu": 60}},
        "hpa_current": CART_HPA_CURRENT,
    }
    values.update(overrides)
    return workload_row("shop", "cart", **values)


def test_dry_run_validates_on_the_server_and_changes_nothing(home: Home, cluster: ExecutorCluster) -> None:
    home.write_plan([cart_row()])
    home.approve_all()
    before = (cluster.obj("deployments", "shop", "cart"), cluster.obj("horizontalpodautoscalers", "shop", "cart"))
    version = cluster.store.resource_version
    decision = run(home, cluster, "dry_run").decisions[0]
    assert decision.outcome == "would_apply", decision.reason
    assert "accepted by the server's dry run" in decision.reason
    # exactly the two patches an apply sends: the workload's strategic merge patch, then the HPA's merge patch
    calls = decision.api_calls
    assert [(c["params"]["kind"], c["params"]["patch_type"]) for c in calls] == [
        ("Deployment", "strategic"),
        ("HorizontalPodAutoscaler", "merge"),
    ]
    assert calls[0]["params"]["body"]["metadata"]["resourceVersion"] == before[0]["metadata"]["resourceVersion"]
    assert (
        "kubectl --context ctx-dev-eks -n shop patch deployment cart --type strategic" in calls[0]["params"]["kubectl"]
    )
    # the server ran them with dryRun=All and stored nothing
    assert cluster.patches() and all("dryRun=All" in p for p in cluster.patches())
    assert (
        cluster.obj("deployments", "shop", "cart"),
        cluster.obj("horizontalpodautoscalers", "shop", "cart"),
    ) == before
    assert cluster.store.resource_version == version
    # what the server said it would store is recorded
    assert decision.state_after["containers"]["app"] == {
        "requests": {"cpu": "250m", "memory": "768Mi"},
        "limits": {"memory": "768Mi"},
    }
    assert decision.state_after["hpa"]["max_replicas"] == 12


def test_apply_verify_idempotent_and_rollback(home: Home, cluster: ExecutorCluster) -> None:
    home.write_plan([cart_row()])
    home.approve_all()
    planned = run(home, cluster, "dry_run").decisions[0].api_calls
    applied = run(home, cluster, "apply").decisions[0]
    assert applied.outcome == "applied", (applied.reason, applied.error)
    assert "verified" in applied.reason
    # the apply sent what the dry run showed (each validated with dryRun=All first)
    assert [(c["params"]["kind"], c["params"]["body"]) for c in applied.api_calls] == [
        (c["params"]["kind"], c["params"]["body"]) for c in planned
    ]
    assert all(c["status"] == "ok" for c in applied.api_calls)
    live = cluster.containers("cart")
    assert live["app"] == {"requests": {"cpu": "250m", "memory": "768Mi"}, "limits": {"memory": "768Mi"}}
    assert live["istio-proxy"] == CART_CURRENT["istio-proxy"]  # merged by name, the sidecar untouched
    hpa = cluster.obj("horizontalpodautoscalers", "shop", "cart")["spec"]
    assert (hpa["maxReplicas"], hpa["metrics"][0]["resource"]["target"]["averageUtilization"]) == (12, 60)
    # a second apply reads the live state and sends nothing
    sent = len(cluster.patches())
    again = run(home, cluster, "apply").decisions[0]
    assert again.outcome == "skipped" and "already applied" in again.reason
    assert len(cluster.patches()) == sent
    # rollback: dry run shows the restoring patches, apply restores the recorded previous spec
    targets = [cluster.target()]
    dry = rollback(home.lake, home.paths, applied.action_id, "dry_run", "bob", targets)
    assert dry.outcome == "would_apply" and [c["params"]["kind"] for c in dry.api_calls] == [
        "Deployment",
        "HorizontalPodAutoscaler",
    ]
    assert len(cluster.patches()) == sent
    undone = rollback(home.lake, home.paths, applied.action_id, "apply", "bob", targets)
    assert undone.outcome == "rolled_back"
    assert cluster.containers("cart") == CART_CURRENT
    hpa = cluster.obj("horizontalpodautoscalers", "shop", "cart")["spec"]
    assert (hpa["maxReplicas"], hpa["metrics"][0]["resource"]["target"]["averageUtilization"]) == (10, 70)


def test_a_limit_removed_by_the_plan_comes_back_on_rollback(home: Home, cluster: ExecutorCluster) -> None:
    proposed = {"istio-proxy": {"requests": {"cpu": "50m"}, "limits": {"cpu": None}}}
    home.write_plan([cart_row(proposed=proposed, hpa_proposed=None, hpa_current=None)])
    home.approve_all()
    applied = run(home, cluster, "apply").decisions[0]
    assert applied.outcome == "applied", (applied.reason, applied.error)
    assert cluster.containers("cart")["istio-proxy"] == {
        "requests": {"cpu": "50m", "memory": "128Mi"},
        "limits": {"memory": "256Mi"},
    }
    rollback(home.lake, home.paths, applied.action_id, "apply", "bob", [cluster.target()])
    assert cluster.containers("cart") == CART_CURRENT


@pytest.mark.parametrize(
    ("namespace", "name", "policy", "why"),
    [
        ("kube-system", "coredns", {}, "namespace kube-system is in protected_namespaces"),
        ("tools", "runner", {"protected_namespaces": ("tools",)}, "namespace tools is in protected_namespaces"),
        ("shop", "legacy", {}, "cloudopt.io/protect=true"),
        ("payments", "ledger", {}, "production (live tag environment=prod)"),
    ],
)
def test_protected_and_production_workloads_are_never_touched(
    home: Home, cluster: ExecutorCluster, namespace: str, name: str, policy: dict, why: str
) -> None:
    live = cluster.obj("deployments", namespace, name)
    container = live["spec"]["template"]["spec"]["containers"][0]
    current = {
        container["name"]: {"requests": container["resources"]["requests"], "limits": container["resources"]["limits"]}
    }
    proposed = {container["name"]: {"requests": {"cpu": "50m"}}}
    home.write_plan([workload_row(namespace, name, proposed, current)])
    home.approve_all()
    for mode in ("dry_run", "apply"):
        decision = run(home, cluster, mode, **policy).decisions[0]
        assert decision.outcome == "skipped" and why in decision.reason, decision.reason
    assert cluster.patches() == []
    assert cluster.obj("deployments", namespace, name) == live


def test_a_protect_label_on_the_namespace_protects_its_workloads(home: Home, cluster: ExecutorCluster) -> None:
    ns = cluster.obj("namespaces", "", "shop")
    ns["metadata"]["labels"]["cloudopt.io/protect"] = "yes"
    cluster.store.add(ns)
    home.write_plan([cart_row()])
    home.approve_all()
    decision = run(home, cluster, "apply").decisions[0]
    assert decision.outcome == "skipped" and "cloudopt.io/protect=yes" in decision.reason
    assert cluster.patches() == []


def test_a_drifted_live_spec_is_left_as_it_is(home: Home, cluster: ExecutorCluster) -> None:
    home.write_plan([cart_row()])
    home.approve_all()
    # someone raises the app's CPU request by hand after the plan
    kind = next(k for k in cluster.store.kinds if k.plural == "deployments")
    by_hand = {
        "spec": {"template": {"spec": {"containers": [{"name": "app", "resources": {"requests": {"cpu": "2"}}}]}}}
    }
    cluster.store.patch(kind, "shop", "cart", "application/strategic-merge-patch+json", by_hand)
    changed = cluster.obj("deployments", "shop", "cart")
    for mode in ("dry_run", "apply"):
        decision = run(home, cluster, mode).decisions[0]
        assert decision.outcome == "skipped", decision.reason
        assert "changed since the plan (app requests.cpu was 500m in the plan, is 2 now" in decision.reason
    assert cluster.patches() == []
    assert cluster.obj("deployments", "shop", "cart") == changed


def test_quantities_compare_by_value_not_by_text(home: Home, cluster: ExecutorCluster) -> None:
    current = {**CART_CURRENT, "app": resources({"cpu": "0.5", "memory": "1024Mi"}, {"memory": "1Gi"})}
    home.write_plan([cart_row(current=current)])
    home.approve_all()
    assert run(home, cluster, "dry_run").decisions[0].outcome == "would_apply"


def test_a_patch_the_server_refuses_fails_the_dry_run_and_changes_nothing(home: Home, cluster: ExecutorCluster) -> None:
    proposed = {"app": resources({"cpu": "250m", "memory": "2Gi"})}  # request above the 1Gi memory limit
    home.write_plan([cart_row(proposed=proposed, hpa_proposed=None, hpa_current=None)])
    home.approve_all()
    decision = run(home, cluster, "dry_run").decisions[0]
    assert decision.outcome == "failed"
    assert "HTTP 422" in decision.error and "must be less than or equal to memory limit of 1Gi" in decision.error
    assert cluster.containers("cart") == CART_CURRENT


def test_a_failed_hpa_patch_rolls_the_requests_back(home: Home, cluster: ExecutorCluster) -> None:
    home.write_plan([cart_row()])
    home.approve_all()
    cluster.store.patch_faults[("horizontalpodautoscalers", "shop", "cart")] = ApiError(
        500, "InternalError", "etcdserver: request timed out"
    )
    decision = run(home, cluster, "apply").decisions[0]
    assert decision.outcome == "rolled_back", (decision.reason, decision.error)
    assert "etcdserver: request timed out" in decision.error
    assert cluster.containers("cart") == CART_CURRENT
    assert cluster.obj("horizontalpodautoscalers", "shop", "cart")["spec"]["maxReplicas"] == 10


def test_a_plan_patch_that_changes_more_than_resources_is_refused(home: Home, cluster: ExecutorCluster) -> None:
    row = cart_row(hpa_proposed=None, hpa_current=None)
    config = json.loads(row["proposed_config"])
    config["patch"]["spec"]["replicas"] = 0
    row["proposed_config"] = json.dumps(config)
    home.write_plan([row])
    home.approve_all()
    decision = run(home, cluster, "apply").decisions[0]
    assert decision.outcome == "skipped" and "refused" in decision.reason and "patch may only hold" in decision.reason
    assert cluster.patches() == []


def test_tune_hpa_and_node_pool_advice(home: Home, cluster: ExecutorCluster) -> None:
    tune = hpa_row("shop", "cart", {"min_replicas": 3, "max_replicas": 8, "target": {"cpu": 65}}, CART_HPA_CURRENT)
    home.write_plan([tune, nodepool_row()])
    home.approve_all()
    decisions = {d.resource_kind: d for d in run(home, cluster, "apply").decisions}
    assert decisions["k8s_hpa"].outcome == "applied", decisions["k8s_hpa"].reason
    spec = cluster.obj("horizontalpodautoscalers", "shop", "cart")["spec"]
    assert (spec["minReplicas"], spec["maxReplicas"]) == (3, 8)
    pool = decisions["k8s_nodepool"]
    assert pool.outcome == "skipped" and pool.reason.startswith("not applicable: advisory")
    assert "3 x m6i.large" in pool.reason and pool.api_calls == []
    undone = rollback(home.lake, home.paths, decisions["k8s_hpa"].action_id, "apply", "bob", [cluster.target()])
    assert undone.outcome == "rolled_back"
    assert cluster.obj("horizontalpodautoscalers", "shop", "cart")["spec"]["minReplicas"] == 2


@pytest.mark.parametrize("action", ["rightsize_on_demand", "rightsize_spot_mix", "consolidate"])
def test_every_node_pool_action_is_advice(home: Home, cluster: ExecutorCluster, action: str) -> None:
    row = nodepool_row()
    row["action"] = row["option_name"] = action
    home.write_plan([row])
    home.approve_all()
    decision = run(home, cluster, "apply").decisions[0]
    assert decision.outcome == "skipped" and decision.reason.startswith("not applicable: advisory"), decision.reason
    assert "3 x m6i.large" in decision.reason and decision.api_calls == []
    assert cluster.patches() == []


def test_a_row_of_another_account_than_the_cluster_is_refused(home: Home, cluster: ExecutorCluster) -> None:
    row = cart_row()
    row["account_id"] = "210987654321"
    home.write_plan([row])
    home.approve_all()
    decision = run(home, cluster, "dry_run").decisions[0]
    assert decision.outcome == "failed" and "bills to account 123456789012" in decision.error
    assert cluster.patches() == []


def test_a_rollback_after_a_hand_change_is_refused(home: Home, cluster: ExecutorCluster) -> None:
    from cloudopt_pipelines.executor.actions import RollbackRefused

    home.write_plan([cart_row(hpa_proposed=None, hpa_current=None)])
    home.approve_all()
    applied = run(home, cluster, "apply").decisions[0]
    kind = next(k for k in cluster.store.kinds if k.plural == "deployments")
    by_hand = {
        "spec": {"template": {"spec": {"containers": [{"name": "app", "resources": {"requests": {"cpu": "3"}}}]}}}
    }
    cluster.store.patch(kind, "shop", "cart", "application/strategic-merge-patch+json", by_hand)
    with pytest.raises(RollbackRefused, match="changed since the apply"):
        rollback(home.lake, home.paths, applied.action_id, "apply", "bob", [cluster.target()])
    assert cluster.containers("cart")["app"]["requests"]["cpu"] == "3"


def _patch_workload_as_the_plan_says(cluster: ExecutorCluster) -> None:
    kind = next(k for k in cluster.store.kinds if k.plural == "deployments")
    body = {
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "app",
                            "resources": {
                                "requests": {"cpu": "250m", "memory": "768Mi"},
                                "limits": {"memory": "768Mi"},
                            },
                        }
                    ]
                }
            }
        }
    }
    cluster.store.patch(kind, "shop", "cart", "application/strategic-merge-patch+json", body)


def test_an_apply_cut_off_after_the_workload_patch_is_finished_not_redone(home: Home, cluster: ExecutorCluster) -> None:
    home.write_plan([cart_row()])
    home.approve_all()
    dry = run(home, cluster, "dry_run").decisions[0]
    # the process died after its intent and the workload patch, before the HPA patch
    home.paths.audit().intent(
        {
            "date": DAY.isoformat(),
            "plan_id": dry.plan_id,
            "action_id": dry.action_id,
            "run_id": "run-that-died",
            "account_id": dry.account_id,
            "region": dry.region,
            "resource_id": dry.resource_id,
            "resource_kind": dry.resource_kind,
            "action": dry.action,
            "option_name": dry.option_name,
            "mode": "apply",
            "state_before": dry.state_before,
            "api_calls": dry.api_calls,
        },
        at=NOW,
    )
    _patch_workload_as_the_plan_says(cluster)
    decision = run(home, cluster, "apply").decisions[0]
    assert decision.outcome == "applied", (decision.reason, decision.error)
    assert [c["params"]["kind"] for c in decision.api_calls] == ["HorizontalPodAutoscaler"]
    assert decision.state_before["containers"] == CART_CURRENT
    assert cluster.obj("horizontalpodautoscalers", "shop", "cart")["spec"]["maxReplicas"] == 12


def test_a_workload_half_changed_by_someone_else_is_left_as_it_is(home: Home, cluster: ExecutorCluster) -> None:
    home.write_plan([cart_row()])
    home.approve_all()
    _patch_workload_as_the_plan_says(cluster)  # no intent of ours: not an interrupted apply
    decision = run(home, cluster, "apply").decisions[0]
    assert decision.outcome == "skipped" and "changed since the plan" in decision.reason
    assert cluster.obj("horizontalpodautoscalers", "shop", "cart")["spec"]["maxReplicas"] == 10
