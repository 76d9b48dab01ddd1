"""lambdalite beside the task queues people know: ``python bench/peers.py [--quick] [--rounds N] [--write]``.

The same three workloads through lambdalite, RQ, Celery (prefork pool, Redis broker) and Dramatiq
(Redis broker), on one redis-server, each with the same number of processes running the work (one
per core) already started and warmed up: start-up is not counted. Every task is the same Python
function (``bench/scale_handlers.py``), which notes its start and end in a file; figures come from
those notes:

1. no-op throughput: 2,000 no-ops queued at once, from the first enqueue to the last end;
2. enqueue -> start with an idle worker: 200 one at a time, p50 and p99;
3. 200 x 50 ms of CPU queued at once: drain time / (CPU time / processes).

The systems take turns within each round (``--rounds``, 3 by default), so a neighbour's burst on a
shared machine falls on one system's turn rather than on one system; the tables give medians over
the rounds. ``--write`` puts the table into docs/performance.md. Needs the ``bench`` extra
(``pip install -e '.[bench]'``, which ``make bench`` does).
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

_sys.path[:] = [p for p in _sys.path if _Path(p or ".").resolve() != _Path(__file__).resolve().parent]

import argparse
import http.client  # noqa: F401  (before bench/ goes on the path below: its http.py would shadow the package)
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
CORES = os.cpu_count() or 1
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from report import table, write_section  # noqa: E402

from broker.redis_server.embedded import RedisServer  # noqa: E402

MODELS = {
    "lambdalite": "the scaler forks {p} workers (min_workers {p}), each with its sandbox: one invocation at a "
                  "time per worker, in its own process with its limits (time, memory, disk) enforced from outside",
    "RQ": "{p} `rq worker` processes (the default Worker): each job runs in a fresh fork of its worker; a timeout "
          "by an alarm in that fork, no memory or disk limit",
    "Celery": "`celery worker --pool prefork --concurrency {p}`: a parent hands tasks to {p} pool processes, which "
              "run task after task in one interpreter; time limits by signals, no memory or disk limit "
              "(prefetch 4 per process, its default)",
    "Dramatiq": "`dramatiq --processes {p} --threads 1`: {p} worker processes under a parent, tasks after one "
                "another on one thread each in one interpreter; a time limit by an exception raised in the thread "
                "(C code is not stopped), no memory or disk limit",
}


def marks(path: Path) -> list[dict[str, float]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def wait_marks(path: Path, starts: int = 0, ends: int = 0, timeout: float = 300) -> list[dict[str, float]]:
    deadline = time.monotonic() + timeout
    while True:
        text = path.read_text() if path.exists() else ""
        if text.count('"start":') >= starts and text.count('"end":') >= ends:
            return marks(path)
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {starts} starts and {ends} ends in {path.name}")
        time.sleep(0.002 if starts == 1 else 0.02)


class System:
    """One task queue: start its processes, queue work, stop."""

    name = ""

    def __init__(self, folder: Path, url: str, processes: int) -> None:
        self.folder, self.url, self.processes = folder, url, processes
        self.procs: list[subprocess.Popen[bytes]] = []
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("LAMBDALITE_")}
        self.env.update(PYTHONPATH=f"{ROOT}:{folder}", PATH=f"{BIN}:{self.env['PATH']}", LAMBDALITE_REDIS_URL=url,
                        LAMBDALITE_SANDBOX_USER="root", PEERS_REDIS=url,
                        PEERS_CELERY_BROKER="redis+socket://" + url.removeprefix("unix://"))

    def spawn(self, cmd: list[str], **extra: str) -> None:
        log = (self.folder / f"{self.name}.log").open("ab")
        self.procs.append(subprocess.Popen(cmd, cwd=self.folder, env={**self.env, **extra}, stdout=log,
                                           stderr=subprocess.STDOUT))
        log.close()

    def start(self) -> None:
        raise NotImplementedError

    def send(self, log: Path, n: int, cpu: float = 0.0) -> None:
        """Queue ``n`` tasks at once, by the system's quickest way of queueing many."""
        raise NotImplementedError

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs.clear()


class Lambdalite(System):
    name = "lambdalite"

    def start(self) -> None:
        from broker.envelope import Event
        from broker.queues import Publisher
        from broker.registry import load_registry

        config = self.folder / "lambdalite.toml"
        config.write_text(f'[functions.work]\nhandler = "scale_handlers.mark"\nmax_concurrency = {self.processes}\n'
                          f'min_workers = {self.processes}\nidle_timeout = 600\n')
        self.event = Event
        self.publisher = Publisher(redis.Redis.from_url(self.url), load_registry(config))
        self.spawn([sys.executable, "-m", "workers.scaler"], LAMBDALITE_MAX_WORKERS=str(self.processes))

    def send(self, log: Path, n: int, cpu: float = 0.0) -> None:
        self.publisher.publish_many([self.event("work", {"log": str(log), "cpu": cpu}) for _ in range(n)])


class RQ(System):
    name = "RQ"

    def start(self) -> None:
        from rq import Queue

        self.queue = Queue("peers", connection=redis.Redis.from_url(self.url))
        for _ in range(self.processes):
            self.spawn([str(BIN / "rq"), "worker", "--url", self.url, "peers", "-q"])

    def send(self, log: Path, n: int, cpu: float = 0.0) -> None:
        from rq import Queue

        if n == 1:
            self.queue.enqueue("scale_handlers.rq_mark", str(log), cpu=cpu)
            return
        self.queue.enqueue_many([Queue.prepare_data("scale_handlers.rq_mark", (str(log),), {"cpu": cpu})
                                 for _ in range(n)])


class Celery(System):
    name = "Celery"

    def start(self) -> None:
        os.environ["PEERS_CELERY_BROKER"] = self.env["PEERS_CELERY_BROKER"]
        import peers_celery

        self.task = peers_celery.work
        self.spawn([str(BIN / "celery"), "-A", "peers_celery", "worker", "--pool", "prefork", "--concurrency",
                    str(self.processes), "--loglevel", "WARNING", "--without-gossip", "--without-mingle",
                    "--without-heartbeat"])

    def send(self, log: Path, n: int, cpu: float = 0.0) -> None:
        for _ in range(n):
            self.task.apply_async((str(log),), {"cpu": cpu})


class Dramatiq(System):
    name = "Dramatiq"

    def start(self) -> None:
        os.environ["PEERS_REDIS"] = self.url
        import peers_dramatiq

        self.actor = peers_dramatiq.work
        self.spawn([str(BIN / "dramatiq"), "peers_dramatiq", "--processes", str(self.processes), "--threads", "1"])

    def send(self, log: Path, n: int, cpu: float = 0.0) -> None:
        for _ in range(n):
            self.actor.send(str(log), cpu=cpu)


def run_one(system: System, folder: Path, sizes: dict[str, int]) -> dict[str, float]:
    """The three workloads on a started system; figures by name."""
    tag = f"{system.name}-{time.monotonic_ns()}"
    warm = folder / f"{tag}-warm.log"
    system.send(warm, 2 * system.processes)
    wait_marks(warm, ends=2 * system.processes, timeout=120)
    time.sleep(1.0)
    out: dict[str, float] = {}

    log = folder / f"{tag}-noop.log"
    t0 = time.time()
    system.send(log, sizes["noop"])
    got = wait_marks(log, ends=sizes["noop"], timeout=600)
    out["noop_rate"] = sizes["noop"] / (max(m["end"] for m in got if "end" in m) - t0)
    time.sleep(1.0)

    log = folder / f"{tag}-latency.log"
    lat = []
    for i in range(sizes["latency"]):
        t0 = time.time()
        system.send(log, 1)
        got = wait_marks(log, starts=i + 1, ends=i, timeout=60)
        lat.append((max(m["start"] for m in got if "start" in m) - t0) * 1000)
        wait_marks(log, ends=i + 1, timeout=60)
        time.sleep(0.01)
    lat.sort()
    out["p50"] = statistics.median(lat)
    out["p99"] = lat[min(len(lat) - 1, round(0.99 * (len(lat) - 1)))]
    time.sleep(1.0)

    log = folder / f"{tag}-cpu.log"
    t0 = time.time()
    system.send(log, sizes["cpu"], cpu=0.05)
    got = wait_marks(log, ends=sizes["cpu"], timeout=600)
    out["cpu_ratio"] = (max(m["end"] for m in got if "end" in m) - t0) / (sizes["cpu"] * 0.05 / system.processes)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one round: a smoke test of the bench")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--processes", type=int, default=CORES)
    parser.add_argument("--write", action="store_true", help="write the table into docs/performance.md")
    args = parser.parse_args()
    sizes = {"noop": 100, "latency": 20, "cpu": 20} if args.quick else {"noop": 2000, "latency": 200, "cpu": 200}
    rounds = args.rounds or (1 if args.quick else 3)
    p = args.processes
    folder = Path(tempfile.mkdtemp(prefix="ll-peers-"))
    folder.chmod(0o755)
    for name in ("scale_handlers.py", "peers_celery.py", "peers_dramatiq.py"):
        shutil.copy(ROOT / "bench" / name, folder / name)
    sys.path.insert(0, str(folder))
    server = RedisServer(folder / "redis").start()
    client = redis.Redis.from_url(server.url)
    kinds: list[type[System]] = [Lambdalite, RQ, Celery, Dramatiq]
    results: dict[str, list[dict[str, float]]] = {k.name: [] for k in kinds}
    print(f"peers: {CORES} cores, {p} processes each, load {os.getloadavg()[0]:.2f}, {rounds} round(s), sizes {sizes}",
          flush=True)
    try:
        for r in range(rounds):
            for kind in kinds:
                client.flushall()
                system = kind(folder, server.url, p)
                try:
                    system.start()
                    got = run_one(system, folder, sizes)
                finally:
                    system.stop()
                results[system.name].append(got)
                print(f"round {r + 1}: {system.name:<10} no-op {got['noop_rate']:8,.0f}/s   enqueue->start p50 "
                      f"{got['p50']:6.2f} ms p99 {got['p99']:6.2f} ms   200 x 50 ms CPU {got['cpu_ratio']:.3f} x",
                      flush=True)
    finally:
        client.close()
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)
    text = render(results, p, sizes, rounds) + f" The machine's load average at the end: {os.getloadavg()[0]:.1f}."
    print("\n" + text)
    if args.write:
        write_section("performance.md", "peers", text, "nice -n 10 python bench/peers.py " + " ".join(sys.argv[1:]))


def render(results: dict[str, list[dict[str, float]]], p: int, sizes: dict[str, int], rounds: int) -> str:
    med = {name: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for name, runs in results.items()}
    ours = med["lambdalite"]
    rows = []
    for name, m in med.items():
        rows.append([name, f"{m['noop_rate']:,.0f}/s ({m['noop_rate'] / ours['noop_rate']:.2f} x)",
                     f"{m['p50']:.2f} ms ({m['p50'] / ours['p50']:.2f} x)", f"{m['p99']:.2f} ms",
                     f"{m['cpu_ratio']:.3f} x", MODELS[name].format(p=p)])
    text = table([f"{p} processes each, warm (start-up not counted)", f"no-op throughput ({sizes['noop']:,} queued "
                  "at once; x lambdalite's)", f"enqueue -> start p50, idle ({sizes['latency']} one at a time; "
                  "x lambdalite's)", "p99", f"{sizes['cpu']} x 50 ms CPU: drain / (CPU time / processes)",
                  "concurrency model and isolation"], rows)
    peers = [n for n in med if n != "lambdalite"]
    latency_met = all(ours["p50"] < med[n]["p50"] for n in peers)
    rate_met = ours["noop_rate"] >= med["Celery"]["noop_rate"]
    text += (f"\n\nMedians of {rounds} round(s), the systems taking turns in each. Goals: lambdalite's enqueue -> "
             f"start p50 below every peer's: {'met' if latency_met else '**not met**'}; its no-op throughput at or "
             f"above Celery prefork's with the same number of processes: {'met' if rate_met else '**not met**'} "
             f"({ours['noop_rate'] / med['Celery']['noop_rate']:.2f} x).")
    return text


if __name__ == "__main__":
    main()
