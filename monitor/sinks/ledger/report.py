"""Reading the ledger: ``rlguard episodes`` (a table or JSON lines) and its helpers."""

from __future__ import annotations

import json
import os
import sqlite3
import time
import urllib.parse
from typing import Any

from monitor.sinks.ledger.model import NS, iso, parse_iso
from monitor.sinks.ledger.store import SCHEMA_VERSION

_S = NS


class LedgerError(Exception):
    """The ledger database cannot be read; ``str(err)`` is the message for the user."""


def parse_since(text: str, now_ns: int | None = None) -> int:
    """``2h``, ``30m``, ``45s``, ``7d`` ago, or an ISO 8601 time -> wall-clock ns."""
    now = time.time_ns() if now_ns is None else now_ns
    t = text.strip()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
    if len(t) > 1 and t[-1] in units:
        try:
            n = float(t[:-1])
        except ValueError:
            n = -1.0
        if n >= 0:
            return now - int(n * units[t[-1]] * _S)
    got = parse_iso(t)
    if got is None:
        raise ValueError(
            f"--since: expected a duration such as 2h, 30m, 7d or an ISO time, got {text!r}"
        )
    return got


def _ro_uri(path: str) -> str:
    return "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=ro"


def episode_row(row: sqlite3.Row | dict[str, Any]) -> dict[str, Any]:
    """One episode as ``rlguard episodes --json`` prints it."""
    gaps = json.loads(row["gaps"])
    alerts = json.loads(row["alerts"])
    dests = json.loads(row["destinations"])
    end = row["end_ns"]
    reasons = row["reasons"]
    return {
        "host": row["host"] if "host" in row.keys() else None,
        "episode_id": row["episode_id"],
        "run_id": row["run_id"],
        "trajectory_id": row["trajectory_id"],
        "sandbox_id": row["sandbox_id"],
        "source": row["source"],
        "window": {"start": iso(row["start_ns"]), "end": None if end is None else iso(end)},
        "open": end is None,
        "end_reason": row["end_reason"],
        "status": row["status"],
        "counts": {
            "events": row["events"],
            "execs": row["execs"],
            "connects": row["connects"],
            "dns": row["dns"],
            "external_destinations": len(dests),
            "destinations_overflow": row["destinations_overflow"],
        },
        "destinations": dests,
        "alerts": [{"rule_id": k, **v} for k, v in sorted(alerts.items())],
        "flagged": row["critical_alerts"] > 0,
        "coverage": {
            "events_dropped": row["dropped"],
            "monitoring_gaps": [{"start": iso(a), "end": iso(b)} for a, b in gaps],
            "undecodable": row["undecodable"],
            "record_errors": row["record_errors"],
            "start_seen": bool(row["start_seen"]),
        },
        "verdict": row["verdict"],
        "reasons": None if reasons is None else json.loads(reasons),
        "revision": row["revision"],
        "current_verdict": row["current_verdict"],
        "current_reasons": json.loads(row["current_reasons"]),
    }


def episode_query(
    table: str,
    mark: str,
    flagged: bool = False,
    run: str | None = None,
    since_ns: int | None = None,
    host: str | None = None,
    host_column: bool = True,
) -> tuple[str, list[Any]]:
    """The SELECT behind ``rlguard episodes`` for either store (``mark``: ? or %s)."""
    where: list[str] = []
    args: list[Any] = []
    if flagged:
        where.append("critical_alerts > 0")
    if run is not None:
        where.append(f"run_id = {mark}")
        args.append(run)
    if host is not None:
        where.append(f"host = {mark}" if host_column else "0")
        if host_column:
            args.append(host)
    if since_ns is not None:
        where.append(f"(end_ns IS NULL OR last_seen_ns >= {mark})")
        args.append(since_ns)
    sql = f"SELECT * FROM {table}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    return sql + f" ORDER BY start_ns, {'host, ' if host_column else ''}episode_id", args


def read_episodes(
    path: str,
    flagged: bool = False,
    run: str | None = None,
    since_ns: int | None = None,
    host: str | None = None,
) -> list[dict[str, Any]]:
    """Episodes from the ledger at ``path``, read-only, oldest first.

    ``flagged``: only episodes with a critical alert. ``since_ns``: only episodes
    still open or whose last activity is at or after it. ``run``/``host``: only those
    of this run / host. Raises ``LedgerError``.
    """
    if not os.path.exists(path):
        raise LedgerError(f"no episode ledger at {path} (is [ledger] enabled and rlguard running?)")
    try:
        conn = sqlite3.connect(_ro_uri(path), uri=True, timeout=5.0)
    except sqlite3.Error as exc:
        raise LedgerError(f"cannot open the episode ledger {path}: {exc}") from None
    try:
        conn.row_factory = sqlite3.Row
        got = conn.execute("SELECT version FROM schema_version").fetchone()
        if got is None or got[0] > SCHEMA_VERSION:
            raise LedgerError(
                f"{path}: ledger schema version {None if got is None else got[0]} "
                f"is not one this rlguard reads ({SCHEMA_VERSION})"
            )
        # version 1 (no host column yet: the monitor migrates it when it next opens it)
        sql, args = episode_query(
            "episodes", "?", flagged, run, since_ns, host, host_column=got[0] >= 2
        )
        return [episode_row(r) for r in conn.execute(sql, args)]
    except sqlite3.Error as exc:
        raise LedgerError(f"cannot read the episode ledger {path}: {exc}") from None
    finally:
        conn.close()


def _cell(value: Any, limit: int = 40) -> str:
    from monitor.sanitize import safe_text

    return safe_text("" if value is None else str(value), limit)


def _window(start: str, end: str | None) -> str:
    first = start[:19].replace("T", " ")
    if end is None:
        return f"{first} .. open"
    return f"{first} .. {end[11:19] if end[:10] == start[:10] else end[:19].replace('T', ' ')}"


def _coverage_cell(cov: dict[str, Any]) -> str:
    problems = []
    if cov["events_dropped"]:
        problems.append(f"dropped {cov['events_dropped']}")
    if cov["monitoring_gaps"]:
        problems.append(f"gap x{len(cov['monitoring_gaps'])}")
    if cov["undecodable"] or cov["record_errors"]:
        problems.append(f"undecodable {cov['undecodable'] + cov['record_errors']}")
    if not cov["start_seen"]:
        problems.append("start not seen")
    return ", ".join(problems) or "ok"


def format_table(episodes: list[dict[str, Any]], hosts: bool = False) -> str:
    """A plain-text table; every string from the ledger is escaped (no terminal control).

    An episode whose verdict line is not written yet shows its provisional verdict in
    parentheses; a revised verdict shows its revision (``drop r2``). ``hosts`` adds a
    HOST column first (the fleet).
    """
    head: tuple[str, ...] = (
        "EPISODE",
        "RUN",
        "WINDOW (UTC)",
        "EXECS",
        "CONNECTS",
        "EXT.DEST",
        "ALERTS",
        "COVERAGE",
        "VERDICT",
        "REASONS",
    )
    if hosts:
        head = ("HOST", *head)
    rows: list[tuple[str, ...]] = []
    for e in episodes:
        crit = sum(1 for a in e["alerts"] if a["severity"] == "critical")
        n_alerts = sum(int(a["count"]) for a in e["alerts"])
        counts = e["counts"]
        if e["verdict"] is None:
            verdict, reasons = f"({e['current_verdict']})", e["current_reasons"]
        else:
            verdict, reasons = e["verdict"], e["reasons"] or []
            if e["revision"] > 1:
                verdict += f" r{e['revision']}"
        rows.append(
            (
                _cell(e["episode_id"]),
                _cell(e["run_id"] or "-", 24),
                _window(e["window"]["start"], e["window"]["end"]),
                str(counts["execs"]),
                str(counts["connects"]),
                str(counts["external_destinations"])
                + ("+" if counts["destinations_overflow"] else ""),
                str(n_alerts) + (f" ({crit} critical)" if crit else ""),
                _coverage_cell(e["coverage"]),
                verdict,
                _cell(", ".join(reasons), 160) or "-",
            )
        )
        if hosts:
            rows[-1] = (_cell(e.get("host") or "-", 32), *rows[-1])
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(widths[i]) for i, h in enumerate(head)).rstrip()]
    for r in rows:
        lines.append("  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip())
    return "\n".join(lines)


def json_line(episode: dict[str, Any]) -> str:
    """One episode as a JSON line, pure ASCII: no byte of it can drive a terminal."""
    return json.dumps(episode, ensure_ascii=True, separators=(",", ":"))
