"""The NDJSON sink never loses or tears a line silently."""

from __future__ import annotations

import json
import os

import pytest

from monitor.sinks import ndjson
from monitor.sinks.ndjson import NdjsonSink

pytestmark = pytest.mark.unit


def test_lines_are_whole_and_flushed(tmp_path) -> None:
    path = tmp_path / "out" / "events.ndjson"
    sink = NdjsonSink(str(path))
    for i in range(100):
        sink.write({"i": i, "s": 'quote" and \n newline \x1b[2J'})
    assert sink.flush()
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b""
    docs = [json.loads(line) for line in lines[:-1]]
    assert [d["i"] for d in docs] == list(range(100))
    assert sink.lines_written == 100 and sink.pending == 0


def test_full_disk_keeps_lines_queued() -> None:
    # /dev/full answers every write with ENOSPC: a full disk, for real
    sink = NdjsonSink("/dev/full")
    sink.write({"a": 1})
    sink.write({"b": 2})
    assert sink.flush() is False
    assert sink.pending == 2
    assert "No space left" in (sink.last_error or "")
    assert sink.lines_lost == 0


def test_queue_bound_counts_losses(monkeypatch) -> None:
    monkeypatch.setattr(ndjson, "MAX_PENDING_BYTES", 100)
    sink = NdjsonSink("/dev/full")
    for i in range(50):
        sink.write({"i": i})
    assert sink.flush() is False
    assert sink.lines_lost > 0
    assert sink.pending + sink.lines_lost == 50


def test_reopen_after_rotation(tmp_path) -> None:
    path = tmp_path / "events.ndjson"
    sink = NdjsonSink(str(path))
    sink.write({"n": 1})
    sink.flush()
    os.rename(path, tmp_path / "events.ndjson.1")
    sink.reopen()
    sink.write({"n": 2})
    sink.flush()
    assert json.loads(path.read_text())["n"] == 2
    assert json.loads((tmp_path / "events.ndjson.1").read_text())["n"] == 1
