"""What keeps the collector's memory bounded in a process churn, without a kernel.

Exited processes stay in the table for a grace period (late events keep their
lineage), bounded by count as well as by time; per-pid caches must not outlive
the processes they describe.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.config import load_config
from monitor.sensor.events import ExecEvent, ExitEvent, ForkEvent
from monitor.state.attribution import Attributor
from monitor.state.process_table import ProcessTable
from tests.support.events import hdr, rl_at
from tests.support.live import MemorySink
from tests.support.sensor import FakeSensor

pytestmark = pytest.mark.unit

CFG = load_config(None)
S = 10**9


def table(max_exited: int = 4, max_entries: int = 200_000) -> ProcessTable:
    return ProcessTable(
        CFG.tags, boot_id="b", exit_grace_s=5.0, max_exited=max_exited, max_entries=max_entries
    )


def fork(t: ProcessTable, child: int, ts: int, parent: int = 1) -> None:
    t.on_fork(ForkEvent(**hdr(parent, ts=ts), child_pid=child))


def exit_(t: ProcessTable, pid: int, ts: int) -> None:
    t.on_exit(ExitEvent(**hdr(pid, ts=ts), exit_code=0, exit_signal=0))


def exited_pids(t: ProcessTable) -> set[int]:
    return {pid for pid, p in t.procs.items() if p.exited_ns is not None}


def test_within_the_bound_exited_processes_keep_their_full_grace() -> None:
    t = table(max_exited=4)
    for pid in range(10, 14):
        fork(t, pid, ts=pid)
        exit_(t, pid, ts=S + pid)
    assert t.exited == 4 and t.exited_evicted == 0
    assert t.expire(now_ns=S + 5 * S) == 0  # no deadline has passed yet
    assert t.expire(now_ns=S + 5 * S + 11) == 2  # exactly the two oldest deadlines
    assert exited_pids(t) == {12, 13} and t.exited == 2


def test_an_exit_flood_drops_the_oldest_exited_first_and_counts_it() -> None:
    t = table(max_exited=4)
    fork(t, 500, ts=1)  # a live process: never evicted for exits
    for pid in range(10, 20):
        fork(t, pid, ts=pid)
        exit_(t, pid, ts=100 + pid)
    assert exited_pids(t) == {16, 17, 18, 19}  # the newest exits kept their lineage
    assert t.exited == 4 and t.exited_evicted == 6
    assert 500 in t.procs and t.procs[500].exited_ns is None
    assert t.evicted == 0  # the max_entries counter is a different bound


def test_a_reused_pid_replaces_the_exited_entry_and_keeps_it_from_expiring() -> None:
    t = table()
    fork(t, 700, ts=10)
    exit_(t, 700, ts=20)
    fork(t, 700, ts=30)  # the kernel handed the pid out again
    assert t.exited == 0
    assert t.expire(now_ns=10 * S) == 0
    assert t.procs[700].exited_ns is None and t.procs[700].start_ns == 30


def test_a_repeated_exit_restarts_the_grace_at_the_back_of_the_line() -> None:
    t = table(max_exited=2)
    for pid in (10, 11):
        fork(t, pid, ts=pid)
    exit_(t, 10, ts=100)
    exit_(t, 11, ts=200)
    exit_(t, 10, ts=300)  # a duplicate exit record: 11 is now the oldest
    fork(t, 12, ts=400)
    exit_(t, 12, ts=500)
    assert exited_pids(t) == {10, 12} and t.exited_evicted == 1


def test_exec_of_an_exited_pid_makes_a_live_entry() -> None:
    t = table()
    fork(t, 800, ts=10)
    exit_(t, 800, ts=20)
    t.on_exec(ExecEvent(**hdr(800, ts=30), filename="/bin/x", argv=["x"]))
    assert t.exited == 0 and t.procs[800].exited_ns is None


def test_a_full_table_evicts_the_oldest_exited_before_any_live_entry() -> None:
    t = table(max_exited=100, max_entries=5)
    for pid in (10, 11, 12):
        fork(t, pid, ts=pid)  # pid 1, the parent, enters as a stub first
    exit_(t, 11, ts=50)
    exit_(t, 10, ts=60)
    fork(t, 13, ts=70)  # 5 entries: full
    fork(t, 14, ts=80)  # evicts 11, the oldest exit, though 1 and 10 are older entries
    assert set(t.procs) == {1, 10, 12, 13, 14} and t.evicted == 1
    fork(t, 15, ts=90)
    assert set(t.procs) == {1, 12, 13, 14, 15} and t.exited == 0
    fork(t, 16, ts=95)  # no exited entries left: the oldest entry goes
    assert set(t.procs) == {12, 13, 14, 15, 16} and t.evicted == 3


def test_compaction_keeps_the_exit_order() -> None:
    t = table(max_exited=10_000)
    for pid in range(2, 6000):
        fork(t, pid, ts=pid)
        exit_(t, pid, ts=S + pid)
    assert t.expire(now_ns=S + 5 * S + 5900) > 0  # below a quarter: compacted
    assert list(t._exited) == sorted(t._exited) == list(range(5901, 6000))
    assert exited_pids(t) == set(range(5901, 6000))


OPS = st.lists(
    st.tuples(st.sampled_from(["fork", "exit", "exec", "expire"]), st.integers(2, 40)),
    max_size=200,
)


@settings(max_examples=100)
@given(OPS)
def test_the_exit_queue_is_exactly_the_exited_entries(ops: list[tuple[str, int]]) -> None:
    t = table(max_exited=5, max_entries=1000)
    t.max_entries = 25  # below the config's floor, to exercise eviction
    for ts, (op, pid) in enumerate(ops, 1):
        if op == "fork":
            fork(t, pid, ts=ts * S // 10)
        elif op == "exit":
            exit_(t, pid, ts=ts * S // 10)
        elif op == "exec":
            t.on_exec(ExecEvent(**hdr(pid, ts=ts * S // 10), filename="/bin/x", argv=["x"]))
        else:
            t.expire(now_ns=ts * S // 10)
        assert set(t._exited) == exited_pids(t)
        assert t.exited <= 5 and len(t) <= 26
        deadlines = list(t._exited.values())
        assert deadlines == sorted(deadlines)  # expiry can stop at the first one not due


def test_the_ray_title_cache_holds_one_generation_only() -> None:
    t = ProcessTable(CFG.tags, boot_id="b")
    att = Attributor(t, CFG.attribution, None, None)
    t.on_exec(ExecEvent(**hdr(100, ts=1, comm="ray::Worker"), filename="/bin/x", argv=["x"]))
    t.procs[100].name = "ray::Worker"

    for pid in range(1000, 3000):  # a churn of the worker's children
        fork(t, pid, ts=pid, parent=100)
        assert rl_at(t, att, pid, S)["worker_id"] == "Worker"
        exit_(t, pid, ts=pid + 1)
    assert len(att._ray_cache) <= 1  # was one entry per pid ever seen
    fork(t, 4000, ts=4000, parent=100)
    # renames come with an exec, which bumps the generation
    t.procs[100].name = t.procs[4000].name = "bash"
    t.generation += 1
    assert rl_at(t, att, 4000, S).get("heuristic") is None


def test_a_drain_stops_after_a_bounded_batch() -> None:
    import ctypes

    from monitor.sensor.probes import DRAIN_MAX, Sensor

    s = Sensor(CFG.probes, list(CFG.tags.keys), ())
    rec = ctypes.create_string_buffer(b"r" * 100)
    codes = [s._on_record(None, rec, 100) for _ in range(DRAIN_MAX)]
    # libbpf stops consuming at a negative return: the rest waits in the ring
    assert codes[:-1] == [0] * (DRAIN_MAX - 1) and codes[-1] < 0
    assert len(s._batch) == DRAIN_MAX


def test_close_drains_what_the_ring_still_holds_batch_by_batch() -> None:
    from monitor.assembly import build_collector
    from monitor.sensor.probes import DRAIN_MAX

    sensor = FakeSensor()
    sensor.batches = [[b"x"] * n for n in (DRAIN_MAX, DRAIN_MAX, 7, DRAIN_MAX)]
    c = build_collector(CFG, MemorySink(), sensor=sensor, heartbeat=False)
    c.close()
    assert sensor.drain_calls == 3  # stops at the first batch that was not full
    assert c.undecodable == 2 * DRAIN_MAX + 7  # no decoder without start(): counted


def test_births_of_exited_processes_do_not_pile_up_in_a_bound_episode() -> None:
    from monitor.state.attribution import BIRTHS_PRUNE_MIN
    from monitor.state.registry.protocol import parse_message
    from monitor.state.registry.state import Registry

    t = ProcessTable(CFG.tags, boot_id="b", max_exited=1000)
    reg = Registry()
    att = Attributor(t, CFG.attribution, reg, None)
    t.on_exec(ExecEvent(**hdr(100, ts=1), filename="/bin/x", argv=["x"]))
    start = b'{"op":"episode_start","episode_id":"e1","pids":[100]}'
    reg.apply(parse_message(start), 2, 0)
    for pid in range(1000, 30_000):  # a churn of the bound trainer's children
        ev = ForkEvent(**hdr(100, ts=S + pid), child_pid=pid)
        child = t.on_fork(ev)
        att.on_fork(ev, child, t.procs[100])
        exit_(t, pid, ts=S + pid + 1)
    assert len(att.births) <= max(BIRTHS_PRUNE_MIN, 2 * len(t)) + 1
    fork(t, 40_000, ts=2 * S, parent=100)
    ev = ForkEvent(**hdr(100, ts=2 * S), child_pid=40_001)
    child = t.on_fork(ev)
    att.on_fork(ev, child, t.procs[100])
    born = att.birth_of(child)
    assert born is not None and born.episode.episode_id == "e1"
    exited = t.procs[29_999]  # still in its grace: its birth is kept
    assert att.birth_of(exited) is not None
