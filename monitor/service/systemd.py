"""Running as a systemd service: readiness and watchdog notifications, the
heartbeat that lets a restart report the gap it left, and installation.

sd_notify is a datagram to $NOTIFY_SOCKET; it is written here directly
(a few lines) rather than adding a dependency.
"""

from __future__ import annotations

import grp
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

UNIT_TEMPLATE = Path(__file__).resolve().parents[1] / "data" / "rlguard.service"
EXAMPLE_CONFIG = Path(__file__).resolve().parents[1] / "data" / "rlguard.example.toml"
HEARTBEAT = "heartbeat.json"


def sd_notify(message: str) -> bool:
    """Send a state change to systemd; False when not run by systemd."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall(message.encode())
        return True
    except OSError:
        return False


class Watchdog:
    """Pings systemd at half the WatchdogSec interval, from the main loop, so a
    stuck loop stops the pings and systemd restarts the service."""

    def __init__(self) -> None:
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        enabled = bool(usec) and (not pid or int(pid) == os.getpid())
        self.interval = int(usec) / 2e6 if enabled and usec else None
        self._last = 0.0

    def tick(self) -> None:
        if self.interval is None:
            return
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            sd_notify("WATCHDOG=1")


@dataclass
class Heartbeat:
    """When the monitor last ran, kept in the state directory across restarts."""

    path: Path

    @classmethod
    def in_dir(cls, state_dir: str) -> Heartbeat:
        return cls(Path(state_dir) / HEARTBEAT)

    def previous(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and "last_seen_ns" in data else None

    def beat(self, boot_id: str, clean: bool = False) -> str | None:
        """Record that we are alive now; returns an error text instead of raising."""
        data = {
            "boot_id": boot_id,
            "last_seen_ns": time.time_ns(),
            "clean_stop": clean,
            "pid": os.getpid(),
        }
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data))
            os.replace(tmp, self.path)  # atomic: never a torn heartbeat
        except OSError as exc:
            return f"{self.path}: {exc.strerror}"
        return None


def gap_record(previous: dict[str, Any], boot_id: str, now_ns: int) -> dict[str, Any]:
    """The `rlguard.gap` object: when monitoring stopped and resumed."""
    stopped = int(previous["last_seen_ns"])
    return {
        "stopped_at_ns": stopped,
        "resumed_at_ns": now_ns,
        "duration_s": round(max(0, now_ns - stopped) / 1e9, 3),
        "clean_stop": bool(previous.get("clean_stop")),
        "same_boot": previous.get("boot_id") == boot_id,
        "previous_pid": previous.get("pid"),
    }


def render_unit(venv: str, config: str) -> str:
    return UNIT_TEMPLATE.read_text().replace("@VENV@", venv).replace("@CONFIG@", config)


def install(
    venv: str,
    unit_dir: str = "/etc/systemd/system",
    config_dir: str = "/etc/rlguard",
    group: str = "rlguard",
    start: bool = True,
) -> list[str]:
    """Install the unit, the config and the group; returns what it did, line by line."""
    done: list[str] = []
    cfg_dir = Path(config_dir)
    cfg = cfg_dir / "rlguard.toml"
    cfg_dir.mkdir(parents=True, exist_ok=True)
    if not cfg.exists():
        shutil.copy(EXAMPLE_CONFIG, cfg)
        os.chmod(cfg, 0o640)
        done.append(f"wrote {cfg} (from the example)")
    else:
        done.append(f"kept {cfg}")
    try:
        grp.getgrnam(group)
        done.append(f"group {group} exists")
    except KeyError:
        subprocess.run(["groupadd", "--system", group], check=True)
        done.append(f"created group {group} (members may read the live stream)")
    unit = Path(unit_dir) / "rlguard.service"
    unit.parent.mkdir(parents=True, exist_ok=True)
    unit.write_text(render_unit(venv, str(cfg)))
    done.append(f"wrote {unit}")
    if _systemd_running():
        subprocess.run(["systemctl", "daemon-reload"], check=True)
    if start:
        if _systemd_running():
            subprocess.run(["systemctl", "enable", "--now", "rlguard.service"], check=True)
            done.append("enabled and started rlguard.service")
        else:
            done.append("systemd is not PID 1 here: the unit is installed but not started")
    return done


def _systemd_running() -> bool:
    return os.path.isdir("/run/systemd/system")


def verify_unit(path: str) -> tuple[bool, str]:
    """`systemd-analyze verify` on a unit file (needs systemd-analyze)."""
    exe = shutil.which("systemd-analyze")
    if exe is None:
        return False, "systemd-analyze is not installed"
    res = subprocess.run([exe, "verify", path], capture_output=True, text=True)
    return res.returncode == 0, (res.stdout + res.stderr).strip()


if __name__ == "__main__":  # pragma: no cover
    print("\n".join(install(sys.prefix)))
