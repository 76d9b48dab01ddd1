"""The manifest: what the files source has already published, kept in Redis.

One hash per bucket, ``lambdalite:files:manifest:BUCKET``, maps each key to
``SIZE:MTIME_NS:ETAG`` of the version last published. It is written in the same transaction as
the events it accounts for (a MULTI/EXEC for a scan's batch; for one closed file, one script that
also checks that this version is not published already), so after a crash or a Redis outage a
scan against it publishes exactly what was missed: a file absent from the manifest (or changed)
once, and a manifest entry whose file is gone as one removal.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import redis

from broker import quarantine, scripts
from broker.conditional import Conditional

log = logging.getLogger("lambdalite.files")

PREFIX = "lambdalite:files:manifest:"


@dataclass(frozen=True, slots=True)
class Entry:
    """One published version of an object."""

    size: int
    mtime_ns: int
    etag: str

    def encode(self) -> str:
        return f"{self.size}:{self.mtime_ns}:{self.etag}"

    @classmethod
    def decode(cls, raw: bytes | str) -> Entry | None:
        """The entry, or None for a value this version cannot read (it is then treated as absent)."""
        try:
            text = raw.decode() if isinstance(raw, bytes) else raw
            size, mtime_ns, etag = text.split(":", 2)
            return cls(int(size), int(mtime_ns), etag)
        except ValueError:
            return None

    def same_stat(self, size: int, mtime_ns: int) -> bool:
        return self.size == size and self.mtime_ns == mtime_ns


# c[1]: a manifest, c[2]: a key, c[3]: "SIZE:MTIME_NS:" of a version of its object. Holds unless
# that version is published already (broker/lua/manifest_unpublished.lua).
_UNPUBLISHED = Conditional(scripts.load("manifest_unpublished"))


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class Manifest:
    """Reads the manifest; writes go through :meth:`put` / :meth:`remove` on a transaction.

    What it cannot read is logged with the key and read as "not published": an entry that is not
    ``SIZE:MTIME_NS:ETAG`` (its object is published again), a field that is not a UTF-8 key
    (removed: no object can have it), a manifest key of another type (moved aside; its bucket's
    objects are published again at the next scan). At least once, never lost.
    """

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    @staticmethod
    def hash_key(bucket: str) -> str:
        return PREFIX + bucket

    def get(self, bucket: str, key: str) -> Entry | None:
        hash_key = self.hash_key(bucket)
        try:
            raw = self.client.hget(hash_key, key)
        except redis.ResponseError as e:
            if not (quarantine.wrong_type(e) and quarantine.repair(self.client, {hash_key: "hash"})):
                raise
            return None
        if raw is None:
            return None
        entry = Entry.decode(raw)
        if entry is None:
            log.warning("redis key %s: the entry of %r is %r, not SIZE:MTIME_NS:ETAG; read as not published",
                        hash_key, key, raw[:60])
        return entry

    def entries(self, bucket: str, prefix: str = "") -> Iterator[tuple[str, Entry | None]]:
        """Every ``(key, entry)`` of a bucket whose key starts with ``prefix``."""
        hash_key = self.hash_key(bucket)
        match = _glob_escape(prefix) + "*" if prefix else None
        unreadable: list[str] = []
        try:
            for field, raw in self.client.hscan_iter(hash_key, match=match, count=1000):
                try:
                    key = field.decode()
                except UnicodeDecodeError:
                    log.warning("redis key %s: field %r is not a UTF-8 object key; removed", hash_key, field[:60])
                    self.client.hdel(hash_key, field)
                    continue
                entry = Entry.decode(raw)
                if entry is None:
                    unreadable.append(key)
                yield key, entry
        except redis.ResponseError as e:
            if not (quarantine.wrong_type(e) and quarantine.repair(self.client, {hash_key: "hash"})):
                raise
        if unreadable:
            log.warning("redis key %s: %d entr%s not SIZE:MTIME_NS:ETAG (first: %r); read as not published",
                        hash_key, len(unreadable), "y is" if len(unreadable) == 1 else "ies are", unreadable[0])

    def buckets(self) -> set[str]:
        """Every bucket that has a manifest (some may no longer have a folder)."""
        names = set()
        for raw in self.client.scan_iter(match=PREFIX + "*", count=1000):
            try:
                names.add(raw.decode()[len(PREFIX) :])
            except UnicodeDecodeError:
                log.warning("redis key %r is not a manifest of a bucket (not UTF-8); left alone", raw[:80])
        return names

    @classmethod
    def unpublished(cls, bucket: str, key: str, entry: Entry) -> tuple[Conditional, list[str], list[str]]:
        """The condition, and its arguments, that this version of an object (its size and mtime) is
        not in the manifest yet: writes made under it publish one version once (see
        :meth:`broker.queues.Publisher.publish_if`). An entry this version cannot read does not
        count (the object is published again)."""
        return _UNPUBLISHED, [cls.hash_key(bucket)], [key, f"{entry.size}:{entry.mtime_ns}:"]

    @classmethod
    def put(cls, pipe: Any, bucket: str, key: str, entry: Entry) -> None:
        pipe.hset(cls.hash_key(bucket), key, entry.encode())

    @classmethod
    def remove(cls, pipe: Any, bucket: str, key: str) -> None:
        pipe.hdel(cls.hash_key(bucket), key)
