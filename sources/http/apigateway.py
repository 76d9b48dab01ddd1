"""API Gateway HTTP API, payload format 2.0: the event a handler receives, and its response.

:func:`request_event` builds the event from a request exactly as API Gateway lays it out
(lower-case headers with repeated ones comma-joined, ``cookies`` split out of ``Cookie``,
``queryStringParameters`` comma-joined, ``body`` base64-encoded when it is not text).
:func:`response_from_result` turns a handler's return value into a response as API Gateway does:
a dict with ``statusCode`` gives ``statusCode``/``headers``/``cookies``/``body``/``isBase64Encoded``;
anything else becomes a 200 ``application/json`` response with the value as JSON (a string as is).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from broker.environment import account

_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_FRAMING = ("content-length", "transfer-encoding", "connection")  # the server's to set
API_ID = "lambdalite"
_TEXT_TYPES = ("text/", "application/json", "application/xml", "application/javascript",
               "application/x-www-form-urlencoded", "+json", "+xml")


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """What goes back on the wire."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


INTERNAL_ERROR = HttpResponse(
    500, [("content-type", "application/json")], b'{"message":"Internal Server Error"}'
)


def _is_text(content_type: str) -> bool:
    content_type = content_type.lower()
    return not content_type or any(t in content_type for t in _TEXT_TYPES)


def request_event(
    *,
    method: str,
    path: str,
    query_string: bytes,
    headers: Iterable[tuple[bytes, bytes]],
    body: bytes,
    route_key: str,
    path_parameters: dict[str, str],
    request_id: str,
    source_ip: str,
    http_version: str = "1.1",
    now: float | None = None,
) -> dict[str, Any]:
    """The payload-format-2.0 event for one request."""
    now = time.time() if now is None else now
    joined: dict[str, str] = {}
    cookies: list[str] = []
    for raw_name, raw_value in headers:
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        if name == "cookie":
            cookies.extend(c.strip() for c in value.split(";") if c.strip())
            continue
        joined[name] = f"{joined[name]},{value}" if name in joined else value
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": path,
        "rawQueryString": query_string.decode("latin-1"),
        "headers": joined,
    }
    if cookies:
        event["cookies"] = cookies
    params: dict[str, str] = {}
    for key, value in parse_qsl(event["rawQueryString"], keep_blank_values=True):
        params[key] = f"{params[key]},{value}" if key in params else value
    if params:
        event["queryStringParameters"] = params
    host = joined.get("host", "localhost")
    event["requestContext"] = {
        "accountId": account(),
        "apiId": API_ID,
        "domainName": host,
        "domainPrefix": host.split(".")[0],
        "http": {
            "method": method,
            "path": path,
            "protocol": f"HTTP/{http_version}",
            "sourceIp": source_ip,
            "userAgent": joined.get("user-agent", ""),
        },
        "requestId": request_id,
        "routeKey": route_key,
        "stage": "$default",
        "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
        "timeEpoch": int(now * 1000),
    }
    if path_parameters:
        event["pathParameters"] = path_parameters
    encoded = False
    if body:
        text = None
        if _is_text(joined.get("content-type", "")):
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError:
                text = None
        encoded = text is None
        event["body"] = base64.b64encode(body).decode() if encoded else text
    event["isBase64Encoded"] = encoded
    return event


def _valid_header(name: str, value: str) -> bool:
    """No CR/LF (header injection), only latin-1, a token for a name."""
    if not _TOKEN.match(name) or "\r" in value or "\n" in value:
        return False
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


def _utf8(text: str) -> bytes | None:
    """The body bytes of a text, or None for a text with lone surrogates (no UTF-8 form)."""
    try:
        return text.encode()
    except UnicodeEncodeError:
        return None


def _json_response(value: Any) -> HttpResponse:
    try:
        body = _utf8(value) if isinstance(value, str) else json.dumps(value, separators=(",", ":")).encode()
    except (TypeError, ValueError):
        return INTERNAL_ERROR
    return INTERNAL_ERROR if body is None else HttpResponse(200, [("content-type", "application/json")], body)


def response_from_result(result: Any) -> HttpResponse:
    """API Gateway's reading of a handler's return value; a malformed one is a 500, as there."""
    if not isinstance(result, dict) or "statusCode" not in result:
        return _json_response(result)
    status = result["statusCode"]
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
        return INTERNAL_ERROR
    headers: list[tuple[str, str]] = []
    raw_headers = result.get("headers") or {}
    if not isinstance(raw_headers, dict):
        return INTERNAL_ERROR
    for name, value in raw_headers.items():
        if str(name).lower() not in _FRAMING:
            headers.append((str(name).lower(), str(value)))
    cookies = result.get("cookies") or []
    if not isinstance(cookies, list):
        return INTERNAL_ERROR
    headers.extend(("set-cookie", str(c)) for c in cookies)
    if not all(_valid_header(name, value) for name, value in headers):
        return INTERNAL_ERROR
    body = result.get("body")
    if body is None:
        raw = b""
    elif not isinstance(body, str):
        try:
            raw = json.dumps(body, separators=(",", ":")).encode()
        except (TypeError, ValueError):
            return INTERNAL_ERROR
    elif result.get("isBase64Encoded"):
        try:
            raw = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            return INTERNAL_ERROR
    else:
        text = _utf8(body)
        if text is None:
            return INTERNAL_ERROR
        raw = text
    return HttpResponse(status, headers, raw)
