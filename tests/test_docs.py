"""The documentation site's pages that restate the code stay in step with it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from forecast.io import METADATA_KEYS, SCHEMAS

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_parquet_schema_page_lists_every_field_with_its_unit() -> None:
    page = (DOCS / "parquet-schema.md").read_text(encoding="utf-8")
    for table, schema in SCHEMAS.items():
        section = page.split(f"## `{table}`", 1)[1].split("\n## ", 1)[0]
        rows = dict(re.findall(r"^\| `([^`]+)` \| [^|]+ \| ([^|]*) \|", section, re.M))
        assert list(rows) == schema.names, table
        for f in schema:
            assert rows[f.name].strip() == (f.metadata or {})[b"unit"].decode(), (table, f.name)
    for key in METADATA_KEYS:
        assert f"`{key}`" in page


def test_every_page_is_in_the_navigation() -> None:
    yaml = pytest.importorskip("yaml", reason="PyYAML comes with the `docs` extra")
    config = yaml.safe_load((DOCS.parent / "mkdocs.yml").read_text(encoding="utf-8"))

    def pages(node: object) -> list[str]:
        if isinstance(node, str):
            return [node]
        if isinstance(node, dict):
            return [p for v in node.values() for p in pages(v)]
        if isinstance(node, list):
            return [p for v in node for p in pages(v)]
        return []

    listed = set(pages(config["nav"]))
    on_disk = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    assert on_disk == listed
