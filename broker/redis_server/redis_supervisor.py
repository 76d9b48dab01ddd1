"""The embedded redis-server's supervisor: what the Procfile's ``redis`` process runs once it is set up.

:mod:`broker.redis_server.embedded` checks the settings, takes the stack's lock and prepares ``var/``, then replaces
itself with this file run by a bare interpreter (``python -I -S``). It imports the standard library
only: it stays up as long as the stack does, and an interpreter holding redis-py and pydantic costs
about 35 MB where this costs about 6. What it does:

- runs redis-server in a session of its own (the stop signal honcho sends to every process group does
  not reach it) and dies with it (the kernel stops the server if this process is killed);
- sleeps until a signal (a stop, or the server's exit) or a second has passed, and then looks whether
  the server's socket file is still the one it made: a socket removed or replaced leaves the server
  unreachable for everything that connects anew, so it stops the stack with one line;
- on a stop, it is the last one out: it waits up to ``--last-out`` seconds for the stack's other
  processes to disconnect (workers recording their last outcomes, sources storing what they
  accepted), asking with the ``redis-cli`` that ships beside ``redis-server``, then has the server
  write its append-only file and exit.

Usage: ``python -I -S redis_supervisor.py SOCKET LAST_OUT -- REDIS-SERVER-ARGS...``.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

NAME = "lambdalite-embedded"  # this supervisor's client name, not counted as the stack's
_PR_SET_PDEATHSIG = 1


def log(level: str, message: str) -> None:
    """A line as :mod:`broker.logs` writes them, so honcho's output reads the same."""
    sys.stdout.write(f"{level} lambdalite.redis: {message}\n")
    sys.stdout.flush()


class SocketWatch:
    """Notices when the server's unix socket file is gone or is another file (the inode it had once
    it appeared), looking at most once a second."""

    EVERY = 1.0

    def __init__(self, socket: Path, clock: Callable[[], float] = time.monotonic) -> None:
        self.socket = socket
        self.clock = clock
        self.inode: int | None = None
        self.next = 0.0

    def lost(self) -> bool:
        now = self.clock()
        if now < self.next:
            return False
        self.next = now + self.EVERY
        try:
            inode = os.lstat(self.socket).st_ino
        except FileNotFoundError:
            return self.inode is not None
        except OSError:
            return False
        if self.inode is None:
            self.inode = inode
        return inode != self.inode


def other_clients(cli: str, socket: Path) -> int | None:
    """How many connections besides this one the server has; None when it does not answer."""
    try:
        done = subprocess.run([cli, "-s", str(socket)], input=f"CLIENT SETNAME {NAME}\nCLIENT LIST\n",
                              capture_output=True, text=True, timeout=1)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = done.stdout.splitlines()
    if done.returncode != 0 or not lines or lines[0] != "OK":
        return None
    return sum(1 for line in lines[1:] if line.startswith("id=") and f" name={NAME} " not in line)


def _die_with_parent() -> None:
    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


def serve(args: list[str], socket: Path, last_out: float) -> int:
    """Run redis-server until it exits (1) or a stop signal comes (0 once it has saved and exited)."""
    stop: list[int] = []
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: stop.append(signum))
    signal.signal(signal.SIGCHLD, lambda *_: None)  # the server's exit wakes the wait below
    server = subprocess.Popen(args, start_new_session=True, preexec_fn=_die_with_parent)
    watch = SocketWatch(socket)
    cli = str(Path(args[0]).with_name("redis-cli"))
    try:
        while server.poll() is None and not stop:
            with contextlib.suppress(InterruptedError):
                select.select([wake_r], [], [], SocketWatch.EVERY)
            with contextlib.suppress(BlockingIOError):
                os.read(wake_r, 512)
            if server.poll() is None and not stop and watch.lost():
                log("ERROR", f"{socket} was removed or replaced while its redis-server ran: stopping the "
                             "stack (start it again to get a new socket)")
                server.terminate()  # it still writes its append-only file
                server.wait(10)
                return 1
        if server.poll() is not None:
            log("ERROR", f"redis-server exited with status {server.returncode}")
            return 1
        deadline = time.monotonic() + last_out
        while time.monotonic() < deadline and server.poll() is None:
            if not other_clients(cli, socket):  # none left, or the server does not answer
                break
            time.sleep(0.05)
        server.terminate()  # redis-server's SIGTERM: write the append-only file and exit
        return 0 if server.wait(10) in (0, -signal.SIGTERM) else 1
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def main(argv: list[str]) -> None:
    socket, last_out, dashes, *args = argv
    if dashes != "--" or not args:
        sys.exit("usage: redis_supervisor.py SOCKET LAST_OUT -- REDIS-SERVER-ARGS...")
    code = serve(args, Path(socket), float(last_out))
    log("INFO", "redis-server stopped")
    sys.exit(code)


if __name__ == "__main__":
    main(sys.argv[1:])
