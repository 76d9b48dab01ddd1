"""Fault runs over the whole stack: events from all three sources while processes are SIGKILLed.

The stack is the shipped Procfile under ``honcho start`` in a project folder (what ``make run``
starts once the venv exists). Events are files written into a bucket, rows committed to a SQLite
table and async webhook requests answered 202; each goes to a function whose handler
(``recorder.py``) appends the event's key to a file. Meanwhile the run SIGKILLs, at random moments,
each kind of process: a source, the scaler, redis-server, a worker, an invocation's own process.
Killing a Procfile process makes honcho stop the rest, as it does in production; the run then
starts the stack again, as an operator would. At the end every accepted event must have been
recorded at least once.

Used by ``tests/faults`` (a short run in CI) and ``bench/chaos.py`` (a long one).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import random
import shutil
import signal
import sqlite3
import statistics
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from tests.faults.stack import KINDS, PROCFILE_KINDS, ROOT, Stack, victim

HERE = Path(__file__).resolve().parent

FAULTS = KINDS + ("ctrl-c", "outage", "failover")
FLOWING_AFTER = 3.0  # seconds of events after the last fault

# One recording function per source: (name, max_concurrency, the trigger's own keys).
FUNCTIONS = (
    ("from_files", 2, 'source = "files"\nbucket = "inbox"\nsuffix = ".txt"'),
    ("from_rows", 1, 'source = "sqlite"\ndatabase = "app.db"\ntable = "items"\nbatch_size = 25'),
    ("from_http", 2, 'source = "http"\npath = "/hooks/chaos"\nmode = "async"\nauth = "none"'),
)
CONFIG = "".join(
    f'[functions.{name}]\nhandler = "recorder.handler"\ntimeout = 10\nretries = 8\nmax_concurrency = {cap}\n\n'
    f"[[functions.{name}.triggers]]\n{trigger}\n\n"
    for name, cap, trigger in FUNCTIONS
)


@dataclass
class Report:
    accepted: int = 0
    lost: list[str] = field(default_factory=list)
    lost_accepted: list[float] = field(default_factory=list)  # when each lost event was accepted (wall time)
    struck: list[tuple[str, float, float]] = field(default_factory=list)  # (fault, when, when back) wall times
    duplicated: int = 0
    # (fault, seconds from the fault, seconds from the stack being back) until every source flowed
    recoveries: list[tuple[str, float, float]] = field(default_factory=list)
    stops: list[float] = field(default_factory=list)  # honcho's shutdown after a process died
    graceful_stops: list[float] = field(default_factory=list)  # Ctrl-C until honcho exited
    http_refused: dict[int, int] = field(default_factory=dict)  # status (0: no connection) -> count
    no_retry_after: int = 0  # 503s without a Retry-After header
    forced: Counter[str] = field(default_factory=Counter)  # processes honcho had to SIGKILL (5 s after a stop)
    elapsed: float = 0.0

    def lines(self) -> list[str]:
        out = [f"accepted {self.accepted} events; lost {len(self.lost)}; duplicated {self.duplicated} "
               f"({100 * self.duplicated / max(self.accepted, 1):.2f}%); {self.elapsed:.1f} s"]
        for fault in FAULTS:
            times = [(a, b) for f, a, b in self.recoveries if f == fault]
            if times:
                since = [a for a, _ in times]
                back = [b for _, b in times]
                out.append(f"  {fault:<10} x{len(times):<3} all flowing {statistics.median(since):5.2f} s "
                           f"after it (max {max(since):.2f}); {statistics.median(back):.2f} s after the restart "
                           f"(max {max(back):.2f})")
        if self.stops:
            out.append(f"  honcho's stop after a process died: median {statistics.median(self.stops):.2f} s, "
                       f"max {max(self.stops):.2f} s")
        if self.graceful_stops:
            out.append(f"  Ctrl-C to stopped: median {statistics.median(self.graceful_stops):.2f} s, "
                       f"max {max(self.graceful_stops):.2f} s")
        if self.forced:
            out.append(f"  SIGKILLed by honcho, still up 5 s after a stop: {dict(self.forced)}")
        refused = ", ".join(f"{'no connection' if k == 0 else k}: {v}" for k, v in sorted(self.http_refused.items()))
        out.append(f"  webhook requests refused, then retried by the sender: {refused or 'none'}")
        if self.lost:
            out.append(f"  LOST: {self.lost[:20]}")
        return out


class Load:
    """Three producers, one per source, each making ``per_source`` events at ``rate`` per second, and
    going on at that rate after them until :meth:`finish` (so a fault that comes late, on a slow
    machine, still has events after it that show whether the stack flows again)."""

    def __init__(self, stack: Stack, per_source: int, rate: float) -> None:
        self.stack = stack
        self.per_source = per_source
        self.interval = 1 / rate
        self.finishing = threading.Event()
        self.accepted: dict[str, float] = {}  # key -> time accepted
        self.refused: Counter[int] = Counter()  # status (0: no connection) -> count
        self.no_retry_after = 0  # 503s without Retry-After: the contract says there is one
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=f, daemon=True, name=f.__name__)
                        for f in (self._files, self._rows, self._http)]
        self.failure: BaseException | None = None

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def done(self) -> bool:
        return not any(t.is_alive() for t in self.threads)

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        if self.failure is not None:
            raise self.failure
        if not self.done():
            raise RuntimeError("the producers did not finish")

    def _accept(self, key: str) -> None:
        with self.lock:
            self.accepted[key] = time.time()

    def finish(self) -> None:
        """Let the producers stop once they have made ``per_source`` events each."""
        self.finishing.set()

    def _paced(self, produce) -> None:  # type: ignore[no-untyped-def]
        try:
            next_at = time.monotonic()
            n = 0
            while n < self.per_source or not self.finishing.is_set():
                produce(n)
                n += 1
                next_at += self.interval
                time.sleep(max(0.0, next_at - time.monotonic()))
        except BaseException as e:  # surfaced by join()
            self.failure = e

    def _files(self) -> None:
        bucket = self.stack.project / "buckets" / "inbox"

        def produce(n: int) -> None:
            (bucket / f"{n}.txt").write_text(f"event {n}\n")  # closed: accepted
            self._accept(f"files:{n}")

        self._paced(produce)

    def _rows(self) -> None:
        db = sqlite3.connect(self.stack.project / "app.db", timeout=30, isolation_level=None)

        def produce(n: int) -> None:
            db.execute("INSERT INTO items (id, note) VALUES (?, ?)", (n, f"row {n}"))  # committed: accepted
            self._accept(f"sqlite:{n}")

        try:
            self._paced(produce)
        finally:
            db.close()

    def _http(self) -> None:
        def produce(n: int) -> None:
            body = json.dumps({"n": n})
            while True:  # a webhook sender retries until it gets a 2xx
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", self.stack.port, timeout=10)
                    conn.request("POST", "/hooks/chaos", body=body, headers={"Content-Type": "application/json"})
                    response = conn.getresponse()
                    status, retry_after = response.status, response.getheader("Retry-After")
                    conn.close()
                except OSError:
                    status, retry_after = 0, None
                if status == 202:
                    self._accept(f"http:{n}")
                    return
                with self.lock:
                    self.refused[status] += 1
                    if status == 503 and retry_after is None:
                        self.no_retry_after += 1
                time.sleep(0.1)

        self._paced(produce)


def records(project: Path) -> tuple[Counter[str], dict[str, float]]:
    """How many times each key was recorded, and when it was first."""
    seen: Counter[str] = Counter()
    first: dict[str, float] = {}
    for path in (project / "records").glob("*.log"):
        for line in path.read_text().splitlines():
            key, at = line.split()
            seen[key] += 1
            first[key] = min(first.get(key, float("inf")), float(at))
    return seen, first


def prepare(project: Path) -> None:
    """A project folder with the shipped Procfile, the fault run's functions, a bucket and a table."""
    project.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "Procfile", project / "Procfile")
    shutil.copy(HERE / "recorder.py", project / "recorder.py")
    (project / "lambdalite.toml").write_text(CONFIG)
    (project / "buckets" / "inbox").mkdir(parents=True, exist_ok=True)
    (project / "records").mkdir(exist_ok=True)
    with sqlite3.connect(project / "app.db") as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, note TEXT)")
    db.close()


def capture_installed(project: Path) -> bool:
    with sqlite3.connect(project / "app.db") as db:
        found = db.execute("SELECT count(*) FROM sqlite_master WHERE type = 'trigger' "
                           "AND name LIKE '_lambdalite_items_%'").fetchone()[0]
    db.close()
    return bool(found)


def _disrupt(stack: Stack, fault: str, rng: random.Random, report: Report, say) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """Inflict one fault; returns (when it struck, when the stack was back in business) as wall times."""
    if fault == "ctrl-c":  # a graceful stop, then the operator starts the stack again
        at = time.time()
        took = stack.stop()
        report.graceful_stops.append(took)
        say(f"ctrl-c: stopped in {took:.2f}s")
        stack.start()
        return at, time.time()
    if fault == "failover":  # the Sentinel-watched primary SIGKILLed: back once a replica is promoted
        assert stack.sentinels is not None, "a failover needs the stack on Redis with Sentinel"
        old = stack.sentinels.kill_primary()
        at = time.time()
        stack.sentinels.wait_promotion(old)
        say(f"primary :{old} killed; :{stack.sentinels.primary_port} promoted {time.time() - at:.2f}s later")
        return at, time.time()
    if fault == "outage":  # Redis stopped for OUTAGE seconds: nothing may exit
        assert stack.redis is not None, "an outage needs the stack on an external Redis"
        before = {kind: proc.pid for kind, proc in stack.procs().items()}
        at = time.time()
        stack.redis.stop()
        time.sleep(stack.outage)
        after = {kind: proc.pid for kind, proc in stack.procs().items()}
        if after != before or not stack.running():
            raise AssertionError(f"a process exited during the Redis outage: {before} -> {after}")
        stack.redis.start()
        say(f"redis was down {time.time() - at:.1f}s")
        return at, time.time()
    target = None
    while target is None:
        target = victim(stack, fault, rng)
        if target is None:
            time.sleep(0.05)
    at = time.time()
    with contextlib.suppress(psutil.NoSuchProcess):
        target.send_signal(signal.SIGKILL)
    say(f"killed {fault} (pid {target.pid})")
    if fault in PROCFILE_KINDS:  # honcho stops the rest; the operator runs the stack again
        report.stops.append(stack.wait_exit())
        stack.start()
    return at, time.time()


def run(project: Path, per_source: int, rate: float, faults: list[str], seed: int = 0,
        settle: float = 90, say=print, **settings: str) -> Report:  # type: ignore[no-untyped-def]
    """One fault run: ``faults`` (a kind of process to SIGKILL, ``ctrl-c`` or ``outage``) happen in
    order, each at a random moment while ``per_source`` events per source flow at ``rate`` a second.

    With ``outage`` among the faults the stack uses a Redis of its own (``LAMBDALITE_REDIS_URL``)
    that the run stops and starts; with ``failover`` a primary, a replica and three sentinels
    (``redis+sentinel://``), whose primary the run kills; otherwise the Procfile's embedded Redis.
    """
    rng = random.Random(seed)
    prepare(project)
    stack = Stack(project, external_redis="outage" in faults, sentinels="failover" in faults, **settings)
    report = Report()
    began = time.monotonic()
    try:
        stack.start()
        stack.wait_healthy()
        deadline = time.monotonic() + 30
        while not capture_installed(project):
            assert time.monotonic() < deadline, "the sqlite feed did not install its triggers"
            time.sleep(0.05)
        load = Load(stack, per_source, rate)
        load.start()
        struck: list[tuple[str, float, float]] = []
        for fault in faults:
            time.sleep(rng.uniform(0.3, 2.0))
            stack.wait_healthy()
            at, resumed = _disrupt(stack, fault, rng, report, say)
            struck.append((fault, at, resumed))
            stack.wait_healthy()
        time.sleep(FLOWING_AFTER)  # events after the last fault, to see every source flow again
        load.finish()
        load.join(timeout=per_source / rate + 120)
        report.accepted = len(load.accepted)
        report.http_refused = dict(load.refused)
        report.no_retry_after = load.no_retry_after
        deadline = time.monotonic() + settle
        while True:
            seen, first = records(project)
            missing = [k for k in load.accepted if k not in seen]
            if not missing or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        report.lost = sorted(missing)
        report.lost_accepted = [load.accepted[k] for k in report.lost]
        report.struck = struck
        report.duplicated = sum(seen.values()) - len(seen)
        for fault, at, resumed in struck:
            # flowing again once every source has had an event finish after the stack was back (a
            # worker finishing during honcho's shutdown does not count; a backlog does not delay it)
            finishes = []
            for source in ("files", "sqlite", "http"):
                done = [t for k, t in first.items() if k.startswith(source) and t >= resumed]
                if done:
                    finishes.append(min(done))
            if len(finishes) == 3:
                report.recoveries.append((fault, max(finishes) - at, max(finishes) - resumed))
        report.graceful_stops.append(stack.stop())
    finally:
        stack.close()
        report.elapsed = time.monotonic() - began
        for line in (project / "honcho.log").read_text(errors="replace").splitlines():
            if "sending SIGKILL to " in line:
                report.forced[line.split("sending SIGKILL to ")[1].split()[0]] += 1
    return report
