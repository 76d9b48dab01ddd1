"""The console's figures, read from Redis in a few round trips however many functions there are.

:func:`overview` is one row per function: the counts ``lambdalite status --json`` gives (it calls
:func:`broker.stats.status`), and from the history (:mod:`broker.history`), the log store, the dead
letters, the cost counters and the registry the rest of what the console's overview shows.
:func:`function_page` adds one function's graphs, recent invocations and settings. Every value is
JSON, as the page's Server-Sent Events carry them too.
"""

from __future__ import annotations

import contextlib
import re
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from broker import cost, history, logstore, results, rqlayout, schedules, stats
from broker.deadletter import dlq_key
from broker.errors import OutcomeError
from broker.history import DAY, HOUR, Bucket
from broker.queues import function_queue
from broker.registry import Registry

_REPORT = re.compile(r"^REPORT RequestId: (\S+)\tDuration: ([\d.]+) ms\tBilled Duration: (\d+) ms\t"
                     r"Memory Size: (\d+) MB\tMax Memory Used: (\d+) MB(?:\tInit Duration: ([\d.]+) ms)?"
                     r"(?:.*\tStatus: (\w+))?")


@dataclass
class Console:
    """What the console reads with: the registry, a Redis client, the global worker cap, the schedule
    clock."""

    registry: Registry
    client: redis.Redis
    max_workers: int
    schedule_clock: Any = time.time
    cache: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = field(default_factory=dict)

    def forget(self, function: str) -> None:
        """Read the function's figures afresh next time (its dead letters were replayed or purged)."""
        self.cache.pop(function, None)


def _oldest_ages(client: redis.Redis, names: list[str], queued: dict[str, int], now: float) -> dict[str, float]:
    """Seconds the oldest queued event of each function with a backlog has waited (two round trips)."""
    waiting = [n for n in names if queued.get(n)]
    if not waiting:
        return {}
    with client.pipeline(transaction=False) as pipe:
        for name in waiting:
            pipe.lindex(function_queue(client, name).key, 0)
        ids = pipe.execute(raise_on_error=False)
    found = [(n, i) for n, i in zip(waiting, ids, strict=True) if isinstance(i, bytes)]
    with client.pipeline(transaction=False) as pipe:
        for _, job_id in found:
            pipe.hget(rqlayout.JOB_PREFIX.encode() + job_id, rqlayout.ENQUEUED_AT)
        stamps = pipe.execute(raise_on_error=False)
    out = {}
    for (name, _), stamp in zip(found, stamps, strict=True):
        at = rqlayout.parse_time(stamp) if isinstance(stamp, bytes) else None
        if at is not None:
            out[name] = max(0.0, now - at.timestamp())
    return out


def _dead_letters(client: redis.Redis, names: list[str]) -> dict[str, int]:
    with client.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.hlen(dlq_key(name))
        replies = pipe.execute(raise_on_error=False)
    return {n: (r if isinstance(r, int) else 0) for n, r in zip(names, replies, strict=True)}


def _figures(minute: Bucket, whole: Bucket) -> dict[str, Any]:
    """What the overview shows of a function's current minute and last hour."""
    return {
        "invocations_minute": minute.invocations, "errors_minute": minute.errors,
        "invocations_hour": whole.invocations, "errors_hour": whole.errors,
        "success_rate": whole.success_rate, "p50_ms": history.percentile(whole, 0.5),
        "p99_ms": history.percentile(whole, 0.99), "max_ms": whole.duration_max if whole.invocations else None,
        "throttles_hour": whole.throttles, "age_minute_ms": minute.age_max,
    }


REFRESH = 10.0  # seconds after which a function's figures are read again even if its counts did not move


def _signature(row: dict[str, Any], now: float) -> tuple[Any, ...]:
    """What tells that a function's other figures may have changed: its counts, the minute, and
    every :data:`REFRESH` seconds (for what time alone moves: the oldest event's age, the hour)."""
    return (row["queued"], row["running"], row["workers"], *(row[c] for c in stats.COUNTERS),
            int(now // 60), int(now // REFRESH))


def _others(console: Console, rows: dict[str, dict[str, Any]], names: list[str], now: float) -> None:
    """The figures beside the counts, for ``names``, into ``console.cache``."""
    client = console.client
    hours = history.last_hour(client, names, now)
    oldest = _oldest_ages(client, names, {n: rows[n]["queued"] for n in names}, now)
    dead_now = _dead_letters(client, names)
    usage = cost.usage(client, names)
    ticks: dict[str, list[float | None]] = {}
    wanted = set(names)
    for schedule, tick in schedules.next_ticks(console.registry, console.schedule_clock()):
        if schedule.function.name in wanted:
            ticks.setdefault(schedule.function.name, []).append(tick)
    for name in names:
        fn = console.registry.get(name)
        priced = cost.price(usage[name])
        upcoming = [t for t in ticks.get(name, []) if t is not None]
        figures = _figures(*hours[name])
        figures.update({
            "cap": fn.concurrency(console.max_workers),
            "oldest_age_s": oldest.get(name),
            "dead_letters": dead_now[name],
            "next_tick": schedules.iso(min(upcoming)) if upcoming else None,
            "has_schedule": name in ticks,
            "cost_usd": priced["usd"], "gb_seconds": priced["gb_seconds"], "requests": priced["requests"],
        })
        console.cache[name] = (_signature(rows[name], now), figures)


def overview(console: Console, now: float | None = None, names: list[str] | None = None) -> dict[str, Any]:
    """``{"at": now, "functions": {name: {...}}}`` for every function (or these ``names``); each row
    holds the fields of ``lambdalite status --json`` and the console's own. The counts are read
    each time (one round trip); the rest only for the functions whose counts moved since the last
    call (or not within :data:`REFRESH` s), so a call costs little more than ``status`` when few
    functions are busy."""
    now = time.time() if now is None else now
    names = list(console.registry.functions) if names is None else names
    rows: dict[str, dict[str, Any]] = stats.status(console.client, names)["functions"]
    stale = [n for n in names if console.cache.get(n, ((),))[0] != _signature(rows[n], now)]
    if stale:
        _others(console, rows, stale, now)
    for name in names:
        row = rows[name]
        row.update(console.cache[name][1])
    return {"at": now, "functions": rows}


def _series(buckets: list[Bucket]) -> dict[str, list[Any]]:
    """Columns for the graphs: x in seconds, one list per figure (None where nothing ran)."""
    return {
        "t": [b.start for b in buckets],
        "invocations": [b.invocations for b in buckets],
        "errors": [b.errors for b in buckets],
        "success_rate": [b.success_rate for b in buckets],
        "duration_avg": [round(b.duration_avg, 1) if b.duration_avg is not None else None for b in buckets],
        "duration_min": [b.duration_min if b.invocations else None for b in buckets],
        "duration_max": [b.duration_max if b.invocations else None for b in buckets],
        "throttles": [b.throttles for b in buckets],
        "concurrency": [b.concurrency_max for b in buckets],
        "age_ms": [b.age_max if b.invocations else None for b in buckets],
        "queued": [b.queued_max for b in buckets],
        "dead": [b.dead for b in buckets],
    }


def parse_report(line: str) -> dict[str, Any] | None:
    """The figures of a REPORT line, or None when ``line`` is not one."""
    match = _REPORT.match(line)
    if not match:
        return None
    rid, duration, billed, memory, used, init, status = match.groups()
    return {"request_id": rid, "duration_ms": float(duration), "billed_ms": int(billed), "memory_mb": int(memory),
            "max_memory_mb": int(used), "init_ms": float(init) if init else None, "status": status or "success"}


def invocation(entry: logstore.Entry) -> dict[str, Any]:
    """One invocation's row in the recent list, from its log entry."""
    row: dict[str, Any] = {"request_id": entry.request_id, "at": entry.at / 1000, "id": entry.id}
    for _, text in reversed(entry.lines):
        report = parse_report(text)
        if report is not None:
            row.update(report)
            break
    else:
        row["status"] = "unknown"
    return row


def recent(client: redis.Redis, function: str, count: int = 20) -> list[dict[str, Any]]:
    """The function's last ``count`` invocations, newest first, with their outcome where it is still
    kept (``failed`` and ``dead`` only show there: a handler's error has no REPORT status)."""
    raw = logstore._read(client, function, lambda: client.xrevrange(logstore.stream_key(function), "+", "-",
                                                                      count=count))
    entries = [e for e in (logstore._entry(function, i, f) for i, f in raw) if e is not None]
    rows = [invocation(e) for e in entries]
    with client.pipeline(transaction=False) as pipe:
        for row in rows:
            pipe.xrevrange(results.result_key(row["request_id"]), "+", "-", count=1)
        outcomes = pipe.execute(raise_on_error=False)
    for row, outcome in zip(rows, outcomes, strict=True):
        if isinstance(outcome, list) and outcome and row["status"] == "success":
            with contextlib.suppress(OutcomeError):  # not an outcome: the REPORT line's status stands
                row["status"] = results.Outcome.decode(outcome[0][1].get(b"outcome", b"")).status
    return rows


def function_page(console: Console, name: str, now: float | None = None, day: bool = True) -> dict[str, Any]:
    """One function's figures, graphs (the hour, and the day unless not ``day``), recent invocations
    and scaler decisions."""
    now = time.time() if now is None else now
    fn = console.registry.get(name)
    row = overview(console, now, [name])["functions"][name]
    out: dict[str, Any] = {
        "at": now, "function": name, "row": row,
        "hour": _series(history.series(console.client, name, HOUR, now)),
        "recent": recent(console.client, name),
        "decisions": stats.recent_decisions(console.client, name),
        "stream": any(t.source == "sqlite" for t in fn.triggers),
    }
    if day:
        out["day"] = _series(history.series(console.client, name, DAY, now))
    return out
