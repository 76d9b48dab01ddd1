"""Leave it running: ``python bench/soak.py [--duration 3600] [--warmup 1200] [--write]``.

Starts a whole stack (``honcho start`` with this folder's Procfile) in a scratch folder and drives a
steady mixed load through every source for ``--duration`` seconds: the Invoke API (synchronous and
asynchronous), a webhook, files dropped in a bucket (and deleted again), rows written to a SQLite
table (batches), an idempotent function that gets each order twice, and a function whose planned
failures are retried and dead-lettered. Every ``--every`` seconds it samples Redis's
``used_memory`` and the keys of each key family (the members of a family that is one key per
function: a registry, the dead letters), and the RSS, PSS, open descriptors and threads of every
process of the stack, and the size of the stack's log.

After ``--warmup`` it fits each series against the events handled so far and prints its growth per
100,000 events, beside its mean; the goal is under 1 % for Redis's memory and every process's RSS.
It draws one plot panel per series (``--plot``, by default docs/soak.png). ``--write`` puts the
figures in docs/soak.md; ``--check`` exits 1 when a key family or a process keeps growing (the short
run of tests/test_soak_short.py). ``--short`` shortens every lifetime and cap so that a run of about a
minute reaches its plateau.
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

_sys.path[:] = [p for p in _sys.path if _Path(p or ".").resolve() != _Path(__file__).resolve().parent]

import argparse
import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import redis

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from report import table, write_section  # noqa: E402

from broker import history  # noqa: E402
from broker.settings import Settings  # noqa: E402

# Events per second each load thread sends (about 75 handler runs a second in all, with retries).
RATES = {"invoke-sync": 12.0, "invoke-async": 12.0, "flaky": 5.0, "pay": 5.0, "webhook": 10.0,
         "files": 8.0, "rows": 40.0}
FAIL_SHARE = 0.2  # of the flaky function's events: each is tried three times, then dead-lettered
ROWS_PER_COMMIT = 8
KEEP_FILES = 20.0  # seconds a dropped file stays in its bucket before the load deletes it

HANDLERS = '''"""Soak handlers: small, and each a kind of work a real stack sees."""

from broker.handler_api.idempotency import idempotent


def echo(event, context):
    return {{"ok": True}}


def flaky(event, context):
    if event.get("fail"):
        raise RuntimeError("planned failure")
    return {{"ok": True}}


@idempotent(key="order_id", expires_after_seconds={idempotency_ttl})
def pay(event, context):
    return {{"order": event["order_id"], "by": context.aws_request_id}}


def rows(event, context):
    return {{"records": len(event["Records"])}}


def hook(event, context):
    return {{"statusCode": 200, "body": "ok"}}
'''

CONFIG = '''
[functions.api]
handler = "soakfns.echo"
timeout = 10

[functions.flaky]
handler = "soakfns.flaky"
retries = 2
retry_backoff = 0.2

[functions.pay]
handler = "soakfns.pay"

[functions.files]
handler = "soakfns.echo"

[[functions.files.triggers]]
source = "files"
bucket = "drop"
events = ["s3:ObjectCreated:*"]

[functions.rows]
handler = "soakfns.rows"

[[functions.rows.triggers]]
source = "sqlite"
database = "app.db"
table = "items"
batch_size = 20

[functions.hook]
handler = "soakfns.hook"

[[functions.hook.triggers]]
source = "http"
path = "/hook"
'''

# The lifetimes and caps of a run: the shipped defaults, but dead letters and the log store capped lower
# so that a run of an hour reaches those caps within its warm-up (the log store's 2,000 invocations per
# function take each function at most about 7 minutes at these rates); --short shortens everything so
# that a minute reaches every plateau.
LONG = {"LAMBDALITE_DEAD_LETTERS_KEPT": "1000", "LAMBDALITE_LOGS_MAX_INVOCATIONS": "2000"}
SHORT = {"LAMBDALITE_SYNC_RESULT_TTL": "5", "LAMBDALITE_OUTCOME_TTL": "10", "LAMBDALITE_PRUNE_INTERVAL": "5",
         "LAMBDALITE_FAILED_JOBS_KEPT": "50", "LAMBDALITE_DEAD_LETTERS_KEPT": "30",
         "LAMBDALITE_LOGS_MAX_INVOCATIONS": "300"}

# Key families: a pattern and its name. A name without <...> is one key (per function, per queue),
# whose members are counted; the others count keys.
FAMILIES = [
    (r"rq:job:.+", "rq:job:<id>"),
    (r"rq:results:.+", "rq:results:<id>"),
    (r"rq:executions:.+", "rq:executions:<id>"),
    (r"rq:execution:.+", "rq:execution:<id>:<execution>"),
    (r"rq:worker:.+:executions", "rq:worker:<name>:executions"),
    (r"rq:worker:.+", "rq:worker:<name>"),
    (r"rq:workers:.+", "rq:workers:QUEUE"),
    (r"rq:workers", "rq:workers"),
    (r"rq:queues", "rq:queues"),
    (r"rq:queue:.+", "rq:queue:QUEUE"),
    (r"rq:(wip|finished|failed|canceled|deferred|scheduled):.+", r"rq:\1:QUEUE"),
    (r"lambdalite:result:.+", "lambdalite:result:<id>"),
    (r"lambdalite:idempotency:.+", "lambdalite:idempotency:<key>"),
    (r"lambdalite:idempotency-held:.+", "lambdalite:idempotency-held:<worker>"),
    (r"lambdalite:http:idempotency:.+", "lambdalite:http:idempotency:<key>"),
    (r"lambdalite:taking:.+", "lambdalite:taking:<worker>"),
    (r"lambdalite:successor:.+", "lambdalite:successor:<id>"),
    (r"lambdalite:quarantine:.+", "lambdalite:quarantine:<key>"),
    (r"lambdalite:scaler-alive:.+", "lambdalite:scaler-alive:<scaler>"),
    (r"lambdalite:(dlq|stats|scaler|slots|history):.+", r"lambdalite:\1:FUNCTION"),
    (r"lambdalite:files:manifest:.+", "lambdalite:files:manifest:BUCKET"),
    (r"lambdalite:sqlite:.+", "lambdalite:sqlite:CURSOR"),
    (r"lambdalite:delayed", "lambdalite:delayed"),
    (r"lambdalite:logs:.+", "lambdalite:logs:FUNCTION"),
    (r"lambdalite:logs-index:.+", "lambdalite:logs-index:FUNCTION"),
    (r"lambdalite:cost:.+", "lambdalite:cost:FUNCTION"),
    (r"lambdalite:schedule:.+", "lambdalite:schedule:<schedule>"),
]
_COMPILED = [(re.compile(pattern), name) for pattern, name in FAMILIES]
# The families that hold a copy of each event for a lifetime: their count is the load's rate times it.
PER_EVENT = ("lambdalite:result:<id>", "rq:job:<id>", "rq:results:<id>")
# What Redis's INFO memory says of its own memory (bytes): its count of what it holds (used_memory, split
# into the data and its overhead), the RSS, and what lies between (the allocator's free space kept:
# fragmentation; the AOF buffer; the clients' buffers).
MEMORY_FIELDS = ("used_memory_rss", "used_memory_dataset", "used_memory_overhead", "mem_fragmentation_bytes",
                 "allocator_frag_bytes", "allocator_rss_bytes", "rss_overhead_bytes", "mem_aof_buffer",
                 "mem_clients_normal")
_CARD = {"list": "LLEN", "hash": "HLEN", "set": "SCARD", "zset": "ZCARD", "stream": "XLEN"}


def family(key: str) -> str:
    """The family name of a key (its first two segments and ``*`` when it is none of lambdalite's or RQ's)."""
    for pattern, name in _COMPILED:
        match = pattern.fullmatch(key)
        if match:
            return match.expand(name)
    return ":".join(key.split(":")[:2]) + ":*"


@dataclass
class Sample:
    at: float  # seconds since the load began
    events: int  # handler runs finished (succeeded + failed counters)
    used_memory: int
    families: dict[str, int]
    processes: dict[int, dict[str, Any]]  # pid -> kind, rss, pss, fds, threads
    log_bytes: int
    largest: dict[str, int] = field(default_factory=dict)  # capped family -> members of its largest key
    capped_bytes: int = 0  # MEMORY USAGE of the capped families' keys
    smallest: dict[str, int] = field(default_factory=dict)  # capped family -> members of its smallest key
    memory: dict[str, int] = field(default_factory=dict)  # Redis's INFO memory: where its RSS goes (MEMORY_FIELDS)


@dataclass
class Load:
    """The load threads and what they sent."""

    folder: Path
    port: int
    stop: threading.Event = field(default_factory=threading.Event)
    sent: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    last_error: dict[str, str] = field(default_factory=dict)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for name, rate in RATES.items():
            thread = threading.Thread(target=self._paced, args=(name, rate), name=f"load-{name}", daemon=True)
            thread.start()
            self.threads.append(thread)

    def join(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)

    def _paced(self, name: str, rate: float) -> None:
        send = getattr(self, "_" + name.replace("-", "_"))
        state: dict[str, Any] = {}
        every = 1.0 / rate
        due = time.monotonic()
        n = 0
        while not self.stop.is_set():
            try:
                send(state, n)
                self.sent[name] += 1
            except Exception as e:  # counted and shown; the load goes on
                self.errors[name] += 1
                self.last_error[name] = f"{type(e).__name__}: {e}"[:200]
                state.clear()  # a fresh connection next time
            n += 1
            due = max(due + every, time.monotonic() - 1.0)  # catch up at most a second's worth
            self.stop.wait(max(0.0, due - time.monotonic()))
        for value in state.values():
            with contextlib.suppress(Exception):
                value.close()

    # -- the sources -------------------------------------------------------------------------------

    def _http(self, state: dict[str, Any], path: str, body: Any, headers: dict[str, str] | None = None) -> bytes:
        conn = state.get("http")
        if conn is None:
            conn = state["http"] = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json",
                                                                  **(headers or {})})
        reply = conn.getresponse()
        data = reply.read()
        if reply.status >= 300:
            raise RuntimeError(f"POST {path}: HTTP {reply.status}: {data[:120]!r}")
        return data

    def _invoke(self, state: dict[str, Any], function: str, payload: Any, kind: str) -> bytes:
        return self._http(state, f"/2015-03-31/functions/{function}/invocations", payload,
                          {"X-Amz-Invocation-Type": kind})

    def _invoke_sync(self, state: dict[str, Any], n: int) -> None:
        self._invoke(state, "api", {"n": n}, "RequestResponse")

    def _invoke_async(self, state: dict[str, Any], n: int) -> None:
        self._invoke(state, "api", {"n": n}, "Event")

    def _flaky(self, state: dict[str, Any], n: int) -> None:
        self._invoke(state, "flaky", {"n": n, "fail": n % round(1 / FAIL_SHARE) == 0}, "Event")

    def _pay(self, state: dict[str, Any], n: int) -> None:
        self._invoke(state, "pay", {"order_id": f"order-{n // 2}", "amount": 1}, "Event")  # each order twice

    def _webhook(self, state: dict[str, Any], n: int) -> None:
        self._http(state, "/hook", {"n": n})

    def _files(self, state: dict[str, Any], n: int) -> None:
        bucket = self.folder / "buckets" / "drop"
        (bucket / f"f{n:09d}.txt").write_bytes(b"x" * (100 + n % 900))
        dropped = state.setdefault("dropped", [])
        dropped.append((time.monotonic(), bucket / f"f{n:09d}.txt"))
        while dropped and dropped[0][0] < time.monotonic() - KEEP_FILES:
            dropped.pop(0)[1].unlink(missing_ok=True)

    def _rows(self, state: dict[str, Any], n: int) -> None:
        if n % ROWS_PER_COMMIT:
            state.setdefault("rows", []).append((n % 5000, f"value {n}"))
            return
        conn = state.get("db")
        if conn is None:
            conn = state["db"] = sqlite3.connect(self.folder / "app.db", timeout=30)
        rows = state.pop("rows", []) + [(n % 5000, f"value {n}")]
        with conn:
            conn.executemany("INSERT OR REPLACE INTO items (id, value) VALUES (?, ?)", rows)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_KINDS = [("honcho", "honcho"), ("redis_supervisor", "redis supervisor"), ("broker.redis_server", "redis supervisor"),
          ("sources.files", "files"), ("sources.sqlite", "sqlite"), ("lambdalite-sqlite", "sqlite"),
          ("sources.http", "webhook"), ("uvicorn", "webhook")]


def sample_processes(root: psutil.Process) -> dict[int, dict[str, Any]]:
    """pid -> kind, rss, pss, fds, threads of every process of the stack. The scaler's workers and
    their sandboxes are forks of it (the same command line): told apart by their parents."""
    procs = {}
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            procs[proc.pid] = (proc, " ".join(proc.cmdline()), proc.ppid())
    kinds: dict[int, str] = {}

    def kind(pid: int) -> str:
        if pid in kinds:
            return kinds[pid]
        proc, cmd, ppid = procs[pid]
        parent = kind(ppid) if ppid in procs else ""
        if pid == root.pid:
            found = "honcho"
        elif proc.name() == "redis-server":
            found = "redis-server"
        elif parent in ("worker", "sandbox"):
            found = "sandbox"
        elif "workers.scaler" in cmd:
            found = "worker" if parent == "scaler" else "scaler"
        else:
            found = next((name for marker, name in _KINDS if marker in cmd), cmd.split(" ")[0][-30:] or "?")
        kinds[pid] = found
        return found

    out = {}
    for pid, (proc, _cmd, _ppid) in procs.items():
        try:
            with proc.oneshot():
                full = proc.memory_full_info()
                out[pid] = {"kind": kind(pid), "rss": full.rss, "pss": full.pss, "fds": proc.num_fds(),
                            "threads": proc.num_threads()}
        except psutil.Error:
            continue
    return out


def caps(short: bool) -> dict[str, int]:
    """The stores bounded by a count: family -> most members one key of it holds (with the slack its
    trimming allows). Such a family grows until it reaches its cap, which a short run may not."""
    env = SHORT if short else LONG
    found = {"rq:failed:QUEUE": int(env.get("LAMBDALITE_FAILED_JOBS_KEPT", 1000)),
             "lambdalite:dlq:FUNCTION": int(env.get("LAMBDALITE_DEAD_LETTERS_KEPT", 10000)),
             # a function's buckets: the last hour's and the last day's (the day's fill over a day)
             "lambdalite:history:FUNCTION": sum(ring.slots for ring in history.RINGS.values())}

    logs = Settings.model_fields.get("logs_max_invocations")  # the log store's cap, where there is one
    if logs is not None:
        cap = int(env.get("LAMBDALITE_LOGS_MAX_INVOCATIONS", logs.default))
        found["lambdalite:logs:FUNCTION"] = cap + 100  # MAXLEN ~ trims whole nodes
        found["lambdalite:logs-index:FUNCTION"] = cap + 128
    return found


def sample_redis(client: redis.Redis, capped: dict[str, int]) -> tuple[
        int, dict[str, int], int, dict[str, int], int, dict[str, int], dict[str, int]]:
    """(used_memory, count per family, handler runs finished, the largest key of each capped family,
    the memory of the capped families' keys, the smallest key of each capped family, INFO memory's
    MEMORY_FIELDS)."""
    info = client.info("memory")
    used = int(info["used_memory"])
    memory = {name: int(info[name]) for name in MEMORY_FIELDS if name in info}
    counts: dict[str, int] = defaultdict(int)
    containers = []
    for raw in client.scan_iter(count=2000):
        key = raw.decode(errors="replace")
        name = family(key)
        if "<" in name:
            counts[name] += 1
        else:
            containers.append((key, name))
    with client.pipeline(transaction=False) as pipe:
        for key, _ in containers:
            pipe.type(key)
        types = [t.decode() for t in pipe.execute()]
    with client.pipeline(transaction=False) as pipe:
        measured = []
        for (key, name), kind in zip(containers, types, strict=True):
            if kind in _CARD:
                pipe.execute_command(_CARD[kind], key)
                measured.append(name)
            else:
                counts[name] += 1  # a string: one
        for name, size in zip(measured, pipe.execute(), strict=True):
            counts[name] += int(size)
    largest: dict[str, int] = {}
    capped_keys = [(key, name) for key, name in containers if name in capped]
    with client.pipeline(transaction=False) as pipe:
        for key, _ in capped_keys:
            pipe.memory_usage(key)
        capped_bytes = sum(int(b or 0) for b in pipe.execute())
    smallest: dict[str, int] = {}
    for (key, name), kind in zip(containers, types, strict=True):
        if name in capped and kind in _CARD:
            size = int(client.execute_command(_CARD[kind], key))
            largest[name] = max(largest.get(name, 0), size)
            smallest[name] = min(smallest.get(name, size), size)
    events = 0
    with client.pipeline(transaction=False) as pipe:
        for function in ("api", "flaky", "pay", "files", "rows", "hook"):
            pipe.hmget(f"lambdalite:stats:{function}", "succeeded", "failed")
        for row in pipe.execute():
            events += sum(int(v) for v in row if v is not None)
    return used, dict(counts), events, largest, capped_bytes, smallest, memory


# -- the fit -------------------------------------------------------------------------------------------


@dataclass
class Series:
    name: str
    group: str  # redis, families, rss, pss, fds, threads, log
    points: list[tuple[float, float, float]]  # (seconds, events, value)
    goal: float | None = None  # most growth per 100,000 events, % of the mean, when there is a goal

    def window(self, warmup: float) -> list[tuple[float, float, float]]:
        return [p for p in self.points if p[0] >= warmup]

    def growth(self, warmup: float) -> tuple[float, float] | None:
        """(growth per 100,000 events, mean) after ``warmup`` by least squares; None without two points."""
        pts = self.window(warmup)
        if len(pts) < 2:
            return None
        xs = [p[1] for p in pts]
        ys = [p[2] for p in pts]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        var = sum((x - mx) ** 2 for x in xs)
        if var == 0:
            return None
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var
        return slope * 100_000, my

    def keeps_growing(self, warmup: float) -> str | None:
        """Why the series keeps growing after ``warmup`` (its last third well above its first), or None."""
        pts = self.window(warmup)
        if len(pts) < 6:
            return None
        third = len(pts) // 3
        first = sum(p[2] for p in pts[:third]) / third
        last = sum(p[2] for p in pts[-third:]) / third
        slack = {"families": (0.25, 50), "rss": (0.10, 3 * 2**20), "pss": (0.10, 3 * 2**20), "fds": (0.0, 8),
                 "threads": (0.0, 4), "redis": (0.10, 2 * 2**20)}.get(self.group)
        if slack is None:
            return None
        share, absolute = slack
        if last - first > max(share * first, absolute):
            return f"{self.name}: {_fmt(self.group, first)} -> {_fmt(self.group, last)} (first and last third)"
        return None


def _fmt(group: str, value: float) -> str:
    if group == "per-key":
        return f"{value:,.0f} B"
    if group in ("rss", "pss", "redis", "redis-info", "log"):
        return f"{value / 2**20:.1f} MB"
    return f"{value:.0f}"


def build_series(samples: list[Sample], warmup: float) -> list[Series]:
    series: dict[str, Series] = {}

    def add(name: str, group: str, s: Sample, value: float, goal: float | None = None) -> None:
        if name not in series:
            series[name] = Series(name, group, [], goal)
        series[name].points.append((s.at, s.events, value))

    names = sorted({n for s in samples for n in s.families})
    end = samples[-1].at if samples else 0.0
    # Processes that lived through the measured window (workers and sandboxes come and go).
    lived: dict[int, list[float]] = defaultdict(list)
    for s in samples:
        for pid in s.processes:
            lived[pid].append(s.at)
    kept = {pid for pid, ats in lived.items()
            if min(ats) <= warmup + 0.1 * (end - warmup) and max(ats) >= end - 0.1 * (end - warmup)}
    labels: dict[int, str] = {}
    for s in samples:
        add("Redis used_memory", "redis", s, s.used_memory, goal=1.0)
        if any(x.capped_bytes for x in samples):
            add("Redis used_memory less the stores capped by a count", "redis", s, s.used_memory - s.capped_bytes)
        for name, value in sorted(s.memory.items()):
            # with the C library's malloc Redis works some of these out as unsigned differences, which
            # wrap round when the RSS is read below what Redis counts: read back as the negative they are
            add(f"Redis {name}", "redis-info", s, value - 2**64 if value >= 2**63 else value)
        held = sum(s.families.get(name, 0) for name in PER_EVENT)
        if held:  # what the families that hold a copy per event cannot explain: their count follows the rate
            add("Redis used_memory per key held per event", "per-key", s, s.used_memory / held)
        for n in names:
            add(n, "families", s, s.families.get(n, 0))
        for pid, p in sorted(s.processes.items()):
            if pid not in kept:
                continue
            label = labels.setdefault(pid, f"{p['kind']} ({pid})")
            add(f"RSS {label}", "rss", s, p["rss"], goal=1.0)
            add(f"PSS {label}", "pss", s, p["pss"])
            add(f"fds {label}", "fds", s, p["fds"])
            add(f"threads {label}", "threads", s, p["threads"])
        add("processes of the stack", "count", s, len(s.processes))
        add("log size", "log", s, s.log_bytes)
    return list(series.values())


def verdicts(series: list[Series], samples: list[Sample], capped: dict[str, int],
             warmup: float) -> tuple[list[str], list[str]]:
    """(what keeps growing, notes on what was let pass and why).

    A store bounded by a count may still be filling up after warm-up (at a low rate, a short run):
    such a ramp is legitimate while its keys stay within their cap. So a capped family fails when a
    key of it passes its cap by half, and otherwise is judged only from the sample at which its
    smallest key had reached its cap (eight tenths of it: trimming cuts below it): a family still
    filling is noted, one that reached its cap and goes on growing fails like any other."""
    growing: list[str] = []
    notes: list[str] = []
    for s in series:
        if s.name in capped:
            cap = capped[s.name]
            most = max((x.largest.get(s.name, 0) for x in samples), default=0)
            if most > 1.5 * cap:
                growing.append(f"{s.name}: a key of {most:,} members, past its cap of {cap:,}")
                continue
            reached = next((x.at for x in samples if (x.smallest or x.largest).get(s.name, 0) >= 0.8 * cap), None)
            if reached is None:
                notes.append(f"filling up to its cap (largest key {most:,} of {cap:,} members): {s.name}")
                continue
            why = s.keeps_growing(max(warmup, reached))
        else:
            why = s.keeps_growing(warmup)
            if why is not None and s.name == "Redis used_memory" and any(x.capped_bytes for x in samples):
                notes.append(f"including the capped stores: {why}")  # judged without them, on its own series
                continue
        if why is not None:
            growing.append(why)
    return growing, notes


def _kind_of(name: str) -> str:
    """``RSS worker (123)`` -> ``worker``."""
    return name.split(" ", 1)[1].rsplit(" (", 1)[0]


def report(series: list[Series], warmup: float, samples: list[Sample], load: Load, duration: float) -> tuple[str, bool]:
    """The Markdown figures, and whether every goal was met: Redis's memory and its key families, then the
    processes by kind (several workers and sandboxes: the one that grew most)."""
    met = True
    fits = {s.name: s.growth(warmup) for s in series}

    def rel(s: Series) -> float:
        fit = fits[s.name]
        return 100 * fit[0] / fit[1] if fit and fit[1] else 0.0

    redis_rows = []
    for s in series:
        fit = fits[s.name]
        if s.group not in ("redis", "redis-info", "per-key", "families", "log", "count") or fit is None:
            continue
        per, mean = fit
        if s.group == "families" and mean == 0 and per == 0:
            continue
        verdict = "-"
        if s.goal is not None:
            met &= rel(s) < s.goal
            verdict = "met" if rel(s) < s.goal else "MISSED"
        growth = f"{per:+,.0f}" if s.group in ("families", "count") else ("+" if per >= 0 else "") + _fmt(s.group, per)
        redis_rows.append([s.name, _fmt(s.group, mean), growth, f"{rel(s):+.2f} %", verdict])
    by_kind: dict[str, dict[str, list[Series]]] = defaultdict(lambda: defaultdict(list))
    for s in series:
        if s.group in ("rss", "pss", "fds", "threads") and fits[s.name] is not None:
            by_kind[_kind_of(s.name)][s.group].append(s)
    proc_rows = []
    for kind, groups in sorted(by_kind.items()):
        rss = max(groups["rss"], key=rel)
        ok = all(rel(s) < 1.0 for s in groups["rss"])
        met &= ok
        worst = {g: max(groups[g], key=lambda s: fits[s.name][0]) for g in ("pss", "fds", "threads")}  # type: ignore[index]
        proc_rows.append([
            kind, str(len(groups["rss"])), _fmt("rss", fits[rss.name][1]),  # type: ignore[index]
            ("+" if fits[rss.name][0] >= 0 else "") + _fmt("rss", fits[rss.name][0]) + f" ({rel(rss):+.2f} %)",  # type: ignore[index]
            _fmt("pss", fits[worst["pss"].name][1]) + f" ({rel(worst['pss']):+.2f} %)",  # type: ignore[index]
            f"{fits[worst['fds'].name][1]:.0f} ({fits[worst['fds'].name][0]:+.1f})",  # type: ignore[index]
            f"{fits[worst['threads'].name][1]:.0f} ({fits[worst['threads'].name][0]:+.1f})",  # type: ignore[index]
            "met" if ok else "MISSED"])
    first = next((x for x in samples if x.at >= warmup), samples[0])
    last = samples[-1]
    handled = last.events - first.events
    text = (f"{duration / 60:.0f} min of load ({warmup / 60:.0f} min warm-up), {last.events:,} handler runs in all, "
            f"{handled:,} after warm-up ({handled / max(1.0, last.at - first.at):.0f}/s). Sent: "
            + ", ".join(f"{k} {v:,}" for k, v in sorted(load.sent.items()))
            + (". Load errors: " + ", ".join(f"{k} {v} ({load.last_error.get(k, '')})"
                                               for k, v in sorted(load.errors.items())) if load.errors else "")
            + ".\n\nGrowth is the least-squares slope of each series against the handler runs finished, after "
              "warm-up, per 100,000 runs.\n\n")
    text += table(["Redis", "mean after warm-up", "growth per 100,000 events", "of the mean", "goal < 1 %"],
                  redis_rows)
    text += "\n\n" + table(["process", "count", "RSS mean", "RSS growth per 100,000 events (largest)",
                             "PSS mean (growth)", "fds (growth)", "threads (growth)", "goal < 1 %"], proc_rows)
    text += ("\n\nGoal: after warm-up, Redis's memory and every process's RSS grow less than 1 % per 100,000 "
             f"events: **{'met' if met else 'missed'}**.")
    return text, met


def plot(series: list[Series], warmup: float, path: Path) -> None:
    """One panel per kind of series; the processes' lines coloured by kind (one legend entry each), and
    redis-server's RSS beside Redis's own count of its memory rather than above lambdalite's processes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def is_redis(s: Series) -> bool:
        return s.group in ("rss", "pss") and _kind_of(s.name) == "redis-server"

    panels = [("Redis: used_memory, INFO memory and redis-server's RSS (MB)",
               lambda s: s.group == "redis" or s.name in ("Redis used_memory_rss", "Redis mem_fragmentation_bytes")
               or (is_redis(s) and s.group == "rss")),
              ("keys (members) per family, the 14 largest", lambda s: s.group == "families"),
              ("RSS of lambdalite's processes (MB)", lambda s: s.group == "rss" and not is_redis(s)),
              ("PSS of lambdalite's processes (MB)", lambda s: s.group == "pss" and not is_redis(s)),
              ("open descriptors", lambda s: s.group == "fds"), ("threads", lambda s: s.group == "threads"),
              ("the stack's log (MB)", lambda s: s.group == "log"), ("processes", lambda s: s.group == "count")]
    kinds = sorted({_kind_of(s.name) for s in series if s.group in ("rss", "pss", "fds", "threads")})
    colours = {kind: plt.get_cmap("tab10")(i % 10) for i, kind in enumerate(kinds)}
    fig, axes = plt.subplots(4, 2, figsize=(16, 18))
    for ax, (title, chosen) in zip(axes.flat, panels, strict=True):
        members = [s for s in series if chosen(s)]
        if "family" in title:
            members = sorted(members, key=lambda s: -max(p[2] for p in s.points))[:14]
        labelled: set[str] = set()
        for s in members:
            scale = 2**20 if s.group in ("redis", "redis-info", "rss", "pss", "log") else 1
            style: dict[str, Any] = {"linewidth": 1, "label": s.name}
            if s.group in ("rss", "pss", "fds", "threads"):
                kind = _kind_of(s.name)
                style.update(color=colours[kind], label=None if kind in labelled else kind)
                labelled.add(kind)
            ax.plot([p[0] / 60 for p in s.points], [p[2] / scale for p in s.points], **style)
        ax.axvspan(0, warmup / 60, color="0.9")
        ax.set_title(title)
        ax.set_xlabel("minutes (grey: warm-up)")
        if "family" in title:
            ax.set_yscale("symlog")
        if members:
            ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


# -- the run -------------------------------------------------------------------------------------------


def run(duration: float, every: float, short: bool, record: Path | None) -> tuple[list[Sample], Load, Path]:
    folder = Path(tempfile.mkdtemp(prefix="ll-soak-"))
    folder.chmod(0o755)  # handlers may run as another user (LAMBDALITE_SANDBOX_USER) and import from it
    shutil.copy(ROOT / "Procfile", folder / "Procfile")
    (folder / "lambdalite.toml").write_text(CONFIG)
    (folder / "soakfns.py").write_text(HANDLERS.format(idempotency_ttl=10 if short else 600))
    (folder / "buckets" / "drop").mkdir(parents=True)
    with sqlite3.connect(folder / "app.db") as db:
        db.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, value TEXT)")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMBDALITE_")}
    env.update(PATH=f"{BIN}:{env['PATH']}", PYTHONPATH=str(ROOT), LAMBDALITE_HTTP_PORT=str(port),
               **(SHORT if short else LONG))
    log_path = folder / "honcho.log"
    log = log_path.open("w")
    honcho = subprocess.Popen([str(BIN / "honcho"), "start"], cwd=folder, env=env, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    load = Load(folder, port)
    samples: list[Sample] = []
    try:
        deadline = time.monotonic() + 90
        while subprocess.run([str(BIN / "lambdalite"), "status", "--json"], cwd=folder, env=env,
                             capture_output=True).returncode != 0:
            if honcho.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the stack did not start:\n" + _told(log_path))
            time.sleep(0.5)
        _wait_http(port, log_path)
        client = redis.Redis.from_url(f"unix://{folder / 'var' / 'redis.sock'}", socket_timeout=30)
        root = psutil.Process(honcho.pid)
        capped = caps(short)
        load.start()
        began = time.monotonic()
        next_at = began
        while True:
            now = time.monotonic()
            if now - began > duration:
                break
            if honcho.poll() is not None:
                raise SystemExit("the stack stopped during the run:\n" + _told(log_path))
            used, families, events, largest, capped_bytes, smallest, memory = sample_redis(client, capped)
            samples.append(Sample(now - began, events, used, families, sample_processes(root),
                                  log_path.stat().st_size, largest, capped_bytes, smallest, memory))
            if record is not None:  # as it goes: a run cut short still has its figures
                with record.open("a") as out:
                    out.write(json.dumps(samples[-1].__dict__) + "\n")
            if len(samples) % max(1, round(60 / every)) == 0:
                s = samples[-1]
                print(f"{s.at / 60:5.1f} min  {s.events:>9,} runs  redis {s.used_memory / 2**20:6.1f} MB  "
                      f"keys {sum(s.families.values()):>7,}  processes {len(s.processes)}", flush=True)
            next_at += every
            time.sleep(max(0.0, next_at - time.monotonic()))
        client.close()
    finally:
        load.join()
        if record is not None:
            with record.open("a") as out:
                out.write(json.dumps({"sent": load.sent, "errors": load.errors, "last_error": load.last_error}) + "\n")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(honcho.pid, signal.SIGINT)
        try:
            honcho.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(honcho.pid, signal.SIGKILL)
            honcho.wait()
        log.close()
    return samples, load, folder


def _told(log_path: Path) -> str:
    """What honcho said of its processes (started, stopped, why) and the log's last lines."""
    text = log_path.read_text(errors="replace")
    said = [line for line in text.splitlines() if " system " in line or "lambdalite:" in line][:40]
    return "\n".join(said) + "\n...\n" + text[-2500:]


def read_samples(path: Path) -> list[Sample]:
    samples = []
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if "at" in record:
            record["processes"] = {int(pid): p for pid, p in record["processes"].items()}
            samples.append(Sample(**record))
    return samples


def _wait_http(port: int, log_path: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return
        time.sleep(0.3)
    raise SystemExit("the HTTP source did not answer /healthz:\n" + _told(log_path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=3600.0, help="seconds of load")
    parser.add_argument("--warmup", type=float, default=1200.0, help="seconds left out of the fit")
    parser.add_argument("--every", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--short", action="store_true", help="lifetimes and caps shortened for a run of a minute")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "soak.png")
    parser.add_argument("--samples", type=Path, help="also write every sample here as it is taken (JSON lines)")
    parser.add_argument("--from-samples", type=Path, help="no run: report the samples an earlier run wrote")
    parser.add_argument("--write", action="store_true", help="write the figures into docs/soak.md")
    parser.add_argument("--check", action="store_true", help="exit 1 when a key family or a process keeps growing")
    args = parser.parse_args()
    if args.from_samples:
        samples, load, folder = read_samples(args.from_samples), Load(Path("."), 0), Path(tempfile.mkdtemp())
        for line in args.from_samples.read_text().splitlines():
            record = json.loads(line)
            if "sent" in record:
                load.sent.update(record["sent"])
                load.errors.update(record["errors"])
                load.last_error.update(record["last_error"])
        args.duration = samples[-1].at
    else:
        if args.samples:
            args.samples.write_text("")
        samples, load, folder = run(args.duration, args.every, args.short, args.samples)
    try:
        series = build_series(samples, args.warmup)
        text, _met = report(series, args.warmup, samples, load, args.duration)
        print(text)
        plot(series, args.warmup, args.plot)
        print("plot:", args.plot)
        if args.write:
            text += f"\n\n![Every series of the run over time]({args.plot.name})"
            command = (f"python bench/soak.py --from-samples {args.from_samples.name} --warmup {args.warmup:g} --write"
                       if args.from_samples else
                       f"python bench/soak.py --duration {args.duration:g} --warmup {args.warmup:g} --write")
            print("written to", write_section("soak.md", "soak", text, command))
        growing, notes = verdicts(series, samples, caps(args.short), args.warmup)
        for note in notes:
            print(note)
        lost = sum(load.errors.values())
        if args.check:
            for why in growing:
                print("keeps growing:", why)
            if lost:
                print("load errors:", dict(load.errors), load.last_error)
            if growing or lost:
                sys.exit(1)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
