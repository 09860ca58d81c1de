"""Unit tests for monitor.detectors.stratum: mining payloads, command lines, configs.

Every case of the development corpus (tests/corpus/mining/cases.toml) runs here,
then the properties the engine relies on: truncated captures still fire while the
method name survives, and no input (bytes, argv, config text) raises or yields an
unbounded or unprintable detail.
"""

from __future__ import annotations

import dataclasses
import sys
import unicodedata
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.detectors.iocs import Iocs, default_iocs
from monitor.detectors.signals import CONFIDENCE_RANK, Signal
from monitor.detectors.stratum import (
    config_signals,
    find_wallet,
    is_miner_algo,
    miner_argv_signals,
    miner_config_path,
    parse_command_line,
    pool_dns_signal,
    pool_port_signal,
    stratum_payload_signals,
    url_host,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

pytestmark = pytest.mark.unit

CORPUS = Path(__file__).resolve().parent.parent / "corpus" / "mining"
CASES: dict[str, list[dict[str, Any]]] = tomllib.loads((CORPUS / "cases.toml").read_text())
PAYLOADS = CASES["payload"]
ARGVS = CASES["argv"]
TRUNCATIONS = (64, 128, 256)

_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})

# Synthetic wallets of the right shapes.
XMR = "4" + "9" * 10 + "A" * 84
ETH = "0x" + "ab12" * 10
BECH = "bc1q" + "w508d6qejxtdg4y5r3zarvary0c5xw7k"


@pytest.fixture(scope="module")
def iocs() -> Iocs:
    return default_iocs()


def _payload(case: dict[str, Any]) -> bytes:
    return (CORPUS / "payloads" / f"{case['name']}.bin").read_bytes()


def _argv_case(case: dict[str, Any]) -> tuple[list[str], str | None, str | None]:
    spec = orjson.loads((CORPUS / "argv" / f"{case['name']}.json").read_bytes())
    config = (CORPUS / spec["config"]).read_text() if "config" in spec else None
    return spec["argv"], spec.get("exe"), config


def _top(signals: list[Signal]) -> str | None:
    return max((s.confidence for s in signals), key=CONFIDENCE_RANK.__getitem__, default=None)


def _assert_safe(signals: list[Signal]) -> None:
    for sig in signals:
        assert len(sig.detail) <= 256, sig
        bad = [c for c in sig.detail if unicodedata.category(c) in _FORBIDDEN_CATEGORIES]
        assert not bad, f"unsafe characters in {sig!r}"
        assert sig.confidence in CONFIDENCE_RANK
        assert orjson.loads(orjson.dumps(sig.as_dict())) == sig.as_dict()


def _assert_case(signals: list[Signal], case: dict[str, Any]) -> None:
    names = {s.name for s in signals}
    if not case["fire"]:
        assert signals == [], f"{case['name']} must not fire: {signals}"
        return
    assert signals, f"{case['name']} must fire"
    assert _top(signals) == case["confidence"], signals
    assert set(case.get("signals", ())) <= names, signals
    _assert_safe(signals)


# --- The corpus ------------------------------------------------------------------------


def test_corpus_is_complete() -> None:
    """Every file has a case and every case a file; enough of each kind."""
    assert {c["name"] for c in PAYLOADS} == {p.stem for p in (CORPUS / "payloads").iterdir()}
    assert {c["name"] for c in ARGVS} == {p.stem for p in (CORPUS / "argv").iterdir()}
    for cases in (PAYLOADS, ARGVS):
        assert sum(c["fire"] for c in cases) >= 15
        assert sum(not c["fire"] for c in cases) >= 15
        assert all(c.get("source") for c in cases)
    assert all(c["needles"] for c in PAYLOADS if c["fire"])


@pytest.mark.parametrize("case", PAYLOADS, ids=lambda c: c["name"])
def test_payload_case(case: dict[str, Any]) -> None:
    _assert_case(stratum_payload_signals(_payload(case)), case)


@pytest.mark.parametrize("case", [c for c in PAYLOADS if not c["fire"]], ids=lambda c: c["name"])
@pytest.mark.parametrize("size", TRUNCATIONS)
def test_benign_payload_truncated_stays_quiet(case: dict[str, Any], size: int) -> None:
    assert stratum_payload_signals(_payload(case)[:size]) == []


@pytest.mark.parametrize("case", [c for c in PAYLOADS if c["fire"]], ids=lambda c: c["name"])
@pytest.mark.parametrize("size", TRUNCATIONS)
def test_mining_payload_truncated_fires_while_method_survives(
    case: dict[str, Any], size: int
) -> None:
    prefix = _payload(case)[:size]
    signals = stratum_payload_signals(prefix)
    _assert_safe(signals)
    if all(needle.encode() in prefix for needle in case["needles"]):
        assert signals, f"{case['name']}[:{size}] lost its signal"


@pytest.mark.parametrize("case", ARGVS, ids=lambda c: c["name"])
def test_argv_case(case: dict[str, Any], iocs: Iocs) -> None:
    argv, exe, config = _argv_case(case)
    _assert_case(miner_argv_signals(argv, exe, iocs, config), case)
    assert miner_config_path(argv) == case.get("config_path")


# --- Payload details ----------------------------------------------------------------


def test_key_order_and_whitespace_do_not_matter() -> None:
    message = (
        '  {\t"params" : { "agent" : "XMRig/6.21.0", "pass" : "x", "login" : "' + XMR + '" },\n'
        '    "method" :  "login", "id" : 1 }\n'
    )
    [sig] = stratum_payload_signals(message.encode())
    assert (sig.name, sig.confidence) == ("stratum.login", "high")
    assert "XMRig/6.21.0" in sig.detail and XMR in sig.detail


def test_pretty_printed_message_is_one_document() -> None:
    message = b'{\n  "id": 1,\n  "method": "mining.subscribe",\n  "params": ["x/1"]\n}\n'
    assert [s.name for s in stratum_payload_signals(message)] == ["stratum.mining.subscribe"]


def test_method_names_compare_case_insensitively() -> None:
    message = b'{"id": 1, "method": "Mining.Subscribe", "params": []}\n'
    assert [s.name for s in stratum_payload_signals(message)] == ["stratum.mining.subscribe"]


def test_subscribe_detail_names_the_agent() -> None:
    message = b'{"id":1,"method":"mining.subscribe","params":["cpuminer/2.5.1"]}'
    [sig] = stratum_payload_signals(message)
    assert sig.detail == "mining.subscribe cpuminer/2.5.1"


@pytest.mark.parametrize(
    "message",
    [
        b'{"jsonrpc":"2.0","method":"login","params":{"username":"alice","password":"pw"},"id":1}',
        b'{"jsonrpc":"2.0","method":"login","params":["alice","pw"],"id":1}',
        b'{"jsonrpc":"2.0","method":"login","params":{"login":"alice"},"id":1}',
        b'{"jsonrpc":"2.0","method":"login","params":{"login":"alice","passw',
    ],
)
def test_bare_login_is_ordinary_json_rpc(message: bytes) -> None:
    assert stratum_payload_signals(message) == []


def test_login_with_only_a_wallet_still_counts() -> None:
    # Minimal RandomX miners send {"method":"login","params":{"login":WALLET}}.
    message = b'{"method":"login","params":{"login":"' + XMR.encode() + b'"}}\n'
    assert [s.name for s in stratum_payload_signals(message)] == ["stratum.login"]


def test_login_cut_inside_a_monero_address_counts() -> None:
    message = b'{"id":1,"jsonrpc":"2.0","method":"login","params":{"login":"' + XMR[:70].encode()
    [sig] = stratum_payload_signals(message)
    assert sig.name == "stratum.login" and sig.detail.endswith("(partial)")


def test_truncated_method_name_does_not_fire() -> None:
    assert stratum_payload_signals(b'{"id": 1, "method": "mining.subscr') == []


def test_other_mining_prefixed_names_need_the_closing_quote() -> None:
    assert stratum_payload_signals(b'{"method": "mining.subscribe_to_newsletter"}') == []


def test_server_notifications_are_not_client_messages() -> None:
    assert stratum_payload_signals(b'{"id":null,"method":"mining.notify","params":[]}\n') == []


@pytest.mark.parametrize(
    "data",
    [b"", b"   ", b"\x00{", b"GETX / HTTP/1.1\r\n", b'[{"method":"mining.subscribe"}]'],
)
def test_data_that_is_neither_json_object_nor_http_is_skipped(data: bytes) -> None:
    assert stratum_payload_signals(data) == []


def test_http_header_names_are_case_insensitive() -> None:
    data = b"POST / HTTP/1.1\r\nhost: x\r\nx-mining-extensions: longpoll midstate\r\n\r\n"
    assert [s.name for s in stratum_payload_signals(data)] == ["http.x-mining-extensions"]


def test_http_body_with_stratum_method_fires() -> None:
    data = b'POST / HTTP/1.1\r\nHost: x\r\n\r\n{"id":1,"method":"mining.authorize","params":[]}'
    assert [s.name for s in stratum_payload_signals(data)] == ["stratum.mining.authorize"]


def test_payload_detail_is_bounded() -> None:
    agent = "A" * 5000
    data = orjson.dumps({"id": 1, "method": "mining.subscribe", "params": [agent]})
    [sig] = stratum_payload_signals(data)
    assert len(sig.detail) <= 256


# --- Command lines ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["xmrig", "-c", "config.json"], "config.json"),
        (["xmrig", "-cconfig.json"], "config.json"),
        (["xmrig", "-c=/etc/x.json"], "/etc/x.json"),
        (["xmrig", "--config", "../c.json"], "../c.json"),
        (["xmrig", "--config=/tmp/.x/c"], "/tmp/.x/c"),
        (["./miner", "-c", "cfg"], "cfg"),
        (["xmrig", "--", "-c", "x.json"], None),
        (["xmrig", "-c"], None),
        (["xmrig", "-c", "-o"], None),
        (["python3.11", "-c", "import os"], None),
        (["/usr/bin/bash", "-c", "xmrig -c x.json"], None),
        (["gcc", "-c", "main.c"], None),
        (["tar", "-cf", "out.tar"], None),
        (["tool", "-cf"], None),
        (["tool", "-c", "print(1); x"], None),
        ([], None),
    ],
)
def test_miner_config_path(argv: list[str], expected: str | None) -> None:
    assert miner_config_path(argv) == expected


def test_parse_command_line() -> None:
    options, positionals = parse_command_line(
        ["-ostratum+tcp://h:1", "--user=u", "-k", "pos", "--donate-level", "1", "--", "-u", "v"]
    )
    assert options == [
        ("-o", "stratum+tcp://h:1"),
        ("--user", "u"),
        ("-k", None),
        ("--donate-level", None),
    ]
    assert positionals == ["pos", "1", "-u", "v"]


def test_bare_pool_url_needs_other_miner_evidence(iocs: Iocs) -> None:
    url = "stratum+tcp://203.0.113.7:3333"
    assert miner_argv_signals(["./tool", url], "/tmp/tool", iocs) == []
    signals = miner_argv_signals(["./tool", "--donate-level", "1", url], "/tmp/tool", iocs)
    assert {"argv.pool_url", "argv.miner_flags"} <= {s.name for s in signals}


def test_text_tool_exemption_needs_a_system_path(iocs: Iocs) -> None:
    argv = ["grep", "-o", "stratum+tcp://203.0.113.7:3333", "log"]
    assert miner_argv_signals(argv, "/usr/bin/grep", iocs) == []
    # A miner renamed "grep" in /tmp gets no pass.
    assert [s.name for s in miner_argv_signals(argv, "/tmp/grep", iocs)] == ["argv.pool_url"]


def test_ambiguous_flags_count_only_next_to_a_clear_one(iocs: Iocs) -> None:
    assert miner_argv_signals(["python", "train.py", "--worker", "2"], None, iocs) == []
    [sig] = miner_argv_signals(["./x", "--worker", "r1", "--cpu-priority", "5"], None, iocs)
    assert (sig.name, sig.confidence, sig.detail) == (
        "argv.miner_flags",
        "high",
        "--cpu-priority --worker",
    )


def test_algo_value_decides(iocs: Iocs) -> None:
    assert miner_argv_signals(["python", "-m", "zoo", "--algo", "ppo"], None, iocs) == []
    [sig] = miner_argv_signals(["python", "-m", "zoo", "--algo=rx/0"], None, iocs)
    assert (sig.name, sig.confidence) == ("argv.algo", "medium")


def test_miner_name_alone_is_low(iocs: Iocs) -> None:
    [sig] = miner_argv_signals(["XMRig"], "/opt/x/xmrig (deleted)", iocs)
    assert (sig.kind, sig.name, sig.confidence, sig.detail) == (
        "name",
        "name.miner_binary",
        "low",
        "xmrig",
    )


@pytest.mark.parametrize(
    ("text", "wallet"),
    [
        (XMR, XMR),
        (f"{XMR}.rig1", XMR),
        (f"{XMR}+50000", XMR),
        (f"XMR:{XMR}.w#ref", XMR),
        (XMR + "B" * 11, XMR + "B" * 11),  # integrated address, 106 characters
        (f"{ETH}.rig0", ETH),
        (f"stratum1+tcp://{ETH}.w@eu1.ethermine.org:4444", ETH),
        (BECH, BECH),
        (XMR + "B", None),  # 96 base58 characters: not an address
        (ETH + "0", None),
        ("alice.worker1", None),
        ("", None),
    ],
)
def test_find_wallet(text: str, wallet: str | None) -> None:
    assert find_wallet(text) == wallet


@pytest.mark.parametrize(
    ("value", "host"),
    [
        ("stratum+tcp://user.w:pw@Pool.Example.com:3333/x", "pool.example.com"),
        ("pool.example.com:443", "pool.example.com"),
        ("ssl://[2001:db8::1]:5555", "2001:db8::1"),
        ("10.0.0.5", "10.0.0.5"),
    ],
)
def test_url_host(value: str, host: str) -> None:
    assert url_host(value) == host


@pytest.mark.parametrize("algo", ["rx/0", "RandomX", "cn-heavy/xhv", "kawpow", "ETCHASH", "gr"])
def test_miner_algos(algo: str) -> None:
    assert is_miner_algo(algo)


@pytest.mark.parametrize("algo", ["ppo", "sac", "sha256", "blake2s", "0", ""])
def test_not_miner_algos(algo: str) -> None:
    assert not is_miner_algo(algo)


# --- Configs ------------------------------------------------------------------------


def test_xmrig_json_with_comments_falls_back_to_key_values(iocs: Iocs) -> None:
    pool = '{"url": "pool.supportxmr.com:443", "user": "' + XMR + '"}'
    text = '{\n  // mine\n  "pools": [' + pool + "]\n}"
    assert {s.name for s in config_signals(text, iocs)} == {"config.pool_url", "config.wallet"}


def test_unrelated_json_config_is_quiet(iocs: Iocs) -> None:
    text = '{"url": "https://example.com", "user": "bob", "pools": [{"url": "db:5432"}]}'
    assert config_signals(text, iocs) == []


def test_pools_shape_without_xmrig_keys_is_medium(iocs: Iocs) -> None:
    [sig] = config_signals('{"pools": [{"url": "10.0.0.5:3333", "user": "bob"}]}', iocs)
    assert (sig.name, sig.confidence) == ("config.pools", "medium")


# --- DNS and ports ------------------------------------------------------------------


def test_pool_dns_signal(iocs: Iocs) -> None:
    sig = pool_dns_signal("Gulf.MoneroOcean.Stream.", iocs)
    assert sig is not None
    assert (sig.kind, sig.name, sig.confidence) == ("dns", "dns.pool_domain", "medium")
    assert "moneroocean.stream" in sig.detail
    assert pool_dns_signal("notmoneroocean.stream", iocs) is None
    assert pool_dns_signal("pypi.org", iocs) is None


def test_pool_port_signal(iocs: Iocs) -> None:
    sig = pool_port_signal(3333, iocs)
    assert sig is not None
    assert (sig.kind, sig.name, sig.confidence) == ("behaviour", "behaviour.pool_port", "low")
    assert pool_port_signal(443, iocs) is None
    assert pool_port_signal(3333, dataclasses.replace(iocs, pool_port_connects="off")) is None


# --- Properties -----------------------------------------------------------------------

_json_prefixes = st.sampled_from(
    [b"{", b' {"method":"', b"POST / HTTP/1.1\r\n", b"GET / HTTP/1.0\n"]
)


@given(st.binary(max_size=600))
def test_payload_never_raises_on_bytes(data: bytes) -> None:
    _assert_safe(stratum_payload_signals(data))


@given(_json_prefixes, st.binary(max_size=600))
def test_payload_never_raises_on_framed_bytes(prefix: bytes, data: bytes) -> None:
    _assert_safe(stratum_payload_signals(prefix + data))


_method_names = st.sampled_from(
    ["mining.subscribe", "login", "eth_submitLogin", "getblocktemplate", "x", "\x1b[2J"]
)


@given(_method_names, st.text(max_size=400), st.integers(min_value=0, max_value=700))
@settings(max_examples=200)
def test_payload_with_hostile_fields_stays_printable(method: str, agent: str, cut: int) -> None:
    message = {"id": 1, "method": method, "params": {"login": XMR, "agent": agent, "pass": agent}}
    data = orjson.dumps(message) + b"\n"
    _assert_safe(stratum_payload_signals(data[:cut]))
    _assert_safe(stratum_payload_signals(data))


_arg_text = st.one_of(
    st.text(max_size=60),
    st.sampled_from(
        ["-o", "-u", "-a", "-c", "--url", "--donate-level", "--algo", "-P", "--", "-ox", "rx/0"]
    ),
    st.just("stratum+tcp://\x1b]0;x\x07host:1"),
    st.just(XMR),
)


@given(
    st.lists(_arg_text, max_size=12),
    st.one_of(st.none(), st.text(max_size=40)),
    st.one_of(st.none(), st.text(max_size=300)),
)
def test_argv_never_raises(
    iocs: Iocs, argv: list[str], exe: str | None, config: str | None
) -> None:
    _assert_safe(miner_argv_signals(argv, exe, iocs, config))
    path = miner_config_path(argv)
    assert path is None or isinstance(path, str)


@given(st.text(max_size=300))
def test_dns_never_raises(iocs: Iocs, name: str) -> None:
    sig = pool_dns_signal(name, iocs)
    _assert_safe([sig] if sig else [])
