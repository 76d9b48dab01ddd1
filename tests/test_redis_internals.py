"""Contract tests of broker.redis_internals: redis-py's own code run beside each internal we use, so a
redis-py release that changes one of them fails here, against a real redis-server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hiredis
import pytest
import redis
from redis.client import Pipeline
from redis.connection import Connection, DefaultParser

from broker import scripts
from broker.connection import connect, run, transact
from broker.redis_internals import Parser, RedisRefusesWrites, queued

INCRBY = scripts.load("incrby", Path(__file__).with_name("lua"))
MISCONF_REPLY = scripts.load("misconf", Path(__file__).with_name("lua"))

ERRORS = [
    "WRONGTYPE Operation against a key holding the wrong kind of value",
    "ERR unknown command 'NOSUCH', with args beginning with: ",
    "NOSCRIPT No matching script. Please use EVAL.",
    "READONLY You can't write against a read only replica.",
    "NOAUTH Authentication required.",
    "WRONGPASS invalid username-password pair or user is disabled.",
    "EXECABORT Transaction discarded because of previous errors.",
    "BUSY Redis is busy running a script.",
    "OOM command not allowed when used memory > 'maxmemory'.",
    "LOADING Redis is loading the dataset in memory",
    "NOPERM this user has no permissions to run the 'get' command",
]
MISCONF = [
    "MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist to disk.",
    "ERR Error running script (call to f_0123): @user_script:1: -MISCONF Errors writing to the AOF file",
]


def test_the_parser_is_redis_pys_own_but_for_misconf() -> None:
    assert DefaultParser.__name__ == "_HiredisParser", "the lock installs hiredis: redis-py parses with it"
    for reply in ERRORS:
        ours, theirs = Parser.parse_error(reply), DefaultParser.parse_error(reply)
        assert type(ours) is type(theirs) and str(ours) == str(theirs), reply
    for reply in MISCONF:
        error = Parser.parse_error(reply)
        assert isinstance(error, RedisRefusesWrites) and isinstance(error, redis.ConnectionError), reply
        assert not isinstance(DefaultParser.parse_error(reply), redis.ConnectionError), "what ours adds"


def test_the_parser_on_redis_pys_connections(redis_url: str) -> None:
    ours, theirs = connect(redis_url, retries=0), redis.Redis.from_url(redis_url)
    try:
        with pytest.raises(RedisRefusesWrites):
            MISCONF_REPLY(ours, keys={}, args={})
        with ours.pipeline(transaction=True) as pipe:
            pipe.set("a", 1)
            MISCONF_REPLY.queue(pipe, keys={}, args={})
            ok, error = pipe.execute(raise_on_error=False)  # an error reply inside EXEC, parsed as well
            assert ok is True and isinstance(error, RedisRefusesWrites)
        with pytest.raises(redis.ResponseError) as by_redis_py:
            MISCONF_REPLY(theirs, keys={}, args={})
        assert not isinstance(by_redis_py.value, redis.ConnectionError)
        theirs.set("s", "text")
        for client in (ours, theirs):
            with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
                client.rpush("s", "x")
        assert ours.ping() and ours.get("a") == b"1", "the connection stays in step after each"
    finally:
        ours.close()
        theirs.close()


def _writes(pipe: Pipeline, prefix: str) -> None:
    """Commands as lambdalite's writers queue them, through redis-py's typed methods."""
    pipe.hset(f"{prefix}:h", mapping={"a": 1, "b": 2.5, "c": b"\x00\xff"})
    pipe.set(f"{prefix}:s", "v", ex=100)
    pipe.zadd(f"{prefix}:z", {"m": 1.25, "n": 3})
    pipe.xadd(f"{prefix}:x", {"f": "v"}, maxlen=5, approximate=True)
    pipe.rpush(f"{prefix}:l", "one", 2)
    pipe.sadd(f"{prefix}:set", "x", "y")
    pipe.hincrby(f"{prefix}:h", "a", 4)
    INCRBY.queue(pipe, keys={"counter": f"{prefix}:n"}, args={"by": 3})  # EVAL


def _held(r: redis.Redis, prefix: str) -> dict[str, Any]:
    return {"h": r.hgetall(f"{prefix}:h"), "s": r.get(f"{prefix}:s"), "ttl": r.ttl(f"{prefix}:s") > 0,
            "z": r.zrange(f"{prefix}:z", 0, -1, withscores=True), "x": [f for _, f in r.xrange(f"{prefix}:x")],
            "l": r.lrange(f"{prefix}:l", 0, -1), "set": r.smembers(f"{prefix}:set"), "n": r.get(f"{prefix}:n")}


def test_queued_commands_are_what_redis_py_sends(redis_url: str, r: redis.Redis) -> None:
    client = connect(redis_url)
    try:
        with client.pipeline(transaction=True) as theirs:
            _writes(theirs, "a")
            commands = queued(theirs)
            # what redis-py's pipeline would write on the wire, byte for byte, is what hiredis packs of ours
            assert b"".join(Connection().pack_commands(commands)) == b"".join(map(hiredis.pack_command, commands))
            theirs.execute()
        assert [c[0] for c in commands] == ["HSET", "SET", "ZADD", "XADD", "RPUSH", "SADD", "HINCRBY", "EVAL"]
        with client.pipeline(transaction=True) as ours:
            _writes(ours, "b")
            assert len(ours) == 8
            transact(client, queued(ours))
            assert len(ours) == 8, "reading the commands leaves the pipeline as it was"
        assert _held(r, "a") == _held(r, "b")
        assert _held(r, "a")["h"][b"a"] == b"5" and _held(r, "a")["n"] == b"3"
    finally:
        client.close()


def test_raw_replies_are_redis_pys_without_its_callbacks(redis_url: str, r: redis.Redis) -> None:
    client = connect(redis_url)
    try:
        r.set("s", "text")
        commands: list[tuple[Any, ...]] = [("RPUSH", "l", "x", "y"), ("LRANGE", "l", 0, -1), ("GET", "s"),
                                           ("INCR", "s"), ("HINCRBY", "h", "f", 2), ("GET", "none")]
        ours = run(client, commands)
        r.delete("l", "h")
        with r.pipeline(transaction=False) as pipe:
            for command in commands:
                pipe.execute_command(*command)
            theirs = pipe.execute(raise_on_error=False)
        assert len(ours) == len(theirs)
        for mine, redis_pys in zip(ours, theirs, strict=True):
            if isinstance(redis_pys, Exception):
                assert type(mine) is type(redis_pys) and str(mine) == str(redis_pys)
            else:
                assert mine == redis_pys
    finally:
        client.close()
