"""The console's history: fixed-size buckets per function in Redis, written by the real worker in the
transaction of each outcome, bounded however much traffic goes by."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from broker import history
from broker.history import DAY, HOUR
from tests.stack import Scaler, invoke, publish

HANDLER = '''
import time


def ok(event, context):
    time.sleep(event.get("sleep", 0))
    return event


def fail(event, context):
    raise RuntimeError("no")
'''

FUNCTIONS = """
[functions.ok]
handler = "hist.ok"
[functions.fail]
handler = "hist.fail"
retries = 0
"""


def _record(r: redis.Redis, now: float, duration: float = 10, failed: bool = False, dead: bool = False,
            age: float = 0) -> None:
    with r.pipeline(transaction=True) as pipe:
        history.record(pipe, "f", now, duration, failed, dead, age)
        pipe.execute()


def test_buckets_count_invocations_errors_durations_and_ages(r: redis.Redis) -> None:
    now = 1_800_000_030.0
    _record(r, now, duration=5)
    _record(r, now + 1, duration=40, failed=True, dead=True, age=1500)
    _record(r, now + 2, duration=1000)
    hour = history.series(r, "f", HOUR, now + 2)
    assert len(hour) == 60
    last = hour[-1]
    assert last.start == int(now // 60 * 60)
    assert (last.invocations, last.errors, last.dead) == (3, 1, 1)
    assert (last.duration_sum, last.duration_min, last.duration_max) == (1045, 5, 1000)
    assert last.age_max == 1500
    assert last.success_rate == pytest.approx(200 / 3)
    assert all(b.invocations == 0 for b in hour[:-1])
    day = history.series(r, "f", DAY, now + 2)
    assert len(day) == 288 and day[-1].invocations == 3
    # Durations 5, 40 and 1000 ms: p50 falls in 40's bin (32 to 45 ms), p99 is the highest seen.
    p50 = history.percentile(last, 0.5)
    assert p50 is not None and 40 <= p50 <= 40 * 2 ** 0.5
    assert history.percentile(last, 0.99) == 1000
    assert history.percentile(hour[0], 0.5) is None


def test_a_new_window_starts_its_bucket_afresh_and_the_hash_stays_bounded(r: redis.Redis) -> None:
    start = 1_800_000_000.0
    # Two days and more, an invocation every 50 s: every slot of both rings is written over.
    times = [start + i * 50 for i in range(int(2.2 * 24 * 3600 / 50))]
    for t in times:
        _record(r, t, duration=1)
    assert r.hlen(history.history_key("f")) == HOUR.slots + DAY.slots
    end = times[-1]
    for ring in (HOUR, DAY):
        since = (end // ring.width - ring.slots + 1) * ring.width
        expected = sum(1 for t in times if t >= since)
        assert sum(b.invocations for b in history.series(r, "f", ring, end)) == expected
    assert 0 < r.ttl(history.history_key("f")) <= history.KEEP


def test_the_hash_has_its_full_size_from_the_first_write(r: redis.Redis) -> None:
    start = 1_800_000_000.0
    key = history.history_key("f")
    _record(r, start)
    assert r.hlen(key) == HOUR.slots + DAY.slots
    # Only the first write's own bucket counts: the empty ones read as nothing.
    assert sum(b.invocations for b in history.series(r, "f", HOUR, start)) == 1
    assert sum(b.invocations for b in history.series(r, "f", DAY, start)) == 1
    first = r.memory_usage(key)
    assert first is not None
    # A day of traffic, a bucket of each ring written every few minutes: not one byte more.
    for i in range(1, 24 * 12 + 1):
        _record(r, start + i * 300, duration=i)
    assert r.memory_usage(key) == first


def test_an_old_bucket_is_not_read_as_the_present(r: redis.Redis) -> None:
    now = 1_800_000_000.0
    _record(r, now)
    # The same slot an hour (minute ring) and a day (five-minute ring) later: nothing there yet.
    assert history.series(r, "f", HOUR, now + 3600)[-1].invocations == 0
    assert history.series(r, "f", DAY, now + 24 * 3600)[-1].invocations == 0
    assert history.series(r, "f", HOUR, now + 3600)[0].invocations == 0


def test_gauges_keep_the_highest_and_add_throttles(r: redis.Redis) -> None:
    now = 1_800_000_000.0
    for conc, queued, throttles in ((2, 10, 1), (5, 3, 0), (1, 7, 2)):
        with r.pipeline() as pipe:
            history.sample(pipe, "f", now, conc, queued, 1234, throttles)
            pipe.execute()
    b = history.series(r, "f", HOUR, now)[-1]
    assert (b.concurrency_max, b.queued_max, b.oldest_max, b.throttles, b.invocations) == (5, 10, 1234, 3, 0)


def test_damage_is_repaired_not_an_error(r: redis.Redis) -> None:
    now = 1_800_000_000.0
    key = history.history_key("f")
    r.hset(key, HOUR.field(int(now)), "not,a,bucket")
    _record(r, now, duration=7)
    assert history.series(r, "f", HOUR, now)[-1].invocations == 1
    r.delete(key)
    r.set(key, "a string")
    with r.pipeline() as pipe:
        history.record(pipe, "f", now, 3, False, False, 0)
        replies = pipe.execute()
    assert r.type(key) == b"hash" and history.series(r, "f", HOUR, now)[-1].invocations == 1
    assert any(k.startswith(b"lambdalite:quarantine:") for k in r.scan_iter())
    assert replies[0], "the move aside is reported"
    r.delete(key)
    r.rpush(key, "x")
    assert history.series(r, "f", HOUR, now)[-1].invocations == 0, "a key of another type reads as empty"


@pytest.fixture
def stack(project: Path, redis_url: str) -> Iterator[Scaler]:
    (project / "hist.py").write_text(HANDLER)
    (project / "lambdalite.toml").write_text(FUNCTIONS)
    with Scaler(project, LAMBDALITE_IDLE_TIMEOUT="60") as scaler:
        yield scaler


def test_the_worker_writes_each_outcome_into_the_history(stack: Scaler, r: redis.Redis, redis_url: str,
                                                          project: Path) -> None:
    assert invoke(redis_url, project, "ok", {"sleep": 0.05}).ok
    assert invoke(redis_url, project, "ok", {}).ok
    assert not invoke(redis_url, project, "fail", {}).ok
    publish(redis_url, project, "fail", {})  # asynchronous, retries = 0: dead-lettered
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        b = history.total(history.series(r, "fail", HOUR, time.time()))
        if b.dead:
            break
        time.sleep(0.1)
    now = time.time()
    ok = history.total(history.series(r, "ok", HOUR, now))
    assert (ok.invocations, ok.errors, ok.dead) == (2, 0, 0)
    assert ok.duration_max >= 50, "the handler slept 50 ms"
    fail = history.total(history.series(r, "fail", HOUR, now))
    assert (fail.invocations, fail.errors, fail.dead) == (2, 2, 1)
    assert history.total(history.series(r, "ok", DAY, now)).invocations == 2


def test_a_figure_too_large_saturates_instead_of_failing_the_transaction(r: redis.Redis) -> None:
    now = 1_800_000_000.0
    with r.pipeline(transaction=True) as pipe:
        history.record(pipe, "f", now, 5e9, False, False, 9e9)
        pipe.set("after", 1)
        pipe.execute()
    b = history.series(r, "f", HOUR, now)[-1]
    assert (b.invocations, b.duration_max, b.age_max) == (1, 2**32 - 1, 2**32 - 1)
    assert r.get("after") == b"1"
