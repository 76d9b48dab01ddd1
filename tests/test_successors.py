"""Staged successors (broker.successors) against a real Redis: applied whole by a clean success before
their deadline, or not at all."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis
from rq.job import Job
from rq.serializers import JSONSerializer

from broker import quarantine, successors
from broker.envelope import Event
from broker.queues import WAKE_CHANNEL, Publisher, function_queue
from broker.registry import Registry, load_registry


@pytest.fixture
def registry(project: Path) -> Registry:
    (project / "lambdalite.toml").write_text('[functions.f]\nhandler = "handlers.noop.handler"\n')
    return load_registry(project / "lambdalite.toml")


def stage(r: redis.Redis, registry: Registry, after: str = "e1", release_by: float | None = None) -> Event:
    publisher = Publisher(r, registry)
    event = Event("f", payload={"Records": [{"n": 1}]})
    publisher.stage(after, publisher.prepare(event), time.time() + 60 if release_by is None else release_by,
                    ("cursor", {"event": event.id, "last": 7}), ("cursor:stats", {"batches": 1, "records": 3}))
    return event


def release(r: redis.Redis, event_id: str = "e1") -> list:
    with r.pipeline(transaction=True) as pipe:
        successors.release(pipe, event_id)
        return pipe.execute()


def test_a_clean_success_publishes_the_successor_and_its_bookkeeping_at_once(r: redis.Redis,
                                                                              registry: Registry) -> None:
    event = stage(r, registry)
    assert function_queue(r, "f").job_ids == [], "staged, not published"
    r.hset("cursor:stats", "batches", 4)
    wake = r.pubsub(ignore_subscribe_messages=True)
    wake.subscribe(WAKE_CHANNEL)
    wake.get_message(timeout=1)
    assert release(r) == [[]]
    assert function_queue(r, "f").job_ids == [event.id]
    job = Job.fetch(event.id, connection=r, serializer=JSONSerializer)
    assert Event.from_dict(job.args[0]) == event and job.get_status() == "queued"
    assert r.hgetall("cursor") == {b"event": event.id.encode(), b"last": b"7"}
    assert r.hgetall("cursor:stats") == {b"batches": b"5", b"records": b"3"}
    assert r.exists(successors.key("e1")) == 0
    message = wake.get_message(timeout=1)
    assert message is not None and message["data"] == b"f"
    wake.close()
    assert release(r) == [[]] and function_queue(r, "f").job_ids == [event.id], "applied once"


def test_nothing_happens_after_the_deadline_or_without_a_staged_successor(r: redis.Redis,
                                                                          registry: Registry) -> None:
    assert release(r, "nothing") == [[]]
    stage(r, registry, release_by=time.time() - 0.01)
    release(r)
    assert function_queue(r, "f").job_ids == [] and not r.exists("cursor")
    assert r.exists(successors.key("e1")), "left for the source, which drops it"
    with r.pipeline(transaction=True) as pipe:
        successors.drop(pipe, "e1")
        pipe.execute()
    assert not r.exists(successors.key("e1"))
    stage(r, registry, after="e2")
    assert 0 < r.ttl(successors.key("e2")) <= successors.KEEP, "an orphan does not stay for ever"


def test_damaged_keys_are_moved_aside_and_a_damaged_successor_is_never_applied(
        r: redis.Redis, registry: Registry, caplog: pytest.LogCaptureFixture) -> None:
    r.set(successors.key("e1"), "garbage")
    found = quarantine.report(release(r))
    assert found and found[0][0] == successors.key("e1") and "holds a string" in found[0][1]
    assert function_queue(r, "f").job_ids == []

    event = stage(r, registry)
    r.set("cursor", "garbage")
    r.hset("cursor:stats", "records", "many")
    found = quarantine.report(release(r))
    assert {key for key, _, _ in found} == {"cursor", "cursor:stats"}
    assert function_queue(r, "f").job_ids == [event.id]
    assert r.hget("cursor", "last") == b"7" and r.hget("cursor:stats", "records") == b"3"

    stage(r, registry, after="e3")
    r.hdel(successors.key("e3"), "queue")
    assert release(r, "e3") == [[]]
    stage(r, registry, after="e4")
    r.hset(successors.key("e4"), "n:records", "three")
    assert release(r, "e4") == [[]]
    assert function_queue(r, "f").job_ids == [event.id], "a staged successor missing a part is not applied"


@pytest.mark.parametrize(("result", "clean"), [
    (None, True), ({"x": 1}, True), ({"batchItemFailures": []}, True), ([1], True),
    ({"batchItemFailures": [{"itemIdentifier": "1"}]}, False), ({"batchItemFailures": "junk"}, False),
])
def test_only_a_result_without_failed_items_is_clean(result: object, clean: bool) -> None:
    assert successors.clean(result) is clean
