"""Arrow schemas of the lake tables: the analysts' contract, column by column.

Every partition file of a table is written with exactly its schema here, so that DuckDB views over
all partitions never see two shapes of one table. ``docs/warehouse.md`` documents each column.
"""

from __future__ import annotations

import pyarrow as pa

TS = pa.timestamp("us", tz="UTC")

PRICE_CATALOG = pa.schema(
    [
        ("region", pa.string()),
        ("instance_type", pa.string()),
        ("vcpu", pa.int32()),
        ("memory_gib", pa.float64()),
        ("architecture", pa.string()),
        ("family", pa.string()),
        ("generation", pa.string()),
        ("burstable", pa.bool_()),
        ("network_performance", pa.string()),
        ("gpu_count", pa.int32()),
        ("ondemand_usd_per_hour", pa.float64()),
        ("spot_usd_per_hour", pa.float64()),
        ("spot_savings_pct", pa.float64()),
        ("spot_interruption_band", pa.string()),
        ("source", pa.string()),
        ("as_of", pa.date32()),
        ("ondemand_is_estimate", pa.bool_()),
        ("spot_is_estimate", pa.bool_()),
        ("is_estimate", pa.bool_()),
    ]
)

RESERVED_PRICES = pa.schema(
    [
        ("region", pa.string()),
        ("instance_type", pa.string()),
        ("term_years", pa.int32()),
        ("offering_class", pa.string()),
        ("payment_option", pa.string()),
        ("effective_usd_per_hour", pa.float64()),
        ("ondemand_usd_per_hour", pa.float64()),
        ("discount_pct", pa.float64()),
        ("source", pa.string()),
        ("as_of", pa.date32()),
        ("is_estimate", pa.bool_()),
    ]
)

# One row per resource seen in an account on a day. Kind-specific fields live in ``attributes``
# (a JSON object) so that one table covers instances, groups, clusters, volumes and addresses.
RESOURCES = pa.schema(
    [
        ("account_id", pa.string()),
        ("date", pa.date32()),
        ("resource_id", pa.string()),
        ("resource_kind", pa.string()),
        ("deployment_type", pa.string()),
        ("region", pa.string()),
        ("zone", pa.string()),
        ("instance_type", pa.string()),
        ("state", pa.string()),
        ("platform", pa.string()),
        ("architecture", pa.string()),
        ("lifecycle", pa.string()),
        ("launch_time", TS),
        ("parent_id", pa.string()),
        ("name", pa.string()),
        ("env", pa.string()),
        ("team", pa.string()),
        ("service", pa.string()),
        ("tags", pa.string()),
        ("attributes", pa.string()),
        ("source", pa.string()),
    ]
)

UTILIZATION_5M = pa.schema(
    [
        ("account_id", pa.string()),
        ("date", pa.date32()),
        ("resource_id", pa.string()),
        ("ts", TS),
        ("cpu_pct", pa.float64()),
        ("cpu_max_pct", pa.float64()),
        ("mem_pct", pa.float64()),
        ("net_in_bytes", pa.float64()),
        ("net_out_bytes", pa.float64()),
        ("source", pa.string()),
    ]
)

# CloudWatch series of clusters (ECS cluster and service utilisation and reservation, EMR YARN and
# node counts), long format: one row per series point.
CLUSTER_METRICS_5M = pa.schema(
    [
        ("account_id", pa.string()),
        ("date", pa.date32()),
        ("resource_id", pa.string()),
        ("ts", TS),
        ("namespace", pa.string()),
        ("metric", pa.string()),
        ("stat", pa.string()),
        ("value", pa.float64()),
        ("source", pa.string()),
    ]
)

# One row per (resource, option): keep plus every alternative, ranked; is_best marks the one shown
# as "the" recommendation. The portfolio LP picks among the options of each resource.
RECOMMENDATIONS = pa.schema(
    [
        ("account_id", pa.string()),
        ("date", pa.date32()),
        ("resource_id", pa.string()),
        ("resource_kind", pa.string()),
        ("deployment_type", pa.string()),
        ("region", pa.string()),
        ("zone", pa.string()),
        ("option_name", pa.string()),
        ("action", pa.string()),
        ("rank", pa.int32()),
        ("is_best", pa.bool_()),
        ("finding", pa.string()),
        ("current_config", pa.string()),
        ("proposed_config", pa.string()),
        ("market", pa.string()),
        ("vcpu", pa.float64()),
        ("memory_gib", pa.float64()),
        ("monthly_cost_current_usd", pa.float64()),
        ("monthly_cost_proposed_usd", pa.float64()),
        ("monthly_savings_usd", pa.float64()),
        ("savings_pct", pa.float64()),
        ("one_time_cost_usd", pa.float64()),
        ("performance_risk", pa.float64()),
        ("migration_effort", pa.string()),
        ("projected_cpu_pct", pa.float64()),
        ("projected_memory_pct", pa.float64()),
        ("confidence", pa.float64()),
        ("is_estimate", pa.bool_()),
        ("protected", pa.bool_()),
        ("risk_setting", pa.string()),
        ("rationale", pa.string()),
        ("details", pa.string()),
    ]
)


# The portfolio plan (date partition, across accounts): one row per resource with the option the
# LP chose, ``keep`` included, so that the executor and analysts see every decision and its reason.
PORTFOLIO_PLAN = pa.schema(
    [
        ("date", pa.date32()),
        ("plan_id", pa.string()),
        ("account_id", pa.string()),
        ("resource_id", pa.string()),
        ("resource_kind", pa.string()),
        ("deployment_type", pa.string()),
        ("region", pa.string()),
        ("zone", pa.string()),
        ("group_name", pa.string()),
        ("env", pa.string()),
        ("option_name", pa.string()),
        ("action", pa.string()),
        ("market", pa.string()),
        ("current_config", pa.string()),
        ("proposed_config", pa.string()),
        ("monthly_cost_current_usd", pa.float64()),
        ("monthly_cost_proposed_usd", pa.float64()),
        ("monthly_savings_usd", pa.float64()),
        ("one_time_cost_usd", pa.float64()),
        ("performance_risk", pa.float64()),
        ("confidence", pa.float64()),
        ("is_estimate", pa.bool_()),
        ("protected", pa.bool_()),
        ("reason", pa.string()),
        ("solver_status", pa.string()),
    ]
)

# The result of the plan's independent constraint check (date partition, one row): the executor acts
# only on a plan whose check passed, whichever run wrote the plan.
PORTFOLIO_PLAN_CHECKS = pa.schema(
    [
        ("date", pa.date32()),
        ("plan_id", pa.string()),
        ("passed", pa.bool_()),
        ("solver_status", pa.string()),
        ("violation_count", pa.int32()),
        ("violations", pa.string()),
        ("checked_at", TS),
    ]
)

# Every decision of the executor (date partition): applied, skipped and why, failed and the error.
EXECUTED_ACTIONS = pa.schema(
    [
        ("date", pa.date32()),
        ("plan_id", pa.string()),
        ("action_id", pa.string()),
        ("run_id", pa.string()),
        ("account_id", pa.string()),
        ("region", pa.string()),
        ("resource_id", pa.string()),
        ("resource_kind", pa.string()),
        ("option_name", pa.string()),
        ("action", pa.string()),
        ("monthly_savings_usd", pa.float64()),
        ("mode", pa.string()),
        ("outcome", pa.string()),
        ("reason", pa.string()),
        ("approved_by", pa.string()),
        ("approval_id", pa.string()),
        ("state_before", pa.string()),
        ("state_after", pa.string()),
        ("api_calls", pa.string()),
        ("error", pa.string()),
        ("started_at", TS),
        ("finished_at", TS),
    ]
)

# Kubernetes objects of one cluster (CLOUDOPT_K8S_CLUSTERS; docs/kubernetes.md): nodes, node pools,
# namespaces, workloads grouped by owner (one row per container), HPAs, VPAs and PodDisruptionBudgets.
K8S_WORKLOADS = pa.schema(
    [
        ("account_id", pa.string()),
        ("date", pa.date32()),
        ("cluster", pa.string()),
        ("resource_id", pa.string()),
        ("object_kind", pa.string()),
        ("namespace", pa.string()),
        ("name", pa.string()),
        ("container", pa.string()),
        ("target_id", pa.string()),
        ("replicas", pa.int32()),
        ("ready_replicas", pa.int32()),
        ("pods", pa.int32()),
        ("cpu_request_cores", pa.float64()),
        ("cpu_limit_cores", pa.float64()),
        ("mem_request_bytes", pa.float64()),
        ("mem_limit_bytes", pa.float64()),
        ("qos_class", pa.string()),
        ("restarts", pa.int32()),
        ("last_termination_reason", pa.string()),
        ("instance_type", pa.string()),
        ("zone", pa.string()),
        ("capacity_type", pa.string()),
        ("nodepool", pa.string()),
        ("ec2_instance_id", pa.string()),
        ("allocatable_cpu_cores", pa.float64()),
        ("allocatable_mem_bytes", pa.float64()),
        ("taints", pa.string()),
        ("min_replicas", pa.int32()),
        ("max_replicas", pa.int32()),
        ("current_replicas", pa.int32()),
        ("desired_replicas", pa.int32()),
        ("metrics", pa.string()),
        ("labels", pa.string()),
        ("attributes", pa.string()),
        ("source", pa.string()),
    ]
)

# Prometheus usage at the query step (5 minutes): one row per (workload, container, ts) with the pods of
# the workload aggregated, and one row per (node, ts) with scope 'node'.
K8S_CONTAINER_USAGE = pa.schema(
    [
        ("account_id", pa.string()),
        ("date", pa.date32()),
        ("cluster", pa.string()),
        ("resource_id", pa.string()),
        ("scope", pa.string()),
        ("namespace", pa.string()),
        ("workload_kind", pa.string()),
        ("workload", pa.string()),
        ("container", pa.string()),
        ("ts", TS),
        ("cpu_cores", pa.float64()),
        ("cpu_cores_max", pa.float64()),
        ("mem_bytes", pa.float64()),
        ("mem_bytes_max", pa.float64()),
        ("cpu_throttled_ratio", pa.float64()),
        ("replicas", pa.int32()),
        ("restarts", pa.int32()),
        ("oom_kills", pa.int32()),
        ("source", pa.string()),
    ]
)

TABLES: dict[str, pa.Schema] = {
    "price_catalog": PRICE_CATALOG,
    "reserved_prices": RESERVED_PRICES,
    "resources": RESOURCES,
    "utilization_5m": UTILIZATION_5M,
    "cluster_metrics_5m": CLUSTER_METRICS_5M,
    "recommendations": RECOMMENDATIONS,
    "portfolio_plan": PORTFOLIO_PLAN,
    "portfolio_plan_checks": PORTFOLIO_PLAN_CHECKS,
    "executed_actions": EXECUTED_ACTIONS,
    "k8s_workloads": K8S_WORKLOADS,
    "k8s_container_usage": K8S_CONTAINER_USAGE,
}

# Warehouse views that are the union of every lake table with a prefix: each deployment-type optimiser
# writes its own ``recommendations_<name>`` table, analysts query ``recommendations`` (the contract name).
UNION_VIEWS: dict[str, str] = {"recommendations": "recommendations_"}

RESOURCE_KINDS = (
    "ec2_instance",
    "ebs_volume",
    "elastic_ip",
    "asg",
    "ecs_cluster",
    "ecs_service",
    "emr_cluster",
    "eks_cluster",
    "eks_nodegroup",
    "k8s_node",
    "k8s_nodepool",
    "k8s_workload",
)

DEPLOYMENT_TYPES = ("standalone", "asg", "kubernetes", "ecs", "emr")


def empty_table(schema: pa.Schema) -> pa.Table:
    """A zero-row table of ``schema``: what an empty account or day writes."""
    return schema.empty_table()


def conform(table: pa.Table, schema: pa.Schema, table_name: str) -> pa.Table:
    """Cast ``table`` to ``schema`` (column order and types), naming what is missing or wrong."""
    missing = [f.name for f in schema if f.name not in table.column_names]
    if missing:
        raise ValueError(
            f"table '{table_name}' is missing column(s) {missing}; "
            f"the collector must return every column of the schema in storage/schemas.py"
        )
    extra = [c for c in table.column_names if c not in schema.names]
    if extra:
        raise ValueError(
            f"table '{table_name}' has column(s) {extra} not in its schema; "
            f"add them to storage/schemas.py and docs/warehouse.md first"
        )
    try:
        return table.select(schema.names).cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise ValueError(f"table '{table_name}' does not fit its schema: {exc}") from exc
