"""broker.connection's run and transact: one write, every reply read, against a real redis-server."""

from __future__ import annotations

import time

import redis

from broker.connection import connect, run, transact


def test_run_returns_every_reply_and_errors_in_place(redis_url: str, r: redis.Redis) -> None:
    client = connect(redis_url)
    r.set("s", "text")
    replies = run(client, [("SET", "a", 1), ("RPUSH", "s", "x"), ("NOSUCHCOMMAND",), ("GET", "a")])
    assert replies[0] == b"OK" and replies[3] == b"1"
    assert isinstance(replies[1], redis.ResponseError) and "WRONGTYPE" in str(replies[1])
    assert isinstance(replies[2], redis.ResponseError) and "unknown command" in str(replies[2]).lower()
    assert run(client, [("PING",)]) == [b"PONG"], "the connection is still in step"


def test_transact_applies_all_and_returns_exec_replies(redis_url: str, r: redis.Redis) -> None:
    client = connect(redis_url)
    assert transact(client, [("SET", "a", "1"), ("RPUSH", "l", "x", "y"), ("HINCRBY", "h", "f", 2)]) == [b"OK", 2, 2]
    assert r.lrange("l", 0, -1) == [b"x", b"y"] and r.hget("h", "f") == b"2"


def test_transact_refused_while_queueing_applies_nothing(redis_url: str, r: redis.Redis) -> None:
    client = connect(redis_url)
    try:
        transact(client, [("SET", "c", "1"), ("NOSUCHCOMMAND", "x")])
        raise AssertionError("an unknown command aborts the transaction")
    except redis.ResponseError as e:
        assert "unknown command" in str(e).lower()
    assert r.get("c") is None, "nothing of an aborted transaction applies"
    assert transact(client, [("SET", "d", "1")]) == [b"OK"], "the connection is still in step"


def test_transact_raises_a_failure_inside_exec_after_the_rest_applied(redis_url: str, r: redis.Redis) -> None:
    client = connect(redis_url)
    r.set("s", "text")
    try:
        transact(client, [("RPUSH", "s", "x"), ("SET", "b", "2")])
        raise AssertionError("WRONGTYPE inside EXEC raises, as redis-py's pipeline does")
    except redis.ResponseError as e:
        assert "WRONGTYPE" in str(e)
    assert r.get("b") == b"2"


def test_a_connection_redis_closed_while_idle_is_replaced(redis_url: str, r: redis.Redis) -> None:
    client = connect(redis_url)
    assert run(client, [("CLIENT", "SETNAME", "idle-one")]) == [b"OK"]
    r.client_kill_filter(skipme=True, _type="normal")  # Redis closes it while it is idle
    assert transact(client, [("INCR", "n")]) == [1]
    assert run(client, [("GET", "n")]) == [b"1"], "applied once"


def test_a_connection_left_mid_reply_is_not_used_again(redis_url: str, r: redis.Redis) -> None:
    client = connect(redis_url)

    def leave(i: int, reply: object) -> None:
        if i == 0:
            raise KeyboardInterrupt  # as an interrupt would, while BLMOVE still blocks

    try:
        run(client, [("PING",), ("BLMOVE", "src", "dst", "LEFT", "RIGHT", 5)], on_reply=leave)
        raise AssertionError("the interrupt goes through")
    except KeyboardInterrupt:
        pass
    # Had the pool handed that connection out again, the LPUSH would queue behind the blocked
    # BLMOVE on it and wait out its 5 s.
    began = time.monotonic()
    assert run(client, [("LPUSH", "src", "x")]) == [1]
    assert time.monotonic() - began < 2, "not held up behind the abandoned BLMOVE"
    assert r.lrange("src", 0, -1) == [b"x"] and r.llen("dst") == 0, "no BLMOVE left blocked to move it"
