"""The Kubernetes feature models (k8s_usage_daily, container_usage_histogram) against numpy, on real traces.

Data: tests/data (Azure V1 VM CPU and Google cluster-data 2011 memory, ship-ok samples; see its README),
reshaped as the 5-minute rows the collector writes to k8s_container_usage: the CPU % of a 2-core limit
becomes cores, max CPU % becomes the busiest pod, the GCD memory % of 1 GiB the working set.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from cloudopt_pipelines.assets.features import SOURCE_TABLES
from cloudopt_pipelines.project_files import sql_models_dir
from cloudopt_pipelines.sqlmodels.runner import execute_model, load_models
from cloudopt_pipelines.sqlmodels.sources import source_schemas
from cloudopt_pipelines.storage.lake import Lake
from cloudopt_pipelines.storage.schemas import K8S_CONTAINER_USAGE, K8S_WORKLOADS
from tests.test_features import vpa_percentiles

DATA = Path(__file__).parent / "data"
ACCOUNT = "123456789012"
DAY0 = date(2026, 11, 16)
DAYS = [DAY0 + timedelta(days=i) for i in range(3)]
RTOL = 1e-9
MIB = 2**20
MODELS = {m.name: m for m in load_models(sql_models_dir(), set(SOURCE_TABLES))}
PARTITIONING = {k: v[0] for k, v in SOURCE_TABLES.items()} | {m.name: m.partitioned_by for m in MODELS.values()}
WORKLOADS = ["prod/shop/deployment/web", "prod/shop/deployment/cart", "prod/batch/cronjob/report"]


def run(lake: Lake, name: str, day: date):
    return execute_model(MODELS[name], lake, PARTITIONING, ACCOUNT, day, source_schemas=source_schemas())


@pytest.fixture(scope="module")
def usage() -> pd.DataFrame:
    """Three workloads x one container x 3 days; gaps (8 % of slots dropped), the cronjob only runs 6 hours a
    day, an OOM kill on day 1 of cart, throttling where CPU > 80 % of the limit, 1-3 replicas."""
    az = pd.read_csv(DATA / "azure_v1_6vms_3days_cpu_5min.csv.gz")
    gcd = pd.read_csv(DATA / "gcd_4vms_1day_cpu_mem_5min.csv.gz")
    vms = sorted(az.vm_id.unique())[:3]
    mems = sorted(gcd.vm_id.unique())[:3]
    rng = np.random.default_rng(11)
    rows = []
    for wid, vm, gm in zip(WORKLOADS, vms, mems, strict=True):
        cpu = az[az.vm_id == vm].sort_values("step_5min")
        mem = gcd[gcd.vm_id == gm].set_index("step_5min").mem_util_pct
        for r in cpu.itertuples():
            step = int(r.step_5min)
            if rng.random() < 0.08:
                continue
            if wid.endswith("report") and step % 288 >= 72:
                continue
            replicas = 1 + step % 3
            ts = datetime.combine(DAY0, datetime.min.time(), tzinfo=UTC) + timedelta(seconds=300 * step)
            busiest = r.max_cpu_pct / 100 * 2
            rows.append(
                {
                    "resource_id": wid,
                    "ts": ts,
                    "cpu_cores": r.avg_cpu_pct / 100 * 2 * replicas,
                    "cpu_cores_max": busiest,
                    "mem_bytes": mem.loc[step % 288] / 100 * 1024 * MIB * replicas,
                    "mem_bytes_max": mem.loc[step % 288] / 100 * 1024 * MIB,
                    "cpu_throttled_ratio": max(0.0, busiest / 2 - 0.8),
                    "replicas": replicas,
                    "restarts": 0,
                    "oom_kills": 1 if wid.endswith("cart") and step == 288 + 100 else 0,
                }
            )
    df = pd.DataFrame(rows)
    df["date"] = df.ts.dt.date
    return df


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory, usage: pd.DataFrame) -> Lake:
    lake = Lake(tmp_path_factory.mktemp("k8s-features") / "lake")
    for day in DAYS:
        part = usage[usage.date == day]
        rows = []
        for r in part.itertuples():
            ns, kind, name = r.resource_id.split("/")[1:]
            rows.append(
                {
                    "account_id": ACCOUNT,
                    "date": day,
                    "cluster": "prod",
                    "resource_id": r.resource_id,
                    "scope": "container",
                    "namespace": ns,
                    "workload_kind": kind,
                    "workload": name,
                    "container": "app",
                    "ts": r.ts.to_pydatetime(),
                    "cpu_cores": r.cpu_cores,
                    "cpu_cores_max": r.cpu_cores_max,
                    "mem_bytes": r.mem_bytes,
                    "mem_bytes_max": r.mem_bytes_max,
                    "cpu_throttled_ratio": r.cpu_throttled_ratio,
                    "replicas": r.replicas,
                    "restarts": r.restarts,
                    "oom_kills": r.oom_kills,
                    "source": "test",
                }
            )
        # a node row: never a container of the models
        rows.append({**rows[0], "resource_id": "prod/node/n1", "scope": "node", "container": None, "replicas": None})
        lake.write("k8s_container_usage", pa.Table.from_pylist(rows, schema=K8S_CONTAINER_USAGE), ACCOUNT, day)
        specs = [
            {
                "account_id": ACCOUNT,
                "date": day,
                "cluster": "prod",
                "resource_id": wid,
                "object_kind": wid.split("/")[2],
                "namespace": wid.split("/")[1],
                "name": wid.split("/")[3],
                "container": "app",
                "cpu_request_cores": 0.5 + i,
                "mem_request_bytes": 512.0 * MIB,
                "mem_limit_bytes": 1024.0 * MIB,
                "qos_class": "Burstable",
                "attributes": json.dumps({}),
            }
            for i, wid in enumerate(WORKLOADS[:2])  # the cronjob's spec is gone from the API
        ]
        lake.write("k8s_workloads", pa.Table.from_pylist(specs, schema=K8S_WORKLOADS), ACCOUNT, day)
        # Container Insights has nothing here: the histogram's other source is an empty partition
        run(lake, "stg_cluster_metrics_5m", day)
    return lake


def test_daily_usage_matches_numpy(lake: Lake, usage: pd.DataFrame) -> None:
    for day in DAYS:
        got = {(r["resource_id"], r["container"]): r for r in run(lake, "k8s_usage_daily", day).table.to_pylist()}
        assert set(got) == {(w, "app") for w in WORKLOADS}
        for wid in WORKLOADS:
            g = usage[(usage.resource_id == wid) & (usage.date == day)]
            row = got[(wid, "app")]
            assert row["samples"] == len(g)
            assert row["coverage_pct"] == pytest.approx(round(100 * len(g) / 288, 3))
            q = np.quantile(g.cpu_cores_max, [0.5, 0.9, 0.95, 0.99])
            assert [row["cpu_p50_cores"], row["cpu_p90_cores"], row["cpu_p95_cores"], row["cpu_p99_cores"]] == (
                pytest.approx(list(q), rel=RTOL)
            )
            assert row["cpu_max_cores"] == pytest.approx(g.cpu_cores_max.max(), rel=RTOL)
            assert row["cpu_mean_cores"] == pytest.approx(g.cpu_cores.sum() / g.replicas.sum(), rel=RTOL)
            assert row["mem_peak_bytes"] == pytest.approx(g.mem_bytes_max.max(), rel=RTOL)
            assert row["mem_mean_bytes"] == pytest.approx(g.mem_bytes.sum() / g.replicas.sum(), rel=RTOL)
            assert row["throttled_slots"] == int((g.cpu_throttled_ratio >= 0.10).sum())
            assert row["throttled_max_ratio"] == pytest.approx(g.cpu_throttled_ratio.max(), rel=RTOL)
            assert row["oom_kills"] == int(g.oom_kills.sum())
            assert (row["replicas_min"], row["replicas_max"]) == (g.replicas.min(), g.replicas.max())
            assert row["first_ts"] == g.ts.min().to_pydatetime() and row["last_ts"] == g.ts.max().to_pydatetime()
        assert got[(WORKLOADS[1], "app")]["cpu_request_cores"] == 1.5
        assert got[(WORKLOADS[2], "app")]["cpu_request_cores"] is None  # no spec: NULL, never a guess
    assert got[(WORKLOADS[2], "app")]["coverage_pct"] < 30  # 6 hours a day


def test_daily_usage_without_kubernetes_is_an_empty_partition(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    result = run(lake, "k8s_usage_daily", DAY0)
    assert result.table.num_rows == 0
    assert result.inputs["k8s_container_usage"].absent_source


def test_histogram_reads_kubernetes_usage_like_vpa(lake: Lake, usage: pd.DataFrame) -> None:
    day = DAYS[-1]
    got = {(r["resource_id"], r["container"]): r for r in run(lake, "container_usage_histogram", day).table.to_pylist()}
    assert set(got) == {(w, "app") for w in WORKLOADS}
    ref_ts = datetime.combine(day + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
    requests = {WORKLOADS[0]: 0.5, WORKLOADS[1]: 1.5}
    for wid in WORKLOADS:
        g = usage[usage.resource_id == wid]
        age = np.array([(ref_ts - t).total_seconds() for t in g.ts])
        weights = max(requests.get(wid, 0.0), 0.1) * g.replicas.to_numpy() * 2.0 ** (-age / 86400)
        cpu = vpa_percentiles(g.cpu_cores_max.to_numpy(), weights, 0.01, max_value=1000.0)
        row = got[(wid, "app")]
        assert (row["cpu_lower_cores"], row["cpu_target_cores"], row["cpu_upper_cores"]) == pytest.approx(cpu, rel=RTOL)
        peaks, mem_w = [], []
        for _day, dd in g.groupby("date"):
            peak = dd.mem_bytes_max.max()
            if dd.oom_kills.sum() > 0:
                peak = max(1.2 * peak, peak + 100 * MIB)
            peaks.append(peak)
            at_peak = dd.ts.iloc[int(dd.mem_bytes_max.to_numpy().argmax())]
            mem_w.append(2.0 ** (-(ref_ts - at_peak).total_seconds() / 86400))
        mem = vpa_percentiles(peaks, mem_w, 1e7, max_value=1e12)
        assert (row["mem_lower_bytes"], row["mem_target_bytes"], row["mem_upper_bytes"]) == pytest.approx(mem, rel=RTOL)
        assert row["mem_peaks"] == 3
        assert row["oom_events"] == int(g.oom_kills.sum())
    assert got[(WORKLOADS[0], "app")]["cpu_request_cores"] == 0.5
