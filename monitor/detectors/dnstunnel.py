"""DNS tunnelling (RLG-TUN-006) and the DNS name lists (pool, miner, tunnel services).

A DNS tunnel (iodine, dnscat2, dns2tcp, a C2's DNS channel) encodes data in the labels of
queries under a domain whose name server the attacker runs, and reads the answers from
TXT, NULL, CNAME or MX records.  One query says little; an episode that sends hundreds of
unique, long, random-looking names under one registered domain, or hundreds of TXT/NULL
queries to it, is tunnelling.  Registered domains come from the public-suffix list
(``publicsuffixlist``, its snapshot bundled in the package: no network at run time).

The label measures are pure functions; :class:`DnsTunnelTracker` holds the per-(episode,
registered domain) counts for one window, bounded in memory, and returns signals only when
a threshold is first crossed (the engine de-duplicates and escalates as for every rule).
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Final

from publicsuffixlist import PublicSuffixList

from monitor.config import DnsTunnelConfig
from monitor.detectors import stratum, tunnel
from monitor.detectors.iocs import Iocs, domain_match
from monitor.detectors.signals import Confidence, Signal, bounded

RULE_DNS_TUNNEL: Final = "RLG-TUN-006"
RULES: Final = (RULE_DNS_TUNNEL,)
NAMES_PER_WINDOW_FACTOR: Final = 4  # unique names kept: min_unique_names x this
_PSL: Final = PublicSuffixList()


@lru_cache(maxsize=65536)
def registered_domain(name: str) -> str:
    """The registrable domain of a DNS name (public-suffix list, private section
    included): ``a.b.example.co.uk`` -> ``example.co.uk``; the name itself when it has
    no registrable part."""
    name = name.lower().rstrip(".")
    try:
        got = _PSL.privatesuffix(name)
    except (ValueError, TypeError, UnicodeError):  # pragma: no cover - defensive
        got = None
    return got or name


def entropy(text: str) -> float:
    """Shannon entropy of the characters of `text`, in bits per character."""
    if not text:
        return 0.0
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in Counter(text).values())


def subdomain_part(name: str, registered: str) -> str:
    """The labels left of the registered domain, without dots ("" when none)."""
    name = name.lower().rstrip(".")
    if name == registered or not name.endswith("." + registered):
        return ""
    return name[: -len(registered) - 1].replace(".", "")


RANDOM_MIN_LEN: Final = 24  # subdomain characters before randomness is judged
RANDOM_MIN_DIGITS: Final = 0.15  # hex (62 %) and base32 (19 %) carry digits; words few


def looks_encoded(name: str, registered: str, long_label: int, min_entropy: float) -> bool:
    """A name whose labels carry data: one label of `long_label`+ characters, or a
    subdomain part of 24+ characters with `min_entropy`+ bits per character and the digit
    share of hex or base32 text (so `worker-12.ray-head.default.svc` is not random)."""
    labels = name.rstrip(".").split(".")
    if max((len(label) for label in labels), default=0) >= long_label:
        return True
    sub = subdomain_part(name, registered)
    if len(sub) < RANDOM_MIN_LEN:
        return False
    digits = sum(c.isdigit() for c in sub) / len(sub)
    return digits >= RANDOM_MIN_DIGITS and entropy(sub) >= min_entropy


# -- name lists ---------------------------------------------------------------------------


def name_list_signals(name: str, iocs: Iocs) -> list[tuple[str, Signal]]:
    """(rule, signal) for a looked-up name on the tunnel-service, miner or pool lists.

    A miner's own endpoint (its donation pool) is high; a pool domain medium.
    """
    out: list[tuple[str, Signal]] = []
    if not isinstance(name, str) or not name:
        return out
    sig = tunnel.tunnel_dns_signal(name, iocs)
    if sig is not None:
        out.append((tunnel.RULE_TUNNEL_DNS, sig))
    clean = name.lower().rstrip(".")
    hit = domain_match(clean, iocs.miner_domains)
    if hit is not None:
        detail = f"{clean} (miner endpoint {hit})"
        out.append((stratum.RULE_POOL_DNS, _sig("dns.miner_domain", detail, "high")))
        return out
    sig = stratum.pool_dns_signal(name, iocs)
    if sig is not None:
        out.append((stratum.RULE_POOL_DNS, sig))
    return out


def _sig(name: str, detail: str, conf: Confidence) -> Signal:
    return Signal("dns", name, bounded(detail), conf)


# -- the per-episode tracker ----------------------------------------------------------------


@dataclass(slots=True)
class _Window:
    start_ns: int
    names: set[str] = field(default_factory=set)
    encoded: int = 0  # unique names that look encoded
    records: int = 0  # queries of the listed record types
    fired: set[str] = field(default_factory=set)  # signal names already returned


class DnsTunnelTracker:
    """Counts per (episode key, registered domain) in a tumbling window, bounded."""

    def __init__(self, cfg: DnsTunnelConfig) -> None:
        self.cfg = cfg
        self._types = frozenset(t.upper() for t in cfg.record_types)
        self._allow = frozenset(cfg.allow_domains)
        self._windows: OrderedDict[tuple[str, str], _Window] = OrderedDict()
        self.evicted = 0

    def reconfigure(self, cfg: DnsTunnelConfig) -> None:
        self.cfg = cfg
        self._types = frozenset(t.upper() for t in cfg.record_types)
        self._allow = frozenset(cfg.allow_domains)

    def __len__(self) -> int:
        return len(self._windows)

    def observe(
        self, key: str, name: str, qtype: str, ts_ns: int
    ) -> tuple[str, list[Signal]] | None:
        """Count one query; (registered domain, new signals) when a threshold is crossed."""
        cfg = self.cfg
        if not cfg.enabled or not name or name == "." or name.endswith(".arpa"):
            return None
        name = name.lower().rstrip(".")
        reg = registered_domain(name)
        if reg in self._allow or "." not in reg:
            return None
        wkey = (key, reg)
        w = self._windows.get(wkey)
        if w is None or ts_ns - w.start_ns > cfg.window_s * 1e9:
            w = _Window(ts_ns, fired=w.fired if w is not None else set())
            self._windows[wkey] = w
            if len(self._windows) > cfg.max_tracked:
                self._windows.popitem(last=False)
                self.evicted += 1
        else:
            self._windows.move_to_end(wkey)
        if qtype.upper() in self._types:
            w.records += 1
        if name not in w.names and len(w.names) < cfg.min_unique_names * NAMES_PER_WINDOW_FACTOR:
            w.names.add(name)
            if looks_encoded(name, reg, cfg.long_label, cfg.min_entropy):
                w.encoded += 1
        out: list[Signal] = []
        unique = len(w.names)
        if (
            "dns.tunnel.labels" not in w.fired
            and unique >= cfg.min_unique_names
            and w.encoded >= cfg.suspicious_fraction * unique
        ):
            w.fired.add("dns.tunnel.labels")
            out.append(
                _sig(
                    "dns.tunnel.labels",
                    f"{unique} unique names under {reg}, {w.encoded} long or random "
                    f"(e.g. {name[:80]})",
                    "medium",
                )
            )
        if "dns.tunnel.records" not in w.fired and w.records >= cfg.min_record_queries:
            w.fired.add("dns.tunnel.records")
            types = "/".join(sorted(self._types))
            out.append(
                _sig("dns.tunnel.records", f"{w.records} {types} queries under {reg}", "medium")
            )
        return (reg, out) if out else None
