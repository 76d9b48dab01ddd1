"""Writes that apply only if what Redis holds allows them, in one round trip.

A MULTI/EXEC transaction cannot make its writes depend on what a key holds, and WATCH costs a
round trip more (read, then transact). A :class:`Conditional` is one Lua script, atomic like a
transaction: it runs a condition written in Lua, and only if that holds, moves aside the keys of
the wrong type (the guard of :mod:`broker.quarantine`) and runs the commands that the caller
queued on a redis-py pipeline it never executed (see :func:`recorded`).

Nothing is applied when the condition fails, when a write is refused (Redis refuses the first
write of a script it cannot persist, ``MISCONF``) or on any error before the first write.

Every key the script touches is in its KEYS, as Redis asks of scripts: the guarded keys (written
with a command that needs one type), the keys the condition reads, and the keys written by commands
any type takes (``SET``, ``DEL``, ``EXPIRE``: :data:`broker.transaction.ANY_TYPE`). A command whose
keys lambdalite cannot name is refused before anything is sent.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import redis

from broker import quarantine, scripts
from broker.errors import ScriptError
from broker.redis_internals import queued
from broker.transaction import ANY_TYPE, WRITES, Transaction, command_name, transaction

_SCRIPTS = frozenset({"EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO", "FCALL", "FCALL_RO"})
_KEYLESS = frozenset({"PUBLISH"})  # the writes that name no key


@contextmanager
def recorded(client: redis.Redis) -> Iterator[Transaction]:
    """A guarded transaction (:mod:`broker.transaction`) to queue commands on for :meth:`Conditional.run`
    or a packed round trip (:meth:`Transaction.commands`); it is never executed."""
    with transaction(client, transaction=False) as pipe:
        yield pipe


class Conditional:
    """A condition and the writes it allows, run as one atomic script.

    ``script`` is a script of ``broker/lua/`` that includes ``move`` and ``conditional`` and returns
    ``conditional(KEYS, ARGV, check)``, where ``check(r, c)`` (``r``: the keys the condition reads,
    ``c``: its other arguments) returns whether to apply the writes, and optionally a value (a table)
    handed back to the caller either way. Its header declares KEYS ``keys`` and ARGV
    ``quarantine_keep``, ``quarantine_mark``, ``layout`` (see broker/lua/manifest_unpublished.lua).
    """

    def __init__(self, script: scripts.Lua) -> None:
        names = ([s.name for s in script.header.keys], [s.name for s in script.header.args])
        if names != (["keys"], ["quarantine_keep", "quarantine_mark", "layout"]):
            raise ScriptError(f"script {script.name} is not a condition: its header declares KEYS {names[0]}, "
                              f"ARGV {names[1]}")
        self.script = script

    def run(self, client: redis.Redis, reads: Sequence[str], condition: Sequence[Any],
            writes: Transaction) -> tuple[bool, list[Any]]:
        """Apply the commands queued on ``writes`` if the condition holds on the keys ``reads`` and the
        arguments ``condition``, first moving aside each key they write that holds another type
        (reported in the log, as :func:`broker.quarantine.report` does); returns whether they were
        applied and the condition's value. Raises redis errors, and ValueError for a command that
        cannot run in a script or whose keys are not known.

        As with redis-py's transactions, a reply lost to a broken connection makes the very same
        script go again: its writes must be harmless the second time, or its condition must fail
        once they are applied (then the second answer is "not applied", though the first applied).
        """
        expected = writes.expected
        layout: list[Any] = [len(expected), len(reads), *expected.values(), len(condition), *condition]
        for command in queued(writes):
            name = command_name(command[0])
            if name in _SCRIPTS:
                raise ValueError(f"{command[0]} cannot run inside a script: queue plain commands")
            if name not in WRITES and name not in ANY_TYPE and name not in _KEYLESS:
                raise ValueError(f"{command[0]}: a conditional write names its keys to Redis, and lambdalite "
                                 "does not know where this command's keys are")
            layout.append(len(command))
            layout.extend(command)
        others = [key for key in writes.others if key not in expected]
        keys = [*quarantine.guarded(expected, quarantine.stamp()), *reads, *others]
        applied, moved, value = self.script(  # EVALSHA, loaded again after NOSCRIPT
            client, keys={"keys": keys}, args={**quarantine.move_args(), "layout": layout})
        quarantine.report([moved])
        return applied == 1, value
