"""The worker's parts one by one, on a real Redis and real processes: the concurrency count across
scalers (workers.slots), the process-tree limits (workers.limits), damaged job hashes
(workers.jobs) and what a failure becomes (workers.outcomes). The whole worker runs end to end in
tests/test_runtime.py, tests/test_scaler.py and the stack tests."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis

from broker import deadletter, results, stats
from broker.delayed import DELAYED_KEY
from broker.envelope import Event
from broker.queues import Publisher, function_queue
from broker.registry import Registry, load_registry
from workers import jobs, limits
from workers.outcomes import Outcomes
from workers.slots import Slots, slots_key


@pytest.fixture
def registry(project: Path) -> Registry:
    (project / "lambdalite.toml").write_text(
        '[functions.f]\nhandler = "h.f"\nmax_concurrency = 3\nretries = 1\nretry_backoff = 2\n'
        '[functions.g]\nhandler = "h.g"\n')
    return load_registry(project / "lambdalite.toml")


def alive(r: redis.Redis, *scalers: str) -> None:
    for scaler in scalers:
        r.set(stats.alive_key(scaler), 1, ex=30)


# workers.slots: max_concurrency across every scaler sharing the Redis

def test_slots_hold_the_cap_across_scalers_and_drop_the_dead_ones(r: redis.Redis, registry: Registry) -> None:
    fn = registry.functions["f"]
    queue = function_queue(r, "f")
    a, b = Slots(r, "a", max_workers=10), Slots(r, "b", max_workers=10)
    alive(r, "a", "b")
    taken = [a.take(fn, queue, 0).taken, b.take(fn, queue, 0).taken, a.take(fn, queue, 1).taken]
    assert taken == [True, True, True]
    assert not b.take(fn, queue, 1).taken, "the fourth slot passes max_concurrency 3"
    assert a.census([(fn, queue, 2)])[0].workers == 3
    r.delete(stats.alive_key("b"))  # scaler b died: its worker no longer counts
    census = a.census([(fn, queue, 2)])[0]
    assert census.workers == 2 and r.hkeys(slots_key("f")) == [b"a"]
    assert a.take(fn, queue, 2).taken


def test_the_census_counts_queued_and_running_and_heals_a_damaged_count(r: redis.Redis, registry: Registry,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    fn = registry.functions["f"]
    queue = function_queue(r, "f")
    r.rpush(queue.key, "j1", "j2")
    r.zadd(queue.started_job_registry.key, {"j3": time.time() + 60})
    alive(r, "a", "b")
    r.hset(slots_key("f"), mapping={"a": "7", "b": "lots"})  # a's own count is rewritten from what it has
    with caplog.at_level(logging.WARNING, logger="lambdalite.scaler"):
        census = Slots(r, "a", max_workers=10).census([(fn, queue, 1)])[0]
    assert (census.workers, census.queued, census.running, census.taken) == (1, 2, 1, False)
    assert r.hgetall(slots_key("f")) == {b"a": b"1"}
    assert "the count of scaler b was 'lots'" in caplog.text


def test_the_census_survives_a_redis_that_forgot_its_script(r: redis.Redis, registry: Registry) -> None:
    fn = registry.functions["f"]
    queue = function_queue(r, "f")
    slots = Slots(r, "a", max_workers=10)
    alive(r, "a")
    assert slots.take(fn, queue, 0).taken
    r.script_flush()  # as after a restart of Redis
    census = slots.census([(fn, queue, 1)])[0]
    assert census.workers == 1
    assert slots.take(fn, queue, 1).taken and slots.take(fn, queue, 2).taken
    assert not slots.take(fn, queue, 3).taken, "max_concurrency 3"


def test_without_max_concurrency_hosts_add_up(r: redis.Redis, registry: Registry) -> None:
    """A function without ``max_concurrency``: each host's own LAMBDALITE_MAX_WORKERS bounds its part
    (the scaler's grow), not the count across hosts."""
    fn = registry.functions["g"]
    queue = function_queue(r, "g")
    a, b = Slots(r, "a", max_workers=2), Slots(r, "b", max_workers=2)
    alive(r, "a", "b")
    assert a.take(fn, queue, 0).taken and a.take(fn, queue, 1).taken
    assert b.take(fn, queue, 0).taken and b.take(fn, queue, 1).taken
    assert a.census([(fn, queue, 2)])[0].workers == 4


# workers.limits: the process tree below a worker

@pytest.fixture
def tree() -> Iterator[psutil.Process]:
    """A shell with two children of its own (a sleep, and a python holding 64 MB)."""
    script = (f'sleep 60 & {sys.executable} -c "b = bytearray(64 * 2**20); import time; time.sleep(60)" & '
              'echo started; wait')
    proc = subprocess.Popen(["sh", "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "started\n"
    root = psutil.Process(proc.pid)
    deadline = time.monotonic() + 10
    while limits.tree_rss(root) < 64 * 2**20:
        assert time.monotonic() < deadline, "the 64 MB child did not start"
        time.sleep(0.05)
    yield root
    limits.kill_tree(root)
    proc.kill()
    proc.wait(10)
    proc.stdout.close()


def test_the_tree_is_read_and_killed_whole_except_what_is_kept(tree: psutil.Process) -> None:
    children = sorted(tree.children(), key=lambda p: p.pid)
    assert sorted(limits.descendant_pids(tree.pid) or []) == sorted(p.pid for p in children)
    assert 64 * 2**20 <= limits.tree_rss(tree) < 200 * 2**20
    keep = children[0].pid
    assert [p.pid for p in limits.strays(tree, keep)] == [children[1].pid]
    assert limits.kill_tree(tree, keep=keep) == 1
    deadline = time.monotonic() + 5
    while limits.descendant_pids(tree.pid) != [keep]:
        assert time.monotonic() < deadline, limits.descendant_pids(tree.pid)
        time.sleep(0.02)
    assert limits.strays(tree, keep) == []
    assert limits.kill_tree(tree) == 1 and tree.is_running()


def test_dir_usage_counts_allocated_blocks_and_not_symlinks(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "data").write_bytes(os.urandom(3 * 2**20))
    with (tmp_path / "sparse").open("wb") as f:
        f.truncate(1 << 30)  # a GB that occupies nothing
    (tmp_path / "link").symlink_to("/usr")
    used = limits.dir_usage(str(tmp_path))
    assert 3 * 2**20 <= used < 4 * 2**20
    assert limits.dir_usage(str(tmp_path / "missing")) == 0


# workers.jobs: hashes RQ cannot read

def test_job_ids_from_queue_entries() -> None:
    assert jobs.job_id(b"abc-1") == "abc-1"
    assert jobs.job_id(b"rq:job:abc") is None and jobs.job_id(b"\xff\xfe") is None and jobs.job_id(b"") is None


def test_a_damaged_job_is_unreadable_and_its_event_salvaged(r: redis.Redis, registry: Registry) -> None:
    event = Event("f", {"n": 1})
    job_id = Publisher(r, registry).publish(event)
    assert list(jobs.read(r, job_id).args) == [event.to_dict()]
    key = f"rq:job:{job_id}"
    r.hset(key, "created_at", "the thirteenth month")
    with pytest.raises(jobs.UnreadableJob) as err:
        jobs.read(r, job_id)
    assert not err.value.missing and key in str(err.value)
    assert jobs.salvage(r, key) == event, "the envelope in its data is kept"
    r.hset(key, "data", b"\x00garbage")
    assert jobs.salvage(r, key) is None
    with pytest.raises(jobs.UnreadableJob) as err:
        jobs.read(r, "no-such-job")
    assert err.value.missing


# workers.outcomes: what a failure becomes

def test_an_async_failure_is_retried_with_backoff_then_dead_lettered(r: redis.Redis, registry: Registry) -> None:
    outcomes = Outcomes(r, Publisher(r, registry), registry.functions["f"])
    event = Event("f", {"n": 1})
    error = {"errorType": "ValueError", "errorMessage": "no"}
    with r.pipeline() as pipe:
        line = outcomes.failure(pipe, event, error, 12.0)
        pipe.execute()
    assert outcomes.ended == "retried" and "retrying in 2s" in line
    [(raw, due)] = r.zrange(DELAYED_KEY, 0, -1, withscores=True)
    assert json.loads(raw)["attempt"] == 1 and time.time() + 1 < due <= time.time() + 2.1
    assert deadletter.count(r, "f") == 0 and results.fetch(r, event.id) is None
    with r.pipeline() as pipe:
        line = outcomes.failure(pipe, event.retried(), error, 12.0)  # the last of retries = 1
        pipe.execute()
    assert outcomes.ended == "dead" and "dead-lettered after 2 attempt(s): ValueError" in line
    [entry] = deadletter.entries(r, "f")
    assert entry["event"]["id"] == event.id and entry["error"] == error
    outcome = results.fetch(r, event.id)
    assert outcome is not None and (outcome.status, outcome.attempts) == ("dead", 2)


def test_a_synchronous_failure_is_never_retried(r: redis.Redis, registry: Registry) -> None:
    outcomes = Outcomes(r, Publisher(r, registry), registry.functions["f"])
    event = Event("f", {}, invocation_type="RequestResponse")
    with r.pipeline() as pipe:
        assert outcomes.failure(pipe, event, {"errorType": "E"}, 1.0) == ""
        pipe.execute()
    outcome = results.fetch(r, event.id)
    assert outcome is not None and outcome.status == "failed"
    assert r.zcard(DELAYED_KEY) == 0 and deadletter.count(r, "f") == 0

