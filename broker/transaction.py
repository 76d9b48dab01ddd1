"""A guarded transaction: a redis-py pipeline that moves aside, first, every key it writes that holds
another type (:mod:`broker.quarantine`), with no list of keys at the call site.

Redis decides which type a write needs: ``RPUSH`` a list, ``HSET`` a hash, ``ZADD`` a sorted set,
``XADD`` a stream, ``INCR`` a string (:data:`WRITES`). So a :class:`Transaction` learns each key's type
from the command that writes it, as the command is queued (by our code or by RQ's, through redis-py's
typed methods), and :meth:`Transaction.execute` puts one guard for all of them ahead of the commands,
in the same round trip. A key that only a script writes is declared by the helper that queues the
script (:meth:`Transaction.expect`). Commands that work on any type (``SET``, ``DEL``, ``EXPIRE``,
``PUBLISH``) need no guard.

``execute()`` returns the replies of the caller's commands only, and logs what the guard and the
commands' own scripts moved aside (:func:`broker.quarantine.report`). :meth:`Transaction.commands` gives the
guard and the commands as argument lists, for the packed round trips (:func:`broker.connection.transact`,
:class:`sources.http.transactor.Transactor`), whose caller passes the replies to
:func:`broker.quarantine.report`; :class:`broker.conditional.Conditional` runs the commands in its script
after guarding the keys of :attr:`Transaction.expected`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import redis
from redis.client import Pipeline

from broker import quarantine
from broker.redis_internals import RecordingPipeline, put_first, queued

_LIST = ("list", (1,))
_HASH = ("hash", (1,))
_SET = ("set", (1,))
_ZSET = ("zset", (1,))
_STREAM = ("stream", (1,))
_STRING = ("string", (1,))

#: Each write command that needs its key(s) of one type: the type, and where the keys are in its arguments.
WRITES: dict[str, tuple[str, tuple[int, ...]]] = {
    **dict.fromkeys(("LPUSH", "RPUSH", "LPUSHX", "RPUSHX", "LINSERT", "LSET", "LREM", "LTRIM", "LPOP", "RPOP"), _LIST),
    **dict.fromkeys(("LMOVE", "BLMOVE", "RPOPLPUSH", "BRPOPLPUSH"), ("list", (1, 2))),
    **dict.fromkeys(("HSET", "HSETNX", "HMSET", "HINCRBY", "HINCRBYFLOAT", "HDEL"), _HASH),
    **dict.fromkeys(("SADD", "SREM", "SPOP"), _SET),
    "SMOVE": ("set", (1, 2)),
    **dict.fromkeys(("ZADD", "ZINCRBY", "ZREM", "ZREMRANGEBYSCORE", "ZREMRANGEBYRANK", "ZREMRANGEBYLEX",
                     "ZPOPMIN", "ZPOPMAX"), _ZSET),
    **dict.fromkeys(("XADD", "XTRIM", "XDEL", "XACK"), _STREAM),
    **dict.fromkeys(("INCR", "INCRBY", "INCRBYFLOAT", "DECR", "DECRBY", "APPEND", "SETRANGE"), _STRING),
}

#: Each write command that takes a key of any type, and where its keys are (``()``: every argument).
ANY_TYPE: dict[str, tuple[int, ...]] = {
    **dict.fromkeys(("SET", "SETNX", "SETEX", "PSETEX", "GETSET", "GETDEL", "EXPIRE", "PEXPIRE", "EXPIREAT",
                     "PEXPIREAT", "PERSIST"), (1,)),
    **dict.fromkeys(("RENAME", "RENAMENX", "COPY"), (1, 2)),
    **dict.fromkeys(("DEL", "UNLINK"), ()),
}

_BY_NAME = {**WRITES, **{name.lower(): write for name, write in WRITES.items()}}
_ANY_BY_NAME = {**ANY_TYPE, **{name.lower(): keys for name, keys in ANY_TYPE.items()}}


class Transaction(RecordingPipeline):
    """A redis-py pipeline (MULTI/EXEC unless made with ``transaction=False``) whose writes are guarded.
    Make one with :func:`transaction`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.expected: dict[str, str] = {}
        self.others: dict[str, None] = {}  # keys written by commands of ANY_TYPE, in order

    def __enter__(self) -> Transaction:
        return self

    def queueing(self, args: tuple[Any, ...]) -> None:
        name = args[0]
        # Looked up as redis-py's typed methods name commands (no upper() on the hot path), else in capitals.
        write, any_type = _BY_NAME.get(name), _ANY_BY_NAME.get(name)
        if write is None and any_type is None and not (isinstance(name, str) and (name.isupper() or name.islower())):
            upper = command_name(name)
            write, any_type = WRITES.get(upper), ANY_TYPE.get(upper)
        if write is not None:
            kind, positions = write
            for i in positions:
                self._expect(_text(args[i]), kind)
        elif any_type is not None:
            for i in any_type or range(1, len(args)):
                self.others[_text(args[i])] = None

    def expect(self, keys: Mapping[str, str]) -> None:
        """Guard ``keys`` (key -> the type it must have) too: keys a script queued here writes.
        Raises ValueError for a key already expected to hold another type (two writes that cannot
        both succeed)."""
        for key, kind in keys.items():
            self._expect(key, kind)

    def _expect(self, key: str, kind: str) -> None:
        known = self.expected.setdefault(key, kind)
        if known != kind:
            raise ValueError(f"redis key {key} written as a {known} and as a {kind} in one transaction")

    def commands(self) -> list[tuple[Any, ...]]:
        """The guard (if any key needs one) and then the commands queued, as argument lists; the
        pipeline is left as it is."""
        if not self.expected:
            return queued(self)
        scratch = Pipeline(self.connection_pool, self.response_callbacks, False, None)
        quarantine.guard(scratch, self.expected)
        return queued(scratch) + queued(self)

    def execute(self, raise_on_error: bool = True, report: bool = True) -> list[Any]:
        """Execute the guard and the commands in one round trip; returns the commands' replies. What
        the guard moved is logged, one line per key, and so is what the commands' own scripts moved
        or reset (:func:`broker.quarantine.incr`, ...) unless not ``report`` (the caller tells of it).
        Raises as redis-py's pipeline does."""
        expected = self.expected
        guards = put_first(self, lambda pipe: quarantine.guard(pipe, expected)) if expected else 0
        replies: list[Any] = super().execute(raise_on_error)
        quarantine.report(replies if report else replies[:guards])
        return replies[guards:]

    def reset(self) -> None:  # type: ignore[override]  # the pipeline's reset, not the RESET command
        super().reset()
        self.expected = {}
        self.others = {}


def transaction(client: redis.Redis, transaction: bool = True) -> Transaction:
    """A :class:`Transaction` on ``client``'s connections (use it as a context manager, as
    ``client.pipeline()``); ``transaction=False`` for a plain pipeline, guarded all the same."""
    return Transaction(client.connection_pool, client.response_callbacks, transaction, None)


def _text(key: Any) -> str:
    if type(key) is str:
        return key
    return key.decode() if isinstance(key, bytes) else str(key)


def command_name(name: Any) -> str:
    """A command's name in capitals, as :data:`WRITES` and :data:`ANY_TYPE` spell it, whether given
    as a str or as bytes."""
    return _text(name).upper()
