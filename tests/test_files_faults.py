"""Bucket folders that misbehave under the real files source: they vanish while watched and come
back, or they are read-only.

Read-only is real where the tests may mount (root, as in CI: a read-only bind mount of the folder
onto itself); elsewhere the same fault is injected where the write happens, so the test still runs.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
from bucketkit import Driver, keys, make_watcher, uploads_project
from PIL import Image

from broker import deadletter
from broker.errors import BucketsError
from sources.files.buckets import prepare_root
from tests.stack import FilesProcess, Scaler, cli, env
from tests.waiting import wait_until

PUT, DELETE = "ObjectCreated:Put", "ObjectRemoved:Delete"


@contextmanager
def read_only(folder: Path) -> Iterator[bool]:
    """Make ``folder`` read-only with a read-only bind mount of itself; yields whether it is.

    Needs root and mount(8); where either is missing (or mounting is not allowed) it changes
    nothing and yields False, and the caller injects the fault instead.
    """
    if os.geteuid() != 0 or not shutil.which("mount"):
        yield False
        return
    if subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True).returncode != 0:
        yield False
        return
    try:
        remounted = subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], capture_output=True)
        refused = False
        if remounted.returncode == 0:
            try:
                (folder / ".probe").write_bytes(b"")
            except OSError as e:
                refused = e.errno == errno.EROFS
        yield refused
    finally:
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def lines(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


# -- folders that vanish and come back -----------------------------------------------------------------


def test_a_bucket_removed_while_watched_comes_back(project: Path, r: redis.Redis,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    uploads = uploads_project(project) / "buckets" / "uploads"
    watcher = make_watcher(project, r)
    watcher.start()
    d = Driver(watcher)
    try:
        (uploads / "a.jpg").write_bytes(b"a")
        (uploads / "sub").mkdir()
        (uploads / "sub" / "b.jpg").write_bytes(b"b")
        d.until(lambda: sorted(keys(r, "fn")) == ["a.jpg", "sub/b.jpg"])
        shutil.rmtree(uploads)  # rm -rf
        d.until(lambda: sorted(keys(r, "fn", DELETE)) == ["a.jpg", "sub/b.jpg"])
        d.run(0.3)
        assert len(lines(caplog, "bucket 'uploads': folder")) == 1
        assert lines(caplog, "bucket 'uploads': folder")[0].endswith(
            "is gone; its objects are reported removed, and the bucket is picked up again when the folder comes back")
        uploads.mkdir()
        (uploads / "c.jpg").write_bytes(b"c")  # written at once, maybe before the new folder is watched
        (uploads / "deep" / "er").mkdir(parents=True)
        (uploads / "deep" / "er" / "d.jpg").write_bytes(b"d")
        d.until(lambda: {"c.jpg", "deep/er/d.jpg"} <= set(keys(r, "fn", PUT)))
        (uploads / "e.jpg").write_bytes(b"e")  # and later, through the new folder's own watch
        d.until(lambda: "e.jpg" in keys(r, "fn", PUT))
        d.run(0.3)
        assert watcher.observer is not None and watcher.observer.healthy()
    finally:
        watcher.stop()
    assert sorted(keys(r, "fn", PUT)) == ["a.jpg", "c.jpg", "deep/er/d.jpg", "e.jpg", "sub/b.jpg"]
    assert sorted(keys(r, "fn", DELETE)) == ["a.jpg", "sub/b.jpg"]
    assert any("bucket 'uploads': folder" in line and "appeared" in line for line in lines(caplog, "appeared"))
    assert "Traceback" not in caplog.text and not [rec for rec in caplog.records if rec.exc_info]


def test_the_buckets_root_removed_while_watched_comes_back(project: Path, r: redis.Redis,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    root = uploads_project(project) / "buckets"
    watcher = make_watcher(project, r)
    watcher.start()
    d = Driver(watcher)
    try:
        (root / "uploads" / "a.jpg").write_bytes(b"a")
        d.until(lambda: keys(r, "fn") == ["a.jpg"])
        shutil.rmtree(root)  # rm -rf of the whole buckets folder
        d.run(1.0)
        gone = lines(caplog, f"buckets folder {root}")
        assert gone == [f"buckets folder {root} does not exist; waiting for it"], gone
        staged = project / "staged"  # files written while it was gone, moved into place at once
        (staged / "uploads").mkdir(parents=True)
        (staged / "uploads" / "while-gone.jpg").write_bytes(b"w")
        os.rename(staged, root)
        d.until(lambda: "while-gone.jpg" in keys(r, "fn", PUT))
        (root / "uploads" / "after.jpg").write_bytes(b"n")
        d.until(lambda: "after.jpg" in keys(r, "fn", PUT))
        d.run(0.3)
        assert watcher.observer is not None and watcher.observer.healthy()
    finally:
        watcher.stop()
    assert keys(r, "fn", PUT) == ["a.jpg", "while-gone.jpg", "after.jpg"]
    assert keys(r, "fn", DELETE) == ["a.jpg"]  # rm -rf removed it before its folder
    assert lines(caplog, "rescanning it") == [f"buckets folder {root} is watched again; rescanning it"]
    assert len(lines(caplog, f"buckets folder {root}")) == 2
    assert "Traceback" not in caplog.text and not [rec for rec in caplog.records if rec.exc_info]


def test_the_process_outlives_its_buckets_root_and_its_buckets(project: Path, redis_url: str,
                                                               r: redis.Redis) -> None:
    """``python -m sources.files``, with rm -rf of a bucket, then of the whole buckets folder."""
    root = uploads_project(project) / "buckets"
    files = FilesProcess(project, LAMBDALITE_LOG_LEVEL="INFO")
    try:
        wait_for(lambda: "watching" in files.output(), files)
        (root / "uploads" / "a.jpg").write_bytes(b"a")
        wait_for(lambda: keys(r, "fn") == ["a.jpg"], files)
        shutil.rmtree(root / "uploads")
        wait_for(lambda: keys(r, "fn", DELETE) == ["a.jpg"], files)
        (root / "uploads").mkdir()
        (root / "uploads" / "b.jpg").write_bytes(b"b")
        wait_for(lambda: "b.jpg" in keys(r, "fn", PUT), files)
        bucket_lines = [line for line in files.output().splitlines() if "bucket 'uploads': folder" in line]
        assert len(bucket_lines) == 2 and "is gone;" in bucket_lines[0] and "appeared" in bucket_lines[1]
        shutil.rmtree(root)
        wait_for(lambda: "does not exist; waiting for it" in files.output(), files)
        (root / "uploads").mkdir(parents=True)
        (root / "uploads" / "c.jpg").write_bytes(b"c")
        wait_for(lambda: "c.jpg" in keys(r, "fn", PUT), files)
        assert files.proc.poll() is None
    finally:
        files.stop()
    out = files.output()
    assert files.proc.returncode == 0, out
    assert keys(r, "fn", PUT) == ["a.jpg", "b.jpg", "c.jpg"] and keys(r, "fn", DELETE) == ["a.jpg", "b.jpg"]
    assert out.count("does not exist; waiting for it") == 1 and out.count("is watched again; rescanning it") == 1, out
    assert "Traceback" not in out and "Exception in thread" not in out, out


def wait_for(condition: Callable[[], bool], files: FilesProcess, timeout: float = 20.0) -> None:
    """Wait while the files process runs; its output on a failure."""
    wait_until(condition, timeout, alive=lambda: None if files.proc.poll() is None else files.output(),
               detail=files.output)


# -- read-only buckets ------------------------------------------------------------------------------


def test_the_files_source_writes_nothing_into_a_read_only_bucket(project: Path, r: redis.Redis,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """The files source only reads buckets: a read-only one is published like any other."""
    uploads = uploads_project(project) / "buckets" / "uploads"
    (uploads / "sub").mkdir()
    for name in ("a.jpg", "sub/b.jpg"):
        (uploads / name).write_bytes(name.encode())
        os.utime(uploads / name, (1, 1))

    def snapshot() -> dict[str, tuple[int, int, int]]:
        stats = {str(p): p.stat() for p in [uploads, *uploads.rglob("*")]}
        return {p: (st.st_mtime_ns, st.st_size, st.st_mode) for p, st in stats.items()}

    before = snapshot()
    with read_only(uploads):
        watcher = make_watcher(project, r)
        watcher.start()
        try:
            d = Driver(watcher)
            d.until(lambda: sorted(keys(r, "fn")) == ["a.jpg", "sub/b.jpg"])
            d.run(0.3)
        finally:
            watcher.stop()
    assert snapshot() == before
    assert not [rec for rec in caplog.records if rec.levelno >= logging.WARNING], caplog.text


THUMBNAIL = """
[functions.thumbnail]
handler = "HANDLER"
retries = 1
retry_backoff = 0.1
[[functions.thumbnail.triggers]]
source = "files"
bucket = "uploads"
suffix = ".jpg"
"""
# Where the tests may not mount, the read-only target bucket is this fault, injected where the
# handler writes (PIL's save), for as long as the flag file exists.
READ_ONLY_FAULT = '''
import errno, os
from pathlib import Path
from PIL import Image
from handlers import thumbnail

FLAG = Path(__file__).with_name("thumbnails-read-only")
_save = Image.Image.save

def _save_unless_read_only(self, fp, *args, **kwargs):
    if FLAG.exists() and "/thumbnails/" in str(fp):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(fp))
    return _save(self, fp, *args, **kwargs)

Image.Image.save = _save_unless_read_only
handler = thumbnail.handler
'''


def test_a_read_only_target_bucket_fails_the_invocation_then_dead_letters_it(
    project: Path, redis_url: str, r: redis.Redis,
) -> None:
    """The thumbnail handler writes into the ``thumbnails`` bucket: read-only, each attempt fails
    with one clear error, the event is retried and then dead-lettered, and no process dies. Made
    writable again, a replay of the dead letter makes the thumbnail."""
    uploads = project / "buckets" / "uploads"
    thumbs = project / "buckets" / "thumbnails"
    uploads.mkdir()
    thumbs.mkdir()
    photo = project / "photo.jpg"
    Image.new("RGB", (640, 480), (200, 30, 40)).save(photo, format="JPEG")
    started: list[Scaler | FilesProcess] = []
    try:
        with read_only(thumbs) as mounted:
            if mounted:
                handler = "handlers.thumbnail.handler"
            else:
                (project / "rofault.py").write_text(READ_ONLY_FAULT)
                (project / "thumbnails-read-only").touch()
                handler = "rofault.handler"
            (project / "lambdalite.toml").write_text(THUMBNAIL.replace("HANDLER", handler))
            # A warm sandbox's private /tmp (a mount namespace) sees a mount removed later only where
            # the machine's mounts propagate (shared, systemd's default); this machine's may not, and
            # the replay below runs in the same warm worker: so the sandboxes share the machine's mounts.
            started += [Scaler(project, LAMBDALITE_PRIVATE_TMP="0"), FilesProcess(project)]
            subprocess.run(["cp", str(photo), str(uploads / "red flower.jpg")], check=True, timeout=30)
            deadline = time.monotonic() + 30
            while not deadletter.entries(r, "thumbnail"):
                assert time.monotonic() < deadline, started[0].output()
                time.sleep(0.05)
            [entry] = deadletter.entries(r, "thumbnail")
            assert entry["attempts"] == 2 and entry["error"]["errorType"] == "OSError", entry
            assert "[Errno 30] Read-only file system" in entry["error"]["errorMessage"]
            assert "red flower.jpg" in entry["error"]["errorMessage"]
            # the worker logs the dead letter once its transaction has stored it: wait for the line
            while "dead-lettered after 2 attempt(s): OSError" not in (output := started[0].output()):
                assert time.monotonic() < deadline, output
                time.sleep(0.05)
            assert output.count("[ERROR] OSError: [Errno 30] Read-only file system") == 2, output
            assert all(p.proc.poll() is None for p in started), "no process died"
            assert list(thumbs.iterdir()) == []
        (project / "thumbnails-read-only").unlink(missing_ok=True)
        replayed = cli(project, "dlq", "replay", "thumbnail")
        assert replayed.returncode == 0, replayed.stderr
        target = thumbs / "red flower.jpg"
        deadline = time.monotonic() + 30
        while not target.exists():
            assert time.monotonic() < deadline, started[0].output()
            time.sleep(0.05)
        time.sleep(0.2)  # written under a temporary name and renamed: complete once it exists
        with Image.open(target) as thumb:
            assert thumb.size == (128, 96)
        assert deadletter.entries(r, "thumbnail") == []
    finally:
        for proc in reversed(started):
            proc.stop()
    assert "Traceback" not in started[1].output()


def test_a_buckets_folder_that_cannot_be_created_is_one_line_and_exit_1(
    project: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    uploads_project(project)
    parent = project / "mounted"
    parent.mkdir()
    with read_only(parent) as mounted:
        if mounted:
            done = subprocess.run([sys.executable, "-m", "sources.files"], cwd=project,
                                  env=env(LAMBDALITE_BUCKETS="mounted/buckets"), capture_output=True, text=True,
                                  timeout=60)
            assert done.returncode == 1, done.stderr
            assert done.stderr.strip().splitlines() == [
                "lambdalite: mounted/buckets: cannot create the buckets folder: Read-only file system"]
        else:
            def refuse(self: Path, *args: object, **kwargs: object) -> None:
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))

            monkeypatch.setattr(Path, "mkdir", refuse)
            with pytest.raises(BucketsError, match="cannot create the buckets folder: Read-only file system"):
                prepare_root(parent / "buckets")
    assert not (parent / "buckets").exists()


def test_a_root_that_cannot_be_watched_is_waited_for(project: Path, r: redis.Redis,
                                                     caplog: pytest.LogCaptureFixture,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The buckets folder can vanish between the check and the watch (or the inotify watch limit
    can be reached): one line, and the next step tries again; no thread is left behind."""
    import threading

    import sources.files.files
    from sources.files.observer import Inbox, watch

    before = set(threading.enumerate())
    with pytest.raises(FileNotFoundError):
        watch(str(project / "missing"), Inbox(), on_overflow=lambda: None)
    assert set(threading.enumerate()) == before, "a failed watch stops the threads it started"

    uploads = uploads_project(project) / "buckets" / "uploads"
    (uploads / "a.jpg").write_bytes(b"a")
    os.utime(uploads / "a.jpg", (1, 1))
    failures = [2]

    def racing_watch(*args: object, **kwargs: object) -> object:
        if failures[0]:
            failures[0] -= 1
            raise OSError(errno.ENOSPC, "inotify watch limit reached")
        return watch(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(sources.files.files, "watch", racing_watch)
    watcher = make_watcher(project, r)
    watcher.start()
    try:
        Driver(watcher).until(lambda: keys(r, "fn") == ["a.jpg"])
    finally:
        watcher.stop()
    assert lines(caplog, "cannot be watched") == [
        f"buckets folder {project / 'buckets'} cannot be watched (inotify watch limit reached); trying again"]
