"""Proxies, pools and web servers for the stream tests and the demo's second act.

One script (``SERVERS``) runs inside a namespace host and listens on the ports it is
given, each with a role:

* ``socks:PORT``   SOCKS4, SOCKS4a and SOCKS5 (no auth, or user/password) in one
* ``connect:PORT`` an HTTP proxy: CONNECT tunnels and absolute-form requests
* ``pool:PORT``    a stratum pool speaking newline-delimited JSON, answering each line
* ``tlspool:PORT`` the same pool behind TLS (a certificate from the lab CA)
* ``ws:PORT``      a WebSocket server (HTTP upgrade, RFC 6455 frames) answering each
                   message like the pool (a JSON chat message gets a chat answer)
* ``https:PORT``   an HTTPS server: a PEP 503 simple index with no packages, and a
                   JSON-RPC answer to any POST
* ``sink:PORT``    reads what comes and answers nothing (protocol replays)

Every name a client asks a proxy for resolves to the namespace's own address, so the
tests need no DNS.  Everything stays on the namespace's documentation-range addresses.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from monitor.lab.outside import OutsideHost

SERVERS = textwrap.dedent(
    r"""
    import base64, hashlib, json, select, socket, ssl, struct, sys, threading
    here, cert, key = sys.argv[1], sys.argv[2], sys.argv[3]
    specs = sys.argv[4:]

    def recv_exact(c, n):
        out = b""
        while len(out) < n:
            d = c.recv(n - len(out))
            if not d:
                raise EOFError
            out += d
        return out

    def relay(a, b):
        socks = [a, b]
        try:
            while True:
                r, _, _ = select.select(socks, [], [], 30)
                if not r:
                    return
                for s in r:
                    d = s.recv(65536)
                    if not d:
                        return
                    (b if s is a else a).sendall(d)
        except OSError:
            pass
        finally:
            a.close(); b.close()

    def upstream(host, port):
        return socket.create_connection((here, port), timeout=10)

    def socks(c):
        v = recv_exact(c, 1)[0]
        if v == 4:
            cmd, port = recv_exact(c, 1)[0], struct.unpack("!H", recv_exact(c, 2))[0]
            ip = recv_exact(c, 4)
            def cstr():
                out = b""
                while True:
                    ch = recv_exact(c, 1)
                    if ch == b"\0":
                        return out
                    out += ch
            cstr()
            if ip[:3] == b"\0\0\0" and ip[3]:
                cstr()
            up = upstream(None, port)
            c.sendall(b"\0\x5a" + b"\0" * 6)
            return relay(c, up)
        n = recv_exact(c, 1)[0]
        methods = recv_exact(c, n)
        if 2 in methods:
            c.sendall(b"\x05\x02")
            recv_exact(c, 1); u = recv_exact(c, 1)[0]; recv_exact(c, u)
            p = recv_exact(c, 1)[0]; recv_exact(c, p)
            c.sendall(b"\x01\x00")
        else:
            c.sendall(b"\x05\x00")
        ver, cmd, rsv, atyp = recv_exact(c, 4)
        if atyp == 1:
            recv_exact(c, 4)
        elif atyp == 3:
            recv_exact(c, recv_exact(c, 1)[0])
        else:
            recv_exact(c, 16)
        port = struct.unpack("!H", recv_exact(c, 2))[0]
        up = upstream(None, port)
        c.sendall(b"\x05\x00\x00\x01" + socket.inet_aton(here) + struct.pack("!H", port))
        relay(c, up)

    def read_head(c):
        head = b""
        while b"\r\n\r\n" not in head:
            d = c.recv(1)
            if not d:
                raise EOFError
            head += d
        return head

    def connect_proxy(c):
        head = read_head(c)
        line = head.split(b"\r\n", 1)[0].decode()
        method, target, _ = line.split(" ", 2)
        if method == "CONNECT":
            port = int(target.rsplit(":", 1)[1])
            up = upstream(None, port)
            c.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            return relay(c, up)
        rest = target.split("://", 1)[1]
        hostport, _, path = rest.partition("/")
        port = int(hostport.rsplit(":", 1)[1]) if ":" in hostport else 80
        up = upstream(None, port)
        up.sendall(head.replace(target.encode(), b"/" + path.encode(), 1))
        relay(c, up)

    def answer(line):
        try:
            msg = json.loads(line)
        except ValueError:
            return b'{"id":0,"result":"hello"}\n'
        if not isinstance(msg, dict):
            return b'{"id":0,"result":null}\n'
        m = str(msg.get("method", ""))
        if m == "mining.subscribe":
            return (b'{"id":1,"result":[[["mining.set_difficulty","1"],["mining.notify","1"]],'
                    b'"08000002",4],"error":null}\n'
                    b'{"id":null,"method":"mining.set_difficulty","params":[1]}\n')
        if m == "login":
            return (b'{"id":1,"jsonrpc":"2.0","result":{"id":"1","job":{"blob":"0707","job_id":"1",'
                    b'"target":"ffff"},"status":"OK"},"error":null}\n')
        if "type" in msg:
            return json.dumps({"type": "message", "text": "ok"}).encode() + b"\n"
        return b'{"id":1,"result":true,"error":null}\n'

    def pool(c):
        buf = b""
        with c:
            while True:
                d = c.recv(4096)
                if not d:
                    return
                buf += d
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    c.sendall(answer(line))

    def ws_frame(payload):
        n = len(payload)
        head = bytes([0x81, n]) if n < 126 else bytes([0x81, 126]) + struct.pack("!H", n)
        return head + payload

    def ws(c):
        head = read_head(c)
        key = b""
        for h in head.split(b"\r\n"):
            if h.lower().startswith(b"sec-websocket-key:"):
                key = h.split(b":", 1)[1].strip()
        acc = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
        c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                  b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + acc + b"\r\n\r\n")
        msg = b""
        with c:
            while True:
                b0, b1 = recv_exact(c, 2)
                n = b1 & 0x7F
                if n == 126:
                    n = struct.unpack("!H", recv_exact(c, 2))[0]
                elif n == 127:
                    n = struct.unpack("!Q", recv_exact(c, 8))[0]
                mask = recv_exact(c, 4) if b1 & 0x80 else b"\0\0\0\0"
                data = bytes(x ^ mask[i % 4] for i, x in enumerate(recv_exact(c, n)))
                if b0 & 0x0F == 8:
                    return
                msg += data
                if b0 & 0x80:
                    c.sendall(ws_frame(answer(msg.strip())))
                    msg = b""

    def https(c):
        head = read_head(c)
        line = head.split(b"\r\n", 1)[0]
        if line.startswith(b"POST"):
            n = 0
            for h in head.split(b"\r\n"):
                if h.lower().startswith(b"content-length:"):
                    n = int(h.split(b":")[1])
            recv_exact(c, n)
            body = b'{"id":1,"result":true,"error":null}'
            ctype = b"application/json"
        else:
            body = b"<!DOCTYPE html><html><body></body></html>"
            ctype = b"text/html"
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: " + ctype + b"\r\nContent-Length: "
                  + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
        c.close()

    def sink(c):
        with c:
            while c.recv(4096):
                pass

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    roles = {"socks": socks, "connect": connect_proxy, "pool": pool, "tlspool": pool,
             "ws": ws, "https": https, "sink": sink}

    def serve(role, port):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((here, port)); s.listen(64)
        while True:
            c, _ = s.accept()
            def run(c=c):
                try:
                    if role in ("tlspool", "https"):
                        c = ctx.wrap_socket(c, server_side=True)
                    roles[role](c)
                except (OSError, EOFError, ValueError, ssl.SSLError):
                    pass
            threading.Thread(target=run, daemon=True).start()

    for spec in specs:
        role, port = spec.split(":")
        threading.Thread(target=serve, args=(role, int(port)), daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()
    """
)

POOL_NAME = "pool.example"
WEB_NAME = "web.example"
INDEX_NAME = "pypi.example"


def make_ca(
    where: Path, ip: str, names: tuple[str, ...] = (POOL_NAME, WEB_NAME, INDEX_NAME)
) -> Path:
    """A CA and a server certificate for the names and the address; returns the CA file.

    Written to where/ca.pem, where/server.pem, where/server.key (openssl CLI)."""
    ca_key, ca = where / "ca.key", where / "ca.pem"
    key, csr, cert = where / "server.key", where / "server.csr", where / "server.pem"
    ext = where / "san.ext"
    sans = ",".join([*(f"DNS:{n}" for n in names), f"IP:{ip}"])
    ext.write_text(f"subjectAltName={sans}\nbasicConstraints=CA:FALSE\n")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
        "/CN=rlguard lab CA", "-keyout", str(ca_key), "-out", str(ca))  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={POOL_NAME}",
        "-keyout", str(key), "-out", str(csr))  # fmt: skip
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
        "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(cert))  # fmt: skip
    return ca


class LabHost(OutsideHost):
    """An outside host that also runs the lab servers; ``ca`` is the CA clients trust."""

    def __init__(self, index: int = 0) -> None:
        super().__init__(index=index)
        self.ca = self.dir / "ca.pem"

    def start_lab(self, *specs: str) -> Path:
        return start_servers(self, *specs)


def start_servers(host: OutsideHost, *specs: str) -> Path:
    """Run the lab servers in the host's namespace; returns the CA file clients trust."""
    ca = host.dir / "ca.pem"
    if not ca.exists():
        make_ca(host.dir, host.ip4)
    p = host.spawn(
        sys.executable,
        "-c",
        SERVERS,
        host.ip4,
        str(host.dir / "server.pem"),
        str(host.dir / "server.key"),
        *specs,
        stdout=subprocess.PIPE,
    )
    assert p.stdout is not None
    line = p.stdout.readline()
    if line.strip() != b"ready":
        raise RuntimeError(f"lab servers did not start: {line!r}")
    for spec in specs:
        role, _, port = spec.partition(":")
        if port.isdigit():
            host.wait_port(host.ip4, int(port))
    return ca
