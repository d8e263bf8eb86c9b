"""EC2 instance plug-ins: resize, stop, terminate (snapshots first), schedules, resize + schedule."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, time
from typing import Any
from zoneinfo import ZoneInfo

from botocore.exceptions import ClientError

from cloudopt_pipelines.executor.actions.base import (
    ActionContext,
    ActionPlugin,
    LiveState,
    Proposal,
    RollbackRefused,
    Verification,
    error_code,
    tags_of,
)
from cloudopt_pipelines.executor.aws import ExecutorError
from cloudopt_pipelines.executor.model import ApiCall, PlannedAction

ACTION_ID_TAG = "cloudopt:action-id"
SOURCE_TAG = "cloudopt:source-volume"
GONE_STATES = ("shutting-down", "terminated")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def read_instance(ctx: ActionContext, instance_id: str) -> LiveState:
    ec2 = ctx.client("ec2")
    try:
        reservations = ec2.describe_instances(InstanceIds=[instance_id]).get("Reservations", [])
    except ClientError as exc:
        if error_code(exc) == "InvalidInstanceID.NotFound":
            return LiveState(exists=False)
        raise
    instances = [i for r in reservations for i in r.get("Instances", [])]
    if not instances:
        return LiveState(exists=False)
    inst = instances[0]
    state = str(inst.get("State", {}).get("Name", ""))
    return LiveState(
        exists=state != "terminated",
        tags=tags_of(inst.get("Tags")),
        state={
            "instance_type": inst.get("InstanceType"),
            "state": state,
            "architecture": inst.get("Architecture"),
            "volumes": [
                b["Ebs"]["VolumeId"] for b in inst.get("BlockDeviceMappings", []) if b.get("Ebs", {}).get("VolumeId")
            ],
        },
    )


def _instance_state(ctx: ActionContext, instance_id: str) -> dict[str, Any]:
    return read_instance(ctx, instance_id).state


def _wait_state(ctx: ActionContext, instance_id: str, wanted: str) -> None:
    ctx.wait_for(
        f"instance {instance_id} to be {wanted}", lambda: _instance_state(ctx, instance_id).get("state") == wanted
    )


def _stop(ctx: ActionContext, instance_id: str, params: Mapping[str, Any]) -> None:
    ec2 = ctx.client("ec2")
    ec2.stop_instances(**params)
    _wait_state(ctx, instance_id, "stopped")


def _start(ctx: ActionContext, instance_id: str, params: Mapping[str, Any]) -> None:
    ec2 = ctx.client("ec2")
    ec2.start_instances(**params)
    _wait_state(ctx, instance_id, "running")


def _modify_type(ctx: ActionContext, params: Mapping[str, Any]) -> None:
    ec2 = ctx.client("ec2")
    ec2.modify_instance_attribute(**params)


def _interrupted_before(history: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The state before of an earlier attempt of this action that did not end applied or rolled back."""
    last = None
    for record in history:
        if record.get("outcome") in ("applied", "rolled_back"):
            last = None
        elif record.get("event") == "intent" or record.get("outcome") == "failed":
            last = record.get("state_before") or last
    return last


def stop_call(instance_id: str) -> ApiCall:
    return ApiCall("ec2:StopInstances", {"InstanceIds": [instance_id]})


def start_call(instance_id: str) -> ApiCall:
    return ApiCall("ec2:StartInstances", {"InstanceIds": [instance_id]})


def modify_type_call(instance_id: str, instance_type: str) -> ApiCall:
    return ApiCall("ec2:ModifyInstanceAttribute", {"InstanceId": instance_id, "InstanceType": {"Value": instance_type}})


def type_architectures(ctx: ActionContext, instance_type: str) -> tuple[str, ...]:
    """The CPU architectures an instance type runs (``ec2:DescribeInstanceTypes``), e.g. ``("arm64",)``."""
    ec2 = ctx.client("ec2")
    found = ec2.describe_instance_types(InstanceTypes=[instance_type]).get("InstanceTypes", [])
    if not found:
        raise ExecutorError(f"instance type {instance_type} is unknown in {ctx.region}; re-run the plan")
    return tuple(found[0].get("ProcessorInfo", {}).get("SupportedArchitectures") or ())


def cross_architecture_refusal(
    ctx: ActionContext, action: PlannedAction, current_type: str, architecture: str | None, target_type: str
) -> str | None:
    """Why a resize would change the CPU architecture in place (an x86_64 image cannot boot on arm64, nor the
    reverse), or None. The plan's ``cross_architecture`` flag refuses on its own; else the live architecture
    of the instance (its image) is checked against the target type's."""
    targets = type_architectures(ctx, target_type)
    if architecture and architecture in targets and not action.proposed_config.get("cross_architecture"):
        return None
    to = "/".join(targets) or str(action.proposed_config.get("architecture") or "another architecture")
    return (
        f"refused: cross-architecture resize of instance {action.resource_id} from {current_type} "
        f"({architecture or 'unknown architecture'}) to {target_type} ({to}): a change of architecture in place "
        f"cannot boot its image. Fix: build an image for {to}, launch a replacement instance from it through its "
        "own reviewed change, or re-plan without the other architecture (sizing policy allow_graviton: false)"
    )


class ResizeInstance(ActionPlugin):
    """Stop, change the instance type, start again (only if it was running); the state before is recorded."""

    actions = ("resize",)
    resource_kinds = ("ec2_instance",)
    rollback_on_failure = True
    restores_instance_type = True

    def read(self, ctx: ActionContext, action: PlannedAction) -> LiveState:
        return read_instance(ctx, action.resource_id)

    def target_type(self, action: PlannedAction) -> str:
        wanted = action.proposed_config.get("instance_type")
        if not wanted:
            raise ExecutorError(f"plan row {action.action_id} ({action.option_name}) has no instance_type to resize to")
        return str(wanted)

    def plan(
        self, ctx: ActionContext, action: PlannedAction, live: LiveState, history: Sequence[Mapping[str, Any]]
    ) -> Proposal:
        iid, target = action.resource_id, self.target_type(action)
        current, state = live.state.get("instance_type"), live.state.get("state")
        before = {"instance_type": current, "state": state}
        if state in GONE_STATES:
            return Proposal("not_applicable", f"instance {iid} is {state}")
        if current == target:
            earlier = _interrupted_before(history)
            if state == "stopped" and earlier and earlier.get("state") == "running":
                # An earlier run stopped and modified it, then died: finish the job, nothing twice.
                return Proposal(
                    "ready",
                    f"completing an interrupted resize of {iid} to {target}: start it again",
                    [start_call(iid)],
                    before={"instance_type": earlier.get("instance_type"), "state": "running"},
                    target={"instance_type": target, "state": "running"},
                )
            return Proposal("done", f"already applied: live instance type is {current} ({state})", before=before)
        if state not in ("running", "stopped"):
            return Proposal(
                "not_applicable", f"instance {iid} is {state}; resize needs running or stopped, retry later"
            )
        refusal = cross_architecture_refusal(ctx, action, str(current), live.state.get("architecture"), target)
        if refusal:
            return Proposal("not_applicable", refusal, before=before)
        calls = [modify_type_call(iid, target)]
        if state == "running":
            calls = [stop_call(iid), *calls, start_call(iid)]
        return Proposal(
            "ready",
            f"resize {iid} from {current} to {target}" + (" (stop, modify, start)" if state == "running" else ""),
            calls,
            before=before,
            target={"instance_type": target, "state": state},
        )

    def apply(self, ctx: ActionContext, action: PlannedAction, proposal: Proposal) -> dict[str, Any]:
        iid = action.resource_id
        for call in proposal.calls:
            if call.api == "ec2:StopInstances":
                _stop(ctx, iid, call.params)
            elif call.api == "ec2:ModifyInstanceAttribute":
                _modify_type(ctx, call.params)
            elif call.api == "ec2:StartInstances":
                _start(ctx, iid, call.params)
        return {}

    def verify(
        self, ctx: ActionContext, action: PlannedAction, proposal: Proposal, applied: Mapping[str, Any]
    ) -> Verification:
        observed = _instance_state(ctx, action.resource_id)
        observed = {"instance_type": observed.get("instance_type"), "state": observed.get("state")}
        if observed == proposal.target:
            return Verification(True, observed)
        return Verification(False, observed, f"expected {proposal.target}, the API shows {observed}")

    def rollback(self, ctx: ActionContext, record: Mapping[str, Any]) -> dict[str, Any]:
        before = record.get("state_before") or {}
        iid = str(record["resource_id"])
        wanted_type, wanted_state = before.get("instance_type"), before.get("state")
        if not wanted_type:
            raise RollbackRefused(
                f"action {record.get('action_id')} recorded no instance type before; nothing to restore"
            )
        live = _instance_state(ctx, iid)
        if live.get("state") in GONE_STATES:
            raise RollbackRefused(f"instance {iid} is {live.get('state')}; it cannot be resized back")
        if live.get("instance_type") != wanted_type:
            if live.get("state") == "running":
                _stop(ctx, iid, stop_call(iid).params)
            elif live.get("state") != "stopped":
                _wait_state(ctx, iid, "stopped")
            _modify_type(ctx, modify_type_call(iid, wanted_type).params)
        if wanted_state == "running" and _instance_state(ctx, iid).get("state") != "running":
            _start(ctx, iid, start_call(iid).params)
        after = _instance_state(ctx, iid)
        return {"instance_type": after.get("instance_type"), "state": after.get("state")}

    def rollback_plan(self, record: Mapping[str, Any]) -> list[ApiCall]:
        iid, before = str(record["resource_id"]), record.get("state_before") or {}
        calls = [stop_call(iid), modify_type_call(iid, str(before.get("instance_type")))]
        return [*calls, start_call(iid)] if before.get("state") == "running" else calls


class StopInstance(ActionPlugin):
    """Stop an idle instance (its EBS volumes stay, and are still billed)."""

    actions = ("stop",)
    resource_kinds = ("ec2_instance",)

    def read(self, ctx: ActionContext, action: PlannedAction) -> LiveState:
        return read_instance(ctx, action.resource_id)

    def plan(
        self, ctx: ActionContext, action: PlannedAction, live: LiveState, history: Sequence[Mapping[str, Any]]
    ) -> Proposal:
        state = live.state.get("state")
        before = {"state": state, "instance_type": live.state.get("instance_type")}
        if state in ("stopped", "stopping"):
            return Proposal("done", f"already applied: instance is {state}", before=before)
        if state != "running":
            return Proposal("not_applicable", f"instance {action.resource_id} is {state}")
        return Proposal(
            "ready", f"stop {action.resource_id}", [stop_call(action.resource_id)], before, {"state": "stopped"}
        )

    def apply(self, ctx: ActionContext, action: PlannedAction, proposal: Proposal) -> dict[str, Any]:
        _stop(ctx, action.resource_id, proposal.calls[0].params)
        return {}

    def verify(
        self, ctx: ActionContext, action: PlannedAction, proposal: Proposal, applied: Mapping[str, Any]
    ) -> Verification:
        state = _instance_state(ctx, action.resource_id).get("state")
        return Verification(state == "stopped", {"state": state}, "" if state == "stopped" else f"instance is {state}")

    def rollback(self, ctx: ActionContext, record: Mapping[str, Any]) -> dict[str, Any]:
        iid = str(record["resource_id"])
        state = _instance_state(ctx, iid).get("state")
        if state in GONE_STATES:
            raise RollbackRefused(f"instance {iid} is {state}; it cannot be restarted")
        if state != "running":
            _start(ctx, iid, start_call(iid).params)
        return {"state": _instance_state(ctx, iid).get("state")}

    def rollback_plan(self, record: Mapping[str, Any]) -> list[ApiCall]:
        return [start_call(str(record["resource_id"]))]


class TerminateInstance(ActionPlugin):
    """Snapshot every attached EBS volume, then terminate (explicit approval only; cannot be rolled back)."""

    actions = ("terminate",)
    resource_kinds = ("ec2_instance",)

    def read(self, ctx: ActionContext, action: PlannedAction) -> LiveState:
        return read_instance(ctx, action.resource_id)

    def plan(
        self, ctx: ActionContext, action: PlannedAction, live: LiveState, history: Sequence[Mapping[str, Any]]
    ) -> Proposal:
        state = live.state.get("state")
        before = {"state": state, "instance_type": live.state.get("instance_type"), "tags": live.tags}
        if not live.exists or state in GONE_STATES:
            return Proposal("done", f"already applied: instance is {state or 'gone'}", before=before)
        snapshot_first = bool(action.proposed_config.get("snapshot_first", True))
        done = existing_snapshots(ctx, action.action_id) if snapshot_first else {}
        volumes = live.state.get("volumes") or []
        calls = [
            snapshot_call(
                v, action.action_id, f"cloudopt {action.action_id}: {v} of {action.resource_id} before terminate"
            )
            for v in volumes
            if snapshot_first and v not in done
        ]
        calls.append(ApiCall("ec2:TerminateInstances", {"InstanceIds": [action.resource_id]}))
        before["volumes"] = volumes
        before["snapshots"] = done
        return Proposal(
            "ready",
            f"snapshot {len(volumes)} volume(s), then terminate {action.resource_id}",
            calls,
            before,
            {"state": "terminated"},
        )

    def apply(self, ctx: ActionContext, action: PlannedAction, proposal: Proposal) -> dict[str, Any]:
        snapshots = dict(proposal.before.get("snapshots") or {})
        for call in proposal.calls:
            if call.api == "ec2:CreateSnapshot":
                snapshots[call.params["VolumeId"]] = create_snapshot(ctx, call.params)
            elif call.api == "ec2:TerminateInstances":
                ec2 = ctx.client("ec2")
                ec2.terminate_instances(**call.params)
        return {"snapshots": snapshots}

    def verify(
        self, ctx: ActionContext, action: PlannedAction, proposal: Proposal, applied: Mapping[str, Any]
    ) -> Verification:
        state = _instance_state(ctx, action.resource_id).get("state") or "terminated"
        ok = state in GONE_STATES
        return Verification(ok, {"state": state, **applied}, "" if ok else f"instance is {state}")

    def rollback(self, ctx: ActionContext, record: Mapping[str, Any]) -> dict[str, Any]:
        raise RollbackRefused(str(self.rollback_refusal(record)))

    def rollback_refusal(self, record: Mapping[str, Any]) -> str | None:
        snapshots = (record.get("state_after") or {}).get("snapshots") or {}
        return (
            f"instance {record['resource_id']} was terminated and cannot come back with the same id; its volumes "
            f"were snapshotted first ({', '.join(f'{v}: {s}' for v, s in snapshots.items()) or 'none'}): launch a new "
            "instance from them if it is needed"
        )


def snapshot_call(volume_id: str, action_id: str, description: str) -> ApiCall:
    return ApiCall(
        "ec2:CreateSnapshot",
        {
            "VolumeId": volume_id,
            "Description": description,
            "TagSpecifications": [
                {
                    "ResourceType": "snapshot",
                    "Tags": [{"Key": ACTION_ID_TAG, "Value": action_id}, {"Key": SOURCE_TAG, "Value": volume_id}],
                }
            ],
        },
    )


def existing_snapshots(ctx: ActionContext, action_id: str) -> dict[str, str]:
    """Snapshots an earlier attempt of this action already made: source volume -> snapshot id."""
    ec2 = ctx.client("ec2")
    found = ec2.describe_snapshots(OwnerIds=["self"], Filters=[{"Name": f"tag:{ACTION_ID_TAG}", "Values": [action_id]}])
    out = {}
    for s in found.get("Snapshots", []):
        if s.get("State") in ("pending", "completed"):
            out[tags_of(s.get("Tags")).get(SOURCE_TAG) or s.get("VolumeId")] = s["SnapshotId"]
    return out


def create_snapshot(ctx: ActionContext, params: Mapping[str, Any]) -> str:
    ec2 = ctx.client("ec2")
    snapshot_id = str(ec2.create_snapshot(**params)["SnapshotId"])

    def completed() -> bool:
        snap = ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"][0]
        if snap.get("State") == "error":
            raise ExecutorError(f"snapshot {snapshot_id} of {params['VolumeId']} failed: {snap.get('StateMessage')}")
        return snap.get("State") == "completed"

    ctx.wait_for(f"snapshot {snapshot_id} to complete", completed)
    return snapshot_id


# ------------------------------------------------------------------------------------------ schedules


def _period(action: PlannedAction) -> dict[str, Any]:
    period = action.proposed_config.get("instance_scheduler_period") or {}
    if isinstance(period, str):
        import json

        period = json.loads(period)
    return dict(period)


def schedule_tag(action: PlannedAction, method: str, custodian_key: str, scheduler_key: str) -> tuple[str, str]:
    """(tag key, value) that hands the schedule to Cloud Custodian or the Instance Scheduler."""
    if method == "custodian_tag":
        value = action.proposed_config.get("custodian_offhours")
        if not value:
            raise ExecutorError(f"plan row {action.action_id} has no custodian_offhours in proposed_config")
        return custodian_key, str(value)
    period = _period(action)
    if not period.get("name"):
        raise ExecutorError(f"plan row {action.action_id} has no instance_scheduler_period with a name")
    return scheduler_key, f"cloudopt-{period['name']}"


def running_now(period: Mapping[str, Any], now: datetime) -> bool:
    """True when ``now`` is inside the Instance Scheduler running period (begintime to endtime on its weekdays)."""
    local = now.astimezone(ZoneInfo(str(period.get("timezone") or "UTC")))
    days = _weekdays(str(period.get("weekdays") or "mon-sun"))
    begin, end = (
        time.fromisoformat(str(period.get("begintime") or "00:00")),
        time.fromisoformat(str(period.get("endtime") or "23:59")),
    )
    return WEEKDAYS[local.weekday()] in days and begin <= local.time().replace(second=0, microsecond=0) < end


def _weekdays(text: str) -> set[str]:
    days: set[str] = set()
    for part in text.lower().split(","):
        a, _, b = part.strip().partition("-")
        if b:
            i, j = WEEKDAYS.index(a), WEEKDAYS.index(b)
            days.update(WEEKDAYS[k % 7] for k in range(i, j + 1 if j >= i else j + 8))
        elif a:
            days.add(a)
    return days


class ScheduleInstance(ActionPlugin):
    """Apply the schedule: the off-hours tag for Cloud Custodian or the Instance Scheduler (tag methods), or
    stop/start the instance at the window itself (``stop_start``: each run sets the state the period wants now)."""

    actions = ("schedule",)
    resource_kinds = ("ec2_instance",)

    def read(self, ctx: ActionContext, action: PlannedAction) -> LiveState:
        return read_instance(ctx, action.resource_id)

    def plan(
        self, ctx: ActionContext, action: PlannedAction, live: LiveState, history: Sequence[Mapping[str, Any]]
    ) -> Proposal:
        iid, policy = action.resource_id, ctx.policy
        if live.state.get("state") in GONE_STATES:
            return Proposal("not_applicable", f"instance {iid} is {live.state.get('state')}")
        if policy.schedule_method == "stop_start":
            running, state = running_now(_period(action), ctx.now()), live.state.get("state")
            wanted = "running" if running else "stopped"
            before = {"scheduled_state": state}
            if state == wanted:
                return Proposal("done", f"schedule: instance already {state}, as the period wants now", before=before)
            if state not in ("running", "stopped"):
                return Proposal("not_applicable", f"instance {iid} is {state}; retry at the next run")
            call = start_call(iid) if running else stop_call(iid)
            return Proposal("ready", f"schedule: {wanted} now", [call], before, {"scheduled_state": wanted})
        key, value = schedule_tag(
            action, policy.schedule_method, policy.custodian_tag_key, policy.instance_scheduler_tag_key
        )
        before = {"schedule_tag": {"key": key, "value": live.tags.get(key)}}
        target = {"schedule_tag": {"key": key, "value": value}}
        if live.tags.get(key) == value:
            return Proposal("done", f"already applied: live tag {key}={value}", before=before, target=target)
        call = ApiCall("ec2:CreateTags", {"Resources": [iid], "Tags": [{"Key": key, "Value": value}]})
        return Proposal("ready", f"tag {iid} {key}={value}", [call], before, target)

    def apply(self, ctx: ActionContext, action: PlannedAction, proposal: Proposal) -> dict[str, Any]:
        for call in proposal.calls:
            if call.api == "ec2:CreateTags":
                ec2 = ctx.client("ec2")
                ec2.create_tags(**call.params)
            elif call.api == "ec2:StopInstances":
                _stop(ctx, action.resource_id, call.params)
            elif call.api == "ec2:StartInstances":
                _start(ctx, action.resource_id, call.params)
        return {}

    def verify(
        self, ctx: ActionContext, action: PlannedAction, proposal: Proposal, applied: Mapping[str, Any]
    ) -> Verification:
        live = read_instance(ctx, action.resource_id)
        if "scheduled_state" in proposal.target:
            observed = {"scheduled_state": live.state.get("state")}
        else:
            key = proposal.target["schedule_tag"]["key"]
            observed = {"schedule_tag": {"key": key, "value": live.tags.get(key)}}
        ok = observed == proposal.target
        return Verification(ok, observed, "" if ok else f"expected {proposal.target}, the API shows {observed}")

    def rollback(self, ctx: ActionContext, record: Mapping[str, Any]) -> dict[str, Any]:
        iid, before = str(record["resource_id"]), record.get("state_before") or {}
        if "scheduled_state" in before:
            state = _instance_state(ctx, iid).get("state")
            if before["scheduled_state"] == "running" and state == "stopped":
                _start(ctx, iid, start_call(iid).params)
            elif before["scheduled_state"] == "stopped" and state == "running":
                _stop(ctx, iid, stop_call(iid).params)
            return {"scheduled_state": _instance_state(ctx, iid).get("state")}
        tag = before.get("schedule_tag") or {}
        ec2 = ctx.client("ec2")
        if tag.get("value") is None:
            ec2.delete_tags(Resources=[iid], Tags=[{"Key": tag["key"]}])
        else:
            ec2.create_tags(Resources=[iid], Tags=[{"Key": tag["key"], "Value": tag["value"]}])
        return {"schedule_tag": {"key": tag.get("key"), "value": read_instance(ctx, iid).tags.get(tag.get("key", ""))}}

    def rollback_plan(self, record: Mapping[str, Any]) -> list[ApiCall]:
        iid, tag = str(record["resource_id"]), (record.get("state_before") or {}).get("schedule_tag") or {}
        if not tag:
            return []
        if tag.get("value") is None:
            return [ApiCall("ec2:DeleteTags", {"Resources": [iid], "Tags": [{"Key": tag["key"]}]})]
        return [ApiCall("ec2:CreateTags", {"Resources": [iid], "Tags": [{"Key": tag["key"], "Value": tag["value"]}]})]


class ResizeAndSchedule(ActionPlugin):
    """Resize to the plan's type, then apply its schedule; rolled back as a whole."""

    actions = ("resize+schedule",)
    resource_kinds = ("ec2_instance",)
    rollback_on_failure = True
    restores_instance_type = True

    def __init__(self) -> None:
        self.resize, self.schedule = ResizeInstance(), ScheduleInstance()

    def read(self, ctx: ActionContext, action: PlannedAction) -> LiveState:
        return read_instance(ctx, action.resource_id)

    def plan(
        self, ctx: ActionContext, action: PlannedAction, live: LiveState, history: Sequence[Mapping[str, Any]]
    ) -> Proposal:
        resize = self.resize.plan(ctx, action, live, history)
        if resize.status == "not_applicable":
            return resize
        if ctx.policy.schedule_method == "stop_start":
            # The schedule's state follows the resize: plan it on the state the resize leaves.
            live = LiveState(live.exists, live.tags, {**live.state, **resize.target} if resize.target else live.state)
        schedule = self.schedule.plan(ctx, action, live, history)
        if schedule.status == "not_applicable":
            return schedule
        parts = [p for p in (resize, schedule) if p.status == "ready"]
        before = {**(resize.before or {}), **(schedule.before or {})}
        unchanged = {"instance_type": live.state.get("instance_type"), "state": live.state.get("state")}
        target = {**(resize.target or unchanged), **(schedule.target or {})}
        if "scheduled_state" in target:
            target.pop("state", None)  # the schedule decides the final state
        if not parts:
            return Proposal("done", f"{resize.reason}; {schedule.reason}", before=before, target=target)
        calls = [c for p in parts for c in p.calls]
        return Proposal("ready", "; ".join(p.reason for p in parts), calls, before, target)

    def apply(self, ctx: ActionContext, action: PlannedAction, proposal: Proposal) -> dict[str, Any]:
        resize_calls = [c for c in proposal.calls if c.api != "ec2:CreateTags"]
        tag_calls = [c for c in proposal.calls if c.api == "ec2:CreateTags"]
        if ctx.policy.schedule_method == "stop_start":
            self.resize.apply(ctx, action, Proposal("ready", "", proposal.calls))
        else:
            self.resize.apply(ctx, action, Proposal("ready", "", resize_calls))
            self.schedule.apply(ctx, action, Proposal("ready", "", tag_calls))
        return {}

    def verify(
        self, ctx: ActionContext, action: PlannedAction, proposal: Proposal, applied: Mapping[str, Any]
    ) -> Verification:
        live = read_instance(ctx, action.resource_id)
        observed: dict[str, Any] = {"instance_type": live.state.get("instance_type")}
        for key in proposal.target:
            if key == "schedule_tag":
                tag_key = proposal.target[key]["key"]
                observed[key] = {"key": tag_key, "value": live.tags.get(tag_key)}
            elif key in ("state", "scheduled_state"):
                observed[key] = live.state.get("state")
        wanted = {k: v for k, v in proposal.target.items() if k in observed}
        ok = all(observed.get(k) == v for k, v in wanted.items())
        return Verification(ok, observed, "" if ok else f"expected {wanted}, the API shows {observed}")

    def rollback(self, ctx: ActionContext, record: Mapping[str, Any]) -> dict[str, Any]:
        after: dict[str, Any] = {}
        before = record.get("state_before") or {}
        if "schedule_tag" in before:
            after.update(self.schedule.rollback(ctx, record))
        after.update(self.resize.rollback(ctx, record))
        return after

    def rollback_plan(self, record: Mapping[str, Any]) -> list[ApiCall]:
        return [*self.schedule.rollback_plan(record), *self.resize.rollback_plan(record)]
