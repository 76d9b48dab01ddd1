"""Schedules on a real Redis, with the clock injected: one event per tick however many scalers tick,
the scheduled-rule event, catch-up after a stop, keys of the wrong type, and the next tick in status."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from broker.envelope import Event
from broker.queues import Publisher, function_queue
from broker.registry import Registry, load_registry
from broker.schedules import Ticker
from broker.settings import load_settings

ROOT = Path(__file__).resolve().parent.parent
MINUTE = 60.0
T0 = datetime(2026, 12, 6, 9, 0, tzinfo=UTC).timestamp()  # a tick of rate(1 minute)

TOML = """
[functions.tick]
handler = "handlers.payments.handler"
maximum_event_age = {age}

[[functions.tick.triggers]]
source = "schedule"
expression = "{expression}"
catch_up = "{catch_up}"
{extra}
"""


def registry(project: Path, expression: str = "rate(1 minute)", catch_up: str = "none", age: int = 21600,
             extra: str = "") -> Registry:
    path = project / "lambdalite.toml"
    path.write_text(TOML.format(expression=expression, catch_up=catch_up, age=age, extra=extra))
    return load_registry(path)


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def ticker(r: redis.Redis, reg: Registry, clock: Clock) -> Ticker:
    """A scaler's ticker with its own connection, as another process would have."""
    client = redis.Redis.from_url(load_settings().redis_url)
    return Ticker(client, reg, Publisher(client, reg), load_settings(), now=clock)


def published(r: redis.Redis, function: str = "tick") -> list[Event]:
    """The events on the function's queue, oldest first."""
    queue = function_queue(r, function)
    return [Event.from_dict(job.args[0]) for job in queue.get_jobs()]


def times(events: list[Event]) -> list[str]:
    return [e.payload["time"] for e in events]


def test_two_scalers_publish_each_tick_once(project: Path, r: redis.Redis) -> None:
    reg = registry(project)
    clock = Clock(T0 - 30)
    a, b = ticker(r, reg, clock), ticker(r, reg, clock)
    for minute in range(5):
        for offset in (0.2, 0.9, 7.0):  # both step several times during each tick's minute, either first
            clock.t = T0 + minute * MINUTE + offset
            (a if minute % 2 else b).step()
            (b if minute % 2 else a).step()
    assert times(published(r)) == [f"2026-12-06T09:0{m}:00Z" for m in range(5)]
    assert int(r.get("lambdalite:schedule:tick:0") or 0) == int(T0 + 4 * MINUTE)


def test_the_event_is_a_scheduled_rule_event(project: Path, r: redis.Redis) -> None:
    reg = registry(project, expression="cron(0 12 * * ? *)", extra='timezone = "Europe/Paris"')
    noon_paris = datetime(2026, 12, 6, 11, 0, tzinfo=UTC).timestamp()  # 12:00 CET
    clock = Clock(noon_paris - 5)
    t = ticker(r, reg, clock)
    t.step()
    clock.t = noon_paris + 0.5
    t.step()
    [event] = published(r)
    assert event.source == "schedule" and event.invocation_type == "Event"
    assert event.payload == {
        "version": "0",
        "id": event.id,
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": "000000000000",
        "time": "2026-12-06T11:00:00Z",
        "region": "us-east-1",
        "resources": ["arn:aws:events:us-east-1:000000000000:rule/tick-schedule-0"],
        "detail": {},
    }
    # the same rule and tick give the same id, in any process
    assert event.id == t.schedules[0].event(noon_paris, load_settings()).id


def test_input_is_sent_as_it_is(project: Path, r: redis.Redis) -> None:
    reg = registry(project, extra='input = { job = "cleanup", days = 30, tags = ["a", "b"] }')
    clock = Clock(T0 - 1)
    t = ticker(r, reg, clock)
    t.step()
    clock.t = T0 + 1
    t.step()
    assert [e.payload for e in published(r)] == [{"job": "cleanup", "days": 30, "tags": ["a", "b"]}]


def run_then_stop(r: redis.Redis, reg: Registry) -> None:
    """A scaler that ticks 09:00 and 09:01, then stops."""
    clock = Clock(T0 - 10)
    first = ticker(r, reg, clock)
    for minute in (0, 1):
        clock.t = T0 + minute * MINUTE + 0.5
        first.step()
    assert times(published(r)) == ["2026-12-06T09:00:00Z", "2026-12-06T09:01:00Z"]


def test_ticks_missed_while_no_scaler_ran_are_skipped_by_default(project: Path, r: redis.Redis,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    reg = registry(project)
    run_then_stop(r, reg)
    # nothing runs over 09:02, 09:03 and 09:04; a scaler starts at 09:04:30
    clock = Clock(T0 + 4 * MINUTE + 30)
    with caplog.at_level(logging.INFO, logger="lambdalite.schedules"):
        later = ticker(r, reg, clock)
        later.step()
        assert len(published(r)) == 2
        assert ("tick-schedule-0: 3 tick(s) from 2026-12-06T09:02:00Z to 2026-12-06T09:04:00Z missed while no "
                "scaler ran; skipped (catch_up = \"none\")") in caplog.messages
        clock.t = T0 + 5 * MINUTE + 0.5  # the next tick runs on time
        later.step()
    assert times(published(r))[2:] == ["2026-12-06T09:05:00Z"]


def test_catch_up_latest_runs_the_most_recent_missed_tick_once(project: Path, r: redis.Redis,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    reg = registry(project, catch_up="latest")
    run_then_stop(r, reg)
    clock = Clock(T0 + 4 * MINUTE + 30)
    with caplog.at_level(logging.INFO, logger="lambdalite.schedules"):
        a, b = ticker(r, reg, clock), ticker(r, reg, clock)  # two scalers start together
        a.step()
        b.step()
        assert ("tick-schedule-0: 3 tick(s) from 2026-12-06T09:02:00Z to 2026-12-06T09:04:00Z missed while no "
                "scaler ran; running the latest (catch_up = \"latest\"), skipping 2") in caplog.messages
        clock.t = T0 + 5 * MINUTE + 0.5
        b.step()
        a.step()
    assert times(published(r))[2:] == ["2026-12-06T09:04:00Z", "2026-12-06T09:05:00Z"]


def test_catch_up_latest_skips_a_tick_older_than_maximum_event_age(project: Path, r: redis.Redis,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    reg = registry(project, catch_up="latest", age=30)
    run_then_stop(r, reg)
    clock = Clock(T0 + 4 * MINUTE + 45)  # the latest missed tick (09:04) is 45 s old
    with caplog.at_level(logging.INFO, logger="lambdalite.schedules"):
        ticker(r, reg, clock).step()
    assert len(published(r)) == 2
    assert any("beyond maximum_event_age (30 s)" in m for m in caplog.messages)


def test_a_scaler_that_starts_just_after_a_tick_runs_it(project: Path, r: redis.Redis) -> None:
    reg = registry(project)
    run_then_stop(r, reg)
    clock = Clock(T0 + 2 * MINUTE + 1)  # restarted a second after 09:02 (honcho, systemd)
    ticker(r, reg, clock).step()
    assert times(published(r))[2:] == ["2026-12-06T09:02:00Z"]


def test_a_scaler_that_fell_behind_runs_the_latest_due_tick_only(project: Path, r: redis.Redis,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    reg = registry(project)
    clock = Clock(T0 - 10)
    t = ticker(r, reg, clock)
    t.step()
    clock.t = T0 + 3 * MINUTE + 5  # its step was held up over three ticks (Redis away, the machine asleep)
    with caplog.at_level(logging.INFO, logger="lambdalite.schedules"):
        t.step()
    assert times(published(r)) == ["2026-12-06T09:03:00Z"]
    assert ("tick-schedule-0: this scaler fell 185 s behind and no other published 3 tick(s) from "
            "2026-12-06T09:00:00Z; skipped, running 2026-12-06T09:03:00Z") in caplog.messages
    # when another scaler went on meanwhile, nothing was skipped and nothing is said
    other = ticker(r, reg, clock)
    other.step()
    for minute in (4, 5, 6):
        clock.t = T0 + minute * MINUTE + 1
        other.step()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="lambdalite.schedules"):
        t.step()
    assert times(published(r))[1:] == ["2026-12-06T09:04:00Z", "2026-12-06T09:05:00Z", "2026-12-06T09:06:00Z"]
    assert not [m for m in caplog.messages if "behind" in m]


def test_a_schedule_key_of_another_type_is_moved_aside_and_the_tick_goes_out(project: Path,
                                                                             r: redis.Redis) -> None:
    reg = registry(project)
    r.hset("lambdalite:schedule:tick:0", "not", "a tick")
    clock = Clock(T0 - 10)
    t = ticker(r, reg, clock)
    t.step()
    clock.t = T0 + 1
    t.step()
    assert times(published(r)) == ["2026-12-06T09:00:00Z"]
    assert r.get("lambdalite:schedule:tick:0") == str(int(T0)).encode()
    # a value that is not a tick counts as never ticked
    r.set("lambdalite:schedule:tick:0", "garbage")
    clock.t = T0 + MINUTE + 1
    t.step()
    assert len(published(r)) == 2


def test_the_schedule_key_expires_after_it_can_matter(project: Path, r: redis.Redis) -> None:
    reg = registry(project, age=3600)
    clock = Clock(T0 - 1)
    t = ticker(r, reg, clock)
    t.step()
    clock.t = T0 + 1
    t.step()
    assert 0 < r.ttl("lambdalite:schedule:tick:0") <= 60 + 3600 + 7 * 86400


def test_status_shows_each_schedules_next_tick(project: Path, redis_url: str) -> None:
    (project / "lambdalite.toml").write_text(
        '[functions.report]\nhandler = "handlers.payments.handler"\n\n'
        '[[functions.report.triggers]]\nsource = "schedule"\nexpression = "cron(0 12 * * ? *)"\n\n'
        '[[functions.report.triggers]]\nsource = "schedule"\nexpression = "cron(0 2 1 1 ? 2020)"\n\n'
        '[functions.plain]\nhandler = "handlers.payments.handler"\n')
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "LAMBDALITE_REDIS_URL": redis_url}
    before = datetime.now(UTC)

    def run(*args: str) -> Any:
        done = subprocess.run([sys.executable, "-m", "broker.cli", "status", *args], cwd=project, env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    rows = json.loads(run("--json"))["functions"]
    noon = before.replace(hour=12, minute=0, second=0, microsecond=0)
    if noon <= before:
        noon += timedelta(days=1)
    assert rows["report"]["schedules"] == [
        {"rule": "report-schedule-0", "expression": "cron(0 12 * * ? *)", "timezone": "UTC",
         "next_tick": noon.strftime("%Y-%m-%dT%H:%M:%SZ")},
        {"rule": "report-schedule-1", "expression": "cron(0 2 1 1 ? 2020)", "timezone": "UTC", "next_tick": None},
    ]
    assert "schedules" not in rows["plain"]
    table = run().splitlines()
    assert table[0].split()[7:9] == ["next", "tick"]
    assert noon.strftime("%Y-%m-%dT%H:%M:%SZ") in table[1] if table[1].startswith("report") else table[2]
    assert [line.split()[7] for line in table[1:] if line.startswith("plain")] == ["-"]


def test_a_step_with_no_tick_due_costs_no_redis_command(project: Path, r: redis.Redis) -> None:
    reg = registry(project)
    clock = Clock(T0 - 30)
    t = ticker(r, reg, clock)
    t.step()  # the first step reads the schedules' keys
    before = r.info("stats")["total_commands_processed"]
    for i in range(50):
        clock.t = T0 - 29 + i * 0.5
        t.step()
    assert r.info("stats")["total_commands_processed"] - before == 1  # this INFO only
    assert time.time() > 0


def test_a_failed_publish_is_logged_and_tried_again_a_second_later(project: Path, r: redis.Redis,
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    reg = registry(project)
    clock = Clock(T0 - 1)
    t = ticker(r, reg, clock)
    t.step()
    real = t.publisher.publish_if
    calls = []

    def broken_once(*args: Any, **kwargs: Any) -> Any:  # a bug no real part can be made to have
        calls.append(clock.t)
        if len(calls) == 1:
            raise RuntimeError("a bug")
        return real(*args, **kwargs)

    monkeypatch.setattr(t.publisher, "publish_if", broken_once)
    for offset in (0.1, 0.2, 0.5, 1.0, 1.2, 1.3):
        clock.t = T0 + offset
        t.step()  # does not raise: the scaler's step goes on
    assert calls == [T0 + 0.1, T0 + 1.2]
    assert times(published(r)) == ["2026-12-06T09:00:00Z"]
    assert "tick-schedule-0: tick 2026-12-06T09:00:00Z failed; trying again in 1 s" in caplog.messages
