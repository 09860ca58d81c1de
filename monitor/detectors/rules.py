"""The rule catalogue (monitor/data/rules.toml) and how signals become a severity."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from monitor.detectors.signals import CONFIDENCE_RANK, Signal

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

RULES_FILE = Path(__file__).resolve().parent.parent / "data" / "rules.toml"

# ECS event.severity numbers for the words (the scale Elastic's detection rules use)
SEVERITY_SCORE = {"low": 21, "medium": 47, "high": 73, "critical": 99}
SEVERITY_RANK = {"low": 1, "medium": 2, "high": 3, "critical": 4}


@dataclass(frozen=True)
class Rule:
    id: str
    name: str
    description: str
    category: str
    techniques: tuple[tuple[str, str], ...]
    severity_for: dict[str, str]
    data_sources: tuple[str, ...]

    def severity(self, signals: list[Signal]) -> str:
        """Alert severity from the strongest signal; two medium signals count as high."""
        if not signals:
            return "low"
        best = max(CONFIDENCE_RANK[s.confidence] for s in signals)
        mediums = sum(1 for s in signals if s.confidence == "medium")
        if best == 2 and mediums >= 2:
            best = 3
        conf = {1: "low", 2: "medium", 3: "high"}[best]
        return self.severity_for[conf]


def load_rules(path: Path = RULES_FILE) -> dict[str, Rule]:
    with open(path, "rb") as fh:
        doc = tomllib.load(fh)
    rules = {}
    for r in doc["rule"]:
        rules[r["id"]] = Rule(
            id=r["id"],
            name=r["name"],
            description=r["description"],
            category=r["category"],
            techniques=tuple((t[0], t[1]) for t in r["techniques"]),
            severity_for=dict(r["severity"]),
            data_sources=tuple(r["data_sources"]),
        )
    return rules
