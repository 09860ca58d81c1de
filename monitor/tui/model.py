"""What the viewer knows: rows built from NDJSON lines, filters, counters, episodes.

Pure Python, no Textual: everything here is tested without a terminal. Every
string a row holds has been through :func:`monitor.tui.safe.clean`, so widgets
can show it as-is (always through ``rich.text.Text``, never as markup).
"""

from __future__ import annotations

import shlex
from collections import Counter, OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from monitor.tui.safe import clean

SCROLLBACK = 50_000  # rows kept for scroll-back and re-filtering
MAX_EPISODES = 10_000  # episodes summarised; the least recently active go first
MAX_WORKERS_SHOWN = 8
MAX_GPU_SHOWN = 8

SEVERITY_RANK = {"": 0, "low": 1, "medium": 2, "high": 3, "critical": 4}

__all__ = [
    "SCROLLBACK",
    "SEVERITY_RANK",
    "Counters",
    "EpisodeSummary",
    "EventStore",
    "Filter",
    "Row",
    "build_row",
    "episode_query",
]


def _d(value: Any) -> dict[str, Any]:
    """``value`` if it is a dict, else an empty one: lines may have any shape."""
    return value if isinstance(value, dict) else {}


def _int(value: Any) -> int | None:
    """A non-negative integer from the stream, or None for anything else."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _sum_ints(value: Any) -> int:
    return sum(v for v in (_int(x) for x in _d(value).values()) if v is not None)


@dataclass(slots=True)
class Row:
    """One line of the stream, with its display fields already made safe."""

    seq: int
    doc: dict[str, Any]
    time: str
    kind: str
    action: str
    pid: str
    name: str
    episode: str
    worker: str
    rule: str
    severity: str
    destination: str
    summary: str
    haystack: str  # lower-case text for free-text search

    @property
    def is_alert(self) -> bool:
        return self.kind == "alert"


def _time(ts: Any) -> str:
    s = clean(ts, 40)
    # 2026-11-27T04:34:24.919525Z -> 04:34:24.919; anything else as it came
    if len(s) >= 23 and s[10] == "T":
        return s[11:23]
    return s


def _endpoint(obj: dict[str, Any]) -> str:
    ip = obj.get("ip")
    if not isinstance(ip, str) or not ip:
        return ""
    port = obj.get("port")
    host = f"[{ip}]" if ":" in ip else ip
    return f"{host}:{port}" if port is not None else host


def _destination(doc: dict[str, Any], action: str) -> str:
    if action == "dns":
        name = _d(_d(doc.get("dns")).get("question")).get("name")
        if isinstance(name, str) and name:
            return name
    dest = _d(doc.get("destination"))
    shown = _endpoint(dest)
    return "" if shown in ("0.0.0.0:0", "[::]:0") else shown  # a listener has no peer


def _summary(kind: str, action: str, doc: dict[str, Any]) -> str:
    ev = _d(doc.get("event"))
    proc = _d(doc.get("process"))
    rg = _d(doc.get("rlguard"))
    if kind == "alert":
        reason = ev.get("reason")
        if isinstance(reason, str) and reason:
            return reason
        return str(_d(doc.get("rule")).get("name") or "")
    if kind == "metric":
        return _metric_summary(action, rg)
    if action == "exec":
        args = proc.get("args")
        if isinstance(args, list) and args:
            line = " ".join(clean(a, 200) for a in args[:32])
            more = " …" if _d(rg.get("exec")).get("args_truncated") else ""
            return line + more
        return clean(proc.get("executable"))
    if action == "fork":
        parent = _d(proc.get("parent"))
        return f"fork of {clean(parent.get('name'), 64)}({clean(parent.get('pid'))})"
    if action == "exit":
        code = proc.get("exit_code")
        sig = _d(rg.get("exit")).get("signal")
        parts = ["exit"]
        if code is not None:
            parts.append(clean(code))
        if sig is not None:
            parts.append(f"signal {clean(sig)}")
        return " ".join(parts)
    if action == "dup":
        dup = _d(rg.get("dup"))
        return f"dup fd {clean(dup.get('oldfd'))} -> {clean(dup.get('newfd'))}"
    net = _d(doc.get("network"))
    if action == "connect":
        c = _d(rg.get("connect"))
        return f"{clean(net.get('transport'))} connect {clean(c.get('result'))}".strip()
    if action == "tcp_state":
        t = _d(rg.get("tcp"))
        src = _endpoint(_d(doc.get("source")))
        change = f"{clean(t.get('old_state'))} -> {clean(t.get('new_state'))}"
        return f"{change} from {src}" if src and not src.endswith(":0") else change
    if action == "send":
        p = _d(rg.get("payload"))
        return f"{clean(p.get('length'))} B: {clean(p.get('preview'), 80)}"
    if action == "dns":
        q = _d(_d(doc.get("dns")).get("question"))
        dns_type = _d(doc.get("dns")).get("type") or "dns"
        return f"{clean(dns_type)} {clean(q.get('name'))} {clean(q.get('type'))}"
    if action == "episode_verdict":
        v = _d(rg.get("verdict"))
        reasons = v.get("reasons")
        why = ", ".join(clean(r, 80) for r in reasons[:8]) if isinstance(reasons, list) else ""
        return f"verdict {clean(v.get('verdict'), 16)} (revision {clean(v.get('revision'))})" + (
            f": {why}" if why else ""
        )
    return clean(ev.get("reason") or "")


def _metric_summary(action: str, rg: dict[str, Any]) -> str:
    if action == "stats":
        lost = _d(rg.get("output")).get("lines_lost")
        lost_text = _sum_ints(lost) if isinstance(lost, dict) else clean(lost)
        return (
            f"events {_sum_ints(rg.get('events'))}, kernel drops "
            f"{clean(rg.get('drops_total'))}, output lost {lost_text}, "
            f"alerts {_sum_ints(rg.get('alerts'))}"
        )
    if action == "events_dropped":
        delta = _d(_d(rg.get("drops")).get("delta"))
        parts = ", ".join(f"{clean(k, 32)} {clean(v)}" for k, v in list(delta.items())[:10])
        return f"kernel dropped events: {parts}"
    if action == "client_lagged":
        skipped = _d(rg.get("live")).get("skipped_lines")
        return f"this viewer fell behind: {clean(skipped)} lines skipped"
    if action == "started":
        life = _d(rg.get("lifecycle"))
        return (
            f"monitor started: armed in {clean(life.get('armed_s'))} s, "
            f"{clean(life.get('seeded_processes'))} processes seeded"
        )
    if action == "stopped":
        return "monitor stopped"
    if action == "gpu_holders":
        g = _d(rg.get("gpu"))
        devices = g.get("devices")
        n_dev = sum(1 for d in devices if _d(d).get("holders")) if isinstance(devices, list) else 0
        return f"GPU holders: {clean(g.get('holders'))} processes on {n_dev} devices"
    if action == "record_error":
        return f"record error: {clean(rg.get('error'))}"
    if action in (
        "ledger_error",
        "ledger_recovered",
        "fleet_error",
        "fleet_recovered",
        "fleet_spool_changed",
    ):
        return clean(rg.get("message"), 300)
    return ""


def build_row(seq: int, doc: dict[str, Any]) -> Row:
    """The display row for one document; every field made safe, whatever its shape."""
    ev = _d(doc.get("event"))
    kind = clean(ev.get("kind"), 16) or "?"
    action = clean(ev.get("action"), 40)
    proc = _d(doc.get("process"))
    rl = _d(doc.get("rl"))
    rule = clean(_d(doc.get("rule")).get("id"), 40) if kind == "alert" else ""
    severity = ""
    if kind == "alert":
        severity = clean(_d(_d(doc.get("rlguard")).get("alert")).get("severity"), 16)
    raw = ev.get("action")
    raw_action = raw if isinstance(raw, str) else ""
    row = Row(
        seq=seq,
        doc=doc,
        time=_time(doc.get("@timestamp")),
        kind=kind,
        action=action,
        pid=clean(proc.get("pid"), 12),
        name=clean(proc.get("name"), 64),
        episode=clean(rl.get("episode_id"), 80),
        worker=clean(rl.get("worker_id"), 80),
        rule=rule,
        severity=severity,
        destination=clean(_destination(doc, raw_action), 120),
        summary=clean(_summary(kind, raw_action, doc), 400),
        haystack="",
    )
    row.haystack = " ".join(
        (row.kind, row.action, row.pid, row.name, row.episode, row.worker, row.rule)
        + (row.destination, row.summary)
    ).lower()
    return row


# --- filters -------------------------------------------------------------------------

_KEYS = {
    "episode": "episode",
    "ep": "episode",
    "worker": "worker",
    "w": "worker",
    "rule": "rule",
    "r": "rule",
    "proc": "name",
    "process": "name",
    "name": "name",
    "p": "name",
    "dest": "destination",
    "dst": "destination",
    "destination": "destination",
    "d": "destination",
}

_SHOWN_KEY = {"name": "proc", "destination": "dest"}


@dataclass(frozen=True)
class Filter:
    """Which rows to show. Field terms match case-insensitive substrings ("=x": exactly x).

    ``proc`` also matches the pid exactly, and free words match anywhere in the row.
    """

    alerts_only: bool = False
    terms: tuple[tuple[str, str], ...] = ()  # (row field, wanted), lower-case
    words: tuple[str, ...] = ()

    @classmethod
    def parse(cls, query: str, alerts_only: bool = False) -> Filter:
        """Parse ``episode:ep-17 proc:ssh dest:198.51 some words`` (shell-style quoting)."""
        try:
            tokens = shlex.split(query)
        except ValueError:  # an unbalanced quote while typing
            tokens = query.split()
        terms: list[tuple[str, str]] = []
        words: list[str] = []
        for tok in tokens:
            key, sep, value = tok.partition(":")
            fld = _KEYS.get(key.lower()) if sep else None
            if fld is not None and value:
                terms.append((fld, value.lower()))
            elif tok:
                words.append(tok.lower())
        return cls(alerts_only, tuple(terms), tuple(words))

    def with_alerts_only(self, on: bool) -> Filter:
        return Filter(on, self.terms, self.words)

    @property
    def active(self) -> bool:
        return self.alerts_only or bool(self.terms) or bool(self.words)

    def matches(self, row: Row) -> bool:
        if self.alerts_only and row.kind != "alert":
            return False
        for fld, want in self.terms:
            have = getattr(row, fld).lower()
            if want.startswith("="):
                if have != want[1:] and not (fld == "name" and row.pid == want[1:]):
                    return False
            elif want not in have and not (fld == "name" and row.pid == want):
                return False
        return all(w in row.haystack for w in self.words)

    def describe(self) -> str:
        """Short text for the status line."""
        parts = ["alerts only"] if self.alerts_only else []
        parts += [f"{_SHOWN_KEY.get(fld, fld)}:{want}" for fld, want in self.terms]
        parts += [f'"{w}"' for w in self.words]
        return ", ".join(parts) if parts else "none"


def episode_query(episode: str) -> str:
    """The filter text that selects exactly one episode."""
    return "episode:" + shlex.quote("=" + episode)


# --- counters and episodes ---------------------------------------------------------------


@dataclass
class Counters:
    """Totals over everything received (not only what the scroll-back still holds)."""

    lines: int = 0
    bad_lines: int = 0  # not JSON, not an object, or longer than the line limit
    events: int = 0
    alerts: int = 0
    metrics: int = 0
    alerts_by_severity: Counter[str] = field(default_factory=Counter)
    lag_notices: int = 0
    lag_skipped: int = 0
    evicted: int = 0  # rows pushed out of the scroll-back
    # Kernel drops and output losses are totals per monitor run: earlier runs are kept
    # apart so that a restart in a replayed file does not hide an old loss.
    _drops_done: int = 0
    _drops_run: int = 0
    _lost_done: int = 0
    _lost_run: int = 0

    @property
    def kernel_drops(self) -> int:
        return self._drops_done + self._drops_run

    @property
    def output_lost(self) -> int:
        return self._lost_done + self._lost_run

    def on_metric(self, action: str, rg: dict[str, Any]) -> None:
        if action == "started":
            self._drops_done += self._drops_run
            self._lost_done += self._lost_run
            self._drops_run = self._lost_run = 0
        elif action == "stats":
            drops = _int(rg.get("drops_total"))
            if drops is not None:
                self._drops_run = max(self._drops_run, drops)
            lost_raw = _d(rg.get("output")).get("lines_lost")
            # one sink gives a number, several (FanoutSink) a dict per sink
            lost = _sum_ints(lost_raw) if isinstance(lost_raw, dict) else _int(lost_raw)
            if lost is not None:
                self._lost_run = max(self._lost_run, lost)
        elif action == "events_dropped":
            total = _sum_ints(_d(rg.get("drops")).get("total"))
            self._drops_run = max(self._drops_run, total)
        elif action == "client_lagged":
            self.lag_notices += 1
            self.lag_skipped += _int(_d(rg.get("live")).get("skipped_lines")) or 0


@dataclass
class EpisodeSummary:
    """Activity of one RL episode."""

    episode: str
    events: int = 0
    alerts: int = 0
    max_severity: str = ""
    first_seen: str = ""
    last_seen: str = ""
    last_summary: str = ""
    workers: list[str] = field(default_factory=list)
    # from the latest gpu_holders record: "nvidia0 python(4242) 1.5 GiB", one per holding
    gpu: list[str] = field(default_factory=list)


# --- the store ---------------------------------------------------------------------------


class EventStore:
    """A bounded scroll-back of rows, plus counters and per-episode summaries."""

    def __init__(self, capacity: int = SCROLLBACK, max_episodes: int = MAX_EPISODES) -> None:
        self.capacity = capacity
        self.max_episodes = max_episodes
        self.rows: deque[Row] = deque()
        self.by_seq: dict[int, Row] = {}
        self.counters = Counters()
        self.episodes: OrderedDict[str, EpisodeSummary] = OrderedDict()
        self._seq = 0

    def add_lines(self, lines: Iterable[bytes]) -> list[Row]:
        """Parse and keep NDJSON lines; returns the new rows (bad lines are only counted)."""
        out: list[Row] = []
        for line in lines:
            self.counters.lines += 1
            try:
                doc = orjson.loads(line)
            except orjson.JSONDecodeError:
                self.counters.bad_lines += 1
                continue
            if not isinstance(doc, dict):
                self.counters.bad_lines += 1
                continue
            out.append(self.add_doc(doc))
        return out

    def count_bad(self, n: int) -> None:
        """Lines the reader discarded before parsing (over the length limit)."""
        self.counters.lines += n
        self.counters.bad_lines += n

    def add_doc(self, doc: dict[str, Any]) -> Row:
        """Keep one parsed document; returns its row."""
        self._seq += 1
        row = build_row(self._seq, doc)
        c = self.counters
        if row.kind == "alert":
            c.alerts += 1
            c.alerts_by_severity[row.severity] += 1
        elif row.kind == "metric":
            c.metrics += 1
            c.on_metric(row.action, _d(doc.get("rlguard")))
            if row.action == "gpu_holders":
                self._gpu_holders(_d(_d(doc.get("rlguard")).get("gpu")), row.time)
        else:
            c.events += 1
        if row.episode:
            self._episode(row)
        if len(self.rows) >= self.capacity:
            old = self.rows.popleft()
            del self.by_seq[old.seq]
            c.evicted += 1
        self.rows.append(row)
        self.by_seq[row.seq] = row
        return row

    def get(self, seq: int) -> Row | None:
        return self.by_seq.get(seq)

    def matching(self, flt: Filter) -> list[Row]:
        """Rows of the scroll-back that pass ``flt``, oldest first."""
        if not flt.active:
            return list(self.rows)
        return [r for r in self.rows if flt.matches(r)]

    def _gpu_holders(self, g: dict[str, Any], when: str) -> None:
        """A gpu_holders record is a snapshot: it replaces what each episode holds."""
        for summary in self.episodes.values():
            summary.gpu = []
        devices = g.get("devices")
        for dev in devices[:64] if isinstance(devices, list) else []:
            dev = _d(dev)
            name = clean(dev.get("device"), 80).rsplit("/", 1)[-1]
            holders = dev.get("holders")
            for h in holders[:256] if isinstance(holders, list) else []:
                h = _d(h)
                episode = clean(h.get("episode_id"), 80)
                if not episode:
                    continue
                ep = self.episodes.get(episode)
                if ep is None:
                    ep = self.episodes[episode] = EpisodeSummary(episode, first_seen=when)
                    ep.last_seen = when
                    if len(self.episodes) > self.max_episodes:
                        self.episodes.popitem(last=False)
                if len(ep.gpu) >= MAX_GPU_SHOWN:
                    continue
                text = f"{name} {clean(h.get('name'), 32)}({clean(h.get('pid'), 12)})"
                mem = _int(_d(h.get("nvml")).get("memory_bytes"))
                if mem is not None:
                    text += f" {mem / 2**30:.1f} GiB"
                ep.gpu.append(text)

    def _episode(self, row: Row) -> None:
        ep = self.episodes.get(row.episode)
        if ep is None:
            ep = self.episodes[row.episode] = EpisodeSummary(row.episode, first_seen=row.time)
            if len(self.episodes) > self.max_episodes:
                self.episodes.popitem(last=False)
        else:
            self.episodes.move_to_end(row.episode)  # most recently active last
        if row.kind == "alert":
            ep.alerts += 1
            if SEVERITY_RANK.get(row.severity, 0) > SEVERITY_RANK.get(ep.max_severity, 0):
                ep.max_severity = row.severity
        else:
            ep.events += 1
        ep.last_seen = row.time
        ep.last_summary = f"{row.action} {row.name}".strip()
        if row.worker and row.worker not in ep.workers and len(ep.workers) < MAX_WORKERS_SHOWN:
            ep.workers.append(row.worker)
