"""The long fault run, and what Redis's fsync policy costs and keeps.

1. 10,000 events through all three sources (files, SQLite rows, async webhooks) into a recording
   handler while every kind of process is SIGKILLed three times at random moments (files, sqlite,
   webhook, scaler, redis-server, a worker, an invocation's own process) and Ctrl-C is pressed
   twice; the stack is started again after each. Prints lost (must be 0), duplicated, and the
   recovery after each kind of fault (tests/faults/chaos.py does the work).
2. A 10 s Redis outage under load: no process may exit; prints how soon every source flows again
   once Redis is back.
3. ``appendfsync everysec`` against ``always``: acknowledged publishes per second, one event per
   transaction (the cost), and acknowledged events missing after a SIGKILL of redis-server in the
   middle of a stream of publishes (what a process crash loses; a power cut is not tried here).

Run: ``.venv/bin/python bench/chaos.py`` (about 5 minutes). ``--events N`` changes part 1's size.
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

# This folder holds http.py (bench/http.py), which would shadow the standard library's http package.
_sys.path[:] = [p for p in _sys.path if _Path(p or ".").resolve() != _Path(__file__).resolve().parent]

import argparse
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from broker.embedded import RedisServer  # noqa: E402
from broker.envelope import Event  # noqa: E402
from broker.queues import Publisher  # noqa: E402
from broker.registry import load_registry  # noqa: E402
from tests.faults import chaos  # noqa: E402


def long_run(folder: Path, events: int, seed: int) -> chaos.Report:
    faults = [*chaos.KINDS * 3, "ctrl-c", "ctrl-c"]
    random.Random(seed).shuffle(faults)
    per_source = -(-events // 3)
    report = chaos.run(folder / "long", per_source=per_source, rate=40, faults=faults, seed=seed,
                       say=lambda line: print(f"    {line}", flush=True))
    return report


def outage_run(folder: Path, seed: int) -> chaos.Report:
    return chaos.run(folder / "outage", per_source=300, rate=10, faults=["outage"], seed=seed,
                     say=lambda line: print(f"    {line}", flush=True))


def fsync_run(folder: Path, mode: str, publishes: int) -> tuple[float, int, int]:
    """(acknowledged publishes/s, acknowledged before the SIGKILL, of those missing after restart)."""
    (folder / "lambdalite.toml").write_text('[functions.fn]\nhandler = "handlers.thumbnail.handler"\n')
    registry = load_registry(folder / "lambdalite.toml")
    server = RedisServer(folder / f"redis-{mode}", appendonly=True, appendfsync=mode).start()
    client = redis.Redis.from_url(server.url)
    publisher = Publisher(client, registry)
    started = time.perf_counter()
    for n in range(publishes):
        publisher.publish(Event(function="fn", payload={"n": n}))
    rate = publishes / (time.perf_counter() - started)

    acked: list[str] = []
    stop = threading.Event()

    def stream() -> None:  # publish until the server dies; remember what was acknowledged
        n = 0
        while not stop.is_set():
            event = Event(function="fn", payload={"n": n})
            try:
                publisher.publish(event)
            except redis.RedisError:
                return
            acked.append(event.id)
            n += 1

    client.flushall()
    thread = threading.Thread(target=stream)
    thread.start()
    time.sleep(1.5)
    server.kill()  # SIGKILL in mid-stream: a process crash, not a power cut
    stop.set()
    thread.join()
    client.close()
    server.start()  # the same folder: it loads the append-only file
    client = redis.Redis.from_url(server.url)
    queued = {raw.decode() for raw in client.lrange("rq:queue:lambdalite.fn", 0, -1)}
    missing = sum(1 for event_id in acked if event_id not in queued or not client.exists(f"rq:job:{event_id}"))
    client.close()
    server.stop()
    return rate, len(acked), missing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=int(time.time()) % 1_000_000)
    parser.add_argument("--parts", default="123", help="which parts to run, e.g. 1 or 23")
    parser.add_argument("--keep", action="store_true", help="keep the working folder (logs, Redis data)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="ll-chaos-"))
    print(f"seed {args.seed}; working in {folder}", flush=True)
    try:
        lost = []
        if "1" in args.parts:
            print(f"1. {args.events} events, every process SIGKILLed 3 times, Ctrl-C twice", flush=True)
            report = long_run(folder, args.events, args.seed)
            lost += report.lost
            for line in report.lines():
                print(f"  {line}")
        if "2" in args.parts:
            print("2. a 10 s Redis outage under load", flush=True)
            report = outage_run(folder, args.seed)
            lost += report.lost
            for line in report.lines():
                print(f"  {line}")
        if "3" in args.parts:
            print("3. appendfsync: 2,000 acknowledged publishes one at a time; then SIGKILL mid-stream")
            results = {mode: fsync_run(folder, mode, 2_000) for mode in ("everysec", "always")}
            base = results["everysec"][0]
            for mode, (rate, acked, missing) in results.items():
                print(f"  {mode:<9} {rate:8.0f} publishes/s ({rate / base:.2f} x everysec); SIGKILL of "
                      f"redis-server after {acked} acknowledged: {missing} missing after restart")
    except BaseException:
        print(f"kept {folder} for a look")
        raise
    if lost or args.keep:
        print(f"kept {folder} for a look")
        sys.exit(1 if lost else 0)
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
