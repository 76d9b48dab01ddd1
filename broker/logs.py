"""Logging set-up for process entry points: once, to stdout, so honcho can prefix each line."""

from __future__ import annotations

import logging
import sys


def configure(level: str = "INFO") -> None:
    """Send every logger's records to stdout as ``LEVEL name: message``."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("rq", "rq.worker", "rq.job", "rq.queue"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
