"""Each function's recent history in fixed-size buckets: what the console graphs, bounded, in Redis.

One hash per function (``lambdalite:history:<function>``) holds two rings of buckets: one a minute
wide for the last hour (fields ``m0`` .. ``m59``) and one five minutes wide for the last day
(``d0`` .. ``d287``). A bucket is one field, its figures packed as comma-separated integers
(:data:`FIELDS`, then :data:`BINS` counts of durations on a log scale,
as big-endian 32-bit integers, saturated: Lua's ``struct`` packs and unpacks them at C speed). Its first figure is the
second its window starts: a write that finds an older window there starts the bucket afresh. The
first write makes all 348 fields at once, empty, so the hash has its full size (96 KB) from
then on, whatever traffic goes by, like a round-robin database file; it is in Redis, so it outlives a
restart of the stack. The key expires :data:`KEEP` seconds after its last write.

Two writers, each one script:

- the worker, in the transaction that records an invocation's outcome (:func:`record`: no round
  trip of its own): the invocation, its duration, whether it failed or was dead-lettered, and the
  age of its event when it ended (iterator age for a stream, event age for an asynchronous call);
- the HTTP source's sampler (:func:`sample`, every few seconds): the gauges, kept as the highest
  seen in the bucket (concurrent executions, queue depth, the oldest queued event's age) and the
  throttles counted since its last sample.

:func:`series` reads them back for a window; :func:`percentile` estimates a duration quantile from
the bins (within a factor of √2).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from broker import quarantine, scripts

KEEP = 2 * 24 * 3600  # seconds a function's history outlives its last write
BINS = 40  # duration bins: bin k holds durations in [2^(k/2), 2^((k+1)/2)) ms; bin 0 also those < 1 ms
FIELDS = ("start", "invocations", "errors", "dead", "duration_sum", "duration_min", "duration_max", "age_max",
          "concurrency_max", "queued_max", "oldest_max", "throttles")


@dataclass(frozen=True, slots=True)
class Ring:
    """A ring of ``slots`` buckets ``width`` seconds wide, its fields named ``<prefix><slot>``."""

    prefix: str
    width: int
    slots: int

    def field(self, start: int) -> str:
        return f"{self.prefix}{start // self.width % self.slots}"


HOUR = Ring("m", 60, 60)
DAY = Ring("d", 300, 288)
RINGS = {"hour": HOUR, "day": DAY}


def history_key(function: str) -> str:
    return f"lambdalite:history:{function}"


_RECORD = scripts.load("history_record")  # broker/lua/history_record.lua
_SHAPE = {"hour_prefix": HOUR.prefix, "hour_width": HOUR.width, "hour_slots": HOUR.slots, "day_prefix": DAY.prefix,
          "day_width": DAY.width, "day_slots": DAY.slots, "nfields": len(FIELDS), "nbins": BINS}


def _write(pipe: Any, function: str, kind: str, figures: tuple[int, int, int, int], now: float) -> None:
    key = history_key(function)
    _RECORD.queue(pipe, keys={"history": key, "history_aside": quarantine.aside(key, quarantine.stamp())},
                  args={**quarantine.move_args(), "kind": kind, "figure1": figures[0], "figure2": figures[1],
                        "figure3": figures[2], "figure4": figures[3], "now": now, "ttl": KEEP, **_SHAPE})


def record(pipe: Any, function: str, now: float, duration_ms: float, failed: bool, dead: bool,
           age_ms: float) -> None:
    """Queue on ``pipe`` the counting of one invocation that ended at ``now``."""
    _write(pipe, function, "inv", (int(failed), int(dead), max(0, round(duration_ms)), max(0, round(age_ms))), now)


def sample(pipe: Any, function: str, now: float, concurrency: int, queued: int, oldest_ms: float,
           throttles: int) -> None:
    """Queue on ``pipe`` one sample of the function's gauges taken at ``now``."""
    _write(pipe, function, "gauge", (max(0, concurrency), max(0, queued), max(0, round(oldest_ms)), max(0, throttles)),
           now)


@dataclass(frozen=True, slots=True)
class Bucket:
    """One bucket's figures (zeros for a window nothing was written in)."""

    start: int
    invocations: int = 0
    errors: int = 0
    dead: int = 0
    duration_sum: int = 0
    duration_min: int = 0
    duration_max: int = 0
    age_max: int = 0
    concurrency_max: int = 0
    queued_max: int = 0
    oldest_max: int = 0
    throttles: int = 0
    bins: tuple[int, ...] = (0,) * BINS

    @property
    def duration_avg(self) -> float | None:
        return self.duration_sum / self.invocations if self.invocations else None

    @property
    def success_rate(self) -> float | None:
        return 100.0 * (self.invocations - self.errors) / self.invocations if self.invocations else None


_PACKED = struct.Struct(">" + "I" * (len(FIELDS) + BINS))


def _parse(raw: bytes | None, start: int) -> Bucket:
    if raw is None or len(raw) != _PACKED.size:
        return Bucket(start)
    values = list(_PACKED.unpack(raw))
    if values[0] != start:
        return Bucket(start)  # a window of the past day, since written over
    figures = dict(zip(FIELDS, values, strict=False))
    return Bucket(bins=tuple(values[len(FIELDS):]), **figures)


def window_fields(ring: Ring, now: float) -> tuple[list[int], list[str]]:
    """The starts of the ring's buckets that cover the window ending at ``now``, oldest first, and
    their field names."""
    last = math.floor(now / ring.width) * ring.width
    starts = [last - ring.width * i for i in range(ring.slots - 1, -1, -1)]
    return starts, [ring.field(s) for s in starts]


def series_many(client: redis.Redis, functions: Sequence[str], ring: Ring, now: float) -> dict[str, list[Bucket]]:
    """Each function's buckets over the ring's window ending at ``now``, oldest first: one round
    trip for them all. A key of another type is read as empty."""
    starts, fields = window_fields(ring, now)
    replies = quarantine.hmget_each(client, [history_key(name) for name in functions], fields)
    out = {}
    for name, reply in zip(functions, replies, strict=True):
        values = reply if reply is not None else [None] * len(fields)
        out[name] = [_parse(raw, start) for raw, start in zip(values, starts, strict=True)]
    return out


def last_hour(client: redis.Redis, functions: Sequence[str], now: float) -> dict[str, tuple[Bucket, Bucket]]:
    """Each function's current minute and its last hour summed (the five-minute buckets of the last
    hour and the current one: 13 fields a function, read in one round trip). The hour is whole
    five-minute windows, so it reaches up to 64 minutes back."""
    starts, fields = window_fields(DAY, now)
    starts, fields = starts[-12:], fields[-12:]
    minute = math.floor(now / HOUR.width) * HOUR.width
    with client.pipeline(transaction=False) as pipe:
        for name in functions:
            pipe.hmget(history_key(name), [HOUR.field(minute), *fields])
        replies = pipe.execute(raise_on_error=False)
    out = {}
    for name, reply in zip(functions, replies, strict=True):
        if isinstance(reply, Exception):
            if not quarantine.wrong_type(reply):
                raise reply
            reply = [None] * (len(fields) + 1)
        hour = [_parse(raw, start) for raw, start in zip(reply[1:], starts, strict=True)]
        out[name] = (_parse(reply[0], minute), total(hour))
    return out


def series(client: redis.Redis, function: str, ring: Ring, now: float) -> list[Bucket]:
    """The function's buckets over the ring's window ending at ``now``, oldest first."""
    return series_many(client, [function], ring, now)[function]


def total(buckets: Iterable[Bucket]) -> Bucket:
    """The buckets summed (counts added, highs kept, the start of the first)."""
    items = list(buckets)
    done = [b for b in items if b.invocations]
    return Bucket(
        items[0].start if items else 0,
        sum(b.invocations for b in items), sum(b.errors for b in items), sum(b.dead for b in items),
        sum(b.duration_sum for b in items), min((b.duration_min for b in done), default=0),
        max((b.duration_max for b in items), default=0), max((b.age_max for b in items), default=0),
        max((b.concurrency_max for b in items), default=0), max((b.queued_max for b in items), default=0),
        max((b.oldest_max for b in items), default=0), sum(b.throttles for b in items),
        tuple(sum(col) for col in zip(*(b.bins for b in items), strict=True)) if items else (0,) * BINS)


def percentile(bucket: Bucket, q: float) -> float | None:
    """The ``q`` quantile (0 < q <= 1) of the bucket's durations in ms, as the upper edge of the bin
    it falls in, no more than the highest seen; None when the bucket has none."""
    n = sum(bucket.bins)
    if not n:
        return None
    rank = math.ceil(q * n)
    seen = 0
    for k, count in enumerate(bucket.bins):
        seen += count
        if seen >= rank:
            return float(min(2 ** ((k + 1) / 2), bucket.duration_max)) if k < BINS - 1 else float(bucket.duration_max)
    return float(bucket.duration_max)
