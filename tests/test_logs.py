"""One event, one line: control characters in what a log line quotes are escaped."""

from __future__ import annotations

import io
import logging
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import redis
from bucketkit import keys, uploads_project

from broker import logs
from tests.waiting import wait_until

LINE = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: ")
FORGED = "x\nERROR lambdalite.scaler: forged\r\x1b[2J\u2028\u202e\x85.jpg"


class Logged:
    """A logger writing through the processes' formatter into a string."""

    def __init__(self) -> None:
        self.stream = io.StringIO()
        handler = logging.StreamHandler(self.stream)
        handler.setFormatter(logs.OneLineFormatter(logs.FORMAT))
        self.logger = logging.Logger("lambdalite.test")
        self.logger.addHandler(handler)

    def out(self) -> str:
        return self.stream.getvalue()


def test_a_message_with_control_characters_is_one_line() -> None:
    logged = Logged()
    logged.logger.warning("not published: %s", FORGED)
    out = logged.out()
    assert out.count("\n") == 1 and "\x1b" not in out and "\r" not in out
    assert "\u2028" not in out and "\u202e" not in out and "\x85" not in out
    assert out == ("WARNING lambdalite.test: not published: x\\nERROR lambdalite.scaler: forged\\r\\x1b[2J"
                   "\\u2028\\u202e\\x85.jpg\n")


def test_a_traceback_keeps_its_lines_indented_and_escaped() -> None:
    logged = Logged()
    try:
        raise ValueError(FORGED)
    except ValueError:
        logged.logger.exception("failed on %s", "a\nb")
    lines = logged.out().splitlines()
    assert lines[0] == "ERROR lambdalite.test: failed on a\\nb"
    assert len(lines) > 3 and all(line.startswith(logs.TRACEBACK_INDENT) for line in lines[1:])
    assert not any(LINE.match(line) for line in lines[1:])
    assert "\x1b" not in "".join(lines)


def test_the_files_process_logs_a_forged_name_on_one_line(project: Path, redis_url: str, r: redis.Redis) -> None:
    uploads = uploads_project(project) / "buckets" / "uploads"
    os.symlink("/etc/hostname", uploads / FORGED)  # a link is never an object: its refusal is logged
    env = {**os.environ, "LAMBDALITE_REDIS_URL": redis_url, "LAMBDALITE_LOG_LEVEL": "INFO"}
    log = project / "files.log"
    with log.open("w") as out_file:
        proc = subprocess.Popen([sys.executable, "-m", "sources.files"], cwd=project, env=env,
                                stdout=out_file, stderr=subprocess.STDOUT)
    try:
        (uploads / "after.jpg").write_bytes(b"a")
        # The two are read side by side (the hasher's threads): either may be done first.
        wait_until(lambda: "after.jpg" in keys(r, "fn") and "symbolic link" in log.read_text(), timeout=20,
                   what="after.jpg published and the link refused", detail=log.read_text)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(5)
    out = log.read_text()
    lines = out.splitlines()
    assert any("forged" in line and "symbolic link" in line for line in lines), out
    assert all(LINE.match(line) for line in lines), out
    assert "\x1b" not in out and "\r" not in out
