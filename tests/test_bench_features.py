"""The features benchmark at a small size: it runs every step, its numbers agree with pandas, and the
report says which targets are met (speed itself is measured by `cloudopt bench features`, not here)."""

from pathlib import Path

from cloudopt_pipelines.bench.features import format_report, run, run_features_benchmark
from cloudopt_pipelines.storage.lake import Lake


def test_benchmark_runs_every_step_and_agrees_with_pandas(tmp_path: Path) -> None:
    result = run_features_benchmark(
        resources=120, days=2, accounts=2, workdir=tmp_path, progress=lambda _: None, rounds=1
    )
    assert result.samples == 120 * 2 * 288
    steps = {
        "stg_utilization_5m",
        "floor_staging",
        "utilization_daily",
        "utilization_daily_per_partition",
        "floor_daily",
        "floor_daily_per_partition",
        "utilization_window",
        "floor_window",
        "pandas_daily",
        "pandas_window",
    }
    assert set(result.timings) == steps
    assert all(t > 0 for t in result.timings.values())
    # The window's exact quantiles equal pandas' over the same samples.
    assert result.max_abs_diff_vs_pandas < 1e-9
    # The batch wrote every account x day partition, as the per-partition run did.
    lake = Lake(tmp_path / "lake")
    assert len(lake.partitions("utilization_daily")) == 2 * 2
    assert sum(lake.read("utilization_daily", a, d).num_rows for a, d in lake.partitions("utilization_daily")) == 240
    report = format_report(result)
    assert "targets utilization_daily (single-run backfill: one statement):" in report
    assert "targets utilization_daily_per_partition (per partition):" in report
    assert "targets utilization_window (per partition):" in report
    # Rate, floor ratio in wall and in CPU time, pandas and memory: a verdict each.
    targets = [line for line in report.splitlines() if line.startswith("targets ")]
    assert len(targets) == 3 and all(line.count("met") == 5 for line in targets), targets


def test_harness_lines_hold_each_path_against_its_own_floor(tmp_path: Path) -> None:
    report = run(
        quick=True, progress=lambda _: None, resources=120, days=2, accounts=2, rounds=1, workdir=tmp_path, pandas=False
    )
    lines = {line.name: line for line in report.lines}
    timings, cpu = report.details["timings_s"], report.details["cpu_s"]
    per_partition = lines["utilization_daily_per_partition"]
    # Run partition by partition, the model is compared with the floor run the same way, not the one statement.
    assert per_partition.baseline_value == timings["floor_daily_per_partition"]
    assert lines["utilization_daily"].baseline_value == timings["floor_daily"]
    assert lines["stg_utilization_5m"].baseline_value == timings["floor_staging"]
    # Each line also gives the CPU-time ratio, which the machine's load disturbs less.
    expected = cpu["utilization_daily_per_partition"] / cpu["floor_daily_per_partition"]
    assert f"({expected:.2f}x floor CPU)" in per_partition.note
    expected = cpu["stg_utilization_5m"] / cpu["floor_staging"]
    assert f"({expected:.2f}x the scan's CPU)" in lines["stg_utilization_5m"].note
