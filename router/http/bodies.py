"""Reading a request's body under a size limit, for `/v1/infer` and the OIP `/v2` infer route.

A body over the limit is a 413 (PayloadTooLarge) before it is buffered; a compressed body (the
`Content-Encoding` tritonclient can send) is inflated under the same limit.
"""

from __future__ import annotations

import zlib

from fastapi import Request
from starlette.requests import ClientDisconnect

from common.errors import BadRequest, PayloadTooLarge

DRAIN_FACTOR = 4  # an oversized body up to this multiple of the limit is read before the 413
# zlib's wbits: a zlib stream ("deflate" in HTTP), a gzip stream (RFC 9110 section 8.4.1).
WBITS = {"deflate": zlib.MAX_WBITS, "gzip": 16 + zlib.MAX_WBITS}


async def read_body(request: Request, limit: int) -> bytes:
    try:
        return await _read_body(request, limit)
    except ClientDisconnect:  # nobody is left to answer; one line in the log, not a traceback
        raise BadRequest("the client disconnected while sending the body") from None


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        # Read (and drop) what the client is still sending, so it gets our 413 instead of a
        # broken pipe; past the drain cap we stop reading and the connection closes.
        if int(declared) <= limit * DRAIN_FACTOR:
            async for _ in request.stream():
                pass
        raise PayloadTooLarge(
            f"body of {declared} bytes exceeds the limit of {limit}; use the base64 form or "
            "split the batch",
            payload_bytes=int(declared),
            limit_bytes=limit,
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body exceeds the limit of {limit} bytes", limit_bytes=limit)
        chunks.append(chunk)
    return b"".join(chunks)


def inflate(body: bytes, encoding: str | None, limit: int) -> bytes:
    """The body as sent before its `Content-Encoding` (gzip, deflate or identity) was applied.

    Inflating stops one byte past `limit`, so a small body that expands without bound (a
    "zip bomb") costs no more memory than the limit.
    """
    name = (encoding or "identity").strip().lower()
    if name == "identity":
        return body
    if name not in WBITS:
        raise BadRequest(
            f"Content-Encoding {encoding!r} is not supported; use gzip, deflate or none",
            supported=["gzip", "deflate", "identity"],
        )
    inflater = zlib.decompressobj(WBITS[name])
    try:
        plain = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise BadRequest(f"body is not valid {name} data: {exc}") from None
    if len(plain) > limit:
        raise PayloadTooLarge(
            f"{name} body inflates past the limit of {limit} bytes; split the batch",
            limit_bytes=limit,
        )
    if not inflater.eof:
        raise BadRequest(f"body is truncated {name} data")
    return plain
