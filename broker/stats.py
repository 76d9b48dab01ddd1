"""Per-function counters and the status snapshot that ``lambdalite status`` prints."""

from __future__ import annotations

import json
from typing import Any

import redis
from rq.registry import StartedJobRegistry

from broker.queues import function_queue
from broker.registry import Registry

COUNTERS = ("succeeded", "failed", "dead", "retried")


def stats_key(function: str) -> str:
    return f"lambdalite:stats:{function}"


def scaler_key(function: str) -> str:
    """Hash of scaler id -> JSON of that scaler's view of the function's workers and last decision."""
    return f"lambdalite:scaler:{function}"


def alive_key(scaler_id: str) -> str:
    """Set by each running scaler with a short expiry: a scaler whose key is gone no longer counts."""
    return f"lambdalite:scaler-alive:{scaler_id}"


def count(pipe: redis.Redis | Any, function: str, counter: str, n: int = 1) -> None:
    """Add ``n`` to one counter (use inside the pipeline that records the outcome)."""
    pipe.hincrby(stats_key(function), counter, n)


def status(client: redis.Redis, registry: Registry) -> dict[str, Any]:
    """``{"functions": {name: {queued, running, workers, succeeded, failed, dead, ...}}}``."""
    out: dict[str, Any] = {}
    for fn in registry:
        queue = function_queue(client, fn.name)
        started = StartedJobRegistry(queue=queue)
        with client.pipeline(transaction=False) as pipe:
            pipe.llen(queue.key)
            pipe.zcard(started.key)
            pipe.hgetall(stats_key(fn.name))
            pipe.hgetall(scaler_key(fn.name))
            queued, running, counters, scalers = pipe.execute()
        row: dict[str, Any] = {"queued": queued, "running": running}
        ids = list(scalers)
        alive = client.exists(*[alive_key(i.decode()) for i in ids]) if ids else 0
        # Views of scalers that died without cleaning up (SIGKILL) stop counting with their key.
        views = []
        for scaler_id in ids:
            if alive == len(ids) or client.exists(alive_key(scaler_id.decode())):
                try:
                    views.append(json.loads(scalers[scaler_id]))
                except ValueError:
                    continue
        states = {"starting": 0, "idle": 0, "busy": 0}
        for view in views:
            for state in states:
                states[state] += int(view.get("workers", {}).get(state, 0))
        row["workers"] = sum(states.values())
        row["worker_states"] = states
        for name in COUNTERS:
            row[name] = int(counters.get(name.encode(), 0))
        decisions = [v["decision"] for v in views if v.get("decision")]
        row["last_decision"] = max(decisions, key=lambda d: d["at"]) if decisions else None
        out[fn.name] = row
    return {"functions": out}
