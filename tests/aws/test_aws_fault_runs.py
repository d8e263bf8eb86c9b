"""AWS faults through whole runs: the endpoint down before or during a run, throttling storms within and
past the retry budget. Each failing run fails cleanly (the message names the endpoint, the account and the
fix, nothing of the partition is written) and the retry, once the endpoint answers, succeeds.

The real daily job on a real Dagster instance, against a moto server over HTTP behind the fault proxy of
``test_aws_faults.py`` (which answers throttling errors as each AWS protocol does, or drops connections).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cloudopt_pipelines.sources.aws import CollectorError
from tests.aws.conftest import FIRST_DAY, MANAGEMENT_ACCOUNT, AwsWorld, free_port
from tests.aws.test_aws_assets import DAY, _run, estate  # noqa: F401  (estate: the module's moto server)
from tests.aws.test_aws_faults import FaultProxy

COLLECTED = ("resources", "utilization_5m")
DOWNSTREAM = ("stg_utilization_5m", "utilization_daily", "recommendations_standalone_ec2")
FOREVER = 10**9


def _failure_text(result: Any) -> str:
    return "\n".join(
        e.step_failure_data.error.to_string() for e in result.all_events if e.is_step_failure and e.step_failure_data
    )


def _nothing_written(home: Path) -> None:
    from cloudopt_pipelines.storage.lake import STAGING, Lake

    lake = Lake(home / "lake")
    for table in (*COLLECTED, *DOWNSTREAM):
        assert lake.partitions(table) == [], table
    staging = home / "lake" / STAGING
    assert not staging.exists() or not list(staging.iterdir())


def _retry_succeeds(home: Path, endpoint: str) -> None:
    result, lake = _run(home, endpoint)
    assert result.success, _failure_text(result)
    for table in (*COLLECTED, *DOWNSTREAM):
        assert lake.partitions(table) == [(MANAGEMENT_ACCOUNT, DAY.isoformat())], table


def test_endpoint_down_before_the_run_fails_it_cleanly_and_the_retry_succeeds(
    estate: dict[str, Any],  # noqa: F811
    tmp_path: Path,
) -> None:
    home, dead = tmp_path / "home", f"http://127.0.0.1:{free_port()}"
    result, _ = _run(home, dead)
    assert not result.success
    text = _failure_text(result)
    assert dead in text and MANAGEMENT_ACCOUNT in text and "Fix:" in text
    _nothing_written(home)
    _retry_succeeds(home, estate["url"])


def test_endpoint_lost_during_the_run_fails_it_cleanly_and_the_retry_succeeds(
    estate: dict[str, Any],  # noqa: F811
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    proxy = FaultProxy(estate["url"], drop_after=6)  # a few calls answered, then the server is gone
    with proxy.serve() as url:
        result, _ = _run(home, url)
        assert proxy.seen > 6  # the collection was under way when the connection went
    assert not result.success
    text = _failure_text(result)
    assert url in text and MANAGEMENT_ACCOUNT in text and "Fix:" in text
    _nothing_written(home)
    _retry_succeeds(home, estate["url"])


def test_a_throttling_storm_within_the_budget_is_retried_counted_and_completes(
    make_collector,
    world: AwsWorld,
    inventory,
) -> None:
    proxy = FaultProxy(world.endpoint, throttle=4)  # each protocol throttled 4 times in a row
    with proxy.serve() as url:
        collected = make_collector(endpoint_url=url, max_attempts=6).collect_inventory(MANAGEMENT_ACCOUNT, FIRST_DAY)
    assert sorted(proxy.throttled) == ["ec2"] * 4 + ["json"] * 4 + ["query"] * 4
    assert collected.metadata["http_retries"] == 12
    assert sorted(collected.table.column("resource_id").to_pylist()) == sorted(
        inventory.table.column("resource_id").to_pylist()
    )


def test_a_throttling_storm_past_the_budget_stops_after_max_attempts_naming_the_fix(
    make_collector,
    world: AwsWorld,
) -> None:
    proxy = FaultProxy(world.endpoint, throttle=FOREVER)
    with proxy.serve() as url:
        with pytest.raises(CollectorError) as error:
            make_collector(endpoint_url=url, max_attempts=3).collect_inventory(MANAGEMENT_ACCOUNT, FIRST_DAY)
    # The first call (sts:GetCallerIdentity) tried exactly max_attempts times, then the partition gave up.
    assert proxy.throttled == ["query"] * 3 and proxy.seen == 3
    message = str(error.value)
    assert error.value.code == "Throttling"
    assert url in message and MANAGEMENT_ACCOUNT in message and "sts:GetCallerIdentity" in message
    assert "raise max_attempts" in message


def test_a_run_throttled_past_the_budget_fails_cleanly_and_the_retry_succeeds(
    estate: dict[str, Any],  # noqa: F811
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    proxy = FaultProxy(estate["url"], throttle=FOREVER)
    with proxy.serve() as url:
        result, _ = _run(home, url)  # max_attempts=2
    assert not result.success
    text = _failure_text(result)
    assert url in text and MANAGEMENT_ACCOUNT in text and "raise max_attempts" in text
    # Bounded: each collection step gave up after its budget on its first call, never more.
    failed_steps = sum(1 for e in result.all_events if e.is_step_failure)
    assert 0 < len(proxy.throttled) <= 2 * failed_steps
    _nothing_written(home)
    _retry_succeeds(home, estate["url"])
