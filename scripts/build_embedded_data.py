"""Rebuild the data embedded in the package from the public files in ``../shared/data``.

Only ship-ok files are read (see ``cloudopt_pipelines/demo/data/README.md`` for the licences).
Usage: ``python scripts/build_embedded_data.py [--shared ../shared/data]``. The output is
deterministic: the same input files give byte-identical Parquet.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
PRICING_OUT = REPO / "cloudopt_pipelines" / "catalog" / "data"
DEMO_OUT = REPO / "cloudopt_pipelines" / "demo" / "data"

DEMO_START = datetime(2026, 11, 16, tzinfo=UTC)  # a Monday
DEMO_DAYS = 14
STEPS = DEMO_DAYS * 288

PRICING_FILES = {
    "moto_instance_types": "moto_instance_types_flat.csv",
    "moto_offerings": "moto_instance_type_offerings_by_region.csv",
    "ondemand_2026": "karpenter_initial_ondemand_prices.csv",
    "spot_advisor": "spot_advisor_flat.csv",
    "prices_2017": "ec2_prices_long_2017-11-12.csv",
}

ACCOUNTS = {
    "123456789012": {"name": "retail-prod", "regions": ["us-east-1"]},
    "210987654321": {"name": "analytics", "regions": ["us-east-1", "us-west-2"]},
}

# (name, instance_type, env, team, service, has_cwagent, extra tags)
STANDALONE = [
    ("checkout-api-1", "m5.2xlarge", "prod", "payments", "checkout", True, {}),
    ("checkout-api-2", "m5.2xlarge", "prod", "payments", "checkout", True, {"cloudopt:protect": "true"}),
    ("ledger-db", "r5.2xlarge", "prod", "payments", "ledger", True, {"criticality": "production-critical"}),
    ("search-indexer", "c5.4xlarge", "prod", "search", "indexer", False, {}),
    ("reports-worker", "m5.xlarge", "staging", "finance", "reports", True, {}),
    ("ci-runner", "c5.2xlarge", "dev", "platform", "ci", False, {"workload": "stateless"}),
    ("bastion", "t3.large", "prod", "platform", "bastion", False, {}),
    ("feature-store", "r5.xlarge", "staging", "ml", "features", True, {}),
    ("sandbox-jupyter", "m5.4xlarge", "dev", "ml", "notebooks", True, {"tz": "America/New_York"}),
    ("legacy-cron", "m4.xlarge", "dev", "platform", "cron", False, {"workload": "fault-tolerant"}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    args = parser.parse_args()
    shared: Path = args.shared
    if not shared.exists():
        raise SystemExit(f"shared data not found at {shared}; pass --shared PATH")
    con = duckdb.connect()
    build_pricing(con, shared / "pricing")
    build_eni_limits()
    build_demo(con, shared / "vm_traces")
    print(f"wrote {PRICING_OUT} and {DEMO_OUT}")


def build_pricing(con: duckdb.DuckDBPyConnection, pricing: Path) -> None:
    PRICING_OUT.mkdir(parents=True, exist_ok=True)
    for name, filename in PRICING_FILES.items():
        src = pricing / filename
        query = f"SELECT * FROM read_csv_auto('{src}', header=true, all_varchar=true)"
        if name == "spot_advisor":
            query += " WHERE os = 'Linux'"
        if name == "prices_2017":
            query += " WHERE os = 'linux'"
        table = con.sql(query + " ORDER BY ALL").to_arrow_table()
        if not isinstance(table, pa.Table):
            table = table.read_all()
        pq.write_table(table, PRICING_OUT / f"{name}.parquet", compression="zstd", compression_level=19)


def build_eni_limits() -> None:
    """Network interfaces and IPv4 addresses per interface of every type, from moto's copy of real
    DescribeInstanceTypes output (the flattened CSV leaves NetworkInfo out): the max pods of an EKS node."""
    import gzip
    from importlib import resources as ir

    src = ir.files("moto.ec2.resources") / "instance_types.json.gz"
    with src.open("rb") as fh:
        types = json.loads(gzip.decompress(fh.read()))
    rows = sorted(
        (
            name,
            int(info["NetworkInfo"]["MaximumNetworkInterfaces"]),
            int(info["NetworkInfo"]["Ipv4AddressesPerInterface"]),
        )
        for name, info in types.items()
        if (info.get("NetworkInfo") or {}).get("MaximumNetworkInterfaces")
    )
    table = pa.table(
        {
            "instance_type": [r[0] for r in rows],
            "max_network_interfaces": pa.array([r[1] for r in rows], pa.int32()),
            "ipv4_addresses_per_interface": pa.array([r[2] for r in rows], pa.int32()),
        }
    )
    pq.write_table(table, PRICING_OUT / "eni_limits.parquet", compression="zstd", compression_level=19)


def build_demo(con: duckdb.DuckDBPyConnection, traces: Path) -> None:
    DEMO_OUT.mkdir(parents=True, exist_ok=True)
    azure = traces / "azure_v1_100vms_cpu_5min_long.csv.gz"
    gcd = traces / "gcd_vms_cpu_mem_5min_long.csv.gz"
    azure_vms = [
        r[0] for r in con.sql(f"SELECT DISTINCT vm_id FROM read_csv_auto('{azure}') ORDER BY vm_id").fetchall()
    ]
    gcd_vms = [
        r[0]
        for r in con.sql(
            f"SELECT vm_id FROM read_csv_auto('{gcd}') GROUP BY vm_id HAVING count(*) = 288 "
            "AND max(mem_util_pct) > 5 ORDER BY vm_id"
        ).fetchall()
    ]
    fleet, assignments = demo_fleet(azure_vms, gcd_vms)
    (DEMO_OUT / "fleet.json").write_text(json.dumps(fleet, indent=1, sort_keys=True) + "\n")

    con.execute("CREATE TABLE assign (resource_id VARCHAR, account_id VARCHAR, azure_vm VARCHAR, gcd_vm VARCHAR)")
    con.executemany("INSERT INTO assign VALUES (?, ?, ?, ?)", assignments)
    start = DEMO_START.strftime("%Y-%m-%d %H:%M:%S")
    metrics = con.sql(
        f"""
        WITH az AS (
            SELECT CAST(vm_id AS VARCHAR) AS vm_id, step_5min, avg_cpu_pct, max_cpu_pct
            FROM read_csv_auto('{azure}') WHERE step_5min < {STEPS}
        ), g AS (
            SELECT vm_id, step_5min, mem_util_pct FROM read_csv_auto('{gcd}')
        )
        SELECT a.account_id, a.resource_id,
               TIMESTAMPTZ '{start}+00' + to_minutes(CAST(az.step_5min * 5 AS BIGINT)) AS ts,
               round(az.avg_cpu_pct, 4) AS cpu_pct,
               round(az.max_cpu_pct, 4) AS cpu_max_pct,
               round(g.mem_util_pct, 4) AS mem_pct
        FROM assign a
        JOIN az ON az.vm_id = a.azure_vm
        LEFT JOIN g ON g.vm_id = a.gcd_vm AND g.step_5min = az.step_5min % 288
        ORDER BY a.account_id, a.resource_id, ts
        """
    ).to_arrow_table()
    if not isinstance(metrics, pa.Table):
        metrics = metrics.read_all()
    pq.write_table(metrics, DEMO_OUT / "metrics.parquet", compression="zstd", compression_level=19)


def demo_fleet(azure_vms: list[str], gcd_vms: list[str]) -> tuple[dict, list[tuple]]:
    """The demo fleet: what runs in each account, and which real trace each instance replays."""
    azure_iter = iter(azure_vms)
    gcd_iter = iter(gcd_vms[::37])
    assignments: list[tuple] = []
    accounts: list[dict] = []
    launch = (DEMO_START - timedelta(days=200)).isoformat()

    for a_index, (account_id, meta) in enumerate(ACCOUNTS.items()):
        region = meta["regions"][0]
        instances: list[dict] = []

        def instance(
            name: str,
            itype: str,
            tags: dict,
            cwagent: bool,
            zone_suffix: str = "a",
            rgn: str = region,
            account_id: str = account_id,
            instances: list[dict] = instances,
            prefix: int = a_index + 1,
        ) -> dict:
            rid = f"i-{prefix:02x}{len(instances) + 1:015x}"
            gcd_vm = next(gcd_iter) if cwagent else None
            assignments.append((rid, account_id, next(azure_iter), gcd_vm))
            row = {
                "resource_id": rid,
                "instance_type": itype,
                "region": rgn,
                "zone": f"{rgn}{zone_suffix}",
                "state": "running",
                "platform": "linux",
                "lifecycle": "on-demand",
                "launch_time": launch,
                "cwagent": cwagent,
                "tags": {"Name": name, **tags},
            }
            instances.append(row)
            return row

        for i, (name, itype, env, team, service, cwagent, extra) in enumerate(STANDALONE):
            rgn = meta["regions"][i % len(meta["regions"])] if a_index == 1 else region
            tags = {"env": env, "team": team, "service": service, **extra}
            instance(f"{meta['name']}-{name}", itype, tags, cwagent, "abc"[i % 3], rgn)

        asg = f"{meta['name']}-web-asg"
        for i in range(3):
            tags = {"env": "prod", "team": "web", "service": "storefront", "aws:autoscaling:groupName": asg}
            instance(f"{asg}-{i}", "m5.large", tags, True, "abc"[i])
        eks = f"{meta['name']}-eks"
        for i in range(3):
            tags = {
                "env": "prod",
                "team": "platform",
                "service": "kubernetes",
                "eks:cluster-name": eks,
                "eks:nodegroup-name": "general",
                f"kubernetes.io/cluster/{eks}": "owned",
                "aws:autoscaling:groupName": f"eks-general-{eks}",
            }
            instance(f"{eks}-general-{i}", "m5.2xlarge", tags, True, "abc"[i])
        ecs = f"{meta['name']}-ecs"
        for i in range(2):
            tags = {"env": "staging", "team": "batch", "service": "jobs", "aws:ecs:clusterName": ecs}
            instance(f"{ecs}-{i}", "c5.xlarge", tags, False, "ab"[i])
        job_flow = f"j-{a_index + 1}DEMO{account_id[-6:]}"
        for i, (role, itype) in enumerate((("MASTER", "m5.xlarge"), ("CORE", "r5.2xlarge"), ("CORE", "r5.2xlarge"))):
            tags = {
                "env": "prod",
                "team": "data",
                "service": "etl",
                "aws:elasticmapreduce:job-flow-id": job_flow,
                "aws:elasticmapreduce:instance-group-role": role,
            }
            instance(f"{meta['name']}-emr-{role.lower()}-{i}", itype, tags, False)

        groups = [
            {"resource_kind": "asg", "resource_id": asg, "min": 2, "desired": 3, "max": 6, "instance_type": "m5.large"},
            {"resource_kind": "eks_cluster", "resource_id": eks, "version": "1.31"},
            {
                "resource_kind": "eks_nodegroup",
                "resource_id": f"{eks}/general",
                "parent_id": eks,
                "instance_type": "m5.2xlarge",
                "min": 3,
                "desired": 3,
                "max": 10,
                "capacity_type": "ON_DEMAND",
            },
            {"resource_kind": "ecs_cluster", "resource_id": ecs, "container_instances": 2},
            {
                "resource_kind": "ecs_service",
                "resource_id": f"{ecs}/nightly-jobs",
                "parent_id": ecs,
                "desired_count": 4,
                "running_count": 4,
                "launch_type": "EC2",
            },
            {
                "resource_kind": "emr_cluster",
                "resource_id": job_flow,
                "name": f"{meta['name']}-etl",
                "market": "ON_DEMAND",
                "master_count": 1,
                "core_count": 2,
                "task_count": 0,
                "state": "WAITING",
            },
        ]
        attached = instances[0]["resource_id"]
        volumes = [
            {
                "resource_kind": "ebs_volume",
                "resource_id": f"vol-{a_index + 1:02x}{1:015x}",
                "volume_type": "gp3",
                "size_gib": 200,
                "iops": 3000,
                "attached_to": attached,
                "zone_suffix": "a",
            },
            {
                "resource_kind": "ebs_volume",
                "resource_id": f"vol-{a_index + 1:02x}{2:015x}",
                "volume_type": "gp2",
                "size_gib": 500,
                "iops": 1500,
                "attached_to": None,
                "zone_suffix": "b",
            },
            {
                "resource_kind": "elastic_ip",
                "resource_id": f"eipalloc-{a_index + 1:02x}{1:015x}",
                "public_ip": f"198.51.100.{10 + a_index}",
                "associated_with": None,
            },
        ]
        accounts.append(
            {
                "account_id": account_id,
                "name": meta["name"],
                "regions": meta["regions"],
                "instances": instances,
                "groups": groups,
                "other": volumes,
            }
        )
    fleet = {
        "start": DEMO_START.date().isoformat(),
        "days": DEMO_DAYS,
        "accounts": accounts,
    }
    return fleet, assignments


if __name__ == "__main__":
    main()
