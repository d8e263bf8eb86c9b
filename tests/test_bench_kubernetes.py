"""The Kubernetes recommendation benchmark runs workloads and node pools end to end and compares against its
KRR-like baseline on the same usage (nothing timed here: speed belongs to ``cloudopt bench kubernetes``)."""

from __future__ import annotations

import pytest

from cloudopt_pipelines.bench.kubernetes import (
    KRR_MEMORY_MARGIN,
    format_report,
    krr_requests,
    run_kubernetes_benchmark,
    synthetic_usage,
)
from cloudopt_pipelines.bench.nodes import generate_cluster


def test_krr_baseline_takes_the_window_p95_and_the_peak_plus_its_margin() -> None:
    workloads, _ = generate_cluster(30, seed=2)
    daily, hist = synthetic_usage(workloads, seed=2)
    rec = krr_requests(daily)
    rows = daily.to_pylist()
    key = (rows[0]["resource_id"], rows[0]["container"])
    mine = [r for r in rows if (r["resource_id"], r["container"]) == key]
    assert len(mine) == 8
    assert rec[key][0] == max(r["cpu_p95_cores"] for r in mine)
    assert rec[key][1] == pytest.approx(max(r["mem_peak_bytes"] for r in mine) * (1 + KRR_MEMORY_MARGIN))
    assert hist.num_rows == len(rec)


def test_benchmark_recommends_workloads_and_node_pools_against_the_baseline() -> None:
    result = run_kubernetes_benchmark(quick=True, sizes=(20, 60), seed=1)
    sizes = result["sizes"]
    assert [r["pods"] for r in sizes] == [20, 60]
    for r in sizes:
        assert r["workloads"] > 0 and r["workloads_resized"] > 0  # the workload optimiser ran on the usage
        assert r["node_pool_option"]  # and the node pools were packed from its requests
        assert r["ratio_to_baseline"] == pytest.approx(r["ours_usd_per_pod"] / r["baseline_usd_per_pod"])
    assert result["flatness"] == pytest.approx(sizes[1]["ours_usd_per_pod"] / sizes[0]["ours_usd_per_pod"])
    report = format_report(result)
    assert "cost per pod, 60 vs 20 pods" in report and f"{result['flatness']:.3f}" in report


def test_cloudopt_bench_kubernetes_prints_the_report() -> None:
    from typer.testing import CliRunner

    from cloudopt_pipelines.cli import app

    result = CliRunner().invoke(app, ["bench", "kubernetes", "--quick", "--sizes", "20,40"])
    assert result.exit_code == 0, result.output
    assert "cost per pod, 40 vs 20 pods" in result.output and "ours/base" in result.output
