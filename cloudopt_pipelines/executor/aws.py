"""AWS access of the executor: its own role, the shared session machinery, every call recorded.

``ExecutorAws`` reaches each account through the executor role (``CLOUDOPT_EXECUTOR_ROLE``), never the
collector's read-only role: its sessions come from ``cloudopt_pipelines.aws`` (assumed-role credentials
cached per account and refreshed before expiry, adaptive retries, timeouts, ``endpoint_url``), the same
module the collector uses, with the executor role assumed in every account, the base credentials' own
included, so that write permissions live in one role only. Every call is seen through botocore events:
mutating calls are rate limited and recorded (name, parameters, status) for the audit. No Dagster here."""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from cloudopt_pipelines.aws import AwsSessionError, AwsSessions, AwsSettings
from cloudopt_pipelines.aws.sessions import BASE_CLIENTS
from cloudopt_pipelines.executor.model import ApiCall
from cloudopt_pipelines.executor.policy import RateLimiter

DEFAULT_EXECUTOR_SESSION_NAME = "cloudopt-executor"
READ_PREFIXES = ("Describe", "List", "Get")
CONNECTION_ERRORS = (EndpointConnectionError, ConnectTimeoutError, ConnectionClosedError, ReadTimeoutError)


class ExecutorError(RuntimeError):
    """An executor failure; the message names the call, account, region, endpoint and the fix."""

    def __init__(self, message: str, *, unreachable: bool = False, code: str = "") -> None:
        super().__init__(message)
        self.unreachable = unreachable
        self.code = code


def is_mutating(operation: str) -> bool:
    return not operation.startswith(READ_PREFIXES)


class ExecutorAws:
    """Boto3 clients of the executor role, with call recording, rate limiting and clear errors."""

    def __init__(
        self,
        settings: AwsSettings,
        rate_limiter: RateLimiter | None = None,
        poll_seconds: float = 5.0,
        wait_timeout_seconds: float = 600.0,
        sleep: Callable[[float], None] | None = None,
        rate_clock: Callable[[], float] = time.monotonic,
        rate_sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """``sleep`` waits between state polls; ``rate_clock`` / ``rate_sleep`` pace mutating calls (injected
        by tests, so that no test depends on the machine's speed)."""
        self.settings = settings
        self.rate_clock, self.rate_sleep = rate_clock, rate_sleep
        self.sessions = AwsSessions(
            settings,
            user_agent=DEFAULT_EXECUTOR_SESSION_NAME,
            assume_in_own_account=True,
            on_client=self._hook,
            no_role_hint="set CLOUDOPT_EXECUTOR_ROLE to the executor role created in every account (docs/executor.md)",
        )
        self.rate_limiter = rate_limiter or RateLimiter(0)
        self.poll_seconds = poll_seconds
        self.wait_timeout_seconds = wait_timeout_seconds
        self.sleep = sleep or time.sleep
        self.seen_actions: set[str] = set()
        self._local = threading.local()

    def client(self, account_id: str, service: str, region: str) -> Any:
        """The cached client of ``service`` in ``account_id`` and ``region`` through the executor role."""
        try:
            return self.sessions.client(account_id, service, region)
        except (AwsSessionError, BotoCoreError, ClientError) as exc:
            raise ExecutorError(
                f"cannot reach account {account_id} in {region} with the executor role "
                f"{self.settings.role_arn(account_id) or '(none: base credentials)'}: {_clean(exc)}. Fix: create the "
                "role with docs/iam/executor-policy.json and let the pipeline's identity assume it "
                "(CLOUDOPT_EXECUTOR_ROLE, docs/executor.md)",
                unreachable=True,
            ) from None

    def _hook(self, client: Any, account: str) -> None:
        if account == BASE_CLIENTS:
            return  # STS of the base credentials: reaching accounts is not an action to record or rate limit
        client.meta.events.register("before-parameter-build", self._before)
        client.meta.events.register("after-call", self._after)
        client.meta.events.register("after-call-error", self._after_error)

    @contextmanager
    def recording(self) -> Iterator[list[ApiCall]]:
        """Record the mutating calls made inside the block (in order, with their status)."""
        calls: list[ApiCall] = []
        previous = getattr(self._local, "calls", None)
        self._local.calls = calls
        try:
            yield calls
        finally:
            self._local.calls = previous

    def _before(self, params: dict[str, Any], model: Any, context: dict[str, Any] | None = None, **_: Any) -> None:
        name = f"{_iam_prefix(model.service_model.signing_name)}:{model.name}"
        self.seen_actions.add(name)
        self._local.last_call = name
        if not is_mutating(model.name):
            return
        self.rate_limiter.acquire()
        calls: list[ApiCall] | None = getattr(self._local, "calls", None)
        if calls is not None and context is not None:
            context["cloudopt_call"] = (calls, len(calls))
            calls.append(ApiCall(name, copy.deepcopy(params), "sent"))

    @staticmethod
    def _mark(context: dict[str, Any] | None, status: str) -> None:
        where = (context or {}).get("cloudopt_call")
        if where is not None:
            calls, index = where
            calls[index] = ApiCall(calls[index].api, calls[index].params, status)

    def _after(self, http_response: Any = None, parsed: Any = None, context: Any = None, **_: Any) -> None:
        status_code = getattr(http_response, "status_code", 200)
        if status_code < 300:
            self._mark(context, "ok")
        else:
            code = str(((parsed or {}).get("Error") or {}).get("Code") or status_code)
            self._mark(context, f"error: {code}")

    def _after_error(self, exception: BaseException | None = None, context: Any = None, **_: Any) -> None:
        self._mark(context, f"error: {type(exception).__name__}")

    def endpoint(self, region: str) -> str:
        return self.settings.endpoint_url or f"(default AWS endpoint of {region})"

    def describe_error(self, exc: BaseException, account_id: str, region: str, doing: str) -> ExecutorError:
        """An ``ExecutorError`` that names the call, account, region, endpoint and a fix."""
        if isinstance(exc, ExecutorError):
            return exc
        endpoint = getattr(exc, "kwargs", {}).get("endpoint_url") or self.endpoint(region)
        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            service = (getattr(self._local, "last_call", None) or "ec2:").split(":", 1)[0]
            call = f"{service}:{exc.operation_name}" if exc.operation_name else doing
            fix = _fix(code, account_id)
            text = (str(exc.response.get("Error", {}).get("Message", "")) or str(exc)).rstrip(".")
            return ExecutorError(
                f"AWS call {call} failed for account {account_id} in {region} at {endpoint} while {doing}: "
                f"{code}: {text}. Fix: {fix}",
                code=code,
            )
        unreachable = isinstance(exc, CONNECTION_ERRORS)
        fix = (
            "check that the endpoint is reachable, then re-run: actions already applied are skipped (live state)"
            if unreachable
            else "see the error; docs/executor.md describes the configuration"
        )
        name = type(exc).__name__
        call = getattr(self._local, "last_call", None) or "(no call yet)"
        text = (str(exc).splitlines()[0] if str(exc) else name).rstrip(".")
        return ExecutorError(
            f"AWS call {call} failed for account {account_id} in {region} at {endpoint} while {doing}: "
            f"{name}: {text}. Fix: {fix}",
            unreachable=unreachable,
        )


def _clean(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return f"{error.get('Code', '')}: {error.get('Message', '')}".strip(": ")
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def _iam_prefix(signing_name: str) -> str:
    return {"monitoring": "cloudwatch"}.get(signing_name, signing_name)


def _fix(code: str, account_id: str) -> str:
    if code in {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "UnauthorizedException"}:
        return (
            f"allow the call in the executor role of account {account_id} "
            "(docs/iam/executor-policy.json lists every action the executor needs)"
        )
    if code in {"IncorrectInstanceState", "IncorrectState", "InvalidVolume.InUse"}:
        return "the resource changed since the plan; re-run the plan and approve again"
    if code in {"InsufficientInstanceCapacity", "Unsupported", "InstanceLimitExceeded"}:
        return "choose another instance type or zone in the plan; AWS cannot start this type here now"
    if code.endswith(".NotFound"):
        return "the resource no longer exists; re-run the plan"
    return "see the AWS error; docs/executor.md describes what each action calls"
