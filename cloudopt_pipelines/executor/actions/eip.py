"""Unassociated Elastic IPs: release. A released address cannot be re-acquired as such: no rollback."""

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
from cloudopt_pipelines.executor.model import ApiCall, PlannedAction

NOT_FOUND = ("InvalidAllocationID.NotFound", "InvalidAddress.NotFound")


def _address_filter(resource_id: str) -> dict[str, list[str]]:
    return {"AllocationIds": [resource_id]} if resource_id.startswith("eipalloc-") else {"PublicIps": [resource_id]}


def read_address(ctx: ActionContext, resource_id: str) -> LiveState:
    ec2 = ctx.client("ec2")
    try:
        addresses = ec2.describe_addresses(**_address_filter(resource_id)).get("Addresses", [])
    except ClientError as exc:
        if error_code(exc) in NOT_FOUND:
            return LiveState(exists=False)
        raise
    if not addresses:
        return LiveState(exists=False)
    a = addresses[0]
    return LiveState(
        exists=True,
        tags=tags_of(a.get("Tags")),
        state={
            "allocation_id": a.get("AllocationId"),
            "public_ip": a.get("PublicIp"),
            "domain": a.get("Domain"),
            "associated_with": a.get("AssociationId") or a.get("InstanceId") or a.get("NetworkInterfaceId") or None,
            "tags": tags_of(a.get("Tags")),
        },
    )


class ReleaseAddress(ActionPlugin):
    """Release an Elastic IP that is associated with nothing (checked live)."""

    actions = ("release_address",)
    resource_kinds = ("elastic_ip",)

    def read(self, ctx: ActionContext, action: PlannedAction) -> LiveState:
        return read_address(ctx, action.resource_id)

    def plan(
        self, ctx: ActionContext, action: PlannedAction, live: LiveState, history: Sequence[Mapping[str, Any]]
    ) -> Proposal:
        if not live.exists:
            return Proposal("done", f"already applied: {action.resource_id} is no longer allocated to the account")
        if live.state.get("associated_with"):
            return Proposal(
                "not_applicable",
                f"{action.resource_id} is associated with {live.state['associated_with']} since the plan",
            )
        params = (
            {"AllocationId": live.state["allocation_id"]}
            if live.state.get("allocation_id")
            else {"PublicIp": live.state.get("public_ip")}
        )
        return Proposal(
            "ready",
            f"release {live.state.get('public_ip')} ({action.resource_id})",
            [ApiCall("ec2:ReleaseAddress", params)],
            live.state,
            {"exists": False},
        )

    def apply(self, ctx: ActionContext, action: PlannedAction, proposal: Proposal) -> dict[str, Any]:
        ec2 = ctx.client("ec2")
        ec2.release_address(**proposal.calls[0].params)
        return {}

    def verify(
        self, ctx: ActionContext, action: PlannedAction, proposal: Proposal, applied: Mapping[str, Any]
    ) -> Verification:
        live = read_address(ctx, action.resource_id)
        return Verification(not live.exists, {"exists": live.exists}, "" if not live.exists else "still allocated")

    def rollback(self, ctx: ActionContext, record: Mapping[str, Any]) -> dict[str, Any]:
        raise RollbackRefused(str(self.rollback_refusal(record)))

    def rollback_refusal(self, record: Mapping[str, Any]) -> str | None:
        ip = (record.get("state_before") or {}).get("public_ip") or "(unknown)"
        return (
            f"Elastic IP {ip} ({record['resource_id']}) was released: it cannot be re-acquired as the same "
            "allocation, and cloudopt does not try to recover the address (AWS may give it back through "
            "AllocateAddress --address only if no one else took it). Allocate a new address and update whatever "
            "pointed at the old one."
        )
