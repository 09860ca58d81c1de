"""Mining that stays encrypted, judged by its shape (RLG-MIN-006).

A miner whose TLS is compiled in (or that speaks Noise) shows no plaintext, but a pool
connection has a shape: it stays open for hours, carries a small share submission every
few seconds to minutes, from a process that holds a GPU or keeps cores busy, to an
address nothing else on the host talks to.  The kernel reports each live outbound
stream's counters at most every ``[streams] activity_interval_s`` while it sends
(``stream_tick`` records); :func:`mining_shape` judges them against the named thresholds
of ``[mining_behaviour]``, and :class:`MiningBehaviour` keeps the little state that needs
(first sight of each connection, who connects where, CPU time) and reports findings
through the engine, which also lets the mark raise the process's other mining alerts.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from monitor.config import MiningBehaviourConfig
from monitor.detectors.signals import Signal, bounded
from monitor.sensor.events import ConnectEvent, StreamTickEvent
from monitor.state.attributed import AttributedEvent

if TYPE_CHECKING:
    from monitor.detectors.engine import DetectionEngine, Finding
    from monitor.state.gpu import GpuHolders

RULE_MINING_SHAPE: Final = "RLG-MIN-006"
RULES: Final = (RULE_MINING_SHAPE,)
SIGNAL = "behaviour.encrypted_mining_shape"
MAX_CONNS = 65536
MAX_DESTINATIONS = 65536
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True, slots=True)
class Activity:
    """A live connection's counters as the ticks tell them."""

    age_s: float  # since its first payload
    active_intervals: int  # activity intervals in which it sent something
    segs: int  # payload segments sent so far
    bytes: int  # payload bytes sent so far
    interval_s: float  # the kernel's activity interval


@dataclass(frozen=True, slots=True)
class ProcessFacts:
    in_episode: bool
    gpu: bool
    cpu_cores: float | None  # CPU time over the connection's life, in cores (None: unknown)
    destination_users: int  # processes on the host that connected to the destination


def shape_failures(a: Activity, f: ProcessFacts, cfg: MiningBehaviourConfig) -> list[str]:
    """The thresholds that do not hold ([] = the shape is there), by config name."""
    out: list[str] = []
    if not f.in_episode:
        out.append("episode")
    if a.age_s < cfg.min_age_s:
        out.append("min_age_s")
    if a.active_intervals < cfg.min_active_intervals:
        out.append("min_active_intervals")
    mean = a.bytes / a.segs if a.segs else 0.0
    if not a.segs or mean > cfg.max_mean_write_bytes:
        out.append("max_mean_write_bytes")
    intervals = max(1.0, a.age_s / a.interval_s)
    if a.bytes / intervals > cfg.max_interval_bytes:
        out.append("max_interval_bytes")
    busy = f.cpu_cores is not None and f.cpu_cores >= cfg.cpu_fraction
    if not (f.gpu or busy):
        out.append("cpu_fraction")
    if f.destination_users > cfg.max_destination_users:
        out.append("max_destination_users")
    return out


def mining_shape(a: Activity, f: ProcessFacts, cfg: MiningBehaviourConfig) -> Signal | None:
    """The low-confidence signal when every condition holds, else None."""
    if not cfg.enabled or shape_failures(a, f, cfg):
        return None
    mean = a.bytes / a.segs
    holder = "holds a GPU" if f.gpu else f"uses {f.cpu_cores:.2f} cores"
    detail = (
        f"open {a.age_s:.0f}s, writes in {a.active_intervals} intervals, mean {mean:.0f} B, "
        f"process {holder}, destination used by {f.destination_users} process(es)"
    )
    return Signal("behaviour", SIGNAL, bounded(detail), "low")


def cpu_seconds(pid: int, proc: str = "/proc") -> float | None:
    """utime + stime of a process from /proc/PID/stat, in seconds."""
    try:
        with open(f"{proc}/{pid}/stat", "rb") as fh:
            raw = fh.read(4096)
    except OSError:
        return None
    fields = raw.rpartition(b")")[2].split()
    try:
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (IndexError, ValueError):
        return None


@dataclass(slots=True)
class _Conn:
    first_ts: int
    cpu0: float | None
    ticks: int = 0
    flagged: bool = False


class MiningBehaviour:
    """Feeds the shape judgement from connect and stream_tick events."""

    def __init__(
        self,
        cfg: MiningBehaviourConfig,
        interval_s: float,
        gpu: GpuHolders,
        engine: DetectionEngine,
        proc: str = "/proc",
    ) -> None:
        self.cfg = cfg
        self.interval_s = interval_s
        self.gpu = gpu
        self.engine = engine
        self.proc = proc
        self.self_pid = os.getpid()
        self._conns: OrderedDict[int, _Conn] = OrderedDict()
        self._users: OrderedDict[str, set[str]] = OrderedDict()

    def observe(self, ae: AttributedEvent) -> list[Finding]:
        ev = ae.event
        if isinstance(ev, ConnectEvent):
            self._connect(ev, ae)
            return []
        if isinstance(ev, StreamTickEvent) and self.cfg.enabled:
            return self._tick(ev, ae)
        return []

    def _connect(self, ev: ConnectEvent, ae: AttributedEvent) -> None:
        if ae.process is None or not ev.daddr or ev.ret not in (0, -115, 1):
            return
        if ev.pid == self.self_pid:
            return  # the monitor's own connections (its SIEM output) are not a "use"
        users = self._users.get(ev.daddr)
        if users is None:
            users = self._users[ev.daddr] = set()
            if len(self._users) > MAX_DESTINATIONS:
                self._users.popitem(last=False)
        if len(users) < 64:  # beyond that the answer is "many" anyway
            users.add(ae.process.entity_id)

    def _tick(self, ev: StreamTickEvent, ae: AttributedEvent) -> list[Finding]:
        p = ae.process
        if p is None:
            return []
        conn = self._conns.get(ev.cookie)
        if conn is None:
            conn = self._conns[ev.cookie] = _Conn(ev.ts_ns, cpu_seconds(p.pid, self.proc))
            if len(self._conns) > MAX_CONNS:
                self._conns.popitem(last=False)
        conn.ticks += 1
        if conn.flagged:
            return []
        activity = Activity(
            age_s=max(0.0, (ev.ts_ns - ev.first_ns) / 1e9),
            active_intervals=conn.ticks,
            segs=ev.segs,
            bytes=ev.bytes,
            interval_s=self.interval_s,
        )
        cpu_now = cpu_seconds(p.pid, self.proc)
        span = (ev.ts_ns - conn.first_ts) / 1e9
        cores = None
        if cpu_now is not None and conn.cpu0 is not None and span > 0:
            cores = (cpu_now - conn.cpu0) / span
        facts = ProcessFacts(
            in_episode=ae.rl.episode_id is not None,
            gpu=bool(self.gpu.holders.of(p.pid)),
            cpu_cores=cores,
            destination_users=len(self._users.get(ev.daddr or "", ())) or 1,
        )
        sig = mining_shape(activity, facts, self.cfg)
        if sig is None:
            return []
        conn.flagged = True
        extra = {"connection": {"ip": ev.daddr, "port": ev.dport, "cookie": ev.cookie}}
        subject = f"{p.entity_id}/{ev.daddr}:{ev.dport}"
        out = self.engine.report(RULE_MINING_SHAPE, subject, [sig], ae, extra)
        out += self.engine.mark_mining_shape(p, sig, ae)
        return out
