"""The stand-in API server speaks the Kubernetes REST API to the official client, honestly."""

from __future__ import annotations

import kubernetes
import pytest
from kubernetes.client.rest import ApiException

from tests.k8s.conftest import TOKEN, ApiServers


def _api(apis: ApiServers, context: str = "ctx-prod-eks") -> kubernetes.client.ApiClient:
    return kubernetes.config.new_client_from_config(config_file=str(apis.kubeconfig), context=context)


def test_discovery_version_and_groups(apiservers: ApiServers) -> None:
    api = _api(apiservers)
    assert kubernetes.client.VersionApi(api).get_code().git_version == "v1.30.4"
    assert kubernetes.client.CoreApi(api).get_api_versions().versions == ["v1"]
    groups = {g.name for g in kubernetes.client.ApisApi(api).get_api_versions().groups}
    assert {"apps", "batch", "autoscaling", "policy", "autoscaling.k8s.io"} <= groups
    resources = kubernetes.client.AppsV1Api(api).get_api_resources().resources
    assert {r.name for r in resources} == {"deployments", "replicasets", "statefulsets", "daemonsets"}


def test_list_cluster_wide_namespaced_and_get_with_real_shapes(apiservers: ApiServers) -> None:
    core = kubernetes.client.CoreV1Api(_api(apiservers))
    pods = core.list_pod_for_all_namespaces()
    assert {p.metadata.namespace for p in pods.items} == {"shop", "batch", "kube-system"}
    shop = core.list_namespaced_pod("shop")
    assert all(p.metadata.namespace == "shop" for p in shop.items)
    db = core.read_namespaced_pod("db-0", "shop")
    assert db.status.container_statuses[0].last_state.terminated.reason == "OOMKilled"
    assert db.spec.containers[0].resources.limits["memory"] == "2Gi"
    node = core.read_node("ip-10-0-3-30.ec2.internal")
    assert node.spec.taints[0].effect == "NoSchedule"
    with pytest.raises(ApiException) as err:
        core.read_namespaced_pod("nope", "shop")
    assert err.value.status == 404


def test_label_selectors(apiservers: ApiServers) -> None:
    core = kubernetes.client.CoreV1Api(_api(apiservers))
    names = lambda sel: sorted(p.metadata.name for p in core.list_pod_for_all_namespaces(label_selector=sel).items)  # noqa: E731
    assert len(names("app=web")) == 3
    assert names("app in (db)") == ["db-0"]
    assert "db-0" not in names("app,app!=db") and len(names("app,app!=db")) == 3
    assert names("!app") == sorted(set(names("")) - set(names("app")))
    assert names("dagster/job=daily_pipeline") == ["dagster-run-3f2a9c1e-5xq2m", "dagster-run-8b7d6e5f-5xq2m"]
    assert len(names("app notin (web,db)")) == len(names("")) - 4


def test_pagination_resource_version_and_expired_continue(apiservers: ApiServers) -> None:
    core = kubernetes.client.CoreV1Api(_api(apiservers, "ctx-bulk"))
    first = core.list_namespaced_pod("apps", limit=30)
    assert len(first.items) == 30 and first.metadata._continue and first.metadata.remaining_item_count == 40
    seen = [p.metadata.name for p in first.items]
    token = first.metadata._continue
    while token:
        page = core.list_namespaced_pod("apps", limit=30, _continue=token)
        assert page.metadata.resource_version == first.metadata.resource_version
        seen += [p.metadata.name for p in page.items]
        token = page.metadata._continue
    assert len(seen) == len(set(seen)) == 70
    # a write between pages makes the old continue token expire, as after etcd compaction
    core.patch_namespaced_pod(seen[0], "apps", {"metadata": {"labels": {"touched": "yes"}}})
    with pytest.raises(ApiException) as err:
        core.list_namespaced_pod("apps", limit=30, _continue=first.metadata._continue)
    assert err.value.status == 410


def test_strategic_merge_and_merge_patch_change_state(apiservers: ApiServers) -> None:
    api = _api(apiservers)
    apps = kubernetes.client.AppsV1Api(api)
    before = apps.read_namespaced_deployment("web", "shop")
    # strategic merge patch (the client's default for a dict body): containers merge by name
    patch = {
        "spec": {"template": {"spec": {"containers": [{"name": "app", "resources": {"requests": {"cpu": "300m"}}}]}}}
    }
    after = apps.patch_namespaced_deployment("web", "shop", patch)
    containers = {c.name: c for c in after.spec.template.spec.containers}
    assert containers["app"].resources.requests == {"cpu": "300m", "memory": "512Mi"}
    assert "istio-proxy" in containers
    assert int(after.metadata.resource_version) > int(before.metadata.resource_version)
    assert after.metadata.generation == before.metadata.generation + 1
    assert (
        apps.read_namespaced_deployment("web", "shop").spec.template.spec.containers[0].resources.requests["cpu"]
        == "300m"
    )
    # merge patch replaces lists whole
    body = {"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "x:2"}]}}}}
    merged = apps.patch_namespaced_deployment("web", "shop", body, _content_type="application/merge-patch+json")
    assert [c.name for c in merged.spec.template.spec.containers] == ["app"]


def test_wrong_token_is_refused(apiservers: ApiServers, tmp_path) -> None:
    bad = tmp_path / "bad-kubeconfig"
    bad.write_text(apiservers.kubeconfig.read_text().replace(TOKEN, "wrong-token"))
    api = kubernetes.config.new_client_from_config(config_file=str(bad), context="ctx-prod-eks")
    with pytest.raises(ApiException) as err:
        kubernetes.client.CoreV1Api(api).list_node()
    assert err.value.status == 401


def test_dry_run_validates_without_persisting_and_preconditions_hold(apiservers: ApiServers) -> None:
    apps = kubernetes.client.AppsV1Api(_api(apiservers))
    before = apps.read_namespaced_deployment("web", "shop")
    strategic = "application/strategic-merge-patch+json"
    patch = {
        "spec": {"template": {"spec": {"containers": [{"name": "app", "resources": {"requests": {"cpu": "300m"}}}]}}}
    }
    would = apps.patch_namespaced_deployment("web", "shop", patch, dry_run="All", _content_type=strategic)
    assert would.spec.template.spec.containers[0].resources.requests["cpu"] == "300m"
    assert would.metadata.resource_version == before.metadata.resource_version
    after = apps.read_namespaced_deployment("web", "shop")
    assert after.spec.template.spec.containers[0].resources.requests["cpu"] == "500m"
    assert after.metadata.resource_version == before.metadata.resource_version
    with pytest.raises(ApiException) as err:
        apps.patch_namespaced_deployment("web", "shop", patch, dry_run="Some", _content_type=strategic)
    assert err.value.status == 400
    # a request above its limit is invalid, in a dry run too
    too_big = {
        "spec": {"template": {"spec": {"containers": [{"name": "app", "resources": {"requests": {"memory": "2Gi"}}}]}}}
    }
    with pytest.raises(ApiException) as err:
        apps.patch_namespaced_deployment("web", "shop", too_big, dry_run="All", _content_type=strategic)
    assert err.value.status == 422 and "must be less than or equal to memory limit of 1Gi" in err.value.body
    # a stale resourceVersion in the body is a failed precondition; the current one passes
    stale = {**patch, "metadata": {"resourceVersion": str(int(before.metadata.resource_version) - 1)}}
    with pytest.raises(ApiException) as err:
        apps.patch_namespaced_deployment("web", "shop", stale, _content_type=strategic)
    assert err.value.status == 409
    fresh = {**patch, "metadata": {"resourceVersion": before.metadata.resource_version}}
    done = apps.patch_namespaced_deployment("web", "shop", fresh, _content_type=strategic)
    assert int(done.metadata.resource_version) > int(before.metadata.resource_version)
    # a patch that changes nothing bumps nothing
    same = apps.patch_namespaced_deployment("web", "shop", patch, _content_type=strategic)
    assert same.metadata.resource_version == done.metadata.resource_version
    assert same.metadata.generation == done.metadata.generation


def test_hpa_bounds_are_validated(apiservers: ApiServers) -> None:
    hpas = kubernetes.client.AutoscalingV2Api(_api(apiservers))
    merge = "application/merge-patch+json"
    for spec, message in (
        ({"minReplicas": 0}, "spec.minReplicas"),
        ({"maxReplicas": 1}, "must be greater than or equal to `minReplicas`"),
    ):
        with pytest.raises(ApiException) as err:
            hpas.patch_namespaced_horizontal_pod_autoscaler("web", "shop", {"spec": spec}, _content_type=merge)
        assert err.value.status == 422 and message in err.value.body
    assert hpas.read_namespaced_horizontal_pod_autoscaler("web", "shop").spec.min_replicas == 2
