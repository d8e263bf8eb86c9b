"""Arrow schemas of the lake tables: the analysts' contract, column by column.

Every partition file of a table is written with exactly its schema here, so that DuckDB views over
all partitions never see two shapes of one table. ``docs/warehouse.md`` documents each column.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

# Re-exported: the resources table's resource_kind and deployment_type take these values.
from cloudopt_pipelines.vocabulary import DEPLOYMENT_TYPES, RESOURCE_KINDS  # noqa: F401

TS = pa.timestamp("us", tz="UTC")

# Bounds of every price and cost read from a table or a file: finite, >= 0 and at most these. The
# largest EC2 on-demand price is about USD 400 an hour (u7in-32tb.224xlarge); a bound well above any
# real one still keeps sums over millions of resources finite and exact enough for the LP.
MAX_PRICE_USD_PER_HOUR = 10_000.0
MAX_COST_USD = 1e9  # any monthly or one-time amount of one resource option

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
    "executed_actions": EXECUTED_ACTIONS,
    "k8s_workloads": K8S_WORKLOADS,
    "k8s_container_usage": K8S_CONTAINER_USAGE,
}

# Warehouse views that are the union of every lake table with a prefix: each deployment-type optimiser
# writes its own ``recommendations_<name>`` table, analysts query ``recommendations`` (the contract name).
UNION_VIEWS: dict[str, str] = {"recommendations": "recommendations_"}

# ------------------------------------------------------------------------------- resources.attributes

# The one schema of ``resources.attributes`` per resource kind, shared by every collector (AWS, demo) and
# read by the optimisers: key -> (required, allowed JSON types or None for any, meaning). A key outside
# its kind's list, a required key missing or a value of another type is an error when the table is
# written (``conform``), naming the resource and the key. ``docs/warehouse.md`` lists them.
_ANY = None
_STR = (str,)
_NUM = (int, float)
_LIST = (list,)
AttributeSpec = tuple[bool, tuple[type, ...] | None, str]
RESOURCE_ATTRIBUTES: dict[str, dict[str, AttributeSpec]] = {
    "ec2_instance": {
        "cwagent_memory": (False, (bool,), "the CloudWatch agent reports memory"),
        "auto_scaling_group": (False, _STR, "Auto Scaling group name"),
        "ecs_cluster_arn": (False, _STR, "ECS cluster of a container instance"),
        "ecs_container_instance_arn": (False, _STR, "ECS container instance"),
        "ecs_registered_resources": (False, (dict,), "ECS registered CPU / memory"),
        "ecs_remaining_resources": (False, (dict,), "ECS remaining CPU / memory"),
        "ecs_running_tasks": (False, (int,), "ECS tasks running on it"),
        "emr_cluster_id": (False, _STR, "EMR cluster id"),
        "eks_cluster": (False, _STR, "EKS cluster name"),
        "eks_nodegroup": (False, _STR, "EKS node group name"),
        "image_id": (False, _STR, "AMI id"),
        "vpc_id": (False, _STR, "VPC"),
        "subnet_id": (False, _STR, "subnet"),
        "tenancy": (False, _STR, "default, dedicated or host"),
        "ebs_optimized": (False, (bool,), "EBS-optimised"),
        "monitoring": (False, _STR, "detailed monitoring state"),
        "spot_instance_request_id": (False, _STR, "Spot request"),
        "capacity_reservation_id": (False, _STR, "capacity reservation"),
        "membership_source": (False, _STR, "tags or api: where group / cluster membership was seen"),
        "custom_cluster": (False, _STR, "the custom cluster it belongs to (value of the cluster tag)"),
    },
    "ebs_volume": {
        "attached_to": (True, _STR, "the instance it is attached to (the first), null when unattached"),
        "attached_instances": (False, _LIST, "every instance it is attached to (multi-attach)"),
        "volume_type": (True, _STR, "gp3, gp2, io1, io2, st1, sc1 or standard"),
        "size_gib": (True, _NUM, "size in GiB"),
        "iops": (False, _NUM, "provisioned IOPS"),
        "throughput_mibps": (False, _NUM, "provisioned throughput"),
        "encrypted": (False, (bool,), "encrypted"),
        "snapshot_id": (False, _STR, "snapshot it was created from"),
    },
    "elastic_ip": {
        "associated_with": (True, _STR, "instance or network interface it is associated with, null when not"),
        "public_ip": (False, _STR, "the address"),
        "domain": (False, _STR, "vpc or standard"),
    },
    "asg": {
        "min_size": (False, (int,), "minimum size"),
        "desired_capacity": (False, (int,), "desired capacity"),
        "max_size": (False, (int,), "maximum size"),
        "instance_ids": (False, _LIST, "member instances"),
        "launch_template": (False, _STR, "launch template name or id"),
        "launch_configuration": (False, _STR, "launch configuration"),
        "mixed_instances_policy": (False, (dict,), "mixed instances policy"),
        "capacity_rebalance": (False, (bool,), "capacity rebalancing"),
    },
    "ecs_cluster": {
        "registered_container_instances": (False, (int,), "container instances registered"),
        "container_instances_seen": (False, (int,), "container instances the collector listed"),
        "running_tasks": (False, (int,), "tasks running"),
        "pending_tasks": (False, (int,), "tasks pending"),
        "active_services": (False, (int,), "active services"),
        "capacity_providers": (False, _LIST, "capacity providers"),
        "default_capacity_provider_strategy": (False, _LIST, "default strategy"),
        "settings": (False, (dict,), "cluster settings"),
        "tasks": (False, _LIST, "running tasks: task_definition, cpu, memory, launch_type, container_instance, group"),
    },
    "ecs_service": {
        "desired_count": (False, (int,), "desired tasks"),
        "running_count": (False, (int,), "running tasks"),
        "pending_count": (False, (int,), "pending tasks"),
        "launch_type": (False, _STR, "EC2, FARGATE or EXTERNAL"),
        "capacity_provider_strategy": (False, _LIST, "capacity-provider strategy"),
        "scheduling_strategy": (False, _STR, "REPLICA or DAEMON"),
        "task_definition": (False, _STR, "task definition"),
        "task_definition_revision": (False, _STR, "family:revision of the task definition"),
        "task_cpu": (False, (int,), "task CPU units (DescribeTaskDefinition; task level, else summed containers)"),
        "task_memory": (False, (int,), "task memory, MiB (task level, else summed containers)"),
        "requires_compatibilities": (False, _LIST, "EC2, FARGATE or EXTERNAL"),
        "task_definition_error": (False, _STR, "why the task definition could not be read"),
        "tasks_seen": (False, (int,), "running tasks of the service the collector listed"),
    },
    "emr_cluster": {
        "cluster_id": (False, _STR, "the j-... id"),
        "release_label": (False, _STR, "EMR release"),
        "instance_collection_type": (False, _STR, "INSTANCE_GROUP or INSTANCE_FLEET"),
        "instance_groups": (False, _LIST, "role, instance_type, market, requested, running, state per group"),
        "instance_fleets": (False, _LIST, "type, targets, provisioned capacity, instance types per fleet"),
        "idle": (False, (bool,), "state WAITING: up with no step running"),
        "ready_time": (False, _STR, "when it became ready"),
        "normalized_instance_hours": (False, _NUM, "normalised instance hours so far"),
        "auto_terminate": (False, (bool,), "terminates after its steps"),
        "auto_termination_idle_timeout": (False, _ANY, "auto-termination idle timeout, seconds (null: no policy)"),
        "managed_scaling_policy": (False, (dict,), "managed-scaling compute limits (null: no policy)"),
        "policy_errors": (False, _LIST, "policy reads that failed (the policy is then unknown)"),
        "steps": (False, _LIST, "newest steps (up to 50): name, state, created, start, end"),
        "steps_running": (False, (int,), "steps pending or running"),
        "last_step_end": (False, _STR, "when the last step ended"),
        "applications": (False, _LIST, "installed applications (Spark, Hive, ...)"),
    },
    "eks_cluster": {
        "version": (False, _STR, "Kubernetes version"),
        "platform_version": (False, _STR, "EKS platform version"),
    },
    "eks_nodegroup": {
        "capacity_type": (False, _STR, "ON_DEMAND or SPOT"),
        "min_size": (False, (int,), "minimum size"),
        "desired_size": (False, (int,), "desired size"),
        "max_size": (False, (int,), "maximum size"),
        "instance_types": (False, _LIST, "instance types"),
        "ami_type": (False, _STR, "AMI type"),
        "auto_scaling_groups": (False, _LIST, "its Auto Scaling groups"),
    },
    "k8s_node": {
        "cluster": (True, _STR, "cluster name (the clusters file)"),
        "nodepool": (False, _STR, "node group or node pool"),
        "allocatable_cpu_cores": (False, _NUM, "allocatable CPU, cores"),
        "allocatable_mem_bytes": (False, _NUM, "allocatable memory, bytes"),
        "taints": (False, _LIST, "the node's taints"),
    },
    "k8s_nodepool": {
        "cluster": (True, _STR, "cluster name"),
        "nodes": (False, (int,), "nodes in the pool that day"),
        "instance_types": (False, _LIST, "instance types of its nodes"),
    },
    "k8s_workload": {
        "cluster": (True, _STR, "cluster name"),
        "namespace": (True, _STR, "namespace"),
        "kind": (True, _STR, "deployment, statefulset, daemonset, cronjob, job, jobgroup or pod"),
        "replicas": (False, _NUM, "desired replicas"),
        "containers": (False, _LIST, "container names"),
        "first_container": (False, _STR, "the first container's name"),
    },
}


class AttributesError(ValueError):
    """A ``resources.attributes`` value that does not follow its kind's schema (``RESOURCE_ATTRIBUTES``)."""


def validate_attributes(resource_kind: str, resource_id: str, attributes: str | Mapping[str, Any] | None) -> dict:
    """The attributes of one resource as a dict, checked against ``RESOURCE_ATTRIBUTES[resource_kind]``.

    Raises :class:`AttributesError` naming the resource and the key: unknown key, required key missing,
    value of the wrong JSON type, or attributes that are not a JSON object.
    """
    where = f"resources row {resource_kind} {resource_id!r}"
    if attributes is None or attributes == "":
        value: Any = {}
    elif isinstance(attributes, str):
        try:
            value = json.loads(attributes)
        except json.JSONDecodeError as exc:
            raise AttributesError(
                f"{where}: attributes is not JSON ({exc}); the collector must write a JSON object"
            ) from None
    else:
        value = dict(attributes)
    if not isinstance(value, dict):
        raise AttributesError(f"{where}: attributes must be a JSON object, got {type(value).__name__}")
    spec = RESOURCE_ATTRIBUTES.get(resource_kind)
    if spec is None:
        raise AttributesError(
            f"{where}: unknown resource_kind {resource_kind!r}; add it to vocabulary.RESOURCE_KINDS and "
            "storage/schemas.py RESOURCE_ATTRIBUTES first"
        )
    for key in value:
        if key not in spec:
            raise AttributesError(
                f"{where}: attributes key {key!r} is not in the {resource_kind} schema "
                f"(storage/schemas.py RESOURCE_ATTRIBUTES: {', '.join(sorted(spec))}); "
                "rename it to the schema's key or add it to the schema and docs/warehouse.md"
            )
    for key, (required, types, _) in spec.items():
        if key not in value:
            if required:
                raise AttributesError(
                    f"{where}: attributes key {key!r} is required for {resource_kind} "
                    "(null when it does not apply); the collector must write it"
                )
            continue
        item = value[key]
        if item is not None and types is not None and not _is_json_type(item, types):
            raise AttributesError(
                f"{where}: attributes key {key!r} must be {' or '.join(t.__name__ for t in types)} or null, "
                f"got {item!r}"
            )
    return value


def _is_json_type(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool):
        return bool in types
    if isinstance(value, int) and float in types:
        return True
    return isinstance(value, types)


def validate_resources(table: pa.Table) -> None:
    """Check every row's ``attributes`` against its kind's schema (raises :class:`AttributesError`)."""
    if table.num_rows == 0:
        return
    columns = table.select(["resource_kind", "resource_id", "attributes"]).to_pydict()
    for kind, rid, attributes in zip(
        columns["resource_kind"], columns["resource_id"], columns["attributes"], strict=True
    ):
        validate_attributes(kind, rid, attributes)


def empty_table(schema: pa.Schema) -> pa.Table:
    """A zero-row table of ``schema``: what an empty account or day writes."""
    return schema.empty_table()


def _misfit(table: pa.Table, schema: pa.Schema, error: Exception) -> str:
    """The first column that does not cast to its type, with Arrow's reason (which names the value)."""
    for target in schema:
        column = table.column(target.name)
        try:
            column.cast(target.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            return f"column '{target.name}' ({column.type}, should be {target.type}): {exc}"
    return str(error)


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
        out = table.select(schema.names).cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise ValueError(f"table '{table_name}' does not fit its schema: {_misfit(table, schema, exc)}") from exc
    if schema.equals(RESOURCES):
        validate_resources(out)
    if schema.equals(UTILIZATION_5M):
        for key in ("account_id", "date", "resource_id", "ts"):
            if nulls := out.column(key).null_count:
                raise ValueError(
                    f"table '{table_name}' has {nulls} row(s) without {key} (a page cut off by the source?); "
                    f"every sample needs its account_id, date, resource_id and ts: collect that partition again"
                )
    check_amounts(out, table_name)
    return out


_PRICE = (0.0, MAX_PRICE_USD_PER_HOUR)
_COST = (0.0, MAX_COST_USD)
_SAVING = (-MAX_COST_USD, MAX_COST_USD)
_PLAN_AMOUNTS = {
    "monthly_cost_current_usd": _COST,
    "monthly_cost_proposed_usd": _COST,
    "monthly_savings_usd": _SAVING,
    "one_time_cost_usd": _COST,
}
#: Per table, the USD columns and their bounds: every value is NULL or a finite number within them.
AMOUNT_BOUNDS: dict[str, dict[str, tuple[float, float]]] = {
    "price_catalog": {"ondemand_usd_per_hour": _PRICE, "spot_usd_per_hour": _PRICE},
    "reserved_prices": {"effective_usd_per_hour": _PRICE, "ondemand_usd_per_hour": _PRICE},
    "recommendations": _PLAN_AMOUNTS,
    "portfolio_plan": _PLAN_AMOUNTS,
}
_ROW_KEYS = ("account_id", "date", "region", "instance_type", "resource_id", "option_name", "term_years")


class AmountError(ValueError):
    """A price or cost that is not a finite number within its documented bound (``AMOUNT_BOUNDS``)."""


def check_amounts(table: pa.Table, table_name: str) -> None:
    """Raise :class:`AmountError` naming the first row whose price or cost is NaN, infinite or out of bounds."""
    bounds = AMOUNT_BOUNDS.get(table_name, {})
    for column, (low, high) in bounds.items():
        if column not in table.column_names or table.num_rows == 0:
            continue
        values = table[column]
        bad = pc.or_kleene(
            pc.invert(pc.is_finite(values)), pc.or_kleene(pc.less(values, low), pc.greater(values, high))
        )
        hits = pc.indices_nonzero(pc.fill_null(bad, False))
        if len(hits):
            i = hits[0].as_py()
            row = {k: table[k][i].as_py() for k in _ROW_KEYS if k in table.column_names}
            where = ", ".join(f"{k}={v}" for k, v in row.items())
            raise AmountError(
                f"table '{table_name}' row {i} ({where}): {column} = {values[i].as_py()!r} is not a finite amount "
                f"from {low:g} to {high:g} USD (storage/schemas.py AMOUNT_BOUNDS); {len(hits)} row(s) like it. "
                "Fix the source of that value (the price files, or the recommender that wrote it)"
            )
