"""The event envelope: what a source hands to a worker, immutable and versioned.

One :meth:`Event.encode` and one :meth:`Event.decode`; bytes that are not an envelope raise
:class:`EnvelopeError` chained to the cause.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from broker.errors import EnvelopeError

VERSION = 1
InvocationType = Literal["Event", "RequestResponse"]
_TYPES = ("Event", "RequestResponse")


def new_id() -> str:
    """A fresh event id, shaped like Lambda's request ids."""
    return str(uuid.uuid4())


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

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form (what RQ stores as the job's one argument)."""
        # Not dataclasses.asdict: it deep-copies the payload, and this runs once per published event.
        return {
            "v": VERSION, "function": self.function, "payload": self.payload, "id": self.id,
            "source": self.source, "invocation_type": self.invocation_type, "created_at": self.created_at,
            "attempt": self.attempt,
        }

    def encode(self) -> bytes:
        """Compact JSON bytes."""
        try:
            return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False).encode()
        except (TypeError, ValueError) as e:
            raise EnvelopeError(f"event for {self.function!r} is not JSON-serializable: {e}") from e

    @classmethod
    def from_dict(cls, data: Any) -> Event:
        """Validate a decoded envelope; raises :class:`EnvelopeError`."""
        if not isinstance(data, dict):
            raise EnvelopeError(f"envelope must be a JSON object, got {type(data).__name__}")
        if data.get("v") != VERSION:
            raise EnvelopeError(f"unsupported envelope version {data.get('v')!r}")
        try:
            event = cls(
                function=data["function"],
                payload=data["payload"],
                id=data["id"],
                source=data["source"],
                invocation_type=data["invocation_type"],
                created_at=float(data["created_at"]),
                attempt=int(data["attempt"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise EnvelopeError(f"malformed envelope: {type(e).__name__}: {e}") from e
        if not isinstance(event.function, str) or not isinstance(event.id, str) or not event.id:
            raise EnvelopeError("malformed envelope: 'function' and 'id' must be strings")
        if event.invocation_type not in _TYPES or event.attempt < 0:
            raise EnvelopeError(f"malformed envelope: bad invocation_type/attempt in {event.id!r}")
        return event

    @classmethod
    def decode(cls, raw: bytes | str) -> Event:
        """Parse envelope bytes; raises :class:`EnvelopeError`."""
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise EnvelopeError(f"envelope is not JSON: {e}") from e
        return cls.from_dict(data)

    def retried(self) -> Event:
        """The same event, one attempt later."""
        return dataclasses.replace(self, attempt=self.attempt + 1)

    @property
    def age(self) -> float:
        """Seconds since the source accepted the event."""
        return time.time() - self.created_at
