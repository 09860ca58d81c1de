"""DNS in depth (issue 15): DNS over TCP parsed like UDP, tunnelling per episode and
registered domain, the refreshed name lists with their sources, operator list files."""

from __future__ import annotations

import dataclasses
import random
import re
import string
from pathlib import Path

import pytest

from monitor.config import ConfigError, load_config
from monitor.detectors.dnstunnel import (
    RULE_DNS_TUNNEL,
    DnsTunnelTracker,
    entropy,
    looks_encoded,
    name_list_signals,
    registered_domain,
)
from monitor.detectors.engine import DetectionEngine
from monitor.detectors.iocs import IOC_FILE, build_iocs, default_iocs, domain_match
from monitor.sensor.dns import build_query, parse_stream_query
from monitor.sensor.events import DnsEvent, ExecEvent, SendEvent
from monitor.state.process_table import ProcessTable
from tests.support.events import attributed, hdr

pytestmark = pytest.mark.unit

CFG = load_config(None)
OUTSIDE = "198.51.100.2"


# -- DNS over TCP ---------------------------------------------------------------------------


def test_stream_query_is_parsed_like_udp() -> None:
    q = parse_stream_query(build_query("gulf.moneroocean.stream", 1, tcp=True), 53)
    assert q is not None and q.name == "gulf.moneroocean.stream" and q.qtype_name == "A"
    # two queries pipelined in one opening: the first is read
    two = build_query("a.example", 16, tcp=True) + build_query("b.example", 1, tcp=True)
    got = parse_stream_query(two, 53)
    assert got is not None and got.name == "a.example" and got.qtype_name == "TXT"
    # only the first bytes captured: the question is still there
    cut = build_query("donate.v2.xmrig.com", 1, tcp=True)[:-2]
    assert parse_stream_query(cut, 53) is None  # the type is missing: not guessed
    assert parse_stream_query(build_query("x.example", 1, tcp=True), 5353) is None
    assert parse_stream_query(build_query("x.example", 1), 53) is None  # no length prefix
    assert parse_stream_query(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 53) is None


class World:
    def __init__(self, **dns: object) -> None:
        cfg = dataclasses.replace(CFG.dns_tunnel, **dns)  # type: ignore[arg-type]
        self.engine = DetectionEngine(
            build_iocs(CFG.detectors, CFG.allowlist), read_file=lambda p, f: None, dns_tunnel=cfg
        )
        self.table = ProcessTable(CFG.tags, boot_id="b")

    def exec(self, pid: int, argv: list[str]) -> None:
        ev = ExecEvent(**hdr(pid, comm=argv[0][-15:]), filename=argv[0], argv=argv)
        p = self.table.on_exec(ev)
        self.engine.observe(attributed(self.table, ev, p))

    def udp(self, pid: int, name: str, qtype: int = 1, ts: int = 1000) -> list:
        from monitor.sensor.dns import parse_dns_message

        data = build_query(name, qtype)
        ev = DnsEvent(**hdr(pid, ts=ts), daddr=OUTSIDE, dport=53, data=data, payload_len=len(data))
        ae = attributed(self.table, ev, self.table.process_for(ev))
        ae.dns = parse_dns_message(data)
        return self.engine.observe(ae)

    def tcp(self, pid: int, name: str, qtype: int = 1) -> list:
        data = build_query(name, qtype, tcp=True)
        ev = SendEvent(
            **hdr(pid), daddr=OUTSIDE, dport=53, family=2, data=data, payload_len=len(data),
            owner_pid=pid,
        )  # fmt: skip
        ae = attributed(self.table, ev, self.table.process_for(ev))
        ae.dns = parse_stream_query(data, 53)
        return self.engine.observe(ae)


def test_pool_name_over_tcp_alerts_like_udp() -> None:
    w = World()
    w.exec(10, ["/usr/bin/python3", "x.py"])
    got = w.tcp(10, "xmr-eu1.nanopool.org")
    assert [f.rule.id for f in got] == ["RLG-MIN-003"]
    got = w.tcp(10, "donate.v2.xmrig.com")
    assert got[0].severity == "high" and got[0].signals[0].name == "dns.miner_domain"


# -- name lists -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "rule", "sig"),
    [
        ("donate.v2.xmrig.com", "RLG-MIN-003", "dns.miner_domain"),
        ("DONATE.SSL.XMRIG.COM.", "RLG-MIN-003", "dns.miner_domain"),
        ("donate.xmr-stak.net", "RLG-MIN-003", "dns.miner_domain"),
        ("pool.supportxmr.com", "RLG-MIN-003", "dns.pool_domain"),
        ("connect.ngrok-agent.com", "RLG-TUN-005", "dns.tunnel_domain"),
        ("_v2-origintunneld._tcp.argotunnel.com", "RLG-TUN-005", "dns.tunnel_domain"),
        ("region1.v2.argotunnel.com", "RLG-TUN-005", "dns.tunnel_domain"),
        ("quic.cftunnel.com", "RLG-TUN-005", "dns.tunnel_domain"),
    ],
)
def test_name_lists(name: str, rule: str, sig: str) -> None:
    got = name_list_signals(name, default_iocs())
    assert [(r, s.name) for r, s in got] == [(rule, sig)]


@pytest.mark.parametrize(
    "name", ["xmrig.com", "notsupportxmr.com", "pypi.org", "ngrok.com.evil.example", "argotunnel"]
)
def test_names_off_the_lists(name: str) -> None:
    assert name_list_signals(name, default_iocs()) == []


def test_every_shipped_domain_names_its_source() -> None:
    text = IOC_FILE.read_text()
    for key in ("pool_domains", "miner_domains", "tunnel_domains"):
        block = text[text.index(f"{key} = [") :]
        block = block[: block.index("\n]")]
        entries = [line for line in block.splitlines()[1:] if line.strip().startswith('"')]
        assert entries, key
        for line in entries:
            assert re.search(r'^\s*"[^"]+",\s*#\s*\S', line), f"{key}: no source: {line}"


def test_domain_match_is_by_labels() -> None:
    lst = frozenset({"example.com", "b.c.d"})
    assert domain_match("x.y.example.com", lst) == "example.com"
    assert domain_match("EXAMPLE.COM.", lst) == "example.com"
    assert domain_match("badexample.com", lst) is None
    assert domain_match("a.b.c.d", lst) == "b.c.d"
    assert domain_match("c.d", lst) is None


def test_operator_list_files_extend_without_a_release(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text(
        '[ops]\npool_domains = ["*.evil-pool.example", ".other.example"]\n'
        'tunnel_domains = ["tunnels.example"]\n'
    )
    (tmp_path / "b.toml").write_text('miner_domains = ["dev-fee.example"]\npool_ports = [1234]\n')
    det = dataclasses.replace(
        CFG.detectors, list_files=(str(tmp_path / "*.toml"), str(tmp_path / "missing.toml"))
    )
    iocs = build_iocs(det, CFG.allowlist)
    assert len(iocs.list_files) == 2
    assert domain_match("eu.evil-pool.example", iocs.pool_domains) == "evil-pool.example"
    assert domain_match("other.example", iocs.pool_domains) == "other.example"
    assert [r for r, _ in name_list_signals("x.tunnels.example", iocs)] == ["RLG-TUN-005"]
    assert name_list_signals("dev-fee.example", iocs)[0][1].confidence == "high"
    assert 1234 in iocs.pool_ports
    assert "supportxmr.com" in iocs.pool_domains  # the shipped list stays


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ("pool_domains = [", "cannot read"),
        ('pool_domainz = ["x.example"]', "unknown list"),
        ("pool_ports = ['x']", "not int"),
        ('pool_domains = "x.example"', "must be an array"),
    ],
)
def test_bad_list_file_is_a_clear_error(tmp_path: Path, body: str, why: str) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(body)
    det = dataclasses.replace(CFG.detectors, list_files=(str(f),))
    with pytest.raises(ConfigError, match=why) as exc:
        build_iocs(det, CFG.allowlist)
    assert str(f) in str(exc.value)


# -- tunnelling -----------------------------------------------------------------------------


def test_registered_domain() -> None:
    assert registered_domain("a.b.example.co.uk") == "example.co.uk"
    assert registered_domain("x.y.t.example.com.") == "example.com"
    assert registered_domain("quiet-forest.trycloudflare.com") == "quiet-forest.trycloudflare.com"
    assert registered_domain("svc.ns.svc.cluster.local") == "cluster.local"


def dnscat2_name(rng: random.Random, domain: str) -> str:
    """dnscat2 client (tunnel_drivers/driver_dns.c): hex-encoded packet split into labels
    of up to MAX_FIELD_LENGTH=62 characters, then the domain."""
    raw = rng.randbytes(rng.randint(40, 110)).hex()
    return ".".join(raw[i : i + 62] for i in range(0, len(raw), 62)) + "." + domain


def iodine_name(rng: random.Random, domain: str) -> str:
    """iodine client: a command char + base32 data in labels of up to 63 characters."""
    alphabet = string.ascii_lowercase + "012345"
    data = "".join(rng.choice(alphabet) for _ in range(rng.randint(100, 180)))
    return ".".join(data[i : i + 63] for i in range(0, len(data), 63)) + "." + domain


def test_label_measures() -> None:
    rng = random.Random(1)
    name = dnscat2_name(rng, "t.attacker.example")
    assert looks_encoded(name, "attacker.example", 40, 3.5)
    assert entropy("aaaa") == 0.0 and entropy("ab") == 1.0
    assert not looks_encoded("files.pythonhosted.org", "pythonhosted.org", 40, 3.5)
    assert not looks_encoded("d111111abcdef8.cloudfront.net", "cloudfront.net", 40, 3.5)


@pytest.mark.parametrize("tool", [dnscat2_name, iodine_name], ids=["dnscat2", "iodine"])
def test_tunnel_in_one_episode_alerts_medium_then_high(tool) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(7)
    w = World()
    w.exec(20, ["/opt/x"])
    found: list = []
    for i in range(120):
        found += w.udp(20, tool(rng, "t.attacker.example"), qtype=16, ts=1000 + i * 1000)
    tun = [f for f in found if f.rule.id == RULE_DNS_TUNNEL]
    assert [f.severity for f in tun] == ["medium", "high"]
    assert tun[0].extra["dns_tunnel"]["registered_domain"] == "attacker.example"
    assert {s.name for s in tun[1].signals} == {"dns.tunnel.labels", "dns.tunnel.records"}


def test_tunnel_over_tcp_counts_too() -> None:
    rng = random.Random(3)
    w = World(min_unique_names=20, min_record_queries=1000)
    w.exec(25, ["/opt/x"])
    found: list = []
    for _ in range(25):
        found += w.tcp(25, dnscat2_name(rng, "attacker.example"), qtype=16)
    assert [f.rule.id for f in found] == [RULE_DNS_TUNNEL]


def test_benign_volume_is_silent() -> None:
    rng = random.Random(5)
    w = World()
    w.exec(30, ["/usr/bin/python3", "train.py"])
    found: list = []
    names = [
        "pypi.org", "files.pythonhosted.org", "huggingface.co", "cdn-lfs.huggingface.co",
        "github.com", "objects.githubusercontent.com", "download.pytorch.org",
    ]  # fmt: skip
    for i in range(300):
        found += w.udp(30, rng.choice(names), qtype=rng.choice([1, 28, 65]))
        # CDN object hosts and cluster service names: many, short, not random enough
        found += w.udp(30, f"d{rng.randrange(16**12):012x}.cloudfront.net")
        found += w.udp(30, f"worker-{i}.ray-head.default.svc.cluster.local", qtype=1)
        found += w.udp(30, f"{i}.100.51.198.in-addr.arpa", qtype=12)
    assert found == []


def test_tracker_memory_is_bounded() -> None:
    cfg = dataclasses.replace(CFG.dns_tunnel, max_tracked=16, min_unique_names=10)
    t = DnsTunnelTracker(cfg)
    for i in range(1000):
        t.observe(f"episode:{i}", f"x{i}.d{i}.example", "A", 1000)
    assert len(t) == 16 and t.evicted == 1000 - 16
    for i in range(10_000):
        t.observe("episode:1", f"n{i}.one.example", "A", 1000)
    w = t._windows[("episode:1", "one.example")]
    assert len(w.names) <= 10 * 4


def test_window_restarts_counts() -> None:
    cfg = dataclasses.replace(CFG.dns_tunnel, min_record_queries=10, window_s=1.0)
    t = DnsTunnelTracker(cfg)
    hits = [t.observe("k", f"a{i}.x.example", "TXT", i * 200_000_000) for i in range(30)]
    # 5 queries per second never reach 10 in one 1 s window
    assert all(h is None for h in hits)


def test_disabled_and_allowed_domains() -> None:
    t = DnsTunnelTracker(dataclasses.replace(CFG.dns_tunnel, enabled=False))
    assert t.observe("k", "a" * 60 + ".x.example", "TXT", 1) is None
    cfg = dataclasses.replace(CFG.dns_tunnel, min_record_queries=5, allow_domains=("x.example",))
    t = DnsTunnelTracker(cfg)
    assert all(t.observe("k", f"{i}.x.example", "TXT", 1) is None for i in range(20))
