"""``max_concurrency`` across every scaler sharing one Redis: a count of each function's workers
that a Lua script keeps.

One hash per function (:func:`slots_key`) holds each scaler's count of its workers. A scaler takes
one more slot before it forks a worker, in the same script that counts every live scaler's, so two
scalers never both take the last one. Each step rewrites the scaler's own count from the workers
it has, so a lost or damaged count heals itself; the counts of scalers whose liveness key expired
are dropped.
"""

from __future__ import annotations

import logging
from typing import Any

import redis

from broker.registry import Function
from broker.stats import alive_key

log = logging.getLogger("lambdalite.scaler")

# Count a function's workers across every live scaler, and with ARGV[4] == "1" take one more slot
# if that stays within the cap. This scaler's own count is set to ARGV[5], the workers it has (so
# the count heals itself if it was lost or damaged); the slots of scalers whose liveness key
# expired are dropped, and so is a count that is not one (returned, for the log).
_SLOTS = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[5] then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[5])
end
local total = tonumber(ARGV[5])
local bad = {}
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  if fields[i] ~= ARGV[1] then
    local alive = redis.call('EXISTS', ARGV[3] .. fields[i]) == 1
    local count = string.match(fields[i + 1], '^%d+$') and #fields[i + 1] < 10
    if alive and count then
      total = total + tonumber(fields[i + 1])
    else
      redis.call('HDEL', KEYS[1], fields[i])
      if alive then
        table.insert(bad, fields[i])
        table.insert(bad, string.sub(fields[i + 1], 1, 40))
      end
    end
  end
end
if ARGV[4] == "1" and total < tonumber(ARGV[2]) then
  redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
  return {total + 1, 1, bad}
end
return {total, 0, bad}
"""


def slots_key(function: str) -> str:
    return f"lambdalite:slots:{function}"


class Slots:
    """One scaler's side of the count: its id, and the host's worker cap that bounds each function's."""

    def __init__(self, client: redis.Redis, scaler_id: str, max_workers: int) -> None:
        self.scaler_id = scaler_id
        self.max_workers = max_workers
        self._script = client.register_script(_SLOTS)

    def _args(self, fn: Function, mine: int, take: bool) -> list[Any]:
        return [self.scaler_id, fn.concurrency(self.max_workers), alive_key(""), int(take), mine]

    def count(self, pipe: Any, fn: Function, mine: int) -> None:
        """Queue in ``pipe`` the count of ``fn``'s workers, ``mine`` of them this scaler's; the
        reply is ``[total, 0, bad]``, ``bad`` for :func:`report`."""
        self._script(keys=[slots_key(fn.name)], args=self._args(fn, mine, take=False), client=pipe)

    def take(self, fn: Function, mine: int) -> tuple[int, int]:
        """(workers of ``fn`` across live scalers, whether one more slot was taken)."""
        total, taken, bad = self._script(keys=[slots_key(fn.name)], args=self._args(fn, mine, take=True))
        report(fn.name, bad)
        return int(total), int(taken)


def report(function: str, bad: list[bytes]) -> None:
    """Log the counts of other scalers that the script dropped for not being numbers."""
    for scaler_id, value in zip(bad[0::2], bad[1::2], strict=True):
        log.warning("redis key %s: the count of scaler %s was %r, not a number of workers; dropped",
                    slots_key(function), scaler_id.decode(errors="replace"), value.decode(errors="replace"))
