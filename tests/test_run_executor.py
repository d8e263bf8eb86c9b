"""Multiprocess runs fork their step processes from a forkserver that has imported the pipeline, unless the
run config names another start method; in-process runs stay in process."""

import json
import os
import sys
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from cloudopt_pipelines.instance import PRELOADED_MODULES, ensure_instance, run_executor
from cloudopt_pipelines.project_files import sql_models_dir
from cloudopt_pipelines.settings import Settings
from cloudopt_pipelines.sqlmodels.runner import _table_names


@dg.op(config_schema={"report": str})
def where_am_i(context: dg.OpExecutionContext) -> None:
    """Writes how this step's process was started: its parent's command line and what it had imported."""
    parent = Path(f"/proc/{os.getppid()}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    report = {
        "pid": os.getpid(),
        "parent": parent,
        "preloaded": all(module in sys.modules for module in PRELOADED_MODULES),
        # This job builds no definitions: any parse in the cache was made by the forkserver.
        "parsed_models": _table_names.cache_info().currsize,
    }
    Path(context.op_config["report"]).write_text(json.dumps(report))


@dg.job(executor_def=run_executor({}))
def probe_job() -> None:
    where_am_i()


def _run(tmp_path: Path, execution: dict[str, Any] | None) -> dict[str, Any]:
    # The report's path goes in the op's config, not the environment: the forkserver of this test process is
    # started once and keeps the environment it started with.
    report = tmp_path / "report.json"
    instance = ensure_instance(Settings(home=tmp_path / "cloudopt", env="demo"))
    config: dict[str, Any] = {"ops": {"where_am_i": {"config": {"report": str(report)}}}}
    if execution is not None:
        config["execution"] = {"config": execution}
    with dg.execute_job(dg.reconstructable(probe_job), instance, run_config=config) as result:
        assert result.success
    return json.loads(report.read_text())


@pytest.mark.parametrize("execution", [None, {"multiprocess": {}}, {"multiprocess": {"max_concurrent": 2}}])
def test_a_multiprocess_run_forks_its_steps_from_a_preloaded_forkserver(tmp_path: Path, execution: Any) -> None:
    report = _run(tmp_path, execution)
    assert "multiprocessing.forkserver" in report["parent"], report
    assert report["preloaded"], report
    assert report["parsed_models"] >= len(list(sql_models_dir().glob("*.sql"))), report


def test_a_run_that_asks_for_spawn_gets_a_fresh_interpreter_per_step(tmp_path: Path) -> None:
    report = _run(tmp_path, {"multiprocess": {"start_method": {"spawn": {}}}})
    assert "multiprocessing.forkserver" not in report["parent"], report
    assert not report["preloaded"], report
    assert report["parsed_models"] == 0, report


def test_an_in_process_run_stays_in_this_process(tmp_path: Path) -> None:
    report = _run(tmp_path, {"in_process": {}})
    assert report["pid"] == os.getpid()
