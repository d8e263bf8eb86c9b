"""Sessions and clients of AWS: base credentials, assumed roles (cached, refreshed), retries. No Dagster.

The collector and the executor both build their clients here, each with its own role and user agent, so
that credential handling, retries and timeouts are the same code for reading and for changing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import boto3
import botocore.session
from botocore.config import Config
from botocore.credentials import CredentialProvider, CredentialResolver, RefreshableCredentials

log = logging.getLogger(__name__)

DEFAULT_ROLE_SESSION_NAME = "cloudopt-collector"
# The account key of the base credentials' own clients.
BASE_CLIENTS = "(base)"

# (account id, region, role ARN or None) -> a context that turns AWS errors into the caller's own errors.
ErrorScope = Callable[[str, str, str | None], AbstractContextManager[None]]


class AwsSessionError(RuntimeError):
    """An account cannot be reached (no role configured for it, or the role cannot be assumed)."""


@dataclass(frozen=True)
class AwsSettings:
    """Everything needed to reach AWS; no secrets (boto3 finds credentials itself)."""

    regions: tuple[str, ...] = ("us-east-1",)
    accounts: tuple[str, ...] = ()
    endpoint_url: str | None = None
    profile: str | None = None
    assume_role: str | None = None
    external_id: str | None = None
    role_session_name: str = DEFAULT_ROLE_SESSION_NAME
    role_duration_seconds: int = 3600
    credential_refresh_margin_seconds: int = 300
    retry_mode: str = "adaptive"
    max_attempts: int = 10
    connect_timeout_seconds: float = 10.0
    read_timeout_seconds: float = 60.0
    max_pool_connections: int = 20
    page_size: int | None = None
    region_concurrency: int = 4
    # The tag whose value names the self-managed cluster an instance belongs to (custom_cluster).
    cluster_tag_key: str = "cloudopt:cluster"

    def role_arn(self, account_id: str, partition: str = "aws") -> str | None:
        """The role to assume in ``account_id``: a name, an ARN or an ARN template with ``{account_id}``."""
        role = (self.assume_role or "").strip()
        if not role:
            return None
        if "{account_id}" in role:
            return role.format(account_id=account_id)
        if role.startswith("arn:"):
            return role
        return f"arn:{partition}:iam::{account_id}:role/{role}"


def client_config(settings: AwsSettings, user_agent: str) -> Config:
    """Retries (adaptive by default), timeouts and pool size of every client."""
    return Config(
        # total_max_attempts: botocore reads "max_attempts" as retries after the first try (one call more).
        retries={"mode": settings.retry_mode, "total_max_attempts": settings.max_attempts},
        connect_timeout=settings.connect_timeout_seconds,
        read_timeout=settings.read_timeout_seconds,
        max_pool_connections=settings.max_pool_connections,
        user_agent_extra=user_agent,
    )


def partition_of(region: str) -> str:
    """The AWS partition of a region (``aws``, ``aws-cn``, ``aws-us-gov``)."""
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    return "aws"


class _AssumedRoleProvider(CredentialProvider):
    """A botocore credential provider whose credentials come from ``sts:AssumeRole`` and refresh."""

    METHOD = "cloudopt-assume-role"

    def __init__(self, credentials: RefreshableCredentials) -> None:
        super().__init__()
        self._credentials = credentials

    def load(self) -> RefreshableCredentials:
        return self._credentials


@contextmanager
def _no_translation(account_id: str, region: str, role_arn: str | None) -> Iterator[None]:
    yield


class AwsSessions:
    """The boto3 sessions and cached clients of one set of settings.

    ``assume_in_own_account``: assume the role in the base credentials' own account too (the executor, so
    that write permissions live in its role only); else that account uses the base credentials (the
    collector). ``errors`` turns AWS errors of the STS calls into the caller's errors; ``on_client(client, account)`` is
    called once on every client built (to register event hooks; ``account`` is ``(base)`` for the base
    credentials' clients); ``no_role_hint`` ends the error raised
    when an account needs a role and none is configured.
    """

    def __init__(
        self,
        settings: AwsSettings,
        *,
        user_agent: str,
        clock: Callable[[], datetime] | None = None,
        assume_in_own_account: bool = False,
        errors: ErrorScope = _no_translation,
        on_client: Callable[[Any, str], None] | None = None,
        error_type: type[Exception] = AwsSessionError,
        no_role_hint: str = "set CLOUDOPT_ASSUME_ROLE to the role created in every member account (docs/aws.md)",
    ) -> None:
        self.settings = settings
        self.config = client_config(settings, user_agent)
        self._clock = clock or (lambda: datetime.now(UTC))
        self._assume_everywhere = assume_in_own_account
        self._errors, self._on_client = errors, on_client
        self._error_type, self._no_role_hint = error_type, no_role_hint
        self.lock = threading.RLock()
        self._base_session: boto3.Session | None = None
        self._caller_account: str | None = None
        self._sessions: dict[str, boto3.Session] = {}
        self._clients: dict[tuple[str, str, str], Any] = {}

    def caller_account(self, for_account: str = "(base credentials)") -> str:
        """The account id of the base credentials (``sts:GetCallerIdentity``), looked up once.

        ``for_account`` is the account being reached, named in the error if the lookup fails.
        """
        with self.lock:
            if self._caller_account is None:
                region = self.settings.regions[0]
                with self._errors(for_account, region, None):
                    sts = self.base_client("sts", region)
                    self._caller_account = str(sts.get_caller_identity()["Account"])
            return self._caller_account

    def session_for(self, account_id: str) -> boto3.Session:
        """A boto3 session for ``account_id``: the assumed role, or the base session for the base
        credentials' own account (unless ``assume_in_own_account`` and a role is configured). Assumed-role
        credentials are cached per account and refreshed ``credential_refresh_margin_seconds`` before they
        expire."""
        with self.lock:
            session = self._sessions.get(account_id)
            if session is not None:
                return session
            if self._assume_everywhere and self.settings.assume_role:
                session = self._assumed(account_id)
            elif account_id == self.caller_account(account_id):
                session = self.base_session()
            else:
                session = self._assumed(account_id)
            self._sessions[account_id] = session
            return session

    def base_session(self) -> boto3.Session:
        """The boto3 session of the base credentials (profile or default chain)."""
        with self.lock:
            if self._base_session is None:
                self._base_session = boto3.Session(
                    profile_name=self.settings.profile, region_name=self.settings.regions[0]
                )
            return self._base_session

    def _assumed(self, account_id: str) -> boto3.Session:
        region = self.settings.regions[0]
        role_arn = self.settings.role_arn(account_id, partition_of(region))
        if role_arn is None:
            raise self._error_type(
                f"account {account_id} is not the account of the base credentials "
                f"({self.caller_account()}) and no role to assume is configured; {self._no_role_hint}"
            )

        def fetch() -> dict[str, str]:
            params: dict[str, Any] = {
                "RoleArn": role_arn,
                "RoleSessionName": self.settings.role_session_name,
                "DurationSeconds": self.settings.role_duration_seconds,
            }
            if self.settings.external_id:
                params["ExternalId"] = self.settings.external_id
            with self._errors(account_id, region, role_arn):
                sts = self.base_client("sts", region)
                creds = sts.assume_role(**params)["Credentials"]
            log.info("assumed %s for account %s", role_arn, account_id)
            return {
                "access_key": creds["AccessKeyId"],
                "secret_key": creds["SecretAccessKey"],
                "token": creds["SessionToken"],
                "expiry_time": creds["Expiration"].astimezone(UTC).isoformat(),
            }

        first = fetch()
        margin = self.settings.credential_refresh_margin_seconds
        credentials = RefreshableCredentials(
            access_key=first["access_key"],
            secret_key=first["secret_key"],
            token=first["token"],
            expiry_time=datetime.fromisoformat(first["expiry_time"]),
            refresh_using=fetch,
            method=_AssumedRoleProvider.METHOD,
            time_fetcher=self._clock,
            advisory_timeout=margin,
            mandatory_timeout=max(1, min(margin, 120)),
        )
        core = botocore.session.Session()
        core.register_component("credential_provider", CredentialResolver([_AssumedRoleProvider(credentials)]))
        return boto3.Session(botocore_session=core, region_name=region)

    def base_client(self, service: str, region: str) -> Any:
        """The cached client of ``service`` with the base credentials."""
        return self._client_for(BASE_CLIENTS, self.base_session(), service, region)

    def client(self, account_id: str, service: str, region: str) -> Any:
        """The cached client of ``service`` for ``account_id`` in ``region`` (built on first use)."""
        return self._client_for(account_id, self.session_for(account_id), service, region)

    def clients(self) -> list[tuple[tuple[str, str, str], Any]]:
        """Every client built so far: ((account or '(base)', service, region), client)."""
        with self.lock:
            return list(self._clients.items())

    def _client_for(self, key: str, session: boto3.Session, service: str, region: str) -> Any:
        with self.lock:
            cached = self._clients.get((key, service, region))
            if cached is not None:
                return cached
            kwargs: dict[str, Any] = {"region_name": region, "config": self.config}
            if self.settings.endpoint_url:
                kwargs["endpoint_url"] = self.settings.endpoint_url
            client = session.client(service, **kwargs)
            if self._on_client is not None:
                self._on_client(client, key)
            self._clients[(key, service, region)] = client
            return client
