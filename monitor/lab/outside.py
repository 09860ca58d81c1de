"""An "outside host" for end-to-end tests: a network namespace with a real
OpenSSH server (ports 22 and 443), a fake stratum pool, a DNS server and a
plain TCP listener, all on documentation-range addresses (198.51.100.0/24,
2001:db8::/32) that exist only on this machine.

Also a stateless client key so tests can run `ssh` as root against it.
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
from pathlib import Path

from monitor.lab.netns import NetnsHost
from monitor.lab.servers import SERVER

POOL_SERVER = textwrap.dedent(
    r"""
    # a fake pool: records the first line each client sends, answers like a pool
    import json, socket, sys, threading
    def serve(c, log):
        with c:
            data = c.recv(4096)
            with open(log, "ab") as fh:
                fh.write(data + b"\n---\n")
            try:
                c.sendall(b'{"id":1,"jsonrpc":"2.0","result":{"id":"1","job":{}},"error":null}\n')
                c.recv(4096)
            except OSError:
                pass
    def listen(fam, addr, port, log):
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if fam == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((addr, port)); s.listen(64)
        while True:
            c, _ = s.accept()
            threading.Thread(target=serve, args=(c, log), daemon=True).start()
    log = sys.argv[1]
    for spec in sys.argv[2:]:
        fam, addr, port = spec.split(",")
        f = socket.AF_INET6 if fam == "6" else socket.AF_INET
        threading.Thread(target=listen, args=(f, addr, int(port), log), daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()
    """
)

DNS_SERVER = textwrap.dedent(
    r"""
    # answers every A query with its own address (and AAAA with nothing)
    import socket, struct, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((sys.argv[1], 53))
    print("ready", flush=True)
    while True:
        q, peer = s.recvfrom(512)
        if len(q) < 12:
            continue
        end = q.index(b"\0", 12) + 5
        qtype = struct.unpack("!H", q[end - 4:end - 2])[0]
        flags = b"\x81\x80"
        if qtype == 1:
            rr = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04"
            ans = rr + socket.inet_aton(sys.argv[1])
            head = q[:2] + flags + b"\x00\x01\x00\x01\x00\x00\x00\x00"
        else:
            ans = b""
            head = q[:2] + flags + b"\x00\x01\x00\x00\x00\x00\x00\x00"
        s.sendto(head + q[12:end] + ans, peer)
    """
)

SHELL_LISTENER = textwrap.dedent(
    r"""
    # accepts one reverse shell (IPv4 or IPv6), sends a command, records what comes back
    import socket, sys, time
    fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
    s = socket.socket(fam); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(4)
    print("ready", flush=True)
    c, _ = s.accept()
    c.settimeout(8)
    c.sendall(b"echo rlguard-shell-ok; exit\n")
    out = b""
    try:
        while len(out) < 65536:
            d = c.recv(4096)
            if not d:
                break
            out += d
    except OSError:
        pass
    open(sys.argv[3], "wb").write(out)
    """
)


def _ready(p: subprocess.Popen[bytes]) -> None:
    assert p.stdout is not None
    line = p.stdout.readline()
    if line.strip() != b"ready":
        raise RuntimeError(f"helper did not start: {line!r}")


class OutsideHost(NetnsHost):
    """A NetnsHost with sshd, a pool, DNS and a shell listener."""

    def __init__(self, index: int = 0) -> None:
        super().__init__(index=index)
        self.dir = Path(tempfile.mkdtemp(prefix="rlg-outside-"))
        self.client_key = self.dir / "id_ed25519"
        self.pool_log = self.dir / "pool.log"

    # -- services ----------------------------------------------------------------

    def start_sshd(self, ports: tuple[int, ...] = (22, 443)) -> None:
        d = self.dir
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "host_key")], check=True
        )
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.client_key)], check=True
        )
        shutil.copy(f"{self.client_key}.pub", d / "authorized_keys")
        Path("/run/sshd").mkdir(exist_ok=True)
        cfg = d / "sshd_config"
        cfg.write_text(
            "".join(f"Port {p}\n" for p in ports)
            + textwrap.dedent(
                f"""
                ListenAddress 0.0.0.0
                ListenAddress ::
                HostKey {d}/host_key
                AuthorizedKeysFile {d}/authorized_keys
                PidFile {d}/sshd.pid
                StrictModes no
                PermitRootLogin yes
                PasswordAuthentication no
                KbdInteractiveAuthentication no
                UsePAM no
                AllowTcpForwarding yes
                PermitTunnel no
                LogLevel QUIET
                """
            )
        )
        self.spawn("/usr/sbin/sshd", "-D", "-e", "-f", str(cfg))
        self.wait_port(self.ip4, ports[0])

    def start_pool(self, ports: tuple[int, ...] = (3333, 443, 8080)) -> None:
        specs = [f"4,{self.ip4},{p}" for p in ports] + [f"6,{self.ip6},{ports[0]}"]
        p = self.spawn(
            sys.executable, "-c", POOL_SERVER, str(self.pool_log), *specs, stdout=subprocess.PIPE
        )
        _ready(p)

    def start_dns(self) -> None:
        p = self.spawn(sys.executable, "-c", DNS_SERVER, self.ip4, stdout=subprocess.PIPE)
        _ready(p)

    def start_shell_listener(self, port: int = 4444, ip: str | None = None) -> Path:
        """A one-shot listener on `ip` (the host's IPv4 address by default): it sends
        `echo rlguard-shell-ok; exit` and writes what comes back to the returned file."""
        out = self.dir / f"shell-{port}.out"
        p = self.spawn(
            sys.executable,
            "-c",
            SHELL_LISTENER,
            ip or self.ip4,
            str(port),
            str(out),
            stdout=subprocess.PIPE,
        )
        _ready(p)
        return out

    def start_tcp_sink(self, port: int) -> None:
        p = self.spawn(sys.executable, "-c", SERVER, self.ip4, str(port), stdout=subprocess.PIPE)
        _ready(p)

    def wait_port(self, ip: str, port: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                socket.create_connection((ip, port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{ip}:{port} did not come up")

    def ssh_args(self, port: int = 22) -> list[str]:
        return [
            "-i",
            str(self.client_key),
            "-p",
            str(port),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "ExitOnForwardFailure=yes",
        ]

    def in_ns(self, *cmd: str, timeout: float = 20) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            ["ip", "netns", "exec", self.name, *cmd], capture_output=True, timeout=timeout
        )

    def down(self) -> None:
        super().down()
        shutil.rmtree(self.dir, ignore_errors=True)


def visit_forwarded_port(host: OutsideHost, port: int, timeout: float = 15) -> bytes:
    """From inside the namespace, connect to the remote end of a -R forward."""
    code = (
        "import socket,sys,time\n"
        "deadline=time.time()+float(sys.argv[2])\n"
        "while True:\n"
        "    try:\n"
        "        s=socket.create_connection(('127.0.0.1',int(sys.argv[1])),timeout=3); break\n"
        "    except OSError:\n"
        "        if time.time()>deadline: raise\n"
        "        time.sleep(0.1)\n"
        "s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n'); print(s.recv(100))\n"
    )
    res = host.in_ns(sys.executable, "-c", code, str(port), str(timeout), timeout=timeout + 5)
    return res.stdout


def kill_tree(p: subprocess.Popen[bytes]) -> None:
    if p.poll() is None:
        try:
            os.killpg(p.pid, 9)
        except (ProcessLookupError, PermissionError):
            p.kill()
    p.wait(timeout=10)
