"""The `rlguard` command as an operator runs it: real process, real probes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

RLGUARD = [sys.executable, "-m", "monitor.cli"]


def as_nobody(*args: str) -> subprocess.CompletedProcess[str]:
    """rlguard run as user nobody, with no capabilities."""
    return subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *RLGUARD, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )


def test_check_reports_every_line() -> None:
    res = subprocess.run([*RLGUARD, "check"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    for needle in (
        "privileges",
        "BTF",
        "tracefs",
        "tracepoint sched:sched_process_exec",
        "tracepoint sock:inet_sock_set_state",
        "bcc",
        "kernel headers",
        "ring buffer",
        "cgroup v2",
        "[  ok] cgroup paths",
        "probes",
        "tracepoint syscalls:sys_enter_openat",
        "NVML",
    ):
        assert needle in out, needle
    # without a GPU stack NVML is a note, never a failure
    assert "[FAIL] NVML" not in out
    assert "rlguard can run on this host" in out


def test_check_without_root_says_how_to_fix(tmp_path: Path) -> None:
    # drop to nobody: the privilege check must fail with a fix, never a traceback
    res = as_nobody("check", "--no-load")
    assert res.returncode == 1
    assert "Traceback" not in res.stderr + res.stdout
    assert "[FAIL] privileges" in res.stdout
    assert "fix: run as root" in res.stdout


def test_bad_config_exits_2(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[probes]\nring_page = 64\n")
    res = subprocess.run(
        [*RLGUARD, "run", "--config", str(cfg)], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 2
    assert str(cfg) in res.stderr and "probes.ring_page" in res.stderr
    assert "Traceback" not in res.stderr


def test_run_writes_ndjson(tmp_path: Path) -> None:
    out = tmp_path / "events.ndjson"
    cfg = tmp_path / "rlguard.toml"
    cfg.write_text("[output]\nmetrics_interval_s = 1.0\n")
    mon = subprocess.Popen(
        [*RLGUARD, "run", "--config", str(cfg), "--output", str(out)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert mon.stderr is not None
        line = mon.stderr.readline()
        assert "armed" in line, line
        m = f"rlg-{uuid.uuid4().hex[:8]}"
        subprocess.run(["/bin/true", m], env={"RL_EPISODE_ID": "ep-cli"}, check=True)
        time.sleep(1.5)
    finally:
        mon.terminate()
        try:
            rc = mon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            mon.kill()
            raise
    assert rc == 0
    docs = [json.loads(line) for line in out.read_text().splitlines()]
    kinds = [(d["event"]["kind"], d["event"]["action"]) for d in docs]
    assert kinds[0] == ("metric", "started")
    assert kinds[-1] == ("metric", "stopped")
    assert ("metric", "stats") in kinds
    exe = next(d for d in docs if d["event"]["action"] == "exec" and m in d["process"]["args"])
    assert exe["rl"]["episode_id"] == "ep-cli"
    started = docs[0]["rlguard"]["lifecycle"]
    assert started["armed_s"] < 30
    stats = next(d for d in docs if d["event"]["action"] == "stats")["rlguard"]
    assert stats["drops_total"] == 0
    assert stats["kernel"]["sent"]["exec"] >= 1


def test_check_without_bcc_says_how_to_fix() -> None:
    # the interpreter refuses to import bcc (sys.modules entry None makes import fail)
    code = (
        "import sys; sys.modules['bcc'] = None; sys.argv = ['rlguard', 'check']\n"
        "from monitor.cli import main; main()\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert "Traceback" not in res.stderr + res.stdout
    assert "[FAIL] bcc: the bcc Python binding is not importable" in res.stdout
    assert "apt-get install python3-bpfcc" in res.stdout


def test_check_without_tracefs_says_how_to_fix() -> None:
    # a private mount namespace where tracefs is unmounted: the host keeps its own
    script = (
        "umount /sys/kernel/tracing 2>/dev/null; umount /sys/kernel/debug/tracing 2>/dev/null; "
        "umount /sys/kernel/debug 2>/dev/null; "
        f"exec {sys.executable} -m monitor.cli check --no-load"
    )
    res = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 1, res.stdout
    assert "Traceback" not in res.stderr + res.stdout
    assert "[FAIL] tracefs: not mounted" in res.stdout
    assert "fix: mount -t tracefs none /sys/kernel/tracing" in res.stdout


def test_run_without_root_fails_cleanly() -> None:
    res = as_nobody("run", "--duration", "1")
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    assert "cannot run here" in res.stderr and "privileges" in res.stderr
