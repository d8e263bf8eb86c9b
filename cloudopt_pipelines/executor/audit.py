"""The audit trail: append-only JSONL ($CLOUDOPT_HOME/audit/actions.jsonl) and its projection to a table.

Before any mutating call the executor appends an ``intent`` record (what it is about to call, the state
before); after it, the ``decision`` record. An intent without a decision means the process died mid-action;
the table shows it as ``interrupted``, and the next run reads the live state to finish or skip it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from cloudopt_pipelines.executor.model import Decision, dumps
from cloudopt_pipelines.executor.store import JsonlLog, RecordLog

AUDIT_FILE = "actions.jsonl"
KEY_FILE = "audit.key"
JSON_COLUMNS = ("state_before", "state_after", "api_calls")
TIME_COLUMNS = ("started_at", "finished_at")


class AuditLog:
    """The append-only audit file of every decision, each record signed (HMAC-SHA256, field ``hmac``) with a
    key kept under the executor home (``key_file``, created on first use, readable by its owner only)."""

    def __init__(self, directory: Path | str, key_file: Path | str | None = None, log: RecordLog | None = None) -> None:
        """``log``: a shared record stream (PostgreSQL, S3: ``executor/store.py``) instead of the file."""
        self.directory = Path(directory)
        self.path = self.directory / AUDIT_FILE
        self.key_file = Path(key_file) if key_file is not None else self.directory.parent / "keys" / KEY_FILE
        self.log: RecordLog = log if log is not None else JsonlLog(self.path)

    def intent(self, record: Mapping[str, Any], at: datetime | None = None) -> None:
        moment = (at or datetime.now(UTC)).astimezone(UTC).isoformat()
        self.log.append([self.sign({**record, "event": "intent", "at": moment})])

    def decision(self, decision: Decision) -> None:
        self.log.append([self.sign(decision.to_record())])

    def sign(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """The record as it will read back from JSON, with its ``hmac``."""
        plain = json.loads(json.dumps({k: v for k, v in record.items() if k != "hmac"}, default=str))
        return {**plain, "hmac": self._mac(plain)}

    def verification_error(self, record: Mapping[str, Any]) -> str | None:
        """Why ``record`` is not as the executor wrote it (no or a wrong ``hmac``), or None when it is."""
        what = (
            f"audit record of {record.get('action_id')} ({record.get('event')} {record.get('outcome') or ''}"
            f"run {record.get('run_id')}) in {self.log.location}"
        )
        mac = record.get("hmac")
        if not isinstance(mac, str) or not mac:
            return f"{what} is not signed (written by hand, or before records were signed)"
        if not self.key_file.exists():
            return f"{what} cannot be verified: the signing key {self.key_file} is missing"
        if not hmac.compare_digest(mac, self._mac({k: v for k, v in record.items() if k != "hmac"})):
            return f"{what} does not match its signature: it was edited after it was written"
        return None

    def _mac(self, plain: Mapping[str, Any]) -> str:
        text = json.dumps(plain, sort_keys=True, separators=(",", ":"), default=str)
        return hmac.new(self._key(), text.encode(), hashlib.sha256).hexdigest()

    def _key(self) -> bytes:
        if not self.key_file.exists():
            self.key_file.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(self.key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass  # another process made it first
            else:
                with os.fdopen(fd, "w") as handle:
                    handle.write(secrets.token_hex(32))
        return self.key_file.read_text().strip().encode()

    def records(self) -> list[dict[str, Any]]:
        return self.log.read()

    def decisions(self, day: date | None = None) -> list[dict[str, Any]]:
        """Decision records (``interrupted`` ones made from orphan intents included), oldest first."""
        records = self.records()
        decided = {(r["run_id"], r["action_id"]) for r in records if r.get("event") == "decision"}
        found: list[dict[str, Any]] = []
        for r in records:
            if r.get("event") == "decision":
                found.append(r)
            elif r.get("event") == "intent" and (r["run_id"], r["action_id"]) not in decided:
                found.append(_interrupted(r))
        if day is not None:
            found = [r for r in found if r.get("date") == day.isoformat()]
        return found

    def changes_on(self, day: date) -> Counter[str]:
        """Changes made on the UTC day ``day`` (any run, any plan), per account: applied decisions, other
        apply decisions with a call that went through, and interrupted intents (they may have changed it)."""
        counts: Counter[str] = Counter()
        for r in self.decisions():
            when = str(r.get("finished_at") or "")[:10]
            if r.get("mode") != "apply" or when != day.isoformat():
                continue
            calls = r.get("api_calls") or []
            went_through = any(isinstance(c, dict) and c.get("status") == "ok" for c in calls)
            if r.get("outcome") in ("applied", "interrupted") or went_through:
                counts[str(r.get("account_id"))] += 1
        return counts

    def history(self, action_id: str) -> list[dict[str, Any]]:
        """Every record (intents and decisions) of one action, oldest first."""
        return [r for r in self.records() if r.get("action_id") == action_id]


def _interrupted(intent: Mapping[str, Any]) -> dict[str, Any]:
    return {
        **{k: v for k, v in intent.items() if k not in ("event", "at")},
        "event": "decision",
        "outcome": "interrupted",
        "reason": "the run stopped after recording its intent and before recording an outcome; "
        "the live state decides what the next run does",
        "started_at": intent.get("at"),
        "finished_at": intent.get("at"),
    }


def decisions_table(records: Sequence[Mapping[str, Any]], schema: pa.Schema) -> pa.Table:
    """Audit records as a table of ``schema`` (columns the schema lacks are left out; JSON columns as text)."""
    columns: dict[str, list[Any]] = {f.name: [] for f in schema}
    for r in records:
        for f in schema:
            value = r.get(f.name)
            if f.name in JSON_COLUMNS:
                value = None if value is None else (value if isinstance(value, str) else dumps(value))
            elif f.name in TIME_COLUMNS and isinstance(value, str):
                value = datetime.fromisoformat(value)
            elif f.name == "date" and isinstance(value, str):
                value = date.fromisoformat(value)
            elif pa.types.is_string(f.type) and value is not None and not isinstance(value, str):
                value = json.dumps(value) if isinstance(value, dict | list) else str(value)
            columns[f.name].append(value)
    return pa.table({f.name: pa.array(columns[f.name], type=f.type) for f in schema}, schema=schema)
