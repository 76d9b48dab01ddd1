"""Large objects are hashed beside the files source's loop: other buckets go on, a stop is prompt."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from bucketkit import ALL, Driver, keys, make_watcher, records, write_config

from sources.files import files
from tests.waiting import wait_while_running

GB = 1 << 30


def _md5(path: Path) -> str:
    """The oracle: hashlib over the whole file, read by the test itself."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _sparse(path: Path, size: int, head: bytes = b"head") -> None:
    """A file of ``size`` bytes, mostly a hole, with a little data at both ends, written and closed."""
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(size - len(head))
        f.seek(0, os.SEEK_END)
        f.write(head[::-1])


@pytest.fixture
def two_buckets(project: Path) -> Path:
    for bucket in ("big", "small"):
        (project / "buckets" / bucket).mkdir()
    write_config(project, {"fn": [f'bucket = "big"\nevents = {ALL}', f'bucket = "small"\nevents = {ALL}']})
    return project


@pytest.fixture
def driver(two_buckets: Path, r: redis.Redis) -> Iterator[Driver]:
    watcher = make_watcher(two_buckets, r)
    watcher.start()
    watcher.step(0.05)
    try:
        yield Driver(watcher)
    finally:
        watcher.stop()


def test_a_small_file_is_published_while_a_large_one_is_hashed(
    driver: Driver, two_buckets: Path, r: redis.Redis,
) -> None:
    big = two_buckets / "buckets" / "big" / "disk.img"
    _sparse(big, 3 * GB)
    driver.until(lambda: driver.watcher.hasher.busy() == 1)
    (two_buckets / "buckets" / "small" / "note.txt").write_bytes(b"hello")
    driver.until(lambda: "note.txt" in keys(r, "fn"))
    assert keys(r, "fn") == ["note.txt"] and driver.watcher.hasher.busy() == 1  # the large one is still hashing

    driver.until(lambda: "disk.img" in keys(r, "fn"), timeout=120)
    (record,) = [rec for rec in records(r, "fn") if rec["s3"]["object"]["key"] == "disk.img"]
    assert record["s3"]["object"]["size"] == 3 * GB and record["s3"]["object"]["eTag"] == _md5(big)
    assert record["eventName"] == "ObjectCreated:Put"
    driver.run(0.3)
    assert keys(r, "fn") == ["note.txt", "disk.img"]  # once


def test_a_large_file_replaced_while_hashed_is_published_as_its_last_version(
    driver: Driver, two_buckets: Path, r: redis.Redis,
) -> None:
    big = two_buckets / "buckets" / "big" / "disk.img"
    _sparse(big, 2 * GB)
    driver.until(lambda: driver.watcher.hasher.busy() == 1)
    big.write_bytes(b"second version")
    driver.until(lambda: "disk.img" in keys(r, "fn"))
    driver.run(0.5)
    (record,) = records(r, "fn")
    assert record["s3"]["object"]["size"] == 14
    assert record["s3"]["object"]["eTag"] == hashlib.md5(b"second version", usedforsecurity=False).hexdigest()
    assert driver.watcher.hasher.busy() == 0


def test_a_large_file_removed_while_hashed_is_not_published(
    driver: Driver, two_buckets: Path, r: redis.Redis,
) -> None:
    big = two_buckets / "buckets" / "big" / "gone.img"
    _sparse(big, 2 * GB)
    driver.until(lambda: driver.watcher.hasher.busy() == 1)
    big.unlink()
    (two_buckets / "buckets" / "small" / "after").write_bytes(b"a")
    driver.until(lambda: driver.watcher.hasher.busy() == 0 and "after" in keys(r, "fn"), timeout=60)
    driver.run(0.3)
    assert keys(r, "fn") == ["after"]


def test_a_large_file_found_by_the_start_up_scan_holds_up_neither_start_nor_stop(
    two_buckets: Path, redis_url: str, r: redis.Redis,
) -> None:
    """The acceptance case as a process: 5 GB sparse files, one there at start and one dropped in
    while it runs; a file in another bucket still reaches its queue, and SIGINT ends it in 5 s."""
    _sparse(two_buckets / "buckets" / "big" / "before.img", 5 * GB)
    os.utime(two_buckets / "buckets" / "big" / "before.img", (1, 1))  # settled: the scan hashes it
    env = {**os.environ, "LAMBDALITE_REDIS_URL": redis_url, "LAMBDALITE_LOG_LEVEL": "INFO"}
    proc = subprocess.Popen([sys.executable, "-m", "sources.files"], cwd=two_buckets, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        (two_buckets / "buckets" / "small" / "first").write_bytes(b"1")
        wait_while_running(lambda: "first" in keys(r, "fn"), proc)
        _sparse(two_buckets / "buckets" / "big" / "during.img", 5 * GB)
        time.sleep(0.2)
        (two_buckets / "buckets" / "small" / "second").write_bytes(b"2")
        wait_while_running(lambda: "second" in keys(r, "fn"), proc)
        assert keys(r, "fn") == ["first", "second"]  # neither 5 GB file is hashed yet
        asked = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=5)  # honcho SIGKILLs what is left 5 s after a stop
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0 and "Traceback" not in out, out
    assert time.monotonic() - asked < 5
    assert keys(r, "fn") == ["first", "second"]


def test_objects_either_side_of_the_inline_limit_get_their_md5(
    driver: Driver, two_buckets: Path, r: redis.Redis,
) -> None:
    small = two_buckets / "buckets" / "small"
    (small / "inline").write_bytes(os.urandom(files.HASH_INLINE_MAX))
    (small / "beside").write_bytes(os.urandom(files.HASH_INLINE_MAX + 1))
    driver.until(lambda: sorted(keys(r, "fn")) == ["beside", "inline"])
    for record in records(r, "fn"):
        path = small / record["s3"]["object"]["key"]
        assert record["s3"]["object"]["eTag"] == _md5(path) and record["s3"]["object"]["size"] == path.stat().st_size

