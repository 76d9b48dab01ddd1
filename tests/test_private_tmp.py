"""Each worker's sandbox has a private /tmp, as a Lambda execution environment has: kept between
that worker's invocations, invisible to other functions and to the machine's /tmp, counted against
``ephemeral_storage``, removed when the worker retires. ``LAMBDALITE_PRIVATE_TMP=0`` keeps a TMPDIR
per invocation."""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from tests.stack import Scaler, invoke

# AWS's S3 thumbnail tutorial handler (the Python one of "Using an Amazon S3 trigger to create
# thumbnail images"), its two S3 calls replaced by file copies between bucket folders.
TUTORIAL = '''
import ctypes
import os
import shutil
import uuid
from urllib.parse import unquote_plus

import boto3
from PIL import Image

s3_client = boto3.client("s3")
BUCKETS = os.path.join(os.environ["LAMBDA_TASK_ROOT"], "buckets")


def download_file(bucket, key, path):  # s3_client.download_file, on the bucket folders
    shutil.copy(os.path.join(BUCKETS, bucket, key), path)


def upload_file(path, bucket, key):  # s3_client.upload_file, on the bucket folders
    os.makedirs(os.path.join(BUCKETS, bucket), exist_ok=True)
    shutil.copy(path, os.path.join(BUCKETS, bucket, key))


def resize_image(image_path, resized_path):
    with Image.open(image_path) as image:
        image.thumbnail(tuple(x / 2 for x in image.size))
        image.save(resized_path)


def lambda_handler(event, context):
    for record in event["Records"]:
        bucket = record["s3"]["bucket"]["name"]
        key = unquote_plus(record["s3"]["object"]["key"])
        tmpkey = key.replace("/", "")
        download_path = "/tmp/{}{}".format(uuid.uuid4(), tmpkey)
        upload_path = "/tmp/resized-{}".format(tmpkey)
        download_file(bucket, key, download_path)
        resize_image(download_path, upload_path)
        upload_file(upload_path, "{}-resized".format(bucket), "resized-{}".format(key))
    return sorted(os.listdir("/tmp"))


def peek(event, context):
    if event.get("fill_mb"):
        with open("/tmp/big", "wb") as f:
            for _ in range(event["fill_mb"]):
                f.write(os.urandom(1024 * 1024))
                f.flush()
                os.fsync(f.fileno())
    if event.get("write"):
        with open("/tmp/" + event["write"], "w") as f:
            f.write("x")
    import tempfile
    if event.get("write_tmpdir"):
        with open(os.path.join(tempfile.gettempdir(), event["write_tmpdir"]), "w") as f:
            f.write("x")
    return {"tmp": sorted(os.listdir("/tmp")), "tmpdir": tempfile.gettempdir(), "pid": os.getpid(),
            "in_tmpdir": sorted(os.listdir(tempfile.gettempdir()))}
'''

FUNCTIONS = '''
[functions.tutorial]
handler = "tutorial.lambda_handler"
timeout = 30
memory = 256
[functions.peek]
handler = "tutorial.peek"
timeout = 30
ephemeral_storage = 8
'''


@pytest.fixture
def project_tmp(project: Path) -> Iterator[Path]:
    (project / "tutorial.py").write_text(TUTORIAL)
    (project / "lambdalite.toml").write_text(FUNCTIONS)
    tmp = project / "tmp"  # the stack's temp root: the workers' private /tmp folders go below it
    tmp.mkdir()
    yield tmp
    assert list(tmp.iterdir()) == [], "a private /tmp outlived its worker"


def _s3_event(bucket: str, key: str) -> dict[str, object]:
    return {"Records": [{"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": bucket}, "object": {"key": key}}}]}


def test_the_thumbnail_tutorial_leaves_nothing_in_the_machines_tmp(project_tmp: Path, project: Path,
                                                                     redis_url: str) -> None:
    uploads = project / "buckets" / "uploads"
    uploads.mkdir()
    keys = [f"photo-{uuid.uuid4().hex[:8]}.jpg" for _ in range(2)]
    for key in keys:
        Image.new("RGB", (320, 240), (30, 200, 90)).save(uploads / key, "JPEG")
    with Scaler(project, TMPDIR=str(project_tmp), LAMBDALITE_IDLE_TIMEOUT="60") as scaler:
        first = invoke(redis_url, project, "tutorial", _s3_event("uploads", keys[0]))
        second = invoke(redis_url, project, "tutorial", _s3_event("uploads", keys[1]))
        assert first.ok and second.ok, (first, second, scaler.output())
        assert f"resized-{keys[0]}" in first.result
        assert f"resized-{keys[0]}" in second.result, "the environment's /tmp is kept between invocations"
        for key in keys:
            assert not Path("/tmp", f"resized-{key}").exists(), "nothing lands in the machine's /tmp"
            with Image.open(project / "buckets" / "uploads-resized" / f"resized-{key}") as image:
                assert image.size == (160, 120)
        [folder] = list(project_tmp.iterdir())
        assert f"resized-{keys[1]}" in os.listdir(folder / "tmp"), "the worker's folder holds the sandbox's /tmp"
        peek = invoke(redis_url, project, "peek", {})
        assert peek.ok and not any(name.startswith("resized-") for name in peek.result["tmp"]), \
            "another function sees its own /tmp only"
        assert peek.result["tmpdir"] == "/tmp"


def test_tmp_counts_against_ephemeral_storage_and_a_new_environment_starts_empty(project_tmp: Path, project: Path,
                                                                                 redis_url: str) -> None:
    with Scaler(project, TMPDIR=str(project_tmp), LAMBDALITE_IDLE_TIMEOUT="60"):
        kept = invoke(redis_url, project, "peek", {"write": "cache"})
        assert kept.ok and "cache" in kept.result["tmp"]
        full = invoke(redis_url, project, "peek", {"fill_mb": 20})
        assert not full.ok and full.error["errorType"] == "Runtime.EphemeralStorageExceeded", full
        fresh = invoke(redis_url, project, "peek", {})
        # only the folders the sandbox needs that live below the machine's /tmp (the project, and the
        # code and virtualenv when they are checked out there), bind-mounted back at their own paths
        needed = {Path(p).resolve().relative_to("/tmp").parts[0] for p in (str(project), *sys.path)
                  if p and Path(p).resolve().is_relative_to("/tmp") and Path(p).resolve() != Path("/tmp")}
        assert fresh.ok and set(fresh.result["tmp"]) <= needed, "a new environment: its /tmp starts empty"
        assert fresh.result["pid"] != kept.result["pid"]


def test_a_retired_workers_tmp_is_removed(project_tmp: Path, project: Path, redis_url: str) -> None:
    with Scaler(project, TMPDIR=str(project_tmp), LAMBDALITE_IDLE_TIMEOUT="1"):
        assert invoke(redis_url, project, "peek", {"write": "x"}).ok
        assert [p.name.startswith("lambdalite-peek-") for p in project_tmp.iterdir()] == [True]
        deadline = time.monotonic() + 15
        while list(project_tmp.iterdir()):
            assert time.monotonic() < deadline, "the retired worker's /tmp stayed"
            time.sleep(0.1)


def test_a_killed_workers_tmp_is_removed_by_the_scaler(project_tmp: Path, project: Path, redis_url: str) -> None:
    with Scaler(project, TMPDIR=str(project_tmp), LAMBDALITE_IDLE_TIMEOUT="60"):
        assert invoke(redis_url, project, "peek", {"write": "x"}).ok
        [folder] = list(project_tmp.iterdir())
        pid = int(folder.name.partition(".env-")[0].rpartition("-")[2])
        assert (folder / "tmp" / "x").exists()
        os.kill(pid, signal.SIGKILL)  # the worker cannot remove its folder now
        deadline = time.monotonic() + 15
        while folder.exists():
            assert time.monotonic() < deadline, "a dead worker's /tmp stayed"
            time.sleep(0.1)
        assert invoke(redis_url, project, "peek", {}).ok, "a new worker serves the function"


def test_private_tmp_off_gives_a_tmpdir_per_invocation(project_tmp: Path, project: Path, redis_url: str) -> None:
    with Scaler(project, TMPDIR=str(project_tmp), LAMBDALITE_PRIVATE_TMP="0") as scaler:
        one = invoke(redis_url, project, "peek", {"write_tmpdir": "x"})
        two = invoke(redis_url, project, "peek", {})
        [folder] = list(project_tmp.iterdir())  # the worker's: only its sandbox's user may enter its tmp/
        assert folder.name.startswith("lambdalite-peek-") and oct(folder.stat().st_mode & 0o777) == "0o711"
        assert list((folder / "tmp").iterdir()) == [], "an invocation's TMPDIR goes with it"
    assert one.ok and two.ok
    assert one.result["tmpdir"].startswith(str(folder / "tmp")), one.result
    assert one.result["in_tmpdir"] == ["x"] and two.result["in_tmpdir"] == [], "each invocation's starts empty"
    # made afresh at the same path: the sandbox's environment keeps no copy of every TMPDIR it had
    # (tests/test_sandbox_memory.py)
    assert one.result["tmpdir"] == two.result["tmpdir"]
    assert "private /tmp off" in scaler.output()


def test_an_unprivileged_user_namespace_gives_a_non_root_sandbox_its_tmp_for_good() -> None:
    """The path a stack that does not run as root takes: user + mount namespace, no capabilities left.
    Tried in a forked child switched to nobody (the venv's interpreter may not be nobody's to run)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to try it as another user")
    folder = tempfile.mkdtemp(prefix="ll-userns-")
    os.chown(folder, 65534, 65534)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        problem = ""
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            # A process that was root is left undumpable by setuid, its /proc files root's: as one
            # that started unprivileged (a stack not run as root) it is dumpable.
            ctypes.CDLL(None, use_errno=True).prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE
            problem = _inside_userns(folder)
        except BaseException as e:  # noqa: B036 - the child reports whatever happened and exits
            problem = f"{type(e).__name__}: {e}"
        finally:
            os.write(write, problem.encode())
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        problem = pipe.read().decode()
    os.waitpid(pid, 0)
    try:
        if "unshare" in problem and "Operation not permitted" in problem:
            pytest.skip("this machine allows no unprivileged user namespaces")
        assert problem == "", problem
        assert (Path(folder) / "inside").read_text() == "x"
    finally:
        shutil.rmtree(folder)


def _inside_userns(folder: str) -> str:
    from workers.isolation import mount_private_tmp

    mount_private_tmp("userns", folder, [os.getcwd()])
    Path("/tmp/inside").write_text("x")  # the parent finds it in the folder
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    if int(status["CapEff"].strip(), 16) != 0:
        return f"capabilities left: {status['CapEff'].strip()}"
    if ctypes.CDLL(None, use_errno=True).umount2(b"/tmp", 2) == 0:
        return "the sandbox could unmount its /tmp"
    if (os.getuid(), os.geteuid()) != (65534, 65534):
        return f"uid changed: {os.getuid()}"
    return ""


def test_where_no_private_tmp_can_be_made_the_stack_says_so_once_and_keeps_a_tmpdir_per_invocation(
        project: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A kernel or container that refuses the namespace cannot be had here as root: the probe's
    answer is the one faked part."""
    from broker.registry import Function
    from broker.settings import load_settings
    from workers import isolation

    monkeypatch.setattr(isolation, "_probe", lambda mode, settings: "unshare(CLONE_NEWNS): Operation not permitted")
    monkeypatch.setattr(isolation, "_plan", None)
    with caplog.at_level("WARNING", logger="lambdalite.isolation"):
        plan = isolation.plan(load_settings(sandbox_user="root"))
        again = isolation.plan()
    assert plan is again and plan.private_tmp == ""
    warnings = [r.getMessage() for r in caplog.records if "private /tmp unavailable" in r.getMessage()]
    assert len(warnings) == 1 and "Operation not permitted" in warnings[0], warnings
    assert isolation.private_tmp(Function(name="f", handler="m.h")) is None, "a TMPDIR per invocation instead"
