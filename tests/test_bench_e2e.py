"""The end-to-end benchmark's fleet: the demo's shapes with new ids, every value a real demo sample
(the run itself, through Dagster, is measured by `cloudopt bench e2e`, not here)."""

import pyarrow.compute as pc
import pyarrow.parquet as pq

from cloudopt_pipelines.bench.e2e import build_fleet, preload_line
from cloudopt_pipelines.sources.demo import DEMO_DATA, DemoCollector


def test_scaled_fleet_is_served_by_the_demo_collector_with_real_values(tmp_path):
    accounts = build_fleet(tmp_path, accounts=3, instances=50, days=9)
    collector = DemoCollector(tmp_path)
    assert collector.list_accounts() == accounts and len(set(accounts)) == 3
    assert len(collector.days) == 9
    seed = pq.read_table(DEMO_DATA / "metrics.parquet")
    seed_values = set(pc.drop_null(seed["cpu_pct"]).to_pylist())
    ids = set()
    for account in accounts:
        inventory = collector.collect_inventory(account, collector.days[8]).table
        instances = inventory.filter(pc.equal(inventory["resource_kind"], "ec2_instance"))
        assert instances.num_rows == 50
        ids |= set(instances["resource_id"].to_pylist())
        metrics = collector.collect_metrics(account, collector.days[8]).table  # day 8 replays demo day 1
        assert metrics.num_rows > 0 and set(metrics["resource_id"].to_pylist()) <= ids
        assert set(pc.drop_null(metrics["cpu_pct"]).to_pylist()) <= seed_values
        per_instance = pc.value_counts(metrics["resource_id"]).field("counts").to_pylist()
        assert max(per_instance) <= 288
    assert len(ids) == 150  # new ids: no two accounts share one


def test_each_step_process_rebuilds_the_job_over_the_scaled_fleet(tmp_path, monkeypatch):
    import dagster as dg

    from cloudopt_pipelines.automation import DAILY_JOB
    from cloudopt_pipelines.bench.e2e import ScaledDemoSource

    monkeypatch.setenv("CLOUDOPT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CLOUDOPT_ENV", "demo")
    accounts = build_fleet(tmp_path / "data", accounts=1, instances=3, days=2)
    job = dg.build_reconstructable_job("cloudopt_pipelines.bench.e2e", "bench_job", (DAILY_JOB, str(tmp_path / "data")))
    rebuilt = job.get_definition()  # what the multiprocess executor does in each step process
    assert rebuilt.name == DAILY_JOB
    with dg.build_resources({"source": rebuilt.resource_defs["source"]}) as resources:
        source = resources.source
        assert isinstance(source, ScaledDemoSource) and source.data_dir == str(tmp_path / "data")
        assert source.get_collector().list_accounts() == accounts


def test_the_rss_sampler_sees_a_child_process_memory():
    import subprocess
    import sys
    import time

    from cloudopt_pipelines.bench.e2e import DescendantsRss

    # a child that holds about 200 MB until told to stop
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; b = bytearray(200 * 2**20); sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        sampler = DescendantsRss()
        deadline = time.monotonic() + 120
        while sampler.peak_one_mb < 150 and time.monotonic() < deadline:
            sampler.sample()
            time.sleep(0.2)
        assert sampler.peak_one_mb >= 150 and sampler.peak_total_mb >= sampler.peak_one_mb
    finally:
        child.communicate(b"")


def test_the_preload_line_rebuilds_the_same_definitions_in_both_forkservers(tmp_path, monkeypatch):
    monkeypatch.setenv("CLOUDOPT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CLOUDOPT_ENV", "demo")
    line = preload_line()
    assert line.same_answer is True
    assert line.ours_value > 0 and line.baseline_value > 0
    assert "asset keys, the same in both" in line.note
