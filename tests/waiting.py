"""Waiting for a condition in a test: the one polling helper every test uses.

Tests wait for behaviour, never for time: :func:`wait_until` polls a check until it holds, with a
generous deadline (the machine may be loaded), and fails with what it waited for and, where given,
the output of the processes it depends on.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(check: Callable[[], T], timeout: float = 30.0, what: str = "the condition", *, every: float = 0.05,
               alive: Callable[[], str | None] | None = None, detail: Callable[[], str] | None = None) -> T:
    """Call ``check`` every ``every`` seconds until it returns something true, and return that.

    ``alive``: called before each try, it returns None while what the test waits on still runs, or
    why it stopped (a process's exit and output): the wait fails at once with it. ``detail``: called
    once on a timeout, its text (logs, output) is added to the failure.
    """
    deadline = time.monotonic() + timeout
    while True:
        if alive is not None and (gone := alive()) is not None:
            raise AssertionError(f"waiting for {what}: {gone}")
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = f"\n{detail()}" if detail is not None else ""
            raise AssertionError(f"{what}: not within {timeout} s{extra}")
        time.sleep(every)


def wait_while_running(check: Callable[[], T], proc: subprocess.Popen[str], timeout: float = 20.0) -> T:
    """:func:`wait_until` while ``proc`` runs: fails at once with its output if it exits, and kills it
    for its output on a timeout."""
    def output() -> str:
        proc.kill()
        return f"output: {proc.communicate()[0]}"
    return wait_until(check, timeout, detail=output,
                      alive=lambda: None if proc.poll() is None else f"the process exited: {proc.communicate()[0]}")
