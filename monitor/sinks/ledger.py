"""The episode ledger: per RL episode, what happened, how well we saw it, and a verdict.

A pure consumer of the records the collector writes (the same dicts that become
NDJSON lines) plus a wall clock. Per episode it keeps the window, counts (events,
execs, connects, DNS queries, distinct external destinations), the alerts by rule,
the coverage (events the kernel dropped, monitoring gaps, undecodable records
during the window) and a verdict:

* ``drop``   an alert whose severity is in ``ledger.drop_on`` (default critical);
* ``review`` an alert in ``ledger.review_on`` (default high, medium), or any
  coverage problem: drops, a gap, undecodable records, an end never seen;
* ``keep``   otherwise.

Records count for the episode named by their own ``rl.episode_id``, never by
time: a background process born in episode 1 that connects during episode 2
counts for episode 1 (the attribution stage decides; the ledger only adds).

The verdict goes out as an ``rlguard.verdict`` line ``verdict_grace_s`` after the
episode's end (announced by the registry, or inferred after ``idle_end_s`` without
a record for episodes known only from env tags), and again, with ``revision`` + 1,
whenever a later record changes the verdict or its reasons.

Storage is SQLite (stdlib ``sqlite3``) in WAL mode, so ``rlguard episodes`` can read
while the monitor writes. ``observe()`` only touches dicts; rows are written in
one transaction per second at most from ``due()``. A database that cannot be
opened or written (read-only path, full disk, corrupt file) never stops the
monitor: the ledger reports it once as a ``ledger_error`` line, keeps its state
in memory, still writes verdict lines, and retries. docs/ledger.md has the rest.
"""

from __future__ import annotations

import ipaddress
import json
import os
import sqlite3
import time
import urllib.parse
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from monitor.config import Config, LedgerConfig

__all__ = [
    "SCHEMA_VERSION",
    "EpisodeLedger",
    "LedgerError",
    "episode_row",
    "format_table",
    "ledger_for",
    "ledger_path",
    "parse_since",
    "read_episodes",
]

SCHEMA_VERSION = 1
SEVERITIES = ("low", "medium", "high", "critical")
VERDICT_DATASET = "rlguard.verdict"
EPISODE_DATASET = "rlguard.episode"
DEFAULT_INTERNAL = ("127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")

_S = 1_000_000_000
# The collector reads the kernel's drop counters once a second, so a drop reported at T
# happened in (T - 1 s, T]; two seconds of look-back keeps every episode it could touch.
DROP_LOOKBACK_NS = 2 * _S
FLUSH_INTERVAL_NS = 1 * _S  # rows reach the database at most this late
ALIVE_INTERVAL_NS = 5 * _S  # how often an idle ledger records that the monitor is alive
SCAN_INTERVAL_NS = 1 * _S  # idle-end and eviction scan
RETRY_NS = 30 * _S  # a failed database is tried again this often
PRUNE_INTERVAL_NS = 3600 * _S
EVICT_AFTER_NS = 60 * _S  # an ended episode stays in memory at least this long
MAX_GAPS = 16  # gap intervals kept per episode (more are merged into the last)
MAX_HISTORY = 10000  # verdict lines waiting for the verdicts table while it cannot be written
_FAR = 1 << 62

# The episodes table, one (column, SQL type) per field: the DDL, the INSERT and the
# row builder all come from this list.
_EPISODE_TABLE: tuple[tuple[str, str], ...] = (
    ("episode_id", "TEXT PRIMARY KEY"),
    ("run_id", "TEXT"),
    ("trajectory_id", "TEXT"),
    ("sandbox_id", "TEXT"),
    ("source", "TEXT NOT NULL"),  # registry | tags
    ("start_ns", "INTEGER NOT NULL"),  # wall-clock ns, as every time here
    ("last_seen_ns", "INTEGER NOT NULL"),
    ("end_ns", "INTEGER"),  # NULL while open
    ("end_reason", "TEXT"),
    ("status", "TEXT"),
    ("start_seen", "INTEGER NOT NULL"),
    ("events", "INTEGER NOT NULL"),
    ("execs", "INTEGER NOT NULL"),
    ("connects", "INTEGER NOT NULL"),
    ("dns", "INTEGER NOT NULL"),
    ("destinations", "TEXT NOT NULL"),  # JSON list of external addresses
    ("destinations_overflow", "INTEGER NOT NULL"),
    ("dropped", "INTEGER NOT NULL"),
    ("gaps", "TEXT NOT NULL"),  # JSON list of [start_ns, end_ns]
    ("undecodable", "INTEGER NOT NULL"),
    ("record_errors", "INTEGER NOT NULL"),
    ("alerts", "TEXT NOT NULL"),  # JSON {rule_id: {severity, count, first}}
    ("critical_alerts", "INTEGER NOT NULL"),
    ("verdict", "TEXT"),  # the last verdict line written; NULL before the first
    ("reasons", "TEXT"),
    ("revision", "INTEGER NOT NULL"),
    ("verdict_ns", "INTEGER"),
    ("current_verdict", "TEXT NOT NULL"),  # what the verdict would be now
    ("current_reasons", "TEXT NOT NULL"),
    ("updated_ns", "INTEGER NOT NULL"),
)
_COLUMNS = tuple(name for name, _ in _EPISODE_TABLE)

_DDL = (
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS episodes ("
    + ", ".join(f"{name} {sql}" for name, sql in _EPISODE_TABLE)
    + ")",
    "CREATE INDEX IF NOT EXISTS episodes_end ON episodes (end_ns)",
    "CREATE INDEX IF NOT EXISTS episodes_run ON episodes (run_id)",
    """CREATE TABLE IF NOT EXISTS verdicts (
        episode_id TEXT NOT NULL, revision INTEGER NOT NULL, at_ns INTEGER NOT NULL,
        verdict TEXT NOT NULL, reasons TEXT NOT NULL, record TEXT NOT NULL,
        PRIMARY KEY (episode_id, revision))""",
)


class LedgerError(Exception):
    """The ledger database cannot be read; ``str(err)`` is the message for the user."""


# --- time --------------------------------------------------------------------------------


def iso(ns: int) -> str:
    """Wall-clock ns -> ISO 8601 UTC with microseconds and Z, as on every line."""
    sec, rem = divmod(ns, _S)
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
    return (delta.days * 86400 + delta.seconds) * _S + delta.microseconds * 1000


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


def _to_row(ep: Episode, current: tuple[str, list[str]], now_ns: int) -> tuple[Any, ...]:
    row = {
        **{name: getattr(ep, name) for name in _COLUMNS if hasattr(ep, name)},
        "start_seen": int(ep.start_seen),
        "destinations": json.dumps(sorted(ep.destinations)),
        "gaps": json.dumps(ep.gaps),
        "alerts": json.dumps(ep.alerts),
        "reasons": None if ep.reasons is None else json.dumps(ep.reasons),
        "current_verdict": current[0],
        "current_reasons": json.dumps(current[1]),
        "updated_ns": now_ns,
    }
    return tuple(row[name] for name in _COLUMNS)


def _from_row(row: sqlite3.Row) -> Episode:
    ep = Episode(
        episode_id=row["episode_id"],
        start_ns=row["start_ns"],
        last_seen_ns=row["last_seen_ns"],
        run_id=row["run_id"],
        trajectory_id=row["trajectory_id"],
        sandbox_id=row["sandbox_id"],
        source=row["source"],
        end_ns=row["end_ns"],
        end_reason=row["end_reason"],
        status=row["status"],
        start_seen=bool(row["start_seen"]),
        events=row["events"],
        execs=row["execs"],
        connects=row["connects"],
        dns=row["dns"],
        destinations=set(json.loads(row["destinations"])),
        destinations_overflow=row["destinations_overflow"],
        dropped=row["dropped"],
        gaps=[list(g) for g in json.loads(row["gaps"])],
        undecodable=row["undecodable"],
        record_errors=row["record_errors"],
        alerts=json.loads(row["alerts"]),
        critical_alerts=row["critical_alerts"],
        verdict=row["verdict"],
        reasons=None if row["reasons"] is None else json.loads(row["reasons"]),
        revision=row["revision"],
        verdict_ns=row["verdict_ns"],
    )
    ep.issued_end_ns = ep.end_ns if ep.revision else None
    return ep


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


# --- the ledger --------------------------------------------------------------------------


class EpisodeLedger:
    """Per-episode state fed by ``observe(doc)``; verdict lines come out of ``due()``.

    ``path`` is the SQLite file (its directory is created); ``config`` the ``[ledger]``
    section. ``internal_networks`` (CIDRs) decide which destinations are external.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        config: LedgerConfig,
        internal_networks: Iterable[str] = DEFAULT_INTERNAL,
        now_ns: int | None = None,
    ) -> None:
        self.path = str(path)
        self.config = config
        self._grace = int(config.verdict_grace_s * _S)
        self._idle = int(config.idle_end_s * _S)
        self._stale = int(config.stale_end_s * _S)
        self._internal = [ipaddress.ip_network(n, strict=False) for n in internal_networks]
        self._external_cache: dict[str, bool] = {}
        self.episodes: dict[str, Episode] = {}
        self._dirty: set[str] = set()
        self._check: set[str] = set()  # episodes whose verdict line may be due
        self._out: list[dict[str, Any]] = []  # ledger_error lines waiting for due()
        # verdict lines not yet in the verdicts table (bounded: the episode row keeps the last)
        self._history: list[tuple[str, int, int, str, str, str]] = []
        self._host: dict[str, Any] | None = None
        self._last_stats: tuple[int, int] | None = None  # (ts, undecodable) of the last stats
        self._conn: sqlite3.Connection | None = None
        self._error: str | None = None  # the database problem last reported
        self._retry_ns = 0
        self._last_flush = 0
        self._last_alive = 0
        self._next_scan = 0
        self._next_prune = 0
        self.observe_errors = 0
        self.closed = False
        now = time.time_ns() if now_ns is None else now_ns
        self._open(now)

    # -- database ---------------------------------------------------------------------

    def _report(self, action: str, message: str, now_ns: int) -> None:
        doc: dict[str, Any] = {
            "@timestamp": iso(now_ns),
            "event": {"kind": "metric", "dataset": "rlguard.lifecycle", "action": action},
            "rlguard": {
                "message": message[:1000],
                "ledger": {"path": self.path, "persisting": self._conn is not None},
            },
        }
        if self._host is not None:
            doc["host"] = self._host
        self._out.append(doc)

    def _fail(self, exc: BaseException, what: str, now_ns: int) -> None:
        """A database problem: report it once, carry on in memory, retry later."""
        detail = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        message = f"episode ledger {self.path}: {what}: {detail}"
        if isinstance(exc, sqlite3.DatabaseError) and "not a database" in str(exc):
            message += (
                " (corrupt or not an SQLite file: move it aside and rlguard starts a new one)"
            )
        if self._conn is not None and what == "open":
            self._close_conn()
        self._retry_ns = now_ns + RETRY_NS
        if message != self._error:
            self._error = message
            self._report("ledger_error", message + "; verdicts still go to the stream", now_ns)

    def _close_conn(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except sqlite3.Error:
                pass
            self._conn = None

    def _open(self, now_ns: int) -> None:
        try:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=1.0, isolation_level=None)
            self._conn = conn
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # WAL: durable at checkpoints, never torn
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                for ddl in _DDL:
                    conn.execute(ddl)
                got = conn.execute("SELECT version FROM schema_version").fetchone()
                if got is None:
                    conn.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
                elif got[0] > SCHEMA_VERSION:
                    raise sqlite3.DatabaseError(
                        f"schema version {got[0]} is newer than this rlguard's {SCHEMA_VERSION}"
                    )
            self._load_unfinished(conn, now_ns)
        except (sqlite3.Error, OSError, ValueError) as exc:  # ValueError: a NUL in the path
            self._fail(exc, "open", now_ns)
            return
        if self._error is not None:
            self._error = None
            self._report("ledger_recovered", f"episode ledger {self.path}: writing again", now_ns)
            self._dirty.update(self.episodes)  # what was kept in memory meanwhile

    def _meta(self, conn: sqlite3.Connection, key: str) -> str | None:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _load_unfinished(self, conn: sqlite3.Connection, now_ns: int) -> None:
        """Bring back open episodes and pending verdicts; open ones get a gap on restart.

        The monitor was down from the ledger's last sign of life until now, so an
        episode still open then went partly unseen, whatever the heartbeat says: a
        ``monitoring_gap`` line can only widen that interval, never remove it.
        """
        alive = self._meta(conn, "last_alive_ns")
        last_alive = int(alive) if alive is not None else None
        rows = conn.execute(
            "SELECT * FROM episodes WHERE end_ns IS NULL OR revision = 0 "
            "OR current_verdict != verdict OR current_reasons != reasons"
        ).fetchall()
        for row in rows:
            eid = row["episode_id"]
            if eid in self.episodes:
                continue
            ep = _from_row(row)
            self.episodes[eid] = ep
            if ep.end_ns is None:
                if last_alive is not None:
                    ep.add_gap(min(last_alive, now_ns), now_ns)
                    self._dirty.add(eid)
            else:
                ep.due_ns = ep.end_ns + self._grace if ep.revision == 0 else now_ns
                self._check.add(eid)

    def _load(self, eid: str) -> Episode | None:
        if self._conn is None:
            return None
        try:
            row = self._conn.execute(
                "SELECT * FROM episodes WHERE episode_id = ?", (eid,)
            ).fetchone()
        except sqlite3.Error as exc:
            self._fail(exc, "read", time.time_ns())
            return None
        return None if row is None else _from_row(row)

    def _flush(self, now_ns: int) -> bool:
        if self._conn is None:
            if now_ns >= self._retry_ns and not self.closed:
                self._open(now_ns)
            if self._conn is None:
                return False
        conn = self._conn
        rows = [
            _to_row(ep, ep.judge(self.config.drop_on, self.config.review_on), now_ns)
            for eid in self._dirty
            if (ep := self.episodes.get(eid)) is not None
        ]
        try:
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                if rows:
                    conn.executemany(
                        f"INSERT OR REPLACE INTO episodes ({', '.join(_COLUMNS)}) "
                        f"VALUES ({', '.join('?' * len(_COLUMNS))})",
                        rows,
                    )
                if self._history:
                    conn.executemany(
                        "INSERT OR REPLACE INTO verdicts VALUES (?, ?, ?, ?, ?, ?)", self._history
                    )
                conn.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('last_alive_ns', ?)", (str(now_ns),)
                )
        except sqlite3.Error as exc:
            self._fail(exc, "write", now_ns)
            return False
        self._dirty.clear()
        self._history.clear()
        self._last_flush = self._last_alive = now_ns
        if self._error is not None:
            self._error = None
            self._report("ledger_recovered", f"episode ledger {self.path}: writing again", now_ns)
        return True

    def _prune(self, now_ns: int) -> None:
        days = self.config.retention_days
        if not days or self._conn is None:
            return
        cutoff = now_ns - int(days * 86400 * _S)
        try:
            with self._conn:
                self._conn.execute("DELETE FROM episodes WHERE end_ns < ?", (cutoff,))
                self._conn.execute("DELETE FROM verdicts WHERE at_ns < ?", (cutoff,))
        except sqlite3.Error as exc:
            self._fail(exc, "prune", now_ns)

    # -- observing --------------------------------------------------------------------

    def _episode(self, eid: str, ts: int) -> Episode:
        ep = self.episodes.get(eid)
        if ep is None:
            ep = self._load(eid)
            if ep is None:
                ep = Episode(episode_id=eid, start_ns=ts, last_seen_ns=ts)
            self.episodes[eid] = ep
        return ep

    def _changed(self, ep: Episode, ts: int) -> None:
        """A verdict input changed: an episode already judged may need a revision."""
        if ep.end_ns is not None and ep.revision > 0:
            ep.due_ns = ts if ep.due_ns is None else min(ep.due_ns, ts)
            self._check.add(ep.episode_id)

    def observe(self, doc: dict[str, Any]) -> None:
        """Account one record. Never raises; O(1) for event lines."""
        try:
            self._observe(doc)
        except Exception:  # a malformed record must never reach the collector's loop
            self.observe_errors += 1

    def _observe(self, doc: dict[str, Any]) -> None:
        ev = doc.get("event")
        if not isinstance(ev, dict):
            return
        dataset = ev.get("dataset")
        if dataset == VERDICT_DATASET:
            return  # our own lines come back through the tap
        if self._host is None and isinstance(doc.get("host"), dict):
            self._host = doc["host"]
        action = ev.get("action")
        if ev.get("kind") == "metric" or dataset in ("rlguard.sensor", "rlguard.lifecycle"):
            self._on_metric(doc, dataset, action)
            return
        if dataset == EPISODE_DATASET:
            self._on_registry(doc, action, parse_iso(doc.get("@timestamp")) or time.time_ns())
            return
        rl = doc.get("rl")
        if not isinstance(rl, dict):
            return
        eid = rl.get("episode_id")
        if not isinstance(eid, str) or not eid:
            return
        ts = parse_iso(doc.get("@timestamp")) or time.time_ns()
        ep = self._episode(eid, ts)
        if ep.events < 16:  # the ids come with the first records; later ones repeat them
            if ep.run_id is None:
                ep.run_id = _str_or_none(rl.get("run_id"))
            if ep.trajectory_id is None:
                ep.trajectory_id = _str_or_none(rl.get("trajectory_id"))
            if ep.sandbox_id is None:
                ep.sandbox_id = _str_or_none(rl.get("sandbox_id"))
        if ts > ep.last_seen_ns:
            ep.last_seen_ns = ts
        if ts < ep.start_ns and ep.source != "registry":
            ep.start_ns = ts
        if (
            ep.end_ns is not None
            and ep.source != "registry"
            and ep.end_reason
            in (
                "idle",
                "evicted",
            )
        ):
            ep.end_ns = ep.end_reason = ep.due_ns = None  # active again: its end was a guess
        self._dirty.add(eid)
        if ev.get("kind") == "alert":
            self._on_alert(ep, doc, ts)
            return
        ep.events += 1
        if action == "exec":
            ep.execs += 1
        elif action == "connect":
            ep.connects += 1
            self._destination(ep, doc)
        elif action == "dns":
            ep.dns += 1
            self._destination(ep, doc)
        elif action == "send":
            self._destination(ep, doc)

    def _destination(self, ep: Episode, doc: dict[str, Any]) -> None:
        dst = doc.get("destination")
        ip = dst.get("ip") if isinstance(dst, dict) else None
        if not isinstance(ip, str) or ip in ep.destinations or not self._external(ip):
            return
        if len(ep.destinations) >= self.config.max_destinations:
            ep.destinations_overflow += 1
        else:
            ep.destinations.add(ip)

    def _external(self, ip: str) -> bool:
        got = self._external_cache.get(ip)
        if got is None:
            try:
                addr = ipaddress.ip_address(ip)
            except ValueError:
                return False
            got = not (addr.is_unspecified or any(addr in net for net in self._internal))
            if len(self._external_cache) > 65536:
                self._external_cache.clear()
            self._external_cache[ip] = got
        return got

    def _on_alert(self, ep: Episode, doc: dict[str, Any], ts: int) -> None:
        rule = _dict(doc.get("rule"))
        rule_id = str(rule.get("id") or doc["event"].get("action") or "unknown")[:200]
        alert = _dict(_dict(doc.get("rlguard")).get("alert"))
        sev = alert.get("severity")
        if sev not in SEVERITIES:
            sev = "high"  # an alert we cannot grade is at least worth a look
        seen = ep.alerts.get(rule_id)
        if seen is None:
            ep.alerts[rule_id] = {"severity": sev, "count": 1, "first": iso(ts)}
        else:
            seen["count"] += 1
            if SEVERITIES.index(sev) > SEVERITIES.index(seen["severity"]):
                seen["severity"] = sev
        if sev == "critical":
            ep.critical_alerts += 1
        self._changed(ep, ts)

    def _on_registry(self, doc: dict[str, Any], action: Any, ts: int) -> None:
        rl = _dict(doc.get("rl"))
        eid = _str_or_none(rl.get("episode_id"))
        if action == "run_end":
            run = _str_or_none(rl.get("run_id"))
            for ep in self.episodes.values():
                if ep.end_ns is None and run is not None and ep.run_id == run:
                    self._end(ep, max(ts, ep.start_ns), "run_end", ts)
            return
        if eid is None or action not in ("episode_start", "episode_end"):
            return
        ep = self._episode(eid, ts)
        for key in ("run_id", "trajectory_id", "sandbox_id"):
            value = _str_or_none(rl.get(key))
            if value is not None:
                setattr(ep, key, value)
        ep.last_seen_ns = max(ep.last_seen_ns, ts)
        if action == "episode_start":
            if ep.source != "registry":
                ep.start_ns = min(ep.start_ns, ts) if ep.events else ts
            ep.source = "registry"
            ep.start_seen = True
        else:
            if ep.source != "registry" and not ep.events:
                ep.start_seen = False  # the registry ended an episode we never saw begin
                self._changed(ep, ts)
            ep.source = "registry"
            status = _dict(_dict(doc.get("rlguard")).get("registry")).get("status")
            ep.status = None if status is None else str(status)[:200]
            self._end(ep, max(ts, ep.start_ns), "registry", ts)
        self._dirty.add(eid)

    def _end(self, ep: Episode, end_ns: int, reason: str, now_ns: int) -> None:
        ep.end_ns = end_ns
        ep.end_reason = reason
        ep.due_ns = now_ns + self._grace
        self._check.add(ep.episode_id)
        self._dirty.add(ep.episode_id)

    def _on_metric(self, doc: dict[str, Any], dataset: Any, action: Any) -> None:
        ts = parse_iso(doc.get("@timestamp")) or time.time_ns()
        detail = _dict(doc.get("rlguard"))
        if action == "events_dropped":
            delta = _dict(_dict(detail.get("drops")).get("delta"))
            n = sum(v for v in delta.values() if isinstance(v, int) and v > 0)
            if n:
                for ep in self._overlapping(ts - DROP_LOOKBACK_NS, ts):
                    ep.dropped += n
        elif action == "monitoring_gap":
            gap = _dict(detail.get("gap"))
            lo, hi = gap.get("stopped_at_ns"), gap.get("resumed_at_ns")
            if not isinstance(lo, int) or not isinstance(hi, int):
                return
            self._load_range(lo, hi)
            for ep in self._overlapping(lo, hi):
                ep.add_gap(lo, hi)
                if gap.get("same_boot") is False and ep.end_ns is None:
                    # the host rebooted: every process of the episode is gone
                    self._end(ep, max(ep.last_seen_ns, lo), "reboot", ts)
        elif action == "record_error":
            for ep in self._overlapping(ts - DROP_LOOKBACK_NS, ts):
                ep.record_errors += 1
        elif action == "started":
            self._last_stats = (ts, 0)  # a new monitor process: its counters start at 0
        elif action == "stats":
            undecodable = detail.get("undecodable")
            if not isinstance(undecodable, int):
                return
            last = self._last_stats
            self._last_stats = (ts, undecodable)
            if last is not None and undecodable > last[1]:
                for ep in self._overlapping(last[0], ts):
                    ep.undecodable += undecodable - last[1]

    def _overlapping(self, lo: int, hi: int) -> Iterator[Episode]:
        for ep in list(self.episodes.values()):
            if ep.overlaps(lo, hi):
                self._dirty.add(ep.episode_id)
                self._changed(ep, hi)
                yield ep

    def _load_range(self, lo: int, hi: int) -> None:
        """Episodes in the database (not in memory) whose window meets [lo, hi]."""
        if self._conn is None:
            return
        try:
            rows = self._conn.execute(
                "SELECT * FROM episodes WHERE start_ns <= ? AND (end_ns IS NULL OR end_ns >= ?)",
                (hi, lo),
            ).fetchall()
        except sqlite3.Error as exc:
            self._fail(exc, "read", hi)
            return
        for row in rows:
            self.episodes.setdefault(row["episode_id"], _from_row(row))

    # -- verdicts ---------------------------------------------------------------------

    def _scan(self, now_ns: int) -> None:
        """Infer ends of idle tag-only episodes, close stale ones, keep memory bounded."""
        for ep in self.episodes.values():
            if ep.end_ns is not None:
                continue
            if ep.source == "registry":
                if now_ns - ep.last_seen_ns >= self._stale:
                    self._end(ep, ep.last_seen_ns, "stale", ep.last_seen_ns + self._stale)
            elif now_ns - ep.last_seen_ns >= self._idle:
                self._end(ep, ep.last_seen_ns, "idle", ep.last_seen_ns + self._idle)
        excess = len(self.episodes) - self.config.max_episodes
        if excess <= 0:
            return
        # finished, judged, written, and long enough ago that no drop report can touch it
        done = sorted(
            (
                ep
                for ep in self.episodes.values()
                if ep.end_ns is not None
                and ep.due_ns is None
                and ep.revision > 0
                and (self._conn is None or ep.episode_id not in self._dirty)
                and now_ns - ep.end_ns >= EVICT_AFTER_NS
            ),
            key=lambda e: e.end_ns or 0,
        )
        for ep in done[:excess]:
            del self.episodes[ep.episode_id]  # in the database (or, without one, in the stream)
            self._check.discard(ep.episode_id)
            self._dirty.discard(ep.episode_id)
        excess -= min(excess, len(done))
        if excess > 0:
            idle = sorted(
                (e for e in self.episodes.values() if e.end_ns is None and e.source != "registry"),
                key=lambda e: e.last_seen_ns,
            )
            for ep in idle[:excess]:
                self._end(ep, ep.last_seen_ns, "evicted", now_ns - self._grace)

    def _record(self, ep: Episode, now_ns: int) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "@timestamp": iso(now_ns),
            "event": {"kind": "event", "dataset": VERDICT_DATASET, "action": "episode_verdict"},
        }
        if self._host is not None:
            doc["host"] = self._host
        doc["rl"] = {
            "run_id": ep.run_id,
            "episode_id": ep.episode_id,
            "trajectory_id": ep.trajectory_id,
            "sandbox_id": ep.sandbox_id,
        }
        doc["rlguard"] = {
            "verdict": {
                "verdict": ep.verdict,
                "reasons": list(ep.reasons or []),
                "revision": ep.revision,
                "flagged": ep.critical_alerts > 0,
                "window": {
                    "start": iso(ep.start_ns),
                    "end": None if ep.end_ns is None else iso(ep.end_ns),
                },
                "end_reason": ep.end_reason,
                "status": ep.status,
                "source": ep.source,
                "counts": ep.counts(),
                "alerts": ep.alert_list(),
                "coverage": ep.coverage(),
            }
        }
        return doc

    def due(self, now_wall_ns: int | None = None) -> list[dict[str, Any]]:
        """Verdict lines (and ledger_error lines) to write now; also writes pending rows.

        Never raises: the collector calls it from its loop.
        """
        now = time.time_ns() if now_wall_ns is None else now_wall_ns
        if self.closed:
            return []
        try:
            return self._due(now)
        except Exception as exc:  # a bug here must not stop the monitor
            self.observe_errors += 1
            self._fail(exc, "internal error", now)
            out, self._out = self._out, []
            return out

    def _due(self, now: int) -> list[dict[str, Any]]:
        if now >= self._next_scan:
            self._next_scan = now + SCAN_INTERVAL_NS
            self._scan(now)
        issued: list[dict[str, Any]] = []
        for eid in list(self._check):
            ep = self.episodes.get(eid)
            if ep is None or ep.end_ns is None:
                self._check.discard(eid)
                continue
            if ep.due_ns is None or now < ep.due_ns:
                continue
            self._check.discard(eid)
            ep.due_ns = None
            verdict, reasons = ep.judge(self.config.drop_on, self.config.review_on)
            if ep.revision and (verdict, reasons, ep.end_ns) == (
                ep.verdict,
                ep.reasons,
                ep.issued_end_ns,
            ):
                continue  # nothing the verdict says has changed
            ep.verdict, ep.reasons = verdict, reasons
            ep.revision += 1
            ep.verdict_ns = now
            ep.issued_end_ns = ep.end_ns
            doc = self._record(ep, now)
            issued.append(doc)
            self._dirty.add(eid)
            self._history.append(
                (eid, ep.revision, now, verdict, json.dumps(reasons), json.dumps(doc))
            )
        del self._history[:-MAX_HISTORY]
        if now >= self._retry_ns and (
            issued
            or (self._dirty and now - self._last_flush >= FLUSH_INTERVAL_NS)
            or now - self._last_alive >= ALIVE_INTERVAL_NS
        ):
            self._flush(now)
        if now >= self._next_prune and self._conn is not None:
            self._next_prune = now + PRUNE_INTERVAL_NS
            self._prune(now)
        out = self._out + issued
        self._out = []
        return out

    def flush(self, now_wall_ns: int | None = None) -> bool:
        """Write every pending row now; False when the database is not available."""
        if self.closed:
            return False
        return self._flush(time.time_ns() if now_wall_ns is None else now_wall_ns)

    def close(self, now_wall_ns: int | None = None) -> None:
        """Write everything still pending and close the database (idempotent)."""
        if self.closed:
            return
        now = time.time_ns() if now_wall_ns is None else now_wall_ns
        try:
            self._flush(now)
        except Exception:  # closing must always finish
            self.observe_errors += 1
        self.closed = True
        self._close_conn()

    @property
    def persisting(self) -> bool:
        """Whether the database is open and being written."""
        return self._conn is not None

    @property
    def last_error(self) -> str | None:
        return self._error


def ledger_path(cfg: Config) -> str:
    """The ledger file: ``[ledger] path``, else episodes.db in ``[service] state_dir``."""
    return cfg.ledger.path or str(Path(cfg.service.state_dir) / "episodes.db")


def ledger_for(cfg: Config) -> EpisodeLedger | None:
    """The ledger ``rlguard run`` keeps, or None when ``[ledger] enabled = false``."""
    if not cfg.ledger.enabled:
        return None
    return EpisodeLedger(ledger_path(cfg), cfg.ledger, cfg.allowlist.internal_networks)


# --- reading (rlguard episodes) ----------------------------------------------------------


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


def read_episodes(
    path: str,
    flagged: bool = False,
    run: str | None = None,
    since_ns: int | None = None,
) -> list[dict[str, Any]]:
    """Episodes from the ledger at ``path``, read-only, oldest first.

    ``flagged``: only episodes with a critical alert. ``since_ns``: only episodes
    still open or whose last activity is at or after it. Raises ``LedgerError``.
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
        where: list[str] = []
        args: list[Any] = []
        if flagged:
            where.append("critical_alerts > 0")
        if run is not None:
            where.append("run_id = ?")
            args.append(run)
        if since_ns is not None:
            where.append("(end_ns IS NULL OR last_seen_ns >= ?)")
            args.append(since_ns)
        sql = "SELECT * FROM episodes"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY start_ns, episode_id"
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


def format_table(episodes: list[dict[str, Any]]) -> str:
    """A plain-text table; every string from the ledger is escaped (no terminal control).

    An episode whose verdict line is not written yet shows its provisional verdict in
    parentheses; a revised verdict shows its revision (``drop r2``).
    """
    head = (
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
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(widths[i]) for i, h in enumerate(head)).rstrip()]
    for r in rows:
        lines.append("  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip())
    return "\n".join(lines)


def json_line(episode: dict[str, Any]) -> str:
    """One episode as a JSON line, pure ASCII: no byte of it can drive a terminal."""
    return json.dumps(episode, ensure_ascii=True, separators=(",", ":"))
