"""A Procfile process with nothing to do, standing by for a revision or a connection that gives it work.

The SQLite feed with no ``sqlite`` trigger becomes this file, run by a bare interpreter
(``python -I -S``, standard library only, a few MB where an interpreter holding redis-py and
pydantic costs about 35): honcho stops the whole stack when one of its processes exits, so the
process must stay, and a live reload may bring it triggers. It subscribes to the running revision's
channel (:mod:`broker.revision`) and, when a revision other than the one it stood by for is running
(a message, or a look at the key after each connection), it becomes ``COMMAND`` again, which reads
that revision and either works or stands by anew. A lost connection is tried again, 50 ms doubling to
1 s, without a word (the full process logs Redis's outages). The stop signal honcho sends ends it.

Only ``unix://`` and ``redis://`` URLs (with a password or user and password, and a database) are
spoken here; for others (TLS, Sentinel) the full process stays instead (:func:`supported`).

The HTTP source becomes it after a quiet spell (``--listen``, :mod:`sources.http.idle`): it holds
the listening socket, and becomes ``COMMAND`` again as soon as a connection waits on it, which that
command accepts (the connection waits in the kernel's queue meanwhile). This mode needs no Redis.

Usage: ``python -I -S standby.py URL NUMBER CLOSE_FDS -- COMMAND...``: NUMBER is the revision the
process stood by for, CLOSE_FDS the comma-separated descriptors to close before COMMAND runs (the
stack's lock, which COMMAND takes again). ``python -I -S standby.py --listen FD CLOSE_FDS --
COMMAND...``: FD is the listening socket, handed to COMMAND in ``LAMBDALITE_HTTP_LISTEN_FD``.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import sys
import time
from urllib.parse import unquote, urlsplit

KEY = b"lambdalite:revision"  # as broker.revision.KEY
CHANNEL = b"lambdalite:revision"  # as broker.revision.CHANNEL
TIMEOUT = 5.0  # seconds to connect or to answer a command
LISTEN_FD = "LAMBDALITE_HTTP_LISTEN_FD"  # as sources.http.idle.LISTEN_FD


def supported(url: str) -> bool:
    """Whether this stand-by can reach the Redis at ``url``."""
    return urlsplit(url).scheme in ("unix", "redis")


def _command(*parts: bytes) -> bytes:
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


class _Reader:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("connection closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def reply(self) -> object:
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"-":
            raise ConnectionError(rest.decode(errors="replace"))
        if kind in (b"+", b":"):
            return rest
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            while len(self.buf) < size + 2:
                chunk = self.sock.recv(4096)
                if not chunk:
                    raise ConnectionError("connection closed")
                self.buf += chunk
            data, self.buf = self.buf[:size], self.buf[size + 2:]
            return data
        if kind == b"*":
            return [self.reply() for _ in range(max(0, int(rest)))]
        raise ConnectionError(f"unexpected reply {line[:40]!r}")


def _connect(url: str) -> tuple[socket.socket, _Reader]:
    parts = urlsplit(url)
    if parts.scheme == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(TIMEOUT)
        sock.connect(unquote(parts.path))
    else:
        sock = socket.create_connection((parts.hostname or "localhost", parts.port or 6379), TIMEOUT)
    reader = _Reader(sock)
    try:
        if parts.password is not None:
            auth = [unquote(parts.username).encode()] if parts.username else []
            sock.sendall(_command(b"AUTH", *auth, unquote(parts.password).encode()))
            reader.reply()
        db = parts.path.strip("/") if parts.scheme == "redis" else ""
        for item in parts.query.split("&"):
            if item.startswith("db="):
                db = item[3:]
        if db and db != "0":
            sock.sendall(_command(b"SELECT", db.encode()))
            reader.reply()
    except BaseException:
        sock.close()
        raise
    return sock, reader


def _running(url: str) -> bytes | None:
    sock, reader = _connect(url)
    try:
        sock.sendall(_command(b"HGET", KEY, b"number"))
        value = reader.reply()
    finally:
        sock.close()
    return value if isinstance(value, bytes) else None


def wait(url: str, number: bytes) -> None:
    """Return once a revision other than ``number`` runs (or none does any more)."""
    delay = 0.0
    while True:
        try:
            sock, reader = _connect(url)
            try:
                sock.sendall(_command(b"SUBSCRIBE", CHANNEL))
                reader.reply()  # the subscription's confirmation
                if (_running(url) or b"0") != number:
                    return
                delay = 0.0
                sock.settimeout(None)  # a message, or the stop signal
                while True:
                    message = reader.reply()
                    if isinstance(message, list) and message and message[0] == b"message":
                        return
            finally:
                sock.close()
        except (OSError, ValueError):
            delay = min(max(delay * 2, 0.05), 1.0)
            time.sleep(delay)


def wait_for_connection(fd: int) -> None:
    """Return once a connection waits to be accepted on the listening socket ``fd``."""
    while True:
        try:
            readable, _, _ = select.select([fd], [], [])
        except InterruptedError:
            continue
        if readable:
            return


def main(argv: list[str]) -> None:
    first, second, close, dash, *command = argv
    if dash != "--" or not command:
        sys.exit("usage: standby.py URL NUMBER CLOSE_FDS -- COMMAND...\n"
                 "       standby.py --listen FD CLOSE_FDS -- COMMAND...")
    if first == "--listen":
        wait_for_connection(int(second))
        os.environ[LISTEN_FD] = second
    else:
        wait(first, second.encode())
    for fd in filter(None, close.split(",")):
        with contextlib.suppress(OSError):
            os.close(int(fd))
    sys.stdout.flush()
    os.execv(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
