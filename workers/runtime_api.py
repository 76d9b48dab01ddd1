"""The Lambda Runtime API, served to a ``provided`` function's runtime by its sandbox.

A function whose code is a runtime (``runtime = "provided"``, a ``bootstrap`` executable) runs as
Lambda runs every language: the sandbox starts the bootstrap once, with ``AWS_LAMBDA_RUNTIME_API``
pointing at a loopback port of its own, and the runtime asks for its events there
(``GET /2018-06-01/runtime/invocation/next``) and posts each result back (``…/{id}/response`` or
``…/{id}/error``), or reports that it could not start (``/2018-06-01/runtime/init/error``). The
runtime stays warm between invocations, like a Lambda execution environment.

This module is the sandbox's side: :class:`RuntimeAPI` (a small threaded ``http.server``: one
runtime makes one request at a time, so a thread per connection costs nothing) and
:class:`ProvidedRuntime`, which starts the bootstrap and turns one invocation into one event on
``/next`` and one reply frame for the worker. The limits stay the worker's: it watches the
sandbox's whole process tree (the runtime included) and kills it at the deadline, over memory or
over tmp disk, and a sandbox whose runtime died is replaced before the next invocation.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import re
import signal
import socketserver
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from broker.environment import function_arn
from broker.kernel import die_with_parent
from broker.registry import Function

PREFIX = "/2018-06-01/runtime"
MAX_PAYLOAD = 6 * 1024 * 1024  # bytes: Lambda's limit on a synchronous response (6 MB)
MAX_ERROR = 1024 * 1024  # bytes of an error document the API reads
_INVOCATION = re.compile(r"^/2018-06-01/runtime/invocation/([^/]+)/(response|error)$")
POLL = 0.05  # seconds between checks on the runtime process while an invocation waits


@dataclass(slots=True)
class _Event:
    request_id: str
    body: bytes
    headers: dict[str, str]


class RuntimeAPI:
    """The Runtime API for one runtime process, on ``127.0.0.1`` and a port the kernel picks.

    One invocation at a time, as Lambda hands one to an execution environment: :meth:`offer`
    queues the event that the runtime's ``/next`` takes, and the runtime's ``/response``,
    ``/error`` or ``/init/error`` ends it (:meth:`outcome`).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._event: _Event | None = None  # offered, not yet taken by /next
        self._current: str | None = None  # taken by /next, not yet answered
        self._outcome: dict[str, Any] | None = None
        self.init_error: dict[str, Any] | None = None
        self.first_next_at: float | None = None  # time.time() of the runtime's first /next
        self.waiting = False  # a /next is blocked, waiting for an event
        self._closed = False
        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.server.api = self
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.5},
                                        name="runtime-api", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self.server.shutdown()
        self.server.server_close()

    # The sandbox's side.

    def offer(self, event: _Event) -> None:
        with self._cond:
            self._event, self._current, self._outcome = event, None, None
            self._cond.notify_all()

    def outcome(self, timeout: float) -> dict[str, Any] | None:
        """The current invocation's outcome (``{"ok": ...}``), or None if none came within ``timeout``."""
        with self._cond:
            if self._outcome is None and self.init_error is None:
                self._cond.wait(timeout)
            if self._outcome is not None:
                out, self._outcome, self._current = self._outcome, None, None
                return out
            if self.init_error is not None:
                return {"ok": False, "error": self.init_error, "init_error": True}
            return None

    def withdraw(self) -> None:
        """Forget an event no runtime will answer (the runtime died)."""
        with self._cond:
            self._event = self._current = None

    # The runtime's side (called from the server's threads).

    def next_event(self) -> _Event | None:
        with self._cond:
            if self.first_next_at is None:
                self.first_next_at = time.time()
            self.waiting = True
            while self._event is None and not self._closed:
                self._cond.wait()
            self.waiting = False
            event, self._event = self._event, None
            if event is not None:
                self._current = event.request_id
            return event

    def answer(self, request_id: str, outcome: dict[str, Any]) -> bool:
        """Record the runtime's answer for ``request_id``; False if that is not the invocation in flight."""
        with self._cond:
            if request_id != self._current or self._outcome is not None:
                return False
            self._outcome = outcome
            self._cond.notify_all()
            return True

    def fail_init(self, error: dict[str, Any]) -> None:
        with self._cond:
            if self.init_error is None:
                self.init_error = error
            self._cond.notify_all()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    api: RuntimeAPI

    def server_bind(self) -> None:
        # HTTPServer's own looks its address up by name (socket.getfqdn), which a sandbox that switched
        # users may not be able to do (the codec it imports can lie beyond the sandbox user's reach).
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: a runtime client reuses its connection
    disable_nagle_algorithm = True  # headers and body go as two writes: no delayed-ACK wait between them
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        pass  # the function's log is the runtime's own output, not this server's access log

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path.split("?")[0] != f"{PREFIX}/invocation/next":
            self._reply(404, {"errorType": "NotFound", "errorMessage": f"no such resource: {self.path}"})
            return
        event = self.server.api.next_event()
        if event is None:
            self._reply(410, {"errorType": "Shutdown", "errorMessage": "the execution environment is shutting down"})
            return
        self._reply(200, event.body, event.headers)

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        path = self.path.split("?")[0]
        api = self.server.api
        if path == f"{PREFIX}/init/error":
            body = self._body(MAX_ERROR)
            api.fail_init(_error_document(body, self.headers.get("Lambda-Runtime-Function-Error-Type"),
                                          "Runtime.InitError"))
            self._reply(202, {"status": "OK"})
            return
        match = _INVOCATION.match(path)
        if match is None:
            self._body(MAX_ERROR)
            self._reply(404, {"errorType": "NotFound", "errorMessage": f"no such resource: {self.path}"})
            return
        request_id, kind = match.groups()
        body = self._body(MAX_PAYLOAD if kind == "response" else MAX_ERROR)
        if body is None:
            outcome: dict[str, Any] = {"ok": False, "error": {
                "errorType": "Function.ResponseSizeTooLarge",
                "errorMessage": f"Response payload size exceeded maximum allowed payload size ({MAX_PAYLOAD} bytes)."}}
        elif kind == "response":
            outcome = {"ok": True, "result": _result(body)}
        else:
            outcome = {"ok": False, "error": _error_document(
                body, self.headers.get("Lambda-Runtime-Function-Error-Type"), "Unhandled")}
        if not api.answer(request_id, outcome):
            self._reply(400, {"errorType": "InvalidRequestID",
                              "errorMessage": f"{request_id} is not the invocation in flight"})
            return
        if body is None:
            self._reply(413, {"errorType": "RequestEntityTooLarge", "errorMessage": "payload over 6 MB"})
            return
        self._reply(202, {"status": "OK"})

    def _body(self, limit: int) -> bytes | None:
        """The request's body (a Content-Length, or chunked); None when it is over ``limit`` (the
        connection is then closed rather than read to its end)."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            size = 0
            while True:
                line = self.rfile.readline(1024)
                try:
                    n = int(line.split(b";")[0].strip() or b"0", 16)
                except ValueError:
                    self.close_connection = True
                    return b"".join(chunks)
                if n == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                size += n
                if size > limit:
                    self.close_connection = True
                    return None
                chunks.append(self.rfile.read(n))
                self.rfile.readline(1024)
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
        if length > limit:
            self.close_connection = True
            return None
        return self.rfile.read(length) if length > 0 else b""

    def _reply(self, code: int, body: bytes | dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)


def _result(body: bytes) -> Any:
    """A runtime's response: JSON as JSON; anything else (the custom-runtime tutorial answers with
    plain text) as a string, since an outcome holds JSON."""
    text = body.decode("utf-8", "replace")
    if not body.strip():
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def _error_document(body: bytes | None, header_type: str | None, default_type: str) -> dict[str, Any]:
    """Lambda's error object from what a runtime posted: its JSON error document when it is one,
    with the type it names (``errorType``, else the ``Lambda-Runtime-Function-Error-Type`` header)."""
    doc: Any = None
    if body:
        with contextlib.suppress(ValueError):
            doc = json.loads(body)
    if not isinstance(doc, dict):
        text = (body or b"").decode("utf-8", "replace")[:4096]
        doc = {"errorMessage": text} if text else {}
    error_type = doc.get("errorType") if isinstance(doc.get("errorType"), str) else None
    doc["errorType"] = error_type or header_type or default_type
    if not isinstance(doc.get("errorMessage"), str):
        doc["errorMessage"] = str(doc.get("errorMessage", ""))
    out: dict[str, Any] = doc
    return out


class ProvidedRuntime:
    """A ``provided`` function's runtime process and the API it is served, inside its sandbox.

    Started on the first invocation (and again after the runtime exited between invocations: the
    next invocation gets a fresh runtime); its ``Init Duration`` is the time from its start to its
    first ``/next``.
    """

    def __init__(self, fn: Function, config: Path) -> None:
        self.fn = fn
        self.config = config
        self.api = RuntimeAPI()
        self.api.start()
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.exit_status: int | None = None  # the wait status of a runtime that ended
        self._reported_init = False

    def start(self) -> None:
        """Start the bootstrap (raises OSError when it cannot be executed)."""
        env = dict(os.environ)
        env["AWS_LAMBDA_RUNTIME_API"] = self.api.address
        env["_HANDLER"] = self.fn.handler or ""
        self.exit_status = None
        self._reported_init = False
        self.api.first_next_at = None
        self.api.init_error = None
        self.started_at = time.time()
        self.proc = subprocess.Popen(
            [str(self.fn.bootstrap_path(self.config))], env=env, cwd=str(self.config.resolve().parent),
            stdin=subprocess.DEVNULL, preexec_fn=_die_with_sandbox, close_fds=True,
        )

    def collect(self) -> None:
        """Reap the sandbox's exited children, noting the runtime's own end (its status)."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if self.proc is not None and pid == self.proc.pid:
                self.exit_status = status
                self.proc.returncode = os.waitstatus_to_exitcode(status)  # Popen must not wait for it again

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.exit_status is None

    def invoke(self, request: dict[str, Any], event: Any, context_arn: str, client_context: Any) -> dict[str, Any]:
        """Hand ``event`` to the runtime and wait for its answer: the reply frame for the worker
        (``recycle`` when the runtime died or failed to start: a fresh sandbox serves the next one)."""
        self.collect()
        if not self.alive:
            try:
                self.start()
            except OSError as e:
                return {"ok": False, "recycle": True, "error": {
                    "errorType": "Runtime.InvalidEntrypoint",
                    "errorMessage": f"RequestId: {request['id']} Error: cannot start the bootstrap "
                                    f"{self.fn.bootstrap!r}: {e.strerror or e}"}}
        headers = {
            "Lambda-Runtime-Aws-Request-Id": request["id"],
            "Lambda-Runtime-Deadline-Ms": str(int(request["deadline"] * 1000)),
            "Lambda-Runtime-Invoked-Function-Arn": context_arn,
            "Lambda-Runtime-Trace-Id": _trace_id(request["id"]),
        }
        if client_context is not None:
            headers["Lambda-Runtime-Client-Context"] = json.dumps(client_context, separators=(",", ":"))
        body = json.dumps(event, separators=(",", ":")).encode()
        self.api.offer(_Event(request["id"], body, headers))
        while True:
            reply = self.api.outcome(POLL)
            if reply is not None:
                break
            self.collect()
            if not self.alive:
                self.api.withdraw()
                reply = self.api.outcome(0) or {"ok": False, "error": {
                    "errorType": "Runtime.ExitError",
                    "errorMessage": f"RequestId: {request['id']} Error: Runtime exited with error: "
                                    f"{describe(self.exit_status)}"}}
                break
        if reply.pop("init_error", False) or not self.alive:
            reply["recycle"] = True  # a runtime that failed to start, or ended: the next one starts afresh
        self._add_init(reply)
        return reply

    def _add_init(self, reply: dict[str, Any]) -> None:
        if self._reported_init:
            return
        self._reported_init = True
        ended = self.api.first_next_at or time.time()
        reply["init_ms"] = max(0.0, (ended - self.started_at) * 1000)


def _die_with_sandbox() -> None:
    die_with_parent(signal.SIGKILL)


def _trace_id(request_id: str) -> str:
    """An X-Ray-shaped trace header (there is no X-Ray here: the id only has to be well formed)."""
    digits = re.sub(r"[^0-9a-f]", "", request_id.lower()).ljust(24, "0")[:24]
    return f"Root=1-{int(time.time()):08x}-{digits};Parent={digits[:16]};Sampled=0"


def describe(wait_status: int | None) -> str:
    if wait_status is None:
        return "process vanished"
    if os.WIFSIGNALED(wait_status):
        sig = os.WTERMSIG(wait_status)
        try:
            return f"signal: {signal.Signals(sig).name}"
        except ValueError:
            return f"signal: {sig}"
    return f"exit status {os.WEXITSTATUS(wait_status)}"


def invoked_arn(fn: Function) -> str:
    return function_arn(fn.name)
