"""Settings, registry, envelope and publishing against a real Redis."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import pytest
import redis
from rq.job import Job
from rq.serializers import JSONSerializer

from broker import scripts
from broker.conditional import Conditional, recorded
from broker.connection import connect
from broker.envelope import Event
from broker.errors import ConfigError, EnvelopeError, SettingsError, UnknownFunctionError
from broker.queues import RUNNER, Publisher, function_queue
from broker.registry import load_registry, resolve_handler
from broker.rqlayout import COMPRESS_OVER
from broker.settings import load_settings

TEST_SCRIPTS = Path(__file__).with_name("lua")  # the tests' own Lua scripts

GOOD = """
[functions.thumbnail]
handler = "handlers.thumbnail.handler"
timeout = 30
[[functions.thumbnail.triggers]]
source = "files"
bucket = "uploads"
suffix = ".jpg"

[functions.echo]
command = ["node", "handlers/echo.mjs"]
"""


def write(project: Path, text: str) -> Path:
    path = project / "lambdalite.toml"
    path.write_text(text)
    return path


def test_registry_defaults_follow_lambda(project: Path) -> None:
    reg = load_registry(write(project, GOOD))
    fn = reg.get("thumbnail")
    assert (fn.timeout, fn.memory, fn.ephemeral_storage, fn.retries, fn.min_workers) == (30, 128, 512, 2, 0)
    assert fn.triggers[0].bucket == "uploads"
    assert fn.triggers[0].events == ("s3:ObjectCreated:*",)
    assert reg.get("echo").command == ("node", "handlers/echo.mjs")
    with pytest.raises(UnknownFunctionError):
        reg.get("nope")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[functions.f]\nhandler = "a.b"\ntimout = 3\n', "function 'f': unknown key 'timout'"),
        ('[functions.f]\nhandler = "a.b"\nmemory = -5\n', "function 'f': memory: "),
        ('[functions.f]\nhandler = "a.b"\n[[functions.f.triggers]]\nsource = "ftp"\n', "function 'f': triggers[0]"),
        ('[functions.f]\nhandler = "a.b"\n[[functions.f.triggers]]\nsource = "files"\nbuckt = "x"\n',
         "unknown key 'triggers[0].buckt'"),
        ('[functions.f]\ntimeout = 3\n', "exactly one of 'handler' or 'command'"),
        ('[functions.f\n', "not valid TOML"),
        ('[function.f]\nhandler = "a.b"\n', "unknown top-level key 'function'"),
        ('[functions.f]\nhandler = "a.b"\non_failure = "g"\n', "on_failure: no function named 'g'"),
    ],
)
def test_registry_errors_name_file_function_and_key(project: Path, text: str, expected: str) -> None:
    path = write(project, text)
    with pytest.raises(ConfigError) as info:
        load_registry(path)
    message = str(info.value)
    assert str(path) in message and expected in message, message
    assert "\n" not in message


def test_missing_registry_file(project: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_registry(project / "missing.toml")


def test_handler_that_does_not_import(project: Path) -> None:
    path = write(project, '[functions.f]\nhandler = "nowhere.at_all.handler"\n')
    with pytest.raises(ConfigError, match="function 'f': handler: cannot import 'nowhere.at_all'"):
        resolve_handler(load_registry(path).get("f"), path)
    (project / "mine.py").write_text("x = 1\n")
    path = write(project, '[functions.f]\nhandler = "mine.handler"\n')
    with pytest.raises(ConfigError, match="has no callable 'handler'"):
        resolve_handler(load_registry(path).get("f"), path)


def test_settings_env_and_dotenv(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (project / ".env").write_text("OTHER_APP_SECRET=1\nLAMBDALITE_MAX_WORKERS=7\n")
    settings = load_settings()
    assert settings.max_workers == 7
    assert settings.redis_dsn.startswith("unix://") or settings.redis_url
    monkeypatch.setenv("LAMBDALITE_IDLE_TIMEOUT", "soon")
    with pytest.raises(SettingsError, match="LAMBDALITE_IDLE_TIMEOUT"):
        load_settings()
    monkeypatch.delenv("LAMBDALITE_IDLE_TIMEOUT")
    (project / ".env").write_text("LAMBDALITE_MAX_WORKER=7\n")
    with pytest.raises(SettingsError, match="^LAMBDALITE_MAX_WORKER: unknown setting$"):
        load_settings()


def test_envelope_round_trip_and_bad_bytes() -> None:
    event = Event(function="f", payload={"k": [1, "ü"]}, source="files")
    assert Event.decode(event.encode()) == event
    assert event.retried().attempt == 1 and event.retried().id == event.id
    for raw in (b"\xff", b"[]", b"{}", b'{"v": 99}', json.dumps({**event.to_dict(), "attempt": "x"}).encode()):
        with pytest.raises(EnvelopeError):
            Event.decode(raw)
    with pytest.raises(EnvelopeError):
        Event(function="f", payload={1, 2}).encode()


def test_publish_stores_a_runner_job_as_json(project: Path, r: redis.Redis, redis_url: str) -> None:
    reg = load_registry(write(project, GOOD))
    pub = Publisher(connect(redis_url), reg)
    events = [Event(function="thumbnail", payload={"n": i}) for i in range(3)]
    jobs = pub.publish_many(events)
    queue = function_queue(r, "thumbnail")
    assert queue.job_ids == [e.id for e in events]
    raw = r.hget(f"rq:job:{events[0].id}", "data")
    func, _instance, args, _kwargs = JSONSerializer.loads(raw)  # JSON, never pickle; small: not compressed
    assert func == RUNNER
    assert Event.from_dict(args[0]) == events[0]
    big = Event(function="thumbnail", payload={"text": "x" * COMPRESS_OVER})
    pub.publish(big)
    raw = r.hget(f"rq:job:{big.id}", "data")
    assert len(raw) < COMPRESS_OVER and Event.from_dict(JSONSerializer.loads(zlib.decompress(raw))[2][0]) == big
    assert Job.fetch(big.id, connection=r, serializer=JSONSerializer).args[0]["payload"] == big.payload
    queue.remove(big.id)
    assert jobs[0] == events[0].id
    with pytest.raises(UnknownFunctionError):
        pub.publish(Event(function="nope", payload={}))
    assert queue.count == 3


def test_a_small_queued_event_costs_under_a_kilobyte_of_the_stacks_redis(project: Path, r: redis.Redis,
                                                                         redis_url: str) -> None:
    """The stack's redis-server (broker.redis_server.embedded's command line) keeps a job hash whose event is under
    1 KiB in its compact encoding: a backlog of a million small events fits in under 1 GB."""
    reg = load_registry(write(project, GOOD))
    before = int(r.info("memory")["used_memory"])
    events = [Event(function="thumbnail", payload={"n": i, "key": f"photos/{i:06d}.jpg"}) for i in range(500)]
    Publisher(connect(redis_url), reg).publish_many(events)
    assert r.object("encoding", f"rq:job:{events[0].id}") in (b"ziplist", b"listpack")
    per_event = (int(r.info("memory")["used_memory"]) - before) / len(events)
    assert per_event < 1024, per_event


def test_outcome_wait_sees_a_record_made_before_or_during_the_wait(r: redis.Redis) -> None:
    import threading

    from broker import results

    assert results.wait(r, "e1", 0.05) is None
    results.record(r, "e1", results.Outcome("succeeded", result={"x": 1}))
    assert results.wait(r, "e1", 1).result == {"x": 1}
    assert results.fetch(r, "e1").ok
    timer = threading.Timer(0.1, results.record, (r, "e2", results.Outcome("dead", error={"errorType": "E"})))
    timer.start()
    got = results.wait(r, "e2", 5)
    timer.join()
    assert got is not None and got.status == "dead" and got.error == {"errorType": "E"}
    assert 0 < r.ttl(results.result_key("e2")) <= results.RESULT_TTL


def test_a_prepared_event_is_published_as_the_event_itself_would_be(project: Path, r: redis.Redis) -> None:
    """Publisher.prepare builds the job ahead of time; its enqueue time is still the publish's."""
    import time

    from rq.job import Job

    reg = load_registry(write(project, GOOD))
    pub = Publisher(r, reg)
    prepared = pub.prepare(Event(function="thumbnail", payload={"k": [1, "v"]}))
    plain = Event(function="thumbnail", payload={"k": [2, "w"]})
    time.sleep(0.01)
    before = time.time()
    assert pub.publish_many([prepared, plain]) == [prepared.event.id, plain.id]
    assert function_queue(r, "thumbnail").job_ids == [prepared.event.id, plain.id]
    ours, twin = (Job.fetch(i, connection=r, serializer=JSONSerializer) for i in (prepared.event.id, plain.id))
    assert Event.from_dict(ours.args[0]) == prepared.event and ours.func_name == RUNNER
    assert r.hgetall(ours.key).keys() == r.hgetall(twin.key).keys()
    assert ours.enqueued_at.timestamp() >= before - 0.001
    with pytest.raises(UnknownFunctionError):
        pub.prepare(Event(function="nope", payload={}))
    with pytest.raises(EnvelopeError):
        pub.prepare(Event(function="thumbnail", payload={"x": float("nan")}))
    payload = {"Records": [{"a": "é\u2028\"]}", "b": [1.5, None, True]}]}
    encoded = Event(function="thumbnail", payload=payload)
    pub.publish_many([pub.prepare(encoded, payload_json=json.dumps(payload))])
    job = Job.fetch(encoded.id, connection=r, serializer=JSONSerializer)
    assert Event.from_dict(job.args[0]) == encoded and job.func_name == RUNNER and job.kwargs == {}
    assert JSONSerializer.loads(job.data) == JSONSerializer.loads(pub.prepare(encoded).mapping["data"])


def test_outcome_wait_any_returns_the_outcomes_there_and_leaves_damaged_ones_to_fetch(r: redis.Redis) -> None:
    import threading

    from broker import results

    assert results.wait_any(r, ["a", "b"], 0.05) == {}
    assert results.wait_any(r, [], 0.05) == {}
    timer = threading.Timer(0.1, results.record, (r, "b", results.Outcome("succeeded", result=[1])))
    timer.start()
    got = results.wait_any(r, ["a", "b"], 5)
    timer.join()
    assert list(got) == ["b"] and got["b"].result == [1]
    results.record(r, "a", results.Outcome("dead"))
    assert {k: v.status for k, v in results.wait_any(r, ["a", "b"], 1).items()} == {"a": "dead", "b": "succeeded"}
    r.xadd(results.result_key("c"), {"outcome": "[not an outcome]"})
    results.record(r, "c", results.Outcome("succeeded"))
    assert results.wait_any(r, ["c"], 1) == {}, "a first entry that is not an outcome is left to fetch"
    assert results.fetch(r, "c").ok


def test_published_jobs_are_what_rq_itself_would_write(project: Path, r: redis.Redis, redis_url: str) -> None:
    """The publisher writes RQ's job hash without building rq.Job objects: RQ must not tell the difference."""
    from rq.job import Job

    from broker.queues import job_options

    reg = load_registry(write(project, GOOD))
    fn = reg.get("thumbnail")
    for kind in ("Event", "RequestResponse"):
        event = Event(function="thumbnail", payload={"k": "v"}, invocation_type=kind)
        Publisher(connect(redis_url), reg).publish(event)
        ours = Job.fetch(event.id, connection=r, serializer=JSONSerializer)
        twin = Event(function="thumbnail", payload={"k": "v"}, invocation_type=kind)
        function_queue(r, "thumbnail").enqueue_call(RUNNER, args=(twin.to_dict(),), **job_options(fn, twin))
        theirs = Job.fetch(twin.id, connection=r, serializer=JSONSerializer)
        assert ours.func_name == theirs.func_name == RUNNER
        assert Event.from_dict(ours.args[0]) == event and ours.kwargs == {}
        for attr in ("origin", "timeout", "result_ttl", "failure_ttl", "ttl", "retries_left", "meta"):
            assert getattr(ours, attr) == getattr(theirs, attr), attr
        assert ours.get_status() == theirs.get_status() == "queued"
        raw_ours, raw_theirs = r.hgetall(ours.key), r.hgetall(theirs.key)
        # what RQ writes empty is left out (it reads the same absent)
        assert raw_ours.keys() == {k for k, v in raw_theirs.items() if v != b""}
        assert ours.enqueued_at is not None and ours.created_at is not None
    assert function_queue(r, "thumbnail").job_ids[0] == Event.from_dict(
        Job.fetch(function_queue(r, "thumbnail").job_ids[0], connection=r, serializer=JSONSerializer).args[0]).id


def test_a_conditional_applies_all_its_writes_or_none(r: redis.Redis) -> None:
    only_if_absent = Conditional(scripts.load("only_if_absent", TEST_SCRIPTS))
    r.set("other", "seen")
    r.set("list-key", "a string where a list belongs")
    with recorded(r) as pipe:
        pipe.set("marker", "1")
        pipe.rpush("list-key", "x")
        pipe.hset("h", mapping={"a": 1, "b": b"\xff"})
        assert pipe.expected == {"list-key": "list", "h": "hash"}, "learned from the writes: no list given"
        assert only_if_absent.run(r, ["marker", "other"], [], pipe) == (True, [b"seen"])
    assert r.get("marker") == b"1" and r.lrange("list-key", 0, -1) == [b"x"]
    assert r.hgetall("h") == {b"a": b"1", b"b": b"\xff"}
    assert [r.get(k) for k in r.keys("lambdalite:quarantine:list-key:*")] == [b"a string where a list belongs"]
    with recorded(r) as pipe:
        pipe.rpush("list-key", "y")
        assert only_if_absent.run(r, ["marker", "other"], [], pipe) == (False, [b"seen"])
    assert r.lrange("list-key", 0, -1) == [b"x"], "nothing applied when the condition fails"
    with recorded(r) as pipe, pytest.raises(ValueError, match="EVAL"):
        pipe.eval("return 1", 0)
        only_if_absent.run(r, ["marker", "other"], [], pipe)
    r.script_flush()  # a restarted Redis has forgotten the script: it is loaded again
    with recorded(r) as pipe:
        pipe.delete("marker")
        assert only_if_absent.run(r, ["nothing", "other"], [], pipe)[0]
    assert not r.exists("marker")


def test_a_conditional_gives_redis_every_key_it_touches_in_keys(r: redis.Redis) -> None:
    declared = Conditional(scripts.load("declared", TEST_SCRIPTS))
    with recorded(r) as pipe:
        pipe.rpush("list-key", "x")
        pipe.set("plain", "1")
        pipe.delete("gone-1", "gone-2")
        pipe.expire("list-key", 60)  # already guarded: named once
        pipe.execute_command("pexpire", "lower", 5)
        pipe.publish("channel", "not a key")
        applied, keys = declared.run(r, ["read-key"], ["an argument"], pipe)
    assert applied and len(keys) == 7
    assert keys[0] == b"list-key" and keys[1].startswith(b"lambdalite:quarantine:list-key:")
    assert keys[2:] == [b"read-key", b"plain", b"gone-1", b"gone-2", b"lower"]
    assert r.lrange("list-key", 0, -1) == [b"x"] and r.get("plain") == b"1"
    with recorded(r) as pipe, pytest.raises(ValueError, match="SORT"):
        pipe.sort("list-key", store="elsewhere")  # its key is in a place lambdalite does not know
        declared.run(r, [], [], pipe)
    assert not r.exists("elsewhere"), "refused before anything was sent"


def test_event_ids_are_random_version_4_uuids() -> None:
    import uuid

    from broker.envelope import new_id

    ids = [new_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122 and str(parsed) == text
    # every hex digit turns up in every random position (a stuck digit would not)
    for position in (0, 9, 15, 20, 35):
        assert len({text[position] for text in ids}) == 16, position
    assert {text[19] for text in ids} == set("89ab")
