"""Listing through the official client: every page followed, an expired list restarted, VPAs only where served."""

from __future__ import annotations

from pathlib import Path

from cloudopt_pipelines.sources.kubernetes import KubernetesApi, build_api_client, read_cluster
from cloudopt_pipelines.sources.kubernetes_config import parse_clusters
from tests.k8s.conftest import ApiServers
from tests.k8s.fake_apiserver import FakeApiServer, Kind, Store
from tests.k8s.world import BULK_ACCOUNT, PROD_ACCOUNT, prod_cluster


def _cluster(apis: ApiServers, name: str, account: str, kubeconfig: Path | None = None, page_size: int = 30):
    text = f"""clusters:
  - name: {name}
    account_id: "{account}"
    kubeconfig: {kubeconfig or apis.kubeconfig}
    context: ctx-{name}
    prometheus_url: http://127.0.0.1:1
    page_size: {page_size}
"""
    return parse_clusters(text).clusters[0]


def test_every_page_is_followed(apiservers: ApiServers) -> None:
    cluster = _cluster(apiservers, "bulk", BULK_ACCOUNT, page_size=30)
    api = KubernetesApi(cluster, build_api_client(cluster))
    pods = api.list_all("", "pods")
    assert len(pods) == 70 == len({p["metadata"]["name"] for p in pods})
    assert api.stats.calls["core/pods"] == 3  # 30 + 30 + 10
    limits = [p for m, p in apiservers.store("bulk").requests if "/pods" in p]
    assert all("limit=30" in p for p in limits)


def test_a_list_that_expires_midway_is_restarted_whole(apiservers: ApiServers) -> None:
    store = apiservers.store("bulk")
    changed = []

    def change_once(s: Store, kind: Kind) -> None:
        if kind.plural == "pods" and not changed:
            changed.append(True)
            s.delete("Pod", "apps", "svc0-7f8e9d0c-p00q")  # the cluster changes between two pages

    store.after_page = change_once
    cluster = _cluster(apiservers, "bulk", BULK_ACCOUNT, page_size=30)
    api = KubernetesApi(cluster, build_api_client(cluster))
    pods = api.list_all("", "pods")
    assert api.stats.restarted_lists == 1
    assert len(pods) == 69 and "svc0-7f8e9d0c-p00q" not in {p["metadata"]["name"] for p in pods}


def test_vpas_are_listed_only_where_the_crd_is_served(apiservers: ApiServers, certificates, tmp_path: Path) -> None:
    from tests.k8s.conftest import write_kubeconfig

    ca, crt, key, _other = certificates
    store = Store(with_vpa=False)
    for obj in prod_cluster().objects:
        if obj["kind"] != "VerticalPodAutoscaler":
            store.add(obj)
    server = FakeApiServer(store, "test-token-7Hk2Lm9Q", str(crt), str(key)).start()
    try:
        kubeconfig = write_kubeconfig(tmp_path / "kc", {"prod-eks": server.url}, ca, "prod-eks")
        cluster = _cluster(apiservers, "prod-eks", PROD_ACCOUNT, kubeconfig=kubeconfig)
        objects = read_cluster(cluster, KubernetesApi(cluster, build_api_client(cluster)))
        assert objects.has_vpa is False and "verticalpodautoscalers" not in objects.objects
        assert not any("verticalpodautoscalers" in p for _m, p in store.requests)
        assert len(objects.of("horizontalpodautoscalers")) == 1
    finally:
        server.stop()
