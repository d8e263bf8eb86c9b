"""The executor's write ClusterRole (docs/kubernetes.md and docs/k8s/executor-clusterrole.yaml) is exactly what
the executor calls: the code's API_CALLS, and the requests a real dry run, apply and rollback make."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from cloudopt_pipelines.executor import rollback
from cloudopt_pipelines.executor.kubernetes import API_CALLS
from tests.k8s.executor_world import hpa_row
from tests.k8s.test_k8s_clusterrole import rules_as_calls
from tests.k8s.test_k8s_executor import CART_HPA_CURRENT, cart_row, run

DOCS = Path(__file__).resolve().parents[2] / "docs"


def documented_role() -> dict:
    section = (DOCS / "kubernetes.md").read_text().split("## The executor's write ClusterRole", 1)[1]
    return yaml.safe_load(re.search(r"```yaml\n(.*?)```", section, flags=re.DOTALL)[1])


def test_the_role_file_the_docs_and_the_code_agree() -> None:
    from_file = yaml.safe_load((DOCS / "k8s" / "executor-clusterrole.yaml").read_text())
    assert from_file == documented_role()
    assert from_file["kind"] == "ClusterRole" and from_file["metadata"]["name"] == "cloudopt-executor"
    calls, urls = rules_as_calls(from_file)
    assert calls == set(API_CALLS) and urls == set()
    assert {verb for _g, _r, verb in API_CALLS} == {"get", "patch"}  # never list, create, delete or update


def _requested(method: str, path: str) -> tuple[str, str, str]:
    parts = [p for p in urlsplit(path).path.split("/") if p]
    group, rest = ("", parts[2:]) if parts[0] == "api" else (parts[1], parts[3:])
    resource = rest[2] if rest[0] == "namespaces" and len(rest) > 2 else rest[0]
    return group, resource, {"GET": "get", "PATCH": "patch"}[method]


def test_a_real_run_makes_only_documented_calls(home, cluster) -> None:
    tune = hpa_row("shop", "cart", {"min_replicas": 3, "max_replicas": 8, "target": {"cpu": 65}}, CART_HPA_CURRENT)
    home.write_plan([cart_row(hpa_proposed=None, hpa_current=None), tune])
    home.approve_all()
    run(home, cluster, "dry_run")
    decisions = run(home, cluster, "apply").decisions
    assert {d.outcome for d in decisions} == {"applied"}
    for d in decisions:
        rollback(home.lake, home.paths, d.action_id, "apply", "bob", [cluster.target()])
    seen = {_requested(m, p) for m, p in cluster.store.requests}
    calls, _ = rules_as_calls(documented_role())
    assert seen <= calls
    assert {("apps", "deployments", "patch"), ("autoscaling", "horizontalpodautoscalers", "patch")} <= seen
