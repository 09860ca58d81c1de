"""Peel what carries other protocols, one layer after another, down to readable bytes.

``levels(data, reply)`` returns the bytes at every depth: the wire itself, then what a
SOCKS or HTTP CONNECT proxy relays, what WebSocket frames carry, what an HTTP body holds,
nested (a proxy, then a WebSocket, then stratum).  A TLS ClientHello ends the chain (its
SNI and JA4 become the layer); the plaintext, where the library uprobes saw it, is peeled
the same way with the wire's layers in front.  Pure, bounded by ``depth``, never raises.
"""

from __future__ import annotations

from monitor.streams import http, socks, tls
from monitor.streams.view import Layer, Level, Peeled

DEFAULT_DEPTH = 4
# first bytes a wrapper can start with: SOCKS 5 and 4, a TLS handshake, an HTTP method
PEEL_FIRST = frozenset({5, 4, tls.HANDSHAKE, *range(0x41, 0x5B)})


def peel_tls(data: bytes) -> Peeled | None:
    """A ClientHello: the layer names the server (SNI) and the client (JA4); opaque after."""
    if not tls.is_tls_start(data):
        return None
    hello = tls.parse_client_hello(data)
    if hello is None:
        _, complete = tls.handshake_bytes(data)
        if complete and len(data) >= 9:
            return None  # whole records that hold no ClientHello: not a client's TLS start
        return Peeled(Layer("tls"), b"", b"", complete=False, opaque=True)
    detail = [("ja4", hello.ja4), ("version", hello.tls_version)]
    if hello.alpn:
        detail.append(("alpn", ",".join(hello.alpn)[:100]))
    return Peeled(Layer("tls", hello.sni, None, detail=tuple(detail)), b"", b"", opaque=True)


def peel(data: bytes, reply: bytes) -> Peeled | None:
    """The outermost wrapper of ``data`` (with the peer's ``reply``), or None."""
    if not data:
        return None
    first = data[0]
    try:
        if first == 5:
            return socks.socks5(data, reply)
        if first == 4:
            return socks.socks4(data, reply)
        if first == tls.HANDSHAKE:
            return peel_tls(data)
        if 0x41 <= first <= 0x5A:  # an HTTP method
            return http.peel_http(data, reply)
    except (ValueError, IndexError, OverflowError):  # a parser's bug must not stop the monitor
        return None
    return None


def levels(
    data: bytes,
    reply: bytes = b"",
    *,
    source: str = "wire",
    prefix: tuple[Layer, ...] = (),
    depth: int = DEFAULT_DEPTH,
) -> tuple[list[Level], tuple[Layer, ...]]:
    """The readable bytes at each depth, and every layer peeled (the last may be opaque
    or not yet complete)."""
    out = [Level(source, prefix, data, reply)]
    if not data or data[0] not in PEEL_FIRST:
        return out, prefix  # the common case: nothing wraps these bytes
    layers = list(prefix)
    cur, cur_reply = data, reply
    for _ in range(depth):
        p = peel(cur, cur_reply)
        if p is None:
            break
        layers.append(p.layer)
        if p.opaque or (not p.complete and not p.inner):
            break
        out.append(Level(source, tuple(layers), p.inner, p.inner_reply, p.complete))
        cur, cur_reply = p.inner, p.inner_reply
    return out, tuple(layers)
