"""``max_concurrency`` across every scaler sharing one Redis: a count of each function's workers
that a Lua script keeps.

One hash per function (:func:`slots_key`) holds each scaler's count of its workers. A scaler takes
one more slot before it forks a worker, in the same script that counts every live scaler's, so two
scalers never both take the last one. Each step rewrites the scaler's own count from the workers
it has, so a lost or damaged count heals itself; the counts of scalers whose liveness key expired
are dropped. The same script reads the function's queued and running jobs: a step's census of
every function is one round trip.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import redis
from redis.exceptions import NoScriptError
from rq.queue import Queue

from broker import connection, quarantine
from broker.registry import Function
from broker.stats import alive_key

log = logging.getLogger("lambdalite.scaler")

# KEYS: the function's slots hash, queue (a list) and started registry (a sorted set). ARGV: this
# scaler's id, the cap, the prefix of liveness keys, "1" to take a slot, this scaler's workers; then
# quarantine.script_args(). A key of the wrong type is moved aside first (see broker.quarantine).
# Counts the function's workers across every live scaler, and with ARGV[4] == "1" takes one more
# slot if that stays within the cap. This scaler's own count is set to ARGV[5], the workers it has
# (so the count heals itself if it was lost or damaged); the slots of scalers whose liveness key
# expired are dropped, and so is a count that is not one (returned, for the log). Returns
# {workers, taken, bad counts, queued, running, what the guard moved}: one call is a function's
# whole census for a scaling step.
_CENSUS = quarantine.MOVE_FUNCTION + """
local moved = {}
move(KEYS[1], 'hash', 5, moved)
move(KEYS[2], 'list', 5, moved)
move(KEYS[3], 'zset', 5, moved)
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
local taken = 0
if ARGV[4] == "1" and total < tonumber(ARGV[2]) then
  redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
  total, taken = total + 1, 1
end
return {total, taken, bad, redis.call('LLEN', KEYS[2]), redis.call('ZCARD', KEYS[3]), moved}
"""


@dataclass(frozen=True, slots=True)
class Census:
    """One function as a step sees it: workers across live scalers, jobs queued and running."""

    workers: int
    taken: bool
    queued: int
    running: int


NO_CAP = 1 << 30  # a function without max_concurrency: only each host's LAMBDALITE_MAX_WORKERS bounds it


def cluster_cap(fn: Function) -> int:
    """The most workers ``fn`` may have across every scaler sharing the Redis: its
    ``max_concurrency``; without one, each host's own cap is the only bound."""
    return fn.max_concurrency or NO_CAP


def slots_key(function: str) -> str:
    return f"lambdalite:slots:{function}"


class Slots:
    """One scaler's side of the count: its id, and the host's worker cap that bounds each function's."""

    def __init__(self, client: redis.Redis, scaler_id: str, max_workers: int) -> None:
        self.client = client
        self.scaler_id = scaler_id
        self.max_workers = max_workers
        self.sha = client.register_script(_CENSUS).sha  # computed here; loaded on first use
        self._keys: dict[str, list[str]] = {}

    def _call(self, fn: Function, queue: Queue, mine: int, take: bool) -> list[Any]:
        keys = self._keys.get(fn.name)
        if keys is None:  # RQ builds a registry object each time it names the registry's key
            keys = self._keys[fn.name] = [slots_key(fn.name), queue.key, queue.started_job_registry.key]
        return ["EVALSHA", self.sha, len(keys), *keys, self.scaler_id, cluster_cap(fn),
                alive_key(""), int(take), mine, *quarantine.script_args()]

    def census(self, fns: list[tuple[Function, Queue, int]]) -> list[Census]:
        """Each function's census in one round trip: ``fns`` holds (function, its queue, this
        scaler's workers of it). Raises redis errors."""
        replies = self._run([self._call(fn, queue, mine, take=False) for fn, queue, mine in fns])
        return [self._read(fn.name, reply) for (fn, _, _), reply in zip(fns, replies, strict=True)]

    def take(self, fn: Function, queue: Queue, mine: int) -> Census:
        """Take one more slot of ``fn`` if its ``max_concurrency`` allows; :attr:`Census.taken` says
        whether it did."""
        return self._read(fn.name, self._run([self._call(fn, queue, mine, take=True)])[0])

    def _run(self, calls: list[list[Any]]) -> list[Any]:
        """Run census ``calls``, loading the script first if Redis lost it (a restart): a call that
        found no script did nothing, so they all run again."""
        replies = connection.run(self.client, calls)
        if any(isinstance(r, NoScriptError) for r in replies):
            self.client.script_load(_CENSUS)
            replies = connection.run(self.client, calls)
        for r in replies:
            if isinstance(r, Exception):
                raise r
        return replies

    @staticmethod
    def _read(function: str, reply: list[Any]) -> Census:
        total, taken, bad, queued, running, moved = reply
        quarantine.report([moved])
        report(function, bad)
        return Census(int(total), bool(taken), int(queued), int(running))


def report(function: str, bad: list[bytes]) -> None:
    """Log the counts of other scalers that the script dropped for not being numbers."""
    for scaler_id, value in zip(bad[0::2], bad[1::2], strict=True):
        log.warning("redis key %s: the count of scaler %s was %r, not a number of workers; dropped",
                    slots_key(function), scaler_id.decode(errors="replace"), value.decode(errors="replace"))
