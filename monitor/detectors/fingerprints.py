"""TLS client fingerprints as data: monitor/data/tls_fingerprints.toml plus the config's."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

FINGERPRINT_FILE = Path(__file__).resolve().parent.parent / "data" / "tls_fingerprints.toml"
CATEGORIES = ("mining", "tunnel")
CONFIDENCES = ("context", "low", "medium")


@dataclass(frozen=True, slots=True)
class Fingerprint:
    ja4: str
    label: str
    category: str  # "mining" or "tunnel"
    confidence: str  # "context", "low", "medium"
    source: str


def load_fingerprints(
    extra: tuple[str, ...] = (), path: Path = FINGERPRINT_FILE
) -> dict[str, Fingerprint]:
    """JA4 -> entry: the shipped file, then the config's "JA4=label" additions (mining, low).

    A malformed shipped entry is an error (it is ours); the config's entries were checked
    by monitor/config.py.
    """
    with open(path, "rb") as fh:
        doc = tomllib.load(fh)
    out: dict[str, Fingerprint] = {}
    for i, e in enumerate(doc.get("fingerprint", []), start=1):
        fp = Fingerprint(
            str(e["ja4"]),
            str(e["label"]),
            str(e["category"]),
            str(e["confidence"]),
            str(e["source"]),
        )
        if fp.category not in CATEGORIES or fp.confidence not in CONFIDENCES:
            raise ValueError(f"{path}: fingerprint {i}: bad category or confidence")
        out[fp.ja4] = fp
    for entry in extra:
        ja4, _, label = entry.partition("=")
        out[ja4] = Fingerprint(ja4, label, "mining", "low", "config [streams] ja4")
    return out
