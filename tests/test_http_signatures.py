"""Webhook signature checks against the senders' published examples, and API Gateway's shapes."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest

from broker.errors import ConfigError
from sources.http import apigateway
from sources.http.errors import SignatureError
from sources.http.signatures import (
    sign_standard_webhooks,
    standard_webhooks_key,
    verifier,
    verify_github,
    verify_standard_webhooks,
    verify_stripe,
)

# GitHub's documented example ("Validating webhook deliveries").
GITHUB_SECRET = b"It's a Secret to Everybody"
GITHUB_BODY = b"Hello, World!"
GITHUB_SIGNATURE = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"

# The Standard Webhooks reference libraries' test vector.
SW_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SW_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SW_TIMESTAMP = 1614265330
SW_BODY = b'{"test": 2432232314}'
SW_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_github_documented_example() -> None:
    assert verify_github(GITHUB_SECRET, {"x-hub-signature-256": GITHUB_SIGNATURE}, GITHUB_BODY)
    with pytest.raises(SignatureError):
        verify_github(GITHUB_SECRET, {"x-hub-signature-256": GITHUB_SIGNATURE}, b"Hello, World?")
    with pytest.raises(SignatureError):
        verify_github(GITHUB_SECRET, {"x-hub-signature-256": GITHUB_SIGNATURE[:-1] + "f"}, GITHUB_BODY)
    with pytest.raises(SignatureError, match="missing"):
        verify_github(GITHUB_SECRET, {}, GITHUB_BODY)


def sw_headers(signature: str = SW_SIGNATURE, timestamp: int = SW_TIMESTAMP) -> dict[str, str]:
    return {"webhook-id": SW_ID, "webhook-timestamp": str(timestamp), "webhook-signature": signature}


def test_standard_webhooks_published_vector() -> None:
    key = standard_webhooks_key(SW_SECRET)
    assert key == standard_webhooks_key(SW_SECRET.removeprefix("whsec_"))
    assert sign_standard_webhooks(key, SW_ID, SW_TIMESTAMP, SW_BODY) == SW_SIGNATURE
    verified = verify_standard_webhooks(key, sw_headers(), SW_BODY, now=SW_TIMESTAMP)
    assert verified.webhook_id == SW_ID
    # The vector's "invalid signature" case differs from the valid one in its last character.
    with pytest.raises(SignatureError):
        verify_standard_webhooks(key, sw_headers("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA="), SW_BODY,
                                 now=SW_TIMESTAMP)
    with pytest.raises(SignatureError):
        verify_standard_webhooks(key, sw_headers(), b'{"test": 2432232315}', now=SW_TIMESTAMP)


def test_standard_webhooks_rotation_and_tolerance() -> None:
    key = standard_webhooks_key(SW_SECRET)
    several = " ".join(["v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=",
                        "v2,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=", SW_SIGNATURE])
    assert verify_standard_webhooks(key, sw_headers(several), SW_BODY, now=SW_TIMESTAMP)
    # v2 carrying the right bytes is not a v1 signature.
    with pytest.raises(SignatureError):
        verify_standard_webhooks(key, sw_headers("v2," + SW_SIGNATURE[3:]), SW_BODY, now=SW_TIMESTAMP)
    for skew in (301, -301):
        with pytest.raises(SignatureError, match="tolerance"):
            verify_standard_webhooks(key, sw_headers(), SW_BODY, now=SW_TIMESTAMP + skew)
    for skew in (300, -300):
        assert verify_standard_webhooks(key, sw_headers(), SW_BODY, now=SW_TIMESTAMP + skew)
    for missing in ("webhook-id", "webhook-timestamp", "webhook-signature"):
        headers = sw_headers()
        del headers[missing]
        with pytest.raises(SignatureError):
            verify_standard_webhooks(key, headers, SW_BODY, now=SW_TIMESTAMP)
    with pytest.raises(SignatureError, match="integer"):
        verify_standard_webhooks(key, sw_headers(timestamp="hello"), SW_BODY, now=SW_TIMESTAMP)  # type: ignore[arg-type]


def stripe_header(secret: bytes, body: bytes, t: int, extra: str = "") -> str:
    sig = hmac.new(secret, f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={sig}{extra}"


def test_stripe_signature_and_tolerance() -> None:
    secret, body, t = b"whsec_test", b'{"id": "evt_1"}', 1_700_000_000
    header = stripe_header(secret, body, t, ",v0=ignored")
    assert verify_stripe(secret, {"stripe-signature": header}, body, now=t + 10)
    rotated = f"t={t},v1={'0' * 64}," + header.split(",")[1]
    assert verify_stripe(secret, {"stripe-signature": rotated}, body, now=t)
    with pytest.raises(SignatureError, match="tolerance"):
        verify_stripe(secret, {"stripe-signature": header}, body, now=t + 301)
    with pytest.raises(SignatureError):
        verify_stripe(secret, {"stripe-signature": header}, body + b" ", now=t)
    with pytest.raises(SignatureError):
        verify_stripe(secret, {"stripe-signature": header.replace(f"t={t}", f"t={t + 1}")}, body, now=t)


def test_verifier_reads_the_secret_and_refuses_bad_setups(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOOK_SECRET", "tok")
    check = verifier("bearer", "HOOK_SECRET", "here")
    assert check({"authorization": "Bearer tok"}, b"")
    for given in ("Bearer tok2", "Basic tok", ""):
        with pytest.raises(SignatureError):
            check({"authorization": given}, b"")
    with pytest.raises(ConfigError, match="here: .*secret_env"):
        verifier("github", None, "here")
    with pytest.raises(ConfigError, match="UNSET_SECRET"):
        verifier("github", "UNSET_SECRET", "here")
    monkeypatch.setenv("SW", "whsec_not base64!")
    with pytest.raises(ConfigError, match="base64") as info:
        verifier("standard-webhooks", "SW", "here")
    assert "not base64!" not in str(info.value)


def test_api_gateway_event_shape() -> None:
    event = apigateway.request_event(
        method="POST", path="/hooks/a b", query_string=b"x=1&x=2&y=", headers=[
            (b"Host", b"localhost:9000"), (b"Cookie", b"a=1; b=2"), (b"X-Multi", b"1"), (b"x-multi", b"2"),
            (b"content-type", b"application/json")],
        body=b'{"k": 1}', route_key="POST /hooks/{name}", path_parameters={"name": "a b"},
        request_id="rid", source_ip="127.0.0.1", now=1_583_348_638.39,
    )
    assert event["version"] == "2.0" and event["routeKey"] == "POST /hooks/{name}"
    assert event["cookies"] == ["a=1", "b=2"] and "cookie" not in event["headers"]
    assert event["headers"]["x-multi"] == "1,2"
    assert event["queryStringParameters"] == {"x": "1,2", "y": ""}
    assert event["rawQueryString"] == "x=1&x=2&y="
    assert event["pathParameters"] == {"name": "a b"}
    assert event["body"] == '{"k": 1}' and event["isBase64Encoded"] is False
    ctx = event["requestContext"]
    assert ctx["http"]["method"] == "POST" and ctx["requestId"] == "rid" and ctx["timeEpoch"] == 1583348638390
    assert ctx["time"] == "04/Mar/2020:19:03:58 +0000"
    binary = apigateway.request_event(
        method="POST", path="/", query_string=b"", headers=[(b"content-type", b"application/octet-stream")],
        body=b"\xff\x00", route_key="POST /", path_parameters={}, request_id="r", source_ip="",
    )
    assert binary["isBase64Encoded"] is True and base64.b64decode(binary["body"]) == b"\xff\x00"
    assert "queryStringParameters" not in binary and "cookies" not in binary


ISE = b'{"message":"Internal Server Error"}'


@pytest.mark.parametrize(
    ("result", "status", "headers", "body"),
    [
        ({"hello": "world"}, 200, [("content-type", "application/json")], b'{"hello":"world"}'),
        ("plain", 200, [("content-type", "application/json")], b"plain"),
        ([1, 2], 200, [("content-type", "application/json")], b"[1,2]"),
        ({"statusCode": 201, "headers": {"X-A": "b"}, "cookies": ["c=1"], "body": "made"}, 201,
         [("x-a", "b"), ("set-cookie", "c=1")], b"made"),
        ({"statusCode": 200, "body": base64.b64encode(b"\x89PNG").decode(), "isBase64Encoded": True}, 200, [],
         b"\x89PNG"),
        ({"statusCode": "200"}, 500, [("content-type", "application/json")], ISE),
        ({"statusCode": 200, "headers": {"x-evil": "a\r\nset-cookie: x"}}, 500,
         [("content-type", "application/json")], ISE),
    ],
)
def test_api_gateway_response_from_result(result: object, status: int, headers: list, body: bytes) -> None:
    got = apigateway.response_from_result(result)
    assert (got.status, got.headers, got.body) == (status, headers, body)
    json.dumps(result)  # every case is something a handler can return
