"""The package installs: a wheel built from the checkout, installed into a fresh virtualenv, loads the same
asset graph as the checkout, with its SQL models and its constraints file; a missing or empty models
folder is a clear error.

The fresh venv gets the dependencies by a ``.pth`` line naming the site-packages of the interpreter
running the tests (a ``--system-site-packages`` venv would see the base Python's, not this venv's, and
installing Dagster and its dependencies again would take minutes). The wheel itself is installed into
the fresh venv's own site-packages, which comes first on ``sys.path``; the test checks that the package
it imports is that copy, not the checkout.
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from cloudopt_pipelines import project_files
from cloudopt_pipelines.definitions import build_definitions
from cloudopt_pipelines.project_files import ProjectFileError, default_constraints_path, sql_models_dir
from cloudopt_pipelines.settings import Settings
from tests.test_asset_graph_snapshot import graph_snapshot

REPO = Path(__file__).resolve().parents[1]
NOT_SOURCES = shutil.ignore_patterns(
    ".git", ".venv", ".cloudopt", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache"
)

PROBE = """
import json, sys
from pathlib import Path
import snapshot_helper
import cloudopt_pipelines
from cloudopt_pipelines.definitions import build_definitions
from cloudopt_pipelines.optimizers.portfolio import load_config
from cloudopt_pipelines.project_files import sql_models_dir
from cloudopt_pipelines.settings import Settings

defs = build_definitions(Settings(home=Path(sys.argv[1]), env="demo"))
print(json.dumps({
    "package": cloudopt_pipelines.__file__,
    "models": str(sql_models_dir()),
    "constraints": load_config().source,
    "graph": snapshot_helper.graph_snapshot(defs),
}))
"""


def _run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, str]]:
    """A fresh venv with the wheel of a copy of the checkout installed: (its python, a work dir, its env)."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    shutil.copytree(REPO, source, symlinks=True, ignore=NOT_SOURCES)
    built = _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", root / "dist", source, cwd=root)
    assert built.returncode == 0, built.stderr
    assert "deprecated" not in built.stderr, built.stderr  # e.g. a project.license table
    (wheel,) = (root / "dist").glob("cloudopt_pipelines-*.whl")

    venv = root / "venv"
    made = _run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=root)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    purelib = _run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=root).stdout
    (Path(purelib.strip()) / "shared_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    done = _run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--quiet", wheel, cwd=root)
    assert done.returncode == 0, done.stderr

    work = root / "work"
    work.mkdir()
    shutil.copy(REPO / "tests" / "test_asset_graph_snapshot.py", work / "snapshot_helper.py")
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "CLOUDOPT_PLAN_CONSTRAINTS"}}
    return python, work, env


def test_the_installed_wheel_has_the_checkouts_asset_graph(installed, tmp_path: Path) -> None:
    python, work, env = installed
    probe = _run(python, "-c", PROBE, tmp_path / "home", cwd=work, env={**env, "PYTHONPATH": str(work)})
    assert probe.returncode == 0, probe.stderr
    found = json.loads(probe.stdout)
    site = python.parents[1]
    assert Path(found["package"]).is_relative_to(site), f"imported {found['package']}, not the installed wheel"
    assert Path(found["models"]).is_relative_to(site) and Path(found["constraints"]).is_relative_to(site)

    checkout = graph_snapshot(build_definitions(Settings(home=tmp_path / "checkout", env="demo")))
    assert sorted(found["graph"]["assets"]) == sorted(checkout["assets"])
    assert {k: v["deps"] for k, v in found["graph"]["assets"].items()} == {
        k: v["deps"] for k, v in checkout["assets"].items()
    }
    assert found["graph"] == checkout
    assert "features/utilization_window" in found["graph"]["assets"]


def test_an_install_without_its_models_says_so(installed, tmp_path: Path) -> None:
    python, work, env = installed
    code = "from cloudopt_pipelines.project_files import sql_models_dir as d; print(d())"
    models = Path(_run(python, "-c", code, cwd=work, env=env).stdout.strip())
    assert models.is_relative_to(python.parents[1]), models  # never the checkout's own models
    saved = tmp_path / "saved"
    shutil.copytree(models, saved)
    try:
        for sql in models.glob("*.sql"):
            sql.unlink()
        probe = _run(python, "-c", PROBE, tmp_path / "home", cwd=work, env={**env, "PYTHONPATH": str(work)})
    finally:
        shutil.copytree(saved, models, dirs_exist_ok=True)
    assert probe.returncode != 0
    assert f"the SQL models folder {models} holds no *.sql model: reinstall cloudopt-pipelines" in probe.stderr


def test_models_and_constraints_resolve_in_the_checkout() -> None:
    assert sql_models_dir() == REPO / "dbt_like_sql"
    assert default_constraints_path() == REPO / "config" / "constraints.yaml"


def test_a_missing_or_empty_models_folder_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(project_files, "PACKAGE_DIR", tmp_path / "cloudopt_pipelines")
    monkeypatch.setattr(project_files, "CHECKOUT_DIR", tmp_path)
    with pytest.raises(ProjectFileError, match="the SQL models folder is missing"):
        sql_models_dir()
    (tmp_path / "dbt_like_sql").mkdir()
    with pytest.raises(ProjectFileError, match=r"holds no \*.sql model"):
        build_definitions(Settings(home=tmp_path / "home", env="demo"))
