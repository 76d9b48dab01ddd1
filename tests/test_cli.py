"""The command line and the process entry points: one clear line and exit status 1 for a broken set-up."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.stack import cli, env


def one_line_error(done: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert done.returncode == 1, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lambdalite: "), done.stderr
    assert "Traceback" not in done.stderr
    for text in expected:
        assert text in lines[0], lines[0]


@pytest.mark.parametrize("process", ["workers.scaler", "sources.files", "sources.sqlite", "sources.http"])
def test_every_process_refuses_a_broken_registry_in_one_line(project: Path, redis_url: str, process: str) -> None:
    (project / "lambdalite.toml").write_text('[functions.f]\nhandler = "a.b"\ntimout = 3\n')
    done = subprocess.run([sys.executable, "-m", process], cwd=project, env=env(), capture_output=True, text=True,
                          timeout=60)
    one_line_error(done, "lambdalite.toml", "function 'f'", "unknown key 'timout'")


def test_scaler_refuses_a_handler_that_does_not_import(project: Path, redis_url: str) -> None:
    (project / "lambdalite.toml").write_text('[functions.f]\nhandler = "nowhere.handler"\n')
    done = subprocess.run([sys.executable, "-m", "workers.scaler"], cwd=project, env=env(), capture_output=True,
                          text=True, timeout=60)
    one_line_error(done, "function 'f'", "cannot import 'nowhere'")
    one_line_error(cli(project, "check"), "cannot import 'nowhere'")


def test_cli_errors_and_status_json(project: Path, redis_url: str) -> None:
    (project / "lambdalite.toml").write_text('[functions.f]\nhandler = "mod.handler"\n')
    one_line_error(cli(project, "invoke", "nope"), "no function named 'nope'")
    for name, text in [("bad.json", b"{not json"), ("nan.json", b'{"n": NaN}'), ("big.json", b"[1e999]"),
                       ("deep.json", b"[" * 100_000), ("latin1.json", b'"\xe9"')]:
        (project / name).write_bytes(text)
        one_line_error(cli(project, "invoke", "f", "--async", "--event", name), name, "not a readable JSON file")
    one_line_error(cli(project, "status", LAMBDALITE_REDIS_URL="unix:///nonexistent/redis.sock"),
                   "redis unavailable")
    for command in (["status"], ["invoke", "f"]):  # a password never reaches the terminal
        refused = cli(project, *command, LAMBDALITE_REDIS_URL="redis://:sekrit-pw@127.0.0.1:1/0")
        one_line_error(refused, "redis unavailable at redis://:***@127.0.0.1:1/0")
        assert "sekrit-pw" not in refused.stderr + refused.stdout
    done = cli(project, "status", "--json")
    assert done.returncode == 0
    row = json.loads(done.stdout)["functions"]["f"]
    assert {k: row[k] for k in ("queued", "running", "workers", "succeeded", "failed", "dead")} == dict.fromkeys(
        ("queued", "running", "workers", "succeeded", "failed", "dead"), 0)
    queued = cli(project, "invoke", "f", "--async")
    assert queued.returncode == 0 and len(queued.stdout.strip()) == 36
    assert json.loads(cli(project, "status", "--json").stdout)["functions"]["f"]["queued"] == 1
    table = cli(project, "status").stdout.splitlines()
    assert table[0].split()[:7] == ["function", "queued", "running", "workers", "succeeded", "failed", "dead"]
    assert table[1].split()[:2] == ["f", "1"]


def test_what_is_queued_for_a_removed_function_is_parked_as_dead_letters_and_replayed_once_it_is_back(
        project: Path, redis_url: str, r) -> None:
    both = '[functions.f]\nhandler = "mod.handler"\n[functions.gone]\nhandler = "mod.handler"\n'
    (project / "lambdalite.toml").write_text(both)
    (project / "e.json").write_text('{"n": 1}')
    ids = [cli(project, "invoke", "gone", "--async", "--event", "e.json").stdout.strip() for _ in range(3)]
    r.rpush("rq:queue:lambdalite.gone", "not-a-job")  # a queue entry whose job hash is missing
    (project / "lambdalite.toml").write_text('[functions.f]\nhandler = "mod.handler"\n')
    one_line_error(cli(project, "dlq", "park", "f"), "function 'f' is running")
    one_line_error(cli(project, "dlq", "park", "never"), "no function named 'never'")
    done = cli(project, "dlq", "park", "gone")
    assert done.returncode == 0 and json.loads(done.stdout) == {"parked": 4}, done.stderr
    assert r.llen("rq:queue:lambdalite.gone") == 0 and not any(r.exists(f"rq:job:{i}") for i in ids)
    parked = json.loads(cli(project, "dlq", "list", "gone").stdout)
    assert sorted(p["id"] for p in parked) == sorted([*ids, "not-a-job"])
    assert {p["reason"] for p in parked} == {"FunctionRemoved"}
    assert all(p["error"]["errorType"] == "Runtime.FunctionRemoved" for p in parked)
    assert [p["event"]["payload"] for p in parked if p["event"]] == [{"n": 1}] * 3
    (project / "lambdalite.toml").write_text(both)  # back: its events run again
    replayed = json.loads(cli(project, "dlq", "replay", "gone").stdout)["replayed"]
    assert sorted(replayed) == sorted(ids) and r.llen("rq:queue:lambdalite.gone") == 3
