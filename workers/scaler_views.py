"""What a scaler shows of each function, for ``lambdalite status`` and the console.

Per function: its workers here by state and the scaler's last decision, in the hash
``lambdalite:scaler:<function>`` (one field per scaler), and every decision the scaler logs (scale up
or down, and why), newest first, in ``lambdalite:decisions:<function>`` (:func:`broker.stats.record_decisions`).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from broker import stats
from broker.transaction import transaction
from workers.processes import WorkerProc

log = logging.getLogger("lambdalite.scaler")

VIEW_REFRESH = 5.0  # seconds between two writes of every function's view for status (changes go at once)


@dataclass
class Decision:
    at: float
    action: str
    reason: str


@dataclass
class FunctionView:
    workers: dict[int, WorkerProc] = field(default_factory=dict)
    decision: Decision | None = None
    pending: str = ""  # why the last step wanted more workers
    keep: int = 0  # workers the function needs now (desired, at least min_workers)


class ViewWriter:
    """Writes the views of one scaler (``scaler_id``) to Redis: a view that changed at once, every
    view every :data:`VIEW_REFRESH` s (one lost or damaged comes back), each logged decision once.
    With many functions, encoding and writing every view each step was most of an idle scaler's CPU."""

    def __init__(self, client: redis.Redis, scaler_id: str) -> None:
        self.client, self.id = client, scaler_id
        self._published: dict[str, tuple[Any, str]] = {}  # function -> (its view as last written, encoded)
        self._last_view = -1e9
        self._decided: dict[str, list[str]] = {}  # function -> decisions logged since the last publish

    def decide(self, view: FunctionView, fn: str, action: str, reason: str) -> None:
        """Make ``action`` (and ``reason``) ``view``'s decision; logged, and kept for Redis, unless it
        holds for the same reason as the last."""
        previous = view.decision
        view.decision = Decision(time.time(), action, reason)
        if action != "hold" or previous is None or previous.reason != reason:
            log.info("%s: %s (%s)", fn, action, reason)
            self._decided.setdefault(fn, []).append(json.dumps({**view.decision.__dict__, "scaler": self.id}))

    def forget(self, fn: str) -> None:
        self._published.pop(fn, None)

    def publish(self, views: dict[str, FunctionView], now: float) -> None:
        """Write what changed in ``views`` since the last call (everything every VIEW_REFRESH s)."""
        changed = {}
        for name, view in views.items():
            states = {"starting": 0, "idle": 0, "busy": 0}
            for p in view.workers.values():
                states[p.state] += 1
            seen = (states, view.decision)
            if name not in self._published or self._published[name][0] != seen:
                encoded = json.dumps({"workers": states, "decision": view.decision.__dict__ if view.decision else None})
                self._published[name] = (seen, encoded)
                changed[name] = encoded
        if now - self._last_view >= VIEW_REFRESH:
            changed = {name: encoded for name, (_, encoded) in self._published.items()}
            self._last_view = now
        decided, self._decided = self._decided, {}
        if not changed and not decided:
            return
        with transaction(self.client, transaction=False) as pipe:
            for name, view_json in changed.items():
                pipe.hset(stats.scaler_key(name), self.id, view_json)
            for name, logged in decided.items():
                stats.record_decisions(pipe, name, logged)
            pipe.execute()
