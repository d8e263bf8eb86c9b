"""ECS service plug-in: desired count, task size (a new task definition revision) and capacity-provider strategy.

The cluster optimiser's ``ecs_update_service`` rows (optimizers/clusters.py) change one of three things of a
service: its desired count (``scale_in``), its task CPU and memory (``resize_tasks``: a new revision of the
current task definition with only ``cpu`` and ``memory`` changed, then ``UpdateService`` onto it) or its
capacity-provider strategy (``fargate_spot``). The plug-in changes exactly the keys the row's
``proposed_config`` changes against its ``current_config``, from the service as ECS shows it now: nothing the
plan did not ask for, nothing twice. The service's tags and its cluster's are read live; the stricter of the
two decides protection and production. Rollback puts back the recorded task definition revision, desired
count and strategy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from botocore.exceptions import ClientError

from cloudopt_pipelines.executor.actions.base import (
    ActionContext,
    ActionPlugin,
    LiveState,
    Proposal,
    RollbackRefused,
    Verification,
    error_code,
)
from cloudopt_pipelines.executor.aws import ExecutorError
from cloudopt_pipelines.executor.drift import _same
from cloudopt_pipelines.executor.model import ApiCall, PlannedAction
from cloudopt_pipelines.executor.policy import ExecutorPolicy, is_protected_value

ACTION_ID_TAG = "cloudopt:action-id"
#: the keys of a service row the executor changes (and compares with the plan's current_config)
SERVICE_KEYS = ("desired_count", "cpu", "memory", "capacity_provider_strategy")
#: what RegisterTaskDefinition accepts of what DescribeTaskDefinition returns (the rest is ECS's bookkeeping)
REGISTER_KEYS = (
    "family",
    "taskRoleArn",
    "executionRoleArn",
    "networkMode",
    "containerDefinitions",
    "volumes",
    "placementConstraints",
    "requiresCompatibilities",
    "pidMode",
    "ipcMode",
    "proxyConfiguration",
    "inferenceAccelerators",
    "ephemeralStorage",
    "runtimePlatform",
)


def _ecs_tags(raw: Sequence[Mapping[str, Any]] | None) -> dict[str, str]:
    return {str(t["key"]): str(t.get("value", "")) for t in raw or [] if "key" in t}


def stricter_tags(service: Mapping[str, str], cluster: Mapping[str, str], policy: ExecutorPolicy) -> dict[str, str]:
    """The service's tags, with its cluster's where the service has none of that key or the cluster's value
    protects or marks production: a protected or production cluster protects every service on it."""
    merged = dict(service)
    for key, value in cluster.items():
        mine = merged.get(key)
        stronger = is_protected_value(value) or policy.environment({key: value})[1]
        if mine is None or (stronger and not (is_protected_value(mine) or policy.environment({key: mine})[1])):
            merged[key] = value
    return merged


def strategy_of(raw: Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]] | None:
    """A capacity-provider strategy in one comparable form (base and weight as ints, sorted); None when empty."""
    if not raw:
        return None
    return sorted(
        (
            {
                "capacityProvider": str(s["capacityProvider"]),
                "base": int(s.get("base") or 0),
                "weight": int(s.get("weight") or 0),
            }
            for s in raw
        ),
        key=lambda s: s["capacityProvider"],
    )


def family_revision(arn_or_name: str | None) -> str | None:
    """``family:revision`` of a task definition ARN (or the text itself when it is already that)."""
    return arn_or_name.rsplit("/", 1)[-1] if arn_or_name else None


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def service_of(action: PlannedAction) -> tuple[str, str]:
    """(cluster, service name) of a row: its proposed_config, else its service ARN (``service/<cluster>/<name>``)."""
    cfg = action.proposed_config
    cluster, service = cfg.get("cluster"), cfg.get("service")
    parts = action.resource_id.split(":service/", 1)[-1].split("/")
    if not service:
        service = parts[-1]
    if not cluster and len(parts) == 2:
        cluster = parts[0]
    if not cluster or not service:
        raise ExecutorError(
            f"plan row {action.action_id} names no ECS cluster and service (proposed_config cluster/service, or a "
            f"service ARN as resource_id; got {action.resource_id}): re-run the cluster optimiser"
        )
    return str(cluster), str(service)


def deployment_settled(ctx: ActionContext, cluster: str, service: str) -> bool:
    """Whether the service's rollout is over: its primary deployment ``COMPLETED`` (the older ones drained) or
    ``FAILED``; without a rollout state (an external deployment controller), one deployment running the desired
    count. A service gone is settled (verification then says so)."""
    found = ctx.client("ecs").describe_services(cluster=cluster, services=[service]).get("services") or []
    svc = next((s for s in found if s.get("status") != "INACTIVE"), None)
    if svc is None:
        return True
    deployments = svc.get("deployments") or []
    primary = next((d for d in deployments if d.get("status") == "PRIMARY"), None)
    if primary is None:
        return True
    state = primary.get("rolloutState")
    if state == "FAILED":
        return True
    if state is not None:
        return state == "COMPLETED" and len(deployments) == 1
    return len(deployments) == 1 and primary.get("runningCount") == primary.get("desiredCount")


def read_service(ctx: ActionContext, cluster: str, service: str) -> LiveState:
    ecs = ctx.client("ecs")
    try:
        found = ecs.describe_services(cluster=cluster, services=[service], include=["TAGS"])
    except ClientError as exc:
        if error_code(exc) in ("ClusterNotFoundException", "ServiceNotFoundException"):
            return LiveState(exists=False)
        raise
    services = [s for s in found.get("services", []) if s.get("status") != "INACTIVE"]
    if not services:
        return LiveState(exists=False)
    svc = services[0]
    clusters = ecs.describe_clusters(clusters=[cluster], include=["TAGS"]).get("clusters", [])
    cluster_tags = _ecs_tags(clusters[0].get("tags")) if clusters else {}
    arn = str(svc.get("taskDefinition") or "")
    definition = ecs.describe_task_definition(taskDefinition=arn)["taskDefinition"] if arn else {}
    primary = next((d for d in svc.get("deployments") or [] if d.get("status") == "PRIMARY"), {})
    return LiveState(
        exists=True,
        tags=stricter_tags(_ecs_tags(svc.get("tags")), cluster_tags, ctx.policy),
        state={
            "desired_count": svc.get("desiredCount"),
            "task_definition": family_revision(arn),
            "task_definition_arn": arn,
            "cpu": _int(definition.get("cpu")),
            "memory": _int(definition.get("memory")),
            "capacity_provider_strategy": strategy_of(svc.get("capacityProviderStrategy")),
            "launch_type": svc.get("launchType"),
            "status": svc.get("status"),
            "rollout_state": primary.get("rolloutState"),
            "primary_task_definition": family_revision(primary.get("taskDefinition")),
        },
    )


def _planned(action: PlannedAction) -> dict[str, Any]:
    """The keys the row changes: proposed values that differ from its current ones."""
    cur, new = action.current_config, action.proposed_config
    wanted: dict[str, Any] = {}
    for key in SERVICE_KEYS:
        if key not in new:
            continue
        a, b = (
            (strategy_of(cur.get(key)), strategy_of(new.get(key)))
            if key.endswith("strategy")
            else (cur.get(key), new.get(key))
        )
        if key != "capacity_provider_strategy" and b is None:
            continue
        if a != b:
            wanted[key] = b if key.endswith("strategy") else int(b)
    return wanted


def _differs(live: Mapping[str, Any], wanted: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in wanted.items() if live.get(k) != v}


BEFORE_KEYS = (
    "desired_count",
    "task_definition",
    "task_definition_arn",
    "cpu",
    "memory",
    "capacity_provider_strategy",
    "launch_type",
)


class UpdateEcsService(ActionPlugin):
    """Desired count, task size (RegisterTaskDefinition, then UpdateService onto it) and capacity-provider
    strategy of one ECS service; the revision, count and strategy before are recorded and restored on rollback."""

    actions = ("ecs_update_service",)
    resource_kinds = ("ecs_service",)
    rollback_on_failure = True

    def read(self, ctx: ActionContext, action: PlannedAction) -> LiveState:
        return read_service(ctx, *service_of(action))

    def plan(
        self, ctx: ActionContext, action: PlannedAction, live: LiveState, history: Sequence[Mapping[str, Any]]
    ) -> Proposal:
        cluster, service = service_of(action)
        if not live.exists:
            return Proposal(
                "not_applicable", f"service {service} of cluster {cluster} no longer exists (or is INACTIVE)"
            )
        state = live.state
        before = {k: state.get(k) for k in BEFORE_KEYS}
        wanted = _planned(action)
        if not wanted:
            return Proposal(
                "not_applicable", f"plan row {action.action_id} changes nothing of service {service}", before=before
            )
        todo = _differs(state, wanted)
        target = {**{k: state.get(k) for k in SERVICE_KEYS}, **wanted}
        if not todo:
            return Proposal("done", f"already applied: service {service} has {wanted}", before=before, target=target)
        calls: list[ApiCall] = []
        update: dict[str, Any] = {"cluster": cluster, "service": service}
        if "cpu" in todo or "memory" in todo:
            cpu, memory = target["cpu"], target["memory"]
            reuse = self._earlier_revision(ctx, action, state, cpu, memory)
            if reuse:
                update["taskDefinition"] = reuse
            else:
                register, refusal = self._register_call(ctx, action, state, cpu, memory)
                if refusal:
                    return Proposal("not_applicable", refusal, before=before)
                calls.append(register)
                update["taskDefinition"] = f"{register.params['family']}"  # the revision it registers, set in apply
        if "desired_count" in todo:
            update["desiredCount"] = todo["desired_count"]
        if "capacity_provider_strategy" in todo:
            strategy = todo["capacity_provider_strategy"]
            if not strategy:
                return Proposal(
                    "not_applicable",
                    f"plan row {action.action_id} removes the capacity-provider strategy of {service}: not applied "
                    "(ECS would fall back to the cluster's default strategy, which the plan did not price)",
                    before=before,
                )
            update["capacityProviderStrategy"] = strategy
            update["forceNewDeployment"] = True  # a new strategy takes effect with a new deployment only
        calls.append(ApiCall("ecs:UpdateService", update))
        what = ", ".join(f"{k} {state.get(k)} -> {v}" for k, v in todo.items())
        return Proposal(
            "ready", f"update service {service} of {cluster.rsplit('/', 1)[-1]}: {what}", calls, before, target
        )

    def _earlier_revision(
        self, ctx: ActionContext, action: PlannedAction, state: Mapping[str, Any], cpu: int, memory: int
    ) -> str | None:
        """The revision an interrupted earlier attempt of this action registered (tagged with its id), if it is
        the family's latest and has the target size: reused, never registered twice."""
        family = str(state.get("task_definition") or "").split(":", 1)[0]
        if not family:
            return None
        ecs = ctx.client("ecs")
        latest = ecs.describe_task_definition(taskDefinition=family, include=["TAGS"])
        definition, tags = latest.get("taskDefinition") or {}, _ecs_tags(latest.get("tags"))
        if (
            tags.get(ACTION_ID_TAG) == action.action_id
            and _int(definition.get("cpu")) == cpu
            and _int(definition.get("memory")) == memory
            and definition.get("taskDefinitionArn") != state.get("task_definition_arn")
        ):
            return str(definition["taskDefinitionArn"])
        return None

    def _register_call(
        self, ctx: ActionContext, action: PlannedAction, state: Mapping[str, Any], cpu: int, memory: int
    ) -> tuple[ApiCall, str | None]:
        ecs = ctx.client("ecs")
        found = ecs.describe_task_definition(taskDefinition=str(state["task_definition_arn"]), include=["TAGS"])
        definition = found["taskDefinition"]
        containers = definition.get("containerDefinitions") or []
        # Container reservations above the new task size would make ECS refuse the revision (or starve a container).
        reserved_cpu = sum(int(c.get("cpu") or 0) for c in containers)
        reserved_mem = sum(int(c.get("memory") or c.get("memoryReservation") or 0) for c in containers)
        if reserved_cpu > cpu or reserved_mem > memory:
            return ApiCall("ecs:RegisterTaskDefinition", {}), (
                f"the containers of {state.get('task_definition')} reserve {reserved_cpu} CPU units / "
                f"{reserved_mem} MiB, more than the new task size {cpu} / {memory}: not applied. Fix: lower the "
                "container reservations in "
                "the task definition by hand, or re-plan"
            )
        params = {k: definition[k] for k in REGISTER_KEYS if definition.get(k) not in (None, [], {})}
        params["cpu"], params["memory"] = str(cpu), str(memory)
        tags = [t for t in found.get("tags") or [] if t.get("key") != ACTION_ID_TAG]
        params["tags"] = [*tags, {"key": ACTION_ID_TAG, "value": action.action_id}]
        return ApiCall("ecs:RegisterTaskDefinition", params), None

    def apply(self, ctx: ActionContext, action: PlannedAction, proposal: Proposal) -> dict[str, Any]:
        ecs = ctx.client("ecs")
        registered = None
        for call in proposal.calls:
            if call.api == "ecs:RegisterTaskDefinition":
                registered = ecs.register_task_definition(**call.params)["taskDefinition"]["taskDefinitionArn"]
            elif call.api == "ecs:UpdateService":
                params = dict(call.params)
                if registered and "taskDefinition" in params:
                    params["taskDefinition"] = registered
                ecs.update_service(**params)
        return {"registered_task_definition": registered} if registered else {}

    def verify(
        self, ctx: ActionContext, action: PlannedAction, proposal: Proposal, applied: Mapping[str, Any]
    ) -> Verification:
        cluster, service = service_of(action)
        try:
            ctx.wait_for(
                f"the deployment of ECS service {service} on {cluster} to settle (rolloutState COMPLETED or FAILED)",
                lambda: deployment_settled(ctx, cluster, service),
            )
        except ExecutorError as exc:
            return Verification(False, {"rollout_state": "IN_PROGRESS"}, str(exc))
        live = self.read(ctx, action)
        keys = (*SERVICE_KEYS, "task_definition", "task_definition_arn", "launch_type", "primary_task_definition")
        observed = {k: live.state.get(k) for k in (*keys, "rollout_state")}
        wrong = {k: v for k, v in proposal.target.items() if observed.get(k) != v}
        if live.state.get("rollout_state") == "FAILED":
            wrong["rollout_state"] = "FAILED"
        if not live.exists or wrong:
            return Verification(False, observed, f"expected {proposal.target}, ECS shows {observed}")
        return Verification(True, observed)

    def changes_since_plan(self, action: PlannedAction, observed: Mapping[str, Any]) -> list[str]:
        cur, changes = action.current_config, []
        for key in (*SERVICE_KEYS, "task_definition"):
            if key not in cur:
                continue
            planned, live = cur.get(key), observed.get(key)
            if key == "capacity_provider_strategy":
                planned, live = strategy_of(planned), strategy_of(live)
                same = planned == live
            elif key == "task_definition":
                planned, live = family_revision(planned), family_revision(live)
                same = planned is None or planned == live
            else:
                same = planned is None or (live is not None and _same(planned, live))
            if not same:
                changes.append(f"{key} was {planned} in the plan, is {live} now")
        return changes

    def restore_refusal(
        self, record: Mapping[str, Any], current: Mapping[str, Any], proposed: Mapping[str, Any]
    ) -> str | None:
        before = record.get("state_before") or {}
        wrong = []
        if current.get("task_definition") and family_revision(before.get("task_definition")) != family_revision(
            current.get("task_definition")
        ):
            wrong.append(
                f"task definition {before.get('task_definition')} (the plan held {current.get('task_definition')})"
            )
        if current.get("desired_count") is not None and _int(before.get("desired_count")) != _int(
            current.get("desired_count")
        ):
            wrong.append(f"desired count {before.get('desired_count')} (the plan held {current.get('desired_count')})")
        if not wrong:
            return None
        return (
            f"the audit record of {record.get('action_id')} would restore {record.get('resource_id')} to "
            f"{' and '.join(wrong)}: refusing; check the audit file and the service by hand"
        )

    def _rollback_update(self, record: Mapping[str, Any], live: Mapping[str, Any]) -> dict[str, Any] | None:
        before = record.get("state_before") or {}
        cluster = (record.get("plan_config") or {}).get("proposed", {}).get("cluster")
        parts = str(record["resource_id"]).split(":service/", 1)[-1].split("/")
        update: dict[str, Any] = {"cluster": cluster or parts[0], "service": parts[-1]}
        if before.get("task_definition_arn") and live.get("task_definition_arn") != before["task_definition_arn"]:
            update["taskDefinition"] = before["task_definition_arn"]
        if before.get("desired_count") is not None and live.get("desired_count") != before["desired_count"]:
            update["desiredCount"] = before["desired_count"]
        was, now = (
            strategy_of(before.get("capacity_provider_strategy")),
            strategy_of(live.get("capacity_provider_strategy")),
        )
        if was != now:
            if was is None and before.get("launch_type") != "FARGATE":
                raise RollbackRefused(
                    f"service {record['resource_id']} ran on launch type {before.get('launch_type')} before; "
                    "ECS cannot move a service from a capacity-provider strategy back to a launch type: "
                    "recreate it by hand"
                )
            # ECS cannot go back to a launch type: FARGATE alone, weight 1, is the same capacity at the same price.
            update["capacityProviderStrategy"] = was or [{"capacityProvider": "FARGATE", "base": 0, "weight": 1}]
            update["forceNewDeployment"] = True
        return update if len(update) > 2 else None

    def rollback(self, ctx: ActionContext, record: Mapping[str, Any]) -> dict[str, Any]:
        parts = str(record["resource_id"]).split(":service/", 1)[-1].split("/")
        cluster = (record.get("plan_config") or {}).get("proposed", {}).get("cluster") or parts[0]
        live = read_service(ctx, cluster, parts[-1])
        if not live.exists:
            raise RollbackRefused(f"service {record['resource_id']} no longer exists; nothing to restore")
        update = self._rollback_update(record, live.state)
        if update:
            ecs = ctx.client("ecs")
            ecs.update_service(**update)
        after = read_service(ctx, cluster, parts[-1]).state
        return {k: after.get(k) for k in BEFORE_KEYS}

    def rollback_plan(self, record: Mapping[str, Any]) -> list[ApiCall]:
        after = record.get("state_after") or {}
        try:
            update = self._rollback_update(record, after)
        except RollbackRefused:
            return []
        return [ApiCall("ecs:UpdateService", update)] if update else []


class ClusterNodesAdvice(ActionPlugin):
    """An ECS or custom cluster's node type and count is advice: new nodes first, tasks drained, old nodes
    stopped is a change of many resources (Auto Scaling groups, capacity providers) that a person runs."""

    actions = ("resize_cluster",)
    resource_kinds = ("ecs_cluster", "custom_cluster")
    advisory = True

    def what(self, action: PlannedAction) -> str:
        p = action.proposed_config
        return (
            f"cluster {action.resource_id}: move to {p.get('count')} x {p.get('instance_type')} by hand or in its "
            "Auto Scaling group / capacity provider"
        )

    def advice(self, action: PlannedAction) -> str:
        calls = ", ".join(str(c.get("operation")) for c in action.proposed_config.get("api_calls") or []) or "none"
        return f"{self.what(action)}, from the row's api_calls ({calls})"

    def read(self, ctx: ActionContext, action: PlannedAction) -> LiveState:
        return LiveState(exists=False)

    def plan(
        self, ctx: ActionContext, action: PlannedAction, live: LiveState, history: Sequence[Mapping[str, Any]]
    ) -> Proposal:
        return Proposal("not_applicable", self.advice(action))

    def apply(self, ctx: ActionContext, action: PlannedAction, proposal: Proposal) -> dict[str, Any]:
        raise ExecutorError("cluster node rows are advisory and never applied")

    def verify(
        self, ctx: ActionContext, action: PlannedAction, proposal: Proposal, applied: Mapping[str, Any]
    ) -> Verification:
        return Verification(False, {}, "advisory")

    def rollback(self, ctx: ActionContext, record: Mapping[str, Any]) -> dict[str, Any]:
        raise RollbackRefused("cluster node rows are advisory: nothing was applied")


class BatchScheduleAdvice(ClusterNodesAdvice):
    """Batch work moved to another cluster's spare hours or to its own hours of headroom (``schedule_batch``) is
    advice: steps submitted elsewhere, a schedule moved (EventBridge rules, cron, workflow tools) and nodes or a
    cluster ended are a change of workflows that a person makes."""

    actions = ("schedule_batch",)
    resource_kinds = ("emr_cluster", "ecs_cluster", "custom_cluster")

    def what(self, action: PlannedAction) -> str:
        p = action.proposed_config
        if p.get("host_cluster_id"):
            return (
                f"batch work of {action.resource_id}: run it on {p.get('host_cluster_id')} {p.get('window')} by hand "
                "or in its scheduler"
            )
        return (
            f"batch work of {action.resource_id}: start it {p.get('proposed_window')} instead of {p.get('window')} "
            f"in its scheduler, then {p.get('count')} node(s) carry the peak"
        )
