"""The monitor as systemd runs it: readiness, reload on SIGHUP, gap after restart."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

RLGUARD = [sys.executable, "-m", "monitor.cli", "run"]


def start(cfg: Path, out: Path, notify: Path) -> subprocess.Popen[str]:
    env = {"NOTIFY_SOCKET": str(notify), "PATH": "/usr/bin:/bin"}
    return subprocess.Popen(
        [*RLGUARD, "--config", str(cfg), "--output", str(out)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )


def wait_lines(out: Path, pred, timeout: float = 20) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if out.exists():
            docs = [json.loads(x) for x in out.read_text().splitlines() if x.strip()]
            if any(pred(d) for d in docs):
                return docs
        time.sleep(0.1)
    raise AssertionError("expected line not written")


def action(name: str):
    return lambda d: d.get("event", {}).get("action") == name


def test_ready_reload_and_gap(tmp_path: Path) -> None:
    notify = tmp_path / "notify.sock"
    ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    ns.bind(str(notify))
    ns.settimeout(60)
    state = tmp_path / "state"
    cfg = tmp_path / "rlguard.toml"
    cfg.write_text(f'[service]\nstate_dir = "{state}"\n[output]\nmetrics_interval_s = 0.5\n')
    out = tmp_path / "events.ndjson"
    mon = start(cfg, out, notify)
    try:
        msg = ns.recv(4096).decode()
        assert msg.startswith("READY=1"), msg
        # readiness comes only once probes are attached: the start line is written
        docs = wait_lines(out, action("started"))
        assert docs[0]["event"]["action"] == "started"
        # a bad config on reload: keep running on the old one and say why
        cfg.write_text("[probes]\nring_pages = 1000\n")
        mon.send_signal(signal.SIGHUP)
        docs = wait_lines(out, action("config_reload_failed"))
        failed = next(d for d in docs if d["event"]["action"] == "config_reload_failed")
        assert "ring_pages" in failed["rlguard"]["message"]
        assert mon.poll() is None
        # a good one is applied
        cfg.write_text(
            f'[service]\nstate_dir = "{state}"\n[allowlist]\ndestinations = ["203.0.113.0/24"]\n'
        )
        mon.send_signal(signal.SIGHUP)
        wait_lines(out, action("config_reloaded"))
        # crash: no clean stop
        mon.kill()
        mon.wait(timeout=10)
    finally:
        if mon.poll() is None:
            mon.kill()
    time.sleep(1.0)
    out2 = tmp_path / "events2.ndjson"
    mon2 = start(cfg, out2, notify)
    try:
        docs = wait_lines(out2, action("monitoring_gap"))
        gap = next(d for d in docs if d["event"]["action"] == "monitoring_gap")["rlguard"]["gap"]
        assert gap["clean_stop"] is False and gap["same_boot"] is True
        assert gap["duration_s"] >= 1.0
        mon2.send_signal(signal.SIGTERM)
        assert mon2.wait(timeout=30) == 0
        # STOPPING=1 was sent on the way out
        seen = []
        ns.settimeout(1)
        try:
            while True:
                seen.append(ns.recv(4096).decode())
        except TimeoutError:
            pass
        assert any(m.startswith("STOPPING=1") for m in seen), seen
        assert json.loads((state / "heartbeat.json").read_text())["clean_stop"] is True
    finally:
        if mon2.poll() is None:
            mon2.kill()
        ns.close()
