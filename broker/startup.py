"""The start every long-running process of a stack shares (the scaler and the three sources).

In this order: the exact rq and watchdog whose internals are used (:mod:`broker.pins`), the settings,
this folder's stack lock for the process's kind (:mod:`broker.stacklock`), logging, and the functions'
registry. A mistake in any of them (:class:`~broker.errors.LambdaliteError`) ends the process with one
line on stderr and exit status 1, before it touches Redis: :func:`fail` says it the same way for the
steps a process adds of its own.
"""

from __future__ import annotations

import sys
from typing import NoReturn

from broker import logs, pins, stacklock
from broker.errors import LambdaliteError
from broker.registry import Registry, load_registry
from broker.settings import Settings, load_settings


def start(kind: str) -> tuple[Settings, Registry]:
    """Check, load and lock as every process of a stack does (``kind``: "scaler", "files", "sqlite",
    "webhook"); returns the settings and the registry, or exits 1 with one line."""
    try:
        pins.check()
        settings = load_settings()
        stacklock.hold(settings, kind)
        logs.configure(settings.log_level)
        return settings, load_registry(settings.config)
    except LambdaliteError as e:
        fail(e)


def fail(error: LambdaliteError) -> NoReturn:
    """End the process as a mistake in its configuration does: ``lambdalite: <error>``, exit 1."""
    print(f"lambdalite: {error}", file=sys.stderr)
    sys.exit(1)
