"""systemd integration pieces, with real sockets and the real systemd-analyze."""

from __future__ import annotations

import os
import shutil
import socket
import sys
import time

import pytest

from monitor.service.systemd import (
    Heartbeat,
    Watchdog,
    gap_record,
    render_unit,
    sd_notify,
    verify_unit,
)

pytestmark = pytest.mark.unit


@pytest.fixture
def notify_socket(tmp_path, monkeypatch):
    path = tmp_path / "notify.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(path))
    s.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield s
    s.close()


def test_sd_notify_sends_a_datagram(notify_socket) -> None:
    assert sd_notify("READY=1\nSTATUS=armed")
    assert notify_socket.recv(4096) == b"READY=1\nSTATUS=armed"


def test_sd_notify_without_systemd(monkeypatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sd_notify("READY=1") is False


def test_watchdog_pings_at_half_interval(notify_socket, monkeypatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # 0.2 s -> ping every 0.1 s
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    wd = Watchdog()
    assert wd.interval == pytest.approx(0.1)
    wd.tick()
    assert notify_socket.recv(64) == b"WATCHDOG=1"
    wd.tick()  # too soon: nothing
    notify_socket.settimeout(0.05)
    with pytest.raises(socket.timeout):
        notify_socket.recv(64)
    time.sleep(0.11)
    wd.tick()
    assert notify_socket.recv(64) == b"WATCHDOG=1"


def test_watchdog_for_another_pid_stays_quiet(monkeypatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    monkeypatch.setenv("WATCHDOG_PID", "1")
    assert Watchdog().interval is None


def test_heartbeat_and_gap(tmp_path) -> None:
    hb = Heartbeat.in_dir(str(tmp_path / "state"))
    assert hb.previous() is None
    assert hb.beat("boot-a") is None
    prev = hb.previous()
    assert prev is not None and prev["clean_stop"] is False
    gap = gap_record(prev, "boot-a", prev["last_seen_ns"] + 3_500_000_000)
    assert gap["duration_s"] == 3.5 and gap["same_boot"] and not gap["clean_stop"]
    hb.beat("boot-a", clean=True)
    assert hb.previous()["clean_stop"] is True  # type: ignore[index]
    assert gap_record(hb.previous(), "boot-b", time.time_ns())["same_boot"] is False  # type: ignore[arg-type]


def test_heartbeat_on_unwritable_dir_reports_error(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    hb = Heartbeat.in_dir(str(blocker))  # a file where a directory should be
    assert "file" in (hb.beat("b") or "")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_unit_file_verifies_clean(tmp_path) -> None:
    unit = tmp_path / "rlguard.service"
    unit.write_text(render_unit(sys.prefix, "/etc/rlguard/rlguard.toml"))
    ok, out = verify_unit(str(unit))
    assert ok, out
    text = unit.read_text()
    for needle in (
        "Type=notify",
        "WatchdogSec=",
        "Restart=always",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=CAP_BPF",
        "ProtectHome=",
        "PrivateTmp=yes",
        f"ExecStart={sys.prefix}/bin/rlguard run",
    ):
        assert needle in text, needle
