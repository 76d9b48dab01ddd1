"""What the log store and the cost counters cost: ``python bench/logs.py [--invocations 100000] [--write]``.

In a scratch redis-server (the embedded one's binary), one run measures:

- finding one request id among ``--invocations`` stored ones (``logstore.find``: the index, then one
  millisecond's entries), beside the same search without the index (a paged XRANGE scan of the
  stream, what the store would need without it);
- the write an invocation's end adds: the outcome transaction the worker sends (a stats counter and
  the outcome stream, in one MULTI/EXEC) timed alone and with the log and cost scripts queued in it;
- memory: Redis's bytes for a function's logs after the cap's worth of invocations and after twice
  that, and per invocation.

``--write`` puts the table in docs/logs-and-cost.md.
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

_sys.path[:] = [p for p in _sys.path if _Path(p or ".").resolve() != _Path(__file__).resolve().parent]

import argparse
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "bench"))  # last: bench/http.py must not hide the standard library's http

from report import table, write_section  # noqa: E402

from broker import cost, logstore, results, settings, stats  # noqa: E402
from broker.connection import transact  # noqa: E402
from broker.redis_internals import queued  # noqa: E402
from broker.redis_server.embedded import RedisServer  # noqa: E402

FUNCTION = "bench"


def lines_of(rid: str) -> list[tuple[int, str]]:
    """A typical invocation's lines: START, two lines of the handler's, END, REPORT."""
    at = logstore.now_ms()
    return [(at, f"START RequestId: {rid} Version: $LATEST"), (at, f"processing order {rid[:8]}"),
            (at + 3, "INFO orders: order paid, receipt sent"), (at + 4, f"END RequestId: {rid}"),
            (at + 4, f"REPORT RequestId: {rid}\tDuration: 3.91 ms\tBilled Duration: 4 ms\tMemory Size: 128 MB\t"
                     "Max Memory Used: 31 MB\tMax Ephemeral Storage Used: 0.0 MB")]


def seed(client: redis.Redis, count: int, cap: int) -> list[str]:
    ids = [str(uuid.uuid4()) for _ in range(count)]
    for start in range(0, count, 2000):
        with client.pipeline(transaction=False) as pipe:
            for rid in ids[start:start + 2000]:
                logstore.record(pipe, FUNCTION, rid, lines_of(rid), cap=cap)
            pipe.execute()
    return ids


def scan(client: redis.Redis, rid: str) -> bool:
    """The search without the index: every entry read until the one with ``rid``."""
    after = "-"
    while True:
        page = client.xrange(logstore.stream_key(FUNCTION), after, "+", count=1000)
        for _entry_id, fields in page:
            if fields[b"r"] == rid.encode():
                return True
        if len(page) < 1000:
            return False
        after = "(" + page[-1][0].decode()


def timings(call: Any, n: int) -> list[float]:
    out = []
    for _ in range(n):
        started = time.perf_counter()
        call()
        out.append((time.perf_counter() - started) * 1000)
    return out


def outcome_transaction(client: redis.Redis, with_logs: bool) -> None:
    rid = str(uuid.uuid4())
    with client.pipeline(transaction=False) as pipe:
        stats.count(pipe, FUNCTION, "succeeded")
        results.record(pipe, rid, results.Outcome("succeeded", result={"ok": True}, duration_ms=3.9), ttl=60)
        if with_logs:
            logstore.record(pipe, FUNCTION, rid, lines_of(rid))
            cost.record(pipe, FUNCTION, 128, 4, None)
        commands = queued(pipe)
    transact(client, commands)


def pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--invocations", type=int, default=settings.current().logs_max_invocations)
    parser.add_argument("--lookups", type=int, default=1000)
    parser.add_argument("--writes", type=int, default=5000)
    parser.add_argument("--write", action="store_true", help="write the table into docs/logs-and-cost.md")
    args = parser.parse_args()
    n = args.invocations
    with tempfile.TemporaryDirectory(prefix="ll-bench-logs-") as folder, RedisServer(Path(folder)) as server:
        client = redis.Redis.from_url(server.url)
        started = time.perf_counter()
        ids = seed(client, n, cap=n)
        seeded = time.perf_counter() - started
        once = logstore.memory(client, FUNCTION)
        picks = random.Random(7).sample(ids, min(args.lookups, n))
        it = iter(picks * 2)
        found = timings(lambda: logstore.find(client, FUNCTION, next(it)), len(picks))
        scans = timings(lambda: scan(client, random.choice(ids)), 5)
        seed(client, n, cap=n)  # twice the cap: the store keeps its size
        twice = logstore.memory(client, FUNCTION)
        client.flushall()
        for with_logs in (False, True):  # warm both scripts into Redis's cache
            outcome_transaction(client, with_logs)
        plain = timings(lambda: outcome_transaction(client, False), args.writes)
        logged = timings(lambda: outcome_transaction(client, True), args.writes)
        client.close()
    rows = [
        [f"find one request id among {n:,} (index)", f"{statistics.median(found):.3f} ms p50, "
         f"{pct(found, 0.99):.3f} ms p99", f"scan of the stream without the index: "
         f"{statistics.median(scans):.0f} ms p50 (5 searches)"],
        ["the outcome transaction of an invocation's end", f"{statistics.median(logged):.3f} ms p50 with the log "
         f"and cost scripts in it", f"{statistics.median(plain):.3f} ms p50 without them"],
        [f"Redis memory of one function's logs, {n:,} invocations (the cap)", f"{once / 2**20:.1f} MB "
         f"({once / n:.0f} bytes an invocation of 5 lines)", "-"],
        [f"the same after {2 * n:,} invocations", f"{twice / 2**20:.1f} MB ({twice / once:.2f}x)", "-"],
    ]
    text = table(["figure", "lambdalite", "reference, same run"], rows)
    print(text)
    print(f"(seeding {n:,} entries through logstore.record, pipelined: {seeded:.1f} s)")
    if args.write:
        default = settings.current().logs_max_invocations
        command = "python bench/logs.py" + (f" --invocations {n}" if n != default else "")
        print("written to", write_section("logs-and-cost.md", "logs", text, command))


if __name__ == "__main__":
    main()
