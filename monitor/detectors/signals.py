"""What detectors return: signals (one observed fact each) and their confidence."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Confidence = Literal["low", "medium", "high"]
CONFIDENCE_RANK = {"low": 1, "medium": 2, "high": 3}


@dataclass(frozen=True, slots=True)
class Signal:
    """One piece of evidence.

    kind: where it was seen: "argv", "config", "payload", "banner", "dns",
          "behaviour", "name", "fd".
    name: a short stable id, e.g. "ssh.remote_forward", "stratum.mining.subscribe".
    detail: the matched text, already bounded (<= 256 chars) and safe to print.
    """

    kind: str
    name: str
    detail: str
    confidence: Confidence

    def as_dict(self) -> dict[str, str]:
        return {
            "kind": self.kind,
            "name": self.name,
            "detail": self.detail,
            "confidence": self.confidence,
        }


def bounded(text: str, limit: int = 256) -> str:
    """Evidence text, at most `limit` characters (truncation marker included),
    stripped of control characters."""
    from monitor.sanitize import safe_text

    out = safe_text(text, limit)
    if len(out) > limit:  # safe_text appends its "…[+N bytes]" marker past the limit
        out = safe_text(text, max(8, limit - (len(out) - limit) - 2))
    return out[:limit]
