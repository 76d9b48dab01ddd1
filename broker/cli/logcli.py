"""``lambdalite logs NAME``: a function's invocation logs from the log store, like ``sam logs --tail``.

``--since`` (default 10m) picks where the history starts, ``--follow`` then waits for new
invocations (each shows up as it ends), ``--filter`` keeps the lines that hold a text,
``--request-id`` shows one invocation, ``--output json`` prints one JSON object a line.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import IO, Any

import redis

from broker import logstore, settings
from broker.errors import LogsError
from broker.logs import escape

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d|w)$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
BLOCK_MS = 1000  # how long one wait of --follow blocks before it looks again


def since_ms(text: str, now: float | None = None) -> int:
    """The epoch millisecond ``text`` names: a duration back from now (``30s``, ``10m``, ``2h``, ``1d``,
    ``1w``) or an ISO 8601 time (UTC unless it says otherwise); :class:`LogsError` otherwise."""
    now = time.time() if now is None else now
    match = _DURATION.match(text.strip())
    if match:
        return int((now - float(match.group(1)) * _UNIT[match.group(2)]) * 1000)
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise LogsError(f"--since {text!r}: not a duration (30s, 10m, 2h, 1d, 1w) nor an ISO 8601 time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def _stamp(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class Printer:
    """Writes the lines of entries in the chosen form, keeping those that hold ``text``."""

    def __init__(self, function: str, output: str, text: str | None, out: IO[str] = sys.stdout) -> None:
        self.function, self.output, self.text, self.out = function, output, text, out

    def show(self, entries: Iterable[logstore.Entry]) -> int:
        shown = 0
        for entry in entries:
            for at, line in entry.lines:
                if self.text is not None and self.text not in line:
                    continue
                if self.output == "json":
                    record: dict[str, Any] = {"timestamp": _stamp(at), "function": self.function,
                                              "requestId": entry.request_id, "message": line}
                    self.out.write(json.dumps(record) + "\n")
                else:  # a terminal: control characters escaped, tabs kept
                    self.out.write(f"{_stamp(at)} " + "\t".join(escape(p) for p in line.split("\t")) + "\n")
                shown += 1
        self.out.flush()
        return shown


def run(client: redis.Redis, function: str, since: str = "10m", follow: bool = False, text: str | None = None,
        request_id: str | None = None, output: str = "text", out: IO[str] = sys.stdout) -> int:
    """The command; returns its exit status. Ctrl-C ends ``--follow`` with status 0."""
    printer = Printer(function, output, text, out)
    try:
        if request_id is not None:
            return _one(client, function, request_id, follow, printer)
        after = None
        start = since_ms(since)
        while True:  # the history, a page at a time
            page = logstore.entries(client, function, since_ms=start if after is None else None, after=after)
            printer.show(page)
            if page:
                after = page[-1].id
            if len(page) < 1000:
                break
        if not follow:
            return 0
        cursor = {function: after or f"{start}-0"}
        while function in cursor:
            printer.show(e for _, e in logstore.follow(client, cursor, BLOCK_MS))
        return 1  # the key is not a stream (logged): nothing to follow
    except KeyboardInterrupt:
        return 0


def _one(client: redis.Redis, function: str, request_id: str, follow: bool, printer: Printer) -> int:
    cursor = {function: logstore.last_id(client, function)} if follow else {}
    entry = logstore.find(client, function, request_id)
    while entry is None and function in cursor:  # --follow: wait for the invocation to end
        entry = next((e for _, e in logstore.follow(client, cursor, BLOCK_MS) if e.request_id == request_id), None)
    if entry is None:
        raise LogsError(f"no log of request {request_id} for {function} (the store keeps each function's last "
                        f"{settings.current().logs_max_invocations:,} invocations for {logstore.KEEP // 86400} days)")
    printer.show([entry])
    return 0
