"""The ``webhook`` process: webhooks in API Gateway's shape and Lambda's Invoke API, on uvicorn.

``python -m sources.http`` serves, on ``LAMBDALITE_HTTP_HOST``:``LAMBDALITE_HTTP_PORT``:

- ``POST /2015-03-31/functions/{name}/invocations``: Lambda's Invoke API (:mod:`sources.http.invoke_api`),
  and the rest of ``/2015-03-31/`` (:mod:`sources.http.lambda_api`), for callers that pass
  :mod:`sources.http.callers` (SigV4 access keys or a bearer token);
- one route per ``source = "http"`` trigger (:mod:`sources.http.http_triggers`);
- ``GET /healthz``, ``GET /metrics`` (Prometheus) and ``GET /openapi.json`` (the last two behind the
  same caller check when the server listens beyond loopback);
- the web console under ``/console/`` (:mod:`sources.http.console`).

It starts even when Redis is down (answering 503 until it is back) and refuses at start-up,
with one line and exit code 1, a trigger with ``auth = "none"`` unless it listens on loopback, and
any address beyond loopback without credentials. Connections are bounded by
:mod:`sources.http.connections`; client addresses come from proxies only as :mod:`sources.http.proxies` allows.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import Receive, Scope, Send

from broker import environment, revision, schedules, startup
from broker.connection import COMMAND_TIMEOUT, TRANSIENT, connect
from broker.errors import ConfigError, LambdaliteError
from broker.queues import Publisher
from broker.registry import Registry
from broker.settings import Settings
from broker.settings import current as current_settings
from sources.http import callers, connections, idle, invoke_api, lambda_api, openapi, proxies
from sources.http.bodies import read_body
from sources.http.callers import Callers, is_loopback
from sources.http.console import ConsoleApp
from sources.http.console_data import Console
from sources.http.console_metrics import ConsoleCollector
from sources.http.errors import CallerAuthError, PayloadTooLargeError
from sources.http.http_triggers import WebhookRoute, message, starlette_path
from sources.http.intake import Intake
from sources.http.metrics import CONTENT_TYPE, HttpMetrics
from sources.http.signatures import verifier
from sources.http.sigv4 import load_keys
from sources.http.transactor import Transactor

log = logging.getLogger("lambdalite.webhook")
RESERVED = ("/healthz", "/metrics", "/openapi.json", "/2015-03-31/", "/console")
SYNC_MARGIN = 10.0  # seconds a synchronous caller waits beyond the function's timeout (cold start)


@dataclass
class HttpSource:
    """What the request handlers share: the registry, the intake, metrics and settings."""

    registry: Registry
    intake: Intake
    metrics: HttpMetrics
    client: redis.Redis
    callers: Callers
    sync_margin: float = SYNC_MARGIN
    region: str = "us-east-1"


def webhook_routes(
    registry: Registry, host: str, clock: Callable[[], float] = time.time
) -> list[WebhookRoute]:
    """One route per HTTP trigger; raises ConfigError for a clash, a missing secret or open auth."""
    routes: list[WebhookRoute] = []
    seen: dict[tuple[str, str], str] = {}
    for fn, trigger in registry.triggers("http"):
        where = f"{registry.path}: function {fn.name!r}: http trigger {trigger.path!r}"
        if trigger.path.startswith(RESERVED) or lambda_api.is_lambda_path(trigger.path):
            raise ConfigError(f"{where}: path is reserved ({', '.join(RESERVED)}, and /YYYY-MM-DD/ "
                              "for Lambda's API)")
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


def _store_client(dsn: str, socket_timeout: float) -> redis.Redis:
    # One retry, only for a connection error (a stale pooled socket after a Redis restart): a
    # retried timeout could store a transaction twice, and long backoffs would hold requests.
    # A full disk (MISCONF) is an outage too (503): connect's parser makes it a connection error.
    return connect(dsn, timeout=socket_timeout, connect_timeout=1,
                   retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)))


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
    """The ASGI app: the Invoke API's POSTs straight to :func:`invoke_api.invoke`, the rest of
    Lambda's API to :func:`lambda_api.answer`, everything else (and the lifespan) to the Starlette
    app of the other routes."""

    def __init__(self, routes: Starlette, source: HttpSource, guarded: tuple[str, ...] = (),
                 follow: Callable[[Registry], None] | None = None) -> None:
        self.routes = routes
        self.source = source
        self.guarded = guarded  # paths behind the caller check (beyond loopback: /metrics, /openapi.json)
        self._follow = follow

    def follow(self, registry: Registry) -> None:
        """Serve ``registry`` (a new revision) from now on: its functions for the Invoke API, its
        routes and its OpenAPI document, each swapped in one assignment. Routes this server refuses
        (see :func:`webhook_routes`) leave everything as it was, with one log line."""
        if self._follow is not None:
            try:
                self._follow(registry)
            except ConfigError as e:
                number = registry.revision.number if registry.revision is not None else 0
                log.error("revision %d not served: %s (the routes and functions before it stay)", number, e)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            if scope["method"] == "POST":
                name = invoke_api.match(path)
                if name is not None:
                    await invoke_api.invoke(self.source, name, scope, receive, send)
                    return
            lambda_path = lambda_api.is_lambda_path(path)
            if lambda_path or path in self.guarded:
                reply = await self._checked(scope, receive)
                if reply is not None:
                    await invoke_api.send_reply(send, reply)
                    return
                if lambda_path:
                    reply = lambda_api.answer(self.source, scope["method"], path, scope.get("query_string", b""))
                    await invoke_api.send_reply(send, reply)
                    return
        await self.routes(scope, receive, send)

    async def _checked(self, scope: Scope, receive: Receive) -> lambda_api.Reply | None:
        """None when the caller passes; else the 403 (or 413) to send. The body of such a request is
        read here (it is small: these are reads), so a signature over it can be checked."""
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in reversed(scope["headers"])}
        try:
            signed = self.source.callers.check_headers(headers)
            if signed is None:
                return None
            body = await read_body(receive, headers.get("content-length", ""), 64 * 1024)
            self.source.callers.check_body(signed, scope, body)
        except CallerAuthError as e:
            return callers.refusal(e)
        except PayloadTooLargeError:
            return lambda_api.lambda_error(413, "RequestTooLargeException", "Request must be smaller than 65536 bytes")
        except ClientDisconnect:
            return 400, [], b""
        return None


def create_app(
    registry: Registry,
    redis_dsn: str,
    *,
    host: str = "127.0.0.1",
    token: str = "",
    access_keys: dict[str, str] | None = None,
    region: str | None = None,
    sync_margin: float = SYNC_MARGIN,
    clock: Callable[[], float] = time.time,
    max_workers: int | None = None,
    schedule_clock: Callable[[], float] = time.time,
) -> App:
    """The ASGI app; raises ConfigError for an invalid trigger set-up (see :func:`webhook_routes`)
    or for a server beyond loopback that no credentials guard."""
    triggers = webhook_routes(registry, host, clock)
    guard = callers.guard(host, token, access_keys, clock)
    client = _store_client(redis_dsn, socket_timeout=5)
    waiter = _store_client(redis_dsn, socket_timeout=COMMAND_TIMEOUT)  # its reads block BLOCK_SLICE at most
    replicas = current_settings()
    intake = Intake(Publisher(client, registry), waiter,
                    Transactor(redis_dsn, timeout=5, wait_replicas=replicas.redis_wait_replicas,
                               wait_timeout=replicas.redis_wait_timeout))
    source = HttpSource(registry, intake, HttpMetrics(client, registry),
                        client, guard, sync_margin, region or environment.region())
    spec = [json.dumps(openapi.document(registry)).encode()]
    reader = _store_client(redis_dsn, socket_timeout=5)  # the console's own: never behind the Invoke API
    console = ConsoleApp(Console(registry, reader, max_workers or current_settings().max_workers, schedule_clock),
                         Publisher(reader, registry), guard, is_loopback(host), source.metrics.throttled)
    source.metrics.registry.register(ConsoleCollector(console.console))

    async def openapi_json(request: Request) -> Response:
        return Response(spec[0], media_type="application/json")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        connections.install_accept_log_limit(asyncio.get_running_loop())
        await source.intake.start()
        await console.start()
        try:
            yield
        finally:
            await console.stop()
            await source.intake.stop()
            client.close()
            waiter.close()
            reader.close()

    async def not_found(request: Request, exc: Exception) -> Response:
        if isinstance(exc, HTTPException) and exc.status_code == 405:
            return message(405, "Method Not Allowed")
        return message(404, "Not Found")

    def routes(triggers: list[WebhookRoute]) -> list[BaseRoute]:
        return [
            *(Route(starlette_path(r.trigger.path), r.handle, methods=list(r.trigger.methods)) for r in triggers),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/openapi.json", openapi_json, methods=["GET"]),
            Route("/console", lambda request: RedirectResponse("/console/", 308), methods=["GET"]),
            Mount("/console", app=console),
        ]

    app = Starlette(routes=routes(triggers), lifespan=lifespan, exception_handlers={404: not_found, 405: not_found})
    app.state.source = source

    def follow(new: Registry) -> None:
        new_routes = routes(webhook_routes(new, host, clock))  # raises ConfigError
        new_spec = json.dumps(openapi.document(new)).encode()
        registry.replace(new)  # the Invoke API, the publisher and the metrics hold this object
        app.router.routes = new_routes
        spec[0] = new_spec

    return App(app, source, () if is_loopback(host) else ("/metrics", "/openapi.json"), follow)


def server_config(app: Any, settings: Settings, **options: Any) -> Any:
    """The ``uvicorn.Config`` the process serves ``app`` with: bounded connections
    (:mod:`sources.http.connections`), proxy headers believed only as :mod:`sources.http.proxies` says."""
    import uvicorn

    cap = connections.connection_cap(settings.http_max_connections)
    return uvicorn.Config(
        proxies.wrap(app, settings.trusted_proxies), host=settings.http_host, port=settings.http_port,
        http=connections.guarded_protocol(settings.http_header_timeout, cap, settings.http_body_timeout),
        timeout_keep_alive=settings.http_keepalive_timeout,  # type: ignore[arg-type]  # a float is fine
        proxy_headers=False,  # uvicorn's default believes X-Forwarded-For from 127.0.0.1
        log_config=None, access_log=False, timeout_graceful_shutdown=3, lifespan="on", **options)


def main() -> None:
    """Entry point of ``python -m sources.http``."""
    import uvicorn

    settings, registry = startup.start("webhook")
    try:
        sock, handed = idle.listening_socket(settings.http_host, settings.http_port)
        keys = load_keys(settings.access_keys, settings.access_keys_file)
        proxies.parse_trusted(settings.trusted_proxies)
        app = create_app(registry, settings.redis_dsn, host=settings.http_host, token=settings.http_token,
                         access_keys=keys, region=settings.region, max_workers=settings.max_workers,
                         schedule_clock=schedules.clock(settings))
    except LambdaliteError as e:
        startup.fail(e)
    count = sum(1 for _ in registry.triggers("http"))
    log.info("%s the Invoke API and %d webhook route(s) on http://%s:%d", "a connection: serving again" if handed
             else "serving", count, settings.http_host, sock.getsockname()[1])
    activity = idle.Activity(app)
    standby_after = settings.http_idle_standby
    while True:
        server = uvicorn.Server(server_config(activity, settings))
        watch = idle.Watch(activity, standby_after, stop=functools.partial(setattr, server, "should_exit", True))
        follower = revision.Follower(connect(settings.redis_dsn), settings.config, app.follow,
                                     name="webhook-revision")
        follower.start()
        watch.start()
        try:
            server.run(sockets=[sock.dup()])  # uvicorn closes its copy as it stops; this one stays open
        finally:
            watch.close()
            follower.stop(timeout=0.1)  # a daemon thread: it ends with the process
        if not watch.fired:  # a signal (uvicorn raises those again as it returns)
            return
        idle.stand_by(sock)  # returns only if the exec failed: serve on, and stay up
        standby_after = 0


if __name__ == "__main__":
    main()
