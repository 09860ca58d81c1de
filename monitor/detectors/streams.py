"""Detectors over a stream's opening, at every depth it was unwrapped to.

The engine hands in a :class:`~monitor.streams.view.StreamView`: the wire bytes each way,
and the readable bytes under every layer peeled off (SOCKS, HTTP CONNECT, WebSocket, HTTP
bodies) and under TLS where the library uprobes saw the plaintext.  The same payload
detectors run at every depth (stratum v1 and v2, pool replies, shell banners, SSH banners
for the engine's session state), so a proxy, a WebSocket or TLS is no way around them;
layer facts feed two rules of their own:

* RLG-MIN-007: a mining pool reached where the payload stays encrypted: the TLS server
  name is a pool domain, the client fingerprint is listed, or a Noise handshake (Stratum
  V2's encryption) starts towards a pool port or after a pool lookup.
* RLG-TUN-008: a tunnel tool's protocol inside the stream: chisel's WebSocket subprotocol,
  bore's hello, a tunnel service's TLS server name, a listed fingerprint.

Pure: no I/O, no state (the engine keeps the per-process memory).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Final

from monitor.detectors import stratum, tunnel
from monitor.detectors.fingerprints import Fingerprint
from monitor.detectors.iocs import Iocs, domain_match
from monitor.detectors.signals import Confidence, Signal, bounded
from monitor.streams.view import Endpoint, Layer, Level, StreamView

RULE_ENCRYPTED_POOL: Final = "RLG-MIN-007"
RULE_TUNNEL_PROTOCOL: Final = "RLG-TUN-008"
# the rules this module raises (the registry, monitor/detectors/rules.py); at every depth
# it also raises stratum's and tunnel's payload rules (stratum.RULE_STRATUM,
# tunnel.RULE_REVERSE_SHELL)
RULES: Final = (RULE_ENCRYPTED_POOL, RULE_TUNNEL_PROTOCOL)

# jpillora/chisel share/version.go: ProtocolVersion = "chisel-v3", sent by the client as
# its Sec-WebSocket-Protocol (client/client.go, websocket.Dialer Subprotocols)
CHISEL_PROTOCOL: Final = re.compile(r"(?i)\bchisel-v\d+\b")
# ekzhang/bore src/shared.rs: ClientMessage {Authenticate(String), Hello(u16), Accept(Uuid)}
# as serde JSON, each frame ended by a NUL (AnyDelimiterCodec)
BORE_CLIENT: Final = re.compile(
    rb'\{"(Hello|Accept|Authenticate)":(\d{1,5}|"[0-9A-Za-z-]{1,64}")\}\x00'
)
DETAIL: Final = 200


@dataclass(frozen=True, slots=True)
class StreamFinding:
    """A rule raised on the stream: the engine turns it into a Finding."""

    rule: str
    signals: tuple[Signal, ...]
    subject: str = ""  # appended to the process's entity id ("" = the process itself)
    extra: dict[str, Any] = field(default_factory=dict)


class StreamJudgement:
    """What one look at a stream found (a plain class: made for every look)."""

    __slots__ = ("findings", "ssh_banners", "context")

    def __init__(self) -> None:
        self.findings: list[StreamFinding] = []
        self.ssh_banners: list[tuple[Level, str]] = []
        self.context: list[Signal] = []  # weak facts for the process


def where(level: Level) -> str:
    """Where these bytes were read: "" on the wire, else the path ("socks5>websocket")."""
    parts = [layer.kind for layer in level.layers if layer.kind != "tls"]
    if level.source == "tls":
        inner = [layer.kind for layer in level.layers[_tls_index(level.layers) + 1 :]]
        outer = [layer.kind for layer in level.layers[: _tls_index(level.layers)]]
        text = "tls plaintext"
        if outer:
            text = f"{'>'.join(outer)}>{text}"
        if inner:
            text = f"{text}>{'>'.join(inner)}"
        return text
    return ">".join(parts)


def _tls_index(layers: tuple[Layer, ...]) -> int:
    for i, layer in enumerate(layers):
        if layer.kind == "tls":
            return i
    return len(layers)


def _tagged(sig: Signal, level: Level) -> Signal:
    path = where(level)
    if not path:
        return sig
    return Signal(sig.kind, sig.name, bounded(f"[{path}] {sig.detail}"), sig.confidence)


def _sig(kind: str, name: str, detail: str, confidence: Confidence) -> Signal:
    return Signal(kind, name, bounded(detail, DETAIL), confidence)


def judge(
    view: StreamView,
    iocs: Iocs,
    fingerprints: dict[str, Fingerprint],
    *,
    pool_lookup: bool = False,
    first_len: int = -1,
) -> StreamJudgement:
    """Every finding the stream supports now (the engine de-duplicates across calls).

    pool_lookup: the process looked up a pool domain (context for the Noise heuristic).
    first_len: bytes in the stream's first segment (-1: unknown).
    """
    out = StreamJudgement()
    mining: list[tuple[int, Signal]] = []
    for level in view.levels:
        if level.data:
            found = stratum.stratum_stream_signals(level.data)
            if level.data[:2] == b"\x00\x00":  # a Stratum V2 frame header starts so
                found += stratum.stratum_v2_signals(level.data)
            mining += [(level.depth, _tagged(s, level)) for s in found]
            banner = tunnel.ssh_banner(level.data)
            if banner is not None:
                out.ssh_banners.append((level, banner))
            shell = tunnel.shell_banner_signal(level.data)
            if shell is not None and not iocs.is_internal((eff := view.effective).host):
                out.findings.append(
                    StreamFinding(
                        tunnel.RULE_REVERSE_SHELL,
                        (_tagged(shell, level),),
                        extra={"connect_back": {"ip": eff.host, "port": eff.port}},
                    )
                )
            bore = BORE_CLIENT.search(level.data, 0, 512) if b"\x00" in level.data else None
            if bore is not None:
                eff = view.effective
                detail = f"bore client {bore.group(0)[:-1].decode('ascii', 'replace')}"
                out.findings.append(
                    StreamFinding(
                        RULE_TUNNEL_PROTOCOL,
                        (_tagged(_sig("payload", "tunnel.bore", detail, "high"), level),),
                        subject=f"/{eff.host}:{eff.port}",
                    )
                )
        if level.reply:
            found = stratum.stratum_reply_signals(level.reply)
            mining += [(level.depth, _tagged(s, level)) for s in found]
    if mining:
        out.findings.append(
            StreamFinding(stratum.RULE_STRATUM, tuple(_dedupe(mining)), extra={"pool": _pool(view)})
        )
    if view.layers:
        _layer_findings(view, iocs, fingerprints, out, view.effective)
    if first_len == stratum.NOISE_FIRST_LEN and view.levels and not view.proxied:
        first = view.levels[0].data[: stratum.NOISE_FIRST_LEN]
        to_pool = view.dport in iocs.pool_ports
        if stratum.noise_handshake_start(first) and (to_pool or pool_lookup):
            why = f"pool port {view.dport}" if to_pool else "after a pool domain lookup"
            sig = _sig(
                "payload",
                "noise.handshake_start",
                f"64 random-looking bytes first (a Noise handshake, Stratum V2) {why}",
                "low",
            )
            out.findings.append(
                StreamFinding(RULE_ENCRYPTED_POOL, (sig,), extra={"pool": _pool(view)})
            )
    return out


def _layer_findings(
    view: StreamView,
    iocs: Iocs,
    fingerprints: dict[str, Fingerprint],
    out: StreamJudgement,
    eff: Endpoint,
) -> None:
    subject = f"/{eff.host}:{eff.port}"
    for layer in view.layers:
        if layer.kind == "websocket":
            protocol = layer.get("protocol") or ""
            if CHISEL_PROTOCOL.search(protocol):
                sig = _sig(
                    "payload",
                    "tunnel.chisel",
                    f"WebSocket upgrade to {layer.host or eff.host} with subprotocol {protocol}",
                    "high",
                )
                out.findings.append(StreamFinding(RULE_TUNNEL_PROTOCOL, (sig,), subject=subject))
        if layer.kind != "tls":
            continue
        sni = layer.host
        if sni:
            pool = domain_match(sni, iocs.pool_domains)
            if pool:
                sig = _sig(
                    "tls", "tls.sni_pool_domain", f"TLS to {sni} (pool domain {pool})", "medium"
                )
                out.findings.append(
                    StreamFinding(RULE_ENCRYPTED_POOL, (sig,), extra={"pool": _pool(view)})
                )
            tun = domain_match(sni, iocs.tunnel_domains)
            if tun:
                detail = f"TLS to {sni} (tunnel service {tun})"
                sig = _sig("tls", "tls.sni_tunnel_domain", detail, "medium")
                out.findings.append(StreamFinding(RULE_TUNNEL_PROTOCOL, (sig,), subject=subject))
        ja4 = layer.get("ja4")
        fp = fingerprints.get(ja4) if ja4 else None
        if fp is None:
            continue
        rule = RULE_ENCRYPTED_POOL if fp.category == "mining" else RULE_TUNNEL_PROTOCOL
        conf: Confidence = "medium" if fp.confidence == "medium" else "low"
        sig = _sig("tls", f"tls.ja4.{fp.category}", f"JA4 {ja4}: {fp.label}", conf)
        if fp.confidence == "context":
            out.context.append(sig)
        else:
            out.findings.append(StreamFinding(rule, (sig,), subject=subject))


def _pool(view: StreamView) -> dict[str, Any]:
    out: dict[str, Any] = {"ip": view.daddr, "port": view.dport}
    if view.proxied:
        eff = view.effective
        out["effective"] = {"address": eff.host, "port": eff.port}
    return out


def _dedupe(signals: list[tuple[int, Signal]]) -> list[Signal]:
    """One signal per name: the same fact seen at two depths is one fact, told from the
    deepest (the path that says what carried it)."""
    best: dict[str, tuple[int, Signal]] = {}
    for depth, s in signals:
        old = best.get(s.name)
        if old is None or depth > old[0]:
            best[s.name] = (depth, s)
    return [s for _, s in best.values()]
