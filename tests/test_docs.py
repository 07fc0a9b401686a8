"""The README and docs/ link only inside the repository, and every link and anchor resolves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from harness.servers import ROOT

DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def github_anchor(heading: str) -> str:
    """The id GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(document: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", document.read_text(), flags=re.DOTALL)
    return {github_anchor(heading) for heading in re.findall(r"^#+ (.+)$", text, re.MULTILINE)}


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: str(path.relative_to(ROOT)))
def test_links_resolve_inside_the_repository(document):
    for target in _LINK.findall(document.read_text()):
        if target.startswith(("http://localhost", "http://127.0.0.1")):
            continue
        assert "://" not in target, f"{target}: documents link only inside the repository"
        path, _, anchor = target.partition("#")
        linked = (document.parent / path).resolve() if path else document
        assert linked.is_relative_to(ROOT) and linked.exists(), f"{document.name}: {target} does not exist"
        if anchor:
            assert anchor in anchors(linked), f"{document.name}: {target} names no heading"


def test_the_readme_stays_an_on_ramp():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    assert "make run" in readme and "make test" in readme
    for document in DOCUMENTS[1:]:
        assert f"(docs/{document.name})" in readme, f"the README does not lead to {document.name}"
