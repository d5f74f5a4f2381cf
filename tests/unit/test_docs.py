"""The README stays a front door and docs/ stays whole: short, linking every page, no dead links."""

import re
from pathlib import Path

from tests.conftest import REPO

README = REPO / "README.md"
DOCS = REPO / "docs"
MAX_README_LINES = 250
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def pages() -> list[Path]:
    return sorted(DOCS.glob("*.md"))


def links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)  # not in code blocks
    return LINK.findall(text)


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    found = set()
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            found.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return found


def test_readme_is_a_front_door():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines: move detail into docs/"
    text = "\n".join(lines)
    for command in ("make demo", "make test"):
        assert command in text


def test_readme_links_every_docs_page():
    linked = {target.split("#")[0] for target in links(README)}
    missing = [page.name for page in pages() if f"docs/{page.name}" not in linked]
    assert missing == [], f"README.md does not link {missing}"


def test_docs_index_lists_every_page():
    linked = {target.split("#")[0] for target in links(DOCS / "README.md")}
    missing = [page.name for page in pages() if page.name != "README.md" and page.name not in linked]
    assert missing == [], f"docs/README.md does not list {missing}"


def test_every_relative_link_resolves():
    broken = []
    for page in [README, *pages()]:
        for target in links(page):
            if re.match(r"[a-z]+:", target):
                continue  # http(s), mailto
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            if not resolved.exists():
                broken.append(f"{page.relative_to(REPO)}: {target}")
            elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                broken.append(f"{page.relative_to(REPO)}: {target} (no such heading)")
    assert broken == []


def test_ci_runs_exactly_the_readme_test_command():
    commands = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert commands[-1] == "make test"
