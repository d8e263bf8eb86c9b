"""The feature models against independent numpy computations on real trace samples.

Data: tests/data/features/ (ship-ok samples of the Azure V1 and Google cluster-data 2011 VM traces;
see its README). Quantiles are numpy's default 'linear' method (Hyndman-Fan type 7), which is what
DuckDB's quantile_cont computes; they must agree to 1e-9 relative.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from cloudopt_pipelines.assets.features import SOURCE_TABLES, build_sql_model_assets, window_mapping
from cloudopt_pipelines.project_files import sql_models_dir
from cloudopt_pipelines.resources.storage import LakeResource
from cloudopt_pipelines.settings import DEFAULT_BACKFILL_PARTITIONS_PER_RUN
from cloudopt_pipelines.sqlmodels.runner import ModelError, execute_model, execute_model_batch, load_models, parse_model
from cloudopt_pipelines.sqlmodels.sources import source_schemas
from cloudopt_pipelines.storage.lake import Lake
from cloudopt_pipelines.storage.schemas import CLUSTER_METRICS_5M, RESOURCES, UTILIZATION_5M

DATA = Path(__file__).parent / "data" / "features"
ACCOUNT = "000011112222"
DAY0 = date(2026, 3, 2)  # a Monday
DAYS = [DAY0 + timedelta(days=i) for i in range(3)]
QS = (0.5, 0.9, 0.95, 0.99, 0.995)
QNAMES = ("p50", "p90", "p95", "p99", "p995")
RTOL = 1e-9

MODELS = {m.name: m for m in load_models(sql_models_dir(), set(SOURCE_TABLES))}
PARTITIONING = {k: v[0] for k, v in SOURCE_TABLES.items()} | {m.name: m.partitioned_by for m in MODELS.values()}


def run(lake: Lake, name: str, day: date, **kwargs):
    return execute_model(MODELS[name], lake, PARTITIONING, ACCOUNT, day, source_schemas=source_schemas(), **kwargs)


def ts_of(step: int) -> datetime:
    return datetime.combine(DAY0, datetime.min.time(), tzinfo=UTC) + timedelta(seconds=300 * int(step))


@pytest.fixture(scope="module")
def raw() -> pd.DataFrame:
    """Azure VMs as EC2 instances over 3 days, GCD memory on day 0 for 6 of them, with real gaps
    (10 % of slots dropped) and duplicates (a changed copy of 2 % of rows listed later: it wins)."""
    az = pd.read_csv(DATA / "azure_v1_8vms_3days_cpu_5min.csv.gz")
    gcd = pd.read_csv(DATA / "gcd_6vms_1day_cpu_mem_5min.csv.gz")
    vms = sorted(az.vm_id.unique())
    ids = {vm: f"i-{i:017x}" for i, vm in enumerate(vms)}
    df = pd.DataFrame(
        {
            "resource_id": az.vm_id.map(ids),
            "step": az.step_5min,
            "cpu_pct": az.avg_cpu_pct,
            "cpu_max_pct": az.max_cpu_pct,
        }
    )
    mem = {
        (ids[vms[i]], s): v
        for i, g in enumerate(sorted(gcd.vm_id.unique()))
        for s, v in gcd[gcd.vm_id == g][["step_5min", "mem_util_pct"]].itertuples(index=False)
    }
    df["mem_pct"] = [mem.get((r, s)) for r, s in zip(df.resource_id, df.step, strict=True)]
    df["mem_pct"] = df["mem_pct"].astype("float64")
    # Network for two instances: the Azure max CPU series reshaped as bytes (no ship-ok trace has network).
    has_net = df.resource_id.isin([ids[vms[0]], ids[vms[1]]])
    df["net_in_bytes"] = np.where(has_net, df.cpu_max_pct * 1000.0, np.nan)
    df["net_out_bytes"] = np.where(has_net, df.cpu_pct * 500.0, np.nan)
    rng = np.random.default_rng(7)
    df = df[rng.random(len(df)) > 0.10].reset_index(drop=True)
    dups = df[rng.random(len(df)) < 0.02].copy()
    dups["cpu_pct"] = dups["cpu_pct"] * 0.5
    dups["cpu_max_pct"] = dups["cpu_max_pct"] * 0.75
    df["order"] = 0
    dups["order"] = 1
    out = pd.concat([df, dups], ignore_index=True)
    out["ts"] = [ts_of(s) for s in out.step]
    out["date"] = [t.date() for t in out.ts]
    return out


def clean(raw: pd.DataFrame) -> pd.DataFrame:
    """The numpy side's deduplication: the later-listed row of a slot wins."""
    return raw.sort_values(["resource_id", "step", "order"]).drop_duplicates(["resource_id", "step"], keep="last")


def write_raw(lake: Lake, raw: pd.DataFrame, days=DAYS) -> None:
    tags = {0: {"tz": "America/New_York"}, 1: {"timezone": "Not/AZone"}, 2: {"TimeZone": "Asia/Kolkata"}}
    ids = sorted(raw.resource_id.unique())
    for day in days:
        part = raw[raw.date == day].sort_values(["order", "resource_id", "step"])
        table = pa.table(
            {
                "account_id": [ACCOUNT] * len(part),
                "date": list(part.date),
                "resource_id": list(part.resource_id),
                "ts": list(part.ts),
                "cpu_pct": pa.array(part.cpu_pct.to_numpy(), from_pandas=True),
                "cpu_max_pct": pa.array(part.cpu_max_pct.to_numpy(), from_pandas=True),
                "mem_pct": pa.array(part.mem_pct.to_numpy(), from_pandas=True),
                "net_in_bytes": pa.array(part.net_in_bytes.to_numpy(), from_pandas=True),
                "net_out_bytes": pa.array(part.net_out_bytes.to_numpy(), from_pandas=True),
                "source": ["test"] * len(part),
            }
        )
        lake.write("utilization_5m", table.cast(UTILIZATION_5M), ACCOUNT, day)
        rows = [
            {
                "account_id": ACCOUNT,
                "date": day,
                "resource_id": rid,
                "resource_kind": "ec2_instance",
                "region": "us-east-1",
                "instance_type": "m5.large",
                "parent_id": "ecs-a" if i < 3 else None,
                "tags": json.dumps(tags.get(i, {})),
            }
            for i, rid in enumerate(ids)
        ] + [{"account_id": ACCOUNT, "date": day, "resource_id": "ecs-a", "resource_kind": "ecs_cluster", "tags": "{}"}]
        lake.write("resources", pa.Table.from_pylist(rows, schema=RESOURCES), ACCOUNT, day)


@pytest.fixture(scope="module")
def lake(tmp_path_factory, raw) -> Lake:
    lake = Lake(tmp_path_factory.mktemp("features-lake"))
    write_raw(lake, raw)
    catalog = pa.table(
        {"region": ["us-east-1"], "instance_type": ["m5.large"], "vcpu": pa.array([2], pa.int32()), "memory_gib": [8.0]}
    )
    lake.write("price_catalog", catalog, schema=catalog.schema)
    for day in DAYS:
        for name in ("stg_utilization_5m", "stg_cluster_metrics_5m", "utilization_daily"):
            run(lake, name, day)
    return lake


def assert_close(actual, expected, what: str) -> None:
    if expected is None or (isinstance(expected, float) and math.isnan(expected)):
        assert actual is None or (isinstance(actual, float) and math.isnan(actual)), f"{what}: {actual} != NULL"
        return
    assert actual == pytest.approx(expected, rel=RTOL, abs=1e-12), what


def stats(prefix: str, values: np.ndarray) -> dict[str, float | None]:
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return {f"{prefix}_{n}": None for n in (*QNAMES, "max")}
    out = {f"{prefix}_{n}": float(np.quantile(values, q, method="linear")) for n, q in zip(QNAMES, QS, strict=True)}
    out[f"{prefix}_max"] = float(values.max())
    return out


def expected_stats(group: pd.DataFrame) -> dict[str, float | None]:
    peak = group.cpu_max_pct.fillna(group.cpu_pct).to_numpy(dtype=float)
    net = (group.net_in_bytes + group.net_out_bytes).to_numpy(dtype=float)
    mem = group.mem_pct.to_numpy(dtype=float)
    out = {"cpu_mean": float(group.cpu_pct.mean()), "samples": len(group)}
    out["mem_mean"] = float(np.nanmean(mem)) if np.isfinite(mem).any() else None
    out["net_mean"] = float(np.nanmean(net)) if np.isfinite(net).any() else None
    out |= stats("cpu", peak) | stats("mem", mem) | stats("net", net)
    return out


def compare_row(row: dict, exp: dict, label: str) -> None:
    assert row["samples"] == exp["samples"], label
    for k, v in exp.items():
        if k == "samples":
            continue
        column = f"{k}_pct" if k.startswith(("cpu", "mem")) else f"{k}_bytes"
        assert_close(row[column], v, f"{label} {column}")


def test_daily_statistics_match_numpy(lake: Lake, raw: pd.DataFrame) -> None:
    ref = clean(raw)
    checked = 0
    for day in DAYS:
        got = {r["resource_id"]: r for r in lake.read("utilization_daily", ACCOUNT, day).to_pylist()}
        for rid, group in ref[ref.date == day].groupby("resource_id"):
            row = got[rid]
            compare_row(row, expected_stats(group), f"{rid} {day}")
            assert row["coverage_pct"] == pytest.approx(100 * len(group) / 288, abs=1e-3)
            assert row["duplicate_samples"] == int(
                raw[(raw.date == day) & (raw.resource_id == rid)].shape[0] - len(group)
            )
            assert row["idle_cost_explorer"] == bool(group.cpu_max_pct.max() <= 1)
            net = group.net_in_bytes.sum(min_count=1)
            if np.isnan(net):
                assert row["idle_trusted_advisor"] is None  # no network data: unknown, not idle
            else:
                total = net + group.net_out_bytes.sum()
                assert row["idle_trusted_advisor"] == bool(group.cpu_pct.mean() <= 10 and total <= 5e6)
            checked += 1
    assert checked == 24


def test_gaps_are_marked_not_zero_filled(lake: Lake, raw: pd.DataFrame) -> None:
    stg = lake.read("stg_utilization_5m", ACCOUNT, DAYS[0]).to_pandas()
    ref = clean(raw)
    ref = ref[ref.date == DAYS[0]]
    assert len(stg) == len(ref)  # one row per sample present: nothing invented for the gaps
    # The documented row order, although the raw file lists every duplicate after the other rows.
    in_order = stg.sort_values(["resource_id", "ts"], kind="stable").reset_index(drop=True)
    assert stg[["resource_id", "ts"]].equals(in_order[["resource_id", "ts"]])
    first = stg[stg.resource_id == stg.resource_id.iloc[0]]
    steps = ((first.ts - first.ts.iloc[0].normalize()).dt.total_seconds() // 300).astype(int).to_numpy()
    expected_before = np.diff(np.concatenate([[-1], steps])) - 1
    assert first.missing_slots_before.tolist() == expected_before.tolist()
    assert first.missing_slots_after.iloc[-1] == 287 - steps[-1]
    daily = {r["resource_id"]: r for r in lake.read("utilization_daily", ACCOUNT, DAYS[0]).to_pylist()}
    assert daily[first.resource_id.iloc[0]]["gaps"] == int((expected_before > 0).sum() + (steps[-1] < 287))


def test_dedup_by_file_position_with_clean_and_duplicated_resources(tmp_path: Path) -> None:
    """A partition mixing an instance without duplicate slots (read as it is) and one with duplicates
    (deduplicated: the row listed later in the raw file wins, NULLs included), rows out of order, an
    unaligned timestamp and a sample of the previous day."""
    lake = Lake(tmp_path / "lake")
    a, b = "i-0000000000000000a", "i-0000000000000000b"
    rows = [  # (resource, slot, cpu, cpu_max, mem), in the raw file's order
        (b, 3, 40.0, 45.0, 30.0),
        (a, 5, 7.0, 9.0, None),
        (b, 2, 10.0, 11.0, 20.0),
        (a, 0, 1.0, 2.0, None),
        (b, 2, 50.0, None, None),  # the same slot as row 2, listed later: wins, its NULLs too
        (a, 1, 3.0, 4.0, None),
        (b, 3, 60.0, 65.0, 35.0),  # wins over row 0
        (b, -1, 99.0, 99.0, 99.0),  # the previous day's last slot: not this partition's
        (b, 287, 20.0, 25.0, 10.0),
    ]
    ts = [ts_of(slot) + (timedelta(seconds=150) if slot == 287 else timedelta()) for _, slot, *_ in rows]
    table = pa.table(
        {
            "account_id": [ACCOUNT] * len(rows),
            "date": [DAY0] * len(rows),
            "resource_id": [r[0] for r in rows],
            "ts": ts,
            "cpu_pct": [r[2] for r in rows],
            "cpu_max_pct": [r[3] for r in rows],
            "mem_pct": pa.array([r[4] for r in rows], pa.float64()),
            "net_in_bytes": pa.nulls(len(rows), pa.float64()),
            "net_out_bytes": pa.nulls(len(rows), pa.float64()),
            "source": ["test"] * len(rows),
        }
    ).cast(UTILIZATION_5M)
    lake.write("utilization_5m", table, ACCOUNT, DAY0)
    stg = run(lake, "stg_utilization_5m", DAY0).table.to_pylist()
    run(lake, "stg_cluster_metrics_5m", DAY0)
    columns = ("cpu_pct", "cpu_peak_pct", "cpu_peak_is_maximum", "mem_pct", "dup_count")
    columns += ("missing_slots_before", "missing_slots_after")
    got = [(r["resource_id"], int((r["ts"] - ts_of(0)).total_seconds() // 300), *(r[c] for c in columns)) for r in stg]
    assert got == [  # ordered by resource and slot
        (a, 0, 1.0, 2.0, True, None, 1, 0, 0),
        (a, 1, 3.0, 4.0, True, None, 1, 0, 0),
        (a, 5, 7.0, 9.0, True, None, 1, 3, 282),
        (b, 2, 50.0, 50.0, False, None, 2, 2, 0),
        (b, 3, 60.0, 65.0, True, 35.0, 2, 0, 0),
        (b, 287, 20.0, 25.0, True, 10.0, 1, 283, 0),
    ]
    daily = {r["resource_id"]: r for r in run(lake, "utilization_daily", DAY0).table.to_pylist()}
    assert daily[a]["samples"] == 3 and daily[a]["duplicate_samples"] == 0
    assert (daily[a]["gaps"], daily[a]["longest_gap_minutes"]) == (2, 5 * 282)
    assert daily[a]["cpu_max_pct"] == 9.0 and daily[a]["mem_mean_pct"] is None and daily[a]["mem_samples"] == 0
    assert daily[b]["samples"] == 3 and daily[b]["duplicate_samples"] == 2
    assert (daily[b]["gaps"], daily[b]["longest_gap_minutes"]) == (2, 5 * 283)
    assert daily[b]["cpu_max_pct"] == 65.0 and daily[b]["cpu_p50_pct"] == 50.0
    assert daily[b]["mem_mean_pct"] == pytest.approx(22.5, rel=RTOL) and daily[b]["mem_max_pct"] == 35.0
    assert daily[b]["cpu_peak_is_maximum"] and daily[b]["idle_trusted_advisor"] is None


def test_gap_marking_at_the_slot_map_word_boundaries(tmp_path: Path) -> None:
    """missing_slots_before/after against numpy for slot sets around the 64-slot words of the map."""
    lake = Lake(tmp_path / "lake")
    sets = {
        "i-c": [0, 31, 32, 33, 62, 63, 64, 65, 127, 128, 191, 192, 255, 256, 257, 286],
        "i-d": [63],
        "i-e": [64, 287],
        "i-f": list(range(288)),
        "i-g": [1, 2, 4, 8, 16, 32, 95, 96, 159, 160, 223, 224, 287],
        "i-h": [255, 256],
    }
    rows = [(rid, slot) for rid, slots in sets.items() for slot in reversed(slots)]  # listed out of order
    table = pa.table(
        {
            "account_id": [ACCOUNT] * len(rows),
            "date": [DAY0] * len(rows),
            "resource_id": [r for r, _ in rows],
            "ts": [ts_of(slot) for _, slot in rows],
            "cpu_pct": [1.0] * len(rows),
            "cpu_max_pct": [2.0] * len(rows),
            "mem_pct": pa.nulls(len(rows), pa.float64()),
            "net_in_bytes": pa.nulls(len(rows), pa.float64()),
            "net_out_bytes": pa.nulls(len(rows), pa.float64()),
            "source": ["test"] * len(rows),
        }
    ).cast(UTILIZATION_5M)
    lake.write("utilization_5m", table, ACCOUNT, DAY0)
    stg = run(lake, "stg_utilization_5m", DAY0).table.to_pandas()
    for rid, slots in sets.items():
        got = stg[stg.resource_id == rid]
        steps = ((got.ts - got.ts.iloc[0].normalize()).dt.total_seconds() // 300).astype(int).tolist()
        assert steps == slots, rid
        assert got.missing_slots_before.tolist() == (np.diff([-1, *slots]) - 1).tolist(), rid
        assert got.missing_slots_after.tolist() == [0] * (len(slots) - 1) + [287 - slots[-1]], rid


def test_window_is_exact_over_the_window_samples(lake: Lake, raw: pd.DataFrame) -> None:
    result = run(lake, "utilization_window", DAYS[-1], window_days=3)
    assert result.window_start == DAYS[0]
    ref = clean(raw)
    got = {r["resource_id"]: r for r in result.table.to_pylist()}
    assert len(got) == 8
    for rid, group in ref.groupby("resource_id"):
        row = got[rid]
        compare_row(row, expected_stats(group), f"window {rid}")
        assert row["coverage_pct"] == pytest.approx(100 * len(group) / (3 * 288), abs=1e-3)
        assert row["days_with_data"] == 3
        assert row["sufficient_data"] is (len(group) * 5 >= 30 * 60)
    # Percentiles over the window differ from the average of the daily ones (the point of the model).
    daily = pd.concat(lake.read("utilization_daily", ACCOUNT, d).to_pandas() for d in DAYS)
    any_rid = ref.resource_id.iloc[0]
    assert got[any_rid]["cpu_p95_pct"] != pytest.approx(daily[daily.resource_id == any_rid].cpu_p95_pct.mean())


def test_window_with_missing_days_and_without_data(lake: Lake, raw: pd.DataFrame, tmp_path: Path) -> None:
    # The default 14-day window over 3 days of data: 11 days missing, coverage says so.
    result = run(lake, "utilization_window", DAYS[-1])
    assert result.window_days == 14
    assert len(result.inputs["stg_utilization_5m"].missing) == 11
    ref = clean(raw)
    row = next(r for r in result.table.to_pylist() if r["resource_id"] == ref.resource_id.iloc[0])
    n = int((ref.resource_id == ref.resource_id.iloc[0]).sum())
    assert row["coverage_pct"] == pytest.approx(100 * n / (14 * 288), abs=1e-3)
    assert row["confidence"] in ("low", "medium") and row["expected_samples"] == 14 * 288
    # A window with no partition at all is an error naming the partition.
    with pytest.raises(ModelError, match=r"account 000011112222, date 2026-04-01.*window has no partition of"):
        run(lake, "utilization_window", date(2026, 4, 1), window_days=7)


def test_missing_partitions_and_optional_sources(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    # No cluster_metrics_5m partition (the table does not exist yet): an empty partition, no error.
    result = run(lake, "stg_cluster_metrics_5m", DAY0)
    assert result.table.num_rows == 0 and result.inputs["cluster_metrics_5m"].absent_source
    assert lake.partition_file("stg_cluster_metrics_5m", ACCOUNT, DAY0) is not None
    # A required source that was never written is an error naming the partition.
    with pytest.raises(FileNotFoundError, match=r"utilization_5m.*account 000011112222, date 2026-03-02"):
        run(lake, "stg_utilization_5m", DAY0)


def vpa_percentiles(values, weights, first, ratio=1.05, max_value=None) -> tuple[float, float, float]:
    """VPA's exponential histogram (pkg/recommender/util/histogram.go), written out independently."""
    n = math.ceil(math.log(max_value * (ratio - 1) / first + 1) / math.log(ratio)) + 1
    hist = np.zeros(n)
    for v, w in zip(values, weights, strict=True):
        b = 0 if v < first else min(int(math.log(v * (ratio - 1) / first + 1) / math.log(ratio)), n - 1)
        hist[b] += w
    total = hist.sum()
    out = []
    for p in (0.5, 0.9, 0.95):
        acc, b = 0.0, 0
        nz = np.nonzero(hist)[0]
        for b in range(nz.min(), nz.max() + 1):
            acc += hist[b]
            if acc >= p * total:
                break
        end = b + 1 if b < n - 1 else b
        out.append(first * (ratio**end - 1) / (ratio - 1))
    return tuple(out)


def test_container_histogram_matches_a_numpy_vpa(tmp_path: Path, raw: pd.DataFrame) -> None:
    """Azure VM traces reshaped as pods: CPU % of 2 cores -> cores, max CPU % of 4 GiB -> memory bytes.
    (No ship-ok container trace exists; the numbers are real, the reshaping is ours.)"""
    lake = Lake(tmp_path / "lake")
    az = clean(raw)
    az = az[az.resource_id.isin(sorted(az.resource_id.unique())[:4])]
    oom_slot = (az.resource_id.iloc[0], DAYS[1])
    for day in DAYS:
        part = az[az.date == day]
        rows = []
        for r in part.itertuples():
            pod = f"pod/{r.resource_id}"
            rows.append((pod, r.ts, "pod_cpu_usage_total", "Average", r.cpu_pct / 100 * 2 * 1000))
            rows.append((pod, r.ts, "pod_memory_working_set", "Average", r.cpu_max_pct / 100 * 4 * 2**30))
            rows.append((pod, r.ts, "pod_cpu_request", "Average", 500.0))
        if day == oom_slot[1]:
            rows.append(
                (f"pod/{oom_slot[0]}", part.ts.iloc[5], "pod_container_status_terminated_reason_oom_killed", "Sum", 1.0)
            )
        table = pa.table(
            {
                "account_id": [ACCOUNT] * len(rows),
                "date": [day] * len(rows),
                "resource_id": [r[0] for r in rows],
                "ts": [r[1] for r in rows],
                "namespace": ["ContainerInsights"] * len(rows),
                "metric": [r[2] for r in rows],
                "stat": [r[3] for r in rows],
                "value": [r[4] for r in rows],
                "source": ["test"] * len(rows),
            }
        ).cast(CLUSTER_METRICS_5M)
        lake.write("cluster_metrics_5m", table, ACCOUNT, day)
        run(lake, "stg_cluster_metrics_5m", day)
    result = run(lake, "container_usage_histogram", DAYS[-1]).table.to_pylist()
    assert len(result) == 4
    ref_ts = datetime.combine(DAYS[-1] + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
    for row in result:
        rid = row["resource_id"].removeprefix("pod/")
        g = az[az.resource_id == rid]
        age = np.array([(ref_ts - t).total_seconds() for t in g.ts])
        cpu = vpa_percentiles(g.cpu_pct / 100 * 2, 0.5 * 2.0 ** (-age / 86400), 0.01, max_value=1000.0)
        assert row["cpu_lower_cores"] == pytest.approx(cpu[0], rel=RTOL)
        assert row["cpu_target_cores"] == pytest.approx(cpu[1], rel=RTOL)
        assert row["cpu_upper_cores"] == pytest.approx(cpu[2], rel=RTOL)
        assert row["cpu_recommended_cores"] == pytest.approx(max(1.15 * cpu[1], 0.025), rel=RTOL)
        peaks, weights = [], []
        for day, d in g.groupby("date"):
            mem = d.cpu_max_pct.to_numpy() / 100 * 4 * 2**30
            peak = mem.max()
            if (rid, day) == oom_slot:
                peak = max(1.2 * peak, peak + 100 * 2**20)  # VPA's OOM bump
            peaks.append(peak)
            weights.append(2.0 ** (-(ref_ts - d.ts.iloc[int(mem.argmax())]).total_seconds() / 86400))
        mem = vpa_percentiles(peaks, weights, 1e7, max_value=1e12)
        assert row["mem_peaks"] == 3
        assert (row["mem_lower_bytes"], row["mem_target_bytes"], row["mem_upper_bytes"]) == pytest.approx(mem, rel=RTOL)
        assert row["oom_events"] == (1 if rid == oom_slot[0] else 0)


def test_activity_profile_in_the_tagged_time_zone(lake: Lake, raw: pd.DataFrame) -> None:
    table = run(lake, "activity_profile", DAYS[-1], window_days=3).table.to_pandas()
    ref = clean(raw)
    ids = sorted(ref.resource_id.unique())
    zones = table.groupby("resource_id")[["timezone", "tz_source"]].first()
    assert tuple(zones.loc[ids[0]]) == ("America/New_York", "tag:tz")
    assert tuple(zones.loc[ids[1]]) == ("UTC", "invalid_tag")
    assert tuple(zones.loc[ids[2]]) == ("Asia/Kolkata", "tag:TimeZone")
    assert tuple(zones.loc[ids[3]]) == ("UTC", "default")
    for rid, tz in ((ids[0], "America/New_York"), (ids[2], "Asia/Kolkata"), (ids[3], "UTC")):
        g = ref[ref.resource_id == rid].copy()
        local = pd.to_datetime(g.ts, utc=True).dt.tz_convert(tz)
        g["how"] = local.dt.day_of_week * 24 + local.dt.hour
        exp = g.groupby("how").agg(
            samples=("cpu_pct", "size"), mean=("cpu_pct", "mean"), active=("cpu_max_pct", lambda s: int((s >= 5).sum()))
        )
        got = table[table.resource_id == rid].set_index("hour_of_week")
        assert sorted(got.index) == sorted(exp.index)
        assert got.samples.loc[exp.index].tolist() == exp.samples.tolist()
        assert got.active_samples.loc[exp.index].tolist() == exp.active.tolist()
        np.testing.assert_allclose(got.cpu_mean_pct.loc[exp.index], exp["mean"], rtol=RTOL)
    assert table.hour_of_week.between(0, 167).all()


def test_cluster_utilization_daily(lake: Lake, raw: pd.DataFrame) -> None:
    table = run(lake, "cluster_utilization_daily", DAYS[0]).table.to_pylist()
    assert [r["cluster_id"] for r in table] == ["ecs-a"]
    row = table[0]
    assert row["nodes"] == 3 and row["capacity_vcpu"] == 6 and row["capacity_mem_gib"] == 24
    ref = clean(raw)
    members = sorted(ref.resource_id.unique())[:3]
    g = ref[(ref.date == DAYS[0]) & ref.resource_id.isin(members)]
    slot = g.groupby("ts").cpu_pct.mean()  # equal vCPUs: the capacity-weighted mean is the plain mean
    assert row["used_cpu_mean_pct"] == pytest.approx(slot.mean(), rel=RTOL)
    assert row["used_cpu_p95_pct"] == pytest.approx(np.quantile(slot, 0.95), rel=RTOL)
    assert row["used_vcpu_mean"] == pytest.approx(slot.mean() / 100 * 6, rel=RTOL)
    assert row["node_samples"] == len(g)
    assert row["requested_cpu_pct"] is None  # no cluster_metrics_5m: unknown, not 0


def test_assets_declare_window_lineage_and_checks(lake: Lake, tmp_path: Path) -> None:
    assets = {a.key.path[-1]: a for a in build_sql_model_assets(window_days={"utilization_window": 7})}
    window = assets["utilization_window"]
    dep_key = dg.AssetKey(["features", "stg_utilization_5m"])
    mapping = window.get_partition_mapping(dep_key)
    assert isinstance(mapping, dg.MultiPartitionMapping)
    date_mapping = mapping.downstream_mappings_by_upstream_dimension["date"].partition_mapping
    assert isinstance(date_mapping, dg.TimeWindowPartitionMapping) and date_mapping.start_offset == -6
    checks = {c.name for c in window.check_specs}
    assert checks == {"unique_grain", "percentages_in_range", "rows_present", "coverage_above_threshold"}

    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("accounts", [ACCOUNT])
    selected = [
        assets[n] for n in ("stg_utilization_5m", "stg_cluster_metrics_5m", "utilization_daily", "utilization_window")
    ]
    result = dg.materialize(
        selected,
        partition_key=dg.MultiPartitionKey({"account": ACCOUNT, "date": DAYS[-1].isoformat()}),
        resources={"lake": LakeResource(root=str(lake.root))},
        instance=instance,
    )
    assert result.success
    evaluations = {(e.asset_key.path[-1], e.check_name): e for e in result.get_asset_check_evaluations()}
    assert evaluations[("utilization_window", "rows_present")].passed
    assert evaluations[("utilization_window", "unique_grain")].passed
    assert not evaluations[("utilization_window", "coverage_above_threshold")].passed  # 3 of 7 days: a warning
    assert evaluations[("utilization_daily", "coverage_above_threshold")].passed


def test_window_mapping_lineage() -> None:
    from cloudopt_pipelines.partitions import account_daily_partitions

    mapping = window_mapping(14)
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("accounts", [ACCOUNT])
    key = dg.MultiPartitionKey({"account": ACCOUNT, "date": "2026-03-20"})
    subset = account_daily_partitions.empty_subset().with_partition_keys([key])
    upstream = mapping.get_upstream_mapped_partitions_result_for_partitions(
        subset, account_daily_partitions, account_daily_partitions, dynamic_partitions_store=instance
    ).partitions_subset.get_partition_keys()
    dates = sorted(k.keys_by_dimension["date"] for k in upstream)
    assert dates[0] == "2026-03-07" and dates[-1] == "2026-03-20" and len(dates) == 14


def _second_account(tmp_path: Path, raw: pd.DataFrame) -> tuple[Lake, list[tuple[str, date]]]:
    """A lake with the fixture's account and a second one (the same samples, CPU halved), stg written."""
    lake = Lake(tmp_path / "lake")
    write_raw(lake, raw)
    other = "000033334444"
    for day in DAYS:
        table = lake.read("utilization_5m", ACCOUNT, day)
        cpu = pc.multiply(table.column("cpu_pct"), 0.5)
        table = table.set_column(table.schema.get_field_index("cpu_pct"), "cpu_pct", cpu)
        lake.write("utilization_5m", table.set_column(0, "account_id", pa.array([other] * table.num_rows)), other, day)
    partitions = [(a, d) for a in (ACCOUNT, other) for d in DAYS]
    for account, day in partitions:
        for name in ("stg_utilization_5m", "stg_cluster_metrics_5m"):
            execute_model(MODELS[name], lake, PARTITIONING, account, day, source_schemas=source_schemas())
    return lake, partitions


def test_a_batch_writes_every_partition_exactly_as_partition_by_partition_runs(
    tmp_path: Path, raw: pd.DataFrame
) -> None:
    lake, partitions = _second_account(tmp_path, raw)
    model = MODELS["utilization_daily"]
    assert model.batch
    runs = execute_model_batch(model, lake, PARTITIONING, partitions, source_schemas=source_schemas())
    batch = {p: lake.read("utilization_daily", *p) for p in partitions}
    assert [r.table.num_rows for r in runs] == [batch[p].num_rows for p in partitions]
    assert all(t.num_rows == 8 for t in batch.values())
    # Halving CPU in the second account shows its rows were not mixed with the first's.
    first, second = batch[partitions[0]], batch[(partitions[3][0], DAYS[0])]
    for a, b in zip(first.column("cpu_mean_pct").to_pylist(), second.column("cpu_mean_pct").to_pylist(), strict=True):
        assert b == pytest.approx(a / 2, rel=1e-12)
    # Small chunks (one partition's input at a time) and single runs give the very same partitions.
    execute_model_batch(model, lake, PARTITIONING, partitions, source_schemas=source_schemas(), max_batch_rows=1)
    assert {p: lake.read("utilization_daily", *p) for p in partitions} == batch
    for account, day in partitions:
        single = execute_model(model, lake, PARTITIONING, account, day, source_schemas=source_schemas()).table
        assert single.equals(batch[(account, day)])
    assert runs[0].inputs["stg_utilization_5m"].rows == lake.read("stg_utilization_5m", *partitions[0]).num_rows


def test_a_batch_takes_the_partition_from_the_path_and_refuses_a_missing_input(
    tmp_path: Path, raw: pd.DataFrame
) -> None:
    lake, partitions = _second_account(tmp_path, raw)
    model = MODELS["utilization_daily"]
    # A file whose own account_id column names another account still belongs to its partition.
    path = lake.partition_file("stg_utilization_5m", *partitions[0])
    table = lake.read("stg_utilization_5m", *partitions[0])
    lake.write(
        "stg_utilization_5m",
        table.set_column(0, "account_id", pa.array(["999999999999"] * table.num_rows)),
        *partitions[0],
        schema=table.schema,
    )
    assert lake.partition_file("stg_utilization_5m", *partitions[0]) != path
    execute_model_batch(model, lake, PARTITIONING, partitions[:2], source_schemas=source_schemas())
    assert set(lake.read("utilization_daily", *partitions[0]).column("account_id").to_pylist()) == {ACCOUNT}
    # One missing input partition: an error naming it, and no partition of the batch is written.
    missing = (partitions[-1][0], DAYS[-1] + timedelta(days=1))
    before = lake.partitions("utilization_daily")
    with pytest.raises(
        FileNotFoundError, match=f"stg_(utilization|cluster_metrics)_5m.*{missing[0]}.*{missing[1].isoformat()}"
    ):
        execute_model_batch(model, lake, PARTITIONING, [*partitions, missing], source_schemas=source_schemas())
    assert lake.partitions("utilization_daily") == before


def test_a_batch_model_may_not_use_the_partition_variables(tmp_path: Path) -> None:
    text = (sql_models_dir() / "utilization_daily.sql").read_text()
    bad = tmp_path / "utilization_daily.sql"
    bad.write_text(
        text.replace(
            "    account_id,\n    date,\n    resource_id,\n    resource_kind,",
            "    {{ var('account_id') }} AS account_id,\n    date,\n    resource_id,\n    resource_kind,",
            1,
        )
    )
    assert bad.read_text() != text
    with pytest.raises(ModelError, match=r"batch model .* cannot use var\('account_id'\)"):
        parse_model(bad)
    bad.write_text(text.replace("-- batch: true", "-- batch: yes"))
    with pytest.raises(ModelError, match="batch 'yes' is not true or false"):
        parse_model(bad)


def test_a_range_run_materialises_every_partition_with_checks_over_the_batch(
    tmp_path: Path, raw: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    lake, partitions = _second_account(tmp_path, raw)
    daily = next(a for a in build_sql_model_assets() if a.key.path[-1] == "utilization_daily")
    assert daily.backfill_policy == dg.BackfillPolicy.multi_run(DEFAULT_BACKFILL_PARTITIONS_PER_RUN)
    instance = dg.DagsterInstance.ephemeral()
    accounts = sorted({a for a, _ in partitions})
    instance.add_dynamic_partitions("accounts", accounts)
    # A chunk per partition's input: the asset reads the limit, the result is the same.
    monkeypatch.setenv("CLOUDOPT_BATCH_MAX_ROWS", "1")
    result = dg.materialize(
        [daily],
        resources={"lake": LakeResource(root=str(lake.root))},
        instance=instance,
        tags={
            "dagster/asset_partition_range_start": f"{ACCOUNT}|{DAYS[0].isoformat()}",
            "dagster/asset_partition_range_end": f"{ACCOUNT}|{DAYS[-1].isoformat()}",
        },
    )
    assert result.success
    assert instance.get_materialized_partitions(daily.key) == {f"{ACCOUNT}|{d.isoformat()}" for d in DAYS}
    assert lake.partitions("utilization_daily") == [(ACCOUNT, d.isoformat()) for d in DAYS]
    materialization = result.asset_materializations_for_node(daily.node_def.name)[0]
    assert materialization.metadata["batch/partitions"].value == len(DAYS)
    assert materialization.metadata["batch/row_count"].value == 8 * len(DAYS)
    assert materialization.metadata["batch/rows_per_partition_min"].value == 8
    assert materialization.metadata["batch/empty_partitions"].value == []
    assert "dagster/row_count" not in materialization.metadata  # the UI would show the total per partition
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert evaluations["unique_grain"].passed and evaluations["rows_present"].passed
    assert evaluations["unique_grain"].metadata["partitions"].value == len(DAYS)
    # Coverage is 90 % on each day (10 % of slots dropped): the warning check passes on every partition.
    assert evaluations["coverage_above_threshold"].metadata["failed_partitions"].value == {}


def test_batch_rows_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from cloudopt_pipelines.assets.features import max_batch_rows
    from cloudopt_pipelines.settings import SettingsError

    monkeypatch.delenv("CLOUDOPT_BATCH_MAX_ROWS", raising=False)
    assert max_batch_rows() == 64_000_000
    monkeypatch.setenv("CLOUDOPT_BATCH_MAX_ROWS", "2_000_000")
    assert max_batch_rows() == 2_000_000
    monkeypatch.setenv("CLOUDOPT_BATCH_MAX_ROWS", "lots")
    with pytest.raises(SettingsError, match="CLOUDOPT_BATCH_MAX_ROWS='lots' is not a positive whole number"):
        max_batch_rows()


def test_a_batch_refuses_rows_without_a_partition_and_a_lake_root_with_an_equals_sign(
    tmp_path: Path, raw: pd.DataFrame
) -> None:
    lake, partitions = _second_account(tmp_path, raw)
    text = (sql_models_dir() / "utilization_daily.sql").read_text()
    models = tmp_path / "models"
    models.mkdir()
    stray = text.replace("ORDER BY account_id, date, resource_id", "") + (
        "UNION ALL BY NAME SELECT NULL::VARCHAR AS account_id, DATE '2026-03-02' AS date, 'x' AS resource_id\n"
    )
    (models / "utilization_daily.sql").write_text(stray)
    model = parse_model(models / "utilization_daily.sql")
    before = lake.partitions("utilization_daily")
    with pytest.raises(ModelError, match="1 row\\(s\\) with a NULL account_id"):
        execute_model_batch(model, lake, PARTITIONING, partitions[:2], source_schemas=source_schemas())
    assert lake.partitions("utilization_daily") == before
    odd = Lake(tmp_path / "env=prod" / "lake")
    with pytest.raises(ModelError, match=r"env=prod.*without '='"):
        execute_model_batch(MODELS["utilization_daily"], odd, PARTITIONING, partitions[:1])


def test_a_date_partitioned_batch_model(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "events_daily.sql").write_text(
        "-- description: events per day\n-- grain: one row per (date)\n-- partitioned_by: date\n-- batch: true\n"
        "SELECT date, count(*) AS events, sum(n) AS total FROM {{ ref('events') }} GROUP BY date ORDER BY date\n"
    )
    (model,) = load_models(models, {"events"})
    lake = Lake(tmp_path / "lake")
    for i, day in enumerate(DAYS):
        # The file's own date column is wrong on purpose: the partition path decides.
        lake.write("events", pa.table({"date": [date(2000, 1, 1)] * (i + 1), "n": list(range(i + 1))}), day=day)
    runs = execute_model_batch(model, lake, {"events": "date", "events_daily": "date"}, [(None, d) for d in DAYS])
    assert [r.table.to_pylist() for r in runs] == [
        [{"date": d, "events": i + 1, "total": i * (i + 1) // 2}] for i, d in enumerate(DAYS)
    ]
    assert lake.read("events_daily", day=DAYS[2]).to_pylist() == [{"date": DAYS[2], "events": 3, "total": 3}]
