"""The docs against the code: every setting and configuration key documented, no setting invented,
links between pages that land on a heading, and a place for every table a bench writes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from broker.registry import FilesTrigger, Function, HttpTrigger, ScheduleTrigger, SqliteTrigger
from broker.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted([ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / "CONTRIBUTING.md", *DOCS.glob("*.md")])
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _all_docs() -> str:
    return "\n".join(page.read_text() for page in PAGES)


def _without_code(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in _without_code(page.read_text()).splitlines():
        if line.startswith("#"):
            base = slug(line.lstrip("#"))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def test_slug_is_githubs() -> None:
    assert slug("Workers' lives") == "workers-lives"
    assert slug("`lambdalite.toml`: the functions") == "lambdalitetoml-the-functions"
    assert slug("Settings (`LAMBDALITE_*`)") == "settings-lambdalite_"


def test_every_setting_is_in_the_configuration_page_or_another() -> None:
    config = (DOCS / "configuration.md").read_text()
    docs = _all_docs()
    missing = [f"LAMBDALITE_{name.upper()}" for name in Settings.model_fields
               if f"`LAMBDALITE_{name.upper()}`" not in docs]
    assert not missing, f"settings no page documents: {missing}"
    listed = set(re.findall(r"^\| `(LAMBDALITE_[A-Z0-9_]+)` \|", config, re.M))
    real = {f"LAMBDALITE_{name.upper()}" for name in Settings.model_fields}
    assert listed, "docs/configuration.md lists no settings"
    assert listed <= real, f"docs/configuration.md lists settings that do not exist: {sorted(listed - real)}"


# The pages for people in general; pages about one area may also name variables that are not settings.
GENERAL = ["README.md", "CHANGELOG.md", "CONTRIBUTING.md", *(f"docs/{name}.md" for name in (
    "configuration", "handlers", "limits", "scaling", "files", "sqlite", "http", "guarantees", "operations",
    "architecture", "performance"))]


def test_no_general_page_names_a_setting_that_does_not_exist() -> None:
    real = {f"LAMBDALITE_{name.upper()}" for name in Settings.model_fields}
    text = "\n".join((ROOT / page).read_text() for page in GENERAL)
    named = set(re.findall(r"`(LAMBDALITE_[A-Z0-9_]+)[`=]", text))
    assert named, "no page names a setting"
    assert named <= real, f"pages name settings that do not exist: {sorted(named - real)}"


@pytest.mark.parametrize("model", [Function, FilesTrigger, SqliteTrigger, HttpTrigger, ScheduleTrigger])
def test_every_configuration_key_is_documented(model: type) -> None:
    docs = _all_docs()
    keys = [k for k in model.model_fields if k != "name"]  # a function's name is its table's name
    missing = [k for k in keys if f"`{k}`" not in docs]
    assert not missing, f"{model.__name__} keys no page documents: {missing}"


def test_links_between_pages_land_on_a_heading() -> None:
    broken = []
    for page in PAGES:
        for target in LINK.findall(_without_code(page.read_text())):
            if re.match(r"^[a-z]+:", target):
                continue  # an outside address
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
                continue
            if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, f"links to no heading: {broken}"


def test_each_bench_table_has_its_place_in_the_docs() -> None:
    calls = re.findall(r"write_section\(\s*\"([^\"]+)\",\s*\"([^\"]+)\"", "\n".join(
        p.read_text() for p in (ROOT / "bench").glob("*.py")))
    assert calls, "no bench writes into the docs"
    for page, name in calls:
        path = DOCS / page
        if not path.exists():
            continue  # bench/report.py makes the page on the bench's first run
        text = path.read_text()
        assert f"<!-- bench:{name} -->" in text and f"<!-- /bench:{name} -->" in text, (page, name)


def test_the_readme_stays_short() -> None:
    assert len((ROOT / "README.md").read_text().splitlines()) <= 150
