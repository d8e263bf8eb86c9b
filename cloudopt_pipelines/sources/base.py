"""The interface every collector implements, the demo one and the AWS one alike."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Protocol

import pyarrow as pa

from cloudopt_pipelines.vocabulary import (
    ASG,
    CLUSTER_TAG_KEY,
    CUSTOM_CLUSTER,
    ECS,
    EMR,
    ENVIRONMENT_TAG_KEYS,
    KUBERNETES,
    SERVICE_TAG_KEYS,
    STANDALONE,
    TEAM_TAG_KEYS,
    environment_of,
)

SCHEDULABLE_STATUSES = frozenset({"ACTIVE", "CONFIGURED"})
UNREACHABLE = "UNREACHABLE"
"""The status of an account id the source does not list (a typo, a closed account): never scheduled by cloudopt run."""
ENV_TAG_KEYS = ENVIRONMENT_TAG_KEYS


@dataclass
class Collected:
    """One partition's worth of rows plus what a person wants to see about how it was collected."""

    table: pa.Table
    metadata: dict[str, Any] = field(default_factory=dict)


class Collector(Protocol):
    """Collects one account's inventory and metrics for one UTC day."""

    name: str

    def list_accounts(self) -> list[str]:
        """The account ids this collector can reach."""
        ...

    def collect_inventory(self, account_id: str, day: date) -> Collected:
        """Rows of the ``resources`` table (schema in storage/schemas.py)."""
        ...

    def collect_metrics(self, account_id: str, day: date) -> Collected:
        """Rows of the ``utilization_5m`` table (schema in storage/schemas.py)."""
        ...

    def collect_cluster_metrics(self, account_id: str, day: date) -> Collected:
        """Rows of the ``cluster_metrics_5m`` table: ECS and EMR cluster series (schema in storage/schemas.py)."""
        ...

    def list_account_statuses(self) -> dict[str, str]:
        """Every account the source knows with its status; only ACTIVE or CONFIGURED ones are scheduled."""
        ...


def classify_deployment(
    tags: Mapping[str, str], ecs_member: bool = False, cluster_tag_key: str = CLUSTER_TAG_KEY
) -> str:
    """The deployment type of an EC2 instance from its tags and cluster membership.

    An instance that belongs to a cluster or a group is never sized as a standalone instance; one tagged
    ``cluster_tag_key`` (default ``cloudopt:cluster``) belongs to a self-managed cluster (``custom_cluster``).
    """
    keys = set(tags)
    if "aws:elasticmapreduce:job-flow-id" in keys:
        return EMR
    if (
        "eks:cluster-name" in keys
        or any(k.startswith("kubernetes.io/cluster/") for k in keys)
        or any(k.startswith("karpenter.sh/") or k.startswith("karpenter.k8s.aws/") for k in keys)
    ):
        return KUBERNETES
    if ecs_member or "aws:ecs:clusterName" in keys:
        return ECS
    if tags.get(cluster_tag_key):
        return CUSTOM_CLUSTER
    if "aws:autoscaling:groupName" in keys:
        return ASG
    return STANDALONE


def first_tag(tags: Mapping[str, str], keys: tuple[str, ...]) -> str | None:
    """The value of the first of ``keys`` present in ``tags``."""
    for key in keys:
        if tags.get(key):
            return tags[key]
    return None


def tag_columns(tags: Mapping[str, str]) -> dict[str, str | None]:
    """The tag-derived columns of the ``resources`` table: name, env, team, service and the JSON tags.

    ``env`` is the environment tag that decides (``vocabulary.environment_of``): with conflicting
    environment tags, the production-like one.
    """
    env = environment_of(tags)
    return {
        "name": tags.get("Name"),
        "env": env[1] if env else None,
        "team": first_tag(tags, TEAM_TAG_KEYS),
        "service": first_tag(tags, SERVICE_TAG_KEYS),
        "tags": tags_json(tags),
    }


def tags_json(tags: Mapping[str, str]) -> str:
    """Tags as a stable JSON object string (sorted keys), the form stored in the lake."""
    return json.dumps(dict(sorted(tags.items())), separators=(",", ":"))
