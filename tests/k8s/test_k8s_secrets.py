"""No Prometheus credential in any output: the demo pipeline with two Kubernetes clusters whose Prometheus
is reached with a bearer token and with basic auth, read from the environment variables the clusters file
names (real Prometheus, the stand-in API server, the real Dagster instance)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cloudopt_pipelines.automation import WAREHOUSE_JOB
from cloudopt_pipelines.definitions import build_definitions
from cloudopt_pipelines.orchestration import ensure_instance
from cloudopt_pipelines.settings import Settings
from tests.k8s.conftest import ApiServers, Prometheus, clusters_yaml
from tests.k8s.test_k8s_assets import _run
from tests.k8s.world import BULK_ACCOUNT, PROD_ACCOUNT
from tests.secret_scan import scan

SECRETS = {
    "CLOUDOPT_PROM_TOKEN": "promtoken-CANARY-5d1e83aa",
    "CLOUDOPT_PROM_PASSWORD": "prompass-CANARY-c07b9f12",
}


def test_prometheus_token_and_password_never_reach_an_output(
    apiservers: ApiServers,
    prometheus: Prometheus,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    config = clusters_yaml(apiservers, prometheus.url)
    prod, bulk = config["clusters"]
    prod["prometheus_bearer_token_env"] = "CLOUDOPT_PROM_TOKEN"
    bulk.update(prometheus_username_env="CLOUDOPT_PROM_USER", prometheus_password_env="CLOUDOPT_PROM_PASSWORD")
    clusters = tmp_path / "clusters.yaml"
    clusters.write_text(yaml.safe_dump(config, sort_keys=False))
    for name, value in {**SECRETS, "CLOUDOPT_PROM_USER": "cloudopt"}.items():
        monkeypatch.setenv(name, value)

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
