"""The files source (``python -m sources.files``): buckets folder in, S3 event notifications out.

A watchdog observer watches ``LAMBDALITE_BUCKETS``; :class:`BucketWatcher` turns what it sees into
one S3 event notification per completed object and per matching function, and keeps the
manifest (what has been published) in the same Redis transaction as the events.

* Completed means closed after writing (``IN_CLOSE_WRITE``) or renamed into a final name. Opening,
  creating or modifying alone never publishes, so a file written slowly in one open gives one
  event, after its last byte.
* A rename of a published object to another key is ``ObjectCreated:Copy`` for the new key plus
  ``ObjectRemoved:Delete`` for the old one, as S3 would report a copy and a delete; every other
  completed object is ``ObjectCreated:Put``.
* At start, after an inotify queue overflow, after the observer had to be restarted and after a
  Redis outage, every bucket is rescanned against the manifest: new or changed objects are
  published once, manifest entries whose file is gone become removals. A folder that appears
  (created or moved in) is scanned the same way once the events before it are handled.
* An object larger than :data:`HASH_INLINE_MAX` is hashed beside the loop (:mod:`sources.files.hasher`)
  and published when its hash is ready, so a large file holds up neither the other objects nor a
  stop; smaller ones are hashed on the loop, which is quicker than handing them over.
"""

from __future__ import annotations

import logging
import os
import queue
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

import redis
from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileClosedNoWriteEvent,
    FileDeletedEvent,
    FileMovedEvent,
    FileOpenedEvent,
    FileSystemEvent,
)

from broker.connection import TRANSIENT, Backoff
from broker.registry import Registry
from sources.files import s3event
from sources.files.bucket_triggers import BucketTriggers
from sources.files.buckets import (
    BucketRoot,
    NotAnObject,
    ObjectInfo,
    ObjectRef,
    Unsettled,
    is_temporary,
    is_utf8,
    printable,
    read_object,
)
from sources.files.hasher import Hasher, Job
from sources.files.manifest import Entry, Manifest
from sources.files.object_events import Change, ObjectEvents
from sources.files.observer import BucketObserver, Inbox, watch

log = logging.getLogger("lambdalite.files")

BATCH = 200  # objects per publishing transaction during a scan
SETTLE_NS = 1_000_000_000  # a scanned file modified more recently than this may still be written
RECHECK = 0.5  # seconds before such a file is looked at again
EVENTS_PER_STEP = 500  # so a burst of events never delays a stop
COLLECT_EVERY = 1000  # objects walked by a scan between two reads of inotify's queue
HASH_INLINE_MAX = 4 << 20  # bytes: larger objects are hashed beside the loop (a few ms of MD5 here)


def _path(raw: bytes | str) -> str:
    return os.fsdecode(raw)


class BucketWatcher:
    """Watches a buckets root and publishes S3-style events; driven one :meth:`step` at a time."""

    def __init__(
        self,
        root: Path,
        registry: Registry,
        client: redis.Redis,
        *,
        region: str = "us-east-1",
        stopping: Callable[[], bool] = lambda: False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.root = BucketRoot(root)
        self.notifications = ObjectEvents(client, registry, region)
        self.triggers = self.notifications.triggers
        self.client = client
        self.manifest = Manifest(client)
        self.stopping = stopping
        self.clock = clock
        self.inbox = Inbox()
        self.hasher = Hasher(self.root)
        self.observer: BucketObserver | None = None
        self._watched: tuple[int, int] | None = None
        self._overflowed = threading.Event()
        self._rescan = True
        self._dirty: set[str] = set()
        self._open: dict[str, int] = {}
        self._recheck: dict[str, float] = {}  # path -> when to look again (a scan found it unsettled)
        self._redis_down = False
        self._retry_at = 0.0
        self._backoff = Backoff(log, "will rescan the buckets when it is back")
        self._said_no_root = ""  # why the buckets folder is not watched, as last logged

    # -- lifecycle -----------------------------------------------------------------------------

    def follow(self, registry: Registry) -> None:
        """Notify the functions of ``registry`` (a new revision) from now on: its triggers take the
        place of the old ones in one assignment. Objects already published are not notified again,
        as S3 does not notify a new configuration of objects already there."""
        triggers = BucketTriggers(registry)
        self.notifications.publisher.registry.replace(registry)
        self.notifications.triggers = self.triggers = triggers
        missing = sorted(b for b in triggers.buckets if not os.path.isdir(os.path.join(self.root.path, b)))
        if missing:
            log.warning("triggers name buckets with no folder yet: %s", ", ".join(missing))

    def start(self) -> None:
        """Start watching; the first :meth:`step` scans every bucket against the manifest."""
        self._ensure_observer()

    def stop(self) -> None:
        """Stop the observer (remove its watches) and the hashing of large objects."""
        self._stop_observer()
        self.hasher.stop()

    def _stop_observer(self) -> None:
        if self.observer is not None:
            self.observer.stop()
            self.observer.join(timeout=4)
            self.observer = None

    def step(self, timeout: float = 0.2) -> None:
        """Do what is due: restart a dead observer, rescan, handle events (waiting up to ``timeout``)."""
        self._ensure_observer()
        if self._overflowed.is_set():
            self._overflowed.clear()
            log.warning("inotify dropped events (queue overflow); rescanning the buckets")
            self._open.clear()
            self._rescan = True
        if self._redis_down and not self._redis_back():
            self._drain_while_down(timeout)
            return
        try:
            if self._rescan and self._watched is not None:
                self._rescan = not self._reconcile_all()
            self._handle_events(timeout)
            self._publish_hashed()
        except TRANSIENT as e:
            self._redis_lost(e)
        except Exception:  # a bug must not end the watcher; the next trigger rescans
            log.exception("scan failed")
            self._rescan = False

    # -- the observer ----------------------------------------------------------------------------

    def _root_identity(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.root.path)
        except OSError:
            return None
        return (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None

    def _ensure_observer(self) -> None:
        identity = self._root_identity()
        if self.observer is not None and identity == self._watched and self.observer.healthy():
            return
        if self.observer is not None:
            if identity is not None:  # a vanished root has its own line below
                log.warning("the buckets watch stopped (folder replaced or observer died); restarting it")
            self._stop_observer()
            self._watched = None
        if identity is None:
            self._no_root("does not exist; waiting for it")
            return
        try:
            self.observer = watch(self.root.path, self.inbox, on_overflow=self._overflowed.set,
                                  wake_fd=self.hasher.wake_fd)
        except OSError as e:  # gone again since the check, or the inotify watch limit is reached
            self._no_root(f"cannot be watched ({e.strerror or e}); trying again")
            return
        if self._said_no_root:
            log.info("buckets folder %s is watched again; rescanning it", self.root.path)
        self._said_no_root = ""
        self._watched = identity
        self._rescan = True

    def _no_root(self, why: str) -> None:
        """Log once (until the reason changes) that the buckets folder cannot be watched now."""
        if why != self._said_no_root:
            log.warning("buckets folder %s %s", self.root.path, why)
            self._said_no_root = why

    # -- Redis outages ---------------------------------------------------------------------------

    def _redis_lost(self, error: BaseException) -> None:
        self._redis_down = True
        self._rescan = True
        self._dirty.clear()
        self._recheck.clear()
        self.hasher.forget()
        self._retry_at = self.clock() + self._backoff.failed(error)

    def _redis_back(self) -> bool:
        if self.clock() < self._retry_at:
            return False
        try:
            self.client.ping()
        except TRANSIENT as e:
            self._redis_lost(e)
            return False
        self._backoff.succeeded()
        log.info("rescanning the buckets")
        self._redis_down = False
        return True

    def _drain_while_down(self, timeout: float) -> None:
        """Keep the open-file count current; the rescan after the outage covers every other event."""
        self.hasher.finished()  # dropped (the rescan asks again), and its wake-up with them
        deadline = self.clock() + timeout
        while not self.stopping():
            event = self._next_event(max(0.0, deadline - self.clock()))
            if event is None:
                return
            self._track_open(event)

    # -- events ----------------------------------------------------------------------------------

    def _next_event(self, timeout: float = 0.0) -> FileSystemEvent | None:
        """The next event, read from inotify if none is waiting (for up to ``timeout`` seconds)."""
        try:
            return self.inbox.events.get_nowait()
        except queue.Empty:
            pass
        if self.observer is None:  # nothing to read: wait as long as asked
            timeout, wait = 0.0, timeout
        else:
            wait = 0.0
            self.observer.collect(timeout)
        try:
            return self.inbox.events.get(timeout=wait) if wait > 0 else self.inbox.events.get_nowait()
        except queue.Empty:
            return None

    def _handle_events(self, timeout: float) -> None:
        event = self._next_event(timeout)
        handled = 0
        while event is not None:
            try:
                self._handle(event)
            except TRANSIENT:
                raise
            except Exception:  # a bug must cost one event, not the watcher
                log.exception("could not handle %r", event)
            handled += 1
            if handled >= EVENTS_PER_STEP or self.stopping():
                return
            event = self._next_event()
        for folder in sorted(self._dirty):
            if self.stopping():
                return
            self._dirty.discard(folder)
            try:
                self._reconcile_folder(folder)
            except TRANSIENT:
                raise
            except Exception:  # a bug must cost one folder's scan, not the others' (nor a log flood)
                log.exception("could not scan %s", printable(folder))
        now = self.clock()
        for path, due in list(self._recheck.items()):
            if due <= now and not self.stopping():
                del self._recheck[path]
                ref = self.root.locate(path, report=True)
                if ref is not None:
                    self._created(ref, s3event.CREATED_PUT, scanned=True)

    def _track_open(self, event: FileSystemEvent) -> None:
        path = _path(event.src_path)
        if isinstance(event, FileOpenedEvent):
            self._open[path] = self._open.get(path, 0) + 1
        elif isinstance(event, FileClosedEvent | FileClosedNoWriteEvent):
            left = self._open.pop(path, 0) - 1
            if left > 0:
                self._open[path] = left

    def _handle(self, event: FileSystemEvent) -> None:
        self._track_open(event)
        src, dest = _path(event.src_path), _path(event.dest_path)
        if isinstance(event, FileClosedEvent):
            self._created(self.root.locate(src, report=True), s3event.CREATED_PUT)
        elif isinstance(event, FileMovedEvent):
            old = self.root.locate(src) if src else None
            was_object = old is not None and self.manifest.get(old.bucket, old.key) is not None
            if dest:
                name = s3event.CREATED_COPY if was_object else s3event.CREATED_PUT
                self._created(self.root.locate(dest, report=True), name)
            if was_object:
                self._removed(src)
        elif isinstance(event, FileDeletedEvent):
            self._removed(src)
        elif isinstance(event, DirCreatedEvent | DirMovedEvent | DirDeletedEvent):
            self._dirty.update(p for p in (src, dest) if p and p != self.root.path)

    def _created(self, ref: ObjectRef | None, event_name: str, scanned: bool = False) -> None:
        """Publish ``ref`` unless this version is published; ``scanned``: no event said it is complete."""
        if ref is None:
            return
        try:
            st = os.lstat(ref.path)
        except OSError:
            return  # gone already; its removal event follows
        if scanned and not self._settled(ref.path, st.st_mtime_ns):
            return
        if st.st_size > HASH_INLINE_MAX and stat.S_ISREG(st.st_mode):
            self.hasher.submit(ref, st, event_name, scanned=False)
            return
        info = self._read(ref)
        if info is not None:  # unless this very version is published already (a scan got there first)
            entry = Entry(info.size, info.mtime_ns, info.etag)
            only_if = Manifest.unpublished(ref.bucket, ref.key, entry)
            self.notifications.publish([Change(ref, info, event_name)], only_if=only_if)

    def _settled(self, path: str, mtime_ns: int) -> bool:
        """Whether a file that a scan found (not an event) looks finished.

        A file known to be open is not: its close publishes it. A file modified within the last
        second may be written by a writer that opened it before its folder was watched: it is
        looked at again shortly, and published once it has been left alone for a second.
        """
        if self._open.get(path):
            return False
        if time.time_ns() - mtime_ns < SETTLE_NS:
            self._recheck[path] = self.clock() + RECHECK
            return False
        return True

    def _removed(self, path: str) -> None:
        ref = self.root.locate(path)
        if ref is not None and self.manifest.get(ref.bucket, ref.key) is not None:
            self.notifications.publish([Change(ref, None, s3event.REMOVED_DELETE)])

    def _read(self, ref: ObjectRef) -> ObjectInfo | None:
        try:
            return read_object(self.root, ref)
        except Unsettled as e:
            log.info("not published yet: %s", e)
            return None
        except NotAnObject as e:
            log.warning("not published: %s", e)
            return None

    def _publish_hashed(self) -> None:
        """Publish the large objects whose hash is ready, if each is still the version hashed."""
        for job in self.hasher.finished():
            if job.error:
                log.warning("not published: %s", job.error)
            elif job.info is not None and self._still(job):
                self._publish_read(job.ref, job.info, job.event_name, job.scanned)

    @staticmethod
    def _still(job: Job) -> bool:
        try:
            st = os.lstat(job.ref.path)
        except OSError:
            return False
        info = job.info
        return info is not None and (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) == (
            info.device, info.inode, info.size, info.mtime_ns)

    def _publish_read(self, ref: ObjectRef, info: ObjectInfo, event_name: str, scanned: bool) -> None:
        """Publish an object read off the loop. Found by a scan with the content it was published
        with, it was only touched: its manifest entry is updated without an event, as a scan does."""
        entry = Entry(info.size, info.mtime_ns, info.etag)
        if scanned:
            known = self.manifest.get(ref.bucket, ref.key)
            if known is not None and (known.size, known.etag) == (info.size, info.etag):
                self.notifications.publish([], [(ref, entry)])
                return
        only_if = Manifest.unpublished(ref.bucket, ref.key, entry)
        self.notifications.publish([Change(ref, info, event_name)], only_if=only_if)

    # -- scans -----------------------------------------------------------------------------------

    def _reconcile_all(self) -> bool:
        """Scan every bucket against the manifest; False when a stop cut it short."""
        if self._root_identity() is None:
            return False  # a missing root is not a reason to report every object removed
        stale = [p for p in self._open if not os.path.lexists(p)]
        for path in stale:
            del self._open[path]
        buckets = sorted(set(self.root.buckets()) | self.manifest.buckets())
        return all(self._reconcile(bucket, "") for bucket in buckets)  # stops at the first cut short

    def _reconcile_folder(self, folder: str) -> None:
        """Scan a folder that appeared (created or moved in), moved away or vanished."""
        rel = os.path.relpath(folder, self.root.path).split(os.sep)
        if rel[0] in (os.curdir, os.pardir) or any(is_temporary(part) for part in rel):
            return  # outside the root, or a temporary folder
        if not is_utf8(os.sep.join(rel)):  # no key can start with its name: nothing below is an object
            self.root.refuse_name(folder)
            return
        if self._root_identity() != self._watched:
            return  # the whole buckets folder went: the rescan when it is back covers this folder
        if len(rel) == 1:
            if os.path.isdir(folder) and not os.path.islink(folder):
                log.info("bucket %r: folder %s appeared; scanning it", rel[0], folder)
            else:
                log.warning("bucket %r: folder %s is gone; its objects are reported removed, and the bucket "
                            "is picked up again when the folder comes back", rel[0], folder)
        prefix = "/".join(rel[1:]) + "/" if len(rel) > 1 else ""
        self._reconcile(rel[0], prefix)

    def _reconcile(self, bucket: str, prefix: str) -> bool:
        folder = self.root.folder(bucket, prefix.rstrip("/"))
        known = dict(self.manifest.entries(bucket, prefix))
        present: set[str] = set()
        changes: list[Change] = []
        quiet: list[tuple[ObjectRef, Entry]] = []
        refs = () if os.path.islink(folder) else self.root.walk(folder)
        for walked, ref in enumerate(refs, 1):
            if self.stopping():
                return False
            if walked % COLLECT_EVERY == 0 and self.observer is not None:
                self.observer.collect(0)  # a long scan must not let the kernel's event queue overflow
            present.add(ref.key)
            entry = known.get(ref.key)
            try:
                st = os.lstat(ref.path)
            except OSError:
                continue
            if entry is not None and entry.same_stat(st.st_size, st.st_mtime_ns):
                continue
            if not self._settled(ref.path, st.st_mtime_ns):
                continue
            if st.st_size > HASH_INLINE_MAX and stat.S_ISREG(st.st_mode):
                if not self.hasher.pending(ref.path, st):
                    self.hasher.submit(ref, st, s3event.CREATED_PUT, scanned=True)
                continue
            info = self._read(ref)
            if info is None:
                continue
            if entry is not None and (entry.size, entry.etag) == (info.size, info.etag):
                quiet.append((ref, Entry(info.size, info.mtime_ns, info.etag)))  # touched only
            else:
                changes.append(Change(ref, info, s3event.CREATED_PUT))
            if len(changes) + len(quiet) >= BATCH:
                self.notifications.publish(changes, quiet)
                changes, quiet = [], []
        for key in sorted(set(known) - present):
            ref = ObjectRef(bucket, key, os.path.join(self.root.path, bucket, *key.split("/")))
            changes.append(Change(ref, None, s3event.REMOVED_DELETE))
            if len(changes) >= BATCH:
                self.notifications.publish(changes)
                changes = []
        self.notifications.publish(changes, quiet)
        return True
