"""SIEM sink pieces that need no network: URLs, syslog PRI and framing, the spool."""

from __future__ import annotations

import os
import re
from pathlib import Path

import orjson
import pytest

from monitor.sinks.siem import Endpoint, Spool, parse_url, syslog_frame, syslog_meta

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("url", "want"),
    [
        ("tcp://siem.example:514", Endpoint("tcp", "siem.example", 514)),
        ("tls://10.0.0.5:6514", Endpoint("tls", "10.0.0.5", 6514)),
        ("syslog+tcp://[::1]:601", Endpoint("syslog+tcp", "::1", 601)),
        ("syslog+tls://logs:6514", Endpoint("syslog+tls", "logs", 6514)),
    ],
)
def test_parse_url(url: str, want: Endpoint) -> None:
    got = parse_url(url)
    assert got == want
    assert str(got) == url
    assert got.tls == url.startswith(("tls", "syslog+tls"))
    assert got.syslog == url.startswith("syslog")


@pytest.mark.parametrize(
    "url", ["", "udp://h:514", "tcp://h", "tcp://h:0", "tcp://h:70000", "http://h:80", "tcp://:1"]
)
def test_parse_url_rejects(url: str) -> None:
    with pytest.raises(ValueError, match="SIEM url"):
        parse_url(url)


@pytest.mark.parametrize(
    ("event", "pri"),
    [
        ({"kind": "alert", "severity": 99}, 4 * 8 + 2),
        ({"kind": "alert", "severity": 73}, 4 * 8 + 3),
        ({"kind": "alert", "severity": 47}, 4 * 8 + 4),
        ({"kind": "alert", "severity": 21}, 4 * 8 + 5),
        ({"kind": "alert"}, 4 * 8 + 5),
        ({"kind": "event", "action": "exec"}, 13 * 8 + 6),
        ({"kind": "metric", "action": "stats"}, 13 * 8 + 6),
        ({"kind": "metric", "action": "events_dropped"}, 13 * 8 + 4),
        ({"kind": "metric", "action": "record_error"}, 13 * 8 + 4),
    ],
)
def test_syslog_pri(event: dict[str, object], pri: int) -> None:
    assert syslog_meta({"event": event})[0] == pri


def test_syslog_meta_timestamp_and_msgid() -> None:
    ts = "2024-05-01T12:00:00.123456Z"
    assert syslog_meta({"@timestamp": ts, "event": {"kind": "alert"}})[1:] == (ts, "alert")
    # garbage timestamps and kinds never reach the header
    pri, stamp, msgid = syslog_meta({"@timestamp": "yesterday 5pm", "event": {"kind": "a b\n"}})
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", stamp)
    assert msgid == "ab"
    assert syslog_meta({"event": "not a dict"})[2] == "-"
    assert syslog_meta({})[0] == 13 * 8 + 6


def test_syslog_frame_octet_counting() -> None:
    doc = {"event": {"kind": "alert", "severity": 73}, "msg": "ünï\ncode"}
    line = orjson.dumps(doc, option=orjson.OPT_APPEND_NEWLINE)
    frame = syslog_frame(line, syslog_meta(doc), "host-1", 4242)
    count, _, msg = frame.partition(b" ")
    assert int(count) == len(msg)  # octets, not characters
    head = msg[: msg.index(b"{")]
    assert re.fullmatch(rb"<35>1 \S+ host-1 rlguard 4242 alert - ", head)
    assert orjson.loads(msg[len(head) :]) == doc


# --- the spool ------------------------------------------------------------------------------


def _lines(a: int, b: int, pad: int = 10) -> list[bytes]:
    return [orjson.dumps({"seq": i, "p": "x" * pad}) + b"\n" for i in range(a, b)]


def _seqs(lines: list[bytes]) -> list[int]:
    return [orjson.loads(x)["seq"] for x in lines]


def _drain(spool: Spool, max_bytes: int = 500) -> list[int]:
    out: list[int] = []
    while batch := spool.read_batch(max_bytes):
        out += _seqs(batch)
        spool.consume(batch)
    return out


def test_spool_order_segments_and_deletion(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path), max_bytes=1 << 20)
    spool.segment_bytes = 300  # many small segments
    spool.append(_lines(0, 50))
    spool.append(_lines(50, 100))
    assert spool.unsent_lines == 100
    assert len([n for n in os.listdir(tmp_path) if n.endswith(".ndjson")]) > 5
    assert _drain(spool) == list(range(100))
    assert spool.unsent_lines == 0 and spool.unsent_bytes == 0
    assert set(os.listdir(tmp_path)) == {"lock"}  # every sent segment deleted
    spool.close()


def test_spool_survives_restart_at_its_cursor(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path), max_bytes=1 << 20)
    spool.segment_bytes = 400
    spool.append(_lines(0, 60))
    batch = spool.read_batch(150)
    spool.consume(batch)  # part of the first segment
    sent = _seqs(batch)
    spool.close()
    again = Spool(str(tmp_path), max_bytes=1 << 20)
    assert again.unsent_lines == 60 - len(sent)
    assert _drain(again) == list(range(len(sent), 60))
    again.close()


def test_spool_trim_drops_oldest_whole_lines(tmp_path: Path) -> None:
    lines = _lines(100, 200)  # all the same length
    size = len(lines[0])
    spool = Spool(str(tmp_path), max_bytes=size * 30 + size // 2)
    spool.segment_bytes = size * 7 + 3  # cuts fall inside and across segments
    spool.append(lines)
    dropped = spool.trim()
    assert dropped == 70
    assert spool.unsent_lines == 30 and spool.unsent_bytes <= spool.max_bytes
    spool.close()
    again = Spool(str(tmp_path), max_bytes=size * 30 + size // 2)
    assert _drain(again) == list(range(170, 200))  # the drop was persisted
    again.close()


def test_spool_cuts_a_torn_tail_at_load(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path), max_bytes=1 << 20)
    spool.append(_lines(0, 5))
    spool.close()
    seg = next(p for p in tmp_path.iterdir() if p.suffix == ".ndjson")
    with open(seg, "ab") as fh:
        fh.write(b'{"seq":5,"p":"cut sh')  # a crash in the middle of an append
    again = Spool(str(tmp_path), max_bytes=1 << 20)
    assert again.torn_lines == 1
    assert _drain(again) == list(range(5))
    again.close()


def test_stale_cursor_never_applies_to_a_new_segment(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path), max_bytes=1 << 20)
    spool.append(_lines(0, 10))
    name = next(p.name for p in tmp_path.iterdir() if p.suffix == ".ndjson")
    spool.close()
    # a crash left a cursor naming a segment that was then fully sent and deleted
    os.unlink(tmp_path / name)
    (tmp_path / "cursor").write_text(f"{name} 40\n")
    again = Spool(str(tmp_path), max_bytes=1 << 20)
    again.append(_lines(10, 20))
    again.close()
    third = Spool(str(tmp_path), max_bytes=1 << 20)
    assert _drain(third) == list(range(10, 20))
    third.close()


def test_spool_is_locked_to_one_owner(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path), max_bytes=1 << 20)
    with pytest.raises(OSError, match="in use by another rlguard"):
        Spool(str(tmp_path), max_bytes=1 << 20)
    spool.close()
    Spool(str(tmp_path), max_bytes=1 << 20).close()


def test_spool_full_disk_appends_whole_lines_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = Spool(str(tmp_path), max_bytes=1 << 20)
    spool.segment_bytes = 200
    real_write = os.write
    budget = 500  # bytes the "disk" takes before it is full

    def full_disk(fd: int, data: bytes) -> int:
        nonlocal budget
        if budget <= 0:
            raise OSError(28, "No space left on device")
        n = real_write(fd, data[:budget])
        budget -= n
        return n

    monkeypatch.setattr(os, "write", full_disk)
    done = spool.append(_lines(0, 40))
    monkeypatch.setattr(os, "write", real_write)
    assert 0 < done < 40
    assert spool.error is not None and spool.error.errno == 28
    assert spool.unsent_lines == done
    assert _drain(spool) == list(range(done))  # no torn line was left behind
    spool.close()
