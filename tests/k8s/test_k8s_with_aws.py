"""Beside the AWS collection: a cluster's nodes link to the EC2 instances a real moto server reports."""

from __future__ import annotations

from datetime import date
from pathlib import Path

from cloudopt_pipelines.sources.aws import AwsCollector, AwsSettings
from cloudopt_pipelines.sources.kubernetes import KubernetesCollector, WithKubernetes
from cloudopt_pipelines.sources.kubernetes_config import parse_clusters
from tests.aws.conftest import MANAGEMENT_ACCOUNT, aws_env, client, run_instance, running_moto_server  # noqa: F401
from tests.k8s.conftest import TOKEN, write_kubeconfig
from tests.k8s.fake_apiserver import FakeApiServer, Store
from tests.k8s.world import node

DAY = date(2026, 11, 16)


def test_nodes_link_to_the_ec2_instances_of_the_aws_inventory(aws_env: None, tmp_path: Path, certificates) -> None:  # noqa: F811
    ca, crt, key, _other = certificates
    with running_moto_server(tmp_path / "moto.log") as url:
        ec2 = client(url, "ec2")
        tags = {"eks:cluster-name": "prod-eks", "kubernetes.io/cluster/prod-eks": "owned"}
        instances = [run_instance(ec2, tags, "m5.xlarge") for _ in range(2)]
        standalone = run_instance(ec2, {"Name": "bastion"}, "t3.micro")
        store = Store()
        for i, iid in enumerate(instances):
            store.add(
                node(
                    f"ip-10-0-{i}-1.ec2.internal", "m5.xlarge", "us-east-1a", {"eks.amazonaws.com/nodegroup": "ng"}, iid
                )
            )
        server = FakeApiServer(store, TOKEN, str(crt), str(key)).start()
        try:
            kubeconfig = write_kubeconfig(tmp_path / "kc", {"prod-eks": server.url}, ca, "prod-eks")
            clusters = parse_clusters(
                f'clusters:\n  - name: prod-eks\n    account_id: "{MANAGEMENT_ACCOUNT}"\n'
                f"    kubeconfig: {kubeconfig}\n    prometheus_url: http://127.0.0.1:1\n"
            ).clusters
            aws = AwsCollector(
                AwsSettings(regions=("us-east-1",), accounts=(MANAGEMENT_ACCOUNT,), endpoint_url=url, max_attempts=2)
            )
            source = WithKubernetes(aws, KubernetesCollector(clusters))
            assert source.list_accounts() == [MANAGEMENT_ACCOUNT]
            collected = source.collect_inventory(MANAGEMENT_ACCOUNT, DAY)
        finally:
            server.stop()
    rows = collected.table.to_pylist()
    ec2_rows = {r["resource_id"]: r for r in rows if r["resource_kind"] == "ec2_instance"}
    assert {ec2_rows[i]["deployment_type"] for i in instances} == {"kubernetes"}
    assert ec2_rows[standalone]["deployment_type"] == "standalone"
    nodes = [r for r in rows if r["resource_kind"] == "k8s_node"]
    assert sorted(r["parent_id"] for r in nodes) == sorted(instances)
    assert all(ec2_rows[r["parent_id"]]["instance_type"] == r["instance_type"] for r in nodes)
    assert collected.metadata["kubernetes_clusters"] == ["prod-eks"]
