"""What a sandbox's isolation costs: ``python bench/sandbox.py [--runs N] [--calls N]``.

For four set-ups, side by side in one run — no isolation (handlers as the stack's user, a TMPDIR per
invocation), a private /tmp only, the switch to the sandbox user only, and both (the default when
the stack runs as root) — it prints, medians and p95 over the runs:

A fifth row is the runtime as it was before handlers were imported by their sandbox: the worker
hands the sandbox a handler its warm parent imported, with no isolation.

- cold start: a new execution environment (the worker's runtime forks a sandbox that isolates
  itself and imports a no-op handler) until the first invocation's result is back;
- Init Duration: fork to ready, as the sandbox reports it on REPORT lines;
- a warm no-op invocation through the sandbox.

Run it as root (the user switch needs it); the figures go to docs/runtime-environment.md.
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

# This folder holds http.py (bench/http.py), which would shadow the standard library's http package.
_sys.path[:] = [p for p in _sys.path if _Path(p or ".").resolve() != _Path(__file__).resolve().parent]

import argparse  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import table, write_section  # noqa: E402
from broker.registry import Function, resolve_handler  # noqa: E402
from broker.settings import load_settings  # noqa: E402
from workers import isolation  # noqa: E402
from workers.runtime import Runtime  # noqa: E402

SETUPS = [
    ("before: handler imported by the warm worker, stack's user, TMPDIR per invocation",
     {"sandbox_user": "root", "private_tmp": False, "preimport": True}),
    ("no isolation: stack's user, TMPDIR per invocation", {"sandbox_user": "root", "private_tmp": False}),
    ("private /tmp only", {"sandbox_user": "root", "private_tmp": True}),
    ("sandbox user only", {"sandbox_user": "nobody", "private_tmp": False}),
    ("sandbox user + private /tmp (default as root)", {"sandbox_user": "nobody", "private_tmp": True}),
]


def _quiet(line: str) -> None:
    pass


def cold_and_warm(project: Path, plan: isolation.Plan, preimport: bool, calls: int,
                  cold: list[float], init: list[float], warm: list[float]) -> None:
    """One new execution environment: its first invocation, then ``calls`` warm ones."""
    isolation.use(plan)
    fn = Function(name="noop", handler="noop.handler")
    handler = resolve_handler(fn, project / "lambdalite.toml") if preimport else None
    started = time.perf_counter()
    runtime = Runtime(fn, handler, f"bench-{os.getpid()}", out=_quiet)
    try:
        first = runtime.invoke(str(uuid.uuid4()), {})
        cold.append((time.perf_counter() - started) * 1000)
        if not first.ok:
            raise SystemExit(f"the no-op handler failed: {first.error}")
        init.append(first.init_ms or 0.0)
        for _ in range(calls):
            t0 = time.perf_counter()
            runtime.invoke(str(uuid.uuid4()), {})
            warm.append((time.perf_counter() - t0) * 1000)
    finally:
        runtime.close()


def _p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1] if len(values) >= 2 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="cold starts per set-up")
    parser.add_argument("--calls", type=int, default=50, help="warm invocations after each cold start")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the switch to the sandbox user needs it")
    project = Path(tempfile.mkdtemp(prefix="ll-bench-sandbox-"))
    project.chmod(0o755)  # the sandbox user imports the handler from here
    (project / "noop.py").write_text("def handler(event, context):\n    return None\n")
    (project / "lambdalite.toml").write_text('[functions.noop]\nhandler = "noop.handler"\n')
    os.chdir(project)
    rows = []
    try:
        plans = []
        for _name, overrides in SETUPS:
            settings = {k: v for k, v in overrides.items() if k != "preimport"}
            plans.append((isolation.decide(load_settings(config=project / "lambdalite.toml", **settings)),
                          bool(overrides.get("preimport"))))
        figures: list[tuple[list[float], list[float], list[float]]] = [([], [], []) for _ in SETUPS]
        for _ in range(args.runs):  # the set-ups in turn, so a change in the machine's load hits each alike
            for (plan, preimport), (cold, init, warm) in zip(plans, figures, strict=True):
                cold_and_warm(project, plan, preimport, args.calls, cold, init, warm)
        for (name, _), (cold, init, warm) in zip(SETUPS, figures, strict=True):
            rows.append([name, f"{statistics.median(cold):.1f} / {_p95(cold):.1f}",
                         f"{statistics.median(init):.1f}",
                         f"{statistics.median(warm) * 1000:.0f} / {_p95(warm) * 1000:.0f}"])
            print(f"{name:80s} cold start {rows[-1][1]} ms (median / p95), init {rows[-1][2]} ms, "
                  f"no-op invocation {rows[-1][3]} µs", flush=True)
    finally:
        shutil.rmtree(project, ignore_errors=True)
    text = table(["set-up", "cold start, ms (median / p95)", "Init Duration, ms (median)",
                  "warm no-op invocation, µs (median / p95)"], rows)
    text += (f"\n\n{args.runs} cold starts per set-up, {args.calls} warm invocations after each, the set-ups "
             "taking turns; the worker's runtime driven in-process (no Redis), a handler that returns None. "
             f"Machine load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores.")
    command = f"python bench/sandbox.py --runs {args.runs} --calls {args.calls}"
    print(write_section("runtime-environment.md", "sandbox-cost", text, command))


if __name__ == "__main__":
    main()
