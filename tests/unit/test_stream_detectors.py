"""Detectors over stream views, and the engine around them (no kernel)."""

from __future__ import annotations

import os

import pytest

from monitor.config import load_config
from monitor.detectors import stratum
from monitor.detectors.engine import DetectionEngine
from monitor.detectors.fingerprints import Fingerprint, load_fingerprints
from monitor.detectors.iocs import build_iocs
from monitor.detectors.streams import judge
from monitor.sensor.events import ExecEvent, SendEvent
from monitor.state.process_table import ProcessTable
from monitor.streams.tracker import StreamTracker
from monitor.streams.unwrap import levels
from monitor.streams.view import StreamView
from tests.support.events import attributed, hdr
from tests.unit.test_stream_parsers import UPGRADE, python_client_hello, ws_frame

pytestmark = pytest.mark.unit

LOGIN = b'{"id":1,"method":"mining.subscribe","params":["x"]}\n'


@pytest.fixture
def iocs():
    cfg = load_config(None)
    return build_iocs(cfg.detectors, cfg.allowlist)


def view(data: bytes, reply: bytes = b"", dport: int = 3333) -> StreamView:
    lv, layers = levels(data, reply)
    return StreamView(7, "198.51.100.2", dport, lv, layers, sent=len(data))


def rules_of(v: StreamView, iocs, **kw) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for f in judge(v, iocs, load_fingerprints(), **kw).findings:
        out.setdefault(f.rule, []).extend(s.name for s in f.signals)
    return out


def sv2_frame(protocol: int = 0, lo: int = 2, hi: int = 2) -> bytes:
    def s0(x: bytes) -> bytes:
        return bytes([len(x)]) + x

    payload = (
        bytes([protocol]) + lo.to_bytes(2, "little") + hi.to_bytes(2, "little")
        + (0).to_bytes(4, "little") + s0(b"pool.example") + (3336).to_bytes(2, "little")
        + s0(b"Bitmain") + s0(b"S19") + s0(b"fw") + s0(b"")
    )  # fmt: skip
    return b"\x00\x00\x00" + len(payload).to_bytes(3, "little") + payload


# -- payloads at every depth -------------------------------------------------------------------


def test_stratum_behind_socks_and_websocket_names_the_path(iocs) -> None:
    data = b"\x05\x01\x00\x05\x01\x00\x03\x0cpool.example\x1f\x98" + UPGRADE + b"\r\n"
    data += ws_frame(LOGIN.strip())
    got = judge(view(data), iocs, {})
    f = [x for x in got.findings if x.rule == "RLG-MIN-001"][0]
    assert "[socks5>websocket]" in f.signals[0].detail
    assert f.extra["pool"]["effective"] == {"address": "pool.example", "port": 8088}


def test_greeting_then_login_and_pool_reply(iocs) -> None:
    assert (
        "stratum.login"
        in rules_of(
            view(b'HI there\n{"method":"login","params":{"login":"w","pass":"x"}}\n'),
            iocs,
        )["RLG-MIN-001"]
    )
    reply = b'{"id":null,"method":"mining.notify","params":["1","00"]}\n'
    assert rules_of(view(b"\x00\x01", reply), iocs)["RLG-MIN-001"] == ["stratum.pool_reply"]


def test_pool_reply_shapes() -> None:
    job = b'{"id":1,"result":{"id":"1","job":{"blob":"07","job_id":"1","target":"ff"}}}\n'
    assert stratum.stratum_reply_signals(job)[0].name == "stratum.pool_reply"
    empty_job = b'{"id":1,"jsonrpc":"2.0","result":{"id":"1","job":{}},"error":null}\n'
    assert stratum.stratum_reply_signals(empty_job) == []
    assert stratum.stratum_reply_signals(b'{"id":1,"result":true}\n') == []


@pytest.mark.parametrize(
    "frame,fires",
    [
        (sv2_frame(), "high"),
        (sv2_frame(protocol=2), "medium"),
        (sv2_frame(lo=3, hi=2), None),  # min > max: not a SetupConnection
        (sv2_frame(protocol=7), None),
        (sv2_frame()[:20], "high"),  # cut off: the header and versions already say it
        (b"\x00\x00\x00\x05\x00\x00hello", None),
    ],
)
def test_stratum_v2_setup_connection(frame: bytes, fires: str | None) -> None:
    sigs = stratum.stratum_v2_signals(frame)
    assert (sigs[0].confidence if sigs else None) == fires


# -- encrypted: SNI, fingerprints, Noise ------------------------------------------------------


def test_sni_pool_and_tunnel_domains(iocs) -> None:
    assert rules_of(view(python_client_hello("eu.2miners.com"), dport=443), iocs) == {
        "RLG-MIN-007": ["tls.sni_pool_domain"]
    }
    assert rules_of(view(python_client_hello("abc.trycloudflare.com"), dport=443), iocs) == {
        "RLG-TUN-008": ["tls.sni_tunnel_domain"]
    }
    assert rules_of(view(python_client_hello("pypi.org"), dport=443), iocs) == {}


def test_fingerprint_list_context_and_low(iocs) -> None:
    hello = python_client_hello("example.org")
    ja4 = levels(hello)[1][0].get("ja4")
    assert ja4
    fps = {ja4: Fingerprint(ja4, "test client", "tunnel", "context", "test")}
    got = judge(view(hello, dport=443), iocs, fps)
    assert not got.findings and got.context[0].name == "tls.ja4.tunnel"
    fps = {ja4: Fingerprint(ja4, "test miner", "mining", "low", "test")}
    got = judge(view(hello, dport=443), iocs, fps)
    assert got.findings[0].rule == "RLG-MIN-007" and got.findings[0].signals[0].confidence == "low"


def test_shipped_fingerprints_and_config_additions() -> None:
    fps = load_fingerprints(("t13d311100_e8f1e7e78f70_d41ae481755e=my miner",))
    assert fps["t13d190900_9dc949149365_97f8aa674fd9"].confidence == "context"
    assert fps["t13d311100_e8f1e7e78f70_d41ae481755e"].label == "my miner"


@pytest.mark.parametrize(
    "first,dport,lookup,fires",
    [
        (os.urandom(64), 3333, False, True),  # to a pool port
        (os.urandom(64), 443, True, True),  # after a pool lookup
        (os.urandom(64), 443, False, False),  # neither
        (os.urandom(63), 3333, False, False),  # not 64 bytes
        (b"A" * 64, 3333, False, False),  # not random-looking
    ],
)
def test_noise_handshake_both_sides(iocs, first, dport, lookup, fires) -> None:
    got = rules_of(view(first, dport=dport), iocs, pool_lookup=lookup, first_len=len(first))
    assert ("RLG-MIN-007" in got) == fires


def test_chisel_and_bore(iocs) -> None:
    chisel = UPGRADE + b"Sec-WebSocket-Protocol: chisel-v3\r\n\r\n"
    assert rules_of(view(chisel, dport=80), iocs) == {"RLG-TUN-008": ["tunnel.chisel"]}
    assert rules_of(view(b'{"Hello":0}\x00', dport=7835), iocs) == {"RLG-TUN-008": ["tunnel.bore"]}
    assert rules_of(view(b'{"Hello":"world"}\n', dport=7835), iocs) == {}


# -- the engine around them ---------------------------------------------------------------------


def engine_with(tmp_table: ProcessTable, iocs) -> DetectionEngine:
    return DetectionEngine(iocs, read_file=lambda pid, path: None, fingerprints={})


def test_ssh_through_connect_is_tunnelled_and_recorded_once(iocs) -> None:
    table = ProcessTable(load_config(None).tags)
    ex = ExecEvent(**hdr(50), filename="/usr/bin/python3", argv=["python3", "agent.py"])
    p = table.on_exec(ex)
    engine = engine_with(table, iocs)
    tracker = StreamTracker()
    data = b"CONNECT 198.51.100.2:22 HTTP/1.1\r\n\r\nSSH-2.0-paramiko_3.4.0\r\n"
    ev = SendEvent(
        **hdr(50), cookie=9, payload_len=len(data), family=2, saddr="10.0.0.1", sport=1,
        daddr="198.51.100.3", dport=3128, data=data, owner_pid=50,
    )  # fmt: skip
    ae = attributed(table, ev, p)
    ae.stream = tracker.on_send(ev, p.pid)
    found = engine.observe(ae)
    tun = [f for f in found if f.rule.id == "RLG-TUN-002"][0]
    assert {s.name for s in tun.signals} >= {"ssh.unknown_client", "ssh.tunnelled"}
    assert tun.extra["ssh_server"] == {"ip": "198.51.100.2", "port": 22}
    engine.observe(ae)  # the same stream again: still one session
    assert [c.daddr for c in engine.state[p.entity_id].ssh_sessions] == ["198.51.100.2"]


def test_first_segment_alone_without_a_tracker(iocs) -> None:
    table = ProcessTable(load_config(None).tags)
    p = table.on_exec(ExecEvent(**hdr(51), filename="/tmp/x", argv=["x"]))
    ev = SendEvent(
        **hdr(51), cookie=1, payload_len=len(LOGIN), family=2, saddr="10.0.0.1", sport=1,
        daddr="198.51.100.3", dport=3333, data=LOGIN, owner_pid=51,
    )  # fmt: skip
    found = engine_with(table, iocs).observe(attributed(table, ev, p))
    assert [f.rule.id for f in found] == ["RLG-MIN-001"]
