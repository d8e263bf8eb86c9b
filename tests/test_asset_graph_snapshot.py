"""The asset graph is a contract: keys, dependencies and their partition mappings, partitions, groups,
checks, tags, jobs, schedules and sensors. A change to any of them must be deliberate: regenerate the
snapshot with ``UPDATE_SNAPSHOTS=1 pytest tests/test_asset_graph_snapshot.py`` and review the diff."""

import json
import os
from pathlib import Path
from typing import Any

import dagster as dg

from cloudopt_pipelines.definitions import build_definitions
from cloudopt_pipelines.settings import Settings

SNAPSHOT = Path(__file__).parent / "snapshots" / "asset_graph.json"


def describe_partitions(pd: dg.PartitionsDefinition | None) -> Any:
    if pd is None:
        return None
    if isinstance(pd, dg.MultiPartitionsDefinition):
        return {d.name: describe_partitions(d.partitions_def) for d in pd.partitions_defs}
    if isinstance(pd, dg.DynamicPartitionsDefinition):
        return f"dynamic:{pd.name}"
    if isinstance(pd, dg.TimeWindowPartitionsDefinition):
        return f"time:{pd.cron_schedule}:{pd.timezone}"
    return type(pd).__name__


def describe_mapping(mapping: dg.PartitionMapping | None) -> str | None:
    return None if mapping is None else repr(mapping)


def graph_snapshot(defs: dg.Definitions) -> dict[str, Any]:
    graph = defs.resolve_asset_graph()
    assets: dict[str, Any] = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        deps = {}
        for parent in sorted(node.parent_keys, key=lambda k: k.to_user_string()):
            mapping = graph.get_partition_mapping(key, parent) if node.partitions_def else None
            deps[parent.to_user_string()] = describe_mapping(mapping) if graph.get(parent).partitions_def else None
        assets[key.to_user_string()] = {
            "group": node.group_name,
            "deps": deps,
            "partitions": describe_partitions(node.partitions_def),
            "tags": {k: v for k, v in sorted((node.tags or {}).items())},
            "owners": sorted(node.owners or []),
            "checks": sorted(c.name for c in node.check_keys),
            "backfill_policy": str(node.backfill_policy.policy_type) if node.backfill_policy else None,
            "automation": type(node.automation_condition).__name__ if node.automation_condition else None,
        }
    jobs = {}
    for job in sorted(defs.resolve_all_job_defs(), key=lambda j: j.name):
        if job.name.startswith("__"):
            continue
        jobs[job.name] = sorted(k.to_user_string() for k in job.asset_layer.selected_asset_keys)
    repository = defs.get_repository_def()
    schedules = {
        s.name: {"job": s.job_name, "cron": s.cron_schedule, "timezone": s.execution_timezone}
        for s in sorted(repository.schedule_defs, key=lambda s: s.name)
    }
    sensors = {
        s.name: {"type": type(s).__name__, "default_status": str(s.default_status)}
        for s in sorted(repository.sensor_defs, key=lambda s: s.name)
    }
    return {"assets": assets, "jobs": jobs, "schedules": schedules, "sensors": sensors}


def test_asset_graph_matches_snapshot(tmp_path: Path) -> None:
    defs = build_definitions(Settings(home=tmp_path / "home", env="demo"))
    current = graph_snapshot(defs)
    if os.environ.get("UPDATE_SNAPSHOTS") == "1":
        SNAPSHOT.parent.mkdir(parents=True, exist_ok=True)
        SNAPSHOT.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    expected = json.loads(SNAPSHOT.read_text())
    assert current == expected, (
        "the asset graph changed; if that is deliberate, run "
        "'UPDATE_SNAPSHOTS=1 pytest tests/test_asset_graph_snapshot.py' and commit the reviewed diff"
    )
