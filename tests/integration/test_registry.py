"""The trainer registry with real probes: thread binding, cgroups, forged tags, birth rule,
and a socket that survives whatever a client sends."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from monitor.client import episode, send
from monitor.config import config_from_dict
from monitor.sensor.probes import find_cgroup2
from tests.support.live import LiveMonitor
from tests.support.system import rmdir_when_empty

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CLEAN_ENV = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def connector(port: int, mark: str) -> list[str]:
    """A short-lived process that connects to 127.0.0.1:port; MARK is in its argv."""
    code = "import socket,sys; socket.socket().connect_ex(('127.0.0.1', int(sys.argv[1])))"
    return ["/usr/bin/python3", "-c", code, str(port), mark]


@pytest.fixture(scope="module")
def mon() -> Iterator[tuple[LiveMonitor, str]]:
    tmp = tempfile.mkdtemp(prefix="rlg-reg-")
    path = os.path.join(tmp, "registry.sock")
    cfg = config_from_dict(
        {
            "registry": {"socket": path, "max_line_bytes": 4096, "max_clients": 8},
            "attribution": {"sandbox_patterns": [r"/(?P<sandbox>rlg-sbx-[a-z0-9]+)"]},
        }
    )
    m = LiveMonitor(cfg).start()
    try:
        yield m, path
    finally:
        m.stop()
        assert not os.path.exists(path), "the socket is removed on stop"
        os.rmdir(tmp)


def connect_of(mark: str):
    def pred(d: dict) -> bool:
        return d["event"]["action"] == "connect" and mark in d["process"].get("args", [])

    return pred


def test_thread_level_episodes(mon) -> None:
    """Two threads of one process, each bound to its own episode, each start a connector."""
    live, path = mon
    m = uuid.uuid4().hex[:8]
    port = closed_port()
    script = f"""
import subprocess, threading
from monitor.client import episode
def worker(ep):
    with episode(episode_id=ep, trajectory_id=ep + "-t", run_id="run-{m}", path={path!r},
                 strict=True):
        subprocess.run({connector(port, "X")!r}[:-1] + [ep], env={{"PATH": "/usr/bin:/bin"}})
ts = [threading.Thread(target=worker, args=(f"ep-{m}-{{i}}",)) for i in (1, 2)]
[t.start() for t in ts]; [t.join() for t in ts]
"""
    subprocess.run([sys.executable, "-c", script], env=CLEAN_ENV, check=True, timeout=60)
    for i in (1, 2):
        ep = f"ep-{m}-{i}"
        doc = live.wait_for(connect_of(ep))
        rl = doc["rl"]
        assert rl["episode_id"] == ep
        assert rl["trajectory_id"] == ep + "-t"
        assert rl["run_id"] == f"run-{m}"
        assert rl["source"] == "registry"
        assert rl["binding"]["via"] == "ancestor"
        assert rl["tags"] == {}  # no environment tag at all: the registry alone
    starts = live.sink.find_all(
        lambda d: (
            d["event"]["action"] == "episode_start"
            and str(d["rl"]["episode_id"]).startswith(f"ep-{m}")
        )
    )
    assert len(starts) == 2 and all(d["event"]["dataset"] == "rlguard.episode" for d in starts)
    assert all(len(d["rlguard"]["registry"]["bindings"]["tids"]) == 1 for d in starts)
    live.wait_for(
        lambda d: d["event"]["action"] == "episode_end" and d["rl"]["episode_id"] == f"ep-{m}-1"
    )


@pytest.fixture
def cgroup_dir() -> Iterator[Path]:
    mount = find_cgroup2()
    if mount is None:
        pytest.skip("no cgroup2 hierarchy mounted")
    d = Path(mount) / f"rlg-sbx-{uuid.uuid4().hex[:8]}"
    d.mkdir()
    try:
        yield d
    finally:
        rmdir_when_empty(d)


def test_process_entered_into_bound_cgroup_is_attributed_by_cgroup(mon, cgroup_dir) -> None:
    live, path = mon
    m = uuid.uuid4().hex[:8]
    rel = "/" + cgroup_dir.name
    send({"op": "episode_start", "episode_id": f"ep-cg-{m}", "cgroup": rel}, path)
    port = closed_port()
    # like `docker exec`: a process from elsewhere joins the sandbox's cgroup, then execs
    joiner = ["/bin/sh", "-c", f'echo $$ > {cgroup_dir}/cgroup.procs && exec "$@"', "sh"]
    subprocess.run(["env", "-i", *joiner, *connector(port, m)], check=True, timeout=30, cwd="/")
    doc = live.wait_for(connect_of(m))
    assert doc["rl"]["episode_id"] == f"ep-cg-{m}"
    assert doc["rl"]["source"] == "cgroup"
    assert doc["rl"]["tags"] == {}
    assert doc["rlguard"]["cgroup"]["path"] == rel
    assert doc["rl"]["sandbox_id"] == cgroup_dir.name  # from [attribution] sandbox_patterns
    send({"op": "episode_end", "episode_id": f"ep-cg-{m}"}, path)


def test_sandbox_name_without_registry(mon, cgroup_dir) -> None:
    live, _ = mon
    m = uuid.uuid4().hex[:8]
    joiner = ["/bin/sh", "-c", f'echo $$ > {cgroup_dir}/cgroup.procs && exec "$@"', "sh"]
    subprocess.run(["env", "-i", *joiner, "/bin/true", m], check=True, timeout=30, cwd="/")
    doc = live.wait_for(
        lambda d: d["event"]["action"] == "exec" and d["process"].get("args") == ["/bin/true", m]
    )
    assert doc["rl"]["sandbox_id"] == cgroup_dir.name
    assert doc["rl"]["episode_id"] is None


def test_forged_episode_tag_keeps_registry_value_and_alerts(mon) -> None:
    live, path = mon
    m = uuid.uuid4().hex[:8]
    port = closed_port()
    script = f"""
import subprocess
from monitor.client import episode
with episode(episode_id="ep-real-{m}", bind="process", path={path!r}, strict=True):
    subprocess.run(["env", "RL_EPISODE_ID=ep-forged-{m}", *{connector(port, m)!r}])
"""
    subprocess.run([sys.executable, "-c", script], env=CLEAN_ENV, check=True, timeout=60)
    doc = live.wait_for(connect_of(m))
    assert doc["rl"]["episode_id"] == f"ep-real-{m}"
    assert doc["rl"]["source"] == "registry"
    assert doc["rl"]["tags"]["RL_EPISODE_ID"] == f"ep-forged-{m}"  # what it claimed, kept
    alert = live.wait_for(
        lambda d: (
            d["event"]["kind"] == "alert"
            and d["rule"]["id"] == "RLG-ATTR-001"
            and f"ep-forged-{m}" in d["event"]["reason"]
        )
    )
    assert alert["rl"]["episode_id"] == f"ep-real-{m}"
    assert alert["rlguard"]["alert"]["conflict"]["kept_source"] == "registry"
    assert alert["rlguard"]["alert"]["conflict"]["roles"]["episode"] == {
        "own_env": f"ep-forged-{m}",
        "kept": f"ep-real-{m}",
    }


def test_birth_episode_rule(mon) -> None:
    """A background process started in episode 1 that connects during episode 2 is episode 1's."""
    live, path = mon
    m = uuid.uuid4().hex[:8]
    port = closed_port()
    bg = ["/bin/sh", "-c", 'sleep 1.5; exec "$@"', "sh", *connector(port, f"bg-{m}")]
    script = f"""
import subprocess, time
from monitor.client import episode
with episode(episode_id="ep1-{m}", bind="process", path={path!r}, strict=True):
    subprocess.Popen({bg!r}, env={{"PATH": "/usr/bin:/bin"}}, start_new_session=True)
with episode(episode_id="ep2-{m}", bind="process", path={path!r}, strict=True):
    subprocess.run({connector(port, f"fg-{m}")!r}, env={{"PATH": "/usr/bin:/bin"}})
    time.sleep(2.5)
"""
    subprocess.run([sys.executable, "-c", script], env=CLEAN_ENV, check=True, timeout=60)
    fg = live.wait_for(connect_of(f"fg-{m}"))
    bgdoc = live.wait_for(connect_of(f"bg-{m}"))
    assert fg["rl"]["episode_id"] == f"ep2-{m}"
    assert bgdoc["rl"]["episode_id"] == f"ep1-{m}"
    assert bgdoc["rl"]["source"] == "registry"
    # it connected after episode 1 had ended and while episode 2 was open
    end1 = live.wait_for(
        lambda d: d["event"]["action"] == "episode_end" and d["rl"]["episode_id"] == f"ep1-{m}"
    )
    assert bgdoc["@timestamp"] > end1["@timestamp"]


def _raw(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(path)
    return s


def _reply(s: socket.socket) -> dict:
    return orjson.loads(s.makefile("rb").readline())


def test_registry_survives_fuzzing(mon) -> None:
    live, path = mon
    rng = random.Random(4)
    # half-open clients that never finish a line
    idle = [_raw(path) for _ in range(3)]
    idle[0].sendall(b'{"op": "episode_start", "episode_id": "half')
    # random bytes, each line answered with an error (never a crash)
    for _ in range(50):
        junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))).replace(b"\n", b"")
        with _raw(path) as s:
            s.sendall(junk + b"\n")
            assert _reply(s)["ok"] is False
    # a line longer than max_line_bytes (4096 here): one error, then the stream goes on
    with _raw(path) as s:
        s.sendall(b'{"op":"hello","x":"' + b"A" * 20000 + b'"}\n{"op":"hello"}\n')
        first = _reply(s)
        assert first["ok"] is False and "longer than" in first["error"]
    # structurally wrong messages get precise errors
    for bad, why in (
        (b'{"op":"episode_start"}', "episode_id is required"),
        (b'{"op":"episode_start","episode_id":"e","pids":["1"]}', "pids"),
        (b'{"op":"episode_start","episode_id":"e","bogus":1}', "unknown field"),
        (b'{"op":"episode_end","episode_id":"never-started"}', "unknown episode"),
        (b'{"op":"episode_start","episode_id":"e","cgroup":"/../x"}', ".."),
        (b"[1,2,3]", "JSON object"),
    ):
        with _raw(path) as s:
            s.sendall(bad + b"\n")
            r = _reply(s)
            assert r["ok"] is False and why in r["error"], (bad, r)
    # more clients than max_clients (8): the extra ones are told so
    crowd = [_raw(path) for _ in range(8)]
    refused = _reply(crowd[-1]) if crowd else {}
    assert refused.get("ok") is False and "too many clients" in refused["error"]
    for s in crowd + idle:
        s.close()
    time.sleep(0.5)
    # the registry and the collector still work
    m = uuid.uuid4().hex[:8]
    assert send({"op": "hello"}, path)["ok"] is True
    subprocess.run(["/bin/true", m], check=True)
    live.wait_for(lambda d: d["event"]["action"] == "exec" and m in d["process"].get("args", []))
    live.wait_for(lambda d: d["event"].get("action") == "registry_error")
    assert live.collector.registry_server is not None
    assert live.collector.registry_server.errors >= 50


def test_client_without_monitor_does_not_break_training(tmp_path) -> None:
    with episode(episode_id="e", path=str(tmp_path / "absent.sock")) as ep:
        assert ep.registered is False
        assert ep.env({})["RL_EPISODE_ID"] == "e"


def test_socket_is_for_the_group_only(mon) -> None:
    _, path = mon
    st = os.stat(path)
    assert st.st_mode & 0o777 in (0o660, 0o600)
    assert st.st_mode & 0o007 == 0  # never world-writable
    res = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            sys.executable,
            "-c",
            f"import socket; s = socket.socket(socket.AF_UNIX); s.connect({path!r})",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env=CLEAN_ENV,
    )
    assert res.returncode != 0 and "PermissionError" in res.stderr


def test_container_id_from_the_cgroup_path_binds_by_container(mon) -> None:
    """A Docker-style scope (docker-<64 hex>.scope): container.id on events, bound by id."""
    live, path = mon
    mount = find_cgroup2()
    if mount is None:
        pytest.skip("no cgroup2 hierarchy mounted")
    cid = uuid.uuid4().hex + uuid.uuid4().hex
    parent = Path(mount) / f"rlg-test-{cid[:8]}"
    scope = parent / f"docker-{cid}.scope"
    scope.mkdir(parents=True)
    m = uuid.uuid4().hex[:8]
    try:
        send({"op": "episode_start", "episode_id": f"ep-ct-{m}", "container_id": cid[:12]}, path)
        joiner = ["/bin/sh", "-c", f'echo $$ > {scope}/cgroup.procs && exec "$@"', "sh"]
        cmd = ["env", "-i", *joiner, *connector(closed_port(), m)]
        subprocess.run(cmd, check=True, timeout=30, cwd="/")
        doc = live.wait_for(connect_of(m))
        assert doc["container"] == {"id": cid}
        assert doc["rl"]["episode_id"] == f"ep-ct-{m}" and doc["rl"]["source"] == "cgroup"
        send({"op": "episode_end", "episode_id": f"ep-ct-{m}"}, path)
    finally:
        rmdir_when_empty(scope)
        rmdir_when_empty(parent)
