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
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import psutil
import redis

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from report import write_section  # noqa: E402
from soak_load import CONFIG, HANDLERS, Load  # noqa: E402
from soak_report import (  # noqa: E402
    Sample,
    build_series,
    plot,
    read_samples,
    report,
    verdicts,
)

from broker import history, stats  # noqa: E402
from broker.settings import Settings  # noqa: E402

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
    (r"lambdalite:(dlq|stats|scaler|slots|history|decisions):.+", r"lambdalite:\1:FUNCTION"),
    (r"lambdalite:files:manifest:.+", "lambdalite:files:manifest:BUCKET"),
    (r"lambdalite:sqlite:.+", "lambdalite:sqlite:CURSOR"),
    (r"lambdalite:delayed", "lambdalite:delayed"),
    (r"lambdalite:logs:.+", "lambdalite:logs:FUNCTION"),
    (r"lambdalite:logs-index:.+", "lambdalite:logs-index:FUNCTION"),
    (r"lambdalite:cost:.+", "lambdalite:cost:FUNCTION"),
    (r"lambdalite:schedule:.+", "lambdalite:schedule:<schedule>"),
]
_COMPILED = [(re.compile(pattern), name) for pattern, name in FAMILIES]
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
             # a function's buckets, the last hour's and the last day's, all made by its first write
             "lambdalite:history:FUNCTION": sum(ring.slots for ring in history.RINGS.values()),
             "lambdalite:decisions:FUNCTION": stats.DECISIONS_KEPT}

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


# -- the run -------------------------------------------------------------------------------------------


def write_keys(client: redis.Redis, path: Path) -> None:
    """Every key the Redis holds and its type, one ``key<TAB>type`` a line (the inventory's check)."""
    with client.pipeline(transaction=False) as pipe:
        keys = list(client.scan_iter(count=1000))
        for key in keys:
            pipe.type(key)
        types = pipe.execute()
    path.write_text("".join(f"{k.decode()}\t{t.decode()}\n" for k, t in zip(keys, types, strict=True)
                            if t != b"none"))  # gone between the scan and its type: expired, or done with


def run(duration: float, every: float, short: bool, record: Path | None,
        keys: Path | None = None) -> tuple[list[Sample], Load, Path]:
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
        if keys is not None:
            write_keys(client, keys)
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
    parser.add_argument("--keys", type=Path, help="at the end, write every key Redis holds and its type here")
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
        samples, load, folder = run(args.duration, args.every, args.short, args.samples, args.keys)
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
