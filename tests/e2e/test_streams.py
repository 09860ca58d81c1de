"""End to end: the cheap ways around the first-segment detectors, each with a real client
and real servers in a namespace host, caught with the episode of the launching worker;
and the benign look-alikes, silent.

The namespace host runs the lab servers (monitor/lab/relays.py): a SOCKS4/4a/5 proxy, an
HTTP CONNECT proxy, a stratum pool in the clear, behind TLS and behind WebSocket, an
HTTPS index, plain sinks for protocol replays, and sshd for paramiko.  TLS uses a CA made
for the run; clients are Python's ssl, openssl s_client, curl and gnutls-cli.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from monitor.config import load_config
from monitor.lab.outside import kill_tree, visit_forwarded_port
from monitor.lab.relays import INDEX_NAME, POOL_NAME, WEB_NAME, LabHost
from tests.support.live import LiveMonitor

pytestmark = pytest.mark.e2e

CORPUS = Path(__file__).resolve().parents[1] / "corpus"
XMRIG_LOGIN = (CORPUS / "mining" / "payloads" / "xmrig_login.bin").read_bytes()
SUBSCRIBE = b'{"id": 1, "method": "mining.subscribe", "params": ["cpuminer/2.5.1"]}\n'

PORTS = {
    "socks": 1080,
    "connect": 3128,
    "pool": 3333,
    "tlspool": 3443,
    "ws": 8088,
    "https": 8443,
    "sink": 7835,
}


@pytest.fixture(scope="module")
def lab() -> Iterator[LabHost]:
    h = LabHost()
    h.up()
    try:
        h.start_sshd(ports=(22,))
        h.start_pool(ports=(3334,))  # the IPv6 pool (records the first message)
        h.start_lab(*[f"{role}:{port}" for role, port in PORTS.items()], "sink:9001")
        yield h
    finally:
        h.down()


@pytest.fixture(scope="module")
def mon() -> Iterator[LiveMonitor]:
    m = LiveMonitor(load_config(None)).start()
    try:
        yield m
    finally:
        m.stop()


def episode() -> str:
    return f"ep-{uuid.uuid4().hex[:8]}"


def worker_env(ep: str | None) -> dict[str, str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": "/root", "RL_WORKER_ID": "w-streams"}
    if ep is not None:
        env["RL_EPISODE_ID"] = ep
    return env


def alerts(mon: LiveMonitor, ep: str) -> list[dict]:
    return mon.sink.find_all(
        lambda d: d["event"]["kind"] == "alert" and d.get("rl", {}).get("episode_id") == ep
    )


def wait_alert(mon: LiveMonitor, ep: str, rule: str, timeout: float = 20) -> dict:
    a = mon.wait_for(
        lambda d: (
            d["event"]["kind"] == "alert"
            and d["rule"]["id"] == rule
            and d.get("rl", {}).get("episode_id") == ep
        ),
        timeout=timeout,
    )
    assert a["rl"]["episode_id"] == ep and a["rl"]["worker_id"] == "w-streams"
    assert a["rl"]["lineage"], "lineage attached"
    return a


def details(a: dict) -> str:
    return " | ".join(e["detail"] for e in a["rlguard"]["alert"]["evidence"])


def names(a: dict) -> set[str]:
    return {e["name"] for e in a["rlguard"]["alert"]["evidence"]}


# A small client library every client script starts with (the proxies' and WebSocket's
# client sides written out, so the bytes are exactly what the tests say).
CLIENT = textwrap.dedent(
    r"""
    import os, socket, ssl, struct, sys, time
    IP, CA = sys.argv[1], sys.argv[2]
    ARGS = sys.argv[3:]
    def tcp(port, ip=None):
        return socket.create_connection((ip or IP, port), timeout=10)
    def upto(s, end):
        r = b""
        while end not in r:
            d = s.recv(1)
            if not d:
                raise EOFError(r)
            r += d
        return r
    def socks5(s, host, port, auth=None):
        s.sendall(b"\x05\x02\x00\x02" if auth else b"\x05\x01\x00")
        m = s.recv(2)
        if m[1] == 2:
            u, p = auth
            s.sendall(bytes([1, len(u)]) + u + bytes([len(p)]) + p)
            s.recv(2)
        h = host.encode()
        s.sendall(b"\x05\x01\x00\x03" + bytes([len(h)]) + h + struct.pack("!H", port))
        assert s.recv(10)[1] == 0
    def socks4(s, host, port):
        if host[0].isdigit():
            s.sendall(b"\x04\x01" + struct.pack("!H", port) + socket.inet_aton(host) + b"w\0")
        else:
            name = host.encode() + b"\0"
            s.sendall(b"\x04\x01" + struct.pack("!H", port) + b"\0\0\0\x01w\0" + name)
        assert s.recv(8)[1] == 0x5A
    def connect(s, host, port):
        s.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
        assert b" 200 " in upto(s, b"\r\n\r\n")
    def ws_upgrade(s, host, extra=""):
        s.sendall((f"GET /socket HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                   "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                   f"Sec-WebSocket-Version: 13\r\n{extra}\r\n").encode())
        assert b" 101 " in upto(s, b"\r\n\r\n")
    def ws_send(s, data, opcode=1, fin=True):
        key = os.urandom(4)
        n = len(data)
        ln = bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack("!H", n)
        s.sendall(bytes([(0x80 if fin else 0) | opcode]) + ln + key
                  + bytes(b ^ key[i % 4] for i, b in enumerate(data)))
    def tls(s, name=None, verify=True):
        ctx = ssl.create_default_context(cafile=CA)
        if not verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx.wrap_socket(s, server_hostname=name or POOL)
    POOL = "pool.example"
    """
)


def run_client(lab: LabHost, ep: str | None, body: str, *args: str, timeout: float = 30) -> None:
    res = subprocess.run(
        [sys.executable, "-c", CLIENT + textwrap.dedent(body), lab.ip4, str(lab.ca), *args],
        env=worker_env(ep),
        capture_output=True,
        timeout=timeout,
    )
    assert res.returncode == 0, res.stderr.decode()[-2000:]


def run_tool(ep: str | None, cmd: list[str], stdin: bytes = b"", timeout: float = 30) -> bytes:
    res = subprocess.run(cmd, env=worker_env(ep), input=stdin, capture_output=True, timeout=timeout)
    return res.stdout + res.stderr


# -- splitting, greeting, reordering -----------------------------------------------------


def test_one_byte_first_write(mon, lab) -> None:
    ep = episode()
    run_client(
        lab,
        ep,
        """
        s = tcp(3333)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.send(b"{")
        time.sleep(0.1)
        s.send(ARGS[0].encode()[1:])
        s.recv(100)
        """,
        SUBSCRIBE.decode(),
    )
    a = wait_alert(mon, ep, "RLG-MIN-001")
    assert "stratum.mining.subscribe" in names(a)
    assert a["destination"]["port"] == 3333


def test_greeting_then_login(mon, lab) -> None:
    ep = episode()
    run_client(
        lab,
        ep,
        """
        s = tcp(3333)
        s.sendall(b"HELLO rollout-7\\n")
        s.recv(100)
        s.sendall(ARGS[0].encode())
        s.recv(100)
        """,
        XMRIG_LOGIN.decode(),
    )
    a = wait_alert(mon, ep, "RLG-MIN-001")
    assert "stratum.login" in names(a)


def test_login_keys_reordered_and_padded(mon, lab) -> None:
    ep = episode()
    login = (
        b'{\n   "params" :  {  "agent" : "XMRig/6.21.0" ,\t"pass":"x",  "login" :'
        b' "44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQG'
        b'v7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A"'
        b'  } ,   "jsonrpc" : "2.0" , "id" : 1 , "method"   :   "login"\n}\n'
    )
    run_client(lab, ep, "s = tcp(3333); s.sendall(ARGS[0].encode()); s.recv(100)", login.decode())
    a = wait_alert(mon, ep, "RLG-MIN-001")
    assert "stratum.login" in names(a)


# -- proxies -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "how",
    ["socks5", "socks5-auth", "socks4", "socks4a", "connect"],
)
def test_login_through_a_proxy(mon, lab, how) -> None:
    ep = episode()
    handshake = {
        "socks5": "s = tcp(1080); socks5(s, POOL, 3333)",
        "socks5-auth": "s = tcp(1080); socks5(s, POOL, 3333, (b'user', b'secret'))",
        "socks4": "s = tcp(1080); socks4(s, IP, 3333)",
        "socks4a": "s = tcp(1080); socks4(s, POOL, 3333)",
        "connect": "s = tcp(3128); connect(s, POOL, 3333)",
    }[how]
    run_client(
        lab, ep, handshake + "\ns.sendall(ARGS[0].encode()); s.recv(100)", SUBSCRIBE.decode()
    )
    a = wait_alert(mon, ep, "RLG-MIN-001")
    assert a["destination"]["port"] == (3128 if how == "connect" else 1080), "the wire peer"
    stream = a["rlguard"]["alert"]["stream"]
    kind = {"socks5-auth": "socks5", "connect": "http_connect"}.get(how, how)
    assert stream["layers"][0]["kind"] == kind
    assert stream["effective_destination"]["port"] == 3333
    if how != "socks4":
        assert stream["effective_destination"]["address"] == POOL_NAME
    assert f"[{kind}]" in details(a)


def test_websocket_masked_fragmented(mon, lab) -> None:
    ep = episode()
    run_client(
        lab,
        ep,
        """
        s = tcp(8088)
        ws_upgrade(s, POOL)
        msg = ARGS[0].encode().strip()
        ws_send(s, msg[:7], opcode=1, fin=False)
        ws_send(s, msg[7:20], opcode=0, fin=False)
        ws_send(s, msg[20:], opcode=0, fin=True)
        s.recv(200)
        """,
        SUBSCRIBE.decode(),
    )
    a = wait_alert(mon, ep, "RLG-MIN-001")
    assert "[websocket]" in details(a)


def test_websocket_binary_frames(mon, lab) -> None:
    ep = episode()
    run_client(
        lab,
        ep,
        "s = tcp(8088); ws_upgrade(s, POOL); ws_send(s, ARGS[0].encode(), opcode=2); s.recv(200)",
        XMRIG_LOGIN.decode(),
    )
    a = wait_alert(mon, ep, "RLG-MIN-001")
    assert "stratum.login" in names(a)


def test_proxy_then_websocket(mon, lab) -> None:
    ep = episode()
    run_client(
        lab,
        ep,
        """
        s = tcp(1080)
        socks5(s, POOL, 8088)
        ws_upgrade(s, POOL)
        ws_send(s, ARGS[0].encode())
        s.recv(200)
        """,
        SUBSCRIBE.decode(),
    )
    a = wait_alert(mon, ep, "RLG-MIN-001")
    assert "[socks5>websocket]" in details(a)
    kinds = [layer["kind"] for layer in a["rlguard"]["alert"]["stream"]["layers"]]
    assert kinds == ["socks5", "websocket"]


def test_getwork_after_long_headers(mon, lab) -> None:
    ep = episode()
    body = '{"method": "getwork", "params": [], "id": 0}'
    padding = "".join(f"X-Trace-{i}: {'a' * 40}\r\n" for i in range(10))
    req = (
        f"POST / HTTP/1.1\r\nHost: {POOL_NAME}\r\n{padding}Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n{body}"
    )
    assert req.index(body) > 256, "the body is past what the first-segment capture held"
    run_client(lab, ep, "s = tcp(3128); s.sendall(ARGS[0].encode()); time.sleep(0.3)", req)
    a = wait_alert(mon, ep, "RLG-MIN-001")
    assert "mining_rpc.getwork" in names(a)


# -- TLS ----------------------------------------------------------------------------------


def test_python_ssl_login(mon, lab) -> None:
    ep = episode()
    run_client(
        lab,
        ep,
        "s = tls(tcp(3443)); s.sendall(ARGS[0].encode()); s.recv(200)",
        XMRIG_LOGIN.decode(),
    )
    a = wait_alert(mon, ep, "RLG-MIN-001")
    assert "tls plaintext" in details(a)
    stream = a["rlguard"]["alert"]["stream"]
    assert stream["tls_plaintext"]["library"] == "openssl"
    tls = [layer for layer in stream["layers"] if layer["kind"] == "tls"][0]
    assert tls["host"] == POOL_NAME and tls["ja4"].startswith("t13d")
    assert a["destination"]["port"] == 3443, "the plaintext is tied to its connection"


def test_tls_through_socks(mon, lab) -> None:
    ep = episode()
    run_client(
        lab,
        ep,
        "s = tcp(1080); socks5(s, POOL, 3443)\n"
        "s = tls(s); s.sendall(ARGS[0].encode()); s.recv(200)",
        SUBSCRIBE.decode(),
    )
    a = wait_alert(mon, ep, "RLG-MIN-001")
    assert "[socks5>tls plaintext]" in details(a)
    assert a["rlguard"]["alert"]["stream"]["effective_destination"]["port"] == 3443


def test_openssl_s_client(mon, lab) -> None:
    ep = episode()
    cmd = ["openssl", "s_client", "-connect", f"{lab.ip4}:3443", "-servername", POOL_NAME]
    cmd += ["-CAfile", str(lab.ca), "-quiet", "-no_ign_eof"]
    run_tool(ep, ["bash", "-c", "(sleep 1; cat; sleep 1) | " + " ".join(cmd)], SUBSCRIBE)
    a = wait_alert(mon, ep, "RLG-MIN-001")
    assert "tls plaintext" in details(a)
    assert a["process"]["name"] == "openssl"


def test_gnutls_cli(mon, lab) -> None:
    ep = episode()
    cmd = f"(sleep 1; cat; sleep 1) | gnutls-cli --x509cafile {lab.ca} -p 3443 {lab.ip4}"
    run_tool(ep, ["bash", "-c", cmd + " --verify-hostname " + POOL_NAME], SUBSCRIBE)
    a = wait_alert(mon, ep, "RLG-MIN-001")
    assert "tls plaintext" in details(a)
    assert a["rlguard"]["alert"]["stream"]["tls_plaintext"]["library"] == "gnutls"


def test_curl_json_rpc_over_https(mon, lab) -> None:
    ep = episode()
    body = '{"jsonrpc": "1.0", "id": "curl", "method": "getblocktemplate", "params": []}'
    out = run_tool(
        ep,
        [
            "curl",
            "-s",
            "--cacert",
            str(lab.ca),
            "--resolve",
            f"{POOL_NAME}:8443:{lab.ip4}",
            "-H",
            "Content-Type: application/json",
            "-d",
            body,
            f"https://{POOL_NAME}:8443/",
        ],  # fmt: skip
    )
    assert b'"result":true' in out
    a = wait_alert(mon, ep, "RLG-MIN-001")
    assert "mining_rpc.getblocktemplate" in names(a)
    assert a["process"]["name"] == "curl"


def test_sni_of_a_pool_domain(mon, lab) -> None:
    ep = episode()
    run_client(
        lab,
        ep,
        "s = tls(tcp(3443), 'gulf.moneroocean.stream', verify=False)\n"
        "s.sendall(b'ping\\n'); s.recv(100)",
    )
    a = wait_alert(mon, ep, "RLG-MIN-007")
    assert "tls.sni_pool_domain" in names(a)
    assert a["tls"]["client"]["server_name"] == "gulf.moneroocean.stream"


# -- tunnels through a proxy ------------------------------------------------------------------

PARAMIKO_VIA_CONNECT = """
import paramiko
s = tcp(3128)
connect(s, IP, 22)
client = paramiko.SSHClient()
client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
client.connect(IP, 22, username="root", key_filename=ARGS[0], look_for_keys=False,
               allow_agent=False, sock=s)
t = client.get_transport()
t.request_port_forward("127.0.0.1", int(ARGS[1]))
print("ready", flush=True)
ch = t.accept(30)
local = socket.create_connection(("127.0.0.1", int(ARGS[2])))
local.sendall(ch.recv(1024))
ch.sendall(local.recv(1024))
time.sleep(1)
"""


def test_paramiko_reverse_forward_through_http_connect(mon, lab) -> None:
    ep = episode()
    web = subprocess.Popen(
        [sys.executable, "-m", "http.server", "8082", "--bind", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    p = subprocess.Popen(
        [sys.executable, "-c", CLIENT + textwrap.dedent(PARAMIKO_VIA_CONNECT), lab.ip4,
         str(lab.ca), str(lab.client_key), "9310", "8082"],
        env=worker_env(ep),
        stdout=subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == b"ready"
        a = wait_alert(mon, ep, "RLG-TUN-002")
        assert {"ssh.unknown_client", "ssh.tunnelled"} <= names(a)
        assert "[http_connect]" in details(a)
        assert a["rlguard"]["alert"]["ssh_server"]["port"] == 22
        assert b"200" in visit_forwarded_port(lab, 9310)
        b = wait_alert(mon, ep, "RLG-TUN-001")
        assert b["process"]["pid"] == p.pid
    finally:
        kill_tree(p)
        kill_tree(web)


# -- IPv6 extension headers --------------------------------------------------------------------


def test_ipv6_destination_options_on_every_segment(mon, lab) -> None:
    ep = episode()
    run_client(
        lab,
        ep,
        """
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        # a Destination Options header (PadN) on every segment of this socket
        s.setsockopt(socket.IPPROTO_IPV6, 59, bytes([0, 0, 1, 4, 0, 0, 0, 0]))
        s.settimeout(10)
        s.connect((ARGS[0], 3334))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.send(b"{")
        time.sleep(0.1)
        s.send(ARGS[1].encode()[1:])
        s.recv(100)
        """,
        lab.ip6,
        SUBSCRIBE.decode(),
    )
    a = wait_alert(mon, ep, "RLG-MIN-001")
    assert a["destination"]["ip"] == lab.ip6


# -- replays of public protocols ------------------------------------------------------------------


def sv2_setup_connection() -> bytes:
    """A Stratum V2 SetupConnection frame (stratum-mining/sv2-spec, Common Protocol Messages:
    protocol 0 = mining, versions 2-2, flags, endpoint, vendor, hardware, firmware, device)."""

    def s0(x: bytes) -> bytes:
        return bytes([len(x)]) + x

    payload = (
        bytes([0]) + (2).to_bytes(2, "little") * 2 + (1).to_bytes(4, "little")
        + s0(POOL_NAME.encode()) + (3336).to_bytes(2, "little") + s0(b"Bitmain")
        + s0(b"S19 Pro") + s0(b"braiins-os-2024-03") + s0(b"")
    )  # fmt: skip
    return b"\x00\x00\x00" + len(payload).to_bytes(3, "little") + payload


REPLAYS = {
    "stratum-v2": (9001, sv2_setup_connection(), "RLG-MIN-001", "stratum.v2.setup_connection"),
    # jpillora/chisel client: a WebSocket upgrade with subprotocol chisel-v3 (share/version.go)
    "chisel": (
        9001,
        b"GET / HTTP/1.1\r\nHost: tunnel.example:8080\r\nUser-Agent: Go-http-client/1.1\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: c2VjcmV0LWtleS0xMjM0NQ==\r\n"
        b"Sec-WebSocket-Protocol: chisel-v3\r\nSec-WebSocket-Version: 13\r\n"
        b"Upgrade: websocket\r\n\r\n",
        "RLG-TUN-008",
        "tunnel.chisel",
    ),
    # ekzhang/bore: ClientMessage::Hello(0) as serde JSON, NUL-terminated (src/shared.rs)
    "bore": (7835, b'{"Hello":0}\x00', "RLG-TUN-008", "tunnel.bore"),
}


@pytest.mark.parametrize("name", sorted(REPLAYS))
def test_protocol_replay(mon, lab, name) -> None:
    ep = episode()
    port, data, rule, signal = REPLAYS[name]
    run_client(
        lab, ep, f"s = tcp({port}); s.sendall(bytes.fromhex(ARGS[0])); time.sleep(0.3)", data.hex()
    )
    a = wait_alert(mon, ep, rule)
    assert signal in names(a)


def test_noise_handshake_start_to_a_pool_port(mon, lab) -> None:
    ep = episode()
    run_client(lab, ep, "s = tcp(3333); s.sendall(os.urandom(64)); time.sleep(0.3)")
    a = wait_alert(mon, ep, "RLG-MIN-007")
    assert "noise.handshake_start" in names(a)
    assert a["rlguard"]["alert"]["severity"] == "low"


# -- benign look-alikes: silent ------------------------------------------------------------------


def assert_silent(mon: LiveMonitor, ep: str, seen) -> None:
    mon.wait_for(seen, timeout=20)
    time.sleep(1.0)
    got = alerts(mon, ep)
    assert not got, [(a["rule"]["id"], a["event"]["reason"]) for a in got]


def saw(ep: str, action: str, port: int | None = None):
    return lambda d: (
        d["event"]["action"] == action
        and d.get("rl", {}).get("episode_id") == ep
        and (port is None or d.get("destination", {}).get("port") == port)
    )


def test_pip_through_an_http_proxy_is_silent(mon, lab, tmp_path) -> None:
    ep = episode()
    run_tool(
        ep,
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "--proxy",
            f"http://{lab.ip4}:3128",
            "--cert",
            str(lab.ca),
            "--index-url",
            f"https://{INDEX_NAME}:8443/simple/",
            "--retries",
            "0",
            "--timeout",
            "5",
            "-d",
            str(tmp_path),
            "rlguard-nothing-here",
        ],  # fmt: skip
        timeout=60,
    )
    # through a proxy pip asks for the index by name (CONNECT pypi.example:8443): no DNS
    assert_silent(mon, ep, saw(ep, "send", 3128))


def test_websocket_chat_with_json_frames_is_silent(mon, lab) -> None:
    ep = episode()
    run_client(
        lab,
        ep,
        """
        s = tcp(8088)
        ws_upgrade(s, "chat.example")
        for i in range(3):
            msg = '{"type": "message", "room": "general", "text": "hello %d", "id": %d}' % (i, i)
            ws_send(s, msg.encode())
            s.recv(200)
        """,
    )
    assert_silent(mon, ep, saw(ep, "send", 8088))


def test_curl_through_socks_is_silent(mon, lab) -> None:
    ep = episode()
    out = run_tool(
        ep,
        [
            "curl",
            "-s",
            "--cacert",
            str(lab.ca),
            "--socks5-hostname",
            f"{lab.ip4}:1080",
            f"https://{WEB_NAME}:8443/simple/",
        ],  # fmt: skip
    )
    assert b"<html>" in out
    assert_silent(mon, ep, saw(ep, "stream"))


def test_trainer_tls_heartbeats_are_silent(mon, lab) -> None:
    ep = episode()
    run_client(
        lab,
        ep,
        """
        s = tls(tcp(3443))
        for i in range(6):
            s.sendall(b'{"type": "heartbeat", "step": %d, "loss": 0.31}\\n' % i)
            s.recv(100)
            time.sleep(0.3)
        """,
    )
    assert_silent(mon, ep, saw(ep, "tls_data"))


def test_loss_accounting_is_in_the_stats_line(mon, lab) -> None:
    ep = episode()
    run_client(
        lab, ep, "s = tcp(9001); s.sendall(b'x' * 20000); time.sleep(0.3)"
    )  # more than the opening holds: cut by the byte bound
    mon.collector._last_metrics = 0.0  # the next step writes the stats line
    doc = mon.wait_for(
        lambda d: d["event"]["action"] == "stats" and d["rlguard"]["streams"]["truncated"] >= 1,
        timeout=20,
    )
    streams = doc["rlguard"]["streams"]
    for key in ("streams", "evicted", "expired", "truncated", "cut_short", "gaps", "tls_unbound"):
        assert key in streams
    assert streams["tls_libraries"]["attached"] >= 1
