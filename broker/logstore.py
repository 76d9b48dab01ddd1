"""Each function's invocation logs in Redis, bounded, readable from any host that shares the Redis.

One stream entry per invocation (``lambdalite:logs:<function>``, fields ``r``: the request id,
``l``: its lines as JSON ``[[epoch_ms, text], ...]``): the START line, what the handler wrote to
stdout and stderr, END and REPORT. The worker queues the write (:func:`record`) in the transaction
that records the invocation's outcome, so it costs no round trip of its own, and a reader that sees
an outcome finds its lines too. Bounds: the stream keeps about ``LAMBDALITE_LOGS_MAX_INVOCATIONS``
entries (``XADD MAXLEN ~``), an entry holds at most ``LAMBDALITE_LOGS_MAX_INVOCATION_BYTES`` of text
(the middle of a longer output is left out, with a line saying how much), and both keys expire
:data:`KEEP` seconds after a function's last invocation.

A request id is found among all those entries in two lookups: ``lambdalite:logs-index:<function>``
is a sorted set of request ids scored by their entry's millisecond, trimmed to the stream's size;
the entries of that millisecond are then read and the one with the id picked.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import redis

from broker import quarantine, scripts, settings

log = logging.getLogger(__name__)

MAX_LINE_BYTES = 4_096  # one line longer than this is cut
KEEP = 30 * 24 * 3600  # seconds a function's logs outlive its last invocation
_INDEX_SLACK = 128  # the stream holds up to a node (100 entries) beyond its cap; so may the index
_HEAD_SHARE = 0.25  # of an over-long invocation's budget, what goes to its first lines (the rest: its last)


def stream_key(function: str) -> str:
    return f"lambdalite:logs:{function}"


def index_key(function: str) -> str:
    return f"lambdalite:logs-index:{function}"


_RECORD = scripts.load("logs_record")  # broker/lua/logs_record.lua


def now_ms() -> int:
    return int(time.time() * 1000)


class Lines:
    """An invocation's lines as they are written, within ``budget`` bytes (default: the setting).

    The first lines are kept up to a quarter of the budget, then the last lines in the rest; what
    falls between is counted and stands as one line in :meth:`items`. Memory stays bounded however
    much a handler prints.
    """

    def __init__(self, budget: int | None = None) -> None:
        self.budget = settings.current().logs_max_invocation_bytes if budget is None else budget
        self._head: list[tuple[int, str]] = []
        self._head_bytes = 0
        self._tail: deque[tuple[int, str, int]] = deque()
        self._tail_bytes = 0
        self._dropped_lines = self._dropped_bytes = 0

    def add(self, text: str, at: int | None = None) -> None:
        size = len(text.encode("utf-8", "surrogateescape"))
        if size > MAX_LINE_BYTES:
            text = _cut(text, MAX_LINE_BYTES) + f" [{size - MAX_LINE_BYTES} more bytes]"
            size = len(text.encode("utf-8", "surrogateescape"))
        item = (now_ms() if at is None else at, text)
        if not self._tail and self._head_bytes + size <= self.budget * _HEAD_SHARE:
            self._head.append(item)
            self._head_bytes += size
            return
        self._tail.append((*item, size))
        self._tail_bytes += size
        while self._tail and self._head_bytes + self._tail_bytes > self.budget:
            _, _, gone = self._tail.popleft()
            self._tail_bytes -= gone
            self._dropped_lines += 1
            self._dropped_bytes += gone

    def items(self) -> list[tuple[int, str]]:
        """The lines kept, in order, with one line in place of those left out."""
        out = list(self._head)
        if self._dropped_lines:
            at = self._tail[0][0] if self._tail else out[-1][0]
            out.append((at, f"[lambdalite: {self._dropped_lines} line(s), {self._dropped_bytes} bytes of output "
                            "left out here]"))
        out.extend((at, text) for at, text, _ in self._tail)
        return out

    def __len__(self) -> int:
        return len(self._head) + len(self._tail)


def _cut(text: str, limit: int) -> str:
    return text.encode("utf-8", "surrogateescape")[:limit].decode("utf-8", "ignore")


def record(pipe: Any, function: str, request_id: str, lines: Iterable[tuple[int, str]],
           cap: int | None = None) -> None:
    """Queue on ``pipe`` the write of one invocation's lines, the stream capped at ``cap`` entries
    (default: the setting). One script: no write of it can fail on a key of the wrong type
    (:func:`broker.quarantine.report` tells of what it moved)."""
    if cap is None:
        cap = settings.current().logs_max_invocations
    data = orjson.dumps([[at, text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")]
                         for at, text in lines])
    stream, index, at = stream_key(function), index_key(function), quarantine.stamp()
    _RECORD.queue(pipe, keys={"stream": stream, "index": index, "stream_aside": quarantine.aside(stream, at),
                              "index_aside": quarantine.aside(index, at)},
                  args={**quarantine.move_args(), "request_id": request_id, "lines": data, "cap": cap,
                        "index_cap": cap + _INDEX_SLACK, "keep": KEEP})


@dataclass(frozen=True, slots=True)
class Entry:
    """One invocation's lines as stored: the stream entry id, the request id, ``(epoch_ms, text)``."""

    id: str
    request_id: str
    lines: list[tuple[int, str]]

    @property
    def at(self) -> int:
        """The millisecond the entry was written (the invocation's end)."""
        return int(self.id.partition("-")[0])

    def text(self) -> str:
        return "".join(text + "\n" for _, text in self.lines)


def _entry(function: str, raw_id: bytes, fields: dict[bytes, bytes]) -> Entry | None:
    entry_id = raw_id.decode()
    try:
        request_id = fields[b"r"].decode()
        lines = [(int(at), str(text)) for at, text in orjson.loads(fields[b"l"])]
    except (KeyError, ValueError, TypeError, UnicodeDecodeError):
        log.warning("redis key %s: entry %s is not an invocation's log; skipped", stream_key(function), entry_id)
        return None
    return Entry(entry_id, request_id, lines)


def _read(client: redis.Redis, function: str, call: Any) -> Any:
    """``call()``, with a key of another type read as empty (logged once, naming the key)."""
    try:
        return call()
    except redis.ResponseError as e:
        if not quarantine.wrong_type(e):
            raise
        log.warning("%s; read as empty", quarantine.describe(client, stream_key(function), "stream"))
        return []


def entries(client: redis.Redis, function: str, since_ms: int | None = None, count: int = 1000,
            after: str | None = None) -> list[Entry]:
    """Up to ``count`` entries, oldest first: those written at or after ``since_ms``, or after the
    entry id ``after``."""
    start = f"({after}" if after else (str(since_ms) if since_ms is not None else "-")
    raw = _read(client, function, lambda: client.xrange(stream_key(function), start, "+", count=count))
    return [e for e in (_entry(function, i, f) for i, f in raw) if e is not None]


def last_id(client: redis.Redis, function: str) -> str:
    """The newest entry's id, or ``"0-0"``: where :func:`follow` starts to wait for new ones."""
    raw = _read(client, function, lambda: client.xrevrange(stream_key(function), "+", "-", count=1))
    return raw[0][0].decode() if raw else "0-0"


def follow(client: redis.Redis, functions: dict[str, str], block_ms: int = 1000) -> Iterator[tuple[str, Entry]]:
    """The entries written after the ids in ``functions`` (function -> entry id) within ``block_ms``,
    as ``(function, entry)``; advances those ids. Call it again to go on following."""
    streams = {stream_key(f): i for f, i in functions.items()}
    names = {stream_key(f): f for f in functions}
    try:
        replies: list[Any] = client.xread(streams, count=1000, block=block_ms) or []  # type: ignore[arg-type,assignment]
    except redis.ResponseError as e:
        if not quarantine.wrong_type(e):
            raise
        for key in names:
            if client.type(key) not in (b"stream", b"none"):
                log.warning("%s; not followed", quarantine.describe(client, key, "stream"))
                functions.pop(names[key])
        time.sleep(block_ms / 1000)
        return
    for key, items in replies:
        function = names[key.decode()]
        for raw_id, fields in items:
            functions[function] = raw_id.decode()
            entry = _entry(function, raw_id, fields)
            if entry is not None:
                yield function, entry


def find(client: redis.Redis, function: str, request_id: str) -> Entry | None:
    """The entry of ``request_id``, or None when the store does not hold it (never written, or
    older than what it keeps)."""
    try:
        score = client.zscore(index_key(function), request_id)
    except redis.ResponseError as e:
        if not quarantine.wrong_type(e):
            raise
        log.warning("%s; searched as empty", quarantine.describe(client, index_key(function), "zset"))
        return None
    if score is None:
        return None
    ms = int(score)
    start, end = f"{ms}-0", f"{ms}-18446744073709551615"
    while True:  # entries of one millisecond: usually a few, read a page at a time however many
        raw = _read(client, function, lambda s=start: client.xrange(stream_key(function), s, end, count=500))
        for raw_id, fields in raw:
            if fields.get(b"r") == request_id.encode():
                return _entry(function, raw_id, fields)
        if len(raw) < 500:
            return None
        start = "(" + raw[-1][0].decode()


def tail(client: redis.Redis, function: str, request_id: str, limit_bytes: int = 4096) -> str:
    """The last ``limit_bytes`` of ``request_id``'s log text (Lambda's ``LogType=Tail``: the
    Invoke API base64-encodes it into ``X-Amz-Log-Result``); empty when the store lacks it."""
    entry = find(client, function, request_id)
    if entry is None:
        return ""
    data = entry.text().encode()
    if len(data) <= limit_bytes:
        return data.decode()
    return data[-limit_bytes:].decode("utf-8", "ignore")  # a character cut in two is left out whole


def memory(client: redis.Redis, function: str) -> int:
    """Bytes Redis gives the function's two log keys (``MEMORY USAGE``, every element sampled)."""
    total = 0
    for key in (stream_key(function), index_key(function)):
        used = client.memory_usage(key, samples=0)
        total += int(used or 0)
    return total
