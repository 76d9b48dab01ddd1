"""The Invoke API's caller check: SigV4 access keys, a bearer token, or (on loopback only) nobody.

:meth:`Callers.check_headers` runs before the body is read and settles a bearer token at once;
a SigV4 request then needs :meth:`Callers.check_body` over the body it signed. Both raise
:class:`CallerAuthError` carrying Lambda's error type; :func:`refusal` is its 403 reply.
:func:`guard` builds the check and refuses, with one line, to serve beyond loopback
without credentials.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from broker.errors import ConfigError
from sources.http.errors import CallerAuthError
from sources.http.sigv4 import UNRECOGNIZED, Signed, SigV4

_INVALID_TOKEN = "The security token included in the request is invalid."


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Callers:
    """Who may call: ``token`` (bearer) and/or ``sigv4`` (access keys); neither means anyone."""

    token: str = ""
    sigv4: SigV4 | None = None

    @property
    def open(self) -> bool:
        return not self.token and self.sigv4 is None

    def check_headers(self, headers: dict[str, str]) -> Signed | None:
        """None when the caller is let in already; a :class:`Signed` to finish with
        :meth:`check_body`; raises :class:`CallerAuthError`."""
        if self.open:
            return None
        authorization = headers.get("authorization", "")
        scheme, _, given = authorization.partition(" ")
        if self.token and scheme.lower() == "bearer":
            if hmac.compare_digest(given.strip().encode(), self.token.encode()):
                return None
            raise CallerAuthError(UNRECOGNIZED, _INVALID_TOKEN)
        if self.sigv4 is None:
            raise CallerAuthError(UNRECOGNIZED, _INVALID_TOKEN)
        return self.sigv4.parse(authorization, headers.get("x-amz-date", ""))

    def check_body(self, signed: Signed | None, scope: MutableMapping[str, Any], body: bytes) -> None:
        if signed is None or self.sigv4 is None:
            return
        self.sigv4.verify(signed, scope["method"], scope.get("raw_path") or scope["path"].encode(),
                          scope.get("query_string", b""), scope["headers"], body)


def refusal(e: CallerAuthError) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Lambda's 403 for a refused caller: the type in ``X-Amzn-ErrorType``, ``{"message"}`` as body."""
    return 403, [(b"x-amzn-errortype", e.error_type.encode())], json.dumps({"message": e.message}).encode()


def guard(host: str, token: str = "", keys: dict[str, str] | None = None,
          clock: Callable[[], float] = time.time) -> Callers:
    """The caller check for these settings; raises ConfigError (one line) for a server beyond
    loopback that would let anyone in. botocore is imported only when there are keys."""
    callers = Callers(token, SigV4(keys, clock) if keys else None)
    if callers.open and not is_loopback(host):
        raise ConfigError(f"LAMBDALITE_HTTP_HOST={host} is not loopback and no credentials are configured: "
                          "set LAMBDALITE_ACCESS_KEYS (SigV4, for boto3 and the AWS CLI), "
                          "LAMBDALITE_ACCESS_KEYS_FILE or LAMBDALITE_HTTP_TOKEN")
    return callers
