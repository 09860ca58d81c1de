"""The config's [rules] settings in a real `rlguard run`, and again after a SIGHUP reload."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.live import Doc, action, start_run, stop_run, wait_line
from tests.support.net import reading_server

pytestmark = pytest.mark.integration

STRATUM = b'{"id":1,"method":"mining.subscribe","params":["cpuminer/2.5.1"]}\n'
PARAMIKO = b"SSH-2.0-paramiko_3.4.0\r\n"


@pytest.fixture
def listener() -> Iterator[int]:
    """A loopback server that reads what each client sends and hangs up."""
    with reading_server() as port:
        yield port


def client(port: int, mark: str) -> None:
    """One process (MARK in its argv): stratum on one connection, then an SSH banner."""
    code = (
        "import socket,sys\n"
        "for data in sys.argv[2:4]:\n"
        "    s = socket.create_connection(('127.0.0.1', int(sys.argv[1])))\n"
        "    s.sendall(bytes.fromhex(data)); s.recv(1); s.close()\n"
    )
    argv = ["/usr/bin/python3", "-c", code, str(port), STRATUM.hex(), PARAMIKO.hex(), mark]
    subprocess.run(argv, check=True, timeout=30)


def alert_of(mark: str, rule: str):
    def pred(d: Doc) -> bool:
        return (
            d["event"].get("kind") == "alert"
            and d["rule"]["id"] == rule
            and mark in d.get("process", {}).get("args", [])
        )

    return pred


def alerts(out: Path, mark: str) -> dict[str, str]:
    """rule id -> severity of the alerts written for processes with MARK in their argv."""
    docs = [json.loads(x) for x in out.read_text().splitlines() if x.strip()]
    return {
        d["rule"]["id"]: d["rlguard"]["alert"]["severity"]
        for d in docs
        if d["event"].get("kind") == "alert" and mark in d.get("process", {}).get("args", [])
    }


def test_rule_settings_apply_at_start_and_on_reload(tmp_path: Path, listener: int) -> None:
    miner = tmp_path / "xmrig"  # a miner's name alone: RLG-MIN-002, low
    shutil.copy("/bin/true", miner)
    cfg = tmp_path / "rlguard.toml"
    base = f'[service]\nstate_dir = "{tmp_path / "state"}"\n[ledger]\nenabled = false\n'
    cfg.write_text(
        base + '[rules]\nmin_severity = "medium"\n'
        '[rules."RLG-MIN-001"]\nenabled = false\n'
        '[rules."RLG-TUN-002"]\nseverity = "critical"\n'
    )
    out = tmp_path / "events.ndjson"
    mon = start_run(cfg, out)
    try:
        wait_line(out, action("started"), timeout=60)
        m1 = "rlg-rules-" + uuid.uuid4().hex[:8]
        subprocess.run([str(miner), m1], check=True)
        client(listener, m1)
        # the last alert the process can raise; everything before it has been handled
        tun = wait_line(out, alert_of(m1, "RLG-TUN-002"))
        assert tun["rlguard"]["alert"]["severity"] == "critical"  # high evidence, overridden
        assert tun["event"]["severity"] == 99
        assert alerts(out, m1) == {"RLG-TUN-002": "critical"}  # no MIN-001, no low MIN-002

        # the same file without the settings, applied by a reload
        cfg.write_text(base)
        mon.send_signal(signal.SIGHUP)
        msg = wait_line(out, action("config_reloaded"))["rlguard"]["message"]
        assert "rules" in msg
        m2 = "rlg-rules-" + uuid.uuid4().hex[:8]
        subprocess.run([str(miner), m2], check=True)
        client(listener, m2)
        wait_line(out, alert_of(m2, "RLG-TUN-002"))
        got = alerts(out, m2)
        assert got["RLG-TUN-002"] == "high"
        assert got["RLG-MIN-001"] in ("high", "critical")
        assert got["RLG-MIN-002"] == "low"
    finally:
        stop_run(mon)
