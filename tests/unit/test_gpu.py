"""GPU holder table and the GPU rules, driven by typed events (no kernel, no GPU)."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any

import pytest

from monitor.clock import Clock
from monitor.config import GPU_MAX_PATTERNS, GPU_PATTERN_LEN, ConfigError, load_config, parse_config
from monitor.detectors import gpu as rules
from monitor.detectors.engine import DetectionEngine, Finding
from monitor.detectors.gpu_driver import GpuRuleDriver
from monitor.detectors.iocs import build_iocs
from monitor.detectors.rules import load_rules
from monitor.detectors.signals import Signal
from monitor.sensor.events import (
    O_CLOEXEC,
    ExecEvent,
    ExitEvent,
    ForkEvent,
    GpuCloseEvent,
    GpuOpenEvent,
    TagsetEvent,
)
from monitor.sensor.probes import gpu_probe_patterns
from monitor.sinks.ecs import Renderer
from monitor.state.attribution import Attributor
from monitor.state.cgroups import CgroupResolver
from monitor.state.gpu import GpuHolders, HolderTable, Holding, Nvml, ScanResult
from monitor.state.process_table import ProcessTable
from tests.support.events import hdr
from tests.support.sensor import FakeSensor

pytestmark = pytest.mark.unit

CFG = load_config(None)
KEYS = list(CFG.tags.keys)
DEV = "/dev/nvidia0"
RULES = load_rules()
HEADER = (Path(__file__).resolve().parents[2] / "probes" / "rlguard.h").read_text()


def c_define(name: str) -> int:
    m = re.search(rf"#define {name} (\d+)", HEADER)
    assert m, name
    return int(m.group(1))


def test_constants_match_kernel_header() -> None:
    assert c_define("RLG_GPU_MAX_PATTERNS") == GPU_MAX_PATTERNS
    assert c_define("RLG_GPU_PATTERN_LEN") == GPU_PATTERN_LEN
    assert O_CLOEXEC == os.O_CLOEXEC


# --- config ---------------------------------------------------------------------------


def test_gpu_config_defaults_and_validation() -> None:
    assert "/dev/nvidia*" in CFG.gpu.devices and "/dev/kfd" in CFG.gpu.devices
    assert CFG.gpu.allow_helpers == ("*/nvidia-smi",)
    ok = parse_config('[gpu]\ndevices = ["/tmp/x/nvidia*", "/dev/kfd"]\nallow_workers = ["tr-*"]')
    assert ok.gpu.devices == ("/tmp/x/nvidia*", "/dev/kfd")
    for bad, key in (
        ('devices = ["dev/nvidia0"]', "gpu.devices[0]"),
        ('devices = ["/dev/nv*idia"]', "gpu.devices[0]"),
        ('devices = ["/dev/nvidia[0-3]"]', "gpu.devices[0]"),
        (f'devices = ["/{"x" * 63}"]', "gpu.devices[0]"),
        ("reconcile_interval_s = -1", "gpu.reconcile_interval_s"),
        ('nvml = "yes"', "gpu.nvml"),
        ("devices = [{}]".format(", ".join(f'"/dev/g{i}"' for i in range(17))), "gpu.devices"),
    ):
        with pytest.raises(ConfigError) as err:
            parse_config(f"[gpu]\n{bad}\n")
        assert err.value.key == key, bad
    assert parse_config("[gpu]\ndevices = []\n").gpu.devices == ()


# --- the pure rules -----------------------------------------------------------------------


ALLOW = rules.GpuAllowlist(
    executables=("/opt/trainer/bin/*",),
    helpers=("*/nvidia-smi",),
    cgroups=("/system.slice/trainer.service",),
    workers=("learner-*",),
)


def subj(exe: str, episode: str | None = "ep-1", **kw: Any) -> rules.Subject:
    return rules.Subject(
        pid=10, name=exe.rsplit("/", 1)[-1], executable=exe, episode_id=episode, **kw
    )


def test_open_in_episode_by_an_agent_child_is_medium() -> None:
    sigs = rules.open_signals(subj("/usr/bin/python3"), None, DEV, DEV, "openat", ALLOW)
    assert [s.name for s in sigs] == ["gpu.open_in_episode"]
    assert RULES["RLG-GPU-001"].severity(sigs) == "medium"


def test_no_episode_no_finding() -> None:
    assert rules.open_signals(subj("/usr/bin/python3", None), None, DEV, DEV, "openat", ALLOW) == []


@pytest.mark.parametrize(
    "s",
    [
        subj("/opt/trainer/bin/python"),
        subj("/usr/bin/python3", cgroup="/system.slice/trainer.service"),
        subj("/usr/bin/python3", worker_id="learner-0"),
    ],
    ids=["executable", "cgroup", "worker"],
)
def test_allowed_trainer_is_quiet(s: rules.Subject) -> None:
    assert rules.allowed_reason(s, ALLOW)
    assert rules.open_signals(s, None, DEV, DEV, "openat", ALLOW) == []


def test_nvidia_smi_quiet_under_the_trainer_low_under_an_agent() -> None:
    smi = subj("/usr/bin/nvidia-smi")
    trainer = subj("/opt/trainer/bin/python")
    agent = subj("/bin/sh")
    assert rules.open_signals(smi, trainer, DEV, DEV, "openat", ALLOW) == []
    sigs = rules.open_signals(smi, agent, DEV, DEV, "openat", ALLOW)
    assert [s.name for s in sigs] == ["gpu.helper_in_episode"]
    assert RULES["RLG-GPU-001"].severity(sigs) == "low"


def test_evasion_evidence_is_high() -> None:
    agent = subj("/usr/bin/python3")
    scan = rules.open_signals(agent, None, DEV, DEV, "scan", ALLOW)
    assert {s.name for s in scan} == {"gpu.open_in_episode", "gpu.open_not_seen"}
    assert RULES["RLG-GPU-001"].severity(scan) == "high"
    other = rules.open_signals(agent, None, "/tmp/x/mine", DEV, "scan", ALLOW)
    assert "gpu.other_node" in {s.name for s in other}
    # inherited at fork: the parent opened it
    assert rules.open_signals(agent, None, DEV, DEV, "fork", ALLOW) == []
    # present before rlguard started: reported, but not as an evasion
    start = rules.open_signals(agent, None, DEV, DEV, "scan_at_start", ALLOW)
    assert [s.name for s in start] == ["gpu.open_in_episode"]


@pytest.mark.parametrize(
    "alert,raised",
    [("low", "medium"), ("medium", "high"), ("high", "critical"), ("critical", "critical")],
)
def test_gpu_holder_raises_the_alert_severity_one_step(alert: str, raised: str) -> None:
    sig = rules.holder_alert_signal("RLG-MIN-001", "mining", alert, [DEV])
    assert RULES["RLG-GPU-002"].severity([sig]) == raised
    assert rules.escalates("mining") and rules.escalates("tunnel") and not rules.escalates("gpu")


def test_held_after_end_signal() -> None:
    s = subj("/usr/bin/python3")
    assert rules.held_after_end_signal(s, "ep-1", [DEV], False, 3.0).confidence == "high"
    assert rules.held_after_end_signal(s, "ep-1", [DEV], True, 3.0).confidence == "medium"


# --- the holder table -----------------------------------------------------------------------


def holding(pid: int, fd: int, cloexec: bool = False, episode: str | None = "ep-1") -> Holding:
    return Holding(pid, fd, f"e{pid}", DEV, DEV, 1, "openat", cloexec, None, episode)


def test_holder_table_bookkeeping() -> None:
    t = HolderTable()
    t.add(holding(1, 3))
    t.add(holding(1, 4, cloexec=True))
    t.add(holding(1, 9))
    t.add(holding(2, 3, episode="ep-2"))
    assert len(t) == 4 and t.devices_of(1) == [DEV]
    assert [h.fd for h in t.on_exec(1)] == [4]
    child = t.copy_to_child(1, 5, "e5", 7)
    assert {(h.fd, h.via, h.since_ns) for h in child} == {(3, "fork", 7), (9, "fork", 7)}
    assert [h.fd for h in t.remove_range(1, 5, 100)] == [9]
    assert t.remove(1, 3) is not None and t.remove(1, 3) is None and 1 not in t.by_pid
    assert sorted(t.held_by_episode("ep-1")) == [5]
    assert len(t.remove_process(5)) == 2 and sorted(t.by_pid) == [2]


# --- the monitor, as the collector drives it ------------------------------------------------


class GpuFacade:
    """The holder state and the GPU rule driver, driven as the collector drives them."""

    def __init__(self, holders: GpuHolders, rules_: GpuRuleDriver, renderer: Renderer) -> None:
        self.state = holders
        self.rules = rules_
        self.renderer = renderer
        self.holders = holders.holders

    @property
    def cfg(self) -> Any:
        return self.state.cfg

    def observe(self, ae: Any) -> list[Finding]:
        held = self.state.apply(ae)
        return self.rules.on_open(ae, held) if held is not None else []

    def escalate(self, findings: list[Finding]) -> list[Finding]:
        return self.rules.escalate(findings)

    def episode_ended(self, episode_id: str, ts_ns: int) -> list[Finding]:
        return self.rules.episode_ended(episode_id, ts_ns)

    def tick(self) -> tuple[list[dict[str, Any]], list[Finding]]:
        snap = self.state.snapshot_due()
        docs = [self.renderer.render_gpu_holders(snap)] if snap is not None else []
        return docs, self.rules.tick()

    def reconcile(self, scan: ScanResult) -> list[Any]:
        return self.state.reconcile(scan)

    def snapshot(self) -> dict[str, Any]:
        return self.state.snapshot()

    def stats(self) -> dict[str, Any]:
        return self.state.stats()

    def reconfigure(self, cfg: Any) -> bool:
        restart = self.state.reconfigure(cfg)
        self.rules.reconfigure(self.state.cfg)
        return restart


class World:
    def __init__(self, **gpu: Any) -> None:
        cfg = dataclasses.replace(
            CFG.gpu,
            devices=(DEV,),
            allow_executables=("/opt/trainer/bin/*",),
            episode_end_grace_s=0.0,
            nvml="off",
            **gpu,
        )
        self.table = ProcessTable(CFG.tags, boot_id="b")
        self.engine = DetectionEngine(
            build_iocs(CFG.detectors, CFG.allowlist), read_file=lambda p, f: None
        )
        self.sensor = FakeSensor()
        self.docs: list[dict[str, Any]] = []
        self.att = Attributor(self.table, CFG.attribution)
        cgroups = CgroupResolver()
        state = GpuHolders(cfg, self.table, cgroups, self.sensor)
        state.rdevs = {os.makedev(195, 0): DEV}
        clock = Clock()
        self.renderer = Renderer(self.table, clock)
        driver = GpuRuleDriver(cfg, state, self.engine, self.att, cgroups, clock)
        self.gpu = GpuFacade(state, driver, self.renderer)
        self._tagset = 1000

    def exec(self, pid: int, exe: str, ppid: int = 1, episode: str | None = None) -> None:
        tagset = origin = 0
        if episode is not None:
            self._tagset += 1
            tagset, origin = self._tagset, pid
            vals: list[str | None] = [episode if k == "RL_EPISODE_ID" else None for k in KEYS]
            self.table.on_tagset(
                TagsetEvent(
                    **hdr(pid, tagset=tagset, origin=pid),
                    id=tagset,
                    present_mask=1,
                    own_mask=1,
                    truncated_mask=0,
                    values=vals,
                )
            )
        elif ppid in self.table.procs:
            parent = self.table.procs[ppid]
            tagset, origin = parent.tagset_id, parent.tag_origin
        ev = ExecEvent(**hdr(pid, ppid, tagset=tagset, origin=origin, comm=exe[-15:]), filename=exe)
        self.gpu.observe(self.att.attribute(ev, self.table.on_exec(ev)))

    def fork(self, parent: int, child: int) -> None:
        p = self.table.procs[parent]
        ev = ForkEvent(**hdr(parent, tagset=p.tagset_id, origin=p.tag_origin), child_pid=child)
        self.gpu.observe(self.att.attribute(ev, self.table.on_fork(ev)))

    def open(self, pid: int, fd: int, path: str = DEV, flags: int = 0) -> list[Finding]:
        p = self.table.procs[pid]
        ev = GpuOpenEvent(
            **hdr(pid, p.ppid, tagset=p.tagset_id, origin=p.tag_origin),
            fd=fd,
            open_flags=flags,
            path=path,
        )
        return self.gpu.observe(self.att.attribute(ev, self.table.process_for(ev)))

    def close(self, pid: int, fd: int) -> None:
        ev = GpuCloseEvent(**hdr(pid), fd=fd, last_fd=fd)
        self.gpu.state.name_close(ev)
        assert ev.path == DEV
        self.gpu.observe(self.att.attribute(ev, self.table.process_for(ev)))

    def exit(self, pid: int) -> None:
        ev = ExitEvent(**hdr(pid))
        self.gpu.observe(self.att.attribute(ev, self.table.on_exit(ev)))


def test_open_close_exit_and_the_kernel_fd_set() -> None:
    w = World()
    w.exec(100, "/opt/trainer/bin/python", episode="ep-7")
    assert w.open(100, 5) == []  # the allowed trainer
    w.open(100, 6)
    holders = w.gpu.snapshot()["devices"][0]["holders"]
    assert holders[0]["pid"] == 100 and holders[0]["episode_id"] == "ep-7"
    assert holders[0]["fds"] == [5, 6]
    w.close(100, 5)
    assert [h.fd for h in w.gpu.holders.of(100)] == [6]
    w.fork(100, 101)
    assert [h.fd for h in w.gpu.holders.of(101)] == [6] and (101, 6) in w.sensor.gpu_fds
    w.exit(101)
    assert w.gpu.holders.of(101) == [] and (101, 6) not in w.sensor.gpu_fds
    w.exit(100)
    assert len(w.gpu.holders) == 0
    assert w.gpu.snapshot()["devices"] == []


def test_agent_child_of_an_episode_raises_gpu_001_once() -> None:
    w = World()
    w.exec(100, "/opt/trainer/bin/python", episode="ep-7")
    w.fork(100, 200)
    w.exec(200, "/usr/bin/python3", ppid=100)  # the agent's code
    found = w.open(200, 4)
    assert [f.rule.id for f in found] == ["RLG-GPU-001"]
    alert = w.renderer.render_alert(found[0])
    assert alert["rlguard"]["alert"]["gpu"]["device"] == DEV
    assert w.open(200, 5) == []  # same process and device: no second alert


def test_exec_ends_close_on_exec_fds() -> None:
    w = World()
    w.exec(100, "/usr/bin/python3")
    w.open(100, 4, flags=O_CLOEXEC)
    w.open(100, 5)
    w.exec(100, "/usr/bin/true")
    assert [h.fd for h in w.gpu.holders.of(100)] == [5]
    assert (100, 4) not in w.sensor.gpu_fds


def mining_finding(w: World, pid: int, confidence: str = "high") -> Finding:
    p = w.table.procs[pid]
    sig = Signal("payload", "stratum.mining.subscribe", "mining.subscribe", confidence)  # type: ignore[arg-type]
    ev = GpuCloseEvent(**hdr(pid))  # any event: only its action is rendered
    return Finding(RULES["RLG-MIN-001"], p.entity_id, [sig], w.att.attribute(ev, p))


def test_holder_with_a_mining_alert_raises_gpu_002_either_order() -> None:
    w = World()
    w.exec(100, "/usr/bin/python3", episode="ep-1")
    w.open(100, 4)
    f = mining_finding(w, 100, "medium")  # RLG-MIN-001 high
    out = w.gpu.escalate([f])
    assert [x.rule.id for x in out] == ["RLG-GPU-002"]
    assert out[0].rule.severity(out[0].signals) == "critical"
    assert out[0].extra["raises"] == {
        "rule": "RLG-MIN-001",
        "severity": "high",
        "subject": f.subject,
    }
    # the other order: the miner opens a GPU after its alert
    w.exec(300, "/usr/bin/python3")
    assert w.gpu.escalate([mining_finding(w, 300, "low")]) == []  # no GPU yet
    later = w.open(300, 7)
    assert [x.rule.id for x in later] == ["RLG-GPU-002"]
    assert later[0].rule.severity(later[0].signals) == "high"  # MIN-001 medium -> high


def test_episode_end_with_a_holder_left_raises_gpu_003() -> None:
    w = World()
    w.exec(100, "/usr/bin/python3", episode="ep-9")
    w.exec(101, "/usr/bin/python3", episode="ep-10")
    w.open(100, 4)
    w.open(101, 4)
    found = w.gpu.episode_ended("ep-9", 1)
    assert [(f.rule.id, f.process.pid) for f in found] == [("RLG-GPU-003", 100)]
    assert found[0].rule.severity(found[0].signals) == "high"
    assert found[0].event.action == "episode_end"
    # the registry's episode_end schedules the check for after the grace (0 s here)
    w.gpu.rules.on_episode_end("ep-10", 1)
    _docs, later = w.gpu.tick()
    assert [(f.rule.id, f.process.pid) for f in later] == [("RLG-GPU-003", 101)]
    w.close(100, 4)
    assert w.gpu.episode_ended("ep-9", 1) == []


def test_reconcile_adds_missed_and_ends_stale_holdings(monkeypatch: pytest.MonkeyPatch) -> None:
    import monitor.state.gpu.holders as gpu_mod

    w = World()
    w.exec(100, "/usr/bin/python3", episode="ep-1")
    w.exec(101, "/usr/bin/python3", episode="ep-1")
    w.open(101, 9)  # closed without a record we saw
    rdev = os.makedev(195, 0)
    live = {(100, 3): (rdev, "/tmp/elsewhere/nv")}
    monkeypatch.setattr(gpu_mod, "fd_device", lambda pid, fd: live.get((pid, fd)))
    monkeypatch.setattr(gpu_mod, "_fdinfo_flags", lambda pid, fd: 0)
    scan = ScanResult(started_ns=10**15, found=dict(live), pids={100, 101})
    evs = w.gpu.reconcile(scan)
    opens = [e for e in evs if isinstance(e, GpuOpenEvent)]
    closes = [e for e in evs if isinstance(e, GpuCloseEvent)]
    assert [(e.pid, e.fd, e.via, e.path, e.rdev) for e in opens] == [
        (100, 3, "scan", "/tmp/elsewhere/nv", rdev)
    ]
    assert [(e.pid, e.fd, e.via) for e in closes] == [(101, 9, "scan")]
    found = w.gpu.observe(w.att.attribute(opens[0], w.table.procs[100]))
    assert w.gpu.holders.get(100, 3).device == DEV  # by device number
    assert (100, 3) in w.sensor.gpu_fds  # the kernel now reports its close()
    names = {s.name for s in found[0].signals}
    assert {"gpu.open_not_seen", "gpu.other_node"} <= names
    assert found[0].rule.severity(found[0].signals) == "high"
    w.gpu.observe(w.att.attribute(closes[0], w.table.procs[101]))
    assert w.gpu.holders.of(101) == []
    # a second pass finds nothing new
    assert w.gpu.reconcile(ScanResult(started_ns=10**15, found=dict(live), pids={100})) == []


def test_holders_metric_and_nvml_absent() -> None:
    w = World()
    w.exec(100, "/usr/bin/python3", episode="ep-1")
    w.open(100, 4)
    docs, _ = w.gpu.tick()
    assert docs and docs[0]["event"]["action"] == "gpu_holders"
    g = docs[0]["rlguard"]["gpu"]
    assert g["holders"] == 1 and g["nvml"]["present"] is False
    assert g["devices"][0]["holders"][0]["episode_id"] == "ep-1"
    docs2, _ = w.gpu.tick()
    assert docs2 == []  # unchanged and not yet due
    n = Nvml("off")
    n.start()
    assert not n.present and "off" in (n.error or "")


def test_own_process_is_never_a_holder() -> None:
    w = World()
    w.exec(os.getpid(), "/usr/bin/python3", episode="ep-1")
    assert w.open(os.getpid(), 4) == [] and len(w.gpu.holders) == 0


def test_prometheus_gauges_from_the_stats_line() -> None:
    from monitor.sinks.metrics_http import render

    w = World()
    w.exec(100, "/usr/bin/python3")
    w.open(100, 4)
    text = render({"gpu": w.gpu.stats()})
    assert "rlguard_gpu_holders 1" in text and "rlguard_gpu_holdings 1" in text
    assert "rlguard_gpu_devices_held 1" in text and "# TYPE rlguard_gpu_scans_total counter" in text


def test_reconfigure_applies_allowlists_devices_need_a_restart() -> None:
    w = World()
    w.exec(200, "/usr/bin/python3", episode="ep-1")
    new = dataclasses.replace(w.gpu.cfg, allow_executables=("/usr/bin/python3",))
    assert w.gpu.reconfigure(new) is False
    assert w.open(200, 4) == []  # allowed now
    assert w.gpu.reconfigure(dataclasses.replace(new, devices=("/dev/kfd",))) is True
    assert w.gpu.cfg.devices == (DEV,)  # the kernel still watches the old list


def test_reconcile_drops_holdings_of_vanished_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    import monitor.state.gpu.holders as gpu_mod

    w = World()
    w.exec(100, "/usr/bin/python3")
    w.open(100, 4)
    del w.table.procs[100]  # expired from the process table, exit record lost
    monkeypatch.setattr(gpu_mod, "fd_device", lambda pid, fd: None)
    assert w.gpu.reconcile(ScanResult(started_ns=10**15)) == []
    assert len(w.gpu.holders) == 0 and (100, 4) not in w.sensor.gpu_fds


def test_allowlist_process_paths_silences_gpu_alerts_too() -> None:
    w = World()
    w.engine.iocs = dataclasses.replace(w.engine.iocs, allow_process_paths=("/opt/eval/*",))
    w.exec(200, "/opt/eval/run", episode="ep-1")
    assert w.open(200, 4) == [] and w.gpu.holders.of(200)


@pytest.mark.parametrize(
    ("probes", "devices", "loaded"),
    [
        ("auto", ["/dev/null"], True),  # a character device that exists
        ("auto", ["/nonexistent/nvidia*", "/nonexistent/kfd"], False),
        ("on", ["/nonexistent/nvidia*"], True),
        ("off", ["/dev/null"], False),
    ],
)
def test_gpu_kernel_programs_load_where_a_device_exists(
    probes: str, devices: list[str], loaded: bool
) -> None:
    listed = ", ".join(f'"{d}"' for d in devices)
    cfg = parse_config(f'[gpu]\nprobes = "{probes}"\ndevices = [{listed}]\n').gpu
    assert gpu_probe_patterns(cfg) == (tuple(devices) if loaded else ())


def test_gpu_probes_setting_is_checked() -> None:
    with pytest.raises(ConfigError, match="probes"):
        parse_config('[gpu]\nprobes = "sometimes"\n')
