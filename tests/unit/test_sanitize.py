"""Unit tests for monitor.sanitize: the single edge where kernel bytes become text."""

from __future__ import annotations

import re
import sys
import unicodedata

import orjson
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from monitor import sanitize
from monitor.sanitize import printable_preview, safe_text, split_nul

pytestmark = pytest.mark.unit

_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_MARKER_RE = re.compile(r"…\[\+(\d+) bytes\]\Z")


def _assert_safe(out: str) -> None:
    bad = [c for c in out if unicodedata.category(c) in _FORBIDDEN_CATEGORIES]
    assert not bad, f"unsafe characters survived: {bad!r}"
    assert "\x1b" not in out and "\x9b" not in out
    assert orjson.loads(orjson.dumps(out)) == out


def _unescape(out: str) -> bytes:
    """Invert safe_text for untruncated output (test oracle).

    \\xNN below 0x80 is the ASCII control; at or above 0x80 it is read as the raw
    (invalid) byte, which is exact as long as the input held no C1 characters.
    """
    result = bytearray()
    i = 0
    while i < len(out):
        c = out[i]
        if c != "\\":
            result += c.encode("utf-8")
            i += 1
        elif out[i + 1] == "\\":
            result += b"\\"
            i += 2
        elif out[i + 1] == "x":
            result.append(int(out[i + 2 : i + 4], 16))
            i += 4
        else:
            assert out[i + 1 : i + 3] == "u{"
            end = out.index("}", i)
            result += chr(int(out[i + 3 : end], 16)).encode("utf-8", "surrogatepass")
            i = end + 1
    return bytes(result)


# --- safe_text: examples -----------------------------------------------------------


def test_plain_ascii_is_unchanged() -> None:
    argv0 = "/usr/bin/python3 -m train --lr 3e-4"
    assert safe_text(argv0.encode()) == argv0
    assert safe_text("hello world") == "hello world"


def test_valid_utf8_is_kept() -> None:
    assert safe_text("naïve — 日本語 🚀".encode()) == "naïve — 日本語 🚀"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"\x1b[2J", "\\x1b[2J"),  # ANSI clear screen
        (b"\x1b]0;title\x07", "\\x1b]0;title\\x07"),  # OSC set window title
        ("\x9b31m".encode(), "\\x9b31m"),  # C1 CSI, valid UTF-8 (C2 9B)
        (b"\x9b31m", "\\x9b31m"),  # C1 CSI as a lone (invalid) byte
        (b"a\x00b\x7fc", "a\\x00b\\x7fc"),
        (b"line1\nline2\r\t", "line1\\x0aline2\\x0d\\x09"),
    ],
)
def test_terminal_escapes_never_survive(raw: bytes, expected: str) -> None:
    out = safe_text(raw)
    assert out == expected
    _assert_safe(out)


def test_osc8_hyperlink_is_neutralised() -> None:
    raw = b"\x1b]8;;http://evil.example/\x1b\\click\x1b]8;;\x1b\\"
    out = safe_text(raw)
    assert "\x1b" not in out
    assert out == "\\x1b]8;;http://evil.example/\\x1b\\\\click\\x1b]8;;\\x1b\\\\"


def test_invalid_utf8_survives_as_hex() -> None:
    assert safe_text(b"ab\xffcd\xc3") == "ab\\xffcd\\xc3"
    # Overlong encoding of '/' and an encoded surrogate are invalid UTF-8, byte by byte.
    assert safe_text(b"\xc0\xaf") == "\\xc0\\xaf"
    assert safe_text(b"\xed\xa0\x80") == "\\xed\\xa0\\x80"


@pytest.mark.parametrize(
    ("char", "expected"),
    [
        ("\u202e", "\\u{202e}"),  # RIGHT-TO-LEFT OVERRIDE ("Trojan Source")
        ("\u2066", "\\u{2066}"),
        ("\u200b", "\\u{200b}"),
        ("\ufeff", "\\u{feff}"),
        ("\u2028", "\\u{2028}"),
        ("\u2029", "\\u{2029}"),
        ("\U000e0041", "\\u{e0041}"),  # TAG LATIN CAPITAL LETTER A (invisible text)
        ("\u00ad", "\\u{00ad}"),
    ],
)
def test_format_and_bidi_controls_are_escaped(char: str, expected: str) -> None:
    assert safe_text(f"a{char}b".encode()) == f"a{expected}b"
    assert safe_text(f"a{char}b") == f"a{expected}b"


def test_backslash_is_doubled_so_escapes_cannot_be_forged() -> None:
    assert safe_text(b"\\x1b") == "\\\\x1b"
    assert safe_text(b"\x1b") != safe_text(b"\\x1b")
    assert safe_text("C:\\dir") == "C:\\\\dir"


def test_str_input_with_surrogates() -> None:
    # os.fsdecode() smuggles invalid bytes as U+DC80-U+DCFF: they come back as \xNN.
    assert safe_text(b"a\xffb".decode("utf-8", "surrogateescape")) == "a\\xffb"
    # Any other lone surrogate becomes its (invalid) UTF-8 bytes; either way JSON-safe.
    out = safe_text("x\ud800y")
    assert out == "x\\xed\\xa0\\x80y"
    _assert_safe(out)


def test_bytearray_and_memoryview_are_accepted() -> None:
    assert safe_text(bytearray(b"a\x1b")) == "a\\x1b"  # type: ignore[arg-type]
    assert safe_text(memoryview(b"a\x1b")) == "a\\x1b"  # type: ignore[arg-type]


# --- safe_text: bounding --------------------------------------------------------------


def test_truncation_marker_counts_hidden_bytes() -> None:
    assert safe_text(b"abcdefghij", limit=4) == "abcd…[+6 bytes]"
    assert safe_text(b"abcd", limit=4) == "abcd"
    assert safe_text(b"abc", limit=0) == "…[+3 bytes]"
    assert safe_text(b"", limit=0) == ""


def test_truncation_never_cuts_an_escape() -> None:
    # "ab" + "\x1b" (4 chars) does not fit in 5: the escape is dropped whole.
    assert safe_text(b"ab\x1bcd", limit=5) == "ab…[+3 bytes]"
    assert safe_text(b"ab\x1bcd", limit=6) == "ab\\x1b…[+2 bytes]"
    assert safe_text("a\u202eb".encode(), limit=8) == "a…[+4 bytes]"
    assert safe_text(b"\\\\", limit=3) == "\\\\…[+1 bytes]"


def test_truncation_counts_multibyte_characters_in_bytes() -> None:
    # Each "é" is 2 bytes: 3 shown, 2 hidden -> 4 bytes hidden.
    assert safe_text("ééééé".encode(), limit=3) == "ééé…[+4 bytes]"
    assert safe_text("🚀🚀🚀", limit=1) == "🚀…[+8 bytes]"


def test_one_megabyte_input_is_bounded() -> None:
    big = (b"A\x1b[31m\xff" + "日".encode()) * ((1 << 20) // 10)
    out = safe_text(big, limit=4096)
    assert len(out) <= 4096 + len(f"…[+{len(big)} bytes]")
    match = _MARKER_RE.search(out)
    assert match is not None
    hidden = int(match.group(1))
    assert 0 < hidden < len(big)
    _assert_safe(out)

    big_str = "x" * (1 << 20)
    assert safe_text(big_str, limit=10) == "x" * 10 + f"…[+{(1 << 20) - 10} bytes]"


def test_multibyte_text_over_limit_bytes_but_within_limit_chars_is_whole() -> None:
    assert safe_text("é".encode() * 10, limit=10) == "é" * 10
    assert safe_text("🚀".encode() * 10, limit=10) == "🚀" * 10
    assert safe_text("é\x1b".encode() * 5, limit=10) == "é\\x1bé\\x1b…[+9 bytes]"


def test_cut_multibyte_sequence_beyond_the_head_is_not_shown() -> None:
    # 4-byte characters right up to the internal read-ahead: no spurious \xNN.
    raw = "🚀".encode() * 50
    out = safe_text(raw, limit=10)
    assert out == "🚀" * 10 + "…[+160 bytes]"


def test_negative_limit_is_rejected() -> None:
    with pytest.raises(ValueError):
        safe_text(b"x", limit=-1)


def test_escaped_ranges_cover_this_pythons_unicode_database() -> None:
    escaped = {ord(c) for c in sanitize._ESCAPES if c != "\\"}
    missing = [
        hex(cp)
        for cp in range(sys.maxunicode + 1)
        if unicodedata.category(chr(cp)) in _FORBIDDEN_CATEGORIES and cp not in escaped
    ]
    assert not missing, f"update _ESCAPED_RANGES for Unicode {unicodedata.unidata_version}"


# --- safe_text: properties ------------------------------------------------------------


@given(st.binary(max_size=2048), st.integers(min_value=0, max_value=600))
def test_any_bytes_yield_safe_bounded_text(raw: bytes, limit: int) -> None:
    out = safe_text(raw, limit=limit)
    _assert_safe(out)
    assert len(out) <= limit + len(f"…[+{len(raw)} bytes]")


@given(st.text(alphabet=st.characters(blacklist_categories=())), st.integers(0, 300))
def test_any_str_yields_safe_bounded_text(raw: str, limit: int) -> None:
    out = safe_text(raw, limit=limit)
    _assert_safe(out)
    nbytes = len(raw.encode("utf-8", "surrogatepass"))
    assert len(out) <= limit + len(f"…[+{nbytes} bytes]")


@given(st.text(max_size=64), st.integers(min_value=0, max_value=80))
def test_marker_only_when_something_is_hidden(text: str, limit: int) -> None:
    raw = text.encode("utf-8", "surrogatepass")
    full = safe_text(raw, limit=1 << 20)
    out = safe_text(raw, limit=limit)
    if len(full) <= limit:
        assert out == full
    else:
        assert _MARKER_RE.search(out) is not None


@given(st.binary(max_size=512))
def test_escaping_is_reversible(raw: bytes) -> None:
    decoded = raw.decode("utf-8", "surrogateescape")
    assume(not any(0x80 <= ord(c) <= 0x9F for c in decoded))  # C1 vs invalid byte, see module doc
    assert _unescape(safe_text(raw, limit=1 << 20)) == raw


@given(st.binary(max_size=512), st.integers(min_value=0, max_value=200))
def test_truncated_output_is_a_prefix_of_the_full_output(raw: bytes, limit: int) -> None:
    decoded = raw.decode("utf-8", "surrogateescape")
    assume(not any(0x80 <= ord(c) <= 0x9F for c in decoded))  # keeps _unescape exact
    full = safe_text(raw, limit=1 << 20)
    out = safe_text(raw, limit=limit)
    match = _MARKER_RE.search(out)
    if match is None:
        assert out == full
        return
    shown = out[: match.start()]
    assert full.startswith(shown)
    assert len(shown) <= limit
    # The hidden byte count matches the bytes behind the shown text.
    assert _unescape(shown) + raw[len(raw) - int(match.group(1)) :] == raw


# --- split_nul --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("buf", "count", "expected"),
    [
        (b"ls\0-l\0/tmp\0", 3, [b"ls", b"-l", b"/tmp"]),
        (b"ls\0-l\0/tmp", 3, [b"ls", b"-l", b"/tmp"]),  # missing final NUL
        (b"ls\0-l\0/tmp\0", 2, [b"ls", b"-l"]),  # bounded by count
        (b"ls\0-l\0/tmp\0", 10, [b"ls", b"-l", b"/tmp"]),
        (b"sh\0-c\0\0", 3, [b"sh", b"-c", b""]),  # empty argument kept
        (b"\0\0", 5, [b"", b""]),
        (b"a\0\0\0\0", 1, [b"a"]),  # zero padding after argc items ignored
        (b"", 3, []),
        (b"\0", 3, [b""]),
        (b"abc", 1, [b"abc"]),
        (b"abc\0", 0, []),
        (b"abc\0", -1, []),
    ],
)
def test_split_nul(buf: bytes, count: int, expected: list[bytes]) -> None:
    assert split_nul(buf, count) == expected


@given(st.lists(st.binary().map(lambda b: b.replace(b"\0", b"")), max_size=20))
def test_split_nul_round_trips_packed_argv(args: list[bytes]) -> None:
    packed = b"".join(a + b"\0" for a in args)
    assert split_nul(packed, len(args)) == args
    assert split_nul(packed, len(args) + 5) == args
    if args and args[-1]:
        # Final NUL missing (an empty last item without its NUL is simply absent).
        assert split_nul(packed[:-1], len(args)) == args


@given(st.binary(max_size=256), st.integers(min_value=0, max_value=40))
def test_split_nul_never_exceeds_count(buf: bytes, count: int) -> None:
    parts = split_nul(buf, count)
    assert len(parts) <= count
    assert all(b"\0" not in p for p in parts)


# --- printable_preview ------------------------------------------------------------------


def test_printable_preview() -> None:
    assert printable_preview(b"GET / HTTP/1.1\r\n\x00\xff") == "GET / HTTP/1.1...."
    assert printable_preview(b"\x1b[2J") == ".[2J"
    assert printable_preview(b"abcdef", limit=3) == "abc"
    assert printable_preview(b"") == ""
    with pytest.raises(ValueError):
        printable_preview(b"x", limit=-1)


@given(st.binary(max_size=1024), st.integers(min_value=0, max_value=512))
def test_printable_preview_is_bounded_ascii(data: bytes, limit: int) -> None:
    out = printable_preview(data, limit=limit)
    assert len(out) == min(len(data), limit)
    assert all(0x20 <= ord(c) <= 0x7E for c in out)
