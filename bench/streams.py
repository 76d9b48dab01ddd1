"""What Redis's stream node size costs: ``python bench/streams.py [--write]``.

An event's outcome (``lambdalite:result:<id>``) and RQ's result (``rq:results:<id>``) are streams of one
entry, one per event, alive for their TTL; a function's invocation logs (``lambdalite:logs:<function>``)
are one stream of many entries. Redis allocates a stream's node at ``stream-node-max-bytes`` up front
(its default 4096 bytes): for a one-entry stream of a few hundred bytes that is mostly empty space.
For each node size this writes 20,000 outcomes and 3,000 invocations' logs (a cap of 2,000) with
lambdalite's own writers into a fresh embedded redis-server, and prints the memory each takes beside
Redis's default, measured in the same run. ``--write`` puts the table in docs/redis-keys.md.
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

_sys.path[:] = [p for p in _sys.path if _Path(p or ".").resolve() != _Path(__file__).resolve().parent]

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from report import table, write_section  # noqa: E402

from broker import logstore, results
from broker.redis_server import embedded  # noqa: E402

OUTCOMES = 20_000
LOGGED = 3_000
CAP = 2_000
LINES = [(0, "START RequestId: 6f1c2a40-8d0e-4bb1-9a57-0d7e0c2f3b11 Version: $LATEST"),
         (0, "END RequestId: 6f1c2a40-8d0e-4bb1-9a57-0d7e0c2f3b11"),
         (0, "REPORT RequestId: 6f1c2a40-8d0e-4bb1-9a57-0d7e0c2f3b11\tDuration: 2.31 ms\tBilled Duration: 3 ms\t"
             "Memory Size: 128 MB\tMax Memory Used: 41 MB\tMax Ephemeral Storage Used: 0.0 MB")]


def measure(node_bytes: int) -> tuple[float, float, float]:
    """(bytes per outcome stream, bytes per logged invocation, RSS MB) with ``node_bytes`` nodes."""
    folder = Path(tempfile.mkdtemp(prefix="ll-streams-"))
    try:
        with embedded.RedisServer(folder, appendonly=False) as server:
            client = redis.Redis.from_url(server.url, socket_timeout=30)
            client.config_set("stream-node-max-bytes", node_bytes)
            outcome = results.Outcome(status="succeeded", result={"statusCode": 200, "body": "ok"}, attempts=1,
                                      duration_ms=2.31)
            before = int(client.info("memory")["used_memory"])
            with client.pipeline(transaction=False) as pipe:
                for i in range(OUTCOMES):
                    results.record(pipe, f"{i:08d}-0000-4000-8000-000000000000", outcome, ttl=900)
                pipe.execute()
            per_outcome = (int(client.info("memory")["used_memory"]) - before) / OUTCOMES
            with client.pipeline(transaction=False) as pipe:
                for i in range(LOGGED):
                    logstore.record(pipe, "f", f"{i:08d}-0000-4000-8000-000000000000", LINES, cap=CAP)
                pipe.execute()
            logs = sum(int(client.memory_usage(key, samples=0) or 0)
                       for key in (logstore.stream_key("f"), logstore.index_key("f")))
            per_logged = logs / int(client.xlen(logstore.stream_key("f")))
            rss = int(client.info("memory")["used_memory_rss"]) / 2**20
            client.close()
            return per_outcome, per_logged, rss
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="write the table into docs/redis-keys.md")
    args = parser.parse_args()
    reference = measure(4096)
    rows = []
    for node_bytes in sorted({4096, 2048, embedded.STREAM_NODE_MAX_BYTES, 512, 256}, reverse=True):
        got = reference if node_bytes == 4096 else measure(node_bytes)
        name = f"{node_bytes:,}" + (" (Redis's default)" if node_bytes == 4096 else "") + (
            " (lambdalite's)" if node_bytes == embedded.STREAM_NODE_MAX_BYTES else "")
        rows.append([name, f"{got[0]:,.0f} B", f"{got[0] / reference[0]:.2f}", f"{got[1]:,.0f} B",
                     f"{got[1] / reference[1]:.2f}", f"{got[2]:.1f} MB"])
    text = (f"{OUTCOMES:,} outcomes (one-entry streams, `broker.results.record`) and {LOGGED:,} invocations' "
            f"logs (START, END and REPORT lines; `broker.logstore.record`, capped at {CAP:,}) in a fresh "
            "embedded redis-server, for each `stream-node-max-bytes`:\n\n")
    text += table(["stream-node-max-bytes", "per outcome", "of the default", "per logged invocation",
                   "of the default", "redis-server RSS"], rows)
    print(text)
    if args.write:
        print("written to", write_section("redis-keys.md", "streams", text, "python bench/streams.py --write"))


if __name__ == "__main__":
    started = time.monotonic()
    main()
    print(f"({time.monotonic() - started:.0f} s)")
