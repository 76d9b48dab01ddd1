"""Reading request bodies under a size limit, enforced while the stream is read."""

from __future__ import annotations

from starlette.requests import ClientDisconnect
from starlette.types import Receive

from sources.http.errors import PayloadTooLargeError

SYNC_LIMIT = 6 * 1024 * 1024  # Lambda's synchronous payload limit
ASYNC_LIMIT = 1024 * 1024  # Lambda's asynchronous payload limit


async def read_body(receive: Receive, declared: str, limit: int) -> bytes:
    """The whole body from an ASGI ``receive``, or :class:`PayloadTooLargeError` as soon as it
    passes ``limit`` bytes.

    A ``declared`` Content-Length over the limit is refused before a byte is read; otherwise the
    stream is counted chunk by chunk, so an oversized or lying body is never held in full. A
    client that goes away mid-body raises Starlette's ``ClientDisconnect``.
    """
    if declared.isascii() and declared.isdigit() and int(declared) > limit:  # not '¹', a digit to isdigit
        raise PayloadTooLargeError(f"{declared} bytes, more than the {limit} allowed")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"more than the {limit} bytes allowed")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
