"""One executor at a time per home: an exclusive ``flock`` on ``<home>/executor.lock``. No Dagster.

The kernel releases the lock when the holding process ends, however it ends (SIGKILL included), so a
crashed run never wedges the next one; the file itself only says who held it last.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cloudopt_pipelines.executor.aws import ExecutorError

LOCK_FILE = "executor.lock"


class ExecutorBusy(ExecutorError):
    """Another executor run (execute or rollback) holds the lock of this home."""


@contextmanager
def executor_lock(home: Path, operation: str, **details: Any) -> Iterator[dict[str, Any]]:
    """Hold the executor lock of ``home`` for the block; ``ExecutorBusy`` naming the holder if it is taken."""
    home.mkdir(parents=True, exist_ok=True)
    path = home / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(path)
        os.close(fd)
        raise ExecutorBusy(
            f"another executor run holds {path} ({describe_holder(holder)}): one executor at a time per "
            f"home. Wait for it to finish and re-run; the lock is released as soon as that process ends "
            f"(even if it crashes)"
        ) from None
    holder = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "operation": operation,
        "since": datetime.now(UTC).isoformat(timespec="seconds"),
        **details,
    }
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder, default=str) + "\n").encode(), 0)
        yield holder
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _holder(path: Path) -> Mapping[str, Any]:
    try:
        value = json.loads(path.read_text() or "{}")
    except (OSError, json.JSONDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def describe_holder(holder: Mapping[str, Any]) -> str:
    """``pid 4242 on host-a: execute 2026-11-20 apply, run 1a2b..., since ...`` (what is known of it)."""
    if not holder:
        return "holder unknown"
    parts = [f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}: {holder.get('operation', '?')}"]
    parts += [f"{k} {v}" for k, v in holder.items() if k not in ("pid", "host", "operation", "since")]
    if holder.get("since"):
        parts.append(f"since {holder['since']}")
    return ", ".join(parts)
