"""Connecting to Redis: every process waits for it at start and rides out outages with backoff."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import hiredis
import redis
from redis.backoff import ExponentialBackoff
from redis.connection import DefaultParser
from redis.retry import Retry
from redis.sentinel import Sentinel

from broker.errors import RedisUnavailableError
from broker.redis_url import sentinel_target

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


class NotReplicated(redis.ConnectionError):
    """Fewer replicas than asked (``LAMBDALITE_REDIS_WAIT_REPLICAS``) confirmed a write within
    ``LAMBDALITE_REDIS_WAIT_TIMEOUT``. The primary applied it; a failover now could lose it.

    A :class:`redis.ConnectionError`, so a source holds the event and tries again, as in an outage
    (what it stored already is not stored twice: its cursor or manifest went in the same write).
    """


TRANSIENT = (redis.ConnectionError, redis.TimeoutError, ConnectionError, OSError)

# Every connection's timeouts, set here so that no behaviour depends on a client library's defaults
# (redis-py 8.2 gives a connection a 5 s socket timeout of its own; earlier versions none).
CONNECT_TIMEOUT = 2.0  # seconds to open a connection: a unix socket or a local port answers in microseconds
BLOCK_SLICE = 5.0  # seconds a blocking read (BLMOVE, XREAD BLOCK) waits in one command; longer waits loop
# Seconds a reply may take: Redis answers in microseconds, in milliseconds when its disk is slow; a
# blocking read's reply comes within BLOCK_SLICE. Past this the connection is dropped and retried.
COMMAND_TIMEOUT = BLOCK_SLICE + 5.0

RETRY_FIRST = 0.05  # seconds before the first retry
RETRY_CAP = 0.5  # seconds between retries at most: work resumes within this of Redis coming back


class Backoff:
    """The waits between tries while Redis is away: 50 ms, doubling, at most ``RETRY_CAP``.

    A try on a unix socket or a local port costs microseconds, so a short cap is cheap and lets
    every process resume within half a second of Redis coming back. The outage is logged once, on
    the first failure, and its end once.
    """

    def __init__(self, logger: logging.Logger, holding: str = "retrying") -> None:
        self.log = logger
        self.holding = holding  # what the process does meanwhile, for the log line
        self.delay = 0.0
        self.down = False

    def failed(self, error: BaseException) -> float:
        """Note a failed try; returns how long to wait before the next one."""
        self.delay = min(max(self.delay * 2, RETRY_FIRST), RETRY_CAP)
        if not self.down:
            self.log.warning("redis unavailable (%s); %s", error, self.holding)
            self.down = True
        return self.delay

    def succeeded(self) -> None:
        """Note a successful try: the outage, if there was one, is over."""
        if self.down:
            self.log.info("redis is reachable again")
            self.down = False
        self.delay = 0.0


def connect(dsn: str, retries: int = 3, timeout: float = COMMAND_TIMEOUT) -> redis.Redis:
    """A client for ``dsn`` (``redis://``, ``unix://`` or ``redis+sentinel://``) that retries brief
    faults itself (``retries`` times; 0 for an answer at once, e.g. to learn whether Redis is there).

    Its connections open within :data:`CONNECT_TIMEOUT` and give up on a reply after ``timeout``
    seconds (:data:`COMMAND_TIMEOUT`: longer than any blocking read of lambdalite's, which waits
    :data:`BLOCK_SLICE` at most and loops for a longer deadline).
    """
    return client_for(
        dsn,
        socket_connect_timeout=CONNECT_TIMEOUT,
        socket_timeout=timeout,
        health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=retries),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        parser_class=Parser,
        # No CLIENT SETINFO on each new connection: two round trips (refused by Redis before 7.2)
        # and a read of redis-py's package metadata; a new connection's PING took 1.1 ms, now 0.4.
        driver_info=None,
    )


def client_for(dsn: str, **options: Any) -> redis.Redis:
    """A redis-py client for ``dsn`` with connection ``options``; for ``redis+sentinel://`` (see
    :mod:`broker.redis_url`) a client of the primary its sentinels name, which follows a failover:
    each new connection asks the sentinels where the primary is, and a connection to a primary
    turned replica (``READONLY``) is dropped as a connection error, so a retry finds the new one.
    Raises ValueError for a malformed ``redis+sentinel://`` URL."""
    target = sentinel_target(dsn)
    if target is None:
        return redis.Redis.from_url(dsn, **options)
    timeout = options.get("socket_connect_timeout") or CONNECT_TIMEOUT
    sentinel = Sentinel(
        list(target.sentinels),
        # A sentinel that is down or cut off costs one connect timeout; the next one is asked.
        sentinel_kwargs={"socket_connect_timeout": timeout, "socket_timeout": timeout,
                         "password": target.sentinel_password, "driver_info": None},
    )
    primary: redis.Redis = sentinel.master_for(target.service, db=target.db, username=target.username,
                                               password=target.password, **options)
    return primary


REPLICATION_MARK = "lambdalite:replication-mark"  # one string, rewritten by every wait below


def wait_for_replicas(client: redis.Redis, replicas: int, timeout: float) -> None:
    """Block until ``replicas`` replicas have every write the primary applied so far (Redis
    ``WAIT``), at most ``timeout`` seconds; raises :class:`NotReplicated` when fewer did.

    ``WAIT`` waits for the writes of its own connection; a pooled client's next command may go out
    on another one, so this one first writes a mark of its own, after every write before it.
    """
    with client.pipeline(transaction=False) as pipe:
        pipe.set(REPLICATION_MARK, 1)
        pipe.execute_command("WAIT", replicas, max(1, round(timeout * 1000)))  # type: ignore[no-untyped-call]
        _, acknowledged = pipe.execute()
    if int(acknowledged) < replicas:
        raise NotReplicated(f"{acknowledged} of {replicas} replica(s) confirmed the write within {timeout:g} s")


_MULTI = hiredis.pack_command(("MULTI",))
_EXEC = hiredis.pack_command(("EXEC",))


def pack_transaction(commands: Sequence[Sequence[Any]]) -> bytes:
    """``commands`` (argument lists, as a redis-py pipeline records them) in MULTI/EXEC, packed
    for one write."""
    return b"".join((_MULTI, _pack(commands), _EXEC))


def _pack(commands: Sequence[Sequence[Any]]) -> bytes:
    return b"".join(hiredis.pack_command(tuple(c)) for c in commands)


def run(client: redis.Redis, commands: Sequence[Sequence[Any]],
        on_reply: Callable[[int, Any], None] | None = None) -> list[Any]:
    """Send ``commands`` (argument lists) in one write on a connection of ``client``'s pool and
    return every reply as Redis sent it, an error reply as its exception in place (redis-py's
    pipeline with ``raise_on_error=False``, retries of a lost connection included).

    The hot paths' round trips go this way: packed by hiredis in one go, and no reply through
    redis-py's per-command callbacks, they cost half of what the pipeline costs in the caller's CPU.
    ``on_reply(i, reply)``, if given, is told of each reply as soon as it is read.
    """
    return _send(client, _pack(commands), len(commands), on_reply)


def transact(client: redis.Redis, commands: Sequence[Sequence[Any]]) -> list[Any]:
    """:func:`run` ``commands`` in one MULTI/EXEC; returns EXEC's replies. As with redis-py's
    transaction pipeline, a command Redis refuses while queueing raises and nothing is applied,
    and a command that fails inside EXEC raises after the others were applied."""
    *queued, replies = _send(client, pack_transaction(commands), len(commands) + 2)
    for reply in queued:  # MULTI's OK, then QUEUED for each command, or why Redis refused it
        if isinstance(reply, redis.RedisError):
            raise reply
    if isinstance(replies, redis.RedisError):  # EXECABORT
        raise replies
    for reply in replies:
        if isinstance(reply, redis.RedisError):
            raise reply
    return list(replies)


def _send(client: redis.Redis, packed: bytes, count: int,
          on_reply: Callable[[int, Any], None] | None = None) -> list[Any]:
    pool = client.connection_pool
    conn: Any = pool.get_connection()
    try:
        replies: list[Any] = conn.retry.call_with_retry(lambda: _exchange(conn, packed, count, on_reply),
                                                         lambda _error: conn.disconnect())
    except BaseException:
        conn.disconnect()  # replies may be left unread: out of step, the connection must not serve again
        raise
    finally:
        pool.release(conn)
    return replies


def _exchange(conn: Any, packed: bytes, count: int, on_reply: Callable[[int, Any], None] | None) -> list[Any]:
    conn.send_packed_command([packed])
    replies: list[Any] = []
    for i in range(count):
        try:
            replies.append(conn.read_response())
        except redis.ResponseError as e:  # read whole: the connection stays in step
            replies.append(e)
        if on_reply is not None:
            on_reply(i, replies[-1])
    return replies


def wait_for_redis(
    client: redis.Redis,
    timeout: float | None = None,
    stop: Callable[[], bool] = lambda: False,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Block until ``client`` answers PING, with :class:`Backoff` between tries.

    Raises :class:`RedisUnavailableError` once ``timeout`` seconds pass (never, when None) or
    ``stop()`` turns true.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    backoff = Backoff(log, "waiting for it")
    while True:
        try:
            client.ping()
            backoff.succeeded()
            return
        except TRANSIENT as e:
            delay = backoff.failed(e)
            if stop() or (deadline is not None and time.monotonic() >= deadline):
                raise RedisUnavailableError(f"redis did not answer: {e}") from e
            sleep(delay)
