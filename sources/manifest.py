"""The manifest: what the files source has already published, kept in Redis.

One hash per bucket, ``lambdalite:files:manifest:BUCKET``, maps each key to
``SIZE:MTIME_NS:ETAG`` of the version last published. It is written in the same MULTI/EXEC
transaction as the events it accounts for, so after a crash or a Redis outage a scan against it
publishes exactly what was missed: a file absent from the manifest (or changed) once, and a
manifest entry whose file is gone as one removal.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import redis

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
        text = raw.decode() if isinstance(raw, bytes) else raw
        try:
            size, mtime_ns, etag = text.split(":", 2)
            return cls(int(size), int(mtime_ns), etag)
        except ValueError:
            return None

    def same_stat(self, size: int, mtime_ns: int) -> bool:
        return self.size == size and self.mtime_ns == mtime_ns


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class Manifest:
    """Reads the manifest; writes go through :meth:`put` / :meth:`remove` on a transaction."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    @staticmethod
    def hash_key(bucket: str) -> str:
        return PREFIX + bucket

    def get(self, bucket: str, key: str) -> Entry | None:
        raw = self.client.hget(self.hash_key(bucket), key)
        return None if raw is None else Entry.decode(raw)

    def entries(self, bucket: str, prefix: str = "") -> Iterator[tuple[str, Entry | None]]:
        """Every ``(key, entry)`` of a bucket whose key starts with ``prefix``."""
        match = _glob_escape(prefix) + "*" if prefix else None
        for field, raw in self.client.hscan_iter(self.hash_key(bucket), match=match, count=1000):
            yield field.decode(), Entry.decode(raw)

    def buckets(self) -> set[str]:
        """Every bucket that has a manifest (some may no longer have a folder)."""
        return {k.decode()[len(PREFIX) :] for k in self.client.scan_iter(match=PREFIX + "*", count=1000)}

    @classmethod
    def put(cls, pipe: Any, bucket: str, key: str, entry: Entry) -> None:
        pipe.hset(cls.hash_key(bucket), key, entry.encode())

    @classmethod
    def remove(cls, pipe: Any, bucket: str, key: str) -> None:
        pipe.hdel(cls.hash_key(bucket), key)
