"""GetMetricData at CloudWatch's real limits: at most 500 queries a request and 100,800 datapoints a
response, the rest behind a NextToken. moto enforces neither, so these tests go through
``CloudWatchLimitsProxy`` (cloudopt_pipelines/testing/cloudwatch_limits.py) in front of the moto server."""

from __future__ import annotations

import math
from datetime import timedelta

import boto3
import pytest
from botocore.exceptions import ClientError
from conftest import BULK_INSTANCES, FIRST_DAY, MANAGEMENT_ACCOUNT, AwsWorld, load_azure, put_metric_data, step_time

from cloudopt_pipelines.sources.aws import MAX_DATAPOINTS_PER_CALL, MAX_QUERIES_PER_CALL, plan_get_metric_data
from cloudopt_pipelines.testing.cloudwatch_limits import CloudWatchLimitsProxy

DAY_POINTS = 288
LIMITS_REGION = "ap-northeast-1"  # only this module writes here: one series of a whole real day


@pytest.mark.parametrize("series", [1, 349, 350, 351, 500, 520, 1000, 4 * 2000, 12_345])
def test_plan_meets_the_real_minimum(series):
    per_call, calls = plan_get_metric_data(series, DAY_POINTS)
    minimum = max(math.ceil(series / MAX_QUERIES_PER_CALL), math.ceil(series * DAY_POINTS / MAX_DATAPOINTS_PER_CALL))
    assert calls == minimum == math.ceil(series / per_call)
    assert per_call <= MAX_QUERIES_PER_CALL and per_call * DAY_POINTS <= MAX_DATAPOINTS_PER_CALL


def test_plan_of_short_series_is_held_by_the_query_limit():
    assert plan_get_metric_data(1200, 12) == (500, 3)


@pytest.fixture(scope="module")
def one_day_series(world: AwsWorld) -> dict:
    """One CPU series with the 288 real points of one day (Azure V1) in a region nothing else uses."""
    azure = load_azure()
    vm = azure[azure.vm_id == azure.vm_id.iloc[0]]
    day = vm[vm.step_5min < DAY_POINTS]
    assert len(day) == DAY_POINTS
    cloudwatch = boto3.client("cloudwatch", endpoint_url=world.endpoint, region_name=LIMITS_REGION)
    dims = [{"Name": "InstanceId", "Value": "i-0limits000000001"}]
    put_metric_data(
        cloudwatch,
        "AWS/EC2",
        [
            {"MetricName": "CPUUtilization", "Dimensions": dims, "Timestamp": step_time(r.step_5min),
             "Value": float(r.avg_cpu_pct), "Unit": "Percent"}
            for r in day.itertuples()
        ],
    )  # fmt: skip
    return {"dims": dims, "values": [float(v) for v in day.avg_cpu_pct]}


def _queries(n: int, dims: list[dict]) -> list[dict]:
    stat = {"Metric": {"Namespace": "AWS/EC2", "MetricName": "CPUUtilization", "Dimensions": dims}, "Period": 300}
    return [{"Id": f"q{i}", "MetricStat": {**stat, "Stat": "Average"}, "ReturnData": True} for i in range(n)]


def _call(url: str, queries: list[dict], **extra):
    cloudwatch = boto3.client("cloudwatch", endpoint_url=url, region_name=LIMITS_REGION)
    start = step_time(0)
    return cloudwatch.get_metric_data(
        MetricDataQueries=queries, StartTime=start, EndTime=start + timedelta(days=1), ScanBy="TimestampAscending",
        **extra,
    )  # fmt: skip


def test_the_proxy_cuts_at_100800_points_and_continues_with_the_next_token(world: AwsWorld, one_day_series):
    # 360 queries of the 288-point day: 103,680 points, over the limit by 2,880.
    queries = _queries(360, one_day_series["dims"])
    proxy = CloudWatchLimitsProxy(world.endpoint)
    with proxy.serve() as url:
        first = _call(url, queries)
        served = sum(len(r["Values"]) for r in first["MetricDataResults"])
        assert served == MAX_DATAPOINTS_PER_CALL and "NextToken" in first
        statuses = {r["Id"]: r["StatusCode"] for r in first["MetricDataResults"]}
        assert len(statuses) == 350 and statuses["q349"] == "Complete"
        second = _call(url, queries, NextToken=first["NextToken"])
        assert "NextToken" not in second
        assert sum(len(r["Values"]) for r in second["MetricDataResults"]) == 10 * DAY_POINTS
        assert [r["Values"] for r in second["MetricDataResults"]] == [one_day_series["values"]] * 10
        with pytest.raises(ClientError) as error:  # a token is good once, for the same queries
            _call(url, queries, NextToken=first["NextToken"])
        assert error.value.response["Error"]["Code"] == "InvalidNextToken"
        with pytest.raises(ClientError) as error:
            _call(url, _queries(MAX_QUERIES_PER_CALL + 1, one_day_series["dims"]))
        assert error.value.response["Error"]["Code"] == "ValidationError"
    assert proxy.truncated == 1 and proxy.largest_page == MAX_DATAPOINTS_PER_CALL


def test_a_result_cut_in_the_middle_is_partial_and_the_next_page_has_its_rest(world: AwsWorld, one_day_series):
    proxy = CloudWatchLimitsProxy(world.endpoint, max_datapoints=DAY_POINTS + 100)
    with proxy.serve() as url:
        first = _call(url, _queries(2, one_day_series["dims"]))
        second = _call(url, _queries(2, one_day_series["dims"]), NextToken=first["NextToken"])
    q1_first = next(r for r in first["MetricDataResults"] if r["Id"] == "q1")
    assert q1_first["StatusCode"] == "PartialData" and len(q1_first["Values"]) == 100
    q1_second = second["MetricDataResults"][0]
    assert q1_second["Id"] == "q1" and q1_second["StatusCode"] == "Complete"
    assert q1_first["Values"] + q1_second["Values"] == one_day_series["values"]


def test_the_collector_meets_the_real_minimum_through_the_proxy(make_collector, world: AwsWorld):
    direct = make_collector(regions=("us-west-2",)).collect_metrics(MANAGEMENT_ACCOUNT, FIRST_DAY)
    proxy = CloudWatchLimitsProxy(world.endpoint)
    with proxy.serve() as url:
        limited = make_collector(regions=("us-west-2",), endpoint_url=url).collect_metrics(
            MANAGEMENT_ACCOUNT, FIRST_DAY
        )
    meta = limited.metadata
    series = meta["metric_series"]
    assert series == 4 * BULK_INSTANCES
    # 520 series of a 288-point day: 149,760 points, two calls by either limit; never a page cut.
    assert meta["min_get_metric_data_calls"] == max(
        math.ceil(series / MAX_QUERIES_PER_CALL), math.ceil(series * DAY_POINTS / MAX_DATAPOINTS_PER_CALL)
    )
    assert meta["get_metric_data_calls"] == meta["min_get_metric_data_calls"] == proxy.calls == 2
    assert proxy.truncated == 0 and meta["partial_data_results"] == 0
    assert limited.table.sort_by([("resource_id", "ascending"), ("ts", "ascending")]).equals(
        direct.table.sort_by([("resource_id", "ascending"), ("ts", "ascending")])
    )


def test_the_collector_follows_next_tokens_when_a_page_is_cut(make_collector, world: AwsWorld):
    direct = make_collector(regions=("us-west-2",)).collect_metrics(MANAGEMENT_ACCOUNT, FIRST_DAY)
    proxy = CloudWatchLimitsProxy(world.endpoint, max_datapoints=25)
    with proxy.serve() as url:
        paged = make_collector(regions=("us-west-2",), endpoint_url=url)
        paged = paged.collect_metrics(MANAGEMENT_ACCOUNT, FIRST_DAY)
    assert proxy.truncated > 0 and proxy.largest_page <= 25
    assert paged.metadata["get_metric_data_calls"] == proxy.calls > paged.metadata["min_get_metric_data_calls"]
    assert paged.metadata["partial_data_results"] == 0
    assert paged.table.sort_by([("resource_id", "ascending"), ("ts", "ascending")]).equals(
        direct.table.sort_by([("resource_id", "ascending"), ("ts", "ascending")])
    )
