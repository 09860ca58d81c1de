"""RLG-ATTR-001: an exec whose own episode tags contradict a stronger source.

A forged tag is itself suspicious: the attribution keeps the stronger source (registry,
cgroup, the inherited tags) and this detector turns the contradiction into evidence.
"""

from __future__ import annotations

from monitor.detectors.signals import Signal, bounded
from monitor.state.attributed import Conflict

RULE_TAG_CONFLICT = "RLG-ATTR-001"


def conflict_signals(c: Conflict) -> list[Signal]:
    """One high-confidence signal per role whose own value differs from the kept one."""
    return [
        Signal(
            "env",
            f"tag_conflict.{role}",
            bounded(f"own {role} {own!r} != {c.source} {kept!r}"),
            "high",
        )
        for role, (own, kept) in c.roles.items()
    ]
