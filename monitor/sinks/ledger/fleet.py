"""The fleet store: the local SQLite file as the spool, shipped to PostgreSQL by a thread.

The observer writes to the local SQLite store exactly as on a single host, and reads
back only from it, so the event path never waits on the network. Every row written
there carries ``seq``, one counter over both tables. A writer thread (``Shipper``)
sends the rows with ``seq`` above the host's cursor to PostgreSQL in batches, in
``seq`` order, on one connection, and moves the cursor (``hosts.shipped_seq``) in the
same transaction as the rows:

* a retry or a restart resends at most rows already there, and both writes are
  idempotent (an episode row is replaced whole, a verdict revision is inserted once),
  so nothing is counted twice;
* when PostgreSQL is down or slow the rows wait in the SQLite file (the spool) and go
  out in order once it answers; a monitor restart resumes from the cursor;
* a new SQLite file (a new ``spool_id``) starts its host's cursor again at 0.

Backlog (row writes not yet shipped), its age (since the oldest of them) and failures
are in ``stats()``, so on the ``stats`` line and /metrics; they stay current while a
batch hangs. Losing and regaining the database are lifecycle lines.
"""

from __future__ import annotations

import functools
import random
import sqlite3
import threading
import time
from collections import deque
from typing import Any

from monitor.sinks.ledger.model import NS, Episode
from monitor.sinks.ledger.postgres import (
    EPISODE_UPSERT,
    SCHEMA,
    VERDICT_INSERT,
    connect,
    explain,
    migrate,
    psycopg_module,
    redact,
)
from monitor.sinks.ledger.store import (
    COLUMNS,
    VERDICT_COLUMNS,
    Judged,
    SqliteStore,
    StoreError,
    VerdictRow,
)

BATCH_ROWS = 500  # rows per PostgreSQL transaction
HEARTBEAT_NS = 5 * NS  # an idle host still tells the fleet it is alive this often
RETRY_MIN_S = 0.5
RETRY_MAX_S = 15.0  # backoff cap; +-20 % jitter so a fleet does not reconnect in step
PRUNE_EVERY_NS = 3600 * NS
CLOSE_WAIT_S = 5.0  # what close() gives the last rows; the rest wait in the spool


@functools.cache
def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rlguard")
    except PackageNotFoundError:
        return "unknown"


class Shipper:
    """The writer thread: local spool rows -> PostgreSQL, in order, on one connection."""

    def __init__(
        self, spool_path: str, url: str, host: str, spool_id: str, retention_days: float = 0.0
    ) -> None:
        psycopg_module()  # fail now, in the caller, if the extra is missing
        self.spool_path = spool_path
        self.url = url
        self.host = host
        self.spool_id = spool_id
        self.retention_ns = int(retention_days * 86400 * NS)
        self.cursor: int | None = None  # shipped up to here (None: not known yet)
        self.connected = False
        self.failures = 0  # failed connects and batches
        self.shipped_rows = 0
        self.written_seq = 0  # the spool's last committed write (set by the ledger's thread)
        self.backlog_since_ns: int | None = None  # the first write not yet shipped
        self.last_error: str | None = None
        self.last_ship_ns: int | None = None
        self.batch_s: deque[float] = deque(maxlen=4096)  # commit time of recent batches
        self._notices: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._done = threading.Event()
        self._pg: Any = None
        self._local: sqlite3.Connection | None = None
        self._retry_at = 0.0
        self._backoff = RETRY_MIN_S
        self._last_alive_sent: int | None = None
        self._next_heartbeat = 0
        self._next_prune = 0
        self._next_remember = 0
        self._thread = threading.Thread(target=self._run, name="rlguard-fleet", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self, wait_s: float = CLOSE_WAIT_S) -> None:
        """Ship what can go within ``wait_s``, then stop; the rest stays in the spool."""
        if not self._thread.is_alive():
            return
        self._stop.set()
        self._wake.set()
        self._done.wait(wait_s)

    def notices(self) -> list[tuple[str, str]]:
        with self._lock:
            out, self._notices = self._notices, []
        return out

    def _notice(self, action: str, message: str) -> None:
        with self._lock:
            self._notices.append((action, message))

    # -- the thread ---------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                stopping = self._stop.is_set()
                if not stopping:
                    self._wake.wait(timeout=1.0)
                    self._wake.clear()
                    stopping = self._stop.is_set()
                if stopping or time.monotonic() >= self._retry_at:
                    self._cycle()
                if stopping:
                    return
        finally:
            self._close_pg()
            if self._local is not None:
                if self.cursor is not None:
                    self._next_remember = 0
                    self._remember_cursor(self._local, self.cursor, time.time_ns())
                self._local.close()
            self._done.set()

    def _cycle(self) -> None:
        pg = psycopg_module()
        try:
            local = self._spool()
            if self._pg is None:
                self._connect()
            self._ship(local)
            self._housekeeping(local)
            self._backoff = RETRY_MIN_S
        except (StoreError, pg.Error, OSError, sqlite3.Error) as exc:
            self._failed(exc)

    def _spool(self) -> sqlite3.Connection:
        if self._local is None:
            conn = sqlite3.connect(self.spool_path, timeout=2.0, isolation_level=None)
            conn.row_factory = sqlite3.Row
            self._local = conn
            row = conn.execute("SELECT value FROM meta WHERE key = 'fleet_shipped_seq'").fetchone()
            if row is not None and self.cursor is None:
                self._shipped(int(row[0]))  # a best guess until the database answers
        return self._local

    def _connect(self) -> None:
        conn = connect(self.url, f"rlguard-ledger {self.host}"[:63])
        self._pg = conn
        migrate(conn)
        now = time.time_ns()
        with conn.transaction():
            conn.execute(
                f"INSERT INTO {SCHEMA}.hosts (host, spool_id, shipped_seq, first_seen_ns, "
                "updated_ns, version) VALUES (%s, %s, 0, %s, %s, %s) ON CONFLICT (host) DO NOTHING",
                (self.host, self.spool_id, now, now, _version()),
            )
            row = conn.execute(
                f"SELECT spool_id, shipped_seq FROM {SCHEMA}.hosts WHERE host = %s FOR UPDATE",
                (self.host,),
            ).fetchone()
            if row is None:
                raise StoreError(f"host {self.host!r}: its row vanished while registering")
            spool, shipped = row
            if spool != self.spool_id:
                # a new spool file here, or another machine with the same [ledger] host
                conn.execute(
                    f"UPDATE {SCHEMA}.hosts SET spool_id = %s, shipped_seq = 0 WHERE host = %s",
                    (self.spool_id, self.host),
                )
                shipped = 0
                self._notice(
                    "fleet_spool_changed",
                    f"fleet ledger {redact(self.url)}: host {self.host!r} was written from "
                    "another spool (a new ledger file, or a second machine with this "
                    "[ledger] host); shipping this spool from its start",
                )
        self._shipped(int(shipped))
        self.connected = True
        if self.last_error is not None:
            self._notice(
                "fleet_recovered",
                f"fleet ledger {redact(self.url)}: connected again; shipping the spool",
            )
            self.last_error = None

    def _batch(self, local: sqlite3.Connection, after: int) -> tuple[list[Any], list[Any], int]:
        """Episode and verdict rows with seq in (after, last]: the first BATCH_ROWS in order.

        Both tables are read in one snapshot: a write committed between two reads could
        otherwise put seqs below ``last`` in the table read first, and they would be skipped.
        """
        local.execute("BEGIN")
        try:
            eps = local.execute(
                f"SELECT host, {', '.join(COLUMNS)}, seq FROM episodes WHERE seq > ? "
                "ORDER BY seq LIMIT ?",
                (after, BATCH_ROWS),
            ).fetchall()
            vds = local.execute(
                f"SELECT {', '.join(VERDICT_COLUMNS)} FROM verdicts WHERE seq > ? "
                "ORDER BY seq LIMIT ?",
                (after, BATCH_ROWS),
            ).fetchall()
        finally:
            local.execute("COMMIT")
        seqs = sorted([r["seq"] for r in eps] + [r["seq"] for r in vds])[:BATCH_ROWS]
        if not seqs:
            return [], [], after
        last = seqs[-1]
        # a row of another host name (the [ledger] host changed) ships as this host's
        episodes = [(self.host, *tuple(r)[1:]) for r in eps if r["seq"] <= last]
        verdicts = [(*tuple(r)[:6], self.host, r["seq"]) for r in vds if r["seq"] <= last]
        return episodes, verdicts, last

    def _alive(self, local: sqlite3.Connection) -> int | None:
        row = local.execute("SELECT value FROM meta WHERE key = 'last_alive_ns'").fetchone()
        return None if row is None else int(row[0])

    def _ship(self, local: sqlite3.Connection) -> None:
        conn = self._pg
        assert conn is not None and self.cursor is not None
        while True:
            episodes, verdicts, last = self._batch(local, self.cursor)
            alive = self._alive(local)
            now = time.time_ns()
            if not episodes and not verdicts:
                if alive != self._last_alive_sent and now >= self._next_heartbeat:
                    conn.execute(
                        f"UPDATE {SCHEMA}.hosts SET last_alive_ns = %s, updated_ns = %s "
                        "WHERE host = %s",
                        (alive, now, self.host),
                    )
                    conn.commit()
                    self._last_alive_sent = alive
                    self._next_heartbeat = now + HEARTBEAT_NS
                return
            t0 = time.perf_counter()
            with conn.transaction(), conn.cursor() as cur:
                if episodes:
                    cur.executemany(EPISODE_UPSERT, episodes)
                if verdicts:
                    cur.executemany(VERDICT_INSERT, verdicts)
                cur.execute(
                    f"UPDATE {SCHEMA}.hosts SET shipped_seq = %s, last_alive_ns = %s, "
                    "updated_ns = %s, version = %s WHERE host = %s AND spool_id = %s",
                    (last, alive, now, _version(), self.host, self.spool_id),
                )
                if cur.rowcount != 1:  # another spool took the host over meanwhile
                    raise StoreError(f"host {self.host!r} is now written from another spool")
            self.batch_s.append(time.perf_counter() - t0)
            self._shipped(last)
            self.shipped_rows += len(episodes) + len(verdicts)
            self.last_ship_ns = now
            self._last_alive_sent = alive
            self._next_heartbeat = now + HEARTBEAT_NS
            self._remember_cursor(local, last, now)

    def _remember_cursor(self, local: sqlite3.Connection, seq: int, now_ns: int) -> None:
        """Keep the cursor in the spool too (once a second): backlog and local pruning need
        it before the database answers; an older value there only means pruning less."""
        if now_ns < self._next_remember:
            return
        self._next_remember = now_ns + NS
        try:
            local.execute(
                "INSERT OR REPLACE INTO meta VALUES ('fleet_shipped_seq', ?)", (str(seq),)
            )
        except sqlite3.Error:
            pass  # busy: the database's cursor is the one that counts

    def _housekeeping(self, local: sqlite3.Connection) -> None:
        now = time.time_ns()
        if not self.retention_ns or now < self._next_prune or self._pg is None:
            return
        self._next_prune = now + PRUNE_EVERY_NS
        cutoff = now - self.retention_ns
        with self._pg.transaction():
            self._pg.execute(
                f"DELETE FROM {SCHEMA}.episodes WHERE host = %s AND end_ns < %s",
                (self.host, cutoff),
            )
            self._pg.execute(
                f"DELETE FROM {SCHEMA}.verdicts WHERE host = %s AND at_ns < %s",
                (self.host, cutoff),
            )

    def written(self, seq: int, now_ns: int) -> None:
        """The ledger's thread committed spool writes up to ``seq``."""
        with self._lock:
            self.written_seq = seq
            if self.backlog_since_ns is None and seq > (self.cursor or 0):
                self.backlog_since_ns = now_ns
        self._wake.set()

    def _shipped(self, seq: int) -> None:
        with self._lock:
            self.cursor = seq
            if seq >= self.written_seq:
                self.backlog_since_ns = None

    def _failed(self, exc: BaseException) -> None:
        self.failures += 1
        err = explain(exc, self.url)
        message = f"fleet ledger {redact(self.url)}: {err}{err.hint}"
        self._close_pg()
        delay = self._backoff * random.uniform(0.8, 1.2)
        self._retry_at = time.monotonic() + delay
        self._backoff = min(RETRY_MAX_S, self._backoff * 2)
        if message != self.last_error:
            self.last_error = message
            self._notice("fleet_error", message + "; rows wait in the local spool")

    def _close_pg(self) -> None:
        self.connected = False
        if self._pg is not None:
            try:
                self._pg.close()
            except Exception:
                pass
            self._pg = None

    def stats(self, now_ns: int | None = None) -> dict[str, Any]:
        now = time.time_ns() if now_ns is None else now_ns
        with self._lock:
            since = self.backlog_since_ns
            backlog = max(0, self.written_seq - (self.cursor or 0))
        return {
            "url": redact(self.url),
            "connected": self.connected,
            # row writes in the spool not yet shipped: always current, even while a
            # batch hangs on a stuck server (a rewritten episode row counts each time)
            "backlog_rows": backlog,
            "backlog_age_s": 0.0 if since is None else round(max(0, now - since) / NS, 3),
            "shipped_rows": self.shipped_rows,
            "shipped_seq": self.cursor,
            "failures": self.failures,
            "last_error": self.last_error,
            "last_batch_ms": round(self.batch_s[-1] * 1000, 3) if self.batch_s else None,
        }


class FleetStore:
    """``EpisodeStore`` for a fleet: the SQLite store, plus a Shipper to PostgreSQL."""

    def __init__(
        self,
        spool_path: str,
        url: str,
        host: str | None = None,
        retention_days: float = 0.0,
    ) -> None:
        self.local = SqliteStore(spool_path, host)
        self.url = url
        self.retention_days = retention_days
        self.shipper: Shipper | None = None

    @property
    def where(self) -> str:
        return self.local.where

    @property
    def is_open(self) -> bool:
        return self.local.is_open

    def open(self) -> None:
        self.local.open()
        if self.shipper is None:
            self.shipper = Shipper(
                self.local.path, self.url, self.local.host, self.local.spool_id, self.retention_days
            )
            self.shipper.start()
        self.shipper.written(self.local.seq, time.time_ns())

    def last_alive(self) -> int | None:
        return self.local.last_alive()

    def unfinished(self) -> list[Episode]:
        return self.local.unfinished()

    def load(self, episode_id: str) -> Episode | None:
        return self.local.load(episode_id)

    def overlapping(self, lo: int, hi: int) -> list[Episode]:
        return self.local.overlapping(lo, hi)

    def write(self, episodes: list[Judged], verdicts: list[VerdictRow], now_ns: int) -> None:
        self.local.write(episodes, verdicts, now_ns)
        if self.shipper is not None:
            self.shipper.written(self.local.seq, time.time_ns())

    def prune(self, cutoff_ns: int) -> None:
        # only what PostgreSQL has: an unshipped row stays, however old
        shipped = None if self.shipper is None else self.shipper.cursor
        self.local.prune(cutoff_ns, shipped if shipped is not None else 0)

    def close(self) -> None:
        if self.shipper is not None:
            self.shipper.close()
            self.shipper = None
        self.local.close()

    def stats(self) -> dict[str, Any]:
        out = {**self.local.stats(), "store": "postgresql"}
        if self.shipper is not None:
            out["fleet"] = self.shipper.stats()
        return out

    def notices(self) -> list[tuple[str, str]]:
        return [] if self.shipper is None else self.shipper.notices()
