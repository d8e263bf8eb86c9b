"""The demo's window: 14 days of every account, partitions exactly those days, a second run keeps them."""

from datetime import date, timedelta
from pathlib import Path

import duckdb
import pytest

from cloudopt_pipelines.definitions import build_definitions, partitions_for
from cloudopt_pipelines.orchestration import ProgressTracker, day_range, ensure_instance, failure_log, run_range
from cloudopt_pipelines.partitions import DEPLOYMENT_PARTITIONS
from cloudopt_pipelines.resources.sources import DemoSourceResource
from cloudopt_pipelines.settings import START_DATE, Settings
from cloudopt_pipelines.sources.demo import DEMO_DATA, DemoCollector
from cloudopt_pipelines.summary import demo_summary
from tests.conftest import DEMO_ACCOUNTS


def test_demo_data_has_at_least_14_full_days_of_every_account() -> None:
    collector = DemoCollector()
    assert len(collector.days) >= 14
    rows = duckdb.sql(
        f"SELECT account_id, CAST(ts AT TIME ZONE 'UTC' AS DATE) AS day, count(DISTINCT resource_id) "
        f"FROM read_parquet('{DEMO_DATA / 'metrics.parquet'}') GROUP BY ALL"
    ).fetchall()
    instances = {a["account_id"]: len(a["instances"]) for a in collector.fleet["accounts"]}
    by_account: dict[str, set[date]] = {}
    for account, day, series in rows:
        assert series == instances[account], (account, day)
        by_account.setdefault(account, set()).add(day)
    assert by_account == {a: set(collector.days) for a in collector.list_accounts()}


def _date_dimension(partitions_def):
    return next(d.partitions_def for d in partitions_def.partitions_defs if d.name == "date")


def test_demo_partitions_are_the_demo_days_and_aws_keeps_the_deployment_start(tmp_path: Path) -> None:
    days = DemoCollector().days
    demo = build_definitions(Settings(home=tmp_path, env="demo")).resolve_asset_graph()
    partitioned = [demo.get(k).partitions_def for k in demo.get_all_asset_keys() if demo.get(k).partitions_def]
    assert len(partitioned) > 5
    for partitions_def in partitioned:
        daily = _date_dimension(partitions_def) if hasattr(partitions_def, "partitions_defs") else partitions_def
        assert daily.get_partition_keys() == [d.isoformat() for d in days]
    aws = partitions_for(Settings(home=tmp_path, env="aws"))
    assert aws == DEPLOYMENT_PARTITIONS and aws.first_day == date.fromisoformat(START_DATE)


def test_a_range_outside_the_demo_days_is_refused_naming_them(tmp_path: Path) -> None:
    window = partitions_for(Settings(home=tmp_path, env="demo"))
    first, last = DemoCollector().days[0], DemoCollector().days[-1]
    with pytest.raises(ValueError, match=f"before the first partition {first}: the partitions cover {first} to {last}"):
        day_range(first - timedelta(days=1), first, window)
    with pytest.raises(ValueError, match=f"after the last partition {last}.*pick --end {last} or earlier"):
        day_range(last, last + timedelta(days=1), window)
    assert day_range(first, last, window)[-1] == last


def test_a_second_run_keeps_finished_partitions_unless_forced(fresh_home: Settings) -> None:
    day = DemoCollector().days[0]
    first = run_range(day, day, settings=fresh_home, progress=lambda _: None, skip_done=True)
    assert not first.failed and not first.skipped
    instance = ensure_instance(fresh_home)
    runs = len(instance.get_run_records())
    warehouse_mtime = fresh_home.warehouse_path.stat().st_mtime_ns

    second = run_range(day, day, settings=fresh_home, progress=lambda _: None, skip_done=True)
    assert len(second.skipped) == len(second.outcomes) == len(DEMO_ACCOUNTS) + 1  # the accounts and the plan
    assert len(instance.get_run_records()) == runs
    assert fresh_home.warehouse_path.stat().st_mtime_ns == warehouse_mtime
    summary = demo_summary(fresh_home, second, 1.0, "SELECT 1")
    assert "0/0 materialised, 2 kept from an earlier run" in summary
    assert "--force" in summary

    forced = run_range(day, day, accounts=[DEMO_ACCOUNTS[0]], settings=fresh_home, progress=lambda _: None)
    assert not forced.skipped and not forced.failed
    assert len(instance.get_run_records()) > runs


def test_summary_says_savings_and_explains_plan_against_recommendations(demo_home: Settings) -> None:
    from cloudopt_pipelines.orchestration import RangeResult

    summary = demo_summary(demo_home, RangeResult(DEMO_ACCOUNTS, []), 1.0, "SELECT 1")
    recommendations = next(line for line in summary.splitlines() if line.startswith("Recommendations"))
    assert "saving $" in recommendations
    plan_line = next(line for line in summary.splitlines() if line.startswith("Portfolio plan"))
    assert "saving $" in plan_line
    assert "The plan saves $" in summary and "than the recommendations ($" in summary
    con = duckdb.connect(str(demo_home.warehouse_path), read_only=True)
    # What the plan holds back: the best options' savings of the resources it keeps as they are.
    kept, held = con.execute(
        """
        WITH kept AS (SELECT account_id, resource_id FROM portfolio_plan
                      WHERE action = 'keep' AND date = (SELECT max(date) FROM portfolio_plan)),
             best AS (SELECT account_id, resource_id, monthly_savings_usd FROM recommendations
                      WHERE is_best AND date = (SELECT max(date) FROM recommendations))
        SELECT (SELECT count(*) FROM kept),
               (SELECT sum(monthly_savings_usd) FILTER (WHERE monthly_savings_usd > 0)
                FROM kept JOIN best USING (account_id, resource_id))
        """
    ).fetchone()
    assert kept > 0
    held_text = f", whose best options would save ${held:,.2f} per month" if held else ""
    assert f"keeps {kept} resources as they are{held_text} (protected ones" in summary
    reserved = con.execute(
        "SELECT count(*) FROM portfolio_plan WHERE action = 'reserve' AND date = (SELECT max(date) FROM portfolio_plan)"
    ).fetchone()[0]
    assert (f"reserves {reserved} instances" in summary) == (reserved > 0)
    latest = (
        "FROM resources WHERE date = (SELECT max(date) FROM resources) AND resource_id NOT IN "
        "(SELECT resource_id FROM recommendations WHERE date = (SELECT max(date) FROM recommendations))"
    )
    members = con.execute(
        f"SELECT count(DISTINCT resource_id) {latest} AND parent_id IN "
        "(SELECT resource_id FROM recommendations WHERE date = (SELECT max(date) FROM recommendations))"
    ).fetchone()[0]
    alone = con.execute(f"SELECT count(DISTINCT resource_id) {latest}").fetchone()[0] - members
    nodes = con.execute(f"SELECT count(DISTINCT resource_id) {latest} AND resource_kind = 'k8s_node'").fetchone()[0]
    # The demo cluster has node-pool rows, so its nodes count as members of their group, not as orphans.
    members, alone = members + nodes, alone - nodes
    assert members > 0 and alone > 0
    assert f"Optimised as members of their group: {members} resources" in summary
    assert f"Measured, not optimised: {alone} resources" in summary


class _BrokenMetrics(DemoSourceResource):
    """The demo source, but the metrics API fails with a long, multi-line error."""

    def get_collector(self):
        collector = super().get_collector()

        def fail(account_id, day):
            raise RuntimeError("CloudWatch refused GetMetricData for 123456789012: throttled\n" + "detail line\n" * 30)

        collector.collect_metrics = fail
        return collector


class _Counter(ProgressTracker):
    def __init__(self) -> None:
        self.total, self.done = 0, 0

    def start(self, total: int) -> None:
        self.total = total

    def advance(self) -> None:
        self.done += 1


def test_a_failed_partition_gives_one_line_and_its_full_error_in_a_log_file(fresh_home: Settings) -> None:
    day = DemoCollector().days[0]
    tracker = _Counter()
    result = run_range(
        day, day, [DEMO_ACCOUNTS[0]], settings=fresh_home, source=_BrokenMetrics(), progress=lambda _: None,
        tracker=tracker,
    )  # fmt: skip
    assert tracker.total == tracker.done == 3  # the account-day, the plan (skipped) and the warehouse
    [failure] = result.failed
    assert "\n" not in failure.error
    assert "CloudWatch refused GetMetricData for 123456789012: throttled" in failure.error
    log = failure_log(fresh_home, failure.run_id)
    assert str(log) in failure.error
    text = log.read_text()
    assert ("detail line" in text and "Traceback" in text) or "File " in text
