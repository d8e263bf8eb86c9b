"""Assemble the Dagster Definitions: assets by stage, jobs, schedule, sensors and resources by environment."""

import dagster as dg

from cloudopt_pipelines.assets.actions import executed_actions
from cloudopt_pipelines.assets.features import build_sql_model_assets, collection_backfill_policy
from cloudopt_pipelines.assets.kubernetes import KubernetesDefinitions, kubernetes_definitions, kubernetes_placeholders
from cloudopt_pipelines.assets.metadata import build_recommendation_checks, describe_assets
from cloudopt_pipelines.assets.plan import build_portfolio_plan_asset, portfolio_plan_job
from cloudopt_pipelines.assets.raw import cluster_metrics_5m, price_catalog, resources, utilization_5m
from cloudopt_pipelines.assets.recommendations import build_recommendation_assets
from cloudopt_pipelines.assets.report import build_savings_report_asset
from cloudopt_pipelines.assets.warehouse import build_warehouse_asset
from cloudopt_pipelines.automation import (
    account_discovery,
    build_jobs,
    build_plan_sensor,
    build_warehouse_refresh_sensor,
    daily_pipeline_schedule,
)
from cloudopt_pipelines.instance import run_executor
from cloudopt_pipelines.optimizers.base import select_optimizers
from cloudopt_pipelines.partitions import (
    DEPLOYMENT_PARTITIONS,
    Partitions,
    account_daily_partitions,
    demo_partitions,
    with_partitions,
)
from cloudopt_pipelines.resources.environments import resources_for
from cloudopt_pipelines.resources.sources import SourceResource
from cloudopt_pipelines.settings import Settings, load_settings


def source_for(settings: Settings) -> SourceResource:
    """The source of inventory and metrics for CLOUDOPT_ENV (demo: embedded data; aws: real APIs)."""
    return resources_for(settings)["source"]


def partitions_for(settings: Settings) -> Partitions:
    """The partitions of CLOUDOPT_ENV: the demo's days only (demo), or every day from ``START_DATE`` (aws)."""
    return demo_partitions() if settings.env == "demo" else DEPLOYMENT_PARTITIONS


def build_definitions(settings: Settings | None = None, source: SourceResource | None = None) -> dg.Definitions:
    """All definitions for one CLOUDOPT_HOME and source; tests pass their own."""
    settings = settings or load_settings()
    window_days = {"utilization_window": settings.utilization_window_days} if settings.utilization_window_days else None
    # One policy for collection and features, so an asset backfill runs them together in a run per range.
    backfill_policy = collection_backfill_policy(settings.backfill_partitions_per_run)
    sql_assets = build_sql_model_assets(window_days=window_days, backfill_policy=backfill_policy)
    k8s = kubernetes_definitions(settings.k8s_clusters_file)  # None unless CLOUDOPT_K8S_CLUSTERS is set
    collection = [
        a.with_attributes(backfill_policy=backfill_policy)
        for a in [resources, utilization_5m, cluster_metrics_5m, *(k8s.assets if k8s else [])]
    ]
    raw_assets = [price_catalog, *collection]
    optimizers = select_optimizers(settings.deployment_types)
    recommendation_assets = build_recommendation_assets(optimizers)
    portfolio_plan = build_portfolio_plan_asset(optimizers)
    lake_assets = [*raw_assets, *sql_assets, *recommendation_assets, portfolio_plan, executed_actions]
    warehouse_asset = build_warehouse_asset([key for a in lake_assets for key in a.keys])
    account_daily_keys = [
        key
        for a in [*collection, *sql_assets, *recommendation_assets]
        if a.partitions_def == account_daily_partitions
        for key in a.keys
    ]
    daily_job, catalog_job, warehouse_job = build_jobs(
        account_daily_keys, list(price_catalog.keys), warehouse_asset.key
    )
    source = source or source_for(settings)
    partitions = partitions_for(settings)
    assets = with_partitions([*lake_assets, warehouse_asset, build_savings_report_asset(optimizers)], partitions)
    # without a clusters file the Kubernetes tables stay in the graph as external assets (read as empty)
    placeholders = (
        []
        if k8s
        else [p.replace_attributes(partitions_def=partitions.account_daily) for p in kubernetes_placeholders()]
    )
    return dg.Definitions(
        assets=describe_assets([*assets, *placeholders], freshness=settings.env != "demo"),
        asset_checks=build_recommendation_checks(optimizers, partitions.account_daily),
        jobs=[daily_job, catalog_job, warehouse_job, portfolio_plan_job],
        schedules=[daily_pipeline_schedule],
        sensors=[
            account_discovery,
            build_plan_sensor([k for a in recommendation_assets for k in a.keys], deadline=settings.plan_deadline),
            build_warehouse_refresh_sensor(warehouse_asset),
        ],
        resources=_resources(settings, source, k8s),
    )


def _resources(settings: Settings, source: SourceResource | None, k8s: KubernetesDefinitions | None) -> dict:
    """The environment's resources; with Kubernetes clusters, their resources too and a source whose
    inventory gains the clusters' nodes and workloads."""
    chosen = {**resources_for(settings), **({"source": source} if source else {})}
    if k8s is None:
        return chosen
    return {**chosen, **k8s.resources(), "source": k8s.wrap_source(chosen["source"])}


@dg.definitions
def defs() -> dg.Definitions:
    """What Dagster's loader loads (workspace.yaml, ``dg``): the settings are read then, not at import."""
    return with_run_executor(build_definitions())


def with_run_executor(definitions: dg.Definitions) -> dg.Definitions:
    """``definitions`` with the executor ``CLOUDOPT_RUN_EXECUTOR`` names: step processes forked from a
    preloaded forkserver by default, a Kubernetes job per step on a Kubernetes deployment."""
    return dg.Definitions.merge(definitions, dg.Definitions(executor=run_executor()))
