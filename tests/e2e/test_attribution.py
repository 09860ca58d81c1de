"""End to end: an agent that tries to steer which episode its mining lands on.

Each case is the agent's own actions with real processes, a real registry socket, a real
tmux, real sockets passed over SCM_RIGHTS and a real stratum login to a pool in a network
namespace (198.51.100.x, nothing leaves the machine).  The alert must name the episode the
work belongs to (both episodes where two are involved), and the attribution alert is raised
where one is due: RLG-ATTR-001 (a claim), RLG-ATTR-002 (a refused registry message),
RLG-ATTR-003 (work that crossed episodes).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from monitor.config import config_from_dict
from monitor.lab.incident import XMRIG_LOGIN
from monitor.lab.outside import OutsideHost
from monitor.sensor.probes import find_cgroup2
from tests.support.live import LiveMonitor
from tests.support.system import rmdir_when_empty

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
PY = "/usr/bin/python3"
WAIT_S = 20

# the miner: connects to the pool and logs in (XMRig's first line, byte-exact)
MINER = textwrap.dedent(
    """
    import socket, sys
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
    s.sendall(bytes.fromhex(sys.argv[3]))
    s.recv(100)
    """
)

# SCM_RIGHTS between two unrelated processes: a broker listens on a Unix socket; the
# connector opens the pool connection (or receives it) as its role says
HANDOVER = textwrap.dedent(
    """
    import socket, sys
    role, broker, host, port, login = sys.argv[1:6]
    # B is the broker: it listens on a Unix socket; A connects to it
    if role in ("receive-and-send", "pass-back"):
        srv = socket.socket(socket.AF_UNIX)
        srv.bind(broker)
        srv.listen(1)
        print("ready", flush=True)
        link, _ = srv.accept()
    else:
        link = socket.socket(socket.AF_UNIX)
        link.connect(broker)
    if role in ("connect-and-pass", "pass-back"):   # connects to the pool, hands it over
        pool = socket.create_connection((host, int(port)), timeout=5)
        socket.send_fds(link, [b"x"], [pool.fileno()])
        link.recv(1)                                # until the other side is done
    else:                                           # gets the socket, sends the login
        _, fds, _, _ = socket.recv_fds(link, 16, 1)
        s = socket.socket(fileno=fds[0])
        s.settimeout(5)                 # the file came non-blocking (the sender's timeout)
        s.sendall(bytes.fromhex(login))
        s.recv(100)
        link.sendall(b"k")
    """
)


class Lab:
    def __init__(self, live: LiveMonitor, pool: OutsideHost, tmp: Path, registry: str) -> None:
        self.live = live
        self.pool = pool
        self.tmp = tmp
        self.registry = registry
        self.miner = tmp / "miner.py"
        self.miner.write_text(MINER)
        self.handover = tmp / "handover.py"
        self.handover.write_text(HANDOVER)

    def mine_cmd(self) -> str:
        """A shell command line that mines (for sh -c and tmux)."""
        return f"{PY} {self.miner} {self.pool.ip4} 3333 {XMRIG_LOGIN.hex()}"

    def sh(self, script: str, ep: str | None, extra: dict[str, str] | None = None) -> None:
        env = {"PATH": "/usr/bin:/bin", "HOME": "/root", **(extra or {})}
        if ep is not None:
            env["RL_EPISODE_ID"] = ep
        subprocess.run(["/bin/sh", "-c", script], env=env, check=True, timeout=60, cwd="/")

    def alert(self, rule: str, pred: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        return self.live.wait_for(
            lambda d: d["event"]["kind"] == "alert" and d["rule"]["id"] == rule and pred(d),
            timeout=WAIT_S,
        )

    def mining_alert(self, ep: str) -> dict[str, Any]:
        return self.alert("RLG-MIN-001", lambda d: ep in episodes_named(d))


def episodes_named(d: dict[str, Any]) -> set[str]:
    rl = d.get("rl", {})
    out = {rl.get("episode_id")}
    out |= {r["episode_id"] for r in rl.get("requested_by", [])}
    out.add((rl.get("socket_owner") or {}).get("episode_id"))
    return {e for e in out if e}


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    pool = OutsideHost()
    pool.up()
    tmp = Path(tempfile.mkdtemp(prefix="rlg-attr-e2e-"))
    registry = str(tmp / "registry.sock")
    try:
        pool.start_pool(ports=(3333,))
        cfg = config_from_dict(
            {
                "registry": {"socket": registry},
                "attribution": {"sandbox_patterns": [r"/(?P<sandbox>rlg-sbx-[a-z0-9]+)"]},
                "ledger": {"path": str(tmp / "episodes.db")},
            }
        )
        live = LiveMonitor(cfg, ledger=True).start()
        try:
            yield Lab(live, pool, tmp, registry)
        finally:
            live.stop()
    finally:
        pool.down()
        shutil.rmtree(tmp, ignore_errors=True)


def ep_ids(tag: str) -> tuple[str, str]:
    m = uuid.uuid4().hex[:8]
    return f"ep-{tag}-a-{m}", f"ep-{tag}-b-{m}"


# -- 1. claims never move a process -------------------------------------------------------


@pytest.mark.parametrize(
    "how",
    [
        "RL_EPISODE_ID={b} exec {mine}",  # exec in place, no fork
        "RL_EPISODE_ID={b} {mine}; true",  # in a child
        "exec env -i PATH=/usr/bin:/bin RL_EPISODE_ID={b} {mine}",  # env -i, new tags
    ],
    ids=["exec-in-place", "child", "env-i"],
)
def test_a_claim_never_moves_a_tagged_process(lab: Lab, how: str) -> None:
    a, b = ep_ids("claim")
    lab.sh(how.format(b=b, mine=lab.mine_cmd()), ep=a)
    got = lab.mining_alert(a)
    assert got["rl"]["episode_id"] == a, got["rl"]
    assert got["rl"]["claimed"] == {"episode_id": b}
    assert got["rlguard"]["alert"]["severity"] == "critical"
    claim = lab.alert("RLG-ATTR-001", lambda d: d["rl"]["episode_id"] == a)
    assert claim["rlguard"]["alert"]["conflict"]["roles"]["episode"] == {"own_env": b, "kept": a}
    assert not lab.live.sink.find_all(
        lambda d: d["event"]["kind"] == "alert" and d["rl"].get("episode_id") == b
    ), "nothing is ever attributed to the claimed episode"


TRAINER = textwrap.dedent(
    """
    import subprocess, sys
    from monitor.client import episode
    ep, sock, script = sys.argv[1:4]
    with episode(episode_id=ep, bind="process", path=sock, strict=True):
        subprocess.run(["/bin/sh", "-c", script], env={"PATH": "/usr/bin:/bin"}, check=True)
    """
)


def trainer_sends(lab: Lab, msg: dict[str, str]) -> None:
    """One registry message from a trusted trainer process (not inside any episode)."""
    code = f"from monitor.client import send; send({msg!r}, {lab.registry!r})"
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=30)


def trainer_runs(lab: Lab, ep: str, script: str) -> None:
    """A trusted trainer binds itself to EP and runs the agent's SCRIPT in it."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    subprocess.run(
        [sys.executable, "-c", TRAINER, ep, lab.registry, script], env=env, check=True, timeout=60
    )


def test_a_claim_never_moves_a_process_born_in_a_registry_episode(lab: Lab) -> None:
    real, claimed = ep_ids("reg-claim")
    trainer_runs(lab, real, f"RL_EPISODE_ID={claimed} exec {lab.mine_cmd()}")
    got = lab.mining_alert(real)
    assert (got["rl"]["episode_id"], got["rl"]["source"]) == (real, "registry")
    assert got["rl"]["claimed"] == {"episode_id": claimed}
    claim = lab.alert("RLG-ATTR-001", lambda d: d["rl"]["episode_id"] == real)
    assert claim["rlguard"]["alert"]["conflict"]["kept_source"] == "registry"


# -- 2. the registry: a process inside an episode cannot move itself ------------------------


def rebind_then_mine(lab: Lab, other: str) -> str:
    """The agent's shell: ask the registry to put itself into OTHER, then exec the miner."""
    return (
        f"{PY} -c 'import json,os,socket; s=socket.socket(socket.AF_UNIX); "
        f's.connect("{lab.registry}"); '
        f's.sendall(json.dumps({{"op":"episode_start","episode_id":"{other}",'
        f'"pids":[os.getppid()]}}).encode()+b"\\n"); print(s.recv(999))\'; '
        f"exec {lab.mine_cmd()}"
    )


def test_an_agent_cannot_register_itself_into_another_episode(lab: Lab) -> None:
    """Root, tagged with its episode: it asks the registry for another episode with its own
    pid, then mines."""
    mine, other = ep_ids("rebind")
    ask = rebind_then_mine(lab, other)
    lab.sh(ask, ep=mine)
    refused = lab.alert("RLG-ATTR-002", lambda d: d["rl"].get("episode_id") == mine)
    assert refused["rlguard"]["alert"]["registry"] == {"op": "episode_start", "episode_id": other}
    assert refused["rlguard"]["alert"]["severity"] == "high"
    got = lab.mining_alert(mine)
    assert got["rl"]["episode_id"] == mine and other not in episodes_named(got)
    assert other not in lab.live.collector.registry.episodes


def test_an_agent_born_in_a_registry_episode_cannot_rebind_itself(lab: Lab) -> None:
    real, other = ep_ids("reg-rebind")
    ask = rebind_then_mine(lab, other)
    trainer_runs(lab, real, ask)
    refused = lab.alert("RLG-ATTR-002", lambda d: d["rl"].get("episode_id") == real)
    assert "by birth" in refused["event"]["reason"]
    got = lab.mining_alert(real)
    assert got["rl"]["episode_id"] == real and got["rl"]["source"] == "registry"


# -- 3. work done on request --------------------------------------------------------------


@pytest.fixture
def tmux_server(lab: Lab) -> Iterator[Callable[[str | None], str]]:
    """Starts a tmux server in a given episode (None: outside any); yields its socket."""
    started: list[str] = []

    def start(ep: str | None) -> str:
        sock = str(lab.tmp / f"tmux-{uuid.uuid4().hex[:8]}")
        env = {"PATH": "/usr/bin:/bin", "HOME": "/root", "TERM": "xterm"}
        if ep is not None:
            env["RL_EPISODE_ID"] = ep
        subprocess.run(
            ["tmux", "-S", sock, "new-session", "-d", "-s", "s", "sleep 600"],
            env=env,
            check=True,
            timeout=30,
        )
        started.append(sock)
        time.sleep(1.0)  # the server outlives the episode that started it
        return sock

    yield start
    for sock in started:
        subprocess.run(["tmux", "-S", sock, "kill-server"], capture_output=True, timeout=30)


def new_window_mines(lab: Lab, sock: str, current: str, opts: str = "") -> dict[str, Any]:
    """The current episode only asks the tmux server for a new window; the mining alert."""
    lab.sh(f"exec tmux -S {sock} new-window -d {opts} '{lab.mine_cmd()}'", ep=current)
    return lab.mining_alert(current)


def test_a_tmux_server_of_an_earlier_episode_mines_for_the_current_one(
    lab: Lab, tmux_server: Callable[[str | None], str]
) -> None:
    earlier, current = ep_ids("tmux")
    sock = tmux_server(earlier)
    got = new_window_mines(lab, sock, current)
    assert got["rl"]["episode_id"] == earlier  # born to the server: never moved
    assert [r["episode_id"] for r in got["rl"]["requested_by"]] == [current]
    assert got["rl"]["requested_by"][0]["via"] == f"unix:{sock}"
    assert got["rl"]["requested_by"][0]["name"] == "tmux"
    crossed = lab.alert(
        "RLG-ATTR-003", lambda d: d["rl"].get("episode_id") == current and "tmux" in str(d)
    )
    link = crossed["rlguard"]["link"] if "link" in crossed["rlguard"] else None
    assert crossed["rlguard"]["alert"]["evidence"][0]["name"] == "crossed_episodes.request"
    assert link is None or link["server"]["episode_id"] == earlier
    request = lab.live.wait_for(
        lambda d: (
            d["event"]["action"] == "unix_connect"
            and d["rl"]["episode_id"] == current
            and d["rlguard"].get("link", {}).get("via") == f"unix:{sock}"
        )
    )
    assert request["rlguard"]["link"]["server"]["episode_id"] == earlier
    # the ledger holds the alert against both episodes
    ledger = lab.live.collector.ledger
    assert ledger is not None
    for ep in (earlier, current):
        deadline = time.monotonic() + WAIT_S
        while "RLG-MIN-001" not in ledger.episodes[ep].alerts and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "RLG-MIN-001" in ledger.episodes[ep].alerts, ep


def test_a_tmux_server_outside_any_episode_works_for_its_requester(
    lab: Lab, tmux_server: Callable[[str | None], str]
) -> None:
    _, current = ep_ids("tmux-free")
    got = new_window_mines(lab, tmux_server(None), current)
    assert (got["rl"]["episode_id"], got["rl"]["source"]) == (current, "requested")


def test_a_claim_through_tmux_is_a_claim(lab: Lab, tmux_server: Callable[[str | None], str]):
    """`tmux new-window -e RL_EPISODE_ID=...`: the window's tags are the requester's claim."""
    earlier, current = ep_ids("tmux-e")
    got = new_window_mines(lab, tmux_server(earlier), current, f"-e RL_EPISODE_ID={current}")
    assert got["rl"]["episode_id"] == earlier
    assert got["rl"]["claimed"] == {"episode_id": current}
    assert [r["episode_id"] for r in got["rl"]["requested_by"]] == [current]
    lab.alert("RLG-ATTR-001", lambda d: d["rl"].get("episode_id") == earlier)


def test_a_loopback_server_of_another_episode_does_the_work(lab: Lab) -> None:
    """A 'kernel' of an earlier episode listens on loopback TCP and mines on request."""
    earlier, current = ep_ids("loopback")
    server = textwrap.dedent(
        """
        import socket, subprocess
        s = socket.create_server(("127.0.0.1", 0))
        print(s.getsockname()[1], flush=True)
        c, _ = s.accept()
        cmd = c.makefile().read()  # the whole request: up to the client's close
        subprocess.run(cmd, shell=True)
        """
    )
    env = {"PATH": "/usr/bin:/bin", "RL_EPISODE_ID": earlier}
    srv = subprocess.Popen([PY, "-c", server], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert srv.stdout is not None
        port = int(srv.stdout.readline())
        time.sleep(0.5)
        ask = (
            f'{PY} -c \'import socket,sys; c=socket.create_connection(("127.0.0.1",{port})); '
            f"c.sendall(sys.argv[1].encode())' '{lab.mine_cmd()}'"
        )
        lab.sh(ask, ep=current)
        got = lab.mining_alert(current)
        assert got["rl"]["episode_id"] == earlier
        assert [r["episode_id"] for r in got["rl"]["requested_by"]] == [current]
        assert got["rl"]["requested_by"][0]["via"].startswith("tcp:127.0.0.1:")
    finally:
        srv.kill()
        srv.wait()


# -- 4. sockets crossing episodes -----------------------------------------------------------


@pytest.mark.parametrize("order", ["owner-connects-other-sends", "other-connects-owner-sends"])
def test_a_socket_handed_over_between_episodes_names_both(lab: Lab, order: str) -> None:
    a, b = ep_ids("scm")
    broker = str(lab.tmp / f"broker-{uuid.uuid4().hex[:8]}")
    args = [broker, lab.pool.ip4, "3333", XMRIG_LOGIN.hex()]
    if order == "owner-connects-other-sends":
        roles = {a: "connect-and-pass", b: "receive-and-send"}
        sender, owner = b, a
    else:
        roles = {a: "fetch-and-send", b: "pass-back"}
        sender, owner = a, b
    # B listens first (a process of its own), A is started separately: not related
    envb = {"PATH": "/usr/bin:/bin", "RL_EPISODE_ID": b}
    pb = subprocess.Popen(
        [PY, str(lab.handover), roles[b], *args], env=envb, stdout=subprocess.PIPE, cwd="/"
    )
    try:
        assert pb.stdout is not None and pb.stdout.readline().strip() == b"ready"
        enva = {"PATH": "/usr/bin:/bin", "RL_EPISODE_ID": a}
        subprocess.run([PY, str(lab.handover), roles[a], *args], env=enva, check=True, timeout=30)
        assert pb.wait(timeout=30) == 0
    finally:
        if pb.poll() is None:
            pb.kill()
    got = lab.alert(
        "RLG-MIN-001", lambda d: d["rl"].get("socket_owner", {}).get("episode_id") == owner
    )
    assert got["rl"]["episode_id"] == sender  # the process that sent the login
    assert got["rl"]["socket_owner"]["episode_id"] == owner  # and the one that connected
    assert got["rlguard"]["alert"]["severity"] == "critical"
    assert got["process"]["pid"] != got["rl"]["socket_owner"]["pid"]
    crossed = lab.alert(
        "RLG-ATTR-003",
        lambda d: (
            d["rl"].get("episode_id") == sender
            and d["rl"].get("socket_owner", {}).get("episode_id") == owner
        ),
    )
    assert crossed["rlguard"]["alert"]["evidence"][0]["name"] == "crossed_episodes.socket"


# -- 5. the recommended set-up: one cgroup per episode sandbox, bound through the registry ---


def test_the_recommended_setup_holds_against_every_trick(lab: Lab) -> None:
    mount = find_cgroup2()
    if mount is None:
        pytest.skip("no cgroup2 hierarchy mounted")
    real, forged = ep_ids("sandbox")
    sbx = Path(mount) / f"rlg-sbx-{uuid.uuid4().hex[:8]}"
    sbx.mkdir()
    try:
        trainer_sends(lab, {"op": "episode_start", "episode_id": real, "cgroup": "/" + sbx.name})
        # the agent's tools run in the sandbox cgroup (like `docker exec`), scrub their
        # environment, claim another episode, double-fork into a new session and mine
        agent = (
            f"echo $$ > {sbx}/cgroup.procs && exec env -i PATH=/usr/bin:/bin "
            f"RL_EPISODE_ID={forged} setsid sh -c '({lab.mine_cmd()}) &'"
        )
        lab.sh(agent, ep=None)
        got = lab.mining_alert(real)
        assert (got["rl"]["episode_id"], got["rl"]["source"]) == (real, "cgroup")
        assert got["rl"]["sandbox_id"] == sbx.name
        assert got["rl"]["claimed"] == {"episode_id": forged}
        trainer_sends(lab, {"op": "episode_end", "episode_id": real})
    finally:
        rmdir_when_empty(sbx)


def test_monitor_is_healthy(lab: Lab) -> None:
    """Nothing above may cost a record: the attribution cases ran on every event."""
    assert lab.live.collector.errors == 0
    assert os.path.exists(lab.registry)
    socket.socket(socket.AF_UNIX).connect(lab.registry)
