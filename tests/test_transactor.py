"""The HTTP intake's transactions on the event loop (sources.http.transactor), against a real redis-server."""

from __future__ import annotations

import asyncio
import tempfile
import threading
from pathlib import Path

import pytest
import redis

from broker import scripts
from broker.connection import RedisRefusesWrites
from broker.redis_server.embedded import RedisServer
from sources.http.transactor import Transactor


def run(dsn: str, *batches: list[tuple[object, ...]]) -> list[list[object] | BaseException]:
    """Each batch in one transaction, on one Transactor; each batch's replies or its exception."""

    async def go() -> list[list[object] | BaseException]:
        transactor = Transactor(dsn, timeout=2)
        out: list[list[object] | BaseException] = []
        try:
            for batch in batches:
                try:
                    out.append(await transactor.execute(batch))
                except Exception as e:  # noqa: BLE001 - the test looks at it
                    out.append(e)
        finally:
            await transactor.close()
        return out

    return asyncio.run(go())


def test_a_transaction_applies_and_returns_its_replies(redis_url: str, r: redis.Redis) -> None:
    [replies] = run(redis_url, [("SET", "a", "1"), ("RPUSH", "l", "x", "y"), ("HSET", "h", "f", 2), ("GET", "a")])
    assert replies == [b"OK", 2, 1, b"1"]
    assert r.lrange("l", 0, -1) == [b"x", b"y"] and r.hget("h", "f") == b"2"


def test_an_error_inside_exec_is_a_reply_and_the_rest_applies(redis_url: str, r: redis.Redis) -> None:
    r.set("s", "text")
    [replies] = run(redis_url, [("RPUSH", "s", "x"), ("SET", "b", "2")])
    assert isinstance(replies[0], redis.ResponseError) and "WRONGTYPE" in str(replies[0])
    assert replies[1] == b"OK" and r.get("b") == b"2"


def test_a_command_refused_when_queued_aborts_the_whole_transaction(redis_url: str, r: redis.Redis) -> None:
    first, second = run(redis_url, [("SET", "c", "1"), ("NOSUCHCOMMAND", "x")], [("SET", "d", "1")])
    assert isinstance(first, redis.ResponseError) and "unknown command" in str(first).lower()
    assert r.get("c") is None, "nothing of an aborted transaction applies"
    assert second == [b"OK"] and r.get("d") == b"1", "the connection is still in step"


def test_database_and_password_of_the_url_are_used() -> None:
    server = RedisServer(Path(tempfile.mkdtemp(prefix="ll-tx-"))).start()
    try:
        admin = redis.Redis.from_url(server.url)
        admin.config_set("requirepass", "s3cret")
        url = server.url.replace("unix://", "unix://:s3cret@") + "?db=3"
        assert run(url, [("SET", "k", "v")]) == [[b"OK"]]
        check = redis.Redis.from_url(url)
        assert check.get("k") == b"v" and redis.Redis.from_url(url.replace("db=3", "db=0")).get("k") is None
        [refused] = run(server.url.replace("unix://", "unix://:wrong@"), [("SET", "k", "v")])
        assert isinstance(refused, redis.ConnectionError) and "refused" in str(refused)
    finally:
        server.stop()


def test_redis_gone_and_back(redis_url: str) -> None:
    server = RedisServer(Path(tempfile.mkdtemp(prefix="ll-tx-"))).start()

    async def go() -> list[object]:
        transactor = Transactor(server.url, timeout=2, connect_timeout=0.5)
        seen: list[object] = [await transactor.execute([("INCR", "n")])]
        server.stop()
        with pytest.raises(redis.ConnectionError):
            await transactor.execute([("INCR", "n")])
        server.start()
        await asyncio.sleep(0.1)
        # the connection was dropped: the first transaction after the restart goes through
        seen.append(await transactor.execute([("INCR", "n")]))
        await transactor.close()
        return seen

    try:
        assert asyncio.run(go()) == [[1], [1]]  # no AOF in this server: counted again from 0
    finally:
        server.stop()


def test_a_stale_connection_is_replaced_before_it_is_used() -> None:
    server = RedisServer(Path(tempfile.mkdtemp(prefix="ll-tx-"))).start()

    async def go() -> list[object]:
        transactor = Transactor(server.url, timeout=2)
        seen: list[object] = [await transactor.execute([("CLIENT", "SETNAME", "intake")])]
        admin = redis.Redis.from_url(server.url)
        admin.client_kill_filter(skipme=True, _type="normal")  # Redis closes it while it is idle
        await asyncio.sleep(0.1)
        seen.append(await transactor.execute([("SET", "k", "v")]))
        await transactor.close()
        return seen

    try:
        assert asyncio.run(go()) == [[b"OK"], [b"OK"]]
    finally:
        server.stop()


def test_misconf_is_redis_refusing_writes(redis_url: str, r: redis.Redis) -> None:
    """A full disk (MISCONF) is treated as an outage, as broker.connection's parser does."""
    from sources.http.transactor import _error

    error = _error(redis.ResponseError("MISCONF Errors writing to the AOF file: No space left on device"))
    assert isinstance(error, RedisRefusesWrites)
    assert _error(b"OK") is None


def test_no_answer_in_time_is_a_timeout_and_the_connection_is_dropped(redis_url: str, r: redis.Redis) -> None:
    busy_for = scripts.load("busy", Path(__file__).with_name("lua"))
    busy = threading.Thread(target=busy_for, args=(redis.Redis.from_url(redis_url), {}, {"microseconds": 600_000}))

    async def go() -> list[object]:
        transactor = Transactor(redis_url, timeout=0.3)
        busy.start()  # Redis answers nobody for 0.6 s
        await asyncio.sleep(0.05)
        with pytest.raises(redis.TimeoutError):
            await transactor.execute([("SET", "during", "1")])
        # a fresh connection: the late reply to the first is never taken for this one's
        after = await transactor.execute([("GET", "during"), ("SET", "after", "1")])
        await transactor.close()
        return after

    try:
        assert asyncio.run(go()) == [b"1", b"OK"]
    finally:
        busy.join()
    assert r.get("after") == b"1"
