"""The probes compile in a thread (`rlguard run` overlaps it with start-up)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from monitor.config import load_config
from monitor.sensor import probes
from monitor.sensor.probes import Sensor, SensorError
from tests.conftest import REPO

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


def test_a_copy_of_the_probes_compiles_from_any_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # as installed: the probes folder somewhere else, the command run from anywhere
    copy = tmp_path / "site-packages" / "probes"
    shutil.copytree(probes.PROBES_DIR, copy)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.setattr(probes, "PROBES_DIR", copy)
    monkeypatch.chdir(elsewhere)
    # the copy is what compiles: the text names no file of the checkout
    assert str(REPO / "probes") not in probes.program_text()
    cfg = load_config(None)
    s = Sensor(cfg.probes, list(cfg.tags.keys))
    try:
        s.load()
        assert "exec" in s.layouts()
    finally:
        s.close()


def test_a_compile_error_in_an_included_file_names_that_file_and_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / "probes"
    shutil.copytree(probes.PROBES_DIR, copy)
    broken = copy / "lib" / "emit.bpf.h"
    lines = broken.read_text().splitlines()
    broken.write_text("\n".join([*lines, "int this is not C;", ""]))
    monkeypatch.setattr(probes, "PROBES_DIR", copy)
    cfg = load_config(None)
    s = Sensor(cfg.probes, list(cfg.tags.keys))
    with pytest.raises(SensorError, match="failed"):
        s.load()
    s.close()
    # clang's diagnostics go to stderr, placed by the #line markers
    assert f"{broken}:{len(lines) + 1}:" in capfd.readouterr().err
