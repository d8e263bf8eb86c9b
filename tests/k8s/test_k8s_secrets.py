"""No credential in any output: the demo pipeline with two Kubernetes clusters whose Prometheus is reached
with a bearer token and with basic auth, read from the environment variables the clusters file names, and
whose API servers take the bearer token of the kubeconfig it names (real Prometheus, the stand-in API server,
the real Dagster instance); first the collection alone, then collection to the executor's apply."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cloudopt_pipelines.assets.plan import PLAN_JOB, plan_check_reader
from cloudopt_pipelines.automation import WAREHOUSE_JOB
from cloudopt_pipelines.definitions import build_definitions
from cloudopt_pipelines.executor import ExecutorPaths, read_plan
from cloudopt_pipelines.executor_cli import approve_command, execute_command, rollback_command
from cloudopt_pipelines.orchestration import ensure_instance
from cloudopt_pipelines.settings import Settings
from tests.k8s.conftest import TOKEN, ApiServers, Prometheus, clusters_yaml
from tests.k8s.test_k8s_assets import DAY, _run
from tests.k8s.test_k8s_execute_cli import Echo
from tests.k8s.world import BULK_ACCOUNT, PROD_ACCOUNT
from tests.secret_scan import scan

SECRETS = {
    "CLOUDOPT_PROM_TOKEN": "promtoken-CANARY-5d1e83aa",
    "CLOUDOPT_PROM_PASSWORD": "prompass-CANARY-c07b9f12",
}


def _clusters_with_credentials(
    apiservers: ApiServers, prometheus: Prometheus, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """A clusters file whose prod cluster reaches Prometheus with a bearer token and bulk with basic auth, both
    read from environment variables set here to the canaries."""
    config = clusters_yaml(apiservers, prometheus.url)
    prod, bulk = config["clusters"]
    prod["prometheus_bearer_token_env"] = "CLOUDOPT_PROM_TOKEN"
    bulk.update(prometheus_username_env="CLOUDOPT_PROM_USER", prometheus_password_env="CLOUDOPT_PROM_PASSWORD")
    clusters = folder / "clusters.yaml"
    clusters.write_text(yaml.safe_dump(config, sort_keys=False))
    for name, value in {**SECRETS, "CLOUDOPT_PROM_USER": "cloudopt"}.items():
        monkeypatch.setenv(name, value)
    return clusters


def test_prometheus_token_and_password_never_reach_an_output(
    apiservers: ApiServers,
    prometheus: Prometheus,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    clusters = _clusters_with_credentials(apiservers, prometheus, tmp_path, monkeypatch)

    home = tmp_path / "home"
    # The Kubernetes collection (its Prometheus queries carry the credentials), both clusters.
    results, _ = _run(home, clusters, monkeypatch, [PROD_ACCOUNT, BULK_ACCOUNT], only_k8s=True)
    assert {a: r.success for a, r in results.items()} == {PROD_ACCOUNT: True, BULK_ACCOUNT: True}
    settings = Settings(home=home, env="demo", k8s_clusters_file=clusters)
    instance = ensure_instance(settings)
    assert build_definitions(settings).resolve_job_def(WAREHOUSE_JOB).execute_in_process(instance=instance).success
    captured = capfd.readouterr()

    found, counts = scan(SECRETS, home, {"stdout": captured.out, "stderr": captured.err}, instance)
    assert found == []
    assert counts["runs"] >= 4 and counts["events"] > 50 and counts["parquet"] >= 4 and counts["duckdb"] >= 1, counts


API_SECRETS = {**SECRETS, "kubeconfig token": TOKEN}


def test_no_credential_reaches_an_output_from_collection_to_the_executor(
    apiservers: ApiServers,
    prometheus: Prometheus,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """The daily job of both accounts (collection, features, recommendations), the plan, the executor's dry run
    and an approved apply of the Kubernetes actions, rollback, then the warehouse: no Prometheus token or
    password and no API bearer token (in the kubeconfig the clusters file names) in any output."""
    clusters = _clusters_with_credentials(apiservers, prometheus, tmp_path, monkeypatch)
    assert TOKEN in apiservers.kubeconfig.read_text()  # the API token the scan looks for is the one in use

    home = tmp_path / "home"
    results, lake = _run(home, clusters, monkeypatch, [PROD_ACCOUNT, BULK_ACCOUNT])
    assert {a: r.success for a, r in results.items()} == {PROD_ACCOUNT: True, BULK_ACCOUNT: True}
    settings = Settings(home=home, env="demo", k8s_clusters_file=clusters)
    instance = ensure_instance(settings)
    defs = build_definitions(settings)
    assert defs.resolve_job_def(PLAN_JOB).execute_in_process(instance=instance, partition_key=DAY.isoformat()).success
    plan = lake.read("portfolio_plan", None, DAY).to_pylist()
    k8s_ids = [r["resource_id"] for r in plan if r["deployment_type"] == "kubernetes" and r["action"] != "keep"]
    assert k8s_ids, "no Kubernetes action in the plan"

    # the test clusters' namespaces are unlabelled (production to the executor): their owners mark them dev
    for server in apiservers.servers.values():
        for (_, name), ns in server.store.objects["namespaces"].items():
            if name != "kube-system":
                ns["metadata"]["labels"]["env"] = "dev"

    echo = Echo()
    _, planned = read_plan(lake, DAY, plan_check_reader(instance))
    ids = ",".join(a.action_id for a in planned if a.resource_id in k8s_ids)
    assert approve_command(DAY, ids, False, "alice", False, settings=settings, echo=echo) == 0, echo.text
    codes = [execute_command(DAY, mode, settings=settings, echo=echo) for mode in ("dry_run", "apply")]
    decisions = ExecutorPaths(home).audit().decisions(DAY)
    outcomes = [(r["resource_id"], r["outcome"], r["reason"]) for r in decisions if r["resource_id"] in k8s_ids]
    assert codes == [0, 0], (echo.text, outcomes)
    assert {o for _, o, _ in outcomes} >= {"would_apply", "applied"}, outcomes  # both reached the API server
    applied = [r["action_id"] for r in decisions if r["outcome"] == "applied" and r["resource_id"] in k8s_ids]
    assert applied, outcomes
    assert rollback_command(applied[0], "apply", "bob", settings=settings, echo=echo) == 0, echo.text
    assert defs.resolve_job_def(WAREHOUSE_JOB).execute_in_process(instance=instance).success
    captured = capfd.readouterr()

    texts = {"stdout": captured.out, "stderr": captured.err, "cli output": echo.text}
    found, counts = scan(API_SECRETS, home, texts, instance)
    assert found == []
    assert counts["runs"] >= 7 and counts["events"] > 100 and counts["parquet"] >= 10 and counts["duckdb"] >= 1, counts
    assert any("audit" in str(p) for p in home.rglob("*") if p.is_file()), "no audit file scanned"
