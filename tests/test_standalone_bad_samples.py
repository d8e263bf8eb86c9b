"""The recommender on broken samples: infinite values (defect 12) and CPU above 100 % (defect 13)."""

from __future__ import annotations

import math
import re
from datetime import date

import numpy as np
import pytest

from cloudopt_pipelines.catalog.prices import build_price_catalog
from cloudopt_pipelines.optimizers.sizing import (
    RISK_SETTINGS,
    Catalog,
    NonFiniteStatistic,
    UtilizationProfile,
    required_capacity,
)
from cloudopt_pipelines.optimizers.standalone import Instance, Samples, optimize_standalone_instance

DAY = date(2026, 11, 16)
N = 14 * 288


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog(build_price_catalog())


def samples(cpu: np.ndarray, peak: np.ndarray) -> Samples:
    ts = np.datetime64("2026-11-02T00:00:00") + np.arange(cpu.size) * np.timedelta64(300, "s")
    return Samples(ts=ts, cpu_pct=cpu, cpu_peak_pct=peak, mem_pct=None, net_bytes=None)


def busy() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    cpu = rng.uniform(55, 70, N)
    return cpu, cpu + rng.uniform(0, 10, N)


def test_infinite_samples_are_excluded_and_never_drive_a_resize(catalog) -> None:
    cpu, peak = busy()
    broken = peak.copy()
    broken[np.arange(0, N, 130)] = math.inf  # 32 of 4032: the top of the distribution is infinite
    inst = Instance("i-1", "m5.xlarge", "us-east-1", tags={"env": "prod"})
    clean = optimize_standalone_instance("i-1", inst, samples(cpu, peak), catalog)
    rec = optimize_standalone_instance("i-1", inst, samples(cpu, broken), catalog)
    assert rec.profile.nonfinite_samples == 32 and rec.profile.samples == N  # the averages stand in
    assert all(math.isfinite(x) for x in rec.profile.cpu_peak_vcpu)
    assert rec.finding == clean.finding
    assert rec.best.option_name == clean.best.option_name
    assert rec.best.vcpu >= 4  # the busy instance is never cut to a small type
    text = " ".join(o.rationale for o in rec.options)
    assert not re.search(r"\b(nan|inf)\s*(%|vcpu|gib)", text, re.IGNORECASE)  # "P99.5 ... is nan %"
    assert "32 sample(s) with a NaN or infinite value were excluded" in text


def test_a_statistic_that_is_not_finite_is_refused_by_name() -> None:
    profile = UtilizationProfile(
        vcpu=4, memory_gib=16, cpu_peak_vcpu=np.array([1.0, math.nan]), cpu_mean_vcpu=np.array([1.0, 1.0]),
        mem_gib=None, net_peak_bps=None, net_bytes_per_day=None, samples=2, expected_samples=288,
        days_with_data=1, capacity_vcpu=4,
    )  # fmt: skip
    with pytest.raises(NonFiniteStatistic, match=r"CPU P99\.5 of the 5-minute maxima is nan .*no recommendation"):
        required_capacity(profile, RISK_SETTINGS["balanced"])


def test_cpu_above_100_percent_lowers_confidence_and_the_upsize_says_why(catalog) -> None:
    rng = np.random.default_rng(5)
    cpu = rng.uniform(150, 300, N)  # a percentage metric cannot be here
    inst = Instance("i-2", "m5.large", "us-east-1", tags={"env": "prod"})
    rec = optimize_standalone_instance("i-2", inst, samples(cpu, cpu), catalog)
    assert rec.profile.out_of_range_samples == N
    assert rec.finding == "under-provisioned" and rec.resize.confidence <= 0.5
    upsizes = [o for o in rec.options if o.action == "resize"]
    assert upsizes and all(o.vcpu >= 4 for o in upsizes)
    for o in upsizes:
        assert f"{N} of {N} samples are outside 0-100 % (CPU up to 300 %)" in o.rationale
        assert "check the metric source before acting on it" in o.rationale


def test_a_few_out_of_range_samples_cap_confidence_and_are_named(catalog) -> None:
    cpu, peak = busy()
    peak[:3] = [150.0, 220.0, 180.0]
    inst = Instance("i-3", "m5.xlarge", "us-east-1", tags={"env": "prod"})
    rec = optimize_standalone_instance("i-3", inst, samples(cpu, peak), catalog)
    assert rec.profile.out_of_range_samples == 3 and rec.resize.confidence == 0.5
    assert "3 of 4032 samples are outside 0-100 % (CPU up to 220 %)" in rec.resize.rationale
