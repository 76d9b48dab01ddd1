"""The one error hierarchy. The CLI and every process entry point turn these into one line and exit 1."""

from __future__ import annotations


class LambdaliteError(Exception):
    """Base of every error lambdalite raises on purpose."""


class SettingsError(LambdaliteError):
    """Raised at start-up when a ``LAMBDALITE_*`` variable (or ``.env`` entry) is unknown or invalid."""


class StackRunningError(LambdaliteError):
    """Raised at start-up when another process of a stack already holds this process's lock in the
    same ``var/`` (a second ``make run`` in one folder)."""


class DependencyError(LambdaliteError):
    """Raised at start-up when an installed library whose internals lambdalite uses (rq, watchdog) is
    not the exact version it is pinned to (:mod:`broker.pins`)."""


class ConfigError(LambdaliteError):
    """Raised at start-up when ``lambdalite.toml`` is missing, unreadable or invalid.

    The message names the file, the function and the key.
    """


class UnknownFunctionError(LambdaliteError):
    """Raised when an event or a command names a function that is not in the registry."""


class EnvelopeError(LambdaliteError):
    """Raised when bytes that should hold an event envelope do not decode to one."""


class OutcomeError(LambdaliteError):
    """Raised when an entry of an outcome stream (``lambdalite:result:<id>``) does not decode to an outcome."""


class ScriptError(LambdaliteError):
    """Raised when a Lua script of ``broker/lua/`` has a malformed header, or a call names KEYS or ARGV
    its header does not (or misses one): a mistake in lambdalite's code, found at import or first call."""


class RedisUnavailableError(LambdaliteError):
    """Raised when Redis cannot be reached within the time a caller is willing to wait."""


class InvocationError(LambdaliteError):
    """Raised when a synchronous invocation cannot be completed (no result arrived in time)."""


class BucketsError(LambdaliteError):
    """Raised at start-up of the files source when ``LAMBDALITE_BUCKETS`` is not a folder."""


class ChangeFeedError(LambdaliteError):
    """Raised when a SQLite database or table cannot be captured (missing, not SQLite, locked),
    or when a captured change cannot be turned into a DynamoDB Streams record."""


class IdempotencyError(LambdaliteError):
    """Base of the errors of the handlers' idempotency helper (:mod:`broker.handler_api.idempotency`).

    Each one fails the invocation, so an asynchronous event is retried as after any failure.
    Raised at import time too, for a decorator given options it cannot use.
    """


class IdempotencyAlreadyInProgressError(IdempotencyError):
    """Raised when another invocation holds the key's claim and has not finished yet.

    The body does not run; a retry finds the stored result once that invocation completes, or
    runs the body if it failed or its claim expired.
    """


class IdempotencyKeyError(IdempotencyError):
    """Raised when the idempotency key cannot be taken from the event or the arguments (missing,
    None, or not JSON). The body does not run."""


class IdempotencyPersistenceLayerError(IdempotencyError):
    """Raised when Redis cannot be reached or refuses a command; the body never runs unguarded."""


class IdempotencyRecordError(IdempotencyError):
    """Raised when the key's record in Redis is not one the helper wrote (corrupt or foreign data).

    Nothing runs and the record is left as it is; the message names the Redis key to inspect or
    delete.
    """


class IdempotencyResultError(IdempotencyError):
    """Raised when the body's result is not JSON, so it cannot be stored.

    The body did run: the key is recorded as completed without a result, and deliveries within
    its expiry raise this error again instead of running the body a second time.
    """


class SandboxIdentityError(LambdaliteError):
    """Raised at start-up when ``LAMBDALITE_SANDBOX_USER`` names a user the machine does not know."""


class LogsError(LambdaliteError):
    """Raised by ``lambdalite logs`` for an option it cannot read (``--since`` that is no duration or
    time) or a request id the log store does not hold."""
