"""The scaler's process: start-up, then its loop of steps, wake-ups, reloads and signals until a stop.

:class:`workers.scaler.Scaler` decides and forks; this module drives it. ``python -m workers.scaler``
runs :func:`run`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import time
from typing import Any

import redis

from broker import revision, startup
from broker.connection import TRANSIENT, Backoff, connect, wait_for_redis
from broker.errors import LambdaliteError
from broker.queues import WAKE_CHANNEL
from workers import reload
from workers.scaler import STEP, WAKE_GAP, Scaler

log = logging.getLogger("lambdalite.scaler")


class _Flag:
    def __init__(self) -> None:
        self.set = False

    def __call__(self, signum: int, frame: Any) -> None:
        self.set = True


def _wake(client: redis.Redis) -> None:
    """Wake the scaler's loop (from the watch's thread) to look at an edit."""
    with contextlib.suppress(*TRANSIENT):  # the loop looks anyway within a second
        client.publish(revision.RELOAD_CHANNEL, "edit")


def _publish_running(reloader: reload.Reloader, stop: _Flag) -> revision.Revision | None:
    """Publish the revision this scaler starts with; None when Redis is away (tried again by the loop)."""
    try:
        return reloader.publish_running()
    except TRANSIENT as e:
        log.warning("could not publish the running revision (%s); trying again", e)
        return None


def run() -> None:
    settings, registry = startup.start("scaler")
    try:
        stop = _Flag()
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        client = connect(settings.redis_dsn)
        wait_for_redis(client, stop=lambda: stop.set)
        scaler = Scaler(settings, registry, client, adopt_orphans=True)
    except LambdaliteError as e:
        startup.fail(e)
    hup = _Flag()
    signal.signal(signal.SIGHUP, hup)
    reloader = reload.Reloader(settings, client, registry, scaler.apply, wake=lambda: _wake(client))
    rev = _publish_running(reloader, stop)
    log.info("scaler %s: %d function(s), up to %d workers; revision %s", scaler.id, len(registry.functions),
             settings.max_workers, rev.number if rev is not None else "?")
    reloader.watch()
    pubsub = None
    backoff = Backoff(log)
    last_step = -math.inf
    woken: set[str] = set()
    woken_at = -WAKE_GAP  # when the last wake-up was taken up
    while not stop.set:
        try:
            if pubsub is None:
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(WAKE_CHANNEL, revision.RELOAD_CHANNEL)
            if hup.set:
                hup.set = False
                reloader.notice(force=True)
            if registry.revision is None:
                _publish_running(reloader, stop)
            if reloader.step():
                last_step = -math.inf  # start the new revision's workers now
            if time.monotonic() - last_step >= scaler.interval or scaler.short_of_workers(woken):
                scaler.step()
                last_step = time.monotonic()
            woken.clear()
            timeout = max(0.0, last_step + scaler.interval - time.monotonic())
            message = pubsub.get_message(timeout=min(timeout, reloader.wait if reloader.wait is not None else timeout))
            if message is not None:
                time.sleep(max(0.0, woken_at + WAKE_GAP - time.monotonic()))
                woken_at = time.monotonic()
            while message is not None:  # drain: one step serves every wake-up so far
                data = message.get("data")
                if message.get("channel") == revision.RELOAD_CHANNEL.encode():
                    reloader.notice(force=data == b"force")
                else:
                    woken.add(data.decode(errors="replace") if isinstance(data, bytes) else str(data))
                message = pubsub.get_message(timeout=0)
            backoff.succeeded()
        except TRANSIENT as e:
            pubsub = None
            time.sleep(backoff.failed(e))
        except Exception:  # a bug costs one step, not the stack (honcho stops all when one exits)
            log.exception("scaler step failed; carrying on")
            time.sleep(STEP)
    log.info("scaler stopping")
    scaler.stop()
    reloader.unwatch(wait=False)  # its thread ends with the process
    log.info("scaler stopped")
