"""`rlguard run` with every output the config offers: file with rotation, SIEM
over TCP, the live socket and the Prometheus endpoint, all on loopback."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_all_outputs(tmp_path: Path) -> None:
    recv = socket.socket()
    recv.bind(("127.0.0.1", 0))
    recv.listen(4)
    siem_port = recv.getsockname()[1]
    got: list[bytes] = []

    def receiver() -> None:
        conn, _ = recv.accept()
        conn.settimeout(20)
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                got.append(data)
        except OSError:
            pass

    threading.Thread(target=receiver, daemon=True).start()
    metrics_port = free_port()
    live = tmp_path / "live.sock"
    out = tmp_path / "events.ndjson"
    cfg = tmp_path / "rlguard.toml"
    cfg.write_text(
        "[output]\nmetrics_interval_s = 0.5\nrotate_bytes = 200000\nrotate_keep = 3\n"
        f'live_socket = "{live}"\n'
        f'[siem]\nurl = "tcp://127.0.0.1:{siem_port}"\nspool_dir = "{tmp_path / "spool"}"\n'
        f'[service]\nstate_dir = "{tmp_path / "state"}"\n'
        f'metrics_listen = "127.0.0.1:{metrics_port}"\n'
    )
    mon = subprocess.Popen(
        [sys.executable, "-m", "monitor.cli", "run", "--config", str(cfg), "--output", str(out)],
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert mon.stderr is not None
        line = ""
        while "armed" not in line:
            line = mon.stderr.readline()
            assert line, "monitor exited before arming"
        client = socket.socket(socket.AF_UNIX)
        client.connect(str(live))
        client.settimeout(10)
        for i in range(300):  # enough exec lines to rotate the 200 kB file
            subprocess.run(["/bin/true", f"rlg-out-{i}", "x" * 200], check=True)
        live_data = b""
        deadline = time.monotonic() + 10
        while b"rlg-out-299" not in live_data and time.monotonic() < deadline:
            live_data += client.recv(1 << 20)
        assert b"rlg-out-299" in live_data
        time.sleep(1.2)
        body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read()
        text = body.decode()
        assert "rlguard_events_total" in text and 'type="exec"' in text
        client.close()
    finally:
        mon.send_signal(signal.SIGTERM)
        rc = mon.wait(timeout=30)
    assert rc == 0
    assert not live.exists(), "the live socket is removed on exit"
    rotated = sorted(tmp_path.glob("events.ndjson.*"))
    assert 1 <= len(rotated) <= 3
    lines = []
    for f in [*reversed(rotated), out]:
        lines += [json.loads(x) for x in f.read_text().splitlines()]
    marks = [
        d
        for d in lines
        if d["event"]["action"] == "exec"
        and any(a.startswith("rlg-out-") for a in d["process"]["args"])
    ]
    # retention drops the oldest files; what is kept is a gap-free, duplicate-free tail
    nums = [
        int(next(a for a in d["process"]["args"] if a.startswith("rlg-out-"))[8:]) for d in marks
    ]
    assert nums == list(range(nums[0], 300)) and len(nums) > 50
    siem = b"".join(got).decode()
    assert siem.count("rlg-out-") >= 300
    assert siem.endswith("\n")
    for row in siem.splitlines():
        json.loads(row)
