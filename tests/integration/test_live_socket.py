"""The live socket sink with real Unix-socket clients: fan-out, slow and stuck clients,
permissions, lifecycle. No eBPF and no root needed (the one test that switches users
skips without root), so these are marked unit.
"""

from __future__ import annotations

import errno
import grp
import json
import os
import shutil
import socket
import stat
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from monitor.sinks.fanout import FanoutSink
from monitor.sinks.live import LiveSocketError, LiveSocketSink
from monitor.sinks.ndjson import NdjsonSink
from tests.support.system import group_exists

pytestmark = pytest.mark.unit

MY_GROUP = grp.getgrgid(os.getegid()).gr_name
NO_GROUP = "rlguard-no-such-group"


def connect(path: Path | str) -> socket.socket:
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    c.connect(str(path))
    return c


def read_all(c: socket.socket, timeout: float = 0.2) -> bytes:
    """Everything the client can read until it has been idle for ``timeout``."""
    c.settimeout(timeout)
    buf = bytearray()
    try:
        while True:
            data = c.recv(1 << 20)
            if not data:
                break
            buf += data
    except (TimeoutError, BlockingIOError):
        pass
    return bytes(buf)


def docs(data: bytes) -> list[dict[str, Any]]:
    assert data == b"" or data.endswith(b"\n"), "a torn last line"
    return [json.loads(line) for line in data.splitlines()]


def accept(sink: LiveSocketSink, n: int) -> None:
    deadline = time.monotonic() + 5
    while sink.clients < n:
        sink.flush()
        assert time.monotonic() < deadline, "clients were not accepted"
        time.sleep(0.01)


def check_stream(received: list[dict[str, Any]], total: int) -> tuple[int, int]:
    """Lines arrive in order, none twice; data lines + reported skips account for all.

    Returns (data lines, lag notices).
    """
    seen = skipped = notices = 0
    last = -1
    for d in received:
        if d.get("event", {}).get("action") == "client_lagged":
            assert d["event"] == {
                "kind": "metric",
                "action": "client_lagged",
                "dataset": "rlguard.live",
            }
            skipped += d["rlguard"]["live"]["skipped_lines"]
            notices += 1
            continue
        assert d["i"] > last
        last = d["i"]
        seen += 1
    assert seen + skipped == total, (seen, skipped, total)
    return seen, notices


@pytest.fixture
def sock_path(tmp_path: Path) -> Path:
    return tmp_path / "run" / "rlguard" / "live.sock"


def test_every_client_gets_every_line(sock_path: Path) -> None:
    sink = LiveSocketSink(str(sock_path), group=MY_GROUP)
    clients = [connect(sock_path) for _ in range(4)]
    try:
        accept(sink, 4)
        for i in range(2000):
            sink.write({"i": i, "s": 'quote " \u001b[2J'})
            if i % 50 == 0:
                assert sink.flush() is True
        sink.flush()
        for c in clients:
            got = docs(read_all(c))
            assert [d["i"] for d in got] == list(range(2000))
            assert got[0]["s"] == 'quote " \u001b[2J'
        assert sink.lines_written == 2000 and sink.lines_lost == 0 and sink.pending == 0
    finally:
        for c in clients:
            c.close()
        sink.close()


def test_write_without_clients_is_cheap(sock_path: Path) -> None:
    sink = LiveSocketSink(str(sock_path), group=MY_GROUP)
    doc = {"event": {"kind": "event", "action": "exec"}, "process": {"args": ["x"] * 20}}
    try:
        t0 = time.perf_counter()
        for _ in range(100_000):
            sink.write(doc)
        elapsed = time.perf_counter() - t0
        assert sink.flush() is True
        assert sink.lines_written == 0 and sink.pending == 0
        assert elapsed < 0.5, f"100k writes with no client took {elapsed:.3f}s"
    finally:
        sink.close()


def test_stuck_client_never_slows_the_writer(sock_path: Path) -> None:
    """A viewer that never reads: 100k writes stay fast, a reading viewer is unaffected,
    and the stuck one gets a client_lagged notice with the exact count once it reads."""
    sink = LiveSocketSink(str(sock_path), group=MY_GROUP)
    stuck = connect(sock_path)
    reader = connect(sock_path)
    buf = bytearray()
    stop = threading.Event()

    def read_forever() -> None:
        reader.settimeout(0.05)
        while not stop.is_set():
            try:
                data = reader.recv(1 << 20)
            except TimeoutError:
                continue
            if not data:
                return
            buf.extend(data)

    t = threading.Thread(target=read_forever, daemon=True)
    try:
        accept(sink, 2)
        t.start()
        total = 100_000
        t0 = time.perf_counter()
        for i in range(total):
            sink.write({"i": i, "pad": "x" * 100})
            if i % 100 == 99:  # the collector flushes after every drain
                sink.flush()
        sink.flush()
        elapsed = time.perf_counter() - t0
        assert elapsed < 5.0, f"100k writes with a stuck client took {elapsed:.2f}s"
        assert sink.lines_lost > 0  # the stuck client's queue was dropped
        # The stuck client starts reading: it gets what was queued, then the notice,
        # then the stream again.
        stuck.setblocking(False)
        got = bytearray()
        for k in range(20):
            sink.write({"i": total + k})
            sink.flush()
            got += read_all(stuck, 0.05)
        seen, notices = check_stream(docs(bytes(got)), total + 20)
        assert notices >= 1 and seen < total
        # the reader kept up or was told exactly what it missed
        for _ in range(20):
            sink.flush()
            time.sleep(0.02)
        stop.set()
        t.join(2)
        check_stream(docs(bytes(buf)), total + 20)
    finally:
        stop.set()
        stuck.close()
        reader.close()
        sink.close()


def test_lines_are_never_torn_by_a_lag(sock_path: Path) -> None:
    """A tiny queue and send buffer force partial sends and many overflows."""
    sink = LiveSocketSink(str(sock_path), group=MY_GROUP, max_queue_bytes=2048)
    c = connect(sock_path)
    try:
        accept(sink, 1)
        sink._clients[0].sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        c.setblocking(False)
        got = bytearray()
        total = 3000
        for i in range(total):
            sink.write({"i": i, "pad": "y" * (i % 300)})
            if i % 7 == 0:
                sink.flush()
            if i % 13 == 0:
                try:
                    got += c.recv(997)  # small, odd reads: lines arrive in pieces
                except BlockingIOError:
                    pass
        for _ in range(50):
            sink.flush()
            got += read_all(c, 0.02)
        _, notices = check_stream(docs(bytes(got)), total)
        assert notices >= 1
    finally:
        c.close()
        sink.close()


def test_client_that_never_reads_is_disconnected(sock_path: Path) -> None:
    sink = LiveSocketSink(str(sock_path), group=MY_GROUP, stall_timeout_s=0.2)
    stuck = connect(sock_path)
    try:
        accept(sink, 1)
        for i in range(50_000):
            sink.write({"i": i, "pad": "z" * 100})
            if i % 500 == 0:
                sink.flush()
        assert sink.clients == 1
        time.sleep(0.3)
        sink.write({"i": -1})
        sink.flush()
        assert sink.clients == 0 and sink.clients_stalled == 1
    finally:
        stuck.close()
        sink.close()


def test_slow_but_moving_client_is_kept(sock_path: Path) -> None:
    sink = LiveSocketSink(str(sock_path), group=MY_GROUP, stall_timeout_s=0.2)
    c = connect(sock_path)
    try:
        accept(sink, 1)
        c.setblocking(False)
        deadline = time.monotonic() + 0.8
        i = 0
        while time.monotonic() < deadline:
            for _ in range(200):
                sink.write({"i": i, "pad": "w" * 200})
                i += 1
            sink.flush()
            try:
                c.recv(4096)  # a little at a time
            except BlockingIOError:
                pass
            time.sleep(0.01)
        assert sink.clients == 1 and sink.clients_stalled == 0
    finally:
        c.close()
        sink.close()


def test_hangups_are_reaped_and_half_closed_clients_served(sock_path: Path) -> None:
    sink = LiveSocketSink(str(sock_path), group=MY_GROUP)
    gone = connect(sock_path)
    half = connect(sock_path)
    try:
        accept(sink, 2)
        gone.close()
        half.shutdown(socket.SHUT_WR)  # like `socat - UNIX-CONNECT:...` with stdin at EOF
        sink.flush()
        assert sink.clients == 1
        sink.write({"i": 0})
        sink.flush()
        assert docs(read_all(half)) == [{"i": 0}]
    finally:
        half.close()
        sink.close()


def test_client_limit(sock_path: Path) -> None:
    sink = LiveSocketSink(str(sock_path), group=MY_GROUP, max_clients=2)
    clients = [connect(sock_path) for _ in range(3)]
    try:
        sink.flush()
        assert sink.clients == 2 and sink.clients_refused == 1
        assert read_all(clients[2]) == b""  # refused: closed at once
    finally:
        for c in clients:
            c.close()
        sink.close()


def test_socket_permissions_and_parent(sock_path: Path) -> None:
    sink = LiveSocketSink(str(sock_path), group=MY_GROUP)
    try:
        st = os.stat(sock_path)
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o660
        assert st.st_gid == grp.getgrnam(MY_GROUP).gr_gid
        assert stat.S_IMODE(os.stat(sock_path.parent).st_mode) == 0o755
        assert sink.last_error is None
    finally:
        sink.close()
    assert not sock_path.exists()


def test_missing_group_falls_back_to_owner_only(sock_path: Path) -> None:
    sink = LiveSocketSink(str(sock_path), group=NO_GROUP)
    try:
        assert stat.S_IMODE(os.stat(sock_path).st_mode) == 0o600
        assert sink.last_error is not None and NO_GROUP in sink.last_error
        assert "0600" in sink.last_error
        assert sink.flush() is True  # a permission fallback is not an output failure
    finally:
        sink.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
def test_only_group_members_can_connect() -> None:
    """Real users: a member of the group connects, anyone else gets EACCES."""
    group = next((g for g in ("daemon", "adm", "users") if group_exists(g)), None)
    if group is None:
        pytest.skip("no spare system group to test with")
    # pytest's tmp dirs sit under a 0700 directory that no other user may cross
    top = Path(tempfile.mkdtemp(prefix="rlg-live-", dir="/tmp"))
    os.chmod(top, 0o755)
    path = top / "rlguard" / "live.sock"
    sink = LiveSocketSink(str(path), group=group)
    try:
        gid = grp.getgrnam(group).gr_gid
        assert _connect_as(path, uid=65534, gid=gid) == 0
        assert _connect_as(path, uid=65534, gid=65534) == errno.EACCES
    finally:
        sink.close()
        shutil.rmtree(top)


def _connect_as(path: Path, uid: int, gid: int) -> int:
    """Exit status of a child that drops to uid/gid and connects: 0, or the errno."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 0
        try:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            c.connect(str(path))
            c.close()
        except OSError as exc:
            code = exc.errno or 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_stale_socket_is_replaced_live_one_and_files_are_not(sock_path: Path) -> None:
    sock_path.parent.mkdir(parents=True)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(sock_path))  # a monitor that died without removing its socket
    dead.close()
    first = LiveSocketSink(str(sock_path), group=MY_GROUP)
    try:
        with pytest.raises(LiveSocketError, match="another monitor"):
            LiveSocketSink(str(sock_path), group=MY_GROUP)
    finally:
        first.close()
    assert not sock_path.exists()
    sock_path.write_text("not a socket")
    with pytest.raises(LiveSocketError, match="not a socket"):
        LiveSocketSink(str(sock_path), group=MY_GROUP)
    assert sock_path.read_text() == "not a socket"


def test_close_keeps_a_successors_socket(sock_path: Path) -> None:
    old = LiveSocketSink(str(sock_path), group=MY_GROUP)
    os.unlink(sock_path)  # e.g. removed by an admin, and a new monitor took the path
    new = LiveSocketSink(str(sock_path), group=MY_GROUP)
    try:
        old.close()
        assert sock_path.exists()
    finally:
        new.close()
    assert not sock_path.exists()


def test_fanout_with_a_file_feeds_the_socket(tmp_path: Path, sock_path: Path) -> None:
    """How the collector uses it: FanoutSink(NdjsonSink(...), LiveSocketSink(...))."""
    out = tmp_path / "events.ndjson"
    live = LiveSocketSink(str(sock_path), group=MY_GROUP)
    fan = FanoutSink(NdjsonSink(str(out)), live)
    assert "live" in fan.sinks
    c = connect(sock_path)
    try:
        accept(live, 1)
        for i in range(10):
            fan.write({"i": i})
        assert fan.flush() is True
        assert fan.lines_written["live"] == 10 and fan.lines_lost["live"] == 0
        assert fan.last_error is None
        assert [d["i"] for d in docs(read_all(c))] == list(range(10))
        assert len(out.read_text().splitlines()) == 10
    finally:
        c.close()
        fan.close()
    assert not sock_path.exists()
