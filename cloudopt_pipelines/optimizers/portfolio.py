"""The portfolio plan across accounts: recommender candidates -> LP instances -> one decision per resource.

Pure logic: this module never imports dagster. The asset ``plan/portfolio_plan`` (``assets/plan.py``)
and the CLI (``plan_cli.py``) call it; ``docs/portfolio_plan.md`` is the user documentation.

1. **Candidates.** Every recommender hands over the same shape: a resource and its options
   (:class:`Candidate`, :class:`CandidateOption`). :func:`candidates_from_recommendations` adapts the
   standalone EC2 optimiser's ``recommendations`` table; the Kubernetes and cluster optimisers plug in
   with adapters of their own. :func:`merge_candidates` resolves what two recommenders say about one
   resource.
2. **Labels.** :func:`label_candidates` gives each resource a group (tag ``team``, else ``service``, else
   ``ungrouped``) and an environment (tag ``env``, normalised by aliases; untagged = ``prod``).
3. **Problem.** :func:`build_problem` turns the config file (:func:`load_config`) into the
   :class:`~cloudopt_pipelines.optimizers.linear.LinearOptimizer` input: one LP group per
   (group, environment) cell; per-resource rules (risk, regions) are filters on the options.
4. **Plan.** :func:`solve_problem`, :func:`plan_table` (PORTFOLIO_PLAN rows, one per resource, keeps
   included, each with its reason) and :func:`verify_plan` (the blocking check: every rule recomputed
   on the written rows, independently of the solver).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path
from typing import Any

import pyarrow as pa

from cloudopt_pipelines import vocabulary
from cloudopt_pipelines.optimizers.linear import KEEP, LinearOptimizer, Solution, check_plan
from cloudopt_pipelines.project_files import default_constraints_path
from cloudopt_pipelines.settings import plan_constraints
from cloudopt_pipelines.storage.schemas import MAX_COST_USD, PORTFOLIO_PLAN

CONFIG_ENV = "CLOUDOPT_PLAN_CONSTRAINTS"
DEFAULT_CONFIG_PATH = default_constraints_path()
BUILT_IN = "<built-in defaults>"

PORTFOLIO_KEYS = ("monthly_budget_usd", "max_one_time_cost_usd", "max_changes", "max_average_performance_risk")
RULE_KEYS = (
    "max_performance_risk",
    "allowed_regions",
    "min_on_demand_share",
    "max_spot_share",
    "min_zones",
    "min_capacity_vcpu_pct",
    "min_capacity_memory_pct",
)
GROUPING_KEYS = ("group_tags", "default_group", "environment_tags", "default_environment", "environment_aliases")
TOP_KEYS = ("version", "grouping", "portfolio", "groups", "environments", "protected_ids")
DEFAULT_ALIASES = {
    "prod": list(vocabulary.PRODUCTION_VALUES),
    "staging": ["staging", "stage", "stg", "uat"],
    "dev": ["dev", "development", "test", "sandbox"],
}
#: Solver statuses with a plan; anything else writes keeps only and fails the check.
PLAN_STATUSES = ("optimal", "time_limit")
_TOL = 1e-6


class ConfigError(ValueError):
    """A constraints file that cannot be used: names the file, the key and the fix."""


class NoAccountsError(ValueError):
    """No account has recommendations for the day: there is nothing to plan."""


# ------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class PlanConfig:
    """The validated constraints config (see ``config/constraints.yaml``)."""

    source: str = BUILT_IN
    group_tags: tuple[str, ...] = ("team", "service")
    default_group: str = "ungrouped"
    environment_tags: tuple[str, ...] = vocabulary.ENVIRONMENT_TAG_KEYS
    default_environment: str = "prod"
    environment_aliases: Mapping[str, str] = field(
        default_factory=lambda: {alias: env for env, aliases in DEFAULT_ALIASES.items() for alias in aliases}
    )
    portfolio: Mapping[str, Any] = field(default_factory=dict)
    groups: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    environments: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    protected_ids: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Canonical form (for the plan id and metadata); ``source`` excluded."""
        return {
            "group_tags": list(self.group_tags),
            "default_group": self.default_group,
            "environment_tags": list(self.environment_tags),
            "default_environment": self.default_environment,
            "environment_aliases": dict(sorted(self.environment_aliases.items())),
            "portfolio": dict(sorted(self.portfolio.items())),
            "groups": {g: dict(sorted(r.items())) for g, r in sorted(self.groups.items())},
            "environments": {e: dict(sorted(r.items())) for e, r in sorted(self.environments.items())},
            "protected_ids": sorted(self.protected_ids),
        }


def config_path(explicit: str | Path | None = None, environ: Mapping[str, str] | None = None) -> tuple[Path, str]:
    """The constraints file to use and why: explicit (asset config / CLI) > $CLOUDOPT_PLAN_CONSTRAINTS > default."""
    if explicit:
        return Path(explicit).expanduser(), "asset config constraints_path"
    from_env = plan_constraints(environ)
    if from_env is not None:
        return from_env, f"${CONFIG_ENV}"
    return DEFAULT_CONFIG_PATH, "default"


def load_config(explicit: str | Path | None = None, environ: Mapping[str, str] | None = None) -> PlanConfig:
    """Read and validate the constraints file (YAML or JSON); errors name the file and the key."""
    import yaml

    path, why = config_path(explicit, environ)
    if not path.is_file():
        raise ConfigError(
            f"constraints file {path} does not exist (chosen by: {why}); create it from "
            f"{DEFAULT_CONFIG_PATH} or point {CONFIG_ENV} / the asset config at an existing file"
        )
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_config(data if data is not None else {}, str(path))


def parse_config(data: Any, source: str = BUILT_IN) -> PlanConfig:
    """Validate a config mapping; every error names ``source`` and the dotted key at fault."""

    def fail(key: str, problem: str) -> ConfigError:
        return ConfigError(f"{source}: '{key}' {problem}")

    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: the top level must be a mapping with keys {', '.join(TOP_KEYS)}")
    _unknown(data, TOP_KEYS, "", fail)
    version = data.get("version", 1)
    if version != 1:
        raise fail("version", f"must be 1, got {version!r}")

    grouping = data.get("grouping") or {}
    if not isinstance(grouping, Mapping):
        raise fail("grouping", "must be a mapping")
    _unknown(grouping, GROUPING_KEYS, "grouping.", fail)
    defaults = PlanConfig()
    group_tags = _str_list(grouping.get("group_tags", list(defaults.group_tags)), "grouping.group_tags", fail)
    env_tags = _str_list(
        grouping.get("environment_tags", list(defaults.environment_tags)), "grouping.environment_tags", fail
    )
    default_group = _name(grouping.get("default_group", defaults.default_group), "grouping.default_group", fail)
    default_env = _name(
        grouping.get("default_environment", defaults.default_environment), "grouping.default_environment", fail
    )
    raw_aliases = grouping.get("environment_aliases", DEFAULT_ALIASES)
    if not isinstance(raw_aliases, Mapping):
        raise fail("grouping.environment_aliases", "must map an environment to a list of tag values")
    aliases: dict[str, str] = {}
    for env, values in raw_aliases.items():
        env = _name(env, "grouping.environment_aliases", fail)
        for value in _str_list(values, f"grouping.environment_aliases.{env}", fail):
            if aliases.get(value.lower(), env) != env:
                raise fail(
                    f"grouping.environment_aliases.{env}",
                    f"repeats {value!r}, already an alias of {aliases[value.lower()]!r}",
                )
            aliases[value.lower()] = env

    portfolio = data.get("portfolio") or {}
    if not isinstance(portfolio, Mapping):
        raise fail("portfolio", f"must be a mapping with keys {', '.join(PORTFOLIO_KEYS)}")
    _unknown(portfolio, PORTFOLIO_KEYS, "portfolio.", fail)
    scalars: dict[str, Any] = {}
    for key, value in portfolio.items():
        if value is None:
            continue
        integer = key == "max_changes"
        upper = 4.0 if key == "max_average_performance_risk" else None
        scalars[key] = _num(value, f"portfolio.{key}", fail, integer=integer, upper=upper)
        if integer:
            scalars[key] = int(scalars[key])

    sections: dict[str, dict[str, dict[str, Any]]] = {}
    for section in ("groups", "environments"):
        raw = data.get(section) or {}
        if not isinstance(raw, Mapping):
            raise fail(section, "must map a name (or '*' for every one) to its rules")
        parsed: dict[str, dict[str, Any]] = {}
        for name, rules in raw.items():
            name = _name(name, section, fail)
            prefix = f"{section}.{name}"
            if rules is None:
                rules = {}
            if not isinstance(rules, Mapping):
                raise fail(prefix, f"must be a mapping of rules ({', '.join(RULE_KEYS)})")
            _unknown(rules, RULE_KEYS, prefix + ".", fail)
            parsed[name] = {key: _rule(key, value, f"{prefix}.{key}", fail) for key, value in rules.items()}
        sections[section] = parsed

    protected = data.get("protected_ids") or []
    protected_ids = tuple(_str_list(protected, "protected_ids", fail))
    return PlanConfig(
        source=source,
        group_tags=tuple(group_tags),
        default_group=default_group,
        environment_tags=tuple(env_tags),
        default_environment=default_env,
        environment_aliases=aliases,
        portfolio=scalars,
        groups=sections["groups"],
        environments=sections["environments"],
        protected_ids=protected_ids,
    )


def _unknown(mapping: Mapping, valid: Sequence[str], prefix: str, fail) -> None:
    for key in mapping:
        if key not in valid:
            raise fail(f"{prefix}{key}", f"is not a known key; valid keys here: {', '.join(valid)}")


def _name(value: Any, key: str, fail) -> str:
    if not isinstance(value, str) or not value.strip() or "/" in value:
        raise fail(key, f"must be a non-empty name without '/', got {value!r}")
    return value.strip()


def _str_list(value: Any, key: str, fail) -> list[str]:
    if isinstance(value, str) or not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise fail(key, f"must be a list of non-empty strings, got {value!r}")
    return list(value)


def _num(value: Any, key: str, fail, *, integer: bool = False, upper: float | None = None) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
    ok = ok and (upper is None or value <= upper) and (not integer or float(value).is_integer())
    if not ok:
        kind = "a whole number" if integer else "a number"
        bound = f" between 0 and {upper:g}" if upper is not None else " >= 0"
        raise fail(key, f"must be {kind}{bound} (or null for none), got {value!r}")
    return float(value)


def _rule(key: str, value: Any, where: str, fail) -> Any:
    if value is None:
        return None  # explicitly disables the '*' default
    if key == "allowed_regions":
        return sorted(set(_str_list(value, where, fail)))
    if key == "min_zones":
        return int(_num(value, where, fail, integer=True))
    upper = {"max_performance_risk": 4.0, "min_on_demand_share": 1.0, "max_spot_share": 1.0}.get(key, 100.0)
    return _num(value, where, fail, upper=upper)


# --------------------------------------------------------------------------------- candidates


@dataclass(frozen=True)
class CandidateOption:
    """One state a resource can take (``keep`` = as it is), as any recommender describes it."""

    name: str
    action: str
    monthly_cost_usd: float
    one_time_cost_usd: float = 0.0
    market: str = "on_demand"
    performance_risk: float = 0.0
    vcpu: float = 0.0
    memory_gib: float = 0.0
    region: str = ""
    zone: str = ""
    current_config: str = ""
    proposed_config: str = ""
    confidence: float | None = None
    is_estimate: bool = False
    rationale: str = ""

    def lp_option(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "action": self.action,
            "monthly_cost_usd": self.monthly_cost_usd,
            "one_time_cost_usd": self.one_time_cost_usd,
            "region": self.region,
            "zone": self.zone,
            "market": self.market,
            "performance_risk": self.performance_risk,
            "vcpu": self.vcpu,
            "memory_gib": self.memory_gib,
        }


@dataclass(frozen=True)
class Candidate:
    """A resource and its options, from one recommender (``source``)."""

    account_id: str
    resource_id: str
    options: tuple[CandidateOption, ...]
    resource_kind: str = ""
    deployment_type: str = ""
    region: str = ""
    zone: str = ""
    protected: bool = False
    source: str = "recommendations"

    @property
    def key(self) -> str:
        """The LP id: unique across accounts (account ids never contain '/')."""
        return f"{self.account_id}/{self.resource_id}"

    @property
    def keep(self) -> CandidateOption:
        return next(o for o in self.options if o.name == KEEP)

    def option(self, name: str) -> CandidateOption | None:
        return next((o for o in self.options if o.name == name), None)


def _text(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def _float(value: Any, default: float = 0.0) -> float:
    return default if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


@dataclass(frozen=True)
class Unpriced:
    """A resource the plan leaves out because one of its options has no usable cost, and why."""

    account_id: str
    resource_id: str
    reason: str

    @property
    def key(self) -> str:
        return f"{self.account_id}/{self.resource_id}"


def _cost_problem(row: Mapping[str, Any]) -> str:
    """Why a recommendation row's costs cannot go into the plan ('' when they can)."""
    for column in ("monthly_cost_proposed_usd", "one_time_cost_usd"):
        value = row.get(column)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            if column == "one_time_cost_usd":
                continue  # no upfront payment
            return f"option {_text(row['option_name'])!r} has no {column}"
        if not math.isfinite(float(value)) or not 0 <= float(value) <= MAX_COST_USD:
            return f"option {_text(row['option_name'])!r} has {column} {value!r}, outside 0 to {MAX_COST_USD:g} USD"
    return ""


def unpriceable_resources(table: pa.Table, source: str = "recommendations") -> list[Unpriced]:
    """Resources of ``table`` the plan cannot price: an option without a finite cost within bounds.

    The reason names the option and quotes the recommender's rationale (e.g. an instance type missing
    from the price catalogue). :func:`candidates_from_recommendations` leaves these resources out, so one
    unpriceable resource never blocks the plan of the others.
    """
    found: dict[tuple[str, str], Unpriced] = {}
    for row in table.to_pylist():
        key = (_text(row["account_id"]), _text(row["resource_id"]))
        problem = _cost_problem(row)
        if problem and key not in found:
            why = _text(row.get("rationale"))
            reason = f"{source}: {problem}" + (f" ({why})" if why else "") + "; left as it is, not planned"
            found[key] = Unpriced(key[0], key[1], reason)
    return [found[k] for k in sorted(found)]


def candidates_from_recommendations(table: pa.Table, source: str = "recommendations") -> list[Candidate]:
    """The standalone EC2 optimiser's rows (one per resource x option) as candidates.

    Exact duplicate rows are dropped; two different rows with one (account, resource, option) name are an
    error, as is a resource without its ``keep`` row. Resources that cannot be priced
    (:func:`unpriceable_resources`) are left out: list them with that function to say why.
    """
    skipped = {(u.account_id, u.resource_id) for u in unpriceable_resources(table, source)}
    by_resource: dict[tuple[str, str], dict[str, Any]] = {}
    for row in table.to_pylist():
        key = (_text(row["account_id"]), _text(row["resource_id"]))
        if key in skipped:
            continue
        option = CandidateOption(
            name=_text(row["option_name"]),
            action=_text(row["action"]) or _text(row["option_name"]),
            monthly_cost_usd=_float(row["monthly_cost_proposed_usd"], math.nan),
            one_time_cost_usd=_float(row["one_time_cost_usd"]),
            market=_text(row["market"]) or "on_demand",
            performance_risk=_float(row["performance_risk"]),
            vcpu=_float(row["vcpu"]),
            memory_gib=_float(row["memory_gib"]),
            region=_text(row["region"]),
            zone=_text(row["zone"]),
            current_config=_text(row["current_config"]),
            proposed_config=_text(row["proposed_config"]),
            confidence=None if row["confidence"] is None else _float(row["confidence"]),
            is_estimate=bool(row["is_estimate"]),
            rationale=_text(row["rationale"]),
        )
        entry = by_resource.setdefault(
            key,
            {
                "meta": dict(
                    resource_kind=_text(row["resource_kind"]),
                    deployment_type=_text(row["deployment_type"]),
                    region=_text(row["region"]),
                    zone=_text(row["zone"]),
                ),
                "protected": False,
                "options": {},
            },
        )
        entry["protected"] = entry["protected"] or bool(row["protected"])
        seen = entry["options"].get(option.name)
        if seen is not None and seen != option:
            raise ValueError(
                f"{source}: account {key[0]} resource {key[1]} has two different rows for option "
                f"{option.name!r}; each (resource, option) must appear once"
            )
        entry["options"][option.name] = option
    out = []
    for (account, resource), entry in sorted(by_resource.items()):
        if KEEP not in entry["options"]:
            raise ValueError(
                f"{source}: account {account} resource {resource} has no 'keep' row (its current state); "
                "every resource needs one"
            )
        options = tuple(sorted(entry["options"].values(), key=lambda o: o.name))
        out.append(Candidate(account, resource, options, protected=entry["protected"], source=source, **entry["meta"]))
    return out


def merge_candidates(*sources: Iterable[Candidate]) -> tuple[list[Candidate], list[str]]:
    """One candidate per resource from several recommenders, plus notes on what was resolved.

    The LP picks exactly one option per resource, so options of every recommender for one resource are
    alternatives of each other (a commitment can never stack on a resize the LP also picked). The first
    recommender's ``keep`` is the current state; a different keep cost from a later one is noted. An option
    name both use is renamed ``<source>:<name>`` for the later one; protection from either holds.
    """
    merged: dict[str, Candidate] = {}
    notes: list[str] = []
    for candidates in sources:
        for cand in candidates:
            seen = merged.get(cand.key)
            if seen is None:
                merged[cand.key] = cand
                continue
            names = {o.name for o in seen.options}
            extra = []
            for option in cand.options:
                if option.name == KEEP:
                    if abs(option.monthly_cost_usd - seen.keep.monthly_cost_usd) > _TOL:
                        notes.append(
                            f"{cand.key}: {cand.source} says keep costs {option.monthly_cost_usd:.2f}, "
                            f"{seen.source} {seen.keep.monthly_cost_usd:.2f}; using {seen.source}'s"
                        )
                    continue
                if option.name in names:
                    option = replace(option, name=f"{cand.source}:{option.name}")
                extra.append(option)
            merged[cand.key] = replace(
                seen,
                options=tuple(sorted((*seen.options, *extra), key=lambda o: o.name)),
                protected=seen.protected or cand.protected,
                source=f"{seen.source}+{cand.source}",
            )
    return [merged[k] for k in sorted(merged)], notes


# ------------------------------------------------------------------------------------ labels


@dataclass(frozen=True)
class Label:
    group: str
    env: str
    env_tag: str  # the tag value as written ("" when untagged)

    @property
    def cell(self) -> str:
        """The LP group: one per (group, environment)."""
        return f"{self.group}/{self.env}"


def label_candidates(
    candidates: Sequence[Candidate], resources: pa.Table | None, config: PlanConfig
) -> dict[str, Label]:
    """Group and environment of every candidate from its tags in ``resources`` (missing rows: defaults)."""
    tags_of: dict[tuple[str, str], dict[str, str]] = {}
    if resources is not None and resources.num_rows:
        columns = [c for c in ("team", "service", "env", "name") if c in resources.column_names]
        for row in resources.select(["account_id", "resource_id", "tags", *columns]).to_pylist():
            try:
                tags = json.loads(row["tags"]) if row["tags"] else {}
            except json.JSONDecodeError:
                tags = {}
            tags = {str(k): _text(v) for k, v in (tags if isinstance(tags, dict) else {}).items()}
            for column in columns:  # the collector's normalised columns fill tags it did not copy
                if row[column] and not tags.get(column):
                    tags[column] = _text(row[column])
            tags_of[(row["account_id"], row["resource_id"])] = tags
    out = {}
    for cand in candidates:
        tags = tags_of.get((cand.account_id, cand.resource_id), {})
        group = next((tags[t].strip() for t in config.group_tags if tags.get(t, "").strip()), config.default_group)
        env_tag, env = _environment(tags, config)
        out[cand.key] = Label(group.replace("/", "_"), env.replace("/", "_"), env_tag)
    return out


def _environment(tags: Mapping[str, str], config: PlanConfig) -> tuple[str, str]:
    """(the deciding tag value, the environment cell) under the vocabulary's production rule.

    Any production-like environment tag makes the resource production, whatever the other environment
    tags say; a value such as ``prod-eu`` that is not an alias goes to the environment of the
    production value it starts with (``prod``), so that production's rules hold for it.
    """
    deciding = vocabulary.environment_of(tags, config.environment_tags)
    if deciding is None:
        return "", config.default_environment
    value = deciding[1]
    aliases = config.environment_aliases
    match = vocabulary.production_match(value)
    if value.lower() in aliases:
        return value, aliases[value.lower()]
    if match is not None:
        return value, aliases.get(match, "prod")
    return value, value.lower()


# ----------------------------------------------------------------------------------- problem


@dataclass
class PlanProblem:
    """Everything the solver and the check need, derived from candidates + labels + config."""

    day: date | None
    candidates: list[Candidate]
    labels: dict[str, Label]
    config: PlanConfig
    instances: list[dict[str, Any]]  # LP input: options the per-resource rules allow
    all_instances: list[dict[str, Any]]  # every option (what the check evaluates the plan on)
    constraints: dict[str, Any]  # LP constraints
    rules: dict[str, dict[str, Any]]  # per resource: max_performance_risk, allowed_regions (filters)
    excluded: dict[str, list[tuple[str, str]]]  # per resource: (option, why) removed by a filter
    notes: list[str]
    plan_id: str
    unpriced: dict[str, str] = field(default_factory=dict)  # per resource left out of the plan: why

    @property
    def by_key(self) -> dict[str, Candidate]:
        return {c.key: c for c in self.candidates}


def cell_rules(config: PlanConfig, group: str, env: str) -> dict[str, Any]:
    """The rules of one (group, environment) cell: the stricter of the group's and the environment's."""

    def resolve(section: Mapping[str, Mapping[str, Any]], name: str) -> dict[str, Any]:
        rules = dict(section.get("*", {}))
        rules.update(section.get(name, {}))
        return {k: v for k, v in rules.items() if v is not None}

    out = resolve(config.groups, group)
    for key, value in resolve(config.environments, env).items():
        mine = out.get(key)
        if mine is None:
            out[key] = value
        elif key == "allowed_regions":
            out[key] = sorted(set(mine) & set(value))
        elif key.startswith("max_"):
            out[key] = min(mine, value)
        else:
            out[key] = max(mine, value)
    return out


def build_problem(
    candidates: Sequence[Candidate],
    labels: Mapping[str, Label],
    config: PlanConfig,
    day: date | None = None,
    notes: Sequence[str] = (),
    unpriced: Sequence[Unpriced] = (),
) -> PlanProblem:
    """LP instances and constraints for ``candidates`` under ``config`` (see docs/portfolio_plan.md).

    Per-resource rules (``max_performance_risk``, ``allowed_regions``) remove options before the LP;
    ``keep`` is never removed: the current state is always a valid answer. Cell constraints never ask
    more than the cell has today (zones, non-spot share), so the all-keep plan satisfies every group
    and environment rule; only the portfolio targets (budget, average risk) can be infeasible.
    """
    candidates = sorted(candidates, key=lambda c: c.key)
    notes = list(notes)
    notes.extend(f"{u.key} excluded from the plan: {u.reason}" for u in unpriced)
    instances, all_instances = [], []
    rules: dict[str, dict[str, Any]] = {}
    excluded: dict[str, list[tuple[str, str]]] = {}
    cells: dict[str, list[Candidate]] = {}
    for cand in candidates:
        label = labels[cand.key]
        cell = cell_rules(config, label.group, label.env)
        rules[cand.key] = {k: cell[k] for k in ("max_performance_risk", "allowed_regions") if k in cell}
        cells.setdefault(label.cell, []).append(cand)
        base = {"id": cand.key, "account_id": cand.account_id, "group": label.cell, "region": cand.region}
        kept, out = [], []
        for option in cand.options:
            why = _excluded_by(option, rules[cand.key], label)
            (out if why else kept).append((option, why))
        instances.append({**base, "options": [o.lp_option() for o, _ in kept]})
        all_instances.append({**base, "options": [o.lp_option() for o in cand.options]})
        if out:
            excluded[cand.key] = [(o.name, why) for o, why in out]

    constraints: dict[str, Any] = dict(config.portfolio)
    families: dict[str, dict[str, Any]] = {}
    for cell_name, members in sorted(cells.items()):
        group, env = cell_name.split("/", 1)
        cell = cell_rules(config, group, env)
        keeps = [m.keep for m in members]
        vcpu = sum(k.vcpu for k in keeps)
        memory = sum(k.memory_gib for k in keeps)
        non_spot = sum(k.vcpu for k in keeps if k.market != "spot")
        zones = {k.zone for k in keeps if k.vcpu > 0 and k.zone}
        if "min_on_demand_share" in cell and vcpu > 0:
            share = min(cell["min_on_demand_share"], non_spot / vcpu)
            if share < cell["min_on_demand_share"]:
                notes.append(f"min_on_demand_share[{cell_name}] lowered to today's {share:.3f}")
            families.setdefault("min_on_demand_share", {})[cell_name] = share
        if "max_spot_share" in cell and vcpu > 0:
            share = max(cell["max_spot_share"], (vcpu - non_spot) / vcpu)
            if share > cell["max_spot_share"]:
                notes.append(f"max_spot_share[{cell_name}] raised to today's {share:.3f}")
            families.setdefault("max_spot_share", {})[cell_name] = share
        if cell.get("min_zones"):
            n = min(cell["min_zones"], len(zones))
            if 0 < n < cell["min_zones"]:
                notes.append(f"min_zones[{cell_name}] lowered to the {n} zone(s) it spans today")
            if n > 0:
                families.setdefault("min_zones", {})[cell_name] = n
        if cell.get("min_capacity_vcpu_pct") and vcpu > 0:
            families.setdefault("min_capacity_vcpu", {})[cell_name] = cell["min_capacity_vcpu_pct"] / 100 * vcpu
        if cell.get("min_capacity_memory_pct") and memory > 0:
            families.setdefault("min_capacity_memory_gib", {})[cell_name] = (
                cell["min_capacity_memory_pct"] / 100 * memory
            )
    constraints.update(families)
    protected = _protected(candidates, config, notes)
    if protected:
        constraints["protected_ids"] = protected
    plan_id = _plan_id(day, all_instances, constraints, rules)
    return PlanProblem(
        day,
        candidates,
        dict(labels),
        config,
        instances,
        all_instances,
        constraints,
        rules,
        excluded,
        notes,
        plan_id,
        {u.key: u.reason for u in unpriced},
    )


def _excluded_by(option: CandidateOption, rules: Mapping[str, Any], label: Label) -> str:
    if option.name == KEEP:
        return ""
    limit = rules.get("max_performance_risk")
    if limit is not None and option.performance_risk > limit + _TOL:
        return f"max_performance_risk {limit:g} ({label.cell})"
    regions = rules.get("allowed_regions")
    if regions is not None and option.region not in regions:
        return f"allowed_regions {regions} ({label.cell})"
    return ""


def _protected(candidates: Sequence[Candidate], config: PlanConfig, notes: list[str]) -> list[str]:
    keys = {c.key for c in candidates if c.protected}
    by_resource: dict[str, list[str]] = {}
    for c in candidates:
        by_resource.setdefault(c.resource_id, []).append(c.key)
    for wanted in config.protected_ids:
        found = [wanted] if "/" in wanted and wanted.split("/", 1)[0].isdigit() else by_resource.get(wanted, [])
        found = [k for k in found if any(c.key == k for c in candidates)]
        if not found:
            notes.append(f"protected_ids: {wanted!r} is not among today's resources")
        keys.update(found)
    return sorted(keys)


def _plan_id(day: date | None, instances: list, constraints: Mapping, rules: Mapping) -> str:
    payload = json.dumps(
        {"date": day.isoformat() if day else None, "instances": instances, "constraints": constraints, "rules": rules},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------ the day


def problem_for_day(
    day: date,
    candidate_sets: Sequence[Iterable[Candidate]],
    resources: pa.Table | None,
    constraints_path: str | Path | None = None,
    unpriced: Sequence[Unpriced] = (),
) -> PlanProblem:
    """The plan problem of one day from every optimiser's candidates (the asset, and ``cloudopt plan --date``).

    ``candidate_sets`` holds one list per optimiser, in registry order; ``resources`` is the day's
    inventory of the accounts present (for the group and environment labels). ``unpriced`` are the
    resources the optimisers' rows could not price (:meth:`DeploymentOptimizer.unpriced`: an instance
    type missing from the price catalogue, a cost that is not a finite amount within bounds): they are
    not candidates, and each is named with its reason in ``problem.unpriced`` and ``problem.notes``;
    the rest of the day plans as usual.
    """
    config = load_config(constraints_path)
    candidates, notes = merge_candidates(*candidate_sets)
    labels = label_candidates(candidates, resources, config)
    return build_problem(candidates, labels, config, day=day, notes=notes, unpriced=unpriced)


# -------------------------------------------------------------------------------------- solve


def solve_problem(
    problem: PlanProblem,
    *,
    time_limit_s: float = 60.0,
    mip_gap: float = 1e-4,
    warm_start: Mapping[str, str] | None = None,
) -> Solution:
    """Solve with HiGHS (CBC fallback), shadow prices and, when infeasible, the explanation.

    ``warm_start`` ({LP id: option name}, e.g. :func:`warm_start_from_plan` of yesterday's plan) is where
    the search starts; the plan is held to the same gap and check either way."""
    return LinearOptimizer(
        problem.instances, problem.constraints, time_limit_s=time_limit_s, mip_gap=mip_gap, warm_start=warm_start
    ).solve()


def warm_start_from_plan(plan: pa.Table) -> dict[str, str]:
    """{LP id: option name} of a written plan (PORTFOLIO_PLAN rows), for :func:`solve_problem`.

    Only rows of a day that had a plan count: the keeps written for an infeasible day are no choice."""
    rows = plan.select(["account_id", "resource_id", "option_name", "solver_status"]).to_pylist()
    return {
        f"{r['account_id']}/{r['resource_id']}": r["option_name"]
        for r in rows
        if r["solver_status"] in PLAN_STATUSES and r["option_name"]
    }


def warm_start_offered(problem: PlanProblem, warm_start: Mapping[str, str]) -> int:
    """How many of today's resources ``warm_start`` names with an option still offered today."""
    return sum(1 for c in problem.candidates if c.option(warm_start.get(c.key, "")) is not None)


def has_plan(solution: Solution) -> bool:
    return solution.status in PLAN_STATUSES and bool(solution.choices or not solution.baseline_monthly_cost_usd)


def explanation_text(solution: Solution) -> str:
    """Why there is no plan, in one line a person can act on."""
    if solution.explanation:
        return "; ".join(item["message"] for item in solution.explanation)
    if solution.status == "infeasible":
        return "the constraints are infeasible: " + ("; ".join(solution.notes) or "no explanation found")
    return f"the solver stopped without a plan (status {solution.status}); raise the time limit"


def plan_table(problem: PlanProblem, solution: Solution) -> pa.Table:
    """PORTFOLIO_PLAN rows: one per resource, keeps included; only keeps when there is no plan."""
    planned = has_plan(solution)
    no_plan = "" if planned else f"no change: no feasible plan ({explanation_text(solution)})"
    totals = _PlanTotals(problem, solution.choices if planned else {})
    rows = []
    for cand in problem.candidates:
        name = solution.choices.get(cand.key, KEEP) if planned else KEEP
        option = cand.option(name) or cand.keep
        keep = cand.keep
        label = problem.labels[cand.key]
        rows.append(
            {
                "date": problem.day,
                "plan_id": problem.plan_id,
                "account_id": cand.account_id,
                "resource_id": cand.resource_id,
                "resource_kind": cand.resource_kind,
                "deployment_type": cand.deployment_type or None,
                "region": cand.region,
                "zone": cand.zone or None,
                "group_name": label.group,
                "env": label.env,
                "option_name": option.name,
                "action": option.action,
                "market": option.market,
                "current_config": keep.current_config or keep.proposed_config or None,
                "proposed_config": option.proposed_config or None,
                "monthly_cost_current_usd": keep.monthly_cost_usd,
                "monthly_cost_proposed_usd": option.monthly_cost_usd,
                "monthly_savings_usd": keep.monthly_cost_usd - option.monthly_cost_usd,
                "one_time_cost_usd": option.one_time_cost_usd,
                "performance_risk": option.performance_risk,
                "confidence": option.confidence,
                "is_estimate": option.is_estimate,
                "protected": cand.key in problem.constraints.get("protected_ids", ()),
                "reason": no_plan or _reason(problem, cand, option, totals),
                "solver_status": solution.status,
            }
        )
    return pa.Table.from_pylist(rows, schema=PORTFOLIO_PLAN)


def _reason(problem: PlanProblem, cand: Candidate, chosen: CandidateOption, plan: _PlanTotals) -> str:
    if cand.key in problem.constraints.get("protected_ids", ()):
        why = "tag cloudopt:protect" if cand.protected else "protected_ids in the constraints file"
        return f"keep: protected ({why})"
    allowed = plan.allowed[cand.key]
    cheaper = sorted(
        (o for o in cand.options if o.name in allowed and o.monthly_cost_usd < chosen.monthly_cost_usd - _TOL),
        key=lambda o: (o.monthly_cost_usd, o.name),
    )
    if chosen.name == KEEP:
        text = "keep: no allowed option is cheaper" if not cheaper else "keep"
    else:
        saving = cand.keep.monthly_cost_usd - chosen.monthly_cost_usd
        upfront = f" for {chosen.one_time_cost_usd:,.2f} USD upfront" if chosen.one_time_cost_usd else ""
        text = (
            f"{chosen.action}: saves {saving:,.2f} USD/month{upfront} at performance risk {chosen.performance_risk:g}"
        )
    if cheaper:
        best = cheaper[0]
        blockers = plan.blockers(cand.key, best)
        because = ", ".join(blockers) if blockers else "nothing alone (within the solver's optimality gap)"
        text += (
            f"; the cheaper {best.name} ({chosen.monthly_cost_usd - best.monthly_cost_usd:,.2f} USD/month less) "
            f"would break {because}"
        )
    excluded = [
        f"{name} excluded by {why}"
        for name, why in problem.excluded.get(cand.key, [])
        if (o := cand.option(name)) is not None and o.monthly_cost_usd < chosen.monthly_cost_usd - _TOL
    ]
    if excluded:
        text += "; " + "; ".join(excluded[:2]) + (f" (+{len(excluded) - 2} more)" if len(excluded) > 2 else "")
    if chosen.name != KEEP and chosen.rationale:
        text += f". {chosen.rationale}"
    return text


class _PlanTotals:
    """The left-hand sides of the LP constraints for one plan, to name what blocks a cheaper option.

    Swapping one resource alone to a cheaper option and re-evaluating the totals tells which constraint
    stops it, even when that constraint is not at its bound (an integer plan rarely is).
    """

    def __init__(self, problem: PlanProblem, choices: Mapping[str, str]):
        self.problem = problem
        self.cons = problem.constraints
        self.allowed = {inst["id"]: {o["name"] for o in inst["options"]} for inst in problem.instances}
        self.chosen: dict[str, CandidateOption] = {}
        self.total = {"cost": 0.0, "one_time": 0.0, "risk": 0.0, "changes": 0.0}
        self.cells: dict[str, dict[str, Any]] = {}
        for cand in problem.candidates:
            option = cand.option(choices.get(cand.key, KEEP)) or cand.keep
            self.chosen[cand.key] = option
            self._add(cand.key, option, +1)

    def _cell(self, key: str) -> dict[str, Any]:
        return self.cells.setdefault(self.problem.labels[key].cell, {"vcpu": 0.0, "spot": 0.0, "mem": 0.0, "zones": {}})

    def _add(self, key: str, o: CandidateOption, sign: int) -> None:
        self.total["cost"] += sign * o.monthly_cost_usd
        self.total["one_time"] += sign * o.one_time_cost_usd
        self.total["risk"] += sign * o.performance_risk
        self.total["changes"] += sign * (o.name != KEEP)
        cell = self._cell(key)
        cell["vcpu"] += sign * o.vcpu
        cell["spot"] += sign * (o.vcpu if o.market == "spot" else 0.0)
        cell["mem"] += sign * o.memory_gib
        if o.vcpu > 0 and o.zone:
            cell["zones"][o.zone] = cell["zones"].get(o.zone, 0) + sign

    def blockers(self, key: str, option: CandidateOption) -> list[str]:
        """The constraints the plan would break if ``key`` alone took ``option``."""
        old = self.chosen[key]
        self._add(key, old, -1)
        self._add(key, option, +1)
        try:
            return self._violated(self.problem.labels[key].cell)
        finally:
            self._add(key, option, -1)
            self._add(key, old, +1)

    def _violated(self, cell_name: str) -> list[str]:
        c, t, out = self.cons, self.total, []

        def over(value: float, bound: float) -> bool:
            return value > bound + _TOL * max(1.0, abs(bound))

        for name, value in (
            ("monthly_budget_usd", t["cost"]),
            ("max_one_time_cost_usd", t["one_time"]),
            ("max_changes", t["changes"]),
            ("max_average_performance_risk", t["risk"] / max(1, len(self.problem.candidates))),
        ):
            if c.get(name) is not None and over(value, c[name]):
                out.append(f"{name} ({value:,.2f} > {c[name]:,.2f})")
        cell = self.cells[cell_name]
        share = c.get("min_on_demand_share", {}).get(cell_name)
        if share is not None and over(share * cell["vcpu"], cell["vcpu"] - cell["spot"]):
            out.append(f"min_on_demand_share[{cell_name}] ({share:g})")
        share = c.get("max_spot_share", {}).get(cell_name)
        if share is not None and over(cell["spot"], share * cell["vcpu"]):
            out.append(f"max_spot_share[{cell_name}] ({share:g})")
        zones = c.get("min_zones", {}).get(cell_name)
        if zones is not None and sum(1 for n in cell["zones"].values() if n > 0) < zones:
            out.append(f"min_zones[{cell_name}] ({zones})")
        for family, unit in (("min_capacity_vcpu", "vcpu"), ("min_capacity_memory_gib", "mem")):
            bound = c.get(family, {}).get(cell_name)
            if bound is not None and over(bound, cell[unit]):
                out.append(f"{family}[{cell_name}] ({cell[unit]:g} < {bound:g})")
        return out


# -------------------------------------------------------------------------------------- check


def verify_plan(plan: pa.Table, problem: PlanProblem) -> list[str]:
    """Every violation of the written plan rows against the candidates and constraints ([] = valid).

    Independent of the solver: the rows are read as written, matched to the candidates' options, and every
    rule is recomputed (per-resource filters here, the LP constraints by ``linear.check_plan``). A plan
    without a feasible solution is a violation in itself (its rows are keeps only).
    """
    out: list[str] = []
    by_key = problem.by_key
    protected = set(problem.constraints.get("protected_ids", ()))
    choices: dict[str, str] = {}
    for row in plan.to_pylist():
        key = f"{row['account_id']}/{row['resource_id']}"
        cand = by_key.get(key)
        if cand is None:
            out.append(f"{key}: in the plan but not among the day's candidates")
            continue
        if key in choices:
            out.append(f"{key}: more than one plan row")
            continue
        choices[key] = row["option_name"]
        if row["plan_id"] != problem.plan_id:
            out.append(f"{key}: plan_id {row['plan_id']!r} is not this plan's {problem.plan_id!r}")
        if row["solver_status"] not in PLAN_STATUSES:
            if row["option_name"] != KEEP:
                out.append(f"{key}: takes {row['option_name']!r} although the solver found no plan")
            continue
        option = cand.option(row["option_name"])
        if option is None:
            continue  # check_plan reports the unknown option
        expected = {
            "monthly_cost_current_usd": cand.keep.monthly_cost_usd,
            "monthly_cost_proposed_usd": option.monthly_cost_usd,
            "monthly_savings_usd": cand.keep.monthly_cost_usd - option.monthly_cost_usd,
            "one_time_cost_usd": option.one_time_cost_usd,
            "performance_risk": option.performance_risk,
        }
        for column, value in expected.items():
            if row[column] is None or abs(row[column] - value) > _TOL * max(1.0, abs(value)):
                out.append(f"{key}: {column} {row[column]!r} differs from option {option.name!r} ({value:g})")
        if row["action"] != option.action or row["market"] != option.market:
            out.append(f"{key}: action/market {row['action']}/{row['market']} differ from option {option.name!r}")
        label = problem.labels[key]
        why = _excluded_by(option, problem.rules.get(key, {}), label)
        if why:
            out.append(f"{key}: option {option.name!r} (risk {option.performance_risk:g}) breaks {why}")
        if key in protected and option.name != KEEP:
            out.append(f"protected_ids: {key} is protected but takes {option.name!r}")
    missing = sorted(set(by_key) - set(choices))
    out += [f"{key}: no plan row" for key in missing]
    if missing:
        return out  # the LP constraints are only defined on a complete plan
    statuses = set(plan.column("solver_status").to_pylist()) if plan.num_rows else set()
    if statuses - set(PLAN_STATUSES) or (not plan.num_rows and by_key):
        out.append(f"no feasible plan (solver status {', '.join(sorted(statuses)) or 'none'})")
        return out
    out += check_plan(problem.all_instances, problem.constraints, {k: v for k, v in choices.items() if k in by_key})
    return out


# ----------------------------------------------------------------------------------- metadata


def plan_summary(problem: PlanProblem, solution: Solution, table: pa.Table) -> dict[str, Any]:
    """Numbers a person wants to see (floats stay floats so the UI can plot them)."""
    savings = sum(table.column("monthly_savings_usd").to_pylist()) if table.num_rows else 0.0
    one_time = sum(table.column("one_time_cost_usd").to_pylist()) if table.num_rows else 0.0
    changes = sum(1 for n in table.column("option_name").to_pylist() if n != KEEP)
    return {
        "plan_id": problem.plan_id,
        "solver_status": solution.status,
        "total_monthly_savings_usd": float(round(savings, 4)),
        "baseline_monthly_cost_usd": float(round(solution.baseline_monthly_cost_usd, 4)),
        "total_one_time_cost_usd": float(round(one_time, 4)),
        "resources": table.num_rows,
        "changes": changes,
        "binding_constraints": list(solution.binding_constraints),
        "solve_seconds": float(round(solution.solve_seconds, 4)),
        "build_seconds": float(round(solution.build_seconds, 4)),
        "explanation": explanation_text(solution) if not has_plan(solution) else None,
        "unpriced_resources": len(problem.unpriced),
    }


def changes_markdown(table: pa.Table, rows: int = 10) -> str:
    """The biggest savings first, as a markdown table."""
    changed = [r for r in table.to_pylist() if r["option_name"] != KEEP]
    if not changed:
        return "_no changes_"
    changed.sort(key=lambda r: -r["monthly_savings_usd"])
    lines = [
        "| account | resource | group/env | option | savings USD/month | upfront USD | risk |",
        "|---|---|---|---|---:|---:|---:|",
    ]
    for r in changed[:rows]:
        lines.append(
            f"| {r['account_id']} | {r['resource_id']} | {r['group_name']}/{r['env']} | {r['option_name']} | "
            f"{r['monthly_savings_usd']:,.2f} | {r['one_time_cost_usd']:,.2f} | {r['performance_risk']:g} |"
        )
    if len(changed) > rows:
        lines.append(f"\n_{len(changed) - rows} more change(s)_")
    return "\n".join(lines)
