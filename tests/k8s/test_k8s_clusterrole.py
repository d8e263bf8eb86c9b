"""docs/kubernetes.md's ClusterRole is exactly what the collector calls, and the query load is as documented."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from cloudopt_pipelines.sources.kubernetes import API_CALLS, NON_RESOURCE_URLS, KubernetesCollector
from cloudopt_pipelines.sources.kubernetes_config import load_clusters
from tests.k8s.conftest import ApiServers
from tests.k8s.world import BULK_ACCOUNT, DAYS, PROD_ACCOUNT

DOC = Path(__file__).resolve().parents[2] / "docs" / "kubernetes.md"


def documented_role() -> dict:
    section = DOC.read_text().split("## The read-only ClusterRole", 1)[1]
    return yaml.safe_load(re.search(r"```yaml\n(.*?)```", section, flags=re.DOTALL)[1])


def rules_as_calls(role: dict) -> tuple[set[tuple[str, str, str]], set[str]]:
    calls, urls = set(), set()
    for rule in role["rules"]:
        if "nonResourceURLs" in rule:
            assert rule["verbs"] == ["get"]
            urls |= set(rule["nonResourceURLs"])
            continue
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    calls.add((group, resource, verb))
    return calls, urls


def test_documented_role_equals_the_code() -> None:
    role = documented_role()
    assert role["kind"] == "ClusterRole"
    calls, urls = rules_as_calls(role)
    assert calls == set(API_CALLS)
    assert urls == set(NON_RESOURCE_URLS)
    assert all(verb == "list" for _g, _r, verb in API_CALLS)


def _requested(path: str) -> tuple[str, str, str] | str:
    parts = [p for p in urlsplit(path).path.split("/") if p]
    if len(parts) == 1:
        return "/" + parts[0]
    group = "" if parts[0] == "api" else parts[1]
    resource = parts[2] if parts[0] == "api" else parts[3]
    return (group, resource, "list")


def test_a_real_collection_makes_exactly_the_documented_calls(apiservers: ApiServers, clusters_file: Path) -> None:
    KubernetesCollector(load_clusters(clusters_file).clusters).collect_inventory(PROD_ACCOUNT, DAYS[0])
    store = apiservers.store("prod-eks")
    assert {m for m, _p in store.requests} == {"GET"}
    seen = {_requested(p) for _m, p in store.requests}
    calls, urls = rules_as_calls(documented_role())
    assert seen == calls | urls


def test_query_count_matches_the_documented_formula(
    clusters_file: Path, tmp_path: Path, apiservers, prometheus
) -> None:
    from tests.k8s.conftest import clusters_yaml

    _t, meta = KubernetesCollector(load_clusters(clusters_file).clusters).collect_usage(PROD_ACCOUNT, DAYS[0])
    prod = meta["clusters"]["prod-eks"]
    # 2 series listings (planning), 1 batch (18 container series), 1 ReplicaSet and 1 Job owner batch, 1 node
    # batch: 2 + 8 + 2 + 2
    assert (prod["prometheus_batches"], prod["prometheus_queries"]) == (2, 14)
    assert prod["prometheus_queries_by_endpoint"]["series"] == 2
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(clusters_yaml(apiservers, prometheus.url, max_series=25)))
    _t, meta = KubernetesCollector(load_clusters(path).clusters).collect_usage(BULK_ACCOUNT, DAYS[0])
    bulk = meta["clusters"]["bulk"]
    # 70 series in one namespace: split by the prefixes '', 's', 'sv', 'svc' into 7 slices of 10, packed 2 a
    # batch (B=4), counted from the series listings; one ReplicaSet owner batch (no Jobs: no Job owner batch),
    # 1 node batch: 2 + 8 x 4 + 1 + 2
    assert (bulk["prometheus_batches"], bulk["prometheus_queries"]) == (5, 2 + 8 * 4 + 1 + 2 * 1)
    assert bulk["prometheus_largest_response_series"] <= 25
    assert bulk["prometheus_series_listed"] >= 70
