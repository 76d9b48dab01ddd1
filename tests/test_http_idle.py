"""The HTTP server stands by when nobody calls it (sources/http/idle.py): a whole stack under honcho,
a real boto3 client waking it, the stack's lock held throughout, a stop signal ending the standby."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from serving import lambda_client

from broker.errors import ConfigError
from sources.http import idle
from tests.stack import shipped_project_with_hello, stack_env, start_stack, stop_stack, wait_up
from tests.waiting import wait_until


def _webhook(honcho: subprocess.Popen[bytes]) -> psutil.Process:
    """The HTTP source's process: started as ``python -m sources.http``, perhaps standing by now."""
    for proc in psutil.Process(honcho.pid).children(recursive=True):
        line = " ".join(proc.cmdline())
        if line.endswith("-m sources.http") or "standby.py --listen" in line:
            return proc
    raise AssertionError("no HTTP source among honcho's children")


def _standing_by(proc: psutil.Process) -> bool:
    return "standby.py --listen" in " ".join(proc.cmdline())


@pytest.mark.timeout(180)
def test_an_idle_server_stands_by_holding_its_port_and_the_next_call_is_answered(project: Path) -> None:
    shipped_project_with_hello(project)
    env = stack_env(project, LAMBDALITE_HTTP_IDLE_STANDBY="1")
    port = int(env["LAMBDALITE_HTTP_PORT"])
    honcho = start_stack(project, env, "stack.log")
    try:
        wait_up(project, env, honcho, "stack.log")
        web = _webhook(honcho)
        wait_until(lambda: _standing_by(web), 30, "the HTTP source stands by")
        assert web.memory_info().rss < 20 * 2**20, "a bare interpreter, not the server"
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # the port is still held: a connection is taken (and wakes the server)

        # What the lock promises holds while it stands by: a second stack refuses to start.
        check = subprocess.run([sys.executable, "-m", "broker.stacklock"], cwd=project, env=env,
                               capture_output=True, text=True, timeout=30)
        assert check.returncode == 1 and "already running" in check.stderr, check.stderr

        wait_until(lambda: _standing_by(web), 30, "it stands by again")
        client = lambda_client(f"http://127.0.0.1:{port}")
        got = client.invoke(FunctionName="hello", Payload=json.dumps({"name": "ada"}).encode())
        assert "FunctionError" not in got and json.loads(got["Payload"].read()) == {"hello": "ada"}
        assert web.is_running() and not _standing_by(web), "the same process, the server again"
        log = (project / "stack.log").read_text()
        assert "standing by on the same port until the next connection" in log, log
        assert "a connection: serving again the Invoke API" in log, log

        # A request in flight longer than the quiet spell keeps the server up.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as slow:
            slow.sendall(b"POST /2015-03-31/functions/hello/invocations HTTP/1.1\r\nhost: x\r\n"
                         b"content-type: application/json\r\ncontent-length: 15\r\n\r\n")
            for byte in b'{"name": "bo"}':
                time.sleep(0.25)  # 3.5 s in all
                assert not _standing_by(web)
                slow.sendall(bytes([byte]))
            slow.sendall(b" ")
            answer = b""
            while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < 14:
                chunk = slow.recv(4096)
                assert chunk, answer
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b'{"hello":"bo"}'), answer

        wait_until(lambda: _standing_by(web), 30, "it stands by once more")
        started = time.monotonic()
        stop_stack(honcho)  # honcho's SIGINT, then SIGTERM: the standby ends with the rest
        assert not web.is_running() and time.monotonic() - started < 10
    finally:
        stop_stack(honcho)



def test_the_socket_served_on_is_tcp_fresh_or_handed_over(monkeypatch: pytest.MonkeyPatch) -> None:
    """asyncio sets TCP_NODELAY only on connections of a socket whose protocol is TCP: without it,
    small replies wait 40 ms for delayed ACKs."""
    fresh, handed = idle.listening_socket("127.0.0.1", 0)
    with fresh:
        assert not handed and fresh.proto == socket.IPPROTO_TCP and fresh.get_inheritable()
        monkeypatch.setenv(idle.LISTEN_FD, str(fresh.fileno()))
        again, handed = idle.listening_socket("127.0.0.1", 0)
        assert handed and again.fileno() == fresh.fileno() and again.proto == socket.IPPROTO_TCP
        assert again.getsockname() == fresh.getsockname()
        again.detach()  # the same descriptor: closed once, with fresh
        with pytest.raises(ConfigError, match=r"cannot listen on 127\.0\.0\.1:\d+: Address already in use"):
            idle.listening_socket("127.0.0.1", fresh.getsockname()[1])
