"""The one interface every action plug-in implements: read, plan, apply, verify, roll back.

The engine owns the safety rules (approval, protection, production, windows, blast radius, audit); a
plug-in only knows its resource: how to read its live state, which calls bring it to the target, how to
check that they did, and how to undo them from the recorded state. Kubernetes patches, ECS or EMR calls
join as new plug-ins without touching the rules.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cloudopt_pipelines.executor.aws import ExecutorAws, ExecutorError
from cloudopt_pipelines.executor.drift import changes_since_plan
from cloudopt_pipelines.executor.model import ApiCall, PlannedAction
from cloudopt_pipelines.executor.policy import ExecutorPolicy

#: A plug-in action that matches every action on its resource kinds (an exact key still wins): node-pool
#: rows are advice whatever option they name.
ANY_ACTION = "*"


@dataclass
class ActionContext:
    """What a plug-in may use: the executor's AWS access for one account and region, and the policy."""

    aws: ExecutorAws
    account_id: str
    region: str
    policy: ExecutorPolicy
    now: Callable[[], Any]

    def client(self, service: str) -> Any:
        return self.aws.client(self.account_id, service, self.region)

    def wait_for(self, what: str, check: Callable[[], bool]) -> None:
        """Poll ``check`` every ``poll_seconds`` until true; an error after ``wait_timeout_seconds``."""
        deadline = time.monotonic() + self.aws.wait_timeout_seconds
        while not check():
            if time.monotonic() > deadline:
                raise ExecutorError(
                    f"timed out after {self.aws.wait_timeout_seconds:g} s waiting for {what} "
                    f"(account {self.account_id}, {self.region}); raise wait_timeout_seconds or check the console"
                )
            self.aws.sleep(self.aws.poll_seconds)


@dataclass
class LiveState:
    """The resource as the API shows it now (``exists`` False when the API says it is gone)."""

    exists: bool
    tags: dict[str, str] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)
    #: the Kubernetes namespace it lives in (None outside Kubernetes): protected namespaces are never changed
    namespace: str | None = None


@dataclass
class Proposal:
    """What a plug-in would do from the live state: ``ready`` (calls to make), ``done`` or ``not_applicable``."""

    status: str
    reason: str
    calls: list[ApiCall] = field(default_factory=list)
    before: dict[str, Any] = field(default_factory=dict)
    target: dict[str, Any] = field(default_factory=dict)


@dataclass
class Verification:
    ok: bool
    observed: dict[str, Any]
    reason: str = ""


class RollbackRefused(ExecutorError):
    """An applied action that cannot be undone; the message says why and what is left."""


class ActionPlugin(ABC):
    """Base of every action plug-in."""

    #: plan ``action`` values this plug-in handles
    actions: tuple[str, ...] = ()
    #: resource kinds it can act on
    resource_kinds: tuple[str, ...] = ()
    #: a failed verification is undone at once (e.g. a resized instance that does not start)
    rollback_on_failure: bool = False
    #: its rollback resizes back to the recorded ``state_before.instance_type`` (checked against the plan)
    restores_instance_type: bool = False

    #: never executed: the plan row is advice for a person (or another controller); ``advice`` says what to do
    advisory: bool = False

    def advice(self, action: PlannedAction) -> str:
        """For an advisory plug-in: why it is not applied and where the change belongs."""
        return ""

    @abstractmethod
    def read(self, ctx: ActionContext, action: PlannedAction) -> LiveState:
        """Read the live state (read-only calls)."""

    @abstractmethod
    def plan(
        self, ctx: ActionContext, action: PlannedAction, live: LiveState, history: Sequence[Mapping[str, Any]]
    ) -> Proposal:
        """From the live state (and this action's audit history), what ``apply`` would call."""

    @abstractmethod
    def apply(self, ctx: ActionContext, action: PlannedAction, proposal: Proposal) -> dict[str, Any]:
        """Make the calls; returns what the audit should keep (ids created, ...)."""

    @abstractmethod
    def verify(
        self, ctx: ActionContext, action: PlannedAction, proposal: Proposal, applied: Mapping[str, Any]
    ) -> Verification:
        """Read the live state back: did the resource really change?"""

    @abstractmethod
    def rollback(self, ctx: ActionContext, record: Mapping[str, Any]) -> dict[str, Any]:
        """Undo an applied action from its audit record (``state_before``/``state_after``); returns the state after."""

    def changes_since_plan(self, action: PlannedAction, observed: Mapping[str, Any]) -> list[str]:
        """What differs between the plan row's ``current_config`` and the state the action starts from."""
        return changes_since_plan(action.current_config, observed)

    def validate(self, ctx: ActionContext, action: PlannedAction, proposal: Proposal) -> dict[str, Any]:
        """In a dry run: have the server check the calls without persisting anything (Kubernetes
        ``dryRun=All``), returning the state it would store; by default nothing is sent."""
        return {}

    def restore_refusal(
        self, record: Mapping[str, Any], current: Mapping[str, Any], proposed: Mapping[str, Any]
    ) -> str | None:
        """Why the recorded state to restore is not one the plan row (``current``/``proposed`` config) held."""
        return None

    def rollback_refusal(self, record: Mapping[str, Any]) -> str | None:
        """Why this applied action can never be rolled back, or None when it can."""
        return None

    def rollback_plan(self, record: Mapping[str, Any]) -> list[ApiCall]:
        """The calls ``rollback`` would make, for a dry run (best effort; the live state may add a start)."""
        return []


def tags_of(raw: Sequence[Mapping[str, Any]] | None) -> dict[str, str]:
    return {str(t["Key"]): str(t.get("Value", "")) for t in raw or [] if "Key" in t}


def error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))
