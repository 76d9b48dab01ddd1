"""Logging set-up for process entry points: once, to stdout, so honcho can prefix each line."""

from __future__ import annotations

import io
import logging
import sys


def configure(level: str = "INFO") -> None:
    """Send every logger's records to stdout as ``LEVEL name: message``.

    Text that has no UTF-8 form (a file name that is not UTF-8, decoded with surrogate escapes) is
    written with backslash escapes rather than making the line fail.
    """
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="backslashreplace")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("rq", "rq.worker", "rq.job", "rq.queue"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
