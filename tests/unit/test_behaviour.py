"""The mining behaviour rule (RLG-MIN-006): each named threshold, both sides of it, and the
driver that raises the process's other mining alerts."""

from __future__ import annotations

import dataclasses

import pytest

from monitor.config import load_config
from monitor.detectors.behaviour import (
    Activity,
    MiningBehaviour,
    ProcessFacts,
    mining_shape,
    shape_failures,
)
from monitor.detectors.engine import DetectionEngine
from monitor.detectors.iocs import build_iocs
from monitor.sensor.dns import build_query
from monitor.sensor.events import ConnectEvent, DnsEvent, ExecEvent, StreamTickEvent
from monitor.state.process_table import ProcessTable
from tests.support.events import attributed, hdr

pytestmark = pytest.mark.unit

CFG = load_config(None).mining_behaviour
OK_ACTIVITY = Activity(age_s=3600, active_intervals=100, segs=400, bytes=400 * 150, interval_s=30)
OK_FACTS = ProcessFacts(in_episode=True, gpu=False, cpu_cores=3.5, destination_users=1)


def test_the_shape_holds() -> None:
    assert shape_failures(OK_ACTIVITY, OK_FACTS, CFG) == []
    sig = mining_shape(OK_ACTIVITY, OK_FACTS, CFG)
    assert sig is not None and sig.confidence == "low" and "3.50 cores" in sig.detail


@pytest.mark.parametrize(
    "name,inside,outside",
    [
        ("min_age_s", {"age_s": CFG.min_age_s}, {"age_s": CFG.min_age_s - 1}),
        (
            "min_active_intervals",
            {"active_intervals": CFG.min_active_intervals},
            {"active_intervals": CFG.min_active_intervals - 1},
        ),
        (
            "max_mean_write_bytes",
            {"segs": 10, "bytes": 10 * CFG.max_mean_write_bytes},
            {"segs": 10, "bytes": 10 * CFG.max_mean_write_bytes + 10},
        ),
        (
            "max_interval_bytes",  # 120 intervals in the hour: bytes per interval
            {"segs": 100_000, "bytes": 120 * CFG.max_interval_bytes},
            {"segs": 100_000, "bytes": 120 * CFG.max_interval_bytes + 120},
        ),
    ],
)
def test_activity_thresholds_both_sides(name: str, inside: dict, outside: dict) -> None:
    assert name not in shape_failures(dataclasses.replace(OK_ACTIVITY, **inside), OK_FACTS, CFG)
    assert shape_failures(dataclasses.replace(OK_ACTIVITY, **outside), OK_FACTS, CFG) == [name]


@pytest.mark.parametrize(
    "inside,outside,name",
    [
        ({"cpu_cores": CFG.cpu_fraction}, {"cpu_cores": CFG.cpu_fraction - 0.01}, "cpu_fraction"),
        ({"cpu_cores": 0.0, "gpu": True}, {"cpu_cores": None, "gpu": False}, "cpu_fraction"),
        (
            {"destination_users": CFG.max_destination_users},
            {"destination_users": CFG.max_destination_users + 1},
            "max_destination_users",
        ),
        ({"in_episode": True}, {"in_episode": False}, "episode"),
    ],
)
def test_process_thresholds_both_sides(inside: dict, outside: dict, name: str) -> None:
    assert shape_failures(OK_ACTIVITY, dataclasses.replace(OK_FACTS, **inside), CFG) == []
    assert shape_failures(OK_ACTIVITY, dataclasses.replace(OK_FACTS, **outside), CFG) == [name]


def test_disabled_never_fires() -> None:
    assert mining_shape(OK_ACTIVITY, OK_FACTS, dataclasses.replace(CFG, enabled=False)) is None


class NoGpu:
    class holders:  # noqa: N801 - the attribute the driver reads
        @staticmethod
        def of(pid: int) -> list:
            return []


def test_driver_flags_once_and_raises_other_mining_alerts(tmp_path) -> None:
    cfg = load_config(None)
    iocs = build_iocs(cfg.detectors, cfg.allowlist)
    table = ProcessTable(cfg.tags)
    p = table.on_exec(ExecEvent(**hdr(60), filename="/tmp/miner", argv=["miner"]))
    engine = DetectionEngine(iocs, read_file=lambda pid, path: None, fingerprints={})
    # a pool lookup first: RLG-MIN-003 at medium
    q = build_query("gulf.moneroocean.stream")
    dns = DnsEvent(**hdr(60), cookie=1, payload_len=len(q), family=2, saddr="10.0.0.1",
                   sport=5353, daddr="10.0.0.53", dport=53, data=q)  # fmt: skip
    first = engine.observe(attributed(table, dns, p))
    assert first and first[0].severity == "medium"
    # its CPU: a fake /proc/60/stat that says 100 s of CPU, then 200 s 50 s later
    proc = tmp_path / "60"
    proc.mkdir()
    stat = proc / "stat"
    fast = dataclasses.replace(cfg.mining_behaviour, min_age_s=60, min_active_intervals=2)
    driver = MiningBehaviour(fast, 30.0, NoGpu(), engine, proc=str(tmp_path))  # type: ignore[arg-type]
    conn = ConnectEvent(**hdr(60), fd=3, ret=0, cookie=9, family=2, daddr="198.51.100.9",
                        dport=443, sock_type=1, protocol=6)  # fmt: skip
    driver.observe(attributed(table, conn, p))

    def tick(ts_s: int, cpu_ticks: int) -> list:
        stat.write_text(f"60 (miner) R 1 1 1 0 -1 0 0 0 0 0 {cpu_ticks} 0 0 0 20 0 1 0 0")
        ev = StreamTickEvent(
            **hdr(60, ts=ts_s * 10**9), cookie=9, owner_pid=60, family=2,
            daddr="198.51.100.9", dport=443, first_ns=0, segs=ts_s, bytes=ts_s * 200,
        )  # fmt: skip
        ae = attributed(table, ev, p)
        ae.rl = dataclasses.replace(ae.rl, episode_id="ep-1")
        return driver.observe(ae)

    assert tick(30, 100 * 100) == []  # too young, one interval
    found = tick(90, 200 * 100)  # 100 s of CPU over 60 s: 1.67 cores
    rules = {f.rule.id: f for f in found}
    assert rules["RLG-MIN-006"].severity == "low"
    raised = rules["RLG-MIN-003"]
    assert raised.severity == "high" and raised.extra.get("follow_up")
    assert tick(120, 300 * 100) == [], "one finding per connection"
