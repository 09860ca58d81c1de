"""The probes compile in a thread (`rlguard run` overlaps it with start-up)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from monitor.config import load_config
from monitor.sensor import probes
from monitor.sensor.probes import Sensor, SensorError

pytestmark = pytest.mark.integration


def test_compile_in_a_thread_then_load_sees_events() -> None:
    cfg = load_config(None)
    s = Sensor(cfg.probes, list(cfg.tags.keys))
    s.start_compile()
    try:
        s.load()
        assert s.load_seconds > 0
        s.drain()
        subprocess.run(["/bin/true"], check=True)
        layouts = s.layouts()
        assert "exec" in layouts
        records = s.drain()
        # the exec record's header carries the new comm
        assert any(b"true\x00" in r for r in records), "the exec of /bin/true was not seen"
    finally:
        s.close()


def test_a_compile_error_in_the_thread_is_raised_by_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = tmp_path / "probes"
    broken.mkdir()
    (broken / probes.PROGRAM).write_text("int this is not C;\n")
    monkeypatch.setattr(probes, "PROBES_DIR", broken)
    cfg = load_config(None)
    s = Sensor(cfg.probes, list(cfg.tags.keys))
    s.start_compile()
    with pytest.raises(SensorError, match="failed"):
        s.load()
    s.close()
