"""The README stays a short entry point and the documentation site stays whole.

The README links into docs/; mkdocs builds only the pages its nav lists (make docs, CI). Renaming
or adding a page without updating both would leave a dead link on GitHub or a page off the site.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MKDOCS = ROOT / "mkdocs.yml"

MAX_README_LINES = 300
# Relative markdown links into docs/: [text](docs/page.md) or [text](docs/page.md#anchor).
DOCS_LINK = re.compile(r"\]\((docs/[^)#\s]+\.md)(?:#[^)\s]*)?\)")


def nav_pages(entries: Any) -> set[str]:
    """Every page file named anywhere in a mkdocs nav (nested sections included)."""
    if isinstance(entries, str):
        return {entries}
    if isinstance(entries, list):
        return set().union(*(nav_pages(entry) for entry in entries)) if entries else set()
    if isinstance(entries, dict):
        return set().union(*(nav_pages(value) for value in entries.values())) if entries else set()
    return set()


def test_readme_stays_short_and_links_only_to_pages_that_exist_when_docs_change() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= MAX_README_LINES, f"README.md is over {MAX_README_LINES} lines"

    links = set(DOCS_LINK.findall(text))
    assert links, "README.md links to no page under docs/"
    missing = sorted(link for link in links if not (ROOT / link).is_file())
    assert not missing, f"README.md links to pages that do not exist: {missing}"

    config = yaml.safe_load(MKDOCS.read_text(encoding="utf-8"))
    listed = nav_pages(config["nav"])
    pages = {path.relative_to(DOCS).as_posix() for path in DOCS.rglob("*.md")}
    assert not pages - listed, f"pages missing from mkdocs.yml's nav: {sorted(pages - listed)}"
    assert not listed - pages, f"mkdocs.yml's nav lists pages that do not exist: {sorted(listed - pages)}"
