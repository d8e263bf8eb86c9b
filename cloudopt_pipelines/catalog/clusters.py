"""Prices and sizes of what clusters add to EC2: Fargate (on-demand and Spot), the valid Fargate task sizes,
and the Amazon EMR per-instance surcharge. Pure, no I/O; sources in ``catalog/data/README.md``.

- Fargate on-demand, us-east-1: the AWS Fargate pricing page (Linux/x86 and Linux/ARM, per vCPU-hour
  and per GB-hour), read as published. Other regions: the us-east-1 price times the region's median
  EC2 on-demand ratio to us-east-1 in the price catalogue, flagged as an estimate.
- Fargate Spot: the pricing page's "up to 70 % off" applied to on-demand; always an estimate (the
  Spot price moves with capacity).
- Valid task sizes: the ECS developer guide's table of CPU units and memory (MiB) a Fargate task may have.
- EMR surcharge: the EMR pricing page lists a price per instance type on top of EC2; across the types it
  lists it is 25 % of the type's on-demand price, never more than 0.27 USD an hour. That rule, applied
  to the catalogue's on-demand price of the type in the region, is what is used: flagged as an estimate.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from cloudopt_pipelines.optimizers.sizing import Catalog, SizingError

FARGATE_PRICING_URL = "https://aws.amazon.com/fargate/pricing/"
FARGATE_SIZES_URL = "https://docs.aws.amazon.com/AmazonECS/latest/developerguide/fargate-tasks-services.html"
EMR_PRICING_URL = "https://aws.amazon.com/emr/pricing/"

#: us-east-1 Fargate on-demand, USD per vCPU-hour and per GB-hour, by architecture.
FARGATE_ON_DEMAND_US_EAST_1: dict[str, tuple[float, float]] = {
    "x86_64": (0.04048, 0.004445),
    "arm64": (0.03238, 0.00356),
}
#: Fargate Spot is "up to 70 %" below on-demand (pricing page); used as the estimate.
FARGATE_SPOT_DISCOUNT = 0.70
EMR_SURCHARGE_SHARE = 0.25
EMR_SURCHARGE_CAP_USD_PER_HOUR = 0.27
PRICE_REFERENCE_REGION = "us-east-1"


def _fargate_sizes() -> tuple[tuple[int, int], ...]:
    sizes: list[tuple[int, int]] = [(256, 512), (256, 1024), (256, 2048)]
    sizes += [(512, m) for m in range(1024, 4096 + 1, 1024)]
    sizes += [(1024, m) for m in range(2048, 8192 + 1, 1024)]
    sizes += [(2048, m) for m in range(4096, 16384 + 1, 1024)]
    sizes += [(4096, m) for m in range(8192, 30720 + 1, 1024)]
    sizes += [(8192, m) for m in range(16384, 61440 + 1, 4096)]
    sizes += [(16384, m) for m in range(32768, 122880 + 1, 8192)]
    return tuple(sizes)


#: Every valid Fargate (CPU units, memory MiB) pair, smallest first.
FARGATE_SIZES: tuple[tuple[int, int], ...] = _fargate_sizes()


def is_valid_fargate_size(cpu: int, memory: int) -> bool:
    return (int(cpu), int(memory)) in _FARGATE_SIZE_SET


_FARGATE_SIZE_SET = frozenset(FARGATE_SIZES)


def smallest_fargate_size(cpu_needed: float, memory_needed: float) -> tuple[int, int] | None:
    """The cheapest valid Fargate size holding ``cpu_needed`` units and ``memory_needed`` MiB (None: none does)."""
    fitting = [(c, m) for c, m in FARGATE_SIZES if c >= cpu_needed and m >= memory_needed]
    if not fitting:
        return None
    rates = FARGATE_ON_DEMAND_US_EAST_1["x86_64"]
    return min(fitting, key=lambda s: (s[0] / 1024 * rates[0] + s[1] / 1024 * rates[1], s))


@dataclass(frozen=True)
class FargateRates:
    """Fargate prices of one region and architecture, USD an hour."""

    region: str
    architecture: str
    vcpu_hour: float
    gb_hour: float
    spot_discount: float
    is_estimate: bool
    source: str

    def task_hour(self, cpu_units: int, memory_mib: int, spot: bool = False) -> float:
        """The price of one task of that size for an hour, on Fargate or Fargate Spot."""
        price = cpu_units / 1024 * self.vcpu_hour + memory_mib / 1024 * self.gb_hour
        return price * (1 - self.spot_discount) if spot else price


def region_ratio(catalog: Catalog, region: str) -> float:
    """The median, over instance types priced in both, of the region's on-demand price over us-east-1's."""
    if region == PRICE_REFERENCE_REGION:
        return 1.0
    ratios = [
        t.ondemand_usd_per_hour / catalog.get(PRICE_REFERENCE_REGION, t.instance_type).ondemand_usd_per_hour
        for t in catalog.region(region)
        if (PRICE_REFERENCE_REGION, t.instance_type) in catalog
        and catalog.get(PRICE_REFERENCE_REGION, t.instance_type).ondemand_usd_per_hour > 0
    ]
    if not ratios:
        raise SizingError(
            f"region '{region}' shares no instance type with {PRICE_REFERENCE_REGION} in the price catalogue, so "
            "its Fargate price cannot be estimated; refresh the catalogue by materialising the price_catalog asset"
        )
    return statistics.median(ratios)


def fargate_rates(catalog: Catalog, region: str, architecture: str = "x86_64") -> FargateRates:
    """Fargate rates of ``region``: published for us-east-1, scaled by the region's EC2 ratio elsewhere."""
    if architecture not in FARGATE_ON_DEMAND_US_EAST_1:
        raise SizingError(
            f"no Fargate price for architecture '{architecture}' (known: {', '.join(FARGATE_ON_DEMAND_US_EAST_1)})"
        )
    vcpu, gb = FARGATE_ON_DEMAND_US_EAST_1[architecture]
    ratio = region_ratio(catalog, region)
    return FargateRates(
        region=region,
        architecture=architecture,
        vcpu_hour=vcpu * ratio,
        gb_hour=gb * ratio,
        spot_discount=FARGATE_SPOT_DISCOUNT,
        is_estimate=region != PRICE_REFERENCE_REGION,
        source=FARGATE_PRICING_URL
        if region == PRICE_REFERENCE_REGION
        else f"derived: {PRICE_REFERENCE_REGION} x median EC2 ratio {ratio:.3f}",
    )


def emr_surcharge_usd_per_hour(catalog: Catalog, region: str, instance_type: str) -> float:
    """The EMR price of one instance of ``instance_type`` for an hour, on top of EC2 (an estimate; see above).

    Raises :class:`SizingError` naming the type when the catalogue does not price it."""
    ondemand = catalog.get(region, instance_type).ondemand_usd_per_hour
    return round(min(EMR_SURCHARGE_SHARE * ondemand, EMR_SURCHARGE_CAP_USD_PER_HOUR), 6)
