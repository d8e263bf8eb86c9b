"""One schema for ``resources.attributes`` per kind, checked when written (defect 5)."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pyarrow as pa
import pytest

from cloudopt_pipelines.optimizers.base import OptimizerInputs
from cloudopt_pipelines.optimizers.sizing import Catalog
from cloudopt_pipelines.optimizers.standalone import recommend_account
from cloudopt_pipelines.optimizers.standalone_ec2 import StandaloneEc2Optimizer
from cloudopt_pipelines.sources.demo import DemoCollector
from cloudopt_pipelines.storage.lake import Lake
from cloudopt_pipelines.storage.schemas import (
    RESOURCE_ATTRIBUTES,
    RESOURCES,
    AttributesError,
    validate_attributes,
)
from cloudopt_pipelines.vocabulary import RESOURCE_KINDS

DAY = date(2026, 11, 16)
NO_FEATURES = {
    name: pa.table({"resource_id": pa.array([], pa.string())}) for name in ("utilization_window", "activity_profile")
}


def volume_row(resource_id: str, attributes: dict | None) -> dict:
    return {
        "account_id": "123456789012",
        "date": DAY,
        "resource_id": resource_id,
        "resource_kind": "ebs_volume",
        "region": "us-east-1",
        "tags": "{}",
        "attributes": None if attributes is None else json.dumps(attributes),
    }


def test_every_resource_kind_has_an_attributes_schema() -> None:
    assert set(RESOURCE_ATTRIBUTES) == set(RESOURCE_KINDS)


def test_the_demo_fleet_follows_the_schema() -> None:
    demo = DemoCollector()
    table = demo.collect_inventory(demo.list_accounts()[0], demo.days[0]).table
    kinds = {r["resource_kind"] for r in table.to_pylist()}
    assert {"ebs_volume", "elastic_ip", "asg", "emr_cluster", "eks_nodegroup"} <= kinds
    volumes = {
        r["resource_id"]: json.loads(r["attributes"]) for r in table.to_pylist() if r["resource_kind"] == "ebs_volume"
    }
    assert sorted(v["attached_to"] is None for v in volumes.values()) == [False, True]


@pytest.mark.parametrize(
    ("attributes", "message"),
    [
        ({"attached": True, "attached_to": "i-1", "volume_type": "gp3", "size_gib": 8}, "key 'attached' is not in"),
        ({"attached_instances": ["i-1"], "volume_type": "gp3", "size_gib": 8}, "key 'attached_to' is required"),
        (None, "key 'attached_to' is required"),
        ({"attached_to": None, "volume_type": "gp3", "size_gib": "8"}, "key 'size_gib' must be int or float"),
    ],
)
def test_a_write_off_the_schema_names_the_resource_and_the_key(tmp_path, attributes, message) -> None:
    table = pa.Table.from_pylist([volume_row("vol-1", attributes)], schema=RESOURCES)
    with pytest.raises(AttributesError, match=message) as err:
        Lake(tmp_path).write("resources", table, "123456789012", DAY)
    assert "ebs_volume 'vol-1'" in str(err.value)
    with pytest.raises(AttributesError, match=message):
        validate_attributes("ebs_volume", "vol-1", attributes)


def test_attributes_off_the_schema_are_never_taken_for_unattached() -> None:
    # A partition written before the schema: 'attached' instead of 'attached_to'.
    rows = [
        volume_row("vol-old", {"attached": True, "attached_instances": ["i-1"], "volume_type": "gp3", "size_gib": 8}),
        volume_row(
            "vol-in-use", {"attached_to": "i-1", "attached_instances": ["i-1"], "volume_type": "gp3", "size_gib": 8}
        ),
        volume_row(
            "vol-multi", {"attached_to": None, "attached_instances": ["i-2"], "volume_type": "gp3", "size_gib": 8}
        ),
        volume_row("vol-free", {"attached_to": None, "attached_instances": [], "volume_type": "gp3", "size_gib": 8}),
    ]
    table = pa.Table.from_pylist(rows, schema=RESOURCES)
    result = recommend_account("123456789012", DAY, table, NO_FEATURES, Catalog([]))
    deleted = {r["resource_id"] for r in result.table.to_pylist() if r["action"] == "delete_volume"}
    assert deleted == {"vol-free"}
    assert len(result.notes) == 1 and "vol-old not analysed" in result.notes[0] and "'attached'" in result.notes[0]

    # Through the optimiser interface, the note reaches the asset's metadata.
    inputs = OptimizerInputs("123456789012", DAY, table, NO_FEATURES, {}, Catalog([]))
    optimizer = StandaloneEc2Optimizer()
    answer = optimizer.recommend(inputs, optimizer.default_settings())
    assert answer.metadata["notes"] == list(result.notes)
    assert answer.table.equals(result.table)


def test_docs_list_every_attributes_key() -> None:
    page = (Path(__file__).resolve().parents[1] / "docs" / "warehouse.md").read_text()
    missing = [f"{kind}.{key}" for kind, spec in RESOURCE_ATTRIBUTES.items() for key in spec if f"`{key}`" not in page]
    assert not missing, f"document these attributes keys in docs/warehouse.md: {missing}"
