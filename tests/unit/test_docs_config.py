"""docs/configuration.md is generated from the schema and stays in step with it."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor.docgen import configuration_reference

pytestmark = pytest.mark.unit


def test_configuration_reference_is_current() -> None:
    doc = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
    assert doc.read_text() == configuration_reference(), (
        "regenerate: python -m monitor.docgen > docs/configuration.md"
    )
