"""What a FinOps engineer reads of the recommendations: the UI preview (the asset's markdown metadata) and the
demo summary give the finding, the confidence and the reason in words, and the same-architecture alternative."""

from datetime import date
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from cloudopt_pipelines.assets.metadata import PREVIEW_COLUMNS, recommendations_preview
from cloudopt_pipelines.assets.recommendations import build_recommendation_asset
from cloudopt_pipelines.backtest.features import MODELS, run_feature_models
from cloudopt_pipelines.catalog.prices import build_price_catalog, build_reserved_prices
from cloudopt_pipelines.optimizers.standalone_ec2 import StandaloneEc2Optimizer
from cloudopt_pipelines.partitions import ACCOUNTS_PARTITIONS_NAME, account_day_key, demo_partitions, with_partitions
from cloudopt_pipelines.resources.storage import LakeResource
from cloudopt_pipelines.sources.demo import DemoCollector
from cloudopt_pipelines.storage.lake import Lake
from cloudopt_pipelines.summary import recommendation_lines

ACCOUNT = "123456789012"
OP = "recommendations__standalone_ec2"
QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}


@pytest.fixture(scope="module")
def materialised(tmp_path_factory: pytest.TempPathFactory) -> tuple[Lake, list[date], list[dict]]:
    """The demo's first 3 days of one account: features, then the asset through Dagster day by day."""
    root = tmp_path_factory.mktemp("words") / "lake"
    lake, collector = Lake(root), DemoCollector()
    days = list(collector.days[:3])
    lake.write("price_catalog", build_price_catalog())
    lake.write("reserved_prices", build_reserved_prices())
    for d in days:
        lake.write("resources", collector.collect_inventory(ACCOUNT, d).table, ACCOUNT, d)
        lake.write("utilization_5m", collector.collect_metrics(ACCOUNT, d).table, ACCOUNT, d)
    run_feature_models(lake, ACCOUNT, days, (*MODELS, "activity_profile"))
    for i in range(1, len(days)):
        run_feature_models(lake, ACCOUNT, days[:i], ("utilization_window", "activity_profile"))
    asset = with_partitions([build_recommendation_asset(StandaloneEc2Optimizer())], demo_partitions())[0]
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(ACCOUNTS_PARTITIONS_NAME, [ACCOUNT])
    metadata = []
    for d in days:
        result = dg.materialize(
            [asset],
            instance=instance,
            partition_key=account_day_key(ACCOUNT, d),
            resources={"lake": LakeResource(root=str(root))},
            run_config=QUIET,
        )
        assert result.success
        metadata.append(result.asset_materializations_for_node(OP)[0].metadata)
    return lake, days, metadata


def _rows(markdown: str) -> list[dict[str, str]]:
    lines = [line for line in markdown.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split(" | ")]
    return [dict(zip(header, [c.strip() for c in line.strip("|").split(" | ")], strict=True)) for line in lines[1:]]


def test_the_ui_preview_of_a_day_gathering_data_says_how_much_data_there_is(materialised) -> None:
    _, _, metadata = materialised
    preview = metadata[0]["preview"].value
    rows = _rows(preview)
    assert list(rows[0]) == list(PREVIEW_COLUMNS)
    waiting = [r for r in rows if r["finding"] == "gathering-data"]
    assert waiting and all(r["confidence"].startswith("gathering data: 1 of 14 days") for r in waiting)
    assert all(r["best option"] == "keep" for r in waiting)
    assert "resources gathering data" in preview


def test_the_ui_preview_gives_finding_confidence_reason_and_both_architectures(materialised) -> None:
    lake, days, metadata = materialised
    preview = metadata[-1]["preview"].value
    assert preview == recommendations_preview(lake.read("recommendations_standalone_ec2", ACCOUNT, days[-1]))
    resized = [r for r in _rows(preview) if r["best option"].startswith("resize:")]
    assert resized
    for r in resized:
        assert r["finding"] in ("over-provisioned", "under-provisioned")
        assert "confidence" in r["confidence"] and "of 14 days of data" in r["confidence"]
        assert r["why"].startswith(r["finding"])  # the reason, beginning with the finding in words
        # The default keeps the architecture: the best is the same-architecture option; Graviton is beside it.
        assert r["same architecture"] == "this option"
        assert "(arm64)" in r["other architecture"] and "migration effort" in r["other architecture"]
    # No JSON blob: the optimiser's commitments and notes are markdown and text.
    assert all(not isinstance(v, dg.JsonMetadataValue) for v in metadata[-1].values())


def test_the_demo_summary_says_the_same_in_words(materialised) -> None:
    lake, _, _ = materialised
    text = "\n".join(recommendation_lines(lake, duckdb.connect()))
    assert "resources to change" in text
    assert "why: over-provisioned: needs" in text and "confidence" in text and "of 14 days of data" in text
    assert "Graviton:" in text and "migration effort Medium" in text
    # An orphan has no sizing reason: its finding and the rationale's first sentence stand for it.
    assert "why: idle: Unattached gp2 volume of 500 GiB" in text


def test_the_summary_of_a_first_day_says_it_is_gathering_data(tmp_path: Path, materialised) -> None:
    lake, days, _ = materialised
    first = Lake(tmp_path / "lake")
    table = lake.read("recommendations_standalone_ec2", ACCOUNT, days[0])
    first.write("recommendations_standalone_ec2", table, ACCOUNT, days[0])
    text = "\n".join(recommendation_lines(first, duckdb.connect()))
    assert "Gathering data (no change until 30 hours of data)" in text
    assert "gathering data: 1 of 14 days (24 of the 30 hours needed)" in text
