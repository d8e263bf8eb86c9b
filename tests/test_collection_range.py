"""A backfill run over a range of partitions: the collection assets collect and write each partition in turn.

The collection assets share the feature models' backfill policy (``CLOUDOPT_BACKFILL_PARTITIONS_PER_RUN``), so
a backfill of one account's days runs as one run. These tests run such a range through Dagster (the
range tags a backfill run carries) on a real instance and lake: every partition lands and is recorded,
and a source that fails part way leaves the written partitions whole, the rest as they were, and an error
that names the partition.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import dagster as dg
import pytest

from cloudopt_pipelines.definitions import build_definitions
from cloudopt_pipelines.resources.sources import DemoSourceResource
from cloudopt_pipelines.settings import Settings, SettingsError, backfill_partitions_per_run, load_settings
from cloudopt_pipelines.sources.base import Collected, Collector
from cloudopt_pipelines.sources.demo import DemoCollector
from cloudopt_pipelines.storage.lake import Lake
from tests.conftest import DEMO_ACCOUNTS

ACCOUNT = DEMO_ACCOUNTS[0]
COLLECTION = (["raw", "resources"], ["raw", "utilization_5m"])
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


class _FailsOnDay(DemoCollector):
    """The demo fleet, whose metrics for one day raise, as a source that dies part way through a range."""

    def __init__(self, failing: date) -> None:
        super().__init__()
        self.failing = failing

    def collect_metrics(self, account_id: str, day: date) -> Collected:
        if day == self.failing:
            raise ConnectionError("the metrics endpoint closed the connection")
        return super().collect_metrics(account_id, day)


class _FailingSource(DemoSourceResource):
    failing: str

    def get_collector(self) -> Collector:
        return _FailsOnDay(date.fromisoformat(self.failing))


def _range_tags(days: list[date]) -> dict[str, str]:
    return {
        "dagster/asset_partition_range_start": f"{ACCOUNT}|{days[0].isoformat()}",
        "dagster/asset_partition_range_end": f"{ACCOUNT}|{days[-1].isoformat()}",
    }


def _run_range(settings: Settings, instance: dg.DagsterInstance, days: list[date], source=None):
    defs = build_definitions(settings, source)
    job = defs.resolve_implicit_global_asset_job_def()
    return job.execute_in_process(
        instance=instance,
        asset_selection=[dg.AssetKey(k) for k in COLLECTION],
        tags=_range_tags(days),
        run_config=QUIET,
        raise_on_error=False,
    )


@pytest.fixture
def instance() -> dg.DagsterInstance:
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("accounts", DEMO_ACCOUNTS)
        yield instance


def test_a_range_run_collects_and_records_every_partition(fresh_home: Settings, instance) -> None:
    days = DemoCollector().days[:3]
    result = _run_range(fresh_home, instance, days)
    assert result.success
    keys = {f"{ACCOUNT}|{d.isoformat()}" for d in days}
    lake = Lake(fresh_home.lake_dir)
    demo = DemoCollector()
    for path in COLLECTION:
        assert instance.get_materialized_partitions(dg.AssetKey(path)) == keys, path
        assert lake.partitions(path[-1]) == [(ACCOUNT, d.isoformat()) for d in days]
    for day in days:
        assert lake.read("utilization_5m", ACCOUNT, day).num_rows == demo.collect_metrics(ACCOUNT, day).table.num_rows

    materialization = result.asset_materializations_for_node("raw__utilization_5m")[0]
    rows = [demo.collect_metrics(ACCOUNT, d).table.num_rows for d in days]
    assert materialization.metadata["batch/partitions"].value == len(days)
    assert materialization.metadata["batch/row_count"].value == sum(rows)
    assert materialization.metadata["batch/rows_per_partition_min"].value == min(rows)
    # Each partition's collector metadata, by partition key, and no per-partition row count on the total.
    assert sorted(materialization.metadata["batch/collector"].value) == sorted(keys)
    assert "dagster/row_count" not in materialization.metadata


def test_a_source_failing_part_way_leaves_written_partitions_whole_and_names_the_partition(
    fresh_home: Settings, instance
) -> None:
    days = DemoCollector().days[:3]
    lake = Lake(fresh_home.lake_dir)
    result = _run_range(fresh_home, instance, days, _FailingSource(failing=days[1].isoformat()))
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE)
    text, error = "", failure.step_failure_data.error
    while error is not None:  # Dagster's own message, then the exception it wraps
        text, error = text + error.message, error.cause
    assert "the metrics endpoint closed the connection" in text
    assert f"utilization_5m for {ACCOUNT}|{days[1].isoformat()}, partition 2 of the run's 3" in text
    # Day 1 is whole, day 2 and day 3 were never written; nothing half-written in the staging folder.
    assert lake.partitions("utilization_5m") == [(ACCOUNT, days[0].isoformat())]
    assert not any((fresh_home.lake_dir / ".staging").iterdir())
    # The failed step records no partition as materialised; the retry writes all three.
    assert not instance.get_materialized_partitions(dg.AssetKey(["raw", "utilization_5m"]))
    assert _run_range(fresh_home, instance, days).success
    assert lake.partitions("utilization_5m") == [(ACCOUNT, d.isoformat()) for d in days]


def test_partitions_per_run_comes_from_the_environment_and_refuses_nonsense(monkeypatch, tmp_path: Path) -> None:
    assert backfill_partitions_per_run({}) == 14
    assert backfill_partitions_per_run({"CLOUDOPT_BACKFILL_PARTITIONS_PER_RUN": "31"}) == 31
    for bad in ("0", "-3", "many", "2.5"):
        with pytest.raises(SettingsError, match="CLOUDOPT_BACKFILL_PARTITIONS_PER_RUN"):
            backfill_partitions_per_run({"CLOUDOPT_BACKFILL_PARTITIONS_PER_RUN": bad})
    monkeypatch.setenv("CLOUDOPT_HOME", str(tmp_path))
    monkeypatch.setenv("CLOUDOPT_BACKFILL_PARTITIONS_PER_RUN", "5")
    graph = build_definitions(load_settings()).resolve_asset_graph()
    for key in (*COLLECTION, ["features", "stg_utilization_5m"], ["features", "utilization_daily"]):
        assert graph.get(dg.AssetKey(key)).backfill_policy == dg.BackfillPolicy.multi_run(5), key
    # The plan and the recommendations keep a run per partition (they read their own previous day).
    assert graph.get(dg.AssetKey(["recommendations", "standalone_ec2"])).backfill_policy is None
