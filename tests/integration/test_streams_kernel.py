"""Stream capture and TLS plaintext through the real probes (loopback only).

One monitor for the module, with a one-second activity interval so that activity ticks
come within a test.  Assertions read the tracker's reassembled openings and the typed
records an observer sees: chunk records make no line of their own.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from monitor.config import load_config
from monitor.lab.relays import make_ca
from monitor.sensor.events import StreamTickEvent, TlsBindEvent, TlsDataEvent
from monitor.state.attributed import AttributedEvent
from tests.support.live import LiveMonitor

pytestmark = pytest.mark.integration


class Seen:
    """Typed events the collector handled, kept by an observer (quiet ones included)."""

    def __init__(self) -> None:
        self.events: list[AttributedEvent] = []
        self.lock = threading.Lock()

    def __call__(self, ae: AttributedEvent) -> None:
        if isinstance(ae.event, (StreamTickEvent, TlsBindEvent, TlsDataEvent)):
            with self.lock:
                self.events.append(ae)

    def wait(self, pred, timeout: float = 15.0) -> AttributedEvent:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                for ae in self.events:
                    if pred(ae):
                        return ae
            time.sleep(0.05)
        raise AssertionError("no matching event")


@pytest.fixture(scope="module")
def mon() -> Iterator[tuple[LiveMonitor, Seen]]:
    cfg = load_config(None)
    cfg = dataclasses.replace(cfg, streams=dataclasses.replace(cfg.streams, activity_interval_s=1))
    m = LiveMonitor(cfg)
    seen = Seen()
    m.collector.observers.append(seen)
    m.start()
    try:
        yield m, seen
    finally:
        m.stop()


@pytest.fixture
def server() -> Iterator[tuple[int, list[bytes]]]:
    """A loopback server: sends a banner first, then keeps what it reads."""
    got: list[bytes] = []
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", 0))
    ls.listen(8)

    def serve() -> None:
        while True:
            try:
                c, _ = ls.accept()
            except OSError:
                return
            c.sendall(b"POOL-BANNER 1.0\r\n")
            buf = b""
            try:
                while d := c.recv(65536):
                    buf += d
            except OSError:
                pass
            got.append(buf)
            c.close()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield ls.getsockname()[1], got
    finally:
        ls.close()


def client(code: str, *args: str) -> None:
    env = {"PATH": "/usr/bin:/bin"}
    res = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=env,
        capture_output=True,
        timeout=30,
    )
    assert res.returncode == 0, res.stderr.decode()[-1500:]


def stream_of(m: LiveMonitor, port: int, start: int, timeout: float = 15.0):
    """The cookie of the first connection to port since the mark ``start``."""
    send = m.wait_for(
        lambda d: d["event"]["action"] == "send" and d["destination"]["port"] == port,
        timeout=timeout,
        start=start,
    )
    return send["rlguard"]["socket"]["cookie"]


def wait_stream(m: LiveMonitor, cookie: int, pred, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = m.collector.streams.get(cookie)
        if s is not None and pred(s):
            return s
        time.sleep(0.05)
    raise AssertionError(f"stream {cookie} never got there")


def test_opening_across_segments_cut_at_the_bound(mon, server) -> None:
    m, _ = mon
    port, _got = server
    pattern = bytes(range(256)) * 24  # 6144 bytes, more than the 4096 kept
    mark = m.mark()
    client(
        """
        import socket, sys, time
        s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.recv(100)
        data = bytes.fromhex(sys.argv[2])
        s.send(data[:1]); time.sleep(0.1)
        for i in range(1, len(data), 1000):
            s.send(data[i:i + 1000]); time.sleep(0.02)
        time.sleep(0.3)
        """,
        str(port),
        pattern.hex(),
    )
    cookie = stream_of(m, port, mark)
    s = wait_stream(m, cookie, lambda s: len(s.out) >= 4096)
    assert bytes(s.out) == pattern[:4096], "placed by sequence number, nothing doubled"
    assert s.truncated and m.collector.streams.counts["truncated"] >= 1
    assert bytes(s.reply).startswith(b"POOL-BANNER 1.0\r\n"), "the peer's bytes, first"


def test_ipv6_extension_header_on_loopback(mon) -> None:
    m, _ = mon
    ls = socket.socket(socket.AF_INET6)
    ls.bind(("::1", 0))
    ls.listen(1)
    port = ls.getsockname()[1]
    mark = m.mark()
    try:
        client(
            """
            import socket, sys
            s = socket.socket(socket.AF_INET6)
            s.setsockopt(socket.IPPROTO_IPV6, 59, bytes([0, 0, 1, 4, 0, 0, 0, 0]))  # PadN
            s.connect(("::1", int(sys.argv[1])))
            s.sendall(b"behind-a-destination-options-header")
            """,
            str(port),
        )
        doc = m.wait_for(
            lambda d: d["event"]["action"] == "send" and d["destination"]["port"] == port,
            timeout=30,
            start=mark,
        )
        assert doc["rlguard"]["payload"]["preview"] == "behind-a-destination-options-header"
    finally:
        ls.close()


def test_activity_ticks_of_a_live_stream(mon, server) -> None:
    m, seen = mon
    port, _got = server
    mark = m.mark()
    client(
        """
        import socket, sys, time
        s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        end = time.time() + 3.5
        while time.time() < end:
            s.send(b"share 0123456789\\n"); time.sleep(0.25)
        """,
        str(port),
    )
    cookie = stream_of(m, port, mark)
    ticks = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(ticks) < 2:
        ticks = [ae.event for ae in seen.events if getattr(ae.event, "cookie", None) == cookie]
        time.sleep(0.1)
    ticks = [t for t in ticks if isinstance(t, StreamTickEvent)]
    assert len(ticks) >= 2
    assert ticks[-1].segs > ticks[0].segs and ticks[-1].bytes == 17 * ticks[-1].segs
    assert ticks[0].dport == port and ticks[0].first_ns > 0


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory) -> Iterator[tuple[int, Path]]:
    d = tmp_path_factory.mktemp("tls")
    ca = make_ca(d, "127.0.0.1")
    code = textwrap.dedent(
        """
        import socket, ssl, sys, threading
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(sys.argv[1], sys.argv[2])
        ls = socket.socket(); ls.bind(("127.0.0.1", 0)); ls.listen(8)
        print(ls.getsockname()[1], flush=True)
        def serve(c):
            try:
                s = ctx.wrap_socket(c, server_side=True)
                s.recv(4096); s.sendall(b"ok\\n"); s.recv(10)
            except Exception:
                pass
        while True:
            c, _ = ls.accept()
            threading.Thread(target=serve, args=(c,), daemon=True).start()
        """
    )
    p = subprocess.Popen(
        [sys.executable, "-c", code, str(d / "server.pem"), str(d / "server.key")],
        stdout=subprocess.PIPE,
    )
    assert p.stdout is not None
    port = int(p.stdout.readline())
    try:
        yield port, ca
    finally:
        p.kill()
        p.wait()


def test_tls_plaintext_of_python_is_tied_by_fd(mon, tls_server) -> None:
    m, seen = mon
    port, ca = tls_server
    mark = m.mark()
    client(
        """
        import socket, ssl, sys
        ctx = ssl.create_default_context(cafile=sys.argv[2])
        s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(sys.argv[1]))),
                            server_hostname="127.0.0.1")
        s.sendall(b"plaintext-from-python\\n"); s.recv(10)
        """,
        str(port),
        str(ca),
    )
    cookie = stream_of(m, port, mark)
    ae = seen.wait(
        lambda ae: (
            isinstance(ae.event, TlsDataEvent)
            and ae.event.data.startswith(b"plaintext-from-python")
        )
    )
    assert ae.event.fd >= 0, "SSL_set_fd named the fd"
    assert ae.stream is not None and ae.stream.cookie == cookie
    assert ae.rl is not None and ae.process is not None and ae.process.pid == ae.event.pid


def test_tls_plaintext_of_s_client_is_tied_by_its_socket_send(mon, tls_server) -> None:
    m, seen = mon
    port, ca = tls_server
    cmd = (
        "(sleep 0.5; echo plaintext-from-s-client; sleep 0.5) | openssl s_client "
        f"-connect 127.0.0.1:{port} -CAfile {ca} -quiet -no_ign_eof"
    )
    mark = m.mark()
    subprocess.run(["bash", "-c", cmd], capture_output=True, timeout=30)
    cookie = stream_of(m, port, mark)
    ae = seen.wait(
        lambda ae: (
            isinstance(ae.event, TlsDataEvent)
            and ae.event.data.startswith(b"plaintext-from-s-client")
        )
    )
    assert ae.event.fd == -1, "a socket BIO: the library never names the fd"
    seen.wait(lambda ae: isinstance(ae.event, TlsBindEvent) and ae.event.cookie == cookie)
    s = wait_stream(m, cookie, lambda s: s.tls is not None and s.tls.data)
    assert bytes(s.tls.data).startswith(b"plaintext-from-s-client")


def test_the_monitors_own_tls_is_not_captured(mon, tls_server) -> None:
    m, seen = mon
    port, ca = tls_server
    mark = m.mark()
    ctx = ssl.create_default_context(cafile=str(ca))
    with ctx.wrap_socket(
        socket.create_connection(("127.0.0.1", port)), server_hostname="127.0.0.1"
    ) as s:
        s.sendall(b"the-monitor-itself\n")
        s.recv(10)
    stream_of(m, port, mark)  # its wire bytes are seen; its plaintext is not
    time.sleep(1.0)
    with seen.lock:
        mine = [ae for ae in seen.events if isinstance(ae.event, TlsDataEvent)]
    assert not [ae for ae in mine if ae.event.pid == os.getpid()]
