"""`cloudopt execute` and `cloudopt rollback` with Kubernetes rows: the patches it would send are printed, an
apply goes through Dagster and the official client, and the demo serves its cluster for the command."""

from __future__ import annotations

from cloudopt_pipelines.executor_cli import execute_command, rollback_command
from cloudopt_pipelines.settings import Settings
from tests.executor.conftest import DAY
from tests.k8s.executor_world import resources, workload_row
from tests.k8s.test_k8s_executor import CART_CURRENT, cart_row


class Echo:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, text: str = "", err: bool = False) -> None:
        self.lines.append(str(text))

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def test_execute_prints_the_patches_then_applies_and_rolls_back(home, cluster) -> None:
    home.write_plan([cart_row()])
    home.approve_all()
    settings = Settings(home=home.root, env="aws", k8s_clusters_file=cluster.clusters_file)
    echo = Echo()
    assert execute_command(DAY, "dry_run", settings=settings, echo=echo) == 0, echo.text
    assert "would_apply" in echo.text and "an apply would send" in echo.text
    assert "kubectl --context ctx-dev-eks -n shop patch deployment cart --type strategic -p" in echo.text
    assert "patch horizontalpodautoscaler cart --type merge" in echo.text
    assert cluster.containers("cart") == CART_CURRENT
    echo = Echo()
    assert execute_command(DAY, "apply", settings=settings, echo=echo) == 0, echo.text
    assert "applied" in echo.text
    assert cluster.containers("cart")["app"]["requests"] == {"cpu": "250m", "memory": "768Mi"}
    action_id = next(r["action_id"] for r in home.paths.audit().decisions(DAY) if r["outcome"] == "applied")
    echo = Echo()
    assert rollback_command(action_id, "apply", "bob", settings=settings, echo=echo) == 0, echo.text
    assert echo.text.startswith("rolled_back") and "patch deployment cart" in echo.text
    assert cluster.containers("cart") == CART_CURRENT


def test_execute_on_the_demo_reads_the_demo_cluster(home) -> None:
    # the demo's recorded cluster: Deployment shop/web (app 500m / 512Mi, limits 1 / 1Gi) in namespace shop,
    # labelled env=staging; Deployment batch/... would be in an unlabelled (production) namespace
    current = {"app": resources({"cpu": "500m", "memory": "512Mi"}, {"cpu": "1", "memory": "1Gi"})}
    proposed = {"app": resources({"cpu": "250m", "memory": "400Mi"})}
    home.write_plan([workload_row("shop", "web", proposed, current, cluster="prod-eks")])
    home.approve_all()
    echo = Echo()
    assert execute_command(DAY, "dry_run", settings=Settings(home=home.root, env="demo"), echo=echo) == 0, echo.text
    decision = next(r for r in home.paths.audit().decisions(DAY) if r["resource_id"] == "prod-eks/shop/deployment/web")
    # read live from the served demo cluster: staging, so the dry run shows the patch it would send
    assert decision["outcome"] == "would_apply", decision
    assert "-n shop patch deployment web --type strategic -p" in echo.text
    assert decision["state_before"]["containers"]["app"]["requests"] == {"cpu": "500m", "memory": "512Mi"}
