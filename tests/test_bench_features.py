"""The features benchmark at a small size: it runs every step, its numbers agree with pandas, and the
report says which targets are met (speed itself is measured by `cloudopt bench features`, not here)."""

from pathlib import Path

from cloudopt_pipelines.bench.features import format_report, run_features_benchmark
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
