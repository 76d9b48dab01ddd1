"""The web console's cost, measured on the real stack: ``python bench/console.py [--screenshots]``.

1. the overview (``GET /console/``) with 200 functions while the stack drains no-op events at full
   speed: p50 and p99 over sequential requests (goal: p50 < 50 ms), beside ``GET /healthz`` of the
   same server in the same moments;
2. no-op throughput (events published in one go, drained by the real scaler's workers) with the
   console closed and open (an SSE client subscribed to the overview and one to the busy
   function's page, as open pages are), in alternating rounds (goal: open within 3 % of closed);

and writes both into docs/console.md. ``--screenshots`` instead runs a little mixed traffic for a
few minutes and has Debian's Chromium (Playwright) take docs/console-overview.png and
docs/console-function.png.
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

# This folder holds http.py (bench/http.py), which would shadow the standard library's http package.
_sys.path[:] = [p for p in _sys.path if _Path(p or ".").resolve() != _Path(__file__).resolve().parent]

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import psutil  # noqa: E402
import redis  # noqa: E402

from broker.envelope import Event  # noqa: E402
from broker.queues import Publisher  # noqa: E402
from broker.redis_server.embedded import RedisServer  # noqa: E402
from broker.registry import load_registry  # noqa: E402

HANDLERS = '''
import random
import time


def noop(event, context):
    return None


def work(event, context):
    time.sleep(random.uniform(0.005, 0.12))
    print("working on", event.get("n"))
    if random.random() < 0.08:
        raise ValueError("a bad order")
    return {"ok": True}
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Stack:
    """Redis, the scaler and the HTTP source (the console's server) in a temporary folder."""

    def __init__(self, toml: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="ll-console-"))
        self.dir.chmod(0o755)
        (self.dir / "lambdalite.toml").write_text(toml)
        (self.dir / "console_handlers.py").write_text(HANDLERS)
        self.redis = RedisServer(self.dir).start()
        self.client = redis.Redis.from_url(self.redis.url)
        self.registry = load_registry(self.dir / "lambdalite.toml")
        self.publisher = Publisher(self.client, self.registry)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("LAMBDALITE_")},
               "LAMBDALITE_REDIS_URL": self.redis.url, "LAMBDALITE_LOG_LEVEL": "WARNING",
               "LAMBDALITE_HTTP_PORT": str(self.port), "LAMBDALITE_SANDBOX_USER": "root",
               "PYTHONPATH": os.pathsep.join([str(ROOT), str(self.dir)])}
        self.procs = [subprocess.Popen([sys.executable, "-m", module], cwd=self.dir, env=env,
                                       stdout=subprocess.DEVNULL, stderr=(self.dir / f"{module}.log").open("w"))
                      for module in ("sources.http", "workers.scaler")]
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{self.url}/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the HTTP source did not start")
            time.sleep(0.1)

    def succeeded(self, function: str) -> int:
        return int(self.client.hget(f"lambdalite:stats:{function}", "succeeded") or 0)

    def close(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.redis.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def bench_toml(functions: int) -> str:
    out = ['[functions.noop]\nhandler = "console_handlers.noop"\nmax_concurrency = 2\n']
    out += [f'[functions.f{i:03d}]\nhandler = "console_handlers.noop"\n' for i in range(functions - 1)]
    return "\n".join(out)


def drain(stack: Stack, n: int) -> float:
    """Seconds to run ``n`` no-op events published in one go."""
    start_count = stack.succeeded("noop")
    events = [Event("noop", {}) for _ in range(n)]
    t0 = time.monotonic()
    stack.publisher.publish_many(events)
    while stack.succeeded("noop") < start_count + n:
        time.sleep(0.01)
    return time.monotonic() - t0


class Listener:
    """An open console page as the server sees it: an SSE subscription, read as it comes."""

    def __init__(self, url: str, function: str | None = None) -> None:
        self.url = f"{url}/console/events" + (f"?function={function}" if function else "")
        self.messages = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        with httpx.stream("GET", self.url, timeout=None) as response:
            for line in response.iter_lines():
                if line.startswith("data: "):
                    self.messages += 1
                if self.stop.is_set():
                    return

    def close(self) -> None:
        self.stop.set()


def latencies(url: str, n: int) -> list[float]:
    out = []
    with httpx.Client() as client:
        for _ in range(n):
            t0 = time.perf_counter()
            response = client.get(url)
            out.append((time.perf_counter() - t0) * 1000)
            if response.status_code != 200:
                raise RuntimeError(f"{url}: {response.status_code}")
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def overview_under_load(stack: Stack, requests: int) -> tuple[list[float], list[float], int]:
    """The overview's and /healthz's latencies, interleaved in rounds, while events keep coming."""
    busy = threading.Event()
    ran = [0]

    def feed() -> None:
        while not busy.is_set():
            before = stack.succeeded("noop")
            drain(stack, 200)
            ran[0] += stack.succeeded("noop") - before

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    time.sleep(2)
    page, health = [], []
    for _ in range(requests // 10):
        page += latencies(f"{stack.url}/console/", 10)
        health += latencies(f"{stack.url}/healthz", 10)
    busy.set()
    feeder.join(60)
    return page, health, ran[0]


def cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def timed_drain(stack: Stack, n: int, cpu: dict[str, list[float]]) -> float:
    """Events per second; the HTTP source's and Redis's CPU per 1,000 events go into ``cpu``."""
    pids = {"webhook": stack.procs[0].pid, "redis": stack.redis.proc.pid}  # type: ignore[union-attr]
    before = {k: cpu_seconds(p) for k, p in pids.items()}
    rate = n / drain(stack, n)
    for k, p in pids.items():
        cpu.setdefault(k, []).append((cpu_seconds(p) - before[k]) / n * 1_000_000)  # ms per 1,000
    return rate


def throughput(stack: Stack, rounds: int, n: int, cpu_closed: dict[str, list[float]],
               cpu_open: dict[str, list[float]]) -> tuple[list[float], list[float]]:
    closed, opened = [], []
    drain(stack, 200)  # warm workers
    for _ in range(rounds):
        closed.append(timed_drain(stack, n, cpu_closed))
        listeners = [Listener(stack.url), Listener(stack.url, "noop")]
        time.sleep(1.5)
        opened.append(timed_drain(stack, n, cpu_open))
        for listener in listeners:
            listener.close()
        if not all(listener.messages for listener in listeners):
            raise RuntimeError("an SSE listener got no figures: the console was not really open")
        time.sleep(1.5)
    return closed, opened


def write_cost(client: redis.Redis, n: int = 5000) -> dict[str, float]:
    """Redis's own time (INFO commandstats) per call of the worker's history write, beside the cost
    counters' write and a counter's increment queued in the same transaction."""
    from broker import cost, history, stats

    now = time.time()
    calls = {
        "history.record (the console's history)": lambda p, i: history.record(
            p, "bench-history", now + i * 0.01, 12.5, i % 10 == 0, False, 3.0),
        "cost.record (reference)": lambda p, i: cost.record(p, "bench-history", 128, 13, None),
        "stats.count (reference)": lambda p, i: stats.count(p, "bench-history", "succeeded"),
    }
    out = {}
    for label, call in calls.items():
        client.config_resetstat()
        for i in range(0, n, 100):
            with client.pipeline(transaction=False) as pipe:
                for j in range(100):
                    call(pipe, i + j)
                pipe.execute()
        info = client.info("commandstats")
        out[label] = sum(v["usec"] for k, v in info.items() if k in ("cmdstat_eval", "cmdstat_evalsha")) / n
        print(f"redis time per call, {label}: {out[label]:.1f} us")
    return out


def measure(args: argparse.Namespace) -> None:
    stack = Stack(bench_toml(args.functions))
    try:
        load = os.getloadavg()[0]
        print(f"lambdalite console bench: {os.cpu_count()} cores, load {load:.2f}, "
              f"{args.functions} functions")
        page, health, ran = overview_under_load(stack, args.requests)
        size = len(httpx.get(f"{stack.url}/console/").content)
        print(f"overview GET /console/ ({size:,} bytes): p50 {pct(page, 0.5):.1f} ms, p99 {pct(page, 0.99):.1f} ms "
              f"(goal p50 < 50 ms); GET /healthz: p50 {pct(health, 0.5):.1f} ms, p99 {pct(health, 0.99):.1f} ms; "
              f"{ran:,} no-op invocations ran meanwhile")
        cpu_closed: dict[str, list[float]] = {}
        cpu_open: dict[str, list[float]] = {}
        closed, opened = throughput(stack, args.rounds, args.events, cpu_closed, cpu_open)
        ratio = statistics.median(opened) / statistics.median(closed)
        print(f"no-op throughput, console closed: {', '.join(f'{x:.0f}' for x in closed)} /s; "
              f"open: {', '.join(f'{x:.0f}' for x in opened)} /s; median open / closed {ratio:.3f} "
              f"(goal >= 0.97)")
        for k in ("webhook", "redis"):
            print(f"CPU ms per 1,000 events, {k}: closed {statistics.median(cpu_closed[k]):.0f}, "
                  f"open {statistics.median(cpu_open[k]):.0f}")
        writes = write_cost(stack.client)
    finally:
        stack.close()
    if args.no_write:
        return
    from bench.report import table, write_section

    rows = [
        [f"`GET /console/` with {args.functions} functions, the stack draining no-op events",
         f"{pct(page, 0.5):.1f} ms", f"{pct(page, 0.99):.1f} ms", "p50 < 50 ms"],
        ["`GET /healthz` of the same server, same moments (reference)", f"{pct(health, 0.5):.1f} ms",
         f"{pct(health, 0.99):.1f} ms", "-"],
    ]
    speed = [
        ["console closed", ", ".join(f"{x:.0f}" for x in closed), f"{statistics.median(closed):.0f}"],
        ["console open (SSE: overview and the function's page)", ", ".join(f"{x:.0f}" for x in opened),
         f"{statistics.median(opened):.0f}"],
        ["open / closed", "", f"{ratio:.3f} (goal >= 0.97)"],
    ]
    cpu_rows = [[k, f"{statistics.median(cpu_closed[k]):.0f} ms", f"{statistics.median(cpu_open[k]):.0f} ms"]
                for k in ("webhook", "redis")]
    markdown = (table(["request", "p50", "p99", "goal"], rows)
                + f"\n\n{len(page)} requests of each, alternating in tens; {ran:,} no-op invocations ran "
                f"meanwhile.\n\nNo-op invocations per second, {args.events:,} events published at once "
                f"(max_concurrency 2), rounds alternating:\n\n"
                + table(["", "rounds", "median"], speed)
                + "\n\nCPU time per 1,000 of those events (median of the rounds), of the process serving the "
                "console and of Redis:\n\n"
                + table(["process", "console closed", "console open"], cpu_rows)
                + "\n\nThe worker's history write, in the transaction of each outcome: Redis's own time a "
                "call (INFO commandstats, 5,000 calls each), beside two writes of the same transaction:\n\n"
                + table(["write", "Redis time a call"], [[k, f"{v:.1f} µs"] for k, v in writes.items()])
                + f"\n\nMachine: {os.cpu_count()} cores shared with other work (load average "
                f"{load:.1f} at the start), so rounds vary; the CPU figures are steadier than the rates.")
    command = (f"python bench/console.py --functions {args.functions} --requests {args.requests} "
               f"--rounds {args.rounds} --events {args.events}")
    path = write_section("console.md", "console", markdown, command)
    print(f"written to {path.relative_to(ROOT)}")


SHOTS_TOML = """
[functions.thumbnail]
handler = "console_handlers.work"
max_concurrency = 4
retries = 0
[functions.payments]
handler = "console_handlers.work"
max_concurrency = 2
memory = 256
retries = 0
[functions.nightly-report]
handler = "console_handlers.noop"
[[functions.nightly-report.triggers]]
source = "schedule"
expression = "cron(0 2 * * ? *)"
[functions.noop]
handler = "console_handlers.noop"
"""


def screenshots(args: argparse.Namespace) -> None:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("screenshots need Chromium: apt-get install -y chromium")
    stack = Stack(SHOTS_TOML)
    try:
        end = time.monotonic() + args.traffic
        n = 0
        print(f"running mixed traffic for {args.traffic:g} s")
        while time.monotonic() < end:
            batch = [Event("thumbnail", {"n": n + i}) for i in range(6)] + [Event("payments", {"n": n})]
            batch += [Event("noop", {}) for _ in range(20)]
            stack.publisher.publish_many(batch)
            n += 6
            time.sleep(0.5)
        time.sleep(3)
        docs = ROOT / "docs"
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"] if os.geteuid() == 0 else [])
            page = browser.new_page(viewport={"width": 1360, "height": 520})
            page.goto(f"{stack.url}/console/")
            page.wait_for_selector("#live.on")
            page.screenshot(path=str(docs / "console-overview.png"), full_page=True)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"{stack.url}/console/functions/thumbnail")
            page.wait_for_selector('#charts[data-drawn="8"]')
            page.wait_for_selector("#live.on")
            page.screenshot(path=str(docs / "console-function.png"), full_page=True)
            phone = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=1)
            phone.goto(f"{stack.url}/console/functions/payments")
            phone.wait_for_selector('#charts[data-drawn="8"]')
            phone.screenshot(path=str(docs / "console-phone.png"))
            browser.close()
        print("written docs/console-overview.png, docs/console-function.png, docs/console-phone.png")
    finally:
        stack.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--functions", type=int, default=200)
    parser.add_argument("--requests", type=int, default=200, help="overview requests (and as many /healthz)")
    parser.add_argument("--rounds", type=int, default=5, help="closed / open pairs")
    parser.add_argument("--events", type=int, default=2000, help="no-op events a round")
    parser.add_argument("--no-write", action="store_true", help="do not write docs/console.md")
    parser.add_argument("--screenshots", action="store_true", help="take the docs' screenshots instead")
    parser.add_argument("--traffic", type=float, default=180, help="seconds of traffic before the screenshots")
    args = parser.parse_args()
    if args.screenshots:
        screenshots(args)
    else:
        measure(args)


if __name__ == "__main__":
    main()
