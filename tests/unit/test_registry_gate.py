"""Who may bind, without a kernel: trust rules, what a live episode owns, self-bindings and
the membership of a sender in an episode by each source."""

from __future__ import annotations

import os

import pytest

from monitor.config import config_from_dict
from monitor.state.cgroups import CgroupResolver
from monitor.state.registry.gate import RegistryGate, Trust
from monitor.state.registry.protocol import ProtocolError, Refused
from monitor.state.registry.server import Request
from monitor.state.registry.state import Registry
from monitor.state.requests import Listener, Requester
from tests.support.events import rl_at
from tests.unit.test_attribution_registry import S, exec_, fork, msg, tagset, world

pytestmark = pytest.mark.unit


def trust(**registry: object) -> Trust:
    return Trust.from_config(config_from_dict({"registry": registry}).registry)


def test_default_trust_is_root_and_the_rlguard_group() -> None:
    t = trust()
    assert t.refuses((os.getpid(), 0, 0), "/usr/bin/python3", "/") is None
    why = t.refuses((999_999, 4242, 4242), "/usr/bin/python3", "/")
    assert why is not None and "uid 4242" in why


def test_numeric_groups_executables_and_cgroups() -> None:
    t = trust(
        trusted_uids=[],
        trusted_groups=["4242", "no-such-group-rlg"],
        trusted_executables=["/opt/trainer/bin/*", "/usr/bin/python3"],
        trusted_cgroups=["/system.slice/trainer.service"],
    )
    ok_cg = "/system.slice/trainer.service/worker"
    assert t.refuses((999_999, 1000, 4242), "/opt/trainer/bin/run", ok_cg) is None
    assert t.refuses((999_999, 1000, 4242), "/usr/bin/python3", ok_cg) is None
    assert "trusted_executables" in (t.refuses((999_999, 1000, 4242), "/tmp/x", ok_cg) or "")
    assert "trusted_cgroups" in (
        t.refuses((999_999, 1000, 4242), "/usr/bin/python3", "/system.slice/trainer.servicex") or ""
    )
    assert "uid 1000" in (t.refuses((999_999, 1000, 1000), "/usr/bin/python3", ok_cg) or "")


def test_what_a_live_episode_owns_is_refused_until_it_ends() -> None:
    reg = Registry(cgroup_mount="/sys/fs/cgroup")
    reg.apply(msg('{"op":"episode_start","episode_id":"a","pids":[7],"tids":[8]}'), S, 0)
    reg.apply(msg('{"op":"episode_start","episode_id":"a","cgroup":"/sb/a"}'), S, 0)
    reg.apply(msg('{"op":"episode_start","episode_id":"c","container_id":"abcdef012345"}'), S, 0)
    for line, what in (
        ('{"op":"episode_start","episode_id":"b","pids":[7]}', "pid 7"),
        ('{"op":"episode_start","episode_id":"b","tids":[8]}', "tid 8"),
        ('{"op":"episode_start","episode_id":"b","cgroup":"/sb/a/inner"}', "cgroup /sb/a"),
        ('{"op":"episode_start","episode_id":"b","cgroup":"/sb"}', "cgroup /sb/a"),
        (
            '{"op":"episode_start","episode_id":"b","container_id":"' + "abcdef012345" * 2 + '"}',
            "container abcdef012345",
        ),
    ):
        with pytest.raises(Refused, match=what):
            reg.apply(msg(line), 2 * S, 0)
    assert "b" not in reg.episodes  # a refused message binds nothing
    # the owner itself may add more; a sibling cgroup is not owned
    reg.apply(msg('{"op":"episode_start","episode_id":"a","pids":[7,9]}'), 2 * S, 0)
    reg.apply(msg('{"op":"episode_start","episode_id":"b","cgroup":"/sb/ab"}'), 2 * S, 0)
    reg.apply(msg('{"op":"episode_end","episode_id":"a"}'), 3 * S, 0)
    reg.apply(msg('{"op":"episode_start","episode_id":"b","pids":[7],"cgroup":"/sb/a"}'), 4 * S, 0)
    hit = reg.for_task(7, 7, 5 * S)
    assert hit is not None and hit[0].episode_id == "b"
    assert issubclass(Refused, ProtocolError)  # answered like any refused message


def test_a_binding_the_trainer_made_of_itself_does_not_put_it_inside() -> None:
    table, reg, att = world()
    exec_(table, att, 100, ts=S)
    exec_(table, att, 200, ts=S)
    reg.apply(msg('{"op":"episode_start","episode_id":"e","pids":[100]}'), 2 * S, 0, {"pid": 100})
    reg.apply(msg('{"op":"episode_start","episode_id":"f","pids":[200]}'), 2 * S, 0, {"pid": 100})
    assert att.membership(table.procs[100], 3 * S) is None  # the trainer, bound by itself
    m = att.membership(table.procs[200], 3 * S)
    assert m is not None and (m.episode_id, m.source) == ("f", "registry")
    assert rl_at(table, att, 100, 3 * S)["episode_id"] == "e"  # still attributed to e
    fork(table, att, 100, 101, ts=4 * S)
    m = att.membership(table.procs[101], 5 * S)
    assert m is not None and (m.episode_id, m.source) == ("e", "birth")


def test_membership_by_tags_of_the_process_or_an_ancestor() -> None:
    table, _, att = world()
    tagset(table, 10, 300, {"RL_EPISODE_ID": "t"})
    exec_(table, att, 300, ts=S, tagset_id=10, own=1)
    fork(table, att, 300, 301, ts=2 * S)
    for pid, source in ((300, "own_env"), (301, "inherited")):
        m = att.membership(table.procs[pid], 3 * S)
        assert m is not None and (m.episode_id, m.source) == ("t", source)
    exec_(table, att, 400, ts=S)
    assert att.membership(table.procs[400], 3 * S) is None


def _request(pid: int, uid: int, line: str, ts: int) -> Request:
    return Request(1, msg(line), (pid, uid, uid), (), ts, ts)


def test_a_request_link_alone_does_not_refuse_a_trusted_trainer() -> None:
    """A loopback server (the harness, a reward service) served episode e, then started a
    trainer within the window: the trainer is linked by request, not inside e."""
    table, reg, att = world()
    exec_(table, att, 500, ts=S)  # the server, outside any episode
    server = table.procs[500]
    att.requests.link(
        Listener(500, server.entity_id, "tcp:127.0.0.1:9000"),
        [Requester("e", None, None, 42, "x-42", "agent", "tcp:127.0.0.1:9000", S)],
    )
    fork(table, att, 500, 501, ts=S + 1)  # the trainer it starts right after
    trainer = table.procs[501]
    m = att.membership(trainer, 2 * S)
    assert m is not None and m.source == "requested"
    gate = RegistryGate(reg, att, table, CgroupResolver(), trust())
    ok = gate.decide(_request(501, 0, '{"op":"episode_start","episode_id":"f"}', 2 * S))
    assert ok.ok and ok.refusal is None and "f" in reg.episodes
    # an untrusted process linked the same way is still refused, as untrusted
    fork(table, att, 500, 502, ts=S + 2)
    no = gate.decide(_request(502, 4242, '{"op":"episode_start","episode_id":"g"}', 2 * S))
    assert not no.ok and no.refusal is not None and "g" not in reg.episodes
    # inside by a strong source (tags) is refused even when trusted
    tagset(table, 11, 600, {"RL_EPISODE_ID": "t"})
    exec_(table, att, 600, ts=S, tagset_id=11, own=1)
    inside = gate.decide(_request(600, 0, '{"op":"episode_start","episode_id":"h"}', 2 * S))
    assert not inside.ok and "h" not in reg.episodes
