"""Alerts as one readable line each, for a terminal (used by `rlguard demo`).

Every string in an alert was sanitised at the edge (monitor/sensor/events.py), so it
holds no control characters; this only chooses what to show.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from monitor.sinks.ndjson import NdjsonSink

COLOURS = {"low": "36", "medium": "33", "high": "31", "critical": "1;31"}


def format_alert(doc: dict[str, Any], colour: bool = False) -> str:
    alert = doc.get("rlguard", {}).get("alert", {})
    sev = alert.get("severity", "?")
    rule = doc.get("rule", {})
    proc = doc.get("process", {})
    rl = doc.get("rl", {})
    lineage = " < ".join(
        [f"{proc.get('name')}({proc.get('pid')})"]
        + [f"{a.get('name')}({a.get('pid')})" for a in rl.get("lineage", [])[:4]]
    )
    episode = rl.get("episode_id") or "-"
    head = f"[{sev:>8}]"
    if colour:
        head = f"\x1b[{COLOURS.get(sev, '0')}m{head}\x1b[0m"
    follow = " (follow-up)" if alert.get("follow_up") else ""
    evidence = "; ".join(e.get("detail", "") for e in alert.get("evidence", []))[:300]
    return (
        f"{head} {rule.get('id')} {rule.get('name')}{follow}\n"
        f"           episode={episode} worker={rl.get('worker_id') or '-'} "
        f"run={rl.get('run_id') or '-'}  process: {lineage}\n"
        f"           evidence: {evidence}"
    )


class ConsoleAlertSink:
    """Prints alerts; optionally also writes every document as NDJSON."""

    def __init__(self, ndjson_path: str | None = None, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self.colour = self.stream.isatty()
        self.ndjson = NdjsonSink(ndjson_path) if ndjson_path else None
        self.alerts: list[dict[str, Any]] = []
        self.lines_written = 0
        self.lines_lost = 0
        self.pending = 0
        self.last_error: str | None = None

    def write(self, doc: dict[str, Any]) -> None:
        self.write_line(None, doc)

    def write_line(self, line: bytes | None, doc: dict[str, Any]) -> None:
        if self.ndjson is not None:
            if line is None:
                self.ndjson.write(doc)
            else:
                self.ndjson.write_line(line, doc)
        self.lines_written += 1
        if doc.get("event", {}).get("kind") == "alert":
            self.alerts.append(doc)
            print(format_alert(doc, self.colour), file=self.stream, flush=True)

    def flush(self) -> bool:
        return self.ndjson.flush() if self.ndjson is not None else True

    def reopen(self) -> None:
        if self.ndjson is not None:
            self.ndjson.reopen()

    def close(self) -> None:
        if self.ndjson is not None:
            self.ndjson.close()
