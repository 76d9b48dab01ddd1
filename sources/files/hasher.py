"""Large objects hashed beside the files source's loop, so one big file holds up no other object.

The files source publishes an object once it knows its MD5 (the S3 eTag). Hashing a 5 GB file
takes seconds; done on the loop that reads inotify and publishes, it held up every other bucket
for as long, and a stop waited for it. A :class:`Hasher` hashes such files on its own threads:

* at low priority (each thread's nice value raised to :data:`NICE`), so the loop and the workers
  come first for the CPU;
* in slices of 1 MiB, reading into one buffer with calls that release the interpreter's lock, and
  asking between two slices whether the job was superseded (the file was written again, so a new
  job hashes it) or the hasher is stopping; a stop therefore takes one slice, milliseconds, however
  large the file;
* with its results handed back to the loop (:meth:`Hasher.finished`), which publishes them; a byte
  written to :attr:`Hasher.wake_fd` wakes a loop waiting on its descriptors.

A result says which file it read (device and inode, size and mtime): the loop publishes it only if
the path still names that very version, so a file replaced, renamed or removed while it was
hashed is never published from a stale read (the event of what happened to it tells the rest).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
from dataclasses import dataclass, field

from sources.files.buckets import BucketRoot, Cancelled, NotAnObject, ObjectInfo, ObjectRef, Unsettled, read_object

log = logging.getLogger("lambdalite.files")

THREADS = 2  # so a second large file does not wait behind the first
NICE = 10  # added to each hashing thread's nice value (Linux sets it per thread)


@dataclass(frozen=True, slots=True)
class Version:
    """Which version of a file a job reads: as ``lstat`` saw it when the job was asked for."""

    device: int
    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> Version:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass(slots=True)
class Job:
    """One file to hash; ``event_name`` and ``scanned`` say how to publish it."""

    ref: ObjectRef
    version: Version
    event_name: str
    scanned: bool
    info: ObjectInfo | None = None
    error: str = ""  # why it could not be read (an :class:`NotAnObject`'s text); empty when unsettled
    superseded: threading.Event = field(default_factory=threading.Event)


class Hasher:
    """Hashes files on background threads; :meth:`submit` from the loop, :meth:`finished` to collect."""

    def __init__(self, root: BucketRoot, threads: int = THREADS) -> None:
        self.root = root
        self._threads_wanted = threads
        self._threads: list[threading.Thread] = []
        self._todo: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[Job] = queue.SimpleQueue()
        self._pending: dict[str, Job] = {}  # path -> the latest job asked for it, until collected
        self._stopping = threading.Event()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    @property
    def wake_fd(self) -> int:
        """Readable when a result is waiting in :meth:`finished`."""
        return self._wake_r

    def pending(self, path: str, st: os.stat_result) -> bool:
        """Whether this very version of ``path`` is being hashed (or its result not collected yet)."""
        job = self._pending.get(path)
        return job is not None and job.version == Version.of(st)

    def busy(self) -> int:
        """How many files are being hashed or waiting for it."""
        return len(self._pending)

    def submit(self, ref: ObjectRef, st: os.stat_result, event_name: str, scanned: bool) -> None:
        """Hash ``ref`` (seen as ``st``); a job for an older version of the same path is dropped."""
        old = self._pending.get(ref.path)
        if old is not None:
            if old.version == Version.of(st):
                return
            old.superseded.set()
        job = Job(ref, Version.of(st), event_name, scanned)
        self._pending[ref.path] = job
        self._start_threads()
        self._todo.put(job)

    def finished(self) -> list[Job]:
        """The jobs done since the last call (each one's latest for its path), oldest first."""
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 4096):
                pass
        jobs: list[Job] = []
        while True:
            try:
                job = self._done.get_nowait()
            except queue.Empty:
                return jobs
            if self._pending.get(job.ref.path) is job:
                del self._pending[job.ref.path]
                jobs.append(job)

    def forget(self) -> None:
        """Drop every job (a Redis outage: the rescan that follows asks again for what it needs)."""
        for job in self._pending.values():
            job.superseded.set()
        self._pending.clear()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop hashing: each thread ends within one slice; waits up to ``timeout`` s in all."""
        self._stopping.set()
        self.forget()
        for _ in self._threads:
            self._todo.put(None)
        deadline = timeout / max(1, len(self._threads))
        for thread in self._threads:
            thread.join(deadline)
        self._threads.clear()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _start_threads(self) -> None:
        while len(self._threads) < self._threads_wanted and not self._stopping.is_set():
            thread = threading.Thread(target=self._run, name=f"hasher-{len(self._threads)}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _run(self) -> None:
        with contextlib.suppress(OSError):  # not Linux, or not allowed: hash at the usual priority
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + NICE)
        while not self._stopping.is_set():
            job = self._todo.get()
            if job is None:
                return
            if job.superseded.is_set():
                continue
            try:
                self._hash(job)
            except Exception:  # a bug costs this file, never the thread (the next rescan tries again)
                log.exception("hashing %r failed", job.ref.path)
                continue

    def _hash(self, job: Job) -> None:
        def cancelled() -> bool:
            return job.superseded.is_set() or self._stopping.is_set()

        try:
            job.info = read_object(self.root, job.ref, cancelled)
        except Cancelled:
            return
        except Unsettled:
            pass  # the event that follows tells the rest
        except NotAnObject as e:
            job.error = str(e)
        self._done.put(job)
        with contextlib.suppress(OSError):  # full (the loop is woken already) or closed (stopping)
            os.write(self._wake_w, b"!")
