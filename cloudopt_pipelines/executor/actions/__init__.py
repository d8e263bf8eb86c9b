"""Action plug-ins: one class per kind of change, all behind ``ActionPlugin`` (read, plan, apply, verify, roll back)."""

from cloudopt_pipelines.executor.actions.base import (
    ActionContext,
    ActionPlugin,
    LiveState,
    Proposal,
    RollbackRefused,
    Verification,
)
from cloudopt_pipelines.executor.actions.ebs import DeleteVolume
from cloudopt_pipelines.executor.actions.ec2 import (
    ResizeAndSchedule,
    ResizeInstance,
    ScheduleInstance,
    StopInstance,
    TerminateInstance,
)
from cloudopt_pipelines.executor.actions.ecs import BatchScheduleAdvice, ClusterNodesAdvice, UpdateEcsService
from cloudopt_pipelines.executor.actions.eip import ReleaseAddress
from cloudopt_pipelines.executor.actions.emr import ResizeInstanceGroups, SetAutoTermination, SetManagedScaling

# (resource kind, action): an ECS or Kubernetes "resize" is another key than EC2's.
PluginKey = tuple[str, str]


def default_plugins() -> dict[PluginKey, ActionPlugin]:
    """(resource kind, plan action) -> plug-in. Actions absent here (spot, ...) are audited as skipped."""
    plugins: list[ActionPlugin] = [
        ResizeInstance(),
        ScheduleInstance(),
        ResizeAndSchedule(),
        StopInstance(),
        TerminateInstance(),
        DeleteVolume(),
        ReleaseAddress(),
        UpdateEcsService(),
        ClusterNodesAdvice(),
        BatchScheduleAdvice(),
        SetAutoTermination(),
        SetManagedScaling(),
        ResizeInstanceGroups(),
    ]
    return {(kind, action): p for p in plugins for kind in p.resource_kinds for action in p.actions}


__all__ = [
    "ActionContext",
    "ActionPlugin",
    "BatchScheduleAdvice",
    "ClusterNodesAdvice",
    "DeleteVolume",
    "LiveState",
    "PluginKey",
    "Proposal",
    "ReleaseAddress",
    "ResizeAndSchedule",
    "ResizeInstance",
    "ResizeInstanceGroups",
    "RollbackRefused",
    "ScheduleInstance",
    "SetAutoTermination",
    "SetManagedScaling",
    "StopInstance",
    "TerminateInstance",
    "UpdateEcsService",
    "Verification",
    "default_plugins",
]
