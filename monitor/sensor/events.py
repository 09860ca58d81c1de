"""Typed event records, decoded from the kernel's raw ring-buffer bytes.

The byte layouts are defined once, in ``probes/rlguard.h``.  bcc turns them into
ctypes classes (the ``layout_*`` maps); :class:`RecordDecoder` derives a
``struct.Struct`` from each ctypes class (faster to unpack than ctypes field
access) and builds the typed records below.  This is the edge: every string
the kernel hands us is bounded and sanitised here, once.
"""

from __future__ import annotations

import ctypes
import socket
import struct
from dataclasses import dataclass, field
from typing import Any, ClassVar

from monitor.sanitize import safe_text, split_nul

# enum rlg_event_type in probes/rlguard.h; the names are also event.action.
EVENT_TYPES: dict[int, str] = {
    1: "exec",
    2: "fork",
    3: "exit",
    4: "connect",
    5: "tcp_state",
    6: "send",
    7: "dns",
    8: "tagset",
    9: "dup",
    10: "gpu_open",
    11: "gpu_close",
    12: "stream",
    13: "tls_data",
    14: "tls_bind",
    15: "stream_tick",
    20: "unix_listen",
    21: "unix_connect",
}

# flag bits, mirrored from probes/rlguard.h (the header is the source of truth;
# tests/integration/test_layouts.py checks these against it)
EXEC_ARGS_TRUNCATED = 1
EXEC_ARG_TRUNCATED = 2
EXEC_ENV_SCAN_TRUNCATED = 8
EXEC_TAG_TRUNCATED = 16
EXEC_ARGV_UNREADABLE = 64
CONNECT_SYSCALL = 1
CONNECT_SOCKINFO = 2
CONNECT_KERNEL = 4
SEND_OWNER_DIFFERS = 1
SEND_SENDER_KNOWN = 2
SEND_SENDER_QUEUED = 4
TCP_OWNER_KNOWN = 1
GPU_VIA_OPENAT = 1
GPU_VIA_OPENAT2 = 2
GPU_VIA_OPEN = 4
GPU_CLOSE_RANGE = 1
STREAM_REPLY = 1
STREAM_TRUNCATED = 2
STREAM_LATE = 4
STREAM_GAP = 8
STREAM_OWNER_DIFFERS = 16
TLS_OPENSSL = 1
TLS_GNUTLS = 2
TLS_BIND_COOKIE = 4
TLS_BIND_FD = 8
O_CLOEXEC = 0o2000000  # asm-generic fcntl.h (x86-64, arm64)

TCP_STATES = {
    1: "ESTABLISHED",
    2: "SYN_SENT",
    3: "SYN_RECV",
    4: "FIN_WAIT1",
    5: "FIN_WAIT2",
    6: "TIME_WAIT",
    7: "CLOSE",
    8: "CLOSE_WAIT",
    9: "LAST_ACK",
    10: "LISTEN",
    11: "CLOSING",
    12: "NEW_SYN_RECV",
}
SOCK_TYPES = {1: "stream", 2: "dgram", 3: "raw", 5: "seqpacket"}
IPPROTO = {6: "tcp", 17: "udp", 1: "icmp", 58: "ipv6-icmp", 132: "sctp", 0: None}

AF_INET = 2
AF_INET6 = 10

COMM_LIMIT = 64
PATH_LIMIT = 1024
ARG_LIMIT = 1024


def format_ip(family: int, raw: bytes) -> str | None:
    """Render a 16-byte address field; None for an unknown family."""
    if family == AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    if family == AF_INET6:
        return socket.inet_ntop(socket.AF_INET6, raw[:16])
    return None


def errno_name(ret: int) -> str:
    """Name a syscall result: "success", "in_progress", "ECONNREFUSED"..."""
    if ret == 0:
        return "success"
    if ret == 1:
        return "unknown"
    if ret == -115:
        return "in_progress"
    import errno

    return errno.errorcode.get(-ret, f"E{-ret}")


@dataclass(slots=True)
class Event:
    """Fields every record carries (struct rlg_header)."""

    action: ClassVar[str] = "event"
    pid: int
    tid: int
    ppid: int
    ts_ns: int  # CLOCK_BOOTTIME
    cgroup_id: int
    tagset_id: int
    tag_origin: int
    uid: int
    gid: int
    flags: int
    comm: str


@dataclass(slots=True)
class ExecEvent(Event):
    action: ClassVar[str] = "exec"
    filename: str = ""
    argv: list[str] = field(default_factory=list)
    args_truncated: bool = False
    own_tag_mask: int = 0


@dataclass(slots=True)
class ForkEvent(Event):
    action: ClassVar[str] = "fork"
    child_pid: int = 0


@dataclass(slots=True)
class ExitEvent(Event):
    action: ClassVar[str] = "exit"
    exit_code: int = -1
    exit_signal: int = 0


@dataclass(slots=True)
class ConnectEvent(Event):
    action: ClassVar[str] = "connect"
    fd: int = -1
    ret: int = 1
    cookie: int = 0
    family: int = 0
    daddr: str | None = None
    dport: int = 0
    sock_type: int = 0
    protocol: int = 0
    fold_id: int = 0  # 0: not folded (see probes/rlguard.h)
    fold_count: int = 0

    @property
    def transport(self) -> str | None:
        if self.sock_type == 1:
            return "tcp"
        if self.sock_type == 2:
            return "udp"
        return IPPROTO.get(self.protocol)


@dataclass(slots=True)
class TcpStateEvent(Event):
    action: ClassVar[str] = "tcp_state"
    skaddr: int = 0
    oldstate: int = 0
    newstate: int = 0
    family: int = 0
    saddr: str | None = None
    daddr: str | None = None
    sport: int = 0
    dport: int = 0
    accept_count: int = 0  # accepted ESTABLISHED: running count of its accept fold

    @property
    def owner_known(self) -> bool:
        return bool(self.flags & TCP_OWNER_KNOWN)


@dataclass(slots=True)
class DupEvent(Event):
    """dup2/dup3 of oldfd onto stdin, stdout or stderr."""

    action: ClassVar[str] = "dup"
    oldfd: int = -1
    newfd: int = -1


@dataclass(slots=True)
class GpuOpenEvent(Event):
    """An open of a configured GPU device path (or a holding found by the /proc scan)."""

    action: ClassVar[str] = "gpu_open"
    fd: int = -1
    ret: int = 0
    open_flags: int = 0
    pattern: int = 0
    path: str = ""
    # "openat", "openat2", "open" (the probe), "scan" (/proc), "fork" (inherited)
    via: str = "openat"
    rdev: int | None = None  # device number, when known (scan)


@dataclass(slots=True)
class GpuCloseEvent(Event):
    """close() of a GPU fd, or close_range() over fds of a process that holds one."""

    action: ClassVar[str] = "gpu_close"
    fd: int = -1
    last_fd: int = -1
    via: str = "close"  # "close", "close_range" (the probe) or "scan" (/proc)
    path: str = ""  # filled from the holder table, not by the kernel

    @property
    def is_range(self) -> bool:
        return bool(self.flags & GPU_CLOSE_RANGE)


@dataclass(slots=True)
class UnixEvent(Event):
    """An AF_UNIX socket path: one that listens, or one a process connected to."""

    fd: int = -1
    ret: int = 0
    path: str = ""  # as the process gave it; "@name" for an abstract name
    abstract: bool = False


@dataclass(slots=True)
class UnixListenEvent(UnixEvent):
    action: ClassVar[str] = "unix_listen"


@dataclass(slots=True)
class UnixConnectEvent(UnixEvent):
    action: ClassVar[str] = "unix_connect"


def sun_path(raw: bytes, length: int) -> tuple[str, bool]:
    """sun_path as text: a path up to its NUL, or "@" and an abstract name (NULs escaped)."""
    raw = raw[: max(0, min(length, len(raw)))]
    if raw[:1] == b"\0":
        return "@" + safe_text(raw[1:], PATH_LIMIT), True
    return safe_text(_cstr(raw), PATH_LIMIT), False


@dataclass(slots=True)
class PacketEvent(Event):
    """Bytes seen leaving a local socket (cgroup egress hook)."""

    cookie: int = 0
    payload_len: int = 0
    family: int = 0
    saddr: str | None = None
    daddr: str | None = None
    sport: int = 0
    dport: int = 0
    data: bytes = b""


@dataclass(slots=True)
class SendEvent(PacketEvent):
    """First payload of a new outbound TCP connection."""

    action: ClassVar[str] = "send"
    owner_pid: int = 0


@dataclass(slots=True)
class DnsEvent(PacketEvent):
    action: ClassVar[str] = "dns"
    transport: str = "udp"


@dataclass(slots=True)
class StreamEvent(PacketEvent):
    """A later chunk of an outbound stream's opening, or of its reply (``reply``).

    ``offset`` places ``data`` in its direction's byte stream (TCP sequence numbers,
    so retransmissions are already gone); ``payload_len`` is the segment's payload.
    For a reply, saddr/sport are the peer's (as on the packet).
    """

    action: ClassVar[str] = "stream"
    owner_pid: int = 0
    offset: int = 0

    @property
    def reply(self) -> bool:
        return bool(self.flags & STREAM_REPLY)

    @property
    def truncated(self) -> bool:
        return bool(self.flags & STREAM_TRUNCATED)

    @property
    def late(self) -> bool:
        return bool(self.flags & STREAM_LATE)

    @property
    def gap(self) -> bool:
        return bool(self.flags & STREAM_GAP)


@dataclass(slots=True)
class TlsDataEvent(Event):
    """TLS plaintext a process handed its TLS library (an entry uprobe on the write call)."""

    action: ClassVar[str] = "tls_data"
    ssl: int = 0  # the library's object: an id within the process
    cookie: int = 0  # socket cookie once the kernel tied the object to a segment
    fd: int = -1  # the fd the library was given (SSL_set_fd), -1 when unknown
    offset: int = 0  # plaintext offset of data within this object
    call_len: int = 0
    data: bytes = b""

    @property
    def library(self) -> str:
        return "gnutls" if self.flags & TLS_GNUTLS else "openssl"


@dataclass(slots=True)
class TlsBindEvent(Event):
    """A TLS object tied to its socket by the segment its write sent."""

    action: ClassVar[str] = "tls_bind"
    ssl: int = 0
    cookie: int = 0
    fd: int = -1


@dataclass(slots=True)
class StreamTickEvent(Event):
    """Cumulative activity of a live outbound stream (at most one per interval)."""

    action: ClassVar[str] = "stream_tick"
    cookie: int = 0
    owner_pid: int = 0
    family: int = 0
    daddr: str | None = None
    dport: int = 0
    first_ns: int = 0
    segs: int = 0
    bytes: int = 0
    rsegs: int = 0
    rbytes: int = 0


@dataclass(slots=True)
class TagsetEvent(Event):
    """Tag values of a new tagset (an exec with its own tags)."""

    action: ClassVar[str] = "tagset"
    id: int = 0
    present_mask: int = 0
    own_mask: int = 0
    truncated_mask: int = 0
    values: list[str | None] = field(default_factory=list)


_HEADER_FIELDS = (
    "type",
    "pid",
    "tid",
    "ppid",
    "ts_ns",
    "cgroup_id",
    "tagset_id",
    "tag_origin",
    "uid",
    "gid",
    "flags",
    "comm",
)


@dataclass(frozen=True)
class Layout:
    """A struct.Struct over the fixed part of a record, plus its variable tail."""

    names: tuple[str, ...]
    unpacker: struct.Struct
    size: int
    tail_name: str | None
    tail_offset: int


def _flatten(cls: type, base: int = 0, prefix: str = "") -> list[tuple[str, int, type]]:
    out: list[tuple[str, int, type]] = []
    for name, ctype, *_ in cls._fields_:  # type: ignore[attr-defined]
        if name.startswith("__pad"):
            continue  # padding bcc adds to mirror the C layout
        off = base + getattr(cls, name).offset
        if isinstance(ctype, type) and issubclass(ctype, ctypes.Structure):
            # the header is flattened without a prefix: pid, tid, ...
            sub = "" if name == "hdr" else f"{prefix}{name}_"
            out.extend(_flatten(ctype, off, sub))
        else:
            out.append((prefix + name, off, ctype))
    return out


_SIZED = {1: "b", 2: "h", 4: "i", 8: "q"}


def _scalar_code(ctype: type) -> str:
    """struct code by size and signedness ('<' uses standard sizes: 'L' is 4 bytes)."""
    code: str = ctype._type_  # type: ignore[attr-defined]
    if code in ("c", "?"):
        return code
    sized = _SIZED[ctypes.sizeof(ctype)]
    return sized if code.islower() else sized.upper()


def layout_from_ctypes(cls: type, tail: str | None = None) -> Layout:
    """Derive an unpacker from a bcc-generated ctypes class."""
    fmt = ["<"]
    names: list[str] = []
    pos = 0
    tail_offset = ctypes.sizeof(cls)
    for name, off, ctype in _flatten(cls):
        if name == tail:
            tail_offset = off
            continue
        if off > pos:
            fmt.append(f"{off - pos}x")
        size = ctypes.sizeof(ctype)
        if hasattr(ctype, "_length_"):
            fmt.append(f"{ctype._length_ * ctypes.sizeof(ctype._type_)}s")  # type: ignore[attr-defined]
        else:
            fmt.append(_scalar_code(ctype))
        names.append(name)
        pos = off + size
    unpacker = struct.Struct("".join(fmt))
    return Layout(tuple(names), unpacker, ctypes.sizeof(cls), tail, tail_offset)


def _cstr(raw: bytes) -> bytes:
    n = raw.find(b"\0")
    return raw if n < 0 else raw[:n]


def tag_values(blob: bytes, present_mask: int, width: int, count: int) -> list[str | None]:
    """The values of a struct rlg_tagset blob (one `width`-byte slot per key), sanitised."""
    return [
        safe_text(_cstr(blob[i * width : (i + 1) * width]), width * 4)
        if present_mask & (1 << i)
        else None
        for i in range(count)
    ]


class RecordDecoder:
    """Turns raw ring-buffer records into typed events.

    ``layouts`` maps an event type name to the ctypes class bcc derived for it
    (see :func:`monitor.sensor.probes.Sensor.layouts`).
    """

    def __init__(self, layouts: dict[str, type], tag_value_len: int, max_tags: int) -> None:
        tails = {
            "exec": "args",
            "send": "data",
            "dns": "data",
            "stream": "data",
            "tls_data": "data",
        }
        self._layouts = {
            name: layout_from_ctypes(cls, tails.get(name)) for name, cls in layouts.items()
        }
        # a type without a layout decodes to None (counted as undecodable)
        self._by_type = {
            num: self._layouts[name] for num, name in EVENT_TYPES.items() if name in self._layouts
        }
        self._tag_value_len = tag_value_len
        self._max_tags = max_tags
        self._decoders = {
            1: self._exec,
            2: self._fork,
            3: self._exit,
            4: self._connect,
            5: self._tcp_state,
            6: self._send,
            7: self._dns,
            8: self._tagset,
            9: self._dup,
            10: self._gpu_open,
            11: self._gpu_close,
            12: self._stream,
            13: self._tls_data,
            14: self._tls_bind,
            15: self._stream_tick,
            20: self._unix_listen,
            21: self._unix_connect,
        }

    def decode(self, raw: bytes) -> Event | None:
        """Decode one record; None for a record too short or of an unknown type."""
        if len(raw) < 4:
            return None
        etype = int.from_bytes(raw[:4], "little")
        lay = self._by_type.get(etype)
        if lay is None or len(raw) < lay.unpacker.size:
            return None  # unknown type or shorter than its fixed part: counted by the caller
        vals = lay.unpacker.unpack_from(raw)
        f = dict(zip(lay.names, vals, strict=True))
        return self._decoders[etype](f, raw, lay)

    @staticmethod
    def _hdr(f: dict[str, Any]) -> dict[str, Any]:
        return {
            "pid": f["pid"],
            "tid": f["tid"],
            "ppid": f["ppid"],
            "ts_ns": f["ts_ns"],
            "cgroup_id": f["cgroup_id"],
            "tagset_id": f["tagset_id"],
            "tag_origin": f["tag_origin"],
            "uid": f["uid"],
            "gid": f["gid"],
            "flags": f["flags"],
            "comm": safe_text(_cstr(f["comm"]), COMM_LIMIT),
        }

    def _exec(self, f: dict[str, Any], raw: bytes, lay: Layout) -> ExecEvent:
        size = min(f["args_size"], len(raw) - lay.tail_offset)
        args = split_nul(raw[lay.tail_offset : lay.tail_offset + size], f["args_count"])
        return ExecEvent(
            **self._hdr(f),
            filename=safe_text(_cstr(f["filename"]), PATH_LIMIT),
            argv=[safe_text(a, ARG_LIMIT) for a in args],
            args_truncated=bool(f["flags"] & (EXEC_ARGS_TRUNCATED | EXEC_ARG_TRUNCATED)),
            own_tag_mask=f["own_tag_mask"],
        )

    def _fork(self, f: dict[str, Any], raw: bytes, lay: Layout) -> ForkEvent:
        return ForkEvent(**self._hdr(f), child_pid=f["child_pid"])

    def _exit(self, f: dict[str, Any], raw: bytes, lay: Layout) -> ExitEvent:
        return ExitEvent(**self._hdr(f), exit_code=f["exit_code"], exit_signal=f["exit_signal"])

    def _connect(self, f: dict[str, Any], raw: bytes, lay: Layout) -> ConnectEvent:
        return ConnectEvent(
            **self._hdr(f),
            fd=f["fd"],
            ret=f["ret"],
            cookie=f["cookie"],
            family=f["family"],
            daddr=format_ip(f["family"], f["daddr"]),
            dport=f["dport"],
            sock_type=f["sock_type"],
            protocol=f["protocol"],
            fold_id=f["fold_id"],
            fold_count=f["fold_count"],
        )

    def _tcp_state(self, f: dict[str, Any], raw: bytes, lay: Layout) -> TcpStateEvent:
        return TcpStateEvent(
            **self._hdr(f),
            skaddr=f["skaddr"],
            oldstate=f["oldstate"],
            newstate=f["newstate"],
            family=f["family"],
            saddr=format_ip(f["family"], f["saddr"]),
            daddr=format_ip(f["family"], f["daddr"]),
            sport=f["sport"],
            dport=f["dport"],
            accept_count=f["accept_count"],
        )

    def _packet(self, f: dict[str, Any], raw: bytes, lay: Layout) -> dict[str, Any]:
        n = min(f["captured"], len(raw) - lay.tail_offset)
        return dict(
            **self._hdr(f),
            cookie=f["cookie"],
            payload_len=f["payload_len"],
            family=f["family"],
            saddr=format_ip(f["family"], f["saddr"]),
            daddr=format_ip(f["family"], f["daddr"]),
            sport=f["sport"],
            dport=f["dport"],
            data=bytes(raw[lay.tail_offset : lay.tail_offset + n]),
        )

    def _send(self, f: dict[str, Any], raw: bytes, lay: Layout) -> SendEvent:
        return SendEvent(**self._packet(f, raw, lay), owner_pid=f["owner_pid"])

    def _stream(self, f: dict[str, Any], raw: bytes, lay: Layout) -> StreamEvent:
        f["payload_len"] = f["seg_len"]
        return StreamEvent(
            **self._packet(f, raw, lay), owner_pid=f["owner_pid"], offset=f["offset"]
        )

    def _tls_data(self, f: dict[str, Any], raw: bytes, lay: Layout) -> TlsDataEvent:
        n = min(f["captured"], len(raw) - lay.tail_offset)
        return TlsDataEvent(
            **self._hdr(f),
            ssl=f["ssl"],
            cookie=f["cookie"],
            fd=f["fd"],
            offset=f["offset"],
            call_len=f["call_len"],
            data=bytes(raw[lay.tail_offset : lay.tail_offset + max(0, n)]),
        )

    def _tls_bind(self, f: dict[str, Any], raw: bytes, lay: Layout) -> TlsBindEvent:
        return TlsBindEvent(**self._hdr(f), ssl=f["ssl"], cookie=f["cookie"], fd=f["fd"])

    def _stream_tick(self, f: dict[str, Any], raw: bytes, lay: Layout) -> StreamTickEvent:
        return StreamTickEvent(
            **self._hdr(f),
            cookie=f["cookie"],
            owner_pid=f["owner_pid"],
            family=f["family"],
            daddr=format_ip(f["family"], f["daddr"]),
            dport=f["dport"],
            first_ns=f["first_ns"],
            segs=f["segs"],
            bytes=f["bytes"],
            rsegs=f["rsegs"],
            rbytes=f["rbytes"],
        )

    def _dns(self, f: dict[str, Any], raw: bytes, lay: Layout) -> DnsEvent:
        return DnsEvent(**self._packet(f, raw, lay), transport="udp")

    def _dup(self, f: dict[str, Any], raw: bytes, lay: Layout) -> DupEvent:
        return DupEvent(**self._hdr(f), oldfd=f["oldfd"], newfd=f["newfd"])

    def _gpu_open(self, f: dict[str, Any], raw: bytes, lay: Layout) -> GpuOpenEvent:
        via = f["flags"]
        return GpuOpenEvent(
            **self._hdr(f),
            fd=f["fd"],
            ret=f["ret"],
            open_flags=f["open_flags"],
            pattern=f["pattern"],
            path=safe_text(_cstr(f["path"]), PATH_LIMIT),
            via="openat2" if via & GPU_VIA_OPENAT2 else "open" if via & GPU_VIA_OPEN else "openat",
        )

    def _gpu_close(self, f: dict[str, Any], raw: bytes, lay: Layout) -> GpuCloseEvent:
        via = "close_range" if f["flags"] & GPU_CLOSE_RANGE else "close"
        return GpuCloseEvent(**self._hdr(f), fd=f["fd"], last_fd=f["last_fd"], via=via)

    def _unix(self, f: dict[str, Any]) -> dict[str, Any]:
        path, abstract = sun_path(f["path"], f["path_len"])
        return dict(**self._hdr(f), fd=f["fd"], ret=f["ret"], path=path, abstract=abstract)

    def _unix_listen(self, f: dict[str, Any], raw: bytes, lay: Layout) -> UnixListenEvent:
        return UnixListenEvent(**self._unix(f))

    def _unix_connect(self, f: dict[str, Any], raw: bytes, lay: Layout) -> UnixConnectEvent:
        return UnixConnectEvent(**self._unix(f))

    def _tagset(self, f: dict[str, Any], raw: bytes, lay: Layout) -> TagsetEvent:
        values = tag_values(
            f["tags_values"], f["tags_present_mask"], self._tag_value_len, self._max_tags
        )
        return TagsetEvent(
            **self._hdr(f),
            id=f["id"],
            present_mask=f["tags_present_mask"],
            own_mask=f["tags_own_mask"],
            truncated_mask=f["tags_truncated_mask"],
            values=values,
        )
