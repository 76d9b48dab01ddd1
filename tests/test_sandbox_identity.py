"""Handlers of a stack that runs as root run as the sandbox user: they cannot reach var/ (the Redis
socket, the AOF), another function's /tmp, or a descriptor the worker held; no_new_privs is set;
the idempotency helper still works through the worker; the shipped thumbnail handler still writes
its bucket.

Each test runs a real embedded Redis (``python -m broker.redis_server``, as the Procfile does) in a
project folder the sandbox user can read, and the real scaler.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from PIL import Image

from broker.handler_api import idempotency
from tests.stack import FilesProcess, Scaler, env, invoke

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="a privilege drop needs a stack that runs as root"),
    pytest.mark.timeout(120),
]

PROBE = '''
import json, os, socket

from broker.handler_api.idempotency import idempotent

COUNT = {"runs": 0}


def attempt(action):
    try:
        action()
        return "ok"
    except OSError as e:
        return type(e).__name__


def probe(event, context):
    out = {"uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(), "groups": os.getgroups()}
    with open("/proc/self/status") as f:
        out["no_new_privs"] = next(line.split()[1] for line in f if line.startswith("NoNewPrivs"))
    with socket.socket(socket.AF_UNIX) as sock:
        out["redis_sock"] = attempt(lambda: sock.connect(event["sock"]))
    out["aof"] = attempt(lambda: open(event["aof"], "rb").read(1))
    out["var"] = attempt(lambda: os.listdir(event["var"]))
    out["other_tmp"] = attempt(lambda: open(os.path.join(event["other_tmp"], "planted"), "w").write("x"))
    out["setuid_root"] = attempt(lambda: os.setuid(0))
    out["other_environ"] = attempt(lambda: open(f"/proc/{event['other_pid']}/environ", "rb").read())
    out["sockets"] = sorted(
        os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
        if os.path.exists(f"/proc/self/fd/{fd}") and os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"))
    return out


def other(event, context):
    with open("/tmp/mine", "w") as f:
        f.write("other's")
    return {"tmp": os.listdir("/tmp"), "pid": os.getpid()}


@idempotent(key="order")
def once(event, context):
    COUNT["runs"] += 1
    return {"runs": COUNT["runs"], "uid": os.getuid()}
'''

FUNCTIONS = '''
[functions.probe]
handler = "sandbox_probe.probe"
[functions.other]
handler = "sandbox_probe.other"
[functions.once]
handler = "sandbox_probe.once"
[functions.thumbnail]
handler = "handlers.thumbnail.handler"
timeout = 30
memory = 256
[[functions.thumbnail.triggers]]
source = "files"
bucket = "uploads"
suffix = ".jpg"
'''


def _embedded(project: Path) -> subprocess.Popen[bytes]:
    with (project / "redis.log").open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "broker.redis_server"], cwd=project, env=_env(),
                                stdout=out, stderr=subprocess.STDOUT)


def _env() -> dict[str, str]:
    out = env()
    out.pop("LAMBDALITE_REDIS_URL", None)
    out.pop("LAMBDALITE_SANDBOX_USER", None)  # the default: nobody
    return out


@pytest.fixture
def stack_project(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A project folder the sandbox user may read (pytest's own temp root is 0700), its embedded
    Redis started as the Procfile starts it."""
    folder = Path(tempfile.mkdtemp(prefix="ll-identity-"))
    folder.chmod(0o755)
    (folder / "buckets" / "uploads").mkdir(parents=True)
    (folder / "sandbox_probe.py").write_text(PROBE)
    (folder / "lambdalite.toml").write_text(FUNCTIONS)
    monkeypatch.chdir(folder)
    for key in list(os.environ):
        if key.startswith("LAMBDALITE_"):
            monkeypatch.delenv(key)
    server = _embedded(folder)
    deadline = time.monotonic() + 15
    while not (folder / "var" / "redis.sock").exists():
        assert server.poll() is None and time.monotonic() < deadline, (folder / "redis.log").read_text()
        time.sleep(0.05)
    try:
        yield folder
    finally:
        server.terminate()
        server.wait(15)
        shutil.rmtree(folder, ignore_errors=True)


def _url(project: Path) -> str:
    return f"unix://{project / 'var' / 'redis.sock'}"


def test_var_is_the_stacks_alone(stack_project: Path) -> None:
    var = stack_project / "var"
    assert var.stat().st_mode & 0o777 == 0o700
    aof = [p for p in var.rglob("*") if p.is_file() and "aof" in p.name]
    assert aof, list(var.rglob("*"))
    for path in aof:
        assert path.stat().st_mode & 0o777 == 0o600, path


def test_handlers_run_as_nobody_and_reach_neither_redis_nor_var_nor_another_functions_tmp(
        stack_project: Path) -> None:
    url = _url(stack_project)
    with _Stack(stack_project) as scaler:
        listing = invoke(url, stack_project, "other", {})
        assert listing.ok and "mine" in listing.result["tmp"], listing
        [other_tmp] = glob.glob(os.path.join(tempfile.gettempdir(), "lambdalite-other-*", "tmp"))
        assert (Path(other_tmp) / "mine").read_text() == "other's"
        var = stack_project / "var"
        aof = next(str(p) for p in var.rglob("*") if p.is_file() and "aof" in p.name)
        out = invoke(url, stack_project, "probe", {"sock": str(var / "redis.sock"), "aof": aof, "var": str(var),
                                                     "other_tmp": other_tmp, "other_pid": listing.result["pid"]})
        assert out.ok, out
        res = out.result
        entry = pwd.getpwnam("nobody")
        assert (res["uid"], res["euid"], res["gid"], res["groups"]) == (entry.pw_uid, entry.pw_uid, entry.pw_gid, [])
        assert res["no_new_privs"] == "1"
        assert res["redis_sock"] in ("PermissionError", "FileNotFoundError"), res
        assert res["aof"] == "PermissionError" and res["var"] == "PermissionError", res
        assert res["other_tmp"] in ("PermissionError", "FileNotFoundError"), res
        assert not (Path(other_tmp) / "planted").exists()
        assert res["setuid_root"] == "PermissionError"
        assert res["other_environ"] == "PermissionError", "another function's variables (its secrets) stay its own"
        assert res["sockets"] == [], "no inherited socket (the worker's Redis connection) reaches the handler"
        assert "handlers run as nobody" in scaler.output()


def test_the_idempotency_helper_works_through_the_worker(stack_project: Path) -> None:
    url = _url(stack_project)
    with _Stack(stack_project):
        first = invoke(url, stack_project, "once", {"order": "A-1"})
        again = invoke(url, stack_project, "once", {"order": "A-1"})
        other = invoke(url, stack_project, "once", {"order": "B-2"})
    assert first.ok and again.ok and other.ok, (first, again, other)
    assert first.result["uid"] != 0, "the handler ran unprivileged"
    assert again.result == first.result, "the stored result: the body ran once for A-1"
    assert other.result["runs"] == first.result["runs"] + 1


def test_the_door_serves_only_its_own_functions_records(stack_project: Path) -> None:
    client = redis.Redis.from_url(_url(stack_project))
    own = idempotency.record_key("once", "k")
    foreign = idempotency.record_key("probe", "k")
    claim = {"door": "claim", "args": ['{"status": "INPROGRESS", "token": "w/1"}', 1000]}
    assert idempotency.serve_door(client, "once", "w", {**claim, "keys": [own, idempotency.held_key("w")]}) == {
        "value": None}
    assert client.get(own) is not None
    for keys in ([foreign], [own, idempotency.held_key("another-worker")], ["lambdalite:queue:x"]):
        answer = idempotency.serve_door(client, "once", "w", {**claim, "keys": keys})
        assert answer["error"] == "refused", answer
    assert client.get(foreign) is None
    answer = idempotency.serve_door(client, "once", "w", {"door": "eval", "keys": [own], "args": []})
    assert answer["error"] == "refused"


def test_the_shipped_thumbnail_handler_writes_its_bucket_as_nobody(stack_project: Path) -> None:
    photo = stack_project / "photo.jpg"
    Image.new("RGB", (640, 480), (10, 120, 200)).save(photo, "JPEG")
    with _Stack(stack_project) as scaler:
        files = FilesProcess(stack_project)
        try:
            shutil.copy(photo, stack_project / "buckets" / "uploads" / "blue sky.jpg")
            thumb = stack_project / "buckets" / "thumbnails" / "blue sky.jpg"
            deadline = time.monotonic() + 30
            while not thumb.exists():
                assert time.monotonic() < deadline, scaler.output() + files.output()
                time.sleep(0.05)
        finally:
            files.stop()
    with Image.open(thumb) as image:
        assert image.size == (128, 96)
    assert thumb.stat().st_uid != 0, "written by the sandbox user"
    assert (stack_project / "buckets").stat().st_uid == thumb.stat().st_uid, "the buckets were handed over"


def test_an_unknown_sandbox_user_stops_the_scaler_with_one_line(stack_project: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "workers.scaler"], cwd=stack_project,
                          env={**_env(), "LAMBDALITE_SANDBOX_USER": "no-such-user-here"},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip() == ("lambdalite: LAMBDALITE_SANDBOX_USER: no user named 'no-such-user-here' "
                                   "on this machine")


class _Stack(Scaler):
    """The real scaler on the project's embedded Redis, handlers as the default sandbox user."""

    def __init__(self, project: Path, **settings: str) -> None:
        self.project = project
        self.log = project / f"scaler-{time.monotonic_ns()}.log"
        with self.log.open("w") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "workers.scaler"], cwd=project,
                                         env={**_env(), **settings}, stdout=out, stderr=subprocess.STDOUT)

