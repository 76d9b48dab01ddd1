"""DynamoDB Streams records built from captured SQLite row changes.

The capture triggers (:mod:`sources.sqlite.sqlite_capture`) store each row as a JSON object whose values
are JSON-safe encodings of SQLite's five storage classes: NULL, INTEGER and TEXT as themselves,
a finite REAL as a JSON number with 17 significant digits (exact), a BLOB as ``["B", hex]`` and
an infinite REAL as ``["R", "Inf"]``. This module turns those into DynamoDB's typed attribute
values: ``{"NULL": true}``, ``{"N": "42"}`` (numbers as strings, so 64-bit integers survive any
JSON reader), ``{"S": "..."}`` and ``{"B": base64}``.

SQLite has no booleans, maps or lists, so ``BOOL``, ``M`` and ``L`` never appear: a TEXT column
holding JSON stays a string. SQLite stores NaN as NULL, so a NaN arrives as ``{"NULL": true}``.
DynamoDB cannot hold an infinite number; an infinite REAL is sent as ``{"N": "Infinity"}`` (or
``"-Infinity"``), which is what the row really holds, and logged once per table and column.

DynamoDB numbers range over magnitudes from 1E-130 to 9.9999999999999999999999999999999999999E+125
(and zero). A finite REAL outside that range (``1e300``, ``5e-324``) has no ``N`` form that a
DynamoDB client accepts (boto3's ``TypeDeserializer`` raises ``Overflow`` or ``Underflow``, failing
the whole batch again and again), so it is sent as a string holding its shortest exact text,
``{"S": "1e+300"}``, and logged once per table and column. ``float(value)`` gives it back.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import math
from collections.abc import Mapping
from decimal import Decimal
from json.encoder import encode_basestring_ascii as _ascii
from typing import Any

from broker.environment import account, region
from broker.errors import ChangeFeedError

log = logging.getLogger(__name__)

EVENT_VERSION = "1.1"
EVENT_SOURCE = "aws:dynamodb"
SEQUENCE_DIGITS = 21  # as long as DynamoDB's own sequence numbers, so they also sort as strings

_warned: set[tuple[str, str]] = set()
_warned_range: set[tuple[tuple[str, str], str]] = set()
# DynamoDB's number range (its documentation, "Data types"): 38 digits, magnitudes 1E-130 to just below 1E+126
_SMALLEST = Decimal("1E-130")
_LARGEST = Decimal("9.9999999999999999999999999999999999999E+125")


def attribute(value: Any, where: tuple[str, str] = ("?", "?")) -> dict[str, Any]:
    """The DynamoDB typed attribute value for one captured SQLite value.

    ``where`` (table, column) only names the value in a log line. Raises :class:`ChangeFeedError`
    for something the triggers never write.
    """
    if value is None:
        return {"NULL": True}
    if isinstance(value, bool):  # JSON true/false: not written by the triggers, but honest
        return {"BOOL": value}
    if isinstance(value, int):
        return {"N": str(value)}
    if isinstance(value, float):
        return _real(value, where)
    if isinstance(value, str):
        return {"S": value}
    if isinstance(value, list) and len(value) == 2 and isinstance(value[1], str):
        tag, text = value
        if tag == "B":
            try:
                return {"B": base64.b64encode(binascii.unhexlify(text)).decode("ascii")}
            except (binascii.Error, ValueError) as e:
                raise ChangeFeedError(f"{where[0]}.{where[1]}: bad blob encoding: {e}") from e
        if tag == "R":
            try:
                number = float(text)
            except ValueError as e:
                raise ChangeFeedError(f"{where[0]}.{where[1]}: bad real encoding {text!r:.80}") from e
            return _real(number, where)
    raise ChangeFeedError(f"{where[0]}.{where[1]}: unexpected stored value {value!r:.80}")


def _real(number: float, where: tuple[str, str]) -> dict[str, Any]:
    if math.isfinite(number):
        text = repr(number)
        if number == 0 or _SMALLEST <= abs(Decimal(text)) <= _LARGEST:
            return {"N": text}
        return _out_of_range(text, where)
    if math.isnan(number):  # SQLite stores NaN as NULL: the triggers never write one
        raise ChangeFeedError(f"{where[0]}.{where[1]}: unexpected NaN")
    return _infinite(number, where)


def _out_of_range(text: str, where: tuple[str, str]) -> dict[str, Any]:
    if (where, "range") not in _warned_range:
        _warned_range.add((where, "range"))
        log.warning(
            "%s.%s holds a REAL outside DynamoDB's number range (e.g. %s); such values are sent as "
            "strings, {\"S\": \"%s\"}", where[0], where[1], text, text,
        )
    return {"S": text}


def _infinite(number: float, where: tuple[str, str]) -> dict[str, Any]:
    if where not in _warned:
        _warned.add(where)
        log.warning(
            "%s.%s holds an infinite REAL, which DynamoDB cannot represent; sent as {\"N\": \"%s\"}",
            where[0], where[1], "Infinity" if number > 0 else "-Infinity",
        )
    return {"N": "Infinity" if number > 0 else "-Infinity"}


def image(row: Mapping[str, Any], table: str) -> dict[str, dict[str, Any]]:
    """A whole row (column -> captured value) as a DynamoDB item."""
    return _item(row, table)[0]


def _item(row: Mapping[str, Any], table: str) -> tuple[dict[str, dict[str, Any]], int]:
    """:func:`image`, and the length of its compact ASCII JSON, counted rather than encoded."""
    item: dict[str, dict[str, Any]] = {}
    size = 1 + len(row) if row else 2  # the braces and the commas between members
    for column, value in row.items():
        kind = type(value)  # the common kinds first, without attribute()'s checks in turn
        if kind is str:
            item[column] = {"S": value}
            size += len(_ascii(column)) + len(_ascii(value)) + 7  # "column":{"S":"value"}
        elif kind is int:
            text = str(value)
            item[column] = {"N": text}
            size += len(_ascii(column)) + len(text) + 9  # "column":{"N":"text"}
        elif value is None:
            item[column] = {"NULL": True}
            size += len(_ascii(column)) + 14  # "column":{"NULL":true}
        else:
            typed = item[column] = attribute(value, (table, column))
            ((name, inner),) = typed.items()  # "column":{"name":inner}, inner a string or a boolean
            size += len(_ascii(column)) + len(name) + 6 + (
                len(_ascii(inner)) if type(inner) is str else 4 if inner is True else 5)
    return item, size


def sequence_number(change_id: int) -> str:
    """The record's SequenceNumber: the change id, zero-padded so strings sort numerically."""
    return str(change_id).zfill(SEQUENCE_DIGITS)


def stream_arn(database: str, table: str) -> str:
    """A stable, fake stream ARN for one table of one database file (by its absolute path)."""
    label = hashlib.sha256(database.encode()).hexdigest()[:16]
    return f"arn:aws:dynamodb:{region()}:{account()}:table/{table}/stream/{label}"


def record(
    *,
    change_id: int,
    event_name: str,
    keys: Mapping[str, Any],
    old: Mapping[str, Any] | None,
    new: Mapping[str, Any] | None,
    created: float,
    view: str,
    table: str,
    arn: str,
) -> dict[str, Any]:
    """One DynamoDB Streams record. ``keys``/``old``/``new`` hold captured (untyped) values.

    Which images appear follows ``view`` (StreamViewType) and the event: an INSERT has no old
    image, a REMOVE no new one. Raises :class:`ChangeFeedError` for a value the triggers never write.
    """
    # SizeBytes: the length of the compact JSON of [Keys, NewImage, OldImage] (an absent image is
    # null), counted as the images are built rather than encoded (which took half of a record's time).
    item, size = _item(keys, table)
    body: dict[str, Any] = {"ApproximateCreationDateTime": round(created, 3), "Keys": item}
    if new is not None and view in ("NEW_IMAGE", "NEW_AND_OLD_IMAGES"):
        body["NewImage"], extra = _item(new, table)
        size += extra - 4
    if old is not None and view in ("OLD_IMAGE", "NEW_AND_OLD_IMAGES"):
        body["OldImage"], extra = _item(old, table)
        size += extra - 4
    sequence = sequence_number(change_id)
    body["SequenceNumber"] = sequence
    body["SizeBytes"] = size + 12  # [ , , ] and two nulls, less 4 for each image there
    body["StreamViewType"] = view
    return {
        "eventID": hashlib.md5(f"{arn}/{sequence}".encode()).hexdigest(),  # noqa: S324 - an id, not security
        "eventName": event_name,
        "eventVersion": EVENT_VERSION,
        "eventSource": EVENT_SOURCE,
        "awsRegion": region(),
        "dynamodb": body,
        "eventSourceARN": arn,
    }
