"""vagrant/provision.sh, run for real on this host with RLGUARD_DIR at this checkout.

The script is plain shell, so the VM is not needed to test it: it sets the
host up, installs the service, runs the preflight and stages the incident
demo here, exactly as it does in the VM. Afterwards the test removes what
the run created (unit, config, group, demo output, heartbeat) and puts back
what was there before.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.system import group_exists

REPO = Path(__file__).resolve().parents[2]
PROVISION = REPO / "vagrant" / "provision.sh"
VAGRANTFILE = REPO / "vagrant" / "Vagrantfile"
UNIT = Path("/etc/systemd/system/rlguard.service")
CONFIG_DIR = Path("/etc/rlguard")
CONFIG = CONFIG_DIR / "rlguard.toml"
DEMO_OUT = Path("/var/log/rlguard/demo.ndjson")
HEARTBEAT = Path("/var/lib/rlguard/heartbeat.json")
GROUP = "rlguard"
DEMO_EPISODE = "ep-17"  # monitor/lab/incident.py
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]

pytestmark = pytest.mark.integration
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="provision.sh needs root")


def _systemd_running() -> bool:
    return Path("/run/systemd/system").is_dir()  # the test monitor/service/systemd.py uses


def _systemctl_ok(*args: str) -> bool:
    return subprocess.run(["systemctl", *args], capture_output=True).returncode == 0


def _provision(rlguard_dir: Path | str, *prefix: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, RLGUARD_DIR=str(rlguard_dir))
    return subprocess.run(
        [*prefix, "bash", str(PROVISION)],
        cwd="/",  # the script must not depend on where it is started
        env=env,
        capture_output=True,
        text=True,
        timeout=900,  # a host that was never set up installs packages first
    )


@pytest.fixture
def host_state() -> Iterator[None]:
    """Remember what provisioning changes on this host; undo it afterwards."""
    service_was_active = _systemd_running() and _systemctl_ok("is-active", "--quiet", "rlguard")
    service_was_enabled = _systemd_running() and _systemctl_ok("is-enabled", "--quiet", "rlguard")
    unit_before = UNIT.read_bytes() if UNIT.exists() else None
    config_existed = CONFIG.exists()
    heartbeat_before = HEARTBEAT.read_bytes() if HEARTBEAT.exists() else None
    dirs_existed = {d: d.exists() for d in (CONFIG_DIR, DEMO_OUT.parent, UNIT.parent)}
    group_existed = group_exists(GROUP)
    try:
        yield
    finally:
        if _systemd_running() and not service_was_active:
            subprocess.run(["systemctl", "stop", "rlguard.service"], capture_output=True)
        if _systemd_running() and not service_was_enabled:
            subprocess.run(["systemctl", "disable", "rlguard.service"], capture_output=True)
        if unit_before is None:
            UNIT.unlink(missing_ok=True)
        else:
            UNIT.write_bytes(unit_before)
        if _systemd_running():
            subprocess.run(["systemctl", "daemon-reload"], capture_output=True)
        if not config_existed:
            CONFIG.unlink(missing_ok=True)
        # a running service owns its heartbeat; otherwise the demo's must not linger
        if not service_was_active:
            if heartbeat_before is None:
                HEARTBEAT.unlink(missing_ok=True)
            else:
                HEARTBEAT.write_bytes(heartbeat_before)
        DEMO_OUT.unlink(missing_ok=True)
        for d, existed in dirs_existed.items():
            if not existed:
                try:
                    d.rmdir()  # only when empty: never remove what others put there
                except OSError:
                    pass
        if not group_existed and group_exists(GROUP):
            subprocess.run(["groupdel", GROUP], capture_output=True)


def _alerts(path: Path) -> dict[str, dict]:
    docs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {
        d["rule"]["id"]: d
        for d in docs
        if d["event"]["kind"] == "alert" and d.get("rl", {}).get("episode_id") == DEMO_EPISODE
    }


@needs_root
def test_provision_sets_up_installs_checks_and_stages_the_demo(host_state: None) -> None:
    config_existed = CONFIG.exists()
    res = _provision(REPO)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-8000:]

    # 1. set-up ran from the checkout
    assert "[setup] done" in res.stdout, out[-4000:]

    # 2. the service: unit for this checkout's venv, config, group
    assert UNIT.is_file(), out[-4000:]
    unit = UNIT.read_text()
    assert f"ExecStart={REPO}/.venv/bin/rlguard run --config {CONFIG}" in unit
    assert CONFIG.is_file()
    assert ("kept" if config_existed else "wrote") + f" {CONFIG}" in res.stdout
    assert group_exists(GROUP)
    if _systemd_running():
        assert "rlguard: enabled and started rlguard.service" in res.stdout
        assert _systemctl_ok("is-active", "--quiet", "rlguard")
    else:
        # PID 1 is not systemd here (a container): installed, not started, and said so
        assert (
            "rlguard: systemd is not PID 1 here: the unit is installed but not started"
            in res.stdout
        ), res.stdout[-4000:]
        assert "rlguard.service is installed but not running" in res.stdout

    # 3. the preflight passed, probes loaded
    assert "[  ok] probes: compiled, loaded and attached" in res.stdout
    assert "rlguard can run on this host" in res.stdout

    # 4. the demo's file holds the incident's alerts, attributed to its episode
    assert DEMO_OUT.is_file()
    alerts = _alerts(DEMO_OUT)
    assert {"RLG-TUN-001", "RLG-MIN-001"} <= set(alerts), sorted(alerts)
    assert alerts["RLG-TUN-001"]["rl"]["worker_id"] is not None
    assert "RLG-MIN-001" in res.stdout and "RLG-TUN-001" in res.stdout

    # 5. where to look
    assert "journalctl -u rlguard" in res.stdout
    assert str(DEMO_OUT) in res.stdout

    # a rerun (vagrant provision) keeps the config and replaces the demo file
    again = _provision(REPO)
    assert again.returncode == 0, (again.stdout + again.stderr)[-8000:]
    assert f"rlguard: kept {CONFIG}" in again.stdout
    assert f"rlguard: group {GROUP} exists" in again.stdout
    starts = [
        line
        for line in DEMO_OUT.read_text().splitlines()
        if '"action":"started"' in line and '"dataset":"rlguard.lifecycle"' in line
    ]
    assert len(starts) == 1, "the demo file holds more than one run"
    assert {"RLG-TUN-001", "RLG-MIN-001"} <= set(_alerts(DEMO_OUT))

    # the unit as written passes systemd's own checks
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed: the unit file was not verified")
    verify = subprocess.run(
        ["systemd-analyze", "verify", str(UNIT)], capture_output=True, text=True
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr


@needs_root
def test_provision_names_a_missing_checkout(tmp_path: Path) -> None:
    res = _provision(tmp_path / "nowhere")
    assert res.returncode != 0
    assert f"no rlguard checkout at {tmp_path / 'nowhere'}" in res.stderr


@needs_root
def test_provision_refuses_non_root() -> None:
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv is not installed")
    probe = subprocess.run([*NOBODY, "test", "-r", str(PROVISION)], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("the checkout is not readable by nobody")
    res = _provision(REPO, *NOBODY)
    assert res.returncode != 0
    assert "must run as root" in res.stderr


def test_shellcheck() -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed")
    res = subprocess.run(["shellcheck", str(PROVISION)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_vagrantfile() -> None:
    text = VAGRANTFILE.read_text()
    # the provisioner's path is relative to the Vagrantfile; it must exist
    assert 'path: "provision.sh"' in text and PROVISION.is_file()
    assert os.access(PROVISION, os.X_OK)
    if shutil.which("ruby") is None:
        pytest.skip("ruby is not installed: Vagrantfile syntax not checked")
    res = subprocess.run(["ruby", "-c", str(VAGRANTFILE)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
