"""End to end: the files process and the real scaler and workers, handlers receiving S3 events."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

import pytest
from bucketkit import ALL, write_config
from PIL import Image

from tests.stack import FilesProcess, Scaler
from tests.waiting import wait_until

RECORDER = '''
import json, os

def handler(event, context):
    with open(os.environ["RECORD_TO"], "a") as out:
        out.write(json.dumps(event) + "\\n")
    return {"records": len(event["Records"])}
'''


@pytest.fixture
def stack(project: Path, redis_url: str) -> Iterator[Callable[..., None]]:
    """Starts the files process and the scaler in ``project`` (after the test has set it up)."""
    started: list[Any] = []

    def start(**settings: str) -> None:
        started.append(Scaler(project, **settings))
        started.append(FilesProcess(project, **settings))

    yield start
    for proc in reversed(started):
        proc.stop()


def _until(condition: Callable[[], bool], what: str, project: Path, timeout: float = 30.0) -> None:
    """Wait for ``what``; a timeout shows the project's logs."""
    wait_until(condition, timeout, what,
               detail=lambda: "logs:\n" + "\n".join(p.read_text() for p in sorted(project.glob("*.log"))))


def test_cp_of_a_jpeg_makes_its_thumbnail(project: Path, stack: Callable[..., None]) -> None:
    (project / "buckets" / "uploads").mkdir()
    (project / "buckets" / "thumbnails").mkdir()
    shutil.copy(Path(__file__).resolve().parent.parent / "lambdalite.toml", project / "lambdalite.toml")
    photo = project / "photo.jpg"
    Image.new("RGB", (640, 480), (200, 30, 40)).save(photo, format="JPEG")
    stack()
    target = project / "buckets" / "thumbnails" / "red flower.jpg"
    subprocess.run(["cp", str(photo), str(project / "buckets" / "uploads" / "red flower.jpg")], check=True)
    _until(target.exists, "the thumbnail", project)
    with Image.open(target) as thumb:
        assert thumb.size == (128, 96)


def test_rsync_of_a_folder_gives_each_handler_one_event_per_file(
    project: Path, stack: Callable[..., None], tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (project / "recorder.py").write_text(RECORDER)
    record_to = project / "received.jsonl"
    write_config(project, {"fn": [f'bucket = "uploads"\nevents = {ALL}']})
    text = (project / "lambdalite.toml").read_text().replace("handlers.echo.handler", "recorder.handler")
    (project / "lambdalite.toml").write_text(text)
    uploads = project / "buckets" / "uploads"
    uploads.mkdir()
    src = tmp_path_factory.mktemp("album")
    names = ["a.jpg", "b c.jpg", "d+e.jpg", "sub/f.jpg"]
    for name in names:
        (src / name).parent.mkdir(exist_ok=True)
        (src / name).write_bytes(name.encode() * 100)
    monkeypatch.setenv("RECORD_TO", str(record_to))
    stack()
    if True:
        rsync = shutil.which("rsync")
        if rsync:
            subprocess.run([rsync, "-a", f"{src}/", f"{uploads}/album/"], check=True, timeout=60)
        else:  # what rsync does: each file written as .NAME.XXXXXX beside it, then renamed
            for name in names:
                dest = uploads / "album" / name
                dest.parent.mkdir(parents=True, exist_ok=True)
                temp = dest.parent / f".{dest.name}.Qw3rTy"
                temp.write_bytes((src / name).read_bytes())
                os.rename(temp, dest)

        def received() -> list[str]:
            if not record_to.exists():
                return []
            lines = record_to.read_text().splitlines()
            return [unquote_plus(json.loads(line)["Records"][0]["s3"]["object"]["key"]) for line in lines]

        _until(lambda: len(received()) >= len(names), "every file's invocation", project)
        (uploads / "zz.jpg").write_bytes(b"z")  # handled after everything before it was published
        _until(lambda: "zz.jpg" in received(), "the last invocation", project)
        assert sorted(received()) == sorted([f"album/{n}" for n in names] + ["zz.jpg"])
