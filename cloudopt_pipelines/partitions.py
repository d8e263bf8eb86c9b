"""Partitions: every account x UTC day, and UTC days alone for the cross-account plan.

The assets are declared with the deployment partitions (daily from ``START_DATE``, open-ended). The
demo environment has a window of its own: its partitions start on the embedded data's first day and
end after its last (``demo_partitions``), and ``build_definitions`` swaps them in with
``with_partitions``, so the UI shows the demo's days only and a backfill cannot ask for a day the
demo has no data for.
"""

from dataclasses import dataclass
from datetime import date, timedelta

import dagster as dg

from cloudopt_pipelines.settings import START_DATE

ACCOUNTS_PARTITIONS_NAME = "accounts"

account_partitions = dg.DynamicPartitionsDefinition(name=ACCOUNTS_PARTITIONS_NAME)
daily_partitions = dg.DailyPartitionsDefinition(start_date=START_DATE, timezone="UTC")
account_daily_partitions = dg.MultiPartitionsDefinition({"account": account_partitions, "date": daily_partitions})


@dataclass(frozen=True)
class Partitions:
    """The two partition sets of one environment: UTC days, and account x UTC day."""

    daily: dg.DailyPartitionsDefinition
    account_daily: dg.MultiPartitionsDefinition

    @property
    def first_day(self) -> date:
        return date.fromisoformat(self.daily.get_first_partition_key())

    @property
    def last_day(self) -> date | None:
        """The last complete UTC day with a partition (None before the first day has ended)."""
        key = self.daily.get_last_partition_key()
        return date.fromisoformat(key) if key else None


DEPLOYMENT_PARTITIONS = Partitions(daily_partitions, account_daily_partitions)


def window_partitions(first: date, last: date) -> Partitions:
    """Partitions of the days ``first`` to ``last`` (inclusive) only."""
    daily = dg.DailyPartitionsDefinition(
        start_date=first.isoformat(), end_date=(last + timedelta(days=1)).isoformat(), timezone="UTC"
    )
    return Partitions(daily, dg.MultiPartitionsDefinition({"account": account_partitions, "date": daily}))


def demo_partitions() -> Partitions:
    """The demo's partitions: the days of the embedded demo data, no others."""
    from cloudopt_pipelines.sources.demo import DemoCollector

    days = DemoCollector().days
    return window_partitions(days[0], days[-1])


def with_partitions(assets: list[dg.AssetsDefinition], partitions: Partitions) -> list[dg.AssetsDefinition]:
    """The assets with the deployment partitions replaced by ``partitions`` (the partition mappings stay:
    a trailing window or across-accounts mapping reads the same on any daily partition set)."""
    if partitions == DEPLOYMENT_PARTITIONS:
        return assets

    def remap(spec: dg.AssetSpec) -> dg.AssetSpec:
        if spec.partitions_def == account_daily_partitions:
            return spec.replace_attributes(partitions_def=partitions.account_daily)
        if spec.partitions_def == daily_partitions:
            return spec.replace_attributes(partitions_def=partitions.daily)
        return spec

    return [a.map_asset_specs(remap) for a in assets]


def account_day_key(account_id: str, day: date | str) -> dg.MultiPartitionKey:
    """The partition key of one account on one day."""
    return dg.MultiPartitionKey({"account": account_id, "date": day if isinstance(day, str) else day.isoformat()})


def split_account_day(context: dg.AssetExecutionContext) -> tuple[str, date]:
    """The account id and day of the partition an asset is materialising."""
    key = context.partition_key
    if not isinstance(key, dg.MultiPartitionKey):
        raise ValueError(f"expected an account x date partition key, got {key!r}")
    dims = key.keys_by_dimension
    return dims["account"], date.fromisoformat(dims["date"])


def account_days_of_run(context: dg.AssetExecutionContext) -> list[tuple[str, date]]:
    """(account id, day) of every partition the run materialises: one, or a backfill run's range."""
    out = []
    for key in context.partition_keys:
        if not isinstance(key, dg.MultiPartitionKey):
            key = account_daily_partitions.get_partition_key_from_str(str(key))
        dims = key.keys_by_dimension
        out.append((dims["account"], date.fromisoformat(dims["date"])))
    return out
