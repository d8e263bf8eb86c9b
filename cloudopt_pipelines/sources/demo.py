"""The embedded demo fleet: two accounts replaying real public VM traces for fourteen days.

The fleet (``demo/data/fleet.json``) and its metrics (``demo/data/metrics.parquet``) are built by
``scripts/build_embedded_data.py`` from ship-ok public traces; ``demo/data/README.md`` says which.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from cloudopt_pipelines.sources.base import (
    Collected,
    classify_deployment,
    tag_columns,
)
from cloudopt_pipelines.storage.schemas import CLUSTER_METRICS_5M, RESOURCES, UTILIZATION_5M, conform, empty_table
from cloudopt_pipelines.vocabulary import CLUSTER_TAG_KEY

DEMO_DATA = Path(str(resources.files("cloudopt_pipelines.demo") / "data"))


class DemoDataError(ValueError):
    """A request the embedded demo data cannot answer (unknown account, day outside the demo)."""


class DemoCollector:
    """Serves the embedded demo fleet through the same interface as the AWS collector."""

    name = "demo"

    def __init__(self, data_dir: Path = DEMO_DATA) -> None:
        self.data_dir = data_dir

    @cached_property
    def fleet(self) -> dict[str, Any]:
        return json.loads((self.data_dir / "fleet.json").read_text())

    @property
    def first_day(self) -> date:
        return date.fromisoformat(self.fleet["start"])

    @property
    def days(self) -> list[date]:
        return [self.first_day + timedelta(days=i) for i in range(int(self.fleet["days"]))]

    def list_accounts(self) -> list[str]:
        return sorted(a["account_id"] for a in self.fleet["accounts"])

    def list_account_statuses(self) -> dict[str, str]:
        return {account: "ACTIVE" for account in self.list_accounts()}

    def collect_cluster_metrics(self, account_id: str, day: date) -> Collected:
        """No public trace has ECS or EMR CloudWatch series, so the demo has none (an empty partition)."""
        self._account(account_id, day)
        return Collected(empty_table(CLUSTER_METRICS_5M), {"series": 0, "note": "no ship-ok cluster trace"})

    def _account(self, account_id: str, day: date) -> dict[str, Any]:
        if day not in self.days:
            raise DemoDataError(
                f"the demo data covers {self.days[0]} to {self.days[-1]}, not {day}; "
                "pick dates in that range, or set CLOUDOPT_ENV=aws to collect from real accounts"
            )
        for account in self.fleet["accounts"]:
            if account["account_id"] == account_id:
                return account
        raise DemoDataError(
            f"account {account_id} is not in the demo fleet (accounts: {', '.join(self.list_accounts())})"
        )

    def collect_inventory(self, account_id: str, day: date) -> Collected:
        account = self._account(account_id, day)
        rows: list[dict[str, Any]] = []
        base = {
            "account_id": account_id,
            "date": day,
            "source": self.name,
            "platform": None,
            "architecture": None,
            "lifecycle": None,
            "launch_time": None,
            "state": None,
            "instance_type": None,
            "zone": None,
            "parent_id": None,
        }
        for inst in account["instances"]:
            tags = inst["tags"]
            deployment = classify_deployment(tags)
            rows.append(
                {
                    **base,
                    "resource_id": inst["resource_id"],
                    "resource_kind": "ec2_instance",
                    "deployment_type": deployment,
                    "region": inst["region"],
                    "zone": inst["zone"],
                    "instance_type": inst["instance_type"],
                    "state": inst["state"],
                    "platform": inst["platform"],
                    "architecture": "arm64" if inst["instance_type"].split(".")[0].endswith("g") else "x86_64",
                    "lifecycle": inst["lifecycle"],
                    "launch_time": datetime.fromisoformat(inst["launch_time"]).astimezone(UTC),
                    "parent_id": _parent_of(tags),
                    **tag_columns(tags),
                    "attributes": json.dumps({"cwagent_memory": inst["cwagent"]}),
                }
            )
        region = account["regions"][0]
        for item in account["groups"] + account["other"]:
            attributes = _attributes(item)
            rows.append(
                {
                    **base,
                    "resource_id": item["resource_id"],
                    "resource_kind": item["resource_kind"],
                    "deployment_type": None,
                    "region": region,
                    "zone": f"{region}{item['zone_suffix']}" if "zone_suffix" in item else None,
                    "instance_type": item.get("instance_type"),
                    "state": item.get("state", "active"),
                    "parent_id": item.get("parent_id"),
                    "name": item.get("name"),
                    "env": None,
                    "team": None,
                    "service": None,
                    "tags": "{}",
                    "attributes": json.dumps(attributes, sort_keys=True),
                }
            )
        table = pa.Table.from_pylist(rows, schema=RESOURCES) if rows else empty_table(RESOURCES)
        kinds: dict[str, int] = {}
        for row in rows:
            kinds[row["resource_kind"]] = kinds.get(row["resource_kind"], 0) + 1
        return Collected(conform(table, RESOURCES, "resources"), {"resources_by_kind": kinds})

    def collect_metrics(self, account_id: str, day: date) -> Collected:
        self._account(account_id, day)
        start = datetime.combine(day, datetime.min.time(), tzinfo=UTC)
        con = duckdb.connect()
        con.execute("SET TimeZone = 'UTC'")
        table = con.sql(
            f"""
            SELECT account_id, CAST($day AS DATE) AS date, resource_id, ts, cpu_pct, cpu_max_pct, mem_pct,
                   CAST(NULL AS DOUBLE) AS net_in_bytes, CAST(NULL AS DOUBLE) AS net_out_bytes,
                   '{self.name}' AS source
            FROM read_parquet($path)
            WHERE account_id = $account AND ts >= $start AND ts < $end
            ORDER BY resource_id, ts
            """,
            params={
                "day": day,
                "path": str(self.data_dir / "metrics.parquet"),
                "account": account_id,
                "start": start,
                "end": start + timedelta(days=1),
            },
        ).to_arrow_table()
        return Collected(
            conform(table, UTILIZATION_5M, "utilization_5m"),
            {"samples": table.num_rows, "series": len(set(table.column("resource_id").to_pylist()))},
        )


# The demo fleet file's own short keys -> the ``resources.attributes`` schema (storage/schemas.py).
_RENAMED = {
    "asg": {"min": "min_size", "desired": "desired_capacity", "max": "max_size"},
    "eks_nodegroup": {"min": "min_size", "desired": "desired_size", "max": "max_size"},
    "ecs_cluster": {"container_instances": "registered_container_instances"},
}
# Keys of the fleet file that are columns of ``resources``, not attributes.
_COLUMNS = ("resource_kind", "resource_id", "parent_id", "instance_type", "state", "name", "zone_suffix")


def _attributes(item: dict[str, Any]) -> dict[str, Any]:
    """The ``attributes`` of one demo group or other resource, in the schema every collector writes."""
    kind = item["resource_kind"]
    renamed = _RENAMED.get(kind, {})
    out = {renamed.get(k, k): v for k, v in item.items() if k not in _COLUMNS}
    if kind == "eks_nodegroup" and item.get("instance_type"):
        out["instance_types"] = [item["instance_type"]]
    if kind == "ebs_volume":
        out["attached_instances"] = [out["attached_to"]] if out.get("attached_to") else []
    if kind == "emr_cluster":
        market = out.pop("market", None)
        counts = {role: out.pop(f"{role.lower()}_count", 0) for role in ("MASTER", "CORE", "TASK")}
        out.update(
            cluster_id=item["resource_id"],
            instance_collection_type="INSTANCE_GROUP",
            idle=item.get("state") == "WAITING",
            instance_groups=[
                {"role": role, "instance_type": None, "market": market, "requested": n, "running": n, "state": None}
                for role, n in counts.items()
                if n
            ],
        )
    return out


def _parent_of(tags: dict[str, str]) -> str | None:
    for key in (
        "aws:elasticmapreduce:job-flow-id",
        "eks:cluster-name",
        "aws:ecs:clusterName",
        CLUSTER_TAG_KEY,
        "aws:autoscaling:groupName",
    ):
        if key in tags:
            return tags[key]
    return None
