"""The CLI over damaged Redis data: a clear line on stderr for what it cannot read, the rest shown,
never a traceback. Every command runs as a subprocess against a real Redis."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import redis
from rq.job import Job
from rq.serializers import JSONSerializer

from broker import deadletter, results
from broker.envelope import Event
from broker.errors import OutcomeError
from broker.stats import alive_key
from broker.transaction import transaction
from tests.stack import cli

TOML = '[functions.f]\nhandler = "mod.handler"\n[functions.g]\nhandler = "mod.handler"\n'


@pytest.fixture
def project_fg(project: Path) -> Path:
    (project / "lambdalite.toml").write_text(TOML)
    return project


def no_traceback(done) -> None:  # type: ignore[no-untyped-def]
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout, done.stderr


def test_status_names_each_damaged_key_and_shows_the_rest(project_fg: Path, r: redis.Redis) -> None:
    for key in ("rq:queue:lambdalite.f", "rq:wip:lambdalite.f", "lambdalite:stats:f"):
        r.set(key, "garbage")
    r.hset("lambdalite:stats:g", mapping={"succeeded": "abc", "failed": "-4", "dead": "7"})
    views = {
        "s1": "not json", "s2": "[1]", "s3": '{"workers": {"idle": "x"}}',
        "s4": json.dumps({"workers": {"idle": 2, "busy": 1},
                          "decision": {"at": 5.0, "action": "scale-up", "reason": "queued=3"}}),
    }
    for scaler_id, view in views.items():
        r.hset("lambdalite:scaler:g", scaler_id, view)
        r.set(alive_key(scaler_id), 1, ex=60)
    for args in (("status",), ("status", "--json")):
        done = cli(project_fg, *args)
        assert done.returncode == 0, done.stderr
        no_traceback(done)
        lines = done.stderr.strip().splitlines()
        expected = ["rq:queue:lambdalite.f holds a string, not a list",
                    "rq:wip:lambdalite.f holds a string, not a zset", "lambdalite:stats:f holds a string, not a hash",
                    "'succeeded' = 'abc'", "'failed' = '-4'",
                    "scaler s1", "scaler s2", "scaler s3"]
        assert len(lines) == len(expected), lines
        for text in expected:
            assert sum(text in line for line in lines) == 1, (text, lines)
        assert all(line.startswith("lambdalite: ") for line in lines)
    row = json.loads(done.stdout)["functions"]
    assert [row["f"][k] for k in ("queued", "running", "succeeded", "failed", "dead")] == [0, 0, 0, 0, 0]
    assert [row["g"][k] for k in ("succeeded", "failed", "dead", "workers")] == [0, 0, 7, 3]
    assert row["g"]["last_decision"] == {"at": 5.0, "action": "scale-up", "reason": "queued=3"}


def test_dlq_lists_what_it_can_and_names_what_it_cannot(project_fg: Path, r: redis.Redis) -> None:
    good = Event("f", {"k": 1})
    deadletter.add(r, good, {"errorType": "ValueError"}, "RetriesExhausted")
    r.hset("lambdalite:dlq:f", mapping={"not-json": "{oops", "a-list": "[1, 2]", "noon": '{"at": "noon"}',
                                         b"\xff\xfe": json.dumps({"event": None, "at": 1.0})})
    r.set("lambdalite:dlq:g", "garbage")
    done = cli(project_fg, "dlq", "list")
    assert done.returncode == 0, done.stderr
    no_traceback(done)
    rows = json.loads(done.stdout)
    assert sorted(row["id"] for row in rows) == sorted(["not-json", "a-list", "noon", "\ufffd\ufffd", good.id])
    assert {row["id"]: row["error"]["errorType"] for row in rows if row["id"] in ("not-json", "a-list", "noon")} == \
        dict.fromkeys(("not-json", "a-list", "noon"), "CorruptEntry")
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 4 and sum("lambdalite:dlq:g holds a string, not a hash" in line for line in lines) == 1
    assert sum("lambdalite:dlq:f: dead letter" in line for line in lines) == 3, lines

    replay = cli(project_fg, "dlq", "replay", "f")
    assert replay.returncode == 0, replay.stderr
    no_traceback(replay)
    assert json.loads(replay.stdout) == {"replayed": [good.id]}
    assert r.lrange("rq:queue:lambdalite.f", 0, -1) == [good.id.encode()]
    assert len(replay.stderr.strip().splitlines()) == 4, "one line per entry left in place, none for the replayed"
    purge = cli(project_fg, "dlq", "purge", "g")
    assert json.loads(purge.stdout) == {"purged": 0} and "lambdalite:dlq:g held a string" in purge.stderr
    assert not r.exists("lambdalite:dlq:g")


class GarbageThenOutcome(threading.Thread):
    """Takes the next job of ``f`` and writes, to its outcome key, ``garbage`` and then (unless None)
    the real outcome: a foreign writer racing the worker."""

    def __init__(self, url: str, garbage: str, outcome: results.Outcome | None) -> None:
        super().__init__(daemon=True)
        self.client = redis.Redis.from_url(url, socket_timeout=60)  # outlasts its 20 s BLPOP
        self.garbage, self.outcome = garbage, outcome

    def run(self) -> None:
        popped = self.client.blpop(["rq:queue:lambdalite.f"], timeout=20)
        if popped is None:
            return
        job = Job.fetch(popped[1].decode(), connection=self.client, serializer=JSONSerializer)
        key = results.result_key(job.args[0]["id"])
        if self.garbage == "string":
            self.client.set(key, "garbage")
        else:
            self.client.xadd(key, {"outcome": self.garbage})
            self.client.xadd(key, {"something": "else"})
        time.sleep(0.3)
        if self.outcome is not None:  # as a worker records it: through a guarded transaction
            with transaction(self.client) as pipe:
                results.record(pipe, job.args[0]["id"], self.outcome)
                pipe.execute()


@pytest.mark.parametrize("garbage", ["{not an outcome", "string"])
def test_invoke_wait_reads_past_what_is_not_an_outcome(project_fg: Path, redis_url: str, garbage: str) -> None:
    writer = GarbageThenOutcome(redis_url, garbage, results.Outcome("succeeded", result={"answer": 42}))
    writer.start()
    done = cli(project_fg, "invoke", "f", "--wait", "20")
    writer.join(5)
    assert done.returncode == 0, done.stderr
    no_traceback(done)
    assert json.loads(done.stdout) == {"answer": 42}
    lines = done.stderr.strip().splitlines()
    # The waiter or the writer (the worker's guard) moves a key of the wrong type aside: at most one line here.
    assert all("lambdalite:result:" in line for line in lines) and len(lines) <= 2, lines


def test_invoke_wait_with_only_garbage_gives_up_in_one_line(project_fg: Path, redis_url: str) -> None:
    writer = GarbageThenOutcome(redis_url, "[1]", None)
    writer.start()
    done = cli(project_fg, "invoke", "f", "--wait", "2")
    writer.join(5)
    assert done.returncode == 1
    no_traceback(done)
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("lambdalite: no result for") and len(lines) == 3, lines


def test_a_redis_that_refuses_commands_is_one_line_not_a_traceback(project_fg: Path, r: redis.Redis) -> None:
    r.config_set("maxmemory", 1)  # every write is refused with OOM (policy noeviction)
    try:
        done = cli(project_fg, "invoke", "f", "--async")
    finally:
        r.config_set("maxmemory", 0)
    assert done.returncode == 1
    no_traceback(done)
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("lambdalite: redis refused the command: OOM")


@pytest.mark.parametrize("raw", [b"\xff", b"[]", b'{"status": "won"}', b'{"status": "succeeded", "extra": 3}',
                                 b'{"status": "failed", "error": "x"}', b'{"status": "dead", "surprise": 1}'])
def test_outcome_decode_raises_its_own_error(raw: bytes) -> None:
    with pytest.raises(OutcomeError):
        results.Outcome.decode(raw)
