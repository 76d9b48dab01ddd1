"""Cost as the work grows: ``python bench/curves.py [--quick] [--axes A,B] [--write] [--plots DIR]``.

Four axes, each measured at three sizes or more in one run, with the exponent of each curve (the
slope of log cost against log size: 1 is linear, 0 flat) and the cost per unit of work printed:

* functions (10, 100, 1,000 in lambdalite.toml; ``honcho start`` of the whole stack): start-up time
  (launch until the scaler's first view of every function is in Redis and the HTTP port answers),
  the scaler's CPU idle and while every function has work, ``lambdalite status --json`` latency,
  each process's PSS;
* objects (1,000, 10,000, 100,000 already in a bucket and in the manifest, as a restart finds them):
  the files source launched until a file written while it was down is queued, the manifest's Redis
  memory, the files process's RSS once its scan is done;
* backlog (10,000, 100,000, 1,000,000 small queued events): Redis bytes per queued event and the
  drain rate (no-op handler, ``max_concurrency`` = cores) while that backlog is there;
* concurrency (16, 64, 256 invocations at once, each sleeping 3 s): time from queued to running,
  cold and warm, PSS of the warm workers (each with its sandbox) in total and beyond the first,
  the scaler's CPU per step.

References measured in the same run: the smallest size of each axis, ``python -c 'import
broker.cli.cli'`` beside the status latency, an empty bucket beside the object counts. ``--quick`` runs
small sizes (a smoke test); ``--write`` puts the tables into docs/performance.md and the plots in docs/.
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

_sys.path[:] = [p for p in _sys.path if _Path(p or ".").resolve() != _Path(__file__).resolve().parent]

import argparse
import contextlib
import functools
import json
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import redis

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
CORES = os.cpu_count() or 1
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from curves_figures import Axis, plot, render  # noqa: E402
from report import write_section  # noqa: E402
from soak import sample_processes  # noqa: E402

from broker.envelope import Event  # noqa: E402
from broker.queues import Publisher, function_queue  # noqa: E402
from broker.redis_server.embedded import RedisServer  # noqa: E402
from broker.registry import load_registry  # noqa: E402
from broker.stats import scaler_key  # noqa: E402

FULL = {"functions": [10, 100, 1000], "objects": [1000, 10_000, 100_000], "backlog": [10_000, 100_000, 1_000_000],
        "concurrency": [16, 64, 256]}
QUICK = {"functions": [2, 4, 8], "objects": [100, 300, 1000], "backlog": [1000, 3000, 10000], "concurrency": [2, 4, 8]}
# -- processes and stacks ----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(folder: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMBDALITE_")}
    env.update(PATH=f"{BIN}:{env['PATH']}", PYTHONPATH=f"{ROOT}:{folder}", LAMBDALITE_SANDBOX_USER="root", **extra)
    return env


def _scratch(prefix: str) -> Path:
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    folder.chmod(0o755)
    shutil.copy(ROOT / "bench" / "scale_handlers.py", folder / "scale_handlers.py")
    return folder


def cpu_seconds(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def cpu_share(pid: int, seconds: float) -> float:
    """Percent of one core that ``pid`` used over the next ``seconds``."""
    before, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return 100 * (cpu_seconds(pid) - before) / (time.monotonic() - t0)


def tree_pss(pid: int) -> int:
    """PSS in bytes of ``pid`` and its descendants."""
    total = 0
    root = psutil.Process(pid)
    for p in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += p.memory_full_info().pss
    return total


def wait_until(what: str, check: Callable[[], bool], timeout: float, every: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(every)


def _stop(proc: subprocess.Popen[bytes], group: bool = False) -> None:
    if proc.poll() is None:
        if group:
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        if group:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
        proc.wait()


@contextlib.contextmanager
def scaler(folder: Path, url: str, **extra: str) -> Iterator[subprocess.Popen[bytes]]:
    log = (folder / "scaler.log").open("ab")
    proc = subprocess.Popen([sys.executable, "-m", "workers.scaler"], cwd=folder, stdout=log,
                            stderr=subprocess.STDOUT, env=_env(folder, LAMBDALITE_REDIS_URL=url, **extra))
    try:
        yield proc
    finally:
        _stop(proc)
        log.close()


def marks(path: Path) -> list[dict[str, float]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def wait_marks(path: Path, starts: int = 0, ends: int = 0, timeout: float = 300) -> list[dict[str, float]]:
    def enough() -> bool:
        text = path.read_text() if path.exists() else ""
        return text.count('"start":') >= starts and text.count('"end":') >= ends

    wait_until(f"{starts} starts and {ends} ends in {path.name}", enough, timeout, every=0.05)
    return marks(path)


# -- functions --------------------------------------------------------------------------------------


def functions_axis(sizes: list[int], window: float, workers: int) -> Axis:
    axis = Axis("functions")
    for n in sizes:
        folder = _scratch("ll-curves-fn-")
        shutil.copy(ROOT / "Procfile", folder / "Procfile")
        (folder / "buckets").mkdir()
        names = [f"f{i:04d}" for i in range(n)]
        (folder / "lambdalite.toml").write_text("".join(
            f'[functions.{name}]\nhandler = "scale_handlers.mark"\ntimeout = 30\nmemory = 64\nidle_timeout = 5\n\n'
            for name in names))
        port = _free_port()
        env = _env(folder, LAMBDALITE_HTTP_PORT=str(port), LAMBDALITE_MAX_WORKERS=str(workers))
        out = (folder / "honcho.log").open("wb")
        t0 = time.monotonic()
        honcho = subprocess.Popen([str(BIN / "honcho"), "start"], cwd=folder, env=env, stdout=out,
                                  stderr=subprocess.STDOUT, start_new_session=True)
        client = redis.Redis(unix_socket_path=str(folder / "var" / "redis.sock"), socket_timeout=30)
        try:
            wait_until("the stack", functools.partial(_stack_up, honcho, folder, client, names[-1], port), 300,
                       every=0.02)
            axis.put(n, "start-up: launch -> scaler's first step and HTTP up", time.monotonic() - t0, "s", per=True)
            time.sleep(3)
            procs = sample_processes(psutil.Process(honcho.pid))
            scaler_pid = next(pid for pid, p in procs.items() if p["kind"] == "scaler")
            axis.put(n, "scaler CPU, idle", cpu_share(scaler_pid, window), "% of a core",
                     "< 5 % with 1,000 functions", per=True)
            runs = [_timed([str(BIN / "lambdalite"), "status", "--json"], folder, env) for _ in range(5)]
            axis.put(n, "`lambdalite status --json`", statistics.median(runs) * 1000, "ms", per=True)
            floor = [_timed([sys.executable, "-c", "import broker.cli.cli"], folder, env) for _ in range(3)]
            axis.put(n, "reference: `python -c 'import broker.cli.cli'`", statistics.median(floor) * 1000, "ms")
            for kind in ("scaler", "files", "webhook", "sqlite", "redis-server"):
                pss = sum(p["pss"] for p in procs.values() if p["kind"] == kind)
                axis.put(n, f"PSS of {kind}", pss / 2**20, "MB", per=True)
            # Work everywhere: every function keeps a backlog of 1 s sleeps through the whole window.
            per_fn = max(2, math.ceil(2 * window * workers / n))
            publisher = Publisher(client, load_registry(folder / "lambdalite.toml"))
            log = folder / "work.log"
            for name in names:
                publisher.publish_many([Event(name, {"log": str(log), "sleep": 1}) for _ in range(per_fn)])
            time.sleep(1)
            axis.put(n, "scaler CPU, every function with work", cpu_share(scaler_pid, window), "% of a core",
                     per=True)
            left = sum(1 for name in names if function_queue(client, name).count)
            if left < n:
                axis.notes.append(f"{n} functions: {n - left} had drained their backlog by the window's end")
        finally:
            client.close()
            _stop(honcho, group=True)
            out.close()
            shutil.rmtree(folder, ignore_errors=True)
    return axis


def _stack_up(honcho: subprocess.Popen[bytes], folder: Path, client: redis.Redis, last: str, port: int) -> bool:
    """Whether the scaler has stepped (its view of the last function is in Redis) and HTTP answers."""
    if honcho.poll() is not None:
        raise RuntimeError("the stack stopped:\n" + (folder / "honcho.log").read_text()[-3000:])
    try:
        if not client.exists(scaler_key(last)):
            return False
    except redis.RedisError:
        return False
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    t0 = time.monotonic()
    subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True)
    return time.monotonic() - t0


# -- objects ------------------------------------------------------------------------------------------


def objects_axis(sizes: list[int]) -> Axis:
    from sources.files.buckets import BucketRoot, read_object
    from sources.files.manifest import Entry, Manifest

    axis = Axis("objects")
    for n in [0, *sizes]:
        folder = _scratch("ll-curves-obj-")
        server = RedisServer(folder / "redis").start()
        client = redis.Redis.from_url(server.url)
        files: subprocess.Popen[bytes] | None = None
        try:
            (folder / "lambdalite.toml").write_text(
                '[functions.seen]\nhandler = "scale_handlers.mark"\n\n[[functions.seen.triggers]]\n'
                'source = "files"\nbucket = "b"\nevents = ["s3:ObjectCreated:*"]\n')
            bucket = folder / "buckets" / "b"
            bucket.mkdir(parents=True)
            past = time.time_ns() - 10 * 10**9
            for i in range(n):
                sub = bucket / f"d{i // 1000:03d}"
                if i % 1000 == 0:
                    sub.mkdir()
                path = sub / f"o{i:06d}.txt"
                path.write_bytes(b"%d\n" % i)
                os.utime(path, ns=(past, past))
            root = BucketRoot(folder / "buckets")
            with client.pipeline(transaction=False) as pipe:  # what an earlier run published
                for count, ref in enumerate(root.walk(root.folder("b")), 1):
                    info = read_object(root, ref)
                    Manifest.put(pipe, "b", ref.key, Entry(info.size, info.mtime_ns, info.etag))
                    if count % 5000 == 0:
                        pipe.execute()
                pipe.execute()
            new = bucket / "new.txt"  # written while the stack was down
            new.write_bytes(b"new\n")
            os.utime(new, ns=(past, past))
            queue = function_queue(client, "seen")
            env = _env(folder, LAMBDALITE_REDIS_URL=server.url)
            t0 = time.monotonic()
            files = subprocess.Popen([sys.executable, "-m", "sources.files"], cwd=folder, env=env,
                                     stdout=(folder / "files.log").open("wb"), stderr=subprocess.STDOUT)
            wait_until("the new file's event", lambda q=queue: q.count >= 1, 300, every=0.01)
            took = time.monotonic() - t0
            time.sleep(1.0)
            if queue.count != 1:
                raise RuntimeError(f"{queue.count} events queued at start, not the one new file")
            rss = psutil.Process(files.pid).memory_info().rss / 2**20
            usage = client.memory_usage(Manifest.hash_key("b"), samples=0) or 0
            if n == 0:
                axis.notes.append(f"reference, an empty bucket: new file queued {took:.2f} s after launch, "
                                  f"files RSS {rss:.1f} MB")
                print(f"  objects reference (empty bucket): {took:.2f} s, RSS {rss:.1f} MB", flush=True)
                continue
            axis.put(n, "launch -> new file queued", took, "s", "< 10 s with 100,000", per=True)
            axis.put(n, "manifest in Redis", usage / 2**20, "MB", per=True)
            axis.put(n, "manifest in Redis per object", usage / n, "B")
            axis.put(n, "files RSS after the scan", rss, "MB", per=True)
        finally:
            if files is not None:
                _stop(files)
            client.close()
            server.stop()
            shutil.rmtree(folder, ignore_errors=True)
    return axis


# -- backlog ------------------------------------------------------------------------------------------


def backlog_axis(sizes: list[int], window: float) -> Axis:
    """A backlog of ``n`` for one function and, beside it, a reference backlog of the same size at every
    ``n`` for another, each function with one worker: the drain rates in the same window, their ratio
    (1 where the backlog's size costs nothing) and the workers' CPU per event."""
    axis = Axis("backlog")
    folder = _scratch("ll-curves-backlog-")
    (folder / "lambdalite.toml").write_text(
        '[functions.drain]\nhandler = "scale_handlers.noop"\nmax_concurrency = 1\nidle_timeout = 60\n\n'
        '[functions.ref]\nhandler = "scale_handlers.noop"\nmax_concurrency = 1\nidle_timeout = 60\n')
    server = RedisServer(folder / "redis").start()
    client = redis.Redis.from_url(server.url)
    publisher = Publisher(client, load_registry(folder / "lambdalite.toml"))
    queue, ref = function_queue(client, "drain"), function_queue(client, "ref")
    reference = max(sizes[0], 2000)

    def fill(function: str, n: int) -> None:
        for start in range(0, n, 1000):
            publisher.publish_many([Event(function, {"n": i}) for i in range(start, min(n, start + 1000))])

    try:
        for n in sizes:
            client.flushall()
            base = int(client.info("memory")["used_memory"])
            t0 = time.monotonic()
            fill("drain", n)
            rate = n / (time.monotonic() - t0)
            used = int(client.info("memory")["used_memory"]) - base
            axis.put(n, "Redis per queued event", used / n, "B", "<= 1 KB")
            axis.put(n, "publish rate (bench, one client, batches of 1,000)", rate, "events/s")
            fill("ref", reference)
            with scaler(folder, server.url) as proc:
                wait_until("both drains to begin", lambda n=n: queue.count < n and ref.count < reference, 120)
                time.sleep(0.5)  # the workers warm
                cpu0 = _children_cpu(proc.pid)
                first, first_ref, t1 = queue.count, ref.count, time.monotonic()
                if not first or not first_ref:
                    raise SystemExit(f"curves: the backlog of {n:,} (or the reference) drained before its window "
                                     "began; use larger sizes")
                last, last_ref, t2 = first, first_ref, t1
                while t2 - t1 < window and last > 0 and last_ref > 0:
                    time.sleep(0.1)
                    last, last_ref, t2 = queue.count, ref.count, time.monotonic()
                cpu = _children_cpu(proc.pid) - cpu0
            drained, drained_ref = first - last, first_ref - last_ref
            axis.put(n, "drain rate, this backlog", drained / (t2 - t1), "events/s")
            axis.put(n, f"drain rate, reference backlog of {reference:,} beside it", drained_ref / (t2 - t1),
                     "events/s")
            axis.put(n, "drain rate, this backlog / reference's", drained / max(1, drained_ref), "x")
            axis.put(n, "worker and sandbox CPU per drained event", 1000 * cpu / max(1, drained + drained_ref), "ms")
    finally:
        client.close()
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)
    return axis


def _children_cpu(pid: int) -> float:
    """CPU seconds so far of ``pid``'s descendants (its workers and their sandboxes), those alive now."""
    total = 0.0
    for p in psutil.Process(pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system
    return total


# -- concurrency --------------------------------------------------------------------------------------


def concurrency_axis(sizes: list[int], sleep: float) -> Axis:
    axis = Axis("concurrency")
    for n in sizes:
        folder = _scratch("ll-curves-conc-")
        (folder / "lambdalite.toml").write_text(
            f'[functions.wait]\nhandler = "scale_handlers.mark"\ntimeout = 60\nmemory = 64\n'
            f'max_concurrency = {n}\nidle_timeout = 300\n')
        server = RedisServer(folder / "redis").start()
        client = redis.Redis.from_url(server.url)
        publisher = Publisher(client, load_registry(folder / "lambdalite.toml"))
        try:
            with scaler(folder, server.url, LAMBDALITE_MAX_WORKERS=str(n)) as proc:
                time.sleep(1.5)
                log = folder / "one.log"
                publisher.publish(Event("wait", {"log": str(log)}))
                wait_marks(log, ends=1)
                time.sleep(1.5)
                first = tree_pss(proc.pid) - psutil.Process(proc.pid).memory_full_info().pss
                for phase in ("cold", "warm"):
                    log = folder / f"{phase}.log"
                    cpu0, t0 = _children_cpu(proc.pid), time.time()
                    publisher.publish_many([Event("wait", {"log": str(log), "sleep": sleep}) for _ in range(n)])
                    got = wait_marks(log, starts=n, timeout=600)
                    lat = sorted((m["start"] - t0) * 1000 for m in got if "start" in m)
                    axis.put(n, f"queued -> running, {phase}, median", statistics.median(lat), "ms")
                    axis.put(n, f"queued -> running, {phase}, last", lat[-1], "ms")
                    if phase == "warm":
                        busy = cpu_share(proc.pid, sleep * 0.6)
                        axis.put(n, "scaler CPU per step, all busy", busy / 100 * 0.1 * 1000, "ms")
                    wait_marks(log, ends=n, timeout=600)
                    if phase == "warm":  # the handlers sleep: this is what lambdalite spends on each
                        axis.put(n, "worker and sandbox CPU per warm invocation",
                                 1000 * (_children_cpu(proc.pid) - cpu0) / n, "ms")
                    time.sleep(1.5)
                idle = cpu_share(proc.pid, 3.0)
                axis.put(n, "scaler CPU per step, all idle", idle / 100 * 0.1 * 1000, "ms")
                total = tree_pss(proc.pid) - psutil.Process(proc.pid).memory_full_info().pss
                axis.put(n, "PSS of the warm workers (with sandboxes)", total / 2**20, "MB", per=True)
                axis.put(n, "PSS per warm idle worker beyond the first", (total - first) / max(1, n - 1) / 2**20,
                         "MB", "<= 10 MB")
                axis.notes.append(f"{n}: one warm worker alone, its sandbox included: {first / 2**20:.1f} MB PSS")
        finally:
            client.close()
            server.stop()
            shutil.rmtree(folder, ignore_errors=True)
    return axis


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test of the bench")
    parser.add_argument("--axes", default="functions,objects,backlog,concurrency")
    parser.add_argument("--write", action="store_true", help="tables into docs/performance.md, plots into docs/")
    parser.add_argument("--plots", type=Path, default=None, help="folder for the PNGs (default: docs/ with --write)")
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    window = 2.0 if args.quick else 10.0
    plots = args.plots or (ROOT / "docs" if args.write else None)
    print(f"curves: {CORES} cores, load {os.getloadavg()[0]:.2f}, {'quick' if args.quick else 'full'} sizes",
          flush=True)
    runners: dict[str, Callable[[], Axis]] = {
        "functions": lambda: functions_axis(sizes["functions"], window, 16),
        "objects": lambda: objects_axis(sizes["objects"]),
        "backlog": lambda: backlog_axis(sizes["backlog"], window),
        "concurrency": lambda: concurrency_axis(sizes["concurrency"], 1.0 if args.quick else 3.0),
    }
    for name in args.axes.split(","):
        if name not in runners:
            raise SystemExit(f"curves: unknown axis {name!r} (one of {', '.join(runners)})")
        load = os.getloadavg()[0]
        axis = runners[name]()
        axis.notes.append(f"the machine's load average: {load:.1f} before this axis, {os.getloadavg()[0]:.1f} after "
                          f"({CORES} cores)")
        text = render(axis, sizes[name])
        print(f"\n## {name}\n\n{text}\n", flush=True)
        if plots is not None:
            plots.mkdir(parents=True, exist_ok=True)
            print("plot:", plot(axis, plots), flush=True)
        if args.write:
            command = "nice -n 10 python bench/curves.py " + " ".join(sys.argv[1:])
            write_section("performance.md", f"curves-{name}", text + f"\n\n![{name}](curves-{name}.png)", command)


if __name__ == "__main__":
    main()
