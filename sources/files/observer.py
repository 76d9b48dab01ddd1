"""Watchdog's inotify machinery over the buckets root, read on the files source's own loop.

Watchdog reads inotify on a thread of its own and hands each event to an emitter thread, which
builds the event and queues it for a dispatch thread. Here none of those threads exists:
:meth:`BucketObserver.collect` waits on the inotify descriptor itself, has watchdog's watch group
(recursive watches, move pairing) take what it reads, and builds the events with watchdog's
emitter code into the :class:`Inbox`. The loop that handles the events is the one that reads them,
so an event costs no thread hop, and the open and close that reading a file makes (inotify reports
them like anyone's) wait in the kernel's queue until the loop comes back for them, instead of
waking two threads that compete with it for the interpreter while it publishes.

Watchdog 7 handles ``IN_Q_OVERFLOW`` inside its inotify watch group (it rebuilds its watches and
logs a warning) but never tells the event handler; the watch group here also calls
``on_overflow``, so the files source can rescan: after an overflow, events are lost.
"""

from __future__ import annotations

import logging
import os
import queue
import select
import time
import warnings
from collections.abc import Callable
from typing import Any

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
from watchdog.observers.api import ObservedWatch
from watchdog.observers.inotify import InotifyFullEmitter, InotifyWatchGroup
from watchdog.observers.inotify_c import InotifyConstants, InotifyEvent, InotifyFD

log = logging.getLogger(__name__)

# Watchdog warns when it adds the watch of a new folder a second time (seen both by its walk and by
# IN_CREATE): benign, and under ``-W error`` the warning would end the files source's step.
warnings.filterwarnings("ignore", message="Callback with id", category=RuntimeWarning, module="watchdog")

#: The events the files source acts on; every other one is dropped as it is built.
EVENT_FILTER: list[type[FileSystemEvent]] = [
    FileClosedEvent,
    FileMovedEvent,
    FileDeletedEvent,
    FileOpenedEvent,
    FileClosedNoWriteEvent,
    DirCreatedEvent,
    DirMovedEvent,
    DirDeletedEvent,
]


# The events of a file (not a folder) that the watch group passes on unchanged, and what they become
# (None: an event the filter drops, a file created, which the watch group only passes on).
_PLAIN: dict[int, type[FileSystemEvent] | None] = {
    InotifyConstants.IN_OPEN: FileOpenedEvent,
    InotifyConstants.IN_CLOSE_WRITE: FileClosedEvent,
    InotifyConstants.IN_CLOSE_NOWRITE: FileClosedNoWriteEvent,
    InotifyConstants.IN_CREATE: None,
}


class Inbox:
    """The events read and not handled yet, oldest first."""

    def __init__(self) -> None:
        self.events: queue.SimpleQueue[FileSystemEvent] = queue.SimpleQueue()

    def dispatch(self, event: FileSystemEvent) -> None:
        self.events.put(event)


class _OverflowWatchGroup(InotifyWatchGroup):
    on_overflow: Callable[[], None] | None = None

    def on_queue_overflow(self) -> None:
        super().on_queue_overflow()
        if self.on_overflow is not None:
            self.on_overflow()


class _Reader(InotifyFD):
    """Watchdog's inotify descriptor and its watches, never started as a thread: the caller reads."""

    def __init__(self) -> None:
        super().__init__()
        self._is_reading = False  # so that close() closes the descriptors rather than wake a reader

    @property
    def fd(self) -> int:
        return self._inotify_fd

    @property
    def closed(self) -> bool:
        return self._closed


class _Emitter(InotifyFullEmitter):
    """Watchdog's full inotify emitter (unpaired moves stay moves), never started as a thread, that
    builds events into ``inbox``."""

    def __init__(self, *args: Any, on_overflow: Callable[[], None], inbox: Inbox, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_overflow = on_overflow
        self._inbox = inbox
        self._kept = tuple(self._event_filter or ())
        self.group: _OverflowWatchGroup | None = None

    def queue_event(self, event: FileSystemEvent) -> None:
        if isinstance(event, self._kept):
            self._inbox.dispatch(event)

    def on_thread_start(self) -> None:
        group = _OverflowWatchGroup(
            self._inotify_fd,
            os.fsencode(self.watch.path),
            is_recursive=self.watch.is_recursive,
            event_mask=self.get_event_mask_from_filter(),
            follow_symlink=self.watch.follow_symlink,
        )
        group.on_overflow = self._on_overflow
        self._inotify = self.group = group


class BucketObserver:
    """Inotify watches over the buckets root (recursive, links not followed), read by :meth:`collect`."""

    def __init__(self, root: str, inbox: Inbox, on_overflow: Callable[[], None], wake_fd: int | None = None) -> None:
        self.inotify_fd = _Reader()
        try:
            watch = ObservedWatch(root, recursive=True, event_filter=EVENT_FILTER, follow_symlink=False)
            self._emitter = _Emitter(None, watch, event_filter=EVENT_FILTER, inotify_fd=self.inotify_fd,
                                     on_overflow=on_overflow, inbox=inbox)
            self._emitter.on_thread_start()  # adds the watches; raises OSError if the root cannot be watched
        except BaseException:
            self.inotify_fd.close()
            raise
        self._poll = select.poll()
        self._poll.register(self.inotify_fd.fd, select.POLLIN)
        if wake_fd is not None:  # another descriptor whose readiness ends the wait (hashes done)
            self._poll.register(wake_fd, select.POLLIN)

    def collect(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for inotify events (or the wake descriptor) and put every
        event that is ready in the inbox; returns at once if some are ready. A move away
        (``IN_MOVED_FROM``) is held back, with the events after it, for up to half a second, for its
        ``IN_MOVED_TO`` to pair it with."""
        if not self.healthy():
            return
        try:
            held = self._hold_until()
            wait = timeout if held is None else min(timeout, max(0.0, held - time.monotonic()))
            ready = self._poll.poll(max(0, int(wait * 1000 + 0.999)))
            if any(fd == self.inotify_fd.fd for fd, _ in ready):
                for event in self.inotify_fd.read_events():
                    if not self._plain(event):
                        self.inotify_fd.handle_event(event)  # the watch group pairs moves and keeps its watches
            self._emit_ready()
        except Exception:  # events may be lost: stopped, the watcher restarts the watches and rescans
            log.exception("reading inotify failed; restarting the watches")
            self.stop()

    def _plain(self, event: InotifyEvent) -> bool:
        """Put a file's open or close in the inbox directly, as watchdog's watch group and emitter
        would (most events, and all those of a file written and closed): False, and nothing done,
        for any other event, or while a move is held back (the events after it wait for it)."""
        if event.mask not in _PLAIN:
            return False
        kind = _PLAIN[event.mask]
        group = self._emitter.group
        if group is None or not group.is_active or not event.name:
            return False
        if kind is None:
            return True
        folder = group._active_callbacks_by_watch.get(event.wd)
        if folder is None:
            return True  # a watch removed meanwhile: the watch group drops its events too
        self._emit_ready()  # what the watch group holds comes first
        if group._move_event_grouper._queue._queue:
            return False
        self._emitter.queue_event(kind(os.fsdecode(os.path.join(folder, event.name))))
        return True

    def _hold_until(self) -> float | None:
        """When the move held at the head of the watch group's queue is due, or None."""
        group = self._emitter.group
        if group is None:
            return None
        pending = group._move_event_grouper._queue  # watchdog's DelayedQueue of grouped events
        with pending._lock:
            if not pending._queue:
                return None
            _, inserted, delayed = pending._queue[0]
        return inserted + pending.delay if delayed else None

    def _emit_ready(self) -> None:
        group = self._emitter.group
        if group is None:
            return
        pending = group._move_event_grouper._queue
        while not self._emitter.stopped_event.is_set():
            with pending._lock:
                if not pending._queue:
                    return
                event, inserted, delayed = pending._queue[0]
                if delayed and time.monotonic() < inserted + pending.delay:
                    return
                pending._queue.popleft()
            self._emitter.build_and_queue_event(event)  # stops the emitter if the root itself went

    def stop(self) -> None:
        """Remove the watches and close the inotify descriptor."""
        if not self._emitter.stopped_event.is_set():
            self._emitter.stop()
        if not self.inotify_fd.closed:
            self.inotify_fd.close()

    def join(self, timeout: float | None = None) -> None:
        """Nothing to wait for (no thread); kept for callers written for watchdog's observers."""

    def healthy(self) -> bool:
        """Whether the watches are in place: not stopped, and the root itself was not deleted."""
        return not self._emitter.stopped_event.is_set() and not self.inotify_fd.closed


def watch(root: str, inbox: Inbox, on_overflow: Callable[[], None], wake_fd: int | None = None) -> BucketObserver:
    """An observer watching ``root`` recursively, links not followed; events come with
    :meth:`BucketObserver.collect`, whose wait also ends when ``wake_fd`` is readable. Raises OSError
    when ``root`` cannot be watched (gone by now, or the inotify watch limit is reached), with the
    inotify descriptor closed again."""
    return BucketObserver(root, inbox, on_overflow, wake_fd)
