"""One stack per folder: each process of a stack holds its kind's lock under ``var/``.

Every process the Procfile starts (``redis``, ``files``, ``sqlite``, ``webhook``, ``scaler``) takes an
exclusive ``flock`` on ``var/locks/<kind>.lock`` before it touches anything, and holds it until it
exits (the kernel lets go of it however the process ends, a SIGKILL included). A second stack started
in the same folder finds the locks held: each of its processes exits 1 with one line naming the
running stack, so honcho stops it before it has replaced a socket or read a bucket. ``make run``
checks first (:func:`main`) so that a second ``make run`` says it in one line and starts nothing.

The lock file holds the holder's pid, its parent's (honcho's) pid and when it started, for that line.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import time
from pathlib import Path

from broker.errors import LambdaliteError, StackRunningError
from broker.settings import Settings, load_settings

KINDS = ("redis", "files", "sqlite", "webhook", "scaler")

_held: dict[str, int] = {}  # kind -> the descriptor that holds its lock, for this process's life


def lock_dir(var_dir: Path) -> Path:
    return var_dir / "locks"


def _prepare(var_dir: Path) -> Path:
    folder = lock_dir(var_dir)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    return folder


def hold(settings: Settings, kind: str) -> None:
    """Take ``kind``'s lock for the rest of this process's life; raises :class:`StackRunningError`
    when another process already holds it (a stack is running in this folder)."""
    if kind in _held:
        return
    path = _prepare(settings.var_dir) / f"{kind}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _describe(fd)
        os.close(fd)
        raise StackRunningError(_running_line(settings.var_dir, holder)) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {os.getppid()} {int(time.time())} {kind}\n".encode(), 0)
    _held[kind] = fd


def forget_inherited() -> None:
    """In a forked child (a worker): close the locks' descriptors it inherited, so that the lock is
    the parent's alone and goes when the parent goes (a worker orphaned for a moment must not keep a
    restarted stack out), and no handler below it can let go of it."""
    for fd in _held.values():
        with contextlib.suppress(OSError):
            os.close(fd)
    _held.clear()


def keep_across_exec() -> None:
    """Let the locks this process holds survive an ``exec`` (see :func:`broker.kernel.stand_by`)."""
    for fd in _held.values():
        os.set_inheritable(fd, True)


def held_fds() -> list[int]:
    """The descriptors of the locks this process holds (kept across an exec, see
    :func:`keep_across_exec`; a stand-by closes them before the process it becomes takes them again)."""
    return list(_held.values())


def running(var_dir: Path) -> str | None:
    """A line naming the stack that holds any of this folder's locks, or None when none is held."""
    folder = lock_dir(var_dir)
    for kind in KINDS:
        path = folder / f"{kind}.lock"
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return _running_line(var_dir, _describe(fd))
        finally:
            os.close(fd)
    return None


def _describe(fd: int) -> str:
    """What the lock file says of its holder, in words."""
    with contextlib.suppress(OSError, ValueError):
        pid, parent, since, kind = os.pread(fd, 200, 0).decode("ascii").split()[:4]
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(int(since)))
        return f"its {kind} process is pid {int(pid)}, under pid {int(parent)}, since {started}"
    return "its holder did not say who it is"


def _running_line(var_dir: Path, holder: str) -> str:
    return (f"a lambdalite stack is already running on {var_dir.resolve()} ({holder}); "
            "stop it first, or start this one in another folder")


def main() -> None:
    """``python -m broker.stacklock``: exit 1 with one line when a stack runs in this folder."""
    try:
        settings = load_settings()
    except LambdaliteError:
        return  # the stack's processes report bad settings themselves, in full
    line = running(settings.var_dir)
    if line is not None:
        print(f"lambdalite: {line}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
