"""The pipeline: probes -> typed events -> attribution -> sinks.

One thread, one loop: drain the ring buffer (no wake-ups: the kernel submits
with BPF_RB_NO_WAKEUP and we drain on a short timer), decode, update the
process table, render, write.  Metric events report what the kernel counted
(sent, dropped) next to what we received, so a loss is never silent.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from monitor.config import Config, ConfigError, load_config
from monitor.detectors.engine import DetectionEngine, Finding, render_alert
from monitor.detectors.iocs import build_iocs
from monitor.detectors.signals import Signal, bounded
from monitor.sensor.events import (
    SEND_OWNER_DIFFERS,
    ConnectEvent,
    DupEvent,
    Event,
    ExecEvent,
    ExitEvent,
    ForkEvent,
    RecordDecoder,
    SendEvent,
    TagsetEvent,
    TcpStateEvent,
    tag_values,
)
from monitor.sensor.folds import ConnectFolds
from monitor.sensor.probes import (
    DRAIN_MAX,
    MAX_TAGS,
    TAG_VALUE_LEN,
    Counters,
    Sensor,
    gpu_probe_patterns,
)
from monitor.service.systemd import Heartbeat, Watchdog, gap_record, sd_notify
from monitor.sinks.ecs import Renderer
from monitor.sinks.ledger import EpisodeLedger, ledger_for
from monitor.sinks.tap import TapSink
from monitor.state.attribution import Attributor, Conflict
from monitor.state.cgroups import CgroupResolver
from monitor.state.gpu import GpuMonitor, ScanResult
from monitor.state.process_table import Process, ProcessTable, Tagset, boottime_ns
from monitor.state.registry.server import RegistryServer
from monitor.state.registry.state import Registry

DROP_CHECK_INTERVAL_S = 1.0
# records per sink flush within one drain: the rendered lines (~1.4 KiB each) wait in
# one growing buffer, and 4096 of them grew the heap by ~25 MiB in a process churn
FLUSH_EVERY = 1024
CLOSE_DRAIN_S = 10.0  # the most close() spends draining the ring
Observer = Callable[[Event, Process, dict[str, Any]], None]

_NOBODY = Process(pid=0, entity_id="", ppid=0, parent_entity_id=None, start_ns=0, name="")


class Collector:
    def __init__(
        self,
        config: Config,
        sink: Any,
        sensor: Sensor | None = None,
        heartbeat: bool = True,
        ledger: bool | None = None,
    ) -> None:
        self.config = config
        self.sink = sink
        # the episode ledger sees every line written; like the heartbeat, the demo and
        # tests leave the service's database alone unless they ask for a ledger
        self.ledger: EpisodeLedger | None = (
            ledger_for(config) if (heartbeat if ledger is None else ledger) else None
        )
        self.sensor = sensor or Sensor(
            config.probes, list(config.tags.keys), gpu_probe_patterns(config.gpu)
        )
        pt = config.process_table
        self.table = ProcessTable(
            config.tags,
            max_lineage=pt.max_lineage,
            exit_grace_s=pt.exit_grace_s,
            max_entries=pt.max_entries,
            max_exited=pt.max_exited,
        )
        self.table.tagset_fallback = self._kernel_tagset
        self.renderer = Renderer(self.table)
        self.engine = DetectionEngine(build_iocs(config.detectors, config.allowlist))
        att = config.attribution
        self.cgroups = CgroupResolver(att.container_patterns, att.sandbox_patterns)
        self.registry: Registry | None = None
        self.registry_server: RegistryServer | None = None
        if config.registry.socket:
            self.registry = Registry(int(config.registry.retain_s * 1e9), self.cgroups.mount)
        self.attributor = Attributor(self.table, att, self.registry, self.cgroups)
        self.renderer.attributor = self.attributor
        # GPU holder table (monitor/state/gpu.py); it sees every written document for episode_end
        self.gpu = GpuMonitor(
            config.gpu,
            self.table,
            self.engine,
            self._base,
            self.renderer.clock.iso,
            self.sensor,
            self.cgroups,
        )
        # the ledger and the GPU table see every line written (registry, alerts, drops)
        taps = [self.gpu.on_document]
        if self.ledger is not None:
            taps.insert(0, self.ledger.observe)
        self.sink = TapSink(sink, *taps)
        self.alerts_written = 0
        self.decoder: RecordDecoder | None = None
        self.received: Counter[str] = Counter()
        self.folds = ConnectFolds()
        self.undecodable = 0
        self.errors = 0
        self.observers: list[Observer] = []
        self.stop_event = threading.Event()
        self._stop_requested = False
        self.last_stats: dict[str, Any] | None = None
        self._reload_requested = False
        self.watchdog = Watchdog()
        # the demo and tests run beside the service: they must not move its heartbeat
        self.heartbeat: Heartbeat | None = (
            Heartbeat.in_dir(config.service.state_dir) if heartbeat else None
        )
        self.started_mono = 0.0
        self.armed_seconds = 0.0
        self._last_metrics = 0.0
        self._last_drop_check = 0.0
        self._last_drops: dict[str, int] = {}
        self._last_counters: Counters | None = None

    # -- start / stop --------------------------------------------------------------

    def start(self) -> None:
        """Load probes, seed from /proc, announce readiness."""
        self.started_mono = time.monotonic()
        self.sensor.load()
        self.decoder = RecordDecoder(self.sensor.layouts(), TAG_VALUE_LEN, MAX_TAGS)
        seeds = self.table.seed_from_proc()
        for tid, _ts in list(self.table.tagsets.items()):
            self.sensor.seed_tagset(tid, self.table.tagset_values_by_index(tid))
        for s in seeds:
            self.sensor.seed_process(s.pid, s.ppid, s.tagset_id, s.tag_origin)
        for gev in self.gpu.start():  # holdings from before start-up
            self.handle(gev)
        self.armed_seconds = time.monotonic() - self.started_mono
        self._last_metrics = time.monotonic()
        self.sink.write(
            self._lifecycle(
                "started",
                {
                    "armed_s": round(self.armed_seconds, 3),
                    "load_s": round(self.sensor.load_seconds, 3),
                    "seeded_processes": len(seeds),
                    "gpu_probes": bool(self.sensor.gpu_devices),
                    "tag_keys": list(self.config.tags.keys),
                    "denied_tag_keys": [k for k, _ in self.config.tags.denied],
                },
            )
        )
        self._report_gap()
        self._start_registry()
        self.sink.flush()
        sd_notify(
            f"READY=1\nSTATUS=armed in {self.armed_seconds:.2f}s, {len(seeds)} processes seeded"
        )

    def _start_registry(self) -> None:
        """Serve the registry socket; without it the monitor still runs (and says so)."""
        reg = self.config.registry
        if self.registry is None:
            return
        server = RegistryServer(
            self.registry, reg.socket, reg.group, reg.max_line_bytes, reg.max_clients
        )
        try:
            server.start()
        except OSError as exc:
            self._note("registry_unavailable", f"registry socket {reg.socket}: {exc}")
            return
        self.registry_server = server
        if server.note:
            self._note("registry_root_only", f"registry socket {reg.socket}: {server.note}")

    def _registry_records(self) -> None:
        reg = self.registry
        if reg is None:
            return
        while reg.pending:
            wall_ns, doc = reg.pending.popleft()
            out = {"@timestamp": _iso_ns(wall_ns), **doc, "host": self.renderer.host}
            self.sink.write(out)

    def _report_gap(self) -> None:
        """After a restart, say when monitoring stopped and when it resumed."""
        if self.heartbeat is None:
            return
        prev = self.heartbeat.previous()
        now = time.time_ns()
        if prev is not None:
            gap = gap_record(prev, self.table.boot_id, now)
            doc = self._base("rlguard.lifecycle", "monitoring_gap")
            doc["rlguard"] = {"gap": gap}
            doc["event"]["start"] = _iso_ns(gap["stopped_at_ns"])
            doc["event"]["end"] = _iso_ns(now)
            self.sink.write(doc)
        err = self.heartbeat.beat(self.table.boot_id)
        if err:
            self._note("heartbeat_failed", err)

    def _note(self, action: str, message: str) -> None:
        doc = self._base("rlguard.lifecycle", action)
        doc["rlguard"] = {"message": message[:1000]}
        self.sink.write(doc)

    def reload(self) -> bool:
        """SIGHUP: reopen outputs, reload the config; a bad file keeps the old one."""
        self._reload_requested = False
        if hasattr(self.sink, "reopen"):
            try:
                self.sink.reopen()
            except OSError as exc:
                self._note("reopen_failed", f"{exc.strerror}")
        try:
            new = load_config(self.config.source)
        except ConfigError as exc:
            self._note("config_reload_failed", f"kept the running config: {exc}")
            self.sink.flush()
            return False
        from monitor.detectors.iocs import build_iocs

        self.engine.iocs = build_iocs(new.detectors, new.allowlist)
        restart = [
            name
            for name in ("probes", "tags", "process_table", "service", "siem", "ledger")
            if getattr(new, name) != getattr(self.config, name)
        ]
        if self.gpu.reconfigure(new.gpu):  # allowlists and intervals apply now
            restart.append("gpu.devices")
        self.config = new
        self._note(
            "config_reloaded",
            "detectors, allowlist and output settings applied"
            + (f"; changes to {', '.join(restart)} take effect after a restart" if restart else ""),
        )
        self.sink.flush()
        return True

    def close(self) -> None:
        sd_notify("STOPPING=1")
        # what the ring still holds, batch by batch; a storm that goes on while we
        # stop may hold the stop up for CLOSE_DRAIN_S at most
        deadline = time.monotonic() + CLOSE_DRAIN_S
        while self.step() >= DRAIN_MAX and time.monotonic() < deadline:
            pass
        self._flush_folds(final=True)
        self.gpu.close()
        self.sink.write(self._metrics())
        self.sink.write(self._lifecycle("stopped", {}))
        self.sink.flush()
        if self.heartbeat is not None:
            self.heartbeat.beat(self.table.boot_id, clean=True)
        if self.ledger is not None:
            self.ledger.close()
        if self.registry_server is not None:
            self.registry_server.stop()
            self.registry_server = None
        self.cgroups.close()
        self.sensor.close()

    def install_signal_handlers(self) -> None:
        # handlers only set plain flags: threading.Event.set() from a signal
        # handler can deadlock on the lock the interrupted wait() holds
        def stop(_sig: int, _frm: Any) -> None:
            self._stop_requested = True

        def reopen(_sig: int, _frm: Any) -> None:
            self._reload_requested = True  # done by the loop, not in the handler

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, reopen)

    def run(self, duration_s: float | None = None) -> None:
        """Loop until stopped (signal, stop_event) or duration_s elapses."""
        poll = self.config.probes.poll_interval_ms / 1000.0
        deadline = None if duration_s is None else time.monotonic() + duration_s
        while not (self._stop_requested or self.stop_event.is_set()):
            if self._reload_requested:
                self.reload()
            n = self.step()
            if deadline is not None and time.monotonic() >= deadline:
                break
            if n == 0:
                time.sleep(poll)

    # -- the loop body ---------------------------------------------------------------

    def step(self) -> int:
        """Drain, process and flush once; returns the number of records."""
        # registry records first: an episode_start precedes the events it binds
        self._registry_records()
        gpu_scan = self.gpu.scan_now()  # /proc scan first, then drain, then reconcile
        raws = self.sensor.drain()
        decode = self.decoder.decode if self.decoder else None
        for i, raw in enumerate(raws, 1):
            try:
                ev = decode(raw) if decode else None
                if ev is None:
                    self.undecodable += 1
                    continue
                self.handle(ev)
            except Exception as exc:  # one bad record must never stop the monitor
                self.undecodable += 1
                self._report_error(exc, raw)
            if i % FLUSH_EVERY == 0:
                # a full ring renders to more than the sink may hold pending (64 MiB)
                self.sink.flush()
        try:
            self._gpu_step(gpu_scan)
        except Exception as exc:  # the GPU table must never stop the monitor
            self._report_error(exc, b"gpu")
        now = time.monotonic()
        if now - self._last_drop_check >= DROP_CHECK_INTERVAL_S:
            self._last_drop_check = now
            self._check_drops()
            self._flush_folds()
            self.table.expire()
            if self.registry is not None:
                self.registry.expire(boottime_ns())
        if now - self._last_metrics >= self.config.output.metrics_interval_s:
            self._last_metrics = now
            self.renderer.clock.resync()
            stats = self._metrics()
            self.last_stats = stats["rlguard"]  # read by the metrics endpoint's thread
            self.sink.write(stats)
            if self.heartbeat is not None:
                self.heartbeat.beat(self.table.boot_id)
        if self.ledger is not None:
            for doc in self.ledger.due():  # verdict lines, ledger_error lines
                self.sink.write(doc)
        self.watchdog.tick()
        self.sink.flush()
        return len(raws)

    def handle(self, ev: Event) -> dict[str, Any] | None:
        """Attribute and render one event; returns the document written."""
        self.received[ev.action] += 1
        table = self.table
        if isinstance(ev, TagsetEvent):
            table.on_tagset(ev)
            return None
        parent = None
        conflict = None
        if isinstance(ev, ExecEvent):
            before = table.procs.get(ev.pid)
            prev = (before.tagset_id, before.tag_origin) if before is not None else (0, 0)
            p = table.on_exec(ev)
            parent = table.procs.get(p.ppid)
            conflict = self.attributor.on_exec(ev, p, prev)
        elif isinstance(ev, ForkEvent):
            p = table.on_fork(ev)
            parent = table.procs.get(ev.pid)
            self.attributor.on_fork(ev, p, parent)
        elif isinstance(ev, DupEvent):
            p = table.process_for(ev)
            if self.engine.socket_for_fd(p, ev.oldfd) is None:
                # a plain redirection: state only, no line
                self.engine.observe(ev, p, None)
                return None
        elif isinstance(ev, ExitEvent):
            p = table.on_exit(ev)
        elif isinstance(ev, TcpStateEvent) and not ev.owner_known:
            p = _NOBODY
        elif isinstance(ev, SendEvent) and ev.flags & SEND_OWNER_DIFFERS:
            p = self._send_subject(ev)
        else:
            p = table.process_for(ev)
        self.gpu.before_render(ev)
        doc = self.renderer.render(ev, p)
        if isinstance(ev, ConnectEvent):
            doc["rlguard"]["connect"]["count"] = self.folds.on_record(ev)
        self.sink.write(doc)
        findings = self.engine.observe(ev, p, doc, parent)
        if conflict is not None:
            findings = findings + self._conflict_findings(ev, p, doc, conflict)
        findings += self.gpu.escalate(findings) + self.gpu.observe(ev, p, doc)
        if findings:
            now = self.renderer.clock.now_iso()
            for f in findings:
                self.sink.write(render_alert(f, now))
                self.alerts_written += 1
            self.sink.flush()  # alerts leave at once, not at the end of the batch
        for observer in self.observers:
            observer(ev, p, doc)
        if isinstance(ev, ExitEvent):
            p.render_cache = None  # rarely needed again: no kilobytes per exited process
        return doc

    def _conflict_findings(
        self, ev: Event, p: Process, doc: dict[str, Any], c: Conflict
    ) -> list[Finding]:
        signals = [
            Signal(
                "env",
                f"tag_conflict.{role}",
                bounded(f"own {role} {own!r} != {c.source} {kept!r}"),
                "high",
            )
            for role, (own, kept) in c.roles.items()
        ]
        return self.engine.report(
            "RLG-ATTR-001", p.entity_id, signals, ev, p, doc, {"conflict": c.as_dict()}
        )

    def _gpu_step(self, scan: ScanResult | None) -> None:
        """Reconcile the GPU holder table with a scan; episode-end checks; holder metrics."""
        events = self.gpu.reconcile(scan) if scan is not None else []
        for ev in events:
            self.handle(ev)
        docs, findings = self.gpu.tick()
        for doc in docs:
            self.sink.write(doc)
        if findings:
            now = self.renderer.clock.now_iso()
            for f in findings:
                self.sink.write(render_alert(f, now))
                self.alerts_written += 1

    def _flush_folds(self, final: bool = False) -> None:
        """Summary lines for the connects idle kernel folds still hold."""
        if not hasattr(self.sensor, "folds"):
            return
        for ev, n in self.folds.flush(self.sensor, boottime_ns(), final):
            p = self.table.process_for(ev)
            ev.tag_origin = p.tag_origin or ev.tag_origin
            doc = self.renderer.render(ev, p)
            doc["rlguard"]["connect"].update(count=n, summary=True)
            self.sink.write(doc)

    def _send_subject(self, ev: SendEvent) -> Process:
        """The sender when it inherited the socket from the connector; else the connector.

        The egress hook runs in the sending task for a connection's first
        segment, but a segment pushed out from softirq runs on whatever task
        was interrupted: only trust a sender that descends from the owner.
        """
        sender = self.table.process_for(ev)
        if any(a.pid == ev.owner_pid for a in self.table.lineage(sender)):
            return sender
        owner = self.table.procs.get(ev.owner_pid)
        if owner is None:
            return sender
        ev.tagset_id, ev.tag_origin = owner.tagset_id, owner.tag_origin
        ev.pid = owner.pid
        return owner

    def _report_error(self, exc: Exception, raw: bytes) -> None:
        self.errors += 1
        if self.errors > 100 and self.errors % 1000:
            return  # counted in the metrics; not a line per failure in a storm
        doc = self._base("rlguard.sensor", "record_error")
        doc["rlguard"] = {
            "error": f"{type(exc).__name__}: {exc}"[:500],
            "record": {"length": len(raw), "head_hex": raw[:64].hex()},
            "errors_total": self.errors,
        }
        self.sink.write(doc)

    # -- kernel fallbacks ---------------------------------------------------------------

    def _kernel_tagset(self, tagset_id: int) -> Tagset | None:
        got = self.sensor.kernel_tagset(tagset_id)
        if got is None:
            return None
        mask, blob = got
        keys = self.table.keys
        values = tag_values(blob, mask, TAG_VALUE_LEN, len(keys))
        return Tagset({k: v for k, v in zip(keys, values, strict=True) if v is not None})

    # -- metrics -------------------------------------------------------------------------

    def _base(self, dataset: str, action: str) -> dict[str, Any]:
        return {
            "@timestamp": self.renderer.clock.now_iso(),
            "event": {"kind": "metric", "dataset": dataset, "action": action},
            "host": self.renderer.host,
        }

    def _lifecycle(self, action: str, detail: dict[str, Any]) -> dict[str, Any]:
        doc = self._base("rlguard.lifecycle", action)
        doc["rlguard"] = {"lifecycle": detail}
        return doc

    def _check_drops(self) -> None:
        counters = self.sensor.counters()
        self._last_counters = counters
        delta = {
            k: v - self._last_drops.get(k, 0)
            for k, v in counters.drops.items()
            if v - self._last_drops.get(k, 0) > 0
        }
        if delta:
            doc = self._base("rlguard.sensor", "events_dropped")
            doc["rlguard"] = {
                "drops": {"delta": delta, "total": dict(counters.drops)},
                "message": "the kernel could not queue these events (ring buffer full)",
            }
            self.sink.write(doc)
        self._last_drops = dict(counters.drops)

    def _metrics(self) -> dict[str, Any]:
        counters = self.sensor.counters()
        doc = self._base("rlguard.sensor", "stats")
        doc["rlguard"] = {
            "events": dict(self.received),
            "kernel": {
                "sent": counters.sent,
                "drops": counters.drops,
                "misses": counters.misses,
                # records not sent on purpose (duplicates, teardown, folded connects)
                "quiet": counters.quiet,
            },
            # connects the connect lines stand for (folded ones included)
            "connects": {
                "represented": self.folds.represented,
                "summary_lines": self.folds.summaries,
            },
            "drops_total": sum(counters.drops.values()),
            # queued by the kernel but not yet processed here: how full the ring is
            "ring_backlog_events": max(
                0, sum(counters.sent.values()) - sum(self.received.values())
            ),
            "undecodable": self.undecodable,
            "errors": self.errors,
            "output": {
                "lines_written": getattr(self.sink, "lines_written", None),
                "lines_lost": getattr(self.sink, "lines_lost", None),
                "pending": getattr(self.sink, "pending", None),
                "error": getattr(self.sink, "last_error", None),
            },
            "process_table": {
                "size": len(self.table),
                "tagsets": len(self.table.tagsets),
                "exited": self.table.exited,
                "evicted": self.table.evicted,
                "exited_evicted": self.table.exited_evicted,
            },
            "alerts": dict(self.engine.alerts_by_rule),
            "registry": self._registry_stats(),
            "gpu": self.gpu.stats(),
            "ledger": None if self.ledger is None else self.ledger.stats(),
            "uptime_s": round(time.monotonic() - self.started_mono, 3),
            "boottime_ns": boottime_ns(),
        }
        return doc

    def _registry_stats(self) -> dict[str, Any] | None:
        reg, srv = self.registry, self.registry_server
        if reg is None:
            return None
        return {
            "serving": srv is not None,
            "messages": reg.messages,
            "errors": srv.errors if srv else 0,
            "clients": len(srv.clients) if srv else 0,
            "open_episodes": sum(1 for e in reg.episodes.values() if e.end_ns is None),
            "tag_conflicts": self.attributor.conflicts,
        }


def _iso_ns(wall_ns: int) -> str:
    from datetime import datetime, timezone

    sec, rem = divmod(wall_ns, 1_000_000_000)
    stamp = datetime.fromtimestamp(sec, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{rem // 1000:06d}Z"
