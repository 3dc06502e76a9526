"""Length-prefixed frames over a stream socket: blocking for workers, asyncio for the agent.

Each message is  u64 length | frame body (see `common.frames`).
"""

from __future__ import annotations

import asyncio
import socket
import struct

_LENGTH = struct.Struct("<Q")
MAX_MESSAGE_BYTES = 1 << 32  # far above any batch we send; guards against a corrupt prefix


class StreamClosed(ConnectionError):
    """The peer closed the stream (on a worker socket: the process died or exited)."""


def send_message(sock: socket.socket, body: bytes) -> None:
    sock.sendall(_LENGTH.pack(len(body)))
    sock.sendall(body)


def recv_message(sock: socket.socket) -> bytearray:
    (length,) = _LENGTH.unpack(_recv_exactly(sock, _LENGTH.size))
    if length > MAX_MESSAGE_BYTES:
        raise StreamClosed(f"message length {length} exceeds {MAX_MESSAGE_BYTES}")
    return _recv_exactly(sock, length)


def _recv_exactly(sock: socket.socket, size: int) -> bytearray:
    buffer = bytearray(size)
    view = memoryview(buffer)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:], size - got)
        if n == 0:
            raise StreamClosed("peer closed the stream")
        got += n
    return buffer


async def read_message(reader: asyncio.StreamReader) -> bytes:
    try:
        (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
        if length > MAX_MESSAGE_BYTES:
            raise StreamClosed(f"message length {length} exceeds {MAX_MESSAGE_BYTES}")
        return await reader.readexactly(length)
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
        # A killed peer shows up as EOF or as a reset, depending on what was in flight.
        raise StreamClosed("peer closed the stream") from exc


def write_message(writer: asyncio.StreamWriter, body: bytes) -> None:
    """Queue one message; the caller awaits `writer.drain()` when it wants back-pressure."""
    # One call, not two: on a unix socket each write is a system call, on every request.
    writer.writelines((_LENGTH.pack(len(body)), body))
