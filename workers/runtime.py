"""The invocation runtime: runs one event in the function's sandbox under its limits.

The worker sends the event to the sandbox, then watches: the deadline (to the millisecond, via
``select``), the RSS of every process the invocation started, and its TMPDIR. A breach kills the
whole tree and the sandbox is replaced before the next invocation. Every invocation writes
Lambda's ``START`` / ``END`` / ``REPORT`` lines to stdout.
"""

from __future__ import annotations

import math
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psutil

from broker import cost, kernel
from broker.registry import Function
from workers import isolation, limits
from workers.capture import Capture
from workers.limits import MB, Limits
from workers.sandbox import Sandbox, SandboxGone, error_object
from workers.watchdog import Slot

SAMPLE_INTERVAL = 0.05  # seconds between memory / disk samples while an invocation runs
MAX_LEFTOVERS = 64  # more processes than this left behind by an invocation: recycle the sandbox


def run(event: dict[str, Any]) -> None:
    """The RQ job function that every lambdalite job names.

    It is never called in-process: a lambdalite worker recognises this name, decodes the event
    envelope and runs the registered handler in its sandbox. Any other job function is refused.
    """
    raise RuntimeError("lambdalite jobs run only inside a lambdalite worker")


@dataclass(frozen=True, slots=True)
class Invocation:
    """What happened to one invocation."""

    request_id: str
    status: str  # success | error | timeout | memory | storage | crash | abandoned
    result: Any
    error: dict[str, Any] | None
    duration_ms: float
    max_memory_mb: int
    max_storage_mb: float
    init_ms: float | None

    @property
    def ok(self) -> bool:
        return self.status == "success"


class Runtime:
    """One function's execution environment as its worker sees it."""

    def __init__(
        self,
        fn: Function,
        handler: Callable[[Any, Any], Any] | None,
        worker_name: str,
        out: Callable[[str], None] | None = None,
        slot: Slot | None = None,
        version: str = "$LATEST",
    ) -> None:
        self.fn = fn
        self.version = version  # the START lines' Version: the running revision of lambdalite.toml
        self.slot = slot  # where the scaler's watchdog reads each invocation's deadline
        self.limits = Limits(fn.timeout, fn.memory, fn.ephemeral_storage)
        self.tmp = isolation.private_tmp(fn)  # None: a TMPDIR per invocation instead, made in self.folder
        self.folder = isolation.invocation_folder(fn) if self.tmp is None else None
        self.sandbox = Sandbox(fn, handler, worker_name, self.tmp)
        # The idempotency helper's way to Redis from a sandbox that has none (set by the worker).
        self.door: Callable[[dict[str, Any]], dict[str, Any]] | None = None
        self.me = psutil.Process()
        self.log = Capture(out or _stdout, fn.log_format)  # the invocation's lines: relayed to stdout and kept
        self._out = self.log.line
        self._tmpdir: str | None = None  # the next invocation's, being made ahead (see prepare_tmpdir)
        kernel.become_subreaper()

    def invoke(self, request_id: str, event: Any, abandon: Callable[[], bool] = lambda: False,
               job_data: bytes | None = None) -> Invocation:
        """Run ``event``; always returns (a handler's failure is an :class:`Invocation` too).

        When ``abandon()`` turns true the invocation is killed and returns status "abandoned".
        ``job_data``, when given, is the RQ job data (JSON) that ``event`` was read from: the sandbox
        gets it as it is, so a large event costs no second encoding.
        """
        if self.slot is None:
            return self._invoke(request_id, event, abandon, job_data)
        # The scaler enforces the deadline itself if this process cannot (stopped, stuck).
        self.slot.begin(time.monotonic() + self.limits.timeout)
        try:
            return self._invoke(request_id, event, abandon, job_data)
        finally:
            self.slot.end()

    def _invoke(self, request_id: str, event: Any, abandon: Callable[[], bool],
                job_data: bytes | None) -> Invocation:
        self.prepare()
        self.log.begin()
        self._out(f"START RequestId: {request_id} Version: {self.version}")
        tmpdir, self._tmpdir = self._tmpdir or self._tmpdir_name(), None  # the sandbox makes it
        started = time.perf_counter()
        deadline = started + self.limits.timeout
        peak_rss = peak_disk = 0
        status, reply = "crash", None
        init_ms = None
        try:
            self.sandbox.ready()
            init_ms, self.sandbox.init_ms = self.sandbox.init_ms, None
            request = {"id": request_id, "tmpdir": isolation.SANDBOX_TMP if self.tmp else tmpdir,
                       "deadline": time.time() + self.limits.timeout, "door": self.door is not None}
            if job_data is None:
                self.sandbox.send({**request, "event": event})
            else:
                self.sandbox.send(request, raw={"job": job_data})
            while True:
                now = time.perf_counter()
                wait = min(SAMPLE_INTERVAL, deadline - now)
                if wait > 0 and self.log.wait(self.sandbox.replies, wait):
                    reply = self.sandbox.receive()
                    if "door" in reply and self.door is not None:  # the handler's idempotency helper
                        self.sandbox.send(self.door(reply))
                        reply = None
                        continue
                    if "tmpdir_error" in reply:  # a full disk (ENOSPC), a temp root gone or read-only
                        self.sandbox.init_ms = init_ms  # reported with the first invocation that runs
                        if self.folder is not None and os.path.lexists(tmpdir):
                            self.folder.renew()  # something else made it: not the invocation's to use
                        return self._without_tmpdir(request_id, reply["tmpdir_error"])
                    status = "success" if reply["ok"] else "error"
                    break
                if time.perf_counter() >= deadline:
                    status = "timeout"
                    break
                if abandon():
                    status = "abandoned"
                    break
                rss = limits.tree_rss(self.me)
                disk = limits.dir_usage(tmpdir)
                peak_rss, peak_disk = max(peak_rss, rss), max(peak_disk, disk)
                if rss > self.limits.memory_mb * MB:
                    status = "memory"
                    break
                if disk > self.limits.storage_mb * MB:
                    status = "storage"
                    break
        except SandboxGone:
            status = "crash"
        duration_ms = (time.perf_counter() - started) * 1000
        if reply is not None:
            peak_rss = max(peak_rss, reply.get("max_rss_kb", 0) * 1024)
            if reply.get("init_ms") is not None:  # a provided runtime's start to its first /next
                init_ms = reply["init_ms"]
        peak_disk = max(peak_disk, limits.dir_usage(tmpdir))
        broken = reply is None or reply.get("recycle", False)
        # A provided function's runtime (the sandbox's process group) stays warm between invocations.
        group = self.sandbox.pid if self.fn.provided and not broken else None
        strays = limits.strays(self.me, keep=self.sandbox.pid, keep_group=group)
        if len(strays) > MAX_LEFTOVERS:
            broken = True  # a swarm (a fork bomb that outlived its handler): treat it as a breach
        if broken and self.sandbox.pid:
            # The sandbox leads its own process group, and whatever it forked is in it unless it
            # moved out: one killpg stops them all at once, however fast they multiply.
            limits.kill_group(self.sandbox.pid)
        # Nothing an invocation started outlives it; a broken sandbox goes too. (The usual case,
        # the sandbox alone below the worker, needs no second walk of the tree.)
        if broken or strays:
            limits.kill_tree(self.me, keep=None if broken else self.sandbox.pid, keep_group=group)
        exit_status = self._reap(wait_for_sandbox=broken)
        if self.tmp is not None:
            if broken:
                self.tmp.wipe()  # the next sandbox is a new execution environment
        else:
            try:
                os.rmdir(tmpdir)  # the usual case, an empty folder: one call instead of rmtree's walk
            except OSError:
                shutil.rmtree(tmpdir, ignore_errors=True)
                if self.folder is not None and os.path.lexists(tmpdir):
                    self.folder.renew()  # the next invocation's must be new
        if broken:
            self.prepare()  # the next invocation finds a fresh sandbox already set up
        error = reply.get("error") if reply else self._error(status, request_id, duration_ms, peak_rss,
                                                              peak_disk, exit_status)
        inv = Invocation(
            request_id=request_id, status=status, result=reply.get("result") if reply else None,
            error=error, duration_ms=duration_ms, max_memory_mb=math.ceil(peak_rss / MB),
            max_storage_mb=round(peak_disk / MB, 1), init_ms=init_ms,
        )
        self.log.finish()
        self._out(f"END RequestId: {request_id}")
        self._out(report_line(inv, self.fn))
        return inv

    def _without_tmpdir(self, request_id: str, why: str) -> Invocation:
        """The invocation that could not get its TMPDIR: a failure like any other, nothing run."""
        where = tempfile.gettempdir()
        error = error_object("Runtime.EphemeralStorageUnavailable",
                             f"RequestId: {request_id} Error: cannot create the invocation's TMPDIR in {where}: {why}")
        inv = Invocation(request_id=request_id, status="error", result=None, error=error, duration_ms=0.0,
                         max_memory_mb=0, max_storage_mb=0.0, init_ms=None)
        self._out(f"END RequestId: {request_id}")
        self._out(report_line(inv, self.fn))
        return inv

    def prepare(self) -> None:
        """Start the sandbox if there is none; it gets ready in parallel with the caller."""
        if not self.sandbox.running:
            with self.log.inherited():  # the sandbox's stdout and stderr are the log's pipe
                self.sandbox.start()

    def prepare_tmpdir(self) -> None:
        """Have the sandbox make the next invocation's TMPDIR now, in parallel with the caller (the
        worker calls this as a job arrives, before it reads the job); :meth:`invoke` uses it."""
        if self._tmpdir is None and self.sandbox.running and self.tmp is None:
            path = self._tmpdir_name()
            try:
                self.sandbox.send({"mkdir": path})
            except SandboxGone:
                return  # the invocation meets it
            self._tmpdir = path

    def _tmpdir_name(self) -> str:
        if self.tmp is not None:
            return self.tmp.host
        if self.folder is not None:
            return self.folder.invocation
        return os.path.join(tempfile.gettempdir(), f"lambdalite-{self.fn.name}-{secrets.token_hex(8)}")

    def _reap(self, wait_for_sandbox: bool) -> int | None:
        """Collect exited children; returns the sandbox's wait status when it is gone."""
        pid = self.sandbox.pid
        status = None
        if wait_for_sandbox and pid:
            try:
                _, status = os.waitpid(pid, 0)
            except ChildProcessError:
                status = None
            self.sandbox.forget()
        limits.reap()
        return status

    def _error(self, status: str, request_id: str, duration_ms: float, rss: int, disk: int,
               exit_status: int | None) -> dict[str, Any]:
        prefix = f"RequestId: {request_id} Error: "
        if status == "timeout":
            return error_object("Sandbox.Timedout", f"{prefix}Task timed out after {duration_ms / 1000:.2f} seconds")
        if status == "memory":
            return error_object("Runtime.OutOfMemory", f"{prefix}Runtime exited with error: memory limit of "
                                f"{self.limits.memory_mb} MB exceeded ({math.ceil(rss / MB)} MB used)")
        if status == "abandoned":
            return error_object("Runtime.Stopped", f"{prefix}the worker stopped during the invocation")
        if status == "storage":
            return error_object("Runtime.EphemeralStorageExceeded", f"{prefix}ephemeral storage limit of "
                                f"{self.limits.storage_mb} MB exceeded ({disk / MB:.1f} MB used)")
        return error_object("Runtime.ExitError", f"{prefix}Runtime exited with error: {_describe(exit_status)}")

    def close(self) -> None:
        """Kill the sandbox and everything below the worker (used on stop); remove a TMPDIR made ahead."""
        if self.sandbox.pid:
            limits.kill_group(self.sandbox.pid)
        limits.kill_tree(self.me)
        self._reap(wait_for_sandbox=self.sandbox.running)
        if self._tmpdir is not None and self.tmp is None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
        self._tmpdir = None
        if self.tmp is not None:
            self.tmp.remove()
        if self.folder is not None:
            self.folder.remove()


def _describe(wait_status: int | None) -> str:
    if wait_status is None:
        return "process vanished"
    if os.WIFSIGNALED(wait_status):
        sig = os.WTERMSIG(wait_status)
        try:
            import signal

            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return f"signal: {name}"
    return f"exit status {os.WEXITSTATUS(wait_status)}"


def report_line(inv: Invocation, fn: Function) -> str:
    """Lambda's tab-separated REPORT line."""
    parts = [
        f"REPORT RequestId: {inv.request_id}",
        f"Duration: {inv.duration_ms:.2f} ms",
        f"Billed Duration: {cost.billed_ms(inv.duration_ms, inv.init_ms)} ms",
        f"Memory Size: {fn.memory} MB",
        f"Max Memory Used: {inv.max_memory_mb} MB",
    ]
    if inv.init_ms is not None:
        parts.append(f"Init Duration: {inv.init_ms:.2f} ms")
    parts.append(f"Max Ephemeral Storage Used: {inv.max_storage_mb} MB")
    if not inv.ok:
        parts.append(f"Status: {inv.status}")
    return "\t".join(parts)


def _stdout(line: str) -> None:
    try:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    except (OSError, ValueError):
        pass
