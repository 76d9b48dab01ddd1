"""The fault runs' handler: records every event it finishes, from any of the three sources.

Each finished event appends one line, ``<source>:<n> <unix time>``, to ``$CHAOS_RECORDS/<pid>.log``
in one ``write`` (O_APPEND), so a process killed at any moment leaves whole lines. A handler run
twice for one event writes two lines: the fault run counts them as duplicates.
"""

import json
import os
import time
from urllib.parse import unquote_plus

PAUSE = float(os.environ.get("CHAOS_PAUSE", "0.01"))


def keys(event):
    if "requestContext" in event:  # an API Gateway HTTP API event
        return [f"http:{json.loads(event['body'])['n']}"]
    out = []
    for record in event["Records"]:
        if "s3" in record:
            out.append(f"files:{unquote_plus(record['s3']['object']['key']).removesuffix('.txt')}")
        else:
            out.append(f"sqlite:{record['dynamodb']['Keys']['id']['N']}")
    return out


def handler(event, context):
    time.sleep(PAUSE)  # long enough for a kill to land mid-invocation now and then
    now = time.time()
    line = "".join(f"{key} {now:.6f}\n" for key in keys(event))
    folder = os.environ["CHAOS_RECORDS"]
    fd = os.open(os.path.join(folder, f"{os.getpid()}.log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
