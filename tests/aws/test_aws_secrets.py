"""No credential in any output: the `aws` environment run end to end against a moto server, through the
real command line, with recognisable fake secrets in its environment."""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import dagster as dg

from tests.aws.conftest import MANAGEMENT_ACCOUNT
from tests.aws.test_aws_assets import DAY, estate  # noqa: F401 (the module's moto estate fixture)
from tests.executor.conftest import Home, plan_row
from tests.secret_scan import scan

REPO = Path(__file__).resolve().parents[2]
SECRETS = {
    "CLOUDOPT_EXTERNAL_ID": "extid-CANARY-7f3a9c51",
    "CLOUDOPT_EXECUTOR_EXTERNAL_ID": "exec-extid-CANARY-2b8d4107",
    "AWS_SECRET_ACCESS_KEY": "awssecret-CANARY-9e6c05d2b8",
    "AWS_SESSION_TOKEN": "session-CANARY-41aa0e77",
}


def _cloudopt(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "cloudopt"), *args], cwd=REPO, env=env, capture_output=True, text=True
    )


def test_aws_run_approve_and_execute_leave_no_secret_in_any_output(
    estate: dict[str, Any],  # noqa: F811
    tmp_path: Path,
) -> None:
    home = tmp_path / "cloudopt"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("CLOUDOPT_", "DAGSTER_"))},
        **SECRETS,
        "AWS_ACCESS_KEY_ID": "testing",
        "CLOUDOPT_HOME": str(home),
        "CLOUDOPT_ENV": "aws",
        "CLOUDOPT_ACCOUNTS": MANAGEMENT_ACCOUNT,
        "CLOUDOPT_ASSUME_ROLE": "CloudoptReadOnly",
        "CLOUDOPT_EXECUTOR_ROLE": "CloudoptExecutor",
        "AWS_ENDPOINT_URL": estate["url"],
        "AWS_MAX_ATTEMPTS": "2",
    }
    day = DAY.isoformat()
    steps = [_cloudopt(env, "run", "--start", day, "--end", day)]
    # One day of metrics is too little for the plan to act on; a plan with one action on the dev instance,
    # written as the plan asset writes it (its constraint check recorded), makes the executor assume its
    # role and read the live state.
    dev = estate["standalone"][1]
    Home(home).write_plan(
        [plan_row(dev, "stop", {"state": "stopped"}, current_config=json.dumps({"instance_type": "c5.2xlarge"}))],
        plan_id="plan-secrets",
        day=DAY,
    )
    steps += [
        _cloudopt(env, "approve", "--date", day, "--all", "--by", "alice"),
        _cloudopt(env, "execute", "--date", day),
    ]
    outputs = {f"output of cloudopt {' '.join(s.args[1:3])}": s.stdout + s.stderr for s in steps}
    assert [s.returncode for s in steps] == [0, 0, 0], outputs
    assert f"{dev}" in steps[2].stdout and "would_apply" in steps[2].stdout, outputs

    instance = dg.DagsterInstance.from_config(str(home / "dagster"))
    found, counts = scan(SECRETS, home, outputs, instance)
    assert found == []
    # What was read: the runs of collection, plan, warehouse and executor, the lake, the warehouse, the audit.
    assert counts["runs"] >= 4 and counts["events"] > 100 and counts["parquet"] > 5 and counts["duckdb"] >= 1, counts
    audit = [p for p in home.rglob("*") if p.is_file() and "audit" in str(p.relative_to(home))]
    assert audit, outputs
