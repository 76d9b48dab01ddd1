"""Webhook triggers over real sockets: authentication, replays, API Gateway responses, the process."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import redis
from serving import StandInWorker, queued, serve

from broker import results
from broker.envelope import Event
from broker.errors import ConfigError
from broker.registry import load_registry
from sources.http.webhook import create_app
from tests.stack import free_port

ROOT = Path(__file__).resolve().parent.parent
SW_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SW_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SW_TIMESTAMP = 1614265330
SW_BODY = b'{"test": 2432232314}'
SW_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

TOML = """
[functions.gh]
handler = "handlers.echo.handler"
[[functions.gh.triggers]]
source = "http"
path = "/hooks/github"
mode = "async"
auth = "github"
secret_env = "GH_SECRET"

[functions.sw]
handler = "handlers.echo.handler"
[[functions.sw.triggers]]
source = "http"
path = "/hooks/standard"
mode = "async"
auth = "standard-webhooks"
secret_env = "SW_SECRET"

[functions.page]
handler = "handlers.echo.handler"
timeout = 2
[[functions.page.triggers]]
source = "http"
path = "/pages/{name}"
methods = ["GET", "POST"]
auth = "bearer"
secret_env = "PAGE_TOKEN"

[functions.open]
handler = "handlers.echo.handler"
[[functions.open.triggers]]
source = "http"
path = "/open"
mode = "async"
"""


@pytest.fixture
def registry(project: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("GH_SECRET", "It's a Secret to Everybody")
    monkeypatch.setenv("SW_SECRET", SW_SECRET)
    monkeypatch.setenv("PAGE_TOKEN", "page-token")
    (project / "lambdalite.toml").write_text(TOML)
    return load_registry(project / "lambdalite.toml")


def test_github_documented_example_over_http(registry, redis_url: str, r: redis.Redis) -> None:
    good = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    with serve(create_app(registry, redis_url)) as url, httpx.Client() as http:
        hook = f"{url}/hooks/github"
        changed_body = http.post(hook, content=b"Hello, World?", headers={"X-Hub-Signature-256": good})
        assert changed_body.status_code == 401
        bad = good[:-1] + "6"
        changed_sig = http.post(hook, content=b"Hello, World!", headers={"X-Hub-Signature-256": bad})
        assert changed_sig.status_code == 401
        assert http.post(hook, content=b"Hello, World!").status_code == 401
        assert queued(r, "gh") == []
        accepted = http.post(hook, content=b"Hello, World!", headers={"X-Hub-Signature-256": good,
                                                                       "content-type": "text/plain"})
        assert accepted.status_code == 202
    [event] = queued(r, "gh")
    assert accepted.json() == {"id": event.id}
    payload = event.payload
    assert payload["version"] == "2.0" and payload["routeKey"] == "POST /hooks/github"
    assert payload["body"] == "Hello, World!" and payload["isBase64Encoded"] is False
    assert payload["headers"]["x-hub-signature-256"] == good
    assert payload["requestContext"]["requestId"] == event.id


def test_standard_webhooks_vector_replay_and_stale(registry, redis_url: str, r: redis.Redis) -> None:
    clock = [float(SW_TIMESTAMP)]
    headers = {"webhook-id": SW_ID, "webhook-timestamp": str(SW_TIMESTAMP), "webhook-signature": SW_SIGNATURE}
    with serve(create_app(registry, redis_url, clock=lambda: clock[0])) as url, httpx.Client() as http:
        hook = f"{url}/hooks/standard"
        first = http.post(hook, content=SW_BODY, headers=headers)
        assert first.status_code == 202, first.text
        replay = http.post(hook, content=SW_BODY, headers=headers)
        assert replay.status_code == 202 and replay.json() == first.json()
        assert replay.headers["idempotent-replayed"] == "true"
        assert len(queued(r, "sw")) == 1
        changed = SW_BODY.replace(b"4}", b"5}")
        one_byte = http.post(hook, content=changed, headers={**headers, "webhook-id": "m2"})
        assert one_byte.status_code == 401
        clock[0] = SW_TIMESTAMP + 301.0
        assert http.post(hook, content=SW_BODY, headers={**headers, "webhook-id": "m3"}).status_code == 401
        # A fresh, correctly signed message with the same key is accepted.
        now = int(time.time())
        clock[0] = float(now)
        key = base64.b64decode(SW_SECRET.removeprefix("whsec_"))
        digest = hmac.new(key, f"m4.{now}.".encode() + SW_BODY, hashlib.sha256).digest()
        sig = base64.b64encode(digest).decode()
        fresh = {"webhook-id": "m4", "webhook-timestamp": str(now), "webhook-signature": f"v1,{sig}"}
        assert http.post(hook, content=SW_BODY, headers=fresh).status_code == 202
    assert [e.payload["headers"]["webhook-id"] for e in queued(r, "sw")] == [SW_ID, "m4"]


def test_sync_webhook_renders_the_handler_result_as_api_gateway(registry, redis_url: str) -> None:
    def answer(event: Event) -> results.Outcome:
        name = event.payload["pathParameters"]["name"]
        if name == "boom":
            return results.Outcome("failed", error={"errorType": "E", "errorMessage": "m"})
        if name == "plain":
            return results.Outcome("succeeded", result={"query": event.payload.get("queryStringParameters")})
        return results.Outcome("succeeded", result={
            "statusCode": 201, "headers": {"X-Name": name}, "cookies": ["seen=1"],
            "body": base64.b64encode(b"\x00bin").decode(), "isBase64Encoded": True})

    auth = {"Authorization": "Bearer page-token"}
    with serve(create_app(registry, redis_url, sync_margin=3)) as url, \
            StandInWorker(redis_url, "page", answer), httpx.Client() as http:
        made = http.post(f"{url}/pages/thing", content=b"x", headers=auth)
        assert made.status_code == 201 and made.content == b"\x00bin"
        assert made.headers["x-name"] == "thing" and made.headers["set-cookie"] == "seen=1"
        plain = http.get(f"{url}/pages/plain?a=1&a=2", headers=auth)
        assert plain.status_code == 200 and plain.headers["content-type"] == "application/json"
        assert plain.json() == {"query": {"a": "1,2"}}
        failed = http.post(f"{url}/pages/boom", headers=auth)
        assert failed.status_code == 500 and failed.json() == {"message": "Internal Server Error"}
        assert http.post(f"{url}/pages/thing", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert http.put(f"{url}/pages/thing", headers=auth).status_code == 405
        assert http.get(f"{url}/nowhere").json() == {"message": "Not Found"}
        metrics = http.get(f"{url}/metrics").text
    invocations = 'lambdalite_http_invocations_total{function="page",invocation_type="RequestResponse"}'
    assert f"{invocations} 3.0" in metrics
    assert 'lambdalite_http_errors_total{function="page"} 1.0' in metrics
    assert 'lambdalite_queue_depth{function="page"} 0.0' in metrics
    assert "lambdalite_http_invocation_duration_seconds_bucket" in metrics


def test_async_webhook_limits_and_idempotency(registry, redis_url: str, r: redis.Redis) -> None:
    with serve(create_app(registry, redis_url)) as url, httpx.Client() as http:
        big = http.post(f"{url}/open", content=b"x" * (1024 * 1024 + 1))
        assert big.status_code == 413
        key = {"Idempotency-Key": "k1"}
        first = http.post(f"{url}/open", content=b"\xff\xfe", headers=key)
        second = http.post(f"{url}/open", content=b"other", headers=key)
        assert first.status_code == second.status_code == 202 and first.json() == second.json()
        assert r.ttl(next(iter(r.scan_iter("lambdalite:http:idempotency:*")))) > 23 * 3600
        metrics = http.get(f"{url}/metrics").text
    [event] = queued(r, "open")
    assert event.payload["isBase64Encoded"] is True and base64.b64decode(event.payload["body"]) == b"\xff\xfe"
    assert 'lambdalite_http_invocations_total{function="open",invocation_type="Event"} 1.0' in metrics


def test_open_auth_is_refused_unless_on_loopback(registry, redis_url: str) -> None:
    with pytest.raises(ConfigError, match="auth 'none' is refused when listening on 0.0.0.0"):
        create_app(registry, redis_url, host="0.0.0.0")
    create_app(registry, redis_url, host="::1")


def test_process_refuses_open_auth_in_one_line(registry, redis_url: str, project: Path) -> None:
    env = {**os.environ, "LAMBDALITE_HTTP_HOST": "0.0.0.0", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "sources.http"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "auth 'none' is refused" in done.stderr, done.stderr


def test_process_serves_and_stops_on_sigterm(registry, redis_url: str, project: Path) -> None:
    port = free_port()
    env = {**os.environ, "LAMBDALITE_HTTP_PORT": str(port), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "sources.http"], cwd=project, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
        assert health.status_code == 200 and health.json()["status"] == "ok"
        spec = httpx.get(f"http://127.0.0.1:{port}/openapi.json").json()
        assert {"/hooks/github", "/pages/{name}", "/healthz"} <= set(spec["paths"])
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        # uvicorn re-raises the signal once it has shut down cleanly
        assert proc.wait(10) in (0, -signal.SIGTERM)
        assert time.monotonic() - started < 5
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        out = proc.communicate()[0].decode()
    assert "serving the Invoke API and 4 webhook route(s)" in out
    assert "Application shutdown complete" in out
