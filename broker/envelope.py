"""The event envelope: what a source hands to a worker, immutable and versioned.

One :meth:`Event.encode` and one :meth:`Event.decode`; bytes that are not an envelope raise
:class:`EnvelopeError` chained to the cause. What decodes also encodes again: the envelope is
strict JSON (no NaN or Infinity), and :func:`parse_json` is the reader every edge that takes JSON
from outside (the Invoke API, ``lambdalite invoke``) shares with :meth:`Event.decode`.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from broker.errors import EnvelopeError

VERSION = 1
InvocationType = Literal["Event", "RequestResponse"]
_TYPES = ("Event", "RequestResponse")
#: Deepest nesting of arrays and objects a payload may have. Python code walks payloads recursively
#: (``dataclasses.asdict``, ``copy.deepcopy``, handlers' own code), so a deeper one would end the
#: process that touches it with a RecursionError instead of failing one request.
MAX_DEPTH = 128
_ID = re.compile(r"[A-Za-z0-9_-]+")  # what RQ accepts in a job id, which an event id becomes


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"number {text[:40]} is out of range")
    return number


def _constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# One decoder for every call: json.loads builds a new one for each call given these hooks.
_DECODER = json.JSONDecoder(parse_float=_finite, parse_constant=_constant)


_ONLY_BRACKETS = {c: None for c in range(128) if chr(c) not in "[]{}"}
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def _too_deep(text: str, max_depth: int) -> bool:
    """Whether arrays and objects nest deeper than ``max_depth`` in ``text``, valid JSON.

    Counted on the text in C-speed steps (walking the decoded value in Python would cost more than
    decoding it, and recursion is what this guards against): escapes dropped, then what lies
    between quotes, then all but the brackets.
    """
    if text.count("[") + text.count("{") <= max_depth:
        return False
    outside = "".join(text.replace("\\\\", "").replace('\\"', "").split('"')[::2])
    brackets = outside.translate(_ONLY_BRACKETS)  # outside strings valid JSON is ASCII
    return max(itertools.accumulate(map(_STEP.__getitem__, brackets)), default=0) > max_depth


def parse_json(raw: bytes | str, max_depth: int = MAX_DEPTH) -> Any:
    """Strict JSON from outside: raises ValueError for text that is not JSON, for NaN, Infinity
    and numbers too large for a float, and for arrays and objects nested over ``max_depth`` levels."""
    try:
        # bytes as json.loads reads them: UTF-8, -16 or -32
        text = raw.decode(json.detect_encoding(raw), "surrogatepass") if isinstance(raw, bytes) else raw
        value = _DECODER.decode(text)
    except RecursionError:
        raise ValueError(f"nested more than {max_depth} levels deep") from None
    except UnicodeDecodeError as e:
        raise ValueError(str(e)) from e
    if _too_deep(text, max_depth):
        raise ValueError(f"nested more than {max_depth} levels deep")
    return value


def dump_json(value: Any, max_depth: int = MAX_DEPTH) -> str:
    """``value`` as strict JSON text, what :func:`parse_json` reads back; raises ValueError (or
    TypeError for a type JSON does not have) for what it would refuse."""
    try:
        text = json.dumps(value, separators=(",", ":"), allow_nan=False)
    except RecursionError:
        raise ValueError(f"nested more than {max_depth} levels deep") from None
    if _too_deep(text, max_depth):
        raise ValueError(f"nested more than {max_depth} levels deep")
    return text


def new_id() -> str:
    """A fresh event id, shaped like Lambda's request ids: a random (version 4) UUID, written as
    ``str(uuid.uuid4())`` writes it, in a third of its time (this runs once per request)."""
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


# The UUID variant bits (10xx) set in the first hex digit of the fourth group.
_VARIANT = {d: "89ab"[int(d, 16) & 3] for d in "0123456789abcdef"}


@dataclass(frozen=True, slots=True)
class Event:
    """One invocation request for one function.

    ``payload`` is the Lambda event the handler receives; ``attempt`` counts the attempts already
    made (0 on first delivery). ``Event`` invocations are retried and dead-lettered;
    ``RequestResponse`` ones are not, as in Lambda.
    """

    function: str
    payload: Any
    id: str = field(default_factory=new_id)
    source: str = "invoke"
    invocation_type: InvocationType = "Event"
    created_at: float = field(default_factory=time.time)
    attempt: int = 0
    # Invoke API extra, written only when set: the caller's ClientContext object.
    client_context: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form (what RQ stores as the job's one argument)."""
        # Not dataclasses.asdict: it deep-copies the payload, and this runs once per published event.
        data = {
            "v": VERSION, "function": self.function, "payload": self.payload, "id": self.id,
            "source": self.source, "invocation_type": self.invocation_type, "created_at": self.created_at,
            "attempt": self.attempt,
        }
        if self.client_context is not None:
            data["client_context"] = self.client_context
        return data

    def encode(self) -> bytes:
        """Compact, strict JSON bytes; raises :class:`EnvelopeError` for a payload that is not
        JSON (NaN, an infinity, a set, nesting over :data:`MAX_DEPTH`)."""
        try:
            return dump_json(self.to_dict(), MAX_DEPTH + 1).encode()
        except (TypeError, ValueError) as e:
            raise EnvelopeError(f"event for {self.function!r} is not JSON-serializable: {e}") from e

    @classmethod
    def from_dict(cls, data: Any) -> Event:
        """Validate a decoded envelope; raises :class:`EnvelopeError`.

        Every field must have the type :meth:`to_dict` writes (no conversions: ``"3"`` is not an
        attempt count), ``created_at`` a finite number of seconds.
        """
        if not isinstance(data, dict):
            raise EnvelopeError(f"envelope must be a JSON object, got {type(data).__name__}")
        version = data.get("v")
        if type(version) is not int or version != VERSION:
            raise EnvelopeError(f"unsupported envelope version {version!r:.40}")
        missing = [k for k in ("function", "payload", "id", "source", "invocation_type", "created_at", "attempt")
                   if k not in data]
        if missing:
            raise EnvelopeError(f"malformed envelope: no {', '.join(map(repr, missing))}")
        function, event_id, source = data["function"], data["id"], data["source"]
        kind, created_at, attempt = data["invocation_type"], data["created_at"], data["attempt"]
        if not isinstance(function, str) or not isinstance(event_id, str) or not _ID.fullmatch(event_id):
            raise EnvelopeError("malformed envelope: 'function' must be a string, 'id' letters, digits, '_' or '-'")
        if not isinstance(source, str) or not isinstance(kind, str) or kind not in _TYPES:
            raise EnvelopeError(f"malformed envelope: bad source or invocation_type in {event_id!r:.80}")
        if type(attempt) is not int or attempt < 0:
            raise EnvelopeError(f"malformed envelope: bad attempt {attempt!r:.40} in {event_id!r:.80}")
        try:
            when = float(created_at) if type(created_at) in (int, float) else math.nan
        except OverflowError:  # an int beyond any float
            when = math.nan
        if not math.isfinite(when):
            raise EnvelopeError(f"malformed envelope: bad created_at {created_at!r:.40} in {event_id!r:.80}")
        invocation_type: InvocationType = "Event" if kind == "Event" else "RequestResponse"
        client_context = data.get("client_context")
        if not isinstance(client_context, dict | None):
            raise EnvelopeError(f"malformed envelope: bad client_context in {event_id!r:.80}")
        return cls(function=function, payload=data["payload"], id=event_id, source=source,
                   invocation_type=invocation_type, created_at=when, attempt=attempt,
                   client_context=client_context)

    @classmethod
    def decode(cls, raw: bytes | str) -> Event:
        """Parse envelope bytes; raises :class:`EnvelopeError`."""
        try:
            data = parse_json(raw, MAX_DEPTH + 1)  # the payload sits one level down
        except ValueError as e:
            raise EnvelopeError(f"envelope is not JSON: {e}") from e
        return cls.from_dict(data)

    def retried(self) -> Event:
        """The same event, one attempt later."""
        return dataclasses.replace(self, attempt=self.attempt + 1)

    @property
    def age(self) -> float:
        """Seconds since the source accepted the event."""
        return time.time() - self.created_at
