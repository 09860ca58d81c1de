"""Claims never move a process: own tags that contradict the episode a process was born in.

Pure: the table, the registry and the attributor fed typed events the way the collector
feeds them (tests/unit/test_attribution_registry.py has the helpers' twins).
"""

from __future__ import annotations

import pytest

from monitor.state import attribution
from tests.support.events import rl_at
from tests.unit.test_attribution_registry import S, exec_, fork, msg, tagset, world

pytestmark = pytest.mark.unit


def test_exec_in_place_with_own_tags_keeps_the_episode_it_was_born_with() -> None:
    """The shell got A from its own exec; `RL_EPISODE_ID=B exec miner` keeps the pid."""
    table, _, att = world()
    tagset(table, 10, 300, {"RL_EPISODE_ID": "A", "RL_WORKER_ID": "w"})
    exec_(table, att, 300, ts=1 * S, tagset_id=10, own=1)  # the episode's shell
    tagset(table, 11, 300, {"RL_EPISODE_ID": "B", "RL_WORKER_ID": "w"})
    _, conflict = exec_(table, att, 300, ts=2 * S, tagset_id=11, own=1)  # exec in place
    assert conflict is not None and conflict.source == "own_env"
    assert conflict.roles == {"episode": ("B", "A")}
    rl = rl_at(table, att, 300, 3 * S)
    assert rl["episode_id"] == "A"
    assert rl["claimed"] == {"episode_id": "B"}
    assert rl["conflict"]["kept_source"] == "own_env"
    fork(table, att, 300, 301, ts=4 * S)  # the miner's children inherit the forged tags
    assert rl_at(table, att, 301, 5 * S)["episode_id"] == "A"


def test_a_child_claim_and_a_later_exec_back_to_the_real_value() -> None:
    table, _, att = world()
    tagset(table, 10, 400, {"RL_EPISODE_ID": "A"})
    exec_(table, att, 400, ts=1 * S, tagset_id=10, own=1)
    fork(table, att, 400, 401, ts=2 * S)
    tagset(table, 11, 401, {"RL_EPISODE_ID": "B"})
    _, first = exec_(table, att, 401, ts=3 * S, tagset_id=11, own=1)
    assert first is not None and first.source == "inherited"
    # env -i RL_EPISODE_ID=C: compared with what was kept (A), not with the claim (B)
    tagset(table, 12, 401, {"RL_EPISODE_ID": "C"})
    _, second = exec_(table, att, 401, ts=4 * S, tagset_id=12, own=1)
    assert second is not None and second.roles == {"episode": ("C", "A")}
    assert rl_at(table, att, 401, 5 * S)["episode_id"] == "A"
    # exec'ing with the real value again: the kernel makes a new tagset (it differs from
    # the forged one it inherited), but nothing is claimed
    tagset(table, 13, 401, {"RL_EPISODE_ID": "A"})
    _, third = exec_(table, att, 401, ts=6 * S, tagset_id=13, own=1)
    assert third is None
    rl = rl_at(table, att, 401, 7 * S)
    assert rl["episode_id"] == "A" and "claimed" not in rl


def test_cgroup_and_registry_births_keep_the_episode_through_an_exec_in_place() -> None:
    table, reg, att = world()
    exec_(table, att, 500, ts=1 * S)
    reg.apply(msg('{"op":"episode_start","episode_id":"real","pids":[500]}'), 2 * S, 0)
    fork(table, att, 500, 501, ts=3 * S)
    tagset(table, 20, 501, {"RL_EPISODE_ID": "other"})
    _, conflict = exec_(table, att, 501, ts=4 * S, tagset_id=20, own=1)
    assert conflict is not None and conflict.source == "registry"
    tagset(table, 21, 501, {"RL_EPISODE_ID": "third"})
    _, again = exec_(table, att, 501, ts=5 * S, tagset_id=21, own=1)  # exec in place again
    assert again is not None and again.roles == {"episode": ("third", "real")}
    rl = rl_at(table, att, 501, 6 * S)
    assert (rl["episode_id"], rl["claimed"]) == ("real", {"episode_id": "third"})


def test_overrides_of_live_processes_survive_a_flood_of_claims(monkeypatch) -> None:
    monkeypatch.setattr(attribution, "MAX_OVERRIDES", 8)
    table, _, att = world()
    tagset(table, 10, 600, {"RL_EPISODE_ID": "A"})
    exec_(table, att, 600, ts=1 * S, tagset_id=10, own=1)
    fork(table, att, 600, 601, ts=2 * S)
    tagset(table, 11, 601, {"RL_EPISODE_ID": "B"})
    exec_(table, att, 601, ts=3 * S, tagset_id=11, own=1)  # the miner, kept in A
    # many short-lived claimers that leave the table
    for i in range(40):
        pid = 1000 + i
        fork(table, att, 600, pid, ts=4 * S)
        tagset(table, 100 + i, pid, {"RL_EPISODE_ID": f"flood-{i}"})
        exec_(table, att, pid, ts=4 * S, tagset_id=100 + i, own=1)
        del table.procs[pid]
    assert len(att.overrides) <= 8
    assert rl_at(table, att, 601, 5 * S)["episode_id"] == "A"
