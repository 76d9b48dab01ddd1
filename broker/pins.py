"""The exact versions of the libraries whose internals lambdalite uses, checked as each process starts.

:mod:`broker.rqlayout` writes and reads RQ 3.0.0's Redis layout, and ``sources.files.observer`` drives
watchdog 7.1.1's inotify emitter through its private attributes. Another release of either may
change exactly those, so pyproject.toml pins both exactly; a virtualenv that outlived a pull, or an
install made by hand, may still hold other ones. The scaler (and so every worker it forks), each
source and the CLI call :func:`check` first: a process refuses to start with one clear line (exit
1), the CLI warns in that line and carries on, since it is what one runs to look at a broken stack.
"""

from __future__ import annotations

import importlib.metadata
import sys
from collections.abc import Callable

from broker.errors import DependencyError

#: Library -> the version lambdalite mirrors; pyproject.toml pins the same (tests/test_pins.py).
PINNED = {"rq": "3.0.0", "watchdog": "7.1.1"}


def _installed(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def mismatches(installed: Callable[[str], str | None] = _installed) -> list[str]:
    """``name installed, needs version`` for each pinned library whose installed version is another."""
    out = []
    for name, wanted in PINNED.items():
        found = installed(name)
        if found != wanted:
            out.append(f"{name} {found or 'not installed'}, needs {wanted}")
    return out


def check(installed: Callable[[str], str | None] = _installed) -> None:
    """Raise :class:`DependencyError` when a pinned library is not at its pinned version."""
    wrong = mismatches(installed)
    if wrong:
        raise DependencyError(f"installed {'; '.join(wrong)} (lambdalite uses its internals): "
                              "`pip install -r requirements.lock` installs the pinned ones")


def warn(installed: Callable[[str], str | None] = _installed) -> None:
    """The CLI's check: the same line on stderr, as a warning."""
    try:
        check(installed)
    except DependencyError as e:
        print(f"lambdalite: warning: {e}", file=sys.stderr)
