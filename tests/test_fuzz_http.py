"""Fuzzing the HTTP source: the request -> API Gateway event code, responses, bodies, signatures,
and the real app on uvicorn fed malformed bytes over a socket.

The rule everywhere: a bad request gets a 4xx (or its connection closed), never a 5xx or a
traceback, and the server keeps answering good requests.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st
from serving import StandInWorker, echo, queued, serve
from starlette.requests import ClientDisconnect, Request

from broker import results
from broker.envelope import MAX_DEPTH, Event
from broker.registry import load_registry
from sources.http import apigateway, invoke_api, signatures
from sources.http.bodies import read_body
from sources.http.errors import PayloadTooLargeError, SignatureError
from sources.http.webhook import create_app

FUZZ = settings(max_examples=200, deadline=None)

latin1 = st.binary(max_size=40)
tokens = st.from_regex(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,12}", fullmatch=True)
header_names = st.sampled_from([b"host", b"cookie", b"content-type", b"user-agent", b"x-a", b"X-A"]) | latin1
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=12,
)


# -- the request -> API Gateway event, at the function level -----------------------------------------


@FUZZ
@given(
    method=tokens, path=st.text(max_size=40), query=st.binary(max_size=60),
    headers=st.lists(st.tuples(header_names, latin1), max_size=8), body=st.binary(max_size=80),
    params=st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3),
)
def test_request_event_is_a_storable_api_gateway_event(
    method: str, path: str, query: bytes, headers: list[tuple[bytes, bytes]], body: bytes,
    params: dict[str, str],
) -> None:
    event = apigateway.request_event(
        method=method, path=path, query_string=query, headers=headers, body=body, route_key=f"{method} /x",
        path_parameters=params, request_id="r-1", source_ip="127.0.0.1", now=1.5,
    )
    assert Event.decode(Event("f", event).encode()).payload == event  # stored and read back intact
    expected: dict[str, list[str]] = {}
    for name, value in headers:
        expected.setdefault(name.decode("latin-1").lower(), []).append(value.decode("latin-1"))
    cookies = expected.pop("cookie", [])
    assert event["headers"] == {k: ",".join(v) for k, v in expected.items()}
    parts = [c.strip() for value in cookies for c in value.split(";") if c.strip()]
    assert event.get("cookies", []) == parts
    assert event["rawQueryString"].encode("latin-1") == query
    assert event["requestContext"]["http"]["method"] == method and event["rawPath"] == path
    if not body:
        assert "body" not in event and event["isBase64Encoded"] is False
    elif event["isBase64Encoded"]:
        assert base64.b64decode(event["body"]) == body
    else:
        assert event["body"].encode() == body


# -- the handler's result -> the HTTP response ---------------------------------------------------------

responses = st.fixed_dictionaries(
    {"statusCode": st.integers(0, 1000) | json_values},
    optional={
        "headers": st.dictionaries(st.text(max_size=10), json_values, max_size=3) | json_values,
        "cookies": st.lists(st.text(max_size=10), max_size=3) | json_values,
        "body": st.text(max_size=20) | json_values | st.binary(max_size=20).map(lambda b: base64.b64encode(b).decode()),
        "isBase64Encoded": st.booleans() | json_values,
    },
)


@FUZZ
@given(responses | json_values)
def test_response_from_result_is_always_a_valid_response(result: Any) -> None:
    answer = apigateway.response_from_result(result)
    assert 100 <= answer.status <= 599 and isinstance(answer.body, bytes)
    for name, value in answer.headers:
        name.encode("latin-1")
        value.encode("latin-1")
        assert "\r" not in value and "\n" not in value and name == name.lower()
        assert name not in ("content-length", "transfer-encoding", "connection")


def test_a_result_with_lone_surrogates_is_a_500_not_a_crash() -> None:
    for result in ("\ud800", {"statusCode": 200, "body": "x\udcff"}):
        assert apigateway.response_from_result(result) is apigateway.INTERNAL_ERROR


# -- bodies under a limit ------------------------------------------------------------------------------


def _request(chunks: list[bytes], declared: bytes | None, disconnect: bool) -> Request:
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)
    ] or [{"type": "http.request", "body": b"", "more_body": False}]
    if disconnect:
        messages = [*({**m, "more_body": True} for m in messages), {"type": "http.disconnect"}]

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    headers = [(b"content-length", declared)] if declared is not None else []
    return Request({"type": "http", "method": "POST", "path": "/", "headers": headers}, receive)


async def _read(request: Request, limit: int) -> bytes:
    return await read_body(request.receive, request.headers.get("content-length", ""), limit)


@FUZZ
@given(st.lists(st.binary(max_size=50), max_size=6), st.none() | st.binary(max_size=8)
       | st.integers(0, 400).map(lambda n: str(n).encode()), st.integers(0, 200), st.booleans())
def test_read_body_returns_the_body_or_a_clear_refusal(chunks: list[bytes], declared: bytes | None, limit: int,
                                                       disconnect: bool) -> None:
    whole = b"".join(chunks)
    try:
        got = asyncio.run(_read(_request(chunks, declared, disconnect), limit))
    except PayloadTooLargeError:
        text = (declared or b"").decode("latin-1")
        assert len(whole) > limit or (text.isascii() and text.isdigit() and int(text) > limit)
        return
    except ClientDisconnect:
        assert disconnect
        return
    assert got == whole and len(got) <= limit and not disconnect


# -- authentication on arbitrary headers ---------------------------------------------------------------

sig_headers = st.dictionaries(
    st.sampled_from(["x-hub-signature-256", "stripe-signature", "webhook-id", "webhook-timestamp",
                     "webhook-signature", "authorization"]),
    st.text(st.characters(max_codepoint=255), max_size=60)
    | st.integers().map(str) | st.integers(10**300, 10**400).map(str)
    | st.builds(lambda t, s: f"t={t},v1={s}", st.integers().map(str), st.text(max_size=8)),
)


@FUZZ
@given(sig_headers, st.binary(max_size=40))
def test_signature_checks_pass_or_raise_signature_error(headers: dict[str, str], body: bytes) -> None:
    key = base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    for check in (
        lambda: signatures.verify_github(b"s", headers, body),
        lambda: signatures.verify_stripe(b"s", headers, body, 1_700_000_000.0),
        lambda: signatures.verify_standard_webhooks(key, headers, body, 1_700_000_000.0),
        lambda: signatures.verify_bearer(b"s", headers),
    ):
        with contextlib.suppress(SignatureError):
            check()


def test_a_timestamp_beyond_any_float_is_refused_cleanly() -> None:
    headers = {"webhook-id": "m", "webhook-timestamp": "9" * 400, "webhook-signature": "v1,x"}
    with pytest.raises(SignatureError, match="more than 10"):
        signatures.verify_standard_webhooks(b"k", headers, b"", 1_700_000_000.0)


@FUZZ
@given(st.text(max_size=60))
def test_function_name_of_any_path_parameter(raw: str) -> None:
    assert isinstance(invoke_api.function_name(raw), str)


# -- the real app on uvicorn, over a socket --------------------------------------------------------------

TOML = """
[functions.hook]
handler = "handlers.echo.handler"
[[functions.hook.triggers]]
source = "http"
path = "/hooks/{name}"
methods = ["POST", "GET"]
mode = "async"

[functions.echo]
handler = "handlers.echo.handler"
timeout = 2

[functions.page]
handler = "handlers.echo.handler"
timeout = 2
[[functions.page.triggers]]
source = "http"
path = "/pages/{name}"
"""

INVOKE = b"POST /2015-03-31/functions/echo/invocations HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"


def exchange(url: str, data: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes on a fresh connection; everything the server answers until it closes."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        with contextlib.suppress(OSError):  # the server already answered and closed (a refused huge header)
            s.sendall(data)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                return out
            out += chunk
    return out


def status_of(answer: bytes) -> int | None:
    """The first response's status code, or None when the server closed without answering."""
    if not answer:
        return None
    line = answer.split(b"\r\n", 1)[0].split(b" ")
    assert line[0] == b"HTTP/1.1", answer[:200]
    return int(line[1])


def body(data: bytes, *headers: bytes) -> bytes:
    return b"".join(h + b"\r\n" for h in headers) + b"Content-Length: %d\r\n\r\n" % len(data) + data


MALFORMED = {
    "not http": b"\x00\xff\xfe garbage\r\n\r\n",
    "http/0.9": b"GET /\r\n\r\n",
    "http/2 preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "bad method": b"P\x00ST /hooks/a HTTP/1.1\r\nHost: x\r\n\r\n",
    "raw non-ASCII path": b"POST /hooks/caf\xe9 HTTP/1.1\r\nHost: x\r\n" + body(b"{}"),
    "raw byte in query": b"POST /hooks/a?x=\xff HTTP/1.1\r\nHost: x\r\n" + body(b"{}"),
    "space in header name": b"POST /hooks/a HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n" + body(b"{}"),
    "no host": b"POST /hooks/a HTTP/1.1\r\n" + body(b"{}"),
    "content-length abc": b"POST /hooks/a HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}",
    "content-length -1": b"POST /hooks/a HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n{}",
    "two content-lengths": b"POST /hooks/a HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    "bad chunk size": b"POST /hooks/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    "huge header": b"POST /hooks/a HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000 + b"\r\n" + body(b"{}"),
    "20,000 headers": b"POST /hooks/a HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(20_000))
    + body(b"{}"),
    "invoke: not UTF-8": INVOKE + body(b"\xff\xfe{", b"X-Amz-Invocation-Type: Event"),
    "invoke: NaN": INVOKE + body(b'{"a": NaN}', b"X-Amz-Invocation-Type: Event"),
    "invoke: number beyond float": INVOKE + body(b'{"a": 1e999}', b"X-Amz-Invocation-Type: Event"),
    "invoke: 50,000 deep": INVOKE + body(b"[" * 50_000 + b"]" * 50_000, b"X-Amz-Invocation-Type: Event"),
    "invoke: just over the depth": INVOKE + body(b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1),
                                                 b"X-Amz-Invocation-Type: Event"),
    "invoke: 5,000-digit integer": INVOKE + body(b"1" * 5000, b"X-Amz-Invocation-Type: Event"),
    "invoke: latin-1 invocation type": INVOKE + body(b"{}", b"X-Amz-Invocation-Type: \xe9v"),
    "invoke: odd function name": b"POST /2015-03-31/functions/%ff%00:::/invocations HTTP/1.1\r\nHost: x\r\n"
    b"Connection: close\r\n" + body(b"{}"),
    "invoke: over the async limit": INVOKE + b"X-Amz-Invocation-Type: Event\r\nContent-Length: 2000000\r\n\r\n{}",
}
#: Requests that are odd but well-formed: answered 2xx, and what is stored is exactly what was sent.
ODD_BUT_FINE = {
    "percent-encoded non-UTF-8 path": b"POST /hooks/%ff%fe%ED%A0%80 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    + body(b"{}"),
    "latin-1 header and cookie": b"POST /hooks/a HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-A: caf\xe9\xff\r\n"
    b"Cookie: a=\xff; ;b\r\n" + body(b"\xff\x00binary"),
    "odd host": b"POST /hooks/a HTTP/1.1\r\nHost: a/b?c#d[\r\nConnection: close\r\n" + body(b"{}"),
    "invoke: latin-1 idempotency key": INVOKE + body(b"{}", b"X-Amz-Invocation-Type: Event",
                                                     b"Idempotency-Key: \xff\xfe"),
    "invoke: at the depth limit": INVOKE + body(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH, b"X-Amz-Invocation-Type: Event"),
}


@pytest.fixture
def app(project: Path, redis_url: str) -> Any:
    (project / "lambdalite.toml").write_text(TOML)
    return create_app(load_registry(project / "lambdalite.toml"), redis_url, sync_margin=3)


def good_request_is_served(url: str, r: redis.Redis) -> None:
    before = len(queued(r, "hook"))
    answer = httpx.post(f"{url}/hooks/good", content=b'{"good": true}')
    assert answer.status_code == 202
    assert len(queued(r, "hook")) == before + 1


def test_malformed_requests_get_4xx_or_a_closed_connection(app: Any, r: redis.Redis,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    with serve(app) as url:
        for name, data in MALFORMED.items():
            code = status_of(exchange(url, data))
            assert code is None or 400 <= code < 500, (name, code)
            good_request_is_served(url, r)
        assert [e.payload["rawPath"] for e in queued(r, "hook")] == ["/hooks/good"] * len(MALFORMED)
        assert queued(r, "echo") == []  # no refused invocation was stored
        for name, data in ODD_BUT_FINE.items():
            code = status_of(exchange(url, data))
            assert code is not None and 200 <= code < 300, (name, code)
            good_request_is_served(url, r)
    hooks = [e.payload for e in queued(r, "hook") if e.payload["rawPath"] != "/hooks/good"]
    assert hooks[0]["rawPath"] == "/hooks/\ufffd\ufffd\ufffd\ufffd\ufffd"  # as Starlette decodes it
    assert hooks[1]["headers"]["x-a"] == "caf\xe9\xff" and hooks[1]["cookies"] == ["a=\xff", "b"]
    assert base64.b64decode(hooks[1]["body"]) == b"\xff\x00binary"
    assert hooks[2]["rawPath"] == "/hooks/a" and hooks[2]["headers"]["host"] == "a/b?c#d["
    odd_key, deepest = (e.payload for e in queued(r, "echo"))
    for _ in range(MAX_DEPTH - 1):
        (deepest,) = deepest
    assert odd_key == {} and deepest == []
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR or rec.exc_info], caplog.text


def test_fuzzed_requests_never_get_a_5xx(app: Any, r: redis.Redis, redis_url: str) -> None:
    with serve(app) as url, StandInWorker(redis_url, "echo", echo), StandInWorker(redis_url, "page", echo):

        @settings(max_examples=150, deadline=None)
        @given(data=st.data())
        def one(data: st.DataObject) -> None:
            target = data.draw(st.sampled_from([b"/hooks/", b"/pages/", b"/2015-03-31/functions/echo/invocations",
                                                b"/"]))
            target += data.draw(st.from_regex(rb"[A-Za-z0-9%/?&=._~+:@!$'()*,;-]{0,30}", fullmatch=True))
            method = data.draw(st.sampled_from([b"POST", b"GET", b"PUT", b"DELETE"]) | tokens.map(str.encode))
            headers = data.draw(st.lists(st.tuples(tokens.map(str.encode), st.binary(max_size=30).map(
                lambda v: v.replace(b"\r", b"").replace(b"\n", b"").strip())), max_size=6))
            headers += data.draw(st.lists(st.sampled_from([
                (b"X-Amz-Invocation-Type", b"Event"), (b"X-Amz-Invocation-Type", b"DryRun"),
                (b"Content-Type", b"application/json"), (b"Idempotency-Key", b"k"),
                (b"Authorization", b"Bearer x"), (b"Cookie", b"a=1; b"),
            ]), max_size=3))
            payload = data.draw(st.binary(max_size=100) | json_values.map(lambda v: str(v).encode()))
            framing = (b"content-length", b"transfer-encoding", b"host", b"connection", b"expect")
            request = b"%s %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" % (method, target)
            request += b"".join(b"%s: %s\r\n" % (k, v) for k, v in headers if k.lower() not in framing)
            request += b"Content-Length: %d\r\n\r\n" % len(payload) + payload
            code = status_of(exchange(url, request))
            assert code is None or code < 500, (request[:300], code)

        one()
        good_request_is_served(url, r)


def test_sync_webhook_result_that_cannot_be_sent_is_a_clean_500(app: Any, redis_url: str,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    def answer(event: Event) -> results.Outcome:
        return results.Outcome("succeeded", result={"statusCode": 200, "body": "lone \ud800 surrogate"})

    with serve(app) as url, StandInWorker(redis_url, "page", answer):
        got = httpx.post(f"{url}/pages/x", content=b"{}", timeout=10)
        assert got.status_code == 500 and got.json() == {"message": "Internal Server Error"}
    assert "returned a response API Gateway would reject" in caplog.text
    assert not [rec for rec in caplog.records if rec.exc_info], caplog.text
