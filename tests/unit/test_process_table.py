"""Lineage and episode attribution, without a kernel."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.config import load_config
from monitor.sensor.events import ExecEvent, ExitEvent, ForkEvent, TagsetEvent
from monitor.state.process_table import ProcessTable
from tests.support.events import hdr, rl_of

pytestmark = pytest.mark.unit

CFG = load_config(None)
KEYS = list(CFG.tags.keys)


def table() -> ProcessTable:
    return ProcessTable(CFG.tags, boot_id="0123456789abcdef", max_lineage=16, exit_grace_s=1.0)


def tagset_event(tid: int, pid: int, values: dict[str, str]) -> TagsetEvent:
    vals: list[str | None] = [values.get(k) for k in KEYS]
    mask = sum(1 << i for i, v in enumerate(vals) if v is not None)
    return TagsetEvent(
        **hdr(pid, tagset=tid, origin=pid),
        id=tid,
        present_mask=mask,
        own_mask=mask,
        truncated_mask=0,
        values=vals,
    )


def test_roles_and_provenance() -> None:
    t = table()
    t.on_tagset(tagset_event(77, 100, {"RL_EPISODE_ID": "ep-1", "RANK": "3", "RL_RUN_ID": "r"}))
    worker = t.on_exec(
        ExecEvent(
            **hdr(100, tagset=77, origin=100, comm="python"),
            filename="/usr/bin/python3",
            argv=["python3", "train.py"],
        )
    )
    rl = rl_of(t, worker, 77, 100)
    assert rl["episode_id"] == "ep-1"
    assert rl["worker_id"] == "3"
    assert rl["run_id"] == "r"
    assert rl["trajectory_id"] is None
    assert rl["source"] == "own_env"
    child = t.on_fork(ForkEvent(**hdr(100, tagset=77, origin=100, ts=2000), child_pid=101))
    rl2 = rl_of(t, child, 77, 100)
    assert rl2["source"] == "inherited"
    assert rl2["origin"]["pid"] == 100
    assert rl2["origin"]["entity_id"] == worker.entity_id


def test_episode_alias_precedence() -> None:
    t = table()
    # RL_EPISODE_ID is listed before EPISODE_ID and TASK_ID: it wins
    t.on_tagset(tagset_event(5, 10, {"TASK_ID": "t", "EPISODE_ID": "e", "RL_EPISODE_ID": "rl"}))
    p = t.on_exec(ExecEvent(**hdr(10, tagset=5, origin=10), filename="/x", argv=["x"]))
    assert rl_of(t, p, 5, 10)["episode_id"] == "rl"


def test_untagged_process_falls_back_to_lineage() -> None:
    t = table()
    t.on_tagset(tagset_event(9, 50, {"RL_EPISODE_ID": "ep-l"}))
    t.on_exec(ExecEvent(**hdr(50, tagset=9, origin=50), filename="/a", argv=["a"]))
    # the kernel lost the child's state (e.g. forked before seeding): no tagset in header
    orphan = t.on_exec(ExecEvent(**hdr(51, ppid=50), filename="/b", argv=["b"]))
    rl = rl_of(t, orphan, 0, 0)
    assert rl["episode_id"] == "ep-l"
    assert rl["source"] == "lineage"


def test_no_tags() -> None:
    t = table()
    p = t.on_exec(ExecEvent(**hdr(60), filename="/a", argv=["a"]))
    rl = rl_of(t, p, 0, 0)
    assert rl["source"] == "none" and rl["episode_id"] is None and rl["tags"] == {}


def test_pid_reuse_gets_a_new_entity() -> None:
    t = table()
    first = t.on_fork(ForkEvent(**hdr(1, ts=10), child_pid=500))
    t.on_exit(ExitEvent(**hdr(500, ts=20), exit_code=0, exit_signal=0))
    second = t.on_fork(ForkEvent(**hdr(1, ts=30), child_pid=500))
    assert first.entity_id != second.entity_id


def test_exited_entries_expire_after_grace() -> None:
    t = table()
    t.on_fork(ForkEvent(**hdr(1, ts=10), child_pid=700))
    t.on_exit(ExitEvent(**hdr(700, ts=1_000), exit_code=0, exit_signal=0))
    assert t.expire(now_ns=1_000 + 500_000_000) == 0
    assert 700 in t.procs
    assert t.expire(now_ns=1_000 + 1_000_000_001) == 1
    assert 700 not in t.procs


def test_lineage_bounded_and_cycle_safe() -> None:
    t = ProcessTable(CFG.tags, boot_id="b", max_lineage=4)
    for pid in range(2, 20):
        t.on_fork(ForkEvent(**hdr(pid - 1, ppid=pid - 2), child_pid=pid))
    assert [p.pid for p in t.lineage(t.procs[19])] == [18, 17, 16, 15]
    # a corrupt cycle never loops
    t.procs[5].ppid = 7
    assert len(t.lineage(t.procs[7])) <= 4


@settings(max_examples=50)
@given(st.lists(st.tuples(st.integers(2, 60), st.integers(2, 60)), max_size=80))
def test_table_never_exceeds_bound(pairs: list[tuple[int, int]]) -> None:
    t = ProcessTable(CFG.tags, boot_id="b", max_entries=1000)
    t.max_entries = 20
    for ts, (parent, child) in enumerate(pairs):
        t.on_fork(ForkEvent(**hdr(parent, ts=ts), child_pid=child))
    assert len(t) <= 21
