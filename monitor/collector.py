"""The pipeline's loop: probes -> typed events -> state and attribution -> detectors -> sinks.

One thread, one loop: drain the ring buffer (no wake-ups: the kernel submits with
BPF_RB_NO_WAKEUP and we drain on a short timer), decode, update the process table,
attribute each record once into an :class:`AttributedEvent`, run the detectors and the GPU
table on it, render and write.  Metric lines report what the kernel counted (sent, dropped)
next to what we received, so a loss is never silent.  The parts are assembled by
monitor/assembly.py.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from monitor.clock import boottime_ns, iso_wall
from monitor.config import Config, ConfigError, RegistryConfig, load_config
from monitor.detectors import crossing, tag_conflict
from monitor.detectors.behaviour import MiningBehaviour
from monitor.detectors.engine import DetectionEngine, Finding
from monitor.detectors.gpu_driver import GpuRuleDriver
from monitor.detectors.iocs import build_iocs
from monitor.detectors.rules import RuleError, load_rules
from monitor.sensor.events import (
    SEND_OWNER_DIFFERS,
    SEND_SENDER_KNOWN,
    ConnectEvent,
    DnsEvent,
    DupEvent,
    Event,
    ExecEvent,
    ExitEvent,
    ForkEvent,
    GpuCloseEvent,
    GpuOpenEvent,
    RecordDecoder,
    SendEvent,
    StreamEvent,
    StreamTickEvent,
    TagsetEvent,
    TcpStateEvent,
    TlsBindEvent,
    TlsDataEvent,
    UnixConnectEvent,
    UnixListenEvent,
)
from monitor.sensor.folds import ConnectFolds
from monitor.sensor.port import SensorPort
from monitor.sensor.probes import DRAIN_MAX, MAX_TAGS, TAG_VALUE_LEN, Counters
from monitor.sensor.tls_libs import Library, TlsLibraries
from monitor.service.systemd import Heartbeat, Watchdog, gap_record, sd_notify
from monitor.sinks.ecs import Renderer
from monitor.sinks.fanout import FanoutSink
from monitor.sinks.ledger import EpisodeLedger
from monitor.state.attributed import AttributedEvent
from monitor.state.attribution import Attributor, Conflict
from monitor.state.cgroups import CgroupResolver
from monitor.state.gpu import GpuHolders, ScanResult
from monitor.state.process_table import Process, ProcessTable
from monitor.state.registry.gate import RegistryGate, Trust
from monitor.state.registry.records import RegistryRefusals
from monitor.state.registry.server import RegistryServer
from monitor.state.registry.state import Registry
from monitor.streams.tracker import StreamTracker
from monitor.streams.view import StreamView

DROP_CHECK_INTERVAL_S = 1.0
TCP_LISTEN = 10
# records per sink flush within one drain: the rendered lines (~1.4 KiB each) wait in
# one growing buffer, and 4096 of them grew the heap by ~25 MiB in a process churn
FLUSH_EVERY = 1024
CLOSE_DRAIN_S = 10.0  # the most close() spends draining the ring
Observer = Callable[[AttributedEvent], None]
Handler = Callable[[Any], "AttributedEvent | None"]


class Collector:
    """The loop: drain, decode, update state, attribute, detect, render, write.

    Built by :func:`monitor.assembly.build_collector`, which owns the wiring: every part
    comes in through the constructor.
    """

    def __init__(
        self,
        config: Config,
        *,
        output: FanoutSink,
        sensor: SensorPort,
        table: ProcessTable,
        attributor: Attributor,
        renderer: Renderer,
        engine: DetectionEngine,
        gpu: GpuHolders,
        gpu_rules: GpuRuleDriver,
        registry: Registry | None,
        gate: RegistryGate | None,
        cgroups: CgroupResolver,
        ledger: EpisodeLedger | None,
        heartbeat: Heartbeat | None,
        streams: StreamTracker,
        tls_libs: TlsLibraries,
        behaviour: MiningBehaviour,
    ) -> None:
        self.config = config
        self.sink = output
        self.sensor = sensor
        self.table = table
        self.attributor = attributor
        self.renderer = renderer
        self.clock = renderer.clock
        self.engine = engine
        self.gpu = gpu
        self.gpu_rules = gpu_rules
        self.registry = registry
        self.registry_server: RegistryServer | None = None
        self.gate = gate
        # every record from before this instant was processed: registry messages received
        # by then can be judged (their sender's fork and exec records are in)
        self._horizon_ns = 0
        self.cgroups = cgroups
        self.ledger = ledger
        self.heartbeat = heartbeat
        self.streams = streams
        self.tls_libs = tls_libs
        self.behaviour = behaviour
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
        self.started_mono = 0.0
        self.armed_seconds = 0.0
        self._last_metrics = 0.0
        self._last_drop_check = 0.0
        self._last_drops: dict[str, int] = {}
        self._last_counters: Counters | None = None
        # one handler per record type: it updates state and returns the attributed event
        # (None: the record only updates state)
        self._handlers: dict[type[Event], Handler] = {
            TagsetEvent: self._on_tagset,
            ExecEvent: self._on_exec,
            ForkEvent: self._on_fork,
            ExitEvent: self._on_exit,
            DupEvent: self._on_dup,
            TcpStateEvent: self._on_tcp_state,
            SendEvent: self._on_send,
            ConnectEvent: self._on_connect,
            DnsEvent: self._on_record,
            GpuOpenEvent: self._on_record,
            GpuCloseEvent: self._on_record,
            UnixListenEvent: self._on_unix_listen,
            UnixConnectEvent: self._on_unix_connect,
            StreamEvent: self._on_stream,
            TlsDataEvent: self._on_tls,
            TlsBindEvent: self._on_tls,
            StreamTickEvent: self._on_stream_tick,
        }
        self._conflict: Conflict | None = None  # found by _on_exec for the exec at hand

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
        listeners = self.attributor.requests.seed_from_proc()  # local servers already running
        for gev in self.gpu.start():  # holdings from before start-up
            self.handle(gev)
        libs = self.tls_libs.start()  # uprobes on every TLS library file found
        self.armed_seconds = time.monotonic() - self.started_mono
        self._last_metrics = time.monotonic()
        self.sink.write(
            self._lifecycle(
                "started",
                {
                    "armed_s": round(self.armed_seconds, 3),
                    "load_s": round(self.sensor.load_seconds, 3),
                    "seeded_processes": len(seeds),
                    "seeded_listeners": listeners,
                    "gpu_probes": bool(self.sensor.gpu_devices),
                    "tag_keys": list(self.config.tags.keys),
                    "denied_tag_keys": [k for k, _ in self.config.tags.denied],
                    "tls_libraries": [lib.path for lib in libs],
                },
            )
        )
        if self.ledger is not None:
            self.ledger.on_started(self.clock.now_wall_ns())
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

    def _registry_requests(self) -> None:
        """Decide the registry messages received before the horizon; record refusals."""
        srv, gate = self.registry_server, self.gate
        if srv is None or gate is None or not srv.requests:
            return
        for req in srv.take(self._horizon_ns):
            d = gate.decide(req)
            srv.answer(req, d.ok, **d.fields)
            ev = d.refusal
            if ev is None:
                continue
            ae = self.attributor.attribute(ev, d.sender)
            self._emit(ae)
            subject = d.sender.entity_id if d.sender is not None else f"pid:{ev.pid}"
            findings = self.engine.report(
                crossing.RULE_REGISTRY_REFUSED,
                subject,
                crossing.refusal_signals(ev),
                ae,
                {"registry": {"op": ev.op, "episode_id": ev.asked_episode_id}},
            )
            if findings:
                self._write_findings(findings)

    def _registry_records(self) -> None:
        """Episode lifecycle from the registry thread: to the GPU rules and the stream."""
        reg = self.registry
        if reg is None:
            return
        while reg.pending:
            rec = reg.pending.popleft()
            if isinstance(rec, RegistryRefusals):
                self.sink.write(self.renderer.render_registry_error(rec))
                continue
            if rec.op == "episode_end" and rec.episode_id:
                self.gpu_rules.on_episode_end(rec.episode_id, rec.boot_ns)
            self.sink.write(self.renderer.render_registry(rec))
            if self.ledger is not None:
                self.ledger.on_registry(rec)

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
            doc["event"]["start"] = iso_wall(gap["stopped_at_ns"])
            doc["event"]["end"] = iso_wall(now)
            self.sink.write(doc)
            if self.ledger is not None:
                self.ledger.on_gap(
                    gap["stopped_at_ns"], gap["resumed_at_ns"], gap["same_boot"], now
                )
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
        try:
            self.sink.reopen()
        except OSError as exc:
            self._note("reopen_failed", f"{exc.strerror}")
        try:
            new = load_config(self.config.source)
            rules = load_rules(settings=new.rules)
            iocs = build_iocs(new.detectors, new.allowlist)  # reads the operator list files
        except (ConfigError, RuleError) as exc:
            self._note("config_reload_failed", f"kept the running config: {exc}")
            self.sink.flush()
            return False
        self.engine.iocs = iocs
        self.engine.rules = rules
        self.engine.dns_tunnel.reconfigure(new.dns_tunnel)
        if self.gate is not None:  # who may bind applies now; the socket itself at a restart
            self.gate.trust = Trust.from_config(new.registry)
        restart = [
            name
            for name in ("probes", "tags", "process_table", "service", "siem", "ledger")
            if getattr(new, name) != getattr(self.config, name)
        ]
        if _socket_settings(new.registry) != _socket_settings(self.config.registry):
            restart.append("registry")
        if self.gpu.reconfigure(new.gpu):  # allowlists and intervals apply now
            restart.append("gpu.devices")
        self.gpu_rules.reconfigure(self.gpu.cfg)
        self.config = new
        self._note(
            "config_reloaded",
            "detectors, allowlist, rules and output settings applied"
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
        # registry messages and records first: an episode_start precedes the events it binds
        self._registry_requests()
        self._registry_records()
        gpu_scan = self.gpu.scan_now()  # /proc scan first, then drain, then reconcile
        drained_at = boottime_ns()
        raws = self.sensor.drain()
        decode = self.decoder.decode if self.decoder else None
        last_ts = 0
        for i, raw in enumerate(raws, 1):
            try:
                ev = decode(raw) if decode else None
                if ev is None:
                    self.undecodable += 1
                    continue
                last_ts = ev.ts_ns
                self.handle(ev)
            except Exception as exc:  # one bad record must never stop the monitor
                self.undecodable += 1
                self._report_error(exc, raw)
            if i % FLUSH_EVERY == 0:
                # a full ring renders to more than the sink may hold pending (64 MiB)
                self.sink.flush()
        # a short batch emptied the ring as it was when the drain began
        self._horizon_ns = drained_at if len(raws) < DRAIN_MAX else max(self._horizon_ns, last_ts)
        try:
            self._gpu_step(gpu_scan)
        except Exception as exc:  # the GPU table must never stop the monitor
            self._report_error(exc, b"gpu")
        now = time.monotonic()
        if now - self._last_drop_check >= DROP_CHECK_INTERVAL_S:
            self._last_drop_check = now
            self._check_drops()
            self._flush_folds()
            self._streams_step()
            self.table.expire()
            self.attributor.expire()
            if self.registry is not None:
                self.registry.expire(boottime_ns())
            late = self.engine.tick(boottime_ns())  # long-lived connections (RLG-TUN-007)
            if late:
                self._write_findings(late)
        if now - self._last_metrics >= self.config.output.metrics_interval_s:
            self._last_metrics = now
            self.clock.resync()
            stats = self._metrics()
            self.last_stats = stats["rlguard"]  # read by the metrics endpoint's thread
            self.sink.write(stats)
            if self.ledger is not None:
                self.ledger.on_stats(self.undecodable, self.clock.now_wall_ns())
            if self.heartbeat is not None:
                self.heartbeat.beat(self.table.boot_id)
        if self.ledger is not None:
            for doc in self.ledger.due():  # verdict lines, ledger_error lines
                self.sink.write(doc)
        self.watchdog.tick()
        self.sink.flush()
        return len(raws)

    def handle(self, ev: Event) -> dict[str, Any] | None:
        """Update state, attribute, detect and write one event; returns the line written."""
        self.received[ev.action] += 1
        ae = self._handlers[type(ev)](ev)
        if ae is None:
            return None
        return self._emit(ae)

    def _emit(self, ae: AttributedEvent) -> dict[str, Any] | None:
        """Write the event's line, run the detectors and the GPU table, write alerts."""
        doc = None
        if not ae.quiet:
            self.gpu.name_close(ae.event)
            doc = self.renderer.render(ae)
            self.sink.write(doc)
            if self.ledger is not None:
                self.ledger.on_event(ae, self.clock.wall_ns(ae.event.ts_ns))
        findings = self.engine.observe(ae)
        findings += self.behaviour.observe(ae)
        conflict, self._conflict = self._conflict, None
        if conflict is not None and ae.process is not None:
            findings += self.engine.report(
                tag_conflict.RULE_TAG_CONFLICT,
                ae.process.entity_id,
                tag_conflict.conflict_signals(conflict),
                ae,
                {"conflict": conflict.as_dict()},
            )
        if ae.crossed is not None and ae.process is not None:
            kind, detail, subject = ae.crossed
            sig = crossing.crossing_signal(kind, detail)
            findings += self.engine.report(crossing.RULE_CROSSED_EPISODES, subject, [sig], ae)
        held = self.gpu.apply(ae)
        findings += self.gpu_rules.escalate(findings)
        if held is not None:
            findings += self.gpu_rules.on_open(ae, held)
        if findings:
            self._write_findings(findings)
        for observer in self.observers:
            observer(ae)
        return doc

    def _write_findings(self, findings: list[Finding]) -> None:
        now = self.clock.now_wall_ns()
        for f in findings:
            self.sink.write(self.renderer.render_alert(f))
            self.alerts_written += 1
            if self.ledger is not None:
                self.ledger.on_finding(f, now)
        self.sink.flush()  # alerts leave at once, not at the end of the batch

    # -- one handler per record type ----------------------------------------------------

    def _on_tagset(self, ev: TagsetEvent) -> None:
        self.table.on_tagset(ev)

    def _on_exec(self, ev: ExecEvent) -> AttributedEvent:
        before = self.table.procs.get(ev.pid)
        prev = (before.tagset_id, before.tag_origin) if before is not None else (0, 0)
        p = self.table.on_exec(ev)
        self.tls_libs.on_exec(ev.pid)
        self._conflict = self.attributor.on_exec(ev, p, prev)
        return self.attributor.attribute(ev, p)

    def _on_fork(self, ev: ForkEvent) -> AttributedEvent:
        child = self.table.on_fork(ev)
        parent = self.table.procs.get(ev.pid)
        self.attributor.on_fork(ev, child, parent)
        return self.attributor.attribute(ev, child, parent)  # the subject is the child

    def _on_exit(self, ev: ExitEvent) -> AttributedEvent:
        return self.attributor.attribute(ev, self.table.on_exit(ev))

    def _on_dup(self, ev: DupEvent) -> AttributedEvent:
        ae = self.attributor.attribute(ev, self.table.process_for(ev))
        # a plain redirection only updates the engine's fd model: no line
        p = ae.process
        ae.quiet = p is None or self.engine.socket_for_fd(p, ev.oldfd) is None
        return ae

    def _on_tcp_state(self, ev: TcpStateEvent) -> AttributedEvent:
        if ev.newstate == 7:  # CLOSE: the stream's opening can go
            self.streams.on_close(ev.saddr, ev.sport, ev.daddr, ev.dport)
        # softirq context with no recorded owner: no process to name
        p = self.table.process_for(ev) if ev.owner_known else None
        if ev.newstate == TCP_LISTEN or ev.oldstate == TCP_LISTEN:
            self.attributor.requests.on_tcp_state(ev, p)  # a local server starts or stops
        return self.attributor.attribute(ev, p)

    def _on_unix_listen(self, ev: UnixListenEvent) -> AttributedEvent:
        p = self.table.process_for(ev)
        self.attributor.requests.on_unix_listen(ev, p)
        return self.attributor.attribute(ev, p)

    def _on_unix_connect(self, ev: UnixConnectEvent) -> AttributedEvent:
        ae = self.attributor.attribute(ev, self.table.process_for(ev))
        req = self.attributor.requests
        acting = ae.rl.episode_id is not None  # for its own episode or on request
        server = req.unix_server(ev) if acting and req.enabled else None
        if server is not None:
            self.attributor.link(ae, server, "unix")
        # a line when an episode is involved; the rest only keeps state
        ae.quiet = not acting
        return ae

    def _on_send(self, ev: SendEvent) -> AttributedEvent:
        if ev.flags & SEND_OWNER_DIFFERS:
            if ev.flags & SEND_SENDER_KNOWN:  # the kernel names the real sender
                ae = self._handed_over(ev)
            else:
                ae = self.attributor.attribute(ev, self._send_subject(ev))
        else:
            self.attributor.sockets.pop(ev.cookie, None)
            ae = self.attributor.attribute(ev, self.table.process_for(ev))
        ae.stream = self.streams.on_send(ev, ae.process.pid if ae.process else ev.pid)
        return ae

    def _handed_over(self, ev: SendEvent) -> AttributedEvent:
        """First bytes from a process that did not connect the socket (SCM_RIGHTS,
        pidfd_getfd, fork): the sender is the subject, the owner is named too."""
        sender = self.table.process_for(ev)
        # the header's cgroup is the socket's (its creator's): the sender's is its own
        ev.cgroup_id = sender.cgroup_id or ev.cgroup_id
        ae = self.attributor.attribute(ev, sender)
        self.attributor.socket_owner(ae, ev.cookie, ev.owner_pid)
        return ae

    def _on_connect(self, ev: ConnectEvent) -> AttributedEvent:
        ae = self.attributor.attribute(ev, self.table.process_for(ev))
        ae.connect_count = self.folds.on_record(ev)
        if ev.cookie and ev.sock_type == 1 and ae.rl.episode_id is not None:
            self.attributor.on_stream_connect(ae, ev.cookie)
        ports = self.attributor.requests.tcp_by_port
        if ports and ev.dport in ports and ae.rl.episode_id is not None:
            server = self.attributor.requests.tcp_server(ev)  # loopback to a local listener
            if server is not None:
                self.attributor.link(ae, server, "tcp")
        if ev.sock_type == 1 and ev.ret in (0, -115):
            self.streams.on_connect(ev.pid, ev.fd, ev.cookie)
        return ae

    # streams: chunks, TLS plaintext and activity are state; a line only when a stream
    # shows something new (a layer, plaintext), and the detectors see every change

    def _stream_subject(self, ev: StreamEvent | StreamTickEvent) -> Process:
        """The stream's subject (the send's); the record may come from softirq."""
        s = self.streams.get(ev.cookie)
        p = self.table.procs.get(s.pid if s is not None else ev.owner_pid)
        if p is None:
            return self.table.process_for(ev)
        if ev.pid != p.pid:
            ev.pid, ev.tid, ev.tagset_id, ev.tag_origin = p.pid, p.pid, p.tagset_id, p.tag_origin
        return p

    def _on_stream(self, ev: StreamEvent) -> AttributedEvent | None:
        view = self.streams.on_chunk(ev)
        if view is None:
            return None
        ae = self.attributor.attribute(ev, self._stream_subject(ev))
        ae.stream = view
        ae.quiet = not self.streams.announce(view)
        return ae

    def _on_tls(self, ev: TlsDataEvent | TlsBindEvent) -> AttributedEvent | None:
        view: StreamView | None
        if isinstance(ev, TlsDataEvent):
            view = self.streams.on_tls_data(ev)
        else:
            view = self.streams.on_tls_bind(ev)
        if view is None:
            return None
        ae = self.attributor.attribute(ev, self.table.process_for(ev))
        ae.stream = view
        ae.quiet = not self.streams.announce(view)
        return ae

    def _on_stream_tick(self, ev: StreamTickEvent) -> AttributedEvent:
        ae = self.attributor.attribute(ev, self._stream_subject(ev))
        ae.quiet = True  # read by the behaviour rule; no line
        return ae

    def _streams_step(self) -> None:
        """Once a second: openings past their window go; TLS libraries new processes map."""
        self.streams.expire(boottime_ns())
        for lib in self.tls_libs.tick():
            self._tls_library_line(lib)

    def _tls_library_line(self, lib: Library) -> None:
        doc = self._base("rlguard.sensor", "tls_library_attached")
        doc["rlguard"] = {
            "tls_library": {
                "path": lib.path,
                "kind": lib.kind,
                "symbols": list(lib.symbols),
                "found_by": lib.found_by,
            }
        }
        self.sink.write(doc)

    def _on_record(self, ev: Event) -> AttributedEvent:
        return self.attributor.attribute(ev, self.table.process_for(ev))

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

    def _gpu_step(self, scan: ScanResult | None) -> None:
        """Reconcile the GPU holder table with a scan; episode-end checks; holder lines."""
        events = self.gpu.reconcile(scan) if scan is not None else []
        for ev in events:
            self.handle(ev)
        snapshot = self.gpu.snapshot_due()
        if snapshot is not None:
            self.sink.write(self.renderer.render_gpu_holders(snapshot))
        findings = self.gpu_rules.tick()
        if findings:
            self._write_findings(findings)

    def _flush_folds(self, final: bool = False) -> None:
        """Summary lines for the connects idle kernel folds still hold."""
        for ev, n in self.folds.flush(self.sensor, boottime_ns(), final):
            p = self.table.process_for(ev)
            ev.tag_origin = p.tag_origin or ev.tag_origin
            ae = self.attributor.attribute(ev, p)
            ae.connect_count, ae.summary = n, True
            self.sink.write(self.renderer.render(ae))
            if self.ledger is not None:
                self.ledger.on_event(ae, self.clock.wall_ns(ev.ts_ns))

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
        if self.ledger is not None:
            self.ledger.on_record_error(self.clock.now_wall_ns())

    # -- metrics -------------------------------------------------------------------------

    def _base(self, dataset: str, action: str) -> dict[str, Any]:
        return self.renderer.base(dataset, action)

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
            if self.ledger is not None:
                self.ledger.on_drops(sum(delta.values()), self.clock.now_wall_ns())
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
                "lines_written": self.sink.lines_written,
                "lines_lost": self.sink.lines_lost,
                "pending": self.sink.pending,
                "error": self.sink.last_error,
            },
            "process_table": {
                "size": len(self.table),
                "tagsets": len(self.table.tagsets),
                "exited": self.table.exited,
                "evicted": self.table.evicted,
                "exited_evicted": self.table.exited_evicted,
            },
            "alerts": dict(self.engine.alerts_by_rule),
            # stream openings: what the bounds cut and losses (never silent)
            "streams": {**self.streams.stats(), "tls_libraries": self.tls_libs.stats()},
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


def _socket_settings(reg: RegistryConfig) -> tuple[object, ...]:
    """The [registry] settings that only a restart applies (trust applies at a reload)."""
    return (reg.socket, reg.group, reg.max_line_bytes, reg.max_clients, reg.retain_s)
