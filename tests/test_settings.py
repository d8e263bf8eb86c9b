"""The settings module parses and validates every CLOUDOPT_* variable; resources per environment; secrets
stay out of the definitions; nothing is read from the environment at import."""

import os
import subprocess
import sys
import warnings
from pathlib import Path

import dagster as dg
import pytest

from cloudopt_pipelines.definitions import build_definitions
from cloudopt_pipelines.resources.aws import AwsResource
from cloudopt_pipelines.resources.environments import resources_by_env, resources_for
from cloudopt_pipelines.resources.executor import AwsExecutorResource
from cloudopt_pipelines.resources.sources import DemoSourceResource
from cloudopt_pipelines.settings import START_DATE, SettingsError, load_settings

REPO = Path(__file__).resolve().parents[1]
SECRET = "s3cret-external-id-4242"
EXECUTOR_SECRET = "an0ther-executor-id-77"


def test_defaults(tmp_path: Path) -> None:
    settings = load_settings({"CLOUDOPT_HOME": str(tmp_path)})
    assert settings.home == tmp_path.resolve() and settings.lake_dir == tmp_path.resolve() / "lake"
    assert settings.env == "demo" and settings.sources == ("aws",)
    assert settings.aws.regions == ("us-east-1",) and settings.aws.accounts == ()
    assert settings.aws.assume_role is None and not settings.aws.external_id_set
    assert settings.plan_constraints is None and settings.utilization_window_days is None
    assert settings.batch_max_rows is None and settings.aws.max_attempts == 10


def test_every_variable_is_parsed(tmp_path: Path) -> None:
    settings = load_settings(
        {
            "CLOUDOPT_HOME": str(tmp_path),
            "CLOUDOPT_ENV": " AWS ",
            "CLOUDOPT_SOURCES": "aws",
            "CLOUDOPT_ACCOUNTS": "210987654321, 012345678901,210987654321",
            "CLOUDOPT_REGIONS": "eu-west-1, us-gov-west-1",
            "CLOUDOPT_ASSUME_ROLE": "arn:aws:iam::{account_id}:role/CloudoptReadOnly",
            "CLOUDOPT_EXTERNAL_ID": SECRET,
            "CLOUDOPT_EXECUTOR_ROLE": "CloudoptExecutor",
            "CLOUDOPT_EXECUTOR_EXTERNAL_ID": EXECUTOR_SECRET,
            "CLOUDOPT_PLAN_CONSTRAINTS": "~/plan.yaml",
            "CLOUDOPT_UTILIZATION_WINDOW_DAYS": "32",
            "CLOUDOPT_BATCH_MAX_ROWS": "2_000_000",
            "AWS_ENDPOINT_URL": "http://127.0.0.1:5000",
            "AWS_PROFILE": "finops",
            "AWS_MAX_ATTEMPTS": "4",
        }
    )
    assert settings.env == "aws"
    assert settings.aws.accounts == ("012345678901", "210987654321")
    assert settings.aws.regions == ("eu-west-1", "us-gov-west-1")
    assert settings.aws.assume_role == "arn:aws:iam::{account_id}:role/CloudoptReadOnly"
    assert settings.aws.external_id_set and settings.executor.external_id_set
    assert SECRET not in repr(settings) and EXECUTOR_SECRET not in repr(settings)
    assert settings.executor.role == "CloudoptExecutor"
    assert settings.plan_constraints == Path("~/plan.yaml").expanduser()
    assert settings.utilization_window_days == 32 and settings.batch_max_rows == 2_000_000
    assert (settings.aws.endpoint_url, settings.aws.profile, settings.aws.max_attempts) == (
        "http://127.0.0.1:5000",
        "finops",
        4,
    )


def test_cluster_tag_key_reaches_the_collector_settings() -> None:
    from cloudopt_pipelines.resources.aws import AwsResource

    assert load_settings({}).aws.cluster_tag_key == "cloudopt:cluster"
    settings = load_settings({"CLOUDOPT_CLUSTER_TAG_KEY": " grid:cluster "})
    assert settings.aws.cluster_tag_key == "grid:cluster"
    assert AwsResource.from_settings(settings.aws).settings().cluster_tag_key == "grid:cluster"


def test_regions_fall_back_to_the_aws_region() -> None:
    assert load_settings({"AWS_DEFAULT_REGION": "eu-central-1"}).aws.regions == ("eu-central-1",)
    assert load_settings({"AWS_REGION": "ap-south-1", "AWS_DEFAULT_REGION": "x"}).aws.regions == ("ap-south-1",)


@pytest.mark.parametrize(
    ("variable", "value", "fix"),
    [
        ("CLOUDOPT_ENV", "prod", "use 'demo' for the embedded data or 'aws'"),
        ("CLOUDOPT_SOURCES", "aws,kubernetes", "list one or more of aws"),
        ("CLOUDOPT_ACCOUNTS", "12345678901", "keeping leading zeros"),
        ("CLOUDOPT_REGIONS", "us-east-1,useast2", "e.g. us-east-1,eu-west-1"),
        ("CLOUDOPT_ASSUME_ROLE", "Cloudopt ReadOnly", "'arn:aws:iam::{account_id}:role/CloudoptReadOnly'"),
        ("CLOUDOPT_ASSUME_ROLE", "{account_id}/CloudoptReadOnly", "ARN template"),
        ("CLOUDOPT_EXECUTOR_ROLE", "arn:aws:iam::123456789012:user/me", "'CloudoptExecutor'"),
        ("CLOUDOPT_UTILIZATION_WINDOW_DAYS", "two weeks", "e.g. 7, 14, 32 or 93"),
        ("CLOUDOPT_UTILIZATION_WINDOW_DAYS", "400", "from 1 to 366"),
        ("CLOUDOPT_BATCH_MAX_ROWS", "0", "e.g. 64000000"),
        ("AWS_MAX_ATTEMPTS", "many", "e.g. 10"),
        ("CLOUDOPT_START_DATE", "2025-01-01", f"start on {START_DATE}"),
        ("CLOUDOPT_CLUSTER_TAG_KEY", "aws:cluster", "use e.g. cloudopt:cluster"),
    ],
)
def test_bad_values_name_the_variable_and_the_fix(variable: str, value: str, fix: str) -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings({variable: value})
    assert variable in str(raised.value) and fix in str(raised.value)


def test_a_home_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(SettingsError, match=r"CLOUDOPT_HOME=.* is a file: point CLOUDOPT_HOME at a directory"):
        load_settings({"CLOUDOPT_HOME": str(tmp_path / "file")})


@pytest.mark.parametrize("variable", ["CLOUDOPT_EXTERNAL_ID", "CLOUDOPT_EXECUTOR_EXTERNAL_ID"])
def test_a_bad_external_id_is_refused_without_showing_it(variable: str) -> None:
    bad = "secret with spaces"
    with pytest.raises(SettingsError) as raised:
        load_settings({variable: bad})
    assert variable in str(raised.value) and "value not shown" in str(raised.value)
    assert bad not in str(raised.value)


def test_resources_per_environment_in_one_table(tmp_path: Path) -> None:
    settings = load_settings({"CLOUDOPT_HOME": str(tmp_path), "CLOUDOPT_REGIONS": "eu-west-1"})
    table = resources_by_env(settings)
    assert set(table) == {"demo", "aws"}
    assert all(
        set(r) == {"source", "lake", "warehouse", "reports", "aws_executor", "k8s_executor"} for r in table.values()
    )
    assert isinstance(table["demo"]["source"], DemoSourceResource)
    assert isinstance(table["aws"]["source"], AwsResource) and table["aws"]["source"].regions == ["eu-west-1"]
    assert resources_for(settings) is not None and isinstance(resources_for(settings)["source"], DemoSourceResource)
    assert table["aws"]["lake"].root == str(tmp_path.resolve() / "lake")
    assert table["demo"]["reports"].root == str(tmp_path.resolve() / "reports")


def test_external_ids_never_enter_the_definitions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dagster._core.remote_representation.external_data import RepositorySnap  # what the UI is sent

    monkeypatch.setenv("CLOUDOPT_EXTERNAL_ID", SECRET)
    monkeypatch.setenv("CLOUDOPT_EXECUTOR_EXTERNAL_ID", EXECUTOR_SECRET)
    settings = load_settings(
        {
            "CLOUDOPT_HOME": str(tmp_path),
            "CLOUDOPT_ENV": "aws",
            "CLOUDOPT_ASSUME_ROLE": "CloudoptReadOnly",
            "CLOUDOPT_EXTERNAL_ID": SECRET,
            "CLOUDOPT_EXECUTOR_EXTERNAL_ID": EXECUTOR_SECRET,
        }
    )
    defs = build_definitions(settings)
    repository = defs.get_repository_def()
    with warnings.catch_warnings():  # Dagster's own snapshot code reads ScheduleDefinition.environment_vars
        warnings.simplefilter("ignore", DeprecationWarning)
        snapshot = dg.serialize_value(RepositorySnap.from_def(repository))
    assert SECRET not in snapshot and EXECUTOR_SECRET not in snapshot
    assert repository.get_env_vars_by_top_level_resource() == {
        "CLOUDOPT_EXTERNAL_ID": {"source"},
        "CLOUDOPT_EXECUTOR_EXTERNAL_ID": {"aws_executor"},
    }
    source = defs.resources["source"]
    assert isinstance(source, AwsResource) and isinstance(source.external_id, dg.EnvVar)
    # Inside a run Dagster reads the variable then; a resource used directly reads it when it is used.
    assert source.process_config_and_initialize().external_id == SECRET
    assert source.settings().external_id == SECRET
    executor = defs.resources["aws_executor"]
    assert isinstance(executor, AwsExecutorResource) and executor.settings().external_id == EXECUTOR_SECRET


def test_without_an_external_id_the_resources_have_none(tmp_path: Path) -> None:
    settings = load_settings({"CLOUDOPT_HOME": str(tmp_path), "CLOUDOPT_ENV": "aws"})
    resources = resources_for(settings)
    assert resources["source"].external_id is None and resources["aws_executor"].external_id is None


def test_nothing_is_read_from_the_environment_at_import(tmp_path: Path) -> None:
    """Importing every module with a broken environment works; loading the definitions then says what is wrong."""
    code = (
        "import importlib, pkgutil, cloudopt_pipelines\n"
        "for m in pkgutil.walk_packages(cloudopt_pipelines.__path__, 'cloudopt_pipelines.'):\n"
        "    importlib.import_module(m.name)\n"
        "from cloudopt_pipelines.definitions import defs\n"
        "from cloudopt_pipelines.settings import SettingsError\n"
        "try:\n"
        "    defs()\n"
        "except SettingsError as exc:\n"
        "    print('refused:', exc)\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "CLOUDOPT_HOME": str(tmp_path),
        "CLOUDOPT_ENV": "nowhere",
        "CLOUDOPT_START_DATE": "2025-01-01",
    }
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "refused: CLOUDOPT_START_DATE is no longer read" in done.stdout


def test_the_loader_gets_lazy_definitions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cloudopt_pipelines.definitions import defs

    monkeypatch.setenv("CLOUDOPT_HOME", str(tmp_path))
    monkeypatch.setenv("CLOUDOPT_ENV", "demo")
    loaded = defs()
    assert isinstance(loaded, dg.Definitions)
    assert loaded.resources["lake"].root == str(tmp_path.resolve() / "lake")
