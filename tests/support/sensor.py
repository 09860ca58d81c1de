"""The one fake sensor: the sensor port (monitor/sensor/port.py) with no kernel behind it.

Records handed to ``feed()`` come out of ``drain()``; counters, folds and the GPU fd set
are plain attributes a test can read and set.
"""

from __future__ import annotations

from typing import Any

from monitor.sensor.probes import Counters, Fold


class FakeSensor:
    def __init__(
        self,
        counters: Counters | None = None,
        layouts: dict[str, type] | None = None,
        gpu_devices: tuple[str, ...] = (),
    ) -> None:
        self.load_seconds = 0.0
        self.gpu_devices = gpu_devices
        self.loaded = False
        self.closed = False
        self.records: list[bytes] = []
        self.batches: list[list[bytes]] = []  # drained one per call, before ``records``
        self.drain_calls = 0
        self.counts = counters or Counters(sent={}, drops={}, misses={})
        self._layouts = layouts or {}
        self.fold_list: list[Fold] = []
        self.tagsets: dict[int, tuple[int, bytes]] = {}
        self.seeded_processes: list[tuple[int, int, int, int]] = []
        self.seeded_tagsets: dict[int, dict[int, str]] = {}
        self.gpu_fds: set[tuple[int, int]] = set()
        self.tls_attached: dict[str, str] = {}  # path -> kind

    # the sensor port ---------------------------------------------------------------------

    def load(self) -> None:
        self.loaded = True

    def layouts(self) -> dict[str, type]:
        return self._layouts

    def feed(self, *records: bytes) -> None:
        self.records.extend(records)

    def drain(self) -> list[bytes]:
        self.drain_calls += 1
        if self.batches:
            return self.batches.pop(0)
        out, self.records = self.records, []
        return out

    def counters(self) -> Counters:
        return self.counts

    def seed_process(self, pid: int, ppid: int, tagset_id: int, origin: int) -> None:
        self.seeded_processes.append((pid, ppid, tagset_id, origin))

    def seed_tagset(self, tagset_id: int, values: dict[int, str]) -> None:
        self.seeded_tagsets[tagset_id] = values

    def kernel_tagset(self, tagset_id: int) -> tuple[int, bytes] | None:
        return self.tagsets.get(tagset_id)

    def folds(self) -> list[Fold]:
        return list(self.fold_list)

    def retire_fold(self, key: Any) -> int | None:
        for f in self.fold_list:
            if f.key == key:
                self.fold_list.remove(f)
                return f.count
        return None

    def attach_tls(self, path: str, kind: str) -> list[str]:
        self.tls_attached[path] = kind
        return ["SSL_write"] if kind == "openssl" else ["gnutls_record_send"]

    def gpu_fd_add(self, pid: int, fds: list[int]) -> None:
        self.gpu_fds |= {(pid, fd) for fd in fds}

    def gpu_fd_remove(self, pid: int, fds: list[int], whole_process: bool = False) -> None:
        if whole_process:
            self.gpu_fds = {k for k in self.gpu_fds if k[0] != pid}
        self.gpu_fds -= {(pid, fd) for fd in fds}

    def close(self) -> None:
        self.closed = True
