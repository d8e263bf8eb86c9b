"""Kubernetes plug-ins: a workload's container requests and limits (with its HPA), an HPA alone, node-pool advice.

Plan rows follow the contract of the Kubernetes optimiser (docs/executor.md, "Kubernetes"):
``proposed_config`` names the cluster, namespace, kind and name, the proposed ``containers`` (per container
``requests`` / ``limits``: a key absent is unchanged, ``null`` removes it), the strategic merge ``patch``
and, when the workload has an HPA, ``hpa`` with its merge ``patch``; ``current_config`` holds today's
values in the same shape. The plug-ins apply the plan's patches only after checking that they change
nothing but what the row says (container resources; HPA replica bounds and metrics), compare quantities
by value (``500m`` equals ``0.5``), and send every patch with the live ``resourceVersion`` as a
precondition, so a change made between the read and the patch is refused by the server (409).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from cloudopt_pipelines.executor.actions.base import (
    ANY_ACTION,
    ActionPlugin,
    LiveState,
    Proposal,
    RollbackRefused,
    Verification,
)
from cloudopt_pipelines.executor.aws import ExecutorError
from cloudopt_pipelines.executor.kubernetes import KINDS, KubernetesContext, ObjectKind, patch_params
from cloudopt_pipelines.executor.model import ApiCall, PlannedAction
from cloudopt_pipelines.vocabulary import (
    ENVIRONMENT_TAG_KEYS,
    K8S_HPA,
    K8S_NODEPOOL,
    K8S_PROTECT_KEY,
    K8S_WORKLOAD,
    PROTECT_TAG_KEY,
    is_protected,
    production_match,
)

SECTIONS = ("requests", "limits")
HPA_SPEC_KEYS = ("minReplicas", "maxReplicas", "metrics")


class PlanRowError(ExecutorError):
    """A Kubernetes plan row that does not follow the contract (the message says what and where)."""


# ------------------------------------------------------------------------------------------ values


def _quantity(value: Any) -> Decimal | None:
    if value is None:
        return None
    from kubernetes.utils.quantity import parse_quantity

    try:
        return Decimal(parse_quantity(value))
    except ValueError:
        return None


def same_quantity(a: Any, b: Any) -> bool:
    """Two resource quantities are the same amount (``500m`` and ``0.5``; ``1Gi`` and ``1024Mi``)."""
    if a is None or b is None:
        return a is None and b is None
    qa, qb = _quantity(a), _quantity(b)
    return qa == qb if qa is not None and qb is not None else str(a) == str(b)


def same_resources(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Two ``{"requests": {...}, "limits": {...}}`` are equal by value (a missing section is empty)."""
    for section in SECTIONS:
        left, right = dict(a.get(section) or {}), dict(b.get(section) or {})
        if set(left) != set(right) or not all(same_quantity(left[k], right[k]) for k in left):
            return False
    return True


def _resources(container: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    resources = container.get("resources") or {}
    return {s: {k: str(v) for k, v in (resources.get(s) or {}).items()} for s in SECTIONS}


def _text(resources: Mapping[str, Any]) -> str:
    parts = [
        f"{s} {', '.join(f'{k}={v}' for k, v in sorted(values.items()))}" for s, values in resources.items() if values
    ]
    return "; ".join(parts) or "none"


def apply_proposed(live: Mapping[str, Any], proposed: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """A container's resources after the plan: proposed keys set, ``null`` removed, absent unchanged."""
    out = {s: dict(live.get(s) or {}) for s in SECTIONS}
    for section in SECTIONS:
        for key, value in (proposed.get(section) or {}).items():
            if value is None:
                out[section].pop(key, None)
            else:
                out[section][key] = str(value)
    return out


def _dig(obj: Mapping[str, Any] | None, path: Sequence[str]) -> Any:
    for key in path:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(key)
    return obj


def _hpa_targets(metrics: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    out = {}
    for m in metrics or []:
        resource = m.get("resource") or {}
        target = resource.get("target") or {}
        if m.get("type") == "Resource" and target.get("type") == "Utilization":
            out[str(resource.get("name"))] = int(target.get("averageUtilization"))
    return out


def hpa_state(hpa: Mapping[str, Any]) -> dict[str, Any]:
    spec = hpa.get("spec") or {}
    return {
        "name": (hpa.get("metadata") or {}).get("name"),
        "min_replicas": spec.get("minReplicas", 1),
        "max_replicas": spec.get("maxReplicas"),
        "target": _hpa_targets(spec.get("metrics") or []),
        "metrics": copy.deepcopy(spec.get("metrics") or []),
    }


def _hpa_after(live: Mapping[str, Any], proposed: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(live))
    for key in ("min_replicas", "max_replicas"):
        if proposed.get(key) is not None:
            out[key] = int(proposed[key])
    out["target"] = {**live.get("target", {}), **{k: int(v) for k, v in (proposed.get("target") or {}).items()}}
    out.pop("metrics", None)
    return out


def _hpa_matches(live: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    return all(live.get(k) == wanted.get(k) for k in ("min_replicas", "max_replicas")) and all(
        (live.get("target") or {}).get(k) == v for k, v in (wanted.get("target") or {}).items()
    )


def _hpa_metrics(live_metrics: Sequence[Mapping[str, Any]], target: Mapping[str, int]) -> list[dict[str, Any]]:
    """The live metrics with the utilisation targets replaced (other metrics kept as they are)."""
    out, seen = [], set()
    for m in live_metrics:
        m = copy.deepcopy(dict(m))
        name = (m.get("resource") or {}).get("name")
        if m.get("type") == "Resource" and name in target:
            m["resource"]["target"] = {"type": "Utilization", "averageUtilization": int(target[name])}
            seen.add(name)
        out.append(m)
    for name, value in target.items():
        if name not in seen:
            out.append(
                {
                    "type": "Resource",
                    "resource": {"name": name, "target": {"type": "Utilization", "averageUtilization": int(value)}},
                }
            )
    return out


def merged_tags(*metas: Mapping[str, Any] | None) -> dict[str, str]:
    """Labels and annotations of the objects an action touches and of their namespace, as tags. Where two set
    the same key, the safe side wins: a protecting value, else a production-like environment value."""
    out: dict[str, str] = {}
    for meta in metas:
        for source in ((meta or {}).get("labels") or {}, (meta or {}).get("annotations") or {}):
            for key, value in source.items():
                key, value = str(key), str(value)
                if key in out and _safer(key, out[key], value):
                    continue
                out[key] = value
    return out


def _safer(key: str, kept: str, new: str) -> bool:
    if key in (K8S_PROTECT_KEY, PROTECT_TAG_KEY):
        return is_protected({key: kept}, key) and not is_protected({key: new}, key)
    if key.lower() in {k.lower() for k in ENVIRONMENT_TAG_KEYS}:
        return production_match(kept) is not None and production_match(new) is None
    return False


# ------------------------------------------------------------------------------------------ rows


def parse_resource_id(resource_id: str) -> tuple[str, str, str, str]:
    """``<cluster>/<namespace>/<kind>/<name>`` as its four parts."""
    parts = resource_id.split("/")
    if len(parts) != 4 or not all(parts):
        raise PlanRowError(
            f"resource_id {resource_id!r} is not <cluster>/<namespace>/<kind>/<name>; re-plan with the Kubernetes "
            "optimiser"
        )
    return parts[0], parts[1], parts[2].lower(), parts[3]


def _check_names(action: PlannedAction, cluster: str, namespace: str, name: str, kind: str | None = None) -> None:
    p = action.proposed_config
    given = {"cluster": p.get("cluster"), "namespace": p.get("namespace"), "name": p.get("name")}
    if kind is not None and p.get("kind") is not None:
        given["kind"] = str(p["kind"]).lower()
    wanted = {"cluster": cluster, "namespace": namespace, "name": name, "kind": kind}
    wrong = [
        f"{k} {v!r} (resource_id says {wanted[k]!r})" for k, v in given.items() if v is not None and v != wanted[k]
    ]
    if wrong:
        raise PlanRowError(f"{action.resource_id}: proposed_config names another object: {', '.join(wrong)}; re-plan")


class _Part:
    """One object an action patches: the workload (strategic merge) or its HPA (merge)."""

    def __init__(self, role: str, kind: ObjectKind, namespace: str, name: str, patch_type: str) -> None:
        self.role, self.kind, self.namespace, self.name, self.patch_type = role, kind, namespace, name, patch_type


class KubernetesPatch(ActionPlugin):
    """Shared read / plan / apply / verify / roll back of the Kubernetes patch plug-ins."""

    rollback_on_failure = True

    # --- which objects, from the row

    def parts(self, action: PlannedAction) -> tuple[str, list[_Part]]:
        raise NotImplementedError

    def wanted(self, action: PlannedAction, live: Mapping[str, Any]) -> dict[str, Any]:
        """The state the plan asks for, from the live one."""
        raise NotImplementedError

    def planned_patch(self, action: PlannedAction, part: _Part, live: Mapping[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    # --- the interface

    def read(self, ctx: KubernetesContext, action: PlannedAction) -> LiveState:
        cluster_name, parts = self.parts(action)
        cluster = ctx.cluster(cluster_name, action.resource_id)
        namespace = parts[0].namespace
        objects: dict[str, dict[str, Any]] = {}
        for part in parts:
            obj = ctx.access.get(cluster, part.kind, part.namespace, part.name)
            if obj is None:
                if part is parts[0]:
                    return LiveState(exists=False, namespace=namespace)
                continue
            objects[part.role] = obj
        ns = ctx.access.get(cluster, KINDS["namespace"], None, namespace)
        target_meta = self.scale_target_meta(ctx, cluster, objects)
        tags = merged_tags(*(o.get("metadata") for o in objects.values()), target_meta, (ns or {}).get("metadata"))
        state: dict[str, Any] = {
            "resource_versions": {r: o["metadata"].get("resourceVersion") for r, o in objects.items()}
        }
        if "workload" in objects:
            kind = parts[0].kind
            containers = _dig(objects["workload"], kind.containers_path) or []
            state["containers"] = {str(c["name"]): _resources(c) for c in containers}
        if "hpa" in objects:
            state["hpa"] = hpa_state(objects["hpa"])
        elif any(p.role == "hpa" for p in parts):
            state["hpa"] = None
        return LiveState(exists=True, tags=tags, state=state, namespace=namespace)

    def scale_target_meta(self, ctx: KubernetesContext, cluster: Any, objects: Mapping[str, Any]) -> dict | None:
        return None

    def plan(
        self,
        ctx: KubernetesContext,
        action: PlannedAction,
        live: LiveState,
        history: Sequence[Mapping[str, Any]],
    ) -> Proposal:
        if not live.exists:
            return Proposal("not_applicable", f"{action.resource_id} no longer exists: nothing to patch; re-plan")
        _cluster, parts = self.parts(action)
        state = {k: v for k, v in live.state.items() if k != "resource_versions"}
        if any(p.role == "hpa" for p in parts) and state.get("hpa") is None:
            return Proposal(
                "not_applicable",
                f"the plan changes HPA {parts[-1].namespace}/{parts[-1].name} with the requests, and it no longer "
                "exists: changed since the plan; re-plan",
                before=state,
            )
        try:
            wanted = self.wanted(action, state)
            patches = {p.role: self.planned_patch(action, p, state) for p in parts}
        except PlanRowError as exc:
            return Proposal("not_applicable", f"refused: {exc}", before=state)
        pending = [p for p in parts if not self.part_done(p, state, wanted)]
        if not pending:
            return Proposal(
                "done",
                "already applied: the live object(s) hold the plan's proposed values; nothing to patch",
                before=state,
                target=wanted,
            )
        before = state
        if len(pending) < len(parts):
            # Part of it is already in place: an earlier attempt was cut off; it started from its intent's state.
            intents = [h for h in history if h.get("event") == "intent" and h.get("state_before")]
            if intents:
                before = dict(intents[-1]["state_before"])
        cluster = ctx.cluster(_cluster, action.resource_id)
        calls = []
        for part in pending:
            body = copy.deepcopy(patches[part.role])
            body.setdefault("metadata", {})["resourceVersion"] = live.state["resource_versions"][part.role]
            calls.append(
                ApiCall("k8s:patch", patch_params(cluster, part.kind, part.namespace, part.name, body, part.patch_type))
            )
        return Proposal("ready", self.describe(parts, before, wanted), calls=calls, before=before, target=wanted)

    def part_done(self, part: _Part, state: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
        if part.role == "workload":
            live = state.get("containers") or {}
            return all(n in live and same_resources(live[n], r) for n, r in (wanted.get("containers") or {}).items())
        return state.get("hpa") is not None and _hpa_matches(state["hpa"], wanted.get("hpa") or {})

    def describe(self, parts: list[_Part], before: Mapping[str, Any], wanted: Mapping[str, Any]) -> str:
        what = []
        for name, resources in (wanted.get("containers") or {}).items():
            was = (before.get("containers") or {}).get(name, {})
            what.append(f"{name}: {_text(was)} -> {_text(resources)}")
        if wanted.get("hpa"):
            h, was = wanted["hpa"], before.get("hpa") or {}
            what.append(
                f"HPA {h.get('name')}: replicas {was.get('min_replicas')}-{was.get('max_replicas')} -> "
                f"{h.get('min_replicas')}-{h.get('max_replicas')}, target {was.get('target')} -> {h.get('target')}"
            )
        objects = ", ".join(f"{p.kind.kind.lower()} {p.namespace}/{p.name}" for p in parts)
        return f"patch {objects} ({'; '.join(what)})"

    def changes_since_plan(self, action: PlannedAction, observed: Mapping[str, Any]) -> list[str]:
        """The plan's ``current_config`` against the state the action starts from: every container's requests
        and limits it lists (a section it gives is complete: a value it lacks must be unset live), and the HPA's
        replica bounds and utilisation targets."""
        current = action.current_config
        changes = []
        live_containers = observed.get("containers") or {}
        for name, planned in (current.get("containers") or {}).items():
            if name not in live_containers:
                changes.append(f"container {name} of the plan is gone")
                continue
            for section in SECTIONS:
                if section not in planned:
                    continue
                was, now = dict(planned.get(section) or {}), dict(live_containers[name].get(section) or {})
                for key in sorted(set(was) | set(now)):
                    if not same_quantity(was.get(key), now.get(key)):
                        planned_value, live_value = was.get(key, "unset"), now.get(key, "unset")
                        changes.append(f"{name} {section}.{key} was {planned_value} in the plan, is {live_value} now")
        planned_hpa = self.planned_hpa_current(current)
        live_hpa = observed.get("hpa")
        if planned_hpa and live_hpa:
            for key in ("min_replicas", "max_replicas"):
                if planned_hpa.get(key) is not None and planned_hpa[key] != live_hpa.get(key):
                    changes.append(f"HPA {key} was {planned_hpa[key]} in the plan, is {live_hpa.get(key)} now")
            for key, value in (planned_hpa.get("target") or {}).items():
                if (live_hpa.get("target") or {}).get(key) != int(value):
                    changes.append(
                        f"HPA {key} target was {value}% in the plan, is {(live_hpa.get('target') or {}).get(key)} now"
                    )
        return changes

    def planned_hpa_current(self, current: Mapping[str, Any]) -> Mapping[str, Any] | None:
        return current.get("hpa")

    def validate(self, ctx: KubernetesContext, action: PlannedAction, proposal: Proposal) -> dict[str, Any]:
        """Every patch sent with ``dryRun=All``: the server validates it and persists nothing; what it would store
        must be what the plan asks for."""
        _cluster, parts = self.parts(action)
        cluster = ctx.cluster(_cluster, action.resource_id)
        by_name = {(p.kind.kind, p.name): p for p in parts}
        would: dict[str, Any] = {}
        for call in proposal.calls:
            part = by_name[(call.params["kind"], call.params["name"])]
            stored = ctx.access.patch(
                cluster, part.kind, part.namespace, part.name, call.params["body"], part.patch_type, dry_run=True
            )
            would.update(self.observed(part, stored))
        merged = {**proposal.before, **would}
        for part in parts:
            if not self.part_done(part, merged, proposal.target):
                raise ExecutorError(
                    f"the server's dry run of the patch of {part.kind.kind.lower()} {part.namespace}/{part.name} "
                    f"would store {would}, not the plan's {proposal.target}: refused; re-plan"
                )
        return {"server_dry_run": "dryRun=All: accepted, nothing persisted", **would}

    def observed(self, part: _Part, obj: Mapping[str, Any]) -> dict[str, Any]:
        if not obj:
            return {}
        if part.role == "workload":
            return {"containers": {str(c["name"]): _resources(c) for c in _dig(obj, part.kind.containers_path) or []}}
        return {"hpa": {k: v for k, v in hpa_state(obj).items() if k != "metrics"}}

    def apply(self, ctx: KubernetesContext, action: PlannedAction, proposal: Proposal) -> dict[str, Any]:
        _cluster, parts = self.parts(action)
        cluster = ctx.cluster(_cluster, action.resource_id)
        by_name = {(p.kind.kind, p.name): p for p in parts}
        # Requests and the HPA change together: every patch is validated (dryRun=All) before the first is sent.
        for call in proposal.calls:
            part = by_name[(call.params["kind"], call.params["name"])]
            ctx.access.patch(
                cluster, part.kind, part.namespace, part.name, call.params["body"], part.patch_type, dry_run=True
            )
        versions = {}
        for call in proposal.calls:
            part = by_name[(call.params["kind"], call.params["name"])]
            stored = ctx.access.patch(
                cluster, part.kind, part.namespace, part.name, call.params["body"], part.patch_type
            )
            versions[part.role] = stored["metadata"].get("resourceVersion")
        return {"resource_versions_applied": versions}

    def verify(
        self, ctx: KubernetesContext, action: PlannedAction, proposal: Proposal, applied: Mapping[str, Any]
    ) -> Verification:
        live = self.read(ctx, action)
        state = {k: v for k, v in live.state.items() if k != "resource_versions"}
        if not live.exists:
            return Verification(False, {"exists": False}, f"{action.resource_id} is gone after the patch")
        _cluster, parts = self.parts(action)
        wrong = [p for p in parts if not self.part_done(p, state, proposal.target)]
        observed = {k: v for k, v in state.items() if k in ("containers", "hpa")}
        if observed.get("hpa"):
            observed["hpa"] = {k: v for k, v in observed["hpa"].items() if k != "metrics"}
        if wrong:
            names = ", ".join(f"{p.kind.kind.lower()} {p.namespace}/{p.name}" for p in wrong)
            return Verification(False, observed, f"{names} read back without the plan's values")
        return Verification(True, observed)

    # --- rollback

    def _restore_calls(
        self, record: Mapping[str, Any], cluster: Any, parts: list[_Part], now: Mapping[str, Any]
    ) -> list[tuple[_Part, dict[str, Any]]]:
        before = record.get("state_before") or {}
        out = []
        for part in parts:
            if part.role == "workload":
                was, live = before.get("containers") or {}, now.get("containers") or {}
                items = []
                for name, resources in was.items():
                    if name in live and same_resources(live[name], resources):
                        continue
                    patch_resources = {}
                    for section in SECTIONS:
                        keys = set(resources.get(section) or {}) | set((live.get(name) or {}).get(section) or {})
                        patch_resources[section] = {k: (resources.get(section) or {}).get(k) for k in sorted(keys)}
                    items.append({"name": name, "resources": patch_resources})
                if items:
                    body = {"spec": {"template": {"spec": {"containers": items}}}}
                    if part.kind.kind == "CronJob":
                        body = {"spec": {"jobTemplate": body}}
                    out.append((part, body))
            else:
                was, live = before.get("hpa"), now.get("hpa")
                if not was or (live and _hpa_matches(live, was)):
                    continue
                spec = {"minReplicas": was["min_replicas"], "maxReplicas": was["max_replicas"]}
                if was.get("metrics"):
                    spec["metrics"] = was["metrics"]
                out.append((part, {"spec": spec}))
        return out

    def rollback_plan(self, record: Mapping[str, Any]) -> list[ApiCall]:
        action = _action_of_record(record)
        cluster_name, parts = self.parts(action)
        from cloudopt_pipelines.sources.kubernetes_config import ClusterConfig

        cluster = ClusterConfig(name=cluster_name, account_id=action.account_id, prometheus_url="http://unused")
        after = record.get("state_after") or {}
        return [
            ApiCall("k8s:patch", patch_params(cluster, p.kind, p.namespace, p.name, body, p.patch_type))
            for p, body in self._restore_calls(record, cluster, parts, after)
        ]

    def rollback(self, ctx: KubernetesContext, record: Mapping[str, Any]) -> dict[str, Any]:
        """Patch back to the recorded ``state_before``. From ``cloudopt rollback`` (a ``state_after`` recorded) the
        live object must still be what the apply left, else the rollback is refused: someone changed it since."""
        action = _action_of_record(record)
        cluster_name, parts = self.parts(action)
        cluster = ctx.cluster(cluster_name, action.resource_id)
        live = self.read(ctx, action)
        if not live.exists:
            raise RollbackRefused(f"{action.resource_id} no longer exists: nothing to roll back")
        state = live.state
        after = record.get("state_after")
        if after:
            for part in parts:
                if not self.part_done(part, state, after):
                    raise RollbackRefused(
                        f"{part.kind.kind.lower()} {part.namespace}/{part.name} changed since the apply (live "
                        f"{self.observed(part, {}) or {k: state.get(k) for k in ('containers', 'hpa')}}, applied "
                        f"{ {k: after.get(k) for k in ('containers', 'hpa') if k in after} }): not rolled back; check "
                        "it by hand"
                    )
        for part, body in self._restore_calls(record, cluster, parts, state):
            body.setdefault("metadata", {})["resourceVersion"] = state["resource_versions"][part.role]
            ctx.access.patch(cluster, part.kind, part.namespace, part.name, body, part.patch_type)
        restored = self.read(ctx, action).state
        return {k: restored.get(k) for k in ("containers", "hpa") if k in restored}

    def restore_refusal(
        self, record: Mapping[str, Any], current: Mapping[str, Any], proposed: Mapping[str, Any]
    ) -> str | None:
        """The recorded state to restore must be the plan row's current values (what the row says was live)."""
        before = record.get("state_before") or {}
        for name, planned in (current.get("containers") or {}).items():
            recorded = (before.get("containers") or {}).get(name)
            if recorded is None:
                continue
            for section in SECTIONS:
                if section in planned and not same_resources(
                    {section: planned.get(section) or {}}, {section: recorded.get(section) or {}}
                ):
                    return (
                        f"the audit record of {record.get('action_id')} would restore container {name} {section} to "
                        f"{recorded.get(section)}, not the plan's current {planned.get(section)}; refusing: check the "
                        "audit file and the workload by hand"
                    )
        planned_hpa, recorded_hpa = self.planned_hpa_current(current), before.get("hpa")
        if planned_hpa and recorded_hpa:
            for key in ("min_replicas", "max_replicas"):
                if planned_hpa.get(key) is not None and planned_hpa[key] != recorded_hpa.get(key):
                    return (
                        f"the audit record of {record.get('action_id')} would restore HPA {key} "
                        f"{recorded_hpa.get(key)}, not the plan's current {planned_hpa[key]}; refusing"
                    )
        return None


class ResizeRequests(KubernetesPatch):
    """A workload's container requests and limits (strategic merge patch of its pod template), and its HPA
    (merge patch) when the plan changes both: validated together, applied together, rolled back together."""

    actions = ("resize_requests",)
    resource_kinds = (K8S_WORKLOAD,)

    def parts(self, action: PlannedAction) -> tuple[str, list[_Part]]:
        cluster, namespace, kind_name, name = parse_resource_id(action.resource_id)
        _check_names(action, cluster, namespace, name, kind_name)
        kind = KINDS.get(kind_name)
        if kind is None or not kind.containers_path:
            patchable = ", ".join(k for k, v in KINDS.items() if v.containers_path)
            raise PlanRowError(
                f"{action.resource_id}: a {kind_name} is not patched in place (its pods' spec is immutable or it "
                f"has none); the executor patches {patchable}: apply the recommendation in its owner or chart"
            )
        parts = [_Part("workload", kind, namespace, name, "strategic")]
        hpa = action.proposed_config.get("hpa")
        if hpa:
            if not hpa.get("name"):
                raise PlanRowError(f"{action.resource_id}: proposed_config.hpa has no name")
            parts.append(_Part("hpa", KINDS["hpa"], namespace, str(hpa["name"]), "merge"))
        return cluster, parts

    def wanted(self, action: PlannedAction, live: Mapping[str, Any]) -> dict[str, Any]:
        proposed = action.proposed_config.get("containers")
        if not isinstance(proposed, Mapping) or not proposed:
            raise PlanRowError(f"{action.resource_id}: proposed_config.containers is missing or empty")
        containers = live.get("containers") or {}
        missing = sorted(set(proposed) - set(containers))
        if missing:
            raise PlanRowError(
                f"{action.resource_id}: the workload has no container(s) {missing} (changed since the plan)"
            )
        out: dict[str, Any] = {"containers": {n: apply_proposed(containers[n], r) for n, r in proposed.items()}}
        hpa = action.proposed_config.get("hpa")
        if hpa:
            out["hpa"] = _hpa_after(live.get("hpa") or {}, hpa)
        return out

    def planned_patch(self, action: PlannedAction, part: _Part, live: Mapping[str, Any]) -> dict[str, Any]:
        if part.role == "hpa":
            return _hpa_patch(action, action.proposed_config["hpa"], live.get("hpa") or {})
        proposed = action.proposed_config["containers"]
        patch = action.proposed_config.get("patch")
        if patch is None:
            items = [
                {"name": n, "resources": {s: dict(r[s]) for s in SECTIONS if r.get(s)}} for n, r in proposed.items()
            ]
            body: dict[str, Any] = {"spec": {"template": {"spec": {"containers": items}}}}
            return {"spec": {"jobTemplate": body}} if part.kind.kind == "CronJob" else body
        _check_workload_patch(action, part.kind, patch, proposed)
        return copy.deepcopy(dict(patch))

    def scale_target_meta(self, ctx: KubernetesContext, cluster: Any, objects: Mapping[str, Any]) -> dict | None:
        return None


class TuneHpa(KubernetesPatch):
    """An HPA's replica bounds and utilisation targets (merge patch), when only the HPA changes."""

    actions = ("tune_hpa",)
    resource_kinds = (K8S_HPA,)

    def parts(self, action: PlannedAction) -> tuple[str, list[_Part]]:
        cluster, namespace, kind_name, name = parse_resource_id(action.resource_id)
        if kind_name != "hpa":
            raise PlanRowError(
                f"{action.resource_id}: a tune_hpa row's resource_id is <cluster>/<namespace>/hpa/<name>"
            )
        _check_names(action, cluster, namespace, name)
        return cluster, [_Part("hpa", KINDS["hpa"], namespace, name, "merge")]

    def wanted(self, action: PlannedAction, live: Mapping[str, Any]) -> dict[str, Any]:
        return {"hpa": _hpa_after(live.get("hpa") or {}, action.proposed_config)}

    def planned_patch(self, action: PlannedAction, part: _Part, live: Mapping[str, Any]) -> dict[str, Any]:
        return _hpa_patch(action, action.proposed_config, live.get("hpa") or {})

    def planned_hpa_current(self, current: Mapping[str, Any]) -> Mapping[str, Any] | None:
        return current.get("hpa") or current

    def scale_target_meta(self, ctx: KubernetesContext, cluster: Any, objects: Mapping[str, Any]) -> dict | None:
        """The workload the HPA scales: protecting it (or its being production) protects its HPA too."""
        ref = ((objects.get("hpa") or {}).get("spec") or {}).get("scaleTargetRef") or {}
        kind = KINDS.get(str(ref.get("kind", "")).lower())
        if kind is None or not ref.get("name"):
            return None
        namespace = objects["hpa"]["metadata"].get("namespace")
        target = ctx.access.get(cluster, kind, namespace, str(ref["name"]))
        return (target or {}).get("metadata")


def _check_workload_patch(action: PlannedAction, kind: ObjectKind, patch: Any, proposed: Mapping[str, Any]) -> None:
    """The plan's workload patch may change container resources only, exactly as ``containers`` says."""
    where = f"{action.resource_id}: proposed_config.patch"
    path = kind.containers_path
    node: Any = patch
    for key in path[:-1]:
        if not isinstance(node, Mapping) or set(node) != {key}:
            raise PlanRowError(f"{where} may only hold {'.'.join(path)}[].resources; it holds {sorted(node or {})}")
        node = node[key]
    if not isinstance(node, Mapping) or set(node) != {path[-1]} or not isinstance(node[path[-1]], list):
        raise PlanRowError(f"{where} may only hold {'.'.join(path)}[].resources")
    named = {}
    for item in node[path[-1]]:
        if not isinstance(item, Mapping) or not item.get("name") or set(item) - {"name", "resources"}:
            raise PlanRowError(f"{where}: each container item holds only name and resources, got {item}")
        if set(item.get("resources") or {}) - set(SECTIONS):
            raise PlanRowError(f"{where}: container {item['name']} changes more than requests and limits")
        named[str(item["name"])] = item.get("resources") or {}
    if set(named) != set(proposed):
        raise PlanRowError(f"{where} patches containers {sorted(named)}, proposed_config.containers {sorted(proposed)}")
    for name, resources in proposed.items():
        for section in SECTIONS:
            want, got = dict((resources or {}).get(section) or {}), dict(named[name].get(section) or {})
            if set(want) != set(got) or not all(
                (want[k] is None and got[k] is None) or same_quantity(want[k], got[k]) for k in want
            ):
                raise PlanRowError(
                    f"{where}: container {name} {section} {got} differs from proposed_config.containers {want}"
                )


def _hpa_patch(action: PlannedAction, proposed: Mapping[str, Any], live: Mapping[str, Any]) -> dict[str, Any]:
    """The plan's HPA merge patch, checked to change only replica bounds and metrics as the row says; built from
    the row's values when it has none."""
    where = f"{action.resource_id}: the HPA patch"
    patch = proposed.get("patch")
    target = {k: int(v) for k, v in (proposed.get("target") or {}).items()}
    if patch is None:
        spec: dict[str, Any] = {}
        if proposed.get("min_replicas") is not None:
            spec["minReplicas"] = int(proposed["min_replicas"])
        if proposed.get("max_replicas") is not None:
            spec["maxReplicas"] = int(proposed["max_replicas"])
        if target:
            spec["metrics"] = _hpa_metrics(live.get("metrics") or [], target)
        return {"spec": spec}
    if not isinstance(patch, Mapping) or set(patch) != {"spec"} or set(patch["spec"] or {}) - set(HPA_SPEC_KEYS):
        raise PlanRowError(f"{where} may only change spec.{', spec.'.join(HPA_SPEC_KEYS)}; it holds {patch}")
    spec = patch["spec"]
    for key, field in (("min_replicas", "minReplicas"), ("max_replicas", "maxReplicas")):
        if field in spec and proposed.get(key) is not None and int(spec[field]) != int(proposed[key]):
            raise PlanRowError(f"{where} sets {field}={spec[field]}, the row {key}={proposed[key]}")
    if (
        "metrics" in spec
        and target
        and {k: v for k, v in _hpa_targets(spec["metrics"]).items() if k in target} != target
    ):
        raise PlanRowError(f"{where} sets targets {_hpa_targets(spec['metrics'])}, the row {target}")
    if "metrics" in spec and not target and _hpa_targets(spec["metrics"]) != (live.get("target") or {}):
        raise PlanRowError(f"{where} changes metrics the row does not name (target is empty)")
    return copy.deepcopy(dict(patch))


class NodePoolAdvice(ActionPlugin):
    """Node-pool sizing is advice: the cluster autoscaler, Karpenter or the node group applies it, not cloudopt."""

    # Every action on a node pool (resize_nodepool, or an option's name such as rightsize_spot_mix) is advice.
    actions = ("resize_nodepool", ANY_ACTION)
    resource_kinds = (K8S_NODEPOOL,)
    advisory = True

    def advice(self, action: PlannedAction) -> str:
        p = action.proposed_config
        nodes = ", ".join(
            f"{n.get('count')} x {n.get('instance_type')} {n.get('capacity_type') or ''}".strip()
            for n in p.get("nodes") or []
        )
        bounds = f"; min {p.get('min_nodes')}, max {p.get('max_nodes')} nodes" if p.get("min_nodes") is not None else ""
        return (
            f"node pool {p.get('nodepool') or action.resource_id}: set {nodes or 'the proposed nodes'}{bounds} in its "
            "Karpenter NodePool or node group (the cluster autoscaler then follows the recommended requests)"
        )

    def read(self, ctx: Any, action: PlannedAction) -> LiveState:
        return LiveState(exists=False)

    def plan(self, ctx: Any, action: PlannedAction, live: LiveState, history: Sequence[Mapping[str, Any]]) -> Proposal:
        return Proposal("not_applicable", self.advice(action))

    def apply(self, ctx: Any, action: PlannedAction, proposal: Proposal) -> dict[str, Any]:
        raise ExecutorError("node-pool rows are advisory and never applied")

    def verify(self, ctx: Any, action: PlannedAction, proposal: Proposal, applied: Mapping[str, Any]) -> Verification:
        return Verification(False, {}, "advisory")

    def rollback(self, ctx: Any, record: Mapping[str, Any]) -> dict[str, Any]:
        raise RollbackRefused("node-pool rows are advisory: nothing was applied")


def _action_of_record(record: Mapping[str, Any]) -> PlannedAction:
    from datetime import date

    plan = record.get("plan_config") or {}
    return PlannedAction(
        action_id=str(record.get("action_id") or ""),
        plan_id=str(record.get("plan_id") or ""),
        date=date.fromisoformat(str(record.get("date") or "1970-01-01")),
        account_id=str(record.get("account_id") or ""),
        region=str(record.get("region") or ""),
        zone=None,
        resource_id=str(record["resource_id"]),
        resource_kind=str(record.get("resource_kind") or ""),
        action=str(record.get("action") or ""),
        option_name=str(record.get("option_name") or ""),
        proposed_config=dict(plan.get("proposed") or record.get("proposed_config") or {}),
        current_config=dict(plan.get("current") or {}),
    )


def kubernetes_plugins() -> dict[tuple[str, str], ActionPlugin]:
    """(resource kind, plan action) -> plug-in of the Kubernetes target."""
    plugins: list[ActionPlugin] = [ResizeRequests(), TuneHpa(), NodePoolAdvice()]
    return {(kind, action): p for p in plugins for kind in p.resource_kinds for action in p.actions}
