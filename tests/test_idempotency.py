"""Exactly-once effects: handlers guarded by ``broker.handler_api.idempotency`` run their effect once per key.

The stack tests run the real scaler, workers and sandboxes against a real Redis and deliver the
same event more than once, as a retry or a redelivery would; the effect is a line in a ledger
file, and the tests read that file and what Redis holds.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis

from broker import results
from broker.envelope import Event
from broker.errors import IdempotencyError, IdempotencyKeyError
from broker.handler_api import idempotency
from broker.handler_api.idempotency import idempotent, idempotent_function, record_key
from broker.queues import Publisher
from broker.registry import load_registry
from tests.stack import ROOT, Scaler, env, invoke, status
from tests.waiting import wait_until
from workers.context import LambdaContext

FIXTURES = Path(__file__).parent / "fixtures"

FUNCTIONS = """
[functions.pay]
handler = "idem.pay"
timeout = 30
max_concurrency = 2
retries = 3
retry_backoff = 0.5
[functions.pay_by_order]
handler = "idem.pay_by_order"
[functions.pay_by_order_too]
handler = "idem.pay_by_order"
[functions.pay_by_callable]
handler = "idem.pay_by_callable"
[functions.not_json]
handler = "idem.not_json"
[functions.checkout]
handler = "idem.checkout"
retries = 1
retry_backoff = 0.05
[functions.payments]
handler = "handlers.payments.handler"
"""


@pytest.fixture
def stack(project: Path, redis_url: str) -> Iterator[Scaler]:
    shutil.copy(FIXTURES / "idem.py", project / "idem.py")
    (project / "lambdalite.toml").write_text(FUNCTIONS)
    with Scaler(project, LAMBDALITE_IDLE_TIMEOUT="60", PAYMENTS_LEDGER=str(project / "payments.ledger")) as scaler:
        yield scaler


def deliver(r: redis.Redis, project: Path, event: Event) -> None:
    Publisher(r, load_registry(project / "lambdalite.toml")).publish(event)


def outcomes(r: redis.Redis, event_id: str, count: int, timeout: float = 15) -> list[results.Outcome]:
    """The first ``count`` outcomes recorded for ``event_id`` (each delivery that ended records one)."""
    deadline = time.monotonic() + timeout
    while True:
        entries = r.xrange(results.result_key(event_id))
        if len(entries) >= count:
            return [results.Outcome.decode(fields[b"outcome"]) for _id, fields in entries]
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(entries)} outcome(s) for {event_id}, expected {count}")
        time.sleep(0.05)


def ledger(project: Path) -> list[list[str]]:
    path = project / "ledger"
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def stored(r: redis.Redis, key: str) -> dict[str, Any]:
    raw = r.get(key)
    assert raw is not None, f"no record at {key}"
    return json.loads(raw)  # type: ignore[no-any-return]


# -- through the real stack ---------------------------------------------------------------------


def test_redelivered_event_runs_its_effect_once(stack: Scaler, r: redis.Redis, project: Path) -> None:
    event = Event(function="pay", payload={"amount": 5})
    deliver(r, project, event)
    outcomes(r, event.id, 1)
    deliver(r, project, dataclasses.replace(event, attempt=1))  # the same event, delivered again
    first, second = outcomes(r, event.id, 2)
    assert first.ok and second.ok
    assert first.result == second.result and len(first.result["receipt"]) == 32
    assert [line[:2] for line in ledger(project)] == [["start", event.id], ["done", event.id]]
    record = stored(r, record_key("pay", event.id))
    assert record["status"] == "COMPLETED" and record["result"] == first.result
    assert 3590 < r.ttl(record_key("pay", event.id)) <= 3600
    assert "already completed by request" in stack.output()


def test_a_handler_that_raises_releases_its_claim_and_the_retry_runs(stack: Scaler, r: redis.Redis,
                                                                      project: Path) -> None:
    (project / "fail").touch()
    event = Event(function="pay", payload={})
    deliver(r, project, event)
    (out,) = outcomes(r, event.id, 1)
    # The first attempt failed after its effect; its claim (good for 30 s) was released at once.
    assert out.ok and out.attempts == 2
    assert [line[0] for line in ledger(project)] == ["start", "done", "start", "done"]
    assert stored(r, record_key("pay", event.id))["result"] == out.result


@pytest.mark.parametrize("victim", ["sandbox", "worker"])
def test_the_claim_of_a_killed_invocation_is_released_for_the_retry(stack: Scaler, r: redis.Redis,
                                                                     project: Path, victim: str) -> None:
    (project / "stall").touch()
    event = Event(function="pay", payload={})
    deliver(r, project, event)
    wait_until(lambda: len(ledger(project)) == 1)
    sandbox = int(ledger(project)[0][2])
    key = record_key("pay", event.id)
    assert stored(r, key)["status"] == "INPROGRESS"
    pid = sandbox if victim == "sandbox" else psutil.Process(sandbox).ppid()
    os.kill(pid, signal.SIGKILL)
    started = time.monotonic()
    (out,) = outcomes(r, event.id, 1)
    # Well before the 30 s the claim would last: its worker (or the scaler) released it.
    assert out.ok and out.attempts == 2 and time.monotonic() - started < 10
    assert [line[0] for line in ledger(project)] == ["start", "start", "done"]
    assert stored(r, key)["status"] == "COMPLETED"
    assert r.keys(f"{idempotency.HELD_PREFIX}*") == []


def test_a_claim_left_behind_is_taken_over_once_it_expires(stack: Scaler, r: redis.Redis, project: Path) -> None:
    event = Event(function="pay", payload={}, invocation_type="RequestResponse")
    key = record_key("pay", event.id)
    # What an invocation on a host that vanished leaves: a claim nobody will release.
    r.set(key, json.dumps({"status": "INPROGRESS", "token": "gone/1", "request_id": event.id,
                           "started_at": time.time()}), px=4000)  # outlives a cold start on a loaded machine
    deliver(r, project, event)
    (refused,) = outcomes(r, event.id, 1)
    assert refused.status == "failed" and refused.error["errorType"] == "IdempotencyAlreadyInProgressError"
    assert ledger(project) == []
    wait_until(lambda: not r.exists(key), timeout=10)
    deliver(r, project, dataclasses.replace(event, attempt=1))
    _, taken = outcomes(r, event.id, 2)
    assert taken.ok and [line[0] for line in ledger(project)] == ["start", "done"]


def test_concurrent_deliveries_run_once_and_both_get_the_result(stack: Scaler, r: redis.Redis,
                                                                project: Path) -> None:
    (project / "hold").touch()
    event = Event(function="pay", payload={})
    deliver(r, project, event)
    wait_until(lambda: len(ledger(project)) == 1)
    key = record_key("pay", event.id)
    assert stored(r, key)["status"] == "INPROGRESS"
    assert 25_000 < r.pttl(key) <= 30_000, "the claim lasts as long as the invocation may run"
    deliver(r, project, dataclasses.replace(event, attempt=1))  # a second worker takes it
    wait_until(lambda: "[ERROR] IdempotencyAlreadyInProgressError" in stack.output())
    (project / "hold").unlink()
    first, second = outcomes(r, event.id, 2)
    assert first.ok and second.ok and first.result == second.result
    assert [line[0] for line in ledger(project)] == ["start", "done"]
    row = status(project)["pay"]
    assert (row["succeeded"], row["failed"], row["retried"], row["dead"]) == (2, 1, 1, 0)
    starts = {line.split("\t")[0] for line in stack.output().splitlines() if line.startswith("START RequestId")}
    assert starts == {f"START RequestId: {event.id} Version: 1"}  # the running revision of lambdalite.toml


def test_a_key_from_the_event_scoped_per_function(stack: Scaler, r: redis.Redis, redis_url: str,
                                                  project: Path) -> None:
    a1 = invoke(redis_url, project, "pay_by_order", {"order": {"id": "A"}, "attempt": 1})
    a2 = invoke(redis_url, project, "pay_by_order", {"order": {"id": "A"}, "attempt": 2})
    b = invoke(redis_url, project, "pay_by_order", {"order": {"id": "B"}})
    other = invoke(redis_url, project, "pay_by_order_too", {"order": {"id": "A"}})
    assert a1.ok and a2.ok and b.ok and other.ok
    assert a1.result == a2.result
    assert len({a1.result["receipt"], b.result["receipt"], other.result["receipt"]}) == 3
    assert len([line for line in ledger(project) if line[0] == "done"]) == 3
    assert stored(r, record_key("pay_by_order", "A"))["result"] == a1.result
    missing = invoke(redis_url, project, "pay_by_order", {"order": {}})
    assert missing.error["errorType"] == "IdempotencyKeyError" and "'order.id'" in missing.error["errorMessage"]
    assert len(ledger(project)) == 6


def test_a_key_function(stack: Scaler, redis_url: str, project: Path) -> None:
    first = invoke(redis_url, project, "pay_by_callable", {"order": "a-1"})
    again = invoke(redis_url, project, "pay_by_callable", {"order": "A-1"})
    assert first.ok and again.ok and first.result == again.result
    assert [line[0] for line in ledger(project)] == ["start", "done"]
    broken = invoke(redis_url, project, "pay_by_callable", {"order": 7})
    assert broken.error["errorType"] == "IdempotencyKeyError"
    assert "AttributeError" in broken.error["errorMessage"] and len(ledger(project)) == 2


def test_a_function_level_helper_survives_a_failure_of_its_handler(stack: Scaler, r: redis.Redis,
                                                                   project: Path) -> None:
    (project / "fail").touch()
    event = Event(function="checkout", payload={"orders": [{"id": "o1"}, {"id": "o2"}]})
    deliver(r, project, event)
    (out,) = outcomes(r, event.id, 1)
    assert out.ok and out.attempts == 2
    # Both attempts called charge() for both orders; each charge ran once.
    assert [line[:2] for line in ledger(project)] == [["charge", "o1"], ["charge", "o2"]]
    for order, receipt in zip(["o1", "o2"], out.result, strict=True):
        assert stored(r, record_key("checkout", order, scope="idem.charge"))["result"] == receipt
    assert r.get(record_key("checkout", event.id)) is None, "the handler itself is not guarded"


def test_a_result_that_is_not_json_is_an_error_and_never_runs_again(stack: Scaler, r: redis.Redis,
                                                                    project: Path) -> None:
    event = Event(function="not_json", payload={}, invocation_type="RequestResponse")
    deliver(r, project, event)
    outcomes(r, event.id, 1)
    deliver(r, project, dataclasses.replace(event, attempt=1))
    first, second = outcomes(r, event.id, 2)
    for out in (first, second):
        assert out.status == "failed" and out.error["errorType"] == "IdempotencyResultError"
        assert "not JSON" in out.error["errorMessage"]
    assert len(ledger(project)) == 1
    assert stored(r, record_key("not_json", event.id))["status"] == "COMPLETED"


def test_a_corrupt_record_fails_and_stays(stack: Scaler, r: redis.Redis, project: Path) -> None:
    event = Event(function="pay", payload={}, invocation_type="RequestResponse")
    key = record_key("pay", event.id)
    r.set(key, b"\x00 not a record")
    deliver(r, project, event)
    (out,) = outcomes(r, event.id, 1)
    assert out.error["errorType"] == "IdempotencyRecordError" and key in out.error["errorMessage"]
    assert ledger(project) == [] and r.get(key) == b"\x00 not a record"


def test_the_shipped_payments_example(stack: Scaler, r: redis.Redis, redis_url: str, project: Path) -> None:
    first = invoke(redis_url, project, "payments", {"order_id": "A-1001", "amount": 42.5})
    again = invoke(redis_url, project, "payments", {"order_id": "A-1001", "amount": 42.5})
    refused = invoke(redis_url, project, "payments", {"order_id": "A-1002", "amount": 0})
    assert first.ok and again.result == first.result and first.result["amount"] == 42.5
    assert refused.error["errorType"] == "ValueError"
    charged = [json.loads(line) for line in (project / "payments.ledger").read_text().splitlines()]
    assert charged == [first.result]
    assert r.get(record_key("payments", "A-1002")) is None, "a failed charge leaves no claim"
    assert 24 * 3600 - 10 < r.ttl(record_key("payments", "A-1001")) <= 24 * 3600


# -- the helper on its own ----------------------------------------------------------------------


def context(function: str = "fn", request_id: str = "req-1", seconds: float = 3.0) -> LambdaContext:
    return LambdaContext(function_name=function, aws_request_id=request_id, memory_limit_in_mb=128,
                         deadline=time.time() + seconds, log_stream_name="test")


def test_the_claim_expires_with_the_invocation(r: redis.Redis) -> None:
    seen: list[int] = []

    @idempotent
    def handler(event: Any, ctx: Any) -> str:
        seen.append(r.pttl(record_key("fn", "req-1")))
        return "ok"

    assert handler({}, context(seconds=2.0)) == "ok"
    assert 1500 < seen[0] <= 2000
    assert handler({}, context(seconds=2.0)) == "ok" and len(seen) == 1


def test_redis_unavailable_fails_without_running(project: Path) -> None:
    (project / "idem.py").write_text((FIXTURES / "idem.py").read_text())
    code = ("import time, idem; from workers.context import LambdaContext\n"
            "ctx = LambdaContext('pay', 'req-1', 128, time.time() + 3, 'test')\n"
            "try:\n    idem.pay({}, ctx)\nexcept Exception as e:\n    print(type(e).__name__, e)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=project, capture_output=True, text=True, timeout=30,
                          env=env(LAMBDALITE_REDIS_URL=f"unix://{project}/no-redis.sock",
                                  PYTHONPATH=f"{ROOT}:{project}"))
    assert done.stdout.startswith("IdempotencyPersistenceLayerError redis unavailable"), done.stdout + done.stderr
    assert not (project / "ledger").exists(), "the body never runs unguarded"


def test_idempotent_function_refuses_to_run_unguarded() -> None:
    ran = []

    @idempotent_function
    def effect(n: int) -> int:
        ran.append(n)
        return n

    with pytest.raises(IdempotencyError, match="only inside a lambdalite invocation"):
        effect(1)
    assert ran == []


def test_options_are_checked_when_decorating() -> None:
    with pytest.raises(IdempotencyError, match="expires_after_seconds"):
        idempotent(expires_after_seconds=0)
    with pytest.raises(IdempotencyError, match="path"):
        idempotent(key="order..id")
    with pytest.raises(IdempotencyError, match="callable"):
        idempotent(key=5)


def test_record_keys_are_hashed_and_scoped() -> None:
    long = record_key("fn", "x" * 10_000)
    assert len(long) == len(record_key("fn", "x")) == len(idempotency.KEY_PREFIX) + len("fn:") + 64
    assert record_key("fn", {"a": 1, "b": 2}) == record_key("fn", {"b": 2, "a": 1})
    assert len({record_key("fn", "k"), record_key("other", "k"), record_key("fn", "k", scope="m.f")}) == 3


def test_a_key_path_follows_list_indexes_and_refuses_what_is_not_there() -> None:
    from broker.handler_api.idempotency import _event_key

    follow = _event_key("Records.1.id")
    assert follow is not None and follow({"Records": [{"id": "a"}, {"id": "b"}]}) == "b"
    for event in ({"Records": [{"id": "a"}]}, {"Records": {"1": 5}}, {}):
        with pytest.raises(IdempotencyKeyError):
            _event_key("Records.1.id.x")(event)  # type: ignore[misc]
    with pytest.raises(IdempotencyKeyError):  # '¹' is a digit to str.isdigit, not an index
        _event_key("Records.¹")({"Records": [1, 2]})  # type: ignore[misc]


def test_the_helpers_first_name_imports_the_same_helper() -> None:
    """Handlers written as ``from broker.idempotency import idempotent`` keep working."""
    import broker.idempotency as first_name

    assert first_name.idempotent is idempotent
    assert first_name.idempotent_function is idempotent_function
    assert first_name.__all__ == idempotency.__all__
    assert all(getattr(first_name, name) is getattr(idempotency, name) for name in idempotency.__all__)
