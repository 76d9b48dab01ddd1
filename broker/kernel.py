"""Linux process controls lambdalite's processes rely on (prctl)."""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import sys
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_libc = ctypes.CDLL(None, use_errno=True)


def become_subreaper() -> None:
    """Make orphaned descendants of this process its children, so they stay in its tree."""
    _libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Have the kernel send ``sig`` to this process when its parent exits."""
    _libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)


def try_in_child(work: Callable[[int], object], describe: Callable[[BaseException], str] = str) -> str | None:
    """Run ``work`` in a forked child that exits when it is done; None if it returned, else
    ``describe`` of what it raised, sent back over a pipe (``work`` is given the pipe's descriptor,
    to keep open). For what must not touch this process: a handler's import as another user, a
    namespace tried before it is relied on."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 0
        try:
            os.close(read)
            work(write)
        except BaseException as e:  # noqa: B036 - whatever happens, the child exits here
            os.write(write, (describe(e) or type(e).__name__).encode())
            code = 1
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        problem = pipe.read().decode("utf-8", "replace")
    os.waitpid(pid, 0)
    return problem or None


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
