"""Constants mirrored in Python agree with probes/rlguard.h, the source of truth."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from monitor.sensor import events

pytestmark = pytest.mark.unit

HEADER = (Path(__file__).resolve().parents[2] / "probes" / "rlguard.h").read_text()


def c_value(name: str) -> int:
    m = re.search(rf"\b{name}\s*=?\s*(\d+)", HEADER)
    assert m, name
    return int(m.group(1))


@pytest.mark.parametrize(
    "py,c",
    [
        ("EXEC_ARGS_TRUNCATED", "RLG_EXEC_ARGS_TRUNCATED"),
        ("EXEC_ARG_TRUNCATED", "RLG_EXEC_ARG_TRUNCATED"),
        ("EXEC_ENV_SCAN_TRUNCATED", "RLG_EXEC_ENV_SCAN_TRUNCATED"),
        ("EXEC_TAG_TRUNCATED", "RLG_EXEC_TAG_TRUNCATED"),
        ("EXEC_ARGV_UNREADABLE", "RLG_EXEC_ARGV_UNREADABLE"),
        ("CONNECT_SYSCALL", "RLG_CONNECT_SYSCALL"),
        ("CONNECT_SOCKINFO", "RLG_CONNECT_SOCKINFO"),
        ("CONNECT_KERNEL", "RLG_CONNECT_KERNEL"),
        ("SEND_OWNER_DIFFERS", "RLG_SEND_OWNER_DIFFERS"),
        ("SEND_SENDER_KNOWN", "RLG_SEND_SENDER_KNOWN"),
        ("SEND_SENDER_QUEUED", "RLG_SEND_SENDER_QUEUED"),
        ("TCP_OWNER_KNOWN", "RLG_TCP_OWNER_KNOWN"),
        ("GPU_VIA_OPENAT", "RLG_GPU_VIA_OPENAT"),
        ("GPU_VIA_OPENAT2", "RLG_GPU_VIA_OPENAT2"),
        ("GPU_VIA_OPEN", "RLG_GPU_VIA_OPEN"),
        ("GPU_CLOSE_RANGE", "RLG_GPU_CLOSE_RANGE"),
        ("STREAM_REPLY", "RLG_STREAM_REPLY"),
        ("STREAM_TRUNCATED", "RLG_STREAM_TRUNCATED"),
        ("STREAM_LATE", "RLG_STREAM_LATE"),
        ("STREAM_GAP", "RLG_STREAM_GAP"),
        ("STREAM_OWNER_DIFFERS", "RLG_STREAM_OWNER_DIFFERS"),
        ("TLS_OPENSSL", "RLG_TLS_OPENSSL"),
        ("TLS_GNUTLS", "RLG_TLS_GNUTLS"),
        ("TLS_BIND_COOKIE", "RLG_TLS_BIND_COOKIE"),
        ("TLS_BIND_FD", "RLG_TLS_BIND_FD"),
    ],
)
def test_flag_values(py: str, c: str) -> None:
    assert getattr(events, py) == c_value(c)


def test_event_type_numbers() -> None:
    for num, name in events.EVENT_TYPES.items():
        assert c_value(f"RLG_EV_{name.upper()}") == num
