"""Live reload, the authority's side: the scaler watches ``lambdalite.toml`` and the handlers' code,
validates an edit as ``lambdalite check`` does, and publishes the revision it accepts
(:mod:`broker.revision`); the other processes follow it.

An edit is looked at once the files have been quiet for :data:`SETTLE` (an editor's save may close
several files and rename one), and also on SIGHUP and on ``lambdalite reload``. One that does not validate is
refused with one log line naming the file, the function and the key; the running revision stays.

The watch takes only what ends an edit (:data:`EDITS`: a file closed after writing, moved or
deleted), not each write, so a log appended to beside ``lambdalite.toml`` (``make run > app.log``)
or a database in write-ahead-log mode there costs the scaler nothing per event.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from broker import environment, revision
from broker.errors import ConfigError
from broker.registry import Registry, parse_registry, read_config
from broker.settings import Settings

log = logging.getLogger("lambdalite.reload")

SETTLE = 0.1  # seconds of quiet after the last edit event (a close, a rename) before an edit is looked at
SETTLE_MAX = 0.5  # seconds after the first edit event an edit is looked at, however busy its writer
IGNORED = ("__pycache__", ".pyc", ".swp", ".swx", "~", "4913")  # caches and editors' scratch files
# What ends an edit, the only events the watch takes (watchdog builds the inotify mask from them): a
# file closed after writing, moved (an editor's rename) or deleted, and folders coming and going.
# Not each write (IN_MODIFY), which a log appended to or a database written beside the code raises
# on every event; nor a file's creation, which comes before its text (its close follows).
EDITS: list[type[FileSystemEvent]] = [FileClosedEvent, FileMovedEvent, FileDeletedEvent,
                                      DirCreatedEvent, DirMovedEvent, DirDeletedEvent]


class _Noticed(FileSystemEventHandler):
    def __init__(self, reloader: Reloader) -> None:
        self.reloader = reloader

    def on_any_event(self, event: FileSystemEvent) -> None:
        paths = [p if isinstance(p, str) else p.decode(errors="replace") for p in (event.src_path, event.dest_path)]
        if any(p and self.reloader.relevant(p) for p in paths) and self.reloader.notice():
            self.reloader.wake()


class Reloader:
    """Watches the files of the running revision and publishes the next one; driven by
    :meth:`step` from the scaler's loop (the watch only notes that something was written).

    ``apply(registry, changed)`` is called with each accepted registry and the names of the
    functions whose definition or code changed (or that are new).
    """

    def __init__(self, settings: Settings, client: redis.Redis, registry: Registry,
                 apply: Callable[[Registry, set[str]], None], clock: Callable[[], float] = time.monotonic,
                 wake: Callable[[], None] = lambda: None) -> None:
        self.settings = settings
        self.wake = wake  # called (from the watch's thread) when an edit is noticed
        self.client = client
        self.registry = registry
        self.apply = apply
        self.clock = clock
        self.code: dict[str, str] = {}
        self._due: float | None = None
        self._first = 0.0
        self._refused = False  # an edit was refused since the running revision was accepted
        self._files: set[Path] = set()
        self._below: list[Path] = []
        self._forced = False
        self._lock = threading.Lock()
        self._observer: Any = None
        self._watching: list[tuple[Path, bool]] = []

    # -- noticing ----------------------------------------------------------------------------------

    def notice(self, force: bool = False) -> bool:
        """Something may have changed: look after :data:`SETTLE` s of quiet (thread-safe). Returns
        whether nothing was due before (the loop may have to be woken)."""
        now = self.clock()
        with self._lock:
            fresh = self._due is None
            if fresh:
                self._first = now
            self._due = min(now + SETTLE, self._first + SETTLE_MAX)
            self._forced = self._forced or force
        return fresh

    def relevant(self, path: str) -> bool:
        """Whether a write to ``path`` may change the revision: the config file, a code file, or
        anything new below a watched package (not a cache or an editor's scratch file)."""
        if any(part in path for part in IGNORED):
            return False
        p = Path(path)
        return p in self._files or any(folder in p.parents for folder in self._below)

    @property
    def wait(self) -> float | None:
        """Seconds until an edit noticed is due to be looked at, or None."""
        due = self._due
        return None if due is None else max(0.0, due - self.clock())

    def watch(self) -> None:
        """Watch the folders of the config file and of the code (again, when they changed)."""
        wanted = revision.watched(self.registry)
        self._files = {self.registry.path.resolve(), *(f for files in revision.code_files(self.registry).values()
                                                        for f in files)}
        self._below = [folder for folder, recursive in wanted if recursive]
        if wanted == self._watching and self._observer is not None and self._observer.is_alive():
            return
        self.unwatch(wait=False)  # the old watch's thread ends on its own; the loop must not wait for it
        observer = Observer(timeout=5.0)  # its threads wake this often to look whether they are stopped
        for folder, recursive in wanted:
            try:
                observer.schedule(_Noticed(self), str(folder), recursive=recursive, event_filter=EDITS)
            except OSError as e:
                log.warning("cannot watch %s for edits (%s); `lambdalite reload` still reloads", folder, e)
        observer.daemon = True
        observer.start()
        self._observer, self._watching = observer, wanted

    def unwatch(self, wait: bool = True) -> None:
        if self._observer is not None:
            self._observer.stop()
            if wait:
                self._observer.join(timeout=2)
            self._observer = None

    # -- accepting ---------------------------------------------------------------------------------

    def publish_running(self) -> revision.Revision:
        """At start: publish the registry this scaler runs (a new number only if it differs from the
        running revision). Raises redis errors."""
        raw = read_config(self.registry.path)
        self.code = revision.code_digests(self.registry)
        rev = revision.publish(self.client, raw, self.code)
        self.registry.revision = rev
        return rev

    def step(self) -> bool:
        """Look at the files if an edit is due; returns whether a new revision was accepted.
        Raises redis's transient errors (the edit stays due)."""
        due = self._due
        if due is None or self.clock() < due:
            return False
        with self._lock:
            self._due, forced, self._forced = None, self._forced, False
        try:
            return self._look(forced)
        except Exception:
            with self._lock:  # looked at again on the next step
                self._due = self._due if self._due is not None else self.clock() + SETTLE
                self._forced = self._forced or forced
            raise

    def _look(self, forced: bool) -> bool:
        path = self.registry.path
        current = self.registry.revision
        try:
            raw = read_config(path)
            if not raw.strip():  # an editor's save caught between truncating and writing reads as no functions
                raise ConfigError(f"{path.name}: empty (a save under way?): not applied; "
                                  "to run no functions, keep a comment in it")
            sha = revision.digest(raw)
            if current is not None and sha == current.sha256 and not forced \
                    and revision.code_digests(self.registry) == self.code:
                if self._refused:  # the edit that was refused is undone
                    revision.clear_refused(self.client)
                    self._refused = False
                    log.info("%s is the running revision's again", path.name)
                return False
            new = parse_registry(raw, path)
            code = revision.code_digests(new)
            environment.check_handlers(new, self.settings)  # as `lambdalite check` does
        except ConfigError as e:
            number = current.number if current is not None else 0
            log.error("reload refused: %s (revision %d keeps running)", e, number)
            revision.refuse(self.client, str(e))
            self._refused = True
            return False
        rev = revision.publish(self.client, raw, code)
        self._refused = False
        if current is not None and rev.number == current.number:
            return False  # looked at on request (SIGHUP, `lambdalite reload`): nothing changed
        new.revision = rev
        changed = revision.changed(self.registry, new, self.code, code)
        stale = [f for name in changed for f in revision.code_files(new).get(name, ()) if f.suffix == ".py"]
        _forget_bytecode(stale)
        self.code = code
        self.apply(new, changed)  # the scaler swaps ``new`` into the registry object both hold
        if self._observer is not None:
            self.watch()
        log.info("revision %d of %s accepted: %s", rev.number, path.name,
                 ", ".join(sorted(changed)) + " changed" if changed else "no function changed")
        return True


def _forget_bytecode(files: list[Path]) -> None:
    """Remove the cached bytecode of edited modules: Python trusts a ``.pyc`` whose source has the
    same size and modification second, which a quick edit can have."""
    for f in files:
        with contextlib.suppress(OSError, ValueError, NotImplementedError):
            Path(importlib.util.cache_from_source(str(f))).unlink(missing_ok=True)
