"""The scaler's worker processes: forked warm, named after their owner, signalled and stopped.

A worker is forked from the scaler, which has already imported lambdalite and every handler, so a
cold start costs a fork. Its name (:func:`worker_name`) says which host and which scaler it
belongs to, so that any scaler can tell whether the worker that holds a job is gone. A stop
escalates from outside the worker: SIGTERM (finish the invocation), then SIGUSR1 (hand the event
back), then SIGKILL; a process already gone counts as stopped.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from broker import stacklock
from broker.connection import connect
from broker.kernel import die_with_parent
from broker.registry import Function, Registry
from broker.settings import Settings
from workers.runtime import Runtime
from workers.watchdog import Slot
from workers.worker import FunctionWorker

log = logging.getLogger("lambdalite.scaler")


@dataclass
class WorkerProc:
    """One forked worker as the scaler tracks it."""

    pid: int
    fn: str
    name: str
    started: float
    state: str = "starting"  # starting | idle | busy
    idle_since: float | None = None
    jobs_seen: int = -1
    retiring: bool = False


def worker_name(host: str, sid: str, function: str, pid: int) -> str:
    """``host|scaler.function.pid``: a host name may hold dots, never "|"; the rest never dots."""
    return f"{host}|{sid}.{function}.{pid}"


def parse_worker_name(name: str) -> tuple[str, str, int] | None:
    """(host, scaler id, pid) of a name made by :func:`worker_name`, or None for any other name."""
    host, bar, rest = name.partition("|")
    parts = rest.split(".")
    if not bar or len(parts) != 3 or not (parts[2].isascii() and parts[2].isdigit()):
        return None
    return host, parts[0], int(parts[2])


def fork(settings: Settings, registry: Registry, fn: Function, handler: Any, host: str, sid: str,
         slot: Slot | None = None) -> int:
    """Fork a worker for ``fn`` named for scaler ``sid`` on ``host``; its pid. The child never returns.

    ``slot``: the worker's place on the scaler's watchdog board (see :mod:`workers.watchdog`)."""
    sys.stdout.flush()
    # Frozen objects are left alone by the child's garbage collector, so it does not touch
    # (and copy) every page of the warm heap it shares with the scaler.
    gc.freeze()
    pid = os.fork()
    if pid:
        gc.unfreeze()
        return pid
    code = 0
    stacklock.forget_inherited()
    try:
        _run_worker(settings, registry, fn, handler, worker_name(host, sid, fn.name, os.getpid()), slot)
    except BaseException:  # noqa: B036 - a forked child must never return into the scaler
        log.exception("worker for %s failed", fn.name)
        code = 1
    finally:
        sys.stdout.flush()
        os._exit(code)


def _run_worker(settings: Settings, registry: Registry, fn: Function, handler: Any, name: str,
                slot: Slot | None) -> None:
    parent = os.getppid()
    die_with_parent(signal.SIGUSR1)  # the scaler is gone: hand the event back and stop
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_DFL)
    if os.getppid() != parent:
        return
    if slot is not None:
        slot.seal()  # before the sandbox forks: no handler can reach the board
    version = registry.revision.version if registry.revision is not None else "$LATEST"
    runtime = Runtime(fn, handler, name, slot=slot, version=version)
    runtime.prepare()  # the sandbox forks and gets ready while this process connects and sets up
    client = connect(settings.redis_dsn)
    worker = FunctionWorker(fn, registry, client, runtime, name, slot=slot)
    worker.serve()


def send(pid: int, sig: int) -> None:
    """Signal a worker; one that is already gone is left be."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def stop(procs: dict[int, WorkerProc], grace: float, send: Callable[[int, int], None] = send) -> None:
    """Warm-stop ``procs``; after ``grace`` s hand back what still runs; kill stragglers.

    Returns once every one of them is collected, or after the SIGKILL. ``send`` signals a worker
    (the scaler's marks the signal as its own: see :meth:`workers.watchdog.Board.send`).
    """
    for pid in procs:
        send(pid, signal.SIGTERM)
    end = time.monotonic() + grace
    abandoned = False
    while procs:
        _collect(procs)
        if not procs:
            break
        if time.monotonic() >= end and not abandoned:
            for pid in procs:
                send(pid, signal.SIGUSR1)  # abandon: requeue the event, not an attempt
            abandoned, end = True, time.monotonic() + 0.4
        elif time.monotonic() >= end:
            for pid in procs:
                send(pid, signal.SIGKILL)
            time.sleep(0.05)
            _collect(procs)
            break
        time.sleep(0.02)


def _collect(procs: dict[int, WorkerProc]) -> None:
    for pid in list(procs):
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid
        if done:
            procs.pop(pid)
