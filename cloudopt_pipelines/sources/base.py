"""The interface every collector implements, the demo one and the AWS one alike."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Protocol

import pyarrow as pa

SCHEDULABLE_STATUSES = frozenset({"ACTIVE", "CONFIGURED"})
UNREACHABLE = "UNREACHABLE"
"""The status of an account id the source does not list (a typo, a closed account): never scheduled by cloudopt run."""
ENV_TAG_KEYS = ("env", "environment", "Environment")
TEAM_TAG_KEYS = ("team", "Team", "owner", "Owner")
SERVICE_TAG_KEYS = ("service", "Service", "app", "App")


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


def classify_deployment(tags: Mapping[str, str], ecs_member: bool = False) -> str:
    """The deployment type of an EC2 instance from its tags and cluster membership.

    An instance that belongs to a cluster or a group is never sized as a standalone instance.
    """
    keys = set(tags)
    if "aws:elasticmapreduce:job-flow-id" in keys:
        return "emr"
    if (
        "eks:cluster-name" in keys
        or any(k.startswith("kubernetes.io/cluster/") for k in keys)
        or any(k.startswith("karpenter.sh/") or k.startswith("karpenter.k8s.aws/") for k in keys)
    ):
        return "kubernetes"
    if ecs_member or "aws:ecs:clusterName" in keys:
        return "ecs"
    if "aws:autoscaling:groupName" in keys:
        return "asg"
    return "standalone"


def first_tag(tags: Mapping[str, str], keys: tuple[str, ...]) -> str | None:
    """The value of the first of ``keys`` present in ``tags``."""
    for key in keys:
        if tags.get(key):
            return tags[key]
    return None


def tag_columns(tags: Mapping[str, str]) -> dict[str, str | None]:
    """The tag-derived columns of the ``resources`` table: name, env, team, service and the JSON tags."""
    return {
        "name": tags.get("Name"),
        "env": first_tag(tags, ENV_TAG_KEYS),
        "team": first_tag(tags, TEAM_TAG_KEYS),
        "service": first_tag(tags, SERVICE_TAG_KEYS),
        "tags": tags_json(tags),
    }


def tags_json(tags: Mapping[str, str]) -> str:
    """Tags as a stable JSON object string (sorted keys), the form stored in the lake."""
    return json.dumps(dict(sorted(tags.items())), separators=(",", ":"))
