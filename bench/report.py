"""Where benches write their figures: a named section of a docs page, replaced on every run.

A section sits between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->``; a page without it gets
it appended. Tables in docs/ are therefore what the last run of the bench printed, never typed in.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs"


def write_section(page: str, name: str, markdown: str, command: str) -> Path:
    """Put ``markdown`` (with the command that made it and the date) into ``docs/<page>``."""
    path = DOCS / page
    text = path.read_text() if path.exists() else f"# {page.removesuffix('.md').replace('-', ' ').title()}\n"
    body = (f"<!-- bench:{name} -->\n{markdown.rstrip()}\n\n"
            f"_Written by `{command}` on {time.strftime('%Y-%m-%d')}._\n<!-- /bench:{name} -->")
    pattern = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->", re.S)
    text = pattern.sub(lambda _: body, text) if pattern.search(text) else text.rstrip() + "\n\n" + body + "\n"
    path.write_text(text)
    return path


def table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
