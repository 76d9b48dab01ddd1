"""``python -m sources.files``: the files source's process (the watcher is sources/files/files.py)."""

from __future__ import annotations

import logging
import os
import signal
import threading

from broker import revision, startup
from broker.connection import connect
from broker.errors import LambdaliteError
from sources.files.buckets import prepare_root
from sources.files.files import BucketWatcher

log = logging.getLogger("sources.files.files")


def main() -> None:
    settings, registry = startup.start("files")
    try:
        root = prepare_root(settings.buckets)
    except LambdaliteError as e:
        startup.fail(e)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    client = connect(settings.redis_dsn)
    watcher = BucketWatcher(root, registry, client, region=settings.region, stopping=stop.is_set)
    missing = sorted(b for b in watcher.triggers.buckets if not os.path.isdir(root / b))
    log.info("watching %s (buckets: %s)", watcher.root.path, ", ".join(watcher.root.buckets()) or "none yet")
    if missing:
        log.warning("triggers name buckets with no folder yet: %s", ", ".join(missing))
    watcher.start()
    follower = revision.Follower(client, settings.config, watcher.follow, name="files-revision")
    follower.start()
    try:
        while not stop.is_set():
            watcher.step(0.2)
    finally:
        follower.stop(timeout=0.1)  # a daemon thread: it ends with the process
        watcher.stop()
        client.close()
    log.info("stopped")


if __name__ == "__main__":
    main()
