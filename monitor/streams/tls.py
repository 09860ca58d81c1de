"""TLS ClientHello: server name (SNI), ALPN and the JA4 client fingerprint.

A statically linked TLS client (an XMRig build, a Go binary) never calls a shared library
the uprobes can see, but its ClientHello is in the clear at the start of the stream.  This
module parses it from the reassembled opening (records of content type 22, the handshake
message possibly split over records and segments) and computes JA4 as FoxIO specifies it
(FoxIO-LLC/ja4, technical_details/JA4.md): ``a_b_c`` with

* a: ``t`` + TLS version (highest in supported_versions, else the hello's version) +
  ``d``/``i`` (SNI or not) + cipher count + extension count (2 digits each, GREASE left
  out, at most 99) + first and last character of the first ALPN value (``00`` if none;
  hex of the first and last byte when either is not alphanumeric);
* b: the first 12 hex digits of sha256 over the sorted cipher list ("002f,0035,...");
* c: the same over the sorted extension list without SNI (0000) and ALPN (0010), then
  ``_`` and the signature algorithms in their order (no ``_`` when there are none).

Pure and bounded: a hello is at most the stream bound (a few KiB), parsing never raises.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Final

# RFC 8701 GREASE values: 0x?A?A with both bytes equal
_GREASE: Final = frozenset((b << 8) | b for b in range(0x0A, 0x100, 0x10))
_VERSIONS: Final = {
    0x0304: "13",
    0x0303: "12",
    0x0302: "11",
    0x0301: "10",
    0x0300: "s3",
    0x0200: "s2",
    0x0100: "s1",
    0xFEFF: "d1",
    0xFEFD: "d2",
    0xFEFC: "d3",
}
EXT_SNI: Final = 0x0000
EXT_ALPN: Final = 0x0010
EXT_SIGALGS: Final = 0x000D
EXT_VERSIONS: Final = 0x002B
HANDSHAKE: Final = 22
CLIENT_HELLO: Final = 1
MAX_HELLO: Final = 65536
EMPTY_HASH: Final = "000000000000"


@dataclass(frozen=True, slots=True)
class ClientHello:
    """What a ClientHello says about the client (GREASE already left out of the lists)."""

    version: int  # legacy_version of the hello
    ciphers: tuple[int, ...]
    extensions: tuple[int, ...]  # in the order sent
    sni: str | None
    alpn: tuple[str, ...]
    alpn_first_raw: bytes | None  # the first ALPN value as bytes (JA4 a, last two chars)
    supported_versions: tuple[int, ...]
    signature_algorithms: tuple[int, ...]

    @property
    def ja4(self) -> str:
        return ja4(self)

    @property
    def tls_version(self) -> str:
        return _VERSIONS.get(self.best_version, "00")

    @property
    def best_version(self) -> int:
        return max(self.supported_versions) if self.supported_versions else self.version


def is_tls_start(data: bytes) -> bool:
    """The stream starts like a TLS handshake record (content type 22, version 3.x)."""
    return len(data) >= 3 and data[0] == HANDSHAKE and data[1] == 3 and data[2] <= 4


def handshake_bytes(data: bytes, limit: int = MAX_HELLO) -> tuple[bytes, bool]:
    """The handshake layer from consecutive type-22 records at the start of ``data``.

    Returns (bytes, complete): complete is False while a record is still cut off.
    """
    out = bytearray()
    pos = 0
    while pos + 5 <= len(data) and len(out) < limit:
        if data[pos] != HANDSHAKE or data[pos + 1] != 3:
            return bytes(out), True
        n = int.from_bytes(data[pos + 3 : pos + 5], "big")
        body = data[pos + 5 : pos + 5 + n]
        out += body
        if len(body) < n:
            return bytes(out), False
        pos += 5 + n
    return bytes(out[:limit]), pos >= len(data) or len(out) >= limit


def parse_client_hello(data: bytes) -> ClientHello | None:
    """The ClientHello at the start of a TLS stream; None when absent, cut off or malformed."""
    if not is_tls_start(data):
        return None
    hs, _ = handshake_bytes(data)
    if len(hs) < 4 or hs[0] != CLIENT_HELLO:
        return None
    n = int.from_bytes(hs[1:4], "big")
    body = hs[4 : 4 + n]
    if len(body) < n:
        return None  # more bytes to come
    try:
        return _hello(body)
    except (IndexError, ValueError):
        return None


class _Reader:
    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.pos = 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.buf):
            raise ValueError("short")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def vec(self, size_bytes: int) -> bytes:
        n = int.from_bytes(self.take(size_bytes), "big")
        return self.take(n)

    @property
    def left(self) -> int:
        return len(self.buf) - self.pos


def _u16s(raw: bytes) -> list[int]:
    return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw) - 1, 2)]


def _hello(body: bytes) -> ClientHello:
    r = _Reader(body)
    version = r.u16()
    r.take(32)  # random
    r.vec(1)  # session id
    ciphers = [c for c in _u16s(r.vec(2)) if c not in _GREASE]
    r.vec(1)  # compression methods
    exts: list[int] = []
    sni: str | None = None
    alpn: list[str] = []
    alpn_first: bytes | None = None
    versions: list[int] = []
    sigalgs: list[int] = []
    if r.left >= 2:
        er = _Reader(r.vec(2))
        while er.left >= 4:
            etype = er.u16()
            edata = er.vec(2)
            if etype in _GREASE:
                continue
            exts.append(etype)
            if etype == EXT_SNI:
                sni = _server_name(edata)
            elif etype == EXT_ALPN:
                alpn, alpn_first = _alpn(edata)
            elif etype == EXT_VERSIONS and edata:
                versions = [v for v in _u16s(edata[1 : 1 + edata[0]]) if v not in _GREASE]
            elif etype == EXT_SIGALGS and len(edata) >= 2:
                n = int.from_bytes(edata[:2], "big")
                sigalgs = [v for v in _u16s(edata[2 : 2 + n]) if v not in _GREASE]
    return ClientHello(
        version=version,
        ciphers=tuple(ciphers),
        extensions=tuple(exts),
        sni=sni,
        alpn=tuple(alpn),
        alpn_first_raw=alpn_first,
        supported_versions=tuple(versions),
        signature_algorithms=tuple(sigalgs),
    )


def _server_name(edata: bytes) -> str | None:
    r = _Reader(edata)
    try:
        names = _Reader(r.vec(2))
        while names.left >= 3:
            kind = names.u8()
            name = names.vec(2)
            if kind == 0:  # host_name
                return name[:255].decode("ascii", "backslashreplace")
    except ValueError:
        return None
    return None


def _alpn(edata: bytes) -> tuple[list[str], bytes | None]:
    out: list[str] = []
    first: bytes | None = None
    try:
        r = _Reader(_Reader(edata).vec(2))
        while r.left >= 1 and len(out) < 16:
            value = r.vec(1)
            if first is None:
                first = value
            out.append(value[:64].decode("ascii", "backslashreplace"))
    except ValueError:
        pass
    return out, first


def _alnum(b: int) -> bool:
    return 0x30 <= b <= 0x39 or 0x41 <= b <= 0x5A or 0x61 <= b <= 0x7A


def _alpn_chars(first: bytes | None) -> str:
    if not first:
        return "00"
    a, z = first[0], first[-1]
    if _alnum(a) and _alnum(z):
        return chr(a) + chr(z)
    h = first.hex()
    return h[0] + h[-1]


def _hash12(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _no_grease(values: tuple[int, ...]) -> list[int]:
    return [v for v in values if v not in _GREASE]


def ja4_parts(h: ClientHello) -> tuple[str, str, str]:
    """The raw lists JA4 hashes (JA4_r without the prefix): ciphers, extensions, sigalgs."""
    ciphers = ",".join(f"{c:04x}" for c in sorted(_no_grease(h.ciphers)))
    exts = ",".join(
        f"{e:04x}" for e in sorted(_no_grease(h.extensions)) if e not in (EXT_SNI, EXT_ALPN)
    )
    sigs = ",".join(f"{s:04x}" for s in _no_grease(h.signature_algorithms))
    return ciphers, exts, sigs


def ja4(h: ClientHello) -> str:
    """The JA4 fingerprint of a TCP (``t``) ClientHello (GREASE left out everywhere)."""
    dest = "d" if EXT_SNI in h.extensions else "i"
    n_ciphers = min(len(_no_grease(h.ciphers)), 99)
    n_exts = min(len(_no_grease(h.extensions)), 99)
    a = f"t{h.tls_version}{dest}{n_ciphers:02d}{n_exts:02d}{_alpn_chars(h.alpn_first_raw)}"
    ciphers, exts, sigs = ja4_parts(h)
    b = _hash12(ciphers) if ciphers else EMPTY_HASH
    c = _hash12(f"{exts}_{sigs}" if sigs else exts) if exts else EMPTY_HASH
    return f"{a}_{b}_{c}"
