"""Limits that hold even when a worker cannot act: the scaler watches each worker's invocation.

A worker enforces its invocation's time and memory limits, so a handler that freezes its worker
(``SIGSTOP`` to its parent), or a worker stuck for any other reason, would otherwise escape them.
The scaler and its workers share one anonymous memory map, the :class:`Board`, with one slot per
worker: the scaler writes the worker's pid and which control signals it means to send; the worker
writes its invocation's deadline (``time.monotonic()``, the same clock in every process) when the
invocation starts and clears it when it ends. Each worker marks the map ``MADV_DONTFORK`` before
it forks its sandbox, so no handler can write its own deadline away or forge a control signal.

Each step the scaler reads every slot (:meth:`Watchdog.check`) and kills the whole tree of a
worker that

- is stopped (``T`` in ``/proc/PID/stat``) past its invocation's deadline: at once;
- is stopped while its invocation's processes hold more memory than the function's limit: at once;
- is running but still inside an invocation ``GRACE`` seconds past its deadline (stuck);
- is stopped for more than ``GRACE`` seconds outside an invocation.

The event is then settled by the scaler's recovery with the limit's error (``Sandbox.Timedout`` or
``Runtime.OutOfMemory``), retried or dead-lettered as usual, and the worker's slot is freed.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import signal
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from workers import limits
from workers.limits import MB

log = logging.getLogger("lambdalite.scaler")

GRACE = 1.0  # seconds past a deadline a running worker gets to end its invocation itself
# pid (0: free), deadline (time.monotonic(); 0: no invocation), control signals the scaler sent (a
# bit per signal number). Each field is 8 bytes and aligned, so a reader never sees half a write.
_SLOT = struct.Struct("=qdq8x")
_PID, _DEADLINE, _ORDERS = 0, 8, 16
_F64 = struct.Struct("=d")
_I64 = struct.Struct("=q")
CONTROL = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)  # the worker's stop and hand-back signals


@dataclass(frozen=True, slots=True)
class Breach:
    """A limit the scaler enforced on a worker that could not: the error its event is settled with."""

    error_type: str  # Sandbox.Timedout | Runtime.OutOfMemory | Runtime.ExitError
    detail: str  # the message after "RequestId: ... Error: "


class Slot:
    """One worker's place on the board, as the worker uses it."""

    def __init__(self, board: mmap.mmap, index: int) -> None:
        self._map = board
        self._at = index * _SLOT.size

    def begin(self, deadline: float) -> None:
        """An invocation starts; it must end by ``deadline`` (``time.monotonic()``)."""
        _F64.pack_into(self._map, self._at + _DEADLINE, deadline)

    def end(self) -> None:
        """The invocation ended (its outcome is known; its processes are gone)."""
        _F64.pack_into(self._map, self._at + _DEADLINE, 0.0)

    def ordered(self, sig: int) -> bool:
        """Whether the scaler sent ``sig`` (a handler that sends it is not obeyed)."""
        orders: int = _I64.unpack_from(self._map, self._at + _ORDERS)[0]
        return bool(orders & (1 << sig))

    def seal(self) -> None:
        """Leave the board out of every process this one forks from now on (the sandbox)."""
        self._map.madvise(mmap.MADV_DONTFORK)


class Board:
    """The shared map of every worker's deadline, made by the scaler before it forks any worker."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._map = mmap.mmap(-1, size * _SLOT.size, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
        self._index: dict[int, int] = {}  # pid -> slot
        self._free = list(range(size - 1, -1, -1))
        self._reserved: int | None = None

    def reserve(self) -> Slot | None:
        """A free slot for the worker about to be forked (None when all are taken: it runs unwatched)."""
        if not self._free:
            return None
        index = self._free.pop()
        _SLOT.pack_into(self._map, index * _SLOT.size, 0, 0.0, 0)
        self._reserved = index
        return Slot(self._map, index)

    def assign(self, pid: int) -> None:
        """The worker forked into the slot just reserved is ``pid``."""
        if self._reserved is None:
            return
        _I64.pack_into(self._map, self._reserved * _SLOT.size + _PID, pid)
        self._index[pid], self._reserved = self._reserved, None

    def unreserve(self) -> None:
        """The fork the slot was reserved for failed: the slot is free again."""
        if self._reserved is not None:
            self._free.append(self._reserved)
            self._reserved = None

    def release(self, pid: int) -> None:
        """The worker ``pid`` is gone: its slot is free again."""
        index = self._index.pop(pid, None)
        if index is not None:
            _SLOT.pack_into(self._map, index * _SLOT.size, 0, 0.0, 0)
            self._free.append(index)

    def deadline(self, pid: int) -> float | None:
        """The deadline of ``pid``'s invocation; 0.0 between invocations; None for a pid not here."""
        index = self._index.get(pid)
        if index is None:
            return None
        value: float = _F64.unpack_from(self._map, index * _SLOT.size + _DEADLINE)[0]
        return value

    def send(self, pid: int, sig: int) -> None:
        """Signal worker ``pid``, marking ``sig`` as the scaler's own so the worker obeys it."""
        index = self._index.get(pid)
        if index is not None and sig in CONTROL:
            at = index * _SLOT.size + _ORDERS
            _I64.pack_into(self._map, at, _I64.unpack_from(self._map, at)[0] | (1 << sig))
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)

    @property
    def pids(self) -> list[int]:
        return list(self._index)


def stopped(pid: int, fd: int | None = None) -> bool:
    """Whether ``pid`` is stopped (by a signal, or a tracer); False for a process that is gone.
    ``fd``: its ``/proc/PID/stat`` held open (one read instead of open, read, read, close)."""
    try:
        stat = os.pread(fd, 1024, 0) if fd is not None else limits._read(f"/proc/{pid}/stat")
    except OSError:
        return False
    state = stat[stat.rfind(b")") + 2: stat.rfind(b")") + 3]
    return state in (b"T", b"t")


class Watchdog:
    """The scaler's side: finds workers that cannot enforce their limits, and kills their trees."""

    def __init__(self, board: Board, grace: float = GRACE) -> None:
        self.board = board
        self.grace = grace
        self._stopped_since: dict[int, float] = {}
        self._killed: set[int] = set()  # killed, not yet collected by the scaler
        self._stat: dict[int, int] = {}  # pid -> its /proc/PID/stat, open until it is collected

    def check(self, now: float, workers: dict[int, tuple[float, int]]) -> dict[int, Breach]:
        """Kill every worker of ``workers`` (pid -> its function's timeout in seconds and memory limit
        in MB) that cannot act on its own limits; returns what each one killed breached."""
        killed: dict[int, Breach] = {}
        for pid, (timeout, memory) in workers.items():
            deadline = self.board.deadline(pid)
            if deadline is None or pid in self._killed:
                continue
            frozen = stopped(pid, self._stat_fd(pid))
            if not frozen:
                self._stopped_since.pop(pid, None)
            since = self._stopped_since.setdefault(pid, now) if frozen else now
            breach = self._judge(pid, now, deadline, frozen, since, timeout, memory)
            if breach is not None:
                kill(pid)
                self._stopped_since.pop(pid, None)
                self._killed.add(pid)
                killed[pid] = breach
        return killed

    def _judge(self, pid: int, now: float, deadline: float, frozen: bool, since: float, timeout: float,
               memory: int) -> Breach | None:
        if deadline == 0.0:  # between invocations: a worker frozen for long holds a slot for nothing
            if frozen and now - since > self.grace:
                log.warning("worker %d stopped for %.1fs outside an invocation; killed", pid, now - since)
                return Breach("Runtime.ExitError", "Runtime exited with error: the worker was stopped")
            return None
        late = now - deadline
        if frozen or late > self.grace:
            rss = _invocation_rss(pid)
            if rss > memory * MB:
                log.warning("worker %d %s; its invocation holds %d MB of %d: killed", pid,
                            "stopped" if frozen else "stuck", rss // MB, memory)
                return Breach("Runtime.OutOfMemory", f"Runtime exited with error: memory limit of {memory} MB "
                              f"exceeded ({-(-rss // MB)} MB used)")
            if late > 0:
                log.warning("worker %d %s %.2fs past its invocation's deadline; killed", pid,
                            "stopped" if frozen else "stuck", late)
                return Breach("Sandbox.Timedout", f"Task timed out after {timeout + late:.2f} seconds")
        return None

    def _stat_fd(self, pid: int) -> int | None:
        fd = self._stat.get(pid)
        if fd is None:
            try:
                fd = self._stat[pid] = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return None
        return fd

    def forget(self, pid: int) -> None:
        """The worker ``pid`` was collected: its slot is free."""
        self._stopped_since.pop(pid, None)
        self._killed.discard(pid)
        fd = self._stat.pop(pid, None)
        if fd is not None:
            os.close(fd)
        self.board.release(pid)


def _invocation_rss(pid: int) -> int:
    """Resident memory of the processes below worker ``pid`` (its sandbox and what that started)."""
    total = 0
    for child in limits.descendant_pids(pid) or []:
        try:
            total += int(limits._read(f"/proc/{child}/statm").split()[1]) * limits.PAGE
        except (OSError, IndexError, ValueError):
            continue
    return total


def kill(pid: int) -> None:
    """Kill worker ``pid`` and every process below it: frozen first (so nothing forks its way out
    meanwhile), then SIGKILL. Gone already is fine."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGSTOP)
    for child in limits._child_pids(pid) or []:
        # The sandbox leads its own process group: one killpg stops all of it however fast it forks
        # (a pid that leads no group: nothing to do).
        limits.kill_group(child)
    _kill_frozen([pid])


def kill_orphans(known: Iterable[int]) -> int:
    """Kill every child of this process (a subreaper) that is not one of ``known`` (its workers),
    with everything below it: what an invocation left when its worker died. Returns how many."""
    keep = set(known)
    orphans = [pid for pid in limits._child_pids(os.getpid()) or [] if pid not in keep]
    if orphans:
        _kill_frozen(orphans)
    return len(orphans)


def _kill_frozen(roots: list[int]) -> None:
    """SIGSTOP ``roots`` and their descendants until no new process appears, then SIGKILL them all."""
    frozen: set[int] = set()
    fresh = list(roots)
    for _ in range(50):
        for pid in fresh:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGSTOP)
        frozen.update(fresh)
        below = {p for root in roots for p in (limits.descendant_pids(root) or [])}
        fresh = [p for p in below if p not in frozen]
        if not fresh:
            break
    for pid in frozen:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
