"""The end of one invocation's log, for the Invoke API's ``LogType=Tail``.

While :class:`LogTail` is entered, the sandbox's descriptors 1 and 2 point into a pipe; a thread
copies everything that arrives to where stdout pointed before (the log goes on as usual, line by
line) and keeps the last ``limit`` bytes. It catches what a handler prints, what its logging
writes, and what its child processes and C code write, since all of it goes through the
descriptors. On exit the descriptors are put back and what is still in the pipe is copied.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import threading
from types import TracebackType

TAIL_BYTES = 4096


class LogTail:
    """``with LogTail() as tail: ...`` then ``tail.text``: the last ``limit`` bytes written."""

    def __init__(self, limit: int = TAIL_BYTES) -> None:
        self.limit = limit
        self._kept = bytearray()
        self._stop = threading.Event()
        self._saved: tuple[int, int] = (-1, -1)
        self._read = -1
        self._thread: threading.Thread | None = None

    @property
    def text(self) -> str:
        return bytes(self._kept).decode("utf-8", "replace")

    def __enter__(self) -> LogTail:
        _flush()
        self._saved = (os.dup(1), os.dup(2))
        self._read, write = os.pipe()
        os.set_blocking(self._read, False)
        os.dup2(write, 1)
        os.dup2(write, 2)
        os.close(write)
        self._thread = threading.Thread(target=self._pump, name="log-tail", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        _flush()
        os.dup2(self._saved[0], 1)
        os.dup2(self._saved[1], 2)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(1.0)
        os.close(self._read)
        os.close(self._saved[1])
        os.close(self._saved[0])

    def _pump(self) -> None:
        # Leftover children of the handler may hold the pipe's other end open: stop on request, not EOF.
        while True:
            stopping = self._stop.is_set()
            ready = select.select([self._read], [], [], 0 if stopping else 0.05)[0]
            if not ready:
                if stopping:
                    return
                continue
            try:
                chunk = os.read(self._read, 1 << 16)
            except BlockingIOError:
                continue
            except OSError:
                return
            if not chunk:
                return
            self._keep(chunk)
            with contextlib.suppress(OSError):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(self._saved[0], view):]

    def _keep(self, chunk: bytes) -> None:
        self._kept += chunk
        if len(self._kept) > self.limit:
            del self._kept[: len(self._kept) - self.limit]


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            stream.flush()
