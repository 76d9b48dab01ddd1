"""Hosts that are really apart, on one machine: network namespaces joined by a bridge.

A :class:`Network` makes a "switch" namespace holding a bridge, one namespace per host and one for
Redis, each joined to the bridge by a veth pair, on a /24 of its own. Redis listens on TCP with a
password in its namespace (and on a unix socket in the test's folder, which the test itself uses:
a unix socket is a file, seen from every network namespace). Each :class:`Host` runs the
Procfile's stack under ``honcho start`` from a folder of its own, in its namespace and in a UTS
namespace of its own (its own host name, as on a real machine), reaching Redis through
``LAMBDALITE_REDIS_URL``. :meth:`Network.cut` pulls a host's cable (its switch port down).

Root is needed (``ip netns``); :func:`unavailable` says why these tests cannot run here.
Everything is torn down by :meth:`Network.close`, also when a test fails.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import redis

from broker.redis_server.embedded import redis_server_binary

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PASSWORD = "hosts-apart-test"
REDIS_PORT = 6379


def unavailable() -> str | None:
    """Why network namespaces cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "unshare", "hostname"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (iproute2 / util-linux)"
    probe = f"llprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"ip netns add failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


class Network:
    """A bridge, ``hosts`` host namespaces and one for Redis; :meth:`close` removes them all."""

    def __init__(self, folder: Path, hosts: int = 3) -> None:
        self.folder = folder
        self.tag = f"ll{os.getpid() % 100000}"
        self.subnet = f"10.231.{os.getpid() % 250}"
        self.switch = f"{self.tag}-sw"
        self.hosts = [f"{self.tag}-h{i}" for i in range(hosts)]
        self.redis_ns = f"{self.tag}-rd"
        self.made: list[str] = []
        self.redis: subprocess.Popen[bytes] | None = None

    def address(self, ns: str) -> str:
        return f"{self.subnet}.254" if ns == self.redis_ns else f"{self.subnet}.{self.hosts.index(ns) + 1}"

    def port(self, ns: str) -> str:
        """The switch's port (veth end) of ``ns``."""
        return "p-rd" if ns == self.redis_ns else f"p-{self.hosts.index(ns)}"

    def up(self) -> Network:
        ip("netns", "add", self.switch)
        self.made.append(self.switch)
        ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        ip("-n", self.switch, "link", "set", "br0", "up")
        for ns in [*self.hosts, self.redis_ns]:
            ip("netns", "add", ns)
            self.made.append(ns)
            ip("link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", self.port(ns), "netns", self.switch)
            ip("-n", self.switch, "link", "set", self.port(ns), "master", "br0", "up")
            ip("-n", ns, "addr", "add", f"{self.address(ns)}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
            ip("-n", ns, "link", "set", "lo", "up")
        return self

    # -- Redis ----------------------------------------------------------------------------------

    @property
    def socket(self) -> Path:
        return self.folder / "redis" / "redis.sock"

    @property
    def redis_url(self) -> str:
        """The URL the hosts use: TCP across the bridge, with the password."""
        return f"redis://:{PASSWORD}@{self.address(self.redis_ns)}:{REDIS_PORT}/0"

    def client(self) -> redis.Redis:
        """The test's own client, on the unix socket."""
        return redis.Redis(unix_socket_path=str(self.socket), password=PASSWORD, socket_timeout=10)

    def start_redis(self, timeout: float = 20) -> None:
        folder = self.socket.parent
        folder.mkdir(parents=True, exist_ok=True)
        log = (folder / "redis.log").open("wb")
        self.redis = subprocess.Popen(
            ["ip", "netns", "exec", self.redis_ns, redis_server_binary(), "--port", str(REDIS_PORT),
             "--bind", self.address(self.redis_ns), "--protected-mode", "no", "--requirepass", PASSWORD,
             "--unixsocket", str(self.socket), "--unixsocketperm", "700", "--dir", str(folder),
             "--save", "", "--appendonly", "no", "--loglevel", "warning"],
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.client().ping()
                return
            except (redis.ConnectionError, redis.TimeoutError, FileNotFoundError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    # -- faults ---------------------------------------------------------------------------------

    def cut(self, ns: str) -> None:
        """Pull ``ns``'s cable: its switch port goes down, packets to and from it are dropped."""
        ip("-n", self.switch, "link", "set", self.port(ns), "down")

    def mend(self, ns: str) -> None:
        ip("-n", self.switch, "link", "set", self.port(ns), "up")

    def close(self) -> None:
        if self.redis is not None and self.redis.poll() is None:
            self.redis.kill()
            self.redis.wait(10)
        for ns in reversed(self.made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.made.clear()

    def __enter__(self) -> Network:
        try:
            self.up()
            self.start_redis()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Host:
    """The Procfile's stack under ``honcho start`` in ``folder``, in network namespace ``ns``, named
    ``ns`` (a UTS namespace of its own)."""

    def __init__(self, network: Network, ns: str, folder: Path, config: str, files: dict[str, Path],
                 **settings: str) -> None:
        self.network = network
        self.ns = ns
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "Procfile", folder / "Procfile")
        (folder / "lambdalite.toml").write_text(config)
        for name, source in files.items():
            shutil.copy(source, folder / name)
        env = {k: v for k, v in os.environ.items() if not k.startswith("LAMBDALITE_")}
        env.update(PATH=f"{BIN}:{env['PATH']}", PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1",
                   LAMBDALITE_REDIS_URL=network.redis_url, LAMBDALITE_SANDBOX_USER="root")
        env.update(settings)
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = folder / "honcho.log"

    def start(self) -> Host:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.ns, "unshare", "--uts", "sh", "-c",
                 'hostname "$1" && exec "$2" start', "sh", self.ns, str(BIN / "honcho")],
                cwd=self.folder, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def family(self) -> list[psutil.Process]:
        if self.proc is None:
            return []
        try:
            top = psutil.Process(self.proc.pid)
            return [top, *top.children(recursive=True)]
        except psutil.Error:
            return []

    def kill(self) -> None:
        """SIGKILL every process of the stack at once, as when the machine dies."""
        family = self.family()
        for proc in family:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signal.SIGKILL)
        psutil.wait_procs(family, timeout=10)
        if self.proc is not None:
            self.proc.wait(10)

    def stop(self, timeout: float = 20) -> None:
        """Ctrl-C (SIGINT to honcho's group); whatever is left after ``timeout`` is SIGKILLed."""
        if not self.running():
            self.kill()  # leftovers of a stack whose honcho is gone
            return
        assert self.proc is not None
        family = self.family()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout)
        _, alive = psutil.wait_procs(family, timeout=5)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(alive, timeout=5)
        if self.proc.poll() is None:
            self.proc.wait(5)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]
