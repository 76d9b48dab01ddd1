"""broker.transaction: a write through a Transaction to a key of another type is guarded (the key is
moved aside first, in the same round trip) with no list of keys at the call site, on a real redis-server."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer

from broker import scripts
from broker.connection import connect, transact
from broker.quarantine import PREFIX, report
from broker.transaction import WRITES, Transaction, transaction

SADD_X = scripts.load("sadd_x", Path(__file__).with_name("lua"))


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = connect(redis_url)
    yield c
    c.close()


def _asides(r: redis.Redis, key: str) -> list[bytes]:
    return sorted(r.scan_iter(f"{PREFIX}{key}:*"))


def test_a_new_write_to_a_damaged_key_is_guarded(client: redis.Redis, r: redis.Redis,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    r.set("queue", "a foreign value")
    r.rpush("counts", "not a hash")
    r.hset("fine", "f", "1")
    with caplog.at_level(logging.WARNING), transaction(client) as t:
        t.rpush("queue", "job-1")
        t.hincrby("counts", "n", 2)
        t.hset("fine", "g", "2")
        t.set("plain", "any type is overwritten")
        t.publish("channel", "hello")
        assert t.expected == {"queue": "list", "counts": "hash", "fine": "hash"}
        replies = t.execute()
    assert replies == [1, 2, 1, True, 0], "the commands' replies only: the guard's is logged"
    assert r.lrange("queue", 0, -1) == [b"job-1"] and r.hget("counts", "n") == b"2"
    assert r.hgetall("fine") == {b"f": b"1", b"g": b"2"}, "a key of the right type is left as it is"
    [queue_aside] = _asides(r, "queue")
    assert r.get(queue_aside) == b"a foreign value" and 0 < r.ttl(queue_aside) <= 7 * 24 * 3600
    [counts_aside] = _asides(r, "counts")
    assert r.lrange(counts_aside, 0, -1) == [b"not a hash"]
    assert _asides(r, "fine") == []
    lines = [rec.getMessage() for rec in caplog.records]
    assert any("redis key queue holds a string, not a list; moved to " in line for line in lines), lines
    assert any("redis key counts holds a list, not a hash; moved to " in line for line in lines), lines


def test_rq_s_own_writes_through_it_are_guarded(client: redis.Redis, r: redis.Redis) -> None:
    job = Job.create("broker.queues.run", id="guarded-1", connection=client)
    r.rpush(job.key, "not a job hash")
    with transaction(client) as t:
        job.save(pipeline=t)
        assert t.expected.get(job.key.decode() if isinstance(job.key, bytes) else job.key) == "hash"
        t.execute()
    assert Job.fetch("guarded-1", connection=client).func_name == "broker.queues.run"
    assert len(_asides(r, "rq:job:guarded-1")) == 1


def test_its_commands_carry_the_guard_for_a_packed_round_trip(client: redis.Redis, r: redis.Redis) -> None:
    r.hset("list-key", "f", "v")
    with transaction(client) as t:
        t.lpush("list-key", "x")
        t.zadd("scores", {"m": 1})
        commands = t.commands()
        assert len(t) == 2, "the pipeline is left as it was"
    assert commands[0][0] == "EVAL" and [c[0] for c in commands[1:]] == ["LPUSH", "ZADD"]
    replies = transact(client, commands)
    assert report(replies) and replies[1:] == [1, 1]
    assert r.lrange("list-key", 0, -1) == [b"x"] and r.zscore("scores", "m") == 1.0


def test_nothing_to_guard_sends_no_guard(client: redis.Redis, r: redis.Redis) -> None:
    with transaction(client, transaction=False) as t:
        t.set("a", 1)
        t.expire("a", 60)
        t.get("a")
        assert t.expected == {} and [c[0] for c in t.commands()] == ["SET", "EXPIRE", "GET"]
        assert t.execute() == [True, True, b"1"]


def test_script_writes_are_declared_by_their_helper_and_conflicts_refused(client: redis.Redis,
                                                                        r: redis.Redis) -> None:
    r.set("by-script", "text")
    with transaction(client) as t:
        SADD_X.queue(t, keys={"set": "by-script"}, args={})  # EVAL
        t.expect({"by-script": "set"})
        assert t.execute() == [1]
    assert r.smembers("by-script") == {b"x"}
    with transaction(client) as t:
        t.rpush("k", "x")
        with pytest.raises(ValueError, match="written as a list and as a hash"):
            t.hset("k", "f", "v")


def test_every_write_command_named_is_one_redis_knows(r: redis.Redis) -> None:
    known = {name.upper() for name in r.command()}  # COMMAND: what this redis-server has
    assert set(WRITES) <= known, set(WRITES) - known
    assert issubclass(Transaction, redis.client.Pipeline)


def test_every_pipeline_of_lambdalite_s_clients_is_guarded(client: redis.Redis, r: redis.Redis) -> None:
    """connect()'s clients hand out Transactions: a new call site, or RQ's own code on our connection,
    is guarded without knowing of it."""
    assert isinstance(client.pipeline(), Transaction) and isinstance(client.pipeline(transaction=False), Transaction)
    r.set("rq:queues", "a foreign value")
    job = Queue("guarded", connection=client, serializer=JSONSerializer).enqueue("broker.queues.run", 1)
    assert r.smembers("rq:queues") == {b"rq:queue:guarded"} and r.lrange("rq:queue:guarded", 0, -1) == [
        job.id.encode()]
    assert len(_asides(r, "rq:queues")) == 1
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):  # what a plain redis-py client does
        r.set("rq:queues", "a foreign value")
        Queue("plain", connection=r, serializer=JSONSerializer).enqueue("broker.queues.run", 1)


def test_a_write_is_known_whatever_the_case_or_type_of_its_name(client: redis.Redis) -> None:
    """Redis takes a command's name in any case, as text or bytes; so does the guard."""
    t = transaction(client)
    t.execute_command("rpush", "lower", "x")
    t.execute_command("HSet", "mixed", "f", "1")
    t.execute_command(b"ZADD", b"bytes", 1, "m")
    t.execute_command("XADD", "upper", "*", "f", "v")
    t.execute_command("expire", "lower", 5)
    assert t.expected == {"lower": "list", "mixed": "hash", "bytes": "zset", "upper": "stream"}
    t.reset()
