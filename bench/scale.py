"""Autoscaling figures beside plain RQ, in one run: ``python bench/scale.py [--quick]``.

1. cold start: no worker -> handler running, vs. a new ``rq worker`` process starting an
   already-queued job (goal: <= 0.15 x); lambdalite's with the worker's private /tmp (the default)
   and beside it a second stack's with it off (a TMPDIR per invocation), in turns;
2. burst: 30 one-second invocations, max_concurrency 10, no warm worker: drain time / ideal 3 s
   (goal <= 1.15), beside 10 plain RQ workers already running;
3. CPU-bound: 200 invocations of 50 ms CPU, max_concurrency = cores: drain time / (CPU time /
   cores) (goal <= 1.10), beside one plain RQ worker per core already running;
4. backlog -> new worker running: one worker busy, a second event arrives (goal <= 100 ms).
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

# This folder holds http.py (bench/http.py), which would shadow the standard library's http package.
_sys.path[:] = [p for p in _sys.path if _Path(p or ".").resolve() != _Path(__file__).resolve().parent]

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
import redis  # noqa: E402
from rq import Queue  # noqa: E402

from broker.envelope import Event  # noqa: E402
from broker.queues import Publisher  # noqa: E402
from broker.redis_server.embedded import RedisServer  # noqa: E402
from broker.registry import load_registry  # noqa: E402

BIN = Path(sys.executable).parent
CORES = os.cpu_count() or 1


class Bench:
    def __init__(self, **settings: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="ll-scale-"))
        self.redis = RedisServer(self.dir).start()
        self.redis_process = psutil.Process(self.redis.proc.pid)  # type: ignore[union-attr]
        self.url = self.redis.url
        self.client = redis.Redis.from_url(self.url)
        shutil.copy(ROOT / "bench" / "scale_handlers.py", self.dir / "scale_handlers.py")
        (self.dir / "lambdalite.toml").write_text(f"""
[functions.cold]
handler = "scale_handlers.mark"
max_concurrency = 1
idle_timeout = 0.3
[functions.burst]
handler = "scale_handlers.mark"
timeout = 10
max_concurrency = 10
[functions.cpu]
handler = "scale_handlers.mark"
max_concurrency = {CORES}
[functions.backlog]
handler = "scale_handlers.mark"
timeout = 10
max_concurrency = 2
""")
        self.registry = load_registry(self.dir / "lambdalite.toml")
        self.publisher = Publisher(self.client, self.registry)
        # Handlers here live in a 0700 temp folder and write their logs there: as the stack's user.
        self.env = {**os.environ, "LAMBDALITE_REDIS_URL": self.url, "PYTHONPATH": f"{ROOT}:{self.dir}",
                    "LAMBDALITE_SANDBOX_USER": "root", **settings}
        self.scaler = subprocess.Popen([sys.executable, "-m", "workers.scaler"], cwd=self.dir, env=self.env,
                                       stdout=(self.dir / "scaler.log").open("w"), stderr=subprocess.STDOUT)
        time.sleep(1.5)

    def log(self, name: str) -> Path:
        path = self.dir / f"{name}-{time.monotonic_ns()}.log"
        path.touch()
        return path

    def close(self) -> None:
        self.scaler.terminate()
        self.scaler.wait(10)
        self.redis.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def stop_rq_workers(workers: list[subprocess.Popen[bytes]]) -> None:
    """Stop the reference ``rq worker`` processes: a warm stop, and a kill for one that missed it (RQ's
    worker can miss a stop signal sent as it blocks on its queue)."""
    for w in workers:
        w.terminate()
    for w in workers:
        try:
            w.wait(10)
        except subprocess.TimeoutExpired:
            w.kill()
            w.wait()


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def wait_for(path: Path, starts: int = 0, ends: int = 0, timeout: float = 120) -> list[dict]:
    # The figures come from the handlers' own timestamps, not from this poll; it only has to cost
    # next to no CPU, which the invocations it waits for would miss (counted, not parsed, each time).
    deadline = time.monotonic() + timeout
    while True:
        text = path.read_text()
        if text.count('"start":') >= starts and text.count('"end":') >= ends:
            return lines(path)
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {path}")
        time.sleep(0.02)


def workers_of(b: Bench, function: str) -> int:
    raw = b.client.hvals(f"lambdalite:scaler:{function}")
    return sum(sum(json.loads(v)["workers"].values()) for v in raw)


def cold_once(b: Bench) -> float:
    deadline = time.monotonic() + 30
    while workers_of(b, "cold") and time.monotonic() < deadline:  # back at zero workers
        time.sleep(0.05)
    time.sleep(0.4)
    log = b.log("cold")
    t0 = time.time()
    b.publisher.publish(Event("cold", {"log": str(log)}))
    return (wait_for(log, starts=1)[0]["start"] - t0) * 1000


def cold_start(b: Bench, b_off: Bench, runs: int) -> tuple[list[float], list[float], list[float]]:
    ours, ours_off, theirs = [], [], []
    queue = Queue("rq-cold", connection=b.client)
    for _ in range(runs):
        ours.append(cold_once(b))
        ours_off.append(cold_once(b_off))

        log = b.log("rq-cold")
        queue.enqueue("scale_handlers.rq_mark", str(log))
        t0 = time.time()
        subprocess.run([str(BIN / "rq"), "worker", "--burst", "--url", b.url, "rq-cold", "-q"], env=b.env,
                       cwd=b.dir, check=True, capture_output=True)
        theirs.append((wait_for(log, starts=1)[0]["start"] - t0) * 1000)
    return ours, ours_off, theirs


def drain(log: Path, n: int) -> tuple[float, int]:
    got = wait_for(log, starts=n, ends=n)
    starts = sorted(g["start"] for g in got if "start" in g)
    ends = sorted(g["end"] for g in got if "end" in g)
    edges = sorted([(s, 1) for s in starts] + [(e, -1) for e in ends])
    most = now = 0
    for _, d in edges:
        now += d
        most = max(most, now)
    return ends[-1], most


def burst(b: Bench, n: int = 30) -> tuple[float, int, float]:
    log = b.log("burst")
    t0 = time.time()
    b.publisher.publish_many([Event("burst", {"log": str(log), "sleep": 1}) for _ in range(n)])
    last, most = drain(log, n)
    ours = last - t0
    # plain RQ: 10 workers already running (RQ cannot start them itself)
    queue = Queue("rq-burst", connection=b.client)
    workers = [subprocess.Popen([str(BIN / "rq"), "worker", "--url", b.url, "rq-burst", "-q", "-w",
                                 "rq.worker.SimpleWorker"], env=b.env, cwd=b.dir) for _ in range(10)]
    time.sleep(3)
    rlog = b.log("rq-burst")
    t0 = time.time()
    for _ in range(n):
        queue.enqueue("scale_handlers.rq_mark", str(rlog), sleep=1)
    rq_last, _ = drain(rlog, n)
    stop_rq_workers(workers)
    return ours, most, rq_last - t0


def cpu_by_process(b: Bench) -> dict[int, tuple[str, float]]:
    """CPU seconds so far of each process the drain involves: pid -> (kind, seconds)."""
    scaler = psutil.Process(b.scaler.pid)
    out = {}
    for p in [scaler, *scaler.children(recursive=True), b.redis_process, psutil.Process()]:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            kind = ("scaler" if p.pid == scaler.pid else "redis-server" if p.pid == b.redis_process.pid
                    else "bench (publish, poll)" if p.pid == os.getpid()
                    else "workers" if p.ppid() == scaler.pid else "sandboxes (handlers included)")
            out[p.pid] = (kind, t.user + t.system)
    return out


def cpu_bound(b: Bench, n: int = 200, cpu: float = 0.05) -> tuple[float, float, dict[str, float]]:
    log = b.log("cpu")
    before = cpu_by_process(b)
    t0 = time.time()
    b.publisher.publish_many([Event("cpu", {"log": str(log), "cpu": cpu}) for _ in range(n)])
    last, _ = drain(log, n)
    ours = last - t0
    spent: dict[str, float] = {}
    for pid, (kind, seconds) in cpu_by_process(b).items():  # workers stay (idle_timeout): all counted
        spent[kind] = spent.get(kind, 0.0) + seconds - before.get(pid, (kind, 0.0))[1]
    queue = Queue("rq-cpu", connection=b.client)
    workers = [subprocess.Popen([str(BIN / "rq"), "worker", "--url", b.url, "rq-cpu", "-q", "-w",
                                 "rq.worker.SimpleWorker"], env=b.env, cwd=b.dir) for _ in range(CORES)]
    time.sleep(3)
    rlog = b.log("rq-cpu")
    t0 = time.time()
    for _ in range(n):
        queue.enqueue("scale_handlers.rq_mark", str(rlog), cpu=cpu)
    rq_last, _ = drain(rlog, n)
    stop_rq_workers(workers)
    return ours, rq_last - t0, spent


def backlog(b: Bench, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        log = b.log("backlog")
        b.publisher.publish(Event("backlog", {"log": str(log), "sleep": 1.5}))
        wait_for(log, starts=1)
        time.sleep(0.2)
        t0 = time.time()
        b.publisher.publish(Event("backlog", {"log": str(log), "sleep": 0}))
        got = wait_for(log, starts=2)
        out.append((sorted(g["start"] for g in got if "start" in g)[1] - t0) * 1000)
        wait_for(log, ends=2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    b = Bench()
    try:
        print(f"lambdalite scale bench: {CORES} cores, load {os.getloadavg()[0]:.2f}, {args.runs} runs where repeated")
        b_off = Bench(LAMBDALITE_PRIVATE_TMP="0")
        try:
            ours, ours_off, theirs = cold_start(b, b_off, args.runs)
        finally:
            b_off.close()
        mo, mt = statistics.median(ours), statistics.median(theirs)
        print(f"cold start, no worker -> handler running: {mo:7.1f} ms median | new `rq worker` process -> "
              f"queued job running: {mt:7.1f} ms median | ratio {mo / mt:.3f} (goal <= 0.15)")
        print(f"  the same with the private /tmp off (a TMPDIR per invocation): {statistics.median(ours_off):7.1f} ms "
              f"median; with it on (above) {mo - statistics.median(ours_off):+.1f} ms")
        took, most, rq_took = burst(b)
        print(f"burst, 30 x 1 s, max_concurrency 10, from zero: drained in {took:.2f} s = {took / 3:.2f} x ideal "
              f"(goal <= 1.15), at most {most} at once | 10 warm plain RQ workers: {rq_took:.2f} s = "
              f"{rq_took / 3:.2f} x")
        took, rq_took, spent = cpu_bound(b)
        ideal = 200 * 0.05 / CORES
        print(f"CPU-bound, 200 x 50 ms, max_concurrency {CORES}: drained in {took:.2f} s = {took / ideal:.3f} x "
              f"(CPU time / cores) (goal <= 1.10) | {CORES} warm plain RQ workers: {rq_took:.2f} s = "
              f"{rq_took / ideal:.3f} x")
        print("  CPU during that drain (s, handlers' spins 10.0 of it): "
              + ", ".join(f"{kind} {seconds:.2f}" for kind, seconds in sorted(spent.items())))
        lat = backlog(b, args.runs)
        print(f"backlog -> new worker running: {statistics.median(lat):.1f} ms median, {max(lat):.1f} ms max "
              f"(goal <= 100 ms)")
    finally:
        b.close()


if __name__ == "__main__":
    main()
