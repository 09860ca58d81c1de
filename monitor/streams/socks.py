"""SOCKS4, SOCKS4a and SOCKS5 (RFC 1928, RFC 1929) as a client speaks them.

Each parser takes the client's bytes and the proxy's reply (either may be cut off) and
returns a :class:`Peeled`: the layer (the requested host and port: the stream's effective
destination), the bytes the client sent through the tunnel, and the proxy's answer.
None when the bytes are not this protocol.  Pure, bounded by its input, never raises.
"""

from __future__ import annotations

import ipaddress

from monitor.streams.view import Layer, Peeled

MAX_METHODS = 16  # real clients offer 1-3; more is another protocol
MAX_NAME = 255


def _host(raw: bytes) -> str:
    return raw[:MAX_NAME].decode("ascii", "backslashreplace")


def socks5(data: bytes, reply: bytes) -> Peeled | None:
    """Greeting (05 n methods), optional user/password, request (05 cmd 00 atyp addr port)."""
    if len(data) < 2 or data[0] != 5 or not 1 <= data[1] <= MAX_METHODS:
        return None
    pos = 2 + data[1]
    methods = data[2:pos]
    if len(methods) < data[1]:
        return Peeled(Layer("socks5"), b"", b"", complete=False)
    detail: list[tuple[str, str]] = []
    if pos < len(data) and data[pos] == 1 and 2 in methods:
        # RFC 1929: 01 ulen user plen pass
        if pos + 2 > len(data):
            return Peeled(Layer("socks5"), b"", b"", complete=False)
        ulen = data[pos + 1]
        user = data[pos + 2 : pos + 2 + ulen]
        plen_at = pos + 2 + ulen
        if plen_at >= len(data):
            return Peeled(Layer("socks5"), b"", b"", complete=False)
        pos = plen_at + 1 + data[plen_at]
        detail.append(("user", _host(user)))
    if pos + 4 > len(data):
        return Peeled(Layer("socks5", detail=tuple(detail)), b"", b"", complete=False)
    ver, cmd, rsv, atyp = data[pos : pos + 4]
    if ver != 5 or cmd not in (1, 2, 3) or rsv != 0 or atyp not in (1, 3, 4):
        return None
    addr = _address(data, pos + 4, atyp)
    if addr is None:
        return Peeled(Layer("socks5", detail=tuple(detail)), b"", b"", complete=False)
    host, end = addr
    if end + 2 > len(data):
        return Peeled(Layer("socks5", host, detail=tuple(detail)), b"", b"", complete=False)
    port = int.from_bytes(data[end : end + 2], "big")
    if cmd != 1:
        detail.append(("command", {2: "bind", 3: "udp_associate"}[cmd]))
    granted, inner_reply = _socks5_reply(reply, 2 in methods)
    layer = Layer("socks5", host, port, granted, tuple(detail))
    return Peeled(layer, data[end + 2 :], inner_reply)


def _address(data: bytes, at: int, atyp: int) -> tuple[str, int] | None:
    if atyp == 1:
        raw = data[at : at + 4]
        return (str(ipaddress.IPv4Address(raw)), at + 4) if len(raw) == 4 else None
    if atyp == 4:
        raw = data[at : at + 16]
        return (str(ipaddress.IPv6Address(raw)), at + 16) if len(raw) == 16 else None
    if at >= len(data):
        return None
    n = data[at]
    raw = data[at + 1 : at + 1 + n]
    return (_host(raw), at + 1 + n) if len(raw) == n else None


def _socks5_reply(reply: bytes, may_auth: bool) -> tuple[bool | None, bytes]:
    """(granted, what the proxy relayed after its answer) from the proxy's bytes."""
    if len(reply) < 2 or reply[0] != 5:
        return None, b""
    pos = 2
    if reply[1] == 0xFF:
        return False, b""
    if reply[1] == 2 and may_auth:
        if len(reply) < pos + 2:
            return None, b""
        if reply[pos + 1] != 0:
            return False, b""
        pos += 2
    if len(reply) < pos + 4 or reply[pos] != 5:
        return None, b""
    rep, atyp = reply[pos + 1], reply[pos + 3]
    if atyp not in (1, 3, 4):
        return rep == 0, b""
    addr = _address(reply, pos + 4, atyp)
    if addr is None:
        return rep == 0, b""
    return rep == 0, reply[addr[1] + 2 :]


def socks4(data: bytes, reply: bytes) -> Peeled | None:
    """04 cmd port ip user\\0 [host\\0] (4a: ip 0.0.0.x, x != 0, then the host name)."""
    if len(data) < 2 or data[0] != 4 or data[1] not in (1, 2):
        return None
    if len(data) < 9:
        return Peeled(Layer("socks4"), b"", b"", complete=False)
    port = int.from_bytes(data[2:4], "big")
    ip = data[4:8]
    nul = data.find(b"\0", 8, 8 + MAX_NAME + 1)
    if nul < 0:
        if len(data) > 8 + MAX_NAME:
            return None
        return Peeled(Layer("socks4", port=port), b"", b"", complete=False)
    user = data[8:nul]
    end = nul + 1
    kind, host = "socks4", str(ipaddress.IPv4Address(ip))
    if ip[:3] == b"\0\0\0" and ip[3] != 0:
        nul2 = data.find(b"\0", end, end + MAX_NAME + 1)
        if nul2 < 0:
            if len(data) > end + MAX_NAME:
                return None
            return Peeled(Layer("socks4a", port=port), b"", b"", complete=False)
        kind, host = "socks4a", _host(data[end:nul2])
        end = nul2 + 1
    detail: tuple[tuple[str, str], ...] = (("user", _host(user)),) if user else ()
    if data[1] == 2:
        detail += (("command", "bind"),)
    granted: bool | None = None
    inner_reply = b""
    if len(reply) >= 8 and reply[0] == 0:
        granted = reply[1] == 0x5A
        inner_reply = reply[8:]
    return Peeled(Layer(kind, host, port, granted, detail), data[end:], inner_reply)
