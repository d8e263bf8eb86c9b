"""Read-only commands start without importing Dagster, pandas or boto3: `cloudopt accounts` and `cloudopt info`
run in a subprocess, whose imported modules Python lists with ``-X importtime``."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cloudopt_pipelines.instance import ensure_instance
from cloudopt_pipelines.settings import Settings

HEAVY = ("dagster", "pandas", "boto3", "botocore", "sqlalchemy")
ACCOUNTS = ["123456789012", "210987654321", "000000000042"]  # the last one is not in the demo fleet


def _run(args: list[str], home: Path) -> tuple[subprocess.CompletedProcess, set[str]]:
    env = {**os.environ, "CLOUDOPT_HOME": str(home), "CLOUDOPT_ENV": "demo"}
    env.pop("CI", None)
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "cloudopt_pipelines.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    modules = {
        line.rsplit("|", 1)[1].strip()
        for line in proc.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    return proc, modules


def _heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in HEAVY)


@pytest.fixture
def registered_home(fresh_home: Settings) -> Settings:
    instance = ensure_instance(fresh_home)
    instance.add_dynamic_partitions("accounts", ACCOUNTS)
    instance.dispose()
    return fresh_home


def test_accounts_lists_the_instances_partitions_without_importing_dagster(registered_home: Settings) -> None:
    proc, modules = _run(["accounts", "--json"], registered_home.home)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "cloudopt_pipelines.settings" in modules  # the listing is real: the package's own modules are in it
    assert _heavy(modules) == []
    rows = json.loads(proc.stdout)
    statuses = {r["account_id"]: r["status"] for r in rows}
    assert sorted(statuses) == sorted(ACCOUNTS)
    assert statuses["123456789012"] == "ACTIVE" and statuses["000000000042"] == "UNREACHABLE"


def test_accounts_on_a_home_never_run_lists_none_and_creates_nothing(fresh_home: Settings) -> None:
    proc, modules = _run(["accounts", "--json"], fresh_home.home)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout) == [] and _heavy(modules) == []
    assert not fresh_home.dagster_home.exists()


def test_an_instance_on_other_storage_is_read_through_dagster(registered_home: Settings) -> None:
    # dagster.yaml naming its storage (as a Postgres deployment does; SQLite here, at the same files): the
    # command opens the instance through Dagster instead of reading the files itself.
    home = registered_home.dagster_home
    config = home / "dagster.yaml"
    config.write_text(config.read_text() + f"storage:\n  sqlite:\n    base_dir: {home}\n")
    proc, modules = _run(["accounts", "--json"], registered_home.home)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "dagster" in modules
    assert sorted(r["account_id"] for r in json.loads(proc.stdout)) == sorted(ACCOUNTS)


def test_info_does_not_import_dagster(fresh_home: Settings) -> None:
    proc, modules = _run(["info", "--json"], fresh_home.home)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["env"] == "demo" and _heavy(modules) == []
