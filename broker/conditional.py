"""Writes that apply only if what Redis holds allows them, in one round trip.

A MULTI/EXEC transaction cannot make its writes depend on what a key holds, and WATCH costs a
round trip more (read, then transact). A :class:`Conditional` is one Lua script, atomic like a
transaction: it runs a condition written in Lua, and only if that holds, moves aside the keys of
the wrong type (the guard of :mod:`broker.quarantine`) and runs the commands that the caller
queued on a redis-py pipeline it never executed (see :func:`recorded`).

Nothing is applied when the condition fails, when a write is refused (Redis refuses the first
write of a script it cannot persist, ``MISCONF``) or on any error before the first write.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import redis

from broker import quarantine, scripts
from broker.errors import ScriptError
from broker.redis_internals import queued
from broker.transaction import Transaction, transaction

_SCRIPTS = frozenset({"EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO", "FCALL", "FCALL_RO"})


@contextmanager
def recorded(client: redis.Redis) -> Iterator[Transaction]:
    """A guarded transaction (:mod:`broker.transaction`) to queue commands on for :meth:`Conditional.run`
    or a packed round trip (:meth:`Transaction.commands`); it is never executed."""
    with transaction(client, transaction=False) as pipe:
        yield pipe


class Conditional:
    """A condition and the writes it allows, run as one atomic script.

    ``script`` is a script of ``broker/lua/`` that includes ``move`` and ``conditional`` and returns
    ``conditional(KEYS, ARGV, check)``, where ``check(c)`` (``c``: the condition arguments) returns
    whether to apply the writes, and optionally a value (a table) handed back to the caller either
    way. Its header declares KEYS ``guarded`` and ARGV ``quarantine_keep``, ``quarantine_mark``,
    ``layout`` (see broker/lua/manifest_unpublished.lua).
    """

    def __init__(self, script: scripts.Lua) -> None:
        names = ([s.name for s in script.header.keys], [s.name for s in script.header.args])
        if names != (["guarded"], ["quarantine_keep", "quarantine_mark", "layout"]):
            raise ScriptError(f"script {script.name} is not a condition: its header declares KEYS {names[0]}, "
                              f"ARGV {names[1]}")
        self.script = script

    def run(self, client: redis.Redis, condition: Sequence[Any], writes: Transaction) -> tuple[bool, list[Any]]:
        """Apply the commands queued on ``writes`` if the condition on ``condition`` holds, first moving
        aside each key they write that holds another type (reported in the log, as
        :func:`broker.quarantine.report` does); returns whether they were applied and the condition's
        value. Raises redis errors.

        As with redis-py's transactions, a reply lost to a broken connection makes the very same
        script go again: its writes must be harmless the second time, or its condition must fail
        once they are applied (then the second answer is "not applied", though the first applied).
        """
        expected = writes.expected
        layout: list[Any] = [*expected.values(), len(condition), *condition]
        for command in queued(writes):
            if str(command[0]).upper() in _SCRIPTS:
                raise ValueError(f"{command[0]} cannot run inside a script: queue plain commands")
            layout.append(len(command))
            layout.extend(command)
        applied, moved, value = self.script(  # EVALSHA, loaded again after NOSCRIPT
            client, keys={"guarded": quarantine.guarded(expected, quarantine.stamp())},
            args={**quarantine.move_args(), "layout": layout})
        quarantine.report([moved])
        return applied == 1, value
