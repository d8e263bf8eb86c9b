"""The Kubernetes optimiser's decision rules, one test each (pure code: no Dagster, no cluster).

Inputs are the feature rows the optimiser reads (k8s_workloads, k8s_usage_daily, container_usage_histogram)
written out by hand, so each rule's numbers can be checked with plain arithmetic; prices come from the
real embedded EC2 price catalogue.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pyarrow as pa
import pytest

from cloudopt_pipelines.catalog.prices import build_price_catalog
from cloudopt_pipelines.optimizers.kubernetes import (
    ClusterInput,
    KubernetesOptimizer,
    KubernetesSettings,
    qos_class,
)
from cloudopt_pipelines.optimizers.sizing import Catalog
from cloudopt_pipelines.storage.schemas import K8S_WORKLOADS, RECOMMENDATIONS

ACCOUNT = "123456789012"
DAY = date(2026, 11, 20)
MIB = 2**20
GIB = 2**30
CLUSTER = "prod"


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog(build_price_catalog())


def node(name: str, itype: str = "m5.xlarge", capacity: str = "on_demand", cores: float = 4.0, gib: float = 16.0):
    return {
        "resource_id": f"{CLUSTER}/node/{name}",
        "object_kind": "node",
        "name": name,
        "instance_type": itype,
        "zone": "us-east-1a",
        "capacity_type": capacity,
        "allocatable_cpu_cores": cores,
        "allocatable_mem_bytes": gib * GIB,
    }


def workload(rid: str, containers: list[tuple], replicas: int = 3, qos: str | None = "Burstable", labels=None):
    _, ns, kind, name = rid.split("/")
    return [
        {
            "resource_id": rid,
            "object_kind": kind,
            "namespace": ns,
            "name": name,
            "container": c[0],
            "replicas": replicas,
            "cpu_request_cores": c[1],
            "cpu_limit_cores": c[2],
            "mem_request_bytes": c[3],
            "mem_limit_bytes": c[4],
            "qos_class": qos,
            "labels": json.dumps(labels or {}),
        }
        for c in containers
    ]


def namespace(name: str, labels: dict | None = None):
    return {"resource_id": f"{CLUSTER}/namespace/{name}", "object_kind": "namespace", "name": name, "namespace": name,
            "labels": json.dumps({"kubernetes.io/metadata.name": name} if labels is None else labels)}  # fmt: skip


def hpa(target_rid: str, metrics: list[dict], min_r: int = 2, max_r: int = 10):
    _, ns, _kind, name = target_rid.split("/")
    return {
        "resource_id": f"{CLUSTER}/{ns}/hpa/{name}",
        "object_kind": "hpa",
        "namespace": ns,
        "name": name,
        "target_id": target_rid,
        "min_replicas": min_r,
        "max_replicas": max_r,
        "metrics": json.dumps(metrics),
    }


CPU_HPA = [
    {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}}
]


def daily(rid: str, container: str, days: int = 8, **over: Any) -> list[dict[str, Any]]:
    """``days`` daily rows ending with DAY; ``over`` sets columns (a callable gets the day's offset back)."""
    rows = []
    for back in range(days):
        d = DAY - timedelta(days=back)
        start = datetime.combine(d, datetime.min.time(), tzinfo=UTC)
        row = {
            "cluster": CLUSTER,
            "resource_id": rid,
            "container": container,
            "date": d,
            "samples": 288,
            "first_ts": start,
            "last_ts": start + timedelta(hours=23, minutes=55),
            "cpu_p50_cores": 0.1,
            "cpu_p90_cores": 0.2,
            "cpu_p95_cores": 0.25,
            "cpu_p99_cores": 0.3,
            "cpu_max_cores": 0.4,
            "cpu_mean_cores": 0.1,
            "mem_peak_bytes": 300 * MIB,
            "throttled_p95_ratio": 0.0,
            "oom_kills": 0,
            "restarts": 0,
            "replicas_mean": 3.0,
            "replicas_min": 3,
            "replicas_max": 3,
            "cpu_request_cores": None,
            "mem_request_bytes": None,
        }
        for k, v in over.items():
            row[k] = v(back) if callable(v) else v
        rows.append(row)
    return rows


def histogram(rid: str, container: str, p50=0.1, p90=0.2, p95=0.25):
    return {"resource_id": rid, "container": container, "cpu_lower_cores": p50, "cpu_target_cores": p90,
            "cpu_upper_cores": p95}  # fmt: skip


def run(catalog, objects, usage, hist, settings=None, days_found=8):
    wl = pa.Table.from_pylist([{"cluster": CLUSTER, **o} for o in objects], schema=K8S_WORKLOADS)
    ci = ClusterInput(
        account_id=ACCOUNT,
        day=DAY,
        cluster=CLUSTER,
        workloads=wl,
        usage_daily=pa.Table.from_pylist(usage) if usage else pa.table({"resource_id": pa.array([], pa.string())}),
        histogram=pa.Table.from_pylist(hist) if hist else pa.table({"resource_id": pa.array([], pa.string())}),
        catalog=catalog,
        days_found=tuple(DAY - timedelta(days=i) for i in range(days_found)),
        settings=settings or KubernetesSettings(),
    )
    result = KubernetesOptimizer(ci).optimize_cluster()
    assert result.table.schema.equals(RECOMMENDATIONS)
    return result


def options(result, rid: str) -> dict[str, dict[str, Any]]:
    rows = [r for r in result.table.to_pylist() if r["resource_id"] == rid]
    assert sum(r["is_best"] for r in rows) == 1 and any(r["option_name"] == "keep" for r in rows)
    return {r["option_name"]: r for r in rows}


def proposed(row) -> dict[str, Any]:
    return json.loads(row["proposed_config"])


WEB = f"{CLUSTER}/shop/deployment/web"
BASE = [node("n1"), node("n2"), namespace("shop")]


def test_cpu_from_the_p90_plus_margin_and_memory_from_daily_peaks_in_the_window(catalog) -> None:
    objects = BASE + workload(WEB, [("app", 1.0, None, 1 * GIB, 1 * GIB)])
    # a 900 MiB peak 10 days back is outside the 8-day window; the window's highest daily peak is 400 MiB
    usage = daily(
        WEB,
        "app",
        days=11,
        mem_peak_bytes=lambda back: 400 * MIB if back == 3 else 900 * MIB if back == 10 else 300 * MIB,
    )
    result = run(catalog, objects, usage, [histogram(WEB, "app", p90=0.2)])
    row = options(result, WEB)["resize_requests"]
    app = proposed(row)["containers"]["app"]
    assert app["requests"] == {"cpu": "230m", "memory": f"{int(-(-400 * 1.15 // 1))}Mi"}
    assert row["is_best"] and row["monthly_savings_usd"] > 0
    # the percentile is a setting: P95 is the histogram's upper bound
    result = run(catalog, objects, usage, [histogram(WEB, "app", p95=0.4)], KubernetesSettings(cpu_percentile=95))
    assert proposed(options(result, WEB)["resize_requests"])["containers"]["app"]["requests"]["cpu"] == "460m"


def test_oom_bump_and_no_memory_cut_while_the_oom_is_recent(catalog) -> None:
    objects = BASE + workload(WEB, [("app", 0.2, None, 1 * GIB, 1 * GIB)])
    recent = daily(WEB, "app", oom_kills=lambda back: 1 if back == 2 else 0, mem_peak_bytes=200 * MIB)
    app = proposed(options(run(catalog, objects, recent, [histogram(WEB, "app")]), WEB)["resize_requests"])
    # bump of the limit the OOM hit: max(1.2 x 1024, 1024 + 100) MiB, never under today's request
    assert app["containers"]["app"]["requests"]["memory"] == f"{int(-(-1024 * 1.2 // 1))}Mi"
    old = daily(WEB, "app", days=8, oom_kills=lambda back: 1 if back == 7 else 0, mem_peak_bytes=200 * MIB)
    row = options(run(catalog, objects, old, [histogram(WEB, "app")], KubernetesSettings(oom_recent_days=3)), WEB)
    mem = proposed(row["resize_requests"])["containers"]["app"]["requests"]["memory"]
    assert mem == f"{int(-(-1024 * 1.2 // 1))}Mi"  # the bump from the limit hit still holds
    small = workload(WEB, [("app", 0.2, None, 1 * GIB, None)])  # no limit: the bump is from the peak
    row = options(run(catalog, BASE + small, old, [histogram(WEB, "app")], KubernetesSettings(oom_recent_days=3)), WEB)
    mem = proposed(row["resize_requests"])["containers"]["app"]["requests"]["memory"]
    assert mem == "300Mi"  # max(1.2 x 200, 200 + 100) = 300 > 200 x 1.15: a cut, since the OOM is not recent
    row = options(run(catalog, BASE + small, old, [histogram(WEB, "app")], KubernetesSettings(oom_recent_days=8)), WEB)
    assert proposed(row["resize_requests"])["containers"]["app"]["requests"]["memory"] == "1024Mi"  # no cut
    assert "no cut of memory: OOM kill recent" in row["resize_requests"]["rationale"]


def test_pod_minimums_spread_over_containers(catalog) -> None:
    objects = BASE + workload(WEB, [("app", 0.5, None, 512 * MIB, None), ("proxy", 0.5, None, 512 * MIB, None)])
    usage = daily(WEB, "app", cpu_p90_cores=0.004, mem_peak_bytes=60 * MIB) + daily(
        WEB, "proxy", mem_peak_bytes=20 * MIB
    )
    hist = [histogram(WEB, "app", p90=0.006), histogram(WEB, "proxy", p90=0.002)]
    c = proposed(options(run(catalog, objects, usage, hist), WEB)["resize_requests"])["containers"]
    cpu = [int(c[n]["requests"]["cpu"][:-1]) for n in ("app", "proxy")]
    mem = [int(c[n]["requests"]["memory"][:-2]) for n in ("app", "proxy")]
    assert sum(cpu) >= 25 and sum(cpu) <= 27 and cpu[0] > cpu[1]  # 25 m in proportion 3:1, rounded up
    assert 250 <= sum(mem) <= 252 and mem[0] == pytest.approx(3 * mem[1], abs=2)


def test_throttling_raises_cpu(catalog) -> None:
    objects = BASE + workload(WEB, [("app", 0.25, 0.25, 512 * MIB, 512 * MIB)])
    usage = daily(WEB, "app", throttled_p95_ratio=lambda back: 0.3 if back == 1 else 0.0, cpu_p99_cores=0.35)
    row = options(run(catalog, objects, usage, [histogram(WEB, "app", p90=0.1)]), WEB)["resize_requests"]
    assert proposed(row)["containers"]["app"]["requests"]["cpu"] == "350m"  # P99, not 1.15 x P90 = 115m
    assert "throttled" in row["rationale"]


def test_limit_policy_and_qos(catalog) -> None:
    objects = BASE + workload(WEB, [("app", 1.0, 2.0, 1 * GIB, 2 * GIB)])
    usage, hist = daily(WEB, "app"), [histogram(WEB, "app")]
    p = proposed(options(run(catalog, objects, usage, hist), WEB)["resize_requests"])
    app = p["containers"]["app"]
    assert app["limits"] == {"cpu": None, "memory": app["requests"]["memory"]}  # CPU limit removed
    assert p["patch"]["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] is None
    assert p["qos_class"] == "Burstable"
    settings = KubernetesSettings(cpu_limit_policy="ratio", memory_limit_policy="ratio", memory_limit_ratio=2.0)
    app = proposed(options(run(catalog, objects, usage, hist, settings), WEB)["resize_requests"])["containers"]["app"]
    assert app["limits"]["cpu"] == "460m" and app["limits"]["memory"] == f"{2 * int(app['requests']['memory'][:-2])}Mi"


def test_guaranteed_stays_guaranteed_unless_configured(catalog) -> None:
    objects = BASE + workload(WEB, [("app", 1.0, 1.0, 1 * GIB, 1 * GIB)], qos="Guaranteed")
    usage, hist = daily(WEB, "app"), [histogram(WEB, "app")]
    p = proposed(options(run(catalog, objects, usage, hist), WEB)["resize_requests"])
    assert p["qos_class"] == "Guaranteed"
    assert p["containers"]["app"]["limits"] == p["containers"]["app"]["requests"]
    p = proposed(
        options(run(catalog, objects, usage, hist, KubernetesSettings(keep_guaranteed=False)), WEB)["resize_requests"]
    )
    assert p["qos_class"] == "Burstable"
    assert qos_class([(None, None, None, None)]) == "BestEffort"
    assert qos_class([(None, 1.0, None, GIB)]) == "Guaranteed"  # requests default to the limits


def test_hpa_on_cpu_target_and_requests_together(catalog) -> None:
    objects = BASE + workload(WEB, [("app", 0.5, None, 512 * MIB, 512 * MIB)]) + [hpa(WEB, CPU_HPA, 3, 10)]
    usage = daily(WEB, "app", cpu_mean_cores=0.15, replicas_min=2, replicas_max=6, replicas_mean=4.0)
    result = run(catalog, objects, usage, [histogram(WEB, "app", p90=0.2, p95=0.25)])
    row = options(result, WEB)["resize_requests"]
    h = proposed(row)["hpa"]
    assert h["target"] == {"cpu": 60}  # 0.15 mean / 0.25 P95
    assert h["patch"]["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] == 60
    assert h["min_replicas"] == 2 and h["max_replicas"] == 10  # min from history (2 pods x 50/60), max kept
    assert "--type merge" in h["kubectl"] and h["resource_id"] == f"{CLUSTER}/shop/hpa/web"
    # the target is clamped to 30-75 %
    low = daily(WEB, "app", cpu_mean_cores=0.01)
    result = run(catalog, objects, low, [histogram(WEB, "app", p95=0.25)])
    tune = options(result, f"{CLUSTER}/shop/hpa/web")["tune_hpa"]  # more replicas: a cost, not the best
    assert proposed(tune)["target"] == {"cpu": 30} and tune["monthly_savings_usd"] < 0 and not tune["is_best"]
    # cutting the CPU request under the HPA would only add replicas: it is kept, the target carries the saving
    assert proposed(row)["containers"]["app"]["requests"]["cpu"] == "500m"
    assert json.loads(row["details"])["pods_mean"] == pytest.approx(4.0 * 50 / 60, abs=1e-3)
    assert "a cut only adds replicas" in row["rationale"]


def test_hpa_only_row_when_requests_are_right(catalog) -> None:
    objects = BASE + workload(WEB, [("app", 0.23, None, 345 * MIB, 345 * MIB)]) + [hpa(WEB, CPU_HPA, 2, 10)]
    usage = daily(WEB, "app", cpu_mean_cores=0.18)
    result = run(catalog, objects, usage, [histogram(WEB, "app", p95=0.25)])
    assert set(options(result, WEB)) == {"keep"}
    hpa_opts = options(result, f"{CLUSTER}/shop/hpa/web")
    tune = hpa_opts["tune_hpa"]
    assert tune["resource_kind"] == "k8s_hpa" and tune["is_best"] and tune["monthly_savings_usd"] > 0
    assert proposed(tune)["target"] == {"cpu": 72} and "kubectl" in proposed(tune)


def mem_hpa(target: int) -> dict[str, Any]:
    return {"type": "Resource", "resource": {"name": "memory", "target": {"type": "Utilization",
            "averageUtilization": target}}}  # fmt: skip


def test_hpa_on_memory_target_from_history_and_requests_together(catalog) -> None:
    objects = BASE + workload(WEB, [("app", 1.0, None, 1 * GIB, 1 * GIB)]) + [hpa(WEB, [mem_hpa(50)], 2, 10)]
    # mean working set per pod 210 MiB, busiest pod's peak 300 MiB: a 70 % target
    usage = daily(WEB, "app", mem_mean_bytes=210 * MIB, replicas_min=2, replicas_max=6, replicas_mean=4.0)
    row = options(run(catalog, objects, usage, [histogram(WEB, "app")]), WEB)["resize_requests"]
    h = proposed(row)["hpa"]
    assert h["target"] == {"memory": 70}
    assert h["patch"]["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] == 70
    # the memory request is not cut under a memory HPA (a cut only adds replicas); the target carries the
    # saving: pods ~ request x old target / (request x new target)
    assert proposed(row)["containers"]["app"]["requests"]["memory"] == "1024Mi"
    assert json.loads(row["details"])["pods_mean"] == pytest.approx(4.0 * 50 / 70, abs=1e-3)
    assert "memory target 50 % -> 70 %" in row["rationale"] and "scales on memory" in row["rationale"]
    assert json.loads(row["current_config"])["hpa"]["target"] == {"cpu": None, "memory": 50}
    # clamped to 30-75 %, both ways
    for mean, want in ((15 * MIB, 30), (295 * MIB, 75)):
        usage = daily(WEB, "app", mem_mean_bytes=mean)
        result = run(catalog, objects, usage, [histogram(WEB, "app")])
        assert proposed(options(result, WEB)["resize_requests"])["hpa"]["target"] == {"memory": want}


def test_hpa_on_cpu_and_memory_follows_the_metric_asking_for_more_pods(catalog) -> None:
    metrics = [*CPU_HPA, mem_hpa(50)]
    objects = BASE + workload(WEB, [("app", 0.5, None, 512 * MIB, 512 * MIB)]) + [hpa(WEB, metrics, 2, 10)]
    # CPU: 0.15 / 0.25 -> 60 %, fewer pods x 50/60; memory: 150 / 300 -> 50 %, unchanged: memory binds
    usage = daily(WEB, "app", cpu_mean_cores=0.15, mem_mean_bytes=150 * MIB, replicas_mean=4.0)
    result = run(catalog, objects, usage, [histogram(WEB, "app", p95=0.25)])
    assert set(options(result, WEB)) == {"keep"}  # neither request is cut under its HPA
    tune = options(result, f"{CLUSTER}/shop/hpa/web")["tune_hpa"]
    assert proposed(tune)["target"] == {"cpu": 60, "memory": 50}
    metrics = proposed(tune)["patch"]["spec"]["metrics"]
    assert {m["resource"]["name"]: m["resource"]["target"]["averageUtilization"] for m in metrics} == {
        "cpu": 60,
        "memory": 50,
    }
    # memory keeps the pods at 4, so the higher CPU target saves nothing
    assert tune["monthly_savings_usd"] == pytest.approx(0.0, abs=1e-6)
    only_cpu = run(catalog, [*objects[:-1], hpa(WEB, CPU_HPA, 2, 10)], usage, [histogram(WEB, "app", p95=0.25)])
    cpu_row = options(only_cpu, WEB)["resize_requests"]  # CPU alone: the pods follow its target
    assert json.loads(cpu_row["details"])["pods_mean"] == pytest.approx(4.0 * 50 / 60, abs=1e-3)


def test_hpa_on_memory_without_a_mean_keeps_its_target(catalog) -> None:
    objects = BASE + workload(WEB, [("app", 1.0, None, 1 * GIB, 1 * GIB)]) + [hpa(WEB, [mem_hpa(65)], 2, 10)]
    row = options(run(catalog, objects, daily(WEB, "app"), [histogram(WEB, "app")]), WEB)["resize_requests"]
    assert proposed(row)["hpa"] is None  # nothing to move: the target stays 65 %
    assert "memory target 65 % -> 65 %" in row["rationale"]


def test_hpa_on_a_custom_metric_leaves_the_hpa_with_a_reason(catalog) -> None:
    custom = [{"type": "External", "external": {"metric": {"name": "sqs_messages"}, "target": {"type": "Value"}}}]
    objects = BASE + workload(WEB, [("app", 1.0, None, 1 * GIB, 1 * GIB)]) + [hpa(WEB, custom)]
    row = options(run(catalog, objects, daily(WEB, "app"), [histogram(WEB, "app")]), WEB)["resize_requests"]
    assert proposed(row)["hpa"] is None
    assert "External metric 'sqs_messages'" in row["rationale"]


def test_cronjob_and_job_groups_get_one_recommendation(catalog) -> None:
    cron = f"{CLUSTER}/batch/cronjob/report"
    group = f"{CLUSTER}/batch/jobgroup/dagster-nightly"
    objects = [*BASE, namespace("batch")]
    objects += workload(cron, [("main", 2.0, None, 2 * GIB, 2 * GIB)], replicas=None)
    objects += workload(group, [("run", 2.0, None, 2 * GIB, 2 * GIB)], replicas=None)
    usage = daily(cron, "main", samples=72, replicas_mean=1.0) + daily(group, "run", samples=72, replicas_mean=2.0)
    result = run(catalog, objects, usage, [histogram(cron, "main"), histogram(group, "run")])
    c = options(result, cron)["resize_requests"]
    p = proposed(c)
    assert p["kind"] == "CronJob" and "jobTemplate" in p["patch"]["spec"]
    assert json.loads(c["details"])["pods_mean"] == pytest.approx(72 / 288)  # a quarter of the day running
    g = proposed(options(result, group)["resize_requests"])
    assert g["patch"] is None and g["kubectl"] is None and "advisory" in g
    workloads = {r["resource_id"] for r in result.table.to_pylist() if r["resource_kind"] == "k8s_workload"}
    assert len(workloads) == 2  # one resource per group
    # a CronJob's history is counted in days with runs, not hours: one day of 6 h runs is enough
    one_day = daily(cron, "main", days=1, samples=72, replicas_mean=1.0)
    result = run(catalog, objects, one_day, [histogram(cron, "main")], days_found=1)
    assert "resize_requests" in options(result, cron)
    short = run(catalog, objects, one_day, [histogram(cron, "main")], KubernetesSettings(min_history_hours=48), 1)
    assert set(options(short, cron)) == {"keep"} and "runs on 1 day(s)" in options(short, cron)["keep"]["rationale"]


def test_below_threshold_is_left_as_it_is(catalog) -> None:
    objects = BASE + workload(WEB, [("app", 0.22, None, 330 * MIB, 330 * MIB)])
    opts = options(run(catalog, objects, daily(WEB, "app"), [histogram(WEB, "app")]), WEB)
    assert set(opts) == {"keep"} and opts["keep"]["finding"] == "well_sized"
    assert "left as it is" in opts["keep"]["rationale"]
    # a bigger relative change that saves less than the minimum is left as well
    tiny = BASE + workload(WEB, [("app", 0.3, None, 400 * MIB, 400 * MIB)], replicas=1)
    opts = options(run(catalog, tiny, daily(WEB, "app", replicas_mean=1.0), [histogram(WEB, "app")],
                       KubernetesSettings(min_monthly_saving_usd=50)), WEB)  # fmt: skip
    assert set(opts) == {"keep"}


def test_savings_priced_from_node_cost_per_core_and_gib_hour(catalog) -> None:
    objects = [node("n1"), node("n2", "c6g.xlarge", "spot", cores=4.0, gib=8.0), namespace("shop")]
    objects += workload(WEB, [("app", 1.0, None, 1 * GIB, 1 * GIB)])
    row = options(run(catalog, objects, daily(WEB, "app"), [histogram(WEB, "app")]), WEB)["resize_requests"]
    m5, c6g = catalog.get("us-east-1", "m5.xlarge"), catalog.get("us-east-1", "c6g.xlarge")
    cpu_usd = m5.ondemand_usd_per_hour * 30 / 46 + c6g.spot_usd_per_hour * 30 / 38  # 7.5 x vCPU : GiB
    mem_usd = m5.ondemand_usd_per_hour * 16 / 46 + c6g.spot_usd_per_hour * 8 / 38
    per_core, per_gib = cpu_usd / 8, mem_usd / 24
    new_mem = int(-(-300 * 1.15 // 1)) * MIB
    expected = 3 * ((1.0 - 0.23) * per_core + (1 * GIB - new_mem) / GIB * per_gib) * 730
    assert row["monthly_savings_usd"] == pytest.approx(expected, abs=1e-3)


def test_node_type_missing_from_the_catalogue_is_a_recorded_reason(catalog) -> None:
    objects = [node("n1", "m9.huge"), namespace("shop"), *workload(WEB, [("app", 1.0, None, 1 * GIB, 1 * GIB)])]
    result = run(catalog, objects, daily(WEB, "app"), [histogram(WEB, "app")])
    rows = result.table.to_pylist()
    assert rows and all(r["monthly_cost_proposed_usd"] is None for r in rows)
    assert "m9.huge" in rows[0]["rationale"]
    unpriced = KubernetesOptimizer().unpriced(result.table)
    # the workload and its (unnamed) node pool alike: neither can be priced
    assert sorted(u.resource_id for u in unpriced) == [f"{CLUSTER}/nodepool/unpooled", WEB]
    assert all("m9.huge" in u.reason for u in unpriced)
    assert KubernetesOptimizer().candidates(result.table) == []
    # one unknown type among priced ones: left out of the rate, named in the notes
    result = run(catalog, [*objects, node("n2")], daily(WEB, "app"), [histogram(WEB, "app")])
    assert options(result, WEB)["resize_requests"]["monthly_savings_usd"] > 0
    assert any("m9.huge" in n for n in result.metadata["notes"])


def test_no_cut_below_the_minimum_history_or_on_stale_usage(catalog) -> None:
    objects = BASE + workload(WEB, [("app", 1.0, None, 1 * GIB, 1 * GIB)])
    short = daily(WEB, "app", days=1, samples=200)  # 16.7 h
    opts = options(run(catalog, objects, short, [histogram(WEB, "app")], days_found=1), WEB)
    assert set(opts) == {"keep"} and "under the minimum 24 h" in opts["keep"]["rationale"]
    assert opts["keep"]["confidence"] == pytest.approx(1 / 7 * 200 / 288, abs=1e-3)  # 1 day of 7, 69 % covered
    assert "usage covers 69 % of the 5-minute slots" in opts["keep"]["rationale"]

    def stale_last(back: int) -> datetime:
        return datetime.combine(DAY - timedelta(days=max(back, 2)), datetime.min.time(), tzinfo=UTC)

    stale = daily(WEB, "app", days=8, last_ts=stale_last)[2:]  # nothing in the last 2 days
    opts = options(run(catalog, objects, stale, [histogram(WEB, "app")]), WEB)
    assert set(opts) == {"keep"} and "before the end of the day" in opts["keep"]["rationale"]
    # an increase still goes with little history (an OOM, here)
    oom = daily(WEB, "app", days=1, samples=200, oom_kills=1, mem_peak_bytes=1 * GIB)
    opts = options(run(catalog, objects, oom, [histogram(WEB, "app")], days_found=1), WEB)
    assert proposed(opts["resize_requests"])["containers"]["app"]["requests"]["memory"] == "1229Mi"
    assert proposed(opts["resize_requests"])["containers"]["app"]["requests"]["cpu"] == "1000m"


def test_best_effort_gets_requests_with_the_reason(catalog) -> None:
    objects = BASE + workload(WEB, [("app", None, None, None, None)], qos="BestEffort")
    opts = options(run(catalog, objects, daily(WEB, "app"), [histogram(WEB, "app")]), WEB)
    resize = opts["resize_requests"]
    assert resize["is_best"] and resize["monthly_savings_usd"] < 0  # a cost, for safety
    assert "BestEffort" in resize["rationale"] and proposed(resize)["qos_class"] == "Burstable"


def test_partial_usage_and_rollout_and_namespace_without_labels(catalog) -> None:
    objects = [node("n1"), namespace("shop", labels={})]
    objects += workload(WEB, [("app", 1.0, None, 1 * GIB, 1 * GIB), ("sidecar", 0.1, None, 128 * MIB, 128 * MIB)])
    usage = daily(WEB, "app", cpu_request_cores=lambda back: 1.0 if back < 3 else 2.0)  # rolled out 3 days ago
    opts = options(run(catalog, objects, usage, [histogram(WEB, "app")]), WEB)
    resize = opts["resize_requests"]
    side = proposed(resize)["containers"]["sidecar"]
    assert side["requests"] == {"cpu": "100m", "memory": "128Mi"}  # no usage: as it is
    assert "no usage samples" in resize["rationale"] and "rollout mid-window" in resize["rationale"]
    assert "has no labels" in resize["rationale"]
    assert resize["confidence"] == pytest.approx(0.8)
    # coverage gates confidence too: half the slots of every day
    half = options(run(catalog, objects, daily(WEB, "app", samples=144), [histogram(WEB, "app")]), WEB)
    assert half["resize_requests"]["confidence"] == pytest.approx(0.5)


def test_protected_namespace_is_informational(catalog) -> None:
    rid = f"{CLUSTER}/kube-system/daemonset/aws-node"
    objects = [*BASE, namespace("kube-system"), *workload(rid, [("node", 1.0, None, 1 * GIB, 1 * GIB)])]
    opts = options(run(catalog, objects, daily(rid, "node"), [histogram(rid, "node")]), rid)
    assert opts["keep"]["is_best"] and all(r["protected"] for r in opts.values())


def test_node_pools_pack_the_recommended_requests_and_claim_only_the_rest(catalog) -> None:
    objects = [
        *[{**node(f"n{i}"), "nodepool": "general", "account_id": ACCOUNT, "date": DAY} for i in range(1, 5)],
        namespace("shop"),
        *workload(WEB, [("app", 1.0, None, 1 * GIB, 1 * GIB)], replicas=6),
    ]
    result = run(catalog, objects, daily(WEB, "app"), [histogram(WEB, "app")])
    rows = result.table.to_pylist()
    web = next(r for r in rows if r["resource_id"] == WEB and r["is_best"])
    assert web["action"] == "resize_requests" and web["monthly_savings_usd"] > 0
    pool = {r["option_name"]: r for r in rows if r["resource_id"] == f"{CLUSTER}/nodepool/general"}
    assert "keep" in pool and "rightsize_on_demand" in pool
    resize = pool["rightsize_on_demand"]
    details = json.loads(resize["details"])
    # what the workload row claims is subtracted from the pool's gross saving (floor 0)
    assert details["workload_rows_savings_usd"] == pytest.approx(web["monthly_savings_usd"], abs=0.01)
    net = max(0.0, details["gross_monthly_savings_usd"] - details["workload_rows_savings_usd"])
    assert resize["monthly_savings_usd"] == pytest.approx(net, abs=0.02)
    # the pool packs the recommended requests: 6 pods at today's 1 core would not fit where they do
    cut = json.loads(web["proposed_config"])["containers"]["app"]["requests"]
    assert f"{6} pods" in resize["rationale"] and int(cut["cpu"][:-1]) < 1000
    # the plan sees the pool's option at today's cost minus only its own saving: nothing counted twice
    by_id = {c.resource_id: c for c in KubernetesOptimizer().candidates(result.table)}
    options = {o.name: o for o in by_id[f"{CLUSTER}/nodepool/general"].options}
    for name, o in options.items():
        assert options["keep"].monthly_cost_usd - o.monthly_cost_usd == pytest.approx(
            pool[name]["monthly_savings_usd"], abs=0.02
        )
        assert o.market in ("on_demand", "spot")
    web_options = {o.name: o for o in by_id[WEB].options}
    total = sum(options["keep"].monthly_cost_usd - o.monthly_cost_usd for o in [options["rightsize_on_demand"]])
    total += web_options["keep"].monthly_cost_usd - web_options["resize_requests"].monthly_cost_usd
    assert total <= max(details["gross_monthly_savings_usd"], web["monthly_savings_usd"]) + 0.02


def test_node_pools_can_be_turned_off(catalog) -> None:
    objects = [
        *[{**node(f"n{i}"), "nodepool": "general", "account_id": ACCOUNT, "date": DAY} for i in range(1, 3)],
        namespace("shop"),
        *workload(WEB, [("app", 1.0, None, 1 * GIB, 1 * GIB)]),
    ]
    result = run(catalog, objects, daily(WEB, "app"), [histogram(WEB, "app")], KubernetesSettings(node_pools=False))
    assert "k8s_nodepool" not in result.table["resource_kind"].to_pylist()
    assert any("node_pools = false" in n for n in result.metadata["notes"])


def test_candidates_for_the_plan(catalog) -> None:
    objects = BASE + workload(WEB, [("app", 1.0, None, 1 * GIB, 1 * GIB)])
    result = run(catalog, objects, daily(WEB, "app"), [histogram(WEB, "app")])
    kinds = {c.resource_id: c for c in KubernetesOptimizer().candidates(result.table)}
    assert set(kinds) == {WEB, f"{CLUSTER}/nodepool/unpooled"}
    candidate = kinds[WEB]
    assert candidate.resource_id == WEB and {o.name for o in candidate.options} == {"keep", "resize_requests"}
    assert candidate.deployment_type == "kubernetes"


def test_the_plan_counts_each_dollar_of_node_cost_once(catalog) -> None:
    from cloudopt_pipelines.optimizers.portfolio import plan_table, problem_for_day, solve_problem

    nodes = [node(f"n{i}") for i in range(4)]
    objects = [*nodes, namespace("shop")]
    objects += workload(WEB, [("app", 1.0, None, 2 * GIB, 2 * GIB)], replicas=3)
    api = f"{CLUSTER}/shop/deployment/api"
    objects += workload(api, [("app", 0.23, None, 345 * MIB, 345 * MIB)], replicas=2)
    objects += [hpa(api, CPU_HPA, 2, 10)]  # requests right, the HPA target alone moves: a k8s_hpa row
    usage = daily(WEB, "app", replicas_mean=3.0) + daily(api, "app", cpu_mean_cores=0.18, replicas_mean=2.0)
    result = run(catalog, objects, usage, [histogram(WEB, "app"), histogram(api, "app", p95=0.25)])
    rows = result.table.to_pylist()
    pools = [r for r in rows if r["resource_kind"] == "k8s_nodepool"]
    assert pools and {r["resource_kind"] for r in rows} >= {"k8s_workload", "k8s_hpa"}
    node_cost = sum(r["monthly_cost_current_usd"] for r in pools if r["option_name"] == "keep")
    # today's nodes: 4 x m5.xlarge on demand
    assert node_cost == pytest.approx(4 * 0.192 * 730, rel=1e-3)
    claims = json.loads(pools[0]["details"])["workload_claims"]
    assert set(claims) == {WEB, api} and all(v == 1.0 for v in claims.values())
    # the rows keep their own prices: keep costs of workloads, HPA and pool add up to more than the nodes
    keeps = sum(r["monthly_cost_current_usd"] for r in rows if r["option_name"] == "keep")
    assert keeps > node_cost * 1.1

    problem = problem_for_day(DAY, [KubernetesOptimizer().candidates(result.table)], None)
    plan = plan_table(problem, solve_problem(problem)).to_pylist()
    assert {p["resource_id"] for p in plan} == {r["resource_id"] for r in rows}
    assert sum(p["monthly_cost_current_usd"] for p in plan) == pytest.approx(node_cost, rel=1e-6)
    # the savings are the chosen options' own: workload cuts, the HPA's, the pool's remainder
    by = {(r["resource_id"], r["option_name"]): r for r in rows}
    for p in plan:
        assert p["monthly_savings_usd"] == pytest.approx(
            max(0.0, by[(p["resource_id"], p["option_name"])]["monthly_savings_usd"]), abs=0.01
        )
    assert sum(p["monthly_cost_proposed_usd"] for p in plan) <= node_cost
