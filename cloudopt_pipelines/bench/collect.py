"""Benchmark of the AWS collector against a local moto server: API calls against the minimum, wall time.

``run_collect_benchmark`` starts moto in-process on a free loopback port, seeds ``instances`` EC2
instances with ``days`` of 5-minute CPU (and agent memory for every fourth instance) taken from the real
trace samples in ``tests/data`` (Azure Public Dataset V1; Google cluster-data 2011), then runs
``collect_inventory`` and ``collect_metrics`` for the last seeded day over HTTP, through
``CloudWatchLimitsProxy`` (CloudWatch's real 100,800 datapoints a call, the rest behind a NextToken).
The baseline is a plain boto3 loop over the same series (500 queries a call, following NextToken),
through the same proxy, in the same run: its calls and time, and the datapoints (which must be equal).

moto answers ``GetMetricData`` and ``ListMetrics`` by scanning every stored datapoint for every query and
period (quadratic); with a thousand instances that takes hours. The benchmark therefore installs indexed
versions of those two backend methods in its own moto server (same results for the metric-stat queries the
collector sends) so that the time measured is the collector's, not moto's. The tests use moto unpatched.
"""

from __future__ import annotations

import contextlib
import logging
import math
import socket
import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pandas as pd

from cloudopt_pipelines.bench.harness import Line, Report
from cloudopt_pipelines.sources.aws import (
    EC2_SERIES,
    MAX_DATAPOINTS_PER_CALL,
    MAX_QUERIES_PER_CALL,
    MEM_SERIES,
    AwsCollector,
    AwsSettings,
)
from cloudopt_pipelines.testing.cloudwatch_limits import CloudWatchLimitsProxy

DATA_DIR = Path(__file__).resolve().parents[2] / "tests" / "data"
CPU_SAMPLE = DATA_DIR / "azure_v1_6vms_3days_cpu_5min.csv.gz"
MEM_SAMPLE = DATA_DIR / "gcd_4vms_1day_cpu_mem_5min.csv.gz"
FIRST_DAY = date(2024, 3, 4)
AMI = "ami-1e749f67"
ACCOUNT = "123456789012"
SLOTS = 288  # 5-minute points in a day
DUMMY_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"}


def run_collect_benchmark(
    instances: int = 1000,
    days: int = 1,
    region: str = "us-east-1",
    page_size: int | None = None,
    mem_every: int = 4,
) -> dict[str, Any]:
    """Seed a moto server with ``instances`` x ``days`` of metrics, collect one day, report calls and time."""
    if instances < 1 or days < 1:
        raise ValueError("instances and days must be at least 1")
    cpu, mem = _load_traces()
    with _dummy_credentials(), _moto_server() as moto_endpoint:
        t0 = time.perf_counter()
        instance_ids = _seed(moto_endpoint, region, instances, days, cpu, mem, mem_every)
        seed_seconds = time.perf_counter() - t0
        proxy = CloudWatchLimitsProxy(moto_endpoint)
        with proxy.serve() as endpoint:
            collector = AwsCollector(
                AwsSettings(regions=(region,), endpoint_url=endpoint, page_size=page_size, region_concurrency=1)
            )
            day = FIRST_DAY + timedelta(days=days - 1)
            t1 = time.perf_counter()
            inventory = collector.collect_inventory(ACCOUNT, day)
            t2 = time.perf_counter()
            metrics = collector.collect_metrics(ACCOUNT, day)
            t3 = time.perf_counter()
            truncated = proxy.truncated
            plain = _plain_loop(endpoint, region, day)
            t4 = time.perf_counter()
    meta = metrics.metadata
    series = int(meta["metric_series"])
    return {
        "instances": len(instance_ids),
        "days_seeded": days,
        "day_collected": day.isoformat(),
        "seed_seconds": round(seed_seconds, 3),
        "inventory_seconds": round(t2 - t1, 3),
        "metrics_seconds": round(t3 - t2, 3),
        "inventory_rows": inventory.table.num_rows,
        "metric_rows": metrics.table.num_rows,
        "inventory_rows_per_second": round(inventory.table.num_rows / max(t2 - t1, 1e-9), 1),
        "metric_rows_per_second": round(metrics.table.num_rows / max(t3 - t2, 1e-9), 1),
        "metric_series": series,
        "min_get_metric_data_calls": int(meta["min_get_metric_data_calls"]),
        "get_metric_data_calls": int(meta["get_metric_data_calls"]),
        "expected_min_get_metric_data_calls": max(
            math.ceil(series / MAX_QUERIES_PER_CALL), math.ceil(series * SLOTS / MAX_DATAPOINTS_PER_CALL)
        ),
        "instances_with_memory": int(meta["instances_with_memory"]),
        "inventory_api_calls": inventory.metadata["api_calls"],
        "metrics_api_calls": meta["api_calls"],
        "http_retries": int(inventory.metadata["http_retries"]) + int(meta["http_retries"]),
        "pages_cut_by_the_limit": truncated,
        "metric_points": _points(metrics.table),
        "plain_loop_seconds": round(t4 - t3, 3),
        "plain_loop_get_metric_data_calls": plain["calls"],
        "plain_loop_points": plain["points"],
    }


def _points(table: Any) -> int:
    """Datapoints in ``utilization_5m`` rows: the non-null values of the series columns."""
    columns = [c for *_, c in EC2_SERIES] + [MEM_SERIES[3]]
    return sum(len(table[c]) - table[c].null_count for c in columns)


def _plain_loop(endpoint: str, region: str, day: date) -> dict[str, int]:
    """The baseline: what a straightforward script does with boto3, listing the instances and the agent's
    memory series, then asking for every series 500 queries at a time, following NextToken pages."""
    start = datetime.combine(day, datetime.min.time(), tzinfo=UTC)
    ec2 = boto3.client("ec2", endpoint_url=endpoint, region_name=region)
    cloudwatch = boto3.client("cloudwatch", endpoint_url=endpoint, region_name=region)
    ids = [i["InstanceId"] for page in ec2.get_paginator("describe_instances").paginate()
           for r in page["Reservations"] for i in r["Instances"]]  # fmt: skip
    memory = [m for page in cloudwatch.get_paginator("list_metrics").paginate(
        Namespace=MEM_SERIES[0], MetricName=MEM_SERIES[1]) for m in page["Metrics"]]  # fmt: skip
    metrics = [
        ({"Namespace": ns, "MetricName": name, "Dimensions": [{"Name": "InstanceId", "Value": i}]}, stat)
        for i in ids
        for ns, name, stat, _ in EC2_SERIES
    ] + [(m, MEM_SERIES[2]) for m in memory]
    calls = points = 0
    for offset in range(0, len(metrics), MAX_QUERIES_PER_CALL):
        queries = [
            {"Id": f"q{offset + k}", "MetricStat": {"Metric": m, "Period": 300, "Stat": stat}}
            for k, (m, stat) in enumerate(metrics[offset : offset + MAX_QUERIES_PER_CALL])
        ]
        token = None
        while True:
            extra = {"NextToken": token} if token else {}
            page = cloudwatch.get_metric_data(
                MetricDataQueries=queries, StartTime=start, EndTime=start + timedelta(days=1), **extra
            )
            calls += 1
            points += sum(len(r.get("Values", [])) for r in page["MetricDataResults"])
            token = page.get("NextToken")
            if not token:
                break
    return {"calls": calls, "points": points}


def format_report(result: dict[str, Any]) -> str:
    """A short human-readable report of ``run_collect_benchmark``'s result."""
    calls = result["get_metric_data_calls"]
    minimum = result["min_get_metric_data_calls"]
    lines = [
        f"AWS collector benchmark (moto): {result['instances']} instances, "
        f"{result['days_seeded']} day(s) seeded, collected {result['day_collected']}",
        f"  seeding          {result['seed_seconds']:>9.2f} s",
        f"  inventory        {result['inventory_seconds']:>9.2f} s  {result['inventory_rows']:>9,} rows  "
        f"{result['inventory_rows_per_second']:>12,.0f} rows/s",
        f"  metrics          {result['metrics_seconds']:>9.2f} s  {result['metric_rows']:>9,} rows  "
        f"{result['metric_rows_per_second']:>12,.0f} rows/s",
        f"  metric series    {result['metric_series']:>9,}  ({result['instances_with_memory']} with agent memory)",
        f"  GetMetricData    {calls:>9,} calls  (minimum {minimum}: max(ceil(series / 500), ceil(points / 100,800)))"
        + ("" if calls == minimum else f"  {calls - minimum:+d} over"),
        "  inventory calls  " + ", ".join(f"{k}={v}" for k, v in result["inventory_api_calls"].items()),
        "  metrics calls    " + ", ".join(f"{k}={v}" for k, v in result["metrics_api_calls"].items()),
        f"  HTTP retries     {result['http_retries']:>9,}",
    ]
    return "\n".join(lines)


def run(
    quick: bool = False,
    progress: Any = print,
    instances: int | None = None,
    days: int = 1,
    page_size: int | None = None,
) -> Report:
    """The harness's entry: :func:`run_collect_benchmark` as ratio lines."""
    n = instances or (100 if quick else 1000)
    r = run_collect_benchmark(instances=n, days=days, page_size=page_size)
    progress(format_report(r))
    report = Report("collect", quick)
    same = r["metric_points"] == r["plain_loop_points"]
    report.lines += [
        Line(
            f"GetMetricData {n:,} instances",
            "calls made (through the CloudWatch limits proxy)",
            "max(ceil(series / 500), ceil(points / 100,800))",
            r["get_metric_data_calls"],
            r["expected_min_get_metric_data_calls"],
            r["min_get_metric_data_calls"] == r["expected_min_get_metric_data_calls"],
            unit="calls",
            target="at the minimum, no page cut",
            met=r["get_metric_data_calls"] == r["expected_min_get_metric_data_calls"]
            and r["pages_cut_by_the_limit"] == 0,
        ),
        Line(
            "GetMetricData plain loop",
            "calls made",
            "a plain boto3 loop, 500 queries a call and NextToken pages",
            r["get_metric_data_calls"],
            r["plain_loop_get_metric_data_calls"],
            same,
            unit="calls",
            note=f"{r['metric_points']:,} datapoints each; the seeded fleet has CPU and memory only (no network "
            "points), so the plain loop's 500-query calls stay under 100,800 points here; with every series full "
            "(as on EC2) each of its calls needs a second page",
        ),
        Line(
            "metrics collection",
            "collect_metrics (pages, retries, rows)",
            "the plain boto3 loop (points only)",
            r["metrics_seconds"],
            r["plain_loop_seconds"],
            same,
        ),
    ]
    report.details = r
    return report


# -------------------------------------------------------------------------------------------- seeding


def _load_traces() -> tuple[pd.DataFrame, pd.DataFrame]:
    missing = [p for p in (CPU_SAMPLE, MEM_SAMPLE) if not p.exists()]
    if missing:
        raise FileNotFoundError(
            f"trace sample(s) {[str(p) for p in missing]} not found; the benchmark replays the samples "
            "shipped in tests/data (run it from a checkout of the repository)"
        )
    return pd.read_csv(CPU_SAMPLE, dtype={"vm_id": str}), pd.read_csv(MEM_SAMPLE, dtype={"vm_id": str})


def _seed(
    endpoint: str,
    region: str,
    instances: int,
    days: int,
    cpu: pd.DataFrame,
    mem: pd.DataFrame,
    mem_every: int,
) -> list[str]:
    ec2 = boto3.client("ec2", endpoint_url=endpoint, region_name=region)
    cloudwatch = boto3.client("cloudwatch", endpoint_url=endpoint, region_name=region)
    ids: list[str] = []
    while len(ids) < instances:
        n = min(500, instances - len(ids))
        reservation = ec2.run_instances(ImageId=AMI, MinCount=n, MaxCount=n, InstanceType="m5.large")
        ids.extend(i["InstanceId"] for i in reservation["Instances"])

    cpu_vms = [group for _, group in cpu.groupby("vm_id", sort=True)]
    mem_vms = [group for _, group in mem.groupby("vm_id", sort=True)]
    start = datetime(FIRST_DAY.year, FIRST_DAY.month, FIRST_DAY.day, tzinfo=UTC)
    steps_per_trace_vm = int(cpu.step_5min.max()) + 1
    cpu_batch: list[dict[str, Any]] = []
    mem_batch: list[dict[str, Any]] = []
    for k, iid in enumerate(ids):
        # Each instance replays one trace VM from its own offset, so instances differ.
        vm = cpu_vms[k % len(cpu_vms)]
        offset = (k // len(cpu_vms)) * 288 % steps_per_trace_vm
        avg = vm.avg_cpu_pct.to_numpy()
        peak = vm.max_cpu_pct.to_numpy()
        dims = [{"Name": "InstanceId", "Value": iid}]
        for step in range(days * 288):
            j = (offset + step) % len(avg)
            cpu_batch.append(
                {
                    "MetricName": "CPUUtilization",
                    "Dimensions": dims,
                    "Timestamp": start + timedelta(seconds=300 * step),
                    "StatisticValues": {
                        "SampleCount": 1.0,
                        "Sum": float(avg[j]),
                        "Minimum": float(avg[j]),
                        "Maximum": float(peak[j]),
                    },
                    "Unit": "Percent",
                }
            )
            if len(cpu_batch) == 1000:
                cloudwatch.put_metric_data(Namespace="AWS/EC2", MetricData=cpu_batch)
                cpu_batch = []
        if mem_every and k % mem_every == 0:
            used = mem_vms[(k // mem_every) % len(mem_vms)].mem_util_pct.to_numpy()
            for step in range(days * 288):
                mem_batch.append(
                    {
                        "MetricName": "mem_used_percent",
                        "Dimensions": dims,
                        "Timestamp": start + timedelta(seconds=300 * step),
                        "Value": float(used[step % len(used)]),
                        "Unit": "Percent",
                    }
                )
                if len(mem_batch) == 1000:
                    cloudwatch.put_metric_data(Namespace="CWAgent", MetricData=mem_batch)
                    mem_batch = []
    if cpu_batch:
        cloudwatch.put_metric_data(Namespace="AWS/EC2", MetricData=cpu_batch)
    if mem_batch:
        cloudwatch.put_metric_data(Namespace="CWAgent", MetricData=mem_batch)
    return ids


# ----------------------------------------------------------------------------------------- the server


@contextlib.contextmanager
def _dummy_credentials() -> Iterator[None]:
    import os

    names = [*DUMMY_CREDENTIALS, "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL"]
    saved = {name: os.environ.get(name) for name in names}
    try:
        for name in names:
            os.environ.pop(name, None)
        os.environ.update(DUMMY_CREDENTIALS)
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def _moto_server() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    restore = _index_moto_cloudwatch()
    werkzeug = logging.getLogger("werkzeug")
    level = werkzeug.level
    werkzeug.setLevel(logging.ERROR)  # one access-log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
        restore()
        werkzeug.setLevel(level)


def _index_moto_cloudwatch() -> Any:
    """Replace moto's quadratic GetMetricData / ListMetrics with indexed equivalents; returns an undo."""
    from moto.cloudwatch.models import CloudWatchBackend, Dimension, Statistics

    original_get = CloudWatchBackend.get_metric_data
    original_filter = CloudWatchBackend.get_filtered_metrics

    def get_metric_data(
        self: Any,
        queries: list[dict[str, Any]],
        start_time: datetime,
        end_time: datetime,
        scan_by: str = "TimestampAscending",
    ) -> list[dict[str, Any]]:
        if any("MetricStat" not in q for q in queries):
            return original_get(self, queries, start_time, end_time, scan_by)
        start_time = start_time.replace(microsecond=0)
        end_time = end_time.replace(microsecond=0)
        index: dict[tuple[Any, ...], list[Any]] = defaultdict(list)
        for md in self.get_all_metrics():
            if start_time <= md.timestamp < end_time:
                index[(md.namespace, md.name, _dims_key(md.dimensions))].append(md)
        results = []
        for query in queries:
            stat = query["MetricStat"]
            metric = stat["Metric"]
            period = int(stat["Period"])
            dims = _dims_key(Dimension(d["Name"], d["Value"]) for d in metric.get("Dimensions", []))
            buckets: dict[int, list[Any]] = defaultdict(list)
            for md in index.get((metric["Namespace"], metric["MetricName"], dims), []):
                buckets[int((md.timestamp - start_time).total_seconds()) // period].append(md)
            timestamps, values = [], []
            for b in sorted(buckets):
                stats = Statistics([stat["Stat"]], start_time + timedelta(seconds=b * period))
                stats.metric_data = buckets[b]
                timestamps.append(stats.timestamp)
                values.append(stats.get_statistics_for_type(stat["Stat"]))
            if scan_by == "TimestampDescending":
                timestamps.reverse()
                values.reverse()
            results.append(
                {
                    "id": query["Id"],
                    "label": query.get("Label") or f"{metric['MetricName']} {stat['Stat']}",
                    "values": values,
                    "timestamps": timestamps,
                    "status_code": "Complete",
                }
            )
        return results

    def get_filtered_metrics(
        self: Any, metric_name: str, namespace: str, dimensions: list[dict[str, str]]
    ) -> list[Any]:
        seen: dict[tuple[Any, ...], Any] = {}
        for md in self.get_all_metrics():
            if md.filter(namespace=namespace, name=metric_name, dimensions=dimensions):
                seen.setdefault((md.namespace, md.name, _dims_key(md.dimensions)), md)
        return list(seen.values())

    CloudWatchBackend.get_metric_data = get_metric_data
    CloudWatchBackend.get_filtered_metrics = get_filtered_metrics

    def restore() -> None:
        CloudWatchBackend.get_metric_data = original_get
        CloudWatchBackend.get_filtered_metrics = original_filter

    return restore


def _dims_key(dimensions: Any) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((d.name, d.value) for d in dimensions))


if __name__ == "__main__":
    print(format_report(run_collect_benchmark()))
