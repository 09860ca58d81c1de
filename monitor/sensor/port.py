"""The sensor port: what the collector needs from the kernel side.

:class:`monitor.sensor.probes.Sensor` is the real one (bcc programs, ring buffer, maps);
tests/support/sensor.py has the one fake, for collector tests without a kernel.
"""

from __future__ import annotations

from typing import Any, Protocol

from monitor.sensor.probes import Counters, Fold


class SensorPort(Protocol):
    load_seconds: float
    gpu_devices: tuple[str, ...]

    def load(self) -> None:
        """Compile (or finish compiling), load and attach the programs."""

    def layouts(self) -> dict[str, type]:
        """Record type name -> the ctypes class of its layout (probes/rlguard.h)."""
        ...

    def drain(self) -> list[bytes]:
        """The records the ring holds now (at most DRAIN_MAX)."""
        ...

    def counters(self) -> Counters:
        """The kernel's sent/dropped/missed/quiet counts, summed over CPUs."""
        ...

    def seed_process(self, pid: int, ppid: int, tagset_id: int, origin: int) -> None: ...

    def seed_tagset(self, tagset_id: int, values: dict[int, str]) -> None: ...

    def kernel_tagset(self, tagset_id: int) -> tuple[int, bytes] | None:
        """(present mask, values blob) of a tagset the kernel still holds."""
        ...

    def folds(self) -> list[Fold]:
        """The live connect folds."""
        ...

    def retire_fold(self, key: Any) -> int | None: ...

    def gpu_fd_add(self, pid: int, fds: list[int]) -> None: ...

    def gpu_fd_remove(self, pid: int, fds: list[int], whole_process: bool = False) -> None: ...

    def attach_tls(self, path: str, kind: str) -> list[str]:
        """Attach the TLS plaintext uprobes of kind ("openssl", "gnutls") to a library file."""
        ...

    def close(self) -> None: ...
