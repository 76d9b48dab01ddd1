"""The ``webhook`` process: webhooks in API Gateway's shape and Lambda's Invoke API, on uvicorn.

``python -m sources.webhook`` serves, on ``LAMBDALITE_HTTP_HOST``:``LAMBDALITE_HTTP_PORT``:

- ``POST /2015-03-31/functions/{name}/invocations``: Lambda's Invoke API (:mod:`sources.invoke_api`);
- one route per ``source = "http"`` trigger (:mod:`sources.http_triggers`);
- ``GET /healthz``, ``GET /metrics`` (Prometheus) and ``GET /openapi.json``.

It starts even when Redis is down (answering 503 until it is back) and refuses at start-up,
with one line and exit code 1, a trigger with ``auth = "none"`` unless it listens on loopback.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from broker import stacklock
from broker.connection import COMMAND_TIMEOUT, TRANSIENT, Parser
from broker.errors import ConfigError, LambdaliteError
from broker.queues import Publisher
from broker.registry import Registry, load_registry
from broker.settings import load_settings
from sources import invoke_api, openapi
from sources.http_triggers import WebhookRoute, message, starlette_path
from sources.intake import Intake
from sources.metrics import CONTENT_TYPE, HttpMetrics
from sources.signatures import verifier
from sources.transactor import Transactor

log = logging.getLogger("lambdalite.webhook")
RESERVED = ("/healthz", "/metrics", "/openapi.json", "/2015-03-31/")
SYNC_MARGIN = 10.0  # seconds a synchronous caller waits beyond the function's timeout (cold start)


@dataclass
class HttpSource:
    """What the request handlers share: the registry, the intake, metrics and settings."""

    registry: Registry
    intake: Intake
    metrics: HttpMetrics
    client: redis.Redis
    token: str = ""
    sync_margin: float = SYNC_MARGIN


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def webhook_routes(
    registry: Registry, host: str, clock: Callable[[], float] = time.time
) -> list[WebhookRoute]:
    """One route per HTTP trigger; raises ConfigError for a clash, a missing secret or open auth."""
    routes: list[WebhookRoute] = []
    seen: dict[tuple[str, str], str] = {}
    for fn, trigger in registry.triggers("http"):
        where = f"{registry.path}: function {fn.name!r}: http trigger {trigger.path!r}"
        if trigger.path.startswith(RESERVED):
            raise ConfigError(f"{where}: path is reserved ({', '.join(RESERVED)})")
        if trigger.auth == "none" and not is_loopback(host):
            raise ConfigError(f"{where}: auth 'none' is refused when listening on {host} (not loopback); "
                              "use bearer, github, stripe or standard-webhooks")
        for method in trigger.methods:
            if (method, trigger.path) in seen:
                other = seen[method, trigger.path]
                raise ConfigError(f"{where}: {method} {trigger.path} is already a trigger of {other!r}")
            seen[method, trigger.path] = fn.name
        routes.append(WebhookRoute(fn, trigger, verifier(trigger.auth, trigger.secret_env, where, clock)))
    return routes


def _store_client(dsn: str, socket_timeout: float | None) -> redis.Redis:
    # One retry, only for a connection error (a stale pooled socket after a Redis restart): a
    # retried timeout could store a transaction twice, and long backoffs would hold requests.
    # Parser: a full disk (MISCONF) is an outage too (503), see broker.connection.
    return redis.Redis.from_url(
        dsn, socket_connect_timeout=1, socket_timeout=socket_timeout, health_check_interval=30,
        retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)), parser_class=Parser,
        driver_info=None,  # as broker.connection.connect
    )


async def healthz(request: Request) -> Response:
    source: HttpSource = request.app.state.source
    try:
        await run_in_threadpool(source.client.ping)
    except TRANSIENT as e:
        return JSONResponse({"status": "unavailable", "redis": str(e)}, 503, {"Retry-After": "1"})
    return JSONResponse({"status": "ok", "pending": source.intake.pending})


async def metrics(request: Request) -> Response:
    source: HttpSource = request.app.state.source
    return Response(await run_in_threadpool(source.metrics.render), media_type=CONTENT_TYPE)


class App:
    """The ASGI app: the Invoke API's POSTs straight to :func:`invoke_api.invoke`, everything
    else (and the lifespan) to the Starlette app of the other routes."""

    def __init__(self, routes: Starlette, source: HttpSource) -> None:
        self.routes = routes
        self.source = source

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            name = invoke_api.match(scope["path"])
            if name is not None:
                await invoke_api.invoke(self.source, name, scope, receive, send)
                return
        await self.routes(scope, receive, send)


def create_app(
    registry: Registry,
    redis_dsn: str,
    *,
    host: str = "127.0.0.1",
    token: str = "",
    sync_margin: float = SYNC_MARGIN,
    clock: Callable[[], float] = time.time,
) -> App:
    """The ASGI app; raises ConfigError for an invalid trigger set-up (see :func:`webhook_routes`)."""
    triggers = webhook_routes(registry, host, clock)
    client = _store_client(redis_dsn, socket_timeout=5)
    waiter = _store_client(redis_dsn, socket_timeout=COMMAND_TIMEOUT)  # its reads block BLOCK_SLICE at most
    intake = Intake(Publisher(client, registry), waiter, Transactor(redis_dsn, timeout=5))
    source = HttpSource(registry, intake, HttpMetrics(client, registry),
                        client, token, sync_margin)
    spec = json.dumps(openapi.document(registry)).encode()

    async def openapi_json(request: Request) -> Response:
        return Response(spec, media_type="application/json")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await source.intake.start()
        try:
            yield
        finally:
            await source.intake.stop()
            client.close()
            waiter.close()

    async def not_found(request: Request, exc: Exception) -> Response:
        if isinstance(exc, HTTPException) and exc.status_code == 405:
            return message(405, "Method Not Allowed")
        return message(404, "Not Found")

    async def not_post(request: Request) -> Response:  # a POST never gets here (see App)
        return message(405, "Method Not Allowed")

    routes = [
        Route(invoke_api.PATH, not_post, methods=["POST"]),
        *(Route(starlette_path(r.trigger.path), r.handle, methods=list(r.trigger.methods)) for r in triggers),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", openapi_json, methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={404: not_found, 405: not_found})
    app.state.source = source
    return App(app, source)


def main() -> None:
    """Entry point of ``python -m sources.webhook``."""
    import uvicorn

    from broker import logs

    try:
        settings = load_settings()
        stacklock.hold(settings, "webhook")
        logs.configure(settings.log_level)
        registry = load_registry(settings.config)
        app = create_app(registry, settings.redis_dsn, host=settings.http_host, token=settings.http_token)
    except LambdaliteError as e:
        print(f"lambdalite: {e}", file=sys.stderr)
        sys.exit(1)
    count = sum(1 for _ in registry.triggers("http"))
    log.info("serving the Invoke API and %d webhook route(s) on http://%s:%d",
             count, settings.http_host, settings.http_port)
    config = uvicorn.Config(app, host=settings.http_host, port=settings.http_port, log_config=None,
                            access_log=False, timeout_graceful_shutdown=3, lifespan="on")
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
