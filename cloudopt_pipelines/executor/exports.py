"""Commitment purchases are never executed: they become a purchase list (CSV and JSON) for a person to buy."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Mapping, Sequence
from datetime import date
from pathlib import Path

from cloudopt_pipelines.executor.model import PlannedAction
from cloudopt_pipelines.executor.store import DocumentStore

PURCHASE_COLUMNS = (
    "date",
    "plan_id",
    "action_id",
    "account_id",
    "region",
    "resource_id",
    "action",
    "commitment",
    "instance_type",
    "term_years",
    "payment_option",
    "monthly_savings_usd",
    "approved_by",
)


def purchase_rows(actions: Sequence[PlannedAction], approved_by: Mapping[str, str | None]) -> list[dict[str, object]]:
    rows = []
    for a in actions:
        cfg = a.proposed_config
        rows.append(
            {
                "date": a.date.isoformat(),
                "plan_id": a.plan_id,
                "action_id": a.action_id,
                "account_id": a.account_id,
                "region": a.region,
                "resource_id": a.resource_id,
                "action": a.action,
                "commitment": cfg.get("commitment"),
                "instance_type": cfg.get("instance_type"),
                "term_years": cfg.get("term_years"),
                "payment_option": cfg.get("payment_option"),
                "monthly_savings_usd": round(a.monthly_savings_usd, 4),
                "approved_by": approved_by.get(a.action_id),
            }
        )
    return rows


def write_purchase_list(
    directory: Path | DocumentStore, day: date, rows: Sequence[Mapping[str, object]]
) -> tuple[Path, Path] | tuple[str, str]:
    """Write ``purchases-<day>.csv`` and ``.json`` (each replaced atomically) into ``directory`` or a shared
    document store (PostgreSQL, S3); returns where both are."""
    if not isinstance(directory, Path):
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=PURCHASE_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
        body = json.dumps({"date": day.isoformat(), "purchases": list(rows)}, indent=2, default=str) + "\n"
        return (
            directory.put(f"purchases-{day.isoformat()}.csv", text.getvalue().encode()),
            directory.put(f"purchases-{day.isoformat()}.json", body.encode()),
        )
    directory.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = (
        directory / f"purchases-{day.isoformat()}.csv",
        directory / f"purchases-{day.isoformat()}.json",
    )
    tmp = csv_path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=PURCHASE_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, csv_path)
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"date": day.isoformat(), "purchases": list(rows)}, indent=2, default=str) + "\n")
    os.replace(tmp, json_path)
    return csv_path, json_path
