"""Connection hygiene for the HTTP source: what uvicorn does not bound by itself.

uvicorn closes an idle keep-alive connection after ``timeout_keep_alive``, but it waits forever
for the headers of a request (a client sending one byte a second holds its connection and a file
descriptor for as long as it likes) and it accepts connections until the process runs out of
descriptors. :class:`GuardedH11Protocol` adds, per connection:

- a header deadline: a request's headers must be complete within ``header_timeout`` seconds of
  the connection opening, or of the first byte of the next request on a kept-alive connection;
  otherwise the connection is closed (no reply: the client has not finished asking);
- a body deadline: its body must be complete within ``body_timeout`` seconds of the headers
  (a body sent a byte at a time would otherwise hold the connection as long as it likes);
- a cap: past ``max_connections`` open connections a new one gets a bare 503 and is closed at once.

:func:`install_accept_log_limit` replaces the event loop's report of a failed ``accept()``
(EMFILE and the like: Python 3.11's loop logs it once per queued connection, thousands of lines a
second) with one line a second at most, carrying the count.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections.abc import Callable
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("lambdalite.webhook")

RESERVED_FDS = 128  # descriptors kept for Redis connections, threads and files beside the connections
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: 38\r\n"
         b"retry-after: 1\r\nconnection: close\r\n\r\n"
         b'{"message":"Too many open connections"}')


def connection_cap(wanted: int) -> int:
    """``wanted``, lowered to what the descriptor limit leaves after :data:`RESERVED_FDS`."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(1, min(wanted, soft - RESERVED_FDS))


def guarded_protocol(header_timeout: float, max_connections: int, body_timeout: float = 60.0) -> type[H11Protocol]:
    """An h11 protocol class for ``uvicorn.Config(http=...)`` with these bounds."""

    class Guarded(GuardedH11Protocol):
        HEADER_TIMEOUT = header_timeout
        BODY_TIMEOUT = body_timeout
        MAX_CONNECTIONS = max_connections

    return Guarded


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header deadline and a connection cap (see the module docstring)."""

    HEADER_TIMEOUT = 5.0
    BODY_TIMEOUT = 60.0
    MAX_CONNECTIONS = 1000

    _header_timer: asyncio.TimerHandle | None = None
    _body_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.MAX_CONNECTIONS:
            transport.write(_BUSY)
            transport.close()
            return
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._header_timer is None and self.conn.their_state is h11.IDLE:
            self._arm()  # the first byte of another request on a kept-alive connection
        super().data_received(data)
        state = self.conn.their_state
        if state is not h11.IDLE:
            self._disarm()  # the headers are in (or the connection failed)
        if state is h11.SEND_BODY and self._body_timer is None:
            self._body_timer = self.loop.call_later(self.BODY_TIMEOUT, self._body_late)
        elif state is not h11.SEND_BODY and self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        super().connection_lost(exc)

    def _body_late(self) -> None:
        self._body_timer = None
        if self.conn.their_state is h11.SEND_BODY and not self.transport.is_closing():
            self.transport.close()

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.HEADER_TIMEOUT, self._headers_late)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


class AcceptLogLimit:
    """An event-loop exception handler that reports failed accepts at most once per ``interval``."""

    MESSAGE = "socket.accept() out of system resource"

    def __init__(self, interval: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self.suppressed = 0
        self._last = -float("inf")

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") != self.MESSAGE:
            loop.default_exception_handler(context)
            return
        now = self.clock()
        if now - self._last < self.interval:
            self.suppressed += 1
            return
        self._last, count, self.suppressed = now, self.suppressed + 1, 0
        log.error("cannot accept connections: %s (%d time(s) since the last report; lower "
                  "LAMBDALITE_HTTP_MAX_CONNECTIONS or raise the descriptor limit)", context.get("exception"), count)


def install_accept_log_limit(loop: asyncio.AbstractEventLoop) -> AcceptLogLimit:
    handler = AcceptLogLimit()
    loop.set_exception_handler(handler)
    return handler
