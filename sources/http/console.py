"""The web console at ``/console/`` on the HTTP source: server-rendered pages, live by Server-Sent Events.

Pages: the overview of every function (``/console/``), a page per function with its graphs over
the last hour and day, its recent invocations (each opening its log lines) and scaler decisions,
and its dead letters, paged, with replay and purge of one, a selection or all of them (the code of
``lambdalite dlq``). ``/console/events`` pushes the figures (:mod:`sources.http.console_live`).

On loopback anyone may look, as with the Invoke API; beyond it the console asks for the Invoke
API's credentials (:mod:`sources.http.callers`): HTTP Basic with an access key id and its secret, or
with any user name and ``LAMBDALITE_HTTP_TOKEN``, or a bearer token. A form's POST is refused
unless it comes from a page of the console itself (its ``Origin``), so another site cannot make a
visitor's browser replay or purge. Reads run on the console's own thread and Redis connection,
off the Invoke API's path.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import orjson
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route, Router
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from broker import deadletter, logstore
from broker.connection import TRANSIENT
from broker.errors import UnknownFunctionError
from broker.queues import Publisher
from sources.http import console_render as render
from sources.http.callers import Callers
from sources.http.console_data import Console, function_page, overview
from sources.http.console_live import Hub

if TYPE_CHECKING:
    from jinja2 import Environment

log = logging.getLogger(__name__)
HERE = Path(__file__).resolve().parent
T = TypeVar("T")
PAGE_SIZE = 50
FORM_BYTES = 64 * 1024


def templates() -> Environment:
    """The pages' templates. Jinja is imported here, on the first page served, not at the HTTP source's
    start: a stack whose console nobody opens does not hold it in memory (bench/idle.py)."""
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    env = Environment(loader=FileSystemLoader(HERE / "console_templates"), autoescape=select_autoescape(["html"]))
    env.filters.update(ms=render.ms, usd=render.usd, pct=render.pct, age=render.age, when=render.when,
                       count=render.count)
    env.filters["json"] = lambda v: orjson.dumps(v).decode().replace("</", "<\\/")
    return env


def _basic(headers: Headers) -> tuple[str, str] | None:
    scheme, _, given = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, _, password = base64.b64decode(given.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return user, password


def admitted(callers: Callers, headers: Headers) -> bool:
    """Whether the request carries the Invoke API's credentials (or none are needed)."""
    if callers.open:
        return True
    scheme, _, given = headers.get("authorization", "").partition(" ")
    if callers.token and scheme.lower() == "bearer":
        return hmac.compare_digest(given.strip().encode(), callers.token.encode())
    basic = _basic(headers)
    if basic is None:
        return False
    user, password = basic
    if callers.token and hmac.compare_digest(password.encode(), callers.token.encode()):
        return True
    secret = callers.sigv4.keys.get(user) if callers.sigv4 is not None else None
    return secret is not None and hmac.compare_digest(password.encode(), secret.encode())


def same_origin(headers: Headers) -> bool:
    """A POST from the console's own page (or from a client that sends no ``Origin``, not a browser)."""
    origin = headers.get("origin")
    if origin is None:
        return headers.get("sec-fetch-site", "same-origin") in ("same-origin", "none")
    return urlsplit(origin).netloc == headers.get("host", "")


async def _form(request: Request) -> dict[str, list[str]] | None:
    """The fields of a URL-encoded form of at most :data:`FORM_BYTES` (the dead-letter pages post
    nothing else), or None."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
        return None
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > FORM_BYTES:
            return None
    try:
        return parse_qs(body.decode(), max_num_fields=PAGE_SIZE * 4)
    except (UnicodeDecodeError, ValueError):
        return None


class ConsoleApp:
    """The ASGI app mounted at ``/console``: the caller check, then the pages."""

    def __init__(self, console: Console, publisher: Publisher, callers: Callers, open_to_all: bool,
                 throttles: Callable[[], dict[str, int]] | None = None) -> None:
        self.console = console
        self.publisher = publisher
        self.callers = callers
        self.open_to_all = open_to_all  # loopback: no check, as for the Invoke API
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="console")
        self.hub = Hub(console, self.read, throttles)
        self._templates: Environment | None = None  # made on the first page served
        self.router = Router(routes=[
            Route("/", self.overview_page, methods=["GET"]),
            Route("/data", self.overview_data, methods=["GET"]),
            Route("/events", self.events, methods=["GET"]),
            Route("/functions/{name}", self.function, methods=["GET"]),
            Route("/functions/{name}/data", self.function_data, methods=["GET"]),
            Route("/functions/{name}/invocations/{request_id}", self.invocation, methods=["GET"]),
            Route("/functions/{name}/dead-letters", self.dead_letters, methods=["GET"]),
            Route("/functions/{name}/dead-letters/{action:str}", self.dead_letter_action, methods=["POST"]),
            Mount("/static", app=StaticFiles(directory=HERE / "console_static"), name="static"),
        ])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.router(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if not self.open_to_all and not admitted(self.callers, headers):
            response: Response = Response("lambdalite console: credentials needed\n", 401,
                                          {"WWW-Authenticate": 'Basic realm="lambdalite console"'})
            await response(scope, receive, send)
            return
        if scope["method"] == "POST" and not same_origin(headers):
            await Response("refused: not from the console's own page\n", 403)(scope, receive, send)
            return
        await self.router(scope, receive, send)

    async def read(self, call: Callable[[], T]) -> T:
        """``call()`` on the console's own thread (the Invoke API's thread pool is left alone)."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, call)

    async def start(self) -> None:
        await self.hub.start()

    async def stop(self) -> None:
        await self.hub.stop()
        # A read or a history sample under way finishes before the source says it stopped: nothing of
        # this process writes to Redis after its stop (a sample of figures read before it, landing
        # after, would be stale).
        await asyncio.to_thread(self.pool.shutdown, wait=True, cancel_futures=True)

    def _render(self, template: str, status: int = 200, **values: Any) -> HTMLResponse:
        if self._templates is None:
            self._templates = templates()
        return HTMLResponse(self._templates.get_template(template).render(**values), status)

    def _function(self, request: Request) -> str | None:
        name = request.path_params["name"]
        try:
            return self.console.registry.get(name).name
        except UnknownFunctionError:
            return None

    async def _guarded(self, request: Request, make: Callable[[], Awaitable[Response]]) -> Response:
        try:
            return await make()
        except TRANSIENT as e:
            return self._render("error.html", 503, message=f"Redis is unavailable: {e}")

    def _missing(self, request: Request) -> HTMLResponse:
        return self._render("error.html", 404, message=f"no function named {request.path_params['name']!r}")

    async def overview_page(self, request: Request) -> Response:
        async def make() -> Response:
            data = await self.read(lambda: overview(self.console))
            from markupsafe import Markup  # Jinja's, imported with it (see templates())

            return self._render("overview.html", data=data, rows=Markup(render.overview_rows(data["functions"])))
        return await self._guarded(request, make)

    async def overview_data(self, request: Request) -> Response:
        async def make() -> Response:
            return Response(orjson.dumps(await self.read(lambda: overview(self.console))),
                            media_type="application/json")
        return await self._guarded(request, make)

    async def function(self, request: Request) -> Response:
        name = self._function(request)
        if name is None:
            return self._missing(request)

        async def make() -> Response:
            data = await self.read(lambda: function_page(self.console, name))
            fn = self.console.registry.get(name)
            return self._render("function.html", data=data, fn=fn)
        return await self._guarded(request, make)

    async def function_data(self, request: Request) -> Response:
        name = self._function(request)
        if name is None:
            return JSONResponse({"message": "no such function"}, 404)

        async def make() -> Response:
            return Response(orjson.dumps(await self.read(lambda: function_page(self.console, name))),
                            media_type="application/json")
        return await self._guarded(request, make)

    async def invocation(self, request: Request) -> Response:
        name = self._function(request)
        if name is None:
            return self._missing(request)
        request_id = request.path_params["request_id"]

        async def make() -> Response:
            entry = await self.read(lambda: logstore.find(self.console.client, name, request_id))
            if entry is None:
                return self._render("error.html", 404, message=f"no log lines of {request_id} are kept")
            return self._render("invocation.html", name=name, entry=entry)
        return await self._guarded(request, make)

    async def dead_letters(self, request: Request) -> Response:
        name = self._function(request)
        if name is None:
            return self._missing(request)
        try:
            cursor = int(request.query_params.get("cursor", "0"))
        except ValueError:
            cursor = 0
        done = request.query_params.get("done", "")
        client = self.console.client

        async def make() -> Response:
            page, nxt = await self.read(lambda: deadletter.page(client, name, cursor, PAGE_SIZE))
            total = await self.read(lambda: deadletter.count(client, name))
            return self._render("dead_letters.html", name=name, page=page, next_cursor=nxt, total=total,
                                cursor=cursor, done=done)
        return await self._guarded(request, make)

    async def dead_letter_action(self, request: Request) -> Response:
        name = self._function(request)
        if name is None:
            return self._missing(request)
        action = request.path_params["action"]
        if action not in ("replay", "purge"):
            return self._render("error.html", 404, message=f"no action {action!r}")
        form = await _form(request)
        if form is None:
            return self._render("error.html", 400, message="not a form this page sends")
        one = form.get("one")  # a row's own button: that dead letter only, whatever else is ticked
        ids = one[:1] if one else form.get("id", [])[:PAGE_SIZE * 2]
        everything = form.get("all") == ["1"]
        if not ids and not everything:
            return self._render("error.html", 400, message="choose dead letters (or all of them) first")
        client = self.console.client

        def run() -> int:
            if action == "replay":
                return len(deadletter.replay(client, self.publisher, name, None if everything else ids))
            return deadletter.purge(client, name, None if everything else ids)

        async def make() -> Response:
            n = await self.read(run)
            self.console.forget(name)
            verb = "replayed" if action == "replay" else "purged"
            log.info("console: %s %d dead letter(s) of %s", verb, n, name)
            return RedirectResponse(f"/console/functions/{name}/dead-letters?done={verb}+{n}", 303)
        return await self._guarded(request, make)

    async def events(self, request: Request) -> Response:
        name = request.query_params.get("function")
        if name is not None and self._function(request.__class__(
                {**request.scope, "path_params": {"name": name}})) is None:
            return JSONResponse({"message": "no such function"}, 404)
        queue = self.hub.subscribe(name)

        async def stream() -> Any:
            try:
                yield b"retry: 1000\n\n"
                while True:
                    try:
                        data = await asyncio.wait_for(queue.get(), 15)
                    except TimeoutError:
                        yield b": keep-alive\n\n"
                        continue
                    yield b"data: " + data + b"\n\n"
            finally:
                self.hub.unsubscribe(name, queue)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
