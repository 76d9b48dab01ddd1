"""Connecting to Redis: every process waits for it at start and rides out outages with backoff."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import redis
from redis.backoff import ExponentialBackoff
from redis.connection import DefaultParser
from redis.retry import Retry

from broker.errors import RedisUnavailableError

log = logging.getLogger(__name__)


class RedisRefusesWrites(redis.ConnectionError):
    """Redis refuses writes (and PING) because it cannot write its append-only file: a full or
    failing disk (``MISCONF``). Nothing of the refused command or transaction was applied.

    A :class:`redis.ConnectionError`, so every process rides it out like an outage: it holds its
    events and retries with backoff until the disk has room again.
    """


class Parser(DefaultParser):  # type: ignore[misc,valid-type]
    """redis-py's parser, raising :class:`RedisRefusesWrites` for ``MISCONF`` replies, also when a
    script's write was refused (``ERR Error running script ...: -MISCONF ...``)."""

    @classmethod
    def parse_error(cls, response: str) -> Exception:
        if response.startswith("MISCONF ") or "-MISCONF " in response:
            return RedisRefusesWrites(response)
        return super().parse_error(response)  # type: ignore[no-any-return]


TRANSIENT = (redis.ConnectionError, redis.TimeoutError, ConnectionError, OSError)


def connect(dsn: str) -> redis.Redis:
    """A client for ``dsn`` (``redis://`` or ``unix://``) that retries brief faults itself."""
    return redis.Redis.from_url(
        dsn,
        socket_connect_timeout=2,
        health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=3),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        parser_class=Parser,
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
