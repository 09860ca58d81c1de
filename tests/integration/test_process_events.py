"""exec, fork, exit and tag inheritance, seen through the real probes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import pytest

from tests.conftest import build_helper
from tests.support.live import exec_with_arg

pytestmark = pytest.mark.integration


def marker() -> str:
    return f"rlg-{uuid.uuid4().hex[:10]}"


def run(
    cmd: list[str], env: dict[str, str] | None = None, **kw: object
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(cmd, env=env, check=False, timeout=30, **kw)  # type: ignore[call-overload]


def test_exec_event_fields(live) -> None:
    m = marker()
    env = {"PATH": "/usr/bin:/bin", "RL_EPISODE_ID": "ep-exec-1", "RL_WORKER_ID": "w3"}
    proc = subprocess.Popen(["/bin/echo", "hello", m], env=env, stdout=subprocess.DEVNULL)
    proc.wait(timeout=10)
    doc = live.wait_for(exec_with_arg(m))
    p = doc["process"]
    assert p["pid"] == proc.pid
    assert p["executable"] == "/bin/echo"
    assert p["args"] == ["/bin/echo", "hello", m]
    assert p["args_count"] == 3
    assert p["name"] == "echo"
    assert p["parent"]["pid"] == os.getpid()
    assert p["user"]["id"] == str(os.geteuid())
    assert p["entity_id"] and p["start"].endswith("Z")
    assert doc["event"]["kind"] == "event"
    assert doc["event"]["category"] == ["process"]
    rl = doc["rl"]
    assert rl["episode_id"] == "ep-exec-1"
    assert rl["worker_id"] == "w3"
    assert rl["source"] == "own_env"
    assert rl["tags"] == {"RL_EPISODE_ID": "ep-exec-1", "RL_WORKER_ID": "w3"}
    assert doc["rlguard"]["exec"]["own_tag_keys"] == ["RL_EPISODE_ID", "RL_WORKER_ID"]
    assert doc["host"]["boot"]["id"]


def test_fork_and_exit_codes(live) -> None:
    m = marker()
    script = (
        "import os, sys, signal\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    os._exit(7)\n"
        "os.waitpid(pid, 0)\n"
        "pid2 = os.fork()\n"
        "if pid2 == 0:\n"
        "    signal.pause()\n"
        "os.kill(pid2, signal.SIGKILL)\n"
        "os.waitpid(pid2, 0)\n"
        "print(pid, pid2)\n"
    )
    env = {"RL_EPISODE_ID": "ep-fork"}
    out = run([sys.executable, "-c", script, m], env=env, capture_output=True)
    child, killed = (int(x) for x in out.stdout.split())
    fork = live.wait_for(lambda d: d["event"]["action"] == "fork" and d["process"]["pid"] == child)
    assert fork["process"]["parent"]["name"].startswith("python")
    assert fork["rl"]["episode_id"] == "ep-fork"
    assert fork["rl"]["source"] == "inherited"
    ex = live.wait_for(lambda d: d["event"]["action"] == "exit" and d["process"]["pid"] == child)
    assert ex["process"]["exit_code"] == 7
    assert ex["rl"]["episode_id"] == "ep-fork"
    k = live.wait_for(lambda d: d["event"]["action"] == "exit" and d["process"]["pid"] == killed)
    assert k["rlguard"]["exit"]["signal"] == 9
    assert k["process"]["exit_code"] is None


def test_threads_are_not_processes(live) -> None:
    m = marker()
    script = (
        "import threading, os, sys\n"
        "ts = [threading.Thread(target=lambda: None) for _ in range(5)]\n"
        "[t.start() for t in ts]; [t.join() for t in ts]\n"
        "print(os.getpid())\n"
    )
    start = live.mark()
    out = run([sys.executable, "-c", script, m], capture_output=True)
    pid = int(out.stdout)
    live.wait_for(
        lambda d: d["event"]["action"] == "exit" and d["process"]["pid"] == pid, start=start
    )
    forks = live.sink.find_all(
        lambda d: d["event"]["action"] == "fork" and d["process"]["parent"]["pid"] == pid
    )
    assert forks == []


def test_process_under_one_millisecond(live) -> None:
    """Every run is captured with argv and tags; the kernel's own timestamps
    show the process lived under a millisecond (the first, cold run may not)."""
    from datetime import datetime

    quick = build_helper("quick", static=True)
    env = {"RL_EPISODE_ID": "ep-quick", "RL_RUN_ID": "run-9"}
    lifetimes = []
    for _ in range(5):
        m = marker()
        proc = subprocess.Popen([str(quick), m], env=env)
        assert proc.wait(timeout=10) == 3
        doc = live.wait_for(exec_with_arg(m))
        assert doc["process"]["args"] == [str(quick), m]
        assert doc["rl"]["episode_id"] == "ep-quick"
        assert doc["rl"]["run_id"] == "run-9"
        ex = live.wait_for(
            lambda d, pid=proc.pid: d["event"]["action"] == "exit" and d["process"]["pid"] == pid
        )
        assert ex["process"]["exit_code"] == 3
        assert ex["rl"]["episode_id"] == "ep-quick"
        t_exec = datetime.fromisoformat(doc["@timestamp"].replace("Z", "+00:00"))
        t_exit = datetime.fromisoformat(ex["@timestamp"].replace("Z", "+00:00"))
        lifetimes.append((t_exit - t_exec).total_seconds())
    assert min(lifetimes) < 0.001, lifetimes


INHERIT_SCRIPT = r"""
import os, subprocess, sys, time
m = sys.argv[1]
# env -i grandchild: no environment at all
subprocess.run(["env", "-i", "/bin/sh", "-c", f"/bin/true {m}-envi"])
# double-forked daemon
pid = os.fork()
if pid == 0:
    os.setsid()
    if os.fork() == 0:
        os.execve("/bin/true", ["/bin/true", f"{m}-daemon"], {})
    os._exit(0)
os.waitpid(pid, 0)
# setsid child
subprocess.run(["setsid", "/bin/true", f"{m}-setsid"], env={})
# a child with its own episode
subprocess.run(["/bin/true", f"{m}-own"], env={"RL_EPISODE_ID": "ep-child"})
time.sleep(0.2)
"""


def test_tags_inherited_in_kernel(live) -> None:
    m = marker()
    env = {"PATH": "/usr/bin:/bin", "RL_EPISODE_ID": "ep-parent", "RL_TRAJECTORY_ID": "traj-4"}
    proc = subprocess.Popen([sys.executable, "-c", INHERIT_SCRIPT, m], env=env)
    assert proc.wait(timeout=30) == 0
    parent = live.wait_for(
        lambda d: d["event"]["action"] == "exec" and d["process"]["pid"] == proc.pid
    )
    assert parent["rl"]["source"] == "own_env"
    for suffix in ("envi", "daemon", "setsid"):
        doc = live.wait_for(exec_with_arg(f"{m}-{suffix}"))
        assert doc["rl"]["episode_id"] == "ep-parent", suffix
        assert doc["rl"]["trajectory_id"] == "traj-4", suffix
        assert doc["rl"]["source"] == "inherited", suffix
        assert doc["rl"]["origin"]["pid"] == proc.pid, suffix
        assert "own_tag_keys" not in doc["rlguard"]["exec"]
    own = live.wait_for(exec_with_arg(f"{m}-own"))
    # kernel lineage outranks a process's own tags: the inherited episode stands,
    # the contradiction is recorded and alerted (a forged tag is itself suspicious)
    assert own["rl"]["episode_id"] == "ep-parent"
    assert own["rl"]["source"] == "inherited"
    assert own["rl"]["conflict"]["roles"]["episode"] == {"own_env": "ep-child", "kept": "ep-parent"}
    assert own["rl"]["trajectory_id"] == "traj-4"
    assert own["rlguard"]["exec"]["own_tag_keys"] == ["RL_EPISODE_ID"]
    alert = live.wait_for(
        lambda d: (
            d["event"]["kind"] == "alert"
            and d["rule"]["id"] == "RLG-ATTR-001"
            and d["process"]["entity_id"] == own["process"]["entity_id"]
        )
    )
    assert alert["rlguard"]["alert"]["conflict"]["kept_source"] == "inherited"


def test_lineage_is_listed(live) -> None:
    m = marker()
    proc = subprocess.Popen(["/bin/sh", "-c", f"/bin/sh -c '/bin/true {m}'"])
    proc.wait(timeout=10)
    doc = live.wait_for(exec_with_arg(m))
    pids = [a["pid"] for a in doc["rl"]["lineage"]]
    assert proc.pid in pids
    assert os.getpid() in pids


def test_threaded_process_exit_code_is_not_a_signal(live) -> None:
    script = (
        "import threading, time, os\n"
        "for _ in range(3):\n"
        "    threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n"
        "time.sleep(0.05)\n"
        "os._exit(5)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    assert proc.wait(timeout=20) == 5
    ex = live.wait_for(lambda d: d["event"]["action"] == "exit" and d["process"]["pid"] == proc.pid)
    assert ex["process"]["exit_code"] == 5
    assert "signal" not in ex["rlguard"]["exit"]


def test_exec_from_unfaulted_memory_keeps_the_kernel_path(live) -> None:
    helper = build_helper("unfaulted_exec")
    proc = subprocess.Popen([str(helper), marker()])
    proc.wait(timeout=10)
    doc = live.wait_for(
        lambda d: (
            d["event"]["action"] == "exec"
            and d["process"]["pid"] == proc.pid
            and d["process"]["executable"] == "/bin/true"
        )
    )
    # the path comes from the exec tracepoint (the kernel's copy); argv that
    # could not be read is flagged rather than silently empty
    exe = doc["rlguard"]["exec"]
    if doc["process"]["args"][:1] != ["/bin/true"]:
        assert exe.get("argv_unreadable") is True


def test_repeated_env_key_first_wins(live) -> None:
    helper = build_helper("dupenv")
    m = marker()
    subprocess.run([str(helper), m], check=True, timeout=10)
    doc = live.wait_for(lambda d: exec_with_arg(m)(d) and d["process"]["executable"] == "/bin/true")
    assert doc["rl"]["episode_id"] == "ep-first"


def test_exact_length_argument_is_not_truncated(live) -> None:
    m = marker()
    exact = "E" * 255  # 255 characters + NUL fill the 256-byte slot exactly
    subprocess.run(["/bin/true", m, exact], check=True, timeout=10)
    doc = live.wait_for(exec_with_arg(m))
    assert doc["process"]["args"][2] == exact
    assert doc["rlguard"]["exec"]["args_truncated"] is False


@pytest.mark.parametrize("sig", [15, 2, 9])
def test_death_by_signal_names_the_signal(live, sig) -> None:
    proc = subprocess.Popen(["sleep", "30"])
    time.sleep(0.2)
    proc.send_signal(sig)
    proc.wait(timeout=10)
    ex = live.wait_for(lambda d: d["event"]["action"] == "exit" and d["process"]["pid"] == proc.pid)
    assert ex["rlguard"]["exit"]["signal"] == sig
    assert ex["process"]["exit_code"] is None
