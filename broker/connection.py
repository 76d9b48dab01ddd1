"""Connecting to Redis: every process waits for it at start and rides out outages with backoff."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from broker.errors import RedisUnavailableError

log = logging.getLogger(__name__)

TRANSIENT = (redis.ConnectionError, redis.TimeoutError, ConnectionError, OSError)


def connect(dsn: str) -> redis.Redis:
    """A client for ``dsn`` (``redis://`` or ``unix://``) that retries brief faults itself."""
    return redis.Redis.from_url(
        dsn,
        socket_connect_timeout=2,
        health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=3),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )


def wait_for_redis(
    client: redis.Redis,
    timeout: float | None = None,
    stop: Callable[[], bool] = lambda: False,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Block until ``client`` answers PING, backing off from 50 ms to 2 s between tries.

    Raises :class:`RedisUnavailableError` once ``timeout`` seconds pass (never, when None) or
    ``stop()`` turns true.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    delay, said = 0.05, False
    while True:
        try:
            client.ping()
            if said:
                log.info("redis is reachable again")
            return
        except TRANSIENT as e:
            if not said:
                log.warning("waiting for redis: %s", e)
                said = True
            if stop() or (deadline is not None and time.monotonic() >= deadline):
                raise RedisUnavailableError(f"redis did not answer: {e}") from e
            sleep(delay)
            delay = min(delay * 2, 2.0)
