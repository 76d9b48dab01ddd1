"""Keys of lambdalite's that hold what lambdalite cannot use: reported in one log line, moved aside.

Every key lambdalite (or RQ, for lambdalite) writes has one Redis type. A key of another type (a
foreign program's value, a mistake by hand) makes each write to it fail with WRONGTYPE, and inside
a MULTI/EXEC the transaction's other commands would still apply: a queue push could fail while the
source's cursor moved on. So every write goes through a :class:`broker.transaction.Transaction`,
which queues :func:`guard` at the start of the transaction for every key its commands write: a key
of the wrong type is renamed to ``lambdalite:quarantine:<key>:<ms>`` (kept 7 days for a look) in
the same transaction, and the writes after it go to a fresh key. Scripts guard the keys they are
given themselves (``include: move``). A counter goes through :func:`incr`, which also resets a
field that is not a count. Readers that meet WRONGTYPE call :func:`repair`. :func:`report` logs one
line per key moved or field reset that a transaction's replies tell of (the Transaction calls it).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import redis

from broker import scripts

log = logging.getLogger(__name__)

PREFIX = "lambdalite:quarantine:"
KEEP = 7 * 24 * 3600  # seconds a moved-aside value is kept
_MARK = "lambdalite:quarantined"
_MOVE_ARGS: Mapping[str, Any] = MappingProxyType({"quarantine_keep": KEEP, "quarantine_mark": _MARK})

# The scripts of this module; other modules' scripts include the guard (broker/lua/lib/move.lua).
_GUARD = scripts.load("quarantine_guard")
_INCR = scripts.load("quarantine_incr")
_SET_ASIDE = scripts.load("quarantine_set_aside")


def stamp() -> int:
    """The stamp of the asides named now (milliseconds since the epoch)."""
    return int(time.time() * 1000)


def aside(key: str, at: int) -> str:
    """Where the guard moves ``key`` if it holds another type: ``lambdalite:quarantine:<key>:<at>``."""
    return f"{PREFIX}{key}:{at}"


def move_args() -> Mapping[str, Any]:
    """The ARGV of a script that includes the guard (``include: move``): ``quarantine_keep`` and
    ``quarantine_mark``."""
    return _MOVE_ARGS


def derive_args(at: int) -> dict[str, Any]:
    """The ARGV with which a script names the aside of a key it derives from data
    (``aside_of(prefix, stamp, key)`` in broker/lua/lib/move.lua)."""
    return {"quarantine_prefix": PREFIX, "quarantine_stamp": at}


def guarded(expected: Mapping[str, str], at: int) -> list[str]:
    """KEYS for a list of guarded keys: each key of ``expected`` and its aside, in pairs."""
    return [k for key in expected for k in (key, aside(key, at))]


def guard(pipe: Any, expected: Mapping[str, str]) -> None:
    """Queue on ``pipe`` the move-aside of every key in ``expected`` whose type is not the one given
    (``"list"``, ``"hash"``, ``"set"``, ``"zset"``, ``"stream"`` or ``"string"``); absent keys are fine."""
    if expected:
        _GUARD.queue(pipe, keys={"guarded": guarded(expected, stamp())},
                     args={**move_args(), "types": list(expected.values())})


def incr(pipe: Any, key: str, field: str, n: int = 1) -> None:
    """Queue ``HINCRBY key field n`` on ``pipe``, first moving aside a ``key`` that is not a hash
    and dropping a ``field`` that is not a non-negative count (it is counted again from 0)."""
    at = stamp()
    _INCR.queue(pipe, keys={"hash": key, "hash_aside": aside(key, at)},
                args={**move_args(), "field": field, "increment": n})


def set_aside(pipe: Any, key: str, problem: str) -> None:
    """Queue on ``pipe`` the move-aside of ``key`` (if it exists), whatever its type; ``problem`` says
    what is wrong with it (``"is not a job RQ can read"``) for :func:`report`."""
    _SET_ASIDE.queue(pipe, keys={"key": key, "aside": aside(key, stamp())}, args={**move_args(), "problem": problem})


def report(replies: Iterable[Any], quiet: bool = False) -> list[tuple[str, str, str]]:
    """Log one line for each key moved aside or counter reset that ``replies`` (a pipeline's
    results) tell of (unless ``quiet``: the caller tells of it); returns ``(key, problem, action)``
    for each."""
    found = []
    for reply in replies:
        if not (isinstance(reply, list) and reply and reply[0] in (_MARK, _MARK.encode())):
            continue
        items = [x.decode(errors="replace") if isinstance(x, bytes) else str(x) for x in reply[1:]]
        for key, problem, action in zip(items[0::3], items[1::3], items[2::3], strict=True):
            if not quiet:
                log.warning("redis key %s %s; %s", key, problem, action)
            found.append((key, problem, action))
    return found


def repair(client: redis.Redis, expected: Mapping[str, str]) -> list[tuple[str, str, str]]:
    """Move aside now, with one log line each, the keys of ``expected`` of another type; returns
    what was moved (see :func:`report`)."""
    if not expected:
        return []
    moved = _GUARD(client, keys={"guarded": guarded(expected, stamp())},
                   args={**move_args(), "types": list(expected.values())})
    return report([moved])


def wrong_type(error: BaseException) -> bool:
    """Whether ``error`` is Redis's WRONGTYPE reply."""
    return isinstance(error, redis.ResponseError) and "WRONGTYPE" in str(error)


def hmget_each(client: redis.Redis, keys: Sequence[str], fields: Sequence[str]) -> list[list[Any] | None]:
    """``HMGET key fields`` for each of ``keys`` in one round trip; None for a key that is not a hash
    (the caller says what it makes of that). Other errors raise."""
    with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.hmget(key, list(fields))
        replies = pipe.execute(raise_on_error=False)
    out: list[list[Any] | None] = []
    for reply in replies:
        if isinstance(reply, Exception):
            if not wrong_type(reply):
                raise reply
            reply = None
        out.append(reply)
    return out


def describe(client: redis.Redis, key: str, expected: str) -> str:
    """``"KEY holds a string, not a list"``, for a key a read-only command cannot use."""
    found = client.type(key)
    text = found.decode() if isinstance(found, bytes) else str(found)
    return f"{key} holds a {text}, not a {expected}"
