"""The ledger's observer: it watches the stream and decides each episode's verdict.

A consumer of typed records (attributed events, findings, the registry's episode
lifecycle, drops and gaps) plus a wall clock; the collector hands it each one. Per
episode it keeps the window, counts (events, execs, connects, DNS queries, distinct
external destinations), the alerts by rule, the coverage (events the kernel dropped,
monitoring gaps, undecodable records during the window) and a verdict (the rules are
in model.py).

Records count for the episode their attribution names (``rl.episode_id``), never by
time: a background process born in episode 1 that connects during episode 2
counts for episode 1 (the attribution stage decides; the ledger only adds).

The verdict goes out as an ``rlguard.verdict`` line ``verdict_grace_s`` after the
episode's end (announced by the registry, or inferred after ``idle_end_s`` without
a record for episodes known only from env tags), and again, with ``revision`` + 1,
whenever a later record changes the verdict or its reasons.

The ``on_*`` methods only touch memory; rows go to the store (store.py) in one
transaction per second at most from ``due()``. A store that cannot be opened or written
(read-only path, full disk, corrupt file) never stops the monitor: the ledger
reports it once as a ``ledger_error`` line, keeps its state in memory, still writes
verdict lines, and retries. docs/ledger.md has the rest.
"""

from __future__ import annotations

import ipaddress
import json
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from monitor.sinks.ledger.model import (
    DEFAULT_INTERNAL,
    NS,
    SEVERITIES,
    VERDICT_DATASET,
    Episode,
    iso,
)
from monitor.sinks.ledger.store import (
    EpisodeStore,
    SqliteStore,
    StoreError,
    VerdictRow,
    store_error,
)

if TYPE_CHECKING:
    from monitor.config import Config, LedgerConfig
    from monitor.detectors.engine import Finding
    from monitor.state.attributed import AttributedEvent
    from monitor.state.registry.records import RegistryRecord

_S = NS
# The collector reads the kernel's drop counters once a second, so a drop reported at T
# happened in (T - 1 s, T]; two seconds of look-back keeps every episode it could touch.
DROP_LOOKBACK_NS = 2 * _S
FLUSH_INTERVAL_NS = 1 * _S  # rows reach the database at most this late
ALIVE_INTERVAL_NS = 5 * _S  # how often an idle ledger records that the monitor is alive
SCAN_INTERVAL_NS = 1 * _S  # idle-end and eviction scan
RETRY_NS = 30 * _S  # a failed database is tried again this often
PRUNE_INTERVAL_NS = 3600 * _S
EVICT_AFTER_NS = 60 * _S  # an ended episode stays in memory at least this long
MAX_HISTORY = 10000  # verdict lines waiting for the verdicts table while it cannot be written


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


# --- the ledger --------------------------------------------------------------------------


class EpisodeLedger:
    """Per-episode state fed by the ``on_*`` methods; verdict lines come out of ``due()``.

    ``store`` keeps the rows: an ``EpisodeStore``, or a path for the SQLite store (its
    directory is created); ``config`` the ``[ledger]`` section. ``internal_networks``
    (CIDRs) decide which destinations are external; ``host`` is the ECS host object of
    the verdict lines.  Every ``on_*`` method takes the record's wall-clock time and
    never raises.
    """

    def __init__(
        self,
        store: EpisodeStore | str | os.PathLike[str],
        config: LedgerConfig,
        internal_networks: Iterable[str] = DEFAULT_INTERNAL,
        now_ns: int | None = None,
        host: dict[str, Any] | None = None,
    ) -> None:
        self.store: EpisodeStore = (
            SqliteStore(store) if isinstance(store, (str, os.PathLike)) else store
        )
        self.path = self.store.where
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
        self._history: list[VerdictRow] = []
        self._host = host
        self._last_stats: tuple[int, int] | None = None  # (ts, undecodable) of the last stats
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
                "ledger": {"path": self.path, "persisting": self.store.is_open},
            },
        }
        if self._host is not None:
            doc["host"] = self._host
        self._out.append(doc)

    def _fail(self, exc: BaseException, what: str, now_ns: int) -> None:
        """A database problem: report it once, carry on in memory, retry later."""
        err = store_error(exc)
        message = f"episode ledger {self.path}: {what}: {err}{err.hint}"
        if what == "open":
            self.store.close()
        self._retry_ns = now_ns + RETRY_NS
        if message != self._error:
            self._error = message
            self._report("ledger_error", message + "; verdicts still go to the stream", now_ns)

    def _open(self, now_ns: int) -> None:
        try:
            self.store.open()
            self._load_unfinished(now_ns)
        except StoreError as exc:
            self._fail(exc, "open", now_ns)
            return
        if self._error is not None:
            self._error = None
            self._report("ledger_recovered", f"episode ledger {self.path}: writing again", now_ns)
            self._dirty.update(self.episodes)  # what was kept in memory meanwhile

    def _load_unfinished(self, now_ns: int) -> None:
        """Bring back open episodes and pending verdicts; open ones get a gap on restart.

        The monitor was down from the ledger's last sign of life until now, so an
        episode still open then went partly unseen, whatever the heartbeat says: a
        ``monitoring_gap`` line can only widen that interval, never remove it.
        """
        last_alive = self.store.last_alive()
        for ep in self.store.unfinished():
            eid = ep.episode_id
            if eid in self.episodes:
                continue
            self.episodes[eid] = ep
            if ep.end_ns is None:
                if last_alive is not None:
                    ep.add_gap(min(last_alive, now_ns), now_ns)
                    self._dirty.add(eid)
            else:
                ep.due_ns = ep.end_ns + self._grace if ep.revision == 0 else now_ns
                self._check.add(eid)

    def _load(self, eid: str) -> Episode | None:
        if not self.store.is_open:
            return None
        try:
            return self.store.load(eid)
        except StoreError as exc:
            self._fail(exc, "read", time.time_ns())
            return None

    def _flush(self, now_ns: int) -> bool:
        if not self.store.is_open:
            if now_ns >= self._retry_ns and not self.closed:
                self._open(now_ns)
            if not self.store.is_open:
                return False
        rows = [
            (ep, ep.judge(self.config.drop_on, self.config.review_on))
            for eid in self._dirty
            if (ep := self.episodes.get(eid)) is not None
        ]
        try:
            self.store.write(rows, self._history, now_ns)
        except StoreError as exc:
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
        if not days or not self.store.is_open:
            return
        cutoff = now_ns - int(days * 86400 * _S)
        try:
            self.store.prune(cutoff)
        except StoreError as exc:
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

    def _guard(self, what: Any, *args: Any) -> None:
        try:
            what(*args)
        except Exception:  # a bug here must never reach the collector's loop
            self.observe_errors += 1

    def on_event(self, ae: AttributedEvent, wall_ns: int) -> None:
        """Count one event line for its episode. O(1)."""
        self._guard(self._on_event, ae, wall_ns)

    def on_finding(self, f: Finding, wall_ns: int) -> None:
        """An alert for the episode of the event that raised it."""
        self._guard(self._on_finding, f, wall_ns)

    def on_registry(self, rec: RegistryRecord) -> None:
        """The trainer started or ended an episode or a run."""
        self._guard(self._on_registry, rec)

    def on_drops(self, n: int, wall_ns: int) -> None:
        """The kernel dropped ``n`` records since the last report (within the last second)."""
        if n > 0:
            self._guard(self._count_recent, "dropped", n, wall_ns)

    def on_record_error(self, wall_ns: int) -> None:
        """A record could not be handled: every episode open then lost it."""
        self._guard(self._count_recent, "record_errors", 1, wall_ns)

    def on_gap(self, stopped_at_ns: int, resumed_at_ns: int, same_boot: bool, wall_ns: int) -> None:
        """The monitor was not running from ``stopped_at_ns`` to ``resumed_at_ns``."""
        self._guard(self._on_gap, stopped_at_ns, resumed_at_ns, same_boot, wall_ns)

    def on_started(self, wall_ns: int) -> None:
        """A new monitor process: its counters start at 0."""
        self._last_stats = (wall_ns, 0)

    def on_stats(self, undecodable: int, wall_ns: int) -> None:
        """Undecodable records so far: those since the last stats count for its episodes."""
        self._guard(self._on_stats, undecodable, wall_ns)

    def _touch(self, rl: Any, ts: int) -> Episode | None:
        """The episode a record names, brought up to date with the record's time."""
        eid = rl.episode_id
        if not eid:
            return None
        ep = self._episode(eid, ts)
        if ep.events < 16:  # the ids come with the first records; later ones repeat them
            if ep.run_id is None:
                ep.run_id = _str_or_none(rl.run_id)
            if ep.trajectory_id is None:
                ep.trajectory_id = _str_or_none(rl.trajectory_id)
            if ep.sandbox_id is None:
                ep.sandbox_id = _str_or_none(rl.sandbox_id)
        if ts > ep.last_seen_ns:
            ep.last_seen_ns = ts
        if ts < ep.start_ns and ep.source != "registry":
            ep.start_ns = ts
        if (
            ep.end_ns is not None
            and ep.source != "registry"
            and ep.end_reason in ("idle", "evicted")
        ):
            ep.end_ns = ep.end_reason = ep.due_ns = None  # active again: its end was a guess
        self._dirty.add(eid)
        return ep

    def _on_event(self, ae: AttributedEvent, ts: int) -> None:
        ep = self._touch(ae.rl, ts)
        if ep is None:
            return
        ep.events += 1
        action = ae.event.action
        if action == "exec":
            ep.execs += 1
        elif action == "connect":
            ep.connects += 1
            self._destination(ep, getattr(ae.event, "daddr", None))
        elif action == "dns":
            ep.dns += 1
            self._destination(ep, getattr(ae.event, "daddr", None))
        elif action == "send":
            self._destination(ep, getattr(ae.event, "daddr", None))

    def _destination(self, ep: Episode, ip: str | None) -> None:
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

    def _on_finding(self, f: Finding, ts: int) -> None:
        ep = self._touch(f.trigger.rl, ts)
        if ep is None:
            return
        rule_id = f.rule.id[:200]
        sev = f.severity
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

    def _on_registry(self, rec: RegistryRecord) -> None:
        ts = rec.wall_ns
        action = rec.op
        eid = rec.episode_id
        if action == "run_end":
            run = rec.run_id
            for ep in self.episodes.values():
                if ep.end_ns is None and run is not None and ep.run_id == run:
                    self._end(ep, max(ts, ep.start_ns), "run_end", ts)
            return
        if not eid or action not in ("episode_start", "episode_end"):
            return
        ep = self._episode(eid, ts)
        for key in ("run_id", "trajectory_id", "sandbox_id"):
            value = _str_or_none(getattr(rec, key))
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
            ep.status = None if rec.status is None else str(rec.status)[:200]
            self._end(ep, max(ts, ep.start_ns), "registry", ts)
        self._dirty.add(eid)

    def _end(self, ep: Episode, end_ns: int, reason: str, now_ns: int) -> None:
        ep.end_ns = end_ns
        ep.end_reason = reason
        ep.due_ns = now_ns + self._grace
        self._check.add(ep.episode_id)
        self._dirty.add(ep.episode_id)

    def _count_recent(self, counter: str, n: int, ts: int) -> None:
        for ep in self._overlapping(ts - DROP_LOOKBACK_NS, ts):
            setattr(ep, counter, getattr(ep, counter) + n)

    def _on_gap(self, lo: int, hi: int, same_boot: bool, ts: int) -> None:
        self._load_range(lo, hi)
        for ep in self._overlapping(lo, hi):
            ep.add_gap(lo, hi)
            if same_boot is False and ep.end_ns is None:
                # the host rebooted: every process of the episode is gone
                self._end(ep, max(ep.last_seen_ns, lo), "reboot", ts)

    def _on_stats(self, undecodable: int, ts: int) -> None:
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
        if not self.store.is_open:
            return
        try:
            found = self.store.overlapping(lo, hi)
        except StoreError as exc:
            self._fail(exc, "read", hi)
            return
        for ep in found:
            self.episodes.setdefault(ep.episode_id, ep)

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
                and (not self.store.is_open or ep.episode_id not in self._dirty)
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
                VerdictRow(eid, ep.revision, now, verdict, json.dumps(reasons), json.dumps(doc))
            )
        del self._history[:-MAX_HISTORY]
        if now >= self._retry_ns and (
            issued
            or (self._dirty and now - self._last_flush >= FLUSH_INTERVAL_NS)
            or now - self._last_alive >= ALIVE_INTERVAL_NS
        ):
            self._flush(now)
        if now >= self._next_prune and self.store.is_open:
            self._next_prune = now + PRUNE_INTERVAL_NS
            self._prune(now)
        for action, message in self.store.notices():  # e.g. the fleet database lost, back
            self._report(action, message, now)
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
        self.store.close()

    @property
    def persisting(self) -> bool:
        """Whether the database is open and being written."""
        return self.store.is_open

    @property
    def last_error(self) -> str | None:
        return self._error

    def stats(self) -> dict[str, Any]:
        """The ledger's part of the ``stats`` line (and /metrics)."""
        return {
            **self.store.stats(),
            "persisting": self.store.is_open,
            "episodes_in_memory": len(self.episodes),
            "error": self._error,
        }


def ledger_path(cfg: Config) -> str:
    """The ledger file: ``[ledger] path``, else episodes.db in ``[service] state_dir``."""
    return cfg.ledger.path or str(Path(cfg.service.state_dir) / "episodes.db")


def store_for(cfg: Config) -> EpisodeStore:
    """The SQLite store, or with ``[ledger] url`` the fleet store (SQLite spool + PostgreSQL)."""
    led = cfg.ledger
    if led.url:
        from monitor.sinks.ledger.fleet import FleetStore

        return FleetStore(ledger_path(cfg), led.url, led.host or None, led.retention_days)
    return SqliteStore(ledger_path(cfg), led.host or None)


def ledger_for(cfg: Config, host: dict[str, Any] | None = None) -> EpisodeLedger | None:
    """The ledger ``rlguard run`` keeps, or None when ``[ledger] enabled = false``."""
    if not cfg.ledger.enabled:
        return None
    return EpisodeLedger(store_for(cfg), cfg.ledger, cfg.allowlist.internal_networks, host=host)
