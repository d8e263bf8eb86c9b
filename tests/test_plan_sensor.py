"""The plan sensor: day D is planned once every active account's recommendations for D exist, or at the
deadline with the missing accounts named, and never twice for the same inputs. Evaluated against real
Dagster instances (a persistent one per test) with an injected clock."""

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest

from cloudopt_pipelines.assets.plan import PLAN_JOB, PLAN_KEY
from cloudopt_pipelines.assets.recommendations import build_recommendation_asset
from cloudopt_pipelines.automation import PLAN_SENSOR, PlanCursor, build_plan_sensor, decide_plan, plan_deadline
from cloudopt_pipelines.definitions import build_definitions
from cloudopt_pipelines.optimizers.standalone_ec2 import StandaloneEc2Optimizer
from cloudopt_pipelines.orchestration import ensure_instance, register_accounts
from cloudopt_pipelines.partitions import account_day_key
from cloudopt_pipelines.resources.sources import DemoSourceResource
from cloudopt_pipelines.resources.storage import LakeResource
from cloudopt_pipelines.settings import Settings, load_settings, parse_plan_deadline_hours
from tests.conftest import DEMO_ACCOUNTS, DEMO_DAYS

DAY = date(2026, 11, 22)
LATE = "000000000042"  # registered, and ACTIVE in the source (_SourceWithLateAccount), but slow to report
STANDALONE = build_recommendation_asset(StandaloneEc2Optimizer())
REC = STANDALONE.key
SECOND = dg.AssetKey(["recommendations", "kubernetes"])  # a second optimiser's asset, as the factory will make
BEFORE_DEADLINE = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)
AFTER_DEADLINE = datetime(2026, 11, 23, 12, 30, tzinfo=UTC)
QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@dataclass(frozen=True)
class Tick:
    """What one evaluation asked for."""

    requests: list[dg.RunRequest]
    skip_message: str | None


class Ticker:
    """Evaluates a plan sensor tick after tick, carrying its cursor as the daemon does."""

    def __init__(
        self,
        settings: Settings,
        keys: Sequence[dg.AssetKey] = (REC,),
        now: datetime = BEFORE_DEADLINE,
        source: DemoSourceResource | None = None,
        max_requests_per_tick: int = 25,
    ) -> None:
        self.instance = ensure_instance(settings)
        self.defs = build_definitions(settings)
        self.clock = Clock(now)
        self.sensor = build_plan_sensor(
            list(keys), deadline=timedelta(hours=12), clock=self.clock, max_requests_per_tick=max_requests_per_tick
        )
        self.source = source or _SourceWithLateAccount()
        self.cursor: str | None = None

    def tick(self, reset: bool = False) -> Tick:
        context = dg.build_sensor_context(
            instance=self.instance,
            cursor=None if reset else self.cursor,
            resources={"source": self.source},
            repository_def=self.defs.get_repository_def(),
        )
        result = self.sensor.evaluate_tick(context)
        if not reset:
            self.cursor = result.cursor
        return Tick(list(result.run_requests or []), result.skip_message)


class _SourceWithLateAccount(DemoSourceResource):
    """The demo source, where account LATE exists too (ACTIVE) but has no data: a late account."""

    def get_collector(self):
        collector = super().get_collector()
        statuses = {**collector.list_account_statuses(), LATE: "ACTIVE"}
        collector.list_account_statuses = lambda: statuses
        return collector


def test_an_account_the_source_does_not_reach_is_not_waited_for(fresh_home: Settings) -> None:
    ticker = Ticker(fresh_home, source=DemoSourceResource())  # the demo source does not know LATE
    register_accounts(ticker.instance, [*DEMO_ACCOUNTS, LATE])
    recommend(ticker.instance, DEMO_ACCOUNTS)
    [request] = ticker.tick().requests
    assert request.tags["cloudopt/plan_trigger"] == "all_accounts"


def recommend(instance: dg.DagsterInstance, accounts: Sequence[str], day: date = DAY, key: dg.AssetKey = REC) -> None:
    """Record a materialisation of ``key`` for each account on ``day`` (the event the sensor reads)."""
    for account in accounts:
        instance.report_runless_asset_event(dg.AssetMaterialization(key, partition=str(account_day_key(account, day))))


def planned(instance: dg.DagsterInstance, day: date = DAY) -> None:
    instance.report_runless_asset_event(dg.AssetMaterialization(PLAN_KEY, partition=day.isoformat()))


def test_every_active_account_present_gives_one_plan_request(fresh_home: Settings) -> None:
    ticker = Ticker(fresh_home)
    register_accounts(ticker.instance, DEMO_ACCOUNTS)
    recommend(ticker.instance, DEMO_ACCOUNTS)
    [request] = ticker.tick().requests
    assert request.partition_key == DAY.isoformat()
    assert request.run_key.startswith(f"plan|{DAY}|")
    assert request.tags["cloudopt/plan_trigger"] == "all_accounts"
    assert request.tags["dagster/sensor_name"] == PLAN_SENSOR
    assert request.job_name in (None, PLAN_JOB)
    assert not ticker.tick().requests, "the same inputs must not be planned twice"


def test_one_account_missing_waits_until_the_deadline_then_plans_without_it(fresh_home: Settings) -> None:
    ticker = Ticker(fresh_home)
    register_accounts(ticker.instance, [*DEMO_ACCOUNTS, LATE])
    recommend(ticker.instance, DEMO_ACCOUNTS)
    waiting = ticker.tick()
    assert not waiting.requests
    assert "1 day(s) waiting" in waiting.skip_message
    assert PlanCursor.parse(ticker.cursor).pending == [DAY.isoformat()]
    ticker.clock.now = plan_deadline(DAY, timedelta(hours=12)) - timedelta(seconds=1)
    assert not ticker.tick().requests

    ticker.clock.now = AFTER_DEADLINE
    [request] = ticker.tick().requests
    assert request.partition_key == DAY.isoformat()
    assert request.tags["cloudopt/plan_trigger"] == "deadline"
    assert request.tags["cloudopt/missing_account_count"] == "1"
    assert not ticker.tick().requests, "a deadline plan is requested once"
    assert PlanCursor.parse(ticker.cursor).pending == []


def test_same_inputs_give_the_same_run_key_even_after_a_cursor_reset(fresh_home: Settings) -> None:
    ticker = Ticker(fresh_home)
    register_accounts(ticker.instance, DEMO_ACCOUNTS)
    recommend(ticker.instance, DEMO_ACCOUNTS)
    [first] = ticker.tick().requests
    [again] = ticker.tick(reset=True).requests  # the plan run has not happened yet
    assert again.run_key == first.run_key  # so the daemon drops it as a duplicate
    planned(ticker.instance)
    reset = ticker.tick(reset=True)
    assert not reset.requests, "a plan newer than every input is up to date"
    assert "every day is planned" in reset.skip_message


def test_a_late_account_after_the_deadline_plan_plans_the_day_again(fresh_home: Settings) -> None:
    ticker = Ticker(fresh_home, now=AFTER_DEADLINE)
    register_accounts(ticker.instance, [*DEMO_ACCOUNTS, LATE])
    recommend(ticker.instance, DEMO_ACCOUNTS)
    [deadline_plan] = ticker.tick().requests
    planned(ticker.instance)
    assert not ticker.tick().requests

    recommend(ticker.instance, [LATE])
    [complete] = ticker.tick().requests
    assert complete.partition_key == DAY.isoformat()
    assert complete.tags["cloudopt/plan_trigger"] == "all_accounts"
    assert complete.run_key != deadline_plan.run_key


def test_a_rerun_of_an_account_replans_and_other_days_are_independent(fresh_home: Settings) -> None:
    ticker = Ticker(fresh_home)
    register_accounts(ticker.instance, DEMO_ACCOUNTS)
    earlier = DAY - timedelta(days=1)
    recommend(ticker.instance, DEMO_ACCOUNTS, day=earlier)
    recommend(ticker.instance, DEMO_ACCOUNTS[:1])
    [request] = ticker.tick().requests  # DAY still waits for its second account
    assert request.partition_key == earlier.isoformat()
    assert PlanCursor.parse(ticker.cursor).pending == [DAY.isoformat()]
    planned(ticker.instance, earlier)
    recommend(ticker.instance, DEMO_ACCOUNTS[:1], day=earlier)  # a re-run: newer inputs than the plan
    [replan] = ticker.tick().requests
    assert replan.partition_key == earlier.isoformat() and replan.run_key != request.run_key
    assert PlanCursor.parse(ticker.cursor).pending == [DAY.isoformat()]


def test_many_due_days_are_requested_newest_first_a_few_per_tick(fresh_home: Settings) -> None:
    ticker = Ticker(fresh_home, max_requests_per_tick=2)
    register_accounts(ticker.instance, DEMO_ACCOUNTS)
    days = [DAY - timedelta(days=n) for n in range(3)]
    for day in days:
        recommend(ticker.instance, DEMO_ACCOUNTS, day=day)
    first = ticker.tick().requests
    assert [r.partition_key for r in first] == [DAY.isoformat(), days[1].isoformat()]
    [last] = ticker.tick().requests
    assert last.partition_key == days[2].isoformat()
    assert not ticker.tick().requests


class _OrgWithSuspendedAccount(DemoSourceResource):
    """The demo source, but AWS Organizations reports the second account SUSPENDED."""

    def get_collector(self):
        collector = super().get_collector()
        statuses = {DEMO_ACCOUNTS[0]: "ACTIVE", DEMO_ACCOUNTS[1]: "SUSPENDED"}
        collector.list_account_statuses = lambda: statuses
        return collector


def test_a_suspended_account_is_not_waited_for(fresh_home: Settings) -> None:
    ticker = Ticker(fresh_home, source=_OrgWithSuspendedAccount())
    register_accounts(ticker.instance, DEMO_ACCOUNTS)
    recommend(ticker.instance, DEMO_ACCOUNTS[:1])
    [request] = ticker.tick().requests
    assert request.tags["cloudopt/plan_trigger"] == "all_accounts"


def test_every_recommendations_asset_must_be_there(fresh_home: Settings) -> None:
    ticker = Ticker(fresh_home, keys=[REC, SECOND])
    register_accounts(ticker.instance, DEMO_ACCOUNTS)
    recommend(ticker.instance, DEMO_ACCOUNTS)
    recommend(ticker.instance, DEMO_ACCOUNTS[:1], key=SECOND)
    assert not ticker.tick().requests, "the second optimiser has not run for one account yet"
    recommend(ticker.instance, DEMO_ACCOUNTS[1:], key=SECOND)
    [request] = ticker.tick().requests
    assert request.tags["cloudopt/plan_trigger"] == "all_accounts"


def test_a_day_with_runs_in_flight_waits_for_them_until_the_deadline(fresh_home: Settings) -> None:
    ticker = Ticker(fresh_home)
    register_accounts(ticker.instance, DEMO_ACCOUNTS)
    recommend(ticker.instance, DEMO_ACCOUNTS)
    daily = ticker.defs.resolve_job_def("daily_pipeline")
    run = ticker.instance.create_run_for_job(
        daily,
        status=dg.DagsterRunStatus.NOT_STARTED,
        tags={"dagster/partition": str(account_day_key(DEMO_ACCOUNTS[0], DAY)), "dagster/partition/date": str(DAY)},
    )
    assert not ticker.tick().requests
    ticker.instance.report_run_canceled(run)
    [request] = ticker.tick().requests
    assert request.partition_key == DAY.isoformat()

    planned(ticker.instance)
    recommend(ticker.instance, DEMO_ACCOUNTS[:1])  # a re-run landed, another is still in flight
    ticker.instance.create_run_for_job(
        daily, status=dg.DagsterRunStatus.NOT_STARTED, tags={"dagster/partition/date": str(DAY)}
    )
    assert not ticker.tick().requests
    ticker.clock.now = AFTER_DEADLINE  # a stuck run does not hold the plan past the deadline
    [replan] = ticker.tick().requests
    assert replan.run_key != request.run_key


def test_no_recommendations_keys_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="asset keys of the recommendations"):
        build_plan_sensor([])


@pytest.mark.parametrize(
    ("raw", "hours"), [("", 12.0), ("0", 0.0), ("36", 36.0), ("1.5", 1.5)], ids=["default", "zero", "36h", "frac"]
)
def test_plan_deadline_setting(raw: str, hours: float) -> None:
    assert parse_plan_deadline_hours(raw) == timedelta(hours=hours)
    assert plan_deadline(DAY, timedelta(hours=hours)) == datetime(2026, 11, 23, tzinfo=UTC) + timedelta(hours=hours)


def test_load_settings_reads_the_plan_deadline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CLOUDOPT_HOME", str(tmp_path))
    monkeypatch.setenv("CLOUDOPT_PLAN_DEADLINE_HOURS", "30")
    assert load_settings().plan_deadline == timedelta(hours=30)
    monkeypatch.delenv("CLOUDOPT_PLAN_DEADLINE_HOURS")
    assert load_settings().plan_deadline == timedelta(hours=12)


@pytest.mark.parametrize("raw", ["twelve", "-1", "nan", "1000"])
def test_a_bad_plan_deadline_names_the_setting(raw: str) -> None:
    with pytest.raises(ValueError, match="CLOUDOPT_PLAN_DEADLINE_HOURS"):
        parse_plan_deadline_hours(raw)


def test_decide_plan_without_any_input_does_nothing() -> None:
    decision = decide_plan(DAY, DEMO_ACCOUNTS, {}, [REC.to_user_string()], None, False, AFTER_DEADLINE, timedelta())
    assert decision.action == "done" and decision.run_key is None


# --- end to end: real recommendation runs, the sensor's request, the real plan run ---------------------


@pytest.fixture
def lake_home(demo_home: Settings, tmp_path: Path) -> Settings:
    """The demo lake (2 accounts x 2 days) with a fresh Dagster instance of its own."""
    settings = Settings(home=tmp_path / "home", env="demo")
    shutil.copytree(demo_home.lake_dir, settings.lake_dir)
    return settings


def materialize_recommendations(settings: Settings, instance: dg.DagsterInstance, day: date) -> None:
    for account in DEMO_ACCOUNTS:
        result = dg.materialize(
            [STANDALONE],
            partition_key=account_day_key(account, day),
            instance=instance,
            resources={"lake": LakeResource(root=str(settings.lake_dir))},
            run_config=QUIET,
        )
        assert result.success


def run_request(ticker: Ticker, request: dg.RunRequest) -> dg.ExecuteInProcessResult:
    return ticker.defs.resolve_job_def(PLAN_JOB).execute_in_process(
        instance=ticker.instance,
        partition_key=request.partition_key,
        tags={**request.tags, "dagster/run_key": request.run_key},
        run_config=QUIET,
    )


def test_the_deadline_plan_names_the_missing_account(lake_home: Settings) -> None:
    day = DEMO_DAYS[0]
    ticker = Ticker(lake_home, now=datetime.combine(day + timedelta(days=1), datetime.min.time(), UTC))
    register_accounts(ticker.instance, [*DEMO_ACCOUNTS, LATE])
    materialize_recommendations(lake_home, ticker.instance, day)
    assert not ticker.tick().requests, f"{LATE} has no recommendations and the deadline is hours away"

    ticker.clock.now = plan_deadline(day, timedelta(hours=12)) + timedelta(minutes=5)
    [request] = ticker.tick().requests
    assert request.partition_key == day.isoformat()
    result = run_request(ticker, request)
    assert result.success
    [materialization] = result.asset_materializations_for_node("plan__portfolio_plan")
    assert materialization.metadata["accounts"].value == DEMO_ACCOUNTS
    assert materialization.metadata["missing_accounts"].value == [LATE]

    assert not ticker.tick().requests, "the plan ran: nothing new to plan"
    assert not ticker.tick(reset=True).requests, "even from scratch, the plan is newer than its inputs"
