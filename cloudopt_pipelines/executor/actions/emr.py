"""EMR cluster plug-ins: auto-termination, managed scaling, and core/task instance-group counts or fleet capacities.

The cluster optimiser's ``emr_auto_termination`` (PutAutoTerminationPolicy), ``emr_managed_scaling``
(PutManagedScalingPolicy) and ``emr_resize`` (ModifyInstanceGroups, or ModifyInstanceFleet target capacities for
a cluster of instance fleets) rows (optimizers/clusters.py). Each reads
the cluster, its instance groups and the policy it sets live; the cluster's tags decide protection and
production. A policy already set since the plan, groups resized since the plan, or managed scaling that
already owns the counts leave the row as it is. Rollback restores the recorded policy (or removes it when there
was none) and the recorded group counts or fleet target capacities. A row written for groups on a cluster now of
fleets (or the reverse) is reported as not applicable with the reason.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cloudopt_pipelines.executor.actions.base import (
    ActionContext,
    ActionPlugin,
    LiveState,
    Proposal,
    RollbackRefused,
    Verification,
    tags_of,
)
from cloudopt_pipelines.executor.aws import ExecutorError
from cloudopt_pipelines.executor.model import ApiCall, PlannedAction

GONE_STATES = ("TERMINATING", "TERMINATED", "TERMINATED_WITH_ERRORS")
#: EMR changes instance groups and policies of a cluster in these states only
CHANGEABLE_STATES = ("WAITING", "RUNNING")
FLEETS = "INSTANCE_FLEET"


def cluster_id_of(action_or_record: PlannedAction | Mapping[str, Any]) -> str:
    """The ``j-...`` id: the row's ``proposed_config.cluster_id``, else the tail of the cluster ARN."""
    if isinstance(action_or_record, PlannedAction):
        proposed, resource_id = action_or_record.proposed_config, action_or_record.resource_id
    else:
        proposed = (action_or_record.get("plan_config") or {}).get("proposed") or {}
        resource_id = str(action_or_record["resource_id"])
    found = proposed.get("cluster_id") or resource_id.rsplit("/", 1)[-1]
    if not str(found).startswith("j-"):
        raise ExecutorError(f"no EMR cluster id (j-...) in plan row of {resource_id}: re-run the cluster optimiser")
    return str(found)


def read_cluster(ctx: ActionContext, cluster_id: str, policies: Sequence[str] = ()) -> LiveState:
    """The cluster, its instance groups, and the policies named (``auto_termination``, ``managed_scaling``)."""
    emr = ctx.client("emr")
    cluster = emr.describe_cluster(ClusterId=cluster_id)["Cluster"]
    state = str((cluster.get("Status") or {}).get("State") or "")
    collection = cluster.get("InstanceCollectionType") or "INSTANCE_GROUP"
    live: dict[str, Any] = {"state": state, "collection_type": collection}
    if state in GONE_STATES:
        return LiveState(exists=False, tags=tags_of(cluster.get("Tags")), state=live)
    if collection == FLEETS:
        live["instance_fleets"] = sorted(
            (
                {
                    "id": f["Id"],
                    "role": f.get("InstanceFleetType"),
                    "instance_type": next(
                        (t.get("InstanceType") for t in f.get("InstanceTypeSpecifications") or []), None
                    ),
                    "target_on_demand": int(f.get("TargetOnDemandCapacity") or 0),
                    "target_spot": int(f.get("TargetSpotCapacity") or 0),
                    "provisioned_on_demand": int(f.get("ProvisionedOnDemandCapacity") or 0),
                    "provisioned_spot": int(f.get("ProvisionedSpotCapacity") or 0),
                    "fleet_state": (f.get("Status") or {}).get("State"),
                }
                for page in emr.get_paginator("list_instance_fleets").paginate(ClusterId=cluster_id)
                for f in page.get("InstanceFleets", [])
            ),
            key=lambda f: (str(f["role"]), str(f["id"])),
        )
    else:
        groups = emr.list_instance_groups(ClusterId=cluster_id).get("InstanceGroups", [])
        live["instance_groups"] = sorted(
            (
                {
                    "id": g["Id"],
                    "name": g.get("Name"),
                    "role": g.get("InstanceGroupType"),
                    "instance_type": g.get("InstanceType"),
                    "market": g.get("Market") or "ON_DEMAND",
                    "count": int(g.get("RequestedInstanceCount") or 0),
                    "running": int(g.get("RunningInstanceCount") or 0),
                    "group_state": (g.get("Status") or {}).get("State"),
                }
                for g in groups
            ),
            key=lambda g: (str(g["role"]), str(g["id"])),
        )
    if "auto_termination" in policies:
        found = emr.get_auto_termination_policy(ClusterId=cluster_id).get("AutoTerminationPolicy") or {}
        live["auto_termination_idle_timeout"] = found.get("IdleTimeout")
    if "managed_scaling" in policies:
        found = emr.get_managed_scaling_policy(ClusterId=cluster_id).get("ManagedScalingPolicy") or {}
        live["managed_scaling"] = limits_of(found.get("ComputeLimits"))
    return LiveState(exists=True, tags=tags_of(cluster.get("Tags")), state=live)


def limits_of(raw: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Managed-scaling compute limits in one comparable form (None: no policy)."""
    if not raw:
        return None
    return {k: (v if k == "UnitType" else int(v)) for k, v in sorted(raw.items()) if v is not None}


def _group_key(g: Mapping[str, Any]) -> tuple[str, str, str]:
    return (str(g.get("role")), str(g.get("instance_type")), str(g.get("market") or "ON_DEMAND").upper())


def groups_changed(current: Mapping[str, Any], live: Mapping[str, Any]) -> list[str]:
    """Instance groups (role, type, market, count) of the plan's current_config that differ from the live ones."""
    planned = current.get("instance_groups")
    if live.get("collection_type") == FLEETS:
        now_groups = fleet_groups(live.get("instance_fleets") or [])
    else:
        now_groups = live.get("instance_groups")
    if not planned or now_groups is None:
        return []
    was = sorted((*_group_key(g), int(g.get("count") or 0)) for g in planned)
    now = sorted((*_group_key(g), int(g.get("count") or 0)) for g in now_groups)
    if was == now:
        return []
    return [f"instance_groups were {_text(was)} in the plan, are {_text(now)} now"]


def fleet_groups(fleets: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Live fleets as the optimiser writes them in ``instance_groups``: one group per fleet and market with
    units, of the fleet's first instance type (provisioned units, else the target)."""
    out = []
    for f in fleets:
        for market, key in (("ON_DEMAND", "on_demand"), ("SPOT", "spot")):
            units = f.get(f"provisioned_{key}") or f.get(f"target_{key}") or 0
            if units:
                out.append({"role": f["role"], "instance_type": f["instance_type"], "market": market, "count": units})
    return out


def _text(groups: Sequence[tuple[Any, ...]]) -> str:
    return ", ".join(f"{role} {n} x {itype} {market}" for role, itype, market, n in groups) or "none"


def _not_changeable(cluster_id: str, live: LiveState) -> Proposal | None:
    if not live.exists:
        return Proposal("not_applicable", f"EMR cluster {cluster_id} is {live.state.get('state') or 'gone'}")
    if live.state.get("state") not in CHANGEABLE_STATES:
        return Proposal(
            "not_applicable",
            f"EMR cluster {cluster_id} is {live.state.get('state')}; EMR changes a cluster that is "
            f"{' or '.join(CHANGEABLE_STATES)} only: retry at the next run",
        )
    return None


class _EmrPlugin(ActionPlugin):
    resource_kinds = ("emr_cluster",)
    #: the policies ``read`` gets
    policies: tuple[str, ...] = ()

    def read(self, ctx: ActionContext, action: PlannedAction) -> LiveState:
        return read_cluster(ctx, cluster_id_of(action), self.policies)

    def changes_since_plan(self, action: PlannedAction, observed: Mapping[str, Any]) -> list[str]:
        return groups_changed(action.current_config, observed)


class _PolicyPlugin(_EmrPlugin):
    """A cluster policy set from the row: applied with its Put call, verified by reading it back; rollback puts
    the recorded policy again, or removes it when there was none."""

    #: the live-state key of the policy, and the EMR calls that set and remove it
    state_key: str = ""
    put_api: str = ""
    remove_api: str = ""

    def put_params(self, cluster_id: str, policy: Any) -> dict[str, Any]:
        raise NotImplementedError

    def wanted(self, action: PlannedAction) -> Any:
        """The policy the row sets, in the live state's form."""
        raise NotImplementedError

    def describe(self, cluster_id: str, wanted: Any, now: Any) -> str:
        raise NotImplementedError

    def refusal(self, cluster_id: str, live: LiveState, wanted: Any) -> str | None:
        """Why the policy does not apply to this cluster as it is now (None: it does)."""
        return None

    def plan(
        self, ctx: ActionContext, action: PlannedAction, live: LiveState, history: Sequence[Mapping[str, Any]]
    ) -> Proposal:
        cid = cluster_id_of(action)
        stop = _not_changeable(cid, live)
        if stop:
            return stop
        wanted, now = self.wanted(action), live.state.get(self.state_key)
        before, target = {self.state_key: now}, {self.state_key: wanted}
        if now == wanted:
            return Proposal("done", f"already applied: {self.describe(cid, now, now)}", before=before, target=target)
        refused = self.refusal(cid, live, wanted)
        if refused:
            return Proposal("not_applicable", refused, before=before)
        call = ApiCall(f"elasticmapreduce:{self.put_api}", self.put_params(cid, wanted))
        return Proposal("ready", self.describe(cid, wanted, now), [call], before, target)

    def _call(self, ctx: ActionContext, call: ApiCall) -> None:
        emr = ctx.client("emr")
        operation = call.api.split(":", 1)[1]
        if operation == "PutAutoTerminationPolicy":
            emr.put_auto_termination_policy(**call.params)
        elif operation == "RemoveAutoTerminationPolicy":
            emr.remove_auto_termination_policy(**call.params)
        elif operation == "PutManagedScalingPolicy":
            emr.put_managed_scaling_policy(**call.params)
        elif operation == "RemoveManagedScalingPolicy":
            emr.remove_managed_scaling_policy(**call.params)
        else:
            raise ExecutorError(f"{call.api} is not an EMR policy call")

    def apply(self, ctx: ActionContext, action: PlannedAction, proposal: Proposal) -> dict[str, Any]:
        self._call(ctx, proposal.calls[0])
        return {}

    def verify(
        self, ctx: ActionContext, action: PlannedAction, proposal: Proposal, applied: Mapping[str, Any]
    ) -> Verification:
        live = read_cluster(ctx, cluster_id_of(action), self.policies)
        observed = {self.state_key: live.state.get(self.state_key)}
        ok = observed == proposal.target
        return Verification(ok, observed, "" if ok else f"expected {proposal.target}, EMR shows {observed}")

    def _restore(self, record: Mapping[str, Any]) -> ApiCall:
        cid, was = cluster_id_of(record), (record.get("state_before") or {}).get(self.state_key)
        if not was:
            return ApiCall(f"elasticmapreduce:{self.remove_api}", {"ClusterId": cid})
        return ApiCall(f"elasticmapreduce:{self.put_api}", self.put_params(cid, was))

    def rollback(self, ctx: ActionContext, record: Mapping[str, Any]) -> dict[str, Any]:
        cid, call = cluster_id_of(record), self._restore(record)
        live = read_cluster(ctx, cid, self.policies)
        if not live.exists:
            raise RollbackRefused(f"EMR cluster {cid} is {live.state.get('state')}; nothing to restore")
        self._call(ctx, call)
        return {self.state_key: read_cluster(ctx, cid, self.policies).state.get(self.state_key)}

    def rollback_plan(self, record: Mapping[str, Any]) -> list[ApiCall]:
        return [self._restore(record)]


class SetAutoTermination(_PolicyPlugin):
    """PutAutoTerminationPolicy with the row's idle timeout; rollback restores the policy before (or removes it)."""

    actions = ("emr_auto_termination",)
    policies = ("auto_termination",)
    state_key = "auto_termination_idle_timeout"
    put_api, remove_api = "PutAutoTerminationPolicy", "RemoveAutoTerminationPolicy"

    def put_params(self, cluster_id: str, policy: Any) -> dict[str, Any]:
        return {"ClusterId": cluster_id, "AutoTerminationPolicy": {"IdleTimeout": policy}}

    def wanted(self, action: PlannedAction) -> Any:
        wanted = action.proposed_config.get("idle_timeout_seconds")
        if not isinstance(wanted, int) or isinstance(wanted, bool) or wanted <= 0:
            raise ExecutorError(f"plan row {action.action_id} has no idle_timeout_seconds (a positive integer)")
        return wanted

    def describe(self, cluster_id: str, wanted: Any, now: Any) -> str:
        if wanted == now:
            return f"idle timeout of {cluster_id} is {now} s"
        return f"end {cluster_id} after {wanted} idle seconds (was {now or 'never'})"

    def changes_since_plan(self, action: PlannedAction, observed: Mapping[str, Any]) -> list[str]:
        planned, now = action.current_config.get(self.state_key), observed.get(self.state_key)
        if now is not None and planned != now:
            # None in the plan is no policy (or an unreadable one): a policy found now was set by someone else.
            return [f"{self.state_key} was {planned} in the plan, is {now} now"]
        return []


class SetManagedScaling(_PolicyPlugin):
    """PutManagedScalingPolicy with the row's compute limits, on a cluster with no policy at plan time; rollback
    removes it (or restores the recorded one)."""

    actions = ("emr_managed_scaling",)
    policies = ("managed_scaling",)
    state_key = "managed_scaling"
    put_api, remove_api = "PutManagedScalingPolicy", "RemoveManagedScalingPolicy"

    def put_params(self, cluster_id: str, policy: Any) -> dict[str, Any]:
        return {"ClusterId": cluster_id, "ManagedScalingPolicy": {"ComputeLimits": policy}}

    def wanted(self, action: PlannedAction) -> Any:
        cfg = action.proposed_config
        if cfg.get("min_units") is None or cfg.get("max_units") is None:
            raise ExecutorError(f"plan row {action.action_id} has no min_units/max_units for managed scaling")
        limits = {
            "UnitType": str(cfg.get("unit_type") or "Instances"),
            "MinimumCapacityUnits": cfg["min_units"],
            "MaximumCapacityUnits": cfg["max_units"],
            "MaximumCoreCapacityUnits": cfg.get("max_core_units"),
            "MaximumOnDemandCapacityUnits": cfg.get("max_on_demand_units"),
        }
        return limits_of(limits) or {}

    def describe(self, cluster_id: str, wanted: Any, now: Any) -> str:
        if wanted == now:
            return f"managed scaling of {cluster_id} is {now}"
        return (
            f"managed scaling of {cluster_id} between {wanted['MinimumCapacityUnits']} and "
            f"{wanted['MaximumCapacityUnits']} {wanted['UnitType'].lower()}"
        )

    def refusal(self, cluster_id: str, live: LiveState, wanted: Any) -> str | None:
        if live.state.get("collection_type") == FLEETS and wanted["UnitType"] != "InstanceFleetUnits":
            return (
                f"EMR cluster {cluster_id} uses instance fleets: managed scaling in {wanted['UnitType']} units does "
                "not apply to it (InstanceFleetUnits only); re-plan"
            )
        return None

    def changes_since_plan(self, action: PlannedAction, observed: Mapping[str, Any]) -> list[str]:
        changes = super().changes_since_plan(action, observed)
        planned = limits_of(action.current_config.get(self.state_key))
        if observed.get(self.state_key) is not None and observed.get(self.state_key) != planned:
            # The optimiser proposes bounds only where no policy was set: one now means someone else set it.
            changes.append(f"managed_scaling was {planned} in the plan, is {observed[self.state_key]} now")
        return changes


class ResizeInstanceGroups(_EmrPlugin):
    """ModifyInstanceGroups to the row's core and task counts (groups matched live by role, type and market), or
    ModifyInstanceFleet to its fleets' target capacities; rollback sets the recorded counts or capacities again.
    Task or core nodes to Spot add the row's new Spot groups first."""

    actions = ("emr_resize",)
    policies = ("managed_scaling",)
    rollback_on_failure = True

    def plan(
        self, ctx: ActionContext, action: PlannedAction, live: LiveState, history: Sequence[Mapping[str, Any]]
    ) -> Proposal:
        cid = cluster_id_of(action)
        stop = _not_changeable(cid, live)
        if stop:
            return stop
        if live.state.get("collection_type") == FLEETS:
            return self._plan_fleets(cid, action, live)
        groups = live.state.get("instance_groups") or []
        before = {
            "instance_groups": [{k: g[k] for k in ("id", "role", "instance_type", "market", "count")} for g in groups]
        }
        if live.state.get("managed_scaling"):
            return Proposal(
                "not_applicable",
                f"managed scaling owns the counts of {cid} ({live.state['managed_scaling']}): a resize would be "
                "undone; re-plan",
                before=before,
            )
        adds = _calls(action, "AddInstanceGroups")
        if adds:
            return self._plan_new_groups(cid, action, groups, adds)
        changes, target = [], {}
        for wanted in action.proposed_config.get("instance_groups") or []:
            if wanted.get("role") not in ("CORE", "TASK"):
                continue
            matches = [g for g in groups if _group_key(g) == _group_key(wanted)]
            if len(matches) != 1:
                return Proposal(
                    "not_applicable",
                    f"the {wanted.get('role')} group {wanted.get('instance_type')} {wanted.get('market')} of the plan "
                    f"matches {len(matches)} live group(s) of {cid}, and the row adds no group (no AddInstanceGroups "
                    "in its api_calls): not applied; re-plan",
                    before=before,
                )
            group, count = matches[0], int(wanted.get("count") or 0)
            target[group["id"]] = count
            if group["count"] != count:
                changes.append({"InstanceGroupId": group["id"], "InstanceCount": count})
        if not target:
            return Proposal("not_applicable", f"plan row {action.action_id} names no core or task group", before=before)
        goal = {"instance_group_counts": target}
        if not changes:
            return Proposal("done", f"already applied: groups of {cid} have {target}", before=before, target=goal)
        call = ApiCall("elasticmapreduce:ModifyInstanceGroups", {"ClusterId": cid, "InstanceGroups": changes})
        what = ", ".join(f"{c['InstanceGroupId']} -> {c['InstanceCount']}" for c in changes)
        return Proposal("ready", f"resize instance groups of {cid}: {what}", [call], before, goal)

    def _plan_fleets(self, cid: str, action: PlannedAction, live: LiveState) -> Proposal:
        """ModifyInstanceFleet to the row's target capacities, for the core and task fleets not there yet."""
        fleets = {f["id"]: f for f in live.state.get("instance_fleets") or []}
        before = {
            "instance_fleets": [
                {k: f[k] for k in ("id", "role", "instance_type", "target_on_demand", "target_spot")}
                for f in fleets.values()
            ]
        }
        if live.state.get("managed_scaling"):
            return Proposal(
                "not_applicable",
                f"managed scaling owns the capacities of {cid} ({live.state['managed_scaling']}): a resize would be "
                "undone; re-plan",
                before=before,
            )
        wanted = _calls(action, "ModifyInstanceFleet")
        if not wanted:
            return Proposal(
                "not_applicable",
                f"EMR cluster {cid} uses instance fleets and plan row {action.action_id} has no ModifyInstanceFleet "
                "call (a row written for instance groups): re-plan",
                before=before,
            )
        target: dict[str, list[int]] = {}
        calls = []
        for c in wanted:
            params = c.get("parameters") or {}
            change = params.get("InstanceFleet") or {}
            fleet = fleets.get(str(change.get("InstanceFleetId")))
            if params.get("ClusterId") != cid or fleet is None or fleet["role"] not in ("CORE", "TASK"):
                return Proposal(
                    "not_applicable",
                    f"fleet {change.get('InstanceFleetId')} of the row is not a live core or task fleet of {cid}: "
                    "re-plan",
                    before=before,
                )
            goal = [int(change.get("TargetOnDemandCapacity") or 0), int(change.get("TargetSpotCapacity") or 0)]
            target[fleet["id"]] = goal
            if [fleet["target_on_demand"], fleet["target_spot"]] != goal:
                calls.append(
                    ApiCall(
                        "elasticmapreduce:ModifyInstanceFleet",
                        {
                            "ClusterId": cid,
                            "InstanceFleet": {
                                "InstanceFleetId": fleet["id"],
                                "TargetOnDemandCapacity": goal[0],
                                "TargetSpotCapacity": goal[1],
                            },
                        },
                    )
                )
        if not calls:
            done = {"fleet_targets": target}
            return Proposal("done", f"already applied: fleets of {cid} have {target}", before=before, target=done)
        # Only the fleets changed are the action's (verified, and restored by a rollback).
        changed = {str(c.params["InstanceFleet"]["InstanceFleetId"]) for c in calls}
        goal_state = {"fleet_targets": {fid: goal for fid, goal in target.items() if fid in changed}}
        what = ", ".join(
            f"{c.params['InstanceFleet']['InstanceFleetId']} -> {c.params['InstanceFleet']['TargetOnDemandCapacity']} "
            f"on-demand + {c.params['InstanceFleet']['TargetSpotCapacity']} Spot units"
            for c in calls
        )
        return Proposal("ready", f"resize instance fleets of {cid}: {what}", calls, before, goal_state)

    def _plan_new_groups(
        self, cid: str, action: PlannedAction, groups: Sequence[Mapping[str, Any]], adds: Sequence[Mapping[str, Any]]
    ) -> Proposal:
        """Task (or core) nodes to Spot: the row's new Spot groups added first (``AddInstanceGroups``, those not
        there yet, found by name), then the on-demand group it replaces set to 0 (``ModifyInstanceGroups``)."""
        named = {g.get("name"): g for g in groups if g.get("name")}
        new = [dict(g) for c in adds for g in (c.get("parameters") or {}).get("InstanceGroups") or []]
        bad = [g for g in new if g.get("Market") != "SPOT" or g.get("InstanceRole") not in ("CORE", "TASK")]
        if bad or any((c.get("parameters") or {}).get("JobFlowId") != cid for c in adds):
            raise ExecutorError(
                f"plan row {action.action_id}: AddInstanceGroups must add Spot core or task groups to {cid}; re-plan"
            )
        names = {str(g.get("Name")) for g in new}
        old = [g for g in groups if g.get("name") not in names]
        before = {
            "instance_groups": [{k: g[k] for k in ("id", "role", "instance_type", "market", "count")} for g in old]
        }
        missing = [g for g in new if g.get("Name") not in named]
        drained = [
            {"InstanceGroupId": str(i["InstanceGroupId"]), "InstanceCount": int(i["InstanceCount"])}
            for c in _calls(action, "ModifyInstanceGroups")
            for i in (c.get("parameters") or {}).get("InstanceGroups") or []
        ]
        live_ids = {g["id"]: g for g in old}
        if any(d["InstanceGroupId"] not in live_ids for d in drained):
            return Proposal(
                "not_applicable",
                f"the on-demand group the row replaces is not a live group of {cid} any more: re-plan",
                before=before,
            )
        target = {
            "new_groups": {str(g["Name"]): int(g["InstanceCount"]) for g in new},
            "instance_group_counts": {d["InstanceGroupId"]: d["InstanceCount"] for d in drained},
        }
        calls = []
        if missing:
            calls.append(ApiCall("elasticmapreduce:AddInstanceGroups", {"JobFlowId": cid, "InstanceGroups": missing}))
        todo = [d for d in drained if live_ids[d["InstanceGroupId"]]["count"] != d["InstanceCount"]]
        if todo:
            calls.append(ApiCall("elasticmapreduce:ModifyInstanceGroups", {"ClusterId": cid, "InstanceGroups": todo}))
        if not calls:
            return Proposal(
                "done", f"already applied: Spot groups {sorted(names)} on {cid}", before=before, target=target
            )
        return Proposal(
            "ready",
            f"add Spot group(s) {', '.join(sorted(str(g['Name']) for g in missing)) or '(already there)'} to {cid}, "
            f"then {', '.join(d['InstanceGroupId'] for d in todo) or 'nothing'} to 0",
            calls,
            before,
            target,
        )

    def changes_since_plan(self, action: PlannedAction, observed: Mapping[str, Any]) -> list[str]:
        # Spot groups an interrupted earlier attempt added are the action's own, not a change since the plan.
        names = {
            str(g.get("Name")) for c in _calls(action, "AddInstanceGroups") for g in c["parameters"]["InstanceGroups"]
        }
        groups = [g for g in observed.get("instance_groups") or [] if g.get("name") not in names]
        return groups_changed(action.current_config, {**observed, "instance_groups": groups})

    def apply(self, ctx: ActionContext, action: PlannedAction, proposal: Proposal) -> dict[str, Any]:
        emr = ctx.client("emr")
        for call in proposal.calls:
            if call.api.endswith("AddInstanceGroups"):
                emr.add_instance_groups(**call.params)
            elif call.api.endswith("ModifyInstanceFleet"):
                emr.modify_instance_fleet(**call.params)
            else:
                emr.modify_instance_groups(**call.params)
        wanted = proposal.target.get("new_groups") or {}
        if not wanted:
            return {}
        live = read_cluster(ctx, cluster_id_of(action)).state.get("instance_groups") or []
        return {"added_groups": {g["name"]: g["id"] for g in live if g.get("name") in wanted}}

    def verify(
        self, ctx: ActionContext, action: PlannedAction, proposal: Proposal, applied: Mapping[str, Any]
    ) -> Verification:
        live = read_cluster(ctx, cluster_id_of(action))
        if "fleet_targets" in proposal.target:
            fleets = {f["id"]: f for f in live.state.get("instance_fleets") or []}
            now = {
                fid: [fleets[fid]["target_on_demand"], fleets[fid]["target_spot"]]
                for fid in proposal.target["fleet_targets"]
                if fid in fleets
            }
            states = {fid: fleets[fid]["fleet_state"] for fid in now}
            ok = now == proposal.target["fleet_targets"] and not any(
                v in ("SUSPENDED", "TERMINATED") for v in states.values()
            )
            observed = {"fleet_targets": now, "fleet_states": states}
            return Verification(ok, observed, "" if ok else f"expected {proposal.target}, EMR shows {observed}")
        groups = {g["id"]: g for g in live.state.get("instance_groups") or []}
        if proposal.target.get("new_groups"):
            by_name = {g.get("name"): g for g in groups.values()}
            new = {n: by_name[n]["count"] for n in proposal.target["new_groups"] if n in by_name}
            if new != proposal.target["new_groups"]:
                return Verification(False, {"new_groups": new}, f"expected Spot groups {proposal.target['new_groups']}")
        counts = {gid: groups[gid]["count"] for gid in proposal.target["instance_group_counts"] if gid in groups}
        observed = {
            "instance_group_counts": counts,
            "group_states": {gid: groups[gid]["group_state"] for gid in counts},
        }
        if proposal.target.get("new_groups"):
            observed["new_groups"] = dict(proposal.target["new_groups"])
        bad = [gid for gid, s in observed["group_states"].items() if s in ("ARRESTED", "SUSPENDED", "TERMINATED")]
        ok = counts == proposal.target["instance_group_counts"] and not bad
        return Verification(ok, observed, "" if ok else f"expected {proposal.target}, EMR shows {observed}")

    def restore_refusal(
        self, record: Mapping[str, Any], current: Mapping[str, Any], proposed: Mapping[str, Any]
    ) -> str | None:
        state_before = record.get("state_before") or {}
        if "instance_fleets" in state_before:
            before = fleet_groups(
                [
                    {**f, "provisioned_on_demand": f["target_on_demand"], "provisioned_spot": f["target_spot"]}
                    for f in state_before["instance_fleets"]
                ]
            )
        else:
            before = state_before.get("instance_groups") or []
        planned = current.get("instance_groups") or []
        held = sorted((*_group_key(g), int(g.get("count") or 0)) for g in planned)
        wanted = sorted((*_group_key(g), int(g.get("count") or 0)) for g in before)
        if not planned or held == wanted:
            return None
        return (
            f"the audit record of {record.get('action_id')} would restore {record.get('resource_id')} to groups "
            f"{_text(wanted)}, which the plan never held ({_text(held)}): refusing; check the audit file and the "
            "cluster by hand"
        )

    def _restore(self, record: Mapping[str, Any], live: Mapping[str, Any] | None) -> ApiCall | None:
        before = (record.get("state_before") or {}).get("instance_groups") or []
        touched = ((record.get("state_after") or {}).get("instance_group_counts") or {}).keys()
        now = {g["id"]: g["count"] for g in (live or {}).get("instance_groups") or []}
        changes = [
            {"InstanceGroupId": g["id"], "InstanceCount": g["count"]}
            for g in before
            if g.get("role") in ("CORE", "TASK")
            and (not touched or g["id"] in touched)
            and (live is None or now.get(g["id"]) != g["count"])
        ]
        added = list(((record.get("state_after") or {}).get("added_groups") or {}).values())
        if not added and live is not None:  # an automatic rollback: the groups the row adds, found by name
            proposed = (record.get("plan_config") or {}).get("proposed") or {}
            names = {
                g.get("Name")
                for c in proposed.get("api_calls") or []
                if c.get("operation") == "AddInstanceGroups"
                for g in (c.get("parameters") or {}).get("InstanceGroups") or []
            }
            added = [g["id"] for g in live.get("instance_groups") or [] if g.get("name") in names]
        # EMR keeps a task group once added: emptied, not removed.
        changes += [{"InstanceGroupId": gid, "InstanceCount": 0} for gid in added if live is None or now.get(gid) != 0]
        if not changes:
            return None
        return ApiCall(
            "elasticmapreduce:ModifyInstanceGroups", {"ClusterId": cluster_id_of(record), "InstanceGroups": changes}
        )

    def _restore_fleets(self, record: Mapping[str, Any], live: Mapping[str, Any] | None) -> list[ApiCall]:
        touched = ((record.get("state_after") or {}).get("fleet_targets") or {}).keys()
        now = {f["id"]: [f["target_on_demand"], f["target_spot"]] for f in (live or {}).get("instance_fleets") or []}
        return [
            ApiCall(
                "elasticmapreduce:ModifyInstanceFleet",
                {
                    "ClusterId": cluster_id_of(record),
                    "InstanceFleet": {
                        "InstanceFleetId": f["id"],
                        "TargetOnDemandCapacity": f["target_on_demand"],
                        "TargetSpotCapacity": f["target_spot"],
                    },
                },
            )
            for f in (record.get("state_before") or {}).get("instance_fleets") or []
            if f.get("role") in ("CORE", "TASK")
            and (not touched or f["id"] in touched)
            and (live is None or now.get(f["id"]) != [f["target_on_demand"], f["target_spot"]])
        ]

    def rollback(self, ctx: ActionContext, record: Mapping[str, Any]) -> dict[str, Any]:
        cid = cluster_id_of(record)
        live = read_cluster(ctx, cid)
        if not live.exists:
            raise RollbackRefused(f"EMR cluster {cid} is {live.state.get('state')}; nothing to resize back")
        if "instance_fleets" in (record.get("state_before") or {}):
            emr = ctx.client("emr")
            for fleet_call in self._restore_fleets(record, live.state):
                emr.modify_instance_fleet(**fleet_call.params)
            after = read_cluster(ctx, cid).state.get("instance_fleets") or []
            return {"fleet_targets": {f["id"]: [f["target_on_demand"], f["target_spot"]] for f in after}}
        call = self._restore(record, live.state)
        if call is not None:
            emr = ctx.client("emr")
            emr.modify_instance_groups(**call.params)
        after = read_cluster(ctx, cid).state.get("instance_groups") or []
        return {"instance_group_counts": {g["id"]: g["count"] for g in after if g.get("role") in ("CORE", "TASK")}}

    def rollback_plan(self, record: Mapping[str, Any]) -> list[ApiCall]:
        if "instance_fleets" in (record.get("state_before") or {}):
            return self._restore_fleets(record, None)
        call = self._restore(record, None)
        return [call] if call else []


def _calls(action: PlannedAction, operation: str) -> list[Mapping[str, Any]]:
    return [c for c in action.proposed_config.get("api_calls") or [] if c.get("operation") == operation]
