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
from cloudopt_pipelines.executor.actions.eip import ReleaseAddress


def default_plugins() -> dict[str, ActionPlugin]:
    """Plan action -> plug-in. Actions absent here (spot, ...) are audited as skipped: no plug-in."""
    plugins: list[ActionPlugin] = [
        ResizeInstance(),
        ScheduleInstance(),
        ResizeAndSchedule(),
        StopInstance(),
        TerminateInstance(),
        DeleteVolume(),
        ReleaseAddress(),
    ]
    return {action: p for p in plugins for action in p.actions}


__all__ = [
    "ActionContext",
    "ActionPlugin",
    "DeleteVolume",
    "LiveState",
    "Proposal",
    "ReleaseAddress",
    "ResizeAndSchedule",
    "ResizeInstance",
    "RollbackRefused",
    "ScheduleInstance",
    "StopInstance",
    "TerminateInstance",
    "Verification",
    "default_plugins",
]
