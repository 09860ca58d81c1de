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
import re
import socket
import stat
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from monitor.config import DnsTunnelConfig, load_config
from monitor.detectors import behaviour, context, dnstunnel, intent, stratum, streams, tunnel
from monitor.detectors.fingerprints import Fingerprint, load_fingerprints
from monitor.detectors.iocs import Iocs
from monitor.detectors.rules import SEVERITY_RANK, Rule, RuleSet, load_rules
from monitor.detectors.signals import Confidence, Signal, bounded
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
MAX_INTENTS = 4096  # reverse-shell intents held for confirmation by RLG-SHL-001
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
    via: str | None = None  # an SSH session carried by ProxyJump/ProxyCommand
    unknown_client: bool = False  # an SSH session a library (not a known client) opened


@dataclass(slots=True)
class ProcState:
    fds: dict[int, Conn] = field(default_factory=dict)
    ssh_sessions: list[Conn] = field(default_factory=list)
    # pool-port connects: context for this process's mining alerts
    pool_ports: list[Signal] = field(default_factory=list)
    # autossh's own -M monitor loop: connects back to these loopback ports are its echo
    loop_ports: set[int] = field(default_factory=set)
    # fds whose socket this process connected itself, or copied from such an fd or saw
    # live in /proc: an inherited fd number may be stale (close() is not seen)
    own_fds: set[int] = field(default_factory=set)
    # run from /dev/shm, /tmp, a memfd or a deleted file (context.exe_location)
    where: Signal | None = None
    # outside TCP connects of such a process, checked for RLG-TUN-007 by tick()
    held: list[tuple[int, str, int, AttributedEvent]] = field(default_factory=list)
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


# Another process's stdin, pipes and process substitutions: reading them would steal the
# data from the process (and could block), so they are never read.
_NOT_OURS = re.compile(r"/dev/(stdin|stdout|stderr|fd/\d+|tty)|/proc/(self|\d+)/fd/\d+|-")


def read_process_file(pid: int, path: str) -> str | None:
    """Read a regular file as process `pid` would see it (its root and cwd), bounded.

    Opened non-blocking and read only when it is a regular file: a FIFO named as a config
    file must never block the monitor.
    """
    if not path or _NOT_OURS.fullmatch(path):
        return None
    base = f"/proc/{pid}/root"
    if not posixpath.isabs(path):
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            return None
        path = posixpath.join(cwd, path)
    try:
        fd = os.open(base + path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        chunks: list[bytes] = []
        left = CONFIG_READ_LIMIT
        while left > 0:
            chunk = os.read(fd, left)
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks).decode("utf-8", "replace")
    except OSError:
        return None
    finally:
        os.close(fd)


def fd_is_socket(pid: int, fd: int) -> bool | None:
    """Is fd `fd` of pid a socket now?  None when /proc cannot tell (gone)."""
    try:
        return os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
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
        dns_tunnel: DnsTunnelConfig | None = None,
        fingerprints: dict[str, Fingerprint] | None = None,
    ) -> None:
        self.iocs = iocs
        self.dns_tunnel = dnstunnel.DnsTunnelTracker(dns_tunnel or load_config(None).dns_tunnel)
        self.rules = rules if rules is not None else load_rules()
        self.fingerprints = load_fingerprints() if fingerprints is None else fingerprints
        self.read_file = read_file
        # confirm reverse-shell fds in /proc (off in pure unit tests)
        self.verify_fds = read_file is read_process_file
        self.state: dict[str, ProcState] = {}
        self._alerted: OrderedDict[tuple[str, str], tuple[str, list[Signal]]] = OrderedDict()
        # entity_id -> the reverse-shell intent raised on it, confirmed by RLG-SHL-001 later
        self._intents: OrderedDict[str, AttributedEvent] = OrderedDict()
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
            found = self._dns(p, ae)
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
            self.state[child.entity_id] = ProcState(
                dict(pst.fds),
                list(pst.ssh_sessions),
                loop_ports=set(pst.loop_ports),
                where=pst.where,
            )
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
        where = context.exe_location(self._exe_path(ev))
        if where is not None or p.entity_id in self.state:
            st = self._st(p)
            st.where, st.held = where, []

        # reverse tunnels on the command line (and in the ssh config it reads)
        sigs: list[Signal] = []
        if base == "ssh" or name == "ssh":
            sigs += self._ssh_exec(ev, p, parent, argv)
        elif base == "autossh" or name == "autossh":
            ssh_argv = tunnel.autossh_ssh_argv(argv)
            sigs += tunnel.autossh_signals(argv, self._ssh_config(ev, ssh_argv))
        elif base == "plink" or name == "plink":
            sigs += tunnel.plink_signals(argv, self._putty_session(ev, argv))
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

        # reverse-shell intent on the command line: raised whether or not it connects
        out += self._shell_intent(argv, exe, p, ae)

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
                out += self._shell(p, ae, [sig], {"connect_back": _dest(conn)})
        return out

    def _exe_path(self, ev: ExecEvent) -> str:
        """The executable as the kernel resolved it: /proc/PID/exe for relative paths and
        fexecve (/dev/fd/N: a memfd), else the exec filename."""
        path = ev.filename
        if self.verify_fds and (
            not path.startswith("/") or path.startswith(("/dev/fd/", "/proc/"))
        ):
            try:
                return os.readlink(f"/proc/{ev.pid}/exe")
            except OSError:
                return path
        return posixpath.normpath(path) if path.startswith("/") else path

    def _shell_intent(
        self, argv: list[str], exe: str, p: Process, ae: AttributedEvent
    ) -> list[Finding]:
        if p.entity_id in self._intents:
            return []  # one intent per process: an exec'd one-liner is read once
        found = intent.exec_intent(argv, exe, self.iocs.shells)
        if not found.signals:
            return []
        self._intents[p.entity_id] = ae
        if len(self._intents) > MAX_INTENTS:
            self._intents.popitem(last=False)
        extra = {"connect_back": found.target.as_dict()} if found.target else {}
        return self._finding(intent.RULE_SHELL_INTENT, p.entity_id, found.signals, ae, extra)

    def _shell(
        self,
        p: Process,
        ae: AttributedEvent,
        sigs: list[Signal],
        extra: dict[str, Any],
        subject: str | None = None,
    ) -> list[Finding]:
        """RLG-SHL-001, and the confirmation of an intent raised on p or an ancestor."""
        out = self._finding(tunnel.RULE_REVERSE_SHELL, subject or p.entity_id, sigs, ae, extra)
        for q in (p, *ae.lineage):
            origin = self._intents.get(q.entity_id)
            if origin is None:
                continue
            sig = Signal(
                "behaviour",
                "intent.confirmed",
                bounded(f"RLG-SHL-001 on {p.name} ({p.pid}): {sigs[0].detail}"),
                "high",
            )
            out += self._finding(intent.RULE_SHELL_INTENT, q.entity_id, [sig], origin, extra)
            break
        return out

    def _ssh_exec(
        self, ev: ExecEvent, p: Process, parent: Process | None, argv: list[str]
    ) -> list[Signal]:
        """Reverse forwards of an ssh exec; records the session a proxy carries for it."""
        piped = tunnel.ssh_config_from_pipe(argv)
        config = None if piped is not None else self._ssh_config(ev, argv)
        sigs = tunnel.ssh_forward_specs(argv, config)
        if parent is not None and posixpath.basename(parent.executable or "") == "autossh":
            # autossh -M's own loop (-R M:127.0.0.1:M+1) is its echo, not the user's forward
            loop = {
                spec for flag, spec in tunnel.autossh_monitor_specs(parent.args) if flag == "-R"
            }
            sigs = [s for s in sigs if s.detail not in loop]
            self._st(p).loop_ports |= {int(spec.rsplit(":", 1)[1]) for spec in loop}
        proxy = tunnel.ssh_proxy(argv, config)
        if sigs and proxy is None and tunnel.ssh_to_loopback(argv, config):
            # forwards to this host itself expose nothing outside it (through a proxy the
            # jump host resolves the name: its loopback is not ours)
            sigs = [
                Signal(s.kind, s.name, bounded(s.detail + " (to this host)"), "low") for s in sigs
            ]
        if proxy is not None:
            # the session runs over the proxy's pipe: this ssh never sends a banner itself
            self._st(p).ssh_sessions.append(Conn(None, 0, "tcp", via=bounded(proxy, 120)))
        if piped is not None:
            sigs.append(piped)
        return sigs

    def _read(self, ev: ExecEvent, path: str) -> str | None:
        """A file the exec'ing process names; through its parent's root and cwd when the
        process is already gone (a blocked ssh exits before its exec is read)."""
        text = self.read_file(ev.pid, path)
        if text is None and ev.ppid:
            text = self.read_file(ev.ppid, path)
        return text

    def _putty_session(self, ev: ExecEvent, argv: list[str]) -> str | None:
        name = tunnel.plink_session(argv)
        if not name:
            return None
        try:
            home = pwd.getpwuid(ev.uid).pw_dir
        except KeyError:
            return None
        # PuTTY's unix storage: ~/.putty/sessions/<name, %-escaped>
        escaped = urllib.parse.quote(name, safe="-_.")
        return self._read(ev, posixpath.join(home, ".putty", "sessions", escaped))

    def _ssh_config(self, ev: ExecEvent, argv: list[str]) -> str | None:
        """The ssh config text the process reads: -F file, else user + system config."""
        path = tunnel.ssh_config_path(argv)
        if path == "none":
            return None  # `-F none`: ssh reads no config at all
        if path:
            return self._read(ev, path)
        parts = []
        try:
            home = pwd.getpwuid(ev.uid).pw_dir
            user_cfg = self._read(ev, posixpath.join(home, ".ssh", "config"))
            if user_cfg:
                parts.append(user_cfg)
        except KeyError:
            pass
        system = self._read(ev, "/etc/ssh/ssh_config")
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
        if self.verify_fds:
            live = stdio_is_one_socket(p.pid)
            if live is False:
                return None
            if live is None and not {0, 1} <= st.own_fds:
                # the process is gone and the mapping was inherited: with close() unseen, a
                # parent's reused fd number could be stale, so only its own dup2 counts
                return None
        return c0

    def _connect(self, ev: ConnectEvent, p: Process, ae: AttributedEvent) -> list[Finding]:
        out: list[Finding] = []
        ok = ev.ret in (0, -115, 1)  # success, in progress, or seen below the syscall
        if not ok:
            return self._refused(ev, p, ae)
        transport = ev.transport
        conn = Conn(ev.daddr, ev.dport, transport, ev.cookie)
        st = self._st(p)
        if ev.fd >= 0:
            st.fds[ev.fd] = conn
            st.own_fds.add(ev.fd)
        if transport != "tcp":
            return out
        # an SSH client opening connections into the host: serving a -R forward
        if (
            st.ssh_sessions
            and self.iocs.is_internal(ev.daddr)
            and p.name != "sshd"
            and not (ev.dport in st.loop_ports and _loopback(ev.daddr))
        ):
            sess = st.ssh_sessions[-1]
            held = sess.via or f"{sess.daddr}:{sess.dport}"
            sig = Signal(
                "behaviour",
                "ssh.connect_back",
                bounded(f"holds SSH session to {held}; connected to {ev.daddr}:{ev.dport}"),
                "high",
            )
            extra = {"ssh_session": _dest(sess), "connect_back": _dest(conn)}
            out += self._finding(tunnel.RULE_SSH_CONNECT_BACK, p.entity_id, [sig], ae, extra)
            if sess.unknown_client:
                # a library's SSH session (low on its own) that now serves a remote forward
                up = Signal(
                    "behaviour",
                    "ssh.unknown_client_forward",
                    bounded(f"{p.name}'s SSH session to {held} serves a remote forward"),
                    "high",
                )
                out += self._finding(tunnel.RULE_SSH_PROTOCOL, p.entity_id, [up], ae, extra)
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
            if st.where is not None and ev.daddr:
                sig3 = context.pool_port_combination(st.where, ev.daddr, ev.dport)
                subject = f"{p.entity_id}/{ev.daddr}:{ev.dport}"
                out += self._finding(context.RULE_VOLATILE_POOL, subject, [sig3], ae)
        elif (
            st.where is not None
            and ev.daddr
            and len(st.held) < 8
            and not self.iocs.is_internal(ev.daddr)
            and not self.iocs.is_allowed_destination(ev.daddr)
        ):
            st.held.append((ev.ts_ns, ev.daddr, ev.dport, ae))
        return out

    def _refused(self, ev: ConnectEvent, p: Process, ae: AttributedEvent) -> list[Finding]:
        """A connect the network refused is still an attempt: a program from a volatile
        location trying a pool port (a firewall that rejects does not hide the miner)."""
        st = self.state.get(p.entity_id)
        if (
            st is None
            or st.where is None
            or ev.ret not in _ATTEMPT_ERRORS
            or ev.transport != "tcp"
            or not ev.daddr
            or stratum.pool_port_signal(ev.dport, self.iocs) is None
            or self.iocs.is_internal(ev.daddr)
        ):
            return []
        sig = context.pool_port_combination(st.where, ev.daddr, ev.dport)
        sig = Signal(sig.kind, sig.name, bounded(f"{sig.detail} (refused)"), sig.confidence)
        return self._finding(
            context.RULE_VOLATILE_POOL, f"{p.entity_id}/{ev.daddr}:{ev.dport}", [sig], ae
        )

    def tick(self, now_ns: int) -> list[Finding]:
        """Periodic checks (the collector calls this about once a second): outside TCP
        connections that programs from volatile locations still hold after long_lived_s."""
        out: list[Finding] = []
        limit = int(self.iocs.long_lived_s * 1e9)
        for st in self.state.values():
            if not st.held or now_ns - st.held[0][0] < limit:
                continue
            due = [h for h in st.held if now_ns - h[0] >= limit]
            st.held = [h for h in st.held if now_ns - h[0] < limit]
            for ts, daddr, dport, ae in due:
                p = ae.process
                if p is None or st.where is None:
                    continue
                if self.verify_fds and holds_established(p.pid, daddr, dport) is not True:
                    continue
                sig = context.long_lived_combination(st.where, daddr, dport, (now_ns - ts) / 1e9)
                subject = f"{p.entity_id}/{daddr}:{dport}"
                out += self._finding(context.RULE_VOLATILE_LONG_LIVED, subject, [sig], ae)
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
        if ae.dns is not None and isinstance(ae.event, SendEvent):
            return out + self._dns(p, ae)  # DNS over TCP: judged as DNS, like UDP
        # a socket another process connected: the pair is the subject, so that neither an
        # earlier alert of the sender nor of the owner hides this stream's
        owner = ae.rl.socket_owner
        pair = p.entity_id if owner is None else f"{p.entity_id}+{owner.entity_id}"
        for level, banner in verdict.ssh_banners:
            names = {p.name, posixpath.basename(p.executable or "")}
            unknown = not names & self.iocs.ssh_clients
            if view.cookie not in st.ssh_cookies or not view.cookie:
                if view.cookie:
                    st.ssh_cookies.add(view.cookie)
                eff = view.effective
                st.ssh_sessions.append(
                    Conn(eff.host, eff.port or 0, "tcp", view.cookie, None, unknown)
                )
            out += self._ssh_protocol(ae, p, banner, view, streams.where(level), pair, unknown)
        for f in verdict.findings:
            extra = dict(f.extra)
            if view.layers or view.tls_library:
                extra["stream"] = view.summary()
            if f.rule == tunnel.RULE_REVERSE_SHELL:  # confirms an intent read at exec
                out += self._shell(p, ae, list(f.signals), extra, pair + f.subject)
            else:
                out += self._finding(f.rule, pair + f.subject, list(f.signals), ae, extra)
        return out

    def _ssh_protocol(
        self,
        ae: AttributedEvent,
        p: Process,
        banner: str,
        view: StreamView,
        path: str,
        subject: str,
        unknown: bool,
    ) -> list[Finding]:
        eff = view.effective
        port = eff.port or view.dport
        via = f" [{path}]" if path else ""
        sigs: list[Signal] = []
        if unknown:
            # a library (paramiko for Ansible, libssh2 for git) to an SSH port is ordinary:
            # low until a connect-back shows a remote forward (ssh.unknown_client_forward)
            conf: Confidence = "low" if port in SSH_PORTS else "high"
            sigs.append(
                Signal(
                    "banner",
                    "ssh.unknown_client",
                    bounded(f"{p.name} sent '{banner}'{via}"),
                    conf,
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
        return self._finding(tunnel.RULE_SSH_PROTOCOL, subject, sigs, ae, extra)

    def _dns(self, p: Process, ae: AttributedEvent) -> list[Finding]:
        """A DNS query (UDP, or the opening of a TCP stream to port 53)."""
        q = ae.dns
        if q is None or q.is_response:
            return []
        out: list[Finding] = []
        for rule_id, sig in dnstunnel.name_list_signals(q.name, self.iocs):
            if rule_id == stratum.RULE_POOL_DNS:
                self._st(p).pool_lookup = True  # context for the Noise heuristic
            out += self._finding(rule_id, f"{p.entity_id}/{q.name}", [sig], ae)
        # tunnelling is judged per episode (per process outside episodes)
        key = f"episode:{ae.rl.episode_id}" if ae.rl.episode_id else f"process:{p.entity_id}"
        got = self.dns_tunnel.observe(key, q.name, q.qtype_name, ae.event.ts_ns)
        if got is not None:
            reg, sigs = got
            extra = {"dns_tunnel": {"registered_domain": reg}}
            out += self._finding(dnstunnel.RULE_DNS_TUNNEL, f"{key}/{reg}", sigs, ae, extra)
        return out

    def _dup(self, ev: DupEvent, p: Process, ae: AttributedEvent) -> list[Finding]:
        st = self._st(p)
        conn = st.fds.get(ev.oldfd)
        if conn is None:
            st.fds.pop(ev.newfd, None)
            st.own_fds.discard(ev.newfd)
            return []
        live = fd_is_socket(p.pid, ev.newfd) if self.verify_fds else None
        if live is False:
            # the source fd number was stale (close() is not seen): not a socket any more
            st.fds.pop(ev.oldfd, None)
            st.fds.pop(ev.newfd, None)
            st.own_fds.discard(ev.newfd)
            return []
        st.fds[ev.newfd] = conn
        if live or ev.oldfd in st.own_fds:
            st.own_fds.add(ev.newfd)
        else:
            st.own_fds.discard(ev.newfd)
        if p.name in self.iocs.shells and self._stdio_socket(p) is conn:
            sig = Signal(
                "fd",
                "shell.stdio_socket",
                bounded(f"dup{ev.oldfd}->{ev.newfd}: stdin/stdout = tcp {conn.daddr}:{conn.dport}"),
                "high",
            )
            return self._shell(p, ae, [sig], {"connect_back": _dest(conn)})
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
        st = self.state.get(p.entity_id) if p is not None else None
        if st is not None and st.where is not None and rule.category in _CONTEXT_CATEGORIES:
            # where the program runs from: context only, never raising the severity
            w = st.where
            ctx = Signal(w.kind, w.name, w.detail, "low")
            if all(s.name != ctx.name for s in signals):
                signals = list(signals) + [ctx]
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


_CONTEXT_CATEGORIES = frozenset({"mining", "tunnel", "shell"})
# ECONNREFUSED, ETIMEDOUT, EHOSTUNREACH, ENETUNREACH: the attempt was made
_ATTEMPT_ERRORS = frozenset({-111, -110, -113, -101})


def holds_established(pid: int, daddr: str, dport: int) -> bool | None:
    """Does `pid` still hold an ESTABLISHED TCP socket to daddr:dport?  None when /proc
    cannot tell (the process is gone).  Reads its fds and its namespace's socket table."""
    try:
        inodes = set()
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    except OSError:
        return None
    try:
        packed = socket.inet_pton(socket.AF_INET6 if ":" in daddr else socket.AF_INET, daddr)
    except OSError:
        return None
    tables: tuple[str, ...]
    mapped: tuple[str, ...]
    if len(packed) == 4:
        want_addr = packed[::-1].hex().upper()
        tables = ("tcp", "tcp6")
        mapped = ("0000000000000000FFFF0000" + want_addr, want_addr)
    else:
        words = [packed[i : i + 4][::-1].hex().upper() for i in range(0, 16, 4)]
        mapped = ("".join(words),)
        tables = ("tcp6",)
    want_port = f"{dport:04X}"
    for table in tables:
        try:
            with open(f"/proc/{pid}/net/{table}") as fh:
                next(fh, None)
                for line in fh:
                    f = line.split()
                    if len(f) < 10 or f[3] != "01":  # 01: ESTABLISHED
                        continue
                    addr, _, port = f[2].partition(":")
                    if port == want_port and addr in mapped and f[9] in inodes:
                        return True
        except OSError:
            continue
    return False


def _loopback(ip: str | None) -> bool:
    return ip is not None and (ip.startswith("127.") or ip in ("::1", "::ffff:127.0.0.1"))


def single_segment_view(ev: SendEvent) -> StreamView:
    """The view of one first segment on its own (no tracker: unit tests, replays)."""
    lv, layers = unwrap_levels(ev.data)
    return StreamView(ev.cookie, ev.daddr, ev.dport, lv, layers, sent=len(ev.data))


def _dest(c: Conn) -> dict[str, Any]:
    return {"ip": c.daddr, "port": c.dport, "transport": c.transport}
