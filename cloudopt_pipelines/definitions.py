"""Assemble the Dagster Definitions: assets by stage, jobs, schedule, sensors and resources by environment."""

import dagster as dg

from cloudopt_pipelines.assets.actions import executed_actions
from cloudopt_pipelines.assets.features import build_sql_model_assets
from cloudopt_pipelines.assets.plan import portfolio_plan, portfolio_plan_job
from cloudopt_pipelines.assets.raw import cluster_metrics_5m, price_catalog, resources, utilization_5m
from cloudopt_pipelines.assets.recommendations import recommendations
from cloudopt_pipelines.assets.warehouse import build_warehouse_asset
from cloudopt_pipelines.automation import (
    account_discovery,
    build_jobs,
    build_plan_sensor,
    build_warehouse_refresh_sensor,
    daily_pipeline_schedule,
)
from cloudopt_pipelines.config import Settings, load_settings
from cloudopt_pipelines.partitions import account_daily_partitions
from cloudopt_pipelines.resources.executor import AwsExecutorResource
from cloudopt_pipelines.resources.sources import DemoSourceResource, SourceResource
from cloudopt_pipelines.resources.storage import LakeResource, WarehouseResource


def source_for(settings: Settings) -> SourceResource:
    """The source of inventory and metrics for CLOUDOPT_ENV (demo: embedded data; aws: real APIs)."""
    if settings.env == "aws":
        from cloudopt_pipelines.resources.aws import AwsResource

        return AwsResource.from_env()
    return DemoSourceResource()


def build_definitions(settings: Settings | None = None, source: SourceResource | None = None) -> dg.Definitions:
    """All definitions for one CLOUDOPT_HOME and source; tests pass their own."""
    settings = settings or load_settings()
    sql_assets = build_sql_model_assets()
    raw_assets = [price_catalog, resources, utilization_5m, cluster_metrics_5m]
    upstream = [
        key for a in [*raw_assets, *sql_assets, recommendations, portfolio_plan, executed_actions] for key in a.keys
    ]
    warehouse_asset = build_warehouse_asset(upstream)
    account_daily_keys = [
        key
        for a in [resources, utilization_5m, cluster_metrics_5m, *sql_assets, recommendations]
        if a.partitions_def == account_daily_partitions
        for key in a.keys
    ]
    daily_job, catalog_job, warehouse_job = build_jobs(
        account_daily_keys, list(price_catalog.keys), warehouse_asset.key
    )
    return dg.Definitions(
        assets=[*raw_assets, *sql_assets, recommendations, portfolio_plan, executed_actions, warehouse_asset],
        jobs=[daily_job, catalog_job, warehouse_job, portfolio_plan_job],
        schedules=[daily_pipeline_schedule],
        sensors=[
            account_discovery,
            build_plan_sensor(list(recommendations.keys), deadline=settings.plan_deadline),
            build_warehouse_refresh_sensor(warehouse_asset),
        ],
        resources={
            "source": source or source_for(settings),
            "lake": LakeResource(root=str(settings.lake_dir)),
            "warehouse": WarehouseResource(path=str(settings.warehouse_path)),
            "aws_executor": AwsExecutorResource.from_env(home=settings.home),
        },
    )


defs = build_definitions()
