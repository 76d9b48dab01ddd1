"""How fast a frozen worker's limits still bite, and what watching costs: ``python bench/hostile.py
[--runs N] [--workers K] [--write]``.

On the real scaler (``python -m workers.scaler``) and its workers, with a redis-server of its own:

- a handler that freezes its worker (``SIGSTOP`` to its parent) and sleeps: time from the
  invocation's deadline until its event is settled (its outcome readable in Redis), median over
  N runs; beside it, in the same run, a handler that only sleeps past its timeout (the worker times
  it out itself, the healthy path);
- a handler that freezes its worker and then holds more than its memory limit: time from its
  start until the event is settled with ``Runtime.OutOfMemory`` (no deadline involved);

and in this process, the watchdog's check per scaler step with K busy workers (stand-in processes,
each in an invocation), beside a whole step of a scaler tracking the same K workers.
``--write`` puts the table in docs/limits-guard.md.
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

# This folder holds http.py (bench/http.py), which would shadow the standard library's http package.
_sys.path[:] = [p for p in _sys.path if _Path(p or ".").resolve() != _Path(__file__).resolve().parent]

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from report import table, write_section  # noqa: E402

sys.path.remove(str(ROOT / "bench"))  # its http.py would shadow the standard library's (rq imports it)

TIMEOUT = 1  # seconds: the benched functions' timeout

HANDLERS = '''
import json, os, signal, time

def _note(event):
    with open(event["log"], "a") as f:
        f.write(json.dumps({"id": event["n"], "at": time.time()}) + "\\n")

def freeze(event, context):
    _note(event)
    os.kill(os.getppid(), signal.SIGSTOP)
    if event.get("mb"):
        held = b"\\1" * (event["mb"] * 1024 * 1024)
    time.sleep(60)

def overstay(event, context):
    _note(event)
    time.sleep(60)
'''

TOML = f"""
[functions.freeze]
handler = "bench_hostile.freeze"
timeout = {TIMEOUT}
memory = 128
retries = 0

[functions.overstay]
handler = "bench_hostile.overstay"
timeout = {TIMEOUT}
retries = 0
"""


def _env(url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMBDALITE_")}
    # Handlers as the stack's own user: the case the guard is for (as the sandbox user a handler
    # cannot signal its worker at all).
    env.update(PYTHONPATH=str(ROOT), LAMBDALITE_REDIS_URL=url, LAMBDALITE_MAX_WORKERS="4",
               LAMBDALITE_SANDBOX_USER=str(os.geteuid()))
    return env


def settle_times(runs: int) -> dict[str, list[float]]:
    """Seconds from deadline (or start, for memory) to outcome, per kind, over ``runs`` runs each."""
    from broker import results
    from broker.envelope import Event
    from broker.queues import Publisher
    from broker.redis_server.embedded import RedisServer
    from broker.registry import load_registry

    folder = Path(tempfile.mkdtemp(prefix="ll-bench-hostile-"))
    (folder / "bench_hostile.py").write_text(HANDLERS)
    (folder / "lambdalite.toml").write_text(TOML)
    (folder / "buckets").mkdir()
    log = folder / "notes.log"
    server = RedisServer(folder / "redis").start()
    client = redis.Redis.from_url(server.url)
    publisher = Publisher(client, load_registry(folder / "lambdalite.toml"))
    out = open(folder / "scaler.log", "w")  # noqa: SIM115 - closed below
    scaler = subprocess.Popen([sys.executable, "-m", "workers.scaler"], cwd=folder, env=_env(server.url),
                              stdout=out, stderr=subprocess.STDOUT)
    times: dict[str, list[float]] = {"frozen": [], "healthy": [], "frozen over memory": []}
    try:
        n = 0
        for _ in range(runs):
            for kind, function, extra in (("frozen", "freeze", {}), ("healthy", "overstay", {}),
                                          ("frozen over memory", "freeze", {"mb": 200})):
                n += 1
                event = Event(function=function, payload={"log": str(log), "n": n, **extra})
                publisher.publish(event)
                outcome = results.wait(client, event.id, 30)
                seen = time.time()
                if outcome is None:
                    raise SystemExit(f"no outcome for {kind} run {n}; see {folder / 'scaler.log'}")
                expected = "Runtime.OutOfMemory" if extra else "Sandbox.Timedout"
                if (outcome.error or {}).get("errorType") != expected:
                    raise SystemExit(f"{kind}: {outcome.error}, not {expected}")
                started = next(json.loads(line)["at"] for line in log.read_text().splitlines()
                               if json.loads(line)["id"] == n)
                times[kind].append(seen - started - (0 if extra else TIMEOUT))
        return times
    finally:
        scaler.send_signal(signal.SIGTERM)
        scaler.wait(15)
        out.close()
        client.close()
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


def step_costs(workers: int, rounds: int) -> tuple[float, float]:
    """(the watchdog's check, a whole scaler step) in microseconds, medians, with ``workers`` busy
    stand-in workers (sleeping processes with a child each, every one in an invocation)."""
    from broker.redis_server.embedded import RedisServer
    from broker.registry import load_registry
    from broker.settings import Settings
    from workers.processes import WorkerProc
    from workers.scaler import Scaler

    folder = Path(tempfile.mkdtemp(prefix="ll-bench-step-"))
    (folder / "bench_hostile.py").write_text(HANDLERS)
    (folder / "lambdalite.toml").write_text(TOML.replace("[functions.freeze]", "[functions.freeze]\n"
                                                         f"max_concurrency = {workers}"))
    sys.path.insert(0, str(folder))
    server = RedisServer(folder / "redis").start()
    client = redis.Redis.from_url(server.url)
    code = "import os, time\nif os.fork() == 0: time.sleep(600)\ntime.sleep(600)"
    procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(workers)]
    try:
        settings = Settings(redis_url=server.url, max_workers=workers, sandbox_user=str(os.geteuid()))
        scaler = Scaler(settings, load_registry(folder / "lambdalite.toml"), client, spawn=lambda fn: 0)
        for proc in procs:
            slot = scaler.board.reserve()
            assert slot is not None
            scaler.board.assign(proc.pid)
            slot.begin(time.monotonic() + 3600)
            scaler.views["freeze"].workers[proc.pid] = WorkerProc(proc.pid, "freeze", f"w{proc.pid}", 0.0)
        time.sleep(0.3)  # the stand-ins' children are forked
        guard, step = [], []
        for _ in range(rounds):
            began = time.perf_counter()
            scaler.guard(time.monotonic())
            guard.append(time.perf_counter() - began)
            began = time.perf_counter()
            scaler.step()
            step.append(time.perf_counter() - began)
        if any(p.poll() is not None for p in procs):
            raise SystemExit("the watchdog killed a healthy stand-in")
        return statistics.median(guard) * 1e6, statistics.median(step) * 1e6
    finally:
        for proc in procs:
            for child in psutil.Process(proc.pid).children():
                child.kill()
            proc.kill()
            proc.wait()
        client.close()
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--write", action="store_true", help="write the table into docs/limits-guard.md")
    args = parser.parse_args()
    times = settle_times(args.runs)
    guard_us, step_us = step_costs(args.workers, 300)

    def ms(values: list[float]) -> str:
        return (f"{statistics.median(values) * 1000:.0f} ms (min {min(values) * 1000:.0f}, "
                f"max {max(values) * 1000:.0f})")

    rows = [
        ["frozen worker (SIGSTOP from the handler): deadline -> event settled", ms(times["frozen"])],
        ["healthy timeout, same run (reference): deadline -> event settled", ms(times["healthy"])],
        ["frozen worker over its 128 MB limit: handler start -> settled (`Runtime.OutOfMemory`)",
         ms(times["frozen over memory"])],
        [f"watchdog check per scaler step, {args.workers} busy workers", f"{guard_us:.0f} µs"],
        [f"a whole scaler step with the same {args.workers} workers, the check included (reference)",
         f"{step_us:.0f} µs"],
    ]
    text = (table(["measure", f"median over {args.runs} runs"], rows)
            + f"\n\n`timeout = {TIMEOUT}` s; handlers run as the stack's own user (the case the guard is for); "
              "settled means the outcome is readable in Redis (retries = 0: dead-lettered). The check's figure "
              "is the median of 300 steps.")
    print(text)
    if args.write:
        print("written to", write_section("limits-guard.md", "hostile", text,
                                          f"python bench/hostile.py --runs {args.runs} --workers {args.workers}"))


if __name__ == "__main__":
    main()
