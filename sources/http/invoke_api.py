"""Lambda's Invoke API: ``POST /2015-03-31/functions/{FunctionName}/invocations``.

Speaks what ``boto3.client("lambda").invoke`` and ``aws lambda invoke`` send and expect:
``X-Amz-Invocation-Type`` ``RequestResponse`` (default; 200 with the result, or 200 with
``X-Amz-Function-Error: Unhandled`` and the error object), ``Event`` (202 once stored) or
``DryRun`` (204); ``X-Amz-Log-Type: Tail`` (the last 4 KB of the invocation's log, base64, in
``X-Amz-Log-Result``); ``X-Amz-Client-Context`` (base64 JSON, given to the handler as
``context.client_context``); a qualifier other than ``$LATEST`` is a 404, as for a version that
does not exist; a result over 6 MB becomes the function error ``Function.ResponseSizeTooLarge``.
Errors are ``X-Amzn-ErrorType`` plus ``{"Type", "message"}`` with Lambda's status codes. Callers
are checked by :mod:`sources.http.callers` (SigV4 access keys or a bearer token).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import re
import time
from typing import TYPE_CHECKING, Any

from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from broker import environment, logstore
from broker.envelope import Event, parse_json
from sources.http.bodies import ASYNC_LIMIT, SYNC_LIMIT, read_body
from sources.http.callers import refusal
from sources.http.errors import CallerAuthError, PayloadTooLargeError
from sources.http.intake import REFUSED, idempotency_key, refusal_for
from sources.http.lambda_api import Reply, find, lambda_error, split_function_name

if TYPE_CHECKING:
    from sources.http.webhook import HttpSource

log = logging.getLogger(__name__)

PATH = "/2015-03-31/functions/{name}/invocations"
_PATH = re.compile(r"/2015-03-31/functions/([^/]+)/invocations")  # what Starlette's {name} matches
INVOCATION_TYPES = ("RequestResponse", "Event", "DryRun")
LOG_TYPES = ("None", "Tail")
RESPONSE_LIMIT = SYNC_LIMIT  # bytes of a synchronous result, as Lambda allows
CLIENT_CONTEXT_LIMIT = 3583  # bytes of the base64 X-Amz-Client-Context header, as Lambda allows
TAIL_BYTES = 4096
_JSON = (b"content-type", b"application/json")

__all__ = ["PATH", "Reply", "function_arn", "function_name", "invoke", "lambda_error", "match"]


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
    return split_function_name(raw)[0]


def match(path: str) -> str | None:
    """The FunctionName parameter of an Invoke path, or None for another path."""
    found = _PATH.fullmatch(path)
    return found.group(1) if found else None


def _timed_out(timeout: float) -> dict[str, Any]:
    return {"errorType": "Sandbox.Timedout",
            "errorMessage": f"Task timed out: no result within {timeout:.2f} seconds"}


def client_context(header: str) -> dict[str, Any]:
    """The ``X-Amz-Client-Context`` header's JSON object; raises ValueError with Lambda's reason."""
    if len(header) > CLIENT_CONTEXT_LIMIT:
        raise ValueError(f"Client context must be at most {CLIENT_CONTEXT_LIMIT} bytes (base64)")
    try:
        value = json.loads(base64.b64decode(header, validate=True))
    except (binascii.Error, ValueError):
        raise ValueError("Client context must be a valid Base64-encoded JSON object.") from None
    if not isinstance(value, dict):
        raise ValueError("Client context must be a valid Base64-encoded JSON object.")
    return value


def runtime_error(error: dict[str, Any], request_id: str) -> dict[str, Any]:
    """A handler's exception with exactly the Python runtime's fields and order; the errors of the
    runtime itself (a timeout, the memory limit: no stack trace) pass as Lambda sends them."""
    if "stackTrace" not in error:
        return error
    return {"errorMessage": error.get("errorMessage", ""), "errorType": error.get("errorType", ""),
            "requestId": error.get("requestId") or request_id, "stackTrace": error.get("stackTrace") or []}


def log_result(tail: str | None) -> bytes:
    """The ``X-Amz-Log-Result`` value: the last 4 KB of the log, base64."""
    raw = (tail or "").encode("utf-8", "replace")[-TAIL_BYTES:]
    return base64.b64encode(raw)


async def invoke(source: HttpSource, raw_name: str, scope: Scope, receive: Receive, send: Send) -> None:
    """The Invoke endpoint, as a plain ASGI call: this is the hot path of the HTTP source, and
    Starlette's request, routing and middleware would cost it about 20 µs a request."""
    await send_reply(send, await _invoke(source, raw_name, scope, receive))


async def _invoke(source: HttpSource, raw_name: str, scope: Scope, receive: Receive) -> Reply:
    # The first of each header, as Starlette's Headers.get gives it; ASGI names are lower case.
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in reversed(scope["headers"])}
    try:
        signed = source.callers.check_headers(headers)
    except CallerAuthError as e:
        return refusal(e)
    kind = headers.get("x-amz-invocation-type", "RequestResponse")
    limit = ASYNC_LIMIT if kind == "Event" else SYNC_LIMIT
    try:
        body = await read_body(receive, headers.get("content-length", ""), limit)
    except ClientDisconnect:
        return 400, [], b""  # nobody is left to read it
    except PayloadTooLargeError as e:
        return lambda_error(413, "RequestTooLargeException", f"Request must be smaller than {limit} bytes "
                            f"for the {kind} invocation type ({e})")
    try:
        source.callers.check_body(signed, scope, body)
    except CallerAuthError as e:
        return refusal(e)
    fn, missing = find(source, raw_name, scope.get("query_string", b""))
    if fn is None:
        return missing or lambda_error(404, "ResourceNotFoundException", "Function not found")
    if kind not in INVOCATION_TYPES:
        return lambda_error(400, "InvalidParameterValueException",
                            f"Invalid X-Amz-Invocation-Type {kind!r}: expected {', '.join(INVOCATION_TYPES)}")
    log_type = headers.get("x-amz-log-type", "None")
    if log_type not in LOG_TYPES:
        return lambda_error(400, "InvalidParameterValueException",
                            f"Invalid X-Amz-Log-Type {log_type!r}: expected {' or '.join(LOG_TYPES)}")
    context = None
    if "x-amz-client-context" in headers:
        try:
            context = client_context(headers["x-amz-client-context"])
        except ValueError as e:
            return lambda_error(400, "InvalidRequestContentException", str(e))
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
    tail = kind == "RequestResponse" and log_type == "Tail"
    event = Event(function=fn.name, payload=payload, source="http",
                  invocation_type="Event" if kind == "Event" else "RequestResponse",
                  client_context=context)
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
    except REFUSED as e:
        refused = refusal_for(e)
        source.metrics.refused(fn.name, refused.throttle)
        return lambda_error(refused.status, refused.lambda_type, refused.lambda_message.format(e=e),
                            refused.retry_after)
    source.metrics.duration.labels(fn.name).observe(time.monotonic() - started)
    reply_headers = [(b"x-amzn-requestid", event.id.encode()), (b"x-amz-executed-version", b"$LATEST")]
    if tail:
        # the invocation's lines are stored in the transaction that records its outcome (broker.logstore)
        lines = await asyncio.to_thread(logstore.tail, source.client, fn.name, event.id, TAIL_BYTES)
        reply_headers.append((b"x-amz-log-result", log_result(lines)))
    if outcome is not None and outcome.ok:
        result = json.dumps(outcome.result, separators=(",", ":")).encode()
        if len(result) <= RESPONSE_LIMIT:
            return 200, reply_headers, result
        error: dict[str, Any] = {
            "errorMessage": f"Response payload size ({len(result)} bytes) exceeded maximum allowed payload "
                            f"size ({RESPONSE_LIMIT} bytes).",
            "errorType": "Function.ResponseSizeTooLarge"}
    elif outcome is None:
        error = _timed_out(timeout)
    else:
        error = runtime_error(outcome.error or {"errorType": "Unknown"}, event.id)
    source.metrics.errors.labels(fn.name).inc()
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
