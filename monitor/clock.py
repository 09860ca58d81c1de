"""One clock for every stage: kernel time (CLOCK_BOOTTIME ns) to wall time and ISO 8601.

Kernel records carry CLOCK_BOOTTIME, which keeps counting through suspend and never jumps;
lines carry UTC wall time.  The offset between the two is read once and re-read on
``resync()`` (the collector does it with every stats line), so an NTP step moves the
timestamps of later lines only.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone


def boottime_ns() -> int:
    """Now, on the clock of every kernel record."""
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


def _second(sec: int) -> str:
    return datetime.fromtimestamp(sec, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


def iso_wall(wall_ns: int) -> str:
    """UTC wall time in ns -> ``2026-12-07T22:05:07.123456Z`` (microseconds, as ECS)."""
    sec, rem = divmod(wall_ns, 1_000_000_000)
    return f"{_second(sec)}.{rem // 1000:06d}Z"


class Clock:
    """CLOCK_BOOTTIME ns -> wall-clock ns and ISO 8601."""

    def __init__(self) -> None:
        self.resync()

    def resync(self) -> None:
        self.offset_ns = time.time_ns() - boottime_ns()
        self._prefixes: dict[int, str] = {}

    def wall_ns(self, boot_ns: int) -> int:
        return boot_ns + self.offset_ns

    def iso(self, boot_ns: int) -> str:
        """A kernel timestamp as ISO 8601 UTC."""
        sec, rem = divmod(boot_ns + self.offset_ns, 1_000_000_000)
        prefix = self._prefixes.get(sec)
        if prefix is None:  # strftime once per distinct second, not per event
            if len(self._prefixes) > 4096:
                self._prefixes.clear()
            prefix = self._prefixes[sec] = _second(sec)
        return f"{prefix}.{rem // 1000:06d}Z"

    def now_wall_ns(self) -> int:
        """Now on the wall clock, as this clock stamps lines."""
        return boottime_ns() + self.offset_ns

    def now_iso(self) -> str:
        return self.iso(boottime_ns())
