"""Fuzzing the event envelope: whatever the bytes, ``Event.decode`` gives an Event or an EnvelopeError.

An Event that decodes must also encode again (a worker re-encodes it for a retry), so every
decoded event is checked to round-trip, and every valid event to survive encode and decode.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker import delayed
from broker.envelope import MAX_DEPTH, Event, dump_json, parse_json
from broker.errors import EnvelopeError
from broker.queues import Publisher, function_queue
from broker.registry import load_registry

FUZZ = settings(max_examples=300, deadline=None)

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text()
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
finite_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**80), 2**80) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
valid_events = st.builds(
    Event,
    function=st.text(max_size=20),
    payload=finite_json,
    id=st.from_regex(r"[A-Za-z0-9_-]{1,40}", fullmatch=True),
    source=st.sampled_from(["files", "sqlite", "http", "invoke", "destination"]) | st.text(max_size=10),
    invocation_type=st.sampled_from(["Event", "RequestResponse"]),
    created_at=st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**53), 2**53).map(float),
    attempt=st.integers(0, 2**70),
)


def decode_or_error(raw: bytes | str) -> Event | None:
    """Decode, allowing only EnvelopeError; a decoded event must survive another encode/decode."""
    try:
        event = Event.decode(raw)
    except EnvelopeError:
        return None
    assert Event.decode(event.encode()) == event
    return event


@FUZZ
@given(st.binary(max_size=300))
def test_arbitrary_bytes(raw: bytes) -> None:
    decode_or_error(raw)


@FUZZ
@given(st.text(max_size=300))
def test_arbitrary_text_with_surrogates_and_controls(raw: str) -> None:
    decode_or_error(raw)


@FUZZ
@given(json_values)
def test_arbitrary_json_values(value: Any) -> None:
    decode_or_error(json.dumps(value))  # NaN and Infinity included, as Python writes them


def _field(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return valid | json_values | st.integers(10**300, 10**301)


@FUZZ
@given(
    st.fixed_dictionaries({
        "v": _field(st.just(1)) | st.sampled_from([1.0, True, "1", 2]),
        "function": _field(st.text(max_size=10)),
        "payload": json_values,
        "id": _field(st.from_regex(r"[A-Za-z0-9_-]{1,40}", fullmatch=True)) | st.sampled_from(["", "a b", "é"]),
        "source": _field(st.text(max_size=10)),
        "invocation_type": _field(st.sampled_from(["Event", "RequestResponse"])),
        "created_at": _field(st.floats()) | st.sampled_from(["12", 10**400, -(10**400)]),
        "attempt": _field(st.integers(-3, 10)) | st.sampled_from(["3", 1.5, True, 1e999]),
    }),
    st.sets(st.sampled_from(["v", "function", "payload", "id", "source", "invocation_type", "created_at",
                             "attempt"]), max_size=2),
)
def test_right_keys_wrong_types_or_values(fields: dict[str, Any], drop: set[str]) -> None:
    envelope = {k: v for k, v in fields.items() if k not in drop}
    event = decode_or_error(json.dumps(envelope))
    if event is not None:  # what did decode is exactly what was there: no conversions
        assert not drop
        assert type(fields["attempt"]) is int and fields["attempt"] >= 0
        assert type(fields["created_at"]) in (int, float) and math.isfinite(fields["created_at"])
        assert isinstance(fields["source"], str) and fields["invocation_type"] in ("Event", "RequestResponse")


@FUZZ
@given(valid_events)
def test_valid_events_round_trip(event: Event) -> None:
    raw = event.encode()
    back = Event.decode(raw)
    assert back == event and back.encode() == raw
    assert Event.from_dict(json.loads(raw)) == event


def _nested(depth: int) -> Any:
    value: Any = "leaf"
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


def test_nesting_up_to_the_limit_and_not_beyond() -> None:
    assert Event.decode(Event("f", _nested(MAX_DEPTH)).encode()).payload == _nested(MAX_DEPTH)
    with pytest.raises(EnvelopeError, match="nested more than"):
        Event("f", _nested(MAX_DEPTH + 1)).encode()
    for raw in (b"[" * 100_000, b'{"a":' * 100_000, json.dumps(Event("f", _nested(MAX_DEPTH + 1)).to_dict())):
        with pytest.raises(EnvelopeError, match="nested more than"):
            Event.decode(raw)
    # brackets inside strings are not nesting
    assert parse_json(json.dumps({"text": "[" * 1000})) == {"text": "[" * 1000}


@pytest.mark.parametrize(
    ("raw", "message"),
    [("NaN", "NaN is not JSON"), ('{"a": -Infinity}', "-Infinity is not JSON"), ("[1e999]", "out of range"),
     ("1" * 5000, "4300 digits"), (b'"\xff"', "can't decode")],
)
def test_strict_json_refuses_what_it_could_not_write_back(raw: str | bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_json(raw)


def test_dump_json_refuses_what_parse_json_refuses() -> None:
    for value in (math.nan, [math.inf], {"a": {1, 2}}, _nested(MAX_DEPTH + 1)):
        with pytest.raises((TypeError, ValueError)):
            dump_json(value)
    assert parse_json(dump_json({"a": [-0.0, 2**64, "\ud800"]})) == {"a": [-0.0, 2**64, "\ud800"]}


TOML = '[functions.f]\nhandler = "handlers.echo.handler"\n'


def test_the_publisher_stores_nothing_that_is_not_strict_json(project: Path, r: redis.Redis) -> None:
    (project / "lambdalite.toml").write_text(TOML)
    publisher = Publisher(r, load_registry(project / "lambdalite.toml"))
    good, bad = Event("f", {"n": 1}), Event("f", {"n": math.inf})
    with pytest.raises(EnvelopeError, match="not JSON-serializable"):
        publisher.publish_many([good, bad])
    assert function_queue(r, "f").count == 0 and r.keys("rq:job:*") == []
    publisher.publish(good)
    assert function_queue(r, "f").job_ids == [good.id]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.binary(max_size=60) | json_values.map(lambda v: json.dumps(v).encode()), max_size=5))
def test_delayed_release_drops_garbage_and_publishes_the_rest(project: Path, r: redis.Redis,
                                                              members: list[bytes]) -> None:
    """The scaler's release of due retries, against foreign members in the real sorted set."""
    (project / "lambdalite.toml").write_text(TOML)
    publisher = Publisher(r, load_registry(project / "lambdalite.toml"))
    r.delete(delayed.DELAYED_KEY, function_queue(r, "f").key)
    good = Event("f", {"ok": True}, attempt=1)
    if members:
        r.zadd(delayed.DELAYED_KEY, {m: 0 for m in members})
    delayed.schedule(r, good, time.time() - 1)
    assert delayed.release_due(r, publisher, time.time()) >= 1
    assert r.zcard(delayed.DELAYED_KEY) == 0
    assert good.id + "-a1" in function_queue(r, "f").job_ids
