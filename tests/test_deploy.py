"""The Kubernetes deployment (docs/deploy.md), validated as far as it can be without a cluster.

- the instance config the Helm chart renders (deploy/dagster.k8s.yaml) passes Dagster's own instance
  schema, and its K8sRunLauncher config passes dagster-k8s's own;
- the Dockerfile installs the wheel and dagster-k8s and serves the location the values name;
- the wheel installed in a fresh venv, with the image's environment, passes ``dagster definitions
  validate`` and its jobs get the ``k8s_job_executor``; every requirement the image installs is met;
- the values use the run launcher, the service account and the location of the rest, and the service
  account is bound to the collector's read-only ClusterRole exactly as docs/kubernetes.md states it.

- every key the values set is one checked against the chart's schema, with that schema's type, and each
  list item carries what the schema requires of it.

The chart itself is not reachable from this machine: docs/deploy.md says what was checked against its
schema sources, and how to check with ``helm lint`` / ``helm template`` where it is.
"""

import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from importlib import metadata
from pathlib import Path

import dagster as dg
import pytest
import yaml
from packaging.requirements import Requirement

from cloudopt_pipelines.instance import RUN_EXECUTOR_VAR, run_executor
from cloudopt_pipelines.orchestration import DEFINITIONS_MODULE, LOCATION_NAME
from tests.k8s.test_k8s_clusterrole import documented_role

REPO = Path(__file__).resolve().parents[1]
K8S_INSTANCE = REPO / "deploy" / "dagster.k8s.yaml"
VALUES = REPO / "deploy" / "helm" / "values.yaml"
DOCKERFILE = REPO / "Dockerfile"
RBAC = REPO / "docs" / "k8s" / "collector-rbac.yaml"
NOT_SOURCES = shutil.ignore_patterns(
    ".git", ".venv", ".cloudopt", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache"
)


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile: comments dropped, continued lines joined."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    found = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            found.append((word.upper(), " ".join(rest.split())))
    return found


def _keys(tree: object) -> list[str]:
    if isinstance(tree, dict):
        return [k for key, value in tree.items() for k in (str(key), *_keys(value))]
    if isinstance(tree, list):
        return [k for item in tree for k in _keys(item)]
    return []


def _values() -> dict:
    return yaml.safe_load(VALUES.read_text())


def test_the_k8s_instance_config_passes_dagsters_schema_and_the_launchers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dagster._config import process_config, resolve_to_config_type
    from dagster._core.instance.config import dagster_instance_config
    from dagster_k8s import K8sRunLauncher

    # What the chart sets on its pods (the file's header names them).
    for name in ("DAGSTER_PG_HOST", "DAGSTER_PG_USER", "DAGSTER_PG_PASSWORD", "DAGSTER_PG_DB"):
        monkeypatch.setenv(name, "x")
    monkeypatch.setenv("DAGSTER_K8S_PIPELINE_RUN_NAMESPACE", "cloudopt")
    monkeypatch.setenv("DAGSTER_K8S_INSTANCE_CONFIG_MAP", "cloudopt-instance")

    shutil.copy(K8S_INSTANCE, tmp_path / "dagster.yaml")
    config, _ = dagster_instance_config(str(tmp_path))
    assert config["run_launcher"]["class"] == "K8sRunLauncher"
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert config["concurrency"]["pools"]["default_limit"] == 1
    launcher = config["run_launcher"]["config"]
    checked = process_config(resolve_to_config_type(K8sRunLauncher.config_type()), launcher)
    assert checked.success, checked.errors
    assert launcher["service_account_name"] == _values()["global"]["serviceAccountName"]

    # Not vacuous: a misspelt launcher key is refused by the same schema.
    bad = {**launcher, "service_acount_name": "x"}
    assert not process_config(resolve_to_config_type(K8sRunLauncher.config_type()), bad).success


def test_the_dockerfile_installs_the_wheel_and_serves_the_location() -> None:
    steps = dockerfile_instructions(DOCKERFILE.read_text())
    bases = [args for word, args in steps if word == "FROM"]
    assert len(bases) == 2 and all(b.startswith("python:3.11") for b in bases), bases
    runs = " && ".join(args for word, args in steps if word == "RUN")
    assert "pip wheel" in runs and "cloudopt_pipelines-*.whl" in runs
    assert '--no-deps "dagster-k8s>=0.29,<0.30"' in runs  # the k8s extra's, as `make install-dev` installs it
    env = " ".join(args for word, args in steps if word == "ENV")
    assert f"{RUN_EXECUTOR_VAR}=k8s_job" in env and "DAGSTER_HOME=" in env
    [cmd] = [args for word, args in steps if word == "CMD"]
    served = shlex.split(" ".join(yaml.safe_load(cmd)))
    deployment = _values()["dagster-user-deployments"]["deployments"][0]
    assert served[:3] == ["dagster", "api", "grpc"]
    assert served[served.index("-m") + 1] == DEFINITIONS_MODULE
    assert served[served.index("--location-name") + 1] == LOCATION_NAME
    assert served[served.index("-p") + 1] == str(deployment["port"])
    assert ("EXPOSE", str(deployment["port"])) in steps
    assert any(word == "USER" and args != "root" for word, args in steps)


def test_the_values_name_the_launcher_location_and_service_account() -> None:
    values = _values()
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert values["postgresql"]["enabled"] is False and values["generatePostgresqlPasswordSecret"] is False
    deployment = values["dagster-user-deployments"]["deployments"][0]
    args = deployment["dagsterApiGrpcArgs"]
    assert args[args.index("-m") + 1] == DEFINITIONS_MODULE
    assert args[args.index("--location-name") + 1] == LOCATION_NAME
    assert values["dagsterDaemon"]["runCoordinator"]["type"] == "QueuedRunCoordinator"
    secrets = [k for k in _keys(values) if "password" in k.lower() and k != "generatePostgresqlPasswordSecret"]
    assert not secrets, "secrets stay in Kubernetes Secrets"
    account = values["global"]["serviceAccountName"]
    assert values["serviceAccount"] == {"create": False, "name": account}

    documents = list(yaml.safe_load_all(RBAC.read_text()))
    by_kind = {(d["kind"], d["metadata"]["name"]): d for d in documents}
    assert ("ServiceAccount", account) in by_kind
    role = by_kind[("ClusterRole", "cloudopt-collector-readonly")]
    assert role["rules"] == documented_role()["rules"]
    [binding] = [d for d in documents if d["kind"] == "ClusterRoleBinding"]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": "cloudopt"}]
    writes = {v for d in documents if d["kind"] == "ClusterRole" for r in d["rules"] for v in r["verbs"]}
    assert writes <= {"list", "get"}, "the collector's identity must not write cluster-wide"


# Every key the values set, with the type the official chart's schema gives it. Checked by hand against
# the chart's schema models (helm/dagster/schema in dagster-io/dagster, recent sources; docs/deploy.md
# says which and how) and its instance ConfigMap template (which renders dagsterDaemon.runMonitoring's
# keys, a free-form map in the schema). A key added here must be checked against the chart first.
PULL_POLICIES = ("Always", "IfNotPresent", "Never")
CHART_KEYS: dict[str, type | tuple[str, ...]] = {
    "global.serviceAccountName": str,
    "global.postgresqlSecretName": str,
    "serviceAccount.create": bool,
    "serviceAccount.name": str,
    "dagsterWebserver.replicaCount": int,
    "dagsterWebserver.envConfigMaps[].name": str,
    "dagsterWebserver.resources": dict,
    "dagsterDaemon.enabled": bool,
    "dagsterDaemon.envConfigMaps[].name": str,
    "dagsterDaemon.runCoordinator.enabled": bool,
    "dagsterDaemon.runCoordinator.type": ("QueuedRunCoordinator",),
    "dagsterDaemon.runCoordinator.config.queuedRunCoordinator.maxConcurrentRuns": int,
    "dagsterDaemon.runCoordinator.config.queuedRunCoordinator.tagConcurrencyLimits[].key": str,
    "dagsterDaemon.runCoordinator.config.queuedRunCoordinator.tagConcurrencyLimits[].value": str,
    "dagsterDaemon.runCoordinator.config.queuedRunCoordinator.tagConcurrencyLimits[].limit": int,
    "dagsterDaemon.runMonitoring.enabled": bool,
    "dagsterDaemon.runMonitoring.startTimeoutSeconds": int,
    "dagsterDaemon.runMonitoring.freeSlotsAfterRunEndSeconds": int,
    "dagsterDaemon.resources": dict,
    "dagster-user-deployments.enabled": bool,
    "dagster-user-deployments.enableSubchart": bool,
    "dagster-user-deployments.deployments[].name": str,
    "dagster-user-deployments.deployments[].image.repository": str,
    "dagster-user-deployments.deployments[].image.tag": str,
    "dagster-user-deployments.deployments[].image.pullPolicy": PULL_POLICIES,
    "dagster-user-deployments.deployments[].dagsterApiGrpcArgs": list,
    "dagster-user-deployments.deployments[].port": int,
    "dagster-user-deployments.deployments[].envConfigMaps[].name": str,
    "dagster-user-deployments.deployments[].envSecrets[].name": str,
    "dagster-user-deployments.deployments[].includeConfigInLaunchedRuns.enabled": bool,
    "dagster-user-deployments.deployments[].resources": dict,
    "runLauncher.type": ("K8sRunLauncher",),
    "runLauncher.config.k8sRunLauncher.envConfigMaps[].name": str,
    "runLauncher.config.k8sRunLauncher.envSecrets[].name": str,
    "runLauncher.config.k8sRunLauncher.runK8sConfig.containerConfig": dict,
    "postgresql.enabled": bool,
    "postgresql.postgresqlHost": str,
    "postgresql.postgresqlUsername": str,
    "postgresql.postgresqlDatabase": str,
    "postgresql.postgresqlParams": dict,
    "postgresql.service.port": int,
    "generatePostgresqlPasswordSecret": bool,
    "telemetry.enabled": bool,
}
# Lists are not merged with the chart's defaults (the values' list replaces the chart's), so each item
# must carry what the chart's schema requires of it.
REQUIRED_IN_ITEMS = {
    "dagster-user-deployments.deployments[]": {"name", "image", "port"},
    "dagster-user-deployments.deployments[].image": {"repository", "tag", "pullPolicy"},
    "dagsterDaemon.runCoordinator.config.queuedRunCoordinator.tagConcurrencyLimits[]": {"key", "limit"},
}


def _chart_paths(tree: object, path: str = "") -> list[tuple[str, object]]:
    """(path, value) of every key the values set; list items as ``[]``; free-form maps as one value."""
    if isinstance(tree, dict) and CHART_KEYS.get(path) is not dict:
        return [pv for key, value in tree.items() for pv in _chart_paths(value, f"{path}.{key}" if path else key)]
    if isinstance(tree, list) and tree and all(isinstance(item, dict) for item in tree):
        return [pv for item in tree for pv in _chart_paths(item, path + "[]")]
    return [(path, tree)]


def _chart_problems(values: dict) -> list[str]:
    problems = []
    for path, value in _chart_paths(values):
        wanted = CHART_KEYS.get(path)
        if wanted is None:
            problems.append(f"{path}: not a key checked against the chart")
        elif isinstance(wanted, tuple):
            if value not in wanted:
                problems.append(f"{path}: {value!r} is not one of {wanted}")
        elif type(value) is not wanted:  # bool is not an int here: the chart's schema tells them apart
            problems.append(f"{path}: {type(value).__name__}, the chart wants {wanted.__name__}")
    for prefix, required in REQUIRED_IN_ITEMS.items():
        items = [values]
        for part in prefix.split("."):
            items = [i[part.removesuffix("[]")] for i in items if part.removesuffix("[]") in i]
            if part.endswith("[]"):
                items = [x for i in items for x in i]
        problems += [f"{prefix}: {sorted(required - set(i))} missing" for i in items if required - set(i)]
    return problems


def test_the_values_use_only_keys_and_types_of_the_charts_schema() -> None:
    values = _values()
    assert _chart_problems(values) == []
    assert {path for path, _ in _chart_paths(values)} == set(CHART_KEYS), "a key was dropped from the values"
    # The chart fails on queue limits set both under the run coordinator and under `concurrency.runs`.
    assert "concurrency" not in values

    # Not vacuous: a misspelt key, a wrong type and an incomplete list item are each refused.
    bad = yaml.safe_load(VALUES.read_text())
    launcher = bad["runLauncher"]["config"]["k8sRunLauncher"]
    launcher["runK8sConfg"] = launcher.pop("runK8sConfig")
    bad["dagster-user-deployments"]["deployments"][0]["image"]["tag"] = 1.0
    del bad["dagster-user-deployments"]["deployments"][0]["port"]
    assert sorted(_chart_problems(bad)) == [
        "dagster-user-deployments.deployments[].image.tag: float, the chart wants str",
        "dagster-user-deployments.deployments[]: ['port'] missing",
        "runLauncher.config.k8sRunLauncher.runK8sConfg.containerConfig.resources.limits.memory: "
        "not a key checked against the chart",
        "runLauncher.config.k8sRunLauncher.runK8sConfg.containerConfig.resources.requests.cpu: "
        "not a key checked against the chart",
        "runLauncher.config.k8sRunLauncher.runK8sConfg.containerConfig.resources.requests.memory: "
        "not a key checked against the chart",
    ]


def test_run_executor_is_chosen_by_the_setting_and_refuses_a_typo() -> None:
    from dagster_k8s import k8s_job_executor

    assert (
        run_executor({}).name == run_executor({RUN_EXECUTOR_VAR: "multiprocess"}).name == "multi_or_in_process_executor"
    )
    assert run_executor({RUN_EXECUTOR_VAR: "k8s_job"}) is k8s_job_executor
    with pytest.raises(ValueError, match=f"{RUN_EXECUTOR_VAR}='k8s' is not one of multiprocess, k8s_job"):
        run_executor({RUN_EXECUTOR_VAR: "k8s"})


@pytest.fixture(scope="module")
def image_env(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, str]]:
    """A fresh venv as the image builds it: the wheel of a copy of the checkout, with the shared dependencies
    (as tests/test_wheel.py does: a .pth line to this interpreter's site-packages)."""
    root = tmp_path_factory.mktemp("image")
    source = root / "source"
    shutil.copytree(REPO, source, symlinks=True, ignore=NOT_SOURCES)
    run = dict(cwd=root, capture_output=True, text=True, timeout=600)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", root / "dist", source], **run
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (root / "dist").glob("cloudopt_pipelines-*.whl")
    venv = root / "venv"
    assert subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], **run).returncode == 0
    python = venv / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], **run)
    (Path(purelib.stdout.strip()) / "shared_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    done = subprocess.run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "-q", wheel], **run)
    assert done.returncode == 0, done.stderr
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(
        {"CLOUDOPT_HOME": str(root / "home"), "DAGSTER_HOME": str(root / "dagster"), RUN_EXECUTOR_VAR: "k8s_job"}
    )
    (root / "dagster").mkdir()
    return python, wheel, env


def test_the_images_requirements_are_met_by_the_environment_they_were_built_from(image_env) -> None:
    _python, wheel, _env = image_env
    with zipfile.ZipFile(wheel) as archive:
        [name] = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        requires = [
            Requirement(line.split(":", 1)[1].strip())
            for line in archive.read(name).decode().splitlines()
            if line.startswith("Requires-Dist:")
        ]
    wanted = [r for r in requires if r.marker is None or r.marker.evaluate({"extra": "k8s"})]
    assert any(r.name == "dagster-k8s" for r in wanted), "the k8s extra must bring dagster-k8s"
    unmet = [str(r) for r in wanted if not r.specifier.contains(metadata.version(r.name), prereleases=True)]
    assert not unmet, f"the image would install versions this environment was not tested with: {unmet}"


def test_the_installed_wheel_passes_dagster_definitions_validate_with_the_k8s_executor(image_env, tmp_path) -> None:
    python, _wheel, env = image_env
    bin_dir = Path(sys.executable).parent
    done = subprocess.run(
        [python, bin_dir / "dagster", "definitions", "validate", "-m", DEFINITIONS_MODULE],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    probe = (
        "import cloudopt_pipelines, sys; from cloudopt_pipelines.definitions import defs; "
        "d = defs(); job = d.resolve_job_def('daily_pipeline'); "
        "print(cloudopt_pipelines.__file__); print(job.executor_def.name)"
    )
    found = subprocess.run([python, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert found.returncode == 0, found.stderr[-3000:]
    package, executor = found.stdout.split()[-2:]
    assert Path(package).is_relative_to(python.parents[1]), package  # the wheel's copy, not the checkout
    assert executor == "k8s"
    assert dg.__version__.startswith("1.13")
