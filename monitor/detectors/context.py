"""Process context: where a program runs from, and what that adds to its connections.

Droppers put miners and tunnel agents where anyone may write and nothing survives a
reboot: /dev/shm, /tmp, /var/tmp, a memfd (fileless: ``memfd_create`` + ``fexecve``) or a
file deleted after it started.  Alone that is weak (build systems and test runners execute
from /tmp too), so it is a low signal that rides along with the process's other alerts;
combined with a connection to a classic pool port (RLG-MIN-005) or an outside TCP
connection held open for ``[detectors] long_lived_s`` (RLG-TUN-007) it is reported.

Pure functions; the engine reads /proc for the executable and the socket table.
"""

from __future__ import annotations

from typing import Final

from monitor.detectors.signals import Confidence, Signal, bounded

RULE_VOLATILE_POOL: Final = "RLG-MIN-005"
RULE_VOLATILE_LONG_LIVED: Final = "RLG-TUN-007"
RULES: Final = (
    RULE_VOLATILE_POOL,
    RULE_VOLATILE_LONG_LIVED,
)

# Writable, memory-backed or temporary locations (prefixes of the resolved path).
VOLATILE_DIRS: Final = ("/dev/shm/", "/tmp/", "/var/tmp/", "/run/shm/", "/dev/mqueue/")
DELETED: Final = " (deleted)"
MEMFD: Final = "/memfd:"


def exe_location(path: str | None) -> Signal | None:
    """A low signal for an executable run from a volatile place, else None.

    `path` is the resolved executable (/proc/PID/exe when it could be read, else the exec
    filename).  memfd and deleted files are "medium": nothing legitimate runs that way in
    a training job, and they are how fileless droppers hide.
    """
    if not path or not isinstance(path, str):
        return None
    if path.startswith(MEMFD):
        return _sig("process.memfd_exe", f"runs from a memfd: {path}", "medium")
    if path.endswith(DELETED):
        return _sig("process.deleted_exe", f"its executable was deleted: {path}", "medium")
    if path.startswith(VOLATILE_DIRS):
        return _sig("process.volatile_exe", f"runs from a temporary location: {path}", "low")
    return None


def pool_port_combination(where: Signal, dest: str, port: int) -> Signal:
    """The evidence of RLG-MIN-005: a volatile executable connecting to a pool port."""
    conf: Confidence = "high" if where.confidence == "medium" else "medium"
    return _sig("behaviour.volatile_pool_port", f"{where.detail}; connected to {dest}:{port}", conf)


def long_lived_combination(where: Signal, dest: str, port: int, held_s: float) -> Signal:
    """The evidence of RLG-TUN-007: a volatile executable holding an outside connection."""
    conf: Confidence = "high" if where.confidence == "medium" else "medium"
    return _sig(
        "behaviour.volatile_long_lived",
        f"{where.detail}; holds tcp {dest}:{port} for {held_s:.0f} s",
        conf,
    )


def _sig(name: str, detail: str, conf: Confidence) -> Signal:
    return Signal("behaviour" if name.startswith("behaviour") else "process", name,
                  bounded(detail), conf)  # fmt: skip
