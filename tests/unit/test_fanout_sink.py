"""FanoutSink: every sink gets every line, and a broken one never stops the rest."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from monitor.sinks.fanout import FanoutSink
from monitor.sinks.ndjson import NdjsonSink

pytestmark = pytest.mark.unit


class Broken:
    """A sink whose every call raises, like an output whose disk vanished."""

    name = "broken"
    lines_written = 0
    lines_lost = 0
    pending = 0
    last_error = None

    def write(self, doc: dict[str, Any]) -> None:
        raise OSError(5, "Input/output error")

    def flush(self) -> bool:
        raise RuntimeError("flush exploded")

    def reopen(self) -> None:
        raise RuntimeError("reopen exploded")

    def close(self) -> None:
        raise RuntimeError("close exploded")


class Recorder:
    """Counts calls; no ``name`` attribute, so the class name is used."""

    def __init__(self) -> None:
        self.docs: list[dict[str, Any]] = []
        self.calls: list[str] = []
        self.lines_written = 0
        self.lines_lost = 0
        self.pending = 0
        self.last_error: str | None = None

    def write(self, doc: dict[str, Any]) -> None:
        self.docs.append(doc)
        self.pending += 1

    def flush(self) -> bool:
        self.calls.append("flush")
        self.lines_written += self.pending
        self.pending = 0
        return True

    def reopen(self) -> None:
        self.calls.append("reopen")

    def close(self) -> None:
        self.calls.append("close")


def test_every_sink_gets_every_line(tmp_path: Path) -> None:
    a, b = NdjsonSink(str(tmp_path / "a.ndjson")), NdjsonSink(str(tmp_path / "b.ndjson"))
    rec = Recorder()
    fan = FanoutSink(a, b, rec)
    assert list(fan.sinks) == ["file", "file-2", "recorder"]
    for i in range(10):
        fan.write({"i": i})
    assert fan.pending == {"file": 10, "file-2": 10, "recorder": 10}
    assert fan.flush() is True
    fan.close()
    for p in ("a.ndjson", "b.ndjson"):
        assert [json.loads(x)["i"] for x in (tmp_path / p).read_text().splitlines()] == list(
            range(10)
        )
    assert fan.lines_written == {"file": 10, "file-2": 10, "recorder": 10}
    assert fan.lines_lost == {"file": 0, "file-2": 0, "recorder": 0}
    assert fan.last_error is None
    assert rec.calls == ["flush", "close"]


def test_a_failing_sink_never_stops_the_others(tmp_path: Path) -> None:
    good = NdjsonSink(str(tmp_path / "good.ndjson"))
    rec = Recorder()
    fan = FanoutSink(Broken(), good, rec)  # the broken one first: the worst case
    for i in range(5):
        fan.write({"i": i})
    assert fan.flush() is False
    fan.reopen()
    fan.write({"i": 5})
    assert fan.flush() is False
    fan.close()
    assert len((tmp_path / "good.ndjson").read_text().splitlines()) == 6
    assert len(rec.docs) == 6 and rec.calls == ["flush", "reopen", "flush", "close"]
    assert fan.lines_lost == {"broken": 6, "file": 0, "recorder": 0}
    assert fan.failures["broken"] == 6 + 2 + 1 + 1
    err = fan.last_error
    assert err is not None and set(err) == {"broken"}
    assert "close exploded" in err["broken"]


def test_flush_false_when_any_sink_holds_lines() -> None:
    fan = FanoutSink(NdjsonSink("/dev/full"), Recorder())
    fan.write({"x": 1})
    assert fan.flush() is False
    assert fan.pending == {"file": 1, "recorder": 0}
    assert "No space left" in (fan.last_error or {}).get("file", "")


def test_counters_fit_the_stats_line_and_metrics() -> None:
    rec = Recorder()
    fan = FanoutSink(rec, Broken())
    fan.write({"x": 1})
    fan.flush()
    # the collector puts these into its JSON stats document as they are
    doc = orjson.loads(orjson.dumps({"lines_written": fan.lines_written, "err": fan.last_error}))
    assert doc["lines_written"] == {"recorder": 1, "broken": 0}
    stats = fan.stats()
    assert stats["recorder"]["lines_written"] == 1
    assert stats["broken"]["lines_lost"] == 1 and stats["broken"]["failures"] == 2
    assert "flush exploded" in stats["broken"]["last_error"]


def test_needs_a_sink() -> None:
    with pytest.raises(ValueError):
        FanoutSink()
