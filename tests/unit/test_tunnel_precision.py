"""Issue 15 precision and reach for tunnels, through the engine: autossh's own loop, a
library's SSH banner, sessions carried by a proxy, ssh configs from pipes, and configs
read safely (a FIFO never blocks, a gone process is read through its parent)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from monitor.detectors.engine import read_process_file
from tests.unit.test_engine import OUTSIDE, World, ids

pytestmark = pytest.mark.unit


def test_autossh_local_forward_is_silent() -> None:
    w = World()
    assert w.exec(10, ["/usr/bin/autossh", "-M", "0", "-N", "-L", "5432:db:5432", "bastion"]) == []
    # autossh's ssh child with the same -L: silent too
    assert w.exec(11, ["/usr/bin/ssh", "-N", "-L", "5432:db:5432", "bastion"], ppid=10) == []


def test_autossh_monitor_loop_is_not_a_reverse_forward() -> None:
    w = World()
    w.exec(20, ["/usr/bin/autossh", "-M", "20000", "-N", "-L", "5432:db:5432", "bastion"])
    # autossh.c builds its child: -L 20000:127.0.0.1:20000 -R 20000:127.0.0.1:20001
    child = [
        "/usr/bin/ssh", "-L", "20000:127.0.0.1:20000", "-R", "20000:127.0.0.1:20001",
        "-N", "-L", "5432:db:5432", "bastion",
    ]  # fmt: skip
    assert w.exec(21, child, ppid=20) == []
    w.send(21, OUTSIDE, 22, b"SSH-2.0-OpenSSH_9.2p1\r\n")
    assert w.connect(21, "127.0.0.1", 20001, fd=5) == []  # the echo loop
    # any other connect-back is still a reverse forward in use
    assert ids(w.connect(21, "127.0.0.1", 8081, fd=6)) == ["RLG-TUN-001"]


def test_autossh_with_a_real_reverse_forward_still_alerts() -> None:
    w = World()
    got = w.exec(30, ["/usr/bin/autossh", "-M", "0", "-N", "-R", "9000:localhost:22", "h"])
    assert ids(got) == ["RLG-TUN-003"] and got[0].severity == "high"


def test_library_banner_to_port_22_is_low_until_a_connect_back() -> None:
    w = World()
    w.exec(40, ["/usr/bin/python3", "playbook_runner.py"])
    first = w.send(40, OUTSIDE, 22, b"SSH-2.0-paramiko_3.4.0\r\n")
    assert ids(first) == ["RLG-TUN-002"] and first[0].severity == "low"
    then = w.connect(40, "127.0.0.1", 8081, fd=7)
    assert ids(then) == ["RLG-TUN-001", "RLG-TUN-002"]
    assert then[1].severity == "high" and then[1].extra["follow_up"] is True


def test_library_banner_to_another_port_stays_high() -> None:
    w = World()
    w.exec(50, ["/usr/bin/python3", "x.py"])
    got = w.send(50, OUTSIDE, 443, b"SSH-2.0-paramiko_3.4.0\r\n")
    assert got[0].severity == "high"


@pytest.mark.parametrize(
    "opts",
    [["-J", "root@jump"], ["-o", "ProxyJump root@jump"], ["-oProxyJump=root@jump"],
     ["-o", "ProxyCommand=ssh -W %h:%p root@jump"], ['-oProxyCommand="nc -x p:1080 %h %p"']],
    ids=["J", "o-space", "o-eq", "proxycommand", "proxycommand-quoted"],
)  # fmt: skip
def test_session_over_a_proxy_counts_for_connect_back(opts: list[str]) -> None:
    w = World()
    got = w.exec(60, ["/usr/bin/ssh", *opts, "-N", "-R", "9000:127.0.0.1:8081", "target"])
    assert ids(got) == ["RLG-TUN-003"]
    # no banner from this ssh: the proxy child carries the session
    back = w.connect(60, "127.0.0.1", 8081, fd=4)
    assert ids(back) == ["RLG-TUN-001"]
    assert "ProxyJump" in back[0].signals[0].detail or "proxy" in back[0].signals[0].detail


def test_ssh_without_proxy_or_banner_never_connects_back() -> None:
    w = World()
    w.exec(65, ["/usr/bin/ssh", "-N", "-L", "1:x:1", "target"])
    assert w.connect(65, "127.0.0.1", 8081, fd=4) == []


def test_config_from_a_pipe_is_marked_not_read() -> None:
    reads: list[str] = []
    w = World()
    w.engine.read_file = lambda pid, path: reads.append(path)  # type: ignore[assignment,func-returns-value]
    got = w.exec(70, ["/usr/bin/ssh", "-F", "/dev/fd/63", "-N", "alias"])
    assert ids(got) == ["RLG-TUN-003"] and got[0].severity == "medium"
    assert got[0].signals[0].name == "ssh.config_from_pipe"
    assert "/dev/fd/63" not in reads


def test_remote_forward_to_this_host_is_low() -> None:
    w = World()
    got = w.exec(75, ["/usr/bin/ssh", "-N", "-R", "9000:127.0.0.1:22", "localhost"])
    assert got[0].severity == "low"


def test_config_read_through_the_parent_when_the_process_is_gone(tmp_path: Path) -> None:
    cfg = tmp_path / "c"
    cfg.write_text("Host alias\n  HostName 198.51.100.7\n  RemoteForward 9000 127.0.0.1:22\n")
    seen: list[int] = []

    def reader(pid: int, path: str) -> str | None:
        seen.append(pid)
        return cfg.read_text() if pid == 1 else None  # pid 80 already exited

    w = World()
    w.engine.read_file = reader
    got = w.exec(80, ["/usr/bin/ssh", "-F", str(cfg), "-N", "alias"])
    assert ids(got) == ["RLG-TUN-003"] and got[0].severity == "high"
    assert seen[:2] == [80, 1]


def test_plink_session_file_forwards(tmp_path: Path) -> None:
    session = "HostName=198.51.100.7\nPortForwardings=L80=x:80,R9000=localhost:22\n"
    texts = {"/root/.putty/sessions/vps%20box": session}
    w = World()
    w.engine.read_file = lambda pid, path: texts.get(path)
    got = w.exec(85, ["/usr/bin/plink", "-load", "vps box", "-N"])
    assert ids(got) == ["RLG-TUN-003"]
    assert [s.detail for s in got[0].signals] == ["9000=localhost:22"]


def test_a_fifo_config_never_blocks_the_monitor(tmp_path: Path) -> None:
    fifo = tmp_path / "cfg"
    os.mkfifo(fifo)
    result: list[str | None] = []
    t = threading.Thread(target=lambda: result.append(read_process_file(os.getpid(), str(fifo))))
    t.start()
    t.join(timeout=10)
    assert not t.is_alive(), "reading a FIFO blocked"
    assert result == [None]
    reg = tmp_path / "reg"
    reg.write_text("RemoteForward 1 x:1\n")
    assert read_process_file(os.getpid(), str(reg)) == "RemoteForward 1 x:1\n"
    assert read_process_file(os.getpid(), "/dev/stdin") is None


# -- process context (issue 15 item 3) ------------------------------------------------------


def test_miner_from_dev_shm_on_a_pool_port() -> None:
    w = World()
    assert w.exec(90, ["/dev/shm/.x/kworker", "-B"]) == []  # the location alone: nothing
    got = w.connect(90, OUTSIDE, 14444, fd=3)
    assert ids(got) == ["RLG-MIN-005"] and got[0].severity == "medium"
    assert "/dev/shm/.x/kworker" in got[0].signals[0].detail
    # the same program on another port, or a system program on the pool port: nothing
    assert w.connect(90, OUTSIDE, 8443, fd=4) == []
    w.exec(91, ["/usr/bin/python3", "train.py"])
    assert w.connect(91, OUTSIDE, 14444, fd=3) == []


def test_memfd_or_deleted_executable_is_high() -> None:
    w = World()
    w.exec(92, ["/memfd:x (deleted)", "-o", "pool"])
    got = w.connect(92, OUTSIDE, 3333, fd=3)
    assert got[0].severity == "high"


def test_volatile_location_rides_along_as_context() -> None:
    w = World()
    got = w.exec(93, ["/tmp/xmrig", "-o", "stratum+tcp://198.51.100.2:3333"])
    assert ids(got) == ["RLG-MIN-002"]
    names = [s.name for s in got[0].signals]
    assert "process.volatile_exe" in names
    assert [s.confidence for s in got[0].signals if s.name == "process.volatile_exe"] == ["low"]


def test_long_lived_connection_from_tmp(tmp_path: Path) -> None:
    w = World()
    w.engine.verify_fds = False  # no real socket in a unit test: judged on the model
    w.exec(94, ["/tmp/agent", "-connect", "x"])
    assert w.connect(94, OUTSIDE, 11601, fd=3) == []
    assert w.engine.tick(1 + 599 * 10**9) == []
    got = w.engine.tick(1 + 601 * 10**9)
    assert ids(got) == ["RLG-TUN-007"] and got[0].severity == "medium"
    assert w.engine.tick(1 + 700 * 10**9) == []  # reported once
    # internal destinations are not outside connections
    w.exec(95, ["/tmp/agent2"])
    w.connect(95, "10.1.2.3", 5432, fd=3)
    assert w.engine.tick(1 + 2000 * 10**9) == []


def test_holds_established_reads_the_socket_table() -> None:
    import socket as pysocket

    from monitor.detectors.engine import holds_established

    srv = pysocket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    c = pysocket.create_connection(("127.0.0.1", port))
    try:
        assert holds_established(os.getpid(), "127.0.0.1", port) is True
        assert holds_established(os.getpid(), "127.0.0.1", port + 1) is False
    finally:
        c.close()
        srv.close()
    assert holds_established(2**22 + 12345, "127.0.0.1", port) is None


def test_refused_pool_port_connect_is_still_an_attempt() -> None:
    from monitor.sensor.events import ConnectEvent
    from tests.support.events import attributed
    from tests.unit.test_engine import hdr

    w = World()
    w.exec(96, ["/dev/shm/m"])
    p = w.table.procs[96]
    ev = ConnectEvent(
        **hdr(96, p.name), fd=3, ret=-111, family=2, daddr=OUTSIDE, dport=14444, sock_type=1,
        protocol=6,
    )  # fmt: skip
    got = w.engine.observe(attributed(w.table, ev, p))
    assert ids(got) == ["RLG-MIN-005"] and "(refused)" in got[0].signals[0].detail


def test_stale_inherited_fd_is_not_a_reverse_shell_once_gone() -> None:
    """close() is not seen: a long-lived parent's old socket fd number, reused for a file
    and dup2'd onto a child's stdio, must not read as a shell on a socket when the child is
    gone before /proc can tell (pids here do not exist, as for a process already exited)."""
    w = World()
    w.engine.verify_fds = True
    parent, child, own = 4_000_001, 4_000_002, 4_000_003
    w.exec(parent, ["/usr/bin/python3", "-m", "pytest"])
    w.connect(parent, OUTSIDE, 2299, fd=9)  # later closed; fd 9 reused (unseen)
    w.fork(parent, child)
    w.dup(child, 9, 0)
    w.dup(child, 9, 1)
    assert w.exec(child, ["/bin/bash", "-c", "true"], ppid=parent) == []
    # the same dup2s by the process that connected the socket itself still count
    w.exec(own, ["/bin/bash", "-i"])
    w.connect(own, OUTSIDE, 4444, fd=3)
    w.dup(own, 3, 1)
    assert ids(w.dup(own, 3, 0)) == ["RLG-SHL-001"]
