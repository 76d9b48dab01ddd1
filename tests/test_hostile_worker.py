"""Handlers that turn on their own worker, on the real scaler and workers: a frozen (SIGSTOP),
killed (SIGKILL) or signalled (SIGTERM, SIGINT, SIGUSR1) worker, a daemon that kills the worker,
a worker frozen while its sandbox is over its memory limit.

Each time: the event is settled (here: dead-lettered, ``retries = 0``) within ``timeout`` + 2 s of
the handler's start with the limit's error, no process the invocation started is left, the
function's only slot (``max_concurrency = 1``) is free again for its next event, and another
function's event, queued meanwhile, runs.
"""

from __future__ import annotations

import faulthandler
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis

from broker import results
from tests.stack import Scaler, publish
from tests.waiting import wait_until
from workers.watchdog import Board, Slot, Watchdog, stopped

FIXTURES = Path(__file__).parent / "fixtures"
TIMEOUT = 2

TOML = f"""
[functions.hostile]
handler = "worker_attacks.attack"
timeout = {TIMEOUT}
memory = 128
retries = 0
max_concurrency = 1

[functions.other]
handler = "worker_attacks.ok"
timeout = 10
"""


def notes(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def in_group(pgid: int) -> list[int]:
    """Live processes of process group ``pgid`` (the sandbox leads its own)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc.pid)
        except (OSError, psutil.Error):
            continue
    return found


def run_attack(project: Path, url: str, attack: str, **extra: Any) -> dict[str, Any]:
    """Publish the attack; check the event's end and what follows; returns what the test needs more."""
    shutil.copy(FIXTURES / "worker_attacks.py", project / "worker_attacks.py")
    (project / "lambdalite.toml").write_text(TOML)
    log, beat = project / "pids.log", project / "beat.log"
    client = redis.Redis.from_url(url)
    with Scaler(project, LAMBDALITE_MAX_WORKERS="2", LAMBDALITE_IDLE_TIMEOUT="30") as scaler:
        event = publish(url, project, "hostile", {"attack": attack, "log": str(log), "beat": str(beat), **extra})
        [note] = wait_until(lambda: notes(log), timeout=15, what="the hostile handler starts")
        other = publish(url, project, "other", {})
        after = publish(url, project, "hostile", {"attack": "ok"})  # waits for the function's only slot

        outcome = wait_until(lambda: results.fetch(client, event.id), timeout=TIMEOUT + 5, what="the event is settled")
        settled = time.time() - note["at"]
        assert settled <= TIMEOUT + 2, f"settled {settled:.2f}s after the handler started"
        assert outcome.status == "dead" and outcome.attempts == 1, outcome

        done = wait_until(lambda: results.fetch(client, other.id), timeout=10, what="the other function's event runs")
        assert done.ok, done
        assert (next_one := wait_until(lambda: results.fetch(client, after.id), timeout=10,
                                       what="the slot is free")).ok, next_one

        left = [pid for pid in (note["sandbox"], note.get("daemon")) if pid and not gone(pid)]
        assert not left, f"left running: {left}"
        assert not in_group(note["sandbox"]), "a process of the sandbox's group is left"
        workers = {p.pid for p in psutil.Process(scaler.proc.pid).children()}
        return {"outcome": outcome, "note": note, "settled": settled, "workers": workers, "beat": beat,
                "other_done": done, "scaler": scaler}


@pytest.mark.timeout(60)
def test_a_handler_that_freezes_its_worker_times_out_all_the_same(project: Path, redis_url: str) -> None:
    got = run_attack(project, redis_url, "freeze_worker")
    assert got["outcome"].error["errorType"] == "Sandbox.Timedout", got["outcome"]
    assert got["settled"] >= TIMEOUT, "not before the deadline"
    assert got["note"]["worker"] not in got["workers"] and gone(got["note"]["worker"])


@pytest.mark.timeout(60)
def test_a_frozen_worker_whose_sandbox_is_over_its_memory_is_settled_with_the_memory_error(
        project: Path, redis_url: str) -> None:
    got = run_attack(project, redis_url, "freeze_worker", mb=200)
    error = got["outcome"].error
    assert error["errorType"] == "Runtime.OutOfMemory", error
    assert "memory limit of 128 MB exceeded" in error["errorMessage"], error
    assert gone(got["note"]["worker"])


@pytest.mark.timeout(60)
def test_a_frozen_worker_whose_handler_forks_and_forks_leaves_nothing(project: Path, redis_url: str) -> None:
    got = run_attack(project, redis_url, "freeze_and_fork")
    # 64 processes' resident memory, summed as the worker sums it, passes 128 MB once most of them
    # are there: the memory error then, else the deadline's.
    assert got["outcome"].error["errorType"] in ("Runtime.OutOfMemory", "Sandbox.Timedout"), got["outcome"]
    # The processes that got as far as noting their pid (maybe none: the tree may be killed while it
    # forks); run_attack checked that nothing of the sandbox's process group is left either.
    pids = [int(line) for line in got["beat"].read_text().split()] if got["beat"].exists() else []
    assert [pid for pid in pids if not gone(pid)] == []


@pytest.mark.timeout(60)
def test_a_handler_that_kills_its_worker_is_settled_and_leaves_nothing(project: Path, redis_url: str) -> None:
    got = run_attack(project, redis_url, "kill_worker")
    assert got["outcome"].error["errorType"] == "Runtime.ExitError", got["outcome"]
    assert got["settled"] < TIMEOUT, "a dead worker is noticed at once, not at the deadline"


@pytest.mark.timeout(60)
def test_control_signals_from_a_handler_are_not_obeyed(project: Path, redis_url: str) -> None:
    """SIGTERM / SIGINT would stop the worker, SIGUSR1 hand the event back uncounted (again and again):
    from a handler, the worker ignores them, and the invocation times out as usual."""
    got = run_attack(project, redis_url, "signal_worker")
    assert got["outcome"].error["errorType"] == "Sandbox.Timedout", got["outcome"]
    assert got["note"]["worker"] in got["workers"], "the worker did not stop"
    assert "stopped during" not in got["scaler"].output()


@pytest.mark.timeout(60)
def test_a_daemon_that_kills_the_worker_does_not_outlive_it(project: Path, redis_url: str) -> None:
    got = run_attack(project, redis_url, "daemon_kills_worker")
    assert got["outcome"].error["errorType"] == "Runtime.ExitError", got["outcome"]
    size = got["beat"].stat().st_size
    time.sleep(0.5)
    assert got["beat"].stat().st_size == size, "the daemon still writes"


@pytest.mark.skipif(os.geteuid() != 0, reason="a sandbox user needs a stack that runs as root")
@pytest.mark.timeout(60)
def test_as_the_sandbox_user_a_handler_cannot_signal_its_worker_and_a_killed_workers_sandbox_goes_too(
        redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Handlers as the sandbox user (the default as root) cannot signal their worker at all. A worker
    killed from outside (the OOM killer) leaves a sandbox that lost its parent-death signal when it
    changed its uid: the scaler, its subreaper, kills it."""
    folder = Path(tempfile.mkdtemp(prefix="ll-guard-"))
    try:
        folder.chmod(0o755)  # the sandbox user imports the handlers from here
        (folder / "buckets").mkdir()
        shared = folder / "notes"
        shared.mkdir()
        shared.chmod(0o777)
        shutil.copy(FIXTURES / "worker_attacks.py", folder / "worker_attacks.py")
        (folder / "lambdalite.toml").write_text(TOML)
        monkeypatch.chdir(folder)
        client = redis.Redis.from_url(redis_url)
        with Scaler(folder, LAMBDALITE_SANDBOX_USER="nobody"):
            event = publish(redis_url, folder, "hostile", {"attack": "freeze_worker", "log": str(shared / "a")})
            outcome = wait_until(lambda: results.fetch(client, event.id), timeout=15, what="the event is settled")
            assert outcome.error["errorType"] == "PermissionError", outcome

            event = publish(redis_url, folder, "hostile", {"attack": "linger", "log": str(shared / "b")})
            [note] = wait_until(lambda: notes(shared / "b"), timeout=15, what="the handler starts")
            assert psutil.Process(note["sandbox"]).uids().real != 0
            os.kill(note["worker"], signal.SIGKILL)
            outcome = wait_until(lambda: results.fetch(client, event.id), timeout=5, what="the event is settled")
            assert outcome.error["errorType"] == "Runtime.ExitError", outcome
            wait_until(lambda: gone(note["sandbox"]), timeout=2, what="the sandbox is killed")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# -- the watchdog on its own, on real processes standing in for workers -------------------------------

def _stand_in(children: int = 0) -> subprocess.Popen[bytes]:
    """A process that sleeps (a worker stuck in a call), with ``children`` sleeping below it."""
    code = "import os, time\n" + "if os.fork() == 0: time.sleep(60)\n" * children + "time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code])
    wait_until(lambda: len(psutil.Process(proc.pid).children()) == children, timeout=5, what="the stand-in forks")
    return proc


def _board_with(pid: int) -> tuple[Board, Slot]:
    board = Board(4)
    slot = board.reserve()
    assert slot is not None
    board.assign(pid)
    return board, slot


@pytest.mark.timeout(30)
def test_the_watchdog_kills_a_running_worker_stuck_past_its_deadline_plus_grace_with_its_tree() -> None:
    proc = _stand_in(children=1)
    child = psutil.Process(proc.pid).children()[0].pid
    board, slot = _board_with(proc.pid)
    dog = Watchdog(board, grace=1.0)
    now = time.monotonic()
    slot.begin(now - 0.5)
    assert dog.check(now, {proc.pid: (3, 128)}) == {}, "within the grace a running worker ends it itself"
    slot.begin(now - 1.5)
    [(pid, breach)] = dog.check(now, {proc.pid: (3, 128)}).items()
    assert pid == proc.pid and breach.error_type == "Sandbox.Timedout", breach
    assert breach.detail == "Task timed out after 4.50 seconds"
    assert proc.wait(5) == -signal.SIGKILL
    wait_until(lambda: gone(child), timeout=5, what="the worker's child is killed too")
    assert dog.check(now, {proc.pid: (3, 128)}) == {}, "killed once, until the scaler collects it"


@pytest.mark.timeout(30)
def test_the_watchdog_kills_a_worker_stopped_between_invocations_only_after_the_grace() -> None:
    proc = _stand_in()
    board, _ = _board_with(proc.pid)
    dog = Watchdog(board, grace=1.0)
    os.kill(proc.pid, signal.SIGSTOP)
    wait_until(lambda: stopped(proc.pid), timeout=5, what="the stand-in stops")
    now = time.monotonic()
    assert dog.check(now, {proc.pid: (3, 128)}) == {}
    assert dog.check(now + 0.9, {proc.pid: (3, 128)}) == {}
    [breach] = dog.check(now + 1.1, {proc.pid: (3, 128)}).values()
    assert breach.error_type == "Runtime.ExitError"
    assert proc.wait(5) == -signal.SIGKILL


def test_control_signals_count_only_when_the_scaler_marks_them() -> None:
    proc = _stand_in()
    board, slot = _board_with(proc.pid)
    assert not slot.ordered(signal.SIGTERM) and not slot.ordered(signal.SIGUSR1)
    board.send(proc.pid, signal.SIGTERM)
    assert slot.ordered(signal.SIGTERM) and not slot.ordered(signal.SIGUSR1)
    assert proc.wait(5) == -signal.SIGTERM
    board.release(proc.pid)
    assert board.deadline(proc.pid) is None


def test_a_sealed_board_is_not_in_the_processes_forked_after() -> None:
    """What a handler would need to forge its deadline or a control signal is not mapped in its process."""
    board = Board(2)
    slot = board.reserve()
    assert slot is not None
    slot.begin(123.0)
    pid = os.fork()
    if pid == 0:  # before the seal: the map is there (and shared)
        slot.end()
        os._exit(0)
    os.waitpid(pid, 0)
    board.assign(4_000_000)
    assert board.deadline(4_000_000) == 0.0, "the child wrote the shared map"
    slot.seal()
    pid = os.fork()
    if pid == 0:  # after the seal: touching the map faults
        faulthandler.disable()  # the fault is the expected outcome, not a crash to report
        slot.begin(1e12)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSEGV, status
    assert board.deadline(4_000_000) == 0.0
