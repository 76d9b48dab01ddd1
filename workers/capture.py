"""The lines of the invocation running now: Lambda's START / END / REPORT and what the handler prints.

The sandbox's stdout and stderr (and those of every process it starts: a command function, a
subprocess) are one pipe that the worker reads. Each line is relayed to the worker's own stdout at
once, as before (honcho shows it), and kept, within bounds (:class:`broker.logstore.Lines`), for
the log store. The sandbox gets the pipe by inheritance: the worker points its own fds 1 and 2 at
the pipe only while it forks the sandbox (:meth:`Capture.inherited`), so the sandbox's code is
unchanged. Its ``sys.stdout`` is line-buffered, so a print reaches the pipe before the handler
returns, and a line lands in the invocation that printed it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import sys
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from broker import cost, logstore
from broker.logs import escape
from broker.logstore import Lines
from broker.registry import Function
from workers import jsonlogs

if TYPE_CHECKING:
    from workers.runtime import Invocation

PIPE_SIZE = 1 << 20  # bytes the pipe holds before a printing handler waits for the worker to read
READ_SIZE = 1 << 16
MAX_PARTIAL = 1 << 16  # a "line" longer than this without a newline is taken as it is


class Capture:
    """The worker's end of the sandbox's output, and the current invocation's lines."""

    def __init__(self, out: Callable[[str], None], log_format: str = "Text") -> None:
        self._out = out
        self._json = jsonlogs.Converter() if log_format == "JSON" else None
        if self._json is not None:
            jsonlogs.install_in_sandbox()
        self._read, self._write = os.pipe()  # neither is inherited by an exec (os.pipe's default)
        os.set_blocking(self._read, False)
        with contextlib.suppress(OSError, AttributeError):
            fcntl.fcntl(self._write, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        self._partial = b""
        self.lines = Lines()

    @contextlib.contextmanager
    def inherited(self) -> Iterator[None]:
        """While it lasts, fds 1 and 2 of this process are the pipe: a process forked now writes there."""
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError, AttributeError):
                stream.flush()
        with contextlib.suppress(OSError, ValueError, AttributeError):
            sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # the child's copy
        saved = os.dup(1), os.dup(2)
        try:
            os.dup2(self._write, 1)
            os.dup2(self._write, 2)
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])

    def begin(self) -> None:
        """A new invocation starts: what is left of the last one is relayed, then a fresh record."""
        self.drain(keep=False)
        self.lines = Lines()

    def line(self, text: str) -> None:
        """A line of the runtime's own (START, END, REPORT)."""
        for line in self._json.platform(text) if self._json is not None else [text]:
            self._out(line)
            self.lines.add(line)

    def wait(self, fd: int, timeout: float) -> bool:
        """Wait up to ``timeout`` s for ``fd`` to be readable, relaying output meanwhile; whether it is."""
        end = time.perf_counter() + timeout
        while True:
            ready = select.select([fd, self._read], [], [], max(0.0, end - time.perf_counter()))[0]
            if self._read in ready:
                self.drain()
            if fd in ready:
                return True
            if not ready or time.perf_counter() >= end:
                return False

    def drain(self, keep: bool = True) -> None:
        """Relay (and keep, unless not ``keep``) the complete lines the pipe holds now."""
        while True:
            try:
                chunk = os.read(self._read, READ_SIZE)
            except BlockingIOError:
                break
            except OSError:
                return
            if not chunk:
                break
            *complete, self._partial = (self._partial + chunk).split(b"\n")
            if len(self._partial) > MAX_PARTIAL:
                complete.append(self._partial)
                self._partial = b""
            for raw in complete:
                self._emit(raw, keep)
            if len(chunk) < READ_SIZE:
                break

    def finish(self) -> None:
        """The invocation's output is over: what the pipe holds, and a last line without its newline."""
        self.drain()
        if self._partial:
            self._emit(self._partial, True)
            self._partial = b""

    def _emit(self, raw: bytes, keep: bool) -> None:
        text = raw.decode("utf-8", "replace").rstrip("\r")
        if self._json is not None:
            text = self._json.application(text)
        # Relayed with control characters escaped (tabs kept): a handler's output cannot repaint the
        # operator's terminal or pass for another process's line.
        self._out("\t".join(escape(part) for part in text.split("\t")))
        if keep:
            self.lines.add(text)

    def close(self) -> None:
        for fd in (self._read, self._write):
            with contextlib.suppress(OSError):
                os.close(fd)


def store(pipe: Any, fn: Function, inv: Invocation, capture: Capture) -> None:
    """Queue on ``pipe`` (the transaction recording ``inv``'s outcome) its lines for the log store
    and its billable use for the cost counters: no round trip of their own, and no command that can
    fail (both scripts move a key of the wrong type aside)."""
    logstore.record(pipe, fn.name, inv.request_id, capture.lines.items())
    cost.record(pipe, fn.name, fn.memory, cost.billed_ms(inv.duration_ms, inv.init_ms), inv.init_ms)
