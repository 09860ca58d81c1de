"""Where the ledger keeps its episodes: the store interface and its SQLite store.

The observer (observer.py) holds the episodes it is working on in memory and hands
rows to a store; it reads back from the store only what it no longer holds (an
episode seen again, episodes a monitoring gap reaches, unfinished work after a
restart). ``EpisodeStore`` is that contract; ``SqliteStore`` keeps the rows in one
SQLite file (stdlib ``sqlite3``) in WAL mode, so ``rlguard episodes`` can read while
the monitor writes. Every failure comes out as ``StoreError``.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import uuid
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from monitor.sinks.ledger.model import Episode

SCHEMA_VERSION = 2

# The episodes table, one (column, SQL type) per field: the DDL, the INSERT and the
# row builder all come from this list.
EPISODE_TABLE: tuple[tuple[str, str], ...] = (
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
COLUMNS = tuple(name for name, _ in EPISODE_TABLE)
# Every row also names its host (the fleet's key) and carries ``seq``: the spool order,
# one counter over both tables, by which a fleet writer ships rows in order (fleet.py).
ROW_COLUMNS = ("host", *COLUMNS, "seq")
VERDICT_COLUMNS = ("episode_id", "revision", "at_ns", "verdict", "reasons", "record", "host", "seq")

# Version 1, as the first rlguard with a ledger made it; MIGRATIONS bring it up to date.
_DDL = (
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS episodes ("
    + ", ".join(f"{name} {sql}" for name, sql in EPISODE_TABLE)
    + ")",
    "CREATE INDEX IF NOT EXISTS episodes_end ON episodes (end_ns)",
    "CREATE INDEX IF NOT EXISTS episodes_run ON episodes (run_id)",
    """CREATE TABLE IF NOT EXISTS verdicts (
        episode_id TEXT NOT NULL, revision INTEGER NOT NULL, at_ns INTEGER NOT NULL,
        verdict TEXT NOT NULL, reasons TEXT NOT NULL, record TEXT NOT NULL,
        PRIMARY KEY (episode_id, revision))""",
)
# version -> statements that take a database from version - 1 to it
MIGRATIONS: dict[int, tuple[str, ...]] = {
    2: (
        "ALTER TABLE episodes ADD COLUMN host TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE episodes ADD COLUMN seq INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE verdicts ADD COLUMN host TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE verdicts ADD COLUMN seq INTEGER NOT NULL DEFAULT 0",
        "CREATE INDEX episodes_seq ON episodes (seq)",
        "CREATE INDEX verdicts_seq ON verdicts (seq)",
    ),
}


class StoreError(Exception):
    """A store could not be opened, read or written.

    ``str(err)`` is the detail for the user; ``hint`` what they can do about it.
    """

    def __init__(self, detail: str, hint: str = "") -> None:
        super().__init__(detail)
        self.hint = hint


class VerdictRow(NamedTuple):
    """One verdict line as the ``verdicts`` table keeps it (its history)."""

    episode_id: str
    revision: int
    at_ns: int
    verdict: str
    reasons: str  # JSON list
    record: str  # the whole line, JSON


# (episode, the verdict it would get now): what the observer hands a store to keep
Judged = tuple[Episode, tuple[str, list[str]]]


class EpisodeStore(Protocol):
    """What the observer needs from a store. Every method raises only ``StoreError``."""

    @property
    def where(self) -> str:
        """Names the store in messages (a path; a URL without its password)."""
        ...

    @property
    def is_open(self) -> bool: ...

    def open(self) -> None:
        """Open (creating or migrating the schema); a failed open leaves it closed."""
        ...

    def last_alive(self) -> int | None:
        """The last time (wall ns) a writer recorded that the monitor was alive."""
        ...

    def unfinished(self) -> list[Episode]:
        """Open episodes, and ended ones whose verdict line is pending or out of date."""
        ...

    def load(self, episode_id: str) -> Episode | None: ...

    def overlapping(self, lo: int, hi: int) -> list[Episode]:
        """Episodes whose window meets [lo, hi]."""
        ...

    def write(self, episodes: list[Judged], verdicts: list[VerdictRow], now_ns: int) -> None:
        """Keep these rows and the sign of life ``now_ns``, all or nothing."""
        ...

    def prune(self, cutoff_ns: int) -> None:
        """Forget episodes that ended, and verdicts written, before ``cutoff_ns``."""
        ...

    def close(self) -> None:
        """Release the store (idempotent; never raises)."""
        ...

    def stats(self) -> dict[str, Any]:
        """Counters for the ``stats`` line and /metrics (cheap: read on the event path)."""
        ...

    def notices(self) -> list[tuple[str, str]]:
        """(action, message) lifecycle notices since the last call (e.g. a lost database)."""
        ...


def to_row(ep: Episode, current: tuple[str, list[str]], now_ns: int) -> tuple[Any, ...]:
    """An episode as the values of an ``episodes`` row, in ``COLUMNS`` order."""
    row = {
        **{name: getattr(ep, name) for name in COLUMNS if hasattr(ep, name)},
        "start_seen": int(ep.start_seen),
        "destinations": json.dumps(sorted(ep.destinations)),
        "gaps": json.dumps(ep.gaps),
        "alerts": json.dumps(ep.alerts),
        "reasons": None if ep.reasons is None else json.dumps(ep.reasons),
        "current_verdict": current[0],
        "current_reasons": json.dumps(current[1]),
        "updated_ns": now_ns,
    }
    return tuple(row[name] for name in COLUMNS)


def from_row(row: Any) -> Episode:
    """An ``episodes`` row (anything indexable by column name) back as an Episode."""
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


def store_error(exc: BaseException) -> StoreError:
    """A sqlite3/OS error as a StoreError with the detail and hint the user sees."""
    if isinstance(exc, StoreError):
        return exc
    detail = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    hint = ""
    if isinstance(exc, sqlite3.DatabaseError) and "not a database" in str(exc):
        hint = " (corrupt or not an SQLite file: move it aside and rlguard starts a new one)"
    return StoreError(detail, hint)


def default_host() -> str:
    """The host identity when ``[ledger] host`` is empty: this machine's name."""
    return socket.gethostname() or "localhost"


def spool_id(conn: sqlite3.Connection) -> str:
    """The identity of this SQLite file (made once, with it): a new file is a new spool."""
    row = conn.execute("SELECT value FROM meta WHERE key = 'spool_id'").fetchone()
    if row is not None:
        return str(row[0])
    made = uuid.uuid4().hex
    conn.execute("INSERT OR IGNORE INTO meta VALUES ('spool_id', ?)", (made,))
    return str(conn.execute("SELECT value FROM meta WHERE key = 'spool_id'").fetchone()[0])


class SqliteStore:
    """The ledger in one SQLite file (WAL): the single-host default, and the fleet's spool.

    ``host`` goes on every row; ``seq`` orders every write (see ``ROW_COLUMNS``).
    """

    def __init__(self, path: str | os.PathLike[str], host: str | None = None) -> None:
        self.path = str(path)
        self.host = host or default_host()
        self.conn: sqlite3.Connection | None = None
        self.seq = 0  # the last seq written
        self.spool_id = ""

    @property
    def where(self) -> str:
        return self.path

    @property
    def is_open(self) -> bool:
        return self.conn is not None

    def _db(self) -> sqlite3.Connection:
        if self.conn is None:
            raise StoreError("not open")
        return self.conn

    def open(self) -> None:
        try:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=1.0, isolation_level=None)
            self.conn = conn
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # WAL: durable at checkpoints, never torn
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                for ddl in _DDL:
                    conn.execute(ddl)
                got = conn.execute("SELECT version FROM schema_version").fetchone()
                if got is None:
                    conn.execute("INSERT INTO schema_version VALUES (1)")
                    got = (1,)
                elif got[0] > SCHEMA_VERSION:
                    raise sqlite3.DatabaseError(
                        f"schema version {got[0]} is newer than this rlguard's {SCHEMA_VERSION}"
                    )
                for version in range(got[0] + 1, SCHEMA_VERSION + 1):
                    for ddl in MIGRATIONS[version]:
                        conn.execute(ddl)
                    conn.execute("UPDATE schema_version SET version = ?", (version,))
                if got[0] < 2:  # rows from before the host column are this host's
                    conn.execute("UPDATE episodes SET host = ?", (self.host,))
                    conn.execute("UPDATE verdicts SET host = ?", (self.host,))
                self.spool_id = spool_id(conn)
                self.seq = max(
                    conn.execute("SELECT coalesce(max(seq), 0) FROM episodes").fetchone()[0],
                    conn.execute("SELECT coalesce(max(seq), 0) FROM verdicts").fetchone()[0],
                )
        except (sqlite3.Error, OSError, ValueError) as exc:  # ValueError: a NUL in the path
            self.close()
            raise store_error(exc) from None

    def last_alive(self) -> int | None:
        try:
            row = (
                self._db().execute("SELECT value FROM meta WHERE key = 'last_alive_ns'").fetchone()
            )
        except sqlite3.Error as exc:
            raise store_error(exc) from None
        return None if row is None else int(row[0])

    def _episodes(self, sql: str, args: tuple[Any, ...] = ()) -> list[Episode]:
        try:
            return [from_row(r) for r in self._db().execute(sql, args).fetchall()]
        except sqlite3.Error as exc:
            raise store_error(exc) from None

    def unfinished(self) -> list[Episode]:
        return self._episodes(
            "SELECT * FROM episodes WHERE end_ns IS NULL OR revision = 0 "
            "OR current_verdict != verdict OR current_reasons != reasons"
        )

    def load(self, episode_id: str) -> Episode | None:
        got = self._episodes("SELECT * FROM episodes WHERE episode_id = ?", (episode_id,))
        return got[0] if got else None

    def overlapping(self, lo: int, hi: int) -> list[Episode]:
        return self._episodes(
            "SELECT * FROM episodes WHERE start_ns <= ? AND (end_ns IS NULL OR end_ns >= ?)",
            (hi, lo),
        )

    def write(self, episodes: list[Judged], verdicts: list[VerdictRow], now_ns: int) -> None:
        conn = self._db()
        # numbered in the order written
        seq = self.seq
        rows = []
        for ep, current in episodes:
            seq += 1
            rows.append((self.host, *to_row(ep, current, now_ns), seq))
        history = []
        for v in verdicts:
            seq += 1
            history.append((*v, self.host, seq))
        try:
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                if rows:
                    conn.executemany(
                        f"INSERT OR REPLACE INTO episodes ({', '.join(ROW_COLUMNS)}) "
                        f"VALUES ({', '.join('?' * len(ROW_COLUMNS))})",
                        rows,
                    )
                if history:
                    conn.executemany(
                        f"INSERT OR REPLACE INTO verdicts ({', '.join(VERDICT_COLUMNS)}) "
                        f"VALUES ({', '.join('?' * len(VERDICT_COLUMNS))})",
                        history,
                    )
                conn.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('last_alive_ns', ?)", (str(now_ns),)
                )
        except sqlite3.Error as exc:
            raise store_error(exc) from None
        self.seq = seq  # only once committed: a failed write leaves no hole

    def prune(self, cutoff_ns: int, shipped_seq: int | None = None) -> None:
        """As ``EpisodeStore.prune``; with ``shipped_seq``, only rows shipped up to it."""
        conn = self._db()
        limit = (1 << 62) if shipped_seq is None else shipped_seq
        try:
            with conn:
                conn.execute(
                    "DELETE FROM episodes WHERE end_ns < ? AND seq <= ?", (cutoff_ns, limit)
                )
                conn.execute(
                    "DELETE FROM verdicts WHERE at_ns < ? AND seq <= ?", (cutoff_ns, limit)
                )
        except sqlite3.Error as exc:
            raise store_error(exc) from None

    def stats(self) -> dict[str, Any]:
        return {"store": "sqlite", "path": self.path, "host": self.host, "seq": self.seq}

    def notices(self) -> list[tuple[str, str]]:
        return []

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except sqlite3.Error:
                pass
            self.conn = None
