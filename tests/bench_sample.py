"""A benchmark module as another deployment type would register one (used by tests/test_bench_harness.py)."""

import os

from cloudopt_pipelines.bench.harness import Line, Report


def run(quick: bool, progress) -> Report:
    progress("sample benchmark")
    wrong = bool(os.environ.get("BENCH_SAMPLE_WRONG"))
    return Report("sample", quick, [Line("sample", "half", "whole", 1.0, 2.0, not wrong)])
