"""Fuzzing the files source's names: S3 key encoding, the record builder, and real files with
weird names dropped into a watched bucket (real inotify, real Redis).

S3 promises ``urllib.parse.unquote_plus(key) == the object's key``. File names are bytes; the
files source sees them through ``os.fsdecode`` (surrogate escapes for bytes that are not UTF-8),
and as S3 keys are UTF-8, such a name is never an object: it is logged once and skipped.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import unquote_plus

import pytest
import redis
from bucketkit import Driver, keys, make_watcher, records, uploads_project
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.envelope import Event
from sources.files import s3event
from sources.files.buckets import BucketRoot, is_temporary

FUZZ = settings(max_examples=300, deadline=None)
utf8_text = st.text(st.characters(blacklist_categories=("Cs",)))  # what UTF-8 can hold
KEY_CHARS = re.compile(r"[A-Za-z0-9_.~%+/-]*")


@FUZZ
@given(utf8_text | st.sampled_from(["a b", "a+b", "%41", "%", "100%+", "a//b/", " ", "+", "~!*'()", "\x00\x7f"]))
def test_keys_round_trip_as_s3_promises(key: str) -> None:
    encoded = s3event.encode_key(key)
    assert unquote_plus(encoded) == key and s3event.decode_key(encoded) == key
    assert KEY_CHARS.fullmatch(encoded), encoded  # ASCII, no spaces: safe in any JSON or URL


@FUZZ
@given(st.lists(st.binary(min_size=1, max_size=30).map(lambda b: b.replace(b"/", b"_").replace(b"\x00", b"_"))
                .filter(lambda b: b not in (b".", b"..")), min_size=2, max_size=4))
def test_a_filesystem_name_is_an_object_exactly_when_its_key_can_be_encoded(parts: list[bytes]) -> None:
    """Whatever bytes a name holds, locate() either refuses it or gives a key S3 can carry.

    (No "." or ".." parts: the watcher and the scans only see names a directory really holds.)"""
    root = BucketRoot(Path("/srv/buckets"))
    path = os.fsdecode(b"/srv/buckets/" + b"/".join(parts))
    ref = root.locate(path)
    names = [os.fsdecode(p) for p in parts]
    if any(is_temporary(n) for n in names):
        assert ref is None
        return
    try:
        b"/".join(parts).decode("utf-8")
    except UnicodeDecodeError:
        assert ref is None
        return
    assert ref is not None and ref.bucket == names[0] and ref.key == "/".join(names[1:])
    assert unquote_plus(s3event.encode_key(ref.key)) == ref.key
    assert os.fsencode(ref.path) == b"/srv/buckets/" + b"/".join(parts)


@FUZZ
@given(
    key=utf8_text.filter(bool), bucket=st.from_regex(r"[a-z0-9][a-z0-9.-]{2,20}", fullmatch=True),
    local=st.binary(min_size=1, max_size=40).map(lambda b: os.fsdecode(b"/x/" + b.replace(b"\x00", b"_"))),
    when=st.floats(0, 4_102_444_800), size=st.none() | st.integers(0, 2**63),
    name=st.sampled_from([s3event.CREATED_PUT, s3event.CREATED_COPY, s3event.REMOVED_DELETE]),
)
def test_records_for_any_name_are_storable_s3_records(key: str, bucket: str, local: str, when: float,
                                                      size: int | None, name: str) -> None:
    record = s3event.record(event_name=name, bucket=bucket, key=key, sequencer=s3event.Sequencer().next(),
                            local_path=local, configuration_id="fn", region="us-east-1", when=when,
                            size=size, etag=None if size is None else "0" * 32)
    event = Event.decode(Event("fn", s3event.notification(record), source="files").encode())
    (back,) = event.payload["Records"]
    assert back == record and unquote_plus(back["s3"]["object"]["key"]) == key
    assert os.fsencode(back["s3"]["object"]["localPath"]) == os.fsencode(local)  # a surrogate escape survives
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", back["eventTime"])


def test_sequencers_grow_as_strings() -> None:
    sequencer = s3event.Sequencer()
    seen = [sequencer.next() for _ in range(1000)]
    assert seen == sorted(seen) and len(set(seen)) == len(seen)


# -- real files with weird names, in a watched bucket -------------------------------------------------

NAME = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="/\x00"), min_size=1,
               max_size=40).filter(lambda n: n not in (".", "..") and len(n.encode()) <= 200)


def test_weird_names_in_a_watched_bucket(project: Path, r: redis.Redis, caplog: pytest.LogCaptureFixture) -> None:
    """Unicode, spaces, '+', '%', control characters and bytes that are not UTF-8, written with
    real files: every valid name is published once with a key that decodes back to it."""
    caplog.set_level(logging.WARNING)
    uploads = uploads_project(project) / "buckets" / "uploads"
    watcher = make_watcher(project, r)
    watcher.start()
    d = Driver(watcher)
    counter = [0]
    try:
        @settings(max_examples=25, deadline=None)
        @given(st.lists(NAME, min_size=1, max_size=4, unique=True),
               st.lists(st.binary(min_size=1, max_size=20).map(lambda b: b"\xff" + b.replace(b"/", b"_")
                                                               .replace(b"\x00", b"_")), max_size=2, unique=True))
        def one(names: list[str], bad: list[bytes]) -> None:
            counter[0] += 1
            folder = uploads / f"run{counter[0]}"
            folder.mkdir()
            time.sleep(0.05)  # the folder's watch is in place: each file is published by its close
            for name in names:
                (folder / name).write_bytes(name.encode())
            for raw in bad:
                with open(os.fsencode(folder) + b"/" + raw, "wb") as f:
                    f.write(raw)
            good = sorted(f"run{counter[0]}/{n}" for n in names if not is_temporary(n))
            lines = [f"not published: {(os.fsencode(folder) + b'/' + raw).decode('utf-8', 'backslashreplace')}: "
                     "the name is not valid UTF-8" for raw in bad
                     if not is_temporary(os.fsdecode(raw))]  # a temporary name ("x~") is skipped silently

            def mine() -> list[str]:
                return sorted(k for k in keys(r, "fn") if k.startswith(f"run{counter[0]}/"))

            d.until(lambda: mine() == good and all(line in caplog.text for line in lines))
            d.run(0.2)
            assert mine() == good
            for rec in records(r, "fn"):
                path = Path(rec["s3"]["object"]["localPath"])
                key = unquote_plus(rec["s3"]["object"]["key"])
                assert path == uploads / key and path.read_bytes() == key.split("/", 1)[1].encode()
            for line in lines:
                assert caplog.text.count(line) == 1

        one()
        assert watcher.observer is not None and watcher.observer.healthy()
    finally:
        watcher.stop()
    assert "Traceback" not in caplog.text and "scan failed" not in caplog.text


def test_folders_that_are_not_utf8_are_skipped_once_and_block_nothing(
    project: Path, r: redis.Redis, caplog: pytest.LogCaptureFixture,
) -> None:
    """A bucket or sub-folder whose name is not UTF-8 used to fail every step with a traceback
    (Redis cannot take its name as a key) and kept the folders after it from being scanned."""
    caplog.set_level(logging.INFO)
    root = project / "buckets"
    uploads = uploads_project(project) / "buckets" / "uploads"
    watcher = make_watcher(project, r)
    watcher.start()
    d = Driver(watcher)
    try:
        d.run(0.2)
        os.mkdir(os.fsencode(root) + b"/caf\xe9")
        os.mkdir(os.fsencode(uploads) + b"/sub\xff")
        for folder in (os.fsencode(root) + b"/caf\xe9", os.fsencode(uploads) + b"/sub\xff"):
            with open(folder + b"/x.jpg", "wb") as f:
                f.write(b"x")
        (uploads / "zz-later").mkdir()  # scanned after the bad folders, in the same step
        (uploads / "zz-later" / "y.jpg").write_bytes(b"y")
        d.until(lambda: "zz-later/y.jpg" in keys(r, "fn"))
        d.run(0.5)
    finally:
        watcher.stop()
    lines = [rec.getMessage() for rec in caplog.records if "not valid UTF-8" in rec.getMessage()]
    assert sorted(lines) == [f"not published: {root}/caf\\xe9: the name is not valid UTF-8 (S3 keys must be)",
                             f"not published: {uploads}/sub\\xff: the name is not valid UTF-8 (S3 keys must be)"]
    assert keys(r, "fn") == ["zz-later/y.jpg"]
    assert "Traceback" not in caplog.text and not [rec for rec in caplog.records if rec.exc_info]


def test_the_process_logs_a_name_that_is_not_utf8_in_one_line(project: Path, redis_url: str,
                                                              r: redis.Redis) -> None:
    uploads = uploads_project(project) / "buckets" / "uploads"
    with open(os.fsencode(uploads) + b"/caf\xe9.jpg", "wb") as f:
        f.write(b"x")
    os.utime(os.fsencode(uploads) + b"/caf\xe9.jpg", (1, 1))
    (uploads / "café.jpg").write_bytes(b"y")
    os.utime(uploads / "café.jpg", (1, 1))
    env = {**os.environ, "LAMBDALITE_REDIS_URL": redis_url, "LAMBDALITE_LOG_LEVEL": "INFO",
           "PYTHONIOENCODING": "utf-8"}
    proc = subprocess.Popen([sys.executable, "-m", "sources.files"], cwd=project, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while keys(r, "fn") != ["café.jpg"]:
            assert proc.poll() is None and time.monotonic() < deadline, keys(r, "fn")
            time.sleep(0.05)
        time.sleep(0.3)
    finally:
        proc.terminate()
        out = proc.communicate(timeout=10)[0].decode("utf-8")
    assert proc.returncode == 0, out
    bad = [line for line in out.splitlines() if "not valid UTF-8" in line]
    assert bad == [f"WARNING sources.files.buckets: not published: {uploads}/caf\\xe9.jpg: the name is not valid UTF-8 "
                   "(S3 keys must be)"], out
    assert "Traceback" not in out and "Logging error" not in out


