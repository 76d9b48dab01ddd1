"""One stack per folder: a second stack in the same folder exits at once with one line and leaves the
first one serving; the embedded Redis's supervisor stops the stack when its socket file is replaced."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.stack import free_port, lambdalite, shipped_project_with_hello, stack_env, start_stack, stop_stack, wait_up


@pytest.mark.timeout(180)
def test_a_second_stack_in_the_same_folder_exits_with_one_line_and_the_first_keeps_serving(project: Path) -> None:
    shipped_project_with_hello(project)
    env = stack_env(project)
    first = start_stack(project, env, "first.log")
    try:
        wait_up(project, env, first, "first.log")
        sock = project / "var" / "redis.sock"
        inode = sock.stat().st_ino

        # What `make run` does first: one line, exit 1, nothing started.
        check = subprocess.run([sys.executable, "-m", "broker.stacklock"], cwd=project, env=env,
                               capture_output=True, text=True, timeout=30)
        assert check.returncode == 1
        lines = check.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("lambdalite: a lambdalite stack is already running on "), lines
        assert str((project / "var").resolve()) in lines[0] and "pid" in lines[0]

        # `honcho start` straight away: every process of the second stack refuses, so honcho stops it.
        second = start_stack(project, {**env, "LAMBDALITE_HTTP_PORT": str(free_port())}, "second.log")
        try:
            second.wait(30)
        finally:
            stop_stack(second)
        assert second.returncode != 0
        text = (project / "second.log").read_text()
        assert "a lambdalite stack is already running on" in text, text

        # The first stack is untouched: same socket, and an invocation through it still works.
        assert sock.stat().st_ino == inode
        assert first.poll() is None
        (project / "event.json").write_text(json.dumps({"name": "first"}))
        done = lambdalite(project, env, "invoke", "hello", "--event", "event.json")
        assert done.returncode == 0, done.stderr + (project / "first.log").read_text()
        assert json.loads(done.stdout) == {"hello": "first"}, done.stdout
    finally:
        stop_stack(first)


@pytest.mark.timeout(60)
def test_the_stack_stops_with_one_line_when_its_redis_socket_is_replaced(project: Path) -> None:
    env = stack_env(project)
    with (project / "redis.log").open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "broker.redis_server"], cwd=project, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        sock = project / "var" / "redis.sock"
        deadline = time.monotonic() + 20
        while not sock.exists():
            assert proc.poll() is None and time.monotonic() < deadline, (project / "redis.log").read_text()
            time.sleep(0.05)
        time.sleep(1.5)  # the watch has seen the socket's inode
        sock.unlink()
        sock.write_text("not a socket")
        code = proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = (project / "redis.log").read_text()
    assert code == 1, text
    assert "was removed or replaced while its redis-server ran: stopping the stack" in text, text
