"""The Procfile's stack under ``honcho start`` for the fault runs, and finding the process to kill."""

from __future__ import annotations

import contextlib
import http.client
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import redis

from broker.redis_server.embedded import RedisServer
from tests.sentinelkit import SentinelSet

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

PROCFILE_KINDS = ("files", "sqlite", "webhook", "scaler", "redis")
INNER_KINDS = ("worker", "invocation")
KINDS = PROCFILE_KINDS + INNER_KINDS
# what a Procfile process's command line shows: its module, what it execs into (the embedded Redis's
# supervisor), or the stand-by it becomes when it has nothing to do (broker.kernel.stand_by)
KIND_MARKS = {
    "redis": ("-m broker.redis_server", "broker/redis_server/redis_supervisor.py", "lambdalite-redis "),
    "files": ("-m sources.files",),
    "sqlite": ("-m sources.sqlite", "lambdalite-sqlite "),
    "webhook": ("-m sources.http",),
    "scaler": ("-m workers.scaler",),
}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Stack:
    """The Procfile under ``honcho start`` in ``project``; started again after each stop."""

    def __init__(self, project: Path, external_redis: bool = False, outage: float = 10.0,
                 sentinels: bool = False, **settings: str) -> None:
        self.project = project
        self.port = free_port()
        self.outage = outage
        # the Procfile's redis process then only waits; the run stops and starts this server itself
        self.redis = RedisServer(project / "redis", appendonly=True).start() if external_redis else None
        if self.redis is not None:
            settings = {"LAMBDALITE_REDIS_URL": self.redis.url, **settings}
        self.sentinels: SentinelSet | None = None
        if sentinels:  # a primary, a replica and three sentinels: the run kills the primary
            (project / "redis").mkdir(parents=True, exist_ok=True)
            replicas = int(settings.pop("SENTINEL_REPLICAS", "1"))
            self.sentinels = SentinelSet(project / "redis", replicas=replicas).__enter__()
            settings = {"LAMBDALITE_REDIS_URL": self.sentinels.url, **settings}
        env = {k: v for k, v in os.environ.items() if not k.startswith("LAMBDALITE_")}
        env.update(PATH=f"{BIN}:{env['PATH']}", PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1",
                   LAMBDALITE_HTTP_PORT=str(self.port), CHAOS_RECORDS=str(project / "records"),
                   LAMBDALITE_SANDBOX_USER="root")  # handlers write records below pytest's 0700 temp root
        env.update(settings)
        self.env = env
        self.honcho: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.log = (project / "honcho.log").open("ab")

    def start(self) -> None:
        self.starts += 1
        self.log.write(f"---- start {self.starts} at {time.time():.3f}\n".encode())
        self.log.flush()
        self.honcho = subprocess.Popen([str(BIN / "honcho"), "start"], cwd=self.project, env=self.env,
                                       stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def redis_url(self) -> str:
        return self.redis.url if self.redis is not None else f"unix://{self.project / 'var' / 'redis.sock'}"

    def running(self) -> bool:
        return self.honcho is not None and self.honcho.poll() is None

    def procs(self) -> dict[str, psutil.Process]:
        """The Procfile's processes that are up, by kind (``redis`` is redis-server itself)."""
        found: dict[str, psutil.Process] = {}
        if not self.running():
            return found
        assert self.honcho is not None
        try:
            family = psutil.Process(self.honcho.pid).children(recursive=True)
        except psutil.Error:
            return found
        launchers = {self.honcho.pid}  # honcho, its fork per process, and the `sh -c` under each
        commands = []
        for proc in family:
            try:
                cmd = proc.cmdline()
                parent = proc.ppid()
            except psutil.Error:
                continue
            if cmd and (cmd[0].endswith("sh") or any("honcho" in part for part in cmd[:2])):
                launchers.add(proc.pid)
            else:
                commands.append((proc, parent, " ".join(cmd)))
        for proc, parent, line in commands:
            if "redis-server" in line:
                found["redis-server"] = proc  # a child of the Procfile's redis process
            if parent not in launchers:
                continue  # the scaler's workers and their sandboxes: forks with the scaler's command line
            for kind, marks in KIND_MARKS.items():
                if any(mark in line for mark in marks):
                    found[kind] = proc
        return found

    def healthy(self) -> bool:
        """All five processes up, Redis answering, the webhook answering /healthz."""
        if not set(PROCFILE_KINDS) <= set(self.procs()):
            return False
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
            conn.request("GET", "/healthz")
            ok = conn.getresponse().status == 200
            conn.close()
            return ok
        except OSError:
            return False

    def wait_healthy(self, timeout: float = 60) -> float:
        started = time.monotonic()
        while not self.healthy():
            if not self.running():
                raise RuntimeError(f"the stack exited while starting; see {self.log.name}")
            if time.monotonic() - started > timeout:
                raise RuntimeError(f"the stack did not come up in {timeout}s; see {self.log.name}")
            time.sleep(0.05)
        return time.monotonic() - started

    def workers(self) -> list[psutil.Process]:
        scaler = self.procs().get("scaler")
        if scaler is None:
            return []
        try:
            return [p for p in scaler.children() if p.is_running()]
        except psutil.Error:
            return []

    def wait_exit(self, timeout: float = 15) -> float:
        """Wait for honcho to have stopped everything (after one process died); the time it took."""
        assert self.honcho is not None
        started = time.monotonic()
        self.honcho.wait(timeout)
        return time.monotonic() - started

    def stop(self, timeout: float = 15) -> float:
        """Ctrl-C, as in the terminal: SIGINT to honcho's process group; the time until it exited."""
        if not self.running():
            return 0.0
        assert self.honcho is not None
        started = time.monotonic()
        os.killpg(self.honcho.pid, signal.SIGINT)
        self.honcho.wait(timeout)
        return time.monotonic() - started

    def close(self) -> None:
        """Leave nothing behind: whatever is still up is SIGKILLed."""
        if self.honcho is not None:
            family = []
            with contextlib.suppress(psutil.Error):
                family = psutil.Process(self.honcho.pid).children(recursive=True)
            if self.honcho.poll() is None:
                try:
                    self.stop()
                except subprocess.TimeoutExpired:
                    os.killpg(self.honcho.pid, signal.SIGKILL)
                    self.honcho.wait(5)
            _, alive = psutil.wait_procs(family, timeout=3)
            for proc in alive:
                proc.kill()
        if self.redis is not None:
            self.redis.stop()
        if self.sentinels is not None:
            self.sentinels.stop()
        self.log.close()


def busy_sandbox(stack: Stack) -> psutil.Process | None:
    """The sandbox (invocation process) of a worker that is running an invocation, if one is."""
    client = redis.Redis.from_url(stack.redis_url, socket_timeout=1)
    try:
        for worker in stack.workers():
            name = next((n for n in client.smembers("rq:workers") if n.decode().endswith(f".{worker.pid}")), None)
            if name is None:
                continue
            state = client.hget(b"rq:worker:" + name.split(b":", 2)[-1], "state")
            if state == b"busy":
                kids = worker.children()
                if kids:
                    return kids[0]
    except (redis.RedisError, psutil.Error):
        return None
    finally:
        client.close()
    return None


def victim(stack: Stack, kind: str, rng: random.Random) -> psutil.Process | None:
    if kind == "redis":  # the server itself, not what runs it
        procs = stack.procs()
        return procs.get("redis-server", procs.get("redis"))
    if kind in PROCFILE_KINDS:
        return stack.procs().get(kind)
    if kind == "worker":
        workers = stack.workers()
        return rng.choice(workers) if workers else None
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:  # prefer an invocation in progress
        found = busy_sandbox(stack)
        if found is not None:
            return found
        time.sleep(0.005)
    sandboxes = [kid for worker in stack.workers() for kid in worker.children()]
    return rng.choice(sandboxes) if sandboxes else None
