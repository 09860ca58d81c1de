"""Record decoding without a kernel.

In production the ctypes layouts come from bcc (compiled from probes/rlguard.h).
Here, test-only mirrors of a few layouts drive the same decoder, and
tests/integration/test_layouts.py checks the mirrors against bcc's classes.
"""

from __future__ import annotations

import ctypes as ct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.sensor.events import (
    EVENT_TYPES,
    ConnectEvent,
    ExecEvent,
    GpuCloseEvent,
    GpuOpenEvent,
    RecordDecoder,
    SendEvent,
    layout_from_ctypes,
)

pytestmark = pytest.mark.unit


class Hdr(ct.Structure):
    _fields_ = [
        ("type", ct.c_uint),
        ("pid", ct.c_uint),
        ("tid", ct.c_uint),
        ("ppid", ct.c_uint),
        ("ts_ns", ct.c_ulonglong),
        ("cgroup_id", ct.c_ulonglong),
        ("tagset_id", ct.c_ulonglong),
        ("tag_origin", ct.c_uint),
        ("uid", ct.c_uint),
        ("gid", ct.c_uint),
        ("flags", ct.c_uint),
        ("comm", ct.c_char * 16),
    ]


class Exec(ct.Structure):
    _fields_ = [
        ("hdr", Hdr),
        ("args_count", ct.c_uint),
        ("args_size", ct.c_uint),
        ("own_tag_mask", ct.c_uint),
        ("pad", ct.c_uint),
        ("filename", ct.c_char * 256),
        ("args", ct.c_char * 8192),
    ]


class Connect(ct.Structure):
    _fields_ = [
        ("hdr", Hdr),
        ("fd", ct.c_int),
        ("ret", ct.c_int),
        ("cookie", ct.c_ulonglong),
        ("family", ct.c_ushort),
        ("dport", ct.c_ushort),
        ("sock_type", ct.c_uint),
        ("protocol", ct.c_uint),
        ("daddr", ct.c_ubyte * 16),
        ("__pad_fold", ct.c_ubyte * 4),  # bcc adds padding like this
        ("fold_id", ct.c_ulonglong),
        ("fold_count", ct.c_ulonglong),
    ]


class Send(ct.Structure):
    _fields_ = [
        ("hdr", Hdr),
        ("cookie", ct.c_ulonglong),
        ("owner_pid", ct.c_uint),
        ("payload_len", ct.c_uint),
        ("captured", ct.c_uint),
        ("family", ct.c_ushort),
        ("sport", ct.c_ushort),
        ("dport", ct.c_ushort),
        ("pad", ct.c_ushort),
        ("saddr", ct.c_ubyte * 16),
        ("daddr", ct.c_ubyte * 16),
        ("data", ct.c_ubyte * 256),
    ]


class GpuOpen(ct.Structure):
    _fields_ = [
        ("hdr", Hdr),
        ("fd", ct.c_int),
        ("ret", ct.c_int),
        ("open_flags", ct.c_uint),
        ("pattern", ct.c_uint),
        ("path", ct.c_char * 128),
    ]


class GpuClose(ct.Structure):
    _fields_ = [("hdr", Hdr), ("fd", ct.c_int), ("last_fd", ct.c_int)]


class Unix(ct.Structure):
    _fields_ = [
        ("hdr", Hdr),
        ("fd", ct.c_int),
        ("ret", ct.c_int),
        ("path_len", ct.c_uint),
        ("pad", ct.c_uint),
        ("path", ct.c_char * 128),
    ]


def decoder() -> RecordDecoder:
    layouts = {name: Hdr for name in ("fork", "exit", "tcp_state", "dns", "tagset", "dup")}
    layouts.update(exec=Exec, connect=Connect, send=Send, gpu_open=GpuOpen, gpu_close=GpuClose)
    layouts.update(unix_listen=Unix, unix_connect=Unix)
    return RecordDecoder(layouts, tag_value_len=64, max_tags=24)


@pytest.mark.parametrize(
    ("raw", "length", "path", "abstract"),
    [
        (b"/tmp/tmux-0/default\0junk", 110, "/tmp/tmux-0/default", False),
        (b"sock", 4, "sock", False),  # relative, without its NUL
        (b"\0tmux\0x", 7, "@tmux\\x00x", True),  # abstract: every byte counts, escaped
        (b"\0\x1b[31m", 6, "@\\x1b[31m", True),  # terminal escapes never pass
    ],
)
def test_unix_paths(raw: bytes, length: int, path: str, abstract: bool) -> None:
    from monitor.sensor.events import UnixConnectEvent

    e = Unix()
    e.hdr = hdr(21)
    e.fd, e.ret, e.path_len = 5, 0, length
    ct.memmove(ct.addressof(e) + Unix.path.offset, raw, len(raw))  # NULs included
    ev = decoder().decode(bytes(e))
    assert isinstance(ev, UnixConnectEvent)
    assert (ev.path, ev.abstract, ev.fd) == (path, abstract, 5)


def hdr(etype: int, comm: bytes = b"python3") -> Hdr:
    h = Hdr()
    h.type, h.pid, h.tid, h.ppid = etype, 100, 101, 1
    h.ts_ns, h.cgroup_id, h.tagset_id, h.tag_origin = 5_000_000_000, 7, 0, 0
    h.comm = comm
    return h


def test_layout_skips_padding_and_tail() -> None:
    lay = layout_from_ctypes(Send, "data")
    assert "data" not in lay.names and "pid" in lay.names
    assert lay.tail_offset == Send.data.offset
    lay2 = layout_from_ctypes(Connect)
    assert "__pad_end" not in lay2.names
    # 8-byte fields are 8 bytes even with '<' (standard sizes)
    assert lay2.unpacker.size <= ct.sizeof(Connect)


def test_exec_variable_length() -> None:
    e = Exec()
    e.hdr = hdr(1, b"tr\x1bue")
    args = b"/bin/true\0--flag\0caf\xc3\xa9\0bad\xff\0"
    e.args_count, e.args_size = 4, len(args)
    e.filename = b"/bin/true"
    ct.memmove(ct.addressof(e) + Exec.args.offset, args, len(args))
    raw = bytes(e)[: Exec.args.offset + len(args)]  # only args_size bytes are sent
    ev = decoder().decode(raw)
    assert isinstance(ev, ExecEvent)
    assert ev.argv == ["/bin/true", "--flag", "café", "bad\\xff"]
    assert ev.comm == "tr\\x1bue"
    assert ev.pid == 100 and ev.ts_ns == 5_000_000_000


def test_connect_addresses() -> None:
    c = Connect()
    c.hdr = hdr(4)
    c.fd, c.ret, c.family, c.dport, c.sock_type = 3, -111, 10, 443, 1
    c.daddr[:] = list(bytes.fromhex("20010db8000000000000000000000002"))
    ev = decoder().decode(bytes(c))
    assert isinstance(ev, ConnectEvent)
    assert ev.daddr == "2001:db8::2" and ev.dport == 443 and ev.transport == "tcp"


def test_send_payload_is_bounded_by_record() -> None:
    s = Send()
    s.hdr = hdr(6)
    s.captured, s.payload_len, s.family = 200, 999, 2
    payload = b"SSH-2.0-OpenSSH_9.2\r\n"
    ct.memmove(ct.addressof(s) + Send.data.offset, payload, len(payload))
    raw = bytes(s)[: Send.data.offset + len(payload)]  # record shorter than `captured` claims
    ev = decoder().decode(raw)
    assert isinstance(ev, SendEvent)
    assert ev.data == payload


@settings(max_examples=300)
@given(st.binary(max_size=600))
def test_garbage_never_raises(raw: bytes) -> None:
    ev = decoder().decode(raw)
    if len(raw) < 4 or int.from_bytes(raw[:4], "little") not in EVENT_TYPES:
        assert ev is None


def test_gpu_open_and_close() -> None:
    e = GpuOpen()
    e.hdr = hdr(10)
    e.hdr.flags = 2  # RLG_GPU_VIA_OPENAT2
    e.fd, e.ret, e.open_flags, e.pattern = 7, 0, 0o2000002, 1
    e.path = b"/dev/nvidia0\x1b[2J"
    ev = decoder().decode(bytes(e))
    assert isinstance(ev, GpuOpenEvent)
    assert (ev.fd, ev.via, ev.pattern, ev.open_flags) == (7, "openat2", 1, 0o2000002)
    assert ev.path == "/dev/nvidia0\\x1b[2J"  # sanitised at the edge
    c = GpuClose()
    c.hdr = hdr(11)
    c.hdr.flags = 1  # RLG_GPU_CLOSE_RANGE
    c.fd, c.last_fd = 3, 2147483647
    cev = decoder().decode(bytes(c))
    assert isinstance(cev, GpuCloseEvent)
    assert cev.is_range and cev.via == "close_range" and (cev.fd, cev.last_fd) == (3, 2147483647)


# -- streams and TLS (issue 14) ----------------------------------------------------------


class StreamRec(ct.Structure):
    _fields_ = [
        ("hdr", Hdr),
        ("cookie", ct.c_ulonglong),
        ("owner_pid", ct.c_uint),
        ("offset", ct.c_uint),
        ("seg_len", ct.c_uint),
        ("captured", ct.c_uint),
        ("family", ct.c_ushort),
        ("sport", ct.c_ushort),
        ("dport", ct.c_ushort),
        ("pad", ct.c_ushort),
        ("saddr", ct.c_ubyte * 16),
        ("daddr", ct.c_ubyte * 16),
        ("data", ct.c_ubyte * 4096),
    ]


class TlsData(ct.Structure):
    _fields_ = [
        ("hdr", Hdr),
        ("ssl", ct.c_ulonglong),
        ("cookie", ct.c_ulonglong),
        ("fd", ct.c_int),
        ("offset", ct.c_uint),
        ("call_len", ct.c_uint),
        ("captured", ct.c_uint),
        ("data", ct.c_ubyte * 4096),
    ]


def stream_decoder() -> RecordDecoder:
    layouts = {name: Hdr for name in ("fork", "exit", "tcp_state", "dns", "tagset", "dup")}
    layouts.update(exec=Exec, connect=Connect, send=Send, stream=StreamRec, tls_data=TlsData)
    return RecordDecoder(layouts, tag_value_len=64, max_tags=24)


def test_stream_chunk_reply_flags_and_bound() -> None:
    from monitor.sensor.events import STREAM_REPLY, STREAM_TRUNCATED, StreamEvent

    s = StreamRec()
    s.hdr = hdr(12)
    s.hdr.flags = STREAM_REPLY | STREAM_TRUNCATED
    s.cookie, s.offset, s.seg_len, s.captured, s.family = 9, 256, 1400, 9999, 2
    s.sport, s.dport = 3333, 40000
    s.saddr[:4] = [198, 51, 100, 2]
    payload = b"\x05\x00"
    ct.memmove(ct.addressof(s) + StreamRec.data.offset, payload, len(payload))
    ev = stream_decoder().decode(bytes(s)[: StreamRec.data.offset + len(payload)])
    assert isinstance(ev, StreamEvent)
    assert ev.reply and ev.truncated and not ev.late and ev.offset == 256
    assert ev.data == payload and ev.payload_len == 1400 and ev.saddr == "198.51.100.2"


def test_tls_data_and_a_type_without_layout() -> None:
    from monitor.sensor.events import TlsDataEvent

    t = TlsData()
    t.hdr = hdr(13)
    t.hdr.flags = 2  # RLG_TLS_GNUTLS
    t.ssl, t.fd, t.call_len, t.captured = 0xDEAD, 5, 70, 5
    ct.memmove(ct.addressof(t) + TlsData.data.offset, b"hello", 5)
    ev = stream_decoder().decode(bytes(t)[: TlsData.data.offset + 5])
    assert isinstance(ev, TlsDataEvent)
    assert (ev.ssl, ev.fd, ev.library, ev.data) == (0xDEAD, 5, "gnutls", b"hello")
    assert decoder().decode(bytes(t)) is None, "no layout for tls_data: undecodable, no crash"
