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

from broker import connection, quarantine, scripts
from broker.registry import Function
from broker.stats import alive_key

log = logging.getLogger("lambdalite.scaler")

_CENSUS = scripts.load("slots_census")  # broker/lua/slots_census.lua


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
        self._keys: dict[str, dict[str, str]] = {}

    def _call(self, fn: Function, queue: Queue, mine: int, take: bool) -> list[Any]:
        keys = self._keys.get(fn.name)
        if keys is None:  # RQ builds a registry object each time it names the registry's key
            keys = self._keys[fn.name] = {"slots": slots_key(fn.name), "queue": queue.key,
                                          "started": queue.started_job_registry.key}
        at = quarantine.stamp()
        asides = {f"{name}_aside": quarantine.aside(key, at) for name, key in keys.items()}
        return _CENSUS.command(keys={**keys, **asides},
                               args={**quarantine.move_args(), "scaler_id": self.scaler_id, "cap": cluster_cap(fn),
                                     "alive_prefix": alive_key(""), "take": int(take), "mine": mine})

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
            _CENSUS.load(self.client)
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
