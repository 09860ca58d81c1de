"""Unit tests for monitor.sensor.dns: hostile-input-safe DNS question parsing."""

from __future__ import annotations

import struct
import unicodedata

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from monitor.sensor.dns import (
    DnsQuestion,
    build_query,
    parse_dns_message,
    qtype_name,
    read_name,
)

pytestmark = pytest.mark.unit

# --- Hand-built captures ----------------------------------------------------------------
# Header layout, RFC 1035 §4.1.1: ID(16) | QR(1) OPCODE(4) AA TC RD RA Z(3) RCODE(4) |
# QDCOUNT | ANCOUNT | NSCOUNT | ARCOUNT, all big-endian.
# Question layout, RFC 1035 §4.1.2: QNAME as length-prefixed labels ending in a zero
# octet (§3.1), then QTYPE(16) and QCLASS(16).

# "www.example.com A IN" query as dig sends it: ID 0xabcd, RD=1, QDCOUNT=1.
QUERY_WWW_EXAMPLE_COM = bytes.fromhex(
    "abcd 0100 0001 0000 0000 0000"  # header
    "03 777777 07 6578616d706c65 03 636f6d 00"  # 3"www" 7"example" 3"com" 0
    "0001 0001"  # QTYPE=A, QCLASS=IN
)

# The answer to it: QR=1 RD=1 RA=1 (0x8180), ANCOUNT=1; the answer's owner name is
# the compression pointer 0xC00C to offset 12, the question's name (RFC 1035 §4.1.4).
RESPONSE_WWW_EXAMPLE_COM = bytes.fromhex(
    "abcd 8180 0001 0001 0000 0000"
    "03 777777 07 6578616d706c65 03 636f6d 00 0001 0001"
    "c00c 0001 0001 00000e10 0004 5db8d822"  # NAME TYPE CLASS TTL RDLENGTH RDATA
)
ANSWER_OFFSET = 12 + 17 + 4


def _rfc1035_compression_example() -> bytes:
    """The message layout drawn in RFC 1035 §4.1.4.

    F.ISI.ARPA at offset 20, FOO.F.ISI.ARPA at 40 (FOO then a pointer to 20), and
    ARPA at 64 (a pointer to 26, where the ARPA label of F.ISI.ARPA starts).
    """
    msg = bytearray(70)
    msg[0:12] = bytes.fromhex("0001 8000 0000 0000 0000 0000")
    msg[20:32] = b"\x01F\x03ISI\x04ARPA\x00"
    msg[40:46] = b"\x03FOO\xc0\x14"
    msg[64:66] = b"\xc0\x1a"
    return bytes(msg)


def test_parse_query_capture() -> None:
    q = parse_dns_message(QUERY_WWW_EXAMPLE_COM)
    assert q == DnsQuestion(
        id=0xABCD,
        is_response=False,
        opcode=0,
        qdcount=1,
        name="www.example.com",
        qtype=1,
        qtype_name="A",
        qclass=1,
    )


def test_parse_response_capture() -> None:
    q = parse_dns_message(RESPONSE_WWW_EXAMPLE_COM)
    assert q is not None
    assert q.is_response is True
    assert q.name == "www.example.com"
    assert read_name(RESPONSE_WWW_EXAMPLE_COM, ANSWER_OFFSET) == (
        "www.example.com",
        ANSWER_OFFSET + 2,
    )


def test_rfc1035_compression_example() -> None:
    msg = _rfc1035_compression_example()
    assert read_name(msg, 20) == ("f.isi.arpa", 32)
    assert read_name(msg, 40) == ("foo.f.isi.arpa", 46)
    assert read_name(msg, 64) == ("arpa", 66)


def test_opcode_and_flags() -> None:
    # Opcode 5 (UPDATE, RFC 2136) with QR=1: flags 0xA800.
    msg = bytearray(QUERY_WWW_EXAMPLE_COM)
    msg[2:4] = b"\xa8\x00"
    q = parse_dns_message(bytes(msg))
    assert q is not None and q.opcode == 5 and q.is_response


def test_root_name() -> None:
    # "./NS/IN" priming query (RFC 8109): QNAME is the single zero octet.
    msg = bytes.fromhex("0007 0000 0001 0000 0000 0000 00 0002 0001")
    q = parse_dns_message(msg)
    assert q is not None and q.name == "." and q.qtype_name == "NS"


def test_names_are_lower_cased() -> None:
    q = parse_dns_message(build_query("WWW.Example.COM"))
    assert q is not None and q.name == "www.example.com"


@pytest.mark.parametrize(
    ("qtype", "name"),
    [(1, "A"), (28, "AAAA"), (65, "HTTPS"), (64, "SVCB"), (255, "ANY"), (257, "CAA")],
)
def test_qtype_names(qtype: int, name: str) -> None:
    assert qtype_name(qtype) == name
    q = parse_dns_message(build_query("example.com", qtype))
    assert q is not None and q.qtype == qtype and q.qtype_name == name


def test_unknown_qtype_uses_rfc3597_form() -> None:
    assert qtype_name(65280) == "TYPE65280"
    assert qtype_name(0) == "TYPE0"


# --- Hostile labels -----------------------------------------------------------------------


def _wire(labels: list[bytes], qtype: int = 1) -> bytes:
    body = b"".join(bytes([len(label)]) + label for label in labels) + b"\0"
    return struct.pack("!6H", 1, 0x0100, 1, 0, 0, 0) + body + struct.pack("!HH", qtype, 1)


def test_terminal_escape_in_label_is_neutralised() -> None:
    q = parse_dns_message(_wire([b"\x1b[2J\x1b]0;pwned\x07", b"com"]))
    assert q is not None
    assert q.name == "\\x1b[2j\\x1b]0;pwned\\x07.com"


def test_dot_inside_a_label_is_escaped() -> None:
    q = parse_dns_message(_wire([b"evil.example", b"attacker", b"net"]))
    assert q is not None and q.name == "evil\\.example.attacker.net"


def test_backslash_and_invalid_utf8_in_label() -> None:
    q = parse_dns_message(_wire([b"a\\b\xff", b"xn--bcher-kva"]))
    assert q is not None and q.name == "a\\\\b\\xff.xn--bcher-kva"


def test_name_length_limits() -> None:
    max_name = [b"a" * 63, b"b" * 63, b"c" * 63, b"d" * 61]  # 3*64 + 62 + 1 = 255 bytes
    q = parse_dns_message(_wire(max_name))
    assert q is not None and len(q.name) == 253
    assert parse_dns_message(_wire([*max_name[:3], b"d" * 62])) is None  # 256 bytes


def test_extended_label_types_are_rejected() -> None:
    # 0x40 / 0x80 prefixes (labels "longer than 63") are not plain labels.
    for first in (0x40, 0x7F, 0x80, 0xBF):
        msg = bytearray(_wire([b"x" * 63, b"com"]))
        msg[12] = first
        assert parse_dns_message(bytes(msg)) is None


# --- Compression pointers ---------------------------------------------------------------


def test_pointer_loops_are_rejected() -> None:
    header = bytes.fromhex("0001 0100 0001 0000 0000 0000")
    tail = b"\x00\x01\x00\x01"
    assert parse_dns_message(header + b"\xc0\x0c" + tail) is None  # points at itself
    assert parse_dns_message(header + b"\x01a\xc0\x0c" + tail) is None  # back to its start
    assert parse_dns_message(header + b"\x01a\xc0\x10" + tail) is None  # forward
    assert parse_dns_message(header + b"\xc0\x02" + tail) is None  # into the header


def test_pointer_ping_pong_in_later_records_is_rejected() -> None:
    # Two names at 33 and 35 that point at each other.
    msg = QUERY_WWW_EXAMPLE_COM + b"\xc0\x23\xc0\x21"
    assert read_name(msg, 33) is None
    assert read_name(msg, 35) is None


def test_pointer_chain_is_bounded() -> None:
    # A long chain of pointers, each to the previous one: legal-looking but costly.
    msg = bytearray(QUERY_WWW_EXAMPLE_COM)
    prev = 12
    for _ in range(200):
        here = len(msg)
        msg += bytes([0xC0 | (prev >> 8), prev & 0xFF])
        prev = here
    assert read_name(bytes(msg), 12 + 17 + 4 + 2 * 10) is not None
    assert read_name(bytes(msg), prev) is None


def test_pointer_past_the_end_is_rejected() -> None:
    assert read_name(QUERY_WWW_EXAMPLE_COM + b"\xc0", len(QUERY_WWW_EXAMPLE_COM)) is None
    assert read_name(QUERY_WWW_EXAMPLE_COM, len(QUERY_WWW_EXAMPLE_COM)) is None
    assert read_name(QUERY_WWW_EXAMPLE_COM, -1) is None


# --- Truncation, garbage, TCP framing -------------------------------------------------------


def test_every_truncation_is_rejected() -> None:
    for cut in range(len(QUERY_WWW_EXAMPLE_COM)):
        assert parse_dns_message(QUERY_WWW_EXAMPLE_COM[:cut]) is None


def test_no_question_is_rejected() -> None:
    msg = bytearray(QUERY_WWW_EXAMPLE_COM)
    msg[4:6] = b"\x00\x00"
    assert parse_dns_message(bytes(msg)) is None


def test_tcp_framing() -> None:
    # DNS over TCP prefixes each message with its length (RFC 1035 §4.2.2).
    framed = struct.pack("!H", len(QUERY_WWW_EXAMPLE_COM)) + QUERY_WWW_EXAMPLE_COM
    assert parse_dns_message(framed, tcp=True) == parse_dns_message(QUERY_WWW_EXAMPLE_COM)
    # Read without tcp=True the prefix shifts every field: garbage, not our question.
    unframed = parse_dns_message(framed)
    assert unframed is None or unframed.name != "www.example.com"
    assert build_query("www.example.com", id=0xABCD, tcp=True) == framed
    # A capture holding only the start of a longer message still yields the question.
    assert parse_dns_message(b"\x01\x00" + QUERY_WWW_EXAMPLE_COM, tcp=True) is not None
    # Two pipelined messages: only the first counts.
    other = build_query("other.example", id=2, tcp=True)
    q = parse_dns_message(framed + other, tcp=True)
    assert q is not None and q.name == "www.example.com"
    # The length prefix cuts the message short.
    assert parse_dns_message(b"\x00\x0c" + QUERY_WWW_EXAMPLE_COM, tcp=True) is None
    assert parse_dns_message(b"\x00", tcp=True) is None
    assert parse_dns_message(b"", tcp=True) is None


def test_accepts_bytearray_and_memoryview() -> None:
    assert parse_dns_message(bytearray(QUERY_WWW_EXAMPLE_COM)) is not None  # type: ignore[arg-type]
    assert parse_dns_message(memoryview(QUERY_WWW_EXAMPLE_COM)) is not None  # type: ignore[arg-type]


# --- build_query ----------------------------------------------------------------------------


def test_build_query_bytes() -> None:
    assert build_query("www.example.com", id=0xABCD) == QUERY_WWW_EXAMPLE_COM
    assert build_query("www.example.com.", id=0xABCD) == QUERY_WWW_EXAMPLE_COM
    assert build_query(".", qtype=2, id=7) == bytes.fromhex(
        "0007 0100 0001 0000 0000 0000 00 0002 0001"
    )


def test_build_query_idna() -> None:
    q = parse_dns_message(build_query("bücher.example"))
    assert q is not None and q.name == "xn--bcher-kva.example"


@pytest.mark.parametrize(
    "name", ["a..b", ".a", "a" * 64 + ".com", ".".join(["a" * 63] * 4) + ".com"]
)
def test_build_query_rejects_bad_names(name: str) -> None:
    with pytest.raises(ValueError):
        build_query(name)


def test_build_query_rejects_out_of_range_numbers() -> None:
    with pytest.raises(ValueError):
        build_query("example.com", qtype=65536)
    with pytest.raises(ValueError):
        build_query("example.com", id=-1)


# --- Properties --------------------------------------------------------------------------------

_LABEL = st.from_regex(r"[A-Za-z0-9_-]{1,63}", fullmatch=True)
_NAME = st.lists(_LABEL, min_size=1, max_size=6).map(".".join).filter(lambda n: len(n) <= 253)


@given(_NAME, st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.booleans())
def test_build_parse_round_trip(name: str, qtype: int, msg_id: int, tcp: bool) -> None:
    q = parse_dns_message(build_query(name, qtype, msg_id, tcp=tcp), tcp=tcp)
    assert q == DnsQuestion(msg_id, False, 0, 1, name.lower(), qtype, qtype_name(qtype), 1)


@given(st.binary(max_size=600), st.booleans())
def test_parse_never_raises_on_arbitrary_bytes(payload: bytes, tcp: bool) -> None:
    parse_dns_message(payload, tcp=tcp)


@given(st.binary(min_size=4, max_size=300), st.integers(1, 3))
def test_parse_never_raises_after_a_plausible_header(body: bytes, qdcount: int) -> None:
    # Fuzz the name parser itself instead of stopping at the header checks.
    msg = struct.pack("!6H", 1, 0x0100, qdcount, 0, 0, 0) + body
    q = parse_dns_message(msg)
    if q is not None:
        _assert_printable(q.name)


@given(st.binary(max_size=300), st.integers(0, 320))
def test_read_name_never_raises(msg: bytes, offset: int) -> None:
    result = read_name(msg, offset)
    if result is not None:
        _assert_printable(result[0])
        assert offset < result[1] <= len(msg)


def _assert_printable(name: str) -> None:
    assert not [c for c in name if unicodedata.category(c) in {"Cc", "Cf", "Cs", "Zl", "Zp"}]
    assert orjson.loads(orjson.dumps(name)) == name


def _count_separators(name: str) -> int:
    """Count the unescaped dots: after a backslash comes one of \\ . x u."""
    count = 0
    i = 0
    while i < len(name):
        if name[i] == "\\":
            i += 2
            continue
        count += name[i] == "."
        i += 1
    return count


@given(
    st.lists(st.binary(min_size=1, max_size=63), min_size=1, max_size=3),
)
def test_arbitrary_label_bytes_stay_safe_and_keep_label_structure(labels: list[bytes]) -> None:
    q = parse_dns_message(_wire(labels))
    assert q is not None
    _assert_printable(q.name)
    assert _count_separators(q.name) == len(labels) - 1
