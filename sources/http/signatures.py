"""Webhook authentication, checked on the raw body before anything parses it.

One verifier per ``auth`` kind of an HTTP trigger: ``github`` (``X-Hub-Signature-256``),
``stripe`` (``Stripe-Signature``), ``standard-webhooks`` (``webhook-id``, ``webhook-timestamp``,
``webhook-signature``), ``bearer`` and ``none``. Every comparison is constant-time
(:func:`hmac.compare_digest`); a failed check raises :class:`SignatureError` with a reason that
never contains the secret.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from broker.errors import ConfigError
from sources.http.errors import SignatureError

TOLERANCE = 300.0  # seconds a signed timestamp may differ from our clock (Stripe, Standard Webhooks)
Headers = Mapping[str, str]  # lower-case names, as Starlette gives them


@dataclass(frozen=True, slots=True)
class Verified:
    """A request that passed its check. ``webhook_id`` is the sender's delivery id, the key that
    makes a redelivery run nothing again: Standard Webhooks' ``webhook-id``, GitHub's
    ``X-GitHub-Delivery``, the ``id`` of a Stripe event."""

    webhook_id: str | None = None


def _hmac_sha256(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def _fresh(timestamp: str, now: float) -> None:
    try:
        ts = int(timestamp)
    except ValueError:
        raise SignatureError("timestamp is not an integer") from None
    away = int(now) - ts  # in integers: a timestamp of 400 digits is no float
    if abs(away) > TOLERANCE:
        shown = f"{away} s" if abs(away) < 10**12 else "more than 10^12 s"
        raise SignatureError(f"timestamp is {shown} away from now (tolerance {int(TOLERANCE)} s)")


def verify_github(secret: bytes, headers: Headers, body: bytes) -> Verified:
    """``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>``."""
    given = headers.get("x-hub-signature-256", "")
    if not given.startswith("sha256="):
        raise SignatureError("missing or malformed X-Hub-Signature-256")
    expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected.encode(), given.encode()):
        raise SignatureError("X-Hub-Signature-256 does not match the body")
    # A redelivery (by hand or by GitHub) keeps its delivery's GUID: the same key, nothing run twice.
    return Verified(webhook_id=headers.get("x-github-delivery") or None)


def verify_stripe(secret: bytes, headers: Headers, body: bytes, now: float) -> Verified:
    """``Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>...]`` over ``"{t}.{body}"``, 5-minute tolerance."""
    timestamp, candidates = None, []
    for part in headers.get("stripe-signature", "").split(","):
        key, _, value = part.strip().partition("=")
        if key == "t":
            timestamp = value
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        raise SignatureError("missing or malformed Stripe-Signature")
    expected = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest().encode()
    if not any(hmac.compare_digest(expected, c.encode()) for c in candidates):
        raise SignatureError("no v1 signature in Stripe-Signature matches the body")
    _fresh(timestamp, now)
    # Stripe retries an event with a new signature but the same event id (evt_...).
    return Verified(webhook_id=_stripe_event_id(body))


def _stripe_event_id(body: bytes) -> str | None:
    try:
        event = json.loads(body)
    except ValueError:  # UnicodeDecodeError included
        return None
    event_id = event.get("id") if isinstance(event, dict) else None
    return event_id if isinstance(event_id, str) and event_id else None


def standard_webhooks_key(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret: base64 after an optional ``whsec_`` prefix, its
    padding optional (as the reference library reads it)."""
    text = secret.removeprefix("whsec_").rstrip("=")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError) as e:
        raise ValueError("not a base64 Standard Webhooks secret (whsec_...)") from e


def sign_standard_webhooks(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``v1,<base64>`` signature of one message (what a sender puts in ``webhook-signature``)."""
    digest = _hmac_sha256(key, f"{msg_id}.{timestamp}.".encode() + body)
    return "v1," + base64.b64encode(digest).decode()


def verify_standard_webhooks(key: bytes, headers: Headers, body: bytes, now: float) -> Verified:
    """Standard Webhooks: any one ``v1,`` signature (several allowed, for key rotation) must match."""
    msg_id = headers.get("webhook-id", "")
    timestamp = headers.get("webhook-timestamp", "")
    given = headers.get("webhook-signature", "")
    if not msg_id or not timestamp or not given:
        raise SignatureError("missing webhook-id, webhook-timestamp or webhook-signature")
    _fresh(timestamp, now)
    expected = base64.b64encode(_hmac_sha256(key, f"{msg_id}.{timestamp}.".encode() + body))
    for candidate in given.split(" "):
        version, _, signature = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(expected, signature.encode()):
            return Verified(webhook_id=msg_id)
    raise SignatureError("no v1 signature in webhook-signature matches the body")


def verify_bearer(secret: bytes, headers: Headers) -> Verified:
    """``Authorization: Bearer <secret>``."""
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), secret):
        raise SignatureError("missing or wrong bearer token")
    return Verified()


Verifier = Callable[[Headers, bytes], Verified]


def verifier(
    auth: str, secret_env: str | None, where: str, clock: Callable[[], float] = time.time
) -> Verifier:
    """The check for one trigger; raises :class:`ConfigError` (naming ``where``) for a missing secret.

    The secret is read from the environment variable ``secret_env`` once, here, at start-up.
    """
    if auth == "none":
        return lambda headers, body: Verified()
    if not secret_env:
        raise ConfigError(f"{where}: auth {auth!r} needs 'secret_env', the variable holding the secret")
    secret = os.environ.get(secret_env, "")
    if not secret:
        raise ConfigError(f"{where}: environment variable {secret_env} (secret_env) is not set or empty")
    raw = secret.encode()
    if auth == "github":
        return lambda headers, body: verify_github(raw, headers, body)
    if auth == "stripe":
        return lambda headers, body: verify_stripe(raw, headers, body, clock())
    if auth == "bearer":
        return lambda headers, body: verify_bearer(raw, headers)
    if auth == "standard-webhooks":
        try:
            key = standard_webhooks_key(secret)
        except ValueError as e:
            raise ConfigError(f"{where}: {secret_env}: {e}") from None
        return lambda headers, body: verify_standard_webhooks(key, headers, body, clock())
    raise ConfigError(f"{where}: unknown auth {auth!r}")
