"""The autoscaler: zero to many and back, caps, budgets, fairness, stops and crashes without loss."""

from __future__ import annotations

import json
import shutil
import signal
import time
from pathlib import Path

import psutil
import pytest
import redis

from broker import stats
from broker.queues import function_queue
from tests.stack import Scaler, publish, status
from tests.waiting import wait_until

FIXTURES = Path(__file__).parent / "fixtures"


def setup(project: Path, toml: str) -> Path:
    shutil.copy(FIXTURES / "hostile.py", project / "hostile.py")
    (project / "lambdalite.toml").write_text(toml)
    return project / "calls.log"


def calls(log: Path) -> list[dict]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def finished(log: Path) -> set[str]:
    return {c["id"] for c in calls(log) if c["phase"] == "end"}


def max_overlap(log: Path) -> int:
    edges = sorted((c.get("start") or c.get("end"), 1 if c["phase"] == "start" else -1) for c in calls(log))
    most = now = 0
    for _, delta in edges:
        now += delta
        most = max(most, now)
    return most


def workers_of(scaler: Scaler) -> list[psutil.Process]:
    """The scaler's worker processes (its direct children)."""
    return psutil.Process(scaler.proc.pid).children()


RECORD = """
[functions.rec]
handler = "hostile.record"
timeout = 30
max_concurrency = {cap}
"""


def test_scales_up_to_the_cap_and_back_to_zero(project: Path, redis_url: str) -> None:
    log = setup(project, RECORD.format(cap=4))
    with Scaler(project, LAMBDALITE_IDLE_TIMEOUT="1") as scaler:
        scaler.wait_stepping(redis_url)
        for _ in range(5):  # over half a second of its steps
            assert workers_of(scaler) == [], "no events, no workers"
            time.sleep(0.1)
        events = [publish(redis_url, project, "rec", {"log": str(log), "seconds": 0.5}) for _ in range(12)]
        wait_until(lambda: finished(log) >= {e.id for e in events})
        assert max_overlap(log) == 4
        wait_until(lambda: workers_of(scaler) == [], timeout=10)
        row = status(project)["rec"]
        assert row["succeeded"] == 12 and row["workers"] == 0
        assert row["last_decision"]["action"] == "scale-down"
        # Every decision logged is kept in Redis too, newest first, for the console.
        client = redis.Redis.from_url(redis_url)
        try:
            kept = stats.recent_decisions(client, "rec", count=stats.DECISIONS_KEPT)
        finally:
            client.close()
        actions = [d["action"] for d in kept]
        assert actions[0] == "scale-down" and "scale-up" in actions, actions
        assert [d["at"] for d in kept] == sorted((d["at"] for d in kept), reverse=True)
    out = scaler.output()
    assert "rec: scale-up" in out and "rec: scale-down" in out
    assert out.count("rec: scale-up") + out.count("rec: scale-down") == actions.count("scale-up") + \
        actions.count("scale-down")


def test_memory_budget_caps_workers(project: Path, redis_url: str) -> None:
    log = setup(project, RECORD.format(cap=10).replace("timeout = 30", "timeout = 30\nmemory = 128"))
    with Scaler(project, LAMBDALITE_MEMORY_BUDGET="300") as scaler:
        events = [publish(redis_url, project, "rec", {"log": str(log), "seconds": 0.3}) for _ in range(6)]
        wait_until(lambda: finished(log) >= {e.id for e in events})
    assert max_overlap(log) == 2, "two 128 MB workers fit in 300 MB, three do not"
    assert "rec: hold (memory budget" in scaler.output()


def test_a_flood_on_one_function_does_not_starve_another(project: Path, redis_url: str) -> None:
    toml = RECORD.format(cap=10) + RECORD.format(cap=10).replace("functions.rec", "functions.other")
    log = setup(project, toml)
    with Scaler(project, LAMBDALITE_MAX_WORKERS="3"):
        flood = [publish(redis_url, project, "rec", {"log": str(log), "seconds": 1}) for _ in range(12)]
        time.sleep(0.5)
        other = publish(redis_url, project, "other", {"log": str(log), "seconds": 0.1})
        wait_until(lambda: other.id in finished(log), timeout=10)
        done_flood = finished(log) & {e.id for e in flood}
        assert len(done_flood) < len(flood), "the other function ran before the flood drained"
        wait_until(lambda: finished(log) >= {e.id for e in flood}, timeout=30)


def test_sigkill_of_a_worker_reruns_its_event(project: Path, redis_url: str) -> None:
    log = setup(project, RECORD.format(cap=1))
    with Scaler(project) as scaler:
        event = publish(redis_url, project, "rec", {"log": str(log), "seconds": 2})
        wait_until(lambda: any(c["phase"] == "start" for c in calls(log)))
        killed_at = time.monotonic()
        for worker in workers_of(scaler):
            worker.kill()
        wait_until(lambda: len([c for c in calls(log) if c["phase"] == "start"]) == 2, timeout=10)
        assert time.monotonic() - killed_at < 5, "crashed work comes back within 5 s"
        wait_until(lambda: event.id in finished(log))
        assert status(project)["rec"]["succeeded"] == 1


def test_a_job_taken_by_a_worker_killed_before_it_started_goes_back(project: Path, redis_url: str,
                                                                     r: redis.Redis) -> None:
    """A worker SIGKILLed between taking a job id off its queue and starting the job (one round
    trip wide; found by the fault runs) leaves the id in its taking list, not nowhere."""
    import socket
    import subprocess
    import sys

    from broker.queues import taking_key
    from workers.processes import worker_name

    log = setup(project, RECORD.format(cap=1))
    event = publish(redis_url, project, "rec", {"log": str(log), "seconds": 0})
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that no longer exists: a worker of an earlier run that was killed
    name = worker_name(socket.gethostname(), "0ldrun00", "rec", gone.pid)
    queue = function_queue(r, "rec")
    r.sadd("rq:workers", f"rq:worker:{name}")
    r.sadd(f"rq:workers:{queue.name}", f"rq:worker:{name}")
    assert r.lmove(queue.key, taking_key(name)) == event.id.encode()  # what the worker's BLMOVE did
    assert queue.count == 0
    with Scaler(project) as scaler:
        wait_until(lambda: event.id in finished(log))
        assert "died holding" in scaler.output()
    assert r.llen(taking_key(name)) == 0
    assert not r.sismember(f"rq:workers:{queue.name}", f"rq:worker:{name}"), "the dead worker is deregistered"
    row = status(project)["rec"]
    assert (row["succeeded"], row["failed"]) == (1, 0), "put back, not a failed attempt"


@pytest.mark.serial  # a stop within 5 s
def test_stop_hands_back_running_events_and_nothing_is_lost(project: Path, redis_url: str, r: redis.Redis) -> None:
    log = setup(project, RECORD.format(cap=3))
    with Scaler(project) as scaler:
        events = [publish(redis_url, project, "rec", {"log": str(log), "seconds": 20}) for _ in range(3)]
        wait_until(lambda: len(calls(log)) == 3)
        took = scaler.stop()
    assert took < 5, f"stop took {took:.2f}s"
    queue = function_queue(r, "rec")
    assert sorted(j.args[0]["id"] for j in queue.jobs) == sorted(e.id for e in events), (queue.job_ids,
                                                                                        scaler.output())
    assert all(j.args[0]["attempt"] == 0 for j in queue.jobs), "a stop is not a failed attempt"
    assert queue.started_job_registry.count == 0
    with Scaler(project):
        # The same events run again on the next start; make them short by replaying with a new log.
        wait_until(lambda: len([c for c in calls(log) if c["phase"] == "start"]) == 6, timeout=15)


@pytest.mark.serial  # a stop within 2.5 s
def test_a_stop_after_redis_died_is_quick_and_the_next_start_reruns_the_event(
        project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """honcho stops every process when redis-server dies: nothing running can record its outcome
    then, so the scaler does not spend the grace period on it (honcho SIGKILLs at 5 s)."""
    from broker.redis_server.embedded import RedisServer

    server = RedisServer(tmp_path / "own-redis", appendonly=True).start()
    monkeypatch.setenv("LAMBDALITE_REDIS_URL", server.url)
    try:
        log = setup(project, RECORD.format(cap=1))
        with Scaler(project, LAMBDALITE_REDIS_URL=server.url) as scaler:
            event = publish(server.url, project, "rec", {"log": str(log), "seconds": 30})
            wait_until(lambda: len(calls(log)) == 1)
            server.kill()
            took = scaler.stop()
        assert took < 2.5, f"stop took {took:.2f}s"
        assert "redis unavailable at the stop" in scaler.output()
        server.start()
        (project / "lambdalite.toml").write_text(RECORD.format(cap=1).replace("timeout = 30", "timeout = 2"))
        with Scaler(project, LAMBDALITE_REDIS_URL=server.url):  # recovery: the event runs again
            wait_until(lambda: len(calls(log)) >= 2, timeout=15)
        assert {c["id"] for c in calls(log)} == {event.id}
    finally:
        server.stop()


def test_sigkill_of_the_scaler_leaves_no_worker_and_loses_nothing(project: Path, redis_url: str) -> None:
    log = setup(project, RECORD.format(cap=2))
    scaler = Scaler(project)
    events = [publish(redis_url, project, "rec", {"log": str(log), "seconds": 1}) for _ in range(2)]
    wait_until(lambda: len(calls(log)) >= 2)
    kids = psutil.Process(scaler.proc.pid).children(recursive=True)
    scaler.stop(signal.SIGKILL)
    gone, alive = psutil.wait_procs(kids, timeout=5)
    assert alive == [], "workers and sandboxes notice their parent is gone"
    # The dead scaler's view stops counting once its liveness key expires (a few seconds).
    wait_until(lambda: status(project)["rec"]["workers"] == 0, timeout=10)
    with Scaler(project):
        wait_until(lambda: finished(log) >= {e.id for e in events}, timeout=20)


def test_two_scalers_share_max_concurrency(project: Path, redis_url: str) -> None:
    log = setup(project, RECORD.format(cap=2))
    # Two hosts: each its own var/ (one stack per folder), one Redis.
    with Scaler(project), Scaler(project, LAMBDALITE_VAR_DIR=str(project / "host2")):
        events = [publish(redis_url, project, "rec", {"log": str(log), "seconds": 0.4}) for _ in range(10)]
        # Longer than a recovery sweep (every 2 s): neither scaler may take the other's running
        # work for a dead worker's.
        events += [publish(redis_url, project, "rec", {"log": str(log), "seconds": 3}) for _ in range(2)]
        wait_until(lambda: finished(log) >= {e.id for e in events}, timeout=40)
    assert max_overlap(log) == 2
    assert len({c["pid"] for c in calls(log)}) >= 2
    starts = [c["id"] for c in calls(log) if c["phase"] == "start"]
    assert sorted(starts) == sorted(e.id for e in events), "every event ran exactly once"
    assert status(project)["rec"]["failed"] == 0


def test_worker_names_parse_back() -> None:
    from workers.processes import parse_worker_name, worker_name

    name = worker_name("box.example.org", "1a2b3c4d", "thumb_nail-2", 4242)
    assert parse_worker_name(name) == ("box.example.org", "1a2b3c4d", 4242)
    assert parse_worker_name("some-rq-worker.123") is None
    assert parse_worker_name("host|sid.fn.notapid") is None
    assert parse_worker_name("host|sid.fn.4²") is None  # digits to str.isdigit, not to int()


@pytest.mark.parametrize("min_workers", [1])
def test_min_workers_stay_warm(project: Path, redis_url: str, min_workers: int) -> None:
    setup(project, RECORD.format(cap=3) + f"min_workers = {min_workers}\n")
    with Scaler(project, LAMBDALITE_IDLE_TIMEOUT="0.5") as scaler:
        wait_until(lambda: len(workers_of(scaler)) == min_workers)
        time.sleep(1.5)
        assert len(workers_of(scaler)) == min_workers


def test_idle_workers_of_one_function_make_room_for_another_at_the_cap(project: Path, redis_url: str) -> None:
    toml = RECORD.format(cap=10) + RECORD.format(cap=10).replace("functions.rec", "functions.other")
    log = setup(project, toml)
    with Scaler(project, LAMBDALITE_MAX_WORKERS="2", LAMBDALITE_IDLE_TIMEOUT="120") as scaler:
        first = [publish(redis_url, project, "rec", {"log": str(log), "seconds": 0.2}) for _ in range(2)]
        wait_until(lambda: finished(log) >= {e.id for e in first})
        wait_until(lambda: len(workers_of(scaler)) == 2)  # both idle now, far from their idle_timeout
        other = publish(redis_url, project, "other", {"log": str(log), "seconds": 0.1})
        wait_until(lambda: other.id in finished(log), timeout=10)
    assert "idle, and other waits for a worker" in scaler.output()


def test_workers_that_never_got_a_job_are_retired_too(project: Path, redis_url: str) -> None:
    log = setup(project, RECORD.format(cap=3))
    with Scaler(project, LAMBDALITE_IDLE_TIMEOUT="1") as scaler:
        events = [publish(redis_url, project, "rec", {"log": str(log), "seconds": 0}) for _ in range(3)]
        wait_until(lambda: finished(log) >= {e.id for e in events})
        wait_until(lambda: workers_of(scaler) == [], timeout=15)
        assert status(project)["rec"]["workers"] == 0


def test_a_wake_up_steps_at_once_only_when_the_function_may_be_short_of_workers(
        project: Path, redis_url: str, r: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    from broker.envelope import Event
    from broker.queues import Publisher
    from broker.registry import load_registry
    from broker.settings import load_settings
    from workers.processes import WorkerProc
    from workers.scaler import Scaler as InProcess

    setup(project, RECORD.format(cap=2) + RECORD.format(cap=1).replace("functions.rec", "functions.one"))
    registry = load_registry(project / "lambdalite.toml")
    # The project sits below pytest's 0700 temp root: the handler check imports as the stack's user.
    monkeypatch.setenv("LAMBDALITE_SANDBOX_USER", "root")
    scaler = InProcess(load_settings(), registry, r, spawn=lambda fn: 0)
    publisher = Publisher(r, registry)
    assert not scaler.short_of_workers([]) and not scaler.short_of_workers(["not-a-function"])
    assert scaler.short_of_workers(["rec"]), "no worker here: step at once (a cold start)"
    scaler.views["rec"].workers[1] = WorkerProc(1, "rec", "w1", 0.0, state="idle")
    scaler.views["one"].workers[2] = WorkerProc(2, "one", "w2", 0.0, state="idle")
    publisher.publish_many([Event("rec", {}), Event("one", {}), Event("one", {})])
    assert not scaler.short_of_workers(["rec", "one"]), "an idle worker takes it; one is at its cap"
    publisher.publish(Event("rec", {}))
    assert scaler.short_of_workers(["rec"]), "two queued, one worker, a cap of two"
    r.delete(function_queue(r, "rec").key)
    assert not scaler.short_of_workers(["rec"])
    scaler.views["rec"].workers[1].retiring = True
    assert scaler.short_of_workers(["rec"]), "a retiring worker takes nothing more"
    scaler.views["rec"].workers[1].retiring = False
    r.set(function_queue(r, "rec").key, "garbage")
    assert scaler.short_of_workers(["rec"]), "a damaged queue key: the step repairs it"


def test_a_step_counts_repairs_and_releases_in_few_round_trips_and_survives_a_forgotten_script(
        project: Path, redis_url: str, r: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    from broker import delayed
    from broker.envelope import Event
    from broker.queues import Publisher
    from broker.registry import Function, load_registry
    from broker.settings import load_settings
    from workers.scaler import Scaler as InProcess

    setup(project, RECORD.format(cap=2))
    registry = load_registry(project / "lambdalite.toml")
    monkeypatch.setenv("LAMBDALITE_SANDBOX_USER", "root")  # as in the test above
    spawned: list[str] = []

    def spawn(fn: Function) -> int:
        spawned.append(fn.name)
        return 4_000_000 + len(spawned)  # no such process: nothing here signals it

    scaler = InProcess(load_settings(), registry, r, spawn=spawn)
    queue = function_queue(r, "rec")
    Publisher(r, registry).publish_many([Event("rec", {}) for _ in range(3)])
    r.script_flush()  # a restarted Redis has forgotten the census script: the step loads it again
    scaler.step()
    assert spawned == ["rec", "rec"], "three queued, a cap of two"
    assert scaler.views["rec"].decision.reason == "queued=3 running=0 workers=0 desired=2"

    r.set(queue.started_job_registry.key, "garbage")
    scaler.step()
    assert r.type(queue.started_job_registry.key) == b"none", "moved aside by the census"
    assert r.keys(f"lambdalite:quarantine:{queue.started_job_registry.key}:*")
    assert r.llen(queue.key) == 3 and spawned == ["rec", "rec"]

    with r.pipeline() as pipe:
        delayed.schedule(pipe, Event("rec", {"late": True}), time.time() - 1)
        delayed.schedule(pipe, Event("rec", {"later": True}), time.time() + 3600)
        pipe.execute()
    scaler.step()
    assert r.llen(queue.key) == 4, "the due event released, the other one kept"
    assert r.zcard(delayed.DELAYED_KEY) == 1

    r.delete(delayed.DELAYED_KEY)
    r.set(delayed.DELAYED_KEY, "garbage")
    scaler.step()
    assert r.type(delayed.DELAYED_KEY) == b"none", "the probe's error leads to the repair"


def test_status_views_go_out_when_they_change_and_all_of_them_every_few_seconds(
        project: Path, redis_url: str, r: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    from broker.envelope import Event
    from broker.queues import Publisher
    from broker.registry import Function, load_registry
    from broker.settings import load_settings
    from broker.stats import scaler_key
    from workers.scaler import Scaler as InProcess
    from workers.scaler_views import VIEW_REFRESH

    setup(project, "".join(RECORD.format(cap=1).replace("functions.rec", f"functions.f{i}") for i in range(20)))
    registry = load_registry(project / "lambdalite.toml")
    monkeypatch.setenv("LAMBDALITE_SANDBOX_USER", "root")  # as in the tests above
    spawned: list[str] = []

    def spawn(fn: Function) -> int:
        spawned.append(fn.name)
        return 4_000_000 + len(spawned)  # no such process: nothing here signals it

    scaler = InProcess(load_settings(), registry, r, spawn=spawn)

    def view(name: str) -> dict | None:
        raw = r.hget(scaler_key(name), scaler.id)
        return None if raw is None else json.loads(raw)

    scaler.step(100.0)
    assert all(view(f"f{i}") == {"workers": {"starting": 0, "idle": 0, "busy": 0}, "decision": None}
               for i in range(20))
    r.hdel(scaler_key("f3"), scaler.id)  # a view lost (or moved aside as damaged)
    Publisher(r, registry).publish(Event("f7", {}))
    scaler.step(101.0)
    assert spawned == ["f7"]
    got = view("f7")
    assert got is not None and got["workers"]["starting"] == 1 and got["decision"]["action"] == "scale-up", \
        "a view that changed goes out in the step that changed it"
    assert view("f3") is None, "unchanged views are not written again in every step"
    scaler.step(100.0 + VIEW_REFRESH)
    assert view("f3") == {"workers": {"starting": 0, "idle": 0, "busy": 0}, "decision": None}, \
        "every view is written again every VIEW_REFRESH seconds"
