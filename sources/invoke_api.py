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
import time
from typing import TYPE_CHECKING, Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

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
REGION = "us-east-1"
ACCOUNT = "000000000000"
INVOCATION_TYPES = ("RequestResponse", "Event", "DryRun")


def lambda_error(status: int, error_type: str, message: str, **headers: str) -> Response:
    """An error the way Lambda's REST API sends it (boto3 reads the type from the header)."""
    body = json.dumps({"Type": "User", "message": message}).encode()
    return Response(body, status, {"X-Amzn-ErrorType": error_type, **headers},
                     media_type="application/json")


def function_arn(name: str) -> str:
    return f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}"


def function_name(raw: str) -> str:
    """The name inside a FunctionName parameter: a name, a partial or a full ARN, maybe qualified."""
    if raw.startswith("arn:"):
        parts = raw.split(":")
        return parts[6] if len(parts) >= 7 else raw
    if ":function:" in raw or raw.count(":") >= 2:
        parts = raw.split(":")
        return parts[2] if len(parts) >= 3 else raw
    return raw.split(":")[0]


def _authorized(request: Request, token: str) -> bool:
    if not token:
        return True
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def _timed_out(timeout: float) -> dict[str, Any]:
    return {"errorType": "Sandbox.Timedout",
            "errorMessage": f"Task timed out: no result within {timeout:.2f} seconds"}


async def invoke(request: Request) -> Response:
    """The Invoke endpoint."""
    source: HttpSource = request.app.state.source
    if not _authorized(request, source.token):
        return lambda_error(403, "UnrecognizedClientException",
                            "The security token included in the request is invalid.")
    name = function_name(request.path_params["name"])
    fn = source.registry.functions.get(name)
    if fn is None:
        return lambda_error(404, "ResourceNotFoundException", f"Function not found: {function_arn(name)}")
    kind = request.headers.get("x-amz-invocation-type", "RequestResponse")
    if kind not in INVOCATION_TYPES:
        return lambda_error(400, "InvalidParameterValueException",
                            f"Invalid X-Amz-Invocation-Type {kind!r}: expected {', '.join(INVOCATION_TYPES)}")
    limit = ASYNC_LIMIT if kind == "Event" else SYNC_LIMIT
    try:
        body = await read_body(request, limit)
    except ClientDisconnect:
        return Response(status_code=400)  # nobody is left to read it
    except PayloadTooLargeError as e:
        return lambda_error(413, "RequestTooLargeException", f"Request must be smaller than {limit} bytes "
                            f"for the {kind} invocation type ({e})")
    try:
        payload = parse_json(body) if body.strip() else {}
    except ValueError as e:
        return lambda_error(400, "InvalidRequestContentException",
                            f"Could not parse request body into json: {e}")
    if kind == "DryRun":
        return Response(status_code=204)
    event = Event(function=fn.name, payload=payload, source="http",
                  invocation_type="Event" if kind == "Event" else "RequestResponse")
    try:
        if kind == "Event":
            key = request.headers.get("idempotency-key")
            scope = idempotency_key(f"invoke:{fn.name}", key) if key else None
            event_id, fresh = await source.intake.accept(event, scope)
            if fresh:
                source.metrics.invocations.labels(fn.name, "Event").inc()
            return Response(status_code=202, headers={"x-amzn-RequestId": event_id})
        started = time.monotonic()
        timeout = fn.timeout + source.sync_margin
        source.metrics.invocations.labels(fn.name, "RequestResponse").inc()
        outcome = await source.intake.invoke(event, timeout)
    except RedisUnavailableError:
        source.metrics.throttles.labels(fn.name, "redis").inc()
        return lambda_error(503, "ServiceException", "The event store is unreachable; retry later.",
                            **{"Retry-After": "1"})
    except ThrottledError as e:
        source.metrics.throttles.labels(fn.name, "backlog").inc()
        return lambda_error(429, "TooManyRequestsException", f"Rate exceeded: {e}", **{"Retry-After": "1"})
    except IdempotencyConflictError as e:
        return lambda_error(409, "ResourceConflictException", str(e))
    source.metrics.duration.labels(fn.name).observe(time.monotonic() - started)
    headers = {"x-amzn-RequestId": event.id, "X-Amz-Executed-Version": "$LATEST"}
    if outcome is not None and outcome.ok:
        body = json.dumps(outcome.result, separators=(",", ":")).encode()
        return Response(body, 200, headers, media_type="application/json")
    source.metrics.errors.labels(fn.name).inc()
    error = _timed_out(timeout) if outcome is None else (outcome.error or {"errorType": "Unknown"})
    headers["X-Amz-Function-Error"] = "Unhandled"
    return Response(json.dumps(error).encode(), 200, headers, media_type="application/json")
