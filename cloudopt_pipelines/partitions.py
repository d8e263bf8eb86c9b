"""Partitions: every account x UTC day, and UTC days alone for the cross-account plan."""

from datetime import date

import dagster as dg

from cloudopt_pipelines.settings import START_DATE

ACCOUNTS_PARTITIONS_NAME = "accounts"

account_partitions = dg.DynamicPartitionsDefinition(name=ACCOUNTS_PARTITIONS_NAME)
daily_partitions = dg.DailyPartitionsDefinition(start_date=START_DATE, timezone="UTC")
account_daily_partitions = dg.MultiPartitionsDefinition({"account": account_partitions, "date": daily_partitions})


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
