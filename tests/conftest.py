"""Shared fixtures.  Integration and e2e tests load real eBPF programs: root only."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

# No per-example deadline: these machines are shared, and a slow example is
# noise, not a failure (speed is measured in bench/, never asserted in tests).
settings.register_profile("rlguard", deadline=None)
settings.load_profile("rlguard")

REPO = Path(__file__).resolve().parent.parent
HELPERS = REPO / "tests" / "helpers"
BUILD = HELPERS / "build"

IS_ROOT = os.geteuid() == 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip = pytest.mark.skip(reason="needs root: loads real eBPF programs (sudo make test)")
    for item in items:
        if not IS_ROOT and ("integration" in item.keywords or "e2e" in item.keywords):
            item.add_marker(skip)


def build_helper(name: str, libs: tuple[str, ...] = (), static: bool = False) -> Path:
    """Compile tests/helpers/NAME.c once per checkout (gcc is installed by setup)."""
    src = HELPERS / f"{name}.c"
    out = BUILD / name
    if out.exists() and out.stat().st_mtime >= src.stat().st_mtime:
        return out
    BUILD.mkdir(parents=True, exist_ok=True)
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.fail("no C compiler: run `sudo make test` (setup installs gcc)")
    cmd = [cc, "-O2", "-o", str(out), str(src), *(["-static"] if static else []), *libs]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        pytest.fail(f"building {name} failed: {res.stderr}")
    return out


@pytest.fixture(scope="session")
def live() -> Iterator[object]:
    """One real monitor for the session, running in a thread."""
    from monitor.config import load_config
    from tests.support.live import LiveMonitor

    mon = LiveMonitor(load_config(None)).start()
    try:
        yield mon
    finally:
        mon.stop()


@pytest.fixture
def netns_host() -> Iterator[object]:
    from monitor.lab.netns import NetnsHost

    host = NetnsHost().up()
    try:
        yield host
    finally:
        host.down()
