"""Connecting to Redis: every process waits for it at start and rides out outages with backoff."""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import hiredis
import redis
from redis.backoff import ExponentialBackoff
from redis.connection import SSLConnection, parse_url
from redis.retry import Retry
from redis.sentinel import Sentinel

from broker.errors import RedisUnavailableError

# Parser and RedisRefusesWrites are redis-py internals' (see broker.redis_internals); named here too,
# where every process looks for its connection's pieces.
from broker.redis_internals import Parser as Parser
from broker.redis_internals import RedisRefusesWrites as RedisRefusesWrites
from broker.redis_internals import exchange
from broker.redis_url import SentinelTarget, sentinel_target
from broker.transaction import Transaction

log = logging.getLogger(__name__)


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


def connect(dsn: str, retries: int = 3, timeout: float = COMMAND_TIMEOUT, *,
            connect_timeout: float = CONNECT_TIMEOUT, retry: Retry | None = None) -> redis.Redis:
    """A client for ``dsn`` (``redis://``, ``rediss://``, ``unix://`` or ``redis+sentinel://``, with its
    password, user name, database and TLS options) that retries brief faults itself (``retries`` times;
    0 for an answer at once, e.g. to learn whether Redis is there), or as ``retry`` says.

    Its connections open within ``connect_timeout`` (:data:`CONNECT_TIMEOUT`) and give up on a reply
    after ``timeout`` seconds (:data:`COMMAND_TIMEOUT`: longer than any blocking read of lambdalite's,
    which waits :data:`BLOCK_SLICE` at most and loops for a longer deadline). Every synchronous client
    of every process is made here; the asyncio one reads the same URL through :func:`endpoint`.
    Raises ValueError for a malformed URL.
    """
    options: dict[str, Any] = {"retry": retry}
    if retry is None:
        options = {"retry": Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=retries),
                   "retry_on_error": [redis.ConnectionError, redis.TimeoutError]}
    return client_for(
        dsn,
        socket_connect_timeout=connect_timeout,
        socket_timeout=timeout,
        health_check_interval=30,
        parser_class=Parser,
        # No CLIENT SETINFO on each new connection: two round trips (refused by Redis before 7.2)
        # and a read of redis-py's package metadata; a new connection's PING took 1.1 ms, now 0.4.
        driver_info=None,
        **options,
    )


class Client(redis.Redis):
    """redis-py's client whose pipelines are guarded transactions (:class:`broker.transaction.Transaction`):
    every pipeline of every process, lambdalite's and RQ's code on lambdalite's connections alike, first
    moves aside each key it writes that holds another type, with nothing to list at the call site."""

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Transaction:
        return Transaction(self.connection_pool, self.response_callbacks, transaction, shard_hint)


def client_for(dsn: str, **options: Any) -> redis.Redis:
    """A :class:`Client` for ``dsn`` with connection ``options``; for ``redis+sentinel://`` (see
    :mod:`broker.redis_url`) a client of the primary its sentinels name, which follows a failover:
    each new connection asks the sentinels where the primary is, and a connection to a primary
    turned replica (``READONLY``) is dropped as a connection error, so a retry finds the new one.
    Raises ValueError for a malformed ``redis+sentinel://`` URL."""
    target = sentinel_target(dsn)
    if target is None:
        return Client.from_url(dsn, **options)
    timeout = options.get("socket_connect_timeout") or CONNECT_TIMEOUT
    sentinel = Sentinel(
        list(target.sentinels),
        # A sentinel that is down or cut off costs one connect timeout; the next one is asked.
        sentinel_kwargs={"socket_connect_timeout": timeout, "socket_timeout": timeout,
                         "password": target.sentinel_password, "driver_info": None},
    )
    primary: redis.Redis = sentinel.master_for(target.service, redis_class=Client, db=target.db,
                                               username=target.username, password=target.password, **options)
    return primary


@dataclass(frozen=True)
class Endpoint:
    """Where the Redis of a URL is and how to log in to it, for a client that is not redis-py's
    blocking one (:class:`sources.http.transactor.Transactor`). Read from the URL by redis-py's own
    parser, as :func:`connect` reads it, so both clients honour the same options."""

    path: str | None = None  # a unix socket's
    host: str = "localhost"
    port: int = 6379
    username: str | None = None
    password: str | None = None
    db: int = 0
    tls: ssl.SSLContext | None = None  # built by redis-py from the URL's ssl_* options, for rediss://
    sentinel: SentinelTarget | None = None  # ask these where the primary is (then host and port are unused)

    def login(self) -> list[tuple[Any, ...]]:
        """The commands a new connection sends first, as redis-py's sends them: AUTH, SELECT."""
        commands: list[tuple[Any, ...]] = []
        if self.username or self.password:
            commands.append(("AUTH", self.username, self.password) if self.username else ("AUTH", self.password))
        if self.db:
            commands.append(("SELECT", self.db))
        return commands


def endpoint(dsn: str) -> Endpoint:
    """The :class:`Endpoint` of ``dsn``; raises ValueError for a malformed URL or a TLS option that
    redis-py's asyncio client does not take."""
    target = sentinel_target(dsn)
    if target is not None:
        return Endpoint(username=target.username, password=target.password, db=target.db, sentinel=target)
    options: dict[str, Any] = parse_url(dsn)  # type: ignore[no-untyped-call]
    tls = None
    if options.get("connection_class") is SSLConnection:
        # redis-py's asyncio connection builds the context, with the defaults of its blocking one
        # (certificate and host name checked unless the URL says otherwise); imported only here, as
        # no other process needs redis.asyncio
        from redis.asyncio.connection import SSLConnection as AsyncSSLConnection

        settings = {k: v for k, v in options.items() if k.startswith("ssl_")}
        try:
            tls = AsyncSSLConnection(**settings).ssl_context.get()
        except TypeError as e:
            raise ValueError(f"TLS option not supported by the HTTP source's client: {e}") from e
    return Endpoint(path=options.get("path"), host=options.get("host", "localhost"), port=options.get("port", 6379),
                    username=options.get("username"), password=options.get("password"), db=options.get("db", 0),
                    tls=tls)


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
    return exchange(client, _pack(commands), len(commands), on_reply)


def transact(client: redis.Redis, commands: Sequence[Sequence[Any]]) -> list[Any]:
    """:func:`run` ``commands`` in one MULTI/EXEC; returns EXEC's replies. As with redis-py's
    transaction pipeline, a command Redis refuses while queueing raises and nothing is applied,
    and a command that fails inside EXEC raises after the others were applied."""
    *queued, replies = exchange(client, pack_transaction(commands), len(commands) + 2)
    for reply in queued:  # MULTI's OK, then QUEUED for each command, or why Redis refused it
        if isinstance(reply, redis.RedisError):
            raise reply
    if isinstance(replies, redis.RedisError):  # EXECABORT
        raise replies
    for reply in replies:
        if isinstance(reply, redis.RedisError):
            raise reply
    return list(replies)


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
