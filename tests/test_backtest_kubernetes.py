"""`cloudopt backtest kubernetes`: strategies replayed on real usage, checked against numpy by hand.

Ship-ok data (tests/data: Google cluster-data 2011 memory, Azure V1 CPU) runs everywhere; the Alibaba pod
memory series (research-only, ../shared/data) runs when it is there and is skipped otherwise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cloudopt_pipelines.backtest.kubernetes import (
    DEFAULT,
    POD_CPU_CORES,
    POD_MEM_BYTES,
    kubernetes_backtest,
    read_pods,
)
from cloudopt_pipelines.cli import app

DATA = Path(__file__).parent / "data"
MEMORY = DATA / "gcd_4vms_1day_cpu_mem_5min.csv.gz"
CPU = DATA / "azure_v1_6vms_3days_cpu_5min.csv.gz"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
ALIBABA = SHARED / "container_traces" / "alibaba_genai_2026_pod_memory" / "pod_memory_util_anon.csv.gz"
AZURE_100 = SHARED / "vm_traces" / "azure_v1_100vms_cpu_5min_long.csv.gz"


def test_krr_replayed_by_hand() -> None:
    report = kubernetes_backtest(MEMORY, CPU, train_fraction=0.5)
    pods = read_pods(MEMORY, CPU)
    assert report["pods"] == len(pods) == 4
    cost_now = cost_new = 0.0
    viol = oom = n = 0
    for pod in pods:
        cut = int(len(pod.cpu) * 0.5)
        cpu_req = np.quantile(pod.cpu[:cut], 0.95)
        mem = pod.mem[:cut].max() * 1.15
        cost_now += POD_CPU_CORES * 7.5 + POD_MEM_BYTES / 2**30
        cost_new += cpu_req * 7.5 + mem / 2**30
        viol += int((pod.cpu[cut:] > cpu_req).sum())
        oom += int((pod.mem[cut:] > mem).sum())
        n += len(pod.cpu) - cut
    krr = next(s for s in report["strategies"] if s["strategy"] == "krr")
    assert krr["savings_pct"] == pytest.approx(100 * (1 - cost_new / cost_now), abs=1e-3)
    assert krr["cpu_violation_pct"] == pytest.approx(100 * viol / n, abs=1e-4)
    assert krr["oom_interval_pct"] == pytest.approx(100 * oom / n, abs=1e-4)
    assert krr["test_intervals"] == n


def test_dominance_is_what_it_says() -> None:
    report = kubernetes_backtest(MEMORY, CPU)
    rows = {s["strategy"]: s for s in report["strategies"]}
    assert report["default"] in rows and report["default"] == f"ours_p{DEFAULT[0]}_cpu+{DEFAULT[1]}_mem+{DEFAULT[2]}"
    for name, d in report["dominance"].items():
        b = rows[name]
        winners = [
            o
            for o, r in rows.items()
            if r["kind"] == "ours"
            and r["savings_pct"] >= b["savings_pct"]
            and r["cpu_violation_pct"] <= b["cpu_violation_pct"]
            and r["oom_interval_pct"] <= b["oom_interval_pct"]
        ]
        assert d["by"] == winners and d["dominated"] == bool(winners)
    # more margin never saves more, never violates more
    lo, hi = rows["ours_p90_cpu+0_mem+15"], rows["ours_p90_cpu+50_mem+15"]
    assert hi["savings_pct"] < lo["savings_pct"] and hi["cpu_violation_pct"] <= lo["cpu_violation_pct"]


def test_cli_json_and_a_missing_trace() -> None:
    runner = CliRunner()
    ok = runner.invoke(
        app, ["backtest", "kubernetes", "--memory-trace", str(MEMORY), "--cpu-trace", str(CPU), "--json"]
    )
    assert ok.exit_code in (0, 1) and '"dominance"' in ok.output
    missing = runner.invoke(
        app, ["backtest", "kubernetes", "--memory-trace", "/nonexistent.csv.gz", "--cpu-trace", str(CPU)]
    )
    assert missing.exit_code == 2 and "does not exist" in missing.output


@pytest.mark.skipif(not (ALIBABA.exists() and AZURE_100.exists()), reason="../shared/data is not here")
def test_alibaba_pod_memory() -> None:
    report = kubernetes_backtest(ALIBABA, AZURE_100)
    assert report["pods"] > 100
    rows = {s["strategy"]: s for s in report["strategies"]}
    assert all(0 <= r["cpu_violation_pct"] <= 100 and r["savings_pct"] < 100 for r in rows.values())
    assert report["dominance"]["krr"]["dominated"]
