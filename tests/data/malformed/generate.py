"""Generate the malformed metric-input corpus: ``corpus.jsonl.gz`` (inputs) and ``manifest.json`` (outcomes).

Run ``python tests/data/malformed/generate.py`` from the repository root; ``tests/test_malformed_corpus.py``
checks that the committed files are exactly what this script writes, then feeds every case through the
shipped path (lake write, SQL feature models, recommender) and compares with the manifest.

Each case is one account's ``utilization_5m`` rows (and, for some, its ``resources`` rows) for one day,
or a few days. A value is a JSON number, ``null``, ``{"f": "nan" | "inf" | "-inf"}`` (a float JSON cannot
hold) or a string (text from a source: strings are columns of text). The expected outcome is computed
here by a plain reference, not by the code under test:

- ``rejected``: the lake write refuses the partition; ``error`` lists what the message must name;
- ``cleaned``: per resource, the daily statistics that must come out, including the counts that record
  why samples were set aside (``nonfinite_samples``, ``out_of_range_samples``, ``duplicate_samples``,
  ``gaps``, ``coverage_pct``);
- ``window``: the days with data of the 14-day window;
- ``recommended``: what the recommender must say of each resource.
"""

from __future__ import annotations

import gzip
import itertools
import json
import math
import random
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DAY = datetime(2026, 11, 16, tzinfo=UTC)
ACCOUNT = "000011112222"
R1, R2 = "i-0000000000000c0a1", "i-0000000000000c0a2"
COLUMNS = ("cpu", "max", "mem", "in", "out")  # cpu_pct, cpu_max_pct, mem_pct, net_in_bytes, net_out_bytes
SCHEMA_NAME = {"cpu": "cpu_pct", "max": "cpu_max_pct", "mem": "mem_pct", "in": "net_in_bytes", "out": "net_out_bytes"}
PCT = ("cpu", "max", "mem")
NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
NON_FINITE_WORDS = {"nan", "inf", "-inf", "+inf", "infinity", "-infinity", "+infinity"}


def ts(day: datetime, slot: int, seconds: int = 0) -> str:
    return (day + timedelta(seconds=300 * slot + seconds)).isoformat().replace("+00:00", "Z")


def series(resource: str, seed: int, day: datetime = DAY, slots: range = range(288)) -> list[dict[str, Any]]:
    """A clean day of 5-minute samples: percentages to 1 decimal, byte counts whole."""
    rng = random.Random(seed)
    rows = []
    for slot in slots:
        cpu = round(rng.uniform(5, 60), 1)
        rows.append(
            {
                "r": resource,
                "ts": ts(day, slot),
                "cpu": cpu,
                "max": round(cpu + rng.uniform(0, 10), 1),
                "mem": round(rng.uniform(20, 70), 1),
                "in": float(rng.randrange(1000, 99999)),
                "out": float(rng.randrange(1000, 99999)),
            }
        )
    return rows


def two(seed: int) -> list[dict[str, Any]]:
    """The fault goes into R1; R2 is a clean neighbour that must come out untouched."""
    return series(R1, seed) + series(R2, seed + 1000)


def one(seed: int) -> list[dict[str, Any]]:
    return series(R1, seed)


# --- the reference: what the cleaning must produce ---------------------------------------------------


def as_float(value: Any) -> float | None:
    """A value as the lake must hold it; ``ValueError`` for text that is no number."""
    if value is None:
        return None
    if isinstance(value, dict):
        return {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}[value["f"]]
    if isinstance(value, str):
        if NUMBER.fullmatch(value) or value.lower() in NON_FINITE_WORDS:
            return float(value)
        raise ValueError(value)
    return float(value)


def daily_reference(rows: list[dict[str, Any]], day: datetime = DAY) -> dict[str, dict[str, Any]]:
    """Per resource: the statistics and reason counts of one day, as the feature models must give them."""
    start = day.timestamp()
    by_resource: dict[str, dict[int, list[dict[str, Any]]]] = {}
    for row in rows:
        moment = datetime.fromisoformat(row["ts"].replace("Z", "+00:00")).timestamp()
        if not start <= moment < start + 86400:
            continue  # another day's partition owns it
        by_resource.setdefault(row["r"], {}).setdefault(int((moment - start) // 300), []).append(row)
    out: dict[str, dict[str, Any]] = {}
    for resource, slots in by_resource.items():
        kept = {slot: listed[-1] for slot, listed in slots.items()}  # the later-listed row wins
        nonfinite = out_of_range = 0
        cpu, peak, mem, net_in, net_out = [], [], [], [], []
        for slot in sorted(kept):
            values = {c: as_float(kept[slot].get(c)) for c in COLUMNS}
            if any(v is not None and not math.isfinite(v) for v in values.values()):
                nonfinite += 1
            values = {c: (v if v is not None and math.isfinite(v) else None) for c, v in values.items()}
            if any(values[c] is not None and not 0 <= values[c] <= 100 for c in PCT) or any(
                values[c] is not None and values[c] < 0 for c in ("in", "out")
            ):
                out_of_range += 1
            if values["cpu"] is not None:
                cpu.append(values["cpu"])
            p = values["max"] if values["max"] is not None else values["cpu"]
            if p is not None:
                peak.append(p)
            if values["mem"] is not None:
                mem.append(values["mem"])
            if values["in"] is not None:
                net_in.append(values["in"])
            if values["out"] is not None:
                net_out.append(values["out"])
        present = sorted(kept)
        before = [present[0]] + [b - a - 1 for a, b in itertools.pairwise(present)]
        after = 287 - present[-1]
        gaps = sum(1 for g in before if g > 0) + (1 if after > 0 else 0)
        out[resource] = {
            "samples": len(kept),
            "coverage_pct": round(100.0 * len(kept) / 288, 3),
            "cpu_samples": len(cpu),
            "mem_samples": len(mem),
            "cpu_mean_pct": sum(cpu) / len(cpu) if cpu else None,
            "cpu_max_pct": max(peak) if peak else None,
            "mem_max_pct": max(mem) if mem else None,
            "net_in_bytes": sum(net_in) if net_in else None,
            "nonfinite_samples": nonfinite,
            "out_of_range_samples": out_of_range,
            "duplicate_samples": sum(len(v) for v in slots.values()) - len(kept),
            "gaps": gaps,
            "longest_gap_minutes": 5 * max([*before, after, 0]),
        }
    return out


# --- the cases -----------------------------------------------------------------------------------------

CASES: list[dict[str, Any]] = []


def cleaned(name: str, category: str, note: str, rows: list[dict[str, Any]]) -> None:
    CASES.append(
        {"case": name, "category": category, "note": note, "days": {DAY.date().isoformat(): rows}, "expect": None}
    )
    CASES[-1]["expect"] = {"outcome": "cleaned", "daily": daily_reference(rows)}


def rejected(name: str, category: str, note: str, rows: list[dict[str, Any]], error: list[str]) -> None:
    CASES.append(
        {
            "case": name,
            "category": category,
            "note": note,
            "days": {DAY.date().isoformat(): rows},
            "expect": {"outcome": "rejected", "error": error},
        }
    )


def set_values(rows: list[dict[str, Any]], column: str, slots: list[int], value: Any) -> list[dict[str, Any]]:
    for slot in slots:
        rows[slot][column] = value
    return rows


def build() -> None:
    seed = 0
    # NaN and infinities: excluded, counted in nonfinite_samples.
    for column in COLUMNS:
        for count in (1, 5, 288):
            seed += 1
            slots = list(range(0, 288, 288 // count))[:count]
            cleaned(
                f"nan_{SCHEMA_NAME[column]}_{count}",
                "nan",
                f"{count} NaN {SCHEMA_NAME[column]}",
                set_values(two(seed), column, slots, {"f": "nan"}),
            )
        for value, count in (("inf", 1), ("inf", 5), ("-inf", 1)):
            seed += 1
            slots = list(range(7, 288, 288 // count))[:count]
            sign = "neg_inf" if value == "-inf" else "inf"
            cleaned(
                f"{sign}_{SCHEMA_NAME[column]}_{count}",
                "inf",
                f"{count} {value} {SCHEMA_NAME[column]}",
                set_values(two(seed), column, slots, {"f": value}),
            )
    # Negative values: kept, flagged out of range (a percentage or a byte count cannot be negative).
    for column in COLUMNS:
        for value, slots in ((-0.5, [3]), (-50.0, list(range(100, 110)))):
            seed += 1
            cleaned(
                f"negative_{SCHEMA_NAME[column]}_{len(slots)}",
                "negative",
                f"{len(slots)} x {value} in {SCHEMA_NAME[column]}",
                set_values(one(seed), column, slots, value),
            )
    # Above 100 %: kept, flagged; exactly 100 % is in range.
    for column in PCT:
        for value in (100.0001, 150.0, 1e6, 100.0):
            seed += 1
            label = "at_100" if value == 100.0 else f"above_100_{str(value).replace('.', '_')}"
            cleaned(
                f"{label}_{SCHEMA_NAME[column]}",
                "above_100" if value != 100.0 else "boundary",
                f"{value} % in {SCHEMA_NAME[column]} at 4 slots",
                set_values(one(seed), column, [0, 50, 150, 287], value),
            )
    # Strings: a column of text. A number written as text is that number; text that is no number is refused.
    for column, texts in (
        ("cpu", ["12.5", "1e2", "+5", ".5", "NaN", "inf", "1e400", "abc", "12,5", "", " 12.5 ", "12.5%", "0x10"]),
        ("mem", ["55", "-inf", "n/a", "null"]),
        ("in", ["1024", "1 KB"]),
    ):
        for k, text in enumerate(texts):
            seed += 1
            rows = [{**r, column: str(r[column])} for r in one(seed)]
            rows[40 + k][column] = text
            name = f"text_{SCHEMA_NAME[column]}_{k}"
            note = f"{SCHEMA_NAME[column]} as text, one value {text!r}"
            try:
                as_float(text)
            except ValueError:
                rejected(name, "strings", note, rows, ["utilization_5m", SCHEMA_NAME[column], repr(text)])
            else:
                cleaned(name, "strings", note, rows)
    # Duplicate timestamps: one row per slot, the later-listed wins, duplicate_samples counts the others.
    for count, copies, changed in ((1, 2, False), (1, 2, True), (10, 2, True), (288, 2, False), (288, 2, True)):
        for extra in (copies, copies + 1) if count == 1 else (copies,):
            seed += 1
            rows = one(seed)
            repeats = []
            for slot in range(0, 288, 288 // count)[:count]:
                for n in range(extra - 1):
                    copy = dict(rows[slot])
                    if changed:
                        copy["cpu"] = round(copy["cpu"] / 2 + n, 3)
                        copy["max"] = round(copy["max"] + 1 + n, 3)
                    repeats.append(copy)
            cleaned(
                f"duplicates_{count}x{extra}_{'changed' if changed else 'same'}",
                "duplicate_timestamps",
                f"{count} slot(s) listed {extra} times, {'other' if changed else 'the same'} values",
                rows + repeats,
            )
    # Clock skew: off-grid stamps fall into their 5-minute slot; stamps outside the day belong to another
    # partition and are not counted here (coverage says what is left).
    for seconds in (3, 60, 299, -3, -60, 420, 7200, -7200, 86400, -86400):
        seed += 1
        rows = [{**r, "ts": ts(DAY, i, seconds)} for i, r in enumerate(one(seed))]
        cleaned(f"skew_{seconds}s", "clock_skew", f"{R1}'s clock {seconds:+d} s off", rows)
    for spread in (30, 150):
        seed += 1
        rng = random.Random(seed)
        rows = [{**r, "ts": ts(DAY, i, rng.randint(-spread, spread))} for i, r in enumerate(series(R1, seed))]
        cleaned(f"jitter_{spread}s", "clock_skew", f"every stamp up to {spread} s off", rows)
    # Missing samples in the day: gaps and coverage record them, nothing is filled in.
    for name, keep in (
        ("first_hour", range(12, 288)),
        ("last_hour", range(0, 276)),
        ("middle_6h", [*range(0, 100), *range(172, 288)]),
        ("every_other", range(0, 288, 2)),
        ("one_sample", [144]),
    ):
        seed += 1
        rows = series(R1, seed, slots=keep)  # type: ignore[arg-type]
        cleaned(f"missing_{name}", "missing_samples", f"{R1} without {name.replace('_', ' ')}", rows)
    # Truncated API pages: a series that stops early, a last row cut off before its values or its stamp.
    for stop in (144, 1, 287):
        seed += 1
        cleaned(
            f"truncated_page_at_{stop}",
            "truncated_pages",
            f"{R1}'s series stops after {stop} sample(s)",
            series(R1, seed, slots=range(stop)),
        )
    seed += 1
    cut = one(seed)
    cut[200] = {"r": R1, "ts": cut[200]["ts"], "cpu": None, "max": None, "mem": None, "in": None, "out": None}
    cleaned("truncated_row_without_values", "truncated_pages", "a row cut off after its stamp", cut)
    for column in ("ts", "r"):
        seed += 1
        cut = one(seed)
        cut[287] = {**cut[287], column: None}
        name = "ts" if column == "ts" else "resource_id"
        rejected(
            f"truncated_row_without_{name}",
            "truncated_pages",
            f"the last row of a page cut off before its {name}",
            cut,
            ["utilization_5m", name, "1 row"],
        )
    build_window_cases()
    build_recommender_cases()


def build_window_cases() -> None:
    """Missing days: the 14-day window counts the days with data; nothing is filled in."""
    for missing in ([1], [3, 4, 5, 6, 7, 8, 9], list(range(1, 14)), [13], [0]):
        days = {}
        for back in range(14):
            if back in missing:
                continue
            day = DAY - timedelta(days=back)
            days[day.date().isoformat()] = series(R1, 500 + back, day=day)
        CASES.append(
            {
                "case": f"missing_days_{'_'.join(map(str, missing)) if len(missing) < 4 else f'{len(missing)}_days'}",
                "category": "missing_days",
                "note": f"days {missing} before the last absent",
                "days": days,
                "expect": {"outcome": "window", "days_with_data": {R1: 14 - len(missing)}},
            }
        )


def resource(resource_id: str, instance_type: str) -> dict[str, Any]:
    return {"r": resource_id, "instance_type": instance_type}


def build_recommender_cases() -> None:
    """Unknown instance types and empty accounts, through the recommender."""
    for k, instance_type in enumerate(["m9.huge", "M5.LARGE", "m5.large ", "", "x99gd.metal"]):
        CASES.append(
            {
                "case": f"unknown_instance_type_{k}",
                "category": "unknown_instance_types",
                "note": f"{R1} of type {instance_type!r}, not in the price catalogue",
                "days": {DAY.date().isoformat(): series(R1, 900 + k)},
                "resources": [resource(R1, instance_type)],
                "expect": {
                    "outcome": "recommended",
                    "resources": {R1: {"action": "keep", "confidence": 0.0, "says": ["Not analysed", "unknown"]}},
                },
            }
        )
    CASES.append(
        {
            "case": "known_instance_type_control",
            "category": "unknown_instance_types",
            "note": "the same day on a type the catalogue has: analysed",
            "days": {DAY.date().isoformat(): series(R1, 900)},
            "resources": [resource(R1, "m5.xlarge")],
            "expect": {"outcome": "recommended", "resources": {R1: {"analysed": True}}},
        }
    )
    for name, days, resources in (
        ("empty_account", {DAY.date().isoformat(): []}, []),
        ("empty_account_with_inventory", {DAY.date().isoformat(): []}, [resource(R1, "m5.xlarge")]),
        ("samples_of_no_inventoried_resource", {DAY.date().isoformat(): series(R2, 990)}, []),
    ):
        CASES.append(
            {
                "case": name,
                "category": "empty_accounts",
                "note": name.replace("_", " "),
                "days": days,
                "resources": resources,
                "expect": {
                    "outcome": "recommended",
                    "resources": {
                        r["r"]: {"action": "keep", "confidence": 0.0, "says": ["Gathering data", "No change"]}
                        for r in resources
                    },
                },
            }
        )


def compact(day: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One day's rows as stored: resource ids once, then ``[resource index, seconds after midnight (UTC),
    cpu, max, mem, in, out]`` per row, in the order the source listed them."""
    ids = sorted({r["r"] for r in rows if r["r"] is not None})
    midnight = datetime.fromisoformat(day).replace(tzinfo=UTC)
    out = []
    for r in rows:
        moment = None if r["ts"] is None else datetime.fromisoformat(r["ts"].replace("Z", "+00:00"))
        seconds = None if moment is None else int((moment - midnight).total_seconds())
        out.append([None if r["r"] is None else ids.index(r["r"]), seconds, *(r.get(c) for c in COLUMNS)])
    return {"resources": ids, "rows": out}


def main() -> None:
    CASES.clear()
    build()
    names = [c["case"] for c in CASES]
    assert len(names) == len(set(names)), "case names must be unique"
    lines = []
    for case in CASES:
        stored = {k: v for k, v in case.items() if k not in ("expect", "days")}
        stored["days"] = {day: compact(day, rows) for day, rows in case["days"].items()}
        lines.append(json.dumps(stored, separators=(",", ":")) + "\n")
    (HERE / "corpus.jsonl.gz").write_bytes(gzip.compress("".join(lines).encode(), mtime=0))
    manifest = {c["case"]: {"category": c["category"], "note": c["note"], **c["expect"]} for c in CASES}
    (HERE / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
