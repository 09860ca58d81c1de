"""The typed view of a stream that detectors read (``AttributedEvent.stream``).

A :class:`StreamView` is what is known about one outbound connection's opening when an
event arrives: the wire bytes each way, what was peeled off them (:class:`Layer`: a proxy,
a WebSocket, an HTTP body, TLS), the readable bytes at every depth (:class:`Level`), TLS
plaintext where the library uprobes saw it, and what the bounds cut.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Layer:
    """One protocol peeled off the stream.

    kind: "socks4", "socks4a", "socks5", "http_connect", "http_proxy" (absolute-form
    request to a proxy), "websocket", "http" (a request with a body), "tls".
    host/port: the destination it names (proxy target, Host header, SNI).
    granted: a proxy's or upgrade's answer where the reply says (None: not seen).
    """

    kind: str
    host: str | None = None
    port: int | None = None
    granted: bool | None = None
    detail: tuple[tuple[str, str], ...] = ()

    @property
    def is_proxy(self) -> bool:
        return self.kind in PROXY_KINDS

    def get(self, key: str) -> str | None:
        for k, v in self.detail:
            if k == key:
                return v
        return None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        if self.host is not None:
            out["host"] = self.host
        if self.port is not None:
            out["port"] = self.port
        if self.granted is not None:
            out["granted"] = self.granted
        for k, v in self.detail:
            out[k] = v
        return out


@dataclass(frozen=True, slots=True)
class Peeled:
    """One wrapper taken off: the layer, what it carries each way, and whether it is whole.

    ``complete`` False: the wrapper's own header is not all here yet, or what it carries
    may still grow (a body or a frame cut off by the end of the bytes so far).
    ``opaque``: what it carries cannot be read here (TLS: the plaintext comes from the
    library uprobes, if at all).
    """

    layer: Layer
    inner: bytes
    inner_reply: bytes
    complete: bool = True
    opaque: bool = False


PROXY_KINDS = frozenset({"socks4", "socks4a", "socks5", "http_connect", "http_proxy"})


@dataclass(frozen=True, slots=True)
class Level:
    """Readable bytes at one depth: what the detectors run on.

    source: "wire" (packet bytes) or "tls" (plaintext from a library uprobe).
    layers: what was peeled to reach these bytes, outermost first.
    data / reply: the bytes the local process sent and the peer answered, at this depth.
    complete: the wrapper above is fully parsed (False: these bytes may still grow).
    """

    source: str
    layers: tuple[Layer, ...]
    data: bytes
    reply: bytes = b""
    complete: bool = True

    @property
    def depth(self) -> int:
        return len(self.layers)

    def path(self) -> str:
        """The layers as text: "socks5>websocket"; "" at the wire itself."""
        return ">".join(layer.kind for layer in self.layers)


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str | None
    port: int | None

    def as_dict(self) -> dict[str, Any]:
        return {"address": self.host, "port": self.port}


@dataclass(slots=True)
class StreamView:
    """What is known of one stream's opening now."""

    cookie: int
    daddr: str | None
    dport: int
    levels: list[Level]
    layers: tuple[Layer, ...]  # every layer seen, outermost first (wire, then TLS plaintext)
    tls_library: str | None = None  # "openssl" / "gnutls" when plaintext was seen
    sent: int = 0  # opening bytes held (wire)
    replied: int = 0
    truncated: bool = False  # the byte bound cut the opening
    cut_short: bool = False  # the time window ended the capture with bytes still coming
    gaps: int = 0  # chunks missing (a record lost, or bytes the kernel never saw)
    changed: frozenset[str] = field(default_factory=frozenset)  # "data", "reply", "tls", "layers"
    family: int = 0
    saddr: str | None = None
    sport: int = 0

    @property
    def effective(self) -> Endpoint:
        """Where the stream really goes: the innermost proxy's target, else the peer."""
        for layer in reversed(self.layers):
            if layer.kind in PROXY_KINDS and layer.host:
                return Endpoint(layer.host, layer.port)
        return Endpoint(self.daddr, self.dport)

    @property
    def proxied(self) -> bool:
        return any(layer.kind in PROXY_KINDS for layer in self.layers)

    def tls_hello(self) -> Layer | None:
        for layer in self.layers:
            if layer.kind == "tls":
                return layer
        return None

    def summary(self) -> dict[str, Any]:
        """The ``rlguard.stream`` object of a line or an alert."""
        out: dict[str, Any] = {
            "cookie": self.cookie,
            "layers": [layer.as_dict() for layer in self.layers],
            "opening": {"bytes": self.sent, "reply_bytes": self.replied},
        }
        if self.proxied:
            out["effective_destination"] = self.effective.as_dict()
        if self.tls_library:
            out["tls_plaintext"] = {"library": self.tls_library}
        if self.truncated:
            out["opening"]["truncated"] = True
        if self.cut_short:
            out["opening"]["cut_short"] = True
        if self.gaps:
            out["opening"]["gaps"] = self.gaps
        return out
