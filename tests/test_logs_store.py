"""The log store: each invocation's lines kept per function in Redis, bounded, found by request id,
followed live by ``lambdalite logs``; the real scaler writes them as invocations end."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from broker import logstore
from tests.stack import Scaler, cli, env, invoke

HANDLER = '''
import logging
import subprocess
import sys

logging.basicConfig(level=logging.INFO)


def talk(event, context):
    print("hello from", context.aws_request_id)
    print("to stderr", file=sys.stderr)
    logging.getLogger("talk").warning("a warning")
    print("a \\x1b[31m colour")
    subprocess.run(["sh", "-c", "echo from a child process"], check=True)
    print("no newline at the end", end="")
    return event


def chatty(event, context):
    for i in range(event["lines"]):
        print(f"line {i} " + "x" * 100)
    return "done"


def structured(event, context):
    logging.getLogger("app").info("hello %s", "json")
    print("plain print")
    try:
        1 / 0
    except ZeroDivisionError:
        logging.getLogger("app").exception("caught")
    return 1


def fail(event, context):
    print("about to fail")
    raise RuntimeError("it failed")
'''

FUNCTIONS = """
[functions.talk]
handler = "loggy.talk"
[functions.chatty]
handler = "loggy.chatty"
[functions.fail]
handler = "loggy.fail"
retries = 0
[functions.structured]
handler = "loggy.structured"
log_format = "JSON"
"""


@pytest.fixture
def stack(project: Path, redis_url: str) -> Iterator[Scaler]:
    (project / "loggy.py").write_text(HANDLER)
    (project / "lambdalite.toml").write_text(FUNCTIONS)
    with Scaler(project, LAMBDALITE_IDLE_TIMEOUT="60") as scaler:
        yield scaler


def _messages(entry: logstore.Entry) -> list[str]:
    return [text for _, text in entry.lines]


def test_an_invocation_s_lines_are_stored_in_order(stack: Scaler, r: redis.Redis, redis_url: str,
                                                   project: Path) -> None:
    out = invoke(redis_url, project, "talk", {"n": 1})
    assert out.ok, out
    [entry] = logstore.entries(r, "talk", since_ms=0)
    lines = _messages(entry)
    rid = entry.request_id
    assert lines[0] == f"START RequestId: {rid} Version: 1"  # the running revision
    assert lines[-2] == f"END RequestId: {rid}"
    assert lines[-1].startswith(f"REPORT RequestId: {rid}\tDuration: ")
    assert "Init Duration: " in lines[-1], "the first invocation of a sandbox is a cold start"
    middle = lines[1:-2]
    assert f"hello from {rid}" in middle
    assert "to stderr" in middle
    assert "WARNING talk: a warning" in middle, "the handler's logging goes to the log too"
    assert "a \x1b[31m colour" in middle, "stored as written"
    assert "from a child process" in middle
    assert middle[-1] == "no newline at the end"
    assert middle.index(f"hello from {rid}") < middle.index("from a child process")
    assert logstore.find(r, "talk", rid) == entry
    # Still relayed to the worker's stdout (honcho shows it), control characters escaped there.
    deadline = time.monotonic() + 5
    while "from a child process" not in stack.output() and time.monotonic() < deadline:
        time.sleep(0.05)
    output = stack.output()
    assert f"hello from {rid}" in output and "from a child process" in output
    assert "a \\x1b[31m colour" in output and "\x1b" not in output

    second = invoke(redis_url, project, "talk", {"n": 2})
    assert second.ok
    entries = logstore.entries(r, "talk", since_ms=0)
    assert len(entries) == 2
    assert f"hello from {entries[1].request_id}" in _messages(entries[1])
    assert f"hello from {rid}" not in _messages(entries[1]), "each invocation holds its own lines only"
    assert "Init Duration" not in entries[1].lines[-1][1], "a warm invocation has no INIT"


def test_json_log_format(stack: Scaler, r: redis.Redis, redis_url: str, project: Path) -> None:
    assert invoke(redis_url, project, "structured").ok
    [entry] = logstore.entries(r, "structured", since_ms=0)
    rid = entry.request_id
    lines = _messages(entry)
    assert "plain print" in lines, "what a handler prints stays as it is, as in Lambda's Python runtime"
    records = [json.loads(line) for line in lines if line != "plain print"]
    start, info, caught, done, report = records
    assert start["type"] == "platform.start" and start["record"] == {"requestId": rid, "version": "1"}
    assert {k: info[k] for k in ("level", "message", "logger", "requestId")} == {
        "level": "INFO", "message": "hello json", "logger": "app", "requestId": rid}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", info["timestamp"])
    assert caught["level"] == "ERROR" and caught["errorType"] == "ZeroDivisionError" and caught["stackTrace"]
    assert done == {"time": done["time"], "type": "platform.runtimeDone",
                    "record": {"requestId": rid, "status": "success"}}
    assert report["type"] == "platform.report" and report["record"]["status"] == "success"
    metrics = report["record"]["metrics"]
    assert set(metrics) == {"durationMs", "billedDurationMs", "memorySizeMB", "maxMemoryUsedMB", "initDurationMs"}
    assert metrics["memorySizeMB"] == 128
    assert metrics["billedDurationMs"] >= metrics["durationMs"] + metrics["initDurationMs"]
    assert "Init Duration" not in "".join(lines)
    # A text function beside it keeps the text format.
    assert invoke(redis_url, project, "talk", {}).ok
    assert logstore.entries(r, "talk", since_ms=0)[0].lines[0][1].startswith("START RequestId: ")


def test_a_failed_invocation_keeps_its_traceback(stack: Scaler, r: redis.Redis, redis_url: str,
                                                 project: Path) -> None:
    out = invoke(redis_url, project, "fail")
    assert not out.ok
    [entry] = logstore.entries(r, "fail", since_ms=0)
    text = entry.text()
    assert "about to fail" in text
    assert "[ERROR] RuntimeError: it failed" in text and "Traceback (most recent call last):" in text
    assert text.rstrip("\n").endswith("Status: error")
    assert logstore.tail(r, "fail", entry.request_id) == text


def test_a_flood_of_output_is_kept_within_bounds(stack: Scaler, r: redis.Redis, redis_url: str,
                                                 project: Path) -> None:
    assert invoke(redis_url, project, "chatty", {"lines": 20_000}).ok  # about 2 MB of output
    [entry] = logstore.entries(r, "chatty", since_ms=0)
    size = len(entry.text().encode())
    assert size <= 16_384 + 200, size  # LAMBDALITE_LOGS_MAX_INVOCATION_BYTES's default
    lines = _messages(entry)
    assert lines[0].startswith("START") and lines[1].startswith("line 0 ")
    assert lines[-3].startswith("line 19999 ") and lines[-1].startswith("REPORT")
    [gap] = [line for line in lines if line.startswith("[lambdalite: ")]
    assert "bytes of output left out here" in gap


@pytest.mark.serial  # the REPORT line within a second
def test_logs_follow_shows_an_invocation_within_a_second(stack: Scaler, r: redis.Redis, redis_url: str,
                                                         project: Path) -> None:
    seen: list[tuple[float, dict[str, str]]] = []
    with subprocess.Popen([sys.executable, "-m", "broker.cli", "logs", "talk", "--follow", "--output", "json"],
                          cwd=project, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                seen.append((time.monotonic(), json.loads(line)))

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            time.sleep(1.0)  # the command is up and waiting
            out = invoke(redis_url, project, "talk", {"n": 3})
            done = time.monotonic()
            assert out.ok
            deadline = done + 5
            while not any(rec["message"].startswith("REPORT") for _, rec in seen) and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            proc.terminate()
            proc.wait(10)
            reader.join(5)
            errors = proc.stderr.read() if proc.stderr else ""
    report = [(at, rec) for at, rec in seen if rec["message"].startswith("REPORT")]
    assert report, (seen, errors)
    at, rec = report[0]
    assert at - done < 1.0, f"the REPORT line showed {at - done:.3f} s after the outcome"
    rid = rec["requestId"]
    messages = [rec["message"] for _, rec in seen if rec["requestId"] == rid]
    assert messages[0].startswith(f"START RequestId: {rid}") and f"hello from {rid}" in messages
    assert {rec["function"] for _, rec in seen} == {"talk"}


def test_logs_command_history_filter_and_request_id(stack: Scaler, r: redis.Redis, redis_url: str,
                                                    project: Path) -> None:
    for n in range(3):
        assert invoke(redis_url, project, "talk", {"n": n}).ok
    entries = logstore.entries(r, "talk", since_ms=0)
    assert len(entries) == 3
    text = cli(project, "logs", "talk")
    assert text.returncode == 0, text.stderr
    assert text.stdout.count("START RequestId: ") == 3 and text.stdout.count("REPORT RequestId: ") == 3
    assert "a \\x1b[31m colour" in text.stdout and "\x1b" not in text.stdout
    filtered = cli(project, "logs", "talk", "--filter", "hello from")
    assert [line.split(" ", 1)[1] for line in filtered.stdout.splitlines()] == [
        f"hello from {e.request_id}" for e in entries]
    one = cli(project, "logs", "talk", "--request-id", entries[1].request_id, "--output", "json")
    records = [json.loads(line) for line in one.stdout.splitlines()]
    assert {rec["requestId"] for rec in records} == {entries[1].request_id}
    assert [rec["message"] for rec in records] == _messages(entries[1])
    future = cli(project, "logs", "talk", "--since", "2999-01-01T00:00:00Z")
    assert future.returncode == 0 and future.stdout == ""
    bad = cli(project, "logs", "talk", "--since", "yesterday")
    assert bad.returncode == 1 and bad.stderr.strip().startswith("lambdalite: --since 'yesterday': not a duration")
    missing = cli(project, "logs", "talk", "--request-id", "no-such-request")
    assert missing.returncode == 1 and "no log of request no-such-request for talk" in missing.stderr
    unknown = cli(project, "logs", "nobody")
    assert unknown.returncode == 1 and "no function named 'nobody'" in unknown.stderr


# -- the store itself, seeded through its module ----------------------------------------------------


def _seed(r: redis.Redis, function: str, count: int, cap: int | None = None,
          prefix: str = "") -> list[str]:
    ids = [prefix + str(uuid.uuid4()) for _ in range(count)]
    with r.pipeline(transaction=False) as pipe:
        for i, rid in enumerate(ids):
            logstore.record(pipe, function, rid, [(i, f"START RequestId: {rid} Version: $LATEST"),
                                                   (i, f"line of {rid}"), (i, f"END RequestId: {rid}")], cap=cap)
            if i % 2000 == 1999:
                pipe.execute()
        pipe.execute()
    return ids


def test_request_id_is_found_among_100000(project: Path, r: redis.Redis) -> None:
    (project / "lambdalite.toml").write_text(FUNCTIONS)
    ids = _seed(r, "talk", 100_000)  # the default cap: LAMBDALITE_LOGS_MAX_INVOCATIONS=100000
    assert r.xlen(logstore.stream_key("talk")) == 100_000
    for rid in (ids[0], ids[4321], ids[77_777], ids[-1]):
        entry = logstore.find(r, "talk", rid)
        assert entry is not None and entry.request_id == rid and entry.lines[1][1] == f"line of {rid}"
    assert logstore.find(r, "talk", "not-there") is None
    started = time.perf_counter()
    done = cli(project, "logs", "talk", "--request-id", ids[50_000])
    took = time.perf_counter() - started
    assert done.returncode == 0, done.stderr
    assert [line.split(" ", 1)[1] for line in done.stdout.splitlines()] == [
        f"START RequestId: {ids[50_000]} Version: $LATEST", f"line of {ids[50_000]}", f"END RequestId: {ids[50_000]}"]
    print(f"lambdalite logs --request-id among 100,000: {took:.3f} s (the whole command, a fresh process)")


def test_store_stays_bounded(r: redis.Redis) -> None:
    cap = 2000
    _seed(r, "bounded", cap, cap=cap, prefix="a")
    once = logstore.memory(r, "bounded")
    _seed(r, "bounded", cap, cap=cap, prefix="b")
    twice = logstore.memory(r, "bounded")
    length = r.xlen(logstore.stream_key("bounded"))
    assert cap <= length < cap + 100, length
    assert r.zcard(logstore.index_key("bounded")) <= cap + 128
    assert 0.9 < twice / once < 1.1, (once, twice)
    assert 0 < r.ttl(logstore.stream_key("bounded")) <= logstore.KEEP
    assert 0 < r.ttl(logstore.index_key("bounded")) <= logstore.KEEP
    newest = logstore.entries(r, "bounded", since_ms=0, count=100_000)
    assert all(e.request_id.startswith("b") for e in newest[-cap:])


def test_tail_is_the_last_4_kb(r: redis.Redis) -> None:
    lines = [(1, "START RequestId: x Version: $LATEST"), *[(1, f"ü line {i:05d}") for i in range(1000)],
             (1, "END RequestId: x"), (1, "REPORT RequestId: x\tDuration: 1.00 ms")]
    with r.pipeline() as pipe:
        logstore.record(pipe, "f", "x", lines)
        pipe.execute()
    text = logstore.tail(r, "f", "x")
    assert len(text.encode()) <= 4096 and text.endswith("REPORT RequestId: x\tDuration: 1.00 ms\n")
    assert logstore.find(r, "f", "x").text().endswith(text)  # type: ignore[union-attr]
    assert logstore.tail(r, "f", "x", limit_bytes=100_000).startswith("START RequestId: x")
    assert logstore.tail(r, "f", "missing") == ""


def test_bounded_lines_keep_head_and_tail() -> None:
    kept = logstore.Lines(budget=1000)
    for i in range(500):
        kept.add(f"line {i:03d}", at=i)
    items = kept.items()
    size = sum(len(text) for _, text in items)
    assert size < 1100
    assert items[0] == (0, "line 000") and items[-1] == (499, "line 499")
    gaps = [text for _, text in items if text.startswith("[lambdalite:")]
    assert len(gaps) == 1 and "line(s)" in gaps[0]
    assert len(items) - 1 + int(gaps[0].split()[1]) == 500, "every line is kept or counted"
    huge = logstore.Lines()
    huge.add("y" * 100_000)
    assert len(huge.items()[0][1]) < logstore.MAX_LINE_BYTES + 40


def test_a_key_of_another_type_is_moved_aside_not_an_error(r: redis.Redis) -> None:
    r.set(logstore.stream_key("f"), "not a stream")
    r.set(logstore.index_key("f"), "not a zset")
    with r.pipeline() as pipe:
        logstore.record(pipe, "f", "id-1", [(1, "a line")])
        pipe.execute()
    assert logstore.find(r, "f", "id-1") is not None
    assert len(list(r.scan_iter("lambdalite:quarantine:lambdalite:logs*"))) == 2


def test_a_foreign_entry_is_skipped_when_read(r: redis.Redis) -> None:
    r.xadd(logstore.stream_key("f"), {"r": "x", "l": "not json"})
    with r.pipeline() as pipe:
        logstore.record(pipe, "f", "good", [(1, "fine")])
        pipe.execute()
    assert [e.request_id for e in logstore.entries(r, "f", since_ms=0)] == ["good"]


@pytest.mark.parametrize("value", ["30s", "10m", "2h", "1d", "1w", "2026-12-06T09:00:00Z", "2026-12-06 09:00"])
def test_since_accepts_durations_and_times(value: str) -> None:
    from broker.cli.logcli import since_ms

    now = 1_800_000_000.0
    got = since_ms(value, now)
    assert got <= now * 1000
    if value == "10m":
        assert got == int((now - 600) * 1000)



def test_an_unknown_log_format_is_refused_at_start(project: Path) -> None:
    (project / "loggy.py").write_text(HANDLER)
    (project / "lambdalite.toml").write_text('[functions.talk]\nhandler = "loggy.talk"\nlog_format = "json"\n')
    done = cli(project, "check")
    assert done.returncode == 1
    assert "log_format" in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
