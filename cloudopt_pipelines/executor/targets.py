"""Execution targets: where actions are applied (AWS here; Kubernetes in ``kubernetes.py``; ECS/EMR next). No Dagster.

A target says what it can act on (its plug-ins, keyed by ``(resource kind, action)`` so that an ECS or a
Kubernetes "resize" never collides with EC2's), how it reads a resource's live state, and how its plug-ins
get their clients (``context``). The engine keeps every safety rule and asks the target for the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from cloudopt_pipelines.executor.actions import ActionContext, ActionPlugin, LiveState, PluginKey, default_plugins
from cloudopt_pipelines.executor.actions.base import ANY_ACTION
from cloudopt_pipelines.executor.aws import ExecutorAws, ExecutorError
from cloudopt_pipelines.executor.model import ApiCall, PlannedAction
from cloudopt_pipelines.executor.policy import ExecutorPolicy, RateLimiter


@runtime_checkable
class ExecutionTarget(Protocol):
    """Where actions are applied, behind one interface."""

    name: str

    def plugins(self) -> Mapping[PluginKey, ActionPlugin]:
        """What it can act on: ``(resource kind, action)`` -> plug-in."""
        ...

    def default_region(self) -> str:
        """The region (or cluster, namespace...) of a plan row that names none."""
        ...

    def context(self, account_id: str, region: str, policy: ExecutorPolicy, now: Callable[[], datetime]) -> Any:
        """What a plug-in of this target uses to act in one account and region (its clients)."""
        ...

    def read_live(self, plugin: ActionPlugin, ctx: Any, action: PlannedAction) -> LiveState:
        """The resource's live state, read-only."""
        ...

    def recording(self) -> AbstractContextManager[list[ApiCall]]:
        """Record the mutating calls made inside the block, for the audit."""
        ...

    def describe_error(self, exc: BaseException, account_id: str, region: str, doing: str) -> ExecutorError:
        """An error that names the call, account, region, endpoint and a fix."""
        ...

    def limit_rate(self, calls_per_second: float) -> None:
        """At most this many mutating calls a second (0: no limit)."""
        ...


class AwsTarget:
    """AWS through the executor role: EC2 instances, EBS volumes, Elastic IPs (``default_plugins()``)."""

    name = "aws"

    def __init__(self, aws: ExecutorAws, plugins: Mapping[PluginKey, ActionPlugin] | None = None) -> None:
        self.aws = aws
        self._plugins = dict(plugins if plugins is not None else default_plugins())

    def plugins(self) -> Mapping[PluginKey, ActionPlugin]:
        return self._plugins

    def default_region(self) -> str:
        return self.aws.settings.regions[0]

    def context(
        self, account_id: str, region: str, policy: ExecutorPolicy, now: Callable[[], datetime]
    ) -> ActionContext:
        return ActionContext(self.aws, account_id, region or self.default_region(), policy, now)

    def read_live(self, plugin: ActionPlugin, ctx: Any, action: PlannedAction) -> LiveState:
        return plugin.read(ctx, action)

    def recording(self) -> AbstractContextManager[list[ApiCall]]:
        return self.aws.recording()

    def describe_error(self, exc: BaseException, account_id: str, region: str, doing: str) -> ExecutorError:
        return self.aws.describe_error(exc, account_id, region, doing)

    def limit_rate(self, calls_per_second: float) -> None:
        self.aws.rate_limiter = RateLimiter(calls_per_second, self.aws.rate_clock, self.aws.rate_sleep)


def as_targets(
    targets: ExecutorAws | ExecutionTarget | Sequence[ExecutionTarget],
) -> list[ExecutionTarget]:
    """One or several targets (an ``ExecutorAws`` is the AWS target)."""
    if isinstance(targets, ExecutorAws):
        return [AwsTarget(targets)]
    if isinstance(targets, ExecutionTarget):
        return [targets]
    return list(targets)


def find_plugin(
    table: Mapping[PluginKey, tuple[ExecutionTarget, ActionPlugin]], kind: str, action: str
) -> tuple[ExecutionTarget, ActionPlugin] | None:
    """The plug-in of ``(kind, action)``, else the one of ``(kind, ANY_ACTION)``, else None."""
    return table.get((kind, action)) or table.get((kind, ANY_ACTION))


def plugin_table(targets: list[ExecutionTarget]) -> dict[PluginKey, tuple[ExecutionTarget, ActionPlugin]]:
    """``(resource kind, action)`` -> (target, plug-in) over every target; two targets claiming one key is an
    error (the same kind of resource cannot be changed two ways)."""
    table: dict[PluginKey, tuple[ExecutionTarget, ActionPlugin]] = {}
    for target in targets:
        for key, plugin in target.plugins().items():
            if key in table:
                raise ValueError(
                    f"targets {table[key][0].name} and {target.name} both act on {key[0]} '{key[1]}': "
                    "one (resource kind, action) has one plug-in"
                )
            table[key] = (target, plugin)
    return table
