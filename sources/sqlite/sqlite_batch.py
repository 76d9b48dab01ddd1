"""A SQLite stream's batch as its function sees it: DynamoDB Streams records in one event, and
which of them the handler reported failed.

Each change is converted on its own (:mod:`sources.sqlite.dynamodb`): one that cannot be is logged and
skipped, never the batch. The records are encoded to JSON once (:func:`to_json`), and that text
serves both the job's payload and the cursor (:mod:`sources.sqlite.sqlite_cursor`). A handler's
``{"batchItemFailures": [...]}`` is read as Lambda reads it (:func:`first_failure`).

A batch is cut short where its payload would pass :data:`PAYLOAD_MAX`, Lambda's 6 MB limit on an
invocation's request (:func:`fit`): the records after the cut make the next batch. A record too
large to go even alone is dead-lettered alone with a ``RequestEntityTooLargeException`` error, as
Lambda answers such a request, and the stream goes on after it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from broker import deadletter
from broker.envelope import Event
from broker.errors import ChangeFeedError
from broker.queues import Prepared, Publisher
from sources.sqlite import dynamodb, sqlite_capture

if TYPE_CHECKING:
    from sources.sqlite.sqlite_stream import Stream

log = logging.getLogger("lambdalite.sqlite")

PAYLOAD_MAX = 6 * 1024 * 1024  # bytes: Lambda's limit on a synchronous invocation's request, as event
# source mappings invoke
_WRAP = len('{"Records": ') + len("[]") + len("}")  # the payload around the records' JSON
TOO_LARGE = "RequestEntityTooLargeException"


@dataclass(frozen=True)
class Fit:
    """What of a batch's records goes in one payload (:func:`fit`)."""

    records: list[dict[str, Any]]  # the records that go, in order (empty when the first is too large)
    text: str  # their JSON, as :func:`to_json` writes it
    last: int  # the last change they account for: the cursor after them
    too_large: dict[str, Any] | None  # the first record, when it alone passes the limit
    size: int = 0  # the too-large record's payload size, in bytes


def fit(records: list[dict[str, Any]], consumed: int, limit: int = PAYLOAD_MAX) -> Fit:
    """The records from the first on that fit in one payload of at most ``limit`` bytes.

    ``consumed`` is the last change the whole list accounts for; a cut moves it back to the last
    record that goes. When the first record alone does not fit, nothing goes and it is returned as
    ``too_large``, with the cursor just after it.
    """
    parts: list[str] = []
    total = _WRAP
    for i, record in enumerate(records):
        part = _encode(record)
        size = len(part.encode()) if not part.isascii() else len(part)
        if i == 0 and total + size > limit:
            return Fit([], "", change_id(record), record, total + size)
        if total + size + (1 if parts else 0) > limit:
            return Fit(records[:i], "[" + ",".join(parts) + "]", change_id(records[i - 1]), None)
        parts.append(part)
        total += size + (1 if len(parts) > 1 else 0)
    return Fit(records, "[" + ",".join(parts) + "]", consumed, None)


def change_id(record: dict[str, Any]) -> int:
    """The change a record was made of (its SequenceNumber)."""
    return int(record["dynamodb"]["SequenceNumber"])


def dead_letter_too_large(pipe: Any, stream: Stream, record: dict[str, Any], size: int) -> str:
    """Queue on ``pipe`` the commands that park a record too large for any payload, alone, as its
    function's dead letter; the error's message, as Lambda words it."""
    message = (f"Request must be smaller than {PAYLOAD_MAX} bytes for the InvokeFunction operation "
               f"(one record, change {seq(record)} of table {stream.table!r}, is {size} bytes)")
    event = Event(stream.function.name, payload={"Records": [record]}, source="sqlite", invocation_type="Event")
    deadletter.add(pipe, event, {"errorType": TOO_LARGE, "errorMessage": message}, "payload too large")
    return message


def records(stream: Stream, changes: list[sqlite_capture.Change]) -> list[dict[str, Any]]:
    """The DynamoDB Streams records of ``changes``; a change that cannot be converted is logged and left out."""
    converted = []
    view, table, arn = stream.trigger.view, stream.table, stream.arn
    for change in changes:
        try:
            converted.append(dynamodb.record(
                change_id=change.id, event_name=change.event_name, keys=change.keys, old=change.old,
                new=change.new, created=change.at, view=view, table=table, arn=arn,
            ))
        except ChangeFeedError as e:
            log.error("%s: change %d skipped: %s", table, change.id, e)
    return converted


def job(publisher: Publisher, stream: Stream, records: list[dict[str, Any]], text: str) -> Prepared:
    """The batch's event and job; ``text`` (the records' JSON, also the cursor's) is encoded once."""
    event = Event(stream.function.name, payload={"Records": records}, source="sqlite", invocation_type="Event")
    return publisher.prepare(event, payload_json='{"Records": ' + text + "}")


def _encode(record: dict[str, Any]) -> str:
    try:
        return orjson.dumps(record).decode()
    except orjson.JSONEncodeError:
        return json.dumps(record, allow_nan=False)


def to_json(records: list[dict[str, Any]]) -> str:
    """The records as strict JSON text, for the cursor and the job.

    orjson takes a tenth of the standard library's time here. Records hold no float but a finite
    ApproximateCreationDateTime (numbers are strings), so orjson's writing NaN as null cannot
    arise; what it refuses (a lone surrogate from a change row written by hand) goes to json.
    """
    try:
        return orjson.dumps(records).decode()
    except orjson.JSONEncodeError:
        return json.dumps(records, allow_nan=False)


def seq(record: dict[str, Any]) -> str:
    """A record's sequence number without its leading zeros, for the log."""
    return str(record["dynamodb"]["SequenceNumber"]).lstrip("0") or "0"


def first_failure(result: Any, records: list[dict[str, Any]]) -> int | None:
    """Index of the first record a ReportBatchItemFailures response names, or None for success.

    As Lambda does, an identifier that is missing, empty or not in the batch fails the whole batch.
    """
    if not isinstance(result, dict) or not result.get("batchItemFailures"):
        return None
    failures = result["batchItemFailures"]
    index = {r["dynamodb"]["SequenceNumber"]: i for i, r in enumerate(records)}
    found = []
    if isinstance(failures, list):
        for item in failures:
            ident = item.get("itemIdentifier") if isinstance(item, dict) else None
            if not isinstance(ident, str) or ident not in index:
                return 0
            found.append(index[ident])
    return min(found) if found else 0
