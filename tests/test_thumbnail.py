"""The example thumbnail handler writes a new temporary file and never follows a planted link."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote_plus

from PIL import Image

from handlers import thumbnail


def _event(path: Path, key: str) -> dict[str, object]:
    return {"Records": [{"eventName": "ObjectCreated:Put",
                         "s3": {"object": {"key": quote_plus(key), "localPath": str(path)}}}]}


def test_a_link_planted_at_the_old_temporary_name_is_not_written_through(tmp_path: Path) -> None:
    uploads, thumbs = tmp_path / "buckets" / "uploads", tmp_path / "buckets" / "thumbnails"
    uploads.mkdir(parents=True)
    thumbs.mkdir()
    source = uploads / "red flower.jpg"
    Image.new("RGB", (640, 480), "red").save(source, format="JPEG")
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    planted = thumbs / ".red flower.jpg.part"  # the name the handler used to write to
    planted.symlink_to(victim)

    result = thumbnail.handler(_event(source, "red flower.jpg"), None)

    assert victim.read_bytes() == b"precious"
    assert planted.is_symlink() and os.readlink(planted) == str(victim)
    target = thumbs / "red flower.jpg"
    assert not target.is_symlink()
    with Image.open(target) as made:
        assert made.size == (128, 96) and made.format == "JPEG"
    assert result == {"thumbnails": [{"key": "red flower.jpg", "width": 128, "height": 96}]}
    assert sorted(p.name for p in thumbs.iterdir()) == [".red flower.jpg.part", "red flower.jpg"]
    assert target.stat().st_mode & 0o777 == 0o666 & ~_umask()


def test_a_failed_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    uploads, thumbs = tmp_path / "buckets" / "uploads", tmp_path / "buckets" / "thumbnails"
    uploads.mkdir(parents=True)
    thumbs.mkdir()
    (thumbs / "a.png").mkdir()  # the rename onto a folder fails
    Image.new("RGB", (300, 300), "blue").save(uploads / "a.png", format="PNG")
    try:
        thumbnail.handler(_event(uploads / "a.png", "a.png"), None)
    except OSError:
        pass
    else:
        raise AssertionError("the rename onto a folder should have failed")
    assert [p.name for p in thumbs.iterdir()] == ["a.png"]


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
