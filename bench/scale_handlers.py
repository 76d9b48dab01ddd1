"""Handlers for bench/scale.py: each appends its start (and end) time to the file its event names."""

import json
import os
import time


def _note(path, **fields):
    with open(path, "a") as f:
        f.write(json.dumps({"pid": os.getpid(), **fields}) + "\n")


def mark(event, context):
    _note(event["log"], start=time.time(), id=context.aws_request_id)
    time.sleep(float(event.get("sleep", 0)))
    spin = float(event.get("cpu", 0))
    if spin:
        end = time.process_time() + spin
        while time.process_time() < end:
            pass
    _note(event["log"], end=time.time(), id=context.aws_request_id)


def rq_mark(log, sleep=0.0, cpu=0.0):
    """The same work as a plain RQ job function."""
    _note(log, start=time.time())
    time.sleep(sleep)
    if cpu:
        end = time.process_time() + cpu
        while time.process_time() < end:
            pass
    _note(log, end=time.time())


def noop(event, context):
    """Nothing at all: what the queue and the worker cost alone (bench/curves.py's backlog)."""
