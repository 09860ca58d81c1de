"""GPU holder table: who holds which GPU device, in which episode, since when.

Facts come from three places:

- the kernel: ``gpu_open`` (an open of a configured device path, with its fd)
  and ``gpu_close`` (close/close_range of such an fd) records; forks copy a
  holder's fds to the child, an exec ends the close-on-exec ones, an exit
  ends all of them (no record needed);
- a reconcile scan of ``/proc/PID/fd`` every ``gpu.reconcile_interval_s``: any
  fd on a character device whose number is that of a configured device
  node. It catches what the probe cannot see (relative or linked paths, a
  node made with mknod elsewhere, io_uring opens, fds passed over sockets,
  holdings from before start-up) and ends holdings the stream missed. It is
  the only place that reads /proc, never per event;
- NVML (monitor/state/gpu/nvml.py): per-process GPU memory and utilisation for
  the ``gpu_holders`` metric.

:class:`GpuHolders` keeps the table in step with the attributed stream; the GPU
rules that judge its facts are driven by monitor/detectors/gpu_driver.py.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from monitor.clock import boottime_ns
from monitor.config import GpuConfig
from monitor.sensor.events import (
    O_CLOEXEC,
    Event,
    ExecEvent,
    ExitEvent,
    ForkEvent,
    GpuCloseEvent,
    GpuOpenEvent,
)
from monitor.sensor.probes import device_numbers
from monitor.state.attributed import AttributedEvent
from monitor.state.cgroups import CgroupResolver, proc_cgroup_path
from monitor.state.gpu.nvml import Nvml
from monitor.state.process_table import Process, ProcessTable

MAX_HOLDERS_REPORTED = 256  # holder entries per gpu_holders record
CHANGE_METRIC_MIN_S = 1.0  # a change is reported at most this often


class GpuFdPort(Protocol):
    """The sensor's set of GPU fds, so that the kernel reports their close()."""

    def gpu_fd_add(self, pid: int, fds: list[int]) -> None: ...

    def gpu_fd_remove(self, pid: int, fds: list[int], whole_process: bool = False) -> None: ...


# --- the table ------------------------------------------------------------------------


@dataclass(slots=True)
class Holding:
    """One fd of one process on one GPU device."""

    pid: int
    fd: int
    entity_id: str
    device: str  # the configured device path (canonical name)
    path: str  # the node the process opened (differs for links and other nodes)
    since_ns: int  # CLOCK_BOOTTIME
    via: str  # openat, openat2, open, scan, fork
    cloexec: bool = False
    rdev: int | None = None
    episode_id: str | None = None
    worker_id: str | None = None


class HolderTable:
    """Holdings by pid and fd; pure bookkeeping, no I/O."""

    def __init__(self) -> None:
        self.by_pid: dict[int, dict[int, Holding]] = {}

    def __len__(self) -> int:
        return sum(len(v) for v in self.by_pid.values())

    def holdings(self) -> list[Holding]:
        return [h for fds in self.by_pid.values() for h in fds.values()]

    def of(self, pid: int) -> list[Holding]:
        return list(self.by_pid.get(pid, {}).values())

    def get(self, pid: int, fd: int) -> Holding | None:
        return self.by_pid.get(pid, {}).get(fd)

    def add(self, h: Holding) -> Holding | None:
        """Record a holding; returns the one it replaced on the same fd, if any."""
        fds = self.by_pid.setdefault(h.pid, {})
        prev = fds.get(h.fd)
        fds[h.fd] = h
        return prev

    def remove(self, pid: int, fd: int) -> Holding | None:
        fds = self.by_pid.get(pid)
        if not fds:
            return None
        h = fds.pop(fd, None)
        if not fds:
            del self.by_pid[pid]
        return h

    def remove_range(self, pid: int, first: int, last: int) -> list[Holding]:
        return [
            h
            for fd in [fd for fd in self.by_pid.get(pid, {}) if first <= fd <= last]
            if (h := self.remove(pid, fd)) is not None
        ]

    def remove_process(self, pid: int) -> list[Holding]:
        return list(self.by_pid.pop(pid, {}).values())

    def on_exec(self, pid: int) -> list[Holding]:
        """Close-on-exec fds end at exec."""
        return [
            h
            for fd, h0 in list(self.by_pid.get(pid, {}).items())
            if h0.cloexec and (h := self.remove(pid, fd)) is not None
        ]

    def copy_to_child(self, parent: int, child: int, entity_id: str, ts_ns: int) -> list[Holding]:
        """A fork copies the fd table: the child holds what the parent held."""
        out = []
        for h in self.of(parent):
            c = Holding(
                pid=child,
                fd=h.fd,
                entity_id=entity_id,
                device=h.device,
                path=h.path,
                since_ns=ts_ns,
                via="fork",
                cloexec=h.cloexec,
                rdev=h.rdev,
                episode_id=h.episode_id,
                worker_id=h.worker_id,
            )
            self.add(c)
            out.append(c)
        return out

    def devices_of(self, pid: int) -> list[str]:
        return sorted({h.device for h in self.of(pid)})

    def held_by_episode(self, episode_id: str) -> dict[int, list[Holding]]:
        """Holdings of processes attributed to ``episode_id``, by pid."""
        out: dict[int, list[Holding]] = {}
        for h in self.holdings():
            if h.episode_id == episode_id:
                out.setdefault(h.pid, []).append(h)
        return out


# --- device numbers and the /proc scan ---------------------------------------------------


def fmt_rdev(rdev: int | None) -> str | None:
    return None if rdev is None else f"{os.major(rdev)}:{os.minor(rdev)}"


@dataclass
class ScanResult:
    started_ns: int
    found: dict[tuple[int, int], tuple[int, str]] = field(default_factory=dict)  # -> rdev, link
    pids: set[int] = field(default_factory=set)
    fds_checked: int = 0
    truncated: bool = False
    seconds: float = 0.0


def fd_device(pid: int, fd: int) -> tuple[int, str] | None:
    """(rdev, link) when /proc/pid/fd/fd is a character device, else None."""
    base = f"/proc/{pid}/fd/{fd}"
    try:
        link = os.readlink(base)
        if not link.startswith("/"):
            return None  # socket:[..], pipe:[..], anon_inode:..
        st = os.stat(base)
    except OSError:
        return None
    if not stat.S_ISCHR(st.st_mode):
        return None
    return st.st_rdev, link


def scan_proc(rdevs: set[int], max_fds: int, skip: frozenset[int] = frozenset()) -> ScanResult:
    """Every fd on one of ``rdevs``, like fuser: readlink first, stat only paths."""
    res = ScanResult(started_ns=boottime_ns())
    t0 = time.monotonic()
    try:
        entries = [int(e) for e in os.listdir("/proc") if e.isdigit()]
    except OSError:
        entries = []
    for pid in entries:
        if pid in skip:
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue  # gone, or a kernel thread
        res.pids.add(pid)
        for name in fds:
            res.fds_checked += 1
            if res.fds_checked > max_fds:
                res.truncated = True
                break
            got = fd_device(pid, int(name))
            if got is not None and got[0] in rdevs:
                res.found[(pid, int(name))] = got
        if res.truncated:
            break
    res.seconds = time.monotonic() - t0
    return res


# --- the state keeper --------------------------------------------------------------------


class GpuHolders:
    """Keeps the holder table in step with the attributed stream and the /proc scan.

    The collector calls :meth:`apply` for every attributed event, :meth:`name_close` before
    a close line is rendered, :meth:`scan_now` / :meth:`reconcile` around a drain, and
    :meth:`snapshot_due` once per loop (the ``gpu_holders`` line).
    """

    def __init__(
        self,
        cfg: GpuConfig,
        table: ProcessTable,
        cgroups: CgroupResolver,
        sensor: GpuFdPort | None = None,
    ) -> None:
        self.cfg = cfg
        self.enabled = bool(cfg.devices)
        self.table = table
        self.cgroups = cgroups
        self.sensor = sensor
        self.holders = HolderTable()
        self.nvml = Nvml(cfg.nvml)
        self.rdevs: dict[int, str] = {}
        self.self_pid = os.getpid()
        self._changed = True
        self._last_metric = 0.0
        self._last_change_metric = 0.0
        self._last_scan = time.monotonic()
        self.last_scan: ScanResult | None = None
        self.scans = 0
        self.nvml_gpus: list[dict[str, Any]] = []
        self.nvml_procs: dict[tuple[int, int], dict[str, Any]] = {}

    # -- start / stop ----------------------------------------------------------------

    def start(self) -> list[Event]:
        """Resolve device numbers, start NVML, and scan once (holdings from before us)."""
        if not self.enabled:
            return []
        self.nvml.start()
        self.rdevs = device_numbers(self.cfg.devices)
        if not self.rdevs:
            return []
        return self.reconcile(self._scan(), at_start=True)

    def close(self) -> None:
        self.nvml.close()

    def reconfigure(self, cfg: GpuConfig) -> bool:
        """Apply a reloaded [gpu] section; True when the devices or probes changed (restart)."""
        devices_changed = (cfg.devices, cfg.probes) != (self.cfg.devices, self.cfg.probes)
        self.cfg = dataclasses.replace(cfg, devices=self.cfg.devices, probes=self.cfg.probes)
        return devices_changed

    def device_of(self, path: str, rdev: int | None) -> str:
        """The configured device a holding is on: by device number when known."""
        if rdev is not None and rdev in self.rdevs:
            return self.rdevs[rdev]
        return path

    # -- the stream ----------------------------------------------------------------------

    def apply(self, ae: AttributedEvent) -> Holding | None:
        """Update the table with one attributed event; returns a holding it opened."""
        ev, p = ae.event, ae.process
        if not self.enabled or ev.pid == self.self_pid or p is None:
            return None
        if isinstance(ev, GpuOpenEvent):
            return self._open(ev, p, ae)
        if isinstance(ev, GpuCloseEvent):
            if ev.is_range:
                gone = self.holders.remove_range(ev.pid, ev.fd, ev.last_fd)
                self._kernel_forget(ev.pid, [h.fd for h in gone])
            else:
                one = self.holders.remove(ev.pid, ev.fd)
                gone = [one] if one is not None else []
                if one is not None and ev.via == "scan":
                    self._kernel_forget(ev.pid, [ev.fd])
            self._changed |= bool(gone)
        elif isinstance(ev, ForkEvent):
            if ev.pid in self.holders.by_pid:
                got = self.holders.copy_to_child(ev.pid, p.pid, p.entity_id, ev.ts_ns)
                if got and self.sensor is not None:
                    self.sensor.gpu_fd_add(p.pid, [h.fd for h in got])
                self._changed = True
        elif isinstance(ev, ExecEvent):
            gone = self.holders.on_exec(ev.pid)
            if gone:
                self._kernel_forget(ev.pid, [h.fd for h in gone])
                self._changed = True
        elif isinstance(ev, ExitEvent):
            gone = self.holders.remove_process(ev.pid)
            if gone:
                self._kernel_forget(ev.pid, [h.fd for h in gone], whole=True)
                self._changed = True
        return None

    def name_close(self, ev: Event) -> None:
        """Name the node on a close line (the kernel record carries only the fd)."""
        if isinstance(ev, GpuCloseEvent) and not ev.path and not ev.is_range:
            h = self.holders.get(ev.pid, ev.fd)
            if h is not None:
                ev.path = h.path

    def _kernel_forget(self, pid: int, fds: list[int], whole: bool = False) -> None:
        if self.sensor is not None:
            self.sensor.gpu_fd_remove(pid, fds, whole_process=whole)

    def _open(self, ev: GpuOpenEvent, p: Process, ae: AttributedEvent) -> Holding | None:
        if ev.fd < 0:
            return None  # a failed open holds nothing (the line shows the attempt)
        h = Holding(
            pid=ev.pid,
            fd=ev.fd,
            entity_id=p.entity_id,
            device=self.device_of(ev.path, ev.rdev),
            path=ev.path,
            since_ns=ev.ts_ns,
            via=ev.via,
            cloexec=bool(ev.open_flags & O_CLOEXEC),
            rdev=ev.rdev,
            episode_id=ae.rl.episode_id,
            worker_id=ae.rl.worker_id,
        )
        self.holders.add(h)
        self._changed = True
        if ev.via.startswith("scan") and self.sensor is not None:
            self.sensor.gpu_fd_add(ev.pid, [ev.fd])  # so that its close() is seen
        return h

    # -- the reconcile scan ------------------------------------------------------------------

    def scan_due(self) -> bool:
        iv = self.cfg.reconcile_interval_s
        return self.enabled and iv > 0 and time.monotonic() - self._last_scan >= iv

    def scan_now(self) -> ScanResult | None:
        """Scan /proc when due; the caller drains the ring, then calls reconcile()."""
        if not self.scan_due():
            return None
        self.rdevs = device_numbers(self.cfg.devices)
        if not self.rdevs:
            self._last_scan = time.monotonic()
            return None  # no such device on this host: nothing to look for
        return self._scan()

    def _scan(self) -> ScanResult:
        self._last_scan = time.monotonic()
        self.scans += 1
        res = scan_proc(set(self.rdevs), self.cfg.max_scan_fds, frozenset({self.self_pid}))
        self.last_scan = res
        return res

    def reconcile(self, scan: ScanResult, at_start: bool = False) -> list[Event]:
        """Events that bring the table in line with a scan (after the ring was drained).

        Differences are checked again against /proc before they count, so that
        an open or close that happened during the scan is not undone.
        """
        out: list[Event] = []
        for (pid, fd), (rdev, link) in sorted(scan.found.items()):
            h = self.holders.get(pid, fd)
            if h is not None and (h.rdev is None or h.rdev == rdev):
                if h.rdev is None:
                    h.rdev = rdev
                continue
            again = fd_device(pid, fd)
            if again is None or again[0] != rdev:
                continue
            p = self.table.procs.get(pid)
            out.append(self._synthetic_open(pid, fd, rdev, link, p, at_start))
        for h in self.holders.holdings():
            if (h.pid, h.fd) in scan.found or h.since_ns >= scan.started_ns:
                continue
            if scan.truncated and h.pid not in scan.pids:
                continue  # not looked at: no verdict
            again = fd_device(h.pid, h.fd)
            if again is not None and again[0] in self.rdevs:
                continue
            if h.pid not in self.table.procs:
                # long gone (its exit was missed): drop it without a line, which would
                # need a stub process table entry
                self.holders.remove(h.pid, h.fd)
                self._kernel_forget(h.pid, [h.fd], whole=not self.holders.of(h.pid))
                self._changed = True
                continue
            out.append(self._synthetic_close(h))
        return out

    def _synthetic_open(
        self, pid: int, fd: int, rdev: int, link: str, p: Process | None, at_start: bool
    ) -> GpuOpenEvent:
        cg = proc_cgroup_path(pid) if self.cfg.allow_cgroups else None
        try:
            flags = _fdinfo_flags(pid, fd)
        except OSError:
            flags = 0
        return GpuOpenEvent(
            **_synthetic_header(pid, p, (self.cgroups.id_of(cg) or 0) if cg else 0),
            fd=fd,
            ret=0,
            open_flags=flags,
            path=link,
            # before start-up nothing could have been seen: not an evasion
            via="scan_at_start" if at_start else "scan",
            rdev=rdev,
        )

    def _synthetic_close(self, h: Holding) -> GpuCloseEvent:
        p = self.table.procs.get(h.pid)
        return GpuCloseEvent(
            **_synthetic_header(h.pid, p, 0),
            fd=h.fd,
            last_fd=h.fd,
            via="scan",
            path=h.path,
        )

    # -- the holders line ----------------------------------------------------------------------

    def snapshot_due(self) -> dict[str, Any] | None:
        """The table to report now (periodically, or soon after a change), else None."""
        if not self.enabled or (not self.rdevs and not self.holders.by_pid):
            return None  # no GPU device on this host: no empty tables every 10 s
        now = time.monotonic()
        periodic = now - self._last_metric >= self.cfg.metrics_interval_s
        on_change = self._changed and now - self._last_change_metric >= CHANGE_METRIC_MIN_S
        if not (periodic or on_change):
            return None
        if periodic:
            self._last_metric = now
            if self.nvml.present:
                self.nvml_gpus, self.nvml_procs = self.nvml.sample()
        self._last_change_metric = now
        self._changed = False
        return self.snapshot()

    def snapshot(self) -> dict[str, Any]:
        """The holder table, grouped by device then process, with NVML figures.

        ``since`` is the holding's start on the kernel clock (``since_ns``); the renderer
        adds the wall-clock form.
        """
        groups: dict[str, dict[int, list[Holding]]] = {}
        for h in self.holders.holdings():
            groups.setdefault(h.device, {}).setdefault(h.pid, []).append(h)
        devices = []
        shown = 0
        truncated = False
        nv_pids = {pid for (_m, pid) in self.nvml_procs}
        for device in sorted(groups):
            holders = []
            for pid, held in sorted(groups[device].items()):
                if shown >= MAX_HOLDERS_REPORTED:
                    truncated = True
                    break
                shown += 1
                p = self.table.procs.get(pid)
                first = min(held, key=lambda x: x.since_ns)
                entry: dict[str, Any] = {
                    "pid": pid,
                    "entity_id": first.entity_id,
                    "name": p.name if p else None,
                    "executable": p.executable if p else None,
                    "episode_id": first.episode_id,
                    "worker_id": first.worker_id,
                    "fds": sorted(h.fd for h in held),
                    "since_ns": first.since_ns,
                    "via": first.via,
                }
                if any(h.path != device for h in held):
                    entry["paths"] = sorted({h.path for h in held})
                nv = self._nvml_for(device, first.rdev, pid)
                if nv is not None:
                    entry["nvml"] = nv
                holders.append(entry)
            rdev = next((h.rdev for hs in groups[device].values() for h in hs if h.rdev), None)
            if rdev is None:
                rdev = next((r for r, path in self.rdevs.items() if path == device), None)
            devices.append({"device": device, "rdev": fmt_rdev(rdev), "holders": holders})
        nvml: dict[str, Any] = {"present": self.nvml.present}
        if self.nvml.error:
            nvml["error"] = self.nvml.error
        if self.nvml.present:
            nvml["gpus"] = self.nvml_gpus
            held_pids = set(self.holders.by_pid)
            nvml["unattributed_pids"] = sorted(nv_pids - held_pids)[:64]
        scan: dict[str, Any] = {"scans": self.scans, "interval_s": self.cfg.reconcile_interval_s}
        if self.last_scan is not None:
            scan.update(
                last_ms=round(self.last_scan.seconds * 1000, 2),
                fds_checked=self.last_scan.fds_checked,
                truncated=self.last_scan.truncated,
            )
        return {
            "devices": devices,
            "holders": len(self.holders.by_pid),
            "holdings": len(self.holders),
            "truncated": truncated,
            "nvml": nvml,
            "scan": scan,
        }

    def _nvml_for(self, device: str, rdev: int | None, pid: int) -> dict[str, Any] | None:
        if not self.nvml_procs:
            return None
        minor = os.minor(rdev) if rdev is not None else None
        if minor is None and device.startswith("/dev/nvidia") and device[11:].isdigit():
            minor = int(device[11:])
        if minor is not None and (minor, pid) in self.nvml_procs:
            return dict(self.nvml_procs[(minor, pid)])
        return None

    def stats(self) -> dict[str, Any]:
        """Small figures for the stats line and /metrics."""
        return {
            "holders": len(self.holders.by_pid),
            "holdings": len(self.holders),
            "devices": len({h.device for h in self.holders.holdings()}),
            "nvml_present": self.nvml.present,
            "scans": self.scans,
        }


def _fdinfo_flags(pid: int, fd: int) -> int:
    """The open flags of an fd (octal "flags:" line of /proc/PID/fdinfo/FD)."""
    with open(f"/proc/{pid}/fdinfo/{fd}") as fh:
        for line in fh:
            if line.startswith("flags:"):
                return int(line.split()[1], 8)
    return 0


def _synthetic_header(pid: int, p: Process | None, cgroup_id: int) -> dict[str, Any]:
    """Header fields for a record the scan made up (no kernel record behind it)."""
    return {
        "pid": pid,
        "tid": pid,
        "ppid": p.ppid if p else 0,
        "ts_ns": boottime_ns(),
        "cgroup_id": cgroup_id,
        "tagset_id": p.tagset_id if p else 0,
        "tag_origin": p.tag_origin if p else 0,
        "uid": (p.uid or 0) if p else 0,
        "gid": (p.gid or 0) if p else 0,
        "flags": 0,
        "comm": p.name if p else "",
    }
