"""What one no-op event costs, in CPU and Redis commands: ``python bench/event_cost.py [--tree DIR ...]``.

A scaler with one warm worker (``min_workers = 1``) drains a backlog of no-op asynchronous events on
the embedded redis-server. Printed per event: the drain rate, Redis's CPU (``INFO cpu``), the worker's
and its sandbox's CPU, and the Redis commands that cost the most (``INFO commandstats``: calls and
microseconds per event), and the scaler's own CPU (its log is written into the project folder, as
``make run > app.log`` would). CPU per event moves far less with a neighbour's load than a rate does, so
it is the figure to compare two versions by: ``--tree`` names other checkouts (a folder holding a
tree, e.g. from ``git archive``) to measure in turns with this one.
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

_sys.path[:] = [p for p in _sys.path if _Path(p or ".").resolve() != _Path(__file__).resolve().parent]

import argparse
import ast
import importlib.util
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def measure(events: int) -> dict[str, float]:
    """One drain of ``events`` no-ops by the code of the tree on PYTHONPATH (its bench/curves.py's helpers)."""
    import psutil
    import redis

    tree = Path(os.environ.get("PYTHONPATH", str(ROOT)).split(os.pathsep)[0])
    spec = importlib.util.spec_from_file_location("curves", tree / "bench" / "curves.py")
    assert spec is not None and spec.loader is not None
    curves = importlib.util.module_from_spec(spec)
    sys.modules["curves"] = curves
    spec.loader.exec_module(curves)
    folder = curves._scratch("ll-event-cost-")
    (folder / "lambdalite.toml").write_text('[functions.noop]\nhandler = "scale_handlers.noop"\n'
                                            'max_concurrency = 1\nmin_workers = 1\n')
    server = curves.RedisServer(folder / "redis").start()
    client = redis.Redis.from_url(server.url)
    publisher = curves.Publisher(client, curves.load_registry(folder / "lambdalite.toml"))
    try:
        with curves.scaler(folder, server.url, LAMBDALITE_MAX_WORKERS="1") as proc:
            time.sleep(3)
            publisher.publish_many([curves.Event("noop", {}) for _ in range(200)])  # the worker warm
            curves.wait_until("the warm-up drained", lambda: client.llen("rq:queue:lambdalite.noop") == 0, 60)
            time.sleep(1)
            client.config_resetstat()
            own = psutil.Process(proc.pid)
            cpu0, kids0, t0 = client.info("cpu"), curves._children_cpu(proc.pid), time.time()
            own0 = sum(own.cpu_times()[:2])
            publisher.publish_many([curves.Event("noop", {}) for _ in range(events)])
            curves.wait_until("the backlog drained", lambda: client.llen("rq:queue:lambdalite.noop") == 0, 600)
            time.sleep(0.5)
            cpu1, kids1, t1 = client.info("cpu"), curves._children_cpu(proc.pid), time.time()
            own1 = sum(own.cpu_times()[:2])
            stats = client.info("commandstats")
    finally:
        client.close()
        server.stop()
    redis_cpu = sum(cpu1[k] - cpu0[k] for k in ("used_cpu_user", "used_cpu_sys"))
    out = {"events/s": events / (t1 - t0), "Redis CPU µs": redis_cpu * 1e6 / events,
           "worker+sandbox CPU µs": (kids1 - kids0) * 1e6 / events,
           "scaler CPU µs": (own1 - own0) * 1e6 / events}
    for name, s in sorted(stats.items(), key=lambda kv: -kv[1]["usec"])[:6]:
        out[f"{name.removeprefix('cmdstat_')} calls"] = s["calls"] / events
        out[f"{name.removeprefix('cmdstat_')} µs"] = s["usec"] / events
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tree", action="append", default=[], help="another checkout to measure in turns")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a child: measure once, print
    args = parser.parse_args()
    if args.one:
        print(repr(measure(args.events)))
        return
    trees = [Path(t).resolve() for t in args.tree] + [ROOT]
    got: dict[Path, list[dict[str, float]]] = {t: [] for t in trees}
    print(f"event cost: {args.events:,} no-ops a drain, {args.rounds} round(s), load {os.getloadavg()[0]:.2f}")
    for r in range(args.rounds):
        for tree in trees if r % 2 == 0 else trees[::-1]:
            env = {k: v for k, v in os.environ.items() if not k.startswith("LAMBDALITE_")}
            env["PYTHONPATH"] = str(tree)
            done = subprocess.run([sys.executable, __file__, "--one", "--events", str(args.events)], cwd=tree,
                                  env=env, capture_output=True, text=True, timeout=900)
            if done.returncode != 0:
                raise SystemExit(f"{tree}: {done.stderr[-3000:]}")
            got[tree].append(ast.literal_eval(done.stdout.strip().splitlines()[-1]))
    for tree, runs in got.items():
        print(f"\n{tree}: medians of {len(runs)}")
        for key in runs[0]:
            values = [run[key] for run in runs if key in run]
            print(f"  {key:<32} {statistics.median(values):10.2f}")


if __name__ == "__main__":
    main()
