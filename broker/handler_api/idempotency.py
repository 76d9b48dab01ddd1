"""Exactly-once effects for handlers: run a handler, or a piece of one, once per idempotency key.

::

    from broker.handler_api.idempotency import idempotent, idempotent_function

    @idempotent                            # key: the event id (context.aws_request_id)
    def handler(event, context): ...

    @idempotent(key="order.id")            # key: a path into the event, or a callable on it
    def handler(event, context): ...

    @idempotent_function(key=lambda order: order["id"])
    def charge(order): ...                 # called from a handler: once per order id

Each key has one record in Redis, per function name (and, for :func:`idempotent_function`, per
decorated function). The first delivery claims it with ``SET NX``: an in-progress record that
expires when the invocation's time is up, so the claim of a killed invocation frees itself (and
its worker, or the scaler when the worker died, releases it at once). The body runs, and its
result becomes the completed record for ``expires_after_seconds``. A later delivery with the
same key gets the stored result without running the body; one that arrives while the first is
still running raises :class:`IdempotencyAlreadyInProgressError`. A body that raises releases the
claim, so a retry runs it again.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, cast, overload

import redis

from broker import scripts
from broker.connection import connect
from broker.errors import (
    IdempotencyAlreadyInProgressError,
    IdempotencyError,
    IdempotencyKeyError,
    IdempotencyPersistenceLayerError,
    IdempotencyRecordError,
    IdempotencyResultError,
    ScriptError,
    SettingsError,
)
from broker.settings import load_settings

__all__ = [
    "DEFAULT_EXPIRES_AFTER_SECONDS",
    "IdempotencyAlreadyInProgressError",
    "IdempotencyError",
    "IdempotencyKeyError",
    "IdempotencyPersistenceLayerError",
    "IdempotencyRecordError",
    "IdempotencyResultError",
    "idempotent",
    "idempotent_function",
    "record_key",
]

log = logging.getLogger(__name__)

DEFAULT_EXPIRES_AFTER_SECONDS = 3600  # as Powertools for AWS Lambda
KEY_PREFIX = "lambdalite:idempotency:"
HELD_PREFIX = "lambdalite:idempotency-held:"  # + worker name: the claims its sandbox holds
HANDLER_SCOPE = "handler"
INPROGRESS, COMPLETED = "INPROGRESS", "COMPLETED"

# Scripts, so that a claim is checked and changed in one step (broker/lua/idempotency_*.lua). A
# worker's "held" set (absent outside a lambdalite sandbox) lets it release its claims when its
# invocation is killed.
_SCRIPTS = {op: scripts.load(f"idempotency_{op}") for op in ("claim", "complete", "release")}
_RELEASE_HELD = scripts.load("idempotency_release_held")


class InvocationContext(Protocol):
    """What the helper uses of a handler's ``context`` (lambdalite's, or Lambda's)."""

    @property
    def function_name(self) -> str: ...

    @property
    def aws_request_id(self) -> str: ...

    def get_remaining_time_in_millis(self) -> int: ...


Handler = TypeVar("Handler", bound=Callable[[Any, Any], Any])
F = TypeVar("F", bound=Callable[..., Any])
EventKey = str | Callable[[Any], Any]


# -- the invocation a sandbox is running --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Running:
    context: InvocationContext
    owner: str


_running: _Running | None = None


def invocation_started(context: InvocationContext, owner: str) -> None:
    """Called by the sandbox before a handler runs: the invocation that :func:`idempotent_function`
    guards, and ``owner``, the worker that releases its claims if the invocation is killed."""
    global _running
    _running = _Running(context, owner)


def invocation_ended() -> None:
    """Called by the sandbox after a handler returned or raised."""
    global _running
    _running = None


# -- records in Redis ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Store:
    pid: int
    client: redis.Redis


_store: _Store | None = None


def _connection() -> _Store:
    """This process's client, made on first use: a sandbox never uses a connection it inherited."""
    global _store
    if _store is None or _store.pid != os.getpid():
        try:
            dsn = load_settings().redis_dsn
        except SettingsError as e:
            raise IdempotencyPersistenceLayerError(f"cannot tell which redis to use: {e}") from e
        client = connect(dsn)
        _store = _Store(os.getpid(), client)
    return _store


# -- the narrow door: a sandbox that cannot reach Redis asks its worker ---------------------------

#: ``door(op, keys, args)``: runs one of the scripts above in the worker, given its KEYS and ARGV in
#: its header's order; set by the sandbox for an invocation whose worker serves it (see :func:`serve_door`).
Door = Callable[[str, list[str], list[Any]], Any]
_door: Door | None = None


def use_door(door: Door | None) -> None:
    """Send the helper's Redis calls through ``door`` (None: connect to Redis directly)."""
    global _door
    _door = door


def _script(name: str) -> Callable[[dict[str, Any], dict[str, Any]], Any]:
    """``run(keys, args)``, by name: the script ``name`` through the door, or on this process's client."""
    script, door = _SCRIPTS[name], _door
    if door is not None:
        return lambda keys, args: door(name, *script.arguments(keys, args))
    client = _connection().client
    return lambda keys, args: script(client, keys=keys, args=args)


def serve_door(client: redis.Redis, function: str, owner: str, request: dict[str, Any]) -> dict[str, Any]:
    """Answer a sandbox's ``door`` request in its worker: only the three scripts of this module,
    only on ``function``'s own records and ``owner``'s held set. Returns ``{"value": ...}`` or
    ``{"error": kind, "message": ...}``."""
    op, keys, args = request.get("door"), request.get("keys"), request.get("args")
    prefix = f"{KEY_PREFIX}{function}:"
    if (op not in _SCRIPTS or not isinstance(keys, list) or not 1 <= len(keys) <= 2
            or not isinstance(args, list) or len(args) > 3
            or not all(isinstance(a, str | int) and not isinstance(a, bool) for a in args)
            or not isinstance(keys[0], str) or not keys[0].startswith(prefix)
            or (len(keys) == 2 and keys[1] != held_key(owner))):
        return {"error": "refused", "message": f"the worker of {function!r} serves only its own idempotency records"}
    script = _SCRIPTS[op]
    try:
        named_keys, named_args = script.by_name(keys, args)
    except ScriptError as e:
        return {"error": "refused", "message": str(e)}
    try:
        value = script(client, keys=named_keys, args=named_args)
    except redis.ResponseError as e:
        return {"error": "response", "message": str(e)}
    except redis.RedisError as e:
        return {"error": "unavailable", "message": str(e)}
    return {"value": value.decode("utf-8", "replace") if isinstance(value, bytes) else value}


def door_answer(answer: dict[str, Any]) -> Any:
    """The value of :func:`serve_door`'s answer in the sandbox, or the error it stands for."""
    kind = answer.get("error")
    if kind is None:
        return answer.get("value")
    message = str(answer.get("message", ""))
    if kind == "response":
        raise redis.ResponseError(message)
    if kind == "refused":
        raise IdempotencyPersistenceLayerError(message)
    raise redis.ConnectionError(message)


def record_key(function: str, key: Any, scope: str = HANDLER_SCOPE) -> str:
    """The Redis key of ``key``'s record for ``function``: the key's canonical JSON, hashed, so a
    key of any length or characters fits. ``scope`` is "handler" for :func:`idempotent`, the
    decorated function's ``module.qualname`` for :func:`idempotent_function`."""
    try:
        text = json.dumps(key, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as e:
        raise IdempotencyKeyError(f"the idempotency key {key!r:.100} is not JSON: {e}") from e
    digest = hashlib.sha256(f"{scope}\n{text}".encode()).hexdigest()
    return f"{KEY_PREFIX}{function}:{digest}"


def held_key(owner: str) -> str:
    return HELD_PREFIX + owner


def release_held(client: redis.Redis, owner: str) -> int:
    """Delete the claims that ``owner`` (a worker) still holds; returns how many.

    For a worker whose invocation was killed, or that died itself: its sandbox is gone, so its
    claims would otherwise block their keys until they expire.
    """
    released = _RELEASE_HELD(client, keys={"held": held_key(owner)}, args={"token_prefix": owner + "/"})
    return int(cast(int, released))


def _call(script: Callable[[dict[str, Any], dict[str, Any]], Any], keys: dict[str, Any], args: dict[str, Any],
          rkey: str) -> Any:
    try:
        return script(keys, args)
    except redis.ResponseError as e:
        if "WRONGTYPE" in str(e):
            raise IdempotencyRecordError(
                f"{rkey} holds something other than an idempotency record ({e}); nothing ran: "
                "inspect or delete that key") from e
        raise IdempotencyPersistenceLayerError(f"redis refused the idempotency record {rkey}: {e}") from e
    except redis.RedisError as e:
        raise IdempotencyPersistenceLayerError(f"redis unavailable for the idempotency record {rkey}: {e}") from e


def _stored(what: str, rkey: str, raw: bytes) -> Any:
    """The stored result of a completed record; or the error that the record calls for."""
    try:
        record = json.loads(raw)
        status = record["status"]
    except (ValueError, UnicodeDecodeError, TypeError, KeyError) as e:
        raise IdempotencyRecordError(
            f"{rkey} is not an idempotency record ({type(e).__name__}: {e}); nothing ran: "
            "inspect or delete that key") from e
    if status == INPROGRESS:
        started = record.get("started_at")
        since = f", claimed {time.time() - started:.1f} s ago" if isinstance(started, int | float) else ""
        raise IdempotencyAlreadyInProgressError(
            f"{what}: the same key is in progress in request {record.get('request_id')}{since}; try again later")
    if status == COMPLETED and "error" in record:
        raise IdempotencyResultError(str(record["error"]))
    if status == COMPLETED and "result" in record:
        log.info("%s: already completed by request %s; returning its stored result", what, record.get("request_id"))
        return record["result"]
    raise IdempotencyRecordError(f"{rkey} has an unknown status or no result ({status!r}); nothing ran: "
                                 "inspect or delete that key")


def _run_once(what: str, function: str, key: Any, scope: str, expires_after: int,
              context: InvocationContext, owner: str | None, body: Callable[[], Any]) -> Any:
    rkey = record_key(function, key, scope)
    claim_script, complete_script, release_script = _script("claim"), _script("complete"), _script("release")
    keys: dict[str, Any] = {"record": rkey, "held": [] if owner is None else [held_key(owner)]}
    token = f"{owner or 'local'}/{uuid.uuid4().hex}"
    request = context.aws_request_id
    claim = json.dumps({"status": INPROGRESS, "token": token, "request_id": request, "started_at": time.time()})
    # The claim lasts as long as the invocation may run: a killed one's claim frees itself.
    existing = _call(claim_script, keys, {"claim": claim, "ttl_ms": max(1, context.get_remaining_time_in_millis())},
                     rkey)
    if existing is not None:
        return _stored(what, rkey, existing)
    try:
        result = body()
    except BaseException:
        try:
            release_script(keys, {"token": token})
        except redis.RedisError as e:  # the body's own error matters more; the claim expires
            log.warning("%s: could not release the idempotency claim %s: %s", what, rkey, e)
        raise
    problem = None
    try:
        data = json.dumps({"status": COMPLETED, "result": result, "request_id": request, "completed_at": time.time()})
    except (TypeError, ValueError) as e:
        # The body ran: record that, so no delivery runs it again, and fail loudly.
        problem = (f"{what}: the result is not JSON ({e}); the body ran once and is recorded as done "
                   f"without a result (delete {rkey} to let it run again)")
        data = json.dumps({"status": COMPLETED, "error": problem, "request_id": request, "completed_at": time.time()})
    first = _call(complete_script, keys, {"token": token, "completed": data, "ttl": expires_after}, rkey)
    if problem is not None:
        raise IdempotencyResultError(problem)
    if first is not None:
        log.warning("%s: another invocation completed the same key first; its result stays stored", what)
    # What a replay returns is the JSON of the result; return that now too, so both are the same.
    return json.loads(data)["result"]


# -- keys ---------------------------------------------------------------------------------------


def _check_expiry(seconds: int) -> int:
    if isinstance(seconds, bool) or not isinstance(seconds, int) or seconds <= 0:
        raise IdempotencyError(f"expires_after_seconds must be a positive whole number, not {seconds!r}")
    return seconds


def _event_key(key: EventKey | None) -> Callable[[Any], Any] | None:
    if key is None:
        return None
    if isinstance(key, str):
        parts = key.split(".")
        if not all(parts):
            raise IdempotencyError(f"key {key!r} is not a path like 'order.id' or 'Records.0.messageId'")
        return lambda event: _follow(event, key, parts)
    if callable(key):
        return key
    raise IdempotencyError(f"key must be a path like 'order.id' or a callable, not {type(key).__name__}")


def _follow(event: Any, path: str, parts: list[str]) -> Any:
    value = event
    for part in parts:
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isascii() and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise IdempotencyKeyError(f"the event has no {path!r} (nothing at {part!r})")
    return value


def _key_of(what: str, pick: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    try:
        value = pick(*args, **kwargs)
    except IdempotencyKeyError:
        raise
    except Exception as e:
        raise IdempotencyKeyError(f"{what}: the key function failed: {type(e).__name__}: {e}") from e
    if value is None:
        raise IdempotencyKeyError(f"{what}: the idempotency key is None")
    return value


# -- the decorators -----------------------------------------------------------------------------


@overload
def idempotent(handler: Handler, /) -> Handler: ...


@overload
def idempotent(
    *, key: EventKey | None = None, expires_after_seconds: int = DEFAULT_EXPIRES_AFTER_SECONDS
) -> Callable[[Handler], Handler]: ...


def idempotent(
    handler: Handler | None = None, /, *, key: EventKey | None = None,
    expires_after_seconds: int = DEFAULT_EXPIRES_AFTER_SECONDS,
) -> Handler | Callable[[Handler], Handler]:
    """Run the decorated ``handler(event, context)`` once per key and function name.

    ``key``: None for the event id (``context.aws_request_id``, the same for every retry and
    redelivery of one event); a dotted path into the event (``"order.id"``,
    ``"Records.0.messageId"``); or a callable taking the event. ``expires_after_seconds``: how long
    a completed key's result is kept and returned instead of running the handler.

    Raises :class:`IdempotencyAlreadyInProgressError`, :class:`IdempotencyKeyError`,
    :class:`IdempotencyPersistenceLayerError`, :class:`IdempotencyRecordError` or
    :class:`IdempotencyResultError` (each fails the invocation), or what the handler raises.
    """
    expires = _check_expiry(expires_after_seconds)
    pick = _event_key(key)

    def decorate(fn: Handler) -> Handler:
        what = f"{fn.__module__}.{fn.__qualname__}"

        @functools.wraps(fn)
        def wrapper(event: Any, context: Any) -> Any:
            value = context.aws_request_id if pick is None else _key_of(what, pick, event)
            owner = _running.owner if _running is not None else None
            return _run_once(what, context.function_name, value, HANDLER_SCOPE, expires, context, owner,
                             lambda: fn(event, context))

        return cast(Handler, wrapper)

    return decorate if handler is None else decorate(handler)


@overload
def idempotent_function(fn: F, /) -> F: ...


@overload
def idempotent_function(
    *, key: Callable[..., Any] | None = None, expires_after_seconds: int = DEFAULT_EXPIRES_AFTER_SECONDS
) -> Callable[[F], F]: ...


def idempotent_function(
    fn: F | None = None, /, *, key: Callable[..., Any] | None = None,
    expires_after_seconds: int = DEFAULT_EXPIRES_AFTER_SECONDS,
) -> F | Callable[[F], F]:
    """Run the decorated function once per key, within the function (lambdalite's) that calls it.

    ``key``: a callable given the same arguments as the function; None for the arguments
    themselves (which must then be JSON). Results are kept ``expires_after_seconds``. It guards
    only inside an invocation that lambdalite runs; called anywhere else it raises
    :class:`IdempotencyError` rather than run unguarded. Raises what :func:`idempotent` raises.
    """
    expires = _check_expiry(expires_after_seconds)
    if key is not None and not callable(key):
        raise IdempotencyError(f"key must be a callable, not {type(key).__name__}")

    def decorate(f: F) -> F:
        what = f"{f.__module__}.{f.__qualname__}"

        @functools.wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            running = _running
            if running is None:
                raise IdempotencyError(f"{what}: an idempotent_function runs only inside a lambdalite invocation")
            value = [list(args), kwargs] if key is None else _key_of(what, key, *args, **kwargs)
            return _run_once(what, running.context.function_name, value, what, expires, running.context,
                             running.owner, lambda: f(*args, **kwargs))

        return cast(F, wrapper)

    return decorate if fn is None else decorate(fn)
