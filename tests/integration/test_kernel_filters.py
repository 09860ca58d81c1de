"""What the kernel does not send, and folded connects, with real probes and sockets.

The kernel programs leave out tcp_state records that repeat a connect's
result or describe teardown steps, and fold identical connects into counts
(probes/tcp_state.bpf.h, probes/connect.bpf.h, docs/coverage.md).  These tests check that everything
the records and detectors need still arrives, and that folded connects are
all accounted for.  Loopback only; no timing assertions.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import build_helper

pytestmark = pytest.mark.integration

Doc = dict[str, Any]


@pytest.fixture
def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()  # nothing listens there now
    return port


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    try:
        yield srv
    finally:
        srv.close()


def _port(d: Doc, key: str) -> int | None:
    return d.get(key, {}).get("port")


def _tcp(live: Any, port: int, start: int) -> list[tuple[str, str, Doc]]:
    """(old, new, doc) of every tcp_state line touching port since start."""
    return [
        (d["rlguard"]["tcp"]["old_state"], d["rlguard"]["tcp"]["new_state"], d)
        for d in live.sink.docs[start:]
        if d["event"]["action"] == "tcp_state"
        and port in (_port(d, "source"), _port(d, "destination"))
    ]


def _connects(live: Any, port: int, pid: int, start: int = 0) -> list[Doc]:
    return [
        d
        for d in live.sink.docs[start:]
        if d["event"]["action"] == "connect"
        and d["destination"]["port"] == port
        and d["process"]["pid"] == pid
    ]


def _wait_owned_close(live: Any, port: int, start: int) -> Doc:
    """The final CLOSE of a client socket to port (its owner recorded at SYN_SENT)."""
    doc: Doc = live.wait_for(
        lambda d: (
            d["event"]["action"] == "tcp_state"
            and d["destination"]["port"] == port
            and d["rlguard"]["tcp"]["new_state"] == "CLOSE"
            and d["rlguard"]["tcp"]["owner_known"]
        ),
        start=start,
    )
    return doc


def _settle(live: Any) -> None:
    """Report every fold's tail now, as at shutdown, and let the loop write it."""
    time.sleep(0.3)
    live.collector._flush_folds(final=True)


def test_refused_connect_storm_is_counted_in_full(live, closed_port) -> None:
    n = 3000
    flood = build_helper("connect_flood")
    start = live.sink.mark()
    proc = subprocess.Popen([str(flood), str(closed_port), str(n)])
    assert proc.wait(timeout=60) == 0
    live.wait_for(lambda d: _connects(live, closed_port, proc.pid, start) != [], start=start)
    _settle(live)
    lines = _connects(live, closed_port, proc.pid, start)
    # every connect accounted for, far fewer lines than connects
    assert sum(d["rlguard"]["connect"]["count"] for d in lines) == n
    assert len(lines) < n
    first = lines[0]
    assert first["rlguard"]["connect"]["result"] == "ECONNREFUSED"
    assert first["rlguard"]["connect"]["count"] == 1  # the first is always sent in full
    assert "summary" not in first["rlguard"]["connect"]
    # the blocking connect's result says it all: no SYN_SENT, no SYN_SENT -> CLOSE
    assert _tcp(live, closed_port, start) == []
    stats = live.collector._metrics()["rlguard"]
    assert stats["kernel"]["quiet"]["connect_folded"] >= n - len(lines)
    assert stats["kernel"]["quiet"]["tcp_state_duplicate"] >= 2 * n


def test_different_destinations_and_fds_never_fold(live, closed_port, listener) -> None:
    other = listener.getsockname()[1]
    script = textwrap.dedent(
        """
        import socket, sys
        for port in (int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[1])):
            s = socket.socket()
            s.connect_ex(("127.0.0.1", port))
            s.close()
        keep = socket.socket()  # holds the usual fd: the next connect uses another
        s = socket.socket()
        s.connect_ex(("127.0.0.1", int(sys.argv[1])))
        s.close()
        """
    )
    start = live.sink.mark()
    proc = subprocess.run([sys.executable, "-c", script, str(closed_port), str(other)], timeout=20)
    assert proc.returncode == 0
    live.wait_for(
        lambda d: d["event"]["action"] == "connect" and d["destination"]["port"] == other,
        start=start,
    )
    _settle(live)
    to_other = [
        d
        for d in live.sink.docs[start:]
        if d["event"]["action"] == "connect" and d["destination"]["port"] == other
    ]
    pid = to_other[0]["process"]["pid"]
    closed = _connects(live, closed_port, pid, start)
    full = [d for d in closed if not d["rlguard"]["connect"].get("summary")]
    # first connect to the closed port: full; the one on another fd: full too;
    # the repeat on the first fd within the window: folded, reported by a summary
    assert len({d["rlguard"]["connect"]["fd"] for d in full}) == 2
    assert sum(d["rlguard"]["connect"]["count"] for d in closed) == 3
    assert len(to_other) == 1 and to_other[0]["rlguard"]["connect"]["count"] == 1


def test_idle_fold_is_reported_by_a_summary_line(live, closed_port) -> None:
    script = textwrap.dedent(
        """
        import socket, sys
        for _ in range(5):
            s = socket.socket()
            s.connect_ex(("127.0.0.1", int(sys.argv[1])))
            s.close()
        print(flush=True)
        sys.stdin.read()  # stay alive: the summary names a living process
        """
    )
    start = live.sink.mark()
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(closed_port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        summary = live.wait_for(
            lambda d: (
                d["event"]["action"] == "connect"
                and d["destination"]["port"] == closed_port
                and d["rlguard"]["connect"].get("summary") is True
            ),
            timeout=15,  # reported once the fold is idle (no clock assumed here)
            start=start,
        )
        assert summary["process"]["pid"] == proc.pid
        assert summary["rlguard"]["connect"]["count"] == 4
        assert summary["rlguard"]["connect"]["result"] == "ECONNREFUSED"
        lines = _connects(live, closed_port, proc.pid, start)
        assert sum(d["rlguard"]["connect"]["count"] for d in lines) == 5
    finally:
        proc.kill()
        proc.wait()


def test_nonblocking_refused_connect_keeps_its_close(live, closed_port) -> None:
    """EINPROGRESS says nothing about the outcome: the SYN_SENT -> CLOSE is sent."""
    start = live.sink.mark()
    c = socket.socket()
    c.setblocking(False)
    rc = c.connect_ex(("127.0.0.1", closed_port))
    fd = c.fileno()
    time.sleep(0.05)
    c.close()
    conn = live.wait_for(
        lambda d: (
            d["event"]["action"] == "connect"
            and d["destination"]["port"] == closed_port
            and d["rlguard"]["connect"]["fd"] == fd
        ),
        start=start,
    )
    if rc == 115:  # EINPROGRESS (loopback may also refuse at once)
        assert conn["rlguard"]["connect"]["result"] == "in_progress"
        close = live.wait_for(
            lambda d: (
                d["event"]["action"] == "tcp_state"
                and d["destination"]["port"] == closed_port
                and d["rlguard"]["tcp"]["new_state"] == "CLOSE"
            ),
            start=start,
        )
        assert close["rlguard"]["tcp"]["old_state"] == "SYN_SENT"
        assert close["process"]["pid"] == conn["process"]["pid"]


def test_listener_connection_keeps_accept_and_final_close(live, listener) -> None:
    port = listener.getsockname()[1]
    start = live.sink.mark()
    c = socket.create_connection(("127.0.0.1", port))  # blocking: returns 0
    a, _ = listener.accept()
    c.sendall(b"x")
    a.recv(1)
    c.close()
    a.close()
    nb = socket.socket()
    nb.setblocking(False)
    nb.connect_ex(("127.0.0.1", port))
    a2, _ = listener.accept()
    nb_port = nb.getsockname()[1]
    nb.close()
    a2.close()
    final = _wait_owned_close(live, port, start)
    assert final["process"]["pid"] == os.getpid()
    time.sleep(0.5)
    seen = _tcp(live, port, start)
    states = {(o, n) for o, n, _ in seen}
    # accepted (server side): the first from this peer is sent, the second (within
    # the fold window, same peer address and port) only counted
    accepted = [d for o, n, d in seen if (o, n) == ("SYN_RECV", "ESTABLISHED")]
    assert len(accepted) == 1
    assert accepted[0]["rlguard"]["tcp"]["accept_count"] >= 1
    # the non-blocking client's ESTABLISHED (EINPROGRESS did not say it) ...
    est = [d for o, n, d in seen if (o, n) == ("SYN_SENT", "ESTABLISHED")]
    assert len(est) == 1
    assert est[0]["source"]["port"] == nb_port
    # ... the final close of both client sockets, and no teardown steps
    assert sum(1 for o, n, d in seen if n == "CLOSE" and d["rlguard"]["tcp"]["owner_known"]) == 2
    for step in ("FIN_WAIT1", "FIN_WAIT2", "CLOSING", "LAST_ACK", "CLOSE_WAIT", "TIME_WAIT"):
        assert all(n != step for _, n, _ in seen), states
    assert all(n != "SYN_RECV" for _, n, _ in seen), states


def test_accepts_from_one_peer_fold_into_a_running_count(live, listener) -> None:
    port = listener.getsockname()[1]
    start = live.sink.mark()
    before = live.collector._metrics()["rlguard"]["kernel"]["quiet"]["accept_folded"]

    def one() -> None:
        c = socket.create_connection(("127.0.0.1", port))
        a, _ = listener.accept()
        c.close()
        a.close()

    for _ in range(5):
        one()
    time.sleep(1.2)  # past the fold window: the next accept is sent with the count
    one()

    def accepted() -> list[Doc]:
        return [
            d
            for o, n, d in _tcp(live, port, start)
            if (o, n) == ("SYN_RECV", "ESTABLISHED") and d["source"]["port"] == port
        ]

    live.wait_for(lambda d: len(accepted()) >= 2, start=start)
    first, second = accepted()
    assert not first["rlguard"]["tcp"]["owner_known"]  # softirq: no process named
    # the four folded in between are in the second line's running count
    counts = (first["rlguard"]["tcp"]["accept_count"], second["rlguard"]["tcp"]["accept_count"])
    assert counts[1] - counts[0] == 5
    after = live.collector._metrics()["rlguard"]["kernel"]["quiet"]["accept_folded"]
    assert after - before >= 4


def test_a_folded_connect_folds_its_later_states(live, listener) -> None:
    """Identical connects to a listener: one line, one final CLOSE, the rest counted."""
    port = listener.getsockname()[1]
    n = 20
    script = textwrap.dedent(
        """
        import socket, sys
        for _ in range(int(sys.argv[2])):
            s = socket.socket()  # the same fd each time: the connects fold
            s.connect(("127.0.0.1", int(sys.argv[1])))
            s.close()
        """
    )

    def accept_all() -> None:
        for _ in range(n):
            a, _ = listener.accept()
            a.close()

    t = threading.Thread(target=accept_all)
    t.start()
    start = live.sink.mark()
    before = live.collector._metrics()["rlguard"]["kernel"]["quiet"]["tcp_state_folded"]
    proc = subprocess.run([sys.executable, "-c", script, str(port), str(n)], timeout=20)
    t.join(timeout=20)
    assert proc.returncode == 0 and not t.is_alive()
    _wait_owned_close(live, port, start)
    _settle(live)
    time.sleep(0.5)
    conns = [
        d
        for d in live.sink.docs[start:]
        if d["event"]["action"] == "connect" and d["destination"]["port"] == port
    ]
    pid = conns[0]["process"]["pid"]
    assert sum(d["rlguard"]["connect"]["count"] for d in _connects(live, port, pid, start)) == n
    closes = [
        d
        for o, s_, d in _tcp(live, port, start)
        if s_ == "CLOSE" and d["rlguard"]["tcp"]["owner_known"] and d["process"]["pid"] == pid
    ]
    full = [
        d for d in _connects(live, port, pid, start) if not d["rlguard"]["connect"].get("summary")
    ]
    # a final CLOSE only for the sockets whose connect has its own line
    assert 1 <= len(closes) <= len(full) < n
    after = live.collector._metrics()["rlguard"]["kernel"]["quiet"]["tcp_state_folded"]
    assert after - before >= n - len(full)


def test_every_first_payload_arrives_in_a_storm(live) -> None:
    n = 300
    storm = build_helper_bench("conn_storm")
    start = live.sink.mark()
    proc = subprocess.Popen([str(storm), "payload", str(n)], stderr=subprocess.PIPE)
    assert proc.stderr is not None
    port = int(proc.stderr.readline().split()[1])
    assert proc.wait(timeout=60) == 0
    sends: list[Doc] = []
    deadline = time.monotonic() + 20
    while len(sends) < n and time.monotonic() < deadline:
        time.sleep(0.2)
        sends = [
            d
            for d in live.sink.docs[start:]
            if d["event"]["action"] == "send" and d["destination"]["port"] == port
        ]
    # never folded: one first-payload record per connection, each with its own bytes
    assert len(sends) == n
    payloads = {bytes.fromhex(d["rlguard"]["payload"]["hex"]) for d in sends}
    assert payloads == {f"rlguard-bench {i}\n".encode() for i in range(n)}
    _settle(live)
    assert (
        sum(d["rlguard"]["connect"]["count"] for d in _connects(live, port, proc.pid, start)) == n
    )


def build_helper_bench(name: str) -> Any:
    """Build bench/NAME.c (the bench's own storm helpers) like a test helper."""
    import shutil

    from tests.conftest import BUILD, REPO

    src = REPO / "bench" / f"{name}.c"
    out = BUILD / name
    if not out.exists() or out.stat().st_mtime < src.stat().st_mtime:
        BUILD.mkdir(parents=True, exist_ok=True)
        cc = shutil.which("gcc") or "cc"
        subprocess.run([cc, "-O2", "-pthread", "-o", str(out), str(src)], check=True)
    return out
