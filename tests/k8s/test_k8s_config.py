"""The clusters file is validated before anything runs, naming the line at fault; the kubeconfig's CA is honoured."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from cloudopt_pipelines.sources.kubernetes import KubernetesCollectionError, KubernetesCollector
from cloudopt_pipelines.sources.kubernetes_config import ClustersFileError, load_clusters, parse_clusters
from tests.k8s.conftest import ApiServers, write_kubeconfig
from tests.k8s.world import DAYS, PROD_ACCOUNT

GOOD = """\
clusters:
  - name: prod-eks
    account_id: "123456789012"
    kubeconfig: /etc/cloudopt/kubeconfig
    context: prod
    prometheus_url: https://prometheus.example:9090/
    prometheus_bearer_token_env: PROM_TOKEN
    prometheus_timeout: 2m
    step: 5m
    scrape_interval: 30s
    max_range: 6h
    max_series: 2000
  - name: in-cluster
    account_id: "000123456789"
    prometheus_url: http://prometheus.monitoring:9090
"""


def test_a_good_file_with_defaults() -> None:
    config = parse_clusters(GOOD, "clusters.yaml")
    prod, local = config.clusters
    assert (prod.step_s, prod.scrape_interval_s, prod.max_range_s, prod.max_series) == (300, 30, 21600, 2000)
    assert prod.rate_window_s == 300 and prod.prometheus_timeout_s == 120.0
    assert prod.prometheus_url == "https://prometheus.example:9090"
    assert local.kubeconfig is None and local.account_id == "000123456789"  # in-cluster config; zeros kept
    assert (local.step_s, local.max_series, local.prometheus_tls_verify) == (300, 5000, True)
    assert config.accounts == ["000123456789", "123456789012"]


def test_credentials_come_from_the_environment_by_name() -> None:
    prod = parse_clusters(GOOD).clusters[0]
    assert prod.prometheus_auth({"PROM_TOKEN": "s3cret"}) == ("s3cret", None)
    with pytest.raises(ClustersFileError, match=r"PROM_TOKEN .* is not set"):
        prod.prometheus_auth({})


@pytest.mark.parametrize(
    ("edit", "line", "message"),
    [
        (lambda t: t.replace("    context: prod\n", ""), None, None),  # context is optional: no error
        (lambda t: t.replace("  - name: in-cluster\n", "  - nmae: in-cluster\n"), 13, "unknown key 'nmae'"),
        (
            lambda t: t.replace("    prometheus_url: http://prometheus.monitoring:9090\n", ""),
            13,
            "missing required field(s): prometheus_url",
        ),
        (
            lambda t: t.replace("name: in-cluster", "name: prod-eks"),
            13,
            "duplicate cluster name 'prod-eks' (first on line 2)",
        ),
        (lambda t: t.replace('"000123456789"', '"12345"'), 14, "not a 12-digit AWS account id"),
        (lambda t: t.replace('"000123456789"', "123456789012"), 14, "must be quoted"),
        (lambda t: t.replace("step: 5m", "step: 5 minutes"), 9, "step"),
        (lambda t: t.replace("max_series: 2000", "max_series: -3"), 12, "positive integer"),
        (lambda t: t + "defaults: {}\n", 16, "unknown key 'defaults'"),
        (
            lambda t: t.replace("prometheus_bearer_token_env: PROM_TOKEN", "prometheus_bearer_token_env: abc def"),
            7,
            "environment variable",
        ),
    ],
)
def test_bad_files_are_refused_with_the_line(edit, line: int | None, message: str | None) -> None:
    text = edit(GOOD)
    if message is None:
        parse_clusters(text, "clusters.yaml")
        return
    with pytest.raises(ClustersFileError) as err:
        parse_clusters(text, "clusters.yaml")
    assert f"clusters.yaml:{line}:" in str(err.value) and message in str(err.value)


def test_definitions_refuse_a_bad_file_before_anything_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cloudopt_pipelines.definitions import build_definitions
    from cloudopt_pipelines.settings import Settings, load_settings

    path = tmp_path / "clusters.yaml"
    path.write_text(GOOD.replace("  - name: in-cluster\n", "  - nmae: in-cluster\n"))
    monkeypatch.setenv("CLOUDOPT_K8S_CLUSTERS", str(path))
    with pytest.raises(ClustersFileError, match=r"clusters.yaml:13: unknown key 'nmae'"):
        build_definitions(load_settings(os.environ | {"CLOUDOPT_HOME": str(tmp_path / "home")}))
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ClustersFileError, match=r"CLOUDOPT_K8S_CLUSTERS=.*missing\.yaml"):
        build_definitions(Settings(home=tmp_path / "home", env="demo", k8s_clusters_file=missing))


def _entry(apis: ApiServers, kubeconfig: Path, context: str | None) -> str:
    entry = {
        "name": "prod-eks",
        "account_id": PROD_ACCOUNT,
        "kubeconfig": str(kubeconfig),
        "prometheus_url": "http://127.0.0.1:1",
    }
    if context:
        entry["context"] = context
    return yaml.safe_dump({"clusters": [entry]})


def test_the_kubeconfig_ca_is_honoured_and_tls_verified(apiservers: ApiServers, tmp_path: Path) -> None:
    # the right CA: collected
    ok = KubernetesCollector(parse_clusters(_entry(apiservers, apiservers.kubeconfig, "ctx-prod-eks")).clusters)
    _res, workloads, _meta = ok.collect_inventory(PROD_ACCOUNT, DAYS[0])
    assert workloads.num_rows > 0
    # a CA that did not sign the server's certificate: refused, naming the cluster and the fix
    servers = {n: s.url for n, s in apiservers.servers.items()}
    wrong = write_kubeconfig(tmp_path / "wrong-ca", servers, apiservers.other_ca, "prod-eks")
    bad = KubernetesCollector(parse_clusters(_entry(apiservers, wrong, "ctx-prod-eks")).clusters)
    with pytest.raises(KubernetesCollectionError, match=r"cluster 'prod-eks'.*certificate-authority"):
        bad.collect_inventory(PROD_ACCOUNT, DAYS[0])


def test_context_overrides_the_current_context(apiservers: ApiServers) -> None:
    # the kubeconfig's current context is the bulk cluster; without `context` the entry reads that one
    current = KubernetesCollector(parse_clusters(_entry(apiservers, apiservers.kubeconfig, None)).clusters)
    _res, workloads, _meta = current.collect_inventory(PROD_ACCOUNT, DAYS[0])
    assert "prod-eks/apps/deployment/svc0" in workloads.column("resource_id").to_pylist()
    chosen = KubernetesCollector(parse_clusters(_entry(apiservers, apiservers.kubeconfig, "ctx-prod-eks")).clusters)
    _res, workloads, _meta = chosen.collect_inventory(PROD_ACCOUNT, DAYS[0])
    assert "prod-eks/shop/deployment/web" in workloads.column("resource_id").to_pylist()
    with pytest.raises(KubernetesCollectionError, match="context 'nope'"):
        KubernetesCollector(
            parse_clusters(_entry(apiservers, apiservers.kubeconfig, "nope")).clusters
        ).collect_inventory(PROD_ACCOUNT, DAYS[0])


def test_load_clusters_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(GOOD)
    assert load_clusters(path).path == str(path)


def test_every_kubernetes_column_is_documented_in_the_warehouse_page() -> None:
    import re

    from cloudopt_pipelines.storage.schemas import K8S_CONTAINER_USAGE, K8S_WORKLOADS

    text = (Path(__file__).resolve().parents[2] / "docs" / "warehouse.md").read_text()
    for table, schema in (("k8s_workloads", K8S_WORKLOADS), ("k8s_container_usage", K8S_CONTAINER_USAGE)):
        section = text.split(f"## {table}\n", 1)[1].split("\n## ", 1)[0]
        documented = set(re.findall(r"^\|\s*`([a-z_0-9]+)`\s*\|", section, flags=re.MULTILINE))
        assert documented == set(schema.names), f"docs/warehouse.md section {table}: {set(schema.names) ^ documented}"


def test_the_example_clusters_file_is_valid() -> None:
    example = Path(__file__).resolve().parents[2] / "config" / "k8s_clusters.example.yaml"
    config = load_clusters(example)
    assert [c.name for c in config.clusters] == ["prod-eks", "analytics"]
    assert config.clusters[1].job_group_labels == ("dagster/job", "dag_id")
