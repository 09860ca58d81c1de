"""`rlguard demo` stages the incident, shows the alerts and leaves nothing behind."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e


def test_demo_catches_the_incident_and_cleans_up(tmp_path) -> None:
    out = tmp_path / "demo.ndjson"
    before = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    res = subprocess.run(
        [sys.executable, "-m", "monitor.cli", "demo", "--output", str(out), "--hold", "4"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "RLG-TUN-001" in res.stdout and "RLG-MIN-001" in res.stdout
    assert "episode=ep-17" in res.stdout
    alerts = [json.loads(x) for x in out.read_text().splitlines()]
    alerts = [a for a in alerts if a["event"]["kind"] == "alert"]
    act1 = [a for a in alerts if a["rl"]["episode_id"] == "ep-17"]
    act2 = [a for a in alerts if a["rl"]["episode_id"] == "ep-18"]
    assert len(act1) + len(act2) == len(alerts), "every alert names one of the two episodes"
    rules = {a["rule"]["id"] for a in act1}
    assert {"RLG-TUN-001", "RLG-TUN-003", "RLG-MIN-001"} <= rules
    # act 2: the miner in TLS through a SOCKS5 proxy, caught from the plaintext
    assert "act 2" in res.stdout and "episode=ep-18" in res.stdout
    mining = [a for a in act2 if a["rule"]["id"] == "RLG-MIN-001"]
    assert mining, [a["rule"]["id"] for a in act2]
    assert any(
        "[socks5>tls plaintext]" in e["detail"]
        for a in mining
        for e in a["rlguard"]["alert"]["evidence"]
    )
    assert mining[0]["rlguard"]["alert"]["stream"]["effective_destination"]["port"] == 3443
    after = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert after == before, "the demo's namespace is gone"
    left = subprocess.run(["pgrep", "-f", "9000:127.0.0.1:8081"], capture_output=True)
    assert left.returncode == 1, "no tunnel process left"
