"""The unwrappers: SOCKS, HTTP, WebSocket, TLS ClientHello/JA4, and the chain of them.

Pure functions on bytes; property tests feed them arbitrary bytes (bounded, never raise).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import ssl
import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.streams import http, socks, tls, unwrap, websocket

pytestmark = pytest.mark.unit

LOGIN = b'{"id":1,"method":"mining.subscribe","params":["x"]}'


def ws_frame(payload: bytes, opcode: int = 1, fin: bool = True, mask: bool = True) -> bytes:
    key = os.urandom(4) if mask else b""
    n = len(payload)
    if n < 126:
        ln = bytes([(0x80 if mask else 0) | n])
    elif n < 65536:
        ln = bytes([(0x80 if mask else 0) | 126]) + n.to_bytes(2, "big")
    else:
        ln = bytes([(0x80 if mask else 0) | 127]) + n.to_bytes(8, "big")
    body = websocket.unmask(payload, key) if mask else payload
    return bytes([(0x80 if fin else 0) | opcode]) + ln + key + body


UPGRADE = (
    b"GET /ws HTTP/1.1\r\nHost: pool.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
)


def python_client_hello(name: str | None = "pool.example", alpn: list[str] | None = None) -> bytes:
    """A real OpenSSL ClientHello, made by Python's ssl without a network."""
    ctx = ssl.create_default_context()
    if alpn:
        ctx.set_alpn_protocols(alpn)
    if name is None:
        ctx.check_hostname = False
    out = ssl.MemoryBIO()
    obj = ctx.wrap_bio(ssl.MemoryBIO(), out, server_hostname=name)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


# -- SOCKS --------------------------------------------------------------------------------


def test_socks5_domain_and_grant() -> None:
    data = b"\x05\x01\x00\x05\x01\x00\x03\x0cpool.example\x0d\x05" + LOGIN
    reply = b"\x05\x00\x05\x00\x00\x01\x7f\x00\x00\x01\x00\x00" + b"answer"
    p = socks.socks5(data, reply)
    assert p is not None and p.complete
    assert (p.layer.kind, p.layer.host, p.layer.port, p.layer.granted) == (
        "socks5",
        "pool.example",
        3333,
        True,
    )
    assert p.inner == LOGIN and p.inner_reply == b"answer"


def test_socks5_user_password_and_ipv6() -> None:
    addr = bytes.fromhex("20010db8000000000000000000000002")
    data = b"\x05\x02\x00\x02" + b"\x01\x04user\x06secret" + b"\x05\x01\x00\x04" + addr
    data += struct.pack("!H", 443) + b"inner"
    reply = b"\x05\x02\x01\x00" + b"\x05\x00\x00\x01\x00\x00\x00\x00\x00\x00"
    p = socks.socks5(data, reply)
    assert p is not None
    assert (p.layer.host, p.layer.port, p.layer.get("user"), p.layer.granted) == (
        "2001:db8::2",
        443,
        "user",
        True,
    )
    assert p.inner == b"inner"


def test_socks5_refused_and_incomplete() -> None:
    data = b"\x05\x01\x00\x05\x01\x00\x01\xc6\x33\x64\x02\x0d\x05"
    p = socks.socks5(data, b"\x05\x00\x05\x05\x00\x01\x00\x00\x00\x00\x00\x00")
    assert p is not None and p.layer.granted is False
    greeting = socks.socks5(b"\x05\x01\x00", b"")
    assert greeting is not None and not greeting.complete and greeting.inner == b""


def test_socks5_shape_must_hold() -> None:
    assert socks.socks5(b"\x05\x01\x00\x05\x09\x00\x01", b"") is None  # command 9
    assert socks.socks5(b"\x05\x00", b"") is None  # no methods offered
    assert socks.socks5(b"\x05\x40" + b"\x00" * 64, b"") is None  # 64 methods: not SOCKS


def test_socks4_and_4a() -> None:
    p = socks.socks4(b"\x04\x01\x0d\x05\xc6\x33\x64\x02agent\x00" + LOGIN, b"\x00\x5a" + b"\0" * 6)
    assert p is not None
    assert (p.layer.kind, p.layer.host, p.layer.port, p.layer.granted) == (
        "socks4",
        "198.51.100.2",
        3333,
        True,
    )
    assert p.inner == LOGIN
    q = socks.socks4(b"\x04\x01\x0d\x05\x00\x00\x00\x01\x00pool.example\x00" + LOGIN, b"")
    assert q is not None and (q.layer.kind, q.layer.host) == ("socks4a", "pool.example")
    assert q.inner == LOGIN and q.layer.granted is None


# -- HTTP ---------------------------------------------------------------------------------


def test_connect_tunnel() -> None:
    data = b"CONNECT [2001:db8::2]:22 HTTP/1.1\r\nHost: x\r\n\r\nSSH-2.0-paramiko_3.4\r\n"
    p = http.peel_http(data, b"HTTP/1.1 200 Connection established\r\n\r\nSSH-2.0-OpenSSH")
    assert p is not None
    assert (p.layer.kind, p.layer.host, p.layer.port, p.layer.granted) == (
        "http_connect",
        "2001:db8::2",
        22,
        True,
    )
    assert p.inner.startswith(b"SSH-2.0-paramiko") and p.inner_reply == b"SSH-2.0-OpenSSH"
    refused = http.peel_http(b"CONNECT a:1 HTTP/1.1\r\n\r\n", b"HTTP/1.1 403 Forbidden\r\n\r\n")
    assert refused is not None and refused.layer.granted is False


def test_post_bodies_content_length_chunked_gzip_pipelined() -> None:
    one = b'{"method":"getwork","params":[],"id":0}'
    two = gzip.compress(b'{"method":"getblocktemplate","params":[]}')
    data = (
        b"POST / HTTP/1.1\r\nHost: node\r\nContent-Length: %d\r\n\r\n" % len(one)
        + one
        + b"POST /rpc HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Encoding: gzip\r\n\r\n"
        + b"%x\r\n" % 10
        + two[:10]
        + b"\r\n%x\r\n" % (len(two) - 10)
        + two[10:]
        + b"\r\n0\r\n\r\n"
    )
    p = http.peel_http(data, b"")
    assert p is not None and p.layer.kind == "http" and p.complete
    assert p.inner == one + b"\n" + b'{"method":"getblocktemplate","params":[]}'


def test_absolute_form_is_a_proxy_request() -> None:
    body = b'{"method":"eth_getWork"}'
    data = b"POST http://pool.example:8545/ HTTP/1.1\r\nContent-Length: 24\r\n\r\n" + body
    p = http.peel_http(data, b"")
    assert p is not None and (p.layer.kind, p.layer.host, p.layer.port) == (
        "http_proxy",
        "pool.example",
        8545,
    )
    assert p.inner == body


def test_plain_get_carries_nothing_and_a_cut_body_is_partial() -> None:
    assert http.peel_http(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"") is None
    p = http.peel_http(b'POST / HTTP/1.1\r\nContent-Length: 100\r\n\r\n{"method"', b"")
    assert p is not None and not p.complete and p.inner == b'{"method"'


def test_websocket_upgrade_masked_fragmented_with_control_frames() -> None:
    frames = ws_frame(LOGIN[:5], 1, fin=False) + ws_frame(b"", 9) + ws_frame(LOGIN[5:], 0)
    frames += ws_frame(b'{"id":2}', 2)
    data = UPGRADE + b"Sec-WebSocket-Protocol: chisel-v3\r\n\r\n" + frames
    server = ws_frame(b'{"method":"mining.notify"}', mask=False)
    p = http.peel_http(data, b"HTTP/1.1 101 Switching Protocols\r\n\r\n" + server)
    assert p is not None and p.layer.kind == "websocket" and p.layer.granted is True
    assert p.layer.get("protocol") == "chisel-v3"
    assert p.inner == LOGIN + b'\n{"id":2}'
    assert p.inner_reply == b'{"method":"mining.notify"}'


def test_websocket_permessage_deflate() -> None:
    comp = zlib.compressobj(wbits=-15)
    raw = comp.compress(LOGIN) + comp.flush(zlib.Z_SYNC_FLUSH)
    assert raw.endswith(b"\x00\x00\xff\xff")
    frame = bytearray(ws_frame(raw[:-4], 1))
    frame[0] |= 0x40  # RSV1: compressed
    data = UPGRADE + b"Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n" + bytes(frame)
    p = http.peel_http(data, b"")
    assert p is not None and p.inner == LOGIN


def test_websocket_cut_frame_keeps_what_arrived() -> None:
    f = websocket.decode(ws_frame(LOGIN * 4)[:60])
    assert f.valid and not f.complete and f.messages and (LOGIN * 4).startswith(f.messages[0])


# -- TLS ----------------------------------------------------------------------------------


def test_ja4_hashes_match_a_published_fingerprint() -> None:
    """Lists and JA4 of a Chrome hello as browserleaks published them (ja4 / ja4_r)."""
    ciphers = "002f,0035,009c,009d,1301,1302,1303,c013,c014,c02b,c02c,c02f,c030,cca8,cca9"
    exts = "0005,000a,000b,000d,0012,0017,001b,0023,002b,002d,0033,44cd,fe0d,ff01"
    sigs = "0403,0804,0401,0503,0805,0501,0806,0601"
    hello = tls.ClientHello(
        version=0x0303,
        ciphers=tuple(int(c, 16) for c in ciphers.split(",")) + (0x2A2A,),  # GREASE left out
        extensions=tuple(int(e, 16) for e in exts.split(",")) + (0x0000, 0x0010),
        sni="tls.browserleaks.com",
        alpn=("h2", "http/1.1"),
        alpn_first_raw=b"h2",
        supported_versions=(0x0304, 0x0303),
        signature_algorithms=tuple(int(s, 16) for s in sigs.split(",")),
    )
    assert tls.ja4_parts(hello) == (ciphers, exts, sigs)
    assert tls.ja4(hello) == "t13d1516h2_8daaf6152771_d8a2da3f94cd"


def test_real_client_hello_sni_alpn_ja4() -> None:
    raw = python_client_hello("pool.example", ["h2", "http/1.1"])
    hello = tls.parse_client_hello(raw)
    assert hello is not None
    assert hello.sni == "pool.example" and hello.alpn == ("h2", "http/1.1")
    assert hello.best_version == 0x0304
    a, b, c = hello.ja4.split("_")
    assert a.startswith("t13d") and a.endswith("h2") and len(b) == len(c) == 12
    ciphers, exts, sigs = tls.ja4_parts(hello)
    assert b == hashlib.sha256(ciphers.encode()).hexdigest()[:12]
    assert c == hashlib.sha256(f"{exts}_{sigs}".encode()).hexdigest()[:12]
    assert "0000" not in exts.split(",") and "0010" not in exts.split(",")


def test_client_hello_split_over_records_and_cut() -> None:
    raw = python_client_hello(None)
    body = raw[5:]
    split = b"\x16\x03\x01" + (100).to_bytes(2, "big") + body[:100]
    split += b"\x16\x03\x01" + (len(body) - 100).to_bytes(2, "big") + body[100:]
    hello = tls.parse_client_hello(split)
    assert hello is not None and hello.sni is None and hello.ja4.startswith("t13i")
    assert tls.parse_client_hello(raw[:80]) is None


@pytest.mark.parametrize(
    "first,chars",
    [(b"h2", "h2"), (b"http/1.1", "h1"), (b"h", "hh"), (None, "00"), (b"\xab\x01", "a1")],
)
def test_ja4_alpn_characters(first: bytes | None, chars: str) -> None:
    assert tls._alpn_chars(first) == chars


# -- the chain ------------------------------------------------------------------------------


def test_nested_socks_then_websocket_then_json() -> None:
    ws = UPGRADE + b"\r\n" + ws_frame(LOGIN)
    data = b"\x05\x01\x00\x05\x01\x00\x03\x0cpool.example\x1f\x98" + ws
    levels, layers = unwrap.levels(data)
    assert [layer.kind for layer in layers] == ["socks5", "websocket"]
    assert levels[-1].data == LOGIN and levels[-1].path() == "socks5>websocket"


def test_tls_ends_the_chain_and_depth_is_bounded() -> None:
    hello = python_client_hello()
    levels, layers = unwrap.levels(b"CONNECT pool.example:443 HTTP/1.1\r\n\r\n" + hello)
    assert [layer.kind for layer in layers] == ["http_connect", "tls"]
    assert layers[-1].host == "pool.example" and len(levels) == 2
    nested = b"CONNECT a:1 HTTP/1.1\r\n\r\n" * 6 + LOGIN
    levels, layers = unwrap.levels(nested, depth=3)
    assert len(layers) == 3 and len(levels) == 4


def test_plain_bytes_have_no_layers() -> None:
    levels, layers = unwrap.levels(LOGIN)
    assert layers == () and levels[0].data == LOGIN and levels[0].path() == ""


# -- arbitrary bytes: bounded, never raise ---------------------------------------------------

PREFIXES = [b"", b"\x05", b"\x05\x01\x00", b"\x04\x01", b"\x16\x03\x01", b"CONNECT ", b"POST "]


@settings(max_examples=400)
@given(st.sampled_from(PREFIXES), st.binary(max_size=2048), st.binary(max_size=256))
def test_parsers_never_raise_and_stay_bounded(prefix: bytes, data: bytes, reply: bytes) -> None:
    blob = prefix + data
    for fn in (socks.socks5, socks.socks4, http.peel_http):
        p = fn(blob, reply)
        if p is not None:
            assert len(p.inner) <= max(len(blob), http.MAX_BODY)
    tls.parse_client_hello(blob)
    f = websocket.decode(blob, deflate=True)
    assert sum(len(m) for m in f.messages) <= websocket.MAX_OUT + 65536
    levels, layers = unwrap.levels(blob, reply)
    assert len(layers) <= unwrap.DEFAULT_DEPTH and len(levels) <= unwrap.DEFAULT_DEPTH + 1


@settings(max_examples=200)
@given(st.binary(max_size=1024))
def test_upgrade_with_arbitrary_frames(frames: bytes) -> None:
    p = http.peel_http(UPGRADE + b"\r\n" + frames, frames)
    assert p is not None and p.layer.kind == "websocket"
