"""The console's live side: one loop per HTTP source process reads the figures and pushes them.

While a page is open (subscribed to ``/console/events``), the loop reads the overview, or the open
function's figures, every :data:`INTERVAL` seconds, on the console's own thread, and hands each
subscriber the new figures when they changed (a slow page misses intermediate ones, never piles
them up). Whether or not a page is open, every :data:`SAMPLE_EVERY` seconds it writes each
function's gauges into the history (:func:`broker.history.sample`): concurrent executions, queue
depth, the oldest queued event's age, and the throttles this process counted since the last time.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from broker import history
from broker.connection import TRANSIENT
from sources.http.console_data import Console, function_page, overview

log = logging.getLogger(__name__)
INTERVAL = 0.5  # seconds between reads while a page is open: figures reach it within a second
SAMPLE_EVERY = 5.0  # seconds between gauge samples into the history
DAY_EVERY = 30.0  # seconds between reads of a function's day of history for an open page

Reader = Callable[[Callable[[], Any]], Awaitable[Any]]


class Hub:
    """Subscribers by what they watch (None: the overview; a name: that function's page)."""

    def __init__(self, console: Console, read: Reader,
                 throttles: Callable[[], dict[str, int]] | None = None) -> None:
        self.console = console
        self.read = read
        self.throttles = throttles or dict
        self.subscribers: dict[str | None, set[asyncio.Queue[bytes]]] = {}
        self._last: dict[str | None, bytes] = {}
        self._rows: dict[str, bytes] = {}  # each overview row as last pushed
        self._fresh: set[asyncio.Queue[bytes]] = set()  # overview pages that get every row next
        self._day_at: dict[str, float] = {}
        self._counted: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._sampled = 0.0
        self._down = False

    def subscribe(self, name: str | None) -> asyncio.Queue[bytes]:
        queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=1)
        self.subscribers.setdefault(name, set()).add(queue)
        self._last.pop(name, None)  # the new page gets the figures at once
        if name is None:
            self._fresh.add(queue)
        self._day_at.pop(name or "", None)
        self._wake.set()
        return queue

    def unsubscribe(self, name: str | None, queue: asyncio.Queue[bytes]) -> None:
        watching = self.subscribers.get(name, set())
        watching.discard(queue)
        self._fresh.discard(queue)
        if not watching:
            self.subscribers.pop(name, None)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="console-hub")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            try:
                await self.step(time.time())
                if self._down:
                    log.info("console: redis is back")
                    self._down = False
            except TRANSIENT as e:
                if not self._down:
                    log.warning("console: redis unavailable (%s); trying again", e)
                    self._down = True
            except Exception:  # a fault of the console must not end the source's loop
                log.exception("console: reading the figures failed")
            self._wake.clear()
            wait = INTERVAL if self.subscribers else SAMPLE_EVERY
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    async def step(self, now: float) -> None:
        """Read what the open pages show and push it; sample the gauges when it is time."""
        sample = now - self._sampled >= SAMPLE_EVERY
        rows: dict[str, Any] | None = None
        if None in self.subscribers or sample:
            data = await self.read(lambda: overview(self.console, now))
            rows = data["functions"]
            if None in self.subscribers:
                self._push_overview(data)
        for name in [n for n in self.subscribers if n is not None]:
            day = now - self._day_at.get(name, 0.0) >= DAY_EVERY
            page = await self.read(functools.partial(function_page, self.console, name, now, day=day))
            if day:
                self._day_at[name] = now
            self._push(name, page)
        if sample and rows is not None:
            self._sampled = now
            await self.read(lambda: self._sample(rows, now))

    def _push(self, name: str | None, data: dict[str, Any]) -> None:
        data = dict(data)
        at = data.pop("at", None)
        body = orjson.dumps(data)
        if "day" not in data and self._last.get(name) == body:
            return
        self._last[name] = body
        data["at"] = at
        message = orjson.dumps(data)
        for queue in list(self.subscribers.get(name, ())):
            if queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
            queue.put_nowait(message)

    def _push_overview(self, data: dict[str, Any]) -> None:
        """Each overview page gets the rows that changed since the last push (a new page, or one
        too slow to take the last message, gets them all)."""
        changed = {}
        for name, row in data["functions"].items():
            body = orjson.dumps(row)
            if self._rows.get(name) != body:
                self._rows[name] = body
                changed[name] = row
        everything = orjson.dumps(data)
        some = orjson.dumps({"at": data["at"], "functions": changed}) if changed else None
        for queue in list(self.subscribers.get(None, ())):
            if queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
                self._fresh.add(queue)
            if queue in self._fresh:
                queue.put_nowait(everything)
                self._fresh.discard(queue)
            elif some is not None:
                queue.put_nowait(some)

    def _sample(self, rows: dict[str, Any], now: float) -> None:
        counted = self.throttles()
        with self.console.client.pipeline(transaction=False) as pipe:
            for name, row in rows.items():
                new = counted.get(name, 0) - self._counted.get(name, 0)
                oldest = row.get("oldest_age_s") or 0.0
                if row["running"] or row["queued"] or new > 0:  # zeros change no bucket: nothing to write
                    history.sample(pipe, name, now, row["running"], row["queued"], oldest * 1000, max(0, new))
            if len(pipe):
                pipe.execute()
        self._counted = counted
