"""Object changes in, S3 event notifications out: stored with the manifest in one transaction.

:class:`ObjectEvents` is the files source's publishing half. For each changed object it builds one
S3 record per function whose trigger matches (see :mod:`sources.files.bucket_triggers`), and stores the
events together with the manifest entries that account for them (see :mod:`sources.files.manifest`):
all or nothing, and for one closed file only if that version is not published yet.
"""

from __future__ import annotations

import logging
import pwd
import time
from collections.abc import Iterable
from typing import Any

import orjson
import redis

from broker.conditional import Conditional
from broker.envelope import Event
from broker.queues import Publisher
from broker.registry import Registry
from sources.files import s3event
from sources.files.bucket_triggers import BucketTriggers
from sources.files.buckets import ObjectInfo, ObjectRef
from sources.files.manifest import Entry, Manifest

log = logging.getLogger("lambdalite.files")


class Change:
    """One object change to publish: created (with ``info``) or removed (``info`` None)."""

    __slots__ = ("ref", "info", "event_name")

    def __init__(self, ref: ObjectRef, info: ObjectInfo | None, event_name: str) -> None:
        self.ref, self.info, self.event_name = ref, info, event_name


class ObjectEvents:
    """Publishes object changes as S3 event notifications to the functions whose triggers match."""

    def __init__(self, client: redis.Redis, registry: Registry, region: str = "us-east-1") -> None:
        self.triggers = BucketTriggers(registry)
        self.publisher = Publisher(client, registry)
        self.region = region
        self.sequencer = s3event.Sequencer()
        self.published = 0  # events stored, for logs and tests

    def _record(self, change: Change, function: str, now: float) -> dict[str, Any]:
        info = change.info
        return s3event.record(
            event_name=change.event_name,
            bucket=change.ref.bucket,
            key=change.ref.key,
            sequencer=self.sequencer.next(),
            local_path=change.ref.path,
            configuration_id=function,
            region=self.region,
            when=now,
            principal=_principal(info.owner_uid) if info else s3event.OWNER,
            size=info.size if info else None,
            etag=info.etag if info else None,
        )

    def publish(self, changes: Iterable[Change], quiet: Iterable[tuple[ObjectRef, Entry]] = (),
                only_if: tuple[Conditional, list[str], list[str]] | None = None) -> None:
        """Store the events of ``changes`` and their manifest updates, and the manifest entries of
        ``quiet`` (objects only touched), in one transaction; only if the condition ``only_if``
        holds on its arguments, when given. Raises redis errors."""
        changes, quiet = list(changes), list(quiet)
        if not changes and not quiet:
            return
        now = time.time()
        events = []
        for change in changes:
            names = self.triggers.functions(change.ref.bucket, change.ref.key, change.event_name)
            for name in names:
                payload = s3event.notification(self._record(change, name, now))
                event = Event(function=name, payload=payload, source="files", created_at=now)
                events.append(self.publisher.prepare(event, _payload_json(payload)))

        def manifest_update(pipe: Any) -> None:
            for change in changes:
                if change.info is None:
                    Manifest.remove(pipe, change.ref.bucket, change.ref.key)
                else:
                    info = change.info
                    Manifest.put(pipe, change.ref.bucket, change.ref.key,
                                 Entry(info.size, info.mtime_ns, info.etag))
            for ref, entry in quiet:
                Manifest.put(pipe, ref.bucket, ref.key, entry)

        if only_if is not None:
            if self.publisher.publish_if(*only_if, events, also=manifest_update) is None:
                return
        else:
            self.publisher.publish_many(events, also=manifest_update)
        self.published += len(events)
        for change in changes:
            log.debug("%s %s/%s", change.event_name, change.ref.bucket, change.ref.key)


def _payload_json(payload: dict[str, Any]) -> str | None:
    """The payload as JSON, by orjson (a tenth of the time of the standard library's encoder), or
    None for the publisher to encode it: orjson refuses a path whose name is not UTF-8 (a surrogate)."""
    try:
        return orjson.dumps(payload).decode()
    except orjson.JSONEncodeError:
        return None


_names: dict[int, str] = {}


def _principal(uid: int) -> str:
    """The file owner's user name (or uid), as the ``userIdentity`` of a created object."""
    if uid not in _names:
        try:
            _names[uid] = pwd.getpwuid(uid).pw_name
        except KeyError:
            _names[uid] = str(uid)
    return _names[uid]
