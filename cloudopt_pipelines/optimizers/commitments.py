"""Reserved Instances and Savings Plans for the steady usage left after right-sizing and schedules.

Pure logic, no Dagster. Commitments come last: the input is the *proposed* instance type of every
instance that still runs around the clock once right-sizing, schedules, spot and idle actions are
applied. Usage is summed per (region, family) in AWS normalised units (``NORMALIZATION_FACTORS``,
from the EC2 User Guide "Instance size flexibility"), because a regional Linux RI applies to any size
of its family.

Rates: the only reserved rates available here are the 2017 table (``reserved_prices``: 88 types,
nothing newer than c5). A type found there in its region uses the 2017 discount as read; every other
type gets the discount of a proxy (same size of ``PROXY_FAMILY``, else the proxy family's median in
the region, else us-east-1) applied to its 2026 on-demand price, flagged ``is_estimate``. Savings
Plans have no public rate table here: a Compute Savings Plan is estimated at the convertible-RI
discount and an EC2 Instance Savings Plan at the standard-RI discount of the same term and payment
(both ``is_estimate``). Upfront shares: all upfront 100 % of the term's cost, partial 50 % (AWS's usual
split; estimate), no upfront 0.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

HOURS_PER_MONTH = 730.0
HOURS_PER_YEAR = 8760.0

NORMALIZATION_FACTORS = {
    "nano": 0.25,
    "micro": 0.5,
    "small": 1.0,
    "medium": 2.0,
    "large": 4.0,
    "xlarge": 8.0,
}
# Families newer than the 2017 table and the 2017 family whose discounts they borrow (estimates).
PROXY_FAMILY = {"m": "m4", "c": "c5", "r": "r4", "t": "t2", "x": "x1", "i": "i3", "d": "d2", "z": "m4"}
UPFRONT_SHARE = {"all_upfront": 1.0, "partial_upfront": 0.5, "no_upfront": 0.0}
TERMS = (1, 3)
PAYMENTS = ("no_upfront", "partial_upfront", "all_upfront")


def normalization_factor(instance_type: str) -> float:
    """AWS normalised units of a size (large = 4, xlarge = 8, 12xlarge = 96)."""
    size = instance_type.split(".", 1)[1] if "." in instance_type else ""
    if size in NORMALIZATION_FACTORS:
        return NORMALIZATION_FACTORS[size]
    m = re.fullmatch(r"(\d+)xlarge", size)
    if m:
        return 8.0 * int(m.group(1))
    return 8.0 * 24 if size == "metal" else 0.0


@dataclass(frozen=True)
class CommitmentRate:
    kind: str  # "reserved_instance" | "compute_savings_plan" | "ec2_instance_savings_plan"
    term_years: int
    payment_option: str
    offering_class: str
    discount_pct: float
    is_estimate: bool
    basis: str

    @property
    def name(self) -> str:
        short = {"reserved_instance": "ri", "compute_savings_plan": "csp", "ec2_instance_savings_plan": "ec2sp"}
        return f"{short[self.kind]}_{self.term_years}y_{self.payment_option}"


class ReservedRates:
    """Discounts from the 2017 reserved table, with proxies for newer types (flagged estimates)."""

    def __init__(self, table: pa.Table | Iterable[dict[str, Any]]) -> None:
        rows = table.to_pylist() if isinstance(table, pa.Table) else list(table)
        self._exact: dict[tuple[str, str, int, str, str], float] = {}
        by_family: dict[tuple[str, str, int, str, str], list[float]] = {}
        for r in rows:
            key = (r["region"], r["instance_type"], int(r["term_years"]), r["offering_class"], r["payment_option"])
            self._exact[key] = float(r["discount_pct"])
            fam = r["instance_type"].split(".")[0]
            by_family.setdefault((r["region"], fam, *key[2:]), []).append(float(r["discount_pct"]))
        self._family_median = {k: statistics.median(v) for k, v in by_family.items()}

    def discount(
        self, region: str, instance_type: str, term_years: int, offering_class: str, payment_option: str
    ) -> tuple[float, bool, str] | None:
        """(discount %, is_estimate, basis) or None when neither the type nor a proxy has a rate."""
        exact = self._exact.get((region, instance_type, term_years, offering_class, payment_option))
        if exact is not None:
            return exact, False, "2017 reserved table"
        family, _, size = instance_type.partition(".")
        proxy = PROXY_FAMILY.get(family[:1])
        if proxy is None:
            return None
        for reg in (region, "us-east-1"):
            same = self._exact.get((reg, f"{proxy}.{size}", term_years, offering_class, payment_option))
            if same is not None:
                return same, True, f"estimate: discount of {proxy}.{size} in {reg} (2017) applied to the 2026 price"
            med = self._family_median.get((reg, proxy, term_years, offering_class, payment_option))
            if med is not None:
                return med, True, f"estimate: median {proxy} discount in {reg} (2017) applied to the 2026 price"
        return None

    def rates(self, region: str, instance_type: str, terms: Sequence[int] = TERMS) -> list[CommitmentRate]:
        """Every RI and Savings Plan rate for one type: 2 terms x 3 payments x (RI, Compute SP, EC2 SP)."""
        out = []
        for term in terms:
            for payment in PAYMENTS:
                std = self.discount(region, instance_type, term, "standard", payment)
                conv = self.discount(region, instance_type, term, "convertible", payment)
                if std:
                    out.append(CommitmentRate("reserved_instance", term, payment, "standard", *std))
                    out.append(
                        CommitmentRate(
                            "ec2_instance_savings_plan",
                            term,
                            payment,
                            "standard",
                            std[0],
                            True,
                            "estimate: EC2 Instance Savings Plan taken at the standard-RI discount",
                        )
                    )
                if conv:
                    out.append(
                        CommitmentRate(
                            "compute_savings_plan",
                            term,
                            payment,
                            "convertible",
                            conv[0],
                            True,
                            "estimate: Compute Savings Plan taken at the convertible-RI discount",
                        )
                    )
        return out


@dataclass(frozen=True)
class CommitmentQuote:
    """What one commitment costs and saves for an always-on usage of ``ondemand_usd_per_hour``."""

    rate: CommitmentRate
    ondemand_monthly_usd: float
    effective_monthly_usd: float
    upfront_usd: float
    recurring_monthly_usd: float
    monthly_savings_usd: float
    break_even_months: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.rate.name,
            "kind": self.rate.kind,
            "term_years": self.rate.term_years,
            "payment_option": self.rate.payment_option,
            "discount_pct": self.rate.discount_pct,
            "is_estimate": self.rate.is_estimate,
            "basis": self.rate.basis,
            "ondemand_monthly_usd": self.ondemand_monthly_usd,
            "effective_monthly_usd": self.effective_monthly_usd,
            "upfront_usd": self.upfront_usd,
            "monthly_savings_usd": self.monthly_savings_usd,
            "break_even_months": self.break_even_months,
        }


def quote(rate: CommitmentRate, ondemand_usd_per_hour: float) -> CommitmentQuote:
    """Cost, upfront, savings and break-even of a commitment covering one always-on instance."""
    od_month = ondemand_usd_per_hour * HOURS_PER_MONTH
    eff_hour = ondemand_usd_per_hour * (1 - rate.discount_pct / 100)
    term_cost = eff_hour * HOURS_PER_YEAR * rate.term_years
    upfront = term_cost * UPFRONT_SHARE[rate.payment_option]
    months = 12 * rate.term_years
    recurring = (term_cost - upfront) / months
    gain = od_month - recurring
    break_even = upfront / gain if gain > 0 else float("inf")
    return CommitmentQuote(
        rate=rate,
        ondemand_monthly_usd=round(od_month, 4),
        effective_monthly_usd=round(eff_hour * HOURS_PER_MONTH, 4),
        upfront_usd=round(upfront, 2),
        recurring_monthly_usd=round(recurring, 4),
        monthly_savings_usd=round(od_month - eff_hour * HOURS_PER_MONTH, 4),
        break_even_months=round(break_even, 2),
    )


@dataclass(frozen=True)
class SteadyUsage:
    """An instance that runs around the clock after right-sizing and schedules."""

    resource_id: str
    region: str
    instance_type: str
    ondemand_usd_per_hour: float


@dataclass(frozen=True)
class CommitmentRecommendation:
    """Buy ``quantity`` of a commitment for one (region, family)."""

    region: str
    family: str
    normalized_units: float
    quantity: int  # of ``size_unit_type``
    size_unit_type: str
    instances: tuple[str, ...]
    best: CommitmentQuote
    alternatives: tuple[CommitmentQuote, ...]
    rationale: str


def recommend_commitments(
    usage: Sequence[SteadyUsage],
    rates: ReservedRates,
    *,
    terms: Sequence[int] = TERMS,
    max_break_even_months: float = 12.0,
) -> list[CommitmentRecommendation]:
    """One recommendation per (region, family) of steady usage, the best quote first.

    "Best" is the highest monthly saving whose break-even is within ``max_break_even_months``
    (no-upfront breaks even at once). Quantity is in units of the family's ``large`` size
    (4 normalised units), rounded down: commit to the floor of the steady usage, never above it.
    """
    groups: dict[tuple[str, str], list[SteadyUsage]] = {}
    for u in usage:
        groups.setdefault((u.region, u.instance_type.split(".")[0]), []).append(u)
    out = []
    for (region, family), items in sorted(groups.items()):
        units = sum(normalization_factor(u.instance_type) for u in items)
        hourly = sum(u.ondemand_usd_per_hour for u in items)
        sample = max(items, key=lambda u: normalization_factor(u.instance_type))
        rate_list = rates.rates(region, sample.instance_type, terms)
        if not rate_list or units <= 0:
            continue
        quotes = sorted(
            (quote(r, hourly) for r in rate_list), key=lambda q: (-q.monthly_savings_usd, q.break_even_months)
        )
        eligible = [q for q in quotes if q.break_even_months <= max_break_even_months] or quotes
        best = eligible[0]
        unit_size = 4.0
        quantity = int(units // unit_size) if units >= unit_size else 1
        unit_type = f"{family}.large" if units >= unit_size else sample.instance_type
        rationale = (
            f"{len(items)} always-on instance(s) of {family} in {region} after right-sizing and schedules "
            f"({units:g} normalised units = {quantity} x {unit_type}). Best: {best.rate.kind.replace('_', ' ')} "
            f"{best.rate.term_years} yr {best.rate.payment_option.replace('_', ' ')} at {best.rate.discount_pct:.1f} % "
            f"off saves ${best.monthly_savings_usd:.2f}/month, upfront ${best.upfront_usd:.2f}, break-even "
            f"{best.break_even_months:g} month(s). {best.rate.basis}."
        )
        out.append(
            CommitmentRecommendation(
                region=region,
                family=family,
                normalized_units=units,
                quantity=quantity,
                size_unit_type=unit_type,
                instances=tuple(u.resource_id for u in items),
                best=best,
                alternatives=tuple(q for q in quotes if q is not best),
                rationale=rationale,
            )
        )
    return out
