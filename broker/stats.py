"""Per-function counters and the status snapshot that ``lambdalite status`` prints."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Iterable
from typing import Any, cast

import redis

from broker import quarantine, rqlayout, scripts
from broker.queues import queue_name
from broker.registry import Registry
from broker.transaction import Transaction

log = logging.getLogger(__name__)

COUNTERS = ("succeeded", "failed", "dead", "retried")


def stats_key(function: str) -> str:
    return f"lambdalite:stats:{function}"


def scaler_key(function: str) -> str:
    """Hash of scaler id -> JSON of that scaler's view of the function's workers and last decision."""
    return f"lambdalite:scaler:{function}"


DECISIONS_KEPT = 50  # each function's latest scaler decisions kept in Redis
DECISIONS_TTL = 2 * 24 * 3600  # seconds the list outlives its last decision


def decisions_key(function: str) -> str:
    """List of the function's latest scaler decisions, newest first, each a JSON object with ``at``,
    ``action``, ``reason`` and ``scaler``: what the console shows; at most :data:`DECISIONS_KEPT`."""
    return f"lambdalite:decisions:{function}"


def record_decisions(pipe: Transaction, function: str, encoded: list[str]) -> None:
    """Queue on ``pipe`` the pushing of decisions (JSON, oldest first) onto the function's list,
    trimmed to its cap, its expiry renewed."""
    key = decisions_key(function)
    pipe.lpush(key, *encoded)
    pipe.ltrim(key, 0, DECISIONS_KEPT - 1)
    pipe.expire(key, DECISIONS_TTL)


def recent_decisions(client: redis.Redis, function: str, count: int = 20) -> list[dict[str, Any]]:
    """The function's latest ``count`` scaler decisions, newest first. An entry that is not one (or
    a key of another type) is logged and left out."""
    key = decisions_key(function)
    try:
        raw = client.lrange(key, 0, count - 1)
    except redis.ResponseError:
        log.warning("redis key %s is not a list; no decisions shown", key)
        return []
    out = []
    for item in cast(list[bytes], raw):
        try:
            d = json.loads(item)
            out.append({"at": float(d["at"]), "action": str(d["action"]), "reason": str(d["reason"]),
                        "scaler": str(d.get("scaler", ""))})
        except (ValueError, TypeError, KeyError):
            log.warning("redis key %s: %r is not a decision; left out", key, item[:80])
    return out


def alive_key(scaler_id: str) -> str:
    """Set by each running scaler with a short expiry: a scaler whose key is gone no longer counts."""
    return f"lambdalite:scaler-alive:{scaler_id}"


def count(pipe: redis.Redis | Any, function: str, counter: str, n: int = 1) -> None:
    """Add ``n`` to one counter (use inside the pipeline that records the outcome).

    A counter that is not a count (or a stats key of another type) is reset, not an error: see
    :func:`broker.quarantine.incr`.
    """
    quarantine.incr(pipe, stats_key(function), counter, n)


def status(client: redis.Redis, registry: Registry | Iterable[str]) -> dict[str, Any]:
    """``{"functions": {name: {queued, running, workers, succeeded, failed, dead, ...}}}`` for the
    functions of ``registry`` (or of these names).

    Read-only: a key of the wrong type, a counter that is not a count or a scaler's view that is
    not one is logged (one line naming the key) and counted as nothing; the processes that write
    those keys repair them.
    """
    out: dict[str, Any] = {}
    names = [fn.name for fn in registry] if isinstance(registry, Registry) else list(registry)
    keys: list[str] = []
    for function in names:
        keys += [*_rq_keys(function), stats_key(function), scaler_key(function)]
    replies = _read_all(client, keys) if keys else []
    rows = {}
    for i, function in enumerate(names):
        values: list[Any] = []
        for key, kind, reply, empty in zip(keys[4 * i:4 * i + 4], _KINDS, replies[4 * i:4 * i + 4], (0, 0, {}, {}),
                                           strict=True):
            if reply is None:  # a key of another type
                log.warning("%s; counted as empty", quarantine.describe(client, key, kind))
                reply = empty
            elif kind == "hash":
                reply = dict(zip(reply[0::2], reply[1::2], strict=True))
            values.append(reply)
        rows[function] = values
    alive = _alive(client, [i.decode(errors="replace") for v in rows.values() for i in v[3]])
    for function, (queued, running, counters, scalers) in rows.items():
        row: dict[str, Any] = {"queued": queued, "running": running}
        states = {"starting": 0, "idle": 0, "busy": 0}
        decisions = []
        for view in _live_views(function, scalers, alive):
            for state in states:
                states[state] += view["workers"].get(state, 0)
            if view["decision"]:
                decisions.append(view["decision"])
        row["workers"] = sum(states.values())
        row["worker_states"] = states
        for name in COUNTERS:
            row[name] = _count(function, name, counters.get(name.encode()))
        row["last_decision"] = max(decisions, key=lambda d: d["at"]) if decisions else None
        out[function] = row
    return {"functions": out}


_KINDS = ("list", "zset", "hash", "hash")


@functools.lru_cache(maxsize=4096)
def _rq_keys(function: str) -> tuple[str, str]:
    """The function's queue and started-registry keys, as RQ names them (made once: an RQ Queue
    object costs more to build than the read)."""
    name = queue_name(function)
    return rqlayout.queue_key(name), rqlayout.started_key(name)

_READ = scripts.load("stats_read")  # broker/lua/stats_read.lua


def _read_all(client: redis.Redis, keys: list[str]) -> list[Any]:
    return cast("list[Any]", _READ(client, keys={"functions": keys}, args={}))


def _alive(client: redis.Redis, ids: list[str]) -> set[str]:
    """Which of these scalers still have their liveness key (one round trip)."""
    unique = sorted(set(ids))
    if not unique:
        return set()
    with client.pipeline(transaction=False) as pipe:
        for scaler_id in unique:
            pipe.exists(alive_key(scaler_id))
        found = pipe.execute()
    return {i for i, n in zip(unique, found, strict=True) if n}


def _count(function: str, name: str, raw: bytes | None) -> int:
    if raw is None:
        return 0
    if raw.isdigit():
        return int(raw)
    log.warning("redis key %s has field '%s' = %r, not a count; shown as 0", stats_key(function), name,
                raw.decode(errors="replace")[:40])
    return 0


def _live_views(function: str, scalers: dict[bytes, bytes], alive: set[str]) -> list[dict[str, Any]]:
    """The views of scalers whose liveness key still exists, each checked: a view that is not one is
    logged and left out."""
    views = []
    for raw_id, raw in scalers.items():
        scaler_id = raw_id.decode(errors="replace")
        # Views of scalers that died without cleaning up (SIGKILL) stop counting with their key.
        if scaler_id not in alive:
            continue
        view = _view(raw)
        if view is None:
            log.warning("redis key %s: the view of scaler %s is not one (%r); left out", scaler_key(function),
                        scaler_id, raw[:60])
            continue
        views.append(view)
    return views


def _view(raw: bytes) -> dict[str, Any] | None:
    """A scaler's view as :func:`status` uses it, or None when ``raw`` is not one."""
    try:
        data = json.loads(raw)
        workers = data["workers"]
        decision = data.get("decision")
        counts = {state: int(workers.get(state, 0)) for state in ("starting", "idle", "busy")}
        if decision is not None:
            decision = {"at": float(decision["at"]), "action": str(decision["action"]),
                        "reason": str(decision["reason"])}
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    if min(counts.values()) < 0:
        return None
    return {"workers": counts, "decision": decision}
