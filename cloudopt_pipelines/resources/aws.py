"""The Dagster resource that reaches real AWS accounts (``CLOUDOPT_ENV=aws``)."""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import Field, PrivateAttr

from cloudopt_pipelines.resources.secrets import resolved, secret_from_env
from cloudopt_pipelines.resources.sources import SourceResource
from cloudopt_pipelines.settings import EXTERNAL_ID_VAR, AwsSourceSettings, load_settings
from cloudopt_pipelines.sources.aws import DEFAULT_ROLE_SESSION_NAME, AwsCollector, AwsSettings


class AwsResource(SourceResource):
    """Inventory and CloudWatch metrics of real AWS accounts, read with boto3 through a read-only role.

    Accounts come from ``accounts`` (``CLOUDOPT_ACCOUNTS``) or, when empty, from AWS Organizations
    (ACTIVE accounts). In every account other than the one of the base credentials the collector
    assumes ``assume_role`` (``CLOUDOPT_ASSUME_ROLE``); assumed credentials are cached per account and
    refreshed before they expire. Base credentials come from boto3's usual chain (``AWS_PROFILE``,
    ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, instance or task roles) and never appear in logs,
    metadata or the warehouse. Calls use adaptive retries, so throttled calls back off and complete.
    The IAM policy the role needs is ``docs/iam/collector-readonly-policy.json``; see ``docs/aws.md``.
    """

    regions: list[str] = Field(
        default=["us-east-1"],
        description="Regions to collect in every account (CLOUDOPT_REGIONS, comma-separated).",
    )
    accounts: list[str] = Field(
        default=[],
        description="12-digit account ids to collect (CLOUDOPT_ACCOUNTS); empty: discover them with AWS Organizations.",
    )
    endpoint_url: str | None = Field(
        default=None,
        description="Endpoint of every AWS service (a test server); unset: AWS_ENDPOINT_URL or the real endpoints.",
    )
    profile: str | None = Field(
        default=None, description="Named profile of the base credentials (AWS_PROFILE); unset: boto3's default chain."
    )
    assume_role: str | None = Field(
        default=None,
        description=(
            "Role assumed in each member account (CLOUDOPT_ASSUME_ROLE): a role name such as 'CloudoptReadOnly', "
            "or an ARN template such as 'arn:aws:iam::{account_id}:role/CloudoptReadOnly'."
        ),
    )
    external_id: str | None = Field(
        default=None,
        description=(
            "External id required by the role's trust policy: dg.EnvVar('CLOUDOPT_EXTERNAL_ID'), read at run "
            "time and never part of the definitions; never logged."
        ),
    )
    role_session_name: str = Field(
        default=DEFAULT_ROLE_SESSION_NAME, description="Session name of assumed roles, seen in CloudTrail."
    )
    role_duration_seconds: int = Field(
        default=3600, ge=900, le=43200, description="Lifetime requested for assumed-role credentials."
    )
    credential_refresh_margin_seconds: int = Field(
        default=300, ge=1, description="Assumed-role credentials are refreshed this long before they expire."
    )
    max_attempts: int = Field(
        default=10, ge=1, description="Attempts per API call, first one included, with adaptive retry backoff."
    )
    connect_timeout_seconds: float = Field(default=10.0, gt=0, description="Connect timeout of every AWS call.")
    read_timeout_seconds: float = Field(default=60.0, gt=0, description="Read timeout of every AWS call.")
    max_pool_connections: int = Field(default=20, ge=1, description="HTTP connections kept per boto3 client.")
    page_size: int | None = Field(
        default=None, ge=1, description="Page size of paginated list calls; unset: each API's default."
    )
    region_concurrency: int = Field(default=4, ge=1, description="Regions of one account collected at once.")
    cluster_tag_key: str = Field(
        default="cloudopt:cluster",
        description=(
            "EC2 tag whose value names the custom cluster an instance belongs to (CLOUDOPT_CLUSTER_TAG_KEY); "
            "its members are deployment type custom_cluster, sized as one group."
        ),
    )

    _collector: AwsCollector | None = PrivateAttr(default=None)

    @classmethod
    def from_settings(cls, aws: AwsSourceSettings) -> AwsResource:
        """The resource for the parsed settings; the external id goes in as ``dg.EnvVar``, never as its value."""
        return cls(
            regions=list(aws.regions),
            accounts=list(aws.accounts),
            endpoint_url=aws.endpoint_url,
            profile=aws.profile,
            assume_role=aws.assume_role,
            external_id=secret_from_env(EXTERNAL_ID_VAR, aws.external_id_set),
            max_attempts=aws.max_attempts,
            cluster_tag_key=aws.cluster_tag_key,
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AwsResource:
        """The resource configured from ``CLOUDOPT_ACCOUNTS``, ``CLOUDOPT_REGIONS``, ``CLOUDOPT_ASSUME_ROLE``,
        ``CLOUDOPT_EXTERNAL_ID`` and the usual AWS variables (parsed by ``settings.load_settings``)."""
        return cls.from_settings(load_settings(environ).aws)

    def settings(self) -> AwsSettings:
        """The plain settings the collector runs with."""
        return AwsSettings(
            regions=tuple(self.regions),
            accounts=tuple(self.accounts),
            endpoint_url=self.endpoint_url,
            profile=self.profile,
            assume_role=self.assume_role,
            external_id=resolved(self.external_id),
            role_session_name=self.role_session_name,
            role_duration_seconds=self.role_duration_seconds,
            credential_refresh_margin_seconds=self.credential_refresh_margin_seconds,
            max_attempts=self.max_attempts,
            connect_timeout_seconds=self.connect_timeout_seconds,
            read_timeout_seconds=self.read_timeout_seconds,
            max_pool_connections=self.max_pool_connections,
            page_size=self.page_size,
            region_concurrency=self.region_concurrency,
            cluster_tag_key=self.cluster_tag_key,
        )

    def get_collector(self) -> AwsCollector:
        """The collector of this resource, built once; its boto3 clients are built on first use."""
        if self._collector is None:
            self._collector = AwsCollector(self.settings())
        return self._collector
