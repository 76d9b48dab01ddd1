"""Invocations run like Lambda's: context, errors, limits enforced from outside, retries, dead letters.

Every test runs the real scaler, which forks real workers and sandboxes, against a real Redis.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis

from broker import deadletter
from tests.stack import Scaler, cli, invoke, publish, status

FIXTURES = Path(__file__).parent / "fixtures"

FUNCTIONS = """
[functions.echo]
handler = "hostile.echo"
memory = 200
[functions.boom]
handler = "hostile.boom"
retries = 1
retry_backoff = 0.05
[functions.sleepy]
handler = "hostile.sleep"
timeout = 30
[functions.spin]
handler = "hostile.spin"
timeout = 0.5
[functions.backtrack]
handler = "hostile.backtrack"
timeout = 0.5
[functions.hog_memory]
handler = "hostile.hog_memory"
timeout = 30
memory = 128
[functions.hog_disk]
handler = "hostile.hog_disk"
timeout = 30
ephemeral_storage = 8
[functions.escape]
handler = "hostile.escape"
[functions.fork_bomb]
handler = "hostile.fork_bomb"
timeout = 20
memory = 256
[functions.exit_now]
handler = "hostile.exit_now"
[functions.segfault]
handler = "hostile.segfault"
[functions.close_stdout]
handler = "hostile.close_stdout"
[functions.shell]
command = ["sh", "HANDLERS/wordcount.sh"]
[functions.node]
command = ["node", "HANDLERS/echo.mjs"]
"""


@pytest.fixture
def stack(project: Path, redis_url: str) -> Iterator[Scaler]:
    shutil.copy(FIXTURES / "hostile.py", project / "hostile.py")
    handlers = Path(__file__).resolve().parent.parent / "handlers"
    (project / "lambdalite.toml").write_text(FUNCTIONS.replace("HANDLERS", str(handlers)))
    tmp = project / "tmp"  # the workers' temp root: each invocation's TMPDIR is made below it
    tmp.mkdir()
    with Scaler(project, LAMBDALITE_IDLE_TIMEOUT="60", TMPDIR=str(tmp)) as scaler:
        yield scaler
        # Contained: below each worker only its sandbox, and nothing below a sandbox.
        for worker in psutil.Process(scaler.proc.pid).children():
            sandboxes = worker.children()
            assert len(sandboxes) <= 1, [p.cmdline() for p in sandboxes]
            for sandbox in sandboxes:
                alive = [p for p in sandbox.children() if p.status() != psutil.STATUS_ZOMBIE]
                assert alive == [], "a process started by an invocation outlived it"
    assert list(tmp.iterdir()) == [], "a TMPDIR was left behind"


def test_context_and_private_tmpdir(stack: Scaler, redis_url: str, project: Path) -> None:
    out = invoke(redis_url, project, "echo", {"hello": "world"})
    assert out.ok, out
    res = out.result
    assert res["event"] == {"hello": "world"}
    assert res["function_name"] == "echo" and res["function_version"] == "$LATEST"
    assert res["invoked_function_arn"].endswith(":function:echo")
    assert res["memory_limit_in_mb"] == 200
    assert res["log_group_name"] == "/aws/lambda/echo" and "[$LATEST]" in res["log_stream_name"]
    assert 2000 < res["remaining"] <= 3000
    assert res["tmpdir"] == "/tmp", "the execution environment's private /tmp (see test_private_tmp.py)"
    again = invoke(redis_url, project, "echo", {}).result
    assert again["tmpdir"] == res["tmpdir"]
    assert again["pid"] == res["pid"], "the sandbox stays warm between invocations"
    log = stack.output()
    request = res["aws_request_id"]
    assert f"START RequestId: {request} Version: 1" in log and f"END RequestId: {request}" in log  # the revision
    report = next(line for line in log.splitlines() if line.startswith(f"REPORT RequestId: {request}"))
    fields = report.split("\t")
    assert fields[1].startswith("Duration: ") and fields[2].startswith("Billed Duration: ")
    assert "Memory Size: 200 MB" in fields and any(f.startswith("Max Memory Used: ") for f in fields)
    assert any(f.startswith("Init Duration: ") for f in fields), "first invocation of a worker reports init"


def test_sync_failure_is_not_retried(stack: Scaler, redis_url: str, project: Path) -> None:
    out = invoke(redis_url, project, "boom", {"n": 1})
    assert out.status == "failed"
    assert out.error["errorType"] == "ValueError" and out.error["errorMessage"] == 'bad thing {"n": 1}'
    assert "Traceback" in stack.output()
    row = status(project)["boom"]
    assert (row["failed"], row["dead"], row["retried"]) == (1, 0, 0)


def test_async_failure_retries_then_dead_letters_and_replays(stack: Scaler, r: redis.Redis, redis_url: str,
                                                             project: Path) -> None:
    event = publish(redis_url, project, "boom", {"n": 2})
    deadline = time.monotonic() + 20
    while not deadletter.entries(r, "boom") and time.monotonic() < deadline:
        time.sleep(0.05)
    [entry] = deadletter.entries(r, "boom")
    assert entry["id"] == event.id and entry["attempts"] == 2 and entry["reason"] == "RetriesExhausted"
    assert entry["event"]["payload"] == {"n": 2} and entry["error"]["errorType"] == "ValueError"
    row = status(project)["boom"]
    assert (row["failed"], row["retried"], row["dead"]) == (2, 1, 1)
    listed = json.loads(cli(project, "dlq", "list", "boom").stdout)
    assert [e["id"] for e in listed] == [event.id]
    replay = cli(project, "dlq", "replay", "boom", event.id)
    assert replay.returncode == 0 and json.loads(replay.stdout) == {"replayed": [event.id]}
    deadline = time.monotonic() + 20
    while status(project)["boom"]["dead"] < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert status(project)["boom"]["dead"] == 2, "the replayed event ran again (and failed again)"
    assert json.loads(cli(project, "dlq", "purge", "boom").stdout) == {"purged": 1}
    assert deadletter.entries(r, "boom") == []


@pytest.mark.parametrize("function", ["spin", "backtrack"])
def test_timeout_kills_python_and_c_level_hangs(stack: Scaler, redis_url: str, project: Path, function: str) -> None:
    started = time.monotonic()
    out = invoke(redis_url, project, function)
    assert out.status == "failed" and out.error["errorType"] == "Sandbox.Timedout"
    assert "Task timed out after 0.5" in out.error["errorMessage"]
    assert time.monotonic() - started < 10
    assert invoke(redis_url, project, "echo").ok, "the next invocation runs"
    assert "Status: timeout" in stack.output()


def test_memory_limit(stack: Scaler, redis_url: str, project: Path) -> None:
    out = invoke(redis_url, project, "hog_memory")
    assert out.error["errorType"] == "Runtime.OutOfMemory", out
    assert "memory limit of 128 MB exceeded" in out.error["errorMessage"]
    assert invoke(redis_url, project, "hog_memory").error["errorType"] == "Runtime.OutOfMemory", "and again"


def test_tmp_disk_limit(stack: Scaler, redis_url: str, project: Path) -> None:
    out = invoke(redis_url, project, "hog_disk")
    assert out.error["errorType"] == "Runtime.EphemeralStorageExceeded", out
    assert "ephemeral storage limit of 8 MB exceeded" in out.error["errorMessage"]


def test_no_process_outlives_its_invocation(stack: Scaler, redis_url: str, project: Path) -> None:
    out = invoke(redis_url, project, "escape")
    assert out.ok
    pid = out.result["pid"]
    deadline = time.monotonic() + 2
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the new-session grandchild outlived the invocation"
        time.sleep(0.02)


def test_fork_bomb_is_contained(stack: Scaler, redis_url: str, project: Path) -> None:
    out = invoke(redis_url, project, "fork_bomb")
    assert out.error["errorType"] == "Runtime.OutOfMemory", out
    scaler = psutil.Process(stack.proc.pid)
    time.sleep(0.2)
    python_kids = [p for p in scaler.children(recursive=True)]
    # What is left is workers and their sandboxes: no bomb processes.
    assert len(python_kids) <= 2 * len(FUNCTIONS.split("[functions.")), python_kids
    assert invoke(redis_url, project, "fork_bomb").error["errorType"] == "Runtime.OutOfMemory"


@pytest.mark.parametrize(("function", "message"), [("exit_now", "exit status 3"), ("segfault", "signal: SIGSEGV")])
def test_process_death_is_an_exit_error(stack: Scaler, redis_url: str, project: Path, function: str,
                                        message: str) -> None:
    out = invoke(redis_url, project, function)
    assert out.error["errorType"] == "Runtime.ExitError" and message in out.error["errorMessage"], out
    assert invoke(redis_url, project, "echo").ok


def test_handler_that_closes_stdout(stack: Scaler, redis_url: str, project: Path) -> None:
    assert invoke(redis_url, project, "close_stdout").result == "closed"
    assert invoke(redis_url, project, "close_stdout").result == "closed", "a fresh sandbox serves the next one"


def test_command_functions(stack: Scaler, redis_url: str, project: Path) -> None:
    out = invoke(redis_url, project, "shell", {"text": "one two three"})
    assert out.ok and out.result == {"words": 3, "function": "shell"}, out
    if shutil.which("node"):
        out = invoke(redis_url, project, "node", {"name": "ada"})
        assert out.ok and out.result["echo"] == {"name": "ada"}, out
        assert out.result["functionName"] == "node" and out.result["remainingMs"] > 0
        assert out.result["tmpdir"] == "/tmp", "its private /tmp"


def test_foreign_jobs_are_refused_without_running(stack: Scaler, r: redis.Redis, redis_url: str,
                                                  project: Path) -> None:
    """A job written straight into Redis that names os.system must not run."""
    from rq import Queue
    from rq.serializers import JSONSerializer

    marker = project / "pwned"
    queue = Queue("lambdalite.echo", connection=r, serializer=JSONSerializer)
    job = queue.enqueue("os.system", f"touch {marker}")
    invoke(redis_url, project, "echo")  # the worker is up and has passed the foreign job
    deadline = time.monotonic() + 5
    while job.get_status(refresh=True) not in ("failed", "finished") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job.get_status(refresh=True) == "failed"
    assert not marker.exists()
    assert "refused job" in stack.output()


DESTINATIONS = """
[functions.flaky]
handler = "hostile.boom"
retries = 1
retry_backoff = 0.05
on_failure = "sink"
[functions.fine]
handler = "hostile.echo"
on_success = "sink"
[functions.sink]
handler = "hostile.record_destination"
[functions.killer]
handler = "hostile.kill_worker"
retries = 1
retry_backoff = 0.05
[functions.marshal]
handler = "hostile.bad_result"
"""


@pytest.fixture
def dest_stack(project: Path, redis_url: str) -> Iterator[Scaler]:
    shutil.copy(FIXTURES / "hostile.py", project / "hostile.py")
    (project / "lambdalite.toml").write_text(DESTINATIONS)
    with Scaler(project) as scaler:
        yield scaler


def _records(path: Path, n: int, timeout: float = 20) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and len(lines := path.read_text().splitlines()) >= n:
            return [json.loads(x) for x in lines]
        time.sleep(0.05)
    raise AssertionError(f"fewer than {n} destination records")


def test_destinations_receive_lambdas_records(dest_stack: Scaler, redis_url: str, project: Path) -> None:
    log = project / "sink.log"
    ok = publish(redis_url, project, "fine", {"log": str(log)})
    bad = publish(redis_url, project, "flaky", {"log": str(log)})
    records = {r["requestContext"]["requestId"]: r for r in _records(log, 2)}
    success, failure = records[ok.id], records[bad.id]
    assert success["requestContext"]["condition"] == "Success"
    assert success["responsePayload"]["aws_request_id"] == ok.id
    assert "functionError" not in success["responseContext"]
    assert failure["requestContext"]["condition"] == "RetriesExhausted"
    assert failure["requestContext"]["approximateInvokeCount"] == 2
    assert failure["responseContext"]["functionError"] == "Unhandled"
    assert failure["responsePayload"]["errorType"] == "ValueError"
    assert failure["requestPayload"] == {"log": str(log)}


def test_too_old_events_are_dead_lettered_without_running(dest_stack: Scaler, r: redis.Redis, redis_url: str,
                                                          project: Path) -> None:

    from broker.envelope import Event
    from broker.queues import Publisher
    from broker.registry import load_registry

    log = project / "sink.log"
    old = Event(function="flaky", payload={"log": str(log)}, created_at=time.time() - 7 * 3600)
    Publisher(r, load_registry(project / "lambdalite.toml")).publish(old)
    [record] = _records(log, 1)
    assert record["requestContext"]["condition"] == "EventAgeExceeded"
    assert record["requestContext"]["approximateInvokeCount"] == 1
    [entry] = deadletter.entries(r, "flaky")
    assert entry["reason"] == "EventAgeExceeded" and entry["error"]["errorType"] == "EventAgeExceeded"
    assert status(project)["flaky"]["retried"] == 0, "it never ran"


def test_an_event_that_keeps_killing_its_worker_is_dead_lettered(dest_stack: Scaler, r: redis.Redis,
                                                                 redis_url: str, project: Path) -> None:
    event = publish(redis_url, project, "killer", {})
    deadline = time.monotonic() + 30
    while not deadletter.entries(r, "killer"):
        assert time.monotonic() < deadline, dest_stack.output()
        time.sleep(0.05)
    [entry] = deadletter.entries(r, "killer")
    assert entry["id"] == event.id and entry["attempts"] == 2
    assert entry["error"]["errorType"] == "Runtime.ExitError" and "died" in entry["error"]["errorMessage"]


def test_results_and_events_that_are_not_strict_json_fail_one_invocation(
    dest_stack: Scaler, r: redis.Redis, redis_url: str, project: Path,
) -> None:
    """A NaN or a too-deep result is Lambda's MarshalError; an event stored with a NaN by something
    other than a source cannot wait for a retry, so it is dead-lettered at once. No worker dies."""
    from rq import Queue
    from rq.serializers import JSONSerializer

    from broker.envelope import Event
    from broker.queues import RUNNER, queue_name

    for kind in ("nan", "deep"):
        out = invoke(redis_url, project, "marshal", {"kind": kind})
        assert not out.ok and out.error["errorType"] == "Runtime.MarshalError", out
    log = project / "sink.log"
    foreign = Event("flaky", {"log": str(log), "n": math.nan})
    Queue(queue_name("flaky"), connection=r, serializer=JSONSerializer).enqueue(
        RUNNER, foreign.to_dict(), job_id=foreign.id)  # RQ writes NaN; lambdalite's publisher would refuse
    deadline = time.monotonic() + 20
    while not deadletter.entries(r, "flaky"):
        assert time.monotonic() < deadline, dest_stack.output()
        time.sleep(0.05)
    [entry] = deadletter.entries(r, "flaky")
    assert entry["id"] == foreign.id and entry["attempts"] == 1
    assert entry["error"]["errorType"] == "ValueError"
    assert invoke(redis_url, project, "fine", {"log": str(log)}).ok
    output = dest_stack.output()
    assert "cannot be kept for a retry" in output and "destination record" in output
    assert "exited abnormally" not in output and "step failed" not in output, output


def test_frames_carry_json_members_as_they_are() -> None:
    """The worker sends a job's data to the sandbox as it read it; the sandbox reads one object."""
    import os

    from workers.sandbox import read_frame, write_frame

    r, w = os.pipe()
    try:
        job = json.dumps(["workers.runtime.run", None, [{"payload": {"k": ["é", 1.5, None]}}], {}]).encode()
        write_frame(w, {"id": "x", "n": 1}, raw={"job": job})
        assert read_frame(r) == {"id": "x", "n": 1, "job": json.loads(job)}
        write_frame(w, {}, raw={"a": b"[1]", "b": b'{"c": 2}'})
        assert read_frame(r) == {"a": [1], "b": {"c": 2}}
        write_frame(w, {"plain": True})
        assert read_frame(r) == {"plain": True}
    finally:
        os.close(r)
        os.close(w)
