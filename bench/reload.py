"""What a live reload costs, beside a restart, in one run: ``python bench/reload.py [--runs 5] [--write]``.

A real redis-server and scaler in a scratch folder; the function ``steady`` (a 10 ms handler,
``max_concurrency = 2``) is kept busy by a backlog that never runs dry.

1. save -> first invocation on the new code: ``steady``'s handler file is rewritten; the time until
   an invocation of the new code starts. Reference: the same edit taken by a restart of the scaler
   (stop, start, first invocation of the new code), what an edit cost before live reload.
2. save -> a new function's first invocation: ``lambdalite.toml`` gains a function; its events are
   published as soon as the running revision knows it.
3. what a reload costs the running load: ``steady``'s invocations per second over the
   ``--window`` seconds after a code edit (its workers are replaced) and after an edit of another
   function (they are not), beside the same window just before.

``--write`` puts the table in docs/performance.md.
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
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from broker import revision  # noqa: E402
from broker.envelope import Event  # noqa: E402
from broker.queues import Publisher, function_queue  # noqa: E402
from broker.redis_server.embedded import RedisServer  # noqa: E402
from broker.registry import load_registry  # noqa: E402

sys.path.append(str(ROOT / "bench"))  # after the imports above: bench/http.py must not shadow http
from report import table, write_section  # noqa: E402

HANDLER = '''import json, os, time
CODE = {code!r}
LOG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "runs-" + {name!r} + ".jsonl")


def handler(event, context):
    started = time.time()
    time.sleep(0.01)
    with open(LOG, "a") as f:
        f.write(json.dumps({{"code": CODE, "at": started}}) + "\\n")
'''
BASE = """
[functions.steady]
handler = "steady.handler"
max_concurrency = 2
"""
OTHER = """
[functions.other]
handler = "other.handler"
"""
BACKLOG = 40  # events kept waiting in steady's queue


class Bench:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="ll-reload-"))
        self.redis = RedisServer(self.dir / "redis").start()
        self.url = self.redis.url
        self.client = redis.Redis.from_url(self.url)
        self.write_handler("steady", "v0")
        self.write_handler("other", "o0")
        (self.dir / "lambdalite.toml").write_text(BASE + OTHER)
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith("LAMBDALITE_")},
                    "LAMBDALITE_REDIS_URL": self.url, "PYTHONPATH": str(ROOT), "LAMBDALITE_SANDBOX_USER": "root"}
        self.scaler: subprocess.Popen[bytes] | None = None
        self.start_scaler()
        self.stop = threading.Event()
        self.feeder = threading.Thread(target=self.feed)
        self.feeder.start()

    def write_handler(self, name: str, code: str) -> None:
        (self.dir / f"{name}.py").write_text(HANDLER.format(code=code, name=name) + f"# {code}\n" * len(code))

    def start_scaler(self) -> None:
        self.scaler = subprocess.Popen([sys.executable, "-m", "workers.scaler"], cwd=self.dir, env=self.env,
                                       stdout=(self.dir / "scaler.log").open("a"), stderr=subprocess.STDOUT)

    def stop_scaler(self) -> None:
        if self.scaler is not None:
            self.scaler.terminate()
            self.scaler.wait(30)
            self.scaler = None

    def feed(self) -> None:
        """Keep ``steady``'s queue at BACKLOG events (the registry file's, which has it throughout)."""
        publisher = Publisher(self.client, load_registry(self.dir / "lambdalite.toml"))
        queue = function_queue(self.client, "steady")
        while not self.stop.wait(0.01):
            try:
                missing = BACKLOG - queue.count
                if missing > 0:
                    publisher.publish_many([Event(function="steady", payload={}) for _ in range(missing)])
            except redis.RedisError:
                pass

    def runs(self, name: str) -> list[dict]:
        path = self.dir / f"runs-{name}.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]

    def number(self) -> int:
        found = revision.read(self.client)
        return found[0].number if found is not None else 0

    def close(self) -> None:
        self.stop.set()
        self.feeder.join(10)
        self.stop_scaler()
        self.redis.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def first_run(b: Bench, name: str, code: str, since: float, timeout: float = 60) -> float:
    """Seconds from ``since`` to the start of the first run of ``code``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        starts = [r["at"] for r in b.runs(name) if r["code"] == code]
        if starts:
            return min(starts) - since
        time.sleep(0.005)
    raise SystemExit(f"no run of {name} {code} within {timeout} s")


def wait_revision(b: Bench, number: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while b.number() < number:
        if time.monotonic() > deadline:
            raise SystemExit(f"revision {number} not accepted within {timeout} s")
        time.sleep(0.005)


def rate(b: Bench, start: float, end: float) -> float:
    """steady's invocations per second started in [start, end)."""
    return sum(start <= r["at"] < end for r in b.runs("steady")) / (end - start)


def settle(seconds: float) -> None:
    time.sleep(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--window", type=float, default=3.0)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    b = Bench()
    try:
        load = os.getloadavg()[0]
        print(f"lambdalite reload bench: {os.cpu_count()} cores, load {load:.2f}, {args.runs} runs")
        wait_revision(b, 1)
        first_run(b, "steady", "v0", 0)
        settle(2 * args.window)

        reload_code, before, during_code, during_other = [], [], [], []
        for i in range(1, args.runs + 1):
            t0 = time.time()
            before.append(rate(b, t0 - args.window, t0))
            b.write_handler("steady", f"v{i}")
            reload_code.append(first_run(b, "steady", f"v{i}", t0))
            settle(max(0.0, t0 + args.window - time.time()) + 0.5)
            during_code.append(rate(b, t0, t0 + args.window))
            t1 = time.time()
            b.write_handler("other", f"o{i}")  # a reload that leaves steady's workers be
            settle(args.window + 0.5)
            during_other.append(rate(b, t1, t1 + args.window))

        new_fn = []
        for i in range(1, args.runs + 1):
            name = f"fresh{i}"
            (b.dir / f"{name}.py").write_text(HANDLER.format(code=name, name=name))
            number = b.number()
            text = (b.dir / "lambdalite.toml").read_text() + f'\n[functions.{name}]\nhandler = "{name}.handler"\n'
            t0 = time.time()
            (b.dir / "lambdalite.toml").write_text(text)
            wait_revision(b, number + 1)
            running = revision.running(b.client, b.dir / "lambdalite.toml")
            assert running is not None
            Publisher(b.client, running).publish(Event(function=name, payload={}))
            new_fn.append(first_run(b, name, name, t0))
            settle(0.5)

        restart = []
        for i in range(1, max(2, args.runs // 2) + 1):
            code = f"r{i}"
            t0 = time.time()
            b.write_handler("steady", code)
            b.stop_scaler()  # with live reload off, an edit takes a restart
            b.start_scaler()
            restart.append(first_run(b, "steady", code, t0))
            settle(args.window)

        med = statistics.median
        rows = [
            ["save -> first invocation on the new code (handler edited)",
             f"{med(reload_code) * 1000:.0f} ms (max {max(reload_code) * 1000:.0f})",
             f"restart of the scaler: {med(restart) * 1000:.0f} ms (max {max(restart) * 1000:.0f})"],
            ["save -> first invocation of a function added to lambdalite.toml",
             f"{med(new_fn) * 1000:.0f} ms (max {max(new_fn) * 1000:.0f})", "-"],
            [f"steady's invocations/s, {args.window:g} s after an edit of its code",
             f"{med(during_code):.0f} ({med(during_code) / med(before):.2f} x)",
             f"{med(before):.0f} in the {args.window:g} s before"],
            [f"steady's invocations/s, {args.window:g} s after an edit of another function",
             f"{med(during_other):.0f} ({med(during_other) / med(before):.2f} x)",
             f"{med(before):.0f} in the {args.window:g} s before"],
        ]
        for row in rows:
            print(f"  {row[0]}: {row[1]} | {row[2]}")
        if args.write:
            markdown = (
                f"Live reload on this machine ({os.cpu_count()} cores, load average {load:.1f} when the run began; "
                f"medians of {args.runs} runs; `steady` is a 10 ms handler, `max_concurrency = 2`, kept busy by a "
                "backlog throughout):\n\n"
                + table(["what", "live reload", "reference (same run)"], rows))
            path = write_section("performance.md", "reload", markdown,
                                 f"python bench/reload.py --runs {args.runs} --write")
            print(f"written to {path}")
    finally:
        b.close()


if __name__ == "__main__":
    main()
