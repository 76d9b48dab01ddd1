"""Connection hygiene of the real webhook process: slow headers, idle keep-alives, the connection
cap and a small descriptor limit, with the log watched for floods."""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import redis

from sources.http.connections import AcceptLogLimit
from tests.stack import free_port

pytestmark = pytest.mark.serial  # a p99 bound on plain requests beside slow senders: run alone (make test)

ROOT = Path(__file__).resolve().parent.parent
TOML = """
[functions.echo]
handler = "handlers.echo.handler"
"""


@contextmanager
def webhook_process(project: Path, fd_limit: int | None = None, **settings: str) -> Iterator[tuple[int, Path]]:
    """``python -m sources.http`` on a free port; yields (port, log file)."""
    (project / "lambdalite.toml").write_text(TOML)
    port = free_port()
    log = project / f"webhook-{port}.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LAMBDALITE_HTTP_PORT": str(port),
           **{f"LAMBDALITE_{k.upper()}": v for k, v in settings.items()}}

    def limit() -> None:
        if fd_limit is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (fd_limit, fd_limit))

    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "sources.http"], cwd=project, env=env, stdout=out,
                                stderr=subprocess.STDOUT, preexec_fn=limit)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield port, log
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def lines(log: Path) -> int:
    return len(log.read_text().splitlines())


async def _slow_client(port: int, seconds: float, lifetimes: list[float], still_open: list[int]) -> None:
    """For ``seconds``, send a request's headers one byte a second, reconnecting whenever the
    server closes the connection; note how long each connection lived."""
    request = b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-padding: " + b"a" * 64 + b"\r\n\r\n"
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        started = time.monotonic()  # before the connect: the server's clock cannot start earlier than this
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for byte in request:
                writer.write(bytes([byte]))
                try:
                    await writer.drain()
                    data = await asyncio.wait_for(reader.read(1024), 1.0)
                except TimeoutError:
                    if time.monotonic() >= until:
                        still_open.append(1)  # the test's time is up before the server closed it
                        return
                    continue
                except (ConnectionError, OSError):
                    data = b""
                if not data:
                    lifetimes.append(time.monotonic() - started)
                    break
            else:
                still_open.append(1)  # all the headers went through: never closed
                return
        finally:
            writer.close()


def _slow_clients(port: int, count: int, seconds: float, lifetimes: list[float], still_open: list[int]) -> None:
    async def run() -> None:
        await asyncio.gather(*(_slow_client(port, seconds, lifetimes, still_open) for _ in range(count)))

    asyncio.run(run())


@pytest.mark.timeout(90)
def test_200_slow_header_senders_are_closed_while_plain_requests_stay_fast(project: Path, redis_url: str) -> None:
    with webhook_process(project) as (port, log):
        before = lines(log)
        lifetimes: list[float] = []
        still_open: list[int] = []
        slow = threading.Thread(target=_slow_clients, args=(port, 200, 20.0, lifetimes, still_open))
        slow.start()
        latencies = []
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            time.sleep(1)  # the 200 are connected
            while slow.is_alive():
                sent = time.perf_counter()
                assert http.get("/openapi.json").status_code == 200
                latencies.append(time.perf_counter() - sent)
                time.sleep(0.02)
        slow.join(30)
        grown = lines(log) - before
    # Every connection was closed at the 5 s header deadline; the 200 kept reconnecting for 20 s.
    assert len(lifetimes) >= 600 and min(lifetimes) >= 4.5 and max(lifetimes) < 7.0, (min(lifetimes),
                                                                                      max(lifetimes))
    assert len(still_open) <= 200  # only those cut short by the end of the 20 s
    latencies.sort()
    p50, p99 = latencies[len(latencies) // 2] * 1000, latencies[int(len(latencies) * 0.99)] * 1000
    print(f"\n{len(lifetimes)} slow connections closed after {min(lifetimes):.1f}-{max(lifetimes):.1f} s; "
          f"{len(latencies)} plain requests meanwhile: p50 {p50:.1f} ms, p99 {p99:.1f} ms; log +{grown} lines")
    assert p99 < 50, f"p99 {p99:.1f} ms"
    assert grown <= 3, log.read_text()


def test_idle_keep_alive_and_a_stalled_body_are_closed_and_the_cap_answers_503(project: Path, redis_url: str,
                                                                              r: redis.Redis) -> None:
    with webhook_process(project, http_keepalive_timeout="1", http_max_connections="20",
                         http_header_timeout="2", http_body_timeout="2") as (port, log):
        with socket.create_connection(("127.0.0.1", port)) as trickle:  # headers at once, the body never
            trickle.settimeout(6)
            trickle.sendall(b"POST /2015-03-31/functions/echo/invocations HTTP/1.1\r\nhost: x\r\n"
                            b"x-amz-invocation-type: Event\r\ncontent-length: 100\r\n\r\n{\"a\": ")
            started = time.monotonic()
            assert trickle.recv(4096) == b""  # closed at the body deadline, nothing stored
            assert 1.8 < time.monotonic() - started < 4
        with socket.create_connection(("127.0.0.1", port)) as kept:
            kept.settimeout(5)
            kept.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            answer = b""
            while not answer.endswith(b"}"):
                answer += kept.recv(4096)
            assert answer.startswith(b"HTTP/1.1 200")
            started = time.monotonic()
            assert kept.recv(4096) == b""  # closed by the server once idle
            assert 0.8 < time.monotonic() - started < 3
        silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
        try:
            time.sleep(0.2)
            with socket.create_connection(("127.0.0.1", port)) as extra:
                extra.settimeout(5)
                answer = extra.recv(4096)
            assert answer.startswith(b"HTTP/1.1 503") and b"Too many open connections" in answer
            for s in silent:  # the silent ones go after the header deadline, and room is back
                s.settimeout(5)
                assert s.recv(10) == b""
            assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
        finally:
            for s in silent:
                s.close()
    assert r.dbsize() == 0  # the stalled request stored nothing


@pytest.mark.timeout(60)
def test_a_small_descriptor_limit_neither_stops_serving_nor_floods_the_log(project: Path, redis_url: str) -> None:
    with webhook_process(project, fd_limit=256) as (port, log):
        before = lines(log)
        silent = []
        try:
            for _ in range(250):
                silent.append(socket.create_connection(("127.0.0.1", port)))
            # Past the cap (the limit less the reserve) a client is told at once, not left hanging
            with httpx.Client(timeout=2) as http:
                assert http.get(f"http://127.0.0.1:{port}/healthz").status_code == 503
                time.sleep(6)  # the silent connections pass their header deadline
                assert http.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
        finally:
            for s in silent:
                s.close()
        assert lines(log) - before <= 3, log.read_text()


def test_accept_errors_are_logged_once_a_second_with_a_count(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    handler = AcceptLogLimit(clock=lambda: now[0])
    context = {"message": AcceptLogLimit.MESSAGE, "exception": OSError(24, "Too many open files")}
    loop = asyncio.new_event_loop()
    try:
        with caplog.at_level(logging.ERROR, logger="lambdalite.webhook"):
            for _ in range(2048):
                handler(loop, context)
            now[0] += 1.0
            handler(loop, context)
    finally:
        loop.close()
    records = [r.getMessage() for r in caplog.records if r.name == "lambdalite.webhook"]
    assert len(records) == 2
    assert "(1 time(s) since the last report" in records[0] and "(2048 time(s)" in records[1]
