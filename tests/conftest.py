"""Shared fixtures: a temporary CLOUDOPT_HOME with the demo pipeline run through a real Dagster instance."""

import os

# As cloudopt_pipelines.orchestration does, before any test imports Dagster's gRPC client: a busy CI
# machine may take longer than Dagster's 60 s to start a run worker.
os.environ.setdefault("DAGSTER_GRPC_TIMEOUT_SECONDS", "600")

from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest

from cloudopt_pipelines.settings import Settings

DEMO_ACCOUNTS = ["123456789012", "210987654321"]
DEMO_DAYS = [date(2026, 11, 16), date(2026, 11, 17)]


@pytest.fixture(autouse=True)
def _no_inherited_defs_state_storage() -> None:
    """Dagster keeps the entered instance's defs-state storage in a context variable; an instance entered and
    disposed in another context (a thread, a generator) can leave it pointing at a disposed instance, and every
    later definitions load then fails on its dead weakref. Each test starts without one, as a process does."""
    from dagster._core.storage.defs_state.base import _current_storage

    _current_storage.set(None)


@pytest.fixture(scope="session")
def demo_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """CLOUDOPT_HOME after `cloudopt run` over 2 accounts x 2 demo days (shared, treat as read-only)."""
    from cloudopt_pipelines.orchestration import run_range

    home = tmp_path_factory.mktemp("cloudopt-demo")
    settings = Settings(home=Path(home), env="demo")
    result = run_range(DEMO_DAYS[0], DEMO_DAYS[-1], settings=settings, progress=lambda _: None)
    assert not result.failed, result.failed
    yield settings


@pytest.fixture
def fresh_home(tmp_path: Path) -> Settings:
    """An empty CLOUDOPT_HOME of the test's own."""
    return Settings(home=tmp_path / "cloudopt", env="demo")
