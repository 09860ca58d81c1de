"""Unit tests for monitor.detectors.tunnel: every corpus case, plus properties."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.detectors.iocs import Iocs, default_iocs
from monitor.detectors.signals import Signal
from monitor.detectors.tunnel import (
    DETAIL_MAX,
    SSH_BANNER_MAX,
    argv_signals,
    autossh_monitor_specs,
    autossh_signals,
    autossh_ssh_argv,
    shell_banner_signal,
    ssh_banner,
    ssh_config_path,
    ssh_destination,
    ssh_forward_specs,
    ssh_local_or_dynamic,
    tunnel_dns_signal,
    tunnel_tool_signals,
)

pytestmark = pytest.mark.unit

CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "tunnels"
ARGV_CASES: list[dict[str, Any]] = json.loads((CORPUS / "argv_cases.json").read_text())
BYTES_CASES: list[dict[str, Any]] = json.loads((CORPUS / "bytes_cases.json").read_text())
CASES_MD = (CORPUS / "CASES.md").read_text()

_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


@pytest.fixture(scope="module")
def iocs() -> Iocs:
    return default_iocs()


def _key(s: Signal) -> str:
    return f"{s.kind}:{s.name}@{s.confidence}"


def _data(case: dict[str, Any]) -> bytes:
    if "data_hex" in case:
        return bytes.fromhex(case["data_hex"])
    return str(case["data"]).encode("utf-8")


def _assert_safe(text: str, limit: int = DETAIL_MAX) -> None:
    assert len(text) <= limit
    bad = [c for c in text if unicodedata.category(c) in _UNSAFE_CATEGORIES]
    assert not bad, f"unsafe characters in {text!r}"


def _assert_signals_safe(signals: list[Signal]) -> None:
    for s in signals:
        assert isinstance(s, Signal)
        assert s.confidence in ("low", "medium", "high")
        _assert_safe(s.detail)


# --- the corpus -----------------------------------------------------------------------------


@pytest.mark.parametrize("case", ARGV_CASES, ids=[c["id"] for c in ARGV_CASES])
def test_argv_case(case: dict[str, Any], iocs: Iocs) -> None:
    signals = argv_signals(case["argv"], case.get("exe"), iocs, case.get("config"))
    assert sorted(_key(s) for s in signals) == case["expect"]
    details = {s.detail for s in signals}
    for detail in case.get("details", []):
        assert detail in details
    _assert_signals_safe(signals)


@pytest.mark.parametrize("case", BYTES_CASES, ids=[c["id"] for c in BYTES_CASES])
def test_bytes_case(case: dict[str, Any]) -> None:
    data = _data(case)
    if case["fn"] == "ssh_banner":
        assert ssh_banner(data) == case["expect"]
    else:
        sig = shell_banner_signal(data)
        assert (None if sig is None else f"{sig.name}@{sig.confidence}") == case["expect"]
        if sig is not None:
            assert sig.kind == "payload"
            _assert_signals_safe([sig])


def test_corpus_is_documented_and_big_enough() -> None:
    for case in ARGV_CASES + BYTES_CASES:
        assert f"| {case['id']} |" in CASES_MD, case["id"]
        assert f"| {case['source']} |" in CASES_MD, case["source"]
    ids = [c["id"] for c in ARGV_CASES + BYTES_CASES]
    assert len(ids) == len(set(ids)), "duplicate case ids"
    positive = [c for c in ARGV_CASES if any(not e.endswith("@low") for e in c["expect"])]
    benign = [c for c in ARGV_CASES if not c["expect"]]
    assert len(positive) >= 30
    assert len(benign) >= 20


# --- ssh helpers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "host"),
    [
        (["ssh", "-p", "22", "alice@box.example", "uptime"], "box.example"),
        (["ssh", "ssh://alice@box:2222"], "box"),
        (["ssh", "ssh://[2001:db8::1]:22"], "2001:db8::1"),
        (["ssh", "-l", "u", "-i", "key", "10.0.0.1"], "10.0.0.1"),
        (["ssh", "-R", "9000:x:22"], None),
        (["ssh", "a@b@c"], "c"),  # ssh.c splits at the last '@'
    ],
)
def test_ssh_destination(argv: list[str], host: str | None) -> None:
    assert ssh_destination(argv) == host


def test_ssh_config_path() -> None:
    assert ssh_config_path(["ssh", "-F", "/tmp/a", "-F/tmp/b", "host"]) == "/tmp/b"
    assert ssh_config_path(["ssh", "host", "-F", "after-destination"]) == "after-destination"
    assert ssh_config_path(["ssh", "host", "cmd", "-F", "x"]) is None
    assert ssh_config_path(["ssh", "host"]) is None


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["ssh", "-L", "8080:localhost:80", "host"], True),
        (["ssh", "-D", "1080", "host"], True),
        (["ssh", "-o", "LocalForward 8080 localhost:80", "host"], True),
        (["ssh", "-L", "8080:localhost:80", "-R", "9000:localhost:22", "host"], False),
        (["ssh", "-D", "1080", "-w", "0", "host"], False),
        (["ssh", "host"], False),
        (["ssh", "host", "echo", "-L", "1:2:3"], False),
    ],
)
def test_ssh_local_or_dynamic(argv: list[str], expected: bool) -> None:
    assert ssh_local_or_dynamic(argv) is expected


def test_ssh_forward_specs_does_not_check_the_program() -> None:
    # The parser trusts its caller; argv_signals is the one that dispatches on the name.
    assert [s.name for s in ssh_forward_specs(["anything", "-R", "1:2:3", "h"])] == [
        "ssh.remote_forward"
    ]


def test_config_first_tunnel_value_wins() -> None:
    cfg = "Host box\n  Tunnel no\nHost *\n  Tunnel yes\n"
    assert ssh_forward_specs(["ssh", "box"], cfg) == []
    assert [s.detail for s in ssh_forward_specs(["ssh", "other"], cfg)] == ["yes"]


def test_uncertain_match_does_not_hide_a_later_certain_value() -> None:
    cfg = "Match exec true\n  Tunnel yes\nHost *\n  Tunnel ethernet\n"
    got = sorted((s.detail, s.confidence) for s in ssh_forward_specs(["ssh", "h"], cfg))
    assert got == [("ethernet", "high"), ("yes", "medium")]


def test_uncertain_clear_all_downgrades() -> None:
    cfg = "Match exec true\n  ClearAllForwardings yes\n"
    (sig,) = ssh_forward_specs(["ssh", "-R", "9000:localhost:22", "h"], cfg)
    assert sig.confidence == "medium"


def test_config_comments_and_blank_lines() -> None:
    cfg = "# RemoteForward 1 x:1\n\n   \nHost box # comment\n  RemoteForward 9000 x:22 # c\n"
    (sig,) = ssh_forward_specs(["ssh", "box"], cfg)
    assert (sig.kind, sig.detail) == ("config", "9000 x:22")


def test_unknown_destination_makes_host_blocks_uncertain() -> None:
    (sig,) = ssh_forward_specs(["ssh", "-N"], "Host box\n  RemoteForward 9000 x:22\n")
    assert sig.confidence == "medium"


# --- autossh -------------------------------------------------------------------------------


def test_autossh_ssh_argv() -> None:
    argv = ["autossh", "-M", "0", "-f", "-NR", "9000:localhost:22", "-oForwardAgent=no", "h"]
    assert autossh_ssh_argv(argv) == ["ssh", "-NR", "9000:localhost:22", "-oForwardAgent=no", "h"]
    assert autossh_ssh_argv(["autossh", "-M20000", "--", "-fN", "h"]) == ["ssh", "-N", "h"]


@pytest.mark.parametrize(
    ("argv", "specs"),
    [
        (["autossh", "-M", "20000", "h"],
         [("-L", "20000:127.0.0.1:20000"), ("-R", "20000:127.0.0.1:20001")]),
        (["autossh", "-M20000:7", "h"], [("-L", "20000:127.0.0.1:7")]),
        (["autossh", "-M", "0", "h"], []),
        (["autossh", "-M", "x", "h"], []),
        (["autossh", "h"], []),
    ],
)  # fmt: skip
def test_autossh_monitor_specs(argv: list[str], specs: list[tuple[str, str]]) -> None:
    assert autossh_monitor_specs(argv) == specs


def test_autossh_config_text_is_used() -> None:
    got = autossh_signals(["autossh", "-M", "0", "-N", "box"], "Host box\n RemoteForward 1 x:1\n")
    assert sorted(_key(s) for s in got) == ["argv:autossh@high", "config:ssh.remote_forward@high"]


def test_tunnel_tool_signals_leaves_ssh_and_autossh_to_their_parsers(iocs: Iocs) -> None:
    # The engine may call tunnel_tool_signals on every exec next to the ssh/autossh parsers.
    assert tunnel_tool_signals(["autossh", "-M", "0", "-NR", "1:x:1", "h"], None, iocs) == []
    assert tunnel_tool_signals(["x", "-R", "1:x:1", "h"], "/usr/bin/ssh", iocs) == []
    got = argv_signals(["autossh", "-M", "0", "-NR", "1:x:1", "h"], None, iocs)
    assert sorted(_key(s) for s in got) == ["argv:autossh@high", "argv:ssh.remote_forward@high"]


# --- DNS -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["abc-def.trycloudflare.com", "x.ngrok-free.app.", "BORE.PUB", "a.b.serveo.net"],
)
def test_tunnel_dns_positive(name: str, iocs: Iocs) -> None:
    sig = tunnel_dns_signal(name, iocs)
    assert sig is not None
    assert (sig.kind, sig.name, sig.confidence) == ("dns", "dns.tunnel_domain", "high")
    _assert_safe(sig.detail)


@pytest.mark.parametrize("name", ["", "example.com", "notngrok.io", "ngrok.io.evil.com", "."])
def test_tunnel_dns_negative(name: str, iocs: Iocs) -> None:
    assert tunnel_dns_signal(name, iocs) is None


# --- bounds and sanitising -----------------------------------------------------------------


def test_long_and_hostile_details_are_bounded(iocs: Iocs) -> None:
    spec = "9000:" + "\x1b[31m\u202e" * 5000 + ":22"
    for signals in (
        ssh_forward_specs(["ssh", "-R", spec, "h"]),
        argv_signals(["ngrok", "http", spec], None, iocs),
        autossh_signals(["autossh", "-M", "0", "-R", spec, "h"]),
    ):
        assert signals
        _assert_signals_safe(signals)
    banner = ssh_banner(b"SSH-2.0-x" + b"\x9b" * 1000)
    assert banner is not None
    _assert_safe(banner, SSH_BANNER_MAX)


_SSH_WORDS = st.sampled_from(
    ["ssh", "-R", "-L", "-D", "-w", "-W", "-o", "-F", "-P", "-O", "-G", "--", "-fNR", "-NfR1:x:1",
     "host", "u@h", "ssh://h:22", "9000:localhost:22", "RemoteForward 1 x:1", "Tunnel=yes",
     "ClearAllForwardings=yes", "forward", "cancel", "none", "-oTunnel=no", "-M", "0", "20000:7"]
)  # fmt: skip
_ARGV = st.lists(st.one_of(_SSH_WORDS, st.text(max_size=40)), max_size=14)
_CONFIG_LINES = st.sampled_from(
    ["Host *", "Host h !h", "Host ?", "Match all", "Match exec x", "RemoteForward 1 x:1",
     "RemoteForward=2", "Tunnel yes", "Tunnel bogus", "ClearAllForwardings yes", "  # c", "",
     "Include x", "Host \"unterminated"]
)  # fmt: skip
_CONFIG = st.one_of(
    st.none(),
    st.text(max_size=200),
    st.lists(st.one_of(_CONFIG_LINES, st.text(max_size=30)), max_size=10).map("\n".join),
)


@settings(max_examples=300, deadline=None)
@given(argv=_ARGV, config=_CONFIG, exe=st.one_of(st.none(), st.text(max_size=30)))
def test_argv_functions_never_raise(argv: list[str], config: str | None, exe: str | None) -> None:
    iocs = default_iocs()
    for signals in (
        ssh_forward_specs(argv, config),
        autossh_signals(argv, config),
        tunnel_tool_signals(argv, exe, iocs),
        argv_signals(argv, exe, iocs, config),
    ):
        _assert_signals_safe(signals)
    ssh_destination(argv)
    ssh_config_path(argv)
    ssh_local_or_dynamic(argv)
    autossh_ssh_argv(argv)
    autossh_monitor_specs(argv)


_TOOLS = st.sampled_from(
    ["chisel", "frpc", "ngrok", "bore", "cloudflared", "gost", "agent", "ligolo-agent", "rathole",
     "zrok", "autossh", "ssh"]
)  # fmt: skip
_TOOL_WORDS = st.sampled_from(
    ["client", "server", "R:socks", "--reverse", "http", "tcp", "start", "tunnel", "run", "--url",
     "local", "--to", "-L", "-F", "rtcp://:1/x:2", "-connect", "-ignore-cert", "--client", "-c",
     "tcp", "visitor", "--help", "-v", "service", "access", "=", "-", "--"]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(tool=_TOOLS, args=st.lists(st.one_of(_TOOL_WORDS, st.text(max_size=20)), max_size=8))
def test_tool_parsers_never_raise(tool: str, args: list[str]) -> None:
    iocs = default_iocs()
    _assert_signals_safe(tunnel_tool_signals([tool, *args], None, iocs))
    _assert_signals_safe(argv_signals([f"/opt/{tool}", *args], f"/opt/{tool}", iocs))


@settings(max_examples=500, deadline=None)
@given(
    data=st.one_of(
        st.binary(max_size=600),
        st.binary(max_size=300).map(lambda b: b"SSH-2.0-" + b),
        st.binary(max_size=100).map(lambda b: b + b"no job control in this shell" + b),
        st.text(max_size=60).map(lambda t: (t + "$ ").encode("utf-8", "surrogatepass")),
    )
)
def test_bytes_functions_never_raise(data: bytes) -> None:
    banner = ssh_banner(data)
    if banner is not None:
        assert data.startswith((b"SSH-2.0-", b"SSH-1.99-"))
        _assert_safe(banner, SSH_BANNER_MAX)
    sig = shell_banner_signal(data)
    if sig is not None:
        _assert_signals_safe([sig])


@given(name=st.text(max_size=80))
def test_dns_never_raises(name: str) -> None:
    sig = tunnel_dns_signal(name, default_iocs())
    if sig is not None:
        _assert_signals_safe([sig])
