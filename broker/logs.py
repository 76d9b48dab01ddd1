"""Logging set-up for process entry points: once, to stdout, so honcho can prefix each line.

One record is one line, whatever it quotes: a file name, an object key or a header may hold a
newline, a carriage return, an ANSI escape or a Unicode line separator, and written raw it would
forge a line of another process or repaint the operator's terminal. Such characters in the message
are written as backslash escapes (``\\n``, ``\\x1b``, ``\\u2028``). A traceback keeps its line
breaks, its other control characters are escaped the same way, and each of its lines is indented,
so none of them can pass for a record's line.
"""

from __future__ import annotations

import io
import logging
import re
import sys

# C0 and C1 controls and DEL, the Unicode line and paragraph separators, and the bidirectional
# overrides and isolates (which reorder what a terminal shows).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_CONTROL_BUT_NEWLINE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
TRACEBACK_INDENT = "    "
FORMAT = "%(levelname)s %(name)s: %(message)s"


def _escape_one(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def escape(text: str) -> str:
    """``text`` on one line: every control character written as a backslash escape."""
    return _CONTROL.sub(_escape_one, text)


class OneLineFormatter(logging.Formatter):
    """A formatter whose message is always one line (see the module's docstring)."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        record.message = escape(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: object) -> str:  # noqa: N802 - logging's name
        text = super().formatException(ei)  # type: ignore[arg-type]
        return self._indent(text)

    def formatStack(self, stack_info: str) -> str:  # noqa: N802 - logging's name
        return self._indent(super().formatStack(stack_info))

    @staticmethod
    def _indent(text: str) -> str:
        text = _CONTROL_BUT_NEWLINE.sub(_escape_one, text)
        return "\n".join(TRACEBACK_INDENT + line for line in text.split("\n"))


def configure(level: str = "INFO") -> None:
    """Send every logger's records to stdout as ``LEVEL name: message``, one line per record.

    Text that has no UTF-8 form (a file name that is not UTF-8, decoded with surrogate escapes) is
    written with backslash escapes rather than making the line fail.
    """
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="backslashreplace")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(OneLineFormatter(FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("rq", "rq.worker", "rq.job", "rq.queue"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
