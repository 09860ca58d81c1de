"""The ledger's model: one episode, what the ledger counts for it, and the verdict rules.

* ``drop``   an alert whose severity is in ``ledger.drop_on`` (default critical);
* ``review`` an alert in ``ledger.review_on`` (default high, medium), or any
  coverage problem: drops, a gap, undecodable records, an end never seen;
* ``keep``   otherwise.

Pure: no I/O. The observer (observer.py) feeds it, the stores (store.py) keep it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

SEVERITIES = ("low", "medium", "high", "critical")
VERDICT_DATASET = "rlguard.verdict"
EPISODE_DATASET = "rlguard.episode"
DEFAULT_INTERNAL = ("127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")

NS = 1_000_000_000
MAX_GAPS = 16  # gap intervals kept per episode (more are merged into the last)


# --- time --------------------------------------------------------------------------------


def iso(ns: int) -> str:
    """Wall-clock ns -> ISO 8601 UTC with microseconds and Z, as on every line."""
    sec, rem = divmod(ns, NS)
    stamp = datetime.fromtimestamp(sec, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{rem // 1000:06d}Z"


_SECONDS: dict[str, int] = {}  # "YYYY-MM-DDTHH:MM:SS" -> ns: lines share their seconds


def _parse_slow(text: str) -> int | None:
    try:
        dt = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    # integer arithmetic: a float timestamp loses the microseconds
    delta = dt - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86400 + delta.seconds) * NS + delta.microseconds * 1000


def parse_iso(text: Any) -> int | None:
    """ISO 8601 (``Z`` or an offset; naive means UTC) -> wall-clock ns; None if unreadable.

    Lines carry ``YYYY-MM-DDTHH:MM:SS.ffffffZ``; that form is parsed from a per-second
    cache, since ``observe()`` runs for every line.
    """
    if not isinstance(text, str) or not text:
        return None
    if len(text) == 27 and text[19] == "." and text[26] == "Z" and text[20:26].isdigit():
        head = text[:19]
        base = _SECONDS.get(head)
        if base is None:
            base = _parse_slow(head + "Z")
            if base is None:
                return None
            if len(_SECONDS) >= 4096:
                _SECONDS.clear()
            _SECONDS[head] = base
        return base + int(text[20:26]) * 1000
    return _parse_slow(text)


# --- one episode -------------------------------------------------------------------------


@dataclass
class Episode:
    """What the ledger knows about one episode (in memory; a row in ``episodes``)."""

    episode_id: str
    start_ns: int
    last_seen_ns: int
    run_id: str | None = None
    trajectory_id: str | None = None
    sandbox_id: str | None = None
    source: str = "tags"  # "registry" once the registry named it
    end_ns: int | None = None  # None while open
    end_reason: str | None = None  # registry, run_end, idle, evicted, stale, reboot
    status: str | None = None  # the registry's status at episode_end
    start_seen: bool = True  # False when the registry's episode_start never arrived
    events: int = 0
    execs: int = 0
    connects: int = 0
    dns: int = 0
    destinations: set[str] = field(default_factory=set)
    destinations_overflow: int = 0
    dropped: int = 0
    gaps: list[list[int]] = field(default_factory=list)
    undecodable: int = 0
    record_errors: int = 0
    alerts: dict[str, dict[str, Any]] = field(default_factory=dict)
    critical_alerts: int = 0
    verdict: str | None = None  # the last one written to the stream
    reasons: list[str] | None = None
    revision: int = 0
    verdict_ns: int | None = None
    due_ns: int | None = None  # when the next verdict line is due; None: none pending
    issued_end_ns: int | None = None  # the window end the last verdict line carried

    def overlaps(self, lo: int, hi: int) -> bool:
        """Whether the window (open: to now and beyond) meets [lo, hi]."""
        return self.start_ns <= hi and (self.end_ns is None or self.end_ns >= lo)

    def add_gap(self, lo: int, hi: int) -> None:
        for g in self.gaps:
            if lo <= g[1] and hi >= g[0]:
                g[0], g[1] = min(g[0], lo), max(g[1], hi)
                return
        if len(self.gaps) >= MAX_GAPS:
            last = self.gaps[-1]
            last[0], last[1] = min(last[0], lo), max(last[1], hi)
            return
        self.gaps.append([lo, hi])

    def judge(self, drop_on: Iterable[str], review_on: Iterable[str]) -> tuple[str, list[str]]:
        """(verdict, reasons). Reasons are stable codes, so counts alone never revise."""
        drop, review = set(drop_on), set(review_on)
        by_sev: dict[str, list[str]] = {"drop": [], "review": []}
        for rule_id, a in sorted(self.alerts.items()):
            sev = a["severity"]
            if sev in drop:
                by_sev["drop"].append(f"alert:{rule_id}:{sev}")
            elif sev in review:
                by_sev["review"].append(f"alert:{rule_id}:{sev}")
        coverage = []
        if self.dropped:
            coverage.append("events_dropped")
        if self.gaps:
            coverage.append("monitoring_gap")
        if self.undecodable or self.record_errors:
            coverage.append("undecodable")
        if not self.start_seen:
            coverage.append("start_not_seen")
        if self.end_reason in ("stale", "reboot"):
            coverage.append("end_not_seen")
        reasons = by_sev["drop"] + by_sev["review"] + coverage
        if by_sev["drop"]:
            return "drop", reasons
        return ("review" if reasons else "keep"), reasons

    def alert_list(self) -> list[dict[str, Any]]:
        return [{"rule_id": k, **v} for k, v in sorted(self.alerts.items())]

    def coverage(self) -> dict[str, Any]:
        return {
            "events_dropped": self.dropped,
            "monitoring_gaps": [{"start": iso(a), "end": iso(b)} for a, b in self.gaps],
            "undecodable": self.undecodable,
            "record_errors": self.record_errors,
            "start_seen": self.start_seen,
            "complete": not (
                self.dropped
                or self.gaps
                or self.undecodable
                or self.record_errors
                or not self.start_seen
                or self.end_reason in ("stale", "reboot")
            ),
        }

    def counts(self) -> dict[str, int]:
        return {
            "events": self.events,
            "execs": self.execs,
            "connects": self.connects,
            "dns": self.dns,
            "external_destinations": len(self.destinations),
            "destinations_overflow": self.destinations_overflow,
        }
