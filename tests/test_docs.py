"""The README and docs/: every relative link and picture resolves, nothing points outside the
repository, and the README stays a front door."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
CODE = re.compile(r"`[^`\n]*`")


def links(page: Path) -> list[str]:
    return LINK.findall(CODE.sub("", page.read_text()))  # a regex in code is not a link


def test_every_relative_link_resolves_inside_the_repository() -> None:
    broken = []
    for page in PAGES:
        for target in links(page):
            if re.match(r"^[a-z]+:", target) or target.startswith("#"):
                continue
            path = (page.parent / target.split("#", 1)[0]).resolve()
            if not path.is_relative_to(ROOT) or not path.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert broken == []


def test_no_page_points_outside_the_repository() -> None:
    outside = [p.name for p in PAGES if "../shared" in p.read_text()]
    assert outside == []


def test_the_readme_is_a_front_door() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    assert "bash .ci/run" in readme
    assert "vdi-control serve" in readme
    linked = set(links(ROOT / "README.md"))
    missing = [p.name for p in PAGES[1:] if f"docs/{p.name}" not in linked]
    assert missing == [], "every docs/ page is linked from the README"
