"""Off-hours schedules: hour-of-week profile, eligibility by tags, Custodian and Instance Scheduler output."""

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from cloudopt_pipelines.backtest.traces import read_trace
from cloudopt_pipelines.optimizers.schedules import (
    ScheduleError,
    hour_of_week_profile,
    is_production,
    recommend_schedule,
    stopped_mask,
    timezone_of,
)

DATA = Path(__file__).parent / "data" / "standalone"
MONDAY = np.datetime64("2026-11-16T00:00:00")  # a Monday, 00:00 UTC


@pytest.fixture(scope="module")
def quiet_vm():
    """Azure V1 VM 810877, 14 real days: 5-minute averages at 2-4 % except a few busy hours."""
    vm = next(v for v in read_trace(DATA / "azure_v1_4vms_14days_cpu_5min.csv.gz") if v.resource_id == "azure-810877")
    ts = MONDAY + np.arange(vm.samples) * np.timedelta64(300, "s")
    return ts, vm


def test_hour_of_week_has_168_buckets_starting_monday_in_the_instance_time_zone(quiet_vm):
    ts, vm = quiet_vm
    profile, counts = hour_of_week_profile(ts, vm.cpu_avg_pct)
    assert profile.shape == (168,) and counts.sum() == vm.samples and (counts == 24).all()
    # Friday 10:00 UTC (bucket 4*24+10 = 106)... the VM's busiest weekend hour is Saturday 10:00 UTC.
    assert np.argmax(profile[120:144]) == 10
    shifted, _ = hour_of_week_profile(ts, vm.cpu_avg_pct, tz="America/New_York")
    assert np.argmax(shifted[120:144]) == 5  # 10:00 UTC is 05:00 in New York in November


def test_non_production_instance_gets_custodian_and_instance_scheduler_schedules(quiet_vm):
    ts, vm = quiet_vm
    rec = recommend_schedule(ts, vm.cpu_avg_pct, {"env": "dev"}, monthly_instance_cost_usd=140.16)
    assert rec is not None
    assert rec.custodian_tag.startswith("off=(M-U,") and rec.custodian_tag.endswith(";tz=utc")
    period = json.loads(rec.instance_scheduler_period)
    assert (
        period["begintime"] == f"{rec.weekday_on_hour:02d}:00" and period["endtime"] == f"{rec.weekday_off_hour:02d}:00"
    )
    assert period["weekdays"] == "mon-sun" and period["timezone"] == "UTC"
    assert rec.monthly_savings_usd == pytest.approx(140.16 * rec.stopped_hours_per_week / 168, abs=1e-3)
    assert "EBS" in rec.rationale


@pytest.mark.parametrize(
    "tags",
    [
        {"env": "prod"},
        {"Environment": "Production"},
        {},  # no environment tag: treated as production
        {"env": "dev", "aws:autoscaling:groupName": "web"},
        {"env": "dev", "eks:cluster-name": "k"},
    ],
)
def test_production_and_group_members_never_get_a_schedule(quiet_vm, tags):
    ts, vm = quiet_vm
    assert recommend_schedule(ts, vm.cpu_avg_pct, tags, 100.0) is None


def test_environment_tag_keys_are_configurable(quiet_vm):
    ts, vm = quiet_vm
    assert recommend_schedule(ts, vm.cpu_avg_pct, {"stage": "dev"}, 100.0) is None
    assert recommend_schedule(ts, vm.cpu_avg_pct, {"stage": "dev"}, 100.0, environment_tag_keys=("stage",))
    assert is_production({"environment": "prd"})


def test_busy_vm_gets_no_schedule():
    vm = next(v for v in read_trace(DATA / "azure_v1_4vms_14days_cpu_5min.csv.gz") if v.resource_id == "azure-1663289")
    ts = MONDAY + np.arange(vm.samples) * np.timedelta64(300, "s")
    assert recommend_schedule(ts, vm.cpu_pct, {"env": "dev"}, 100.0) is None


def test_too_little_data_gets_no_schedule(quiet_vm):
    ts, vm = quiet_vm
    assert recommend_schedule(ts[: 288 * 3], vm.cpu_avg_pct[: 288 * 3], {"env": "dev"}, 100.0) is None


def test_stopped_hours_follow_custodian_semantics():
    office = [(d, 19, False) for d in range(5)] + [(d, 7, True) for d in range(5)]
    mask = stopped_mask(office)
    assert mask.sum() == 4 * 12 + (24 - 19) + 48 + 7  # 4 week nights, Friday night to Monday 07:00
    assert mask[5 * 24 + 12] and not mask[2 * 24 + 12]  # Saturday noon off, Wednesday noon on
    assert stopped_mask([(5, 0, False), (0, 0, True)]).sum() == 48


def test_timezone_tag_is_read_and_checked():
    assert timezone_of({"tz": "America/New_York"}) == "America/New_York"
    assert timezone_of({"timezone": "Europe/Paris"}) == "Europe/Paris"
    assert timezone_of({}) == "UTC"
    with pytest.raises(ScheduleError, match="tz='Mars/Olympus'"):
        timezone_of({"tz": "Mars/Olympus"})


def test_datetime_inputs_work_like_numpy_ones(quiet_vm):
    ts, vm = quiet_vm
    py = [datetime.fromtimestamp(int(t.astype("datetime64[s]").astype(int)), UTC) for t in ts[:500]]
    a, _ = hour_of_week_profile(py, vm.cpu_avg_pct[:500])
    b, _ = hour_of_week_profile(ts[:500], vm.cpu_avg_pct[:500])
    np.testing.assert_allclose(a, b, equal_nan=True)
