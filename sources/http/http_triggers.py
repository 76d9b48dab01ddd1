"""Webhook routes: one per ``source = "http"`` trigger, each with its own authentication.

A request is read under its size limit, authenticated on the raw bytes, turned into an API
Gateway payload-format-2.0 event and stored. ``mode = "async"`` answers 202 with the event id
once Redis holds the event; ``mode = "sync"`` waits for the handler and answers with its return
value as API Gateway would. A sender's delivery id seen before (Standard Webhooks' ``webhook-id``,
GitHub's ``X-GitHub-Delivery``, a Stripe event's ``id``; or, for async triggers, an
``Idempotency-Key``) gets the first request's answer and runs nothing again.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from broker.envelope import Event, new_id
from broker.registry import Function, HttpTrigger
from sources.http import apigateway
from sources.http.bodies import ASYNC_LIMIT, SYNC_LIMIT, read_body
from sources.http.errors import PayloadTooLargeError, SignatureError
from sources.http.intake import REFUSED, idempotency_key, refusal_for
from sources.http.signatures import Verifier

if TYPE_CHECKING:
    from sources.http.webhook import HttpSource

log = logging.getLogger(__name__)
_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(\+?)\}")


def message(status: int, text: str, **headers: str) -> Response:
    """API Gateway's own error body: ``{"message": ...}``."""
    return Response(json.dumps({"message": text}).encode(), status, headers, media_type="application/json")


def starlette_path(path: str) -> str:
    """API Gateway route syntax (``{id}``, greedy ``{proxy+}``) in Starlette's (``{proxy:path}``)."""
    return _PARAM.sub(lambda m: f"{{{m.group(1)}:path}}" if m.group(2) else f"{{{m.group(1)}}}", path)


def path_parameters(path: str) -> list[str]:
    return [m.group(1) for m in _PARAM.finditer(path)]


@dataclass(frozen=True)
class WebhookRoute:
    """One trigger's endpoint."""

    function: Function
    trigger: HttpTrigger
    verify: Verifier

    @property
    def limit(self) -> int:
        return ASYNC_LIMIT if self.trigger.mode == "async" else SYNC_LIMIT

    async def handle(self, request: Request) -> Response:
        source: HttpSource = request.app.state.source
        fn, trigger = self.function, self.trigger
        try:
            body = await read_body(request.receive, request.headers.get("content-length", ""), self.limit)
        except PayloadTooLargeError:
            return message(413, "Request Entity Too Large")
        except ClientDisconnect:
            return Response(status_code=400)  # nobody is left to read it
        try:
            verified = self.verify(request.headers, body)
        except SignatureError as e:
            log.warning("401 %s %s (function %s, auth %s): %s", request.method, request.url.path,
                        fn.name, trigger.auth, e)
            return message(401, "Unauthorized")
        request_id = new_id()
        client = request.client
        payload = apigateway.request_event(
            method=request.method,
            path=request.url.path,
            query_string=request.scope.get("query_string", b""),
            headers=request.scope["headers"],
            body=body,
            route_key=f"{request.method} {trigger.path}",
            path_parameters={k: str(v) for k, v in request.path_params.items()},
            request_id=request_id,
            source_ip=client.host if client else "",
            http_version=request.scope.get("http_version", "1.1"),
        )
        sync = trigger.mode == "sync"
        event = Event(function=fn.name, payload=payload, id=request_id, source="http",
                      invocation_type="RequestResponse" if sync else "Event")
        key = None
        if verified.webhook_id is not None:
            key = idempotency_key(f"webhook:{fn.name}:{trigger.path}", verified.webhook_id)
        elif not sync and request.headers.get("idempotency-key"):
            key = idempotency_key(f"webhook:{fn.name}:{trigger.path}", request.headers["idempotency-key"])
        started = time.monotonic()
        try:
            event_id, fresh = await source.intake.accept(event, key)
            if fresh:
                source.metrics.invoked(fn.name, event.invocation_type)
            if not sync:
                replayed = {} if fresh else {"Idempotent-Replayed": "true"}
                return Response(json.dumps({"id": event_id}).encode(), 202, replayed,
                                media_type="application/json")
            timeout = fn.timeout + source.sync_margin
            outcome = await source.intake.outcome(event_id, timeout)
        except REFUSED as e:
            refused = refusal_for(e)
            source.metrics.refused(fn.name, refused.throttle)
            retry = {"Retry-After": "1"} if refused.retry_after else {}
            return message(refused.status, refused.gateway_message, **retry)
        source.metrics.duration.labels(fn.name).observe(time.monotonic() - started)
        if outcome is None:
            source.metrics.errors.labels(fn.name).inc()
            return message(504, "Endpoint request timed out")
        if not outcome.ok:
            source.metrics.errors.labels(fn.name).inc()
            return message(500, "Internal Server Error")
        answer = apigateway.response_from_result(outcome.result)
        if answer is apigateway.INTERNAL_ERROR:
            log.warning("function %s returned a response API Gateway would reject", fn.name)
        response = Response(answer.body, answer.status)
        response.raw_headers = [*((k.encode("latin-1"), v.encode("latin-1")) for k, v in answer.headers),
                                (b"content-length", str(len(answer.body)).encode())]
        return response
