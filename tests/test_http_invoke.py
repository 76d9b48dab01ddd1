"""Lambda's Invoke API over real sockets, driven by boto3's own Lambda client."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import httpx
import pytest
import redis
from serving import StandInWorker, echo, lambda_client, queued, serve

from broker.queues import function_queue
from broker.redis_server.embedded import RedisServer
from broker.registry import load_registry
from sources.http.webhook import create_app

TOML = """
[functions.echo]
handler = "handlers.echo.handler"
timeout = 2

[functions.other]
handler = "handlers.echo.handler"
"""


@pytest.fixture
def registry(project: Path):  # type: ignore[no-untyped-def]
    (project / "lambdalite.toml").write_text(TOML)
    return load_registry(project / "lambdalite.toml")


def test_boto3_request_response_returns_the_result_or_the_error(registry, redis_url: str) -> None:
    with serve(create_app(registry, redis_url, sync_margin=3)) as url, \
            StandInWorker(redis_url, "echo", echo) as worker:
        client = lambda_client(url)
        got = client.invoke(FunctionName="echo", Payload=json.dumps({"n": 1}).encode())
        assert got["StatusCode"] == 200 and "FunctionError" not in got
        assert json.loads(got["Payload"].read()) == {"echo": {"n": 1}}
        assert worker.seen[0].invocation_type == "RequestResponse" and worker.seen[0].source == "http"
        assert worker.seen[0].payload == {"n": 1}

        failed = client.invoke(FunctionName="echo", Payload=b'{"fail": "boom"}')
        assert failed["StatusCode"] == 200 and failed["FunctionError"] == "Unhandled"
        assert json.loads(failed["Payload"].read()) == {"errorType": "ValueError", "errorMessage": "boom"}

        arn = client.invoke(FunctionName="arn:aws:lambda:us-east-1:000000000000:function:echo", Payload=b"[]")
        assert json.loads(arn["Payload"].read()) == {"echo": []}


def test_no_outcome_in_time_is_a_lambda_timeout(registry, redis_url: str) -> None:
    with serve(create_app(registry, redis_url, sync_margin=0.2)) as url:
        started = time.monotonic()
        got = lambda_client(url).invoke(FunctionName="echo", Payload=b"{}")
        assert time.monotonic() - started >= 2.2  # the function's timeout plus the margin
        assert got["FunctionError"] == "Unhandled"
        assert json.loads(got["Payload"].read())["errorType"] == "Sandbox.Timedout"


def test_boto3_event_is_queued_once_stored(registry, redis_url: str, r: redis.Redis) -> None:
    with serve(create_app(registry, redis_url)) as url:
        got = lambda_client(url).invoke(FunctionName="echo", InvocationType="Event", Payload=b'{"k": "v"}')
        assert got["StatusCode"] == 202
        events = queued(r, "echo")
        assert [e.payload for e in events] == [{"k": "v"}]
        assert events[0].invocation_type == "Event"
        assert got["ResponseMetadata"]["RequestId"] == events[0].id
        dry = lambda_client(url).invoke(FunctionName="echo", InvocationType="DryRun", Payload=b"{}")
        assert dry["StatusCode"] == 204 and len(queued(r, "echo")) == 1


def test_boto3_unknown_function_is_resource_not_found(registry, redis_url: str) -> None:
    with serve(create_app(registry, redis_url)) as url:
        client = lambda_client(url)
        with pytest.raises(client.exceptions.ResourceNotFoundException) as info:
            client.invoke(FunctionName="nope", Payload=b"{}")
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
        assert "function:nope" in info.value.response["Error"]["Message"]


def test_malformed_and_oversized_bodies(registry, redis_url: str, r: redis.Redis) -> None:
    with serve(create_app(registry, redis_url)) as url:
        client = lambda_client(url)
        with pytest.raises(client.exceptions.InvalidRequestContentException):
            client.invoke(FunctionName="echo", InvocationType="Event", Payload=b'{"unclosed": ')
        with pytest.raises(client.exceptions.RequestTooLargeException) as info:
            too_big = b'"' + b"x" * (1024 * 1024) + b'"'
            client.invoke(FunctionName="echo", InvocationType="Event", Payload=too_big)
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 413
        path = f"{url}/2015-03-31/functions/echo/invocations"
        with httpx.Client() as http:
            # Streamed without a Content-Length: the limit must hold while reading.
            def chunks():  # type: ignore[no-untyped-def]
                for _ in range(8):
                    yield b" " * (1024 * 1024)
            big = http.post(path, content=chunks(), headers={"X-Amz-Invocation-Type": "RequestResponse"})
            assert big.status_code == 413 and big.headers["x-amzn-errortype"] == "RequestTooLargeException"
            nan = http.post(path, content=b"NaN", headers={"X-Amz-Invocation-Type": "Event"})
            assert nan.status_code == 400
            bad_type = http.post(path, content=b"{}", headers={"X-Amz-Invocation-Type": "Later"})
            assert bad_type.status_code == 400
        assert queued(r, "echo") == []


def test_idempotency_key_gives_the_same_id_and_queues_once(registry, redis_url: str, r: redis.Redis) -> None:
    import concurrent.futures

    with serve(create_app(registry, redis_url)) as url, httpx.Client() as http:
        path = f"{url}/2015-03-31/functions/echo/invocations"
        headers = {"X-Amz-Invocation-Type": "Event", "Idempotency-Key": "order-42"}

        def post(_: int) -> str:
            response = http.post(path, content=b'{"order": 42}', headers=headers)
            assert response.status_code == 202, response.text
            return response.headers["x-amzn-requestid"]

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            ids = set(pool.map(post, range(16)))
        assert len(ids) == 1
        assert [e.id for e in queued(r, "echo")] == list(ids)
        other = http.post(path, content=b"{}", headers={**headers, "Idempotency-Key": "order-43"})
        assert other.headers["x-amzn-requestid"] not in ids
        # Same key on another function is another key.
        again = http.post(f"{url}/2015-03-31/functions/other/invocations", content=b"{}", headers=headers)
        assert again.headers["x-amzn-requestid"] not in ids
        assert len(queued(r, "echo")) == 2


def test_token_is_required_when_set(registry, redis_url: str) -> None:
    with serve(create_app(registry, redis_url, token="s3cret")) as url, httpx.Client() as http:
        path = f"{url}/2015-03-31/functions/echo/invocations"
        event = {"X-Amz-Invocation-Type": "Event"}
        assert http.post(path, content=b"{}", headers=event).status_code == 403
        wrong = http.post(path, content=b"{}", headers={**event, "Authorization": "Bearer s3creT"})
        assert wrong.status_code == 403 and wrong.headers["x-amzn-errortype"] == "UnrecognizedClientException"
        right = http.post(path, content=b"{}", headers={**event, "Authorization": "Bearer s3cret"})
        assert right.status_code == 202


def test_redis_down_is_a_prompt_503_and_recovers(registry) -> None:
    server = RedisServer(Path(tempfile.mkdtemp(prefix="ll-down-"))).start()
    url = server.url
    try:
        with serve(create_app(registry, url)) as base, httpx.Client(timeout=10) as http:
            path = f"{base}/2015-03-31/functions/echo/invocations"
            event = {"X-Amz-Invocation-Type": "Event"}
            assert http.post(path, content=b"{}", headers=event).status_code == 202
            assert http.get(f"{base}/healthz").status_code == 200
            server.stop()
            for _ in range(3):
                started = time.monotonic()
                down = http.post(path, content=b"{}", headers=event)
                assert down.status_code == 503, down.text
                assert down.headers["retry-after"] == "1"
                assert time.monotonic() - started < 3
            assert http.get(f"{base}/healthz").status_code == 503
            assert http.post(path, content=b"{}", headers={"X-Amz-Invocation-Type": "RequestResponse"}
                             ).status_code == 503
            server.start()
            deadline = time.monotonic() + 10
            while (status := http.post(path, content=b"{}", headers=event).status_code) != 202:
                assert status == 503 and time.monotonic() < deadline
                time.sleep(0.2)
            assert len(function_queue(redis.Redis.from_url(url), "echo")) == 1  # the 503s stored nothing
    finally:
        server.stop()


def test_other_methods_and_paths_next_to_the_invoke_api(registry, redis_url: str, r: redis.Redis) -> None:
    with serve(create_app(registry, redis_url)) as url, httpx.Client() as http:
        path = f"{url}/2015-03-31/functions/echo/invocations"
        got = http.get(path)  # no such operation: a Lambda-shaped error, never a bare 404 or 405
        assert got.status_code == 400 and got.headers["x-amzn-errortype"] == "UnknownOperationException"
        assert "GET /2015-03-31/functions/echo/invocations" in got.json()["message"]
        for other in (f"{path}/more", f"{url}/2015-03-31/functions/echo", f"{url}/2015-03-31/functions//invocations"):
            answer = http.post(other, content=b"{}")
            assert answer.status_code == 400, other
            assert answer.headers["x-amzn-errortype"] == "UnknownOperationException", other
        # a percent-encoded ARN in the path is the function's name
        arn = f"{url}/2015-03-31/functions/arn%3Aaws%3Alambda%3Aus-east-1%3A000000000000%3Afunction%3Aecho/invocations"
        assert http.post(arn, content=b"{}", headers={"X-Amz-Invocation-Type": "Event"}).status_code == 202
        assert len(queued(r, "echo")) == 1


@pytest.mark.parametrize("body, payload", [
    ('{"k": "é", "n": 1.5, "big": 12345678901234567890123}'.encode(),
     {"k": "é", "n": 1.5, "big": 12345678901234567890123}),
    ('\ufeff{"bom": true}'.encode(), {"bom": True}),  # UTF-8 with a byte-order mark
    ('{"utf16": "ü"}'.encode("utf-16"), {"utf16": "ü"}),
    (b'{"lone": "\\ud800"}', {"lone": "\ud800"}),  # an escaped lone surrogate, as json reads it
    (b'  [1, {"a": null}]\n', [1, {"a": None}]),
    (b"  ", {}),
])
def test_an_accepted_body_reaches_the_handler_as_it_was_parsed(registry, redis_url: str, r: redis.Redis,
                                                              body: bytes, payload: object) -> None:
    with serve(create_app(registry, redis_url)) as url, httpx.Client() as http:
        got = http.post(f"{url}/2015-03-31/functions/echo/invocations", content=body,
                        headers={"X-Amz-Invocation-Type": "Event"})
        assert got.status_code == 202, got.text
        [event] = queued(r, "echo")
        assert event.payload == payload and event.id == got.headers["x-amzn-requestid"]
