"""How fast limits bite, and what they cost: ``python bench/limits.py [--runs N]``.

Prints, over N runs each (medians, p95 and max):
- C-level hang (regex backtracking holding the GIL): time from the deadline until the process is
  dead and reaped (goal <= 100 ms);
- memory breach: time from the handler's RSS crossing the limit until it is dead (goal <= 250 ms);
- tmp-disk breach: time from the TMPDIR crossing the limit until it is dead (goal <= 250 ms);
- per-invocation cost of the limits: a no-op handler through the sandboxed runtime, with a TMPDIR
  per invocation (the private /tmp off) and with the worker's private /tmp (the default), in turns,
  vs. the same handler called directly in the worker process (what RQ's SimpleWorker does), same run.
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

# This folder holds http.py (bench/http.py), which would shadow the standard library's http package.
_sys.path[:] = [p for p in _sys.path if _Path(p or ".").resolve() != _Path(__file__).resolve().parent]

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
# The limits as such, measured the way they were: handlers read the breach's mark from the machine's
# temp folder, which a private /tmp would hide (and wipe with a broken sandbox). What the isolation
# costs is bench/sandbox.py's figure; the no-op's cost is measured here with it off and on.
os.environ.setdefault("LAMBDALITE_SANDBOX_USER", "root")
os.environ.setdefault("LAMBDALITE_PRIVATE_TMP", "0")

from broker.registry import Function  # noqa: E402
from broker.settings import load_settings  # noqa: E402
from workers import isolation  # noqa: E402
from workers.runtime import Runtime  # noqa: E402

MARK = Path(tempfile.gettempdir()) / f"lambdalite-bench-{os.getpid()}.mark"


def _mark() -> None:
    with open(MARK, "w") as f:
        f.write(repr(time.time()))


def hang(event, context):
    re.match(r"(a+)+$", "a" * 64 + "b")


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def hog_memory(event, context):
    blocks, marked = [], False
    while True:
        # Marked just before the allocation that crosses the limit: the figure errs on the slow side.
        if not marked and _rss_mb() + 4 > event["limit"]:
            _mark()
            marked = True
        blocks.append(bytearray(4 * 2**20))  # bytearray zero-fills: the pages are resident
        time.sleep(0.002)


def hog_disk(event, context):
    written, marked = 0, False
    with open(os.path.join(tempfile.gettempdir(), "fill"), "wb") as f:
        while True:
            if not marked and written + 1 >= event["limit"]:  # the next MB reaches the limit (blocks run ahead)
                _mark()
                marked = True
            f.write(b"x" * 2**20)
            f.flush()
            os.fsync(f.fileno())
            written += 1


def noop(event, context):
    return None


def runtime(name: str, handler, **limits) -> Runtime:
    fn = Function(name=name, handler=f"bench.{name}", **limits)
    return Runtime(fn, handler, "bench", out=lambda line: None)


def summary(label: str, samples: list[float], goal: str) -> None:
    s = sorted(samples)
    p95 = s[min(len(s) - 1, int(len(s) * 0.95))]
    print(f"{label:<66} median {statistics.median(s):8.2f} ms   p95 {p95:8.2f} ms   max {s[-1]:8.2f} ms"
          f"   ({len(s)} runs; goal {goal})")


def after_deadline(runs: int) -> list[float]:
    rt = runtime("hang", hang, timeout=0.2)
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        inv = rt.invoke("r", {})
        done = time.perf_counter()
        assert inv.status == "timeout", inv
        out.append((done - t0 - 0.2) * 1000)
    rt.close()  # one runtime at a time: each counts every child of this process as its own
    return out


def after_breach(runs: int, name: str, handler, status: str, **limits) -> list[float]:
    rt = runtime(name, handler, timeout=60, **limits)
    limit = limits.get("memory", limits.get("ephemeral_storage"))
    out = []
    for _ in range(runs):
        MARK.unlink(missing_ok=True)
        inv = rt.invoke("r", {"limit": limit})
        done = time.time()
        assert inv.status == status, inv
        out.append((done - float(MARK.read_text())) * 1000)
    MARK.unlink(missing_ok=True)
    rt.close()
    return out


TMP_SETUPS = {"a TMPDIR per invocation (private /tmp off)": False, "the worker's private /tmp (default)": True}


def overhead(n: int, turns: int = 10) -> tuple[dict[str, list[float]], list[float]]:
    """No-op invocations through a fresh runtime per turn, each set-up of TMP_SETUPS in turn (one
    runtime at a time), beside the handler called directly."""
    plans = {name: isolation.decide(load_settings(private_tmp=on)) for name, on in TMP_SETUPS.items()}
    with_limits: dict[str, list[float]] = {name: [] for name in plans}
    direct: list[float] = []
    for _ in range(turns):
        for name, plan in plans.items():
            isolation.use(plan)
            rt = runtime("noop", noop)
            rt.invoke("warm", {})
            for _ in range(max(1, n // turns)):
                t0 = time.perf_counter()
                rt.invoke("r", {})
                with_limits[name].append((time.perf_counter() - t0) * 1000)
                t0 = time.perf_counter()
                noop({}, None)
                direct.append((time.perf_counter() - t0) * 1000)
            rt.close()
    isolation.use(plans[next(iter(plans))])
    return with_limits, direct


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    print(f"lambdalite limits bench: {args.runs} runs each, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}")
    summary("C-level hang, dead after the deadline", after_deadline(args.runs), "<= 100 ms")
    summary("memory breach (128 MB), dead after crossing",
            after_breach(args.runs, "hog_memory", hog_memory, "memory", memory=128), "<= 250 ms")
    summary("tmp-disk breach (16 MB), dead after crossing",
            after_breach(args.runs, "hog_disk", hog_disk, "storage", ephemeral_storage=16), "<= 250 ms")
    with_limits, direct = overhead(max(200, args.runs * 10))
    for name, samples in with_limits.items():
        summary(f"no-op with limits, {name}", samples, "small")
    print(f"{'no-op handler called directly (reference)':<66} median {statistics.median(direct) * 1000:8.1f} µs")
    for name, samples in with_limits.items():
        print(f"cost of the limits per invocation, {name}: "
              f"{statistics.median(samples) - statistics.median(direct):.3f} ms (median, the sandbox reused)")


if __name__ == "__main__":
    main()
