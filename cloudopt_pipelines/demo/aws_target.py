"""A local AWS for the demo's act stage: a moto server on the loopback, seeded with the demo fleet.

``cloudopt execute --demo-target`` (and ``cloudopt rollback --demo-target``, ``cloudopt demo-target``) start it
once per ``CLOUDOPT_HOME`` as a process of its own, so that what ``execute --mode apply`` changed is still
there when ``rollback`` runs in another command. It answers the EC2, STS and IAM calls of the executor as
AWS does (moto's server over HTTP), with the very ids the demo recommends on: each demo account's
instances (type, zone, tags, state), its EBS volumes (attached or not) and its Elastic IPs. Nothing needs
AWS credentials: the server takes the dummy ones of :data:`DUMMY_CREDENTIALS`, and the executor reaches
each account through the role :data:`DEMO_EXECUTOR_ROLE` as it would in AWS.

Run as ``python -m cloudopt_pipelines.demo.aws_target --home H``: it seeds, writes
``H/demo-aws/endpoint.json`` (its URL and process id) and serves until SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

DEMO_TARGET_DIR = "demo-aws"
ENDPOINT_FILE = "endpoint.json"
LOG_FILE = "server.log"
DEMO_EXECUTOR_ROLE = "CloudoptExecutor"
LINUX_AMI = "ami-1e749f67"  # an Ubuntu image of moto's default list
START_TIMEOUT_S = 120.0
#: The credentials the demo target accepts (moto checks none); set only for the command that uses it.
DUMMY_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "demo-target",
    "AWS_SECRET_ACCESS_KEY": "demo-target-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


class DemoTargetError(RuntimeError):
    """The demo target could not start (the message names its log)."""


def target_dir(home: Path) -> Path:
    return Path(home) / DEMO_TARGET_DIR


def running_endpoint(home: Path) -> str | None:
    """The URL of this home's demo target if its process is alive and answers, else None."""
    path = target_dir(home) / ENDPOINT_FILE
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not _alive(int(record.get("pid", 0))) or not _answers(record.get("url", "")):
        return None
    return str(record["url"])


def ensure_demo_target(home: Path, echo: Callable[[str], None] = lambda _: None) -> str:
    """This home's demo target URL, started (seeded with the demo fleet) when it is not running."""
    url = running_endpoint(home)
    if url is not None:
        return url
    folder = target_dir(home)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ENDPOINT_FILE).unlink(missing_ok=True)
    log = folder / LOG_FILE
    echo(f"starting the demo AWS target (moto, seeded with the demo fleet); log: {log}")
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cloudopt_pipelines.demo.aws_target", "--home", str(home)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # it outlives this command: rollback runs in another one
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        url = running_endpoint(home)
        if url is not None:
            return url
        if proc.poll() is not None:
            raise DemoTargetError(f"the demo AWS target exited with code {proc.returncode}: see {log}")
        time.sleep(0.2)
    raise DemoTargetError(f"the demo AWS target did not answer within {START_TIMEOUT_S:.0f} s: see {log}")


def stop_demo_target(home: Path) -> bool:
    """Stop this home's demo target (its state is lost); False when none was running."""
    path = target_dir(home) / ENDPOINT_FILE
    try:
        pid = int(json.loads(path.read_text()).get("pid", 0))
    except (OSError, ValueError):
        return False
    path.unlink(missing_ok=True)
    if not _alive(pid):
        return False
    os.kill(pid, signal.SIGTERM)
    for _ in range(100):
        if not _alive(pid):
            break
        time.sleep(0.1)
    return True


@contextlib.contextmanager
def demo_credentials() -> Iterator[None]:
    """The dummy credentials of the demo target in this process's environment, for one command; a profile,
    a session token or an endpoint set for real AWS is put aside meanwhile."""
    saved = {k: os.environ.get(k) for k in (*DUMMY_CREDENTIALS, "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL")}
    try:
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
            os.environ.pop(name, None)
        os.environ.update(DUMMY_CREDENTIALS)
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def demo_executor_resource(home: Path, url: str) -> Any:
    """The ``AwsExecutorResource`` that acts on the demo target (the executor role in each demo account)."""
    from cloudopt_pipelines.resources.executor import AwsExecutorResource

    return AwsExecutorResource(
        regions=["us-east-1"],
        endpoint_url=url,
        executor_role=DEMO_EXECUTOR_ROLE,
        home=str(home),
        poll_seconds=0.2,
        wait_timeout_seconds=120.0,
    )


# ------------------------------------------------------------------------------------------ server


def seed_demo_fleet(url: str, fleet: Mapping[str, Any]) -> dict[str, int]:
    """Create the demo fleet on the server at ``url`` (in this process, which must be the server's: moto's id
    generators are given the demo ids while each resource is created). Returns counts by kind."""
    import boto3
    from moto.ec2.models import elastic_block_store, elastic_ip_addresses, instances

    counts = {"instances": 0, "volumes": 0, "addresses": 0}
    base = boto3.client("sts", endpoint_url=url, region_name="us-east-1", **_keys())
    for account in fleet["accounts"]:
        creds = base.assume_role(
            RoleArn=f"arn:aws:iam::{account['account_id']}:role/{DEMO_EXECUTOR_ROLE}", RoleSessionName="demo-seed"
        )["Credentials"]
        keys = {
            "aws_access_key_id": creds["AccessKeyId"],
            "aws_secret_access_key": creds["SecretAccessKey"],
            "aws_session_token": creds["SessionToken"],
        }
        by_id: dict[str, tuple[str, str]] = {}  # instance id -> (region, zone)
        for inst in account["instances"]:
            if inst.get("lifecycle") == "spot" or inst.get("platform") not in (None, "linux"):
                continue  # moto's on-demand Linux instances only; the demo's others are never acted on
            ec2 = boto3.client("ec2", endpoint_url=url, region_name=inst["region"], **keys)
            with _ids(instances, "random_instance_id", inst["resource_id"]):
                ec2.run_instances(
                    ImageId=LINUX_AMI,
                    InstanceType=inst["instance_type"],
                    MinCount=1,
                    MaxCount=1,
                    Placement={"AvailabilityZone": inst["zone"]},
                    TagSpecifications=[
                        {"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in inst["tags"].items()]}
                    ],
                )
            if inst.get("state") == "stopped":
                ec2.stop_instances(InstanceIds=[inst["resource_id"]])
            by_id[inst["resource_id"]] = (inst["region"], inst["zone"])
            counts["instances"] += 1
        region = account["regions"][0]
        for other in account.get("other", []):
            ec2 = boto3.client("ec2", endpoint_url=url, region_name=region, **keys)
            if other["resource_kind"] == "ebs_volume":
                attached = other.get("attached_to")
                zone = by_id[attached][1] if attached in by_id else f"{region}{other.get('zone_suffix', 'a')}"
                with _ids(elastic_block_store, "random_volume_id", other["resource_id"]):
                    ec2.create_volume(
                        AvailabilityZone=zone,
                        Size=int(other["size_gib"]),
                        VolumeType=other["volume_type"],
                        **({"Iops": int(other["iops"])} if other["volume_type"] in ("io1", "io2") else {}),
                    )
                if attached in by_id:
                    ec2.attach_volume(VolumeId=other["resource_id"], InstanceId=attached, Device="/dev/sdf")
                counts["volumes"] += 1
            elif other["resource_kind"] == "elastic_ip":
                with _ids(elastic_ip_addresses, "random_eip_allocation_id", other["resource_id"]):
                    ec2.allocate_address(Domain="vpc", **({"Address": ip} if (ip := other.get("public_ip")) else {}))
                if other.get("associated_with") in by_id:
                    ec2.associate_address(AllocationId=other["resource_id"], InstanceId=other["associated_with"])
                counts["addresses"] += 1
    return counts


def serve(home: Path) -> None:
    """Start the server, seed it, write the endpoint file and serve until SIGTERM."""
    from moto.server import ThreadedMotoServer

    from cloudopt_pipelines.sources.demo import DemoCollector

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        counts = seed_demo_fleet(url, DemoCollector().fleet)
        folder = target_dir(home)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{ENDPOINT_FILE}.{os.getpid()}"
        tmp.write_text(json.dumps({"url": url, "pid": os.getpid(), "seeded": counts}) + "\n")
        os.replace(tmp, folder / ENDPOINT_FILE)
        print(f"demo AWS target on {url}: seeded {counts}", flush=True)
        stop.wait()
    finally:
        server.stop()


@contextlib.contextmanager
def _ids(module: Any, name: str, value: str) -> Iterator[None]:
    """moto's generator ``module.name`` returns ``value`` once, then its own ids again."""
    original = getattr(module, name)
    given = iter([value])
    setattr(module, name, lambda: next(given, None) or original())
    try:
        yield
    finally:
        setattr(module, name, original)


def _keys() -> dict[str, str]:
    return {
        "aws_access_key_id": DUMMY_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": DUMMY_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _answers(url: str) -> bool:
    if not url.startswith("http://127.0.0.1:"):
        return False
    try:
        with urllib.request.urlopen(f"{url}/moto-api/", timeout=2):
            return True
    except OSError:
        return False


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The demo's local AWS target (moto, seeded with the demo fleet).")
    parser.add_argument("--home", required=True, type=Path, help="CLOUDOPT_HOME whose demo target this is.")
    serve(parser.parse_args(argv).home)


if __name__ == "__main__":
    main()
