"""Linux process controls lambdalite's processes rely on (prctl)."""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import sys

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_libc = ctypes.CDLL(None, use_errno=True)


def become_subreaper() -> None:
    """Make orphaned descendants of this process its children, so they stay in its tree."""
    _libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Have the kernel send ``sig`` to this process when its parent exits."""
    _libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)


def stand_by(kind: str) -> None:
    """Replace this process with one that only waits to be stopped (``sleep infinity``).

    For a Procfile process with nothing to do (a feed with no triggers): honcho stops the whole stack
    when one of its processes exits, so it must stay, and a Python interpreter that stays costs 30 MB
    or more; ``sleep`` costs well under one, and dies of the stop signal honcho sends. The stack's lock
    (:mod:`broker.stacklock`) is kept across the exec. The process is named ``lambdalite-<kind>`` (its
    ``argv[0]``), so ``ps`` shows ``lambdalite-sqlite infinity``. Returns only if ``sleep`` cannot be run.
    """
    from broker import stacklock

    binary = shutil.which("sleep")
    if binary is None:
        return
    stacklock.keep_across_exec()
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execv(binary, [f"lambdalite-{kind}", "infinity"])
    except OSError:
        return
