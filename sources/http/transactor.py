"""MULTI/EXEC transactions on the event loop: one asyncio connection, packed and parsed by hiredis.

The HTTP source stores each batch of accepted events in one transaction (:mod:`sources.http.intake`).
Through redis-py's blocking client that needs a thread, and handing each batch to it and back
costs the server more than the writes; redis-py's asyncio pipeline costs more than the blocking
one. So the intake records a batch's commands on a pipeline it never executes
(:func:`broker.conditional.recorded`) and gives them to :meth:`Transactor.execute`, which writes
them in one packet (``hiredis.pack_command``) and reads the replies with ``hiredis.Reader``.

The connection honours the URL as every other client does (:func:`broker.connection.endpoint`):
password, user name, database, TLS with the URL's ``ssl_*`` options (``rediss://``), Sentinel.
With a ``redis+sentinel://`` URL each new connection asks the sentinels where the primary is, and a
``READONLY`` reply (a primary since turned replica) drops the connection as a connection error.

Errors are those of redis-py: ``redis.ConnectionError`` or ``redis.TimeoutError`` when Redis is
unreachable or slow (the connection is then dropped, and the next transaction connects afresh),
:class:`broker.connection.RedisRefusesWrites` for ``MISCONF``, ``redis.ResponseError`` for a
transaction Redis refused whole.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

import hiredis
import redis

from broker.connection import NotReplicated, Parser, endpoint, pack_transaction
from broker.redis_url import SentinelTarget


def _error(reply: Any) -> Exception | None:
    """The exception redis-py would raise for ``reply``, or None when it is not an error."""
    if isinstance(reply, redis.ResponseError):
        return Parser.parse_error(str(reply))
    return None


class Transactor:
    """Runs transactions on one connection to the Redis of ``dsn``; one at a time (the intake's
    flusher is its only caller). Close with :meth:`close`."""

    def __init__(self, dsn: str, timeout: float = 5.0, connect_timeout: float = 1.0, wait_replicas: int = 0,
                 wait_timeout: float = 1.0) -> None:
        # with wait_replicas, each transaction is followed on its connection by WAIT (Redis's): it
        # counts once that many replicas have it (broker.connection.wait_for_replicas)
        self.wait_replicas = wait_replicas
        self.wait_timeout = wait_timeout
        self.endpoint = endpoint(dsn)  # as every other client of every process reads the URL
        self.sentinel: SentinelTarget | None = self.endpoint.sentinel
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._reader = hiredis.Reader(replyError=redis.ResponseError)

    async def execute(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Run ``commands`` (argument lists, as a redis-py pipeline records them) in one MULTI/EXEC;
        returns EXEC's replies, an error reply there as a ``redis.ResponseError`` in the list (as
        redis-py's ``raise_on_error=False`` does; the other commands were applied)."""
        packed = pack_transaction(commands)
        count = len(commands) + 2
        if self.wait_replicas:
            wait: tuple[Any, ...] = ("WAIT", self.wait_replicas, max(1, round(self.wait_timeout * 1000)))
            packed += hiredis.pack_command(wait)
            count += 1
        try:
            async with asyncio.timeout(self.timeout):  # no task of its own, as wait_for makes
                replies = await self._exchange(packed, count)
        except TimeoutError:
            await self.close()  # its reply may still come: this connection is out of step
            raise redis.TimeoutError(f"redis did not answer within {self.timeout:.1f} s") from None
        except (OSError, EOFError, hiredis.ProtocolError) as e:
            await self.close()
            raise redis.ConnectionError(f"redis connection lost: {e}") from e
        except BaseException:
            await self.close()
            raise
        if self.wait_replicas:
            acknowledged = replies.pop()
            if isinstance(acknowledged, int) and acknowledged < self.wait_replicas and _error(replies[-1]) is None:
                raise NotReplicated(f"{acknowledged} of {self.wait_replicas} replica(s) confirmed the write "
                                    f"within {self.wait_timeout:g} s")
        for reply in replies[:-1]:  # MULTI's OK, then QUEUED for each command or why it was refused
            error = _error(reply)
            if isinstance(error, redis.ReadOnlyError) and self.sentinel is not None:
                await self.close()  # a primary turned replica: the next transaction asks the sentinels again
                raise redis.ConnectionError(f"redis is a replica now: {error}")
            if error is not None:
                raise error  # EXEC then aborts: nothing was applied
        error = _error(replies[-1])
        if error is not None:
            raise error
        result: list[Any] = replies[-1]
        if any(isinstance(r, redis.ResponseError) for r in result):
            return [_error(r) or r for r in result]
        return result

    async def _exchange(self, packed: bytes, count: int) -> list[Any]:
        if self._streams is not None and (self._streams[0].at_eof() or self._streams[1].is_closing()):
            await self.close()  # closed by Redis while idle (a restart): Redis has seen nothing of this
        if self._streams is None:
            self._streams = await self._connect()
        stream_reader, writer = self._streams
        writer.write(packed)
        return await self._replies(stream_reader, count)

    async def _replies(self, stream_reader: asyncio.StreamReader, count: int) -> list[Any]:
        replies: list[Any] = []
        while len(replies) < count:
            reply = self._reader.gets()
            if reply is False:
                data = await stream_reader.read(65536)
                if not data:
                    raise EOFError("closed by redis")
                self._reader.feed(data)
                continue
            replies.append(reply)
        return replies

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        where = self.endpoint
        try:
            if self.sentinel is not None:
                host, port = await self._primary(self.sentinel)
                opened = asyncio.open_connection(host, port)
            elif where.path is not None:
                opened = asyncio.open_unix_connection(where.path)
            else:
                opened = asyncio.open_connection(where.host, where.port, ssl=where.tls)
            stream_reader, writer = await asyncio.wait_for(opened, self.connect_timeout)
        except (TimeoutError, OSError) as e:
            raise redis.ConnectionError(f"cannot connect to redis: {e!r}") from e
        self._reader = hiredis.Reader(replyError=redis.ResponseError)  # nothing left of a lost one
        hello = where.login()
        if hello:
            writer.write(b"".join(hiredis.pack_command(c) for c in hello))
            try:
                errors = [e for e in map(_error, await self._replies(stream_reader, len(hello))) if e]
            except BaseException:
                writer.close()
                raise
            if errors:
                writer.close()
                raise redis.ConnectionError(f"redis refused the connection: {errors[0]}")
        return stream_reader, writer

    async def _primary(self, target: SentinelTarget) -> tuple[str, int]:
        """The primary's address as the first sentinel that answers names it."""
        problems: list[str] = []
        for host, port in target.sentinels:
            try:
                stream_reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port),
                                                               self.connect_timeout)
            except (TimeoutError, OSError) as e:
                problems.append(f"{host}:{port}: {e!r}")
                continue
            try:
                asks: list[tuple[Any, ...]] = [("SENTINEL", "get-master-addr-by-name", target.service)]
                if target.sentinel_password:
                    asks.insert(0, ("AUTH", target.sentinel_password))
                writer.write(b"".join(hiredis.pack_command(c) for c in asks))
                self._reader = hiredis.Reader(replyError=redis.ResponseError)
                async with asyncio.timeout(self.connect_timeout):
                    address = (await self._replies(stream_reader, len(asks)))[-1]
            except (TimeoutError, OSError, EOFError, hiredis.ProtocolError) as e:
                problems.append(f"{host}:{port}: {e!r}")
                continue
            finally:
                writer.close()
            if isinstance(address, list) and len(address) == 2:
                return address[0].decode(), int(address[1])
            problems.append(f"{host}:{port}: {address!r}")
        raise redis.ConnectionError(f"no sentinel names the primary of {target.service!r}: {'; '.join(problems)}")

    async def close(self) -> None:
        if self._streams is not None:
            writer = self._streams[1]
            self._streams = None
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
