"""Parse the question of a DNS message captured off the wire (RFC 1035 §4.1).

Payloads come from any process on the host, so the parser trusts nothing: every
read is bounds-checked, compression pointers may only point backwards (so they
cannot loop) and are limited in number, and anything malformed yields ``None``
rather than an exception. Label bytes are rendered with
:func:`monitor.sanitize.safe_text`, so a name is always safe to print and log.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from monitor.sanitize import safe_text

__all__ = [
    "QTYPE_NAMES",
    "DnsQuestion",
    "build_query",
    "parse_dns_message",
    "parse_stream_query",
    "qtype_name",
    "read_name",
]

HEADER_LEN: Final = 12  # RFC 1035 §4.1.1
MAX_LABEL_LEN: Final = 63  # RFC 1035 §2.3.4
MAX_NAME_LEN: Final = 255  # RFC 1035 §2.3.4, wire form: length octets and root included
# Valid pointers strictly decrease (see read_name), so they cannot loop; this
# bound only caps the work a hostile message can cause.
MAX_POINTER_HOPS: Final = 64

_FLAG_QR: Final = 0x8000
_FLAG_RD: Final = 0x0100
_CLASS_IN: Final = 1

QTYPE_NAMES: Final = MappingProxyType(
    {
        1: "A",
        2: "NS",
        5: "CNAME",
        6: "SOA",
        12: "PTR",
        15: "MX",
        16: "TXT",
        28: "AAAA",
        33: "SRV",
        35: "NAPTR",
        41: "OPT",
        43: "DS",
        46: "RRSIG",
        47: "NSEC",
        48: "DNSKEY",
        64: "SVCB",
        65: "HTTPS",
        255: "ANY",
        257: "CAA",
    }
)

_HEADER: Final = struct.Struct("!HHH")  # id, flags, qdcount (the other counts are unused)
_QTAIL: Final = struct.Struct("!HH")  # qtype, qclass

# Bytes that need no escaping in a label; anything else goes through safe_text.
_PLAIN_LABEL_BYTES: Final = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789-_*")


@dataclass(frozen=True, slots=True)
class DnsQuestion:
    """Header fields and the first question of a DNS message."""

    id: int
    is_response: bool
    opcode: int
    qdcount: int
    name: str
    qtype: int
    qtype_name: str
    qclass: int


def qtype_name(qtype: int) -> str:
    """Return the mnemonic for ``qtype`` (``"AAAA"``), or ``"TYPE<n>"`` (RFC 3597 §5)."""
    return QTYPE_NAMES.get(qtype) or f"TYPE{qtype}"


def _label_text(label: bytes) -> str:
    # DNS compares names case-insensitively in ASCII only (RFC 4343), and
    # bytes.lower() touches only A-Z, so escapes of other bytes are unaffected.
    label = label.lower()
    if _PLAIN_LABEL_BYTES.issuperset(label):
        return label.decode("ascii")
    # Labels may hold any byte. A dot inside a label is written "\." as in
    # RFC 1035 §5.1 presentation format, so "a.b" as one label cannot pass for
    # two; safe_text already doubles backslashes, so this stays unambiguous.
    # 4 characters per byte is the worst case, so the label is never cut.
    return safe_text(label, limit=4 * MAX_LABEL_LEN).replace(".", "\\.")


def read_name(msg: bytes, offset: int) -> tuple[str, int] | None:
    """Read a possibly compressed domain name at ``offset`` of a DNS message.

    Returns the name in presentation form (lower-case, labels joined with ".",
    no trailing dot, the root as ".") and the offset just past the name where
    it starts, i.e. past the first compression pointer if there is one
    (RFC 1035 §4.1.4). Returns None for truncated or malformed names, labels
    over 63 bytes, names over 255 bytes, and pointers that do not point strictly
    before the part of the name being read (which rules out loops) or that
    point into the header.
    """
    size = len(msg)
    labels: list[str] = []
    wire_len = 1  # the terminating root label
    pos = offset
    segment_start = offset  # where reading resumed after the last jump
    end: int | None = None
    hops = 0
    while True:
        if pos < 0 or pos >= size:
            return None
        length = msg[pos]
        kind = length & 0xC0
        if kind == 0xC0:  # compression pointer (RFC 1035 §4.1.4)
            if pos + 1 >= size:
                return None
            target = ((length & 0x3F) << 8) | msg[pos + 1]
            hops += 1
            # A valid pointer refers to a name that appeared earlier, so it
            # lands before everything read since the last jump; anything else
            # is a loop or garbage.
            # Nor can it land in the 12-byte header, where no name lives.
            if not HEADER_LEN <= target < segment_start or hops > MAX_POINTER_HOPS:
                return None
            if end is None:
                end = pos + 2
            pos = segment_start = target
            continue
        if kind:  # 0x40 and 0x80: extended label types (RFC 6891 §5), not names
            return None
        if length == 0:
            break
        if pos + 1 + length > size:
            return None
        wire_len += 1 + length
        if wire_len > MAX_NAME_LEN:
            return None
        labels.append(_label_text(msg[pos + 1 : pos + 1 + length]))
        pos += 1 + length
    if end is None:
        end = pos + 1
    return (".".join(labels) or "."), end


def parse_dns_message(payload: bytes, tcp: bool = False) -> DnsQuestion | None:
    """Parse the header and first question of a DNS message.

    With ``tcp=True`` the payload starts with the 2-byte length prefix of DNS
    over TCP (RFC 1035 §4.2.2); a prefix larger than the payload is accepted,
    since a capture may hold only the start of the message. Returns None for
    anything truncated or malformed, or a message without a question; never
    raises on any input.
    """
    msg = payload if isinstance(payload, bytes) else bytes(payload)
    if tcp:
        if len(msg) < 2:
            return None
        msg = msg[2 : 2 + int.from_bytes(msg[:2], "big")]
    if len(msg) < HEADER_LEN:
        return None
    msg_id, flags, qdcount = _HEADER.unpack_from(msg, 0)
    if qdcount == 0:
        return None
    parsed = read_name(msg, HEADER_LEN)
    if parsed is None:
        return None
    name, end = parsed
    if end + _QTAIL.size > len(msg):
        return None
    qtype, qclass = _QTAIL.unpack_from(msg, end)
    return DnsQuestion(
        id=msg_id,
        is_response=bool(flags & _FLAG_QR),
        opcode=(flags >> 11) & 0xF,
        qdcount=qdcount,
        name=name,
        qtype=qtype,
        qtype_name=qtype_name(qtype),
        qclass=qclass,
    )


DNS_TCP_PORT: Final = 53


def parse_stream_query(payload: bytes, dport: int) -> DnsQuestion | None:
    """The DNS question at the start of a TCP stream to port 53 (RFC 1035 4.2.2, RFC 7766).

    A function of the stream's opening bytes alone, however many segments they were
    captured from: the 2-byte length prefix, then the message (possibly cut short by
    the capture).  None for other ports, responses and anything that is not DNS.
    """
    if dport != DNS_TCP_PORT or len(payload) < 2 + HEADER_LEN:
        return None
    q = parse_dns_message(payload, tcp=True)
    if q is None or q.is_response or q.opcode != 0 or not 0 < q.qdcount <= 4:
        return None
    return q


def _encode_name(name: str) -> bytes:
    if name in ("", "."):
        return b"\0"
    labels = name[:-1].split(".") if name.endswith(".") else name.split(".")
    out = bytearray()
    for label in labels:
        # Non-ASCII labels become their IDNA (punycode) form, as a resolver would send.
        raw = label.encode("ascii") if label.isascii() else label.encode("idna")
        if not 0 < len(raw) <= MAX_LABEL_LEN:
            raise ValueError(f"invalid label {label!r} in {name!r}")
        out.append(len(raw))
        out += raw
    out.append(0)
    if len(out) > MAX_NAME_LEN:
        raise ValueError(f"name too long ({len(out)} > {MAX_NAME_LEN} bytes): {name!r}")
    return bytes(out)


def build_query(name: str, qtype: int = 1, id: int = 0x1234, *, tcp: bool = False) -> bytes:
    """Build a standard recursive query (QR=0, OPCODE=0, RD=1) for ``name``/``qtype``/IN.

    ``name`` is dotted text ("example.com", trailing dot optional, "." for the
    root). With ``tcp=True`` the 2-byte length prefix for DNS over TCP is
    prepended. Raises ValueError for empty or over-long labels or names, and
    for ``qtype`` or ``id`` outside 0..65535.
    """
    if not 0 <= qtype <= 0xFFFF:
        raise ValueError(f"qtype out of range: {qtype}")
    if not 0 <= id <= 0xFFFF:
        raise ValueError(f"id out of range: {id}")
    msg = (
        struct.pack("!6H", id, _FLAG_RD, 1, 0, 0, 0)
        + _encode_name(name)
        + _QTAIL.pack(qtype, _CLASS_IN)
    )
    if tcp:
        return len(msg).to_bytes(2, "big") + msg
    return msg
