"""Has the resource changed since the plan? The plan's current configuration against the live one. No Dagster.

The plan row's ``current_config`` says what the resource was when it was planned. The executor acts only
when the live resource still is that: a type changed by hand, a volume grown, an address moved since the
plan means the plan no longer fits, and the action is left as it is.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

# Plan keys compared with the live state of the same name (only those both sides hold).
COMPARED_KEYS = ("instance_type", "volume_type", "size_gib", "public_ip")
# The standalone recommender writes volumes and addresses as a one-line summary: read the same keys from it.
_SUMMARIES = (
    re.compile(r"^(?P<volume_type>[a-z0-9]+) (?P<size_gib>[0-9.]+) GiB\b"),
    re.compile(r"^Elastic IP (?P<public_ip>[0-9a-fA-F.:]+)\b"),
)


def planned_config(current_config: Mapping[str, Any]) -> dict[str, Any]:
    """The comparable keys of a plan row's ``current_config`` (structured keys, else its summary text)."""
    found: dict[str, Any] = {}
    summary = current_config.get("config")
    if isinstance(summary, str):
        for pattern in _SUMMARIES:
            match = pattern.match(summary.strip())
            if match:
                found.update(match.groupdict())
    found.update({k: current_config[k] for k in COMPARED_KEYS if current_config.get(k) not in (None, "")})
    return found


def changes_since_plan(current_config: Mapping[str, Any], observed: Mapping[str, Any]) -> list[str]:
    """What differs between the plan's current configuration and the live one (empty: unchanged)."""
    changes = []
    for key, planned in planned_config(current_config).items():
        live = observed.get(key)
        if live is None or _same(planned, live):
            continue
        changes.append(f"{key} was {planned} in the plan, is {live} now")
    return changes


def _same(planned: Any, live: Any) -> bool:
    if _is_number(planned) and _is_number(live):
        return float(planned) == float(live)
    return str(planned) == str(live)


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return not isinstance(value, bool)
