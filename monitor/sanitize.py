"""Make attacker-controlled bytes safe to print, log and serialise.

Everything the kernel hands us (argv, comm, file names, payload bytes) is chosen
by whoever runs on the host. This module is the one place where such bytes turn
into text; what comes out is bounded in length, valid UTF-8 (so JSON encoders
never fail) and free of anything a terminal or log viewer would interpret.

Escapes produced by :func:`safe_text` (all hex digits lower case):

* ``\\xNN``     an invalid UTF-8 byte, a C0 control, DEL, or a C1 control
                 (for C1, ``NN`` is the code point, e.g. CSI U+009B -> ``\\x9b``);
* ``\\u{NNNN}`` any other format, bidi or line/paragraph separator code point
                 (e.g. U+202E -> ``\\u{202e}``, U+E0041 -> ``\\u{e0041}``);
* ``\\\\``      a literal backslash, so that no input can forge an escape.

A ``str`` argument is treated as its UTF-8 bytes; lone surrogates in it (as
os.fsdecode() produces for undecodable bytes) come out as ``\\xNN`` too.

Note: the invalid byte 0x9B and the valid character U+009B both render as
``\\x9b``; either way it is a C1 control, which is all a reader needs to know.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["printable_preview", "safe_text", "split_nul"]

# Code points that must never reach a terminal or a log viewer verbatim: every
# Cc (controls), Cf (format controls: bidi overrides, zero-width characters, tag
# characters, ...), Cs (surrogates: orjson rejects them, and surrogateescape uses
# U+DC80-U+DCFF for invalid bytes), Zl and Zp (U+2028/U+2029, line breaks that
# JavaScript-based viewers honour). Hard-coded because scanning unicodedata at
# import costs ~0.2 s; the list is a superset of Unicode 15.1, and
# tests/unit/test_sanitize.py checks it against the running Python's database.
_ESCAPED_RANGES: Final[tuple[tuple[int, int], ...]] = (
    (0x0000, 0x001F),  # C0
    (0x007F, 0x009F),  # DEL + C1
    (0x00AD, 0x00AD),  # soft hyphen
    (0x0600, 0x0605),  # Arabic number signs
    (0x061C, 0x061C),  # Arabic letter mark (bidi)
    (0x06DD, 0x06DD),
    (0x070F, 0x070F),
    (0x0890, 0x0891),
    (0x08E2, 0x08E2),
    (0x180E, 0x180E),  # Mongolian vowel separator
    (0x200B, 0x200F),  # zero-width space/joiners, LRM, RLM
    (0x2028, 0x202E),  # line/paragraph separator, bidi embeddings/overrides
    (0x2060, 0x2064),  # word joiner, invisible operators
    (0x2066, 0x206F),  # bidi isolates, deprecated format characters
    (0xD800, 0xDFFF),  # surrogates
    (0xFEFF, 0xFEFF),  # BOM / zero-width no-break space
    (0xFFF9, 0xFFFB),  # interlinear annotation
    (0x110BD, 0x110BD),
    (0x110CD, 0x110CD),
    (0x13430, 0x1343F),  # Egyptian hieroglyph format controls (to Unicode 15)
    (0x1BCA0, 0x1BCA3),  # shorthand format controls
    (0x1D173, 0x1D17A),  # musical symbol format controls
    (0xE0001, 0xE0001),  # language tag
    (0xE0020, 0xE007F),  # tag characters (invisible ASCII look-alikes)
)

# surrogateescape decodes an invalid byte 0xNN (always >= 0x80) to U+DCNN.
_SURROGATE_ESCAPE_LO: Final = 0xDC80
_SURROGATE_ESCAPE_HI: Final = 0xDCFF


def _escape_for(cp: int) -> str:
    if cp <= 0x1F or 0x7F <= cp <= 0x9F:
        return f"\\x{cp:02x}"
    if _SURROGATE_ESCAPE_LO <= cp <= _SURROGATE_ESCAPE_HI:
        return f"\\x{cp - 0xDC00:02x}"
    return f"\\u{{{cp:04x}}}"


_ESCAPES: Final[dict[str, str]] = {
    chr(cp): _escape_for(cp) for lo, hi in _ESCAPED_RANGES for cp in range(lo, hi + 1)
}
_ESCAPES["\\"] = "\\\\"

_ESCAPE_RE: Final = re.compile(
    "[\\\\" + "".join(f"\\U{lo:08x}-\\U{hi:08x}" for lo, hi in _ESCAPED_RANGES) + "]"
)


# Pure-ASCII text (argv, paths, comm: the common case) escapes through
# str.translate with a list table, which stays in C even when most characters
# need escaping; the regex handles the rest of Unicode.
_ASCII_TABLE: Final[list[str]] = [_ESCAPES.get(chr(i), chr(i)) for i in range(128)]


def _replace(match: re.Match[str]) -> str:
    return _ESCAPES[match.group()]


def _escape(text: str) -> str:
    if text.isascii():
        return text.translate(_ASCII_TABLE)
    return _ESCAPE_RE.sub(_replace, text)


def _with_marker(shown: str, hidden_bytes: int) -> str:
    return f"{shown}…[+{hidden_bytes} bytes]" if hidden_bytes > 0 else shown


def _str_to_bytes(text: str) -> bytes:
    # Strings from os.fsdecode() carry invalid bytes as U+DC80-U+DCFF: give the
    # bytes back so they render as \xNN. Any other lone surrogate cannot be
    # surrogateescape-encoded, so fall back to its (invalid) 3-byte form.
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


def safe_text(raw: bytes | str, limit: int = 4096) -> str:
    """Return ``raw`` as bounded, printable, JSON-safe text.

    ``raw`` is decoded as UTF-8; invalid bytes, control characters and Unicode
    format/bidi controls are replaced by the escapes described in the module
    docstring, and a backslash becomes ``\\\\``. At most ``limit`` characters of
    escaped text are kept, never cutting an escape in half; if anything is cut,
    ``…[+N bytes]`` is appended, where N counts the input bytes not shown.

    Raises ValueError if ``limit`` is negative.
    """
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    if isinstance(raw, str):
        # Fast path: isprintable() is False for every character we escape
        # except the backslash, and it runs in C.
        if len(raw) <= limit and raw.isprintable() and "\\" not in raw:
            return raw
        data = _str_to_bytes(raw)
    else:
        data = raw if isinstance(raw, bytes) else bytes(raw)

    if len(data) <= limit:
        text = data.decode("utf-8", "surrogateescape")
        # Each byte yields at most one character, so clean text fits as is.
        if text.isprintable() and "\\" not in text:
            return text
        out = _escape(text)
        if len(out) <= limit:
            return out
        return _truncate(text, len(data), limit)

    # Only the first `limit` code points can be shown (each yields at least one
    # output character), so decode just enough bytes: a code point takes at most
    # 4, so 4*limit+4 bytes hold more than `limit` whole code points and a
    # multi-byte sequence split by this cut is never among the shown ones. This
    # keeps the cost O(limit) whatever the input size.
    text = data[: 4 * limit + 4].decode("utf-8", "surrogateescape")[:limit]
    if text.isprintable() and "\\" not in text:
        # Multi-byte text can exceed `limit` bytes yet fit in `limit` characters.
        return _with_marker(text, len(data) - len(text.encode("utf-8")))
    return _truncate(text, len(data), limit)


# _truncate escapes this many characters at a time, so only the one chunk that
# overflows the limit is walked character by character in Python.
_CHUNK: Final = 64


def _truncate(text: str, total_bytes: int, limit: int) -> str:
    """Escape as much of ``text`` as fits in ``limit`` characters, then append the marker.

    ``text`` is the decoded head of an input of ``total_bytes`` bytes.
    """
    pieces: list[str] = []
    used = 0
    pos = 0  # index in `text` of the first character not shown
    while pos < len(text):
        chunk = text[pos : pos + _CHUNK]
        escaped = _escape(chunk)
        if used + len(escaped) <= limit:
            pieces.append(escaped)
            used += len(escaped)
            pos += len(chunk)
            continue
        for char in chunk:
            piece = _ESCAPES.get(char, char)
            if used + len(piece) > limit:
                break  # an escape is shown whole or not at all
            pieces.append(piece)
            used += len(piece)
            pos += 1
        break
    shown_bytes = len(text[:pos].encode("utf-8", "surrogateescape"))
    return _with_marker("".join(pieces), total_bytes - shown_bytes)


def split_nul(buf: bytes, count: int) -> list[bytes]:
    """Split NUL-terminated strings (as the kernel packs argv) into at most ``count`` items.

    A missing final NUL (the kernel cut the buffer short) is tolerated, and
    empty entries (``""`` arguments) are kept; a single trailing NUL does not
    create an extra empty item. Anything after the ``count``-th item is dropped.
    """
    if count <= 0:
        return []
    data = buf if isinstance(buf, bytes) else bytes(buf)
    parts = data.split(b"\0", count)
    if len(parts) > count:
        # count NULs were found: the last part is whatever follows them.
        return parts[:count]
    # Fewer than count NULs: the last part follows the final NUL (or is the
    # unterminated tail); empty means the buffer simply ended with a NUL.
    if parts[-1] == b"":
        parts.pop()
    return parts


_PREVIEW_TABLE: Final = bytes(b if 0x20 <= b <= 0x7E else 0x2E for b in range(256))


def printable_preview(data: bytes, limit: int = 256) -> str:
    """Return the first ``limit`` bytes of ``data`` with every byte outside 0x20-0x7E as '.'.

    Meant for hexdump-style payload previews: one character per byte, no
    escapes, so the result is always at most ``limit`` characters long.
    Raises ValueError if ``limit`` is negative.
    """
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    return bytes(data[:limit]).translate(_PREVIEW_TABLE).decode("ascii")
