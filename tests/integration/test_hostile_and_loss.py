"""Hostile input, secrets, pre-existing processes and forced loss, with real probes."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
import uuid

import pytest

from monitor.config import load_config
from tests.conftest import build_helper
from tests.support.live import LiveMonitor, exec_with_arg

pytestmark = pytest.mark.integration


def test_escape_sequences_and_invalid_utf8(live) -> None:
    m = f"rlg-{uuid.uuid4().hex[:8]}"
    hostile = [b"\x1b[2J\x1b[H", b"\x1b]0;pwned\x07", b"caf\xc3\xa9", b"bad\xff\xfe", b"\x9b31m"]
    argv = [b"/bin/true", m.encode(), *hostile]
    proc = subprocess.Popen(argv)
    proc.wait(timeout=10)
    doc = live.wait_for(exec_with_arg(m))
    line = next(x for x in live.sink.lines if m.encode() in x and b'"exec"' in x)
    json.loads(line)  # valid JSON
    assert b"\x1b" not in line and b"\x07" not in line
    args = doc["process"]["args"]
    assert args[2] == "\\x1b[2J\\x1b[H"
    assert args[3] == "\\x1b]0;pwned\\x07"
    assert args[4] == "café"
    assert args[5] == "bad\\xff\\xfe"
    assert args[6] == "\\x9b31m"


def test_one_megabyte_argv_is_truncated(live) -> None:
    m = f"rlg-{uuid.uuid4().hex[:8]}"
    # a 1 MB argv: one string may hold at most 128 KiB (MAX_ARG_STRLEN), so eight
    # of them, then more entries than the probe keeps (32)
    argv = ["/bin/true", m] + ["B" * (128 * 1024 - 1)] * 8 + [f"x{i}" for i in range(40)]
    proc = subprocess.Popen(argv)
    proc.wait(timeout=10)
    doc = live.wait_for(exec_with_arg(m))
    args = doc["process"]["args"]
    assert doc["rlguard"]["exec"]["args_truncated"] is True
    assert len(args) == 32
    assert all(len(a) <= 256 for a in args)
    assert args[2].startswith("BBBB")
    line = next(x for x in live.sink.lines if m.encode() in x and b'"exec"' in x)
    assert len(line) < 64 * 1024


def test_secrets_never_leave_the_kernel(live) -> None:
    m = f"rlg-{uuid.uuid4().hex[:8]}"
    secret = f"S3CRET-{uuid.uuid4().hex}"
    env = {
        "RL_EPISODE_ID": "ep-secret",
        "AWS_SECRET_ACCESS_KEY": secret,
        "OPENAI_API_KEY": secret,
        "GITHUB_TOKEN": secret,
        "DB_PASSWORD": secret,
    }
    subprocess.run(["/bin/true", m], env=env, check=True)
    doc = live.wait_for(exec_with_arg(m))
    assert doc["rl"]["episode_id"] == "ep-secret"
    time.sleep(0.2)
    assert not any(secret.encode() in line for line in live.sink.lines)


def test_denied_keys_are_never_read(tmp_path) -> None:
    cfg_file = tmp_path / "rlguard.toml"
    cfg_file.write_text('[tags]\nextra = ["MY_API_KEY", "RL_NOTE"]\n')
    cfg = load_config(cfg_file)
    assert "MY_API_KEY" not in cfg.tags.keys
    assert "RL_NOTE" in cfg.tags.keys
    assert any(k == "MY_API_KEY" for k, _ in cfg.tags.denied)


def test_process_running_before_monitor_is_attributed() -> None:
    # started before this monitor: it waits, then starts a child and connects
    script = (
        "import socket, subprocess, sys, time\n"
        "while not __import__('os').path.exists(sys.argv[1]): time.sleep(0.02)\n"
        "subprocess.run(['/bin/true', sys.argv[2]])\n"
        "u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.connect(('127.0.0.1', 9))\n"
    )
    go = f"/tmp/rlg-go-{uuid.uuid4().hex}"
    m = f"rlg-{uuid.uuid4().hex[:8]}"
    env = {"RL_EPISODE_ID": "ep-before", "RL_WORKER_ID": "worker-7"}
    proc = subprocess.Popen([sys.executable, "-c", script, go, m], env=env)
    time.sleep(0.3)
    mon = LiveMonitor(load_config(None)).start()
    try:
        open(go, "w").close()
        assert proc.wait(timeout=20) == 0
        conn = mon.wait_for(
            lambda d: d["event"]["action"] == "connect" and d["process"]["pid"] == proc.pid
        )
        assert conn["rl"]["episode_id"] == "ep-before"
        assert conn["rl"]["worker_id"] == "worker-7"
        assert conn["rl"]["source"] == "proc_environ"
        assert conn["process"]["args"][:2] == [sys.executable, "-c"]
        child = mon.wait_for(exec_with_arg(m))
        assert child["rl"]["episode_id"] == "ep-before"
        assert child["rl"]["source"] == "inherited"
        assert child["rl"]["origin"]["pid"] == proc.pid
    finally:
        os.unlink(go)
        if proc.poll() is None:
            proc.kill()
        mon.stop()


def test_forced_overflow_reports_drops() -> None:
    cfg = load_config(None)
    tiny = dataclasses.replace(cfg, probes=dataclasses.replace(cfg.probes, ring_pages=8))
    mon = LiveMonitor(tiny)
    mon.collector.start()  # not draining: the flood must overflow the 32 KiB ring
    try:
        flood = build_helper("connect_flood")
        # distinct fds: no two connects fold (see connect_flood.c), each needs a record
        subprocess.run([str(flood), "9", "5000", "5000"], check=True, timeout=60)
        mon.collector.step()
        time.sleep(1.1)  # the drop check runs once a second
        mon.collector.step()
        dropped = mon.sink.wait_for(
            lambda d: d["event"]["kind"] == "metric" and d["event"]["action"] == "events_dropped",
            timeout=5,
        )
        assert dropped["rlguard"]["drops"]["delta"]["connect"] > 0
        metrics = mon.collector._metrics()
        assert metrics["rlguard"]["drops_total"] > 0
        assert metrics["rlguard"]["kernel"]["drops"]["connect"] > 0
    finally:
        mon.collector.close()
