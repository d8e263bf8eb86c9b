"""The cluster optimiser behind the shared interface: ECS, EMR and custom clusters (pure code, no Dagster).

The rules are in :mod:`cloudopt_pipelines.optimizers.clusters`; this module declares what the optimiser
reads, its settings, and how its rows reach the plan.
"""

from __future__ import annotations

from collections import Counter
from typing import ClassVar

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, Field

from cloudopt_pipelines.optimizers.base import DeploymentOptimizer, FeatureInput, OptimizerInputs, Recommendations
from cloudopt_pipelines.optimizers.cluster_schedules import schedule_custom_batch, schedule_ecs_batch
from cloudopt_pipelines.optimizers.clusters import (
    ClusterConfig,
    analyze_cluster_utilization,
    optimize_cluster_size,
    optimize_node_distribution,
    plan_rows,
    schedule_batch_work,
)
from cloudopt_pipelines.optimizers.portfolio import Candidate, candidates_from_recommendations
from cloudopt_pipelines.vocabulary import (
    CUSTOM_CLUSTER,
    EC2_INSTANCE,
    ECS,
    ECS_CLUSTER,
    ECS_SERVICE,
    EMR,
    EMR_CLUSTER,
    ENVIRONMENT_TAG_KEYS,
)

CLUSTER_KINDS = (ECS_CLUSTER, ECS_SERVICE, EMR_CLUSTER)
WINDOW_DAYS = 14


class ClustersSettings(BaseModel):
    """Settings of the cluster optimiser; the asset's run configuration is derived from this model."""

    min_days_before_cut: int = Field(
        default=7, ge=1, le=WINDOW_DAYS, description="Days of data a cluster or service needs before any cut."
    )
    target_cpu_pct: float = Field(
        default=70.0, gt=0, le=100, description="CPU use (p95, % of what is reserved) a proposal sizes for."
    )
    target_mem_pct: float = Field(
        default=80.0, gt=0, le=100, description="Memory use (peak; YARN: p95) a proposal sizes for."
    )
    node_fill_pct: float = Field(
        default=90.0, gt=0, le=100, description="How full the ECS bin packing fills a node's CPU and memory."
    )
    node_memory_usable_pct: float = Field(
        default=90.0, gt=0, le=100, description="Share of an instance's memory ECS can give tasks (OS and agent)."
    )
    min_service_tasks: int = Field(default=1, ge=1, description="Fewest tasks a service is scaled in to.")
    min_production_service_tasks: int = Field(
        default=2, ge=1, description="Fewest tasks of a production service (availability)."
    )
    fargate_spot_weight: int = Field(
        default=3, ge=1, description="FARGATE_SPOT weight beside FARGATE (base 1, weight 1) for spot-ready services."
    )
    emr_idle_timeout_seconds: int = Field(
        default=3600, ge=60, le=604800, description="Idle timeout proposed for EMR auto-termination."
    )
    emr_min_idle_hours_per_day: float = Field(
        default=2.0, ge=0, le=24, description="Idle hours a day from which EMR auto-termination is proposed."
    )
    emr_min_core_nodes: int = Field(default=2, ge=1, description="Fewest EMR core nodes (HDFS) a resize keeps.")
    emr_spot_core: bool = Field(
        default=False, description="Allow Spot for EMR core nodes (never for the primary node)."
    )
    emr_spot_types: int = Field(
        default=3, ge=1, le=10, description="Instance types an EMR Spot task fleet is diversified over."
    )
    max_best_risk: float = Field(
        default=2.0, ge=0, description="Highest performance risk an option may have to be shown as the best one."
    )
    environment_tag_keys: list[str] = Field(
        default=list(ENVIRONMENT_TAG_KEYS), description="Tags that say whether a resource is production."
    )


class ClustersOptimizer(DeploymentOptimizer):
    """ECS service and cluster sizing, Fargate Spot, EMR resize, managed scaling, auto-termination and
    Spot task nodes, custom clusters sized as a group, and batch work moved to cheaper hours or clusters
    (advisory ``schedule_batch`` rows: EMR steps, ECS batch tasks, custom-cluster jobs)."""

    name: ClassVar[str] = "clusters"
    deployment_types: ClassVar[tuple[str, ...]] = (ECS, EMR, CUSTOM_CLUSTER)
    resource_kinds: ClassVar[tuple[str, ...]] = (*CLUSTER_KINDS, EC2_INSTANCE)
    inputs: ClassVar[tuple[FeatureInput, ...]] = (
        FeatureInput("cluster_activity_profile", window_days=1),
        FeatureInput("cluster_utilization_daily", window_days=WINDOW_DAYS),
        FeatureInput("emr_idle_runs", window_days=1),
        FeatureInput("activity_profile", window_days=1),
    )
    settings_type: ClassVar[type[BaseModel]] = ClustersSettings
    description: ClassVar[str] = (
        "Sizing, Spot and idle-time options for the ECS clusters and services, EMR clusters and custom clusters "
        "(instances grouped by the cluster tag) of one account, each with the exact API calls that apply it."
    )

    def select(self, inventory: pa.Table) -> pa.Table:
        """ECS clusters and services and EMR clusters, and the EC2 instances that are their members (or a
        custom cluster's)."""
        if inventory.num_rows == 0:
            return inventory
        clusters = pc.is_in(inventory["resource_kind"], pa.array(CLUSTER_KINDS))
        members = pc.and_(
            pc.equal(inventory["resource_kind"], EC2_INSTANCE),
            pc.is_in(inventory["deployment_type"], pa.array(self.deployment_types)),
        )
        return inventory.filter(pc.fill_null(pc.or_(clusters, members), False))

    def config(self, settings: BaseModel) -> ClusterConfig:
        s = settings if isinstance(settings, ClustersSettings) else ClustersSettings.model_validate(settings)
        return ClusterConfig(
            window_days=WINDOW_DAYS,
            min_days_before_cut=s.min_days_before_cut,
            target_cpu_pct=s.target_cpu_pct,
            target_mem_pct=s.target_mem_pct,
            node_fill_pct=s.node_fill_pct,
            node_memory_usable_pct=s.node_memory_usable_pct,
            min_service_tasks=s.min_service_tasks,
            min_production_service_tasks=s.min_production_service_tasks,
            fargate_spot_weight=s.fargate_spot_weight,
            emr_idle_timeout_seconds=s.emr_idle_timeout_seconds,
            emr_min_idle_hours_per_day=s.emr_min_idle_hours_per_day,
            emr_min_core_nodes=s.emr_min_core_nodes,
            emr_spot_core=s.emr_spot_core,
            emr_spot_types=s.emr_spot_types,
            max_best_risk=s.max_best_risk,
            environment_tag_keys=tuple(s.environment_tag_keys),
        )

    def recommend(self, inputs: OptimizerInputs, settings: BaseModel) -> Recommendations:
        """Every option of every cluster and service of the account; the metadata's ``notes`` say which
        resources got no cut and why (no data, too few days, unreadable task definition, unpriced type)."""
        config = self.config(settings)
        inventory = self.select(inputs.inventory).to_pylist()
        analyses = analyze_cluster_utilization(
            inventory,
            _rows(inputs.tables.get("cluster_activity_profile")),
            _rows(inputs.tables.get("cluster_utilization_daily")),
            inputs.catalog,
            idle_runs=_rows(inputs.tables.get("emr_idle_runs")),
        )
        plans = schedule_batch_work(
            optimize_node_distribution(optimize_cluster_size(analyses, inputs.catalog, config), inputs.catalog, config),
            config,
        )
        plans = schedule_custom_batch(
            schedule_ecs_batch(plans, config), _rows(inputs.tables.get("activity_profile")), config
        )
        table = plan_rows(inputs.account_id, inputs.day, plans, config)
        notes = []
        for key, plan in sorted(plans.items()):
            if len(plan.options) == 1 and plan.finding not in ("optimized",):
                notes.append(f"{key}: {plan.finding}: {plan.options[0].rationale}")
            notes.extend(f"{key}: {n}" for n in plan.analysis.notes)
        return Recommendations(table=table, summary=summary(table), metadata={"notes": notes})

    def candidates(self, recommendations: pa.Table) -> list[Candidate]:
        return candidates_from_recommendations(recommendations, source=self.name)


def _rows(table: pa.Table | None) -> list[dict]:
    if table is None or table.num_rows == 0:
        return []
    return table.to_pylist()


def summary(table: pa.Table) -> dict[str, float]:
    """Numbers for the asset's metadata: rows, resources by kind and the savings of the best options."""
    if table.num_rows == 0:
        return {"rows": 0, "resources": 0, "best_monthly_savings_usd": 0.0}
    best = table.filter(pc.equal(table["is_best"], True))
    out: dict[str, float] = {
        "rows": table.num_rows,
        "resources": len(set(table["resource_id"].to_pylist())),
        "best_monthly_savings_usd": round(float(pc.sum(best["monthly_savings_usd"]).as_py() or 0.0), 2),
    }
    for kind, n in sorted(Counter(best["resource_kind"].to_pylist()).items()):
        out[f"resources/{kind}"] = n
    return out
