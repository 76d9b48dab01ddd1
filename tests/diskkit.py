"""A disk that tests can fill up and free again, for real.

As root (CI), a small tmpfs is mounted on the folder: filling it writes a file until the kernel
answers ENOSPC, then creates empty files until it has no inode left either, and freeing removes
them. Without the right to mount, the kernel is made to refuse writes another real way: for a
redis-server, a file-size limit (RLIMIT_FSIZE, lowered and raised again with prlimit, so its
append-only file gets EFBIG); for a temp folder, taking away its write permission (EACCES). No
write is faked: the processes under test meet the kernel's own error.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
from pathlib import Path

import psutil

from broker.redis_server.embedded import RedisServer


def can_mount() -> bool:
    return os.geteuid() == 0 and shutil.which("mount") is not None


class FullDisk:
    """``folder`` on a disk of its own (a tmpfs of ``size``) when possible; see the module docstring."""

    def __init__(self, folder: Path, size: str = "4m", inodes: int = 256, mount: bool | None = None) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.mounted = can_mount() if mount is None else mount
        if self.mounted:
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},nr_inodes={inodes},mode=0755", "tmpfs",
                            str(folder)], check=True, capture_output=True, timeout=30)
        self.fillers = folder / ".fill"
        self.servers: list[RedisServer] = []
        self.full = False

    @property
    def how(self) -> str:
        return "tmpfs" if self.mounted else "rlimit"

    def redis(self) -> RedisServer:
        """A redis-server keeping its append-only file (``appendfsync everysec``, as the embedded
        one) on this disk, started."""
        server = RedisServer(self.folder / "redis", appendonly=True, appendfsync="everysec")
        # Python starts children with SIGXFSZ at its default (terminate); the server must get EFBIG.
        server.args = ["sh", "-c", 'trap "" XFSZ; exec "$@"', "sh", *server.args]
        self.servers.append(server)
        return server.start()

    def fill(self) -> None:
        """Leave no room: the next write to this disk fails."""
        self.full = True
        if not self.mounted:
            for server in self.servers:
                if server.proc is not None:
                    psutil.Process(server.proc.pid).rlimit(psutil.RLIMIT_FSIZE, (1, psutil.RLIM_INFINITY))
            mode = stat.S_IMODE(self.folder.stat().st_mode)
            self.folder.chmod(mode & ~0o222)
            return
        self.fillers.mkdir(exist_ok=True)
        fd = os.open(self.fillers / "blocks", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            chunk = b"\0" * (1 << 16)
            with contextlib.suppress(OSError):  # ENOSPC: the blocks are all taken
                while True:
                    os.write(fd, chunk)
        finally:
            os.close(fd)
        n = 0
        with contextlib.suppress(OSError):  # ENOSPC: the inodes are all taken
            while True:
                (self.fillers / f"inode-{n}").touch()
                n += 1

    def free(self) -> None:
        """Give the room back."""
        self.full = False
        if not self.mounted:
            self.folder.chmod(stat.S_IMODE(self.folder.stat().st_mode) | 0o200)
            for server in self.servers:
                if server.proc is not None:
                    psutil.Process(server.proc.pid).rlimit(psutil.RLIMIT_FSIZE,
                                                           (psutil.RLIM_INFINITY, psutil.RLIM_INFINITY))
            return
        shutil.rmtree(self.fillers, ignore_errors=True)

    def close(self) -> None:
        """Stop the servers and unmount (always call it, in a ``finally``)."""
        try:
            for server in self.servers:
                server.kill()
        finally:
            if self.mounted:
                subprocess.run(["umount", "-l", str(self.folder)], check=False, capture_output=True, timeout=30)
            elif self.full:
                self.free()
