"""Registry protocol, binding intervals and attribution precedence, without a kernel."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.config import load_config
from monitor.sensor.events import ExecEvent, ForkEvent, TagsetEvent
from monitor.state.attribution import Attributor
from monitor.state.cgroups import CgroupIdentity, CgroupResolver, normalise_path
from monitor.state.process_table import ProcessTable
from monitor.state.registry.protocol import ProtocolError, parse_message
from monitor.state.registry.state import Registry
from tests.support.events import hdr, rl_at

CFG = load_config(None)
S = 10**9


def msg(text: str):
    return parse_message(text.encode())


# -- protocol -----------------------------------------------------------------------------


def test_episode_start_parses_every_binding() -> None:
    m = msg(
        '{"op":"episode_start","episode_id":"e1","trajectory_id":7,"run_id":"r","pids":[10],'
        '"tids":[11,12],"cgroup":"/sb/1","container_id":"' + "a" * 64 + '",'
        '"sandbox_id":"sb-1","meta":{"k":1}}'
    )
    assert m.op == "episode_start" and m.episode_id == "e1"
    assert m.trajectory_id == "7"  # integers are ids too
    assert m.pids == (10,) and m.tids == (11, 12)
    assert m.cgroup == "/sb/1" and m.container_id == "a" * 64 and m.sandbox_id == "sb-1"


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("not json", "not JSON"),
        ('"a string"', "JSON object"),
        ('{"op":"launch"}', "op: expected one of"),
        ('{"op":"episode_start"}', "episode_id is required"),
        ('{"op":"run_start"}', "run_id is required"),
        ('{"op":"episode_start","episode_id":""}', "non-empty"),
        ('{"op":"episode_start","episode_id":"' + "x" * 300 + '"}', "longer than"),
        ('{"op":"episode_start","episode_id":"e","pids":[0]}', "positive"),
        ('{"op":"episode_start","episode_id":"e","pids":[true]}', "positive"),
        (
            '{"op":"episode_start","episode_id":"e","tids":' + str(list(range(1, 2000))) + "}",
            "more than",
        ),
        ('{"op":"episode_start","episode_id":"e","container_id":"XYZ"}', "hex"),
        ('{"op":"episode_start","episode_id":"e","cgroup":"a/../../etc"}', ".."),
        ('{"op":"episode_start","episode_id":"e","meta":{"a":"' + "m" * 5000 + '"}}', "meta"),
        ('{"op":"hello","evil":1}', "unknown field"),
    ],
)
def test_bad_messages_are_refused_with_a_reason(line: str, why: str) -> None:
    with pytest.raises(ProtocolError, match=why):
        msg(line)


def test_ids_are_sanitised() -> None:
    m = msg('{"op":"episode_start","episode_id":"e\\u001b[31mred"}')
    assert "\x1b" not in (m.episode_id or "")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_any_bytes_parse_or_raise_protocol_error(data: bytes) -> None:
    try:
        parse_message(data)
    except ProtocolError:
        pass


# -- binding intervals ------------------------------------------------------------------------


def test_bindings_are_intervals_by_thread_then_process() -> None:
    reg = Registry()
    reg.apply(msg('{"op":"run_start","run_id":"r"}'), 1 * S, 0, {"pid": 5})
    reg.apply(msg('{"op":"episode_start","episode_id":"a","tids":[101]}'), 10 * S, 0, {"pid": 5})
    reg.apply(msg('{"op":"episode_start","episode_id":"b","pids":[100]}'), 11 * S, 0, {"pid": 5})
    assert reg.for_task(100, 101, 9 * S) is None  # before any binding
    ep, via = reg.for_task(100, 101, 12 * S) or (None, None)
    assert ep is not None and (ep.episode_id, via) == ("a", "thread")
    assert ep.run_id == "r"  # the client's run
    ep, via = reg.for_task(100, 102, 12 * S) or (None, None)
    assert ep is not None and (ep.episode_id, via) == ("b", "process")
    reg.apply(msg('{"op":"episode_end","episode_id":"a"}'), 20 * S, 0)
    hit = reg.for_task(100, 101, 19 * S)
    assert hit is not None and hit[0].episode_id == "a"  # a late record, judged by its time
    hit = reg.for_task(100, 101, 21 * S)
    assert hit is not None and hit[0].episode_id == "b"  # the thread falls back to the process
    with pytest.raises(ProtocolError, match="already ended"):
        reg.apply(msg('{"op":"episode_end","episode_id":"a"}'), 21 * S, 0)
    actions = [r.op for r in reg.pending]
    assert actions == ["run_start", "episode_start", "episode_start", "episode_end"]


def test_cgroup_bindings_match_subtree_container_and_sandbox() -> None:
    reg = Registry(cgroup_mount="/sys/fs/cgroup")
    reg.apply(msg('{"op":"episode_start","episode_id":"p","cgroup":"/sys/fs/cgroup/sb/7"}'), S, 0)
    reg.apply(msg('{"op":"episode_start","episode_id":"c","container_id":"abcdef012345"}'), S, 0)
    reg.apply(msg('{"op":"episode_start","episode_id":"s","sandbox_id":"box-9"}'), S, 0)

    def ep(ident: CgroupIdentity) -> str | None:
        e = reg.for_cgroup(ident, 2 * S)
        return e.episode_id if e else None

    assert ep(CgroupIdentity(5, "/sb/7/inner")) == "p"
    assert ep(CgroupIdentity(5, "/sb/77")) is None  # a prefix of the name is not the subtree
    assert ep(CgroupIdentity(6, "/x", container_id="abcdef012345" + "0" * 52)) == "c"
    assert ep(CgroupIdentity(7, "/y", sandbox_id="box-9")) == "s"
    with pytest.raises(ProtocolError, match="root cgroup"):
        reg.apply(msg('{"op":"episode_start","episode_id":"r","cgroup":"/"}'), S, 0)


def test_ended_episodes_are_forgotten_after_retention() -> None:
    reg = Registry(retain_ns=5 * S)
    reg.apply(msg('{"op":"episode_start","episode_id":"a","pids":[7],"sandbox_id":"x"}'), S, 0)
    reg.apply(msg('{"op":"episode_end","episode_id":"a"}'), 2 * S, 0)
    assert reg.expire(4 * S) == 0
    assert reg.expire(8 * S) == 1
    assert not reg.by_pid and not reg.cgroup_bindings and not reg.episodes


def test_container_patterns_and_paths() -> None:
    r = CgroupResolver(
        CFG.attribution.container_patterns, CFG.attribution.sandbox_patterns, mount=""
    )
    cid = "0123456789abcdef" * 4
    got = r.classify(9, f"/system.slice/docker-{cid}.scope")
    assert got.container_id == cid
    got = r.classify(9, f"/kubepods/burstable/pod1234/{cid}")
    assert got.container_id == cid
    got = r.classify(9, "/rl-sandbox-ep17/agent")
    assert got.sandbox_id == "rl-sandbox-ep17" and got.container_id is None
    assert normalise_path("/sys/fs/cgroup/a/b/", "/sys/fs/cgroup") == "/a/b"
    assert normalise_path("a/b", "/sys/fs/cgroup") == "/a/b"


# -- precedence -------------------------------------------------------------------------------


def world() -> tuple[ProcessTable, Registry, Attributor]:
    table = ProcessTable(CFG.tags, boot_id="b")
    reg = Registry()
    att = Attributor(table, CFG.attribution, reg, None)
    return table, reg, att


def tagset(table: ProcessTable, tid: int, pid: int, values: dict[str, str]) -> None:
    keys = list(table.keys)
    vals = [values.get(k) for k in keys]
    mask = sum(1 << i for i, v in enumerate(vals) if v is not None)
    table.on_tagset(
        TagsetEvent(
            **hdr(pid, tagset=tid, origin=pid),
            id=tid,
            present_mask=mask,
            own_mask=mask,
            truncated_mask=0,
            values=vals,
        )
    )


def exec_(table: ProcessTable, att: Attributor, pid: int, ts: int, tagset_id: int = 0, own=0):
    before = table.procs.get(pid)
    prev = (before.tagset_id, before.tag_origin) if before else (0, 0)
    origin = pid if own else (before.tag_origin if before else 0)
    ev = ExecEvent(
        **hdr(pid, ts=ts, tagset=tagset_id, origin=origin),
        filename="/bin/x",
        argv=["x"],
        own_tag_mask=own,
    )
    p = table.on_exec(ev)
    return p, att.on_exec(ev, p, prev)


def fork(table: ProcessTable, att: Attributor, parent: int, child: int, ts: int, tid=None):
    h = hdr(parent, ts=ts)
    p = table.procs[parent]
    h.update(tagset_id=p.tagset_id, tag_origin=p.tag_origin, tid=tid or parent)
    ev = ForkEvent(**h, child_pid=child)
    c = table.on_fork(ev)
    att.on_fork(ev, c, table.procs.get(parent))
    return c


def test_birth_episode_survives_the_parents_next_episode() -> None:
    table, reg, att = world()
    exec_(table, att, 100, ts=1 * S)
    reg.apply(msg('{"op":"episode_start","episode_id":"e1","pids":[100]}'), 2 * S, 0)
    fork(table, att, 100, 101, ts=3 * S)  # the miner, born in e1
    reg.apply(msg('{"op":"episode_end","episode_id":"e1"}'), 4 * S, 0)
    reg.apply(msg('{"op":"episode_start","episode_id":"e2","pids":[100]}'), 5 * S, 0)
    fork(table, att, 101, 102, ts=6 * S)  # its child, during e2
    assert rl_at(table, att, 100, 6 * S)["episode_id"] == "e2"
    for pid in (101, 102):
        rl = rl_at(table, att, pid, 7 * S)
        assert (rl["episode_id"], rl["source"], rl["binding"]["via"]) == (
            "e1",
            "registry",
            "ancestor",
        )


def test_registry_outranks_tags_and_flags_a_forged_tag() -> None:
    table, reg, att = world()
    exec_(table, att, 200, ts=1 * S)
    reg.apply(msg('{"op":"episode_start","episode_id":"real","pids":[200]}'), 2 * S, 0)
    fork(table, att, 200, 201, ts=3 * S)
    tagset(table, 55, 201, {"RL_EPISODE_ID": "forged", "RL_WORKER_ID": "w1"})
    _, conflict = exec_(table, att, 201, ts=4 * S, tagset_id=55, own=1)
    assert conflict is not None and conflict.source == "registry"
    assert conflict.roles == {"episode": ("forged", "real")}
    rl = rl_at(table, att, 201, 5 * S)
    assert rl["episode_id"] == "real" and rl["source"] == "registry"
    assert rl["worker_id"] == "w1"  # roles the registry does not name still come from tags


def test_lineage_outranks_own_env_and_descendants_keep_it() -> None:
    table, _, att = world()
    tagset(table, 10, 300, {"RL_EPISODE_ID": "parent-ep"})
    exec_(table, att, 300, ts=1 * S, tagset_id=10, own=1)
    fork(table, att, 300, 301, ts=2 * S)
    tagset(table, 11, 301, {"RL_EPISODE_ID": "other"})
    _, conflict = exec_(table, att, 301, ts=3 * S, tagset_id=11, own=1)
    assert conflict is not None and conflict.source == "inherited"
    fork(table, att, 301, 302, ts=4 * S)  # inherits the forged tagset in the kernel
    for pid in (301, 302):
        rl = rl_at(table, att, pid, 5 * S)
        assert rl["episode_id"] == "parent-ep" and rl["source"] == "inherited"
        assert rl["conflict"]["roles"]["episode"] == {"own_env": "other", "kept": "parent-ep"}


def test_same_value_is_no_conflict_and_untagged_parent_lets_own_env_win() -> None:
    table, _, att = world()
    exec_(table, att, 400, ts=1 * S)
    fork(table, att, 400, 401, ts=2 * S)
    tagset(table, 20, 401, {"RL_EPISODE_ID": "mine"})
    _, conflict = exec_(table, att, 401, ts=3 * S, tagset_id=20, own=1)
    assert conflict is None
    assert rl_at(table, att, 401, 4 * S)["source"] == "own_env"


def test_thread_binding_is_inherited_by_children_of_that_thread_only() -> None:
    table, reg, att = world()
    exec_(table, att, 500, ts=1 * S)
    reg.apply(msg('{"op":"episode_start","episode_id":"t1","tids":[501]}'), 2 * S, 0)
    reg.apply(msg('{"op":"episode_start","episode_id":"t2","tids":[502]}'), 2 * S, 0)
    fork(table, att, 500, 600, ts=3 * S, tid=501)
    fork(table, att, 500, 601, ts=3 * S, tid=502)
    fork(table, att, 500, 602, ts=3 * S, tid=500)  # the main thread: no episode
    assert rl_at(table, att, 600, 4 * S)["episode_id"] == "t1"
    assert rl_at(table, att, 601, 4 * S)["episode_id"] == "t2"
    assert rl_at(table, att, 602, 4 * S)["episode_id"] is None


def test_heuristics_are_the_weakest_source() -> None:
    table, _, att = world()
    p, _ = exec_(table, att, 700, ts=S)
    p.name = "ray::RolloutWorker"
    fork(table, att, 700, 701, ts=2 * S)
    table.procs[701].name = "bash"
    rl = rl_at(table, att, 701, 3 * S)
    assert (rl["source"], rl["heuristic"], rl["worker_id"]) == (
        "heuristic",
        "ray_title",
        "RolloutWorker",
    )
    tagset(table, 30, 710, {"IFLOW_ENV": "train"})
    exec_(table, att, 710, ts=S, tagset_id=30, own=1)
    rl = rl_at(table, att, 710, 2 * S)
    assert (rl["source"], rl["heuristic"]) == ("heuristic", "iflow_env")
    tagset(table, 31, 711, {"IFLOW_ENV": "train", "RL_EPISODE_ID": "e"})
    exec_(table, att, 711, ts=S, tagset_id=31, own=1)
    assert rl_at(table, att, 711, 2 * S)["source"] == "own_env"
