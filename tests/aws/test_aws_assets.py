"""The real Dagster assets against a real moto server over HTTP, through AwsResource(endpoint_url=...)."""

import math
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cloudopt_pipelines.automation import DAILY_JOB
from cloudopt_pipelines.definitions import build_definitions
from cloudopt_pipelines.orchestration import ensure_instance, register_accounts
from cloudopt_pipelines.partitions import account_day_key
from cloudopt_pipelines.resources.aws import AwsResource
from cloudopt_pipelines.settings import Settings
from cloudopt_pipelines.storage.lake import Lake
from tests.aws.conftest import (
    MANAGEMENT_ACCOUNT,
    client,
    free_port,
    load_azure,
    put_metric_data,
    run_instance,
    running_moto_server,
)
from tests.aws.test_aws_faults import FaultProxy

DAY = date(2026, 11, 16)  # a daily partition of the pipeline (the collector tests use 2024 days)


def _ts(step: int) -> datetime:
    return datetime(DAY.year, DAY.month, DAY.day, tzinfo=UTC) + timedelta(minutes=5 * step)


@pytest.fixture(scope="module")
def estate(aws_env: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A server of its own: two standalone instances and an ASG member, one day of real Azure CPU."""
    with running_moto_server(tmp_path_factory.mktemp("moto-assets") / "moto.log") as url:
        ec2 = client(url, "ec2")
        standalone = [
            run_instance(ec2, {"Name": "api", "env": "prod", "team": "web"}, "m5.xlarge"),
            run_instance(ec2, {"Name": "dev", "env": "dev", "team": "ml"}, "c5.2xlarge"),
        ]
        member = run_instance(ec2, {"Name": "asg-0", "aws:autoscaling:groupName": "web-asg"}, "m5.large")
        azure = load_azure()
        traces = dict(list(azure.groupby("vm_id", sort=True))[:3])
        expected: dict[str, dict[int, tuple[float, float]]] = {}
        data = []
        for iid, (_vm, rows) in zip([*standalone, member], traces.items(), strict=True):
            day_rows = rows[rows.step_5min < 288]
            expected[iid] = {
                int(r.step_5min): (float(r.avg_cpu_pct), float(r.max_cpu_pct)) for r in day_rows.itertuples()
            }
            data += [
                {
                    "MetricName": "CPUUtilization",
                    "Dimensions": [{"Name": "InstanceId", "Value": iid}],
                    "Timestamp": _ts(step),
                    "StatisticValues": {"SampleCount": 1.0, "Sum": avg, "Minimum": avg, "Maximum": peak},
                    "Unit": "Percent",
                }
                for step, (avg, peak) in expected[iid].items()
            ]
        put_metric_data(client(url, "cloudwatch"), "AWS/EC2", data)
        yield {"url": url, "standalone": standalone, "member": member, "expected": expected}


def _run(home: Path, endpoint: str):
    settings = Settings(home=home, env="aws")
    source = AwsResource(
        endpoint_url=endpoint,
        regions=["us-east-1"],
        accounts=[MANAGEMENT_ACCOUNT],
        max_attempts=2,
        connect_timeout_seconds=1,
        read_timeout_seconds=20,
    )
    defs = build_definitions(settings, source)
    instance = ensure_instance(settings)
    register_accounts(instance, [MANAGEMENT_ACCOUNT])
    defs.resolve_job_def("refresh_price_catalog").execute_in_process(instance=instance)
    result = defs.resolve_job_def(DAILY_JOB).execute_in_process(
        instance=instance, partition_key=account_day_key(MANAGEMENT_ACCOUNT, DAY), raise_on_error=False
    )
    return result, Lake(settings.lake_dir)


def test_daily_job_collects_from_the_server_and_builds_every_stage(estate: dict[str, Any], tmp_path: Path) -> None:
    result, lake = _run(tmp_path / "home", estate["url"])
    assert result.success
    inventory = {r["resource_id"]: r for r in lake.read("resources", MANAGEMENT_ACCOUNT, DAY).to_pylist()}
    for iid in estate["standalone"]:
        assert inventory[iid]["deployment_type"] == "standalone" and inventory[iid]["source"] == "aws"
    assert inventory[estate["member"]]["deployment_type"] == "asg"

    samples = lake.read("utilization_5m", MANAGEMENT_ACCOUNT, DAY).to_pylist()
    for iid, steps in estate["expected"].items():
        rows = {int((r["ts"] - _ts(0)).total_seconds() // 300): r for r in samples if r["resource_id"] == iid}
        assert rows.keys() == steps.keys()
        for step, (avg, peak) in steps.items():
            assert math.isclose(rows[step]["cpu_pct"], avg, rel_tol=1e-9)
            assert math.isclose(rows[step]["cpu_max_pct"], peak, rel_tol=1e-9)
            assert rows[step]["mem_pct"] is None  # no CloudWatch agent: missing, never guessed

    daily = {r["resource_id"]: r for r in lake.read("utilization_daily", MANAGEMENT_ACCOUNT, DAY).to_pylist()}
    for iid, steps in estate["expected"].items():
        assert daily[iid]["samples"] == len(steps)
        assert math.isclose(daily[iid]["cpu_max_pct"], max(p for _, p in steps.values()), rel_tol=1e-12)
    recommended = {
        r["resource_id"] for r in lake.read("recommendations_standalone_ec2", MANAGEMENT_ACCOUNT, DAY).to_pylist()
    }
    assert set(estate["standalone"]) <= recommended and estate["member"] not in recommended
    metadata = result.asset_materializations_for_node("raw__utilization_5m")[0].metadata
    assert metadata["get_metric_data_calls"].value == metadata["min_get_metric_data_calls"].value


def test_server_lost_mid_run_fails_naming_endpoint_and_account_and_writes_nothing(
    estate: dict[str, Any], tmp_path: Path
) -> None:
    proxy = FaultProxy(estate["url"], drop_after=3)
    with proxy.serve() as url:
        result, lake = _run(tmp_path / "home", url)
    assert not result.success
    failures = [e for e in result.all_events if e.is_step_failure]
    message = "\n".join(str(e.step_failure_data.error.message) for e in failures)
    causes = "\n".join(
        str(e.step_failure_data.error.cause.message) for e in failures if e.step_failure_data.error.cause
    )
    assert url in message + causes and MANAGEMENT_ACCOUNT in message + causes
    for table in (
        "resources",
        "utilization_5m",
        "stg_utilization_5m",
        "utilization_daily",
        "recommendations_standalone_ec2",
    ):
        assert lake.partitions(table) == [], table
    staging = tmp_path / "home" / "lake" / ".staging"
    assert not staging.exists() or not list(staging.iterdir())


def test_unreachable_endpoint_error_names_it(aws_env: None, tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    result, lake = _run(tmp_path / "home", dead)
    assert not result.success
    text = "\n".join(
        e.step_failure_data.error.to_string() for e in result.all_events if e.is_step_failure and e.step_failure_data
    )
    assert dead in text and MANAGEMENT_ACCOUNT in text
    assert lake.partitions("resources") == [] and lake.partitions("utilization_5m") == []
