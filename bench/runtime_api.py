"""Runtimes side by side: ``python bench/runtime_api.py [--runs N] [--calls N]``.

One no-op function in each way lambdalite runs code, in one run, the set-ups taking turns (so a
change in the machine's load hits each alike):

- a Python ``handler`` (imported once by the sandbox);
- ``command`` functions, a process per invocation: POSIX shell, Node.js;
- ``provided`` functions on the Runtime API, warm: a runtime in Node.js with its own ``http``
  module (no npm package), one in Python's standard library, Python's ``awslambdaric`` (when
  installed), and the shape of AWS's custom-runtime tutorial (bash, curl twice per event).

For each it prints the cold start (a new execution environment: the worker's runtime forks a
sandbox, which starts the runtime, until the first invocation's result is back), the Init
Duration the REPORT line gives, and a warm no-op invocation (medians and p95). The worker's runtime
is driven in-process (no Redis): these are the costs of the ways of running code, not of the queue.
The figures go to docs/performance.md.
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

# This folder holds http.py (bench/http.py), which would shadow the standard library's http package.
_sys.path[:] = [p for p in _sys.path if _Path(p or ".").resolve() != _Path(__file__).resolve().parent]

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import table, write_section  # noqa: E402
from broker.registry import Function  # noqa: E402
from broker.settings import load_settings  # noqa: E402
from workers import isolation  # noqa: E402
from workers.runtime import Runtime  # noqa: E402

NODE_RUNTIME = r"""#!/usr/bin/env node
// A Runtime API client with Node's own http module: next, run, respond, forever.
const http = require("http");
const [host, port] = process.env.AWS_LAMBDA_RUNTIME_API.split(":");
const agent = new http.Agent({ keepAlive: true });
const base = "/2018-06-01/runtime/invocation/";
function next() {
  http.get({ host, port, path: base + "next", agent }, (res) => {
    const id = res.headers["lambda-runtime-aws-request-id"];
    res.resume();
    res.on("end", () => {
      const body = "null";
      const req = http.request({ host, port, path: base + id + "/response", method: "POST", agent,
        headers: { "Content-Length": Buffer.byteLength(body) } }, (r) => { r.resume(); r.on("end", next); });
      req.end(body);
    });
  });
}
next();
"""

PYTHON_RUNTIME = r"""#!PYTHON
import http.client, os
host, port = os.environ["AWS_LAMBDA_RUNTIME_API"].split(":")
conn = http.client.HTTPConnection(host, int(port))
base = "/2018-06-01/runtime/invocation/"
while True:
    conn.request("GET", base + "next")
    r = conn.getresponse()
    rid = r.getheader("Lambda-Runtime-Aws-Request-Id")
    r.read()
    conn.request("POST", base + rid + "/response", body=b"null")
    conn.getresponse().read()
"""

# The custom-runtime tutorial's loop (bash, curl for /next and for the response), with a no-op handler.
BASH_RUNTIME = r"""#!/bin/bash
set -euo pipefail
handler () { echo null; }
while true
do
  HEADERS="$(mktemp)"
  EVENT_DATA=$(curl -sS -LD "$HEADERS" -X GET "http://${AWS_LAMBDA_RUNTIME_API}/2018-06-01/runtime/invocation/next")
  REQUEST_ID=$(grep -Fi Lambda-Runtime-Aws-Request-Id "$HEADERS" | tr -d '[:space:]' | cut -d: -f2)
  rm -f "$HEADERS"
  RESPONSE=$(handler "$EVENT_DATA")
  curl -sS -o /dev/null -X POST \
    "http://${AWS_LAMBDA_RUNTIME_API}/2018-06-01/runtime/invocation/$REQUEST_ID/response" -d "$RESPONSE"
done
"""


def _executable(path: Path, text: str) -> None:
    path.write_text(text.replace("PYTHON", sys.executable))
    path.chmod(0o755)


def _fn(**keys: Any) -> Function:
    return Function(timeout=30, **keys)  # a node process alone takes over 3 s when the machine is loaded


def setups(project: Path) -> list[tuple[str, Function]]:
    _executable(project / "node_runtime.js", NODE_RUNTIME)
    _executable(project / "python_runtime.py", PYTHON_RUNTIME)
    _executable(project / "bash_runtime", BASH_RUNTIME)
    _executable(project / "ric_bootstrap", f'#!/bin/sh\nexec {sys.executable} -m awslambdaric "$_HANDLER"\n')
    (project / "noop.py").write_text("def handler(event, context):\n    return None\n")
    (project / "noop.mjs").write_text(
        "process.stdin.resume(); process.stdin.on('end', () => process.stdout.write('null'));\n")
    (project / "noop.sh").write_text("cat > /dev/null\necho null\n")
    out = [
        ("Python handler", _fn(name="py", handler="noop.handler")),
        ("command: POSIX shell, a process per invocation", _fn(name="sh", command=("sh", "noop.sh"))),
        ("command: Node.js, a process per invocation", _fn(name="node_cmd", command=("node", "noop.mjs"))),
        ("provided: Node.js runtime (http module), warm",
         _fn(name="node_rt", runtime="provided", bootstrap="node_runtime.js")),
        ("provided: Python runtime (http.client), warm",
         _fn(name="py_rt", runtime="provided", bootstrap="python_runtime.py")),
    ]
    if importlib.util.find_spec("awslambdaric") is not None:
        out.append(("provided: awslambdaric, warm",
                    _fn(name="ric", runtime="provided", handler="noop.handler", bootstrap="ric_bootstrap")))
    out.append(("provided: the tutorial's bash and curl, warm",
                _fn(name="bash_rt", runtime="provided", handler="x.handler", bootstrap="bash_runtime")))
    return out


def _quiet(line: str) -> None:
    pass


def cold_and_warm(fn: Function, calls: int, figures: dict[str, list[float]]) -> None:
    """One new execution environment: its first invocation, then ``calls`` warm ones."""
    started = time.perf_counter()
    runtime = Runtime(fn, None, f"bench-{os.getpid()}", out=print if os.environ.get("BENCH_LOG") else _quiet)
    try:
        first = runtime.invoke(str(uuid.uuid4()), {})
        figures["cold"].append((time.perf_counter() - started) * 1000)
        if not first.ok:
            raise SystemExit(f"{fn.name}: the no-op failed: {first.error}")
        figures["init"].append(first.init_ms or 0.0)
        for _ in range(calls):
            t0 = time.perf_counter()
            inv = runtime.invoke(str(uuid.uuid4()), {})
            figures["warm"].append((time.perf_counter() - t0) * 1000)
            if not inv.ok:
                raise SystemExit(f"{fn.name}: a warm no-op failed: {inv.error}")
    finally:
        runtime.close()


def _p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1] if len(values) >= 2 else values[0]


def _ms(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} / {_p95(values):.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="cold starts per set-up")
    parser.add_argument("--calls", type=int, default=30, help="warm invocations after each cold start")
    args = parser.parse_args()
    project = Path(tempfile.mkdtemp(prefix="ll-bench-runtimes-"))
    project.chmod(0o755)  # the sandbox user runs the runtimes from here
    (project / "lambdalite.toml").write_text("")
    os.chdir(project)
    rows = []
    try:
        # As the stack's user: the interpreter these Python runtimes start may lie where the sandbox
        # user cannot read it (a Python under /root); bench/sandbox.py measures what the switch costs.
        isolation.use(isolation.decide(load_settings(config=project / "lambdalite.toml", sandbox_user="root")))
        runs = setups(project)
        figures: list[dict[str, Any]] = [{"cold": [], "init": [], "warm": []} for _ in runs]
        for _ in range(args.runs):
            for (_name, fn), figs in zip(runs, figures, strict=True):
                cold_and_warm(fn, args.calls, figs)
        for (name, _fn), figs in zip(runs, figures, strict=True):
            rows.append([name, _ms(figs["cold"]), f"{statistics.median(figs['init']):.1f}", _ms(figs["warm"])])
            print(f"{name:55s} cold start {rows[-1][1]} ms, Init Duration {rows[-1][2]} ms, "
                  f"warm no-op {rows[-1][3]} ms (median / p95)", flush=True)
    finally:
        os.chdir("/")
        shutil.rmtree(project, ignore_errors=True)
    text = table(["set-up", "cold start, ms (median / p95)", "Init Duration, ms (median)",
                  "warm no-op invocation, ms (median / p95)"], rows)
    text += (f"\n\n{args.runs} cold starts per set-up, {args.calls} warm invocations after each, the set-ups "
             "taking turns; the worker's runtime driven in-process (no Redis), as the stack's user with a private "
             "/tmp, each function a "
             "no-op that answers null. A command's Init Duration is the sandbox's own start (its program "
             "starts in each invocation). Machine load average at the end: "
             f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores.")
    command = f"python bench/runtime_api.py --runs {args.runs} --calls {args.calls}"
    print(write_section("performance.md", "runtime-api", text, command))


if __name__ == "__main__":
    main()
