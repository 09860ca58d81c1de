"""Forged episode tags: own tags that contradict a stronger attribution source.

Attribution (monitor/state/attribution.py) decides which source wins and records the
contradiction as a :class:`Conflict`; this turns it into evidence for RLG-ATTR-001, one
high signal per contradicted role.  A forged episode tag is itself suspicious: an agent
trying to move its activity into another episode, or out of its own.
"""

from __future__ import annotations

from typing import Final

from monitor.detectors.signals import Signal, bounded
from monitor.state.attribution import Conflict

# The rule this detector raises (monitor/data/rules.toml; checked against it at load).
RULE_TAG_CONFLICT: Final = "RLG-ATTR-001"
RULES: Final = (RULE_TAG_CONFLICT,)


def conflict_signals(c: Conflict) -> list[Signal]:
    """One high signal per role whose own value was overruled."""
    return [
        Signal(
            "env",
            f"tag_conflict.{role}",
            bounded(f"own {role} {own!r} != {c.source} {kept!r}"),
            "high",
        )
        for role, (own, kept) in c.roles.items()
    ]
