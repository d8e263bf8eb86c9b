"""Fargate prices and sizes and the EMR surcharge of the price catalogue (catalog/clusters.py)."""

from __future__ import annotations

import pytest

from cloudopt_pipelines.catalog.clusters import (
    EMR_SURCHARGE_CAP_USD_PER_HOUR,
    FARGATE_SIZES,
    emr_surcharge_usd_per_hour,
    fargate_rates,
    is_valid_fargate_size,
    smallest_fargate_size,
)
from cloudopt_pipelines.catalog.prices import build_price_catalog
from cloudopt_pipelines.optimizers.sizing import Catalog, SizingError


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog(build_price_catalog())


@pytest.mark.parametrize(
    ("cpu", "memory", "valid"),
    [
        (256, 512, True),
        (256, 4096, False),  # a quarter vCPU takes 2 GiB at most
        (512, 3072, True),
        (1024, 1024, False),
        (4096, 30720, True),
        (8192, 20480, True),
        (8192, 18432, False),  # 8 vCPU memory moves in 4 GiB steps
        (16384, 122880, True),
        (16384, 40960, True),
        (16384, 36864, False),
    ],
)
def test_valid_fargate_pairs_follow_the_ecs_table(cpu: int, memory: int, valid: bool) -> None:
    assert is_valid_fargate_size(cpu, memory) is valid


def test_smallest_fargate_size_fits_and_is_valid() -> None:
    assert smallest_fargate_size(200, 600) == (256, 1024)
    assert smallest_fargate_size(300, 600) == (512, 1024)
    assert smallest_fargate_size(1024, 9000) == (2048, 9216)
    assert smallest_fargate_size(20000, 1024) is None
    assert all(is_valid_fargate_size(c, m) for c, m in FARGATE_SIZES)


def test_fargate_price_us_east_1_as_published_and_spot_cheaper(catalog: Catalog) -> None:
    rates = fargate_rates(catalog, "us-east-1")
    assert not rates.is_estimate
    assert rates.task_hour(1024, 2048) == pytest.approx(0.04048 + 2 * 0.004445)
    assert rates.task_hour(1024, 2048, spot=True) == pytest.approx(0.3 * (0.04048 + 2 * 0.004445))
    assert fargate_rates(catalog, "us-east-1", "arm64").task_hour(1024, 1024) < rates.task_hour(1024, 1024)


def test_fargate_price_elsewhere_is_an_estimate_scaled_like_ec2(catalog: Catalog) -> None:
    rates = fargate_rates(catalog, "sa-east-1")
    assert rates.is_estimate and "derived" in rates.source
    # Sao Paulo EC2 costs more than Virginia; its Fargate estimate follows.
    assert rates.vcpu_hour > fargate_rates(catalog, "us-east-1").vcpu_hour


def test_emr_surcharge_a_quarter_of_on_demand_capped(catalog: Catalog) -> None:
    assert emr_surcharge_usd_per_hour(catalog, "us-east-1", "m5.xlarge") == pytest.approx(0.048)
    assert emr_surcharge_usd_per_hour(catalog, "us-east-1", "r5.xlarge") == pytest.approx(0.063)
    assert emr_surcharge_usd_per_hour(catalog, "us-east-1", "m5.24xlarge") == EMR_SURCHARGE_CAP_USD_PER_HOUR
    with pytest.raises(SizingError, match=r"m9\.huge"):
        emr_surcharge_usd_per_hour(catalog, "us-east-1", "m9.huge")
