"""Reading request bodies under a size limit, enforced while the stream is read."""

from __future__ import annotations

from starlette.requests import Request

from broker.errors import PayloadTooLargeError

SYNC_LIMIT = 6 * 1024 * 1024  # Lambda's synchronous payload limit
ASYNC_LIMIT = 1024 * 1024  # Lambda's asynchronous payload limit


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, or :class:`PayloadTooLargeError` as soon as it passes ``limit`` bytes.

    A declared ``Content-Length`` over the limit is refused before a byte is read; otherwise the
    stream is counted chunk by chunk, so an oversized or lying body is never held in full. A
    client that goes away mid-body raises Starlette's ``ClientDisconnect``.
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"{declared} bytes, more than the {limit} allowed")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"more than the {limit} bytes allowed")
        chunks.append(chunk)
    return b"".join(chunks)
