"""The Procfile's redis process: last one out on a stop, never outlived by its redis-server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import redis

from tests.stack import env


def start(project: Path, **settings: str) -> tuple[subprocess.Popen[str], psutil.Process, redis.Redis]:
    with (project / "redis.log").open("a") as log:
        proc = subprocess.Popen([sys.executable, "-m", "broker.redis_server"], cwd=project, text=True,
                                env={k: v for k, v in env(**settings).items() if k != "LAMBDALITE_REDIS_URL"},
                                stdout=log, stderr=subprocess.STDOUT)
    client = redis.Redis.from_url(f"unix://{project / 'var' / 'redis.sock'}")
    deadline = time.monotonic() + 20
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            assert proc.poll() is None, (project / "redis.log").read_text()
            assert time.monotonic() < deadline, "redis did not come up"
            time.sleep(0.05)
    [server] = psutil.Process(proc.pid).children()
    return proc, server, client


@pytest.mark.timeout(60)
def test_a_stop_waits_for_the_stacks_clients_then_saves(project: Path) -> None:
    proc, server, client = start(project, LAMBDALITE_REDIS_APPENDFSYNC="always")
    client.set("written-before-the-stop", "1")
    proc.send_signal(signal.SIGTERM)  # honcho's stop reaches every process at once
    time.sleep(1.0)
    assert client.get("written-before-the-stop") == b"1", "still serving while a client is connected"
    client.set("written-during-the-stop", "1")  # e.g. a worker recording its last outcome
    client.close()  # the last client lets go: the server saves and stops
    assert proc.wait(10) == 0
    assert not server.is_running()
    assert "appendfsync always" in (project / "redis.log").read_text()

    proc, server, client = start(project)  # the append-only file brings both keys back
    assert client.get("written-during-the-stop") == b"1" and client.get("written-before-the-stop") == b"1"
    proc.send_signal(signal.SIGINT)
    client.close()
    assert proc.wait(10) == 0


@pytest.mark.serial  # a stop between 3.5 and 5 s
@pytest.mark.timeout(60)
def test_a_client_that_stays_delays_the_stop_by_four_seconds_at_most(project: Path) -> None:
    proc, server, client = start(project)
    client.ping()
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    took = time.monotonic() - started
    assert 3.5 < took < 5, took  # honcho SIGKILLs what is left 5 s after a stop began
    client.close()


@pytest.mark.timeout(60)
def test_redis_server_does_not_outlive_a_killed_redis_process(project: Path) -> None:
    proc, server, client = start(project)
    client.close()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(5)
    server.wait(5)  # the kernel's parent-death signal: redis-server saves and exits
    assert not server.is_running()


@pytest.mark.timeout(60)
def test_a_crashed_redis_server_ends_the_redis_process(project: Path) -> None:
    proc, server, client = start(project)
    client.close()
    server.kill()
    assert proc.wait(10) == 1  # honcho then stops the stack; the next start loads the AOF
    assert "redis-server exited" in (project / "redis.log").read_text()
