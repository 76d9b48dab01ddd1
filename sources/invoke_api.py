"""Lambda's Invoke API: ``POST /2015-03-31/functions/{FunctionName}/invocations``.

Speaks what ``boto3.client("lambda").invoke`` and ``aws lambda invoke`` send and expect:
``X-Amz-Invocation-Type`` ``RequestResponse`` (default; 200 with the result, or 200 with
``X-Amz-Function-Error: Unhandled`` and the error object), ``Event`` (202 once stored) or
``DryRun`` (204); errors as ``X-Amzn-ErrorType`` plus ``{"Type", "message"}`` with Lambda's status
codes. AWS credentials and SigV4 signatures are accepted and not checked; when a token is
configured, ``Authorization: Bearer <token>`` is required instead.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import time
from typing import TYPE_CHECKING, Any

from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from broker import environment
from broker.envelope import Event, parse_json
from broker.errors import (
    IdempotencyConflictError,
    PayloadTooLargeError,
    RedisUnavailableError,
    ThrottledError,
)
from sources.bodies import ASYNC_LIMIT, SYNC_LIMIT, read_body
from sources.intake import idempotency_key

if TYPE_CHECKING:
    from sources.webhook import HttpSource

log = logging.getLogger(__name__)

PATH = "/2015-03-31/functions/{name}/invocations"
_PATH = re.compile(r"/2015-03-31/functions/([^/]+)/invocations")  # what Starlette's {name} matches
REGION = "us-east-1"
ACCOUNT = "000000000000"
INVOCATION_TYPES = ("RequestResponse", "Event", "DryRun")
_JSON = (b"content-type", b"application/json")

# A reply: status, extra headers, body (JSON unless empty).
Reply = tuple[int, list[tuple[bytes, bytes]], bytes]


def lambda_error(status: int, error_type: str, message: str, retry_after: bool = False) -> Reply:
    """An error the way Lambda's REST API sends it (boto3 reads the type from the header)."""
    headers = [(b"x-amzn-errortype", error_type.encode())]
    if retry_after:
        headers.append((b"retry-after", b"1"))
    return status, headers, json.dumps({"Type": "User", "message": message}).encode()


async def send_reply(send: Send, reply: Reply) -> None:
    """Send ``reply`` as Starlette's ``Response`` would (no length for a 204, JSON type for a body)."""
    status, headers, body = reply
    if status != 204:
        headers.append((b"content-length", str(len(body)).encode()))
    if body:
        headers.append(_JSON)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def function_arn(name: str) -> str:
    return environment.function_arn(name)  # LAMBDALITE_REGION


def function_name(raw: str) -> str:
    """The name inside a FunctionName parameter: a name, a partial or a full ARN, maybe qualified."""
    if raw.startswith("arn:"):
        parts = raw.split(":")
        return parts[6] if len(parts) >= 7 else raw
    if ":function:" in raw or raw.count(":") >= 2:
        parts = raw.split(":")
        return parts[2] if len(parts) >= 3 else raw
    return raw.split(":")[0]


def match(path: str) -> str | None:
    """The FunctionName parameter of an Invoke path, or None for another path."""
    found = _PATH.fullmatch(path)
    return found.group(1) if found else None


def _authorized(authorization: str, token: str) -> bool:
    if not token:
        return True
    scheme, _, given = authorization.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def _timed_out(timeout: float) -> dict[str, Any]:
    return {"errorType": "Sandbox.Timedout",
            "errorMessage": f"Task timed out: no result within {timeout:.2f} seconds"}


async def invoke(source: HttpSource, raw_name: str, scope: Scope, receive: Receive, send: Send) -> None:
    """The Invoke endpoint, as a plain ASGI call: this is the hot path of the HTTP source, and
    Starlette's request, routing and middleware would cost it about 20 µs a request."""
    await send_reply(send, await _invoke(source, raw_name, scope, receive))


async def _invoke(source: HttpSource, raw_name: str, scope: Scope, receive: Receive) -> Reply:
    # The first of each header, as Starlette's Headers.get gives it; ASGI names are lower case.
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in reversed(scope["headers"])}
    if not _authorized(headers.get("authorization", ""), source.token):
        return lambda_error(403, "UnrecognizedClientException",
                            "The security token included in the request is invalid.")
    name = function_name(raw_name)
    fn = source.registry.functions.get(name)
    if fn is None:
        return lambda_error(404, "ResourceNotFoundException", f"Function not found: {function_arn(name)}")
    kind = headers.get("x-amz-invocation-type", "RequestResponse")
    if kind not in INVOCATION_TYPES:
        return lambda_error(400, "InvalidParameterValueException",
                            f"Invalid X-Amz-Invocation-Type {kind!r}: expected {', '.join(INVOCATION_TYPES)}")
    limit = ASYNC_LIMIT if kind == "Event" else SYNC_LIMIT
    try:
        body = await read_body(receive, headers.get("content-length", ""), limit)
    except ClientDisconnect:
        return 400, [], b""  # nobody is left to read it
    except PayloadTooLargeError as e:
        return lambda_error(413, "RequestTooLargeException", f"Request must be smaller than {limit} bytes "
                            f"for the {kind} invocation type ({e})")
    text = None
    try:
        if body.strip():
            text = _utf8(body)
            payload = parse_json(body if text is None else text)
        else:
            payload = {}
    except ValueError as e:
        return lambda_error(400, "InvalidRequestContentException",
                            f"Could not parse request body into json: {e}")
    if kind == "DryRun":
        return 204, [], b""
    event = Event(function=fn.name, payload=payload, source="http",
                  invocation_type="Event" if kind == "Event" else "RequestResponse")
    try:
        if kind == "Event":
            key = headers.get("idempotency-key")
            scope_key = idempotency_key(f"invoke:{fn.name}", key) if key else None
            event_id, fresh = await source.intake.accept(event, scope_key, payload_json=text)
            if fresh:
                source.metrics.invoked(fn.name, "Event")
            return 202, [(b"x-amzn-requestid", event_id.encode())], b""
        started = time.monotonic()
        timeout = fn.timeout + source.sync_margin
        source.metrics.invoked(fn.name, "RequestResponse")
        outcome = await source.intake.invoke(event, timeout, payload_json=text)
    except RedisUnavailableError:
        source.metrics.throttles.labels(fn.name, "redis").inc()
        return lambda_error(503, "ServiceException", "The event store is unreachable; retry later.", True)
    except ThrottledError as e:
        source.metrics.throttles.labels(fn.name, "backlog").inc()
        return lambda_error(429, "TooManyRequestsException", f"Rate exceeded: {e}", True)
    except IdempotencyConflictError as e:
        return lambda_error(409, "ResourceConflictException", str(e))
    source.metrics.duration.labels(fn.name).observe(time.monotonic() - started)
    reply_headers = [(b"x-amzn-requestid", event.id.encode()), (b"x-amz-executed-version", b"$LATEST")]
    if outcome is not None and outcome.ok:
        return 200, reply_headers, json.dumps(outcome.result, separators=(",", ":")).encode()
    source.metrics.errors.labels(fn.name).inc()
    error = _timed_out(timeout) if outcome is None else (outcome.error or {"errorType": "Unknown"})
    reply_headers.append((b"x-amz-function-error", b"Unhandled"))
    return 200, reply_headers, json.dumps(error).encode()


def _utf8(body: bytes) -> str | None:
    """The body as text to store as it is (it parsed as strict JSON), when it is plain UTF-8 (no
    byte-order mark, no UTF-16 or -32, no encoded surrogates); None otherwise: the payload is then
    encoded again from its parsed value."""
    if json.detect_encoding(body) != "utf-8":
        return None
    try:
        return body.decode()
    except UnicodeDecodeError:
        return None
