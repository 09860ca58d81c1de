"""scripts/setup.sh and the make entry points: reruns are quick no-ops, non-root
callers are told to use sudo, and the shell scripts pass shellcheck."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SETUP = REPO / "scripts" / "setup.sh"
CI_RUN = REPO / ".ci" / "run"
VENV_STAMP = REPO / ".venv" / ".rlguard-installed"
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]

pytestmark = pytest.mark.integration
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="setup.sh needs root")


def _run_setup(env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SETUP), "--test"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def _nobody_can_read(path: Path) -> bool:
    if shutil.which("setpriv") is None:
        return False
    probe = subprocess.run([*NOBODY, "test", "-r", str(path)], capture_output=True)
    return probe.returncode == 0


@needs_root
def test_second_run_is_quick_and_installs_nothing(tmp_path: Path) -> None:
    first = _run_setup()
    assert first.returncode == 0, first.stdout + first.stderr

    # Any apt-get call on the rerun lands in this log (and fails).
    calls = tmp_path / "apt-get.calls"
    calls.touch()
    stubs = tmp_path / "bin"
    stubs.mkdir()
    stub = stubs / "apt-get"
    stub.write_text(f'#!/bin/sh\necho "apt-get $*" >> "{calls}"\nexit 100\n')
    stub.chmod(0o755)
    env = dict(os.environ, PATH=f"{stubs}:{os.environ.get('PATH', '/usr/bin:/bin')}")
    stamp_before = VENV_STAMP.stat().st_mtime_ns

    started = time.monotonic()
    second = _run_setup(env)
    elapsed = time.monotonic() - started

    out = second.stdout + second.stderr
    assert second.returncode == 0, out
    assert calls.read_text() == "", f"rerun called apt-get:\n{calls.read_text()}\n{out}"
    assert "pip install" not in out
    assert VENV_STAMP.stat().st_mtime_ns == stamp_before
    assert "[setup] done" in second.stdout
    assert elapsed < 20, f"rerun took {elapsed:.1f}s:\n{out}"


@needs_root
def test_setup_refuses_non_root() -> None:
    if not _nobody_can_read(SETUP):
        pytest.skip("setpriv missing or the checkout is not readable by nobody")
    res = subprocess.run([*NOBODY, "bash", str(SETUP)], capture_output=True, text=True)
    assert res.returncode != 0
    assert "must run as root" in res.stderr


@needs_root
def test_make_test_as_non_root_fails_fast_asking_for_sudo() -> None:
    if shutil.which("make") is None or not _nobody_can_read(REPO / "Makefile"):
        pytest.skip("make/setpriv missing or the checkout is not readable by nobody")
    started = time.monotonic()
    res = subprocess.run(
        [*NOBODY, "make", "-C", str(REPO), "test"], capture_output=True, text=True, timeout=60
    )
    assert res.returncode != 0
    assert "sudo make test" in res.stderr
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("script", [SETUP, CI_RUN], ids=lambda p: p.name)
def test_shellcheck(script: Path) -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed")
    res = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
