"""Pruning: the bounds of the Redis stores that no TTL bounds, kept by the scaler every few seconds.

lambdalite's workers replace RQ's work loop, so RQ's maintenance pass (``clean_registries``), which
drops expired members of a queue's registries, never runs. RQ 3.0 scores a member of its finished
and failed registries (``rq:finished:<queue>``, ``rq:failed:<queue>``) and of its canceled one with
the time its job hash expires; the hash goes by itself, the member stays for ever. :func:`prune`
removes such members in batches (a Lua script per batch, a bounded number of batches a pass), so a
registry is at most one pass interval (``LAMBDALITE_PRUNE_INTERVAL``, 15 s) behind its scores.

Two stores have no lifetime of their own and get a cap instead:

- the failed registry keeps the newest ``LAMBDALITE_FAILED_JOBS_KEPT`` jobs of each function
  (RQ keeps a failed job 7 days): older ones go with their job hash, result stream and
  execution registry;
- the dead letters (``lambdalite:dlq:<function>``, a hash) keep the newest
  ``LAMBDALITE_DEAD_LETTERS_KEPT`` of each function: when a function has more, the oldest are
  dropped down to nine tenths of the cap, with one log line saying how many.

A scaler killed without a word leaves its view of each function (``lambdalite:scaler:<function>``):
views of scalers whose liveness key has gone are dropped on the same pass.

RQ's started registry is left to :mod:`workers.recovery` (its members belong to running jobs
until their worker dies), and RQ's deferred and scheduled registries are not written by
lambdalite (no job depends on another; retries wait in ``lambdalite:delayed``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import redis

from broker import deadletter, quarantine, rqlayout, scripts, stats
from broker.queues import function_of_queue
from broker.settings import Settings

log = logging.getLogger(__name__)

BATCH = 500  # members a script call looks at: a few ms of Redis's time, never a long block
MAX_BATCHES = 200  # script calls a pass makes per registry at most (100,000 members); the next pass goes on
DLQ_SLACK = 0.9  # a dead-letter store over its cap is cut to this share of it, not trimmed on every pass

_PRUNE = scripts.load("registry_prune")  # broker/lua/registry_prune.lua


@dataclass
class Pass:
    """What one pruning pass removed, per key (members of registries, dead letters)."""

    removed: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.removed.values())


def registries(queue_name: str) -> list[tuple[str, bool]]:
    """The keys of ``queue_name``'s registries that :func:`prune` keeps, each with whether the
    failed-jobs cap applies to it."""
    name = queue_name
    return [(rqlayout.finished_key(name), False), (rqlayout.failed_key(name), True),
            (rqlayout.canceled_key(name), False)]


class Pruner:
    """Prunes RQ's registries of every lambdalite queue and caps the dead letters; :meth:`step` is
    called by the scaler's loop and runs a pass when ``interval`` seconds have gone by."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.client = client
        self.failed_jobs_kept = settings.failed_jobs_kept
        self.dead_letters_kept = settings.dead_letters_kept
        self.interval = settings.prune_interval
        self._last = -1e18
        self._prefixes = {"job_prefix": rqlayout.JOB_PREFIX, "result_prefix": rqlayout.RESULTS_PREFIX,
                          "executions_prefix": rqlayout.EXECUTIONS_PREFIX}

    def step(self, now: float) -> Pass | None:
        """Run a pass if one is due at ``now`` (a monotonic clock's seconds); returns it, else None."""
        if now - self._last < self.interval:
            return None
        self._last = now
        return self.prune(time.time())

    def queues(self) -> list[str]:
        """The names of lambdalite's queues that RQ knows of (``rq:queues``), also those of functions
        no longer in lambdalite.toml: their registries expire the same way."""
        try:
            keys = cast("set[bytes]", self.client.smembers(rqlayout.QUEUES_KEY))
        except redis.ResponseError as e:
            if quarantine.wrong_type(e):
                return []  # the publish that meets it moves it aside
            raise
        prefix = rqlayout.QUEUE_PREFIX
        names = (k.decode(errors="replace").removeprefix(prefix) for k in keys)
        return sorted(n for n in names if function_of_queue(n) is not None)

    def prune(self, epoch: float) -> Pass:
        """One pass at ``epoch`` (seconds since the epoch): every registry of every lambdalite queue,
        then every function's dead letters. Raises redis errors (the scaler's loop rides them out)."""
        started = time.monotonic()
        done = Pass()
        names = self.queues()
        for name in names:
            for key, capped in registries(name):
                removed = self.prune_registry(key, epoch, self.failed_jobs_kept if capped else -1)
                if removed:
                    done.removed[key] = removed
        for function in (function_of_queue(n) for n in names):
            if function is None:
                continue
            dropped = self.cap_dead_letters(function)
            if dropped:
                done.removed[deadletter.dlq_key(function)] = dropped
            gone = self.drop_dead_views(function)
            if gone:
                done.removed[stats.scaler_key(function)] = gone
        done.seconds = time.monotonic() - started
        if done.total:
            log.debug("pruned %d entries in %.3f s: %s", done.total, done.seconds, done.removed)
        return done

    def prune_registry(self, key: str, epoch: float, cap: int = -1) -> int:
        """Remove ``key``'s members that expired by ``epoch``, and beyond ``cap`` (-1: none) its oldest
        with their jobs, a batch a round trip; returns how many went."""
        removed = 0
        for _ in range(MAX_BATCHES):
            aside = quarantine.aside(key, quarantine.stamp())
            reply = _PRUNE(self.client, keys={"registry": key, "registry_aside": aside},
                           args={**quarantine.move_args(), "now": epoch, "batch": BATCH, "cap": cap, **self._prefixes})
            expired, over, moved = int(reply[0]), int(reply[1]), reply[3]
            quarantine.report([moved])
            removed += expired + over
            if expired < BATCH and over < BATCH:
                break
        return removed

    def cap_dead_letters(self, function: str) -> int:
        """Drop the oldest dead letters of ``function`` beyond the cap (down to nine tenths of it);
        returns how many were dropped. A hash of other entries counts them as oldest (no time)."""
        key = deadletter.dlq_key(function)
        try:
            size = int(self.client.hlen(key))
        except redis.ResponseError as e:
            if quarantine.wrong_type(e):
                return 0  # the next dead letter's guard moves it aside
            raise
        if size <= self.dead_letters_kept:
            return 0
        keep = max(1, int(self.dead_letters_kept * DLQ_SLACK))
        ages = sorted(_times(self.client.hscan_iter(key, count=1000)), key=lambda item: item[1])
        drop = [entry_id for entry_id, _at in ages[: max(0, len(ages) - keep)]]
        for i in range(0, len(drop), BATCH):
            self.client.hdel(key, *drop[i:i + BATCH])
        if drop:
            log.warning("%s: %d dead letter(s) over LAMBDALITE_DEAD_LETTERS_KEPT=%d; the %d oldest dropped",
                        function, size - self.dead_letters_kept, self.dead_letters_kept, len(drop))
        return len(drop)


    def drop_dead_views(self, function: str) -> int:
        """Drop the views (``lambdalite:scaler:<function>``) of scalers whose liveness key is gone: a
        scaler stopped cleanly removes its own, one killed leaves it; returns how many went. A scaler
        only paused past its liveness writes its view again at its next step."""
        key = stats.scaler_key(function)
        try:
            ids = cast("list[bytes]", self.client.hkeys(key))
        except redis.ResponseError as e:
            if quarantine.wrong_type(e):
                return 0  # the next scaler's write moves it aside
            raise
        if not ids:
            return 0
        with self.client.pipeline(transaction=False) as pipe:
            for scaler_id in ids:
                pipe.exists(stats.alive_key(scaler_id.decode(errors="replace")))
            alive = pipe.execute()
        dead = [scaler_id for scaler_id, live in zip(ids, alive, strict=True) if not live]
        if dead:
            self.client.hdel(key, *dead)
        return len(dead)


def _times(entries: Iterable[tuple[Any, Any]]) -> Iterable[tuple[bytes, float]]:
    """(entry id, when it was parked) for each dead letter; one that cannot be read counts as oldest."""
    for entry_id, raw in entries:
        try:
            at = json.loads(raw).get("at", 0)
            yield entry_id, float(at) if isinstance(at, int | float) else 0.0
        except (ValueError, AttributeError):
            yield entry_id, 0.0
