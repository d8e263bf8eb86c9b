"""The clusters file named by ``CLOUDOPT_K8S_CLUSTERS``: which Kubernetes clusters are collected, and how.

Validated before anything runs; every error names the file and line at fault. Secrets are never in the
file: Prometheus credentials are read from the environment variables the file names.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

CLUSTERS_ENV = "CLOUDOPT_K8S_CLUSTERS"
DEFAULT_JOB_GROUP_LABELS = (
    "dagster/job",
    "dag_id",
    "workflows.argoproj.io/cron-workflow",
    "workflows.argoproj.io/workflow-template",
)
_DURATION = re.compile(r"^(\d+)(s|m|h|d)$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


class ClustersFileError(ValueError):
    """The clusters file is malformed; the message names the file, the line and the fix."""


@dataclass(frozen=True)
class ClusterConfig:
    """One cluster entry of the clusters file (seconds for every duration)."""

    name: str
    account_id: str
    prometheus_url: str
    kubeconfig: str | None = None  # None: in-cluster configuration (service account)
    context: str | None = None  # None: the kubeconfig's current context
    # the executor's own identity (bound to the write ClusterRole); None: the collector's kubeconfig/context
    executor_kubeconfig: str | None = None
    executor_context: str | None = None
    prometheus_selector: str = ""  # extra label matchers added to every selector, e.g. cluster="prod"
    prometheus_bearer_token_env: str | None = None
    prometheus_username_env: str | None = None
    prometheus_password_env: str | None = None
    prometheus_ca_file: str | None = None
    prometheus_tls_verify: bool = True
    api_timeout_s: float = 30.0
    prometheus_timeout_s: float = 60.0
    step_s: int = 300
    scrape_interval_s: int = 30
    max_range_s: int = 86400
    max_series: int = 5000
    page_size: int = 500
    job_group_labels: tuple[str, ...] = DEFAULT_JOB_GROUP_LABELS

    @property
    def rate_window_s(self) -> int:
        """Rate windows cover at least two scrapes, and never less than one step."""
        return max(2 * self.scrape_interval_s, self.step_s)

    def prometheus_auth(self, environ: Mapping[str, str] | None = None) -> tuple[str | None, tuple[str, str] | None]:
        """(bearer token, (user, password)) read from the environment variables the entry names."""
        env = os.environ if environ is None else environ

        def read(var: str | None) -> str | None:
            if var is None:
                return None
            if var not in env:
                raise ClustersFileError(
                    f"cluster {self.name!r}: environment variable {var} (named in {CLUSTERS_ENV}) is not set; "
                    "export it with the Prometheus credential"
                )
            return env[var]

        token = read(self.prometheus_bearer_token_env)
        user, password = read(self.prometheus_username_env), read(self.prometheus_password_env)
        return token, ((user, password or "") if user is not None else None)


@dataclass(frozen=True)
class ClustersConfig:
    """Every cluster of the file, in file order."""

    path: str
    clusters: tuple[ClusterConfig, ...] = field(default_factory=tuple)

    def for_account(self, account_id: str) -> tuple[ClusterConfig, ...]:
        return tuple(c for c in self.clusters if c.account_id == account_id)

    def get(self, name: str) -> ClusterConfig:
        for c in self.clusters:
            if c.name == name:
                return c
        raise KeyError(f"no cluster named {name!r} in {self.path}")

    @property
    def accounts(self) -> list[str]:
        return sorted({c.account_id for c in self.clusters})


# field -> (type, required); durations are strings such as "5m"
_FIELDS: dict[str, tuple[str, bool]] = {
    "name": ("str", True),
    "account_id": ("account", True),
    "prometheus_url": ("url", True),
    "kubeconfig": ("str", False),
    "context": ("str", False),
    "executor_kubeconfig": ("str", False),
    "executor_context": ("str", False),
    "prometheus_selector": ("str", False),
    "prometheus_bearer_token_env": ("env", False),
    "prometheus_username_env": ("env", False),
    "prometheus_password_env": ("env", False),
    "prometheus_ca_file": ("str", False),
    "prometheus_tls_verify": ("bool", False),
    "api_timeout": ("duration", False),
    "prometheus_timeout": ("duration", False),
    "step": ("duration", False),
    "scrape_interval": ("duration", False),
    "max_range": ("duration", False),
    "max_series": ("int", False),
    "page_size": ("int", False),
    "job_group_labels": ("list", False),
}
_RENAMES = {
    "api_timeout": "api_timeout_s",
    "prometheus_timeout": "prometheus_timeout_s",
    "step": "step_s",
    "scrape_interval": "scrape_interval_s",
    "max_range": "max_range_s",
}


def parse_duration(text: str) -> int:
    """``30s``, ``5m``, ``2h``, ``1d`` in seconds."""
    m = _DURATION.match(text.strip())
    if not m or int(m[1]) <= 0:
        raise ValueError(f"{text!r} is not a duration such as 30s, 5m, 2h or 1d")
    return int(m[1]) * _UNITS[m[2]]


def load_clusters(path: str | Path) -> ClustersConfig:
    """Read and validate a clusters file; raises :class:`ClustersFileError` naming the line at fault."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ClustersFileError(f"{CLUSTERS_ENV}={path}: cannot read the clusters file ({exc})") from exc
    return parse_clusters(text, str(path))


def parse_clusters(text: str, path: str = "<clusters>") -> ClustersConfig:
    """Validate the YAML text of a clusters file (see docs/kubernetes.md for every field)."""

    def fail(node: yaml.Node | None, message: str) -> ClustersFileError:
        line = f":{node.start_mark.line + 1}" if node is not None else ""
        return ClustersFileError(f"{path}{line}: {message}")

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise ClustersFileError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(root, yaml.MappingNode):
        raise fail(root, "the file must be a mapping with a 'clusters:' list")
    top = {k.value: (k, v) for k, v in root.value}
    for key, (knode, _v) in top.items():
        if key != "clusters":
            raise fail(knode, f"unknown key {key!r}; the only top-level key is 'clusters'")
    if "clusters" not in top or not isinstance(top["clusters"][1], yaml.SequenceNode) or not top["clusters"][1].value:
        raise fail(top.get("clusters", (root, None))[0], "'clusters:' must be a non-empty list of cluster entries")
    clusters: list[ClusterConfig] = []
    seen: dict[str, int] = {}
    for entry in top["clusters"][1].value:
        if not isinstance(entry, yaml.MappingNode):
            raise fail(entry, "each cluster entry must be a mapping (name, account_id, prometheus_url, ...)")
        values: dict[str, object] = {}
        for knode, vnode in entry.value:
            key = knode.value
            if key not in _FIELDS:
                raise fail(knode, f"unknown key {key!r} in a cluster entry; known keys: {', '.join(sorted(_FIELDS))}")
            values[key] = _value(key, vnode, fail)
        missing = [k for k, (_t, required) in _FIELDS.items() if required and k not in values]
        if missing:
            raise fail(entry, f"cluster entry is missing required field(s): {', '.join(missing)}")
        name = str(values["name"])
        name_node = next(v for k, v in entry.value if k.value == "name")
        if not _NAME.match(name):
            raise fail(
                name_node, f"cluster name {name!r} must be lowercase letters, digits and '-' (it is part of ids)"
            )
        if name in seen:
            raise fail(name_node, f"duplicate cluster name {name!r} (first on line {seen[name]}); names must be unique")
        seen[name] = name_node.start_mark.line + 1
        kwargs = {_RENAMES.get(k, k): v for k, v in values.items()}
        if "job_group_labels" in kwargs:
            kwargs["job_group_labels"] = tuple(kwargs["job_group_labels"])  # type: ignore[arg-type]
        cluster = ClusterConfig(**kwargs)  # type: ignore[arg-type]
        if cluster.step_s > cluster.max_range_s:
            raise fail(entry, f"cluster {name!r}: step ({cluster.step_s}s) is longer than max_range")
        if (cluster.prometheus_username_env is None) != (cluster.prometheus_password_env is None):
            raise fail(entry, f"cluster {name!r}: give both prometheus_username_env and prometheus_password_env")
        clusters.append(cluster)
    return ClustersConfig(path=path, clusters=tuple(clusters))


def _value(key: str, node: yaml.Node, fail) -> object:
    kind = _FIELDS[key][0]
    if kind == "list":
        if not isinstance(node, yaml.SequenceNode) or not all(isinstance(n, yaml.ScalarNode) for n in node.value):
            raise fail(node, f"{key} must be a list of label keys")
        return [n.value for n in node.value]
    if not isinstance(node, yaml.ScalarNode):
        raise fail(node, f"{key} must be a single value")
    raw, tag = node.value, node.tag
    if kind == "account":
        if tag != "tag:yaml.org,2002:str" and node.style is None:
            raise fail(node, f"account_id {raw} must be quoted ('{raw}') so that leading zeros are kept")
        if not (len(raw) == 12 and raw.isdigit()):
            raise fail(node, f"account_id {raw!r} is not a 12-digit AWS account id")
        return raw
    if kind == "url":
        if not re.match(r"^https?://", raw):
            raise fail(node, f"{key} {raw!r} must be an http:// or https:// URL")
        return raw.rstrip("/")
    if kind == "env":
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", raw):
            raise fail(node, f"{key} must name an environment variable (the secret itself never goes in the file)")
        return raw
    if kind == "bool":
        if raw.lower() not in ("true", "false"):
            raise fail(node, f"{key} must be true or false")
        return raw.lower() == "true"
    if kind == "int":
        if not raw.isdigit() or int(raw) < 1:
            raise fail(node, f"{key} must be a positive integer, got {raw!r}")
        return int(raw)
    if kind == "duration":
        try:
            seconds = parse_duration(raw)
        except ValueError as exc:
            raise fail(node, f"{key}: {exc}") from exc
        return float(seconds) if key.endswith("timeout") else seconds
    return raw
