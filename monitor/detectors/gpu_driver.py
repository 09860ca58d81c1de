"""Drives the GPU rules (monitor/detectors/gpu.py) from the holder table's facts.

- RLG-GPU-001 when a holding opens (:meth:`GpuRuleDriver.on_open`);
- RLG-GPU-002 when a mining or tunnel finding comes from a GPU holder, in either order
  (:meth:`escalate` for findings, :meth:`on_open` for a holder that alerted before);
- RLG-GPU-003 ``episode_end_grace_s`` after the registry ended an episode whose processes
  still hold a GPU (:meth:`on_episode_end` schedules, :meth:`tick` checks).

Subjects are attributed by the same path as event lines (monitor/state/attribution.py).
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import ClassVar

from monitor.clock import Clock, boottime_ns
from monitor.config import GpuConfig
from monitor.detectors import gpu as rules
from monitor.detectors.engine import DetectionEngine, Finding
from monitor.sensor.events import Event, GpuOpenEvent
from monitor.state.attributed import AttributedEvent, RlContext
from monitor.state.attribution import Attributor
from monitor.state.cgroups import CgroupResolver
from monitor.state.gpu.holders import GpuHolders, Holding
from monitor.state.process_table import Process

MAX_REMEMBERED_ALERTS = 4096


@dataclass(slots=True)
class EpisodeEnd(Event):
    """The registry's episode_end, as the trigger of RLG-GPU-003 for one process."""

    action: ClassVar[str] = "episode_end"
    episode_id: str = ""


class GpuRuleDriver:
    def __init__(
        self,
        cfg: GpuConfig,
        holders: GpuHolders,
        engine: DetectionEngine,
        attributor: Attributor,
        cgroups: CgroupResolver,
        clock: Clock,
    ) -> None:
        self.cfg = cfg
        self.clock = clock
        self.allow = rules.GpuAllowlist.from_config(cfg)
        self.holders = holders
        self.engine = engine
        self.attributor = attributor
        self.cgroups = cgroups
        # (due, episode, ts_ns) of registry episode ends
        self._pending_ends: deque[tuple[float, str, int]] = deque()
        # mining/tunnel alerts per entity: (rule id, category, severity, finding)
        self._alerts: OrderedDict[str, list[tuple[str, str, str, Finding]]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.holders.enabled

    def reconfigure(self, cfg: GpuConfig) -> None:
        self.cfg = cfg
        self.allow = rules.GpuAllowlist.from_config(cfg)

    def _subject(self, p: Process, rl: RlContext, cgroup_id: int = 0) -> rules.Subject:
        cg = self.cgroups.path(cgroup_id) if self.allow.cgroups and cgroup_id else None
        return rules.Subject(
            pid=p.pid,
            name=p.name,
            executable=p.executable,
            episode_id=rl.episode_id,
            worker_id=rl.worker_id,
            cgroup=cg,
        )

    # -- RLG-GPU-001 -----------------------------------------------------------------------

    def on_open(self, ae: AttributedEvent, h: Holding) -> list[Finding]:
        """A new holding: is its process allowed to hold a GPU in this episode?"""
        ev, p = ae.event, ae.process
        if p is None or not isinstance(ev, GpuOpenEvent):
            return []
        out: list[Finding] = []
        s = self._subject(p, ae.rl, ev.cgroup_id)
        parent = ae.parent
        parent_s = (
            self._subject(parent, self.attributor.context_of(parent, ev.ts_ns))
            if parent is not None
            else None
        )
        sigs = rules.open_signals(s, parent_s, ev.path, h.device, ev.via, self.allow)
        if sigs and not self.engine.iocs.is_allowed_process(p.executable):  # [allowlist]
            out += self.engine.report(
                rules.RULE_OPEN_IN_EPISODE,
                f"{p.entity_id}/{h.device}",
                sigs,
                ae,
                {"gpu": {"device": h.device, "path": ev.path, "fd": ev.fd, "via": ev.via}},
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
            sev = f.severity
            key = f.process.entity_id
            seen = self._alerts.setdefault(key, [])
            self._alerts.move_to_end(key)
            if len(seen) < 16:
                seen.append((f.rule.id, f.rule.category, sev, f))
            if len(self._alerts) > MAX_REMEMBERED_ALERTS:
                self._alerts.popitem(last=False)
            if self.holders.holders.of(f.process.pid):
                out += self._gpu002(f.rule.id, f.rule.category, sev, f, f.process)
        return out

    def _gpu002(
        self, rule_id: str, category: str, severity: str, f: Finding, p: Process
    ) -> list[Finding]:
        held = self.holders.holders.of(p.pid)
        if not held or held[0].entity_id != p.entity_id:
            return []
        devices = sorted({h.device for h in held})
        sig = rules.holder_alert_signal(rule_id, category, severity, devices)
        return self.engine.report(
            rules.RULE_HOLDER_ALERT,
            f"{p.entity_id}/{rule_id}",
            [sig, *f.signals[:8]],
            f.trigger,
            {
                "raises": {"rule": rule_id, "severity": severity, "subject": f.subject},
                "gpu": {"devices": devices, "fds": sorted(h.fd for h in held)},
            },
        )

    # -- RLG-GPU-003 -------------------------------------------------------------------------

    def on_episode_end(self, episode_id: str, ts_ns: int) -> None:
        """The registry ended an episode: check its GPU holders after the grace."""
        if self.enabled and episode_id:
            due = time.monotonic() + self.cfg.episode_end_grace_s
            self._pending_ends.append((due, episode_id, ts_ns))

    def tick(self) -> list[Finding]:
        """Findings of the episode-end checks now due."""
        findings: list[Finding] = []
        ends = self._pending_ends
        now = time.monotonic()
        while ends and ends[0][0] <= now:  # the grace is constant: due in order
            _, ep, ts = ends.popleft()
            findings += self.episode_ended(ep, ts)
        return findings

    def episode_ended(self, episode_id: str, ts_ns: int) -> list[Finding]:
        """RLG-GPU-003 for every process of ``episode_id`` that still holds a GPU."""
        out: list[Finding] = []
        now = boottime_ns()
        table = self.holders.table
        for pid, held in sorted(self.holders.holders.held_by_episode(episode_id).items()):
            p = table.procs.get(pid)
            if p is None or p.exited_ns is not None:
                continue
            trigger = EpisodeEnd(
                pid=p.pid,
                tid=p.pid,
                ppid=p.ppid,
                ts_ns=ts_ns - 1,  # the episode's last instant: its bindings still hold
                cgroup_id=p.cgroup_id,
                tagset_id=p.tagset_id,
                tag_origin=p.tag_origin,
                uid=p.uid or 0,
                gid=p.gid or 0,
                flags=0,
                comm=p.name,
                episode_id=episode_id,
            )
            ae = self.attributor.attribute(trigger, p)
            s = self._subject(p, ae.rl)
            allowed = rules.allowed_reason(s, self.allow) is not None
            devices = sorted({h.device for h in held})
            sig = rules.held_after_end_signal(
                s, episode_id, devices, allowed, max(0.0, (now - ts_ns) / 1e9)
            )
            out += self.engine.report(
                rules.RULE_HELD_AFTER_END,
                f"{p.entity_id}/{episode_id}",
                [sig],
                ae,
                {
                    "episode_end": {"episode_id": episode_id, "@timestamp": self.clock.iso(ts_ns)},
                    "gpu": {"devices": devices, "fds": sorted(h.fd for h in held)},
                },
            )
        return out
