"""Running the real scaler (and through it the workers) and the files process for tests."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis

from broker import results
from broker.connection import connect
from broker.envelope import Event
from broker.queues import Publisher
from broker.registry import load_registry
from broker.stats import alive_key
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def env(**extra: str) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("LAMBDALITE_") or k == "LAMBDALITE_REDIS_URL"}
    out["PYTHONPATH"] = str(ROOT)
    # Project folders live below pytest's 0700 temp root, which the sandbox user cannot enter: the
    # stacks these tests start keep handlers as the stack's user. tests/test_sandbox_identity.py
    # runs them as the sandbox user.
    out["LAMBDALITE_SANDBOX_USER"] = "root"
    out.update(extra)
    return out


class Scaler:
    """``python -m workers.scaler`` in a project folder, stopped by SIGTERM on exit."""

    def __init__(self, project: Path, **settings: str) -> None:
        self.project = project
        self.log = project / f"scaler-{time.monotonic_ns()}.log"
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "workers.scaler"], cwd=project, env=env(**settings),
                stdout=out, stderr=subprocess.STDOUT,
            )

    def output(self) -> str:
        return self.log.read_text()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> float:
        started = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.proc.wait(timeout)
        return time.monotonic() - started

    def wait_stepping(self, redis_url: str, timeout: float = 30) -> None:
        """Wait until the scaler has taken a step (its liveness key is set): its start, with the
        probes it runs in short-lived children (a handler's import, a private /tmp), is over."""
        client = redis.Redis.from_url(redis_url)
        try:
            wait_until(lambda: self.proc.poll() is not None or bool(client.keys(alive_key("*"))), timeout=timeout)
        finally:
            client.close()
        assert self.proc.poll() is None, self.output()

    def __enter__(self) -> Scaler:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.proc.poll() is None:
            self.stop()


class FilesProcess:
    """``python -m sources.files`` in a project folder, stopped by SIGTERM on exit."""

    def __init__(self, project: Path, **settings: str) -> None:
        self.log = project / f"files-{time.monotonic_ns()}.log"
        with self.log.open("w") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "sources.files"], cwd=project,
                                         env=env(**settings), stdout=out, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(10)

    def output(self) -> str:
        return self.log.read_text()


class WebhookProcess:
    """``python -m sources.http`` in a project folder on a free loopback port, stopped by SIGTERM."""

    def __init__(self, project: Path, **settings: str) -> None:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = project / f"webhook-{time.monotonic_ns()}.log"
        with self.log.open("w") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "sources.http"], cwd=project,
                                         env=env(LAMBDALITE_HTTP_PORT=str(self.port), **settings),
                                         stdout=out, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(10)

    def output(self) -> str:
        return self.log.read_text()


def publish(url: str, project: Path, function: str, payload: Any, sync: bool = False) -> Event:
    client = redis.Redis.from_url(url)
    registry = load_registry(project / "lambdalite.toml")
    event = Event(function=function, payload=payload, invocation_type="RequestResponse" if sync else "Event")
    Publisher(client, registry).publish(event)
    return event


def invoke(url: str, project: Path, function: str, payload: Any = None, wait: float = 30) -> results.Outcome:
    """A synchronous invocation through the queue; returns its outcome (fails the test on none)."""
    event = publish(url, project, function, payload if payload is not None else {}, sync=True)
    # broker.connection's client: its socket timeout outlasts a blocking read's slice, which a plain
    # client's does not when the machine is slow.
    client = connect(url)
    try:
        outcome = results.wait(client, event.id, wait)
    finally:
        client.close()
    if outcome is None:
        raise AssertionError(f"no outcome for {function} within {wait}s")
    return outcome


def cli(project: Path, *args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "broker.cli", *args], cwd=project, env=env(**settings),
                          capture_output=True, text=True, timeout=60)


def status(project: Path) -> dict[str, Any]:
    done = cli(project, "status", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["functions"]  # type: ignore[no-any-return]


_clients: list[redis.Redis] = []


def redis_client(url: str) -> redis.Redis:
    """A client of the test's Redis, closed when the test ends (import :func:`close_redis_clients`
    into the test module beside it)."""
    client = redis.Redis.from_url(url)
    _clients.append(client)
    return client


@pytest.fixture(autouse=True)
def close_redis_clients() -> Iterator[None]:
    yield
    while _clients:
        _clients.pop().close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# The whole stack as a user starts it: `honcho start` of the project's Procfile.

def lambdalite(project: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "lambdalite"), *args], cwd=project, env=env, capture_output=True,
                          text=True, timeout=60)


def stack_env(project: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMBDALITE_")}
    # The project's own handlers sit below pytest's 0700 temp root, which the sandbox user cannot enter.
    env.update(PATH=f"{BIN}:{env['PATH']}", PYTHONPATH=str(ROOT), LAMBDALITE_HTTP_PORT=str(free_port()),
               LAMBDALITE_SANDBOX_USER="root")
    env.update(extra)
    return env


def start_stack(project: Path, env: dict[str, str], log: str) -> subprocess.Popen[bytes]:
    with (project / log).open("w") as out:
        return subprocess.Popen([str(BIN / "honcho"), "start"], cwd=project, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def stop_stack(honcho: subprocess.Popen[bytes]) -> None:
    family = psutil.Process(honcho.pid).children(recursive=True) if honcho.poll() is None else []
    if honcho.poll() is None:
        os.killpg(honcho.pid, signal.SIGINT)
        honcho.wait(15)
    _, alive = psutil.wait_procs(family, timeout=3)
    for proc in alive:
        proc.kill()


def wait_up(project: Path, env: dict[str, str], honcho: subprocess.Popen[bytes], log: str) -> None:
    deadline = time.monotonic() + 60
    while lambdalite(project, env, "status", "--json").returncode != 0:
        assert honcho.poll() is None, (project / log).read_text()
        assert time.monotonic() < deadline, "the stack did not come up"
        time.sleep(0.2)


def shipped_project_with_hello(project: Path) -> None:
    """The shipped Procfile and lambdalite.toml in ``project``, and a function ``hello`` that answers
    ``{"hello": event["name"]}``."""
    for name in ("Procfile", "lambdalite.toml"):
        shutil.copy(ROOT / name, project / name)
    with (project / "lambdalite.toml").open("a") as toml:
        toml.write('\n[functions.hello]\nhandler = "hello.handler"\n')
    (project / "hello.py").write_text("def handler(event, context):\n    return {'hello': event['name']}\n")
