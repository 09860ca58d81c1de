"""WebSocket frames (RFC 6455), client and server, with permessage-deflate (RFC 7692).

A client masks every frame with a key that travels in the frame header, so the payload on
the wire is XORed garbage to a byte matcher; here each frame is unmasked, continuation
frames are joined into messages, control frames are skipped, and compressed messages
(RSV1 with permessage-deflate) are inflated, bounded.  Pure, never raises.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Final

MAX_FRAMES: Final = 256
MAX_OUT: Final = 65536  # bytes of messages produced, inflated ones included
_DEFLATE_TAIL: Final = b"\x00\x00\xff\xff"


@dataclass(frozen=True, slots=True)
class Frames:
    """Messages decoded from a frame sequence.

    complete: the bytes ended on a frame boundary (False: the last message is partial).
    valid: the bytes parsed as frames (False: not WebSocket, or a broken frame: stop).
    """

    messages: tuple[bytes, ...]
    complete: bool
    valid: bool


def unmask(payload: bytes, key: bytes) -> bytes:
    """XOR payload with the 4-byte key repeated (one big-int operation, not a byte loop)."""
    n = len(payload)
    if n == 0 or len(key) != 4:
        return payload
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")


def decode(data: bytes, *, deflate: bool = False, limit: int = MAX_OUT) -> Frames:
    """Messages in ``data`` (frames from one side), partial last message included."""
    pos = 0
    out: list[bytes] = []
    total = 0
    current = bytearray()
    compressed = False
    inflater = zlib.decompressobj(-15) if deflate else None
    frames = 0
    while pos < len(data) and frames < MAX_FRAMES and total < limit:
        head = _header(data, pos)
        if head is None:
            return _done(out, current, compressed, inflater, limit, complete=False, valid=True)
        fin, rsv1, opcode, key, start, length = head
        if opcode not in (0, 1, 2, 8, 9, 10) or (opcode >= 8 and (length > 125 or not fin)):
            return _done(out, current, compressed, inflater, limit, complete=True, valid=False)
        frames += 1
        payload = data[start : start + length]
        cut = len(payload) < length
        if key:
            payload = unmask(payload, key)
        pos = start + length
        if opcode >= 8:
            continue  # close, ping, pong
        if opcode != 0:
            if current:  # a new message before the last one ended: keep what we had
                out.append(_inflate(bytes(current), compressed, inflater, limit))
                current.clear()
            compressed = bool(rsv1) and inflater is not None
        current += payload
        total += len(payload)
        if cut:
            return _done(out, current, compressed, inflater, limit, complete=False, valid=True)
        if fin:
            out.append(_inflate(bytes(current), compressed, inflater, limit))
            current.clear()
    return _done(out, current, compressed, inflater, limit, complete=not current, valid=True)


def _header(data: bytes, pos: int) -> tuple[bool, bool, int, bytes, int, int] | None:
    if pos + 2 > len(data):
        return None
    b0, b1 = data[pos], data[pos + 1]
    length = b1 & 0x7F
    p = pos + 2
    if length == 126:
        if p + 2 > len(data):
            return None
        length = int.from_bytes(data[p : p + 2], "big")
        p += 2
    elif length == 127:
        if p + 8 > len(data):
            return None
        length = int.from_bytes(data[p : p + 8], "big") & ((1 << 63) - 1)
        p += 8
    key = b""
    if b1 & 0x80:
        if p + 4 > len(data):
            return None
        key = data[p : p + 4]
        p += 4
    return bool(b0 & 0x80), bool(b0 & 0x40), b0 & 0x0F, key, p, length


def _inflate(msg: bytes, compressed: bool, inflater: zlib._Decompress | None, limit: int) -> bytes:
    if not compressed or inflater is None:
        return msg
    try:
        return inflater.decompress(msg + _DEFLATE_TAIL, limit)
    except zlib.error:
        return msg


def _done(
    out: list[bytes],
    current: bytearray,
    compressed: bool,
    inflater: zlib._Decompress | None,
    limit: int,
    *,
    complete: bool,
    valid: bool,
) -> Frames:
    if current:
        part = bytes(current)
        if compressed and inflater is not None:
            try:  # a cut-off compressed message: inflate what is there
                part = inflater.decompress(part, limit)
            except zlib.error:
                pass
        out.append(part)
    return Frames(tuple(out), complete, valid)
