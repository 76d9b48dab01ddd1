"""Example: a thumbnail, at most 128 px on its long side, of every image dropped in a bucket.

``buckets/uploads/KEY`` becomes ``buckets/thumbnails/KEY``. The event is an S3 event
notification; the object's local path is in ``s3.object.localPath``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
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
            partial = target.with_name(f".{target.name}.part")
            image.save(partial, format=image.format or "PNG")
        os.replace(partial, target)
        made.append({"key": key, "width": image.width, "height": image.height})
    return {"thumbnails": made}
