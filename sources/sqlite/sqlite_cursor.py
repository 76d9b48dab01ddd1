"""A SQLite stream's cursor: the Redis hash that says how far the feed got and what is in flight.

One hash per stream (:func:`cursor_key`): the last change id published (``last``), the last one
whose batch is done (``done``), the in-flight event id, its records and its retries, and the
database and table it follows. The feed writes it in the same transaction as the publish it
describes (or the worker does, applying a staged successor: :mod:`broker.successors`), and reads
it back when it (re)starts, making the most of a damaged one (:func:`read_cursor`). The in-flight
records are kept compressed (:func:`pack`).
"""

from __future__ import annotations

import hashlib
import json
import zlib
from pathlib import Path
from typing import Any


def cursor_key(function: str, database: Path, table: str) -> str:
    """The Redis hash holding one stream's cursor."""
    label = hashlib.sha256(f"{database}\0{table}".encode()).hexdigest()[:16]
    return f"lambdalite:sqlite:{function}:{table}:{label}"


def read_cursor(stored: dict[bytes, bytes]) -> tuple[dict[str, Any], list[str]]:
    """A stream's cursor from its Redis hash, and what in it could not be read.

    A field that cannot be read falls back to what still holds: ``last`` to ``done`` (or 0, the
    oldest change still in the table: changes are delivered again rather than lost); an in-flight
    batch whose records cannot be read is no longer waited for (the event itself still runs, or
    is dead-lettered, in the worker; only a partial-failure retry of it is lost).
    """
    problems: list[str] = []
    bad: set[str] = set()

    def text(name: str) -> str | None:
        raw = stored.get(name.encode())
        try:
            return None if raw is None else raw.decode()
        except UnicodeDecodeError:
            problems.append(f"field {name!r} is not UTF-8")
            bad.add(name)
            return None

    def number(name: str) -> int:
        raw = text(name)
        if raw is None or (raw.isascii() and raw.isdigit()):
            return int(raw or 0)
        problems.append(f"field {name!r} is {raw[:40]!r}, not a change id or count")
        bad.add(name)
        return 0

    done = number("done")
    last = number("last")
    if "last" in bad:
        last = done
        problems.append(f"carrying on after change {last}" if last else
                        "carrying on from the oldest change still in the table (delivered again: at least once)")
    retries = number("retries")
    event = text("event") or ""
    records: Any = []
    if event:
        try:
            raw = stored.get(b"records") or b""
            # compressed as the feed writes it (zlib's first byte is "x"), or JSON as it was once written
            records = json.loads(zlib.decompress(raw) if raw[:1] == b"x" else raw)
            if not (isinstance(records, list) and records and all(
                    isinstance(r, dict) and isinstance(r.get("dynamodb"), dict) and "SequenceNumber" in r["dynamodb"]
                    for r in records)):
                raise ValueError("not a list of records")
        except (ValueError, zlib.error) as e:
            problems.append(f"the records of in-flight batch {event} cannot be read ({e}); not waiting for its "
                            "outcome (the worker still runs it, or dead-letters it)")
            event, records, retries = "", [], 0
    return {"last": last, "done": done, "event": event, "records": records, "retries": retries}, problems


def pack(text: str) -> bytes:
    """Records' JSON as the cursor keeps it: compressed (a tenth of the size to copy and to append
    to Redis's log on every batch)."""
    return zlib.compress(text.encode(), 1)
