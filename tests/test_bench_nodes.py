"""The node-packing benchmark runs end to end and compares against its baseline on the same cluster
(what it measures is not timed here: speed belongs to ``cloudopt bench nodes``)."""

from __future__ import annotations

from cloudopt_pipelines.bench.nodes import format_report, generate_cluster, run_nodes_benchmark


def test_generated_cluster_has_the_requested_pods() -> None:
    table, rec = generate_cluster(120, seed=3)
    rows = table.to_pylist()
    assert sum(r["replicas"] for r in rows if r["object_kind"] in ("deployment", "statefulset")) == 120
    assert {r["object_kind"] for r in rows} >= {"node", "daemonset", "deployment", "pdb"}
    assert all(k[0] in {r["resource_id"] for r in rows} for k in rec)


def test_benchmark_reports_cost_per_pod_against_the_baseline() -> None:
    rows = run_nodes_benchmark(sizes=(40, 120), seed=1)
    assert [r["pods"] for r in rows] == [40, 120]
    for r in rows:
        # Same pods, same constraints: choosing among types never costs more than today's type alone.
        assert 0 < r["ondemand_usd_per_pod"] <= r["baseline_usd_per_pod"] + 1e-9
        assert r["ondemand_gap_pct"] >= 0
    report = format_report(rows)
    assert "flatness of on-demand cost per pod, 120 vs 40 pods" in report
    ratio = rows[1]["ondemand_usd_per_pod"] / rows[0]["ondemand_usd_per_pod"]
    assert f"{ratio:.3f}" in report
