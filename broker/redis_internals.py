"""Every use lambdalite makes of redis-py beyond its documented client API, in one place.

Mirrors redis-py 8.2 (hiredis 3). Each piece says what it buys; ``tests/test_redis_internals.py`` runs
redis-py's own code beside ours for each, so a redis-py release that changes one fails there first.

- :class:`Parser` subclasses redis-py's reply parser (``redis.connection.DefaultParser``, which is the
  private ``_HiredisParser`` when hiredis is installed, as the lock has it): a ``MISCONF`` reply (Redis
  cannot write its append-only file) becomes :class:`RedisRefusesWrites`, a connection error, so every
  process rides out a full disk as it rides out an outage, without a check at each call site.
- :func:`queued` reads a pipeline's recorded commands (``Pipeline.command_stack``, undocumented): the
  HTTP intake and the worker's end of a job write them packed in one go on their own connection
  (:func:`exchange`, :class:`sources.http.transactor.Transactor`) and :class:`broker.conditional.Conditional`
  passes them to a Lua script, so the commands are built by redis-py's typed methods (and RQ's code)
  and sent our way.
- :class:`RecordingPipeline` is told of each command as it is queued (it overrides the pipeline's
  ``pipeline_execute_command``, where redis-py's typed methods and RQ's code queue every command) and
  :func:`put_first` moves commands to the front of a pipeline's stack: :class:`broker.transaction.Transaction`
  learns the type of each key it writes from the command that writes it, and guards them all first.
- :func:`exchange` sends packed bytes on a pooled connection and reads the replies raw
  (``Connection.send_packed_command``, ``read_response``, ``retry``): half the caller's CPU of a
  redis-py pipeline for the hot paths' round trips (bench/redis_client.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis
from redis.client import Pipeline
from redis.connection import DefaultParser


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


def queued(pipe: Pipeline) -> list[tuple[Any, ...]]:
    """The commands queued on ``pipe`` so far, each as its argument list (``("HSET", key, ...)``), in
    order; the pipeline is left as it is."""
    return [tuple(args) for args, _options in pipe.command_stack]


class RecordingPipeline(Pipeline):
    """A redis-py pipeline that calls :meth:`queueing` with each command's arguments as it is queued."""

    def pipeline_execute_command(self, *args: Any, **options: Any) -> Pipeline:
        self.queueing(args)
        return super().pipeline_execute_command(*args, **options)

    def queueing(self, args: tuple[Any, ...]) -> None:
        """Told of each command queued (its arguments, the command's name first)."""


def put_first(pipe: Pipeline, queue: Callable[[Pipeline], None]) -> int:
    """Queue on ``pipe`` what ``queue(pipe)`` queues, ahead of every command queued before; returns
    how many commands it queued (their replies come first)."""
    before = len(pipe.command_stack)
    queue(pipe)
    added = pipe.command_stack[before:]
    del pipe.command_stack[before:]
    pipe.command_stack[:0] = added
    return len(added)


def exchange(client: redis.Redis, packed: bytes, count: int,
             on_reply: Callable[[int, Any], None] | None = None) -> list[Any]:
    """Write ``packed`` (``count`` commands) on a connection of ``client``'s pool and read ``count``
    replies as Redis sent them, an error reply as its exception in place; a lost connection is retried
    as ``client``'s retry policy says. ``on_reply(i, reply)`` is told of each reply as it is read."""
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
