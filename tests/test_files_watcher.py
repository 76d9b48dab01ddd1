"""The bucket watcher driven in-process against real files, real inotify and real Redis."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

import pytest
import redis
from bucketkit import ALL, Driver, keys, make_watcher, records, uploads_project, write_config
from watchdog.observers.inotify_c import InotifyConstants, InotifyEvent, WatchDescriptor

from broker.registry import load_registry
from sources.files.buckets import BucketRoot, NotAnObject, Unsettled, read_object
from sources.files.manifest import Manifest


@pytest.fixture
def bucket_project(project: Path) -> Path:
    return uploads_project(project)


@pytest.fixture
def driver(bucket_project: Path, r: redis.Redis) -> Iterator[Driver]:
    """A started watcher over ``bucket_project``'s buckets, stopped after the test."""
    watcher = make_watcher(bucket_project, r)
    watcher.start()
    watcher.step(0.05)
    try:
        yield Driver(watcher)
    finally:
        watcher.stop()

PUT, COPY, DELETE = "ObjectCreated:Put", "ObjectCreated:Copy", "ObjectRemoved:Delete"


def sentinel(d: Driver, r: redis.Redis, uploads: Path, name: str = "zz-sentinel") -> None:
    """Write one more file and wait for its event: everything before it has been handled."""
    (uploads / name).write_bytes(b"s")
    d.until(lambda: name in keys(r, "fn"))


def test_cp_of_a_real_file_gives_one_put_with_size_and_md5(
    driver: Driver, r: redis.Redis, bucket_project: Path, tmp_path_factory: pytest.TempPathFactory,
) -> None:
    src = tmp_path_factory.mktemp("src") / "photo.jpg"
    src.write_bytes(os.urandom(300_000))
    dest = bucket_project / "buckets" / "uploads" / "red flower.jpg"
    subprocess.run(["cp", str(src), str(dest)], check=True, timeout=30)
    driver.until(lambda: len(records(r, "fn")) == 1)
    sentinel(driver, r, dest.parent)
    (rec, _) = records(r, "fn")
    assert rec["eventName"] == PUT
    obj = rec["s3"]["object"]
    assert obj["key"] == "red+flower.jpg"
    assert obj["size"] == 300_000
    assert obj["eTag"] == hashlib.md5(src.read_bytes()).hexdigest()
    assert obj["localPath"] == str(dest)
    assert rec["s3"]["bucket"]["name"] == "uploads" and rec["s3"]["configurationId"] == "fn"


def test_a_close_that_changed_nothing_publishes_nothing_again(
    driver: Driver, r: redis.Redis, bucket_project: Path,
) -> None:
    uploads = bucket_project / "buckets" / "uploads"
    (uploads / "a.jpg").write_bytes(b"a")
    driver.until(lambda: keys(r, "fn") == ["a.jpg"])
    with (uploads / "a.jpg").open("ab"):
        pass  # opened for writing and closed (IN_CLOSE_WRITE), the same version: published already
    sentinel(driver, r, uploads)
    assert keys(r, "fn") == ["a.jpg", "zz-sentinel"]
    assert Manifest(r).get("uploads", "a.jpg") is not None


def test_slow_writer_gives_one_event_after_the_last_byte(
    driver: Driver, r: redis.Redis, bucket_project: Path,
) -> None:
    path = bucket_project / "buckets" / "uploads" / "slow.bin"
    with path.open("wb") as f:
        for _ in range(5):
            f.write(b"x" * 1000)
            f.flush()
            driver.run(0.15)  # the watcher sees every modification while the file is open
        assert records(r, "fn") == []
    sentinel(driver, r, path.parent)
    (rec, _) = records(r, "fn")
    assert rec["s3"]["object"]["key"] == "slow.bin" and rec["s3"]["object"]["size"] == 5000


def test_nested_keys_with_spaces_plus_and_non_ascii(
    driver: Driver, r: redis.Redis, bucket_project: Path,
) -> None:
    uploads = bucket_project / "buckets" / "uploads"
    names = ["a/b/c.jpg", "dir with space/x y.png", "1+1=2.txt", "été/naïve café.jpg"]
    for name in names:
        (uploads / name).parent.mkdir(parents=True, exist_ok=True)
        (uploads / name).write_bytes(name.encode())
    driver.until(lambda: sorted(keys(r, "fn")) == sorted(names))
    for rec in records(r, "fn"):
        key = unquote_plus(rec["s3"]["object"]["key"])
        assert rec["s3"]["object"]["localPath"] == str(uploads / key)
        assert Path(rec["s3"]["object"]["localPath"]).read_bytes() == key.encode()


def _rsync_like(src: Path, dest: Path) -> None:
    """What rsync does for each file: write ``.NAME.XXXXXX`` next to it, then rename it into place."""
    for path in sorted(src.rglob("*")):
        target = dest / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        temp = target.parent / f".{target.name}.Xy12Zq"
        with temp.open("wb") as f:
            data = path.read_bytes()
            f.write(data[: len(data) // 2])
            f.flush()
            f.write(data[len(data) // 2 :])
        os.rename(temp, target)


def _folder(tmp: Path) -> Path:
    src = tmp / "album"
    (src / "2024" / "june").mkdir(parents=True)
    for i, name in enumerate(["a.jpg", "b c.jpg", "2024/d.jpg", "2024/june/e+f.jpg"]):
        (src / name).write_bytes(bytes([i]) * (1000 + i))
    return src


EXPECTED = sorted(["album/a.jpg", "album/b c.jpg", "album/2024/d.jpg", "album/2024/june/e+f.jpg"])


def test_rsync_reproduction_gives_one_event_per_file_and_none_for_temp_names(
    driver: Driver, r: redis.Redis, bucket_project: Path, tmp_path_factory: pytest.TempPathFactory,
) -> None:
    uploads = bucket_project / "buckets" / "uploads"
    _rsync_like(_folder(tmp_path_factory.mktemp("src")), uploads / "album")
    driver.until(lambda: len(records(r, "fn")) >= 4)
    sentinel(driver, r, uploads)
    assert sorted(keys(r, "fn"))[:-1] == EXPECTED and keys(r, "fn", PUT) == keys(r, "fn")
    assert not [k for k in keys(r, "fn") if "Xy12Zq" in k]


def test_real_rsync_when_installed(
    driver: Driver, r: redis.Redis, bucket_project: Path, tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Real rsync where it is installed; otherwise the same transfer reproduced in Python."""
    uploads = bucket_project / "buckets" / "uploads"
    src = _folder(tmp_path_factory.mktemp("src"))
    rsync = shutil.which("rsync")
    if rsync:
        subprocess.run([rsync, "-a", str(src), str(uploads) + "/"], check=True, timeout=60)
    else:
        _rsync_like(src, uploads / "album")
    driver.until(lambda: len(records(r, "fn")) >= 4)
    sentinel(driver, r, uploads)
    assert sorted(keys(r, "fn"))[:-1] == EXPECTED


@pytest.mark.parametrize("name", ["x.part", "x.tmp", "x~", "x.crdownload", ".x", ".cache/y.jpg"])
def test_temp_names_never_trigger(driver: Driver, r: redis.Redis, bucket_project: Path, name: str) -> None:
    uploads = bucket_project / "buckets" / "uploads"
    (uploads / name).parent.mkdir(exist_ok=True)
    (uploads / name).write_bytes(b"partial")
    sentinel(driver, r, uploads)
    assert keys(r, "fn") == ["zz-sentinel"]


def test_download_finished_by_rename_is_one_put(
    driver: Driver, r: redis.Redis, bucket_project: Path,
) -> None:
    uploads = bucket_project / "buckets" / "uploads"
    (uploads / "movie.mp4.crdownload").write_bytes(b"m" * 5000)
    os.rename(uploads / "movie.mp4.crdownload", uploads / "movie.mp4")
    driver.until(lambda: keys(r, "fn") == ["movie.mp4"])
    sentinel(driver, r, uploads)
    assert keys(r, "fn", PUT) == ["movie.mp4", "zz-sentinel"]


def test_removal_and_rename_of_a_published_object(
    driver: Driver, r: redis.Redis, bucket_project: Path,
) -> None:
    uploads = bucket_project / "buckets" / "uploads"
    (uploads / "old.jpg").write_bytes(b"o")
    (uploads / "gone.jpg").write_bytes(b"g")
    driver.until(lambda: len(records(r, "fn")) == 2)
    os.rename(uploads / "old.jpg", uploads / "new.jpg")
    (uploads / "gone.jpg").unlink()
    driver.until(lambda: len(records(r, "fn")) == 5)
    assert keys(r, "fn", COPY) == ["new.jpg"]
    assert sorted(keys(r, "fn", DELETE)) == ["gone.jpg", "old.jpg"]
    removed = [rec for rec in records(r, "fn") if rec["eventName"] == DELETE]
    assert all("size" not in rec["s3"]["object"] and "eTag" not in rec["s3"]["object"] for rec in removed)
    seq = {(rec["eventName"], rec["s3"]["object"]["key"]): rec["s3"]["object"]["sequencer"]
           for rec in records(r, "fn")}
    assert seq[(DELETE, "old.jpg")] > seq[(PUT, "old.jpg")]
    assert dict(Manifest(r).entries("uploads")).keys() == {"new.jpg"}


def test_a_function_with_several_matching_triggers_gets_one_event(project: Path, r: redis.Redis) -> None:
    (project / "buckets" / "uploads").mkdir()
    write_config(project, {
        "fn": ['bucket = "uploads"\nsuffix = ".jpg"', 'bucket = "uploads"\nprefix = "cats/"',
               'bucket = "uploads"\nevents = ["s3:ObjectCreated:Put"]'],
        "other": ['bucket = "uploads"\nsuffix = ".png"'],
    })
    watcher = make_watcher(project, r)
    watcher.start()
    try:
        d = Driver(watcher)
        (project / "buckets" / "uploads" / "cats").mkdir()
        (project / "buckets" / "uploads" / "cats" / "tom.jpg").write_bytes(b"t")
        (project / "buckets" / "uploads" / "a.png").write_bytes(b"p")
        d.until(lambda: keys(r, "other") == ["a.png"] and "cats/tom.jpg" in keys(r, "fn"))
        d.run(0.3)
        assert sorted(keys(r, "fn")) == ["a.png", "cats/tom.jpg"]
        assert keys(r, "other") == ["a.png"]
    finally:
        watcher.stop()


def test_a_symlink_leading_outside_is_never_followed_or_published(
    driver: Driver, r: redis.Redis, bucket_project: Path, tmp_path_factory: pytest.TempPathFactory,
) -> None:
    outside = tmp_path_factory.mktemp("secret")
    (outside / "passwd").write_bytes(b"secret")
    (outside / "dir").mkdir()
    (outside / "dir" / "inner.jpg").write_bytes(b"secret")
    uploads = bucket_project / "buckets" / "uploads"
    os.symlink(outside / "passwd", uploads / "link.jpg")
    os.symlink(outside / "dir", uploads / "linkdir")
    os.symlink(outside, bucket_project / "buckets" / "linkbucket")
    (uploads / ".staged").symlink_to(outside / "passwd")
    os.rename(uploads / ".staged", uploads / "renamed-link.jpg")
    (uploads / "inside.jpg").write_bytes(b"i")
    os.symlink(uploads / "inside.jpg", uploads / "inside-link.jpg")
    sentinel(driver, r, uploads)
    assert sorted(keys(r, "fn")) == ["inside.jpg", "zz-sentinel"]
    # a rescan (as after a restart) does not follow them either
    watcher = make_watcher(bucket_project, r)
    watcher.start()
    try:
        Driver(watcher).run(0.3)
    finally:
        watcher.stop()
    assert sorted(keys(r, "fn")) == ["inside.jpg", "zz-sentinel"]
    assert all("secret" not in rec["s3"]["object"]["localPath"] for rec in records(r, "fn"))


def test_an_object_whose_folder_became_a_link_outside_is_refused(
    bucket_project: Path, tmp_path_factory: pytest.TempPathFactory,
) -> None:
    outside = tmp_path_factory.mktemp("secret")
    (outside / "inner.jpg").write_bytes(b"secret")
    uploads = bucket_project / "buckets" / "uploads"
    (uploads / "sub").mkdir()
    (uploads / "sub" / "inner.jpg").write_bytes(b"mine")
    root = BucketRoot(bucket_project / "buckets")
    ref = root.locate(str(uploads / "sub" / "inner.jpg"))
    assert ref is not None and read_object(root, ref).size == 4
    shutil.rmtree(uploads / "sub")
    os.symlink(outside, uploads / "sub")  # as if swapped between the event and the read
    with pytest.raises(NotAnObject, match="leads outside"):
        read_object(root, ref)
    os.unlink(uploads / "sub")
    os.symlink(uploads / "other", uploads / "sub")  # a link inside the root is followed for folders
    (uploads / "other").mkdir()
    (uploads / "other" / "inner.jpg").write_bytes(b"other")
    assert read_object(root, ref).size == 5
    os.unlink(uploads / "sub")
    with pytest.raises(Unsettled):
        read_object(root, ref)


def test_a_bad_file_logs_and_the_watcher_carries_on(
    driver: Driver, r: redis.Redis, bucket_project: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    # root reads any file whatever its mode; for root the bad file is a FIFO instead
    bad_kind = "fifo" if os.geteuid() == 0 else "mode"
    uploads = bucket_project / "buckets" / "uploads"
    bad = uploads / "bad.jpg"
    if bad_kind == "mode":
        bad.write_bytes(b"b")
        bad.chmod(0)
    else:
        os.mkfifo(bad)
        # a writer that closes makes the watcher see a close-write on a FIFO
        fd = os.open(bad, os.O_RDWR)
        os.write(fd, b"x")
        os.close(fd)
    (uploads / "vanishing.jpg").write_bytes(b"v")
    (uploads / "vanishing.jpg").unlink()
    sentinel(driver, r, uploads)
    assert keys(r, "fn") == ["zz-sentinel"]
    assert driver.watcher.observer is not None and driver.watcher.observer.healthy()
    assert "bad.jpg" in caplog.text


def test_an_unexpected_error_costs_one_event_not_the_watcher(
    driver: Driver, r: redis.Redis, bucket_project: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import sources.files.files

    real = sources.files.files.read_object

    def flaky(root: Any, ref: Any) -> Any:
        if ref.key == "boom.jpg":
            raise RuntimeError("disk on fire")
        return real(root, ref)

    monkeypatch.setattr(sources.files.files, "read_object", flaky)
    uploads = bucket_project / "buckets" / "uploads"
    (uploads / "boom.jpg").write_bytes(b"b")
    sentinel(driver, r, uploads)
    assert keys(r, "fn") == ["zz-sentinel"] and "disk on fire" in caplog.text


def test_a_bucket_created_later_and_one_that_vanishes(
    driver: Driver, r: redis.Redis, bucket_project: Path,
) -> None:
    write_config(bucket_project, {"fn": [f'bucket = "late"\nevents = {ALL}']})
    driver.watcher.stop()
    watcher = make_watcher(bucket_project, r, load_registry(bucket_project / "lambdalite.toml"))
    watcher.start()
    d = Driver(watcher)
    try:
        late = bucket_project / "buckets" / "late"
        late.mkdir()
        (late / "one.jpg").write_bytes(b"1")
        d.until(lambda: keys(r, "fn") == ["one.jpg"])
        shutil.rmtree(late)
        d.until(lambda: keys(r, "fn", DELETE) == ["one.jpg"])
        staged = bucket_project / "staging"
        (staged / "sub").mkdir(parents=True)
        (staged / "sub" / "two.jpg").write_bytes(b"2")
        os.rename(staged, late)  # a whole bucket moved in at once
        d.until(lambda: keys(r, "fn", PUT) == ["one.jpg", "sub/two.jpg"])
    finally:
        watcher.stop()


def test_files_dropped_while_down_are_published_once_then_never_again(
    bucket_project: Path, r: redis.Redis,
) -> None:
    uploads = bucket_project / "buckets" / "uploads"
    (uploads / "before.jpg").write_bytes(b"b")
    (uploads / "deep" / "er").mkdir(parents=True)
    (uploads / "deep" / "er" / "x.jpg").write_bytes(b"x")
    (uploads / "skip.part").write_bytes(b"p")
    for run in range(3):
        watcher = make_watcher(bucket_project, r)
        watcher.start()
        try:
            d = Driver(watcher)
            d.until(lambda: len(records(r, "fn")) >= 2)
            d.run(0.3)
        finally:
            watcher.stop()
        assert sorted(keys(r, "fn")) == ["before.jpg", "deep/er/x.jpg"], f"start {run}"
    (uploads / "before.jpg").unlink()
    (uploads / "deep" / "er" / "x.jpg").write_bytes(b"changed")
    for _ in range(2):
        watcher = make_watcher(bucket_project, r)
        watcher.start()
        try:
            d = Driver(watcher)
            d.until(lambda: len(records(r, "fn")) >= 4)
            d.run(0.3)
        finally:
            watcher.stop()
        assert keys(r, "fn", DELETE) == ["before.jpg"]
        assert sorted(keys(r, "fn", PUT)) == ["before.jpg", "deep/er/x.jpg", "deep/er/x.jpg"]
    os.utime(uploads / "deep" / "er" / "x.jpg", ns=(1, 1))  # touched, content unchanged: no event
    watcher = make_watcher(bucket_project, r)
    watcher.start()
    try:
        Driver(watcher).run(0.5)
    finally:
        watcher.stop()
    assert len(records(r, "fn")) == 4


def test_inotify_overflow_makes_it_rescan(
    driver: Driver, r: redis.Redis, bucket_project: Path,
) -> None:
    uploads = bucket_project / "buckets" / "uploads"
    (uploads / "seen.jpg").write_bytes(b"s")
    driver.until(lambda: keys(r, "fn") == ["seen.jpg"])
    observer = driver.watcher.observer
    assert observer is not None
    # the events of these files are lost, as in an overflow
    (uploads / "lost.jpg").write_bytes(b"l")
    (uploads / "seen.jpg").unlink()
    time.sleep(0.5)
    observer.collect(0)  # read from inotify, then dropped
    while not driver.watcher.inbox.events.empty():
        driver.watcher.inbox.events.get()
    driver.run(0.3)
    assert keys(r, "fn") == ["seen.jpg"]
    # the kernel's IN_Q_OVERFLOW (wd -1), through watchdog's own dispatch
    overflow = InotifyEvent(WatchDescriptor(-1), InotifyConstants.IN_Q_OVERFLOW, 0, b"")
    observer.inotify_fd.handle_event(overflow)
    driver.until(lambda: len(records(r, "fn")) == 3)
    assert keys(r, "fn", PUT) == ["seen.jpg", "lost.jpg"] and keys(r, "fn", DELETE) == ["seen.jpg"]


def test_a_dead_observer_is_restarted_and_the_gap_rescanned(
    driver: Driver, r: redis.Redis, bucket_project: Path,
) -> None:
    observer = driver.watcher.observer
    assert observer is not None
    observer.stop()
    observer.join(5)
    assert not observer.healthy()
    (bucket_project / "buckets" / "uploads" / "during.jpg").write_bytes(b"d")
    driver.until(lambda: keys(r, "fn") == ["during.jpg"])
    assert driver.watcher.observer is not observer and driver.watcher.observer is not None
    assert driver.watcher.observer.healthy()
    sentinel(driver, r, bucket_project / "buckets" / "uploads")


def test_a_buckets_root_that_vanishes_and_returns(
    driver: Driver, r: redis.Redis, bucket_project: Path,
) -> None:
    root = bucket_project / "buckets"
    (root / "uploads" / "a.jpg").write_bytes(b"a")
    driver.until(lambda: keys(r, "fn") == ["a.jpg"])
    moved = bucket_project / "elsewhere"
    os.rename(root, moved)
    driver.run(0.3)
    os.rename(moved, root)
    (root / "uploads" / "b.jpg").write_bytes(b"b")
    driver.until(lambda: "b.jpg" in keys(r, "fn"))
    assert sorted(keys(r, "fn")) == ["a.jpg", "b.jpg"]


def test_a_writer_in_a_new_folder_is_published_after_its_close(
    driver: Driver, r: redis.Redis, bucket_project: Path,
) -> None:
    folder = bucket_project / "buckets" / "uploads" / "new"
    folder.mkdir()
    done = threading.Event()

    def write() -> None:
        with (folder / "big.bin").open("wb") as f:
            for _ in range(10):
                f.write(b"z" * 10_000)
                f.flush()
                time.sleep(0.05)
        done.set()

    time.sleep(0.2)  # the folder's watch is in place; the folder scan then sees an open file
    writer = threading.Thread(target=write)
    writer.start()
    try:
        driver.until(done.is_set)
    finally:
        writer.join(10)
    sentinel(driver, r, bucket_project / "buckets" / "uploads")
    recs = [rec for rec in records(r, "fn") if rec["s3"]["object"]["key"] == "new/big.bin"]
    assert [rec["s3"]["object"]["size"] for rec in recs] == [100_000]


def test_an_error_reading_inotify_restarts_the_watches_and_loses_nothing(
    driver: Driver, r: redis.Redis, bucket_project: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    observer = driver.watcher.observer
    assert observer is not None
    uploads = bucket_project / "buckets" / "uploads"

    real = observer.inotify_fd.read_events

    def broken(**kwargs: Any) -> Any:
        real(**kwargs)  # the events are read, then lost with the error
        raise RuntimeError("inotify buffer garbled")

    monkeypatch.setattr(observer.inotify_fd, "read_events", broken)
    (uploads / "during.jpg").write_bytes(b"d")
    driver.until(lambda: keys(r, "fn") == ["during.jpg"])  # the rescan after the restart publishes it
    assert driver.watcher.observer is not observer and driver.watcher.observer is not None
    assert driver.watcher.observer.healthy() and not observer.healthy()
    assert "inotify buffer garbled" in caplog.text
    sentinel(driver, r, uploads)
    assert keys(r, "fn") == ["during.jpg", "zz-sentinel"]
