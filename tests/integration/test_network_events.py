"""connect, TCP state, first bytes and DNS, seen through the real probes.

Traffic goes only to loopback and to namespace hosts these tests create.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from monitor.lab.servers import SERVER
from monitor.sensor.dns import build_query
from tests.conftest import build_helper

pytestmark = pytest.mark.integration


@pytest.fixture
def loopback_server():
    """A TCP sink on 127.0.0.1: accepts and reads everything."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    port = srv.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, "127.0.0.1", str(port)], stdout=subprocess.PIPE
    )
    srv.close()  # the subprocess binds it again (SO_REUSEADDR)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == b"ready"
    try:
        yield port
    finally:
        proc.kill()
        proc.wait()


def is_action(name: str):
    return lambda d: d["event"]["action"] == name


def test_connect_ipv4_refused(live) -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    c = socket.socket()
    with pytest.raises(ConnectionRefusedError):
        c.connect(("127.0.0.1", port))
    fd = c.fileno()
    c.close()
    doc = live.wait_for(
        lambda d: (
            d["event"]["action"] == "connect"
            and d["destination"]["port"] == port
            and d["process"]["pid"] == os.getpid()
        )
    )
    assert doc["destination"]["ip"] == "127.0.0.1"
    assert doc["network"] == {"transport": "tcp", "type": "ipv4"}
    assert doc["rlguard"]["connect"]["result"] == "ECONNREFUSED"
    assert doc["rlguard"]["connect"]["fd"] == fd
    assert doc["rlguard"]["connect"]["via"] == "syscall"
    assert doc["event"]["outcome"] == "failure"


def test_connect_udp(live) -> None:
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.connect(("127.0.0.1", 9))
    u.close()
    doc = live.wait_for(
        lambda d: (
            d["event"]["action"] == "connect"
            and d["destination"]["port"] == 9
            and d["process"]["pid"] == os.getpid()
        )
    )
    assert doc["network"]["transport"] == "udp"
    assert doc["rlguard"]["connect"]["result"] == "success"


def test_ipv6_connect_to_namespace_host(live, netns_host) -> None:
    port = 8443
    srv = netns_host.spawn(
        sys.executable, "-c", SERVER, netns_host.ip6, str(port), stdout=subprocess.PIPE
    )
    assert srv.stdout.readline().strip() == b"ready"
    env = {"RL_EPISODE_ID": "ep-v6"}
    script = (
        "import socket,sys\n"
        "s=socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)\n"
        "s.sendall(b'hello-v6'); s.close()\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, netns_host.ip6, str(port)], env=env, timeout=20
    )
    assert proc.returncode == 0
    doc = live.wait_for(
        lambda d: d["event"]["action"] == "connect" and d["destination"]["ip"] == netns_host.ip6
    )
    assert doc["network"] == {"transport": "tcp", "type": "ipv6"}
    assert doc["destination"]["port"] == port
    assert doc["rl"]["episode_id"] == "ep-v6"
    assert doc["rlguard"]["connect"]["result"] in ("success", "in_progress")
    est = live.wait_for(
        lambda d: (
            d["event"]["action"] == "tcp_state"
            and d["destination"]["ip"] == netns_host.ip6
            and d["rlguard"]["tcp"]["new_state"] == "ESTABLISHED"
        )
    )
    assert est["process"]["pid"] == doc["process"]["pid"]
    assert est["rl"]["episode_id"] == "ep-v6"
    assert est["network"]["community_id"].startswith("1:")
    sent = live.wait_for(
        lambda d: d["event"]["action"] == "send" and d["destination"]["ip"] == netns_host.ip6
    )
    assert bytes.fromhex(sent["rlguard"]["payload"]["hex"]) == b"hello-v6"
    assert sent["rl"]["episode_id"] == "ep-v6"


def test_io_uring_connect_is_attributed(live, loopback_server) -> None:
    helper = build_helper("uring_connect", libs=("-luring",))
    env = {"RL_EPISODE_ID": "ep-uring"}
    proc = subprocess.run(
        [str(helper), "127.0.0.1", str(loopback_server), "via-uring"],
        env=env,
        capture_output=True,
        timeout=20,
    )
    assert proc.returncode == 0, proc.stderr
    exe = live.wait_for(
        lambda d: d["event"]["action"] == "exec" and d["process"]["executable"] == str(helper)
    )
    pid = exe["process"]["pid"]
    conn = live.wait_for(
        lambda d: (
            d["event"]["action"] == "connect"
            and d["destination"]["port"] == loopback_server
            and d["process"]["pid"] == pid
        )
    )
    assert conn["rlguard"]["connect"]["via"] == "kernel"
    assert conn["rl"]["episode_id"] == "ep-uring"
    syn = live.wait_for(
        lambda d: (
            d["event"]["action"] == "tcp_state"
            and d["destination"]["port"] == loopback_server
            and d["rlguard"]["tcp"]["new_state"] == "SYN_SENT"
            and d["process"]["pid"] == pid
        )
    )
    assert syn["rl"]["episode_id"] == "ep-uring"
    sent = live.wait_for(
        lambda d: (
            d["event"]["action"] == "send"
            and d["destination"]["port"] == loopback_server
            and d["process"]["pid"] == pid
        )
    )
    assert bytes.fromhex(sent["rlguard"]["payload"]["hex"]) == b"via-uring"


FIRST_BYTES = textwrap.dedent(
    """
    import os, socket, sys, time
    port = int(sys.argv[1]); how = sys.argv[2]; msg = sys.argv[3].encode()
    s = socket.create_connection(("127.0.0.1", port))
    if how == "write":
        os.write(s.fileno(), msg)
        os.write(s.fileno(), b"second-write-not-captured")
    elif how == "sendmsg":
        s.sendmsg([msg[:4], msg[4:]])
    elif how == "child":
        pid = os.fork()
        if pid == 0:
            os.write(s.fileno(), msg)
            print(os.getpid(), flush=True)
            os._exit(0)
        os.waitpid(pid, 0)
    time.sleep(0.1)
    s.close()
    """
)


@pytest.mark.parametrize("how", ["write", "sendmsg", "child"])
def test_first_bytes(live, loopback_server, how) -> None:
    msg = f"FIRST-{how}-{os.urandom(4).hex()}"
    env = {"RL_EPISODE_ID": f"ep-first-{how}"}
    proc = subprocess.run(
        [sys.executable, "-c", FIRST_BYTES, str(loopback_server), how, msg],
        env=env,
        capture_output=True,
        timeout=20,
    )
    assert proc.returncode == 0, proc.stderr
    doc = live.wait_for(
        lambda d: (
            d["event"]["action"] == "send"
            and d["destination"]["port"] == loopback_server
            and d["rlguard"]["payload"]["hex"].startswith(msg.encode().hex()[:16])
        )
    )
    payload = bytes.fromhex(doc["rlguard"]["payload"]["hex"])
    assert payload == msg.encode()
    assert doc["rlguard"]["payload"]["preview"] == msg
    assert doc["rl"]["episode_id"] == f"ep-first-{how}"
    if how == "child":
        child_pid = int(proc.stdout)
        assert doc["process"]["pid"] == child_pid
        assert doc["rlguard"]["socket"]["owner_differs"] is True
    # once per connection: the second write never shows up
    time.sleep(0.3)
    assert not live.sink.find_all(
        lambda d: (
            d["event"]["action"] == "send"
            and b"second-write" in bytes.fromhex(d["rlguard"]["payload"]["hex"])
        )
    )


def test_dns_query_name(live) -> None:
    q = build_query("pool.rlguard-test.example", qtype=1, id=0x4242)
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.sendto(q, ("127.0.0.1", 53))
    u.close()
    doc = live.wait_for(
        lambda d: (
            d["event"]["action"] == "dns"
            and d.get("dns", {}).get("question", {}).get("name") == "pool.rlguard-test.example"
            # another session on this host may run the same test: ours only
            and d.get("process", {}).get("pid") == os.getpid()
        )
    )
    assert doc["dns"]["id"] == str(0x4242)
    assert doc["dns"]["question"]["type"] == "A"
    assert doc["dns"]["type"] == "query"
    assert doc["process"]["pid"] == os.getpid()
    assert doc["destination"] == {"ip": "127.0.0.1", "port": 53}
    assert doc["network"]["transport"] == "udp"


def test_dns_over_ipv6_to_namespace(live, netns_host) -> None:
    q = build_query("miner.rlguard-test.example", qtype=28)
    u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    u.sendto(q, (netns_host.ip6, 53))
    u.close()
    doc = live.wait_for(
        lambda d: (
            d["event"]["action"] == "dns"
            and d.get("dns", {}).get("question", {}).get("name") == "miner.rlguard-test.example"
        )
    )
    assert doc["dns"]["question"]["type"] == "AAAA"
    assert doc["destination"]["ip"] == netns_host.ip6
    assert doc["network"]["type"] == "ipv6"
