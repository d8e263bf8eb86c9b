"""A month of daily recommendations on real Azure V1 VMs (tests/data/standalone): how often the best
option changes from one day to the next, with and without the hysteresis."""

import itertools
from datetime import date
from pathlib import Path

import numpy as np
import pytest

from cloudopt_pipelines.backtest.traces import read_trace
from cloudopt_pipelines.catalog.prices import build_price_catalog
from cloudopt_pipelines.optimizers.sizing import SAMPLES_PER_DAY, Catalog
from cloudopt_pipelines.optimizers.standalone import (
    Instance,
    Samples,
    StandaloneConfig,
    best_option_name,
    optimize_standalone_instance,
)

DATA = Path(__file__).parent / "data" / "standalone" / "azure_v1_4vms_28days_cpu_5min.csv.gz"
WINDOW_DAYS = 14
TYPES = {
    "azure-1471895": "m5.2xlarge",
    "azure-955492": "c5.xlarge",
    "azure-611375": "m5.xlarge",
    "azure-809906": "r5.large",
}


@pytest.fixture(scope="module")
def daily_answers():
    """Per VM, per day from day 14 to day 27 of the trace: that day's recommendation over the trailing 14 days."""
    catalog = Catalog(build_price_catalog())
    start = date(2026, 1, 5)
    out = {}
    for vm in read_trace(DATA):
        inst = Instance(vm.resource_id, TYPES[vm.resource_id], "us-east-1", tags={"env": "prod"})
        days = vm.samples // SAMPLES_PER_DAY
        recs = []
        for d in range(WINDOW_DAYS, days + 1):
            lo, hi = (d - WINDOW_DAYS) * SAMPLES_PER_DAY, d * SAMPLES_PER_DAY
            ts = np.datetime64(start, "us") + np.arange(lo, hi) * np.timedelta64(5, "m")
            samples = Samples(ts, vm.cpu_avg_pct[lo:hi], vm.cpu_pct[lo:hi], None, None)
            config = StandaloneConfig(window_days=WINDOW_DAYS)
            recs.append(optimize_standalone_instance(vm.resource_id, inst, samples, catalog, None, config))
        out[vm.resource_id] = recs
    return out


def flips(recs, config):
    previous, names = None, []
    for rec in recs:
        name, _ = best_option_name(rec, config, previous)
        names.append(name)
        previous = name
    return sum(a != b for a, b in itertools.pairwise(names)), names


def test_the_hysteresis_removes_flips_and_every_flip_left_is_over_a_margin(daily_answers):
    config = StandaloneConfig(window_days=WINDOW_DAYS)
    free = StandaloneConfig(window_days=WINDOW_DAYS, hysteresis_savings_pct=0.0, hysteresis_risk=0.0)
    total_with = total_without = 0
    for recs in daily_answers.values():
        assert len(recs) >= 14  # two weeks of daily answers, each over its own trailing 14 days
        with_h, names = flips(recs, config)
        without, _ = flips(recs, free)
        assert with_h <= without
        total_with += with_h
        total_without += without
        for yesterday, today, rec in zip(names, names[1:], recs[1:], strict=False):
            if yesterday == today:
                continue
            by_name = {o.option_name: o for o in rec.options}
            if yesterday not in by_name:
                continue  # yesterday's option no longer fits (or no longer exists): it must change
            prev, new = by_name[yesterday], by_name[today]
            moved = abs(prev.monthly_cost_usd - new.monthly_cost_usd) / rec.current_monthly_usd * 100
            risk = abs(prev.performance_risk - new.performance_risk)
            allowed = prev.performance_risk <= config.max_best_risk
            assert moved > config.hysteresis_savings_pct or risk >= config.hysteresis_risk or not allowed
    assert total_without > 0, "the month should show day-to-day changes without the hysteresis"
    # At most one change in five days on average (docs/standalone.md, "Stable answers").
    transitions = sum(len(r) - 1 for r in daily_answers.values())
    assert total_with <= transitions / 5


def test_yesterdays_option_within_the_margin_stays_best(daily_answers):
    config = StandaloneConfig(window_days=WINDOW_DAYS)
    held = 0
    for recs in daily_answers.values():
        for rec in recs:
            today, _ = best_option_name(rec, config)
            new = next(o for o in rec.options if o.option_name == today)
            for o in rec.options:
                if o.option_name == today or o.market != "on_demand" or o.performance_risk > config.max_best_risk:
                    continue
                if o.proposed_config.get("cross_architecture"):
                    assert best_option_name(rec, config, o.option_name)[0] == today  # never kept across
                    continue
                close = abs(o.monthly_cost_usd - new.monthly_cost_usd) / rec.current_monthly_usd * 100
                name, why = best_option_name(rec, config, o.option_name)
                if close <= config.hysteresis_savings_pct and o.performance_risk == new.performance_risk:
                    assert name == o.option_name and "Kept yesterday's best option" in why
                    held += 1
                else:
                    assert name == today
    assert held > 0
