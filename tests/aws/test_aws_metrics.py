"""CloudWatch metrics read back by the AWS collector equal the real traces seeded into moto."""

from __future__ import annotations

import math

import pandas as pd
from conftest import (
    BULK_INSTANCES,
    DAYS,
    FIRST_DAY,
    MANAGEMENT_ACCOUNT,
    AwsWorld,
    load_azure,
    load_gcd,
    step_time,
)

from cloudopt_pipelines.sources.aws import CLUSTER_METRICS_5M, MAX_QUERIES_PER_CALL
from cloudopt_pipelines.sources.base import Collected
from cloudopt_pipelines.storage.schemas import UTILIZATION_5M


def frame(collected: Collected) -> pd.DataFrame:
    return collected.table.to_pandas()


def test_cpu_equals_the_azure_trace(metrics_day1: Collected, world: AwsWorld) -> None:
    assert metrics_day1.table.schema == UTILIZATION_5M
    got = frame(metrics_day1)
    azure = load_azure()
    for iid, vm in world.cpu_trace_of.items():
        trace = azure[(azure.vm_id == vm) & (azure.step_5min < 288)]
        rows = got[got.resource_id == iid].sort_values("ts")
        assert len(rows) == len(trace) == 288
        assert list(rows.ts) == [step_time(s) for s in trace.step_5min]
        assert list(rows.cpu_pct) == list(trace.avg_cpu_pct)
        assert list(rows.cpu_max_pct) == list(trace.max_cpu_pct)
    assert set(got.source) == {"aws"} and set(got.account_id) == {MANAGEMENT_ACCOUNT}
    assert set(got.date) == {FIRST_DAY}


def test_memory_equals_the_agent_series_and_is_null_without_it(metrics_day1: Collected, world: AwsWorld) -> None:
    got = frame(metrics_day1)
    gcd = load_gcd()
    for iid, vm in world.mem_trace_of.items():
        rows = got[got.resource_id == iid].sort_values("ts")
        assert list(rows.mem_pct) == list(gcd[gcd.vm_id == vm].mem_util_pct)
    without_agent = got[~got.resource_id.isin(world.mem_trace_of)]
    assert len(without_agent) > 0
    assert without_agent.mem_pct.isna().all()
    assert metrics_day1.metadata["instances_with_memory"] == 3


def test_out_of_range_values_stay_visible(metrics_day1: Collected) -> None:
    got = frame(metrics_day1)
    # One GCD VM uses more than 100 % of its memory in 105 samples, as in the source trace.
    assert (got.mem_pct > 100).sum() == 105
    assert metrics_day1.metadata["out_of_range_points"] == 105


def test_absent_series_are_null_never_zero(metrics_day1: Collected) -> None:
    got = frame(metrics_day1)
    # No network series were seeded: null everywhere, and no row exists without any data point.
    assert got.net_in_bytes.isna().all() and got.net_out_bytes.isna().all()
    assert not got[["cpu_pct", "cpu_max_pct", "mem_pct"]].isna().all(axis=1).any()
    assert metrics_day1.metadata["series_without_data"] > 0
    assert metrics_day1.metadata["missing_points"] == 0


def test_a_day_without_the_agent_has_null_memory(collector, world: AwsWorld) -> None:
    later = collector.collect_metrics(MANAGEMENT_ACCOUNT, DAYS[2])
    got = frame(later)
    azure = load_azure()
    for iid, vm in world.cpu_trace_of.items():
        trace = azure[(azure.vm_id == vm) & (azure.step_5min >= 576) & (azure.step_5min < 864)]
        rows = got[got.resource_id == iid].sort_values("ts")
        assert list(rows.cpu_pct) == list(trace.avg_cpu_pct)
    assert got.mem_pct.isna().all()
    assert set(got.date) == {DAYS[2]}


def test_get_metric_data_calls_are_the_minimum(metrics_day1: Collected, make_collector, world: AwsWorld) -> None:
    meta = metrics_day1.metadata
    assert meta["get_metric_data_calls"] == meta["min_get_metric_data_calls"] == 1

    bulk = make_collector(regions=("us-west-2",)).collect_metrics(MANAGEMENT_ACCOUNT, FIRST_DAY)
    meta = bulk.metadata
    assert meta["metric_series"] == 4 * BULK_INSTANCES  # CPU average and maximum, network in and out
    assert meta["metric_series"] > MAX_QUERIES_PER_CALL
    assert meta["min_get_metric_data_calls"] == math.ceil(meta["metric_series"] / MAX_QUERIES_PER_CALL) == 2
    assert meta["get_metric_data_calls"] == meta["api_calls"]["cloudwatch:GetMetricData"] == 2
    got = frame(bulk)
    assert set(got.resource_id) == set(world.bulk_with_data)
    assert len(got) == 12 * len(world.bulk_with_data)


def test_cluster_metrics(collector, world: AwsWorld) -> None:
    collected = collector.collect_cluster_metrics(MANAGEMENT_ACCOUNT, FIRST_DAY)
    assert collected.table.schema == CLUSTER_METRICS_5M
    got = frame(collected)
    gcd = load_gcd()
    trace = gcd[gcd.vm_id == world.ecs_trace_vm]
    cluster = got[got.resource_id.str.endswith(":cluster/apps")]
    for metric, column in (("CPUUtilization", "cpu_util_pct"), ("MemoryUtilization", "mem_util_pct")):
        rows = cluster[cluster.metric == metric].sort_values("ts")
        assert list(rows.value) == list(trace[column])
        assert set(rows.namespace) == {"AWS/ECS"} and set(rows.stat) == {"Average"}
    meta = collected.metadata
    # 4 cluster series + 2 service series for ECS, 6 series for the EMR cluster: one call.
    assert meta["metric_series"] == 4 + 2 + 6
    assert meta["get_metric_data_calls"] == meta["min_get_metric_data_calls"] == 1
    assert (meta["ecs_clusters"], meta["ecs_services"], meta["emr_clusters"]) == (1, 1, 1)
