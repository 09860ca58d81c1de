"""The detection engine: per-process state around the pure detectors.

The pure functions in stratum.py and tunnel.py judge one argv, one payload or
one DNS name.  Behaviour needs memory: which process holds an SSH session,
which fd is which socket, what was already alerted.  This module keeps that
state, reads the few files a rule needs (ssh and miner configs, bounded), and
turns signals into alert documents: one per (rule, subject), with a follow-up
only when new evidence raises the severity.
"""

from __future__ import annotations

import os
import posixpath
import pwd
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from monitor.detectors import behaviour, stratum, streams, tunnel
from monitor.detectors.fingerprints import Fingerprint, load_fingerprints
from monitor.detectors.iocs import Iocs
from monitor.detectors.rules import SEVERITY_RANK, Rule, RuleSet, load_rules
from monitor.detectors.signals import Signal, bounded
from monitor.sensor.events import (
    ConnectEvent,
    DnsEvent,
    DupEvent,
    Event,
    ExecEvent,
    ExitEvent,
    ForkEvent,
    SendEvent,
    StreamEvent,
    TlsBindEvent,
    TlsDataEvent,
)
from monitor.state.attributed import AttributedEvent
from monitor.state.process_table import Process
from monitor.streams.unwrap import levels as unwrap_levels
from monitor.streams.view import StreamView

CONFIG_READ_LIMIT = 64 * 1024
SSH_PORTS = frozenset({22, 2222})
MAX_ALERT_KEYS = 100_000
# mining rules the behaviour mark does not raise: a port alone, and the mark's own rule
SHAPE_EXEMPT = frozenset({stratum.RULE_POOL_PORT, behaviour.RULE_MINING_SHAPE})
FileReader = Callable[[int, str], "str | None"]


@dataclass(slots=True)
class Conn:
    """An outbound connection a process opened."""

    daddr: str | None
    dport: int
    transport: str | None
    cookie: int = 0


@dataclass(slots=True)
class ProcState:
    fds: dict[int, Conn] = field(default_factory=dict)
    ssh_sessions: list[Conn] = field(default_factory=list)
    # pool-port connects: context for this process's mining alerts
    pool_ports: list[Signal] = field(default_factory=list)
    pool_lookup: bool = False  # looked up a pool domain (the Noise heuristic's context)
    # weak facts from its streams (a listed TLS fingerprint), by rule category
    context: dict[str, list[Signal]] = field(default_factory=dict)
    ssh_cookies: set[int] = field(default_factory=set)  # streams recorded as SSH sessions
    # the behaviour rule's mark (RLG-MIN-006), as a medium signal in other mining alerts
    mining_shape: Signal | None = None


@dataclass(slots=True)
class Finding:
    """A rule raised on a subject, with its evidence and the event that triggered it."""

    rule: Rule
    subject: str
    signals: list[Signal]
    trigger: AttributedEvent
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def event(self) -> Event:
        return self.trigger.event

    @property
    def process(self) -> Process:
        p = self.trigger.process
        assert p is not None, "findings are raised on events with a process"
        return p

    @property
    def severity(self) -> str:
        return self.rule.severity(self.signals)


def read_process_file(pid: int, path: str) -> str | None:
    """Read a file as process `pid` would see it (its root and cwd), bounded."""
    if not path:
        return None
    base = f"/proc/{pid}/root"
    if not posixpath.isabs(path):
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            return None
        path = posixpath.join(cwd, path)
    try:
        with open(base + path, "rb") as fh:
            return fh.read(CONFIG_READ_LIMIT).decode("utf-8", "replace")
    except OSError:
        return None


def stdio_is_one_socket(pid: int) -> bool | None:
    """Are fds 0 and 1 of pid the same socket?  None when /proc can't tell (gone)."""
    try:
        a = os.readlink(f"/proc/{pid}/fd/0")
        b = os.readlink(f"/proc/{pid}/fd/1")
    except OSError:
        return None
    return a == b and a.startswith("socket:")


class DetectionEngine:
    def __init__(
        self,
        iocs: Iocs,
        rules: RuleSet | None = None,
        read_file: FileReader = read_process_file,
        fingerprints: dict[str, Fingerprint] | None = None,
    ) -> None:
        self.iocs = iocs
        self.rules = rules if rules is not None else load_rules()
        self.fingerprints = load_fingerprints() if fingerprints is None else fingerprints
        self.read_file = read_file
        # confirm reverse-shell fds in /proc (off in pure unit tests)
        self.verify_fds = read_file is read_process_file
        self.state: dict[str, ProcState] = {}
        self._alerted: OrderedDict[tuple[str, str], tuple[str, list[Signal]]] = OrderedDict()
        self.alerts_by_rule: dict[str, int] = {}

    # -- state ---------------------------------------------------------------------

    def _st(self, p: Process) -> ProcState:
        st = self.state.get(p.entity_id)
        if st is None:
            st = self.state[p.entity_id] = ProcState()
        return st

    def socket_for_fd(self, p: Process, fd: int) -> Conn | None:
        st = self.state.get(p.entity_id)
        return st.fds.get(fd) if st else None

    # -- entry point -----------------------------------------------------------------

    def observe(self, ae: AttributedEvent) -> list[Finding]:
        """Update state with one attributed event; returns new or escalated findings."""
        ev, p = ae.event, ae.process
        if p is None:
            return []
        if isinstance(ev, ForkEvent):
            return self._fork(ev, p, ae.parent)
        if isinstance(ev, ExitEvent):
            self.state.pop(p.entity_id, None)
            return []
        if isinstance(ev, ExecEvent):
            found = self._exec(ev, p, ae, ae.parent)
        elif isinstance(ev, ConnectEvent):
            found = self._connect(ev, p, ae)
        elif isinstance(ev, SendEvent) or (
            isinstance(ev, (StreamEvent, TlsDataEvent, TlsBindEvent)) and ae.stream is not None
        ):
            found = self._stream(ae, p)
        elif isinstance(ev, DnsEvent):
            found = self._dns(ev, p, ae)
        elif isinstance(ev, DupEvent):
            found = self._dup(ev, p, ae)
        else:
            return []
        if found and self.iocs.is_allowed_process(p.executable):
            return []  # state was kept; allowlisted programs never alert
        return found

    # -- per event -----------------------------------------------------------------

    def _fork(self, ev: ForkEvent, child: Process, parent: Process | None) -> list[Finding]:
        if parent is None:
            return []
        pst = self.state.get(parent.entity_id)
        if pst is not None:
            # the child inherits the fd table and the SSH sessions (ssh -f forks)
            self.state[child.entity_id] = ProcState(dict(pst.fds), list(pst.ssh_sessions))
        return []

    def _exec(
        self, ev: ExecEvent, p: Process, ae: AttributedEvent, parent: Process | None
    ) -> list[Finding]:
        out: list[Finding] = []
        argv = ev.argv
        exe = ev.filename
        if self.iocs.is_allowed_process(exe):
            return out
        name = posixpath.basename(argv[0]) if argv else posixpath.basename(exe)
        base = posixpath.basename(exe)

        # reverse tunnels on the command line (and in the ssh config it reads)
        sigs: list[Signal] = []
        if base == "ssh" or name == "ssh":
            sigs += tunnel.ssh_forward_specs(argv, self._ssh_config(ev, argv))
        elif base == "autossh" or name == "autossh":
            ssh_argv = tunnel.autossh_ssh_argv(argv)
            sigs += tunnel.autossh_signals(argv, self._ssh_config(ev, ssh_argv))
        if sigs:
            out += self._finding(tunnel.RULE_SSH_FORWARD, p.entity_id, sigs, ae)
        tool = tunnel.tunnel_tool_signals(argv, exe, self.iocs)
        if tool:
            out += self._finding(tunnel.RULE_TUNNEL_TOOL, p.entity_id, tool, ae)

        # mining
        cfg_path = stratum.miner_config_path(argv)
        cfg_text = self.read_file(ev.pid, cfg_path) if cfg_path else None
        mining = stratum.miner_argv_signals(argv, exe, self.iocs, cfg_text)
        if mining:
            out += self._finding(stratum.RULE_MINER_ARGV, p.entity_id, mining, ae)

        # reverse shell: a shell started with a socket on stdin/stdout (nc -e,
        # socat exec:, bash -i >& /dev/tcp), or under a relay holding one (pty.spawn)
        if base in self.iocs.shells or name in self.iocs.shells:
            conn = self._stdio_socket(p)
            how = "the shell's own stdin/stdout"
            if conn is None and parent is not None:
                conn = self._stdio_socket(parent)
                how = f"its parent {parent.name} ({parent.pid}) relays stdin/stdout"
            if conn is not None:
                sig = Signal(
                    "fd",
                    "shell.stdio_socket",
                    bounded(f"{how} = tcp {conn.daddr}:{conn.dport}"),
                    "high",
                )
                back = {"connect_back": _dest(conn)}
                out += self._finding(tunnel.RULE_REVERSE_SHELL, p.entity_id, [sig], ae, back)
        return out

    def _ssh_config(self, ev: ExecEvent, argv: list[str]) -> str | None:
        """The ssh config text the process reads: -F file, else user + system config."""
        path = tunnel.ssh_config_path(argv)
        if path == "none":
            return None  # `-F none`: ssh reads no config at all
        if path:
            return self.read_file(ev.pid, path)
        parts = []
        try:
            home = pwd.getpwuid(ev.uid).pw_dir
            user_cfg = self.read_file(ev.pid, posixpath.join(home, ".ssh", "config"))
            if user_cfg:
                parts.append(user_cfg)
        except KeyError:
            pass
        system = self.read_file(ev.pid, "/etc/ssh/ssh_config")
        if system:
            parts.append(system)
        return "\n".join(parts) if parts else None

    def _stdio_socket(self, p: Process) -> Conn | None:
        """The outside TCP connection on p's stdin and stdout, if the model says so.

        The fd model sees connect and dup2/dup3 but not close(), so a stale fd
        number could match; when the process still exists, /proc confirms that
        fds 0 and 1 really are one socket.
        """
        st = self.state.get(p.entity_id)
        if st is None:
            return None
        c0, c1 = st.fds.get(0), st.fds.get(1)
        if c0 is None or c0 is not c1 or c0.transport != "tcp":
            return None
        if self.iocs.is_internal(c0.daddr) or self.iocs.is_allowed_destination(c0.daddr):
            return None
        if self.verify_fds and stdio_is_one_socket(p.pid) is False:
            return None
        return c0

    def _connect(self, ev: ConnectEvent, p: Process, ae: AttributedEvent) -> list[Finding]:
        out: list[Finding] = []
        ok = ev.ret in (0, -115, 1)  # success, in progress, or seen below the syscall
        if not ok:
            return out
        transport = ev.transport
        conn = Conn(ev.daddr, ev.dport, transport, ev.cookie)
        st = self._st(p)
        if ev.fd >= 0:
            st.fds[ev.fd] = conn
        if transport != "tcp":
            return out
        # an SSH client opening connections into the host: serving a -R forward
        if st.ssh_sessions and self.iocs.is_internal(ev.daddr) and p.name != "sshd":
            sess = st.ssh_sessions[-1]
            sig = Signal(
                "behaviour",
                "ssh.connect_back",
                bounded(
                    f"holds SSH session to {sess.daddr}:{sess.dport}; "
                    f"connected to {ev.daddr}:{ev.dport}"
                ),
                "high",
            )
            out += self._finding(
                tunnel.RULE_SSH_CONNECT_BACK,
                p.entity_id,
                [sig],
                ae,
                {"ssh_session": _dest(sess), "connect_back": _dest(conn)},
            )
        sig2 = stratum.pool_port_signal(ev.dport, self.iocs)
        if (
            sig2 is not None
            and not self.iocs.is_internal(ev.daddr)
            and not self.iocs.is_allowed_destination(ev.daddr)
        ):
            if len(st.pool_ports) < 8:
                st.pool_ports.append(
                    Signal(sig2.kind, sig2.name, bounded(f"{ev.daddr}:{ev.dport}"), "low")
                )
            if self.iocs.pool_port_connects == "alert":
                subject = f"{p.entity_id}/{ev.daddr}:{ev.dport}"
                out += self._finding(stratum.RULE_POOL_PORT, subject, [sig2], ae)
        return out

    def _stream(self, ae: AttributedEvent, p: Process) -> list[Finding]:
        """A stream's opening (or its first segment) at every depth it unwraps to."""
        view = ae.stream
        first_len = -1
        if isinstance(ae.event, SendEvent):
            first_len = ae.event.payload_len
            if view is None:  # built without a tracker (unit tests): the segment alone
                view = single_segment_view(ae.event)
        if view is None:
            return []
        proxied = view.proxied
        host = view.effective.host if proxied else view.daddr
        if self.iocs.is_allowed_destination(host):
            return []
        st = self._st(p)
        verdict = streams.judge(
            view, self.iocs, self.fingerprints, pool_lookup=st.pool_lookup, first_len=first_len
        )
        for sig in verdict.context:
            cat = "mining" if sig.name.endswith(".mining") else "tunnel"
            bucket = st.context.setdefault(cat, [])
            if sig not in bucket and len(bucket) < 8:
                bucket.append(sig)
        out: list[Finding] = []
        for level, banner in verdict.ssh_banners:
            if view.cookie not in st.ssh_cookies or not view.cookie:
                if view.cookie:
                    st.ssh_cookies.add(view.cookie)
                eff = view.effective
                st.ssh_sessions.append(Conn(eff.host, eff.port or 0, "tcp", view.cookie))
            out += self._ssh_protocol(ae, p, banner, view, streams.where(level))
        for f in verdict.findings:
            extra = dict(f.extra)
            if view.layers or view.tls_library:
                extra["stream"] = view.summary()
            out += self._finding(f.rule, p.entity_id + f.subject, list(f.signals), ae, extra)
        return out

    def _ssh_protocol(
        self, ae: AttributedEvent, p: Process, banner: str, view: StreamView, path: str
    ) -> list[Finding]:
        names = {p.name, posixpath.basename(p.executable or "")}
        known = bool(names & self.iocs.ssh_clients)
        eff = view.effective
        port = eff.port or view.dport
        via = f" [{path}]" if path else ""
        sigs: list[Signal] = []
        if not known:
            sigs.append(
                Signal(
                    "banner",
                    "ssh.unknown_client",
                    bounded(f"{p.name} sent '{banner}'{via}"),
                    "high",
                )
            )
        if port not in SSH_PORTS:
            sigs.append(
                Signal(
                    "banner",
                    "ssh.non_ssh_port",
                    bounded(f"SSH to port {port}: '{banner}'{via}"),
                    "medium",
                )
            )
        if (
            self.iocs.ssh_destinations
            and not self.iocs.is_ssh_destination(eff.host)
            and not self.iocs.is_internal(eff.host)
        ):
            sigs.append(
                Signal(
                    "banner",
                    "ssh.outside_allowlist",
                    bounded(f"SSH to {eff.host}, not an allowed SSH host{via}"),
                    "medium",
                )
            )
        if path and path != "tls plaintext":
            sigs.append(
                Signal("banner", "ssh.tunnelled", bounded(f"SSH carried inside {path}"), "medium")
            )
        if not sigs:
            return []
        extra: dict[str, Any] = {
            "ssh_banner": banner,
            "ssh_server": {"ip": eff.host, "port": port},
        }
        if view.layers:
            extra["stream"] = view.summary()
        return self._finding(tunnel.RULE_SSH_PROTOCOL, p.entity_id, sigs, ae, extra)

    def _dns(self, ev: DnsEvent, p: Process, ae: AttributedEvent) -> list[Finding]:
        q = ae.dns
        if q is None or q.is_response:
            return []
        out: list[Finding] = []
        sig = tunnel.tunnel_dns_signal(q.name, self.iocs)
        if sig is not None:
            out += self._finding(tunnel.RULE_TUNNEL_DNS, f"{p.entity_id}/{q.name}", [sig], ae)
        sig2 = stratum.pool_dns_signal(q.name, self.iocs)
        if sig2 is not None:
            self._st(p).pool_lookup = True
            out += self._finding(stratum.RULE_POOL_DNS, f"{p.entity_id}/{q.name}", [sig2], ae)
        return out

    def _dup(self, ev: DupEvent, p: Process, ae: AttributedEvent) -> list[Finding]:
        st = self._st(p)
        conn = st.fds.get(ev.oldfd)
        if conn is None:
            st.fds.pop(ev.newfd, None)
            return []
        st.fds[ev.newfd] = conn
        if p.name in self.iocs.shells and self._stdio_socket(p) is conn:
            sig = Signal(
                "fd",
                "shell.stdio_socket",
                bounded(f"dup{ev.oldfd}->{ev.newfd}: stdin/stdout = tcp {conn.daddr}:{conn.dport}"),
                "high",
            )
            back = {"connect_back": _dest(conn)}
            return self._finding(tunnel.RULE_REVERSE_SHELL, p.entity_id, [sig], ae, back)
        return []

    # -- findings ------------------------------------------------------------------

    def _finding(
        self,
        rule_id: str,
        subject: str,
        signals: list[Signal],
        ae: AttributedEvent,
        extra: dict[str, Any] | None = None,
    ) -> list[Finding]:
        """A finding unless the same (rule, subject) was already reported at least as severe.

        The one place findings are made: a disabled rule makes none, and one below the
        [rules] min_severity is remembered (its evidence counts later) but not raised.
        """
        rule = self.rules[rule_id]
        if not rule.enabled:
            return []
        p = ae.process
        st = self.state.get(p.entity_id) if p is not None else None
        if rule.category == "mining" and rule_id != stratum.RULE_POOL_PORT and st is not None:
            if st.pool_ports:
                # context only: a low signal never raises the severity on its own
                signals = list(signals) + [s for s in st.pool_ports if s not in signals]
        if st is not None and st.mining_shape is not None and rule_id not in SHAPE_EXEMPT:
            if rule.category == "mining" and st.mining_shape not in signals:
                signals = list(signals) + [st.mining_shape]
        if st is not None and st.context.get(rule.category):
            signals = list(signals) + [s for s in st.context[rule.category] if s not in signals]
        key = (rule_id, subject)
        prev = self._alerted.get(key)
        if prev is not None:
            # a follow-up only when the new evidence raises the severity: no flood
            prev_sev, seen = prev
            known = {(s.name, s.detail) for s in seen}
            merged = seen + [s for s in signals if (s.name, s.detail) not in known]
            sev = rule.severity(merged)
            if SEVERITY_RANK[sev] <= SEVERITY_RANK[prev_sev]:
                if len(merged) > len(seen):
                    self._alerted[key] = (prev_sev, merged)
                return []
            signals = merged
        if len(self._alerted) >= MAX_ALERT_KEYS:
            self._alerted.popitem(last=False)
        sev = rule.severity(signals)
        self._alerted[key] = (sev, list(signals))
        if not self.rules.raises(sev):
            return []
        self.alerts_by_rule[rule_id] = self.alerts_by_rule.get(rule_id, 0) + 1
        f = Finding(rule, subject, list(signals), ae, dict(extra or {}))
        if prev is not None and self.rules.raises(prev[0]):  # an alert was written before
            f.extra["follow_up"] = True
            f.extra["previous_severity"] = prev[0]
        return [f]

    def mark_mining_shape(self, p: Process, sig: Signal, ae: AttributedEvent) -> list[Finding]:
        """The behaviour rule found a mining-shaped connection: every mining alert of the
        process (past and future) carries it as a medium signal, which raises them."""
        st = self._st(p)
        st.mining_shape = Signal(sig.kind, sig.name, sig.detail, "medium")
        out: list[Finding] = []
        for rule_id, subject in list(self._alerted):
            rule = self.rules.get(rule_id)
            if rule is None or rule.category != "mining" or rule_id in SHAPE_EXEMPT:
                continue
            if subject == p.entity_id or subject.startswith(p.entity_id + "/"):
                out += self._finding(rule_id, subject, [st.mining_shape], ae)
        return out

    # findings from outside the engine (attribution, monitor/state/gpu.py), same de-duplication:
    # one per (rule, subject), again only when more severe
    report = _finding


def single_segment_view(ev: SendEvent) -> StreamView:
    """The view of one first segment on its own (no tracker: unit tests, replays)."""
    lv, layers = unwrap_levels(ev.data)
    return StreamView(ev.cookie, ev.daddr, ev.dport, lv, layers, sent=len(ev.data))


def _dest(c: Conn) -> dict[str, Any]:
    return {"ip": c.daddr, "port": c.dport, "transport": c.transport}
