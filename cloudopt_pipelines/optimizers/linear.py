"""Portfolio optimiser: one option per resource, minimal monthly cost, linear constraints.

Pure logic (numpy + highspy / PuLP).  This module must never import dagster: the
Dagster assets wrap it, the CLI and the benchmark call it directly.

Model (see ``docs/linear_optimizer.md`` for the user documentation)::

    x[r, o] in {0, 1}               resource r takes option o
    sum_o x[r, o] = 1               exactly one option per resource
    min  sum c[r, o] x[r, o]        total monthly cost (+ a tiny tie-break term)

plus one row per configured constraint.  ``solver="highs"`` hands the matrix to
highspy directly (column arrays built with numpy, no per-variable Python
objects); ``solver="cbc"`` and ``solver="highs_pulp"`` build the *same* matrix
through PuLP.  Options forbidden by ``max_performance_risk``,
``allowed_regions`` or ``protected_ids`` get no column at all.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

import numpy as np

from cloudopt_pipelines.storage.schemas import MAX_COST_USD

__all__ = [
    "ALL_GROUPS",
    "CONSTRAINT_KEYS",
    "DEFAULT_GROUP",
    "MARKETS",
    "SOLVERS",
    "LinearOptimizer",
    "Option",
    "Resource",
    "Solution",
    "check_plan",
    "pareto_sweep",
]

KEEP = "keep"
MARKETS = ("on_demand", "spot", "reserved", "savings_plan", "stopped")
_MARKET_CODE = {m: i for i, m in enumerate(MARKETS)}
_SPOT = _MARKET_CODE["spot"]
ALL_GROUPS = "*"
DEFAULT_GROUP = "default"
SOLVERS = ("highs", "cbc", "highs_pulp")
OBJECTIVES = ("cost", "risk")
STATUSES = ("optimal", "infeasible", "time_limit")

SCALAR_CONSTRAINTS = (
    "monthly_budget_usd",
    "max_one_time_cost_usd",
    "max_performance_risk",
    "max_average_performance_risk",
    "max_changes",
)
GROUP_CONSTRAINTS = (
    "min_on_demand_share",
    "max_spot_share",
    "min_zones",
    "allowed_regions",
    "min_capacity_vcpu",
    "min_capacity_memory_gib",
)
CONSTRAINT_KEYS = (*SCALAR_CONSTRAINTS, *GROUP_CONSTRAINTS, "protected_ids")

#: Upper bound (USD/month) of the whole tie-break perturbation added to the objective.
TIE_BREAK_TOTAL_USD = 1e-3
#: Relative tolerance used when checking plans and detecting binding constraints.
CHECK_RTOL = 1e-6
_COST_EQ_TOL = 1e-9
_INF = math.inf
_first = itemgetter(0)


# --------------------------------------------------------------------------- input


@dataclass(frozen=True)
class Option:
    """One candidate state of a resource (``keep`` is its current state)."""

    name: str
    monthly_cost_usd: float
    action: str = ""
    one_time_cost_usd: float = 0.0
    region: str = ""
    zone: str = ""
    market: str = "on_demand"
    performance_risk: float = 0.0
    vcpu: float = 0.0
    memory_gib: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Resource:
    """A resource and its candidate options."""

    id: str
    options: Sequence[Option | Mapping[str, Any]]
    account_id: str = ""
    group: str = DEFAULT_GROUP
    region: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "account_id": self.account_id,
            "group": self.group,
            "region": self.region,
            "options": [o.to_dict() if isinstance(o, Option) else dict(o) for o in self.options],
        }


def _as_mapping(obj: Any, where: str) -> Mapping[str, Any]:
    if type(obj) is dict or isinstance(obj, Mapping):
        return obj
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    raise ValueError(f"{where} must be a mapping or a Resource/Option dataclass, got {type(obj).__name__}")


@dataclass
class _Fleet:
    """Validated, sorted, flattened instances (resources by id, options by name)."""

    ids: list[str]
    accounts: list[str]
    groups: list[str]
    start: np.ndarray  # option range of resource i: start[i]:start[i+1]
    res_of: np.ndarray
    names: list[str]
    actions: list[str]
    regions: list[str]
    zones: list[str]
    market: np.ndarray
    cost: np.ndarray
    onetime: np.ndarray
    risk: np.ndarray
    vcpu: np.ndarray
    mem: np.ndarray
    is_keep: np.ndarray
    keep_of: np.ndarray
    rank: np.ndarray  # tie-break rank inside the resource (0 = preferred)
    group_names: list[str]
    group_of: np.ndarray  # per resource
    zone_names: list[str]
    zone_code: np.ndarray  # per option, -1 = no zone

    @property
    def n_res(self) -> int:
        return len(self.ids)

    @property
    def n_opt(self) -> int:
        return len(self.names)

    def per_resource_max(self, values: np.ndarray) -> np.ndarray:
        if self.n_res == 0:
            return np.zeros(0)
        return np.maximum.reduceat(values, self.start[:-1])


_NUMERIC = (
    # (column in the option tuple, field, required)
    (2, "monthly_cost_usd", True),
    (3, "one_time_cost_usd", False),
    (7, "performance_risk", False),
    (8, "vcpu", False),
    (9, "memory_gib", False),
)


def _load_fleet(instances: Iterable[Any]) -> _Fleet:
    # millions of small tuples: the cyclic GC would rescan them over and over
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _load_fleet_nogc(instances)
    finally:
        if enabled:
            gc.enable()


def _load_fleet_nogc(instances: Iterable[Any]) -> _Fleet:
    if instances is None or isinstance(instances, str | bytes | Mapping):
        raise ValueError("instances must be a list of resources (mappings or Resource objects)")
    records = []
    seen: set[str] = set()
    for pos, raw in enumerate(instances):
        d = _as_mapping(raw, f"instances[{pos}]")
        rid = d.get("id")
        if not isinstance(rid, str) or not rid:
            raise ValueError(f"instances[{pos}]: 'id' must be a non-empty string, got {rid!r}")
        if rid in seen:
            raise ValueError(
                f"duplicate resource id {rid!r}: ids must be unique across all accounts; "
                "merge the duplicate entries or make the ids unique (e.g. prefix the account id)"
            )
        seen.add(rid)
        group = d.get("group")
        if group is None or group == "":
            group = DEFAULT_GROUP
        if not isinstance(group, str) or group == ALL_GROUPS:
            raise ValueError(f"resource {rid!r}: 'group' must be a string other than {ALL_GROUPS!r}, got {group!r}")
        region = d.get("region") or ""
        account = d.get("account_id") or ""
        raw_opts = d.get("options")
        if raw_opts is None or isinstance(raw_opts, str | bytes | Mapping):
            raise ValueError(
                f"resource {rid!r}: 'options' must be a list of options that includes one "
                "named 'keep' (its current state)"
            )
        opts = []
        names: set[str] = set()
        for o in raw_opts:
            od = o if type(o) is dict else _as_mapping(o, f"resource {rid!r} option #{len(opts)}")
            get = od.get
            name = get("name")
            if type(name) is not str or not name or name in names:
                _bad_option_name(rid, len(opts), name, names)
            names.add(name)
            market = get("market") or "on_demand"
            code = _MARKET_CODE.get(market) if type(market) is str else None
            if code is None:
                raise ValueError(
                    f"resource {rid!r} option {name!r}: unknown market {market!r}; use one of {', '.join(MARKETS)}"
                )
            opts.append((
                name, get("action") or name, get("monthly_cost_usd"), get("one_time_cost_usd"),
                get("region") or region, get("zone") or "", code, get("performance_risk"),
                get("vcpu"), get("memory_gib"),
            ))  # fmt: skip
        if KEEP not in names:
            raise ValueError(
                f"resource {rid!r} has no option named 'keep': every resource needs exactly one "
                "'keep' option describing its current state (cost, market, zone, vcpu, memory)"
            )
        opts.sort(key=_first)
        records.append((rid, account, group, opts))
    records.sort(key=_first)

    counts = np.fromiter((len(r[3]) for r in records), dtype=np.int64, count=len(records))
    start = np.zeros(len(records) + 1, dtype=np.int64)
    np.cumsum(counts, out=start[1:])
    flat = [o for r in records for o in r[3]]
    cols = list(zip(*flat, strict=True)) if flat else [()] * 10
    res_of = np.repeat(np.arange(len(records), dtype=np.int64), counts)
    ids = [r[0] for r in records]
    names = list(cols[0])

    numeric = {}
    for col, fname, required in _NUMERIC:
        numeric[fname] = _numeric_column(cols[col], fname, required, ids, names, res_of)

    is_keep = np.fromiter((n == KEEP for n in names), dtype=bool, count=len(names))
    keep_of = np.flatnonzero(is_keep)
    local = np.arange(len(names), dtype=np.int64) - start[res_of]
    order = np.lexsort((local, numeric["one_time_cost_usd"], ~is_keep, res_of))
    rank = np.empty(len(names), dtype=np.int64)
    rank[order] = np.arange(len(names), dtype=np.int64) - start[res_of[order]]

    groups = [r[2] for r in records]
    group_names = sorted(set(groups))
    gidx = {g: i for i, g in enumerate(group_names)}
    zones = list(cols[5])
    zone_names = sorted(set(zones) - {""})
    zidx = {z: i for i, z in enumerate(zone_names)}
    zidx[""] = -1
    return _Fleet(
        ids=ids,
        accounts=[str(r[1]) for r in records],
        groups=groups,
        start=start,
        res_of=res_of,
        names=names,
        actions=list(cols[1]),
        regions=list(cols[4]),
        zones=zones,
        market=np.asarray(cols[6], dtype=np.int64).reshape(-1),
        cost=numeric["monthly_cost_usd"],
        onetime=numeric["one_time_cost_usd"],
        risk=numeric["performance_risk"],
        vcpu=numeric["vcpu"],
        mem=numeric["memory_gib"],
        is_keep=is_keep,
        keep_of=keep_of,
        rank=rank,
        group_names=group_names,
        group_of=np.fromiter((gidx[g] for g in groups), dtype=np.int64, count=len(groups)),
        zone_names=zone_names,
        zone_code=np.fromiter((zidx[z] for z in zones), dtype=np.int64, count=len(zones)),
    )


def _bad_option_name(rid: str, k: int, name: Any, names: set[str]) -> None:
    if not isinstance(name, str) or not name:
        raise ValueError(f"resource {rid!r} option #{k}: 'name' must be a non-empty string, got {name!r}")
    raise ValueError(
        f"resource {rid!r}: duplicate option name {name!r}; option names must be "
        "unique per resource (e.g. 'resize:m7g.large', 'spot:us-east-1b')"
    )


def _numeric_column(values: tuple, fname: str, required: bool, ids: list[str], names: list[str], res_of) -> np.ndarray:
    def where(i: int) -> str:
        return f"resource {ids[res_of[i]]!r} option {names[i]!r}"

    if not values:
        return np.zeros(0)
    types = set(map(type, values))
    if types <= {int, float}:
        arr = np.asarray(values, dtype=np.float64)
    else:
        out = []
        for i, v in enumerate(values):
            if v is None and not required:
                v = 0.0
            if isinstance(v, bool) or not isinstance(v, int | float | np.integer | np.floating):
                if v is None:
                    raise ValueError(f"{where(i)}: '{fname}' is required (a number >= 0)")
                raise ValueError(f"{where(i)}: '{fname}' must be a number, got {v!r}")
            out.append(float(v))
        arr = np.asarray(out, dtype=np.float64)
    upper = MAX_COST_USD if "cost" in fname else np.inf
    bad = np.flatnonzero(~np.isfinite(arr) | (arr < 0) | (arr > upper))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"{where(i)}: '{fname}' must be a finite number >= 0"
            + (f" and at most {MAX_COST_USD:g}" if "cost" in fname else "")
            + f", got {values[i]!r}"
            + ("; costs are positive USD amounts (savings are computed, not input)" if "cost" in fname else "")
        )
    return arr


# --------------------------------------------------------------------- constraints


@dataclass
class _Cons:
    budget: float | None = None
    one_time: float | None = None
    max_risk: float | None = None
    max_avg_risk: float | None = None
    max_changes: int | None = None
    protected: list[int] = field(default_factory=list)  # resource indices, sorted
    group: dict[str, dict[int, Any]] = field(default_factory=dict)  # family -> {group idx: value}


def _number(value: Any, key: str, *, integer: bool = False, upper: float | None = None) -> float:
    ok = isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)
    if ok:
        value = float(value)
        ok = math.isfinite(value) and value >= 0 and (upper is None or value <= upper)
        if ok and integer:
            ok = value == int(value)
    if not ok:
        kind = "an integer" if integer else "a number"
        rng = f" between 0 and {upper:g}" if upper is not None else " >= 0"
        raise ValueError(f"constraint {key}: expected {kind}{rng}, got {value!r}")
    return value


def _load_constraints(raw: Mapping[str, Any] | None, fleet: _Fleet) -> _Cons:
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ValueError(f"constraints must be a mapping, got {type(raw).__name__}")
    unknown = sorted(str(k) for k in set(raw) - set(CONSTRAINT_KEYS))
    if unknown:
        raise ValueError(f"unknown constraint key(s) {unknown}; valid keys are: {', '.join(CONSTRAINT_KEYS)}")
    c = _Cons()

    def scalar(key: str, **kw) -> float | None:
        v = raw.get(key)
        return None if v is None else _number(v, key, **kw)

    c.budget = scalar("monthly_budget_usd")
    c.one_time = scalar("max_one_time_cost_usd")
    c.max_risk = scalar("max_performance_risk")
    c.max_avg_risk = scalar("max_average_performance_risk")
    mc = scalar("max_changes", integer=True)
    c.max_changes = None if mc is None else int(mc)

    prot = raw.get("protected_ids")
    if prot is not None:
        if isinstance(prot, str | bytes | Mapping) or not isinstance(prot, Iterable):
            raise ValueError("constraint protected_ids: expected a list of resource ids")
        index = {rid: i for i, rid in enumerate(fleet.ids)}
        idx = set()
        for rid in prot:
            if rid not in index:
                raise ValueError(
                    f"constraint protected_ids: unknown resource id {rid!r}; remove it or add the resource to instances"
                )
            idx.add(index[rid])
        c.protected = sorted(idx)

    gindex = {g: i for i, g in enumerate(fleet.group_names)}
    for fam in GROUP_CONSTRAINTS:
        spec = raw.get(fam)
        c.group[fam] = {}
        if spec is None:
            continue
        if not isinstance(spec, Mapping):
            raise ValueError(
                f"constraint {fam}: expected a mapping {{group: value}} (use '*' for every "
                f"group), got {type(spec).__name__}"
            )
        parsed: dict[str, Any] = {}
        for g, v in spec.items():
            if g != ALL_GROUPS and g not in gindex:
                raise ValueError(
                    f"constraint {fam}: unknown group {g!r}; known groups are "
                    f"{fleet.group_names} (or '*' for every group)"
                )
            key = f"{fam}[{g}]"
            if v is None:
                parsed[g] = None
            elif fam in ("min_on_demand_share", "max_spot_share"):
                parsed[g] = _number(v, key, upper=1.0)
            elif fam == "min_zones":
                parsed[g] = int(_number(v, key, integer=True))
            elif fam == "allowed_regions":
                if isinstance(v, str | bytes | Mapping) or not isinstance(v, Iterable):
                    raise ValueError(f"constraint {key}: expected a list of region names, got {v!r}")
                regions = frozenset(v)
                if not all(isinstance(r, str) for r in regions):
                    raise ValueError(f"constraint {key}: region names must be strings, got {v!r}")
                parsed[g] = regions
            else:
                parsed[g] = _number(v, key)
        default = parsed.get(ALL_GROUPS)
        for g, gi in gindex.items():
            v = parsed.get(g, default) if g in parsed else default
            if v is not None:
                c.group[fam][gi] = v
    return c


def _forbidden(fleet: _Fleet, cons: _Cons) -> dict[str, np.ndarray]:
    """Options removed by the filter constraints, per filter."""
    n = fleet.n_opt
    risk = np.zeros(n, dtype=bool)
    if cons.max_risk is not None:
        risk = fleet.risk > cons.max_risk * (1 + 1e-12) + 1e-12
    region = np.zeros(n, dtype=bool)
    allowed = cons.group["allowed_regions"]
    if allowed:
        gopt = fleet.group_of[fleet.res_of]
        for gi, regions in allowed.items():
            sel = np.flatnonzero(gopt == gi)
            bad = [i for i in sel.tolist() if fleet.regions[i] not in regions]
            region[bad] = True
    prot = np.zeros(n, dtype=bool)
    if cons.protected:
        res = np.asarray(cons.protected, dtype=np.int64)
        mark = np.zeros(fleet.n_res, dtype=bool)
        mark[res] = True
        prot = mark[fleet.res_of] & ~fleet.is_keep
    return {"risk": risk, "region": region, "protected": prot}


def _cname(family: str, group: str | None = None) -> str:
    return family if group is None else f"{family}[{group}]"


# --------------------------------------------------------------------------- model


@dataclass
class _Model:
    ncol: int
    nx: int
    x_opt: np.ndarray  # flat option index of x column j (x columns are 0..nx-1)
    res_x: np.ndarray  # assignment row (resource) of x column j
    n_assign: int  # rows 0..n_assign-1 are the assignment rows
    col_cost: np.ndarray  # objective incl. tie-break
    col_cost_plain: np.ndarray  # objective without tie-break (LP relaxation)
    col_lower: np.ndarray
    col_upper: np.ndarray
    integer: np.ndarray
    row_lower: np.ndarray
    row_upper: np.ndarray
    a_start: np.ndarray  # CSR, len nrow + 1
    a_index: np.ndarray
    a_value: np.ndarray
    named_rows: dict[str, int]
    elastic: dict[str, int]  # constraint name -> indicator column
    infeasible: list[str]  # reasons detected while building (normal mode only)
    offset: float = 0.0  # objective constant (cost of columns fixed by _fix_columns)

    @property
    def nrow(self) -> int:
        return len(self.row_lower)


def _objective_coefs(fleet: _Fleet, objective: str) -> np.ndarray:
    if objective == "cost":
        return fleet.cost.copy()
    # "risk": total risk, cost as a secondary term worth < 0.1 risk units in total
    scale = float(fleet.per_resource_max(fleet.cost).sum()) + 1.0
    return fleet.risk + 0.1 * fleet.cost / scale


def _dominated(fleet: _Fleet, cons: _Cons, allowed: np.ndarray, objective: str) -> np.ndarray:
    """Options another allowed option of the same resource dominates: no worse in the
    objective and in every active constraint row, and strictly better in the objective
    or preferred by the tie-break.  Dropping them changes neither the MIP optimum nor
    the LP relaxation (shift the weight to the dominating option)."""
    n, counts = fleet.n_res, np.diff(fleet.start)
    out = np.zeros(fleet.n_opt, dtype=bool)
    if n == 0:
        return out
    k_max = int(counts.max())
    slot = fleet.start[:-1, None] + np.arange(k_max)[None, :]
    valid = np.arange(k_max)[None, :] < counts[:, None]
    slot = np.where(valid, slot, 0)
    valid &= allowed[slot]
    g = fleet.group_of[:, None]
    fam = cons.group

    def per_group(family: str) -> tuple[np.ndarray, np.ndarray]:
        val = np.zeros(len(fleet.group_names))
        has = np.zeros(len(fleet.group_names), dtype=bool)
        for gi, v in fam[family].items():
            val[gi], has[gi] = v, True
        return val[g], has[g]

    obj = _objective_coefs(fleet, objective)[slot]
    rank = fleet.rank[slot]
    v, spot = fleet.vcpu[slot], (fleet.market[slot] == _SPOT)
    worse_is_larger = []  # (values, active mask) rows where a larger value is worse
    worse_is_smaller = []  # rows where a smaller value is worse
    if cons.budget is not None:
        worse_is_larger.append(fleet.cost[slot])
    if cons.one_time is not None:
        worse_is_larger.append(fleet.onetime[slot])
    if cons.max_avg_risk is not None:
        worse_is_larger.append(fleet.risk[slot])
    if cons.max_changes is not None:
        worse_is_larger.append((~fleet.is_keep[slot]).astype(np.float64))
    f, has = per_group("min_on_demand_share")
    worse_is_smaller.append(np.where(has, v * ((~spot) - f), 0.0))
    f, has = per_group("max_spot_share")
    worse_is_larger.append(np.where(has, v * (spot - f), 0.0))
    _, has = per_group("min_capacity_vcpu")
    worse_is_smaller.append(np.where(has, v, 0.0))
    _, has = per_group("min_capacity_memory_gib")
    worse_is_smaller.append(np.where(has, fleet.mem[slot], 0.0))
    _, has_z = per_group("min_zones")
    zone = np.where(has_z & (v > 0), fleet.zone_code[slot], -1)
    dominated = np.zeros((n, k_max), dtype=bool)
    for a in range(k_max):
        for b in range(k_max):
            if a == b:
                continue
            ok = valid[:, a] & valid[:, b]
            ok &= (obj[:, b] < obj[:, a]) | ((obj[:, b] == obj[:, a]) & (rank[:, b] < rank[:, a]))
            for arr in worse_is_larger:
                ok &= arr[:, b] <= arr[:, a]
            for arr in worse_is_smaller:
                ok &= arr[:, b] >= arr[:, a]
            ok &= (zone[:, a] < 0) | (zone[:, b] == zone[:, a])
            dominated[:, a] |= ok
    out[slot[dominated]] = True
    return out


def _build_model(fleet: _Fleet, cons: _Cons, *, objective: str = "cost", elastic: bool = False) -> _Model:
    forb = _forbidden(fleet, cons)
    if elastic:
        x_opt = np.arange(fleet.n_opt, dtype=np.int64)
    else:
        allowed = ~(forb["risk"] | forb["region"] | forb["protected"])
        x_opt = np.flatnonzero(allowed & ~_dominated(fleet, cons, allowed, objective))
    nx = len(x_opt)
    res_x = fleet.res_of[x_opt]
    vx = fleet.vcpu[x_opt]

    # extra columns (zone indicators, elastic slacks) and coupling rows
    xcols: list[tuple[float, float, float, bool]] = []  # cost, lower, upper, integer
    rows_idx: list[np.ndarray] = []
    rows_val: list[np.ndarray] = []
    rows_lo: list[float] = []
    rows_hi: list[float] = []
    named: dict[str, int] = {}
    infeasible: list[str] = []
    slack_cols: list[tuple[int, float]] = []  # (column, scale) of elastic slacks
    indicator: dict[str, int] = {}
    x_penalty = np.zeros(nx)  # elastic penalties on x (filters)

    def new_col(cost: float, lo: float, hi: float, integer: bool) -> int:
        xcols.append((cost, lo, hi, integer))
        return nx + len(xcols) - 1

    def add_row(idx, val, lo: float, hi: float, name: str | None = None) -> None:
        idx = np.asarray(idx, dtype=np.int64)
        val = np.asarray(val, dtype=np.float64)
        keep = val != 0
        if not keep.all():
            idx, val = idx[keep], val[keep]
        if idx.size == 0:
            if not (lo <= 1e-9 and hi >= -1e-9):
                infeasible.append(f"{name}: no allowed option can contribute (needs {lo if lo > -_INF else hi:g})")
            else:
                return
        if name is not None:
            named[name] = len(rows_lo)
        rows_idx.append(idx)
        rows_val.append(val)
        rows_lo.append(lo)
        rows_hi.append(hi)

    def elastic_slack(name: str, scale: float) -> int:
        """Slack column s (0..scale) with indicator u: s <= scale * u."""
        scale = max(float(scale), 1.0)
        s = new_col(0.0, 0.0, scale, False)
        u = new_col(1.0, 0.0, 1.0, True)
        add_row([s, u], [1.0, -scale], -_INF, 0.0)
        slack_cols.append((s, scale))
        indicator[name] = u
        return s

    def row(name: str, idx, val, lo: float, hi: float, scale: float) -> None:
        """Constraint row; in elastic mode with a slack that relaxes it."""
        if elastic:
            s = elastic_slack(name, scale)
            sign = 1.0 if lo > -_INF else -1.0
            idx = np.append(np.asarray(idx, dtype=np.int64), s)
            val = np.append(np.asarray(val, dtype=np.float64), sign)
        add_row(idx, val, lo, hi, name)

    allx = np.arange(nx, dtype=np.int64)
    n_res = fleet.n_res
    if cons.budget is not None:
        worst = float(fleet.per_resource_max(fleet.cost).sum())
        row("monthly_budget_usd", allx, fleet.cost[x_opt], -_INF, cons.budget, worst - cons.budget)
    if cons.one_time is not None:
        worst = float(fleet.per_resource_max(fleet.onetime).sum())
        row(
            "max_one_time_cost_usd", allx, fleet.onetime[x_opt], -_INF, cons.one_time,
            worst - cons.one_time,
        )  # fmt: skip
    if cons.max_avg_risk is not None:
        bound = cons.max_avg_risk * n_res
        worst = float(fleet.per_resource_max(fleet.risk).sum())
        row("max_average_performance_risk", allx, fleet.risk[x_opt], -_INF, bound, worst - bound)
    if cons.max_changes is not None:
        idx = np.flatnonzero(~fleet.is_keep[x_opt])
        row("max_changes", idx, np.ones(idx.size), -_INF, float(cons.max_changes), n_res)

    # group rows
    gx = fleet.group_of[res_x]
    gorder = np.argsort(gx, kind="stable")
    gbounds = np.searchsorted(gx[gorder], np.arange(len(fleet.group_names) + 1))
    gres_maxv = np.bincount(
        fleet.group_of, weights=fleet.per_resource_max(fleet.vcpu), minlength=len(fleet.group_names)
    )
    families = cons.group
    active = sorted(set().union(*(families[f].keys() for f in GROUP_CONSTRAINTS if f != "allowed_regions")))
    spot_x = fleet.market[x_opt] == _SPOT
    for gi in active:
        gname = fleet.group_names[gi]
        cols = gorder[gbounds[gi] : gbounds[gi + 1]]
        v = vx[cols]
        f = families["min_on_demand_share"].get(gi)
        if f is not None:
            coef = v * ((~spot_x[cols]).astype(np.float64) - f)
            row(_cname("min_on_demand_share", gname), cols, coef, 0.0, _INF, gres_maxv[gi])
        f = families["max_spot_share"].get(gi)
        if f is not None:
            coef = v * (spot_x[cols].astype(np.float64) - f)
            row(_cname("max_spot_share", gname), cols, coef, -_INF, 0.0, gres_maxv[gi])
        n = families["min_zones"].get(gi)
        if n:
            zc = fleet.zone_code[x_opt[cols]]
            sel = (v > 0) & (zc >= 0)
            zcols, zz = cols[sel], zc[sel]
            zs = []
            for z in np.unique(zz).tolist():
                zcol = new_col(0.0, 0.0, 1.0, False)
                members = zcols[zz == z]
                add_row(np.append(members, zcol), np.append(-np.ones(members.size), 1.0), -_INF, 0.0)
                zs.append(zcol)
            row(_cname("min_zones", gname), zs, np.ones(len(zs)), float(n), _INF, n)
        a = families["min_capacity_vcpu"].get(gi)
        if a:
            row(_cname("min_capacity_vcpu", gname), cols, v, a, _INF, a)
        a = families["min_capacity_memory_gib"].get(gi)
        if a:
            row(_cname("min_capacity_memory_gib", gname), cols, fleet.mem[x_opt[cols]], a, _INF, a)

    if elastic:
        # filters become penalised constraints on the (now present) forbidden columns
        filters: list[tuple[str, np.ndarray, np.ndarray]] = []
        if forb["risk"].any():
            amount = np.where(forb["risk"], fleet.risk - (cons.max_risk or 0.0), 0.0)
            filters.append(("max_performance_risk", forb["risk"], amount))
        if forb["region"].any():
            gopt = fleet.group_of[fleet.res_of]
            for gi in sorted(set(gopt[forb["region"]].tolist())):
                mask = forb["region"] & (gopt == gi)
                filters.append((_cname("allowed_regions", fleet.group_names[gi]), mask, mask * 1.0))
        for r in cons.protected:
            mask = np.zeros(fleet.n_opt, dtype=bool)
            mask[fleet.start[r] : fleet.start[r + 1]] = True
            mask &= ~fleet.is_keep
            if mask.any():
                filters.append((_cname("protected_ids", fleet.ids[r]), mask, mask * 1.0))
        for name, mask, amount in filters:
            scale = max(float(fleet.per_resource_max(amount).sum()), 1.0)
            u = new_col(1.0, 0.0, 1.0, True)
            idx = np.flatnonzero(mask)  # x column == option index in elastic mode
            add_row(np.append(idx, u), np.append(amount[idx], -scale), -_INF, 0.0)
            indicator[name] = u
            x_penalty[idx] += amount[idx] / scale
            slack_cols.append((-1, scale))

    # assignment rows: x columns are sorted by option index, hence grouped by resource
    counts = np.bincount(res_x, minlength=n_res)
    for r in np.flatnonzero(counts == 0)[:20].tolist():
        infeasible.append(
            f"resource {fleet.ids[r]!r}: every option is excluded by max_performance_risk, "
            "allowed_regions or protected_ids"
        )

    ncol = nx + len(xcols)
    extra = np.asarray(xcols, dtype=np.float64).reshape(-1, 4)
    plain = _objective_coefs(fleet, objective)[x_opt]
    if elastic:
        n_el = max(len(indicator), 1)
        w_s = 1.0 / (n_el + 1)
        scale = float(fleet.per_resource_max(fleet.cost).sum()) + 1.0
        x_cost = w_s * x_penalty + (w_s / (n_el + 1)) * 0.1 * fleet.cost / scale
        extra_cost = extra[:, 0].copy()
        for s, sc in slack_cols:
            if s >= 0:
                extra_cost[s - nx] = w_s / sc
        col_cost = np.concatenate([x_cost, extra_cost])
        col_plain = col_cost
    else:
        max_rank = max(int(fleet.rank.max()) if fleet.n_opt else 0, 1)
        delta = TIE_BREAK_TOTAL_USD / (max(n_res, 1) * max_rank)
        col_cost = np.concatenate([plain + delta * fleet.rank[x_opt], extra[:, 0]])
        col_plain = np.concatenate([plain, extra[:, 0]])
    col_lower = np.concatenate([np.zeros(nx), extra[:, 1]])
    col_upper = np.concatenate([np.ones(nx), extra[:, 2]])
    integer = np.concatenate([np.ones(nx, dtype=bool), extra[:, 3].astype(bool)])

    lens = np.fromiter((i.size for i in rows_idx), dtype=np.int64, count=len(rows_idx))
    a_start = np.zeros(n_res + len(rows_idx) + 1, dtype=np.int64)
    np.cumsum(counts, out=a_start[1 : n_res + 1])
    np.cumsum(lens, out=a_start[n_res + 1 :])
    a_start[n_res + 1 :] += nx
    a_index = np.concatenate([np.arange(nx, dtype=np.int64), *rows_idx])
    a_value = np.concatenate([np.ones(nx), *rows_val])
    row_lower = np.concatenate([np.ones(n_res), np.asarray(rows_lo, dtype=np.float64)])
    row_upper = np.concatenate([np.ones(n_res), np.asarray(rows_hi, dtype=np.float64)])
    return _Model(
        ncol=ncol,
        nx=nx,
        x_opt=x_opt,
        res_x=res_x,
        n_assign=n_res,
        col_cost=col_cost,
        col_cost_plain=col_plain,
        col_lower=col_lower,
        col_upper=col_upper,
        integer=integer,
        row_lower=row_lower,
        row_upper=row_upper,
        a_start=a_start,
        a_index=a_index,
        a_value=a_value,
        named_rows={k: n_res + v for k, v in named.items()},
        elastic=indicator,
        infeasible=[] if elastic else infeasible,
    )


# ------------------------------------------------------------------------- solvers


class _SolverFailure(RuntimeError):
    pass


@dataclass
class _Raw:
    status: str  # optimal | infeasible | time_limit
    x: np.ndarray | None  # column values
    duals: np.ndarray | None  # row duals, d objective / d row bound
    objective: float | None
    mip_gap: float | None
    seconds: float
    build_seconds: float = 0.0
    reduced_costs: np.ndarray | None = None
    method: str = "mip"


def _solve_highs(
    model: _Model, *, integer: bool, plain: bool, time_limit: float, mip_gap: float,
    threads: int | None, seed: int, start: np.ndarray | None = None, target: float | None = None,
) -> _Raw:  # fmt: skip
    """Solve with highspy.  LPs start from the basis "cheapest option per resource,
    coupling slacks basic", which is dual feasible: the dual simplex then only has to
    repair the coupling rows (a few thousand pivots instead of one per resource)."""
    import highspy

    t0 = time.perf_counter()
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("random_seed", int(seed))
    h.setOptionValue("time_limit", max(float(time_limit), 0.01))
    h.setOptionValue("mip_rel_gap", float(mip_gap))
    if threads:
        h.setOptionValue("threads", int(threads))
    if target is not None:
        h.setOptionValue("objective_target", float(target))
    cost = model.col_cost_plain if plain else model.col_cost
    integrality = (model.integer if integer else np.zeros(model.ncol, dtype=bool)).astype(np.int32)
    st = h.passModel(
        model.ncol, model.nrow, int(model.a_index.size), 2, 1, float(model.offset),
        cost, model.col_lower, model.col_upper, model.row_lower, model.row_upper,
        model.a_start[:-1].astype(np.int32), model.a_index.astype(np.int32),
        model.a_value, integrality,
    )  # fmt: skip
    if st == highspy.HighsStatus.kError:
        raise _SolverFailure("highspy rejected the model")
    if not integer and model.n_assign and model.nx:
        B = highspy.HighsBasisStatus
        res_x = model.res_x
        order = np.lexsort((cost[: model.nx], res_x))
        first = np.searchsorted(res_x[order], np.arange(model.n_assign))
        col = np.zeros(model.ncol, dtype=bool)
        col[order[first]] = True
        row = np.zeros(model.nrow, dtype=bool)
        row[model.n_assign :] = True
        basis = highspy.HighsBasis()
        basis.col_status = [B.kBasic if b else B.kLower for b in col.tolist()]
        basis.row_status = [B.kBasic if b else B.kLower for b in row.tolist()]
        basis.valid = True
        h.setBasis(basis)
    if integer and start is not None:
        sol0 = highspy.HighsSolution()
        sol0.col_value = start.tolist()
        sol0.value_valid = True
        h.setSolution(sol0)
    built = time.perf_counter() - t0
    t1 = time.perf_counter()
    run = h.run()
    if run == highspy.HighsStatus.kError and threads:
        # the global scheduler was started with another thread count
        h.resetGlobalScheduler(True)
        h.setOptionValue("threads", int(threads))
        run = h.run()
    secs = time.perf_counter() - t1
    ms = h.getModelStatus()
    S = highspy.HighsModelStatus
    info = h.getInfo()
    sol = h.getSolution()
    if ms == S.kOptimal:
        status = "optimal"
    elif ms in (S.kInfeasible, S.kUnboundedOrInfeasible):
        status = "infeasible"
    elif ms in (S.kTimeLimit, S.kIterationLimit, S.kSolutionLimit, S.kInterrupt, S.kObjectiveTarget):
        status = "time_limit"
    else:
        raise _SolverFailure(f"HiGHS ended with model status {h.modelStatusToString(ms)}")
    x = np.asarray(sol.col_value, dtype=np.float64) if sol.value_valid else None
    if status == "infeasible" or (status == "time_limit" and not integer):
        x = None
    duals = np.asarray(sol.row_dual, dtype=np.float64) if (sol.dual_valid and not integer) else None
    gap = None
    if integer and x is not None:
        g = float(info.mip_gap)
        gap = g if math.isfinite(g) else None
    elif not integer and x is not None:
        gap = 0.0
    obj = float(info.objective_function_value) if x is not None else None
    rc = np.asarray(sol.col_dual, dtype=np.float64) if duals is not None else None
    return _Raw(status, x, duals, obj, gap, secs, built, rc)


def _fix_columns(model: _Model, fix: np.ndarray, values: np.ndarray) -> tuple[_Model, np.ndarray] | None:
    """Sub-model with the columns in ``fix`` fixed at ``values``; None if that is
    infeasible on a row left without free columns.  Returns (sub-model, kept columns)."""
    keep_cols = np.flatnonzero(~fix)
    newidx = np.full(model.ncol, -1, dtype=np.int64)
    newidx[keep_cols] = np.arange(keep_cols.size)
    row_of = np.repeat(np.arange(model.nrow), np.diff(model.a_start))
    fixed_entry = fix[model.a_index]
    act = np.bincount(
        row_of, weights=np.where(fixed_entry, model.a_value * values[model.a_index], 0.0),
        minlength=model.nrow,
    )  # fmt: skip
    lo, hi = model.row_lower - act, model.row_upper - act
    free = ~fixed_entry
    nnz = np.bincount(row_of[free], minlength=model.nrow)
    empty = nnz == 0
    tol = 1e-7 * np.maximum(1.0, np.abs(act))
    if ((lo[empty] > tol[empty]) | (hi[empty] < -tol[empty])).any():
        return None
    rows = np.flatnonzero(~empty)
    keep_entry = free & ~empty[row_of]
    a_start = np.zeros(rows.size + 1, dtype=np.int64)
    np.cumsum(nnz[rows], out=a_start[1:])
    nx = int(np.searchsorted(keep_cols, model.nx))
    assign_rows = int(np.searchsorted(rows, model.n_assign))
    sub = _Model(
        ncol=keep_cols.size, nx=nx, x_opt=model.x_opt[keep_cols[:nx]],
        res_x=np.unique(model.res_x[keep_cols[:nx]], return_inverse=True)[1],
        n_assign=assign_rows,
        col_cost=model.col_cost[keep_cols], col_cost_plain=model.col_cost_plain[keep_cols],
        col_lower=model.col_lower[keep_cols], col_upper=model.col_upper[keep_cols],
        integer=model.integer[keep_cols], row_lower=lo[rows], row_upper=hi[rows],
        a_start=a_start, a_index=newidx[model.a_index[keep_entry]],
        a_value=model.a_value[keep_entry], named_rows={}, elastic={}, infeasible=[],
        offset=model.offset + float(model.col_cost[fix] @ values[fix]),
    )  # fmt: skip
    return sub, keep_cols


def _solve_highs_mip(
    model: _Model, *, time_limit: float, mip_gap: float, threads: int | None, seed: int,
    hint: np.ndarray | None = None,
) -> tuple[_Raw, _Raw | None]:  # fmt: skip
    """MIP by "LP, fix, repair".

    1. LP relaxation from the dual-feasible warm basis (gives the lower bound).
    2. Sub-MIP over a neighbourhood: every option of the resources the LP leaves
       fractional, plus the ``k`` options with the smallest LP reduced costs (and the
       LP choice of their resources); all other resources are fixed to their LP option.
    3. Accept when the plan is within ``mip_gap`` of the LP bound; otherwise grow the
       neighbourhood (x4) from the incumbent, and finally run the full MIP from the
       incumbent with the remaining time.  Returns (MIP result, LP result).

    ``hint`` (x columns, 1 = chosen; e.g. yesterday's plan) is a warm start: with every x
    column fixed to it, the rest of the model (indicator columns) is solved; a feasible
    result is the first incumbent, accepted at once when already within ``mip_gap`` of the
    LP bound, else the start of every neighbourhood search.
    """
    t_end = time.perf_counter() + time_limit
    kw = dict(threads=threads, seed=seed)
    lp = _solve_highs(model, integer=False, plain=False, time_limit=time_limit, mip_gap=mip_gap, **kw)
    if lp.status == "infeasible":
        return _Raw("infeasible", None, None, None, None, lp.seconds, lp.build_seconds), lp
    t0 = time.perf_counter()
    best = None
    best_obj = _INF
    if hint is not None and lp.x is not None and model.nx:
        values = np.zeros(model.ncol)
        values[: model.nx] = hint
        hinted = np.zeros(model.n_assign, dtype=bool)
        hinted[model.res_x[hint]] = True
        fix = np.zeros(model.ncol, dtype=bool)
        fix[: model.nx] = hinted[model.res_x]  # a resource without a usable hint stays free
        reduced = _fix_columns(model, fix, values)
        if reduced is not None:
            sub, keep = reduced
            r = _solve_highs(sub, integer=True, plain=False, time_limit=max(t_end - time.perf_counter(), 0.01),
                             mip_gap=mip_gap, **kw)  # fmt: skip
            if r.x is not None:
                values[keep] = r.x
                best, best_obj = values, float(model.col_cost @ values)
        if best is not None and best_obj - lp.objective <= mip_gap * abs(best_obj):
            gap = max(0.0, best_obj - lp.objective) / max(abs(best_obj), 1e-9)
            secs = lp.seconds + time.perf_counter() - t0
            return _Raw("optimal", best, None, best_obj, gap, secs, lp.build_seconds, method="warm_start"), lp
    if lp.x is not None and model.nx:
        nx = model.nx
        xv = lp.x[:nx]
        values = np.zeros(model.ncol)
        values[:nx] = np.round(xv)
        frac_col = (xv > 1e-7) & (xv < 1 - 1e-7)
        frac_res = np.zeros(model.n_assign, dtype=bool)
        frac_res[model.res_x[frac_col]] = True
        frac_col = frac_res[model.res_x]  # every option of a fractional resource
        rc = lp.reduced_costs[:nx] if lp.reduced_costs is not None else np.zeros(nx)
        rc = np.where(values[:nx] > 0.5, -_INF, rc)  # LP choices first
        order = np.argsort(rc, kind="stable")
        n_choice = int((values[:nx] > 0.5).sum())
        k = 2000 + 10 * int(frac_col.sum())
        while time.perf_counter() < t_end:
            free_col = frac_col.copy()
            free_col[order[: n_choice + k]] = True
            free_col &= ~((values[:nx] > 0.5) & ~frac_col)  # chosen cols: decided below
            free_res = np.zeros(model.n_assign, dtype=bool)
            free_res[model.res_x[free_col]] = True
            fix = np.ones(model.ncol, dtype=bool)
            fix[:nx] = ~free_res[model.res_x]
            fix[:nx] |= ~(free_col | (values[:nx] > 0.5))
            fix[nx:] = False
            if not fix[:nx].any():
                break  # the neighbourhood is the whole model
            reduced = _fix_columns(model, fix, values)
            if reduced is not None:
                sub, keep = reduced
                start = best[keep] if best is not None else None
                left = t_end - time.perf_counter()
                # the sub-MIP objective includes the fixed part (offset): stop as soon as
                # the plan is within mip_gap of the LP bound, or the neighbourhood is
                # solved to mip_gap / 2
                target = lp.objective / (1 - mip_gap) - 1e-9 * abs(lp.objective)
                r = _solve_highs(sub, integer=True, plain=False, time_limit=left,
                                 mip_gap=mip_gap / 2, start=start, target=target, **kw)  # fmt: skip
                if r.x is not None:
                    cand = values.copy()
                    cand[keep] = r.x
                    obj = float(model.col_cost @ cand)
                    if obj < best_obj:
                        best, best_obj = cand, obj
            if best is not None and best_obj - lp.objective <= mip_gap * abs(best_obj):
                gap = max(0.0, best_obj - lp.objective) / max(abs(best_obj), 1e-9)
                secs = lp.seconds + time.perf_counter() - t0
                return _Raw("optimal", best, None, best_obj, gap, secs, lp.build_seconds, method="lp_neighbourhood"), lp
            if n_choice + k >= nx:
                break
            k *= 4
    left = t_end - time.perf_counter()
    mip = _solve_highs(model, integer=True, plain=False, time_limit=left, mip_gap=mip_gap, start=best, **kw)
    if best is not None and (mip.x is None or float(model.col_cost @ mip.x) > best_obj):
        # keep the neighbourhood plan when the full MIP did not beat it
        gap = max(0.0, best_obj - lp.objective) / max(abs(best_obj), 1e-9)
        status = "optimal" if mip.status == "optimal" else "time_limit"
        if status == "optimal" and mip.mip_gap is not None:
            gap = min(gap, mip.mip_gap)
        mip = _Raw(status, best, None, best_obj, gap, mip.seconds, mip.build_seconds, method="lp_neighbourhood")
    mip.seconds += lp.seconds + (time.perf_counter() - t0 - mip.seconds)
    mip.build_seconds += lp.build_seconds
    return mip, lp


def _solve_pulp(
    model: _Model, *, engine: str, integer: bool, plain: bool, time_limit: float,
    mip_gap: float, threads: int | None, seed: int,
) -> _Raw:  # fmt: skip
    import pulp

    t0 = time.perf_counter()
    prob = pulp.LpProblem("cloudopt_plan", pulp.LpMinimize)
    lo, hi = model.col_lower.tolist(), model.col_upper.tolist()
    is_int = (model.integer & integer).tolist()
    xs = [
        prob.add_variable(f"c{i}", lo[i], hi[i], pulp.LpInteger if is_int[i] else pulp.LpContinuous)
        for i in range(model.ncol)
    ]
    cost = (model.col_cost_plain if plain else model.col_cost).tolist()
    prob.setObjective(pulp.LpAffineExpression([(xs[i], c) for i, c in enumerate(cost) if c != 0]))
    start, index, value = model.a_start.tolist(), model.a_index.tolist(), model.a_value.tolist()
    rlo, rhi = model.row_lower.tolist(), model.row_upper.tolist()
    cons = []
    for r in range(model.nrow):
        s, e = start[r], start[r + 1]
        expr = pulp.LpAffineExpression([(xs[k], v) for k, v in zip(index[s:e], value[s:e], strict=True)])
        if rlo[r] == rhi[r]:
            sense, rhs = pulp.LpConstraintEQ, rlo[r]
        elif rhi[r] < _INF:
            sense, rhs = pulp.LpConstraintLE, rhi[r]
        else:
            sense, rhs = pulp.LpConstraintGE, rlo[r]
        c = pulp.LpConstraint(expr, sense, name=f"r{r}", rhs=rhs)
        prob.addConstraint(c)
        cons.append(c)
    if engine == "cbc":
        solver = pulp.PULP_CBC_CMD(
            msg=False, mip=integer, timeLimit=float(time_limit), gapRel=float(mip_gap),
            threads=int(threads) if threads else None,
        )  # fmt: skip
    else:
        extra = {"random_seed": int(seed)}
        solver = pulp.HiGHS(
            msg=False, mip=integer, timeLimit=float(time_limit), gapRel=float(mip_gap),
            threads=int(threads) if threads else None, **extra,
        )  # fmt: skip
    built = time.perf_counter() - t0
    t1 = time.perf_counter()
    try:
        prob.solve(solver)
    except pulp.PulpSolverError as exc:
        raise _SolverFailure(str(exc)) from exc
    secs = time.perf_counter() - t1
    if prob.sol_status == pulp.LpSolutionOptimal:
        status = "optimal"
    elif prob.sol_status == pulp.LpSolutionIntegerFeasible:
        status = "time_limit"
    elif prob.status == pulp.LpStatusInfeasible or prob.sol_status == pulp.LpSolutionInfeasible:
        status = "infeasible"
    elif prob.status == pulp.LpStatusNotSolved:
        status = "time_limit"
    else:
        raise _SolverFailure(f"{engine} ended with status {pulp.LpStatus.get(prob.status)}")
    has_sol = status == "optimal" or prob.sol_status == pulp.LpSolutionIntegerFeasible
    x = np.array([v.varValue or 0.0 for v in xs], dtype=np.float64) if has_sol else None
    duals = None
    if has_sol and not integer:
        duals = np.array([c.pi or 0.0 for c in cons], dtype=np.float64)
    obj = float(np.dot(cost, x)) if x is not None else None
    gap = None
    if engine != "cbc" and integer and x is not None:
        g = float(prob.solverModel.getInfo().mip_gap)
        gap = g if math.isfinite(g) else None
    elif not integer and x is not None:
        gap = 0.0
    return _Raw(status, x, duals, obj, gap, secs, built)


# ------------------------------------------------------------------------ solution


@dataclass
class Solution:
    """Result of :meth:`LinearOptimizer.solve`; JSON-serialisable via :meth:`to_json`."""

    status: str
    choices: dict[str, str]
    total_monthly_cost_usd: float | None
    total_one_time_cost_usd: float | None
    baseline_monthly_cost_usd: float
    monthly_savings_usd: float | None
    changes: int | None
    average_performance_risk: float | None
    binding_constraints: list[str]
    shadow_prices: dict[str, float]
    explanation: list[dict[str, Any]] | None
    solver: str
    solve_seconds: float
    build_seconds: float
    mip_gap: float | None
    objective: str = "cost"
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    method: str = ""
    #: resources whose ``warm_start`` choice was offered and handed to the solver as the start
    warm_start_resources: int = 0

    def to_dict(self) -> dict[str, Any]:
        return _json_safe(dataclasses.asdict(self))

    def to_json(self, **kwargs: Any) -> str:
        kwargs.setdefault("sort_keys", True)
        return json.dumps(self.to_dict(), allow_nan=False, **kwargs)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Solution:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown Solution field(s) {sorted(unknown)}")
        return cls(**dict(data))

    @classmethod
    def from_json(cls, text: str) -> Solution:
        return cls.from_dict(json.loads(text))


def _py(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


# -------------------------------------------------------------- plan evaluation


class _Aggregates:
    """Constraint left-hand sides of a plan; supports tie-break swaps."""

    def __init__(self, fleet: _Fleet, cons: _Cons, chosen: np.ndarray):
        self.fleet, self.cons = fleet, cons
        self.chosen = chosen.copy()
        f = fleet
        ng = len(f.group_names)
        self.cost = float(f.cost[chosen].sum())
        self.onetime = float(f.onetime[chosen].sum())
        self.risk = float(f.risk[chosen].sum())
        self.changes = int((~f.is_keep[chosen]).sum())
        v = f.vcpu[chosen]
        spot = f.market[chosen] == _SPOT
        g = f.group_of
        self.tot_v = np.bincount(g, weights=v, minlength=ng)
        self.spot_v = np.bincount(g, weights=v * spot, minlength=ng)
        self.ns_v = np.bincount(g, weights=v * ~spot, minlength=ng)
        self.mem = np.bincount(g, weights=f.mem[chosen], minlength=ng)
        self.zone_count: dict[tuple[int, int], int] = {}
        z = f.zone_code[chosen]
        for gi, zc in zip(g[(v > 0) & (z >= 0)].tolist(), z[(v > 0) & (z >= 0)].tolist(), strict=True):
            self.zone_count[(gi, zc)] = self.zone_count.get((gi, zc), 0) + 1
        self.zones = np.zeros(ng, dtype=np.int64)
        for gi, _ in self.zone_count:
            self.zones[gi] += 1

    @staticmethod
    def _tol(*scale: float) -> float:
        return CHECK_RTOL * max(1.0, *(abs(s) for s in scale))

    def group_ok(self, gi: int, tot: float, spot: float, ns: float, mem: float, zones: int) -> bool:
        fam = self.cons.group
        f = fam["min_on_demand_share"].get(gi)
        if f is not None and ns < f * tot - self._tol(tot):
            return False
        f = fam["max_spot_share"].get(gi)
        if f is not None and spot > f * tot + self._tol(tot):
            return False
        a = fam["min_capacity_vcpu"].get(gi)
        if a is not None and tot < a - self._tol(a):
            return False
        a = fam["min_capacity_memory_gib"].get(gi)
        if a is not None and mem < a - self._tol(a):
            return False
        n = fam["min_zones"].get(gi)
        return not (n is not None and zones < n)

    def try_swap(self, r: int, k: int) -> bool:
        """Switch resource r to option k if every constraint stays satisfied."""
        f, c = self.fleet, self.cons
        j = int(self.chosen[r])
        d_cost = f.cost[k] - f.cost[j]
        if c.budget is not None and self.cost + d_cost > c.budget + self._tol(c.budget):
            return False
        d_one = f.onetime[k] - f.onetime[j]
        if c.one_time is not None and self.onetime + d_one > c.one_time + self._tol(c.one_time):
            return False
        d_risk = f.risk[k] - f.risk[j]
        if c.max_avg_risk is not None:
            bound = c.max_avg_risk * f.n_res
            if self.risk + d_risk > bound + self._tol(bound):
                return False
        d_ch = int(not f.is_keep[k]) - int(not f.is_keep[j])
        if c.max_changes is not None and self.changes + d_ch > c.max_changes:
            return False
        gi = int(f.group_of[r])
        vj, vk = f.vcpu[j], f.vcpu[k]
        sj, sk = f.market[j] == _SPOT, f.market[k] == _SPOT
        tot = self.tot_v[gi] - vj + vk
        spot = self.spot_v[gi] - vj * sj + vk * sk
        ns = self.ns_v[gi] - vj * (not sj) + vk * (not sk)
        mem = self.mem[gi] - f.mem[j] + f.mem[k]
        zj = (gi, int(f.zone_code[j])) if vj > 0 and f.zone_code[j] >= 0 else None
        zk = (gi, int(f.zone_code[k])) if vk > 0 and f.zone_code[k] >= 0 else None
        zones = int(self.zones[gi])
        if zj != zk:
            if zj is not None and self.zone_count[zj] == 1:
                zones -= 1
            if zk is not None and self.zone_count.get(zk, 0) == 0:
                zones += 1
        if not self.group_ok(gi, tot, spot, ns, mem, zones):
            return False
        # apply
        self.cost += d_cost
        self.onetime += d_one
        self.risk += d_risk
        self.changes += d_ch
        self.tot_v[gi], self.spot_v[gi], self.ns_v[gi], self.mem[gi] = tot, spot, ns, mem
        if zj != zk:
            if zj is not None:
                self.zone_count[zj] -= 1
                if self.zone_count[zj] == 0:
                    del self.zone_count[zj]
            if zk is not None:
                self.zone_count[zk] = self.zone_count.get(zk, 0) + 1
        self.zones[gi] = zones
        self.chosen[r] = k
        return True


@dataclass
class _Check:
    name: str
    family: str
    group: str | None
    sense: str  # "<=" or ">="
    lhs: float
    bound: float
    tol: float
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.lhs, self.bound = _py(self.lhs), _py(self.bound)
        self.info = {k: _py(v) for k, v in self.info.items()}

    @property
    def violation(self) -> float:
        d = self.lhs - self.bound if self.sense == "<=" else self.bound - self.lhs
        return d if d > self.tol else 0.0

    @property
    def binding(self) -> bool:
        return abs(self.lhs - self.bound) <= self.tol


def _linear_checks(fleet: _Fleet, cons: _Cons, agg: _Aggregates) -> list[_Check]:
    """Linear constraints of a plan, in the model's units (shares as vCPU balances)."""
    tol = _Aggregates._tol
    out = []
    if cons.budget is not None:
        out.append(_Check("monthly_budget_usd", "monthly_budget_usd", None, "<=", agg.cost,
                          cons.budget, tol(cons.budget)))  # fmt: skip
    if cons.one_time is not None:
        out.append(_Check("max_one_time_cost_usd", "max_one_time_cost_usd", None, "<=",
                          agg.onetime, cons.one_time, tol(cons.one_time)))  # fmt: skip
    if cons.max_avg_risk is not None:
        n = max(fleet.n_res, 1)
        out.append(_Check("max_average_performance_risk", "max_average_performance_risk", None,
                          "<=", agg.risk / n, cons.max_avg_risk, tol(cons.max_avg_risk)))  # fmt: skip
    if cons.max_changes is not None:
        out.append(_Check("max_changes", "max_changes", None, "<=", agg.changes,
                          cons.max_changes, 0.5))  # fmt: skip
    fam = cons.group
    for gi, gname in enumerate(fleet.group_names):
        tot, spot, ns = agg.tot_v[gi], agg.spot_v[gi], agg.ns_v[gi]
        share_info = {"vcpu_total": tot, "vcpu_spot": spot, "vcpu_non_spot": ns}
        f = fam["min_on_demand_share"].get(gi)
        if f is not None:
            out.append(_Check(_cname("min_on_demand_share", gname), "min_on_demand_share", gname,
                              ">=", ns - f * tot, 0.0, tol(tot), {"share": f, **share_info}))  # fmt: skip
        f = fam["max_spot_share"].get(gi)
        if f is not None:
            out.append(_Check(_cname("max_spot_share", gname), "max_spot_share", gname,
                              "<=", spot - f * tot, 0.0, tol(tot), {"share": f, **share_info}))  # fmt: skip
        n = fam["min_zones"].get(gi)
        if n is not None:
            out.append(_Check(_cname("min_zones", gname), "min_zones", gname, ">=",
                              int(agg.zones[gi]), n, 0.5))  # fmt: skip
        a = fam["min_capacity_vcpu"].get(gi)
        if a is not None:
            out.append(_Check(_cname("min_capacity_vcpu", gname), "min_capacity_vcpu", gname,
                              ">=", tot, a, tol(a)))  # fmt: skip
        a = fam["min_capacity_memory_gib"].get(gi)
        if a is not None:
            out.append(_Check(_cname("min_capacity_memory_gib", gname), "min_capacity_memory_gib",
                              gname, ">=", agg.mem[gi], a, tol(a)))  # fmt: skip
    return out


def _filter_binding(fleet: _Fleet, cons: _Cons, chosen: np.ndarray, objective: str) -> list[str]:
    """Filters that removed an option strictly better (objective) than the chosen one."""
    forb = _forbidden(fleet, cons)
    coef = _objective_coefs(fleet, objective)
    better = coef < coef[chosen[fleet.res_of]] - _COST_EQ_TOL
    out = []
    if (forb["risk"] & better).any():
        out.append("max_performance_risk")
    hit = forb["region"] & better
    if hit.any():
        gopt = fleet.group_of[fleet.res_of]
        out += [_cname("allowed_regions", fleet.group_names[g]) for g in np.unique(gopt[hit])]
    hit = forb["protected"] & better
    if hit.any():
        out += [_cname("protected_ids", fleet.ids[r]) for r in np.unique(fleet.res_of[hit])]
    return out


def _polish(fleet: _Fleet, cons: _Cons, chosen: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """Tie-break post-pass: move a resource to an equally cheap, preferred option
    (keep, then lower one-time cost, then name) when no constraint breaks."""
    cur = chosen[fleet.res_of]
    cand = allowed & (np.abs(fleet.cost - fleet.cost[cur]) <= _COST_EQ_TOL) & (fleet.rank < fleet.rank[cur])
    if not cand.any():
        return chosen
    agg = _Aggregates(fleet, cons, chosen)
    idx = np.flatnonzero(cand)
    idx = idx[np.lexsort((fleet.rank[idx], fleet.res_of[idx]))]
    done = -1
    for k in idx.tolist():
        r = int(fleet.res_of[k])
        if r == done:
            continue
        if fleet.rank[k] < fleet.rank[agg.chosen[r]] and agg.try_swap(r, k):
            done = r
    return agg.chosen


def _explain(fleet: _Fleet, cons: _Cons, chosen: np.ndarray) -> list[dict[str, Any]]:
    """Constraints the (elastic) plan violates and how far to relax each."""
    agg = _Aggregates(fleet, cons, chosen)
    out = []
    for ch in _linear_checks(fleet, cons, agg):
        if ch.violation <= 0:
            continue
        item: dict[str, Any] = {"constraint": ch.name, "family": ch.family, "group": ch.group}
        fam = ch.family
        if fam in ("min_on_demand_share", "max_spot_share"):
            tot = ch.info["vcpu_total"]
            num = ch.info["vcpu_non_spot"] if fam == "min_on_demand_share" else ch.info["vcpu_spot"]
            achieved = num / tot if tot > 0 else 0.0
            cur = ch.info["share"]
            item.update(current=cur, required=achieved, relax_by=abs(cur - achieved), unit="share",
                        vcpu_gap=ch.violation)  # fmt: skip
            verb = "lower" if fam == "min_on_demand_share" else "raise"
            item["message"] = (
                f"{verb} {ch.name} from {cur:g} to {achieved:.4f} ({ch.violation:.4g} vCPU short of the current share)"
            )
        else:
            unit = {
                "monthly_budget_usd": "USD/month",
                "max_one_time_cost_usd": "USD",
                "max_average_performance_risk": "risk",
                "max_changes": "resources",
                "min_zones": "zones",
                "min_capacity_vcpu": "vCPU",
                "min_capacity_memory_gib": "GiB",
            }[fam]
            verb = "raise" if ch.sense == "<=" else "lower"
            item.update(current=ch.bound, required=ch.lhs, relax_by=ch.violation, unit=unit)
            item["message"] = f"{verb} {ch.name} from {ch.bound:g} to {ch.lhs:.6g} (by {ch.violation:.6g} {unit})"
        out.append(item)
    forb = _forbidden(fleet, cons)
    res_ch = np.zeros(fleet.n_opt, dtype=bool)
    res_ch[chosen] = True
    hit = forb["risk"] & res_ch
    if hit.any():
        need = float(fleet.risk[hit].max())
        out.append({
            "constraint": "max_performance_risk", "family": "max_performance_risk", "group": None,
            "current": cons.max_risk, "required": need, "relax_by": need - (cons.max_risk or 0.0),
            "unit": "risk", "resources": sorted(fleet.ids[r] for r in fleet.res_of[hit]),
            "message": f"raise max_performance_risk from {cons.max_risk:g} to {need:g}",
        })  # fmt: skip
    hit = forb["region"] & res_ch
    if hit.any():
        gopt = fleet.group_of[fleet.res_of]
        for g in np.unique(gopt[hit]).tolist():
            opts = np.flatnonzero(hit & (gopt == g))
            gname = fleet.group_names[g]
            add = sorted({fleet.regions[i] for i in opts})
            out.append({
                "constraint": _cname("allowed_regions", gname), "family": "allowed_regions",
                "group": gname, "current": sorted(cons.group["allowed_regions"][g]),
                "required": sorted(set(cons.group["allowed_regions"][g]) | set(add)),
                "relax_by": add, "unit": "regions",
                "resources": sorted(fleet.ids[r] for r in fleet.res_of[opts]),
                "message": f"add region(s) {', '.join(add)} to allowed_regions[{gname}]",
            })  # fmt: skip
    hit = forb["protected"] & res_ch
    for r in np.unique(fleet.res_of[hit]).tolist():
        rid = fleet.ids[r]
        out.append({
            "constraint": _cname("protected_ids", rid), "family": "protected_ids", "group": None,
            "current": True, "required": False, "relax_by": [rid], "unit": "resources",
            "resources": [rid], "message": f"remove {rid} from protected_ids",
        })  # fmt: skip
    return out


# ----------------------------------------------------------------------- optimiser


class LinearOptimizer:
    """Choose one option per resource minimising the total monthly cost.

    ``instances``: list of resource mappings / :class:`Resource`; ``constraints``: mapping
    (see :data:`CONSTRAINT_KEYS`).  Input is validated here (``ValueError``).  ``warm_start``:
    {resource id: option name}, e.g. yesterday's ``Solution.choices``: the HiGHS search starts
    from it (what it names that is not offered today is ignored); the answer is held to the
    same gap either way.
    """

    def __init__(
        self,
        instances: Iterable[Mapping[str, Any] | Resource],
        constraints: Mapping[str, Any] | None = None,
        *,
        solver: str = "highs",
        time_limit_s: float = 60.0,
        mip_gap: float = 1e-4,
        threads: int | None = None,
        random_seed: int = 0,
        objective: str = "cost",
        fallback: bool = True,
        shadow_prices: bool = True,
        explain: bool = True,
        warm_start: Mapping[str, str] | None = None,
    ):
        t0 = time.perf_counter()
        if solver not in SOLVERS:
            raise ValueError(f"unknown solver {solver!r}; use one of {', '.join(SOLVERS)}")
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}; use one of {', '.join(OBJECTIVES)}")
        if not (isinstance(time_limit_s, int | float) and time_limit_s > 0):
            raise ValueError(f"time_limit_s must be a positive number, got {time_limit_s!r}")
        if not (isinstance(mip_gap, int | float) and 0 <= mip_gap < 1):
            raise ValueError(f"mip_gap must be a number in [0, 1), got {mip_gap!r}")
        self.solver = solver
        self._active_solver = solver  # becomes "cbc" after a HiGHS fallback
        self.time_limit_s = float(time_limit_s)
        self.mip_gap = float(mip_gap)
        self.threads = threads
        self.random_seed = int(random_seed)
        self.objective = objective
        self.fallback = fallback
        self.shadow_prices = shadow_prices
        self.explain = explain
        self.warm_start = dict(warm_start) if warm_start else None
        self._fleet = _load_fleet(instances)
        self._cons = _load_constraints(constraints, self._fleet)
        self._load_seconds = time.perf_counter() - t0

    @property
    def n_resources(self) -> int:
        return self._fleet.n_res

    @property
    def n_options(self) -> int:
        return self._fleet.n_opt

    # -- solver dispatch -------------------------------------------------------
    def _run(
        self, model: _Model, notes: list[str], *, integer: bool, plain: bool = False,
        mip_gap: float | None = None, deadline: float | None = None, lp_fix: bool = False,
        hint: np.ndarray | None = None,
    ) -> tuple[_Raw, str, _Raw | None]:  # fmt: skip
        """Solve with the active solver (HiGHS falls back to CBC).  Returns
        (result, solver used, LP relaxation result when it came for free)."""
        gap = self.mip_gap if mip_gap is None else mip_gap
        limit = self.time_limit_s
        if deadline is not None:
            limit = max(deadline - time.perf_counter(), 1.0)
        kw = dict(time_limit=limit, mip_gap=gap, threads=self.threads, seed=self.random_seed)
        if self._active_solver == "highs":
            try:
                if integer and lp_fix:
                    raw, lp = _solve_highs_mip(model, hint=hint, **kw)
                    return raw, "highs", lp
                return _solve_highs(model, integer=integer, plain=plain, **kw), "highs", None
            except (ImportError, _SolverFailure) as exc:
                if not self.fallback:
                    raise
                notes.append(f"HiGHS unavailable or failed ({exc}); fell back to CBC")
                self._active_solver = "cbc"
        engine = "cbc" if self._active_solver == "cbc" else "highs"
        raw = _solve_pulp(model, engine=engine, integer=integer, plain=plain, **kw)
        return raw, self._active_solver, None

    def _hint(self, model: _Model) -> np.ndarray | None:
        """The x columns of ``warm_start``'s choices (a choice no longer offered, or dropped as
        dominated or forbidden, is no hint)."""
        if not self.warm_start:
            return None
        f = self._fleet
        ids = np.asarray(f.ids, dtype=object)[f.res_of[model.x_opt]]
        names = np.asarray(f.names, dtype=object)[model.x_opt]
        wanted = np.array([self.warm_start.get(i) for i in ids.tolist()], dtype=object)
        hint = wanted == names
        return hint if hint.any() else None

    def _extract(self, model: _Model, x: np.ndarray) -> np.ndarray:
        f = self._fleet
        xv = x[: model.nx]
        res_x = f.res_of[model.x_opt]
        order = np.lexsort((-xv, res_x))
        first = np.searchsorted(res_x[order], np.arange(f.n_res))
        return model.x_opt[order[first]]

    # -- main entry point ------------------------------------------------------
    def solve(self) -> Solution:
        f, c = self._fleet, self._cons
        notes: list[str] = []
        timings = {"load": self._load_seconds}
        t0 = time.perf_counter()
        deadline = t0 + self.time_limit_s
        model = _build_model(f, c, objective=self.objective)
        timings["build"] = time.perf_counter() - t0
        baseline = float(f.cost[f.keep_of].sum())
        hinted = 0
        base = dict(
            baseline_monthly_cost_usd=baseline, objective=self.objective, notes=notes,
            timings=timings, shadow_prices={}, binding_constraints=[], explanation=None,
        )  # fmt: skip

        if model.infeasible:
            notes.extend(model.infeasible)
            raw, used, lp0 = _Raw("infeasible", None, None, None, None, 0.0), self._active_solver, None
        elif f.n_res == 0:  # nothing to decide
            empty = np.zeros(model.ncol)
            raw, used, lp0 = _Raw("optimal", empty, None, 0.0, 0.0, 0.0), self._active_solver, None
        else:
            hint = self._hint(model)
            hinted = int(hint.sum()) if hint is not None else 0
            raw, used, lp0 = self._run(model, notes, integer=True, deadline=deadline, lp_fix=True, hint=hint)
        timings["solver_build"] = raw.build_seconds
        timings["mip"] = raw.seconds
        build_seconds = timings["load"] + timings["build"] + raw.build_seconds

        if raw.x is None:
            explanation = None
            if raw.status == "infeasible" and self.explain:
                t1 = time.perf_counter()
                explanation = self._explanation(notes)
                timings["explain"] = time.perf_counter() - t1
            timings["total"] = time.perf_counter() - t0 + self._load_seconds
            return Solution(
                status=raw.status, choices={}, total_monthly_cost_usd=None,
                total_one_time_cost_usd=None, monthly_savings_usd=None, changes=None,
                average_performance_risk=None, mip_gap=None, solver=used,
                solve_seconds=raw.seconds, build_seconds=build_seconds, method=raw.method,
                warm_start_resources=hinted, **{**base, "explanation": explanation},
            )  # fmt: skip

        t1 = time.perf_counter()
        chosen = self._extract(model, raw.x)
        allowed = np.zeros(f.n_opt, dtype=bool)
        allowed[model.x_opt] = True
        chosen = _polish(f, c, chosen, allowed)
        agg = _Aggregates(f, c, chosen)
        checks = _linear_checks(f, c, agg)
        violated = [ch.name for ch in checks if ch.violation > 0]
        if violated:
            notes.append(f"solver tolerance: plan violates {violated} slightly")
        binding = sorted([ch.name for ch in checks if ch.binding] + _filter_binding(f, c, chosen, self.objective))
        timings["postprocess"] = time.perf_counter() - t1

        shadow: dict[str, float] = {}
        gap = raw.mip_gap
        if self.shadow_prices and f.n_res:
            t1 = time.perf_counter()
            lp = lp0
            if lp is None or lp.duals is None:
                lp, _, _ = self._run(model, notes, integer=False, plain=True)
            timings["lp_relaxation"] = time.perf_counter() - t1
            if lp.duals is not None:
                for name, r in model.named_rows.items():
                    fam = name.split("[", 1)[0]
                    if fam in ("monthly_budget_usd", "max_one_time_cost_usd", "max_changes",
                               "min_capacity_vcpu", "min_capacity_memory_gib"):  # fmt: skip
                        shadow[name] = float(lp.duals[r])
                    elif fam == "max_average_performance_risk":
                        shadow[name] = float(lp.duals[r]) * f.n_res
                shadow = {k: (0.0 if abs(v) < 1e-9 else v) for k, v in sorted(shadow.items())}
            if gap is None and lp.objective is not None:
                # CBC does not report its gap: bound it with the LP relaxation (and, when
                # CBC proved optimality, with the requested gap).
                obj = float(_objective_coefs(f, self.objective)[chosen].sum())
                gap = max(0.0, obj - lp.objective) / max(abs(obj), 1e-9)
                if raw.status == "optimal":
                    gap = min(gap, self.mip_gap)
                notes.append("mip_gap is an upper bound (LP relaxation / requested gap)")
        total = agg.cost
        timings["total"] = time.perf_counter() - t0 + self._load_seconds
        return Solution(
            status=raw.status,
            choices={f.ids[r]: f.names[j] for r, j in enumerate(chosen.tolist())},
            total_monthly_cost_usd=total,
            total_one_time_cost_usd=agg.onetime,
            monthly_savings_usd=baseline - total,
            changes=agg.changes,
            average_performance_risk=agg.risk / f.n_res if f.n_res else 0.0,
            binding_constraints=binding,
            shadow_prices=shadow,
            explanation=None,
            solver=used,
            solve_seconds=raw.seconds,
            build_seconds=build_seconds,
            mip_gap=gap,
            objective=self.objective,
            notes=notes,
            timings=timings,
            baseline_monthly_cost_usd=baseline,
            method=raw.method,
            warm_start_resources=hinted,
        )

    def _explanation(self, notes: list[str]) -> list[dict[str, Any]]:
        """Elastic re-solve: fewest relaxed constraints, then smallest relative slack."""
        f, c = self._fleet, self._cons
        emodel = _build_model(f, c, objective=self.objective, elastic=True)
        eraw, _, _ = self._run(emodel, notes, integer=True, mip_gap=1e-6)
        if eraw.x is None:
            notes.append("could not compute an explanation (elastic model unsolved)")
            return []
        if eraw.status != "optimal":
            notes.append("explanation search hit the time limit; the set may not be minimal")
        return _explain(f, c, self._extract(emodel, eraw.x))


# ---------------------------------------------------------------- plan checking


def check_plan(
    instances: Iterable[Mapping[str, Any] | Resource],
    constraints: Mapping[str, Any] | None,
    choices: Mapping[str, str],
) -> list[str]:
    """Violations of ``constraints`` by the plan ``choices`` ({id: option name}).

    Independent of the optimiser's model: plain loops over the chosen options (input
    parsing and ``'*'`` resolution are shared).  An empty list means the plan is valid.
    Tolerance: ``CHECK_RTOL`` relative to the bound (at least 1e-6 absolute).
    """
    fleet = _load_fleet(instances)
    cons = _load_constraints(constraints, fleet)
    out: list[str] = []
    chosen: list[int] = []
    for r, rid in enumerate(fleet.ids):
        name = choices.get(rid)
        if name is None:
            out.append(f"{rid}: no option chosen")
            continue
        j = next((j for j in range(fleet.start[r], fleet.start[r + 1]) if fleet.names[j] == name), None)
        if j is None:
            out.append(f"{rid}: unknown option {name!r}")
            continue
        chosen.append(j)
    known = set(fleet.ids)
    out += [f"{rid}: not in instances" for rid in sorted(set(choices) - known)]
    if out:
        return out

    def tol(bound: float) -> float:
        return CHECK_RTOL * max(1.0, abs(bound))

    cost = one_time = risk = 0.0
    changes = 0
    groups: dict[int, dict[str, Any]] = {}
    protected = set(cons.protected)
    for r, j in enumerate(chosen):
        rid, name = fleet.ids[r], fleet.names[j]
        cost += float(fleet.cost[j])
        one_time += float(fleet.onetime[j])
        risk += float(fleet.risk[j])
        changes += name != KEEP
        gi = int(fleet.group_of[r])
        gname = fleet.group_names[gi]
        g = groups.setdefault(gi, {"vcpu": 0.0, "spot": 0.0, "non_spot": 0.0, "mem": 0.0, "zones": set()})
        v = float(fleet.vcpu[j])
        g["vcpu"] += v
        g["spot" if fleet.market[j] == _SPOT else "non_spot"] += v
        g["mem"] += float(fleet.mem[j])
        if v > 0 and fleet.zones[j]:
            g["zones"].add(fleet.zones[j])
        if cons.max_risk is not None and fleet.risk[j] > cons.max_risk + tol(cons.max_risk):
            out.append(f"max_performance_risk: {rid} option {name!r} has risk {fleet.risk[j]:g} > {cons.max_risk:g}")
        regions = cons.group["allowed_regions"].get(gi)
        if regions is not None and fleet.regions[j] not in regions:
            out.append(
                f"allowed_regions[{gname}]: {rid} option {name!r} is in {fleet.regions[j]!r}, allowed {sorted(regions)}"
            )
        if r in protected and name != KEEP:
            out.append(f"protected_ids: {rid} is protected but takes {name!r}")
    if cons.budget is not None and cost > cons.budget + tol(cons.budget):
        out.append(f"monthly_budget_usd: cost {cost:.2f} > {cons.budget:.2f}")
    if cons.one_time is not None and one_time > cons.one_time + tol(cons.one_time):
        out.append(f"max_one_time_cost_usd: {one_time:.2f} > {cons.one_time:.2f}")
    if cons.max_avg_risk is not None and fleet.n_res:
        avg = risk / fleet.n_res
        if avg > cons.max_avg_risk + tol(cons.max_avg_risk):
            out.append(f"max_average_performance_risk: {avg:.6g} > {cons.max_avg_risk:g}")
    if cons.max_changes is not None and changes > cons.max_changes:
        out.append(f"max_changes: {changes} > {cons.max_changes}")
    fam = cons.group
    for gi, gname in enumerate(fleet.group_names):
        g = groups.get(gi, {"vcpu": 0.0, "spot": 0.0, "non_spot": 0.0, "mem": 0.0, "zones": set()})
        f = fam["min_on_demand_share"].get(gi)
        if f is not None and g["non_spot"] < f * g["vcpu"] - tol(g["vcpu"]):
            out.append(f"min_on_demand_share[{gname}]: non-spot {g['non_spot']:g} of {g['vcpu']:g} vCPU < {f:g}")
        f = fam["max_spot_share"].get(gi)
        if f is not None and g["spot"] > f * g["vcpu"] + tol(g["vcpu"]):
            out.append(f"max_spot_share[{gname}]: spot {g['spot']:g} of {g['vcpu']:g} vCPU > {f:g}")
        n = fam["min_zones"].get(gi)
        if n is not None and len(g["zones"]) < n:
            out.append(f"min_zones[{gname}]: {len(g['zones'])} zone(s) {sorted(g['zones'])} < {n}")
        a = fam["min_capacity_vcpu"].get(gi)
        if a is not None and g["vcpu"] < a - tol(a):
            out.append(f"min_capacity_vcpu[{gname}]: {g['vcpu']:g} < {a:g}")
        a = fam["min_capacity_memory_gib"].get(gi)
        if a is not None and g["mem"] < a - tol(a):
            out.append(f"min_capacity_memory_gib[{gname}]: {g['mem']:g} < {a:g}")
    return out


# ------------------------------------------------------------------ pareto sweep


def pareto_sweep(
    instances: Iterable[Mapping[str, Any] | Resource],
    constraints: Mapping[str, Any] | None = None,
    sweep: str = "budget",
    steps: int = 10,
    **solver_kwargs: Any,
) -> list[dict[str, Any]]:
    """Cost trade-off curve, one point per step (for ``cloudopt plan --sweep``).

    * ``sweep="budget"``: budgets evenly spaced from the cheapest feasible plan to the
      cost of the lowest-risk plan; at each budget the plan of minimal total
      performance risk is computed (``objective="risk"``): cost vs risk.
    * ``sweep="max_changes"``: ``max_changes`` evenly spaced from 0 to the number of
      changes of the unconstrained cheapest plan; minimal cost at each: cost vs changes.

    The swept key of ``constraints`` is replaced; the others apply to every point.
    ``solver_kwargs`` go to :class:`LinearOptimizer`.
    """
    if sweep not in ("budget", "max_changes"):
        raise ValueError(f"unknown sweep {sweep!r}; use 'budget' or 'max_changes'")
    if not isinstance(steps, int) or steps < 2:
        raise ValueError(f"steps must be an integer >= 2, got {steps!r}")
    instances = list(instances)
    kw = {"shadow_prices": False, "explain": False, **solver_kwargs}
    key = "monthly_budget_usd" if sweep == "budget" else "max_changes"
    base = {k: v for k, v in dict(constraints or {}).items() if k != key}

    def point(value: float, sol: Solution) -> dict[str, Any]:
        return {
            "sweep": sweep,
            key: value,
            "status": sol.status,
            "total_monthly_cost_usd": sol.total_monthly_cost_usd,
            "monthly_savings_usd": sol.monthly_savings_usd,
            "total_one_time_cost_usd": sol.total_one_time_cost_usd,
            "average_performance_risk": sol.average_performance_risk,
            "changes": sol.changes,
        }

    cheapest = LinearOptimizer(instances, base, **kw).solve()
    if cheapest.total_monthly_cost_usd is None:
        return [point(float("nan") if sweep == "budget" else 0, cheapest)]
    if sweep == "budget":
        safest = LinearOptimizer(instances, base, objective="risk", **kw).solve()
        lo = cheapest.total_monthly_cost_usd
        hi = max(lo, safest.total_monthly_cost_usd or lo)
        values = sorted({round(float(b), 6) for b in np.linspace(lo, hi, steps)})
        out = []
        for b in values:
            budget = b + CHECK_RTOL * max(1.0, abs(b))  # the cheapest plan must stay feasible
            cons = {**base, key: budget}
            out.append(point(b, LinearOptimizer(instances, cons, objective="risk", **kw).solve()))
        return out
    kmax = int(cheapest.changes or 0)
    values = sorted({round(k) for k in np.linspace(0, kmax, steps)})
    return [point(k, LinearOptimizer(instances, {**base, key: k}, **kw).solve()) for k in values]
