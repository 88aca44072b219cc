"""The README and docs/ as a newcomer reads them: links that lead somewhere, every setting listed.

Pure file reading: runs in well under a second.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CONFIGURATION = ROOT / "docs" / "configuration.md"

FENCE = re.compile(r"^(```|~~~)")
INLINE_CODE = re.compile(r"`[^`]*`")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")
SETTING = re.compile(r"\bVOICE_LAB_[A-Z0-9_]*[A-Z0-9]\b")
EXAMPLE_SETTING = re.compile(r"^#\s*([A-Z][A-Z0-9_]*[A-Z0-9])=", re.MULTILINE)
PRICES = "VOICE_LAB_PRICE"


def prose_lines(text: str):
    """The page's lines outside fenced and indented code blocks, inline code removed."""
    fenced = False
    for number, line in enumerate(text.splitlines(), start=1):
        if FENCE.match(line.lstrip()):
            fenced = not fenced
            continue
        if fenced or (line.startswith("    ") and not line.lstrip().startswith(("-", "|"))):
            continue
        yield number, INLINE_CODE.sub("", line)


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: formatting dropped, lower case, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading's anchor on a page (repeated headings get -1, -2...)."""
    seen: dict[str, int] = {}
    found = set()
    for _, line in prose_lines(page.read_text()):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def relative_links(page: Path):
    for number, line in prose_lines(page.read_text()):
        for target in LINK.findall(line):
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target):
                yield number, target


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_and_anchor_leads_somewhere(page):
    broken = []
    for number, target in relative_links(page):
        path, _, anchor = target.partition("#")
        destination = (page.parent / path).resolve() if path else page
        where = f"{page.relative_to(ROOT)}:{number}: {target}"
        if not destination.exists():
            broken.append(f"{where} (no such file)")
        elif anchor and destination.suffix == ".md" and anchor not in anchors(destination):
            broken.append(f"{where} (no heading with that anchor)")
    assert not broken, "\n".join(broken)


def test_the_readme_links_every_docs_page():
    readme = {target.partition("#")[0] for _, target in relative_links(ROOT / "README.md")}
    unlinked = [
        page.relative_to(ROOT).as_posix()
        for page in PAGES[1:]
        if page.relative_to(ROOT).as_posix() not in readme
    ]
    assert not unlinked, f"docs pages the README does not link: {unlinked}"


def settings_in_the_code() -> set[str]:
    """Every VOICE_LAB_* name the app, the deployment, the benchmark and the test kit read."""
    sources = [ROOT / "app.py"]
    for folder in ("pipeline", "ui", "deploy", "bench", "testkit"):
        sources += (ROOT / folder).rglob("*.py")
    return {name for source in sources for name in SETTING.findall(source.read_text())}


def test_every_setting_is_in_the_configuration_page():
    documented = CONFIGURATION.read_text()
    example = (ROOT / ".env.example").read_text()
    names = settings_in_the_code() | set(EXAMPLE_SETTING.findall(example))
    missing = sorted(
        name
        for name in names
        if not (name.startswith(PRICES) and f"`{PRICES}_<" in documented)
        and not re.search(rf"\b{name}\b", documented)
    )
    assert not missing, f"not in docs/configuration.md: {missing}"


def test_the_readme_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Test it", 1)[1].split("\n## ", 1)[0]
    commands = [line.strip() for line in section.splitlines() if line.startswith("    ")]
    assert commands == ["bash tests/run.sh"]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert commands[0] in [line.strip() for line in ci if not line.lstrip().startswith("#")]
    run = readme.split("## Run it", 1)[1].split("\n## ", 1)[0]
    assert any(line.startswith("    ") and "app.py" in line for line in run.splitlines())
