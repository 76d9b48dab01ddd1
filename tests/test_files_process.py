"""``python -m sources.files`` as a real process: start-up scan, cp, restart, signals, bad config."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis
from bucketkit import keys, uploads_project

from tests.waiting import wait_while_running


def _start(project: Path, redis_url: str) -> subprocess.Popen[str]:
    env = {**os.environ, "LAMBDALITE_REDIS_URL": redis_url, "LAMBDALITE_LOG_LEVEL": "INFO"}
    return subprocess.Popen(
        [sys.executable, "-m", "sources.files"], cwd=project, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )



def _stop(proc: subprocess.Popen[str], sig: int) -> str:
    proc.send_signal(sig)
    try:
        out, _ = proc.communicate(timeout=5)  # honcho SIGKILLs whatever is left after 5 s
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"no stop within 5 s of signal {sig}") from None
    assert proc.returncode == 0, out
    return out


def test_process_publishes_what_arrived_while_down_once_and_stops_on_signals(
    project: Path, redis_url: str, r: redis.Redis,
) -> None:
    uploads = uploads_project(project) / "buckets" / "uploads"
    (uploads / "while down.jpg").write_bytes(b"d")
    os.utime(uploads / "while down.jpg", (1, 1))

    proc = _start(project, redis_url)
    wait_while_running(lambda: keys(r, "fn") == ["while down.jpg"], proc)
    photo = project / "photo.jpg"
    photo.write_bytes(os.urandom(50_000))
    subprocess.run(["cp", str(photo), str(uploads / "red flower.jpg")], check=True, timeout=30)
    wait_while_running(lambda: "red flower.jpg" in keys(r, "fn"), proc)
    out = _stop(proc, signal.SIGTERM)
    assert "watching" in out and "Traceback" not in out

    proc = _start(project, redis_url)  # a second start publishes nothing it published before
    (uploads / "sentinel.jpg").write_bytes(b"s")
    wait_while_running(lambda: "sentinel.jpg" in keys(r, "fn"), proc)
    time.sleep(0.3)
    _stop(proc, signal.SIGINT)
    assert keys(r, "fn") == ["while down.jpg", "red flower.jpg", "sentinel.jpg"]


def test_process_reports_a_broken_config_in_one_line(project: Path, redis_url: str) -> None:
    (project / "lambdalite.toml").write_text(
        '[functions.f]\nhandler = "a.b"\n[[functions.f.triggers]]\nsource = "files"\nbucket = "u"\n'
        'events = ["s3:ObjectCreated"]\n'
    )
    proc = _start(project, redis_url)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 1
    lines = out.strip().splitlines()
    assert len(lines) == 1 and "function 'f'" in lines[0] and "events" in lines[0], out


def test_process_refuses_a_buckets_path_that_is_a_file(project: Path, redis_url: str) -> None:
    uploads_project(project)
    (project / "not-a-folder").write_text("x")
    env = {**os.environ, "LAMBDALITE_REDIS_URL": redis_url, "LAMBDALITE_BUCKETS": "not-a-folder"}
    proc = subprocess.run([sys.executable, "-m", "sources.files"], cwd=project, env=env, text=True,
                          capture_output=True, timeout=30)
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("lambdalite: not-a-folder") and "Traceback" not in proc.stderr
