"""The project's shared words: deployment types, resource kinds, tag keys and what tag values mean.

Pure (no Dagster, no I/O). Collectors, optimisers, the plan and the executor all read tags through
these names and functions, so that one resource is production (or protected) for all of them alike.

Production, the safe side first: a resource is production when ANY of its environment tags (keys
compared case-insensitively) has a production-like value, whatever the others say (``env=dev`` plus
``Environment=prod`` is production). A value is production-like when, lower-cased and stripped, it
equals one of ``PRODUCTION_VALUES`` or starts with one followed by a character that is not a letter
(``prod-eu``, ``prod_2``, ``live.eu``, ``prd1``); ``preprod`` or ``products`` are not. A resource
without any environment tag counts as production.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

# --------------------------------------------------------------------------------- deployment types

STANDALONE = "standalone"
ASG = "asg"
KUBERNETES = "kubernetes"
ECS = "ecs"
EMR = "emr"
CUSTOM_CLUSTER = "custom_cluster"
#: How a resource is deployed: the optimiser that owns it is chosen by this value.
DEPLOYMENT_TYPES = (STANDALONE, ASG, KUBERNETES, ECS, EMR, CUSTOM_CLUSTER)
#: Deployment types whose members are sized with their cluster, never one by one.
CLUSTER_DEPLOYMENT_TYPES = (KUBERNETES, ECS, EMR, CUSTOM_CLUSTER)

# ----------------------------------------------------------------------------------- resource kinds

EC2_INSTANCE = "ec2_instance"
EBS_VOLUME = "ebs_volume"
ELASTIC_IP = "elastic_ip"
AUTO_SCALING_GROUP = "asg"
ECS_CLUSTER = "ecs_cluster"
ECS_SERVICE = "ecs_service"
EMR_CLUSTER = "emr_cluster"
EKS_CLUSTER = "eks_cluster"
EKS_NODEGROUP = "eks_nodegroup"
K8S_NODE = "k8s_node"
K8S_NODEPOOL = "k8s_nodepool"
K8S_WORKLOAD = "k8s_workload"
K8S_HPA = "k8s_hpa"
#: Every ``resources.resource_kind`` a collector may write.
RESOURCE_KINDS = (
    EC2_INSTANCE,
    EBS_VOLUME,
    ELASTIC_IP,
    AUTO_SCALING_GROUP,
    ECS_CLUSTER,
    ECS_SERVICE,
    EMR_CLUSTER,
    EKS_CLUSTER,
    EKS_NODEGROUP,
    K8S_NODE,
    K8S_NODEPOOL,
    K8S_WORKLOAD,
)

# ---------------------------------------------------------------------------------------- tag keys

#: Environment tag keys, matched case-insensitively (``ENV`` and ``Environment`` count too).
ENVIRONMENT_TAG_KEYS = ("env", "environment", "Environment")
TEAM_TAG_KEYS = ("team", "Team", "owner", "Owner")
SERVICE_TAG_KEYS = ("service", "Service", "app", "App")
NAME_TAG_KEY = "Name"
#: A resource tagged ``cloudopt:protect`` with one of ``PROTECT_TAG_VALUES`` is never changed.
PROTECT_TAG_KEY = "cloudopt:protect"
#: Its Kubernetes form (a label or an annotation: ``:`` is not allowed in label keys), same values.
K8S_PROTECT_KEY = "cloudopt.io/protect"
#: Kubernetes namespaces the executor never changes, whatever the configuration adds.
K8S_PROTECTED_NAMESPACES = ("kube-system", "kube-public", "kube-node-lease")
#: The custom cluster a resource belongs to (``custom_cluster`` deployment type).
CLUSTER_TAG_KEY = "cloudopt:cluster"

# ---------------------------------------------------------------------------------------- values

#: Values of ``PROTECT_TAG_KEY`` that protect (compared lower-cased and stripped: ``TRUE``, ``Yes``).
PROTECT_TAG_VALUES = ("true", "1", "yes")
#: Environment values that mean production (and, as prefixes, ``prod-eu``, ``live-2``, ...).
PRODUCTION_VALUES = ("prod", "production", "prd", "live")


def environment_values(
    tags: Mapping[str, str], environment_tag_keys: Sequence[str] = ENVIRONMENT_TAG_KEYS
) -> list[tuple[str, str]]:
    """Every non-empty environment tag as ``(key, value)``, keys matched case-insensitively, sorted by key."""
    wanted = {k.lower() for k in environment_tag_keys}
    found = []
    for key, value in tags.items():
        text = "" if value is None else str(value).strip()
        if str(key).lower() in wanted and text:
            found.append((str(key), text))
    return sorted(found)


def production_match(value: str, production_values: Sequence[str] = PRODUCTION_VALUES) -> str | None:
    """The production value ``value`` means (``prod-eu`` -> ``prod``), or None when it is not production-like."""
    text = value.strip().lower()
    # Longest first, so that "production-eu" reports "production", not "prod" (which does not match it).
    for candidate in sorted((v.strip().lower() for v in production_values), key=len, reverse=True):
        if candidate and re.match(rf"{re.escape(candidate)}(?![a-z])", text):
            return candidate
    return None


def is_production(
    tags: Mapping[str, str],
    environment_tag_keys: Sequence[str] = ENVIRONMENT_TAG_KEYS,
    production_values: Sequence[str] = PRODUCTION_VALUES,
    untagged: bool = True,
) -> bool:
    """True when any environment tag has a production-like value; ``untagged`` when there is no such tag."""
    values = environment_values(tags, environment_tag_keys)
    if not values:
        return untagged
    return any(production_match(v, production_values) for _, v in values)


def environment_of(
    tags: Mapping[str, str],
    environment_tag_keys: Sequence[str] = ENVIRONMENT_TAG_KEYS,
    production_values: Sequence[str] = PRODUCTION_VALUES,
) -> tuple[str, str] | None:
    """The environment tag that decides: the first production-like one, else the first; None when untagged."""
    values = environment_values(tags, environment_tag_keys)
    if not values:
        return None
    return next(((k, v) for k, v in values if production_match(v, production_values)), values[0])


def is_protected(
    tags: Mapping[str, str],
    protect_tag_key: str = PROTECT_TAG_KEY,
    protect_tag_values: Sequence[str] = PROTECT_TAG_VALUES,
) -> bool:
    """True when the protect tag holds one of ``protect_tag_values`` (case and surrounding blanks ignored)."""
    value = tags.get(protect_tag_key)
    return value is not None and str(value).strip().lower() in {v.strip().lower() for v in protect_tag_values}
