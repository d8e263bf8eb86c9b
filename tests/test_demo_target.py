"""`cloudopt execute --demo-target` on the demo: approve, dry run, apply and rollback through the command line,
each in a process of its own, against the demo's local AWS (a moto server seeded with the demo fleet) with
no AWS credentials anywhere in the environment."""

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from cloudopt_pipelines.demo.aws_target import ENDPOINT_FILE, target_dir
from cloudopt_pipelines.settings import Settings
from tests.conftest import DEMO_DAYS

DAY = DEMO_DAYS[-1]
VOLUME = "vol-01000000000000002"  # the demo's unattached 500 GiB gp2 volume


@pytest.fixture
def home(demo_home: Settings, tmp_path: Path) -> Iterator[Path]:
    """A private copy of the demo home (its plan, instance and lake); the demo target stopped afterwards."""
    copy = tmp_path / "home"
    shutil.copytree(demo_home.home, copy)
    yield copy
    cli(copy, "demo-target", "--stop")


def cli(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k not in ("CI", "CLOUDOPT_EXECUTOR_ROLE")
    }
    env |= {
        "CLOUDOPT_HOME": str(home),
        "CLOUDOPT_ENV": "demo",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    return subprocess.run(
        [sys.executable, "-m", "cloudopt_pipelines.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def ec2_of(home: Path):
    url = json.loads((target_dir(home) / ENDPOINT_FILE).read_text())["url"]
    return boto3.client(
        "ec2", endpoint_url=url, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="y"
    )


def volumes(home: Path) -> dict[str, dict]:
    return {v["VolumeId"]: v for v in ec2_of(home).describe_volumes()["Volumes"]}


def test_approve_dry_run_apply_and_rollback_on_the_demo_target(home: Path) -> None:
    listed = cli(home, "approve", "--date", DAY.isoformat(), "--list", "--json")
    assert listed.returncode == 0, listed.stderr[-2000:]
    [action] = [a for a in json.loads(listed.stdout) if a["resource_id"] == VOLUME]
    assert action["action"] == "delete_volume"
    action_id = action["action_id"]
    approved = cli(home, "approve", "--date", DAY.isoformat(), "--actions", action_id, "--by", "dana")
    assert approved.returncode == 0, approved.stderr[-2000:]

    dry = cli(home, "execute", "--date", DAY.isoformat(), "--demo-target")
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert "demo AWS target: http://127.0.0.1:" in dry.stderr
    line = next(x for x in dry.stdout.splitlines() if x.startswith(action_id))
    assert "would_apply" in line
    # The target holds the demo fleet under its own ids, and a dry run changed nothing there.
    ec2 = ec2_of(home)
    ids = {i["InstanceId"] for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]}
    assert {"i-01000000000000001", "i-0100000000000000a"} <= ids
    assert volumes(home)[VOLUME]["State"] == "available" and volumes(home)[VOLUME]["Size"] == 500

    applied = cli(home, "execute", "--date", DAY.isoformat(), "--demo-target", "--mode", "apply")
    assert applied.returncode == 0, applied.stderr[-2000:]
    line = next(x for x in applied.stdout.splitlines() if x.startswith(action_id))
    assert "applied" in line and "verified" in line
    assert VOLUME not in volumes(home)  # deleted, after a snapshot, on the server the next command reaches

    dry_back = cli(home, "rollback", action_id, "--by", "dana", "--demo-target")
    assert dry_back.returncode == 0, dry_back.stderr[-2000:]
    assert "would_apply" in dry_back.stdout and "ec2:CreateVolume" in dry_back.stdout
    back = cli(home, "rollback", action_id, "--by", "dana", "--demo-target", "--mode", "apply")
    assert back.returncode == 0, back.stderr[-2000:]
    assert back.stdout.startswith("rolled_back:")
    restored = [
        v for v in volumes(home).values() if {"Key": "cloudopt:restored-from", "Value": VOLUME} in v.get("Tags", [])
    ]
    assert len(restored) == 1 and restored[0]["Size"] == 500 and restored[0]["SnapshotId"]


def test_the_demo_target_is_refused_outside_the_demo(tmp_path: Path) -> None:
    proc = cli(tmp_path, "demo-target")
    assert proc.returncode == 0  # the demo (CLOUDOPT_ENV=demo) starts it
    cli(tmp_path, "demo-target", "--stop")
    env_aws = subprocess.run(
        [sys.executable, "-m", "cloudopt_pipelines.cli", "execute", "--date", DAY.isoformat(), "--demo-target"],
        env={**os.environ, "CLOUDOPT_HOME": str(tmp_path), "CLOUDOPT_ENV": "aws"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert env_aws.returncode == 2
    assert "error: --demo-target acts on the demo fleet" in env_aws.stderr
