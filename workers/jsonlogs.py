"""``log_format = "JSON"``: Lambda's JSON log lines for a function's invocations.

As in Lambda's Python runtime, records of the ``logging`` module become JSON objects (``timestamp``,
``level``, ``message``, ``logger``, ``requestId``; an exception adds ``errorType``,
``errorMessage`` and ``stackTrace``), what a handler prints stays as it is, and the runtime's
START, END and REPORT lines become ``platform.start``, ``platform.runtimeDone`` and
``platform.report`` records. The sandbox formats its records (its root logger's handlers get
:class:`JsonFormatter` as it is forked); the worker, which knows the request id, adds it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import traceback
from typing import Any

_START = re.compile(r"^START RequestId: (\S+) Version: (\S+)$")
_END = re.compile(r"^END RequestId: (\S+)$")
_FIELD = re.compile(r"^([A-Za-z ]+): ([\d.]+) (ms|MB)$")
_METRICS = {"Duration": "durationMs", "Billed Duration": "billedDurationMs", "Memory Size": "memorySizeMB",
            "Max Memory Used": "maxMemoryUsedMB", "Init Duration": "initDurationMs"}
_STATUS = {"success": "success", "timeout": "timeout"}  # any other ending is Lambda's "error"
_MARK = '{"timestamp": '  # how a record of JsonFormatter starts (json.dumps of a dict whose first key it is)


def iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + f".{int(epoch * 1000) % 1000:03d}Z"


class JsonFormatter(logging.Formatter):
    """A logging record as one JSON object on one line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"timestamp": iso(record.created), "level": record.levelname,
                               "message": record.getMessage(), "logger": record.name}
        if record.exc_info and record.exc_info[0] is not None:
            kind, error, tb = record.exc_info
            out.update(errorType=kind.__name__, errorMessage=str(error),
                       stackTrace=[line.rstrip("\n") for line in traceback.format_tb(tb)])
        return json.dumps(out, default=str)


def install_in_sandbox() -> None:
    """Have every fork of this process (its sandbox) format its logging records as JSON."""
    os.register_at_fork(after_in_child=_json_records)


def _json_records() -> None:
    for handler in logging.getLogger().handlers:
        handler.setFormatter(JsonFormatter())


class Converter:
    """Turns one invocation's lines into JSON log lines, as they come."""

    def __init__(self) -> None:
        self.request_id = ""
        self._end: str | None = None

    def platform(self, line: str) -> list[str]:
        """The JSON lines for a START, END or REPORT line (END waits for REPORT, which has the status)."""
        now = iso(time.time())
        start = _START.match(line)
        if start:
            self.request_id = start.group(1)
            return [_dump(now, "platform.start", {"requestId": start.group(1), "version": start.group(2)})]
        if _END.match(line):
            self._end = now
            return []
        if line.startswith("REPORT RequestId: "):
            parts = line.split("\t")
            request_id = parts[0].removeprefix("REPORT RequestId: ")
            metrics: dict[str, Any] = {}
            status = "success"
            for part in parts[1:]:
                field = _FIELD.match(part)
                if field and field.group(1) in _METRICS:
                    value = float(field.group(2))
                    metrics[_METRICS[field.group(1)]] = int(value) if value.is_integer() else value
                elif part.startswith("Status: "):
                    status = _STATUS.get(part.removeprefix("Status: "), "error")
            done = _dump(self._end or now, "platform.runtimeDone", {"requestId": request_id, "status": status})
            self._end = None
            return [done, _dump(now, "platform.report", {"requestId": request_id, "metrics": metrics,
                                                         "status": status})]
        return [line]

    def application(self, line: str) -> str:
        """A line of the sandbox's: a record of :class:`JsonFormatter` gets the request id."""
        if not line.startswith(_MARK):
            return line
        try:
            record = json.loads(line)
        except ValueError:
            return line
        if not isinstance(record, dict):
            return line
        record["requestId"] = self.request_id
        return json.dumps(record)


def _dump(at: str, kind: str, record: dict[str, Any]) -> str:
    return json.dumps({"time": at, "type": kind, "record": record})
