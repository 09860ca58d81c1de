"""Attribution evidence beyond forged tags: who tried to steer the registry, and work that
crossed from one episode into another.

RLG-ATTR-002: a registry message was refused (monitor/state/registry/gate.py); a process
inside an episode that tries to start, bind or end episodes is trying to move itself or its
work (high), an untrusted sender is medium, a trusted trainer asking for what a live episode
owns is low (a trainer bug rather than an attack).

RLG-ATTR-003: work crossed episodes: a socket connected in one episode carried the first
bytes of a process in another (SCM_RIGHTS, pidfd_getfd), or a process of one episode asked a
server of another episode for work (a tmux server left behind, a shared daemon).
"""

from __future__ import annotations

from typing import Final

from monitor.detectors.signals import Confidence, Signal, bounded
from monitor.state.registry.records import RegistryRefusedEvent

RULE_REGISTRY_REFUSED: Final = "RLG-ATTR-002"
RULE_CROSSED_EPISODES: Final = "RLG-ATTR-003"
RULES: Final = (RULE_REGISTRY_REFUSED, RULE_CROSSED_EPISODES)

_REFUSAL_CONFIDENCE: dict[str, Confidence] = {
    "sender_in_episode": "high",
    "untrusted_sender": "medium",
    "unknown_sender": "medium",
    "owned": "low",
}


def refusal_signals(ev: RegistryRefusedEvent) -> list[Signal]:
    """One signal: why the message was refused."""
    conf = _REFUSAL_CONFIDENCE.get(ev.refused_because, "medium")
    return [Signal("registry", f"registry.{ev.refused_because}", bounded(ev.reason), conf)]


def crossing_signal(kind: str, detail: str) -> Signal:
    """A socket ("socket") or a request ("request") that crossed episodes."""
    return Signal("behaviour", f"crossed_episodes.{kind}", bounded(detail), "medium")
