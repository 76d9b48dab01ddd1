"""The sandbox: a process forked from a warm worker that runs one function's invocations.

Like a Lambda execution environment it is reused between invocations (module state stays warm)
and thrown away when an invocation breaks a limit or kills it. The worker talks to it over two
pipes with length-prefixed JSON frames (an event goes as the job's own JSON, not encoded again);
the handler's own stdout and stderr go to the log. The sandbox makes each invocation's TMPDIR, at
the path the worker names: ahead of the request (a ``mkdir`` frame, sent as a job arrives, so that
the directory is made while the worker reads the job) or on the request itself; if it cannot, it
answers ``tmpdir_error`` and runs nothing. A sandbox with a private /tmp (see :mod:`workers.isolation`)
makes none: its /tmp is its TMPDIR for all its invocations.

Before it imports the handler, the sandbox isolates itself (:func:`workers.isolation.enter`): the
function's environment, a private /tmp, the sandbox identity. What the handler's idempotency helper
needs from Redis it asks the worker over the pipes (a ``door`` frame, answered before the reply).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import resource
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from broker.envelope import dump_json, parse_json
from broker.environment import log_stream_name
from broker.errors import LambdaliteError
from broker.handler_api import idempotency
from broker.kernel import die_with_parent
from broker.registry import Function, resolve_handler
from workers import client_context, isolation
from workers.context import LambdaContext
from workers.isolation import PrivateTmp
from workers.limits import reap
from workers.runtime_api import ProvidedRuntime, invoked_arn

_HEADER = struct.Struct("!I")
PIPE_SIZE = 1 << 20  # bytes; Linux's default /proc/sys/fs/pipe-max-size


class SandboxGone(Exception):
    """Raised by the worker side when the sandbox's pipe closes (the process died)."""


def write_frame(fd: int, obj: Any, raw: Mapping[str, bytes] | None = None) -> None:
    """Write ``obj`` (a dict when ``raw`` is given) as one frame. ``raw`` adds members whose values
    are JSON texts already, set in as they are rather than decoded and encoded again."""
    data = json.dumps(obj, separators=(",", ":")).encode()
    if raw:
        members = b"".join(b"," + json.dumps(k).encode() + b":" + v for k, v in raw.items())
        data = data[:-1] + (members[1:] if data == b"{}" else members) + b"}"
    view = memoryview(_HEADER.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view) :]


def read_frame(fd: int) -> Any:
    header = _read_exact(fd, _HEADER.size)
    data = _read_exact(fd, _HEADER.unpack(header)[0])
    try:
        return orjson.loads(data)  # a fifth of json.loads's time on an event's frame
    except orjson.JSONDecodeError:  # what orjson refuses and json reads (NaN, integers over 64 bits)
        return json.loads(data)


def _read_exact(fd: int, n: int) -> bytes:
    chunks = []
    while n:
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            raise SandboxGone("sandbox pipe closed")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _widen(fd: int) -> None:
    """Let a pipe hold a large event in one go (Linux's default holds 64 KB): a 1 MB frame then
    crosses in about 4 ms instead of 7. Where the system refuses, the pipe stays as it is."""
    with contextlib.suppress(OSError, AttributeError):
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)


def error_object(error_type: str, message: str, stack: list[str] | None = None) -> dict[str, Any]:
    """Lambda's error shape."""
    out: dict[str, Any] = {"errorType": error_type, "errorMessage": message}
    if stack is not None:
        out["stackTrace"] = stack
    return out


class Sandbox:
    """The worker's handle on one sandbox process."""

    def __init__(self, fn: Function, handler: Callable[[Any, Any], Any] | None, worker_name: str,
                 tmp: PrivateTmp | None = None) -> None:
        self.fn = fn
        self.handler = handler  # None: the sandbox imports fn.handler itself, once isolated
        self.worker_name = worker_name
        self.tmp = tmp
        self.pid = 0
        self.requests = self.replies = -1
        self.init_ms: float | None = None  # reported with the first invocation, then None
        self._forked_at = 0.0
        self._ready = False

    def start(self) -> None:
        """Fork the sandbox; it sets itself up while the worker goes on (see :meth:`ready`)."""
        req_r, req_w = os.pipe()
        rep_r, rep_w = os.pipe()
        for fd in (req_w, rep_w):
            _widen(fd)
        self._forked_at = time.time()
        self._ready = False
        pid = os.fork()
        if pid == 0:  # the sandbox
            os.close(req_w)
            os.close(rep_r)
            try:
                _serve(self.fn, self.handler, self.worker_name, req_r, rep_w, self.tmp)
            finally:
                os._exit(0)
        os.close(req_r)
        os.close(rep_w)
        self.pid, self.requests, self.replies = pid, req_w, rep_r

    def ready(self) -> None:
        """Wait for the sandbox's "ready" frame once; its init time is fork to ready, as it saw it."""
        if not self._ready:
            frame = read_frame(self.replies)
            self.init_ms = max(0.0, (frame["at"] - self._forked_at) * 1000)
            self._ready = True

    @property
    def running(self) -> bool:
        return self.pid != 0

    def send(self, request: dict[str, Any], raw: Mapping[str, bytes] | None = None) -> None:
        try:
            write_frame(self.requests, request, raw)
        except OSError as e:
            raise SandboxGone(str(e)) from e

    def receive(self) -> dict[str, Any]:
        reply: dict[str, Any] = read_frame(self.replies)
        return reply

    def forget(self) -> None:
        """Close the pipes after the process is gone (the worker kills and reaps it)."""
        for fd in (self.requests, self.replies):
            if fd >= 0:
                os.close(fd)
        self.pid, self.requests, self.replies = 0, -1, -1


def _serve(
    fn: Function, handler: Callable[[Any, Any], Any] | None, worker_name: str, requests: int, replies: int,
    tmp: PrivateTmp | None = None,
) -> None:
    os.setpgid(0, 0)  # its own process group: a Ctrl-C meant for the worker does not reach it
    die_with_parent(signal.SIGKILL)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    me = os.getpid()
    handler, broken = _isolate(fn, handler, worker_name, tmp, requests, replies)
    provided = None
    if fn.provided and broken is None:  # the runtime starts now, and initialises while the worker reads its job
        provided = ProvidedRuntime(fn, isolation.plan().settings.config)
        with contextlib.suppress(OSError):  # the first invocation tries again and reports why it cannot
            provided.start()
    write_frame(replies, {"ready": True, "at": time.time()})

    def door(op: str, keys: list[str], args: list[Any]) -> Any:
        write_frame(replies, {"door": op, "keys": keys, "args": args})
        return idempotency.door_answer(read_frame(requests))

    made: tuple[str, str | None] | None = None  # a TMPDIR made ahead, and why it could not be
    while True:
        try:
            request = read_frame(requests)
        except SandboxGone:
            return
        if "mkdir" in request:  # the next invocation's TMPDIR, made while the worker reads its job
            made = (request["mkdir"], _mkdir(request["mkdir"]))
            continue
        if tmp is not None:
            problem = None  # its private /tmp, kept between invocations
        else:
            problem = made[1] if made is not None and made[0] == request["tmpdir"] else _mkdir(request["tmpdir"])
        made = None
        if problem is not None:
            write_frame(replies, {"ok": False, "tmpdir_error": problem})
            continue
        if "job" in request:  # the job's data as the worker read it: RQ's [function, instance, [envelope], kwargs]
            envelope = request.pop("job")[2][0]
            request["event"] = envelope["payload"]
            request["client_context"] = envelope.get("client_context")
        if provided is not None:
            provided.collect()  # the runtime's children are its own; only its end matters here
        else:
            reap()  # children of the last invocation, killed by the worker after it ended
        if broken is not None:  # the handler could not be imported, or the sandbox not isolated
            write_frame(replies, {"ok": False, "error": broken})
            continue
        idempotency.use_door(door if request.get("door") else None)
        reply = _invoke(fn, handler, worker_name, request, provided)
        if os.getpid() != me:
            os._exit(0)  # a process the handler forked returned from it: only the sandbox answers
        reply["max_rss_kb"] = max(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
        )
        reply["recycle"] = reply.get("recycle", False) or _stdio_broken()
        write_frame(replies, reply)


def _isolate(fn: Function, handler: Callable[[Any, Any], Any] | None, worker_name: str, tmp: PrivateTmp | None,
             requests: int, replies: int) -> tuple[Callable[[Any, Any], Any] | None, dict[str, Any] | None]:
    """Isolate this sandbox, then import the handler (unless one was given): the handler, or the
    error every invocation of this sandbox answers with (nothing runs unisolated)."""
    try:
        isolation.enter(fn, worker_name, tmp, keep=(0, 1, 2, requests, replies))
    except (OSError, LambdaliteError) as e:
        return None, error_object("Sandbox.IsolationError", f"the sandbox could not isolate itself: {e}")
    if handler is not None or not fn.python:
        return handler, None
    try:
        return resolve_handler(fn, isolation.plan().settings.config), None
    except LambdaliteError as e:
        _log_error(f"[ERROR] Runtime.ImportModuleError: {e}\n")
        return None, error_object("Runtime.ImportModuleError", f"Unable to import module: {e}")


def _mkdir(path: str) -> str | None:
    """Make an invocation's TMPDIR (private, and new: an existing one is refused); None, or why not."""
    try:
        os.mkdir(path, 0o700)
    except OSError as e:
        return e.strerror or str(e)
    return None


def _stdio_broken() -> bool:
    """True when the handler closed stdout/stderr: the next invocation gets a fresh sandbox."""
    try:
        return sys.stdout.closed or sys.stderr.closed or os.fstat(1) is None or os.fstat(2) is None
    except (OSError, ValueError):
        return True


def _invoke(
    fn: Function, handler: Callable[[Any, Any], Any] | None, worker_name: str, request: dict[str, Any],
    provided: ProvidedRuntime | None = None,
) -> dict[str, Any]:
    os.environ["TMPDIR"] = request["tmpdir"]
    tempfile.tempdir = None  # gettempdir() reads TMPDIR again
    context = LambdaContext(
        function_name=fn.name,
        aws_request_id=request["id"],
        memory_limit_in_mb=fn.memory,
        deadline=request["deadline"],
        log_stream_name=log_stream_name(worker_name),
        client_context=client_context.from_dict(request.get("client_context")),
    )
    if provided is not None:
        return provided.invoke(request, request["event"], invoked_arn(fn), request.get("client_context"))
    if handler is None:
        return _run_command(fn, request, context)
    idempotency.invocation_started(context, worker_name)
    try:
        result = handler(request["event"], context)
    except Exception as e:
        # The handler's own frames only, as Lambda shows them (not the runtime's).
        frames = e.__traceback__.tb_next if e.__traceback__ else None
        stack = traceback.format_exception(type(e), e, frames)
        _log_error(f"[ERROR] {type(e).__name__}: {e}\n" + "".join(stack))
        # The Python runtime's error: these four fields in this order, the stack as frames only.
        return {"ok": False, "error": {"errorMessage": str(e), "errorType": type(e).__name__,
                                       "requestId": request["id"],
                                       "stackTrace": traceback.format_list(traceback.extract_tb(frames))}}
    except BaseException as e:  # SystemExit, KeyboardInterrupt raised by the handler
        return {"ok": False, "error": error_object(
            "Runtime.ExitError", f"RequestId: {request['id']} Error: Runtime exited: {type(e).__name__}: {e}")}
    finally:
        idempotency.invocation_ended()
    try:
        dump_json(result)  # what the envelope and the outcome carry: strict JSON, as Lambda marshals it
    except (TypeError, ValueError) as e:
        return {"ok": False, "error": error_object("Runtime.MarshalError", f"Unable to marshal response: {e}")}
    return {"ok": True, "result": result}


def _log_error(text: str) -> None:
    try:
        sys.stderr.write(text)
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def _run_command(fn: Function, request: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Run a command function: event as JSON on stdin, result as JSON on stdout, stderr to the log."""
    command = list(fn.command or ())
    env = {**os.environ, **context.environment(), "TMPDIR": request["tmpdir"]}
    try:
        done = subprocess.run(
            command, input=json.dumps(request["event"]).encode(), stdout=subprocess.PIPE,
            env=env, check=False,
        )
    except OSError as e:
        return {"ok": False, "error": error_object("Runtime.InvalidEntrypoint", f"cannot run {command[0]!r}: {e}")}
    out = done.stdout.decode("utf-8", "replace").strip()
    if done.returncode != 0:
        try:
            err = json.loads(out)
            if isinstance(err, dict) and "errorType" in err:
                return {"ok": False, "error": err}
        except ValueError:
            pass
        code = done.returncode
        how = f"signal: {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
        return {"ok": False, "error": error_object(
            "Runtime.ExitError", f"RequestId: {request['id']} Error: Runtime exited with error: {how}")}
    if not out:
        return {"ok": True, "result": None}
    try:
        return {"ok": True, "result": parse_json(out)}
    except ValueError:
        return {"ok": False, "error": error_object("Runtime.InvalidResponse", f"stdout is not JSON: {out[:200]!r}")}
