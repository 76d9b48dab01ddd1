"""S3 event notification records, shaped exactly as S3 sends them to Lambda.

One extra field, ``s3.object.localPath``, carries the object's absolute path on this machine so a
handler can open the file without rebuilding it from the bucket root. Keys are URL-encoded as S3
encodes them in notifications (``red flower.jpg`` -> ``red+flower.jpg``), so
``urllib.parse.unquote_plus(record["s3"]["object"]["key"])`` gives the key back.
"""

from __future__ import annotations

import base64
import os
import secrets
import threading
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote_plus, unquote_plus

CREATED_PUT = "ObjectCreated:Put"
CREATED_COPY = "ObjectCreated:Copy"
REMOVED_DELETE = "ObjectRemoved:Delete"

OWNER = "lambdalite"  # bucket owner and principal of a removal (the remover is unknown locally)
SOURCE_IP = "127.0.0.1"


def encode_key(key: str) -> str:
    """A key as S3 writes it into a notification: URL-encoded, space as ``+``, ``/`` kept."""
    return quote_plus(key, safe="/")


def decode_key(encoded: str) -> str:
    """The inverse of :func:`encode_key` (what handler code does with ``unquote_plus``)."""
    return unquote_plus(encoded)


def event_matches(pattern: str, event_name: str) -> bool:
    """Whether a trigger's type (``s3:ObjectCreated:*``) covers ``event_name`` (``ObjectCreated:Put``)."""
    if pattern.endswith(":*"):
        return ("s3:" + event_name).startswith(pattern[:-1])
    return pattern == "s3:" + event_name


def event_time(epoch: float) -> str:
    """ISO-8601 in UTC with milliseconds and ``Z``, as S3's ``eventTime``."""
    stamp = datetime.fromtimestamp(epoch, UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


class Sequencer:
    """S3's ``sequencer``: a hex string that grows for every later event on the same key.

    It is the wall clock in nanoseconds, forced to grow by at least one per event within a
    process; 18 upper-case hex digits like S3's, so later events also sort later as strings.
    """

    def __init__(self) -> None:
        self._last = 0
        self._lock = threading.Lock()

    def next(self) -> str:
        with self._lock:
            self._last = max(self._last + 1, time.time_ns())
            return f"{self._last:018X}"


def _request_ids() -> dict[str, str]:
    return {
        "x-amz-request-id": secrets.token_hex(8).upper(),
        "x-amz-id-2": base64.b64encode(os.urandom(48)).decode(),
    }


def record(
    *,
    event_name: str,
    bucket: str,
    key: str,
    sequencer: str,
    local_path: str,
    configuration_id: str,
    region: str,
    when: float,
    principal: str = OWNER,
    size: int | None = None,
    etag: str | None = None,
) -> dict[str, Any]:
    """One ``Records[]`` entry. ``size`` and ``etag`` are given for created objects only."""
    obj: dict[str, Any] = {"key": encode_key(key)}
    if size is not None:
        obj["size"] = size
    if etag is not None:
        obj["eTag"] = etag
    obj["sequencer"] = sequencer
    obj["localPath"] = local_path
    return {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": region,
        "eventTime": event_time(when),
        "eventName": event_name,
        "userIdentity": {"principalId": principal},
        "requestParameters": {"sourceIPAddress": SOURCE_IP},
        "responseElements": _request_ids(),
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": configuration_id,
            "bucket": {
                "name": bucket,
                "ownerIdentity": {"principalId": OWNER},
                "arn": f"arn:aws:s3:::{bucket}",
            },
            "object": obj,
        },
    }


def notification(*records: dict[str, Any]) -> dict[str, Any]:
    """The event a handler receives: ``{"Records": [...]}``."""
    return {"Records": list(records)}
