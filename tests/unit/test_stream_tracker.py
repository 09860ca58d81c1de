"""The stream tracker: placement by offset, bounds, loss accounting, TLS binding."""

from __future__ import annotations

import pytest

from monitor.sensor.events import (
    STREAM_GAP,
    STREAM_LATE,
    STREAM_REPLY,
    STREAM_TRUNCATED,
    SendEvent,
    StreamEvent,
    TlsBindEvent,
    TlsDataEvent,
)
from monitor.streams.tracker import StreamTracker
from tests.support.events import hdr
from tests.unit.test_stream_parsers import python_client_hello

pytestmark = pytest.mark.unit

S = 1_000_000_000
TUPLE = dict(family=2, saddr="10.0.0.1", sport=40000, daddr="198.51.100.2", dport=3333)


def send(data: bytes, cookie: int = 7, ts: int = S) -> SendEvent:
    return SendEvent(
        **hdr(100, ts=ts), cookie=cookie, payload_len=len(data), data=data, owner_pid=100, **TUPLE
    )


def chunk(
    data: bytes, offset: int, cookie: int = 7, flags: int = 0, ts: int = 2 * S
) -> StreamEvent:
    h = {**hdr(100, ts=ts), "flags": flags}
    return StreamEvent(
        **h, cookie=cookie, payload_len=len(data), data=data, owner_pid=100, offset=offset, **TUPLE
    )


def tls_data(data: bytes, offset: int = 0, ssl: int = 0xABC, cookie: int = 0, fd: int = -1):
    return TlsDataEvent(
        **{**hdr(100, ts=3 * S), "flags": 1},
        ssl=ssl,
        cookie=cookie,
        fd=fd,
        offset=offset,
        data=data,
    )


def test_chunks_join_by_offset_and_repeats_add_nothing() -> None:
    t = StreamTracker()
    v = t.on_send(send(b"{"), 100)
    assert v.levels[0].data == b"{" and v.sent == 1
    v2 = t.on_chunk(chunk(b'"id":1}\n', 1))
    assert v2 is not None and v2.levels[0].data == b'{"id":1}\n'
    assert t.on_chunk(chunk(b'"id"', 1)) is None, "a repeat of captured bytes"
    v3 = t.on_chunk(chunk(b"1}\nmore", 6))  # overlaps: only the new tail is added
    assert v3 is not None and v3.levels[0].data == b'{"id":1}\nmore'


def test_reply_is_its_own_direction() -> None:
    t = StreamTracker()
    t.on_send(send(b"\x05\x01\x00"), 100)
    v = t.on_chunk(chunk(b"\x05\x00", 0, flags=STREAM_REPLY))
    assert v is not None and v.replied == 2 and v.levels[0].reply == b"\x05\x00"
    assert v.sent == 3


def test_gap_truncation_and_time_are_counted_and_marked() -> None:
    t = StreamTracker()
    t.on_send(send(b"ab"), 100)
    v = t.on_chunk(chunk(b"zz", 10, flags=STREAM_GAP))
    assert v is not None and v.gaps >= 1 and t.counts["gaps"] >= 1
    v = t.on_chunk(chunk(b"yy", 12, flags=STREAM_TRUNCATED))
    assert v is not None and v.truncated and t.counts["truncated"] == 1
    assert t.on_chunk(chunk(b"", 14, flags=STREAM_LATE)) is None
    assert t.get(7).cut_short and t.counts["cut_short"] == 1  # type: ignore[union-attr]


def test_reply_first_is_not_an_orphan_but_our_bytes_are() -> None:
    t = StreamTracker()
    assert t.on_chunk(chunk(b"SSH-2.0-OpenSSH_9.2\r\n", 0, cookie=1, flags=STREAM_REPLY))
    assert t.counts["orphan_chunks"] == 0
    assert t.get(1).daddr == "10.0.0.1"  # type: ignore[union-attr]  # swapped: the peer
    assert t.on_chunk(chunk(b"rest", 300, cookie=2))
    assert t.counts["orphan_chunks"] == 1


def test_bounds_evict_expire_close() -> None:
    t = StreamTracker(max_streams=64, window_s=10)
    for c in range(70):
        t.on_send(send(b"x", cookie=c + 100, ts=S), 100)
    assert t.stats()["open"] == 64 and t.counts["evicted"] == 6
    assert t.on_chunk(chunk(b"yz", 1, cookie=169)) is not None  # a second chunk: a Stream
    assert bytes(t.get(169).out) == b"xyz"  # type: ignore[union-attr]
    t.on_close("10.0.0.1", 40000, "198.51.100.2", 3333)  # its tuple
    t.expire(2 * S)
    assert t.counts["closed"] == 1 and t.stats()["open"] == 63
    t.expire(S + 16 * S)  # past the window and its grace: one-segment openings go too
    assert t.stats()["open"] == 0 and t.counts["expired"] == 63


def test_tls_plaintext_binds_by_fd_or_cookie_or_stays_alone() -> None:
    t = StreamTracker()
    t.on_connect(100, 5, 7)
    t.on_send(send(b"\x16\x03\x01"), 100)
    v = t.on_tls_data(tls_data(b'{"method":"login"}', fd=5))
    assert v.cookie == 7 and v.tls_library == "openssl" and t.counts["tls_bound_fd"] == 1
    assert v.levels[-1].source == "tls"
    # a second object, bound later by the kernel's segment correlation
    alone = t.on_tls_data(tls_data(b"GET / HTTP/1.1\r\n\r\n", ssl=0xDEF))
    assert alone.cookie == 0 and alone.daddr is None and alone.levels[0].source == "tls"
    t.on_send(send(b"\x16\x03\x01", cookie=9), 100)
    bound = t.on_tls_bind(TlsBindEvent(**hdr(100), ssl=0xDEF, cookie=9))
    assert bound is not None and bound.cookie == 9 and t.counts["tls_bound_cookie"] == 1
    assert t.on_tls_bind(TlsBindEvent(**hdr(100), ssl=0xDEF, cookie=9)) is None


def test_tls_object_reused_after_free_starts_again() -> None:
    t = StreamTracker()
    t.on_tls_data(tls_data(b"first connection"))
    v = t.on_tls_data(tls_data(b"second", offset=0))
    assert v.levels[0].data == b"second" and t.counts["tls_objects"] == 2


def test_announce_once_per_settled_layer() -> None:
    t = StreamTracker()
    v = t.on_send(send(b"\x05\x01\x00"), 100)
    assert not t.announce(v), "a greeting names no target yet"
    v = t.on_chunk(chunk(b"\x05\x01\x00\x03\x04pool\x0d\x05", 3))
    assert v is not None and t.announce(v) and not t.announce(v)
    v = t.on_chunk(chunk(python_client_hello(), 14))
    assert v is not None and [layer.kind for layer in v.layers] == ["socks5", "tls"]
    assert t.announce(v) and not t.announce(v)
    v = t.on_tls_data(tls_data(b"hello", fd=-1, cookie=7))
    assert t.announce(v), "plaintext seen for the first time"
