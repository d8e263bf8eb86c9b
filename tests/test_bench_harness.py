"""The benchmark harness: ratios against a baseline of the same run, the answers checked, JSON results,
and a registry another module can add to (speed itself is measured by `cloudopt bench`, not here)."""

import json

import pytest
from typer.testing import CliRunner

from cloudopt_pipelines.bench import harness
from cloudopt_pipelines.bench.harness import BENCHMARKS, Line, Report, format_report, register, write_json
from cloudopt_pipelines.bench.recommend import run as run_recommend


def test_recommend_benchmark_checks_its_rows_at_every_scale(tmp_path):
    report = BENCHMARKS["recommend"].run(quick=True, progress=lambda _: None, scales=(1, 3), k8s_sizes=(20, 40))
    names = [line.name for line in report.lines]
    assert names[:3] == ["recommend 1x", "recommend 3x", "scaling 3x / 1x"]
    # the Kubernetes cluster, workloads and node pools, against its baseline of the same run
    assert names[3:] == [
        "kubernetes 20 pods, cost",
        "kubernetes 20 pods, time",
        "kubernetes 40 pods, cost",
        "kubernetes 40 pods, time",
        "kubernetes cost per pod 40 / 20",
    ]
    k8s = report.details["kubernetes"]["sizes"]
    assert report.lines[3].ours_value == k8s[0]["ours_usd_per_pod"] and report.lines[3].same_answer
    assert report.lines[-1].ours_value == pytest.approx(k8s[1]["ours_usd_per_pod"] / k8s[0]["ours_usd_per_pod"])
    assert report.lines[-2].met is not None and report.lines[-2].target.startswith("<= 60 s")
    assert report.ok and all(line.same_answer for line in report.lines[:2])
    assert all(line.ours_value > 0 and line.baseline_value > 0 for line in report.lines)
    assert report.machine["cores"] >= 1 and len(report.machine["load"]) == 3
    text = format_report(report)
    assert "ours/baseline" in text and "flat (<= 1.5)" in text
    path = write_json(report, tmp_path)
    data = json.loads(path.read_text())
    assert data["answers_agree"] is True and data["lines"][0]["ratio"] > 0
    assert (tmp_path / "recommend-quick-latest.json").read_text() == path.read_text()
    assert run_recommend.__module__ == BENCHMARKS["recommend"].module


def test_a_disagreeing_answer_fails_the_run_and_a_registered_benchmark_gets_a_command(tmp_path, monkeypatch):
    register("sample", "tests.bench_sample", "a benchmark registered by another module")
    monkeypatch.setitem(harness.BENCHMARKS, "sample", BENCHMARKS.pop("sample"))
    from cloudopt_pipelines import cli

    cli._register_other_benchmarks()
    runner = CliRunner()
    ok = runner.invoke(cli.app, ["bench", "sample", "--quick", "--json", "--results-dir", str(tmp_path)])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["lines"][0]["ratio"] == 0.5
    monkeypatch.setenv("BENCH_SAMPLE_WRONG", "1")
    bad = runner.invoke(cli.app, ["bench", "sample", "--results-dir", str(tmp_path)])
    assert bad.exit_code == 1 and "NO" in bad.stdout
    assert len(list(tmp_path.glob("sample-*.json"))) == 4  # two runs, each a timestamped file and latest


def test_a_line_without_a_baseline_value_is_not_a_division_error():
    line = Line("x", "ours", "none", 1.0, 0.0, None)
    assert line.ratio == float("inf")
    assert Report("x", True, [line]).ok
