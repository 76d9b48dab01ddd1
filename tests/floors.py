"""The lowest versions pyproject.toml admits, as pins: ``python tests/floors.py > floors.txt``.

``make floors`` installs lambdalite with its runtime dependencies held at these versions (the dev
tools as the resolver likes) and runs a smoke subset of the tests, so a floor in pyproject.toml is a
version that was seen to work, not a guess. Every runtime dependency must have a ``>=`` or ``==``.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def floors() -> list[str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = []
    for dep in deps:
        match = re.match(r"^([A-Za-z0-9_.-]+)(\[[^\]]*\])?\s*(?:>=|==)\s*([^,;\s]+)", dep)
        if match is None:
            sys.exit(f"pyproject.toml: {dep!r} has no floor (>= or ==)")
        pins.append(f"{match.group(1)}=={match.group(3)}")
    return pins


if __name__ == "__main__":
    print("\n".join(floors()))
