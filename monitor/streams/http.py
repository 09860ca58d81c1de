"""HTTP/1.x as a carrier: CONNECT tunnels, proxy requests, WebSocket upgrades and bodies.

``peel_http`` takes a client's bytes and the server's reply and returns what the HTTP layer
carries: the tunnel after ``CONNECT host:port`` (the effective destination), the decoded
frames after ``Upgrade: websocket``, or the request bodies (Content-Length or chunked,
gzip/deflate inflated, pipelined requests joined by newlines) where JSON-RPC getwork,
getblocktemplate or stratum over HTTP would be.  Pure, bounded, never raises.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from monitor.streams import websocket
from monitor.streams.view import Layer, Peeled

MAX_HEADERS: Final = 64
MAX_REQUESTS: Final = 8
MAX_BODY: Final = 65536  # bytes of bodies produced, inflated ones included
MAX_CHUNKS: Final = 256
_REQUEST_LINE: Final = re.compile(rb"([A-Z][A-Z_-]{2,15}) (\S{1,2048}) HTTP/1\.([01])\r?\n")
_STATUS_LINE: Final = re.compile(rb"HTTP/1\.[01] (\d{3})[^\r\n]{0,256}\r?\n")
_ABSOLUTE: Final = re.compile(r"(?i)(https?|wss?)://([^/?#\s]{1,300})")
_BODY_METHODS: Final = frozenset({"POST", "PUT", "PATCH"})


@dataclass(frozen=True, slots=True)
class Message:
    """A request or response head; body_at is where its body starts (-1: head cut off)."""

    first: tuple[str, ...]  # (method, target) or (status,)
    headers: tuple[tuple[str, str], ...]  # names lower-cased
    body_at: int

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def has_token(self, name: str, token: str) -> bool:
        value = self.header(name) or ""
        return token in (t.strip().lower() for t in value.split(","))


def _head(data: bytes, pos: int, m: re.Match[bytes], first: tuple[str, ...]) -> Message:
    """Headers after the start line matched at ``pos``; body_at -1 while the head is cut off."""
    p = m.end()
    headers: list[tuple[str, str]] = []
    while len(headers) <= MAX_HEADERS:
        nl = data.find(b"\n", p, p + 8192)
        if nl < 0:
            return Message(first, tuple(headers), -1)
        line = data[p:nl].rstrip(b"\r")
        p = nl + 1
        if not line:
            return Message(first, tuple(headers), p)
        name, colon, value = line.partition(b":")
        if colon:
            headers.append(
                (
                    name.strip().lower().decode("latin-1"),
                    value.strip()[:1024].decode("latin-1"),
                )
            )
    return Message(first, tuple(headers), -1)


def parse_request(data: bytes, pos: int = 0) -> Message | None:
    """The request head at ``pos``; None when the bytes there are not an HTTP/1.x request."""
    m = _REQUEST_LINE.match(data, pos)
    if m is None:
        return None
    method, target = m.group(1).decode(), m.group(2).decode("latin-1")
    return _head(data, pos, m, (method, target))


def parse_response(data: bytes, pos: int = 0) -> Message | None:
    m = _STATUS_LINE.match(data, pos)
    if m is None:
        return None
    return _head(data, pos, m, (m.group(1).decode(),))


def looks_like_request(data: bytes) -> bool:
    """A request line has started (or could still start: a method token and a space)."""
    return parse_request(data) is not None or re.match(rb"[A-Z]{3,16} ", data[:17]) is not None


def body(data: bytes, msg: Message, limit: int = MAX_BODY) -> tuple[bytes, int, bool]:
    """(decoded body, where the next message starts (-1: unknown), complete) of a message."""
    at = msg.body_at
    if at < 0:
        return b"", -1, False
    if msg.has_token("transfer-encoding", "chunked"):
        raw, end, complete = _dechunk(data, at, limit)
    else:
        try:
            n = int(msg.header("content-length") or "0")
        except ValueError:
            n = 0
        n = max(0, n)
        raw = data[at : at + min(n, limit)]
        complete = at + n <= len(data)
        end = at + n if complete else -1
    coding = (msg.header("content-encoding") or "").strip().lower()
    if coding in ("gzip", "deflate", "x-gzip"):
        try:
            raw = zlib.decompressobj(47).decompress(raw, limit)  # 47: gzip or zlib header
        except zlib.error:
            pass
    return raw, end, complete


def _dechunk(data: bytes, at: int, limit: int) -> tuple[bytes, int, bool]:
    out = bytearray()
    p = at
    for _ in range(MAX_CHUNKS):
        nl = data.find(b"\n", p, p + 64)
        if nl < 0:
            return bytes(out), -1, False
        size_text = data[p:nl].split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            return bytes(out), -1, False
        p = nl + 1
        if size == 0:
            end = data.find(b"\n", p, p + 4096)  # trailers end with an empty line
            while end >= 0 and data[p:end].strip():
                p = end + 1
                end = data.find(b"\n", p, p + 4096)
            return bytes(out), (end + 1 if end >= 0 else -1), end >= 0
        chunk = data[p : p + size]
        out += chunk[: max(0, limit - len(out))]
        if len(chunk) < size:
            return bytes(out), -1, False
        p += size
        if data[p : p + 2] == b"\r\n":
            p += 2
        elif data[p : p + 1] == b"\n":
            p += 1
    return bytes(out), -1, False


def _hostport(text: str, default: int | None) -> tuple[str | None, int | None]:
    """host and port of "host:port", "[v6]:port" or "host"."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon or not port_text.isdigit():
            host, port_text = text, ""
    port = int(port_text) if port_text.isdigit() and 0 < int(port_text) < 65536 else default
    return (host[:255] or None), port


def peel_http(data: bytes, reply: bytes) -> Peeled | None:
    """What an HTTP request carries, or None when the bytes are not an HTTP request."""
    req = parse_request(data)
    if req is None:
        return None
    method, target = req.first
    if method == "CONNECT":
        host, port = _hostport(target, None)
        if req.body_at < 0:
            return Peeled(Layer("http_connect", host, port), b"", b"", complete=False)
        granted, inner_reply = _granted(reply, ("2",))
        return Peeled(Layer("http_connect", host, port, granted), data[req.body_at :], inner_reply)
    if req.body_at < 0:
        return Peeled(Layer("http"), b"", b"", complete=False)
    host = req.header("host")
    if req.has_token("upgrade", "websocket"):
        return _websocket(data, reply, req, target, host)
    absolute = _ABSOLUTE.match(target)
    kind = "http_proxy" if absolute else "http"
    if absolute:
        scheme = absolute.group(1).lower()
        h, p = _hostport(absolute.group(2).rpartition("@")[2], 443 if scheme[-1] == "s" else 80)
    else:
        h, p = _hostport(host or "", None)
        p = None  # the Host header names the server this stream already reaches
    detail = [("method", method), ("path", target[:200])]
    ctype = req.header("content-type")
    if ctype:
        detail.append(("content_type", ctype[:100]))
    bodies, complete = _bodies(data, parse_request, limit=MAX_BODY)
    replies, _ = _bodies(reply, parse_response, limit=MAX_BODY)
    if not bodies and kind == "http":
        return None  # nothing carried: the request itself is all there is
    layer = Layer(kind, h, p, detail=tuple(detail))
    return Peeled(layer, b"\n".join(bodies), b"\n".join(replies), complete=complete)


def _bodies(
    data: bytes, parse: Callable[[bytes, int], Message | None], limit: int
) -> tuple[list[bytes], bool]:
    """Non-empty bodies of up to MAX_REQUESTS pipelined messages; complete: all whole."""
    out: list[bytes] = []
    pos = 0
    total = 0
    for _ in range(MAX_REQUESTS):
        msg = parse(data, pos)
        if msg is None:
            return out, True
        raw, end, complete = body(data, msg, max(0, limit - total))
        if raw:
            out.append(raw)
            total += len(raw)
        if not complete or end < 0 or end >= len(data):
            return out, complete
        pos = end
    return out, True


def _granted(reply: bytes, ok: tuple[str, ...]) -> tuple[bool | None, bytes]:
    resp = parse_response(reply)
    if resp is None or resp.body_at < 0:
        return None, b""
    return resp.first[0].startswith(ok), reply[resp.body_at :]


def _websocket(data: bytes, reply: bytes, req: Message, target: str, host: str | None) -> Peeled:
    detail = [("path", target[:200])]
    protocol = req.header("sec-websocket-protocol")
    if protocol:
        detail.append(("protocol", protocol[:100]))
    ext = (req.header("sec-websocket-extensions") or "").lower()
    if ext:
        detail.append(("extensions", ext[:100]))
    deflate = "permessage-deflate" in ext
    frames = websocket.decode(data[req.body_at :], deflate=deflate)
    resp = parse_response(reply)
    granted: bool | None = None
    inner_reply = b""
    if resp is not None and resp.body_at >= 0:
        granted = resp.first[0] == "101"
        server_ext = (resp.header("sec-websocket-extensions") or "").lower()
        server = websocket.decode(
            reply[resp.body_at :], deflate=deflate and "permessage-deflate" in server_ext
        )
        inner_reply = b"\n".join(server.messages)
    h, _ = _hostport(host or "", None)
    layer = Layer("websocket", h, None, granted, tuple(detail))
    return Peeled(layer, b"\n".join(frames.messages), inner_reply, complete=frames.complete)
