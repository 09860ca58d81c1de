"""Who may bind, with real probes and the real socket: trusted binders, processes inside an
episode (by tags, birth, cgroup) refused whatever their uid, what a live episode owns, a
socket handed to another process, and every refusal on the stream with an alert."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from monitor.config import config_from_dict
from monitor.sensor.probes import find_cgroup2
from tests.support.live import LiveMonitor
from tests.support.system import rmdir_when_empty

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CLEAN_ENV = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}


class Lab:
    def __init__(self, live: LiveMonitor, path: str, trainer_cg: Path) -> None:
        self.live = live
        self.path = path
        self.trainer_cg = trainer_cg

    def in_cgroup(self, cg: Path, argv: list[str]) -> list[str]:
        return ["/bin/sh", "-c", f'echo $$ > {cg}/cgroup.procs && exec "$@"', "sh", *argv]

    def python(
        self, code: str, env: dict[str, str] | None = None, cg: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run CODE with this checkout's python, in the trainer's cgroup unless CG says."""
        argv = self.in_cgroup(cg or self.trainer_cg, [sys.executable, "-c", code])
        res = subprocess.run(
            argv, env={**CLEAN_ENV, **(env or {})}, capture_output=True, text=True, timeout=60
        )
        assert res.returncode == 0, res.stderr
        return res

    def refusal(self, asked: str) -> dict:
        return self.live.wait_for(
            lambda d: (
                d["event"]["action"] == "registry_refused"
                and d["rlguard"]["registry"]["episode_id"] == asked
            )
        )

    def alert(self, asked: str) -> dict:
        return self.live.wait_for(
            lambda d: (
                d["event"]["kind"] == "alert"
                and d["rule"]["id"] == "RLG-ATTR-002"
                and d["rlguard"]["alert"]["registry"]["episode_id"] == asked
            )
        )


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    mount = find_cgroup2()
    if mount is None:
        pytest.skip("no cgroup2 hierarchy mounted")
    tmp = tempfile.mkdtemp(prefix="rlg-auth-")
    path = os.path.join(tmp, "registry.sock")
    trainer_cg = Path(mount) / f"rlg-trainer-{uuid.uuid4().hex[:8]}"
    trainer_cg.mkdir()
    cfg = config_from_dict(
        {
            "registry": {"socket": path, "trusted_cgroups": ["/" + trainer_cg.name]},
            "attribution": {"sandbox_patterns": [r"/(?P<sandbox>rlg-sbx-[a-z0-9]+)"]},
        }
    )
    m = LiveMonitor(cfg).start()
    try:
        yield Lab(m, path, trainer_cg)
    finally:
        m.stop()
        os.rmdir(tmp)
        rmdir_when_empty(trainer_cg)


TRY = """
import os, sys
from monitor.client import send
try:
    print("OK", send({msg}, {path!r}))
except Exception as exc:
    print("REFUSED", exc)
"""


def try_send(lab: Lab, msg: str, env: dict[str, str] | None = None, cg: Path | None = None) -> str:
    return lab.python(TRY.format(msg=msg, path=lab.path), env, cg).stdout


def test_a_process_with_episode_tags_cannot_bind_anything(lab: Lab) -> None:
    """Root, in the trainer's cgroup, but tagged: it may not move itself into another episode."""
    m = uuid.uuid4().hex[:8]
    mine, other = f"ep-a-{m}", f"ep-b-{m}"
    msg = f"{{'op': 'episode_start', 'episode_id': {other!r}, 'pids': [os.getpid()]}}"
    out = try_send(lab, msg, env={"RL_EPISODE_ID": mine})
    assert out.startswith("REFUSED") and f"inside episode '{mine}'" in out
    line = lab.refusal(other)
    assert line["rl"]["episode_id"] == mine  # the sender's own episode
    assert line["rlguard"]["registry"]["refused_because"] == "sender_in_episode"
    assert line["rlguard"]["registry"]["sender_episode"]["source"] == "own_env"
    assert line["process"]["pid"] == line["rlguard"]["registry"]["sender"]["pid"]
    alert = lab.alert(other)
    assert alert["rl"]["episode_id"] == mine
    assert alert["rlguard"]["alert"]["severity"] == "high"
    assert other not in lab.live.collector.registry.episodes  # nothing was bound


def test_born_in_a_registry_episode_cannot_end_or_rebind_it(lab: Lab) -> None:
    m = uuid.uuid4().hex[:8]
    ep, elsewhere = f"ep-born-{m}", f"ep-away-{m}"
    child = TRY.format(
        msg=f"{{'op': 'episode_start', 'episode_id': {elsewhere!r}, 'pids': [os.getpid()]}}",
        path=lab.path,
    ) + TRY.format(msg=f"{{'op': 'episode_end', 'episode_id': {ep!r}}}", path=lab.path)
    trainer = f"""
import subprocess, sys
from monitor.client import episode
with episode(episode_id={ep!r}, bind="process", path={lab.path!r}, strict=True):
    out = subprocess.run([sys.executable, "-c", {child!r}], capture_output=True, text=True)
    print(out.stdout)
"""  # strict: the trainer's own start and end (of its own process binding) must succeed
    out = lab.python(trainer).stdout
    assert out.count("REFUSED") == 2, out
    assert f"inside episode '{ep}' (by birth)" in out
    assert lab.refusal(elsewhere)["rl"]["episode_id"] == ep
    end = lab.refusal(ep)
    assert end["rlguard"]["registry"]["op"] == "episode_end"
    assert end["rl"]["episode_id"] == ep and end["rl"]["source"] == "registry"
    lab.live.wait_for(
        lambda d: d["event"]["action"] == "episode_end" and d["rl"]["episode_id"] == ep
    )  # ended by the trainer, not by the child


def test_a_process_in_a_bound_cgroup_cannot_bind(lab: Lab) -> None:
    m = uuid.uuid4().hex[:8]
    sbx = lab.trainer_cg.parent / f"rlg-sbx-{m}"
    sbx.mkdir()
    try:
        ep = f"ep-cg-{m}"
        start = f"{{'op': 'episode_start', 'episode_id': {ep!r}, 'cgroup': '/{sbx.name}'}}"
        assert try_send(lab, start).startswith("OK")  # the trainer, in its cgroup
        msg = f"{{'op': 'episode_start', 'episode_id': 'ep-x-{m}', 'pids': [os.getpid()]}}"
        out = try_send(lab, msg, cg=sbx)
        assert f"inside episode '{ep}' (by cgroup)" in out
        assert lab.refusal(f"ep-x-{m}")["rl"]["episode_id"] == ep
        assert try_send(lab, f"{{'op': 'episode_end', 'episode_id': {ep!r}}}").startswith("OK")
    finally:
        rmdir_when_empty(sbx)


def test_an_untrusted_sender_outside_any_episode_is_refused(lab: Lab) -> None:
    m = uuid.uuid4().hex[:8]
    outside = lab.trainer_cg.parent  # the root cgroup: not in trusted_cgroups
    ep = f"ep-u-{m}"
    out = try_send(lab, f"{{'op': 'episode_start', 'episode_id': {ep!r}}}", cg=outside)
    assert "not in trusted_cgroups" in out
    line = lab.refusal(ep)
    assert line["rlguard"]["registry"]["refused_because"] == "untrusted_sender"
    assert line["rl"]["episode_id"] is None
    assert lab.alert(ep)["rlguard"]["alert"]["severity"] == "medium"
    assert ep not in lab.live.collector.registry.episodes


def test_what_a_live_episode_owns_is_refused_until_it_ends(lab: Lab) -> None:
    m = uuid.uuid4().hex[:8]
    sleeper = subprocess.Popen(["sleep", "30"])
    sbx = lab.trainer_cg.parent / f"rlg-sbx-{m}"
    (sbx / "inner").mkdir(parents=True)
    try:
        code = f"""
from monitor.client import send
def ask(msg):
    try:
        return "OK " + str(send(msg, {lab.path!r}))
    except Exception as exc:
        return "REFUSED " + str(exc)
print(ask({{"op": "episode_start", "episode_id": "own1-{m}", "pids": [{sleeper.pid}],
           "cgroup": "/{sbx.name}"}}))
print(ask({{"op": "episode_start", "episode_id": "own2-{m}", "pids": [{sleeper.pid}]}}))
print(ask({{"op": "episode_start", "episode_id": "own2-{m}", "cgroup": "/{sbx.name}/inner"}}))
print(ask({{"op": "episode_end", "episode_id": "own1-{m}"}}))
print(ask({{"op": "episode_start", "episode_id": "own2-{m}", "pids": [{sleeper.pid}],
           "cgroup": "/{sbx.name}/inner"}}))
"""
        lines = lab.python(code).stdout.splitlines()
        assert lines[0].startswith("OK")
        assert lines[1].startswith("REFUSED") and f"live episode 'own1-{m}'" in lines[1]
        assert lines[2].startswith("REFUSED") and f"cgroup /{sbx.name}" in lines[2]
        assert lines[3].startswith("OK") and lines[4].startswith("OK")
        refused = lab.refusal(f"own2-{m}")
        assert refused["rlguard"]["registry"]["refused_because"] == "owned"
        alert = lab.alert(f"own2-{m}")
        assert alert["rlguard"]["alert"]["severity"] == "low"
        episodes = lab.live.collector.registry.episodes
        assert episodes[f"own2-{m}"].end_ns is None
    finally:
        sleeper.kill()
        sleeper.wait()
        rmdir_when_empty(sbx / "inner")
        rmdir_when_empty(sbx)


def test_a_trusted_connection_handed_to_a_tagged_process_is_refused(lab: Lab) -> None:
    """The trainer connects and passes the socket over SCM_RIGHTS; the agent writes."""
    m = uuid.uuid4().hex[:8]
    agent = f"""
import socket, sys
u = socket.socket(socket.AF_UNIX, fileno=int(sys.argv[1]))
_, fds, _, _ = socket.recv_fds(u, 16, 1)
s = socket.socket(socket.AF_UNIX, fileno=fds[0])
s.sendall(b'{{"op":"episode_start","episode_id":"stolen-{m}","pids":[1]}}\\n')
print(s.makefile().readline())
"""
    trainer = f"""
import os, socket, subprocess, sys
a, b = socket.socketpair()
env = {{"PATH": "/usr/bin:/bin", "RL_EPISODE_ID": "agent-{m}"}}
p = subprocess.Popen([sys.executable, "-c", {agent!r}, str(b.fileno())], env=env,
                     pass_fds=[b.fileno()], stdout=subprocess.PIPE, text=True)
reg = socket.socket(socket.AF_UNIX)
reg.connect({lab.path!r})
socket.send_fds(a, [b"x"], [reg.fileno()])
print(p.communicate(timeout=30)[0])
"""
    out = lab.python(trainer).stdout
    assert '"ok":false' in out and f"inside episode 'agent-{m}'" in out, out
    line = lab.refusal(f"stolen-{m}")
    assert line["rlguard"]["registry"]["sender"]["via"] == "write"
    assert line["rl"]["episode_id"] == f"agent-{m}"
