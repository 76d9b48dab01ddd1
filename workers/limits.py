"""Limits, enforced from outside the invocation: time, memory of the whole process tree, tmp disk.

The watcher (a worker) samples with psutil and kills the whole tree. Linux's child subreaper flag
makes every orphan of an invocation (a double fork, a process that called setsid) a child of the
worker, so the tree is always "every descendant of the worker".
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass

import psutil

log = logging.getLogger(__name__)

MB = 1024 * 1024
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True, slots=True)
class Limits:
    """What one invocation may use: seconds of wall time, MB of RSS, MB of TMPDIR."""

    timeout: float
    memory_mb: int
    storage_mb: int


def _read(path: str) -> bytes:
    """A /proc file's whole text, read without a buffered file object (three system calls where
    ``open().read()`` makes eight: this runs on every sample of every invocation)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _child_pids(pid: int) -> list[int] | None:
    """Children of ``pid`` from /proc/PID/task/*/children (Linux); None where the kernel lacks it."""
    pids: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return pids
    for tid in tasks:
        try:
            pids.extend(int(c) for c in _read(f"/proc/{pid}/task/{tid}/children").split())
        except FileNotFoundError:
            if not os.path.exists(f"/proc/{pid}/task/{tid}"):
                continue  # the thread ended meanwhile
            return None
        except OSError:
            continue
    return pids


def descendant_pids(root: int) -> list[int] | None:
    """The pids below ``root`` (zombies included), walking only the tree itself through /proc's
    children lists; None where the kernel has no such lists."""
    found: list[int] = []
    stack = [root]
    while stack:
        kids = _child_pids(stack.pop())
        if kids is None:
            return None
        found.extend(kids)
        stack.extend(kids)
    return found


def descendants(root: psutil.Process) -> list[psutil.Process]:
    """Every live descendant of ``root`` (zombies and vanished processes left out).

    The cost follows the size of the invocation's tree (see :func:`descendant_pids`), not of the
    machine's process table; psutil's full scan is the fallback.
    """
    pids = descendant_pids(root.pid)
    if pids is None:
        try:
            return [p for p in root.children(recursive=True) if _alive(p)]
        except psutil.Error:
            return []
    found: list[psutil.Process] = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            if _alive(proc):
                found.append(proc)
    return found


def strays(root: psutil.Process, keep: int | None, keep_group: int | None = None) -> list[psutil.Process]:
    """The live descendants of ``root`` other than ``keep`` (and the members of the process group
    ``keep_group``: a runtime kept warm between invocations): what an invocation left behind.

    The usual answer, nothing (``keep``, the sandbox, alone below the worker), costs one read of
    each children list and no process object.
    """
    pids = descendant_pids(root.pid)
    if pids is not None and all(pid == keep for pid in pids):
        return []
    return [p for p in descendants(root) if p.pid != keep and not in_group(p.pid, keep_group)]


def in_group(pid: int, pgid: int | None) -> bool:
    """Whether ``pid`` is in the process group ``pgid`` (False for None, or a process gone)."""
    if pgid is None:
        return False
    try:
        return os.getpgid(pid) == pgid
    except OSError:
        return False


def _alive(p: psutil.Process) -> bool:
    try:
        return bool(p.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def tree_rss(root: psutil.Process) -> int:
    """Resident memory of every process below ``root``, in bytes (psutil's ``memory_info().rss``,
    read from /proc/PID/statm directly); a zombie or a vanished process counts zero."""
    pids = descendant_pids(root.pid)
    if pids is None:
        total = 0
        for p in descendants(root):
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        return total
    total = 0
    for pid in pids:
        try:
            total += int(_read(f"/proc/{pid}/statm").split()[1]) * PAGE
        except (OSError, IndexError, ValueError):
            continue
    return total


def dir_usage(path: str) -> int:
    """Bytes of disk that the files below ``path`` occupy (allocated blocks, symlinks not followed)."""
    total = 0
    stack = [path]
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                        else:
                            total += entry.stat(follow_symlinks=False).st_blocks * 512
                    except OSError:
                        continue
        except OSError:
            continue
    return total


def _signal_all(procs: Iterable[psutil.Process], sig: int) -> None:
    for p in procs:
        with contextlib.suppress(psutil.Error, OSError):
            p.send_signal(sig)


def kill_group(pgid: int) -> None:
    """Stop, then kill, a whole process group in two system calls: nothing in it can fork meanwhile."""
    for sig in (signal.SIGSTOP, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)


def kill_tree(root: psutil.Process, grace: float = 0.05, keep: int | None = None, keep_group: int | None = None) -> int:
    """Kill every descendant of ``root`` except the process ``keep`` (and the members of the process
    group ``keep_group``); returns how many were signalled.

    The tree is frozen first (SIGSTOP, repeated until no new process appears), so a process that
    left the sandbox's group (setsid, setpgid) cannot fork its way out; then SIGTERM and SIGCONT,
    and SIGKILL for whatever is still alive after ``grace`` seconds. Gone already is fine.
    """
    frozen: dict[int, psutil.Process] = {}
    for _ in range(50):
        fresh = [p for p in descendants(root)
                 if p.pid not in frozen and p.pid != keep and not in_group(p.pid, keep_group)]
        if not fresh:
            break
        _signal_all(fresh, signal.SIGSTOP)
        frozen.update((p.pid, p) for p in fresh)
    procs = list(frozen.values())
    if not procs:
        return 0
    _signal_all(procs, signal.SIGTERM)
    _signal_all(procs, signal.SIGCONT)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(p) for p in procs):
        time.sleep(0.005)
    _signal_all([p for p in procs if _alive(p)], signal.SIGKILL)
    # Anything forked between the last freeze and the SIGKILL: no more forks can happen now.
    _signal_all([p for p in descendants(root) if p.pid != keep and not in_group(p.pid, keep_group)],
                signal.SIGKILL)
    return len(procs)


def reap() -> dict[int, int]:
    """Collect every exited child (orphans adopted as subreaper included): pid -> wait status."""
    done: dict[int, int] = {}
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return done
        if pid == 0:
            return done
        done[pid] = status
