"""Unattached EBS volumes: snapshot, then delete; rolled back by restoring a new volume from the snapshot."""

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
    tags_of,
)
from cloudopt_pipelines.executor.actions.ec2 import ACTION_ID_TAG, create_snapshot, existing_snapshots, snapshot_call
from cloudopt_pipelines.executor.model import ApiCall, PlannedAction

RESTORED_FROM_TAG = "cloudopt:restored-from"


def read_volume(ctx: ActionContext, volume_id: str) -> LiveState:
    ec2 = ctx.client("ec2")
    try:
        volumes = ec2.describe_volumes(VolumeIds=[volume_id]).get("Volumes", [])
    except ClientError as exc:
        if error_code(exc) == "InvalidVolume.NotFound":
            return LiveState(exists=False)
        raise
    if not volumes:
        return LiveState(exists=False)
    v = volumes[0]
    return LiveState(
        exists=True,
        tags=tags_of(v.get("Tags")),
        state={
            "volume_id": volume_id,
            "state": v.get("State"),
            "attached_to": [a.get("InstanceId") for a in v.get("Attachments", []) if a.get("InstanceId")],
            "size_gib": v.get("Size"),
            "volume_type": v.get("VolumeType"),
            "iops": v.get("Iops"),
            "throughput": v.get("Throughput"),
            "availability_zone": v.get("AvailabilityZone"),
            "encrypted": v.get("Encrypted"),
            "kms_key_id": v.get("KmsKeyId"),
            "tags": tags_of(v.get("Tags")),
        },
    )


class DeleteVolume(ActionPlugin):
    """Delete an unattached EBS volume, only after a completed snapshot of it (tagged with the action id)."""

    actions = ("delete_volume",)
    resource_kinds = ("ebs_volume",)

    def read(self, ctx: ActionContext, action: PlannedAction) -> LiveState:
        return read_volume(ctx, action.resource_id)

    def plan(
        self, ctx: ActionContext, action: PlannedAction, live: LiveState, history: Sequence[Mapping[str, Any]]
    ) -> Proposal:
        vid = action.resource_id
        snapshots = existing_snapshots(ctx, action.action_id)
        if not live.exists:
            if vid in snapshots:
                return Proposal("done", f"already applied: volume gone, snapshot {snapshots[vid]} kept")
            return Proposal("not_applicable", f"volume {vid} no longer exists (deleted outside cloudopt)")
        if live.state.get("state") != "available" or live.state.get("attached_to"):
            return Proposal(
                "not_applicable",
                f"volume {vid} is {live.state.get('state')} (attached to {live.state.get('attached_to') or 'nothing'}) "
                "since the plan: left as it is",
            )
        calls = []
        if vid not in snapshots:
            calls.append(snapshot_call(vid, action.action_id, f"cloudopt {action.action_id}: {vid} before deletion"))
        calls.append(ApiCall("ec2:DeleteVolume", {"VolumeId": vid}))
        reason = (
            f"snapshot {vid}, then delete it"
            if vid not in snapshots
            else f"delete {vid} (snapshot {snapshots[vid]} exists)"
        )
        return Proposal("ready", reason, calls, {**live.state, "snapshot_id": snapshots.get(vid)}, {"exists": False})

    def apply(self, ctx: ActionContext, action: PlannedAction, proposal: Proposal) -> dict[str, Any]:
        snapshot_id = proposal.before.get("snapshot_id")
        for call in proposal.calls:
            if call.api == "ec2:CreateSnapshot":
                snapshot_id = create_snapshot(ctx, call.params)
            elif call.api == "ec2:DeleteVolume":
                if not snapshot_id:
                    raise RollbackRefused(f"no snapshot of {action.resource_id}: refusing to delete it")
                ec2 = ctx.client("ec2")
                ec2.delete_volume(**call.params)
        return {"snapshot_id": snapshot_id}

    def verify(
        self, ctx: ActionContext, action: PlannedAction, proposal: Proposal, applied: Mapping[str, Any]
    ) -> Verification:
        live = read_volume(ctx, action.resource_id)
        observed = {"exists": live.exists, "snapshot_id": applied.get("snapshot_id")}
        return Verification(not live.exists, observed, "" if not live.exists else "the volume still exists")

    def rollback(self, ctx: ActionContext, record: Mapping[str, Any]) -> dict[str, Any]:
        before = record.get("state_before") or {}
        snapshot_id = (record.get("state_after") or {}).get("snapshot_id") or before.get("snapshot_id")
        if not snapshot_id:
            raise RollbackRefused(f"no snapshot recorded for volume {record['resource_id']}; it cannot be restored")
        ec2 = ctx.client("ec2")
        params = restore_params(record, snapshot_id)
        volume_id = str(ec2.create_volume(**params)["VolumeId"])
        ctx.wait_for(
            f"volume {volume_id} to be available",
            lambda: read_volume(ctx, volume_id).state.get("state") == "available",
        )
        return {
            "volume_id": volume_id,
            "restored_from": snapshot_id,
            "note": f"a new volume {volume_id}: EBS cannot give back the id {record['resource_id']}",
        }

    def rollback_plan(self, record: Mapping[str, Any]) -> list[ApiCall]:
        snapshot_id = (record.get("state_after") or {}).get("snapshot_id") or "(snapshot)"
        return [ApiCall("ec2:CreateVolume", restore_params(record, str(snapshot_id)))]


def restore_params(record: Mapping[str, Any], snapshot_id: str) -> dict[str, Any]:
    before = record.get("state_before") or {}
    tags = {**(before.get("tags") or {}), RESTORED_FROM_TAG: str(record["resource_id"])}
    tags.pop(ACTION_ID_TAG, None)
    params: dict[str, Any] = {
        "SnapshotId": snapshot_id,
        "AvailabilityZone": before.get("availability_zone"),
        "VolumeType": before.get("volume_type") or "gp3",
        "Size": before.get("size_gib"),
        "TagSpecifications": [
            {"ResourceType": "volume", "Tags": [{"Key": k, "Value": v} for k, v in sorted(tags.items())]}
        ],
    }
    if before.get("volume_type") in ("io1", "io2", "gp3") and before.get("iops"):
        params["Iops"] = before["iops"]
    if before.get("volume_type") == "gp3" and before.get("throughput"):
        params["Throughput"] = before["throughput"]
    return {k: v for k, v in params.items() if v is not None}
