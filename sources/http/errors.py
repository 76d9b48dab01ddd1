"""The errors only the HTTP source raises, each answered with its HTTP status; part of the one hierarchy
(:class:`broker.errors.LambdaliteError`)."""

from __future__ import annotations

from broker.errors import LambdaliteError


class SignatureError(LambdaliteError):
    """Raised when an HTTP request fails its webhook trigger's authentication (answered with 401).

    The message says what was wrong and never contains the secret.
    """


class ThrottledError(LambdaliteError):
    """Raised when a source already holds as many accepted-but-unstored events as it allows (429)."""


class IdempotencyConflictError(LambdaliteError):
    """Raised when another request with the same idempotency key is still being stored (409)."""


class PayloadTooLargeError(LambdaliteError):
    """Raised while reading an HTTP body that exceeds its limit (answered with 413)."""


class CallerAuthError(LambdaliteError):
    """Raised by the HTTP source when a caller of the Invoke API is not authenticated (no, a
    malformed, a wrong or an expired signature, or an unknown key): ``error_type`` is Lambda's
    error type for it (sent as ``X-Amzn-ErrorType`` with status 403)."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message
