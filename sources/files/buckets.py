"""The buckets folder: which paths are objects, and reading an object's size, mtime and eTag.

Each sub-folder of the root is a bucket and each regular file below it an object whose key is its
path relative to the bucket, with ``/`` between folders. Temporary names that tools write before
renaming a finished file into place are never objects: any path part starting with ``.``
(rsync's ``.name.XXXXXX``, editors' swap files, ``.gitkeep``), and names ending in ``.part``,
``.tmp``, ``~`` or ``.crdownload``.

Symbolic links are never objects, wherever they point: they are not followed when walking, and a
path is accepted only when its real path stays inside the root. A key must be valid UTF-8, as in S3.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from broker.errors import BucketsError

log = logging.getLogger(__name__)

TEMP_SUFFIXES = (".part", ".tmp", "~", ".crdownload")
_CHUNK = 1 << 20
_REPORTED_MAX = 10_000  # names remembered as reported, so a rescan does not log them again


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """Where an object lives: its bucket, its key and its absolute local path."""

    bucket: str
    key: str
    path: str


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What was read from an object: ``etag`` is the MD5 hex of the content, like a single-part upload."""

    size: int
    mtime_ns: int
    etag: str
    owner_uid: int
    device: int = 0  # the file's identity when it was read, so a result read late can be checked
    inode: int = 0


class NotAnObject(OSError):
    """Raised by :func:`read_object` when the path is a link, not a regular file or unreadable."""


class Unsettled(NotAnObject):
    """Raised by :func:`read_object` when the file vanished or changed while it was read.

    Not a fault: the event that follows (its removal, or its next close) tells the rest.
    """


class Cancelled(Unsettled):
    """Raised by :func:`read_object` when its ``cancelled`` callback said to stop reading."""


def is_temporary(part: str) -> bool:
    """Whether one path part is a name tools use before the final rename."""
    return part.startswith(".") or part.endswith(TEMP_SUFFIXES)


def is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # os.fsdecode's surrogate escapes of non-UTF-8 bytes
        return False
    return True


def printable(path: str) -> str:
    """A path for a log line: bytes that are not UTF-8 shown as ``\\xNN``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


class BucketRoot:
    """The folder whose sub-folders are buckets."""

    def __init__(self, root: Path) -> None:
        self.path = os.path.abspath(root)
        self._below = os.path.join(self.path, "")  # the root and a separator
        self._reported: set[str] = set()

    def refuse_name(self, path: str) -> None:
        """Log, once, that the file or folder at ``path`` (below the root) cannot be an object
        because its name is not UTF-8; for a path inside such a folder, the folder is named."""
        parts = os.path.relpath(path, self.path).split(os.sep)
        bad = next((i for i, part in enumerate(parts) if not is_utf8(part)), len(parts) - 1)
        named = os.path.join(self.path, *parts[: bad + 1])
        if named in self._reported:
            return
        if len(self._reported) >= _REPORTED_MAX:
            self._reported.clear()
        self._reported.add(named)
        log.warning("not published: %s: the name is not valid UTF-8 (S3 keys must be)", printable(named))

    def locate(self, path: str, report: bool = False) -> ObjectRef | None:
        """The object at ``path``, or None when the path cannot be an object (temp name, outside,
        not UTF-8). ``report``: log the refusal of a name that is not UTF-8 (once per path)."""
        if any(part in (os.curdir, os.pardir) for part in path.split(os.sep)):
            return None  # no file is named "." or "..": not a path of an object, however it normalizes
        if path.startswith(self._below) and os.sep * 2 not in path and not path.endswith(os.sep):
            rel = path[len(self._below):]  # already absolute and normal (watchdog's and walk's paths)
        else:
            rel = os.path.relpath(os.path.abspath(path), self.path)
        parts = rel.split(os.sep)
        if len(parts) < 2 or parts[0] in (os.curdir, os.pardir):
            return None
        if any(is_temporary(part) for part in parts):
            return None
        if not is_utf8(rel):
            if report:
                self.refuse_name(path)
            return None
        return ObjectRef(parts[0], "/".join(parts[1:]), os.path.join(self.path, rel))

    def folder(self, bucket: str, prefix: str = "") -> str:
        """The local folder of a bucket, or of a key prefix ending in ``/`` inside it."""
        return os.path.join(self.path, bucket, *prefix.split("/")) if prefix else self.bucket_folder(bucket)

    def bucket_folder(self, bucket: str) -> str:
        return os.path.join(self.path, bucket)

    def buckets(self) -> list[str]:
        """The bucket names present now (real folders only, no links, no temporary names)."""
        try:
            entries = list(os.scandir(self.path))
        except OSError:  # gone or unreadable: no buckets to see now
            return []
        names = []
        for e in entries:
            if not e.is_dir(follow_symlinks=False) or is_temporary(e.name):
                continue
            if is_utf8(e.name):
                names.append(e.name)
            else:
                self.refuse_name(e.path)
        return sorted(names)

    def walk(self, folder: str) -> Iterator[ObjectRef]:
        """Every object below ``folder`` (a bucket or a folder inside one), links not followed.

        What :meth:`locate` decides of a path is decided once per folder here, and only the file's
        own name for each file: a start-up scan of a large bucket spent most of its time in it.
        """
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
            dirnames[:] = [d for d in dirnames if not is_temporary(d)]
            parts = dirpath[len(self._below):].split(os.sep) if dirpath.startswith(self._below) else []
            plain = (bool(parts) and os.sep * 2 not in dirpath and not dirpath.endswith(os.sep) and is_utf8(dirpath)
                     and not any(p in ("", os.curdir, os.pardir) or is_temporary(p) for p in parts))
            prefix = "/".join(parts[1:]) + "/" if len(parts) > 1 else ""
            for name in filenames:
                path = os.path.join(dirpath, name)
                if not plain:  # below a name that needs a closer look (or is refused, once)
                    ref = self.locate(path, report=True)
                    if ref is not None:
                        yield ref
                elif is_temporary(name):
                    continue
                elif not is_utf8(name):
                    self.refuse_name(path)
                else:
                    yield ObjectRef(parts[0], prefix + name, path)


def _real_path(path: str, flags: int = 0) -> tuple[int, str]:
    """An ``O_PATH`` descriptor of ``path`` (links followed) and its real path, as the kernel
    resolved it (``/proc/self/fd``; without /proc, :func:`os.path.realpath`, which resolves it again)."""
    fd = os.open(path, os.O_PATH | flags)
    try:
        real = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        real = os.path.realpath(path)
    except BaseException:
        os.close(fd)
        raise
    return fd, real


def _open_inside(root: BucketRoot, ref: ObjectRef) -> int:
    """Open the object for reading (``O_NOFOLLOW``, non-blocking), from a descriptor of its folder
    whose real path is checked to be inside the root: a folder swapped for a link in between cannot
    lead the open elsewhere. Raises OSError, or :class:`NotAnObject` for a folder leading outside."""
    folder, name = os.path.split(ref.path)
    root_fd, real_root = _real_path(root.path, os.O_DIRECTORY)
    os.close(root_fd)
    dir_fd, real = _real_path(folder, os.O_DIRECTORY)
    try:
        if real != real_root and not real.startswith(os.path.join(real_root, "")):
            raise NotAnObject(f"{ref.path}: its folder leads outside {root.path}")
        return os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)


def read_object(root: BucketRoot, ref: ObjectRef, cancelled: Callable[[], bool] | None = None) -> ObjectInfo:
    """Stat and hash one object; raises :class:`NotAnObject` with the reason.

    The file is opened with ``O_NOFOLLOW``, from its folder's descriptor once that folder's real
    path is known to be inside the root, and measured through the open descriptor: a link swapped in
    between the check and the read is refused, and the size matches the hashed bytes. It is read in
    slices of 1 MiB; ``cancelled``, when given, is asked before each one, and :class:`Cancelled`
    raised when it answers True.
    """
    try:
        fd = _open_inside(root, ref)
    except NotAnObject:
        raise
    except FileNotFoundError as e:
        raise Unsettled(f"{ref.path}: vanished before it was read") from e
    except OSError as e:
        reason = "a symbolic link" if e.errno == errno.ELOOP else (e.strerror or str(e))
        raise NotAnObject(f"{ref.path}: {reason}") from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotAnObject(f"{ref.path}: not a regular file")
        digest = hashlib.md5(usedforsecurity=False)
        size = 0
        if cancelled is None:
            while chunk := os.read(fd, _CHUNK):
                digest.update(chunk)
                size += len(chunk)
        else:
            size = _hash_slices(fd, digest, cancelled, ref)
        after = os.fstat(fd)
    except NotAnObject:
        raise
    except OSError as e:
        raise NotAnObject(f"{ref.path}: {e.strerror or e}") from e
    finally:
        os.close(fd)
    if after.st_mtime_ns != st.st_mtime_ns or size != after.st_size:
        raise Unsettled(f"{ref.path}: changed while it was read")
    return ObjectInfo(size=size, mtime_ns=after.st_mtime_ns, etag=digest.hexdigest(), owner_uid=st.st_uid,
                      device=st.st_dev, inode=st.st_ino)


def _hash_slices(fd: int, digest: Any, cancelled: Callable[[], bool], ref: ObjectRef) -> int:
    """Hash what ``fd`` reads into ``digest``, one slice at a time into one buffer; its size.

    ``os.readv`` and ``md5.update`` of a whole slice both let go of the interpreter's lock, so a
    thread hashing here leaves the loop that publishes free to run."""
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    size = 0
    while True:
        if cancelled():
            raise Cancelled(f"{ref.path}: hashing stopped")
        n = os.readv(fd, [buffer])
        if n == 0:
            return size
        digest.update(view[:n])
        size += n


def prepare_root(root: Path) -> Path:
    """Create the buckets folder if it is missing; raises :class:`BucketsError` if it is not a folder."""
    try:
        root.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise BucketsError(f"{root}: LAMBDALITE_BUCKETS is not a folder") from None
    except OSError as e:
        raise BucketsError(f"{root}: cannot create the buckets folder: {e.strerror or e}") from e
    return root
