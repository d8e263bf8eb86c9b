"""docs/reliability.md names, for every guarantee, a test that exists."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REFERENCE = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")


def test_every_test_named_in_the_reliability_doc_exists() -> None:
    text = (REPO / "docs" / "reliability.md").read_text()
    named = REFERENCE.findall(text)
    assert len(named) > 30
    missing = [
        f"{path}::{name}"
        for path, name in named
        if not (REPO / path).is_file() or not re.search(rf"^def {name}\(", (REPO / path).read_text(), re.MULTILINE)
    ]
    assert missing == [], f"docs/reliability.md names tests that do not exist: {missing}"
