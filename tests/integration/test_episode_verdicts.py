"""Registry episodes through to verdicts, with real probes: the birth rule decides which episode
a late miner lands on, kernel drops make a verdict `review`, and `rlguard episodes --flagged`
lists exactly the episodes with critical alerts, across a restart."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from monitor.client import send
from monitor.config import config_from_dict
from monitor.lab.incident import XMRIG_LOGIN
from tests.support.live import (
    REPO,
    LiveMonitor,
    episodes_json,
    start_run,
    stop_run,
    wait_line,
)
from tests.support.net import reading_server

pytestmark = pytest.mark.integration

CLEAN_ENV = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}


def verdict_of(eid: str, verdict: str | None = None) -> Callable[[dict[str, Any]], bool]:
    def pred(d: dict[str, Any]) -> bool:
        if d["event"].get("dataset") != "rlguard.verdict" or d["rl"]["episode_id"] != eid:
            return False
        return verdict is None or d["rlguard"]["verdict"]["verdict"] == verdict

    return pred


@pytest.fixture
def pool() -> Iterator[int]:
    """A loopback 'pool' that reads what each client sends and hangs up."""
    with reading_server() as port:
        yield port


def test_birth_episode_verdicts_and_flagged_list_survive_a_restart(tmp_path, pool) -> None:
    sock = tmp_path / "registry.sock"
    cfg = tmp_path / "rlguard.toml"
    cfg.write_text(
        f'[service]\nstate_dir = "{tmp_path / "state"}"\n'
        "[output]\nmetrics_interval_s = 0.5\n"
        f'[registry]\nsocket = "{sock}"\n'
        f'[ledger]\npath = "{tmp_path / "episodes.db"}"\nverdict_grace_s = 0.3\n'
    )
    m = uuid.uuid4().hex[:8]
    e1, e2, e3 = (f"ep{i}-{m}" for i in (1, 2, 3))
    out = tmp_path / "events.ndjson"
    miner = (
        "import socket, sys, time; time.sleep(1.5); "
        "s = socket.create_connection(('127.0.0.1', int(sys.argv[1]))); "
        "s.sendall(bytes.fromhex(sys.argv[2])); s.close()"
    )
    benign = "import socket, sys; socket.create_connection(('127.0.0.1', int(sys.argv[1]))).close()"
    trainer = f"""
import subprocess, sys, time
from monitor.client import episode, run
env = {{"PATH": "/usr/bin:/bin"}}
with run(run_id="run-{m}", path={str(sock)!r}, strict=True):
    with episode({e1!r}, path={str(sock)!r}, bind="process", strict=True):
        # the miner is born in episode 1 and phones home 1.5 s later, during episode 2
        subprocess.Popen([sys.executable, "-c", {miner!r}, "{pool}", {XMRIG_LOGIN.hex()!r}],
                         env=env, start_new_session=True)
    with episode({e2!r}, path={str(sock)!r}, bind="process", strict=True):
        subprocess.run([sys.executable, "-c", {benign!r}, "{pool}"], env=env, check=True)
        time.sleep(3.0)
    with episode({e3!r}, path={str(sock)!r}, bind="process", strict=True):
        subprocess.run([sys.executable, "-c", {benign!r}, "{pool}"], env=env, check=True)
"""
    mon = start_run(cfg, out)
    try:
        wait_line(out, lambda d: d["event"].get("action") == "started", timeout=60)
        subprocess.run([sys.executable, "-c", trainer], env=CLEAN_ENV, check=True, timeout=60)
        alert = wait_line(
            out,
            lambda d: d["event"]["kind"] == "alert" and d["rule"]["id"] == "RLG-MIN-001",
        )
        assert alert["rl"]["episode_id"] == e1 and alert["rl"]["source"] == "registry"
        assert alert["rlguard"]["alert"]["severity"] == "critical"
        got = wait_line(out, verdict_of(e1, "drop"))["rlguard"]["verdict"]
        assert "alert:RLG-MIN-001:critical" in got["reasons"]
        for eid in (e2, e3):
            v = wait_line(out, verdict_of(eid))["rlguard"]["verdict"]
            assert v["verdict"] == "keep", (eid, v)
            assert v["counts"]["connects"] >= 1
    finally:
        stop_run(mon)
    assert mon.returncode == 0, mon.stderr.read() if mon.stderr else ""

    mon = start_run(cfg, tmp_path / "again.ndjson")
    try:
        wait_line(tmp_path / "again.ndjson", lambda d: d["event"].get("action") == "started")
        # the monitor sees the whole machine: other tests' tagged episodes may be flagged too
        flagged = [e["episode_id"] for e in episodes_json(cfg, "--flagged")]
        assert [e for e in flagged if e.endswith(m)] == [e1]
        listed = {e["episode_id"]: e for e in episodes_json(cfg, "--run", f"run-{m}")}
        assert {k: v["verdict"] for k, v in listed.items()} == {e1: "drop", e2: "keep", e3: "keep"}
    finally:
        stop_run(mon)


def test_drops_in_an_episode_window_make_it_review(tmp_path) -> None:
    sock = str(tmp_path / "registry.sock")
    cfg = config_from_dict(
        {
            "registry": {"socket": sock},
            "ledger": {"path": str(tmp_path / "episodes.db"), "verdict_grace_s": 0.1},
        }
    )
    tiny = dataclasses.replace(cfg, probes=dataclasses.replace(cfg.probes, ring_pages=8))
    mon = LiveMonitor(tiny, ledger=True)
    mon.collector.start()  # no loop: we step by hand, so the burst overflows the 32 KiB ring
    eid = f"ep-drops-{uuid.uuid4().hex[:8]}"
    try:
        send({"op": "episode_start", "episode_id": eid, "pids": [os.getpid()]}, sock)
        mon.collector.step()
        subprocess.run(
            ["/bin/sh", "-c", "i=0; while [ $i -lt 400 ]; do /bin/true; i=$((i+1)); done"],
            check=True,
            timeout=120,
        )
        mon.collector.step()
        time.sleep(1.1)  # the kernel's drop counters are read once a second
        mon.collector.step()
        dropped = mon.sink.wait_for(lambda d: d["event"].get("action") == "events_dropped")
        assert sum(dropped["rlguard"]["drops"]["delta"].values()) > 0
        send({"op": "episode_end", "episode_id": eid}, sock)
        deadline = time.monotonic() + 10
        verdict = None
        while verdict is None and time.monotonic() < deadline:
            mon.collector.step()
            found = mon.sink.find_all(verdict_of(eid))
            verdict = found[-1]["rlguard"]["verdict"] if found else None
            time.sleep(0.1)
        assert verdict is not None, "no verdict line"
        assert verdict["verdict"] == "review"
        assert "events_dropped" in verdict["reasons"]
        assert verdict["coverage"]["events_dropped"] > 0
    finally:
        mon.collector.close()
