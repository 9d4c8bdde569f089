"""docs/own-model.md shows the files its commands use, and scripts/check_docs.py
runs the commands with the shipped copies in docs/examples: the two must be
the same text, or the page would show one thing and the check test another."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "own-model.md"


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", PAGE.read_text(encoding="utf-8"), re.S | re.M)


@pytest.mark.parametrize(
    ("lang", "name"),
    [("python", "my_model.py"), ("python", "make_data.py"), ("yaml", "sensors-fleet.yaml")],
)
def test_the_page_shows_the_shipped_example_files(lang: str, name: str) -> None:
    shipped = (REPO / "docs" / "examples" / name).read_text(encoding="utf-8")
    assert shipped in _blocks(lang), f"docs/own-model.md does not show docs/examples/{name}"


def test_the_keras_file_export_has_its_marked_place() -> None:
    text = PAGE.read_text(encoding="utf-8")
    assert "<!-- export-from-keras:" in text and "fedge export my_model.keras" in text
