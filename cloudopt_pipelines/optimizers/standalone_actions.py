"""Spot, idle instances and orphaned resources: pure logic, no Dagster.

- **Spot** only where the tags say the workload can be interrupted (tag ``workload`` in
  ``SPOT_WORKLOAD_VALUES``) and it is not production-critical (tag ``criticality``). The price is the
  catalogue's estimate (on-demand x (1 - Spot Advisor savings %)) with the Advisor's interruption band.
- **Idle instances** (max CPU <= 1 % over the window and low network where known): stop, or terminate
  after a snapshot. A stopped instance still pays for its EBS volumes.
- **Unattached EBS volumes** (``attributes.attached_to`` null and ``attached_instances`` empty) and
  **unassociated Elastic IPs** (``associated_with`` null). Prices are the us-east-1 list prices below,
  flagged as estimates in every other region and always as estimates in the table (``is_estimate``),
  since they are not read from a price file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cloudopt_pipelines.storage.schemas import validate_attributes
from cloudopt_pipelines.vocabulary import EBS_VOLUME, ELASTIC_IP

HOURS_PER_MONTH = 730.0
SPOT_WORKLOAD_TAG = "workload"
SPOT_WORKLOAD_VALUES = ("stateless", "fault-tolerant")
CRITICALITY_TAG = "criticality"
PRODUCTION_CRITICAL_VALUES = ("production-critical", "critical", "mission-critical")

# us-east-1 EBS list prices, USD per GB-month (aws.amazon.com/ebs/pricing, storage only; gp3's free
# baseline of 3,000 IOPS / 125 MB/s included, provisioned IOPS above it not counted).
EBS_USD_PER_GB_MONTH = {
    "gp3": 0.08,
    "gp2": 0.10,
    "io1": 0.125,
    "io2": 0.125,
    "st1": 0.045,
    "sc1": 0.015,
    "standard": 0.05,
}
# An idle public IPv4 address (Elastic IP not associated): USD 0.005 an hour since 2024-02-01.
EIP_USD_PER_HOUR = 0.005


def spot_eligible(
    tags: Mapping[str, str],
    workload_tag: str = SPOT_WORKLOAD_TAG,
    workload_values: Sequence[str] = SPOT_WORKLOAD_VALUES,
    criticality_tag: str = CRITICALITY_TAG,
    critical_values: Sequence[str] = PRODUCTION_CRITICAL_VALUES,
) -> tuple[bool, str]:
    """(eligible, why) from the tags alone."""
    workload = (tags.get(workload_tag) or "").strip().lower()
    if workload not in workload_values:
        return False, f"tag {workload_tag}={workload or '(missing)'} does not say stateless or fault-tolerant"
    criticality = (tags.get(criticality_tag) or "").strip().lower()
    if criticality in critical_values:
        return False, f"tag {criticality_tag}={criticality} marks it production-critical"
    return True, f"tag {workload_tag}={workload} and not production-critical"


# Performance risk (0-4, Compute Optimizer's scale) of running on Spot, by the Spot Advisor's monthly
# interruption band: the more often it is interrupted, the higher. An unknown band counts as 3.
INTERRUPTION_RISK = {"<5%": 1.0, "5-10%": 2.0, "10-15%": 3.0, "15-20%": 4.0, ">20%": 4.0}
UNKNOWN_INTERRUPTION_RISK = 3.0


def interruption_risk(band: str | None) -> float:
    """The risk of a Spot option from its Spot Advisor interruption band (``INTERRUPTION_RISK``)."""
    return INTERRUPTION_RISK.get((band or "").strip(), UNKNOWN_INTERRUPTION_RISK)


def is_production_critical(
    tags: Mapping[str, str],
    criticality_tag: str = CRITICALITY_TAG,
    critical_values: Sequence[str] = PRODUCTION_CRITICAL_VALUES,
) -> bool:
    """Tag ``criticality`` says production-critical (or critical, mission-critical)."""
    return (tags.get(criticality_tag) or "").strip().lower() in critical_values


@dataclass(frozen=True)
class SpotOption:
    instance_type: str
    spot_usd_per_hour: float
    ondemand_usd_per_hour: float
    interruption_band: str
    monthly_cost_usd: float
    rationale: str


def recommend_spot(
    tags: Mapping[str, str],
    instance_type: str,
    ondemand_usd_per_hour: float,
    spot_usd_per_hour: float | None,
    interruption_band: str | None,
    **eligibility: str | Sequence[str],
) -> SpotOption | None:
    """A Spot option for ``instance_type`` (usually the right-sized type), or None."""
    ok, why = spot_eligible(tags, **eligibility)  # type: ignore[arg-type]
    if not ok or spot_usd_per_hour is None:
        return None
    band = interruption_band or "unknown"
    monthly = spot_usd_per_hour * HOURS_PER_MONTH
    return SpotOption(
        instance_type=instance_type,
        spot_usd_per_hour=spot_usd_per_hour,
        ondemand_usd_per_hour=ondemand_usd_per_hour,
        interruption_band=band,
        monthly_cost_usd=round(monthly, 4),
        rationale=(
            f"Spot: {why}. {instance_type} at an estimated ${spot_usd_per_hour:.4f}/h "
            f"({100 * (1 - spot_usd_per_hour / ondemand_usd_per_hour):.0f} % below on-demand; Spot Advisor, Feb 2024), "
            f"interruption frequency {band} a month: use a Spot-aware launch (capacity-optimized, several types)."
        ),
    )


@dataclass(frozen=True)
class OrphanFinding:
    resource_id: str
    resource_kind: str
    action: str
    monthly_cost_usd: float
    current_config: str
    rationale: str
    is_estimate: bool = True


def ebs_monthly_usd(size_gib: float, volume_type: str) -> float:
    """List storage price of a volume (us-east-1, estimate)."""
    return float(size_gib) * EBS_USD_PER_GB_MONTH.get(volume_type, EBS_USD_PER_GB_MONTH["gp2"])


def find_orphans(
    resource_id: str, resource_kind: str, attributes: str | Mapping[str, object] | None
) -> OrphanFinding | None:
    """An unattached EBS volume or an unassociated Elastic IP, priced; None for anything else.

    ``attributes`` must follow the kind's schema (``storage/schemas.py`` ``RESOURCE_ATTRIBUTES``): a
    volume without ``attached_to`` (a partition written before the schema, or by a collector that does
    not follow it) raises :class:`~cloudopt_pipelines.storage.schemas.AttributesError` instead of
    passing for unattached.
    """
    if resource_kind not in (EBS_VOLUME, ELASTIC_IP):
        return None
    attributes = validate_attributes(resource_kind, resource_id, attributes)
    attached = attributes.get("attached_to") is not None or bool(attributes.get("attached_instances"))
    if resource_kind == EBS_VOLUME and not attached:
        size = float(attributes.get("size_gib") or 0)
        vtype = str(attributes.get("volume_type") or "gp2")
        cost = ebs_monthly_usd(size, vtype)
        return OrphanFinding(
            resource_id=resource_id,
            resource_kind=resource_kind,
            action="delete_volume",
            monthly_cost_usd=round(cost, 4),
            current_config=f"{vtype} {size:g} GiB, unattached",
            rationale=(
                f"Unattached {vtype} volume of {size:g} GiB costs about ${cost:.2f}/month "
                f"(us-east-1 list price ${EBS_USD_PER_GB_MONTH.get(vtype, 0.10)}/GB-month, estimate). "
                "Snapshot it if the data may be needed, then delete it."
            ),
        )
    if resource_kind == ELASTIC_IP and attributes.get("associated_with") is None:
        cost = EIP_USD_PER_HOUR * HOURS_PER_MONTH
        return OrphanFinding(
            resource_id=resource_id,
            resource_kind=resource_kind,
            action="release_address",
            monthly_cost_usd=round(cost, 4),
            current_config=f"Elastic IP {attributes.get('public_ip', '')}, not associated".strip(),
            rationale=(
                f"Elastic IP not associated with any instance or interface: ${EIP_USD_PER_HOUR}/hour "
                f"(${cost:.2f}/month, public IPv4 price since Feb 2024). Release it unless a DNS record or allow-list "
                "depends on it."
            ),
        )
    return None
