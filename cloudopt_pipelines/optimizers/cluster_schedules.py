"""Cost-aware scheduling of the batch work of ECS clusters and custom clusters (issue 14).

Pure logic, no Dagster. A cluster's batch work is what its hour-of-week profile holds above its steady load:
for an ECS cluster on EC2, what CPUReservation / MemoryReservation reserve beyond the EC2 services (the tasks
EventBridge rules and RunTask start); for a custom cluster (instances grouped by ``cloudopt:cluster``), what its
members' CPU (p95, in vCPUs) holds above it. Steady is the level that holds longer than ``BATCH_MAX_HOURS``
(:func:`split_batch`), so a working day of scaled-up services is not mistaken for a batch. When that window overlaps the
peak so that the peak needs more nodes, the window moves (``shift_batch_window``) to the hours of the week
where the cluster has headroom, or (custom clusters) its jobs run on another custom cluster with headroom in
the same hours (``consolidate_batch``). The saving is only the nodes the peak no longer needs: the capacity
above the peak's need is the resize row's (never claimed twice), and the option is one more alternative of
the same resource, so the plan takes it or a resize, never both. Every row is advisory (``schedule_batch``).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from cloudopt_pipelines.optimizers.clusters import (
    CUSTOM_CLUSTER_KIND,
    HOURS_OF_WEEK,
    ClusterConfig,
    Option,
    Plan,
    _gate,
    _window_text,
)
from cloudopt_pipelines.optimizers.sizing import HOURS_PER_MONTH
from cloudopt_pipelines.vocabulary import ECS_CLUSTER, is_production

SCHEDULE_BATCH = "schedule_batch"
#: a batch window is at most this long (longer plateaus are the cluster's steady load, e.g. a working day)
BATCH_MAX_HOURS = 6
#: a batch counts when at its highest it holds at least this share of the cluster's capacity
MIN_BATCH_SHARE_PCT = 5.0
DAY_NAMES = ("MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN")


def _need(load: float, per_node: float) -> int:
    return max(0, math.ceil(load / per_node - 1e-9))


def best_shift(
    steady: Mapping[int, float],
    batch: Mapping[int, float],
    per_node: float,
    known: set[int],
) -> tuple[int, int, int] | None:
    """The move of the batch window (hours later, 1-167, wrapping the week) that leaves the fewest nodes at the
    peak: (shift, nodes at the peak today, nodes at the peak after), or None when no move needs fewer. The batch
    may only land on hours with data (``known``); ties go to the smallest move (earlier or later)."""
    hours = sorted(h for h, v in batch.items() if v > 0)
    if not hours:
        return None
    today = _need(max(steady.get(h, 0.0) + batch.get(h, 0.0) for h in known), per_node)
    best: tuple[int, int, int] | None = None
    best_key: tuple[int, int] | None = None
    for shift in range(1, HOURS_OF_WEEK):
        moved = {(h + shift) % HOURS_OF_WEEK: batch[h] for h in hours}
        if not set(moved) <= known:
            continue
        peak = max(steady.get(h, 0.0) + moved.get(h, 0.0) for h in known)
        after = _need(peak, per_node)
        key = (after, min(shift, HOURS_OF_WEEK - shift))
        if after < today and (best_key is None or key < best_key):
            best, best_key = (shift, today, after), key
    return best


def cron_for(hours: Sequence[int]) -> str | None:
    """An EventBridge ``cron(...)`` that starts a job at the first hour of each run of ``hours`` (hour of week,
    UTC), when those starts share one hour of the day; None otherwise."""
    busy = set(hours)
    starts = sorted(h for h in busy if (h - 1) % HOURS_OF_WEEK not in busy)
    if not starts or len({h % 24 for h in starts}) != 1:
        return None
    days = sorted({h // 24 for h in starts})
    dow = "*" if len(days) == 7 else ",".join(DAY_NAMES[d] for d in days)
    return f"cron(0 {starts[0] % 24} ? * {dow} *)"


def shift_text(shift: int) -> str:
    """A move of ``shift`` hours later (mod one week) in words: the shorter way, earlier or later."""
    return f"{shift} h later" if shift <= HOURS_OF_WEEK // 2 else f"{HOURS_OF_WEEK - shift} h earlier"


def _node_hour(plan: Plan) -> float | None:
    nodes = plan.analysis.nodes
    if not nodes or not plan.current_cost_usd:
        return None
    return plan.current_cost_usd / HOURS_PER_MONTH / len(nodes)


def _option(
    plan: Plan, name: str, saving_nodes: int, node_hour: float, extra: float, proposed: dict[str, Any], why: str
) -> None:
    monthly = round((plan.current_cost_usd or 0.0) - saving_nodes * node_hour * HOURS_PER_MONTH + extra, 2)
    if monthly >= (plan.current_cost_usd or 0.0) - 0.01:
        return
    plan.options.append(
        Option(
            name,
            SCHEDULE_BATCH,
            monthly,
            {**plan.current, **proposed, "advisory": True},
            why + "; advisory, the executor moves no job",
            risk=1.5,
            finding="over-provisioned",
            is_estimate=True,
            effort="High",
        )
    )


# ------------------------------------------------------------------------------------------------- ECS


def schedule_ecs_batch(plans: Mapping[str, Plan], config: ClusterConfig) -> dict[str, Plan]:
    """``shift_batch_window`` options for the ECS clusters on EC2 whose batch (CPUReservation / MemoryReservation
    by hour of week above the level on both sides, at most ``BATCH_MAX_HOURS`` long: what EventBridge rules and
    RunTask start) overlaps the peak so that the peak needs more container instances than the same batch
    started in the hours of headroom. Nodes are today's main type filled to ``node_fill_pct``; the PutRule calls
    name the rules that started the batch tasks seen (``events-rule/<name>``)."""
    for plan in plans.values():
        a = plan.analysis
        node_hour = _node_hour(plan)
        if a.resource_kind != ECS_CLUSTER or node_hour is None or _gate(a, config) is not None:
            continue
        if a.capacity_vcpu is None or a.capacity_mem_gib is None:
            continue
        cpu_pct = {
            h: float(b["cpu_reserved_mean_pct"])
            for h, b in a.by_hour_of_week.items()
            if b.get("cpu_reserved_mean_pct") is not None
        }
        if not cpu_pct:
            continue
        mem_pct = {
            h: float(b["mem_reserved_mean_pct"])
            for h, b in a.by_hour_of_week.items()
            if b.get("mem_reserved_mean_pct") is not None
        }
        counts = Counter(n.instance_type for n in a.nodes)
        spec = next(n.spec for n in a.nodes if n.instance_type == counts.most_common(1)[0][0])
        if spec is None:
            continue
        fill = config.node_fill_pct / 100
        per_cpu = spec.vcpu * fill
        per_mem = spec.memory_gib * config.node_memory_usable_pct / 100 * fill
        # One load in today's nodes so CPU and memory move together: the larger of the two needs, hour by hour.
        load = {
            h: max(v / 100 * a.capacity_vcpu / per_cpu, mem_pct.get(h, 0.0) / 100 * a.capacity_mem_gib / per_mem)
            for h, v in cpu_pct.items()
        }
        steady, batch = split_batch(load, MIN_BATCH_SHARE_PCT / 100 * a.capacity_vcpu / per_cpu)
        cpu_batch = {h: v * per_cpu for h, v in batch.items()}
        found = best_shift(steady, batch, 1.0, set(load))
        if found is None:
            continue
        shift, today, after = found
        today = min(today, len(a.nodes))  # nodes beyond the peak's need are the resize row's saving
        if after >= today:
            continue
        hours = sorted(batch)
        moved = sorted((h + shift) % HOURS_OF_WEEK for h in hours)
        rules = sorted(
            {
                str(t.get("started_by")).split("/", 1)[1]
                for t in a.attributes.get("tasks") or []
                if str(t.get("started_by") or "").startswith("events-rule/")
            }
        )
        cron = cron_for(moved)
        note = f"the rule's schedule moved {shift_text(shift)} ({_window_text(moved)})"
        calls = [
            {
                "service": "events",
                "operation": "PutRule",
                "parameters": {"Name": rule, "ScheduleExpression": cron or f"<its expression, {shift_text(shift)}>"},
                "note": note,
            }
            for rule in rules or ["<the EventBridge rule or scheduler that runs the batch>"]
        ]
        _option(
            plan,
            "shift_batch_window",
            today - after,
            node_hour,
            0.0,
            {
                "window": _window_text(hours),
                "busy_hours_of_week": hours,
                "proposed_window": _window_text(moved),
                "proposed_hours_of_week": moved,
                "shift_hours": shift,
                "count": plan.current["count"] - (today - after),
                "peak_nodes_needed": today,
                "peak_nodes_needed_after": after,
                "api_calls": calls,
            },
            f"batch tasks reserve up to {max(cpu_batch.values()):.1f} vCPU above the level on both sides "
            f"{_window_text(hours)}, on top of the cluster's peak: the peak needs {today} x {spec.instance_type} "
            f"(filled to {config.node_fill_pct:.0f} %); started {shift_text(shift)} ({_window_text(moved)}) it lands "
            f"in headroom and the peak needs {after}",
        )
    return dict(plans)


# --------------------------------------------------------------------------------------- custom clusters


def custom_cluster_load(
    plans: Mapping[str, Plan], member_profile: Sequence[Mapping[str, Any]]
) -> dict[str, dict[int, float]]:
    """Per custom cluster, the vCPUs its members use by hour of week (sum of each member's CPU p95 times its
    vCPUs, from the ``activity_profile`` feature), over the hours every member has data."""
    by_member: dict[str, dict[int, float]] = defaultdict(dict)
    for row in member_profile:
        if row.get("cpu_p95_pct") is not None:
            by_member[str(row["resource_id"])][int(row["hour_of_week"])] = float(row["cpu_p95_pct"])
    out: dict[str, dict] = {}
    for key, plan in plans.items():
        nodes = plan.analysis.nodes
        if plan.analysis.resource_kind != CUSTOM_CLUSTER_KIND or not nodes or any(n.spec is None for n in nodes):
            continue
        known = set(range(HOURS_OF_WEEK))
        for n in nodes:
            known &= set(by_member.get(n.resource_id, {}))
        if not known:
            continue
        out[key] = {
            h: sum(by_member[n.resource_id][h] / 100 * n.spec.vcpu for n in nodes if n.spec is not None)
            for h in sorted(known)
        }
    return out


def split_batch(load: Mapping[int, float], floor: float) -> tuple[dict[int, float], dict[int, float]]:
    """(steady, batch) of an hour-of-week load: the steady part is the load's opening by a flat window of
    ``BATCH_MAX_HOURS + 1`` hours (the highest level that holds that long; wrapping the week), so a plateau
    longer than ``BATCH_MAX_HOURS`` (services scaled up for the day) is steady and a shorter bump above the
    level on both sides is batch; bumps lower than ``floor`` at every hour are noise and stay steady."""
    width = BATCH_MAX_HOURS + 1
    known = sorted(load)
    if len(known) < HOURS_OF_WEEK:
        return dict(load), {}  # the opening needs every hour of the week
    eroded = [min(load[(h + k) % HOURS_OF_WEEK] for k in range(width)) for h in range(HOURS_OF_WEEK)]
    opened = [max(eroded[(h - k) % HOURS_OF_WEEK] for k in range(width)) for h in range(HOURS_OF_WEEK)]
    bump = {h: load[h] - opened[h] for h in range(HOURS_OF_WEEK) if load[h] - opened[h] > 1e-9}
    if not bump or max(bump.values()) < floor:
        return dict(load), {}
    steady = {h: (opened[h] if h in bump else load[h]) for h in range(HOURS_OF_WEEK)}
    return steady, bump


def schedule_custom_batch(
    plans: Mapping[str, Plan], member_profile: Sequence[Mapping[str, Any]], config: ClusterConfig
) -> dict[str, Plan]:
    """``shift_batch_window`` (the group's jobs started in its hours of headroom) and ``consolidate_batch`` (run
    on another custom cluster of the region whose headroom takes them in the same hours) for custom clusters
    whose recurring busy window makes the peak need more nodes. Nodes are today's main type at
    ``target_cpu_pct``; at least one per zone in use (2 for production) stays unless the group does nothing
    outside its jobs, then it can end."""
    loads = custom_cluster_load(plans, member_profile)
    for key, load in sorted(loads.items()):
        plan = plans[key]
        a = plan.analysis
        node_hour = _node_hour(plan)
        if node_hour is None or _gate(a, config) is not None or a.capacity_vcpu is None:
            continue
        per_node = a.capacity_vcpu / len(a.nodes) * config.target_cpu_pct / 100
        steady, batch = split_batch(load, MIN_BATCH_SHARE_PCT / 100 * a.capacity_vcpu)
        if not batch:
            continue
        zones = {n.zone or "" for n in a.nodes}
        floor = max(len(zones), 2 if is_production(a.tags, config.environment_tag_keys) else 1)
        hours = sorted(batch)
        window = _window_text(hours)
        today = min(len(a.nodes), max(floor, _need(max(load.values()), per_node)))
        found = best_shift(steady, batch, per_node, set(load))
        if found is not None:
            shift, _, after = found
            after = max(floor, after)
            moved = sorted((h + shift) % HOURS_OF_WEEK for h in hours)
            _option(
                plan,
                "shift_batch_window",
                today - after,
                node_hour,
                0.0,
                {
                    "window": window,
                    "busy_hours_of_week": hours,
                    "proposed_window": _window_text(moved),
                    "proposed_hours_of_week": moved,
                    "shift_hours": shift,
                    "count": plan.current["count"] - max(0, today - after),
                    "peak_nodes_needed": today,
                    "peak_nodes_needed_after": after,
                    "api_calls": _terminate(plan, today - after, f"once the jobs start {shift_text(shift)}"),
                },
                f"the group's jobs use up to {max(batch.values()):.1f} vCPU above its steady level {window}, on "
                f"its peak: the peak needs {today} node(s) at {config.target_cpu_pct:.0f} % CPU; started "
                f"{shift_text(shift)} ({_window_text(moved)}) it needs {after}",
            )
        _consolidate(plan, key, plans, loads, batch, steady, today, floor, per_node, node_hour, config)
    return dict(plans)


def _consolidate(
    plan: Plan,
    key: str,
    plans: Mapping[str, Plan],
    loads: Mapping[str, Mapping[int, float]],
    batch: Mapping[int, float],
    steady: Mapping[int, float],
    today: int,
    floor: int,
    per_node: float,
    node_hour: float,
    config: ClusterConfig,
) -> None:
    a = plan.analysis
    rest = max(steady.values())
    after = 0 if rest < MIN_BATCH_SHARE_PCT / 100 * (a.capacity_vcpu or 0) else max(floor, _need(rest, per_node))
    best: tuple[float, str, int] | None = None
    for host_key, host_load in sorted(loads.items()):
        host = plans[host_key]
        h_a = host.analysis
        host_hour = _node_hour(host)
        if (
            host_key == key
            or h_a.region != a.region
            or h_a.protected
            or _gate(h_a, config) is not None
            or host_hour is None
            or h_a.capacity_vcpu is None
            or not set(batch) <= set(host_load)
        ):
            continue
        host_per_node = h_a.capacity_vcpu / len(h_a.nodes) * config.target_cpu_pct / 100
        before = _need(max(host_load.values()), host_per_node)
        with_batch = _need(max(v + batch.get(h, 0.0) for h, v in host_load.items()), host_per_node)
        # The host's extra nodes are counted from its own need, not from its spare nodes (those are its resize row's).
        extra = max(0, with_batch - before) * host_hour * HOURS_PER_MONTH
        if best is None or extra < best[0]:
            best = (extra, host_key, with_batch - before)
    if best is None:
        return
    extra, host_key, extra_nodes = best
    hours = sorted(batch)
    window = _window_text(hours)
    _option(
        plan,
        "consolidate_batch",
        today - after,
        node_hour,
        round(extra, 2),
        {
            "host_cluster_id": host_key,
            "window": window,
            "busy_hours_of_week": hours,
            "proposed_window": window,
            "count": plan.current["count"] - max(0, today - after),
            "host_extra_nodes": extra_nodes,
            "peak_nodes_needed": today,
            "peak_nodes_needed_after": after,
            "api_calls": _terminate(plan, today - after, f"once the jobs run on {host_key} {window}"),
        },
        f"the group's jobs ({window}) fit in {host_key}'s headroom in those hours with {extra_nodes} more node(s) "
        f"there at {config.target_cpu_pct:.0f} % CPU; without them this group needs {after} node(s) at its peak "
        f"instead of {today}",
    )


def _terminate(plan: Plan, count: int, when: str) -> list[dict[str, Any]]:
    if count <= 0:
        return []
    gone = [n.resource_id for n in plan.analysis.nodes][-count:]
    return [
        {
            "service": "scheduler",
            "operation": "UpdateSchedule",
            "parameters": {"Name": "<the job's schedule, or its cron on the cluster>"},
            "note": "move the jobs as proposed (EventBridge Scheduler, cron or the workflow tool that starts them)",
        },
        {"service": "ec2", "operation": "TerminateInstances", "parameters": {"InstanceIds": gone}, "note": when},
    ]
