"""The Dagster resources that change AWS resources and Kubernetes objects, through their own identities (never
the collectors')."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import dagster as dg
from pydantic import Field, PrivateAttr

from cloudopt_pipelines.aws import AwsSettings
from cloudopt_pipelines.executor.aws import DEFAULT_EXECUTOR_SESSION_NAME, ExecutorAws
from cloudopt_pipelines.executor.kubernetes import KubernetesAccess, KubernetesTarget
from cloudopt_pipelines.executor.service import ExecutorPaths
from cloudopt_pipelines.resources.secrets import resolved, secret_from_env
from cloudopt_pipelines.settings import EXECUTOR_EXTERNAL_ID_VAR, Settings, load_settings


class AwsExecutorResource(dg.ConfigurableResource):
    """Applies approved actions to AWS through the executor role (``CLOUDOPT_EXECUTOR_ROLE``).

    The role is assumed in every account, the base credentials' own included, so that write permissions
    live in that role only (``docs/iam/executor-policy.json``) and the collector's role stays read-only.
    Credentials are cached per account and refreshed before they expire; calls use adaptive retries.
    ``get_aws()`` returns the ``ExecutorAws`` the executor uses; see ``docs/executor.md``.
    """

    regions: list[str] = Field(
        default=["us-east-1"], description="Region used when a plan row has none (CLOUDOPT_REGIONS, first one)."
    )
    endpoint_url: str | None = Field(
        default=None, description="Endpoint of every AWS service (a test server); unset: AWS_ENDPOINT_URL or AWS."
    )
    profile: str | None = Field(default=None, description="Named profile of the base credentials (AWS_PROFILE).")
    executor_role: str | None = Field(
        default=None,
        description=(
            "Role assumed in every account to make changes (CLOUDOPT_EXECUTOR_ROLE): a name such as "
            "'CloudoptExecutor' or an ARN template 'arn:aws:iam::{account_id}:role/CloudoptExecutor'. "
            "Unset: the base credentials are used as they are (only for a single account)."
        ),
    )
    external_id: str | None = Field(
        default=None,
        description=(
            "External id of the executor role's trust policy: dg.EnvVar('CLOUDOPT_EXECUTOR_EXTERNAL_ID'), read at "
            "run time and never part of the definitions."
        ),
    )
    role_session_name: str = Field(
        default=DEFAULT_EXECUTOR_SESSION_NAME, description="Session name of the executor role, seen in CloudTrail."
    )
    max_attempts: int = Field(default=5, ge=1, description="Attempts per call with adaptive retries (first included).")
    connect_timeout_seconds: float = Field(default=10.0, gt=0, description="Connect timeout of every AWS call.")
    read_timeout_seconds: float = Field(default=60.0, gt=0, description="Read timeout of every AWS call.")
    poll_seconds: float = Field(default=5.0, gt=0, description="Interval between state checks while waiting.")
    wait_timeout_seconds: float = Field(
        default=600.0, gt=0, description="Longest wait for an instance to stop/start or a snapshot to complete."
    )

    home: str | None = Field(
        default=None,
        description="Directory holding approvals/, audit/ and exports/ (default: $CLOUDOPT_HOME).",
    )

    _aws: ExecutorAws | None = PrivateAttr(default=None)

    @classmethod
    def from_settings(cls, settings: Settings, home: Path | str | None = None) -> AwsExecutorResource:
        """The resource for the parsed settings; the external id goes in as ``dg.EnvVar``, never as its value."""
        return cls(
            regions=list(settings.aws.regions),
            endpoint_url=settings.aws.endpoint_url,
            profile=settings.aws.profile,
            executor_role=settings.executor.role,
            external_id=secret_from_env(EXECUTOR_EXTERNAL_ID_VAR, settings.executor.external_id_set),
            home=None if home is None else str(home),
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, home: Path | str | None = None) -> AwsExecutorResource:
        """Configured from ``CLOUDOPT_EXECUTOR_ROLE``, ``CLOUDOPT_EXECUTOR_EXTERNAL_ID``, ``CLOUDOPT_REGIONS`` and
        the usual AWS variables (parsed by ``settings.load_settings``)."""
        return cls.from_settings(load_settings(environ), home=home)

    def settings(self) -> AwsSettings:
        """The plain settings the executor's AWS access runs with."""
        return AwsSettings(
            regions=tuple(self.regions),
            endpoint_url=self.endpoint_url,
            profile=self.profile,
            assume_role=self.executor_role,
            external_id=resolved(self.external_id),
            role_session_name=self.role_session_name,
            max_attempts=self.max_attempts,
            connect_timeout_seconds=self.connect_timeout_seconds,
            read_timeout_seconds=self.read_timeout_seconds,
        )

    def get_paths(self) -> ExecutorPaths:
        """Where approvals, the audit and exports live (files under the home, or CLOUDOPT_EXECUTOR_STORE's)."""
        settings = load_settings()
        return ExecutorPaths(Path(self.home) if self.home else settings.home, store=settings.executor.store)

    def get_aws(self) -> ExecutorAws:
        """The executor's AWS access, built once; clients are built on first use."""
        if self._aws is None:
            self._aws = ExecutorAws(
                self.settings(), poll_seconds=self.poll_seconds, wait_timeout_seconds=self.wait_timeout_seconds
            )
        return self._aws


class KubernetesExecutorResource(dg.ConfigurableResource):
    """Applies approved Kubernetes actions (container requests and limits, HPAs) to the clusters of the clusters
    file (``CLOUDOPT_K8S_CLUSTERS``) through the official client, as each entry's executor identity
    (``executor_kubeconfig`` / ``executor_context``, bound to the write ClusterRole of docs/kubernetes.md).
    Unset: the executor has no Kubernetes target and Kubernetes rows are skipped with "no plug-in"."""

    clusters_file: str | None = Field(
        default=None, description="Path of the clusters file (CLOUDOPT_K8S_CLUSTERS); unset: no Kubernetes target."
    )

    _target: KubernetesTarget | None = PrivateAttr(default=None)

    @classmethod
    def from_settings(cls, settings: Settings) -> KubernetesExecutorResource:
        """The resource for the parsed settings (``CLOUDOPT_K8S_CLUSTERS``)."""
        return cls(clusters_file=None if settings.k8s_clusters_file is None else str(settings.k8s_clusters_file))

    def get_target(self) -> KubernetesTarget | None:
        """The Kubernetes execution target, built once (API clients on first use); None without a clusters file."""
        if self.clusters_file is None:
            return None
        if self._target is None:
            from cloudopt_pipelines.sources.kubernetes_config import load_clusters

            self._target = KubernetesTarget(KubernetesAccess(load_clusters(self.clusters_file)))
        return self._target
