"""Small facts about this machine that tests need."""

from __future__ import annotations

import grp
import time
from pathlib import Path


def group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def rmdir_when_empty(d: Path) -> None:
    """Remove a cgroup once its last process has exited (retried for up to 5 s)."""
    for _ in range(50):
        try:
            d.rmdir()
            return
        except OSError:
            time.sleep(0.1)
