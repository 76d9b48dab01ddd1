"""Who sent a request: redeliveries of GitHub and Stripe run once, proxies are believed only when
trusted, and Standard Webhooks secrets are read as the reference library reads them."""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import time
from pathlib import Path

import httpx
import pytest
import redis
import standardwebhooks
from serving import queued, serve

from broker.errors import ConfigError
from broker.registry import load_registry
from broker.settings import load_settings
from sources.http.proxies import parse_trusted
from sources.http.signatures import standard_webhooks_key
from sources.http.webhook import create_app

GH_SECRET = "It's a Secret to Everybody"
STRIPE_SECRET = "whsec_stripe_test_secret"
SW_UNPADDED = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw0Q"  # 34 characters: no '=' padding
TOML = """
[functions.gh]
handler = "handlers.echo.handler"
[[functions.gh.triggers]]
source = "http"
path = "/hooks/github"
mode = "async"
auth = "github"
secret_env = "GH_SECRET"

[functions.stripe]
handler = "handlers.echo.handler"
[[functions.stripe.triggers]]
source = "http"
path = "/hooks/stripe"
mode = "async"
auth = "stripe"
secret_env = "STRIPE_SECRET"

[functions.sw]
handler = "handlers.echo.handler"
[[functions.sw.triggers]]
source = "http"
path = "/hooks/standard"
mode = "async"
auth = "standard-webhooks"
secret_env = "SW_SECRET"

[functions.open]
handler = "handlers.echo.handler"
[[functions.open.triggers]]
source = "http"
path = "/open"
mode = "async"
"""


@pytest.fixture
def registry(project: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("GH_SECRET", GH_SECRET)
    monkeypatch.setenv("STRIPE_SECRET", STRIPE_SECRET)
    monkeypatch.setenv("SW_SECRET", SW_UNPADDED)
    (project / "lambdalite.toml").write_text(TOML)
    return load_registry(project / "lambdalite.toml")


def github_headers(body: bytes, delivery: str) -> dict[str, str]:
    signature = "sha256=" + hmac.new(GH_SECRET.encode(), body, hashlib.sha256).hexdigest()
    return {"X-Hub-Signature-256": signature, "X-GitHub-Delivery": delivery, "X-GitHub-Event": "push"}


def stripe_headers(body: bytes, at: int) -> dict[str, str]:
    # Stripe's scheme (https://docs.stripe.com/webhooks#verify-manually): HMAC-SHA256 of "t.body".
    signature = hmac.new(STRIPE_SECRET.encode(), f"{at}.".encode() + body, hashlib.sha256).hexdigest()
    return {"Stripe-Signature": f"t={at},v1={signature}"}


def test_github_redelivery_runs_once(registry, redis_url: str, r: redis.Redis) -> None:
    body = b'{"ref": "refs/heads/main"}'
    with serve(create_app(registry, redis_url)) as url, httpx.Client() as http:
        first = http.post(f"{url}/hooks/github", content=body, headers=github_headers(body, "guid-1"))
        again = http.post(f"{url}/hooks/github", content=body, headers=github_headers(body, "guid-1"))
        other = http.post(f"{url}/hooks/github", content=body, headers=github_headers(body, "guid-2"))
    assert first.status_code == again.status_code == other.status_code == 202
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    assert other.json() != first.json()
    assert [e.payload["headers"]["x-github-delivery"] for e in queued(r, "gh")] == ["guid-1", "guid-2"]


def test_stripe_retry_of_the_same_event_runs_once(registry, redis_url: str, r: redis.Redis) -> None:
    body = json.dumps({"id": "evt_1NG8Du2eZvKYlo2CUI79vXWy", "type": "invoice.paid"}).encode()
    now = int(time.time())
    with serve(create_app(registry, redis_url)) as url, httpx.Client() as http:
        first = http.post(f"{url}/hooks/stripe", content=body, headers=stripe_headers(body, now))
        # A retry comes later, signed again with a new timestamp: the event id is the same
        retry = http.post(f"{url}/hooks/stripe", content=body, headers=stripe_headers(body, now + 60))
        other_body = body.replace(b"CUI79vXWy", b"CUI79vXWz")
        other = http.post(f"{url}/hooks/stripe", content=other_body, headers=stripe_headers(other_body, now))
    assert first.status_code == retry.status_code == other.status_code == 202
    assert retry.json() == first.json() and other.json() != first.json()
    assert len(queued(r, "stripe")) == 2


def test_standard_webhooks_secret_without_padding_as_the_reference_library(registry, redis_url: str,
                                                                           r: redis.Redis) -> None:
    reference = standardwebhooks.Webhook(SW_UNPADDED)
    assert standard_webhooks_key(SW_UNPADDED) == reference._whsecret  # the key the reference derives
    for padded in ("whsec_" + "YWJj", "whsec_YWI=", "YWI"):  # padded, padded, unpadded without prefix
        assert standard_webhooks_key(padded) == standardwebhooks.Webhook(padded)._whsecret
    with pytest.raises(ValueError):
        standard_webhooks_key("whsec_not*base64")
    body = b'{"type": "user.created"}'
    now = int(time.time())
    signature = reference.sign("msg_1", datetime.datetime.fromtimestamp(now, tz=datetime.UTC), body.decode())
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(now), "webhook-signature": signature}
    reference.verify(body, headers)  # the reference library accepts its own signature
    with serve(create_app(registry, redis_url)) as url, httpx.Client() as http:
        assert http.post(f"{url}/hooks/standard", content=body, headers=headers).status_code == 202
        wrong = {**headers, "webhook-signature": signature[:-2] + "AA"}
        assert http.post(f"{url}/hooks/standard", content=body, headers=wrong).status_code == 401
    assert len(queued(r, "sw")) == 1


def source_ips(r: redis.Redis) -> list[str]:
    return [e.payload["requestContext"]["http"]["sourceIp"] for e in queued(r, "open")]


def test_forwarded_headers_are_ignored_unless_the_peer_is_a_trusted_proxy(registry, redis_url: str,
                                                                           r: redis.Redis) -> None:
    spoof = {"X-Forwarded-For": "203.0.113.9", "X-Real-IP": "198.51.100.7"}
    with serve(create_app(registry, redis_url), load_settings(http_host="127.0.0.1")) as url:
        assert httpx.post(f"{url}/open", content=b"{}", headers=spoof).status_code == 202
    assert source_ips(r) == ["127.0.0.1"]  # the TCP peer, whatever the headers say
    r.flushall()
    with serve(create_app(registry, redis_url), load_settings(trusted_proxies="10.0.0.0/8, 127.0.0.1")) as url:
        httpx.post(f"{url}/open", content=b"{}", headers={"X-Forwarded-For": "203.0.113.9, 10.1.2.3"})
        httpx.post(f"{url}/open", content=b"{}", headers={"X-Real-IP": "198.51.100.7"})
        httpx.post(f"{url}/open", content=b"{}", headers={"X-Real-IP": "not an address"})
        httpx.post(f"{url}/open", content=b"{}")
    assert source_ips(r) == ["203.0.113.9", "198.51.100.7", "127.0.0.1", "127.0.0.1"]
    r.flushall()
    with serve(create_app(registry, redis_url), load_settings(trusted_proxies="10.0.0.1")) as url:
        httpx.post(f"{url}/open", content=b"{}", headers=spoof)  # 127.0.0.1 is not the trusted proxy
    assert source_ips(r) == ["127.0.0.1"]


def test_trusted_proxies_setting_is_checked() -> None:
    assert [str(n) for n in parse_trusted(" 10.0.0.0/8 , ::1,192.168.1.7")] == ["10.0.0.0/8", "::1/128",
                                                                              "192.168.1.7/32"]
    with pytest.raises(ConfigError, match="LAMBDALITE_TRUSTED_PROXIES: 'proxy.local' is not an IP address"):
        parse_trusted("10.0.0.1,proxy.local")
