"""The S3 event record, key encoding, trigger matching and which paths are objects."""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import unquote_plus

import pytest
from bucketkit import write_config
from hypothesis import given
from hypothesis import strategies as st

from broker.errors import ConfigError
from broker.registry import load_registry
from sources.files import s3event
from sources.files.bucket_triggers import BucketTriggers
from sources.files.buckets import BucketRoot, is_temporary


@pytest.mark.parametrize(
    ("key", "encoded"),
    [
        ("red flower.jpg", "red+flower.jpg"),
        ("a/b/c.jpg", "a/b/c.jpg"),
        ("1+1=2.txt", "1%2B1%3D2.txt"),
        ("café/été.png", "caf%C3%A9/%C3%A9t%C3%A9.png"),
        ("100%.txt", "100%25.txt"),
    ],
)
def test_keys_are_url_encoded_as_s3_does(key: str, encoded: str) -> None:
    assert s3event.encode_key(key) == encoded
    assert unquote_plus(encoded) == key


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1))
def test_unquote_plus_gives_any_key_back(key: str) -> None:
    assert unquote_plus(s3event.encode_key(key)) == key == s3event.decode_key(s3event.encode_key(key))


def test_created_record_has_the_shape_s3_sends() -> None:
    rec = s3event.record(
        event_name=s3event.CREATED_PUT, bucket="uploads", key="red flower.jpg", sequencer="0A",
        local_path="/srv/buckets/uploads/red flower.jpg", configuration_id="thumbnail", region="eu-west-1",
        when=1_700_000_000.1234, principal="alice", size=12, etag="d41d8cd98f00b204e9800998ecf8427e",
    )
    assert rec["eventVersion"] == "2.1" and rec["eventSource"] == "aws:s3"
    assert rec["awsRegion"] == "eu-west-1"
    assert rec["eventTime"] == "2023-11-14T22:13:20.123Z"
    assert rec["eventName"] == "ObjectCreated:Put"
    assert rec["userIdentity"] == {"principalId": "alice"}
    assert rec["requestParameters"] == {"sourceIPAddress": "127.0.0.1"}
    assert re.fullmatch(r"[0-9A-F]{16}", rec["responseElements"]["x-amz-request-id"])
    assert rec["responseElements"]["x-amz-id-2"]
    s3 = rec["s3"]
    assert s3["s3SchemaVersion"] == "1.0" and s3["configurationId"] == "thumbnail"
    assert s3["bucket"] == {"name": "uploads", "ownerIdentity": {"principalId": "lambdalite"},
                            "arn": "arn:aws:s3:::uploads"}
    assert s3["object"] == {"key": "red+flower.jpg", "size": 12, "eTag": "d41d8cd98f00b204e9800998ecf8427e",
                            "sequencer": "0A", "localPath": "/srv/buckets/uploads/red flower.jpg"}
    assert s3event.notification(rec) == {"Records": [rec]}


def test_removed_record_has_no_size_or_etag() -> None:
    rec = s3event.record(
        event_name=s3event.REMOVED_DELETE, bucket="b", key="k", sequencer="0B", local_path="/x/b/k",
        configuration_id="f", region="us-east-1", when=0.0,
    )
    assert rec["eventName"] == "ObjectRemoved:Delete"
    assert set(rec["s3"]["object"]) == {"key", "sequencer", "localPath"}
    assert rec["eventTime"] == "1970-01-01T00:00:00.000Z"


def test_sequencer_grows_as_hex_and_as_string() -> None:
    seq = s3event.Sequencer()
    values = [seq.next() for _ in range(1000)]
    assert all(re.fullmatch(r"[0-9A-F]{18}", v) for v in values)
    assert values == sorted(values) and len(set(values)) == len(values)
    assert [int(v, 16) for v in values] == sorted(int(v, 16) for v in values)


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        ("s3:ObjectCreated:*", "ObjectCreated:Put", True),
        ("s3:ObjectCreated:*", "ObjectCreated:Copy", True),
        ("s3:ObjectCreated:*", "ObjectRemoved:Delete", False),
        ("s3:ObjectRemoved:*", "ObjectRemoved:Delete", True),
        ("s3:ObjectCreated:Put", "ObjectCreated:Put", True),
        ("s3:ObjectCreated:Put", "ObjectCreated:Copy", False),
        ("s3:ObjectRemoved:Delete", "ObjectCreated:Put", False),
    ],
)
def test_event_type_wildcards(pattern: str, name: str, expected: bool) -> None:
    assert s3event.event_matches(pattern, name) is expected


def test_triggers_filter_by_bucket_event_prefix_suffix(project: Path) -> None:
    path = write_config(project, {
        "thumb": ['bucket = "uploads"\nsuffix = ".jpg"', 'bucket = "uploads"\nsuffix = ".png"'],
        "raw": ['bucket = "uploads"\nprefix = "raw/"\nevents = ["s3:ObjectCreated:Put"]'],
        "gone": ['bucket = "uploads"\nevents = ["s3:ObjectRemoved:*"]'],
        "twice": ['bucket = "uploads"\nsuffix = ".jpg"', 'bucket = "uploads"\nprefix = "a/"'],
    })
    t = BucketTriggers(load_registry(path))
    assert t.functions("uploads", "a/x.jpg", "ObjectCreated:Put") == ["thumb", "twice"]
    assert t.functions("uploads", "x.png", "ObjectCreated:Copy") == ["thumb"]
    assert t.functions("uploads", "raw/x.jpg", "ObjectCreated:Put") == ["thumb", "raw", "twice"]
    assert t.functions("uploads", "raw/x.jpg", "ObjectCreated:Copy") == ["thumb", "twice"]
    assert t.functions("uploads", "x.jpg", "ObjectRemoved:Delete") == ["gone"]
    assert t.functions("other", "x.jpg", "ObjectCreated:Put") == []
    assert t.functions("uploads", "x.gif", "ObjectCreated:Put") == []
    assert t.buckets == {"uploads"}


@pytest.mark.parametrize("events", ['["s3:ObjectCreated"]', '["ObjectCreated:*"]', "[]", '["s3:*"]'])
def test_unknown_event_type_is_a_config_error(project: Path, events: str) -> None:
    path = write_config(project, {"f": [f'bucket = "b"\nevents = {events}']})
    with pytest.raises(ConfigError, match=r"function 'f': triggers\[0\]\.events"):
        load_registry(path)


@pytest.mark.parametrize(
    "name",
    [".photo.jpg.Ab12Cd", "photo.jpg.part", "photo.tmp", "photo.jpg~", "photo.jpg.crdownload", ".gitkeep"],
)
def test_temporary_names(name: str) -> None:
    assert is_temporary(name)


def test_a_walk_finds_exactly_the_objects_that_locate_accepts(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """The walk decides a folder's part of a path once and each file's name alone: the same objects,
    and the same refusals, as :meth:`BucketRoot.locate` of every file below the folder."""
    not_utf8 = os.fsdecode(b"bad\xff")
    names = ["a.jpg", ".hidden", "x.tmp", "plain", not_utf8, "sp ace", "é.txt", "photo.jpg.part"]
    folders = ["", "s1", "s1/s2", ".cache", "s3.part", "é", not_utf8 + "dir", not_utf8 + "dir/inner"]
    for bucket in ("b1", "b2"):
        for folder in folders:
            path = tmp_path / bucket / folder if folder else tmp_path / bucket
            os.makedirs(path, exist_ok=True)
            for name in names:
                (path / name).write_bytes(b"x")
    (tmp_path / "loose").write_bytes(b"x")
    root = BucketRoot(tmp_path)
    for folder in (str(tmp_path), root.folder("b1"), root.folder("b2", "s1"), root.folder("b1", "é")):
        walked = sorted((ref.bucket, ref.key, ref.path) for ref in root.walk(folder))
        located = sorted((ref.bucket, ref.key, ref.path) for dirpath, _, files in os.walk(folder)
                         for name in files if (ref := root.locate(os.path.join(dirpath, name))) is not None)
        assert walked == located and walked, folder
    keys = {ref.key for ref in root.walk(root.folder("b1"))}
    assert {"a.jpg", "s1/s2/é.txt", "é/sp ace"} <= keys
    assert not any(k.endswith(".tmp") or "/." in k or k.startswith(".") or "dir/" in k for k in keys)
    assert "not valid UTF-8" in caplog.text


def test_locate_maps_paths_to_bucket_and_key(tmp_path: Path) -> None:
    root = BucketRoot(tmp_path)
    ref = root.locate(str(tmp_path / "uploads" / "a" / "b c" / "d+é.jpg"))
    assert ref is not None and (ref.bucket, ref.key) == ("uploads", "a/b c/d+é.jpg")
    assert ref.path == str(tmp_path / "uploads" / "a" / "b c" / "d+é.jpg")
    assert root.locate(str(tmp_path / "uploads")) is None  # a bucket is not an object
    assert root.locate(str(tmp_path / "loose.jpg")) is None  # a file in the root is in no bucket
    assert root.locate(str(tmp_path.parent / "elsewhere.jpg")) is None
    assert root.locate(str(tmp_path / "uploads" / ".cache" / "x.jpg")) is None
    assert root.locate(str(tmp_path / ".hidden" / "x.jpg")) is None
    assert root.locate(str(tmp_path / "uploads" / "photo.jpg")) is not None
    not_utf8 = os.fsdecode(b"\xff.jpg")
    assert root.locate(str(tmp_path / "uploads" / not_utf8)) is None  # keys must be UTF-8
