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
- NVML (``nvidia-ml-py``, optional, imported lazily): per-process GPU memory
  and utilisation for the ``gpu_holders`` metric.

:class:`GpuMonitor` turns them into documents and findings; the rules
themselves are pure functions in :mod:`monitor.detectors.gpu`.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from monitor.config import GpuConfig
from monitor.detectors import gpu as rules
from monitor.detectors.engine import DetectionEngine, Finding
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
from monitor.state.cgroups import CgroupResolver, proc_cgroup_path
from monitor.state.process_table import Process, ProcessTable, boottime_ns

MAX_HOLDERS_REPORTED = 256  # holder entries per gpu_holders record
CHANGE_METRIC_MIN_S = 1.0  # a change is reported at most this often
MAX_REMEMBERED_ALERTS = 4096


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


# --- NVML --------------------------------------------------------------------------------


class Nvml:
    """Per-process GPU memory and utilisation through NVML, when nvidia-ml-py loads."""

    def __init__(self, mode: str = "auto") -> None:
        self.mode = mode
        self.present = False
        self.error: str | None = None
        self._nv: Any = None
        self._last_ts: dict[int, int] = {}

    def start(self) -> None:
        if self.mode == "off":
            self.error = "off in the config ([gpu] nvml)"
            return
        try:
            import pynvml  # nvidia-ml-py, the optional "gpu" extra
        except ImportError:
            self.error = "nvidia-ml-py is not installed (pip install 'rlguard[gpu]')"
            return
        try:
            pynvml.nvmlInit()
        except Exception as exc:  # NVMLError: no driver, no GPU
            self.error = f"NVML did not initialise: {exc}"
            return
        self._nv = pynvml
        self.present = True

    def close(self) -> None:
        if self._nv is not None:
            try:
                self._nv.nvmlShutdown()
            except Exception:
                pass
            self._nv = None
            self.present = False

    def sample(self) -> tuple[list[dict[str, Any]], dict[tuple[int, int], dict[str, Any]]]:
        """(per-GPU figures, {(minor, pid): {memory_bytes, sm_util, mem_util}})."""
        nv = self._nv
        if nv is None:
            return [], {}
        gpus: list[dict[str, Any]] = []
        procs: dict[tuple[int, int], dict[str, Any]] = {}
        try:
            count = nv.nvmlDeviceGetCount()
        except Exception as exc:
            self.error = f"nvmlDeviceGetCount: {exc}"
            return [], {}
        for i in range(count):
            try:
                h = nv.nvmlDeviceGetHandleByIndex(i)
                minor = int(nv.nvmlDeviceGetMinorNumber(h))
                mem = nv.nvmlDeviceGetMemoryInfo(h)
                util = nv.nvmlDeviceGetUtilizationRates(h)
                name = nv.nvmlDeviceGetName(h)
            except Exception as exc:
                self.error = f"GPU {i}: {exc}"
                continue
            gpus.append(
                {
                    "index": i,
                    "minor": minor,
                    "name": name.decode() if isinstance(name, bytes) else str(name),
                    "memory_used_bytes": int(mem.used),
                    "memory_total_bytes": int(mem.total),
                    "util_percent": int(util.gpu),
                }
            )
            running: list[Any] = []
            for fn in (
                "nvmlDeviceGetComputeRunningProcesses",
                "nvmlDeviceGetGraphicsRunningProcesses",
            ):
                try:
                    running += list(getattr(nv, fn)(h))
                except Exception:
                    pass
            for p in running:
                used = getattr(p, "usedGpuMemory", None)
                entry = procs.setdefault((minor, int(p.pid)), {"memory_bytes": 0})
                if isinstance(used, int):
                    entry["memory_bytes"] += used
            try:
                samples = nv.nvmlDeviceGetProcessUtilization(h, self._last_ts.get(i, 0))
            except Exception:
                samples = []
            for s in samples:
                entry = procs.setdefault((minor, int(s.pid)), {"memory_bytes": None})
                entry["sm_util"] = int(s.smUtil)
                entry["mem_util"] = int(s.memUtil)
                self._last_ts[i] = max(self._last_ts.get(i, 0), int(s.timeStamp))
        return gpus, procs


def nvml_status(mode: str = "auto") -> tuple[bool, str]:
    """(present, detail) for `rlguard check`: is NVML usable here?"""
    n = Nvml(mode)
    n.start()
    if not n.present:
        return False, n.error or "absent"
    try:
        count = n._nv.nvmlDeviceGetCount()
        version = n._nv.nvmlSystemGetDriverVersion()
        if isinstance(version, bytes):
            version = version.decode()
        return True, f"NVML present: driver {version}, {count} GPU(s)"
    except Exception as exc:
        return True, f"NVML present ({exc})"
    finally:
        n.close()


# --- the monitor -------------------------------------------------------------------------


@dataclass(slots=True)
class EpisodeEnd(Event):
    """An episode_end record of the episode registry, as the trigger of RLG-GPU-003."""

    action: ClassVar[str] = "episode_end"
    episode_id: str = ""


DocBase = Callable[[str, str], dict[str, Any]]


class GpuMonitor:
    """Keeps the holder table in step with the stream and raises the GPU rules.

    The collector calls :meth:`observe` for every event (after the detection
    engine), :meth:`escalate` with the engine's findings, :meth:`on_document`
    for every document it writes (episode records), :meth:`scan_now` /
    :meth:`reconcile` around a drain, and :meth:`tick` once per loop.
    """

    def __init__(
        self,
        cfg: GpuConfig,
        table: ProcessTable,
        engine: DetectionEngine,
        base: DocBase,
        iso: Callable[[int], str],
        sensor: Any = None,
        cgroups: CgroupResolver | None = None,
    ) -> None:
        self.cfg = cfg
        self.enabled = bool(cfg.devices)
        self.table = table
        self.engine = engine
        self.base = base
        self.iso = iso
        self.sensor = sensor
        self.allow = rules.GpuAllowlist.from_config(cfg)
        self.holders = HolderTable()
        self.cgroups = cgroups if cgroups is not None else CgroupResolver()
        self.nvml = Nvml(cfg.nvml)
        self.rdevs: dict[int, str] = {}
        self.self_pid = os.getpid()
        self._changed = True
        self._last_metric = 0.0
        self._last_change_metric = 0.0
        self._last_scan = time.monotonic()
        self.last_scan: ScanResult | None = None
        self.scans = 0
        # (due, episode, ts_ns); appended by on_document, maybe from another thread
        self._pending_ends: deque[tuple[float, str, int]] = deque()
        # mining/tunnel alerts per entity: (rule id, category, severity, finding)
        self._alerts: OrderedDict[str, list[tuple[str, str, str, Finding]]] = OrderedDict()
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
        self.allow = rules.GpuAllowlist.from_config(self.cfg)
        return devices_changed

    # -- attribution helpers -----------------------------------------------------------

    def _subject(self, p: Process, cgroup_id: int = 0) -> rules.Subject:
        rl = self.table.rl_block(p, p.tagset_id, p.tag_origin)
        cg = self.cgroups.path(cgroup_id) if self.allow.cgroups and cgroup_id else None
        return rules.Subject(
            pid=p.pid,
            name=p.name,
            executable=p.executable,
            episode_id=rl.get("episode_id"),
            worker_id=rl.get("worker_id"),
            cgroup=cg,
        )

    def device_of(self, path: str, rdev: int | None) -> str:
        """The configured device a holding is on: by device number when known."""
        if rdev is not None and rdev in self.rdevs:
            return self.rdevs[rdev]
        return path

    # -- the stream ----------------------------------------------------------------------

    def observe(self, ev: Event, p: Process, doc: dict[str, Any] | None) -> list[Finding]:
        """Update the table with one attributed event; returns GPU findings."""
        if not self.enabled or ev.pid == self.self_pid:
            return []
        if isinstance(ev, GpuOpenEvent):
            return self._open(ev, p, doc or {})
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
            return []
        if isinstance(ev, ForkEvent):
            child = self.table.procs.get(ev.child_pid)
            if child is not None and ev.pid in self.holders.by_pid:
                got = self.holders.copy_to_child(ev.pid, child.pid, child.entity_id, ev.ts_ns)
                if got and self.sensor is not None:
                    self.sensor.gpu_fd_add(child.pid, [h.fd for h in got])
                self._changed = True
            return []
        if isinstance(ev, ExecEvent):
            gone = self.holders.on_exec(ev.pid)
            if gone:
                self._kernel_forget(ev.pid, [h.fd for h in gone])
                self._changed = True
            return []
        if isinstance(ev, ExitEvent):
            gone = self.holders.remove_process(ev.pid)
            if gone:
                self._kernel_forget(ev.pid, [h.fd for h in gone], whole=True)
                self._changed = True
            return []
        return []

    def before_render(self, ev: Event) -> None:
        """Name the node on a close line (the kernel record carries only the fd)."""
        if isinstance(ev, GpuCloseEvent) and not ev.path and not ev.is_range:
            h = self.holders.get(ev.pid, ev.fd)
            if h is not None:
                ev.path = h.path

    def _kernel_forget(self, pid: int, fds: list[int], whole: bool = False) -> None:
        if self.sensor is not None:
            self.sensor.gpu_fd_remove(pid, fds, whole_process=whole)

    def _open(self, ev: GpuOpenEvent, p: Process, doc: dict[str, Any]) -> list[Finding]:
        if ev.fd < 0:
            return []  # a failed open holds nothing (the line shows the attempt)
        rl = doc.get("rl") or self.table.rl_block(p, p.tagset_id, p.tag_origin)
        device = self.device_of(ev.path, ev.rdev)
        h = Holding(
            pid=ev.pid,
            fd=ev.fd,
            entity_id=p.entity_id,
            device=device,
            path=ev.path,
            since_ns=ev.ts_ns,
            via=ev.via,
            cloexec=bool(ev.open_flags & O_CLOEXEC),
            rdev=ev.rdev,
            episode_id=rl.get("episode_id"),
            worker_id=rl.get("worker_id"),
        )
        self.holders.add(h)
        self._changed = True
        if ev.via.startswith("scan") and self.sensor is not None:
            self.sensor.gpu_fd_add(ev.pid, [ev.fd])  # so that its close() is seen
        out: list[Finding] = []
        s = self._subject(p, ev.cgroup_id)
        parent_p = self.table.procs.get(p.ppid)
        parent = self._subject(parent_p) if parent_p is not None else None
        sigs = rules.open_signals(s, parent, ev.path, device, ev.via, self.allow)
        if sigs and not self.engine.iocs.is_allowed_process(p.executable):  # [allowlist]
            out += self.engine.report(
                rules.RULE_OPEN_IN_EPISODE,
                f"{p.entity_id}/{device}",
                sigs,
                ev,
                p,
                doc,
                {"gpu": {"device": device, "path": ev.path, "fd": ev.fd, "via": ev.via}},
            )
        # a process that already raised a mining or tunnel alert now holds a GPU
        for rule_id, category, severity, f in list(self._alerts.get(p.entity_id, [])):
            out += self._gpu002(rule_id, category, severity, f, p)
        return out

    # -- RLG-GPU-002 -------------------------------------------------------------------------

    def escalate(self, findings: list[Finding]) -> list[Finding]:
        """Findings of mining or tunnel rules whose process holds a GPU -> RLG-GPU-002."""
        if not self.enabled:
            return []
        out: list[Finding] = []
        for f in findings:
            if not rules.escalates(f.rule.category):
                continue
            sev = f.rule.severity(f.signals)
            key = f.process.entity_id
            seen = self._alerts.setdefault(key, [])
            self._alerts.move_to_end(key)
            if len(seen) < 16:
                seen.append((f.rule.id, f.rule.category, sev, f))
            if len(self._alerts) > MAX_REMEMBERED_ALERTS:
                self._alerts.popitem(last=False)
            if self.holders.of(f.process.pid):
                out += self._gpu002(f.rule.id, f.rule.category, sev, f, f.process)
        return out

    def _gpu002(
        self, rule_id: str, category: str, severity: str, f: Finding, p: Process
    ) -> list[Finding]:
        held = self.holders.of(p.pid)
        if not held or held[0].entity_id != p.entity_id:
            return []
        devices = sorted({h.device for h in held})
        sig = rules.holder_alert_signal(rule_id, category, severity, devices)
        return self.engine.report(
            rules.RULE_HOLDER_ALERT,
            f"{p.entity_id}/{rule_id}",
            [sig, *f.signals[:8]],
            f.event,
            p,
            f.doc,
            {
                "raises": {"rule": rule_id, "severity": severity, "subject": f.subject},
                "gpu": {"devices": devices, "fds": sorted(h.fd for h in held)},
            },
        )

    # -- RLG-GPU-003 -------------------------------------------------------------------------

    def on_document(self, doc: dict[str, Any]) -> None:
        """The one hook for the episode registry: an episode_end record schedules the check."""
        ev = doc.get("event")
        if not isinstance(ev, dict) or ev.get("dataset") != "rlguard.episode":
            return
        if ev.get("action") != "episode_end" or not self.enabled:
            return
        rl = doc.get("rl")
        ep = rl.get("episode_id") if isinstance(rl, dict) else None
        if isinstance(ep, str) and ep:
            due = time.monotonic() + self.cfg.episode_end_grace_s
            self._pending_ends.append((due, ep, boottime_ns()))

    def episode_ended(self, episode_id: str, ts_ns: int) -> list[Finding]:
        """RLG-GPU-003 for every process of ``episode_id`` that still holds a GPU."""
        out: list[Finding] = []
        now = boottime_ns()
        for pid, held in sorted(self.holders.held_by_episode(episode_id).items()):
            p = self.table.procs.get(pid)
            if p is None or p.exited_ns is not None:
                continue
            s = self._subject(p)
            allowed = rules.allowed_reason(s, self.allow) is not None
            devices = sorted({h.device for h in held})
            sig = rules.held_after_end_signal(
                s, episode_id, devices, allowed, max(0.0, (now - ts_ns) / 1e9)
            )
            trigger = EpisodeEnd(
                pid=p.pid,
                tid=p.pid,
                ppid=p.ppid,
                ts_ns=ts_ns,
                cgroup_id=0,
                tagset_id=p.tagset_id,
                tag_origin=p.tag_origin,
                uid=p.uid or 0,
                gid=p.gid or 0,
                flags=0,
                comm=p.name,
                episode_id=episode_id,
            )
            doc = self._process_doc(p)
            out += self.engine.report(
                rules.RULE_HELD_AFTER_END,
                f"{p.entity_id}/{episode_id}",
                [sig],
                trigger,
                p,
                doc,
                {
                    "episode_end": {"episode_id": episode_id, "@timestamp": self.iso(ts_ns)},
                    "gpu": {"devices": devices, "fds": sorted(h.fd for h in held)},
                },
            )
        return out

    def _process_doc(self, p: Process) -> dict[str, Any]:
        lineage = self.table.lineage(p)
        rl = dict(self.table.rl_block(p, p.tagset_id, p.tag_origin, lineage))
        rl["lineage"] = [{"pid": a.pid, "name": a.name, "entity_id": a.entity_id} for a in lineage]
        parent = self.table.procs.get(p.ppid)
        return {
            "@timestamp": self.iso(boottime_ns()),
            "process": {
                "pid": p.pid,
                "entity_id": p.entity_id,
                "name": p.name,
                "executable": p.executable,
                "args": p.args,
                "parent": {
                    "pid": p.ppid,
                    "entity_id": parent.entity_id if parent else p.parent_entity_id,
                    "name": parent.name if parent else None,
                },
            },
            "rl": rl,
        }

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
        cg = proc_cgroup_path(pid) if self.allow.cgroups else None
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

    # -- periodic work -----------------------------------------------------------------------

    def tick(self) -> tuple[list[dict[str, Any]], list[Finding]]:
        """Due episode-end checks and the gpu_holders metric; (documents, findings)."""
        if not self.enabled:
            return [], []
        now = time.monotonic()
        findings: list[Finding] = []
        ends = self._pending_ends
        while ends and ends[0][0] <= now:  # the grace is constant: due in order
            _, ep, ts = ends.popleft()
            findings += self.episode_ended(ep, ts)
        docs: list[dict[str, Any]] = []
        if not self.rdevs and not self.holders.by_pid:
            return docs, findings  # no GPU device on this host: no empty tables every 10 s
        periodic = now - self._last_metric >= self.cfg.metrics_interval_s
        on_change = self._changed and now - self._last_change_metric >= CHANGE_METRIC_MIN_S
        if periodic or on_change:
            if periodic:
                self._last_metric = now
                if self.nvml.present:
                    self.nvml_gpus, self.nvml_procs = self.nvml.sample()
            self._last_change_metric = now
            self._changed = False
            docs.append(self.holders_doc())
        return docs, findings

    def snapshot(self) -> dict[str, Any]:
        """The holder table, grouped by device then process, with NVML figures."""
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
                    "since": self.iso(first.since_ns),
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

    def holders_doc(self) -> dict[str, Any]:
        doc = self.base("rlguard.gpu", "gpu_holders")
        doc["rlguard"] = {"gpu": self.snapshot()}
        return doc

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
