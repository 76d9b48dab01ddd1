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
from redis.commands.core import Script

from broker import quarantine
from broker.redis_internals import queued
from broker.transaction import Transaction, transaction

# KEYS: the keys to guard; ARGV[i]: the type KEYS[i] must have; then quarantine.script_args() (4 values);
# then the number of condition arguments and the arguments; then each command as its length and
# its words. Returns {1 or 0 (applied), what the guard moved, the condition's value}.
_BODY = """
local n = #KEYS
local i = n + 5
local nc = tonumber(ARGV[i])
local c = {}
for j = 1, nc do c[j] = ARGV[i + j] end
i = i + nc + 1
local ok, value = check(c)
if not ok then return {0, {}, value or {}} end
local moved = {}
for k, key in ipairs(KEYS) do move(key, ARGV[k], n, moved) end
while i <= #ARGV do
  local argc = tonumber(ARGV[i])
  redis.call(unpack(ARGV, i + 1, i + argc))
  i = i + argc + 1
end
return {1, moved, value or {}}
"""


_SCRIPTS = frozenset({"EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO", "FCALL", "FCALL_RO"})


@contextmanager
def recorded(client: redis.Redis) -> Iterator[Transaction]:
    """A guarded transaction (:mod:`broker.transaction`) to queue commands on for :meth:`Conditional.run`
    or a packed round trip (:meth:`Transaction.commands`); it is never executed."""
    with transaction(client, transaction=False) as pipe:
        yield pipe


class Conditional:
    """A condition and the writes it allows, run as one atomic script.

    ``check`` is the body of a Lua function of ``c`` (the condition arguments) that returns
    whether to apply the writes, and optionally a value (a table) handed back to the caller
    either way: ``return redis.call('EXISTS', c[1]) == 1``.
    """

    def __init__(self, check: str) -> None:
        self.text = quarantine.MOVE_FUNCTION + "local function check(c)\n" + check + "\nend\n" + _BODY
        self._script: Script | None = None

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
        keys = list(expected)
        args: list[Any] = [*expected.values(), *quarantine.script_args(), len(condition), *condition]
        for command in queued(writes):
            if str(command[0]).upper() in _SCRIPTS:
                raise ValueError(f"{command[0]} cannot run inside a script: queue plain commands")
            args.append(len(command))
            args.extend(command)
        if self._script is None:
            self._script = client.register_script(self.text)  # EVALSHA, loaded again after NOSCRIPT
        applied, moved, value = self._script(keys=keys, args=args, client=client)
        quarantine.report([moved])
        return applied == 1, value
