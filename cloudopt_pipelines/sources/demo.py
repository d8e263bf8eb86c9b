"""The embedded demo fleet: two accounts replaying real public VM traces for fourteen days.

The fleet (``demo/data/fleet.json``) and its metrics (``demo/data/metrics.parquet``) are built by
``scripts/build_embedded_data.py`` from ship-ok public traces; ``demo/data/README.md`` says which.
"""

from __future__ import annotations

import functools
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
        """ECS and EMR CloudWatch series shaped by the real traces of the clusters' own nodes
        (``demo_cluster_series``; no public trace has ECS or EMR series themselves)."""
        account = self._account(account_id, day)
        table = demo_cluster_series(account, self._node_series(account_id, day))
        series = len({(r["resource_id"], r["metric"]) for r in table.to_pylist()})
        return Collected(
            conform(table, CLUSTER_METRICS_5M, "cluster_metrics_5m"),
            {"series": series, "note": "shaped by the cluster nodes' real CPU traces (demo/data/README.md)"},
        )

    def _node_series(self, account_id: str, day: date) -> dict[str, list[tuple[datetime, float | None, float | None]]]:
        table = self.collect_metrics(account_id, day).table
        out: dict[str, list[tuple[datetime, float | None, float | None]]] = {}
        for r in table.select(["resource_id", "ts", "cpu_pct", "mem_pct"]).to_pylist():
            out.setdefault(r["resource_id"], []).append((r["ts"], r["cpu_pct"], r["mem_pct"]))
        return out

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
        rows = with_demo_cluster_details(account, rows)
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


# ------------------------------------------------------------------------------ demo clusters (issue 14)

#: The demo ECS service's task definition (the fleet file has no task sizes): 1 vCPU / 2 GiB on EC2.
DEMO_ECS_TASK = {"cpu": 1024, "memory": 2048, "revision": 3}
#: A 5-minute slot of a demo EMR cluster runs a YARN application when its core nodes' mean CPU is above this.
DEMO_EMR_BUSY_CPU_PCT = 8.0
DEMO_EMR_APPLICATIONS = ["Hadoop", "Spark"]


def with_demo_cluster_details(account: dict[str, Any], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the AWS collector reads with DescribeTaskDefinition, ListTasks and ListInstanceGroups, for the
    demo's ECS and EMR clusters: task sizes and running tasks, and the instance type of each EMR group
    (from its member instances' role tags)."""
    members: dict[str, list[dict[str, Any]]] = {}
    for inst in account["instances"]:
        parent = _parent_of(inst["tags"])
        if parent:
            members.setdefault(parent, []).append(inst)
    out = []
    for row in rows:
        kind = row["resource_kind"]
        if kind not in ("ecs_service", "ecs_cluster", "emr_cluster"):
            out.append(row)
            continue
        attributes = json.loads(row["attributes"])
        if kind == "ecs_service":
            name = row["resource_id"].rsplit("/", 1)[-1]
            attributes.update(
                task_definition=f"{name}:{DEMO_ECS_TASK['revision']}",
                task_definition_revision=f"{name}:{DEMO_ECS_TASK['revision']}",
                task_cpu=DEMO_ECS_TASK["cpu"],
                task_memory=DEMO_ECS_TASK["memory"],
                requires_compatibilities=["EC2"],
                scheduling_strategy="REPLICA",
                tasks_seen=attributes.get("running_count"),
            )
        elif kind == "ecs_cluster":
            nodes = sorted(members.get(row["resource_id"], []), key=lambda i: i["resource_id"])
            services = [
                g
                for g in account["groups"]
                if g["resource_kind"] == "ecs_service" and g.get("parent_id") == row["resource_id"]
            ]
            tasks = []
            for svc in services:
                name = svc["resource_id"].rsplit("/", 1)[-1]
                for k in range(int(svc.get("running_count") or 0)):
                    tasks.append(
                        {
                            "task_definition": f"{name}:{DEMO_ECS_TASK['revision']}",
                            "cpu": DEMO_ECS_TASK["cpu"],
                            "memory": DEMO_ECS_TASK["memory"],
                            "launch_type": "EC2",
                            "capacity_provider": None,
                            "container_instance": nodes[k % len(nodes)]["resource_id"] if nodes else None,
                            "group": f"service:{name}",
                            "started_by": "ecs-svc",
                            "zone": nodes[k % len(nodes)]["zone"] if nodes else None,
                        }
                    )
            attributes["tasks"] = tasks
            attributes["container_instances_seen"] = len(nodes)
        else:
            types = {
                i["tags"].get("aws:elasticmapreduce:instance-group-role"): i["instance_type"]
                for i in members.get(row["resource_id"], [])
            }
            for g in attributes.get("instance_groups") or []:
                g["instance_type"] = g.get("instance_type") or types.get(g["role"])
                g["id"] = f"ig-{g['role'].lower()}-{row['resource_id']}"
            attributes.update(applications=DEMO_EMR_APPLICATIONS, steps=[], steps_running=0)
        out.append({**row, "attributes": json.dumps(attributes, sort_keys=True)})
    return out


def demo_cluster_series(
    account: dict[str, Any], nodes: dict[str, list[tuple[datetime, float | None, float | None]]]
) -> pa.Table:
    """CloudWatch series of the demo's ECS and EMR clusters for one day, each shaped by real traces:

    - ECS cluster CPUUtilization: the mean CPU of its container instances (their Azure traces);
      MemoryUtilization: the account's first memory trace (Google cluster-data, as the agent reports it);
      CPUReservation / MemoryReservation: its services' tasks over the nodes' capacity;
    - ECS service CPUUtilization: the cluster's CPU use over the service's share of the reservation
      (ECS reports use against what the tasks reserve); MemoryUtilization the memory trace;
    - EMR YARNMemoryAvailablePercentage: 100 minus the core nodes' mean CPU; IsIdle 1 and AppsRunning 0 in
      the slots where that mean is under ``DEMO_EMR_BUSY_CPU_PCT``; ContainerPending 0.
    """
    specs = _instance_specs()
    members: dict[str, list[dict[str, Any]]] = {}
    for inst in account["instances"]:
        parent = _parent_of(inst["tags"])
        if parent:
            members.setdefault(parent, []).append(inst)
    memory = next(
        (nodes[i["resource_id"]] for i in account["instances"] if i.get("cwagent") and i["resource_id"] in nodes), []
    )
    mem_at = {ts: m for ts, _, m in memory}
    rows: list[dict[str, Any]] = []

    def put(rid: str, namespace: str, metric: str, ts: datetime, value: float | None) -> None:
        if value is not None:
            rows.append(
                {
                    "account_id": account["account_id"],
                    "date": ts.date(),
                    "resource_id": rid,
                    "ts": ts,
                    "namespace": namespace,
                    "metric": metric,
                    "stat": "Average",
                    "value": float(value),
                    "source": "demo",
                }
            )

    def mean_cpu(insts: list[dict[str, Any]]) -> dict[datetime, float]:
        by_ts: dict[datetime, list[float]] = {}
        for inst in insts:
            for ts, cpu, _ in nodes.get(inst["resource_id"], []):
                if cpu is not None:
                    by_ts.setdefault(ts, []).append(cpu)
        return {ts: sum(v) / len(v) for ts, v in by_ts.items()}

    for group in account["groups"]:
        rid = group["resource_id"]
        if group["resource_kind"] == "ecs_cluster":
            insts = members.get(rid, [])
            capacity = sum(specs.get((i["region"], i["instance_type"]), (0, 0))[0] for i in insts) * 1024
            capacity_mem = sum(specs.get((i["region"], i["instance_type"]), (0, 0))[1] for i in insts) * 1024
            services = [
                g for g in account["groups"] if g["resource_kind"] == "ecs_service" and g.get("parent_id") == rid
            ]
            reserved = sum(int(s.get("desired_count") or 0) for s in services) * DEMO_ECS_TASK["cpu"]
            reserved_mem = sum(int(s.get("desired_count") or 0) for s in services) * DEMO_ECS_TASK["memory"]
            for ts, cpu in sorted(mean_cpu(insts).items()):
                put(rid, "AWS/ECS", "CPUUtilization", ts, cpu)
                put(rid, "AWS/ECS", "MemoryUtilization", ts, mem_at.get(ts))
                if capacity:
                    put(rid, "AWS/ECS", "CPUReservation", ts, 100.0 * reserved / capacity)
                if capacity_mem:
                    put(rid, "AWS/ECS", "MemoryReservation", ts, 100.0 * reserved_mem / capacity_mem)
                for svc in services:
                    if reserved:
                        put(svc["resource_id"], "AWS/ECS", "CPUUtilization", ts, cpu * capacity / reserved)
                    put(svc["resource_id"], "AWS/ECS", "MemoryUtilization", ts, mem_at.get(ts))
        elif group["resource_kind"] == "emr_cluster":
            core = [
                i for i in members.get(rid, []) if i["tags"].get("aws:elasticmapreduce:instance-group-role") == "CORE"
            ]
            for ts, cpu in sorted(mean_cpu(core).items()):
                busy = cpu >= DEMO_EMR_BUSY_CPU_PCT
                put(rid, "AWS/ElasticMapReduce", "YARNMemoryAvailablePercentage", ts, max(0.0, 100.0 - cpu))
                put(rid, "AWS/ElasticMapReduce", "IsIdle", ts, 0.0 if busy else 1.0)
                put(rid, "AWS/ElasticMapReduce", "AppsRunning", ts, 1.0 if busy else 0.0)
                put(rid, "AWS/ElasticMapReduce", "ContainerPending", ts, 0.0)
    if not rows:
        return empty_table(CLUSTER_METRICS_5M)
    return pa.Table.from_pylist(rows, schema=CLUSTER_METRICS_5M)


@functools.cache
def _instance_specs() -> dict[tuple[str, str], tuple[float, float]]:
    """(region, instance type) -> (vCPUs, memory GiB), from the embedded price catalogue."""
    from cloudopt_pipelines.catalog.prices import build_price_catalog

    table = build_price_catalog().select(["region", "instance_type", "vcpu", "memory_gib"]).to_pylist()
    return {(r["region"], r["instance_type"]): (float(r["vcpu"]), float(r["memory_gib"])) for r in table}
