"""Which functions an object event notifies: the registry's files triggers, matched as S3 matches them."""

from __future__ import annotations

from collections import defaultdict

from broker.registry import FilesTrigger, Registry
from sources.files.s3event import event_matches


def trigger_matches(trigger: FilesTrigger, bucket: str, key: str, event_name: str) -> bool:
    """Bucket equal, key starts with ``prefix`` and ends with ``suffix``, and an event type covers it."""
    return (
        trigger.bucket == bucket
        and key.startswith(trigger.prefix)
        and key.endswith(trigger.suffix)
        and any(event_matches(pattern, event_name) for pattern in trigger.events)
    )


class BucketTriggers:
    """The files triggers of a registry, by bucket."""

    def __init__(self, registry: Registry) -> None:
        self._by_bucket: dict[str, list[tuple[str, FilesTrigger]]] = defaultdict(list)
        for fn, trigger in registry.triggers("files"):
            self._by_bucket[trigger.bucket].append((fn.name, trigger))

    @property
    def buckets(self) -> set[str]:
        """Buckets that at least one trigger names."""
        return set(self._by_bucket)

    def functions(self, bucket: str, key: str, event_name: str) -> list[str]:
        """The functions to notify, each once however many of its triggers match, in registry order."""
        names: dict[str, None] = {}
        for name, trigger in self._by_bucket.get(bucket, ()):
            if trigger_matches(trigger, bucket, key, event_name):
                names[name] = None
        return list(names)
