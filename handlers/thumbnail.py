"""Example: a thumbnail, at most 128 px on its long side, of every image dropped in a bucket.

``buckets/uploads/KEY`` becomes ``buckets/thumbnails/KEY``. The event is an S3 event
notification; the object's local path is in ``s3.object.localPath``.

The thumbnail is written to a temporary file created new (``mkstemp``: a random name, ``O_EXCL``,
mode 0600) in the target folder and renamed into place, so a reader never sees half a thumbnail
and a link planted in the folder is never written through.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import unquote_plus

from PIL import Image

SIZE = (128, 128)
TARGET_BUCKET = "thumbnails"


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    made = []
    for record in event["Records"]:
        if not record["eventName"].startswith("ObjectCreated:"):
            continue
        source = Path(record["s3"]["object"]["localPath"])
        key = unquote_plus(record["s3"]["object"]["key"])
        # buckets/<bucket>/<key>: the target bucket is a sibling folder of the source bucket.
        buckets_root = source.parents[len(Path(key).parts)]
        target = buckets_root / TARGET_BUCKET / key
        target.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(source) as image:
            image.thumbnail(SIZE)
            _write_new(target, lambda out: image.save(out, format=image.format or "PNG"))
        made.append({"key": key, "width": image.width, "height": image.height})
    return {"thumbnails": made}


def _write_new(target: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write ``target`` through a new temporary file beside it, then rename it into place."""
    fd, partial = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            write(out)
            os.fchmod(out.fileno(), 0o666 & ~_umask())
        os.replace(partial, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
