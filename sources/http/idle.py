"""The HTTP server stands by when nobody calls it: pay-per-use for the Invoke API and the webhooks.

After ``LAMBDALITE_HTTP_IDLE_STANDBY`` seconds (60 by default; 0: never) without a request, and with
none in flight (an open console page holds its live stream, so it counts), the server stops as it
does on a signal, letting what runs finish, and the process becomes :mod:`broker.standby` in a bare
interpreter: a few MB instead of about 40, holding the listening socket and this folder's stack
lock. The next connection waits in the kernel's queue while the standby becomes
``python -m sources.http`` again, which serves on the same socket (:data:`LISTEN_FD`); that first
request pays the server's start, about half a second. A connection the server had accepted in the
very moment it began to stop, before its request arrived, is closed unanswered, as an idle
keep-alive connection can be; HTTP clients (boto3, the AWS CLI, browsers) send it again.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from broker import stacklock, standby
from broker.errors import ConfigError

log = logging.getLogger("lambdalite.webhook")

LISTEN_FD = standby.LISTEN_FD  # the listening socket a standby hands over
BACKLOG = 2048  # connections the kernel holds while the server starts again


def listening_socket(host: str, port: int) -> tuple[socket.socket, bool]:
    """The socket to serve on, inheritable, and whether a standby handed it over (a connection is
    waiting on it); else a new one bound to ``host``:``port``. Raises ConfigError when it cannot bind."""
    handed = os.environ.pop(LISTEN_FD, None)
    if handed is not None:
        sock = socket.socket(fileno=int(handed))
    else:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # IPPROTO_TCP named: asyncio sets TCP_NODELAY only on connections of such a socket (else
        # Nagle's algorithm and delayed ACKs hold small replies back 40 ms).
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(BACKLOG)
        except OSError as e:
            sock.close()
            raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e
    sock.set_inheritable(True)
    return sock, handed is not None


class Activity:
    """ASGI middleware that knows how long the app has had no request in flight."""

    def __init__(self, app: Any, clock: Callable[[], float] = time.monotonic) -> None:
        self.app, self.clock = app, clock
        self.in_flight = 0
        self.last = clock()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
            self.last = self.clock()

    def quiet_for(self) -> float:
        """Seconds since the last request ended; 0 while one is in flight."""
        return 0.0 if self.in_flight else self.clock() - self.last


class Watch:
    """Tells ``stop()`` once ``activity`` has been quiet for ``after`` seconds (checked every ``every``
    seconds, on a daemon thread); :attr:`fired` says it did."""

    def __init__(self, activity: Activity, after: float, stop: Callable[[], None], every: float = 1.0) -> None:
        self.activity, self.after, self.stop, self.every = activity, after, stop, every
        self.fired = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="http-idle", daemon=True)

    def start(self) -> None:
        if self.after > 0:
            self._thread.start()

    def close(self) -> None:
        self._done.set()

    def _run(self) -> None:
        while not self._done.wait(min(self.every, self.after)):
            if self.activity.quiet_for() >= self.after:
                log.info("no request for %gs: standing by on the same port until the next connection", self.after)
                self.fired = True
                self.stop()
                return


def stand_by(sock: socket.socket) -> None:
    """Become :mod:`broker.standby` holding ``sock`` (and the stack's lock) until a connection waits;
    then ``python -m sources.http`` again. Returns only if the exec fails."""
    stacklock.keep_across_exec()
    locks = ",".join(str(fd) for fd in stacklock.held_fds())
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execv(sys.executable, [sys.executable, "-I", "-S", standby.__file__, "--listen", str(sock.fileno()),
                                  locks, "--", sys.executable, "-m", "sources.http"])
    except OSError as e:
        log.warning("cannot stand by (%s); serving on", e)
