"""A watchdog inotify observer over the buckets root that also reports inotify queue overflows.

Watchdog 7 handles ``IN_Q_OVERFLOW`` inside its inotify watch group (it rebuilds its watches and
logs a warning) but never tells the event handler. The emitter here builds a watch group that
also calls ``on_overflow``, so the files source can rescan: after an overflow, events are lost.

Events are not handled on watchdog's threads: :class:`Inbox` only puts them on a queue, inside a
``try``, because one exception there would end the thread. The emitter hands each event straight
to the inbox, rather than through watchdog's observer queue and dispatch thread: one thread hop
less between inotify and the files source (the dispatch thread stays, idle).
"""

from __future__ import annotations

import logging
import os
import queue
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
    FileSystemEventHandler,
)
from watchdog.observers.api import BaseObserver
from watchdog.observers.inotify import InotifyFullEmitter, InotifyWatchGroup
from watchdog.observers.inotify_c import InotifyFD

log = logging.getLogger(__name__)

# Watchdog warns when it adds the watch of a new folder a second time (seen both by its walk and by
# IN_CREATE): benign, and under ``-W error`` the warning would end its inotify thread.
warnings.filterwarnings("ignore", message="Callback with id", category=RuntimeWarning, module="watchdog")

#: The events the files source acts on; every other one is dropped inside watchdog.
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


class _OverflowWatchGroup(InotifyWatchGroup):
    on_overflow: Callable[[], None] | None = None

    def on_queue_overflow(self) -> None:
        super().on_queue_overflow()
        if self.on_overflow is not None:
            self.on_overflow()


class _OverflowEmitter(InotifyFullEmitter):
    """Watchdog's full inotify emitter (unpaired moves stay moves), with overflow reporting, that
    hands the events it keeps straight to ``inbox``."""

    def __init__(self, *args: Any, on_overflow: Callable[[], None], inbox: Inbox, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_overflow = on_overflow
        self._inbox = inbox
        self._kept = tuple(self._event_filter or ())

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
        self._inotify = group


class BucketObserver(BaseObserver):
    """An inotify observer whose emitters call ``on_overflow`` when the kernel drops events."""

    def __init__(self, on_overflow: Callable[[], None], inbox: Inbox) -> None:
        self.inotify_fd = InotifyFD()
        self.inotify_fd.start()
        super().__init__(_OverflowEmitter, timeout=1.0, inotify_fd=self.inotify_fd, on_overflow=on_overflow,
                         inbox=inbox)

    def on_thread_stop(self) -> None:
        super().on_thread_stop()
        self.inotify_fd.stop()
        self.inotify_fd.join()

    def healthy(self) -> bool:
        """Whether the dispatch thread, the inotify reader and every emitter are still running."""
        return (
            self.is_alive()
            and self.inotify_fd.is_alive()
            and bool(self.emitters)
            and all(e.is_alive() for e in self.emitters)
        )


class Inbox(FileSystemEventHandler):
    """Queues watchdog's events for the watcher's own loop; never raises into watchdog."""

    def __init__(self) -> None:
        self.events: queue.SimpleQueue[FileSystemEvent] = queue.SimpleQueue()

    def dispatch(self, event: FileSystemEvent) -> None:
        try:
            self.events.put(event)
        except Exception:  # a handler that raises ends watchdog's dispatch thread
            log.exception("could not queue %r", event)


def watch(root: str, inbox: Inbox, on_overflow: Callable[[], None]) -> BucketObserver:
    """A started observer watching ``root`` recursively, links not followed.

    Raises OSError when ``root`` cannot be watched (gone by now, or the inotify watch limit is
    reached), after stopping every thread it started.
    """
    observer = BucketObserver(on_overflow, inbox)
    try:
        observer.schedule(inbox, root, recursive=True, event_filter=EVENT_FILTER, follow_symlink=False)
        observer.start()
    except BaseException:
        observer.stop()
        if observer.is_alive():
            observer.join(timeout=4)
        raise
    return observer
