"""Schedules: ``source = "schedule"`` triggers, published exactly once per tick.

Every scaler ticks every schedule (:class:`Ticker`, one :meth:`Ticker.step` per scaler step), so a
schedule runs while any scaler runs, on any host. A tick's event is published by one atomic script
together with the write of the schedule's own key, ``lambdalite:schedule:<function>:<trigger>``,
which holds the time of the last tick published: the publish happens only if that time is earlier
than the tick's (:meth:`broker.queues.Publisher.publish_if`). However many scalers reach the same tick,
and whoever of them crashes or restarts, one event per tick goes out.

Ticks missed while no scaler ran (the key's tick is older than the first tick a starting scaler
sees) are skipped, as EventBridge skips them, or with ``catch_up = "latest"`` the most recent of
them runs once if it is younger than the function's ``maximum_event_age``; the log says which.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import redis
from redis.client import Pipeline

from broker import scripts
from broker.conditional import Conditional
from broker.connection import TRANSIENT
from broker.envelope import Event
from broker.queues import Publisher
from broker.registry import Function, Registry, ScheduleTrigger
from broker.schedule_expression import Expression, parse, zone
from broker.settings import Settings

log = logging.getLogger("lambdalite.schedules")

#: Seconds (of real time) a starting scaler counts as the present: a tick that fell due this
#: shortly before it started is run as on time, not counted as missed while nothing ran.
START_GRACE = 2.0
#: Seconds a schedule's key outlives the time it would take to need it again (the gap to the next
#: tick plus the function's maximum_event_age): the key of a schedule that was removed goes.
KEY_MARGIN = 7 * 86400
COUNT_CAP = 10_000  # missed ticks counted one by one for the log, at most (then "10000+")
#: Seconds (of real time) a tick whose publish failed for a reason other than Redis being away waits
#: before the next attempt, so that a refused write costs one log line a second, not one a step.
RETRY = 1.0
_NAMESPACE = uuid.UUID("8a5f7bd0-3c1e-4d47-9a63-0f6f0c4a1e5d")  # event ids: uuid5 of the rule and tick

# The tick goes out only if the schedule's key holds an earlier tick (or nothing, or something
# that is not a tick): c[1] the schedule's key, c[2] the tick (broker/lua/schedule_not_yet_published.lua).
_NOT_YET_PUBLISHED = Conditional(scripts.load("schedule_not_yet_published"))


@dataclass(frozen=True)
class Schedule:
    """One schedule trigger of one function, with its parsed expression and time zone."""

    function: Function
    index: int  # the trigger's position in the function's triggers
    trigger: ScheduleTrigger
    expression: Expression
    zone: ZoneInfo

    @property
    def rule(self) -> str:
        """The rule's name, as the ARN in the event carries it."""
        return f"{self.function.name}-schedule-{self.index}"

    @property
    def key(self) -> str:
        """The Redis key holding the last tick published (seconds since the epoch, a string)."""
        return f"lambdalite:schedule:{self.function.name}:{self.index}"

    def after(self, t: float) -> float | None:
        """The first tick strictly after ``t``, or None when the schedule has no more."""
        return self.expression.after(t, self.zone)

    def at_or_before(self, t: float) -> float | None:
        """The last tick at or before ``t``, or None."""
        return self.expression.at_or_before(t, self.zone)

    def arn(self, settings: Settings) -> str:
        return f"arn:aws:events:{settings.region}:{settings.account_id}:rule/{self.rule}"

    def event(self, tick: float, settings: Settings) -> Event:
        """The tick's event: what Lambda gets from a scheduled rule, or the trigger's ``input``.

        Its id is the same for the same rule and tick wherever it is made.
        """
        event_id = str(uuid.uuid5(_NAMESPACE, f"{self.rule}/{tick:.0f}"))
        payload: Any
        if self.trigger.input is not None:
            payload = self.trigger.input
        else:
            payload = {
                "version": "0",
                "id": event_id,
                "detail-type": "Scheduled Event",
                "source": "aws.events",
                "account": settings.account_id,
                "time": iso(tick),
                "region": settings.region,
                "resources": [self.arn(settings)],
                "detail": {},
            }
        return Event(function=self.function.name, payload=payload, id=event_id, source="schedule")


def iso(t: float) -> str:
    """``2026-12-06T09:00:00Z``, as EventBridge writes an event's time."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def schedules(registry: Registry) -> list[Schedule]:
    """Every schedule trigger of the registry (already validated when it was loaded)."""
    out = []
    for fn in registry:
        for index, trigger in enumerate(fn.triggers):
            if isinstance(trigger, ScheduleTrigger):
                out.append(Schedule(fn, index, trigger, parse(trigger.expression), zone(trigger.timezone)))
    return out


def clock(settings: Settings) -> Callable[[], float]:
    """Schedule time: the clock, or for tests a faster one (``schedule_clock_rate`` times as fast from
    ``schedule_clock_origin``), the same in every process given the same settings."""
    rate, origin = settings.schedule_clock_rate, settings.schedule_clock_origin
    if rate == 1.0:
        return time.time
    return lambda: origin + (time.time() - origin) * rate


def next_ticks(registry: Registry, now: float) -> Iterator[tuple[Schedule, float | None]]:
    """Each schedule with its next tick after ``now`` (None: it has no more)."""
    for schedule in schedules(registry):
        yield schedule, schedule.after(now)


class Ticker:
    """Publishes each schedule's ticks as they fall due; the scaler calls :meth:`step` every step.

    A step costs nothing until a tick is due (the next one of each schedule is kept in memory); the
    first step reads each schedule's key once, to settle what was missed while no scaler ran.
    """

    def __init__(self, client: redis.Redis, registry: Registry, publisher: Publisher, settings: Settings,
                 now: Callable[[], float] | None = None) -> None:
        self.client = client
        self.publisher = publisher
        self.settings = settings
        self.now = now or clock(settings)
        self.schedules = schedules(registry)
        self.due: dict[str, float | None] = {}  # schedule key -> its next tick to publish
        self.held: dict[str, float] = {}  # schedule key -> when a failed publish may be tried again
        self.started = False
        self.grace = START_GRACE * settings.schedule_clock_rate

    def replace(self, registry: Registry) -> None:
        """Tick the schedules of ``registry`` (a new revision) from now on: an unchanged schedule
        keeps its next tick; a new or changed one starts with its first tick after now (nothing
        before it counts as missed); a removed one ticks no more."""
        before = {s.key: s for s in self.schedules}
        self.schedules = schedules(registry)
        now = self.now()
        due: dict[str, float | None] = {}
        for schedule in self.schedules:
            old = before.get(schedule.key)
            if old is not None and old.trigger == schedule.trigger and schedule.key in self.due:
                due[schedule.key] = self.due[schedule.key]
            else:
                due[schedule.key] = schedule.after(now)
        self.due = due
        self.held = {k: v for k, v in self.held.items() if k in due}

    def step(self) -> None:
        """Publish every tick now due. Raises redis's transient errors (the scaler backs off and
        steps again: a tick not yet published stays due); any other failure is logged."""
        if not self.schedules:
            return
        now = self.now()
        if not self.started:
            self._start(now)
            self.started = True
        for schedule in self.schedules:
            tick = self.due.get(schedule.key)
            if tick is None or tick > now or self.held.get(schedule.key, -1.0) > now:
                continue
            try:
                self._tick(schedule, tick, now)
            except TRANSIENT:
                raise
            except Exception:  # a bug or a refused write costs this tick's attempt, not the scaler's step
                log.exception("%s: tick %s failed; trying again in %.0f s", schedule.rule, iso(tick), RETRY)
                self.held[schedule.key] = now + RETRY * self.settings.schedule_clock_rate

    def _start(self, now: float) -> None:
        """Settle each schedule's ticks from before this scaler started: missed while no scaler ran
        (skipped, or the latest run with ``catch_up = "latest"``), or just due (run)."""
        present = now - self.grace
        raw = self.client.mget([s.key for s in self.schedules])
        for schedule, value in zip(self.schedules, raw, strict=True):
            last = _tick_of(value)
            self.due[schedule.key] = schedule.after(present)
            if last is None:
                continue  # never ticked: nothing was missed
            latest = schedule.at_or_before(present)
            if latest is None or latest <= last:
                continue
            missed = schedule.expression.count(last, latest, schedule.zone, cap=COUNT_CAP)
            first = schedule.after(last) or latest
            span = f"{missed}{'+' if missed >= COUNT_CAP else ''} tick(s) from {iso(first)} to {iso(latest)}"
            age = now - latest
            if schedule.trigger.catch_up == "latest" and age <= schedule.function.maximum_event_age:
                log.info("%s: %s missed while no scaler ran; running the latest (catch_up = \"latest\")%s",
                         schedule.rule, span, f", skipping {missed - 1}" if missed > 1 else "")
                try:
                    self._publish(schedule, latest)
                except TRANSIENT:
                    raise
                except Exception:  # as in step: logged, and the scaler's step goes on
                    log.exception("%s: the catch-up of tick %s failed; skipped", schedule.rule, iso(latest))
            elif schedule.trigger.catch_up == "latest":
                log.warning("%s: %s missed while no scaler ran; skipped: the latest is %.0f s old, beyond "
                            "maximum_event_age (%.0f s)", schedule.rule, span, age,
                            schedule.function.maximum_event_age)
            else:
                log.warning("%s: %s missed while no scaler ran; skipped (catch_up = \"none\")", schedule.rule, span)

    def _tick(self, schedule: Schedule, tick: float, now: float) -> None:
        """Publish the latest tick due (``tick`` or, when this scaler fell behind, a later one)."""
        latest = schedule.at_or_before(now)
        if latest is not None and latest > tick:
            # the ticks before the latest that no other scaler published either are skipped
            [raw] = self.client.mget([schedule.key])
            since = max(tick - 1e-3, _tick_of(raw) or -1.0)
            skipped = schedule.expression.count(since, latest - 1e-3, schedule.zone)
            if skipped:
                log.warning("%s: this scaler fell %.0f s behind and no other published %d tick(s) from %s; "
                            "skipped, running %s", schedule.rule, now - tick, skipped,
                            iso(schedule.after(since) or tick), iso(latest))
            tick = latest
        if now - tick <= schedule.function.maximum_event_age:
            self._publish(schedule, tick)
        else:
            log.warning("%s: tick %s skipped: %.0f s old, beyond maximum_event_age", schedule.rule, iso(tick),
                        now - tick)
        self.due[schedule.key] = schedule.after(tick)

    def _publish(self, schedule: Schedule, tick: float) -> bool:
        """Publish ``tick``'s event with the write of the schedule's key, unless some scaler already
        did; returns whether this call did."""
        following = schedule.after(tick)
        keep = int((following - tick if following is not None else 0) + schedule.function.maximum_event_age
                   + KEY_MARGIN)
        stamp = f"{tick:.0f}"
        event = schedule.event(tick, self.settings)

        def record(pipe: Pipeline) -> None:
            pipe.set(schedule.key, stamp, ex=keep)

        ids = self.publisher.publish_if(_NOT_YET_PUBLISHED, [schedule.key], [stamp], [event], also=record)
        if ids is None:
            log.debug("%s: tick %s was published by another scaler", schedule.rule, iso(tick))
            return False
        log.info("%s: tick %s published (event %s)", schedule.rule, iso(tick), event.id)
        return True


def _tick_of(raw: Any) -> float | None:
    """A schedule key's value as a tick, or None (absent, or not a number: counted as never ticked)."""
    try:
        return float(raw) if raw is not None else None
    except (TypeError, ValueError):
        return None
