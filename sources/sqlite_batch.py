"""A SQLite stream's batch as its function sees it: DynamoDB Streams records in one event, and
which of them the handler reported failed.

Each change is converted on its own (:mod:`sources.dynamodb`): one that cannot be is logged and
skipped, never the batch. The records are encoded to JSON once (:func:`to_json`), and that text
serves both the job's payload and the cursor (:mod:`sources.sqlite_cursor`). A handler's
``{"batchItemFailures": [...]}`` is read as Lambda reads it (:func:`first_failure`).
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

import orjson

from broker.envelope import Event
from broker.errors import ChangeFeedError
from broker.queues import Prepared, Publisher
from sources import dynamodb, sqlite_capture

if TYPE_CHECKING:
    from sources.sqlite_stream import Stream

log = logging.getLogger("lambdalite.sqlite")


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
