"""Group commit: how the HTTP source stores events, many requests to one Redis transaction.

Each request hands its event to :meth:`Intake.store` and awaits its own future. One flusher task
takes everything pending and stores it in one MULTI/EXEC (the commands of
:meth:`Publisher.publish_many`, sent on the event loop by :class:`sources.http.transactor.Transactor`,
which never blocks it); while that runs, the next batch gathers. A future resolves only once
its event is stored, so no request answers 2xx for an event that Redis does not hold. When Redis
is unreachable every waiter gets :class:`RedisUnavailableError` at once, and for ``down_for``
seconds new events are refused without trying, so requests are answered promptly (503) instead
of piling up.

:meth:`Intake.accept` adds idempotency (one key -> one event id for 24 h, queued once), and
:meth:`Intake.invoke` the synchronous round trip (store, then wait for the outcome).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import redis
from redis.client import Pipeline

from broker import quarantine, results, scripts
from broker.conditional import recorded
from broker.connection import TRANSIENT
from broker.envelope import Event
from broker.errors import RedisUnavailableError
from broker.queues import Prepared, Publisher
from sources.http.errors import IdempotencyConflictError, ThrottledError
from sources.http.transactor import Transactor

log = logging.getLogger(__name__)

KEY_TTL = 24 * 3600  # seconds an idempotency key (or a webhook-id) maps to its event id
CLAIM_TTL = 30  # seconds a claim lives if its holder dies before storing the event
PENDING = "pending:"
_RELEASE = scripts.load("claim_release")  # broker/lua/claim_release.lua
_EVENT_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@dataclass(frozen=True, slots=True)
class Refusal:
    """How the HTTP source answers an event the intake did not take, on every route alike: its status,
    whether to say Retry-After, the throttles metric's reason (None: not a throttle), and the words of
    the Invoke API (an error type and a message, ``{e}`` the exception) and of API Gateway."""

    status: int
    retry_after: bool
    throttle: str | None
    lambda_type: str
    lambda_message: str
    gateway_message: str


REFUSALS: dict[type[Exception], Refusal] = {
    RedisUnavailableError: Refusal(503, True, "redis", "ServiceException",
                                   "The event store is unreachable; retry later.", "Service Unavailable"),
    ThrottledError: Refusal(429, True, "backlog", "TooManyRequestsException", "Rate exceeded: {e}",
                            "Too Many Requests"),
    IdempotencyConflictError: Refusal(409, False, None, "ResourceConflictException", "{e}",
                                      "A request with the same id is still being processed"),
}
REFUSED = tuple(REFUSALS)  # for ``except REFUSED``


def refusal_for(e: Exception) -> Refusal:
    """The answer to ``e``, one of :data:`REFUSED`."""
    return next(answer for kind, answer in REFUSALS.items() if isinstance(e, kind))


def idempotency_key(scope: str, key: str) -> str:
    """The Redis key remembering ``key`` within ``scope`` (a function, or a webhook route)."""
    digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()
    return f"lambdalite:http:idempotency:{scope}:{digest}"


@dataclass(slots=True)
class _Pending:
    prepared: Prepared
    also: Callable[[Pipeline], None] | None
    done: asyncio.Future[None]


class Intake:
    """Stores events in batches; see the module docstring. Start with :meth:`start`, end with :meth:`stop`."""

    def __init__(
        self,
        publisher: Publisher,
        waiter: redis.Redis,
        transactor: Transactor,
        max_pending: int = 20_000,
        max_batch: int = 1_000,
        down_for: float = 1.0,
        sync_threads: int = 128,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.publisher = publisher
        self.client: redis.Redis = publisher.client
        self.waiter = waiter  # for blocking reads of outcomes, in slices its socket timeout outlasts
        self.transactor = transactor
        self.max_pending = max_pending
        self.max_batch = max_batch
        self.down_for = down_for
        self.clock = clock
        self._pending: list[_Pending] = []
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._down_until = 0.0
        self._stopping = False
        self._sync = ThreadPoolExecutor(sync_threads, thread_name_prefix="intake-sync")

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="intake-flusher")

    async def stop(self) -> None:
        """Store what is pending (or fail it), then stop the flusher and the threads."""
        if self._task is not None and self._wake is not None:
            self._stopping = True
            self._wake.set()
            await self._task
        await self.transactor.close()
        self._sync.shutdown(wait=False, cancel_futures=True)

    @property
    def pending(self) -> int:
        return len(self._pending)

    # -- storing -----------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self.clock() < self._down_until:
            raise RedisUnavailableError("redis is unreachable")
        if len(self._pending) >= self.max_pending:
            raise ThrottledError(f"{len(self._pending)} events are waiting to be stored")

    async def store(
        self, event: Event, also: Callable[[Pipeline], None] | None = None, payload_json: str | None = None
    ) -> None:
        """Return once ``event`` is stored; raises RedisUnavailableError or ThrottledError.

        The job is built here, in the request's own turn (``payload_json`` as
        :meth:`Publisher.prepare` takes it), so an event that cannot be encoded fails its own
        request (EnvelopeError), never the batch it would have gone with."""
        self._check_open()
        prepared = self.publisher.prepare(event, payload_json)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(prepared, also, done))
        if self._wake is None:
            raise RuntimeError("Intake.start() was not called")
        self._wake.set()
        await done

    async def _run(self) -> None:
        if self._wake is None:
            return
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                await self._flush_once()
            if self._stopping:
                return

    async def _flush_once(self) -> None:
        batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
        try:
            await self._write(batch)
        except TRANSIENT as e:
            if self._down_until == 0.0 or self.clock() >= self._down_until + self.down_for:
                log.warning("redis unreachable, answering 503 for %.1f s at a time: %s", self.down_for, e)
            self._down_until = self.clock() + self.down_for
            self._settle(batch, RedisUnavailableError(f"redis is unreachable: {e}"))
            return
        except Exception as e:  # a bad batch must not stop the flusher
            log.exception("storing %d events failed: %s", len(batch), e)
            self._settle(batch, e)
            return
        if self._down_until:
            log.info("redis is reachable again")
            self._down_until = 0.0
        self._settle(batch, None)

    async def _write(self, batch: list[_Pending]) -> None:
        extras = [p.also for p in batch if p.also is not None]

        def also(pipe: Pipeline) -> None:
            for extra in extras:
                extra(pipe)

        with recorded(self.client) as pipe:
            self.publisher.publish_many([p.prepared for p in batch], also=also if extras else None, pipeline=pipe)
            commands = pipe.commands()  # the guard of every key written, then the writes
        replies = await self.transactor.execute(commands)
        quarantine.report(replies)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply

    @staticmethod
    def _settle(batch: list[_Pending], error: BaseException | None) -> None:
        for p in batch:
            if p.done.done():
                continue
            if error is None:
                p.done.set_result(None)
            else:
                p.done.set_exception(error)

    # -- idempotency -------------------------------------------------------------------------
    async def accept(
        self, event: Event, key: str | None = None, payload_json: str | None = None
    ) -> tuple[str, bool]:
        """Store ``event`` once per idempotency ``key`` (a Redis key from :func:`idempotency_key`).

        Returns ``(event_id, fresh)``: the id stored under ``key`` and whether this call stored
        it. The key is set in the same transaction as the event; a second request with the same
        key waits for the first and gets its id. Raises RedisUnavailableError, ThrottledError,
        or IdempotencyConflictError when the first holder takes too long.
        """
        if key is None:
            await self.store(event, payload_json=payload_json)
            return event.id, True
        self._check_open()
        loop = asyncio.get_running_loop()
        try:
            earlier = await loop.run_in_executor(self._sync, self._claim, key, event.id)
        except TRANSIENT as e:
            raise RedisUnavailableError(f"redis is unreachable: {e}") from e
        if earlier is not None:
            return earlier, False

        def commit(pipe: Pipeline) -> None:
            pipe.set(key, event.id, ex=KEY_TTL)

        try:
            await self.store(event, also=commit, payload_json=payload_json)
        except BaseException:
            await loop.run_in_executor(self._sync, self._release, key, event.id)
            raise
        return event.id, True

    def _claim(self, key: str, event_id: str, patience: float = 3.0) -> str | None:
        deadline = time.monotonic() + patience
        while True:
            try:
                if self.client.set(key, PENDING + event_id, nx=True, ex=CLAIM_TTL):
                    return None
                value = self.client.get(key)
            except redis.ResponseError as e:
                if quarantine.wrong_type(e) and quarantine.repair(self.client, {key: "string"}):
                    continue
                raise
            if value is None:
                continue  # the holder gave up between our SET and GET
            text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
            if not _EVENT_ID.fullmatch(text.removeprefix(PENDING)):
                # Not what a request stored (a foreign value): answering with it would acknowledge
                # an event that was never stored. Dropped (only if unchanged) and claimed afresh.
                log.warning("redis key %s holds %r, not an event id; replaced", key, text[:60])
                _RELEASE(self.client, keys={"key": key}, args={"value": value})
                continue
            if not text.startswith(PENDING):
                return text
            if time.monotonic() >= deadline:
                raise IdempotencyConflictError("a request with the same key is still being stored")
            time.sleep(0.02)

    def _release(self, key: str, event_id: str) -> None:
        with contextlib.suppress(*TRANSIENT):  # else the claim expires by itself after CLAIM_TTL
            _RELEASE(self.client, keys={"key": key}, args={"value": PENDING + event_id})

    # -- synchronous round trips -------------------------------------------------------------
    async def outcome(self, event_id: str, timeout: float) -> results.Outcome | None:
        """Wait (in a thread) up to ``timeout`` s for an event's outcome; None when none came."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._sync, results.wait, self.waiter, event_id, timeout)
        except TRANSIENT as e:
            raise RedisUnavailableError(f"redis is unreachable: {e}") from e

    async def invoke(
        self, event: Event, timeout: float, key: str | None = None, payload_json: str | None = None
    ) -> results.Outcome | None:
        """Store a RequestResponse event and wait for its outcome (the first holder's, on a replay)."""
        event_id, _fresh = await self.accept(event, key, payload_json)
        return await self.outcome(event_id, timeout)

