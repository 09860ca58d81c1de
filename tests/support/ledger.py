"""Stream documents the episode ledger takes (registry lines, alerts), for fleet tests and bench."""

from __future__ import annotations

from typing import Any

from monitor.sinks.ledger import iso


def registry_doc(action: str, eid: str, ts: int, run: str = "run-1") -> dict[str, Any]:
    """An ``rlguard.episode`` line: ``episode_start`` or ``episode_end`` of EID at TS (ns)."""
    return {
        "@timestamp": iso(ts),
        "event": {"kind": "event", "dataset": "rlguard.episode", "action": action},
        "rl": {"episode_id": eid, "run_id": run},
        "rlguard": {"registry": {}},
    }


def alert_doc(eid: str, ts: int, severity: str = "critical") -> dict[str, Any]:
    """An RLG-MIN-001 alert of SEVERITY against EID at TS (ns)."""
    return {
        "@timestamp": iso(ts),
        "event": {"kind": "alert", "action": "RLG-MIN-001", "dataset": "rlguard.alert"},
        "rule": {"id": "RLG-MIN-001"},
        "rl": {"episode_id": eid},
        "rlguard": {"alert": {"severity": severity}},
    }
