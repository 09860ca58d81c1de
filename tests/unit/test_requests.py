"""Work done on request, without a kernel: listeners, requests, the window, inheritance."""

from __future__ import annotations

import pytest

from monitor.sensor.events import TcpStateEvent, UnixConnectEvent, UnixListenEvent
from monitor.state.attribution import Attributor
from monitor.state.process_table import ProcessTable
from monitor.state.requests import Requester, merge
from tests.support.events import connect_event, hdr, rl_at
from tests.unit.test_attribution_registry import S, exec_, fork, tagset, world

pytestmark = pytest.mark.unit

PATH = "/nonexistent-rlg/tmux-0/default"  # matched by name: there is no file to stat


def unix(cls: type, table: ProcessTable, pid: int, ts: int, path: str = PATH):
    p = table.procs[pid]
    h = {**hdr(pid, ts=ts), "tagset_id": p.tagset_id, "tag_origin": p.tag_origin}
    return cls(**h, fd=3, ret=0, path=path, abstract=path.startswith("@"))


def request(table: ProcessTable, att: Attributor, pid: int, ts: int, path: str = PATH):
    ev = unix(UnixConnectEvent, table, pid, ts, path)
    ae = att.attribute(ev, table.procs[pid])
    server = att.requests.unix_server(ev)
    if server is not None:
        att.link(ae, server, "unix")
    return ae


def tagged(table: ProcessTable, att: Attributor, pid: int, ep: str, ts: int, tid: int) -> None:
    tagset(table, tid, pid, {"RL_EPISODE_ID": ep})
    exec_(table, att, pid, ts=ts, tagset_id=tid, own=1)


def test_a_server_of_an_earlier_episode_works_for_the_requester() -> None:
    table, _, att = world()
    tagged(table, att, 100, "A", S, 10)  # the tmux server, started in episode A
    att.requests.on_unix_listen(unix(UnixListenEvent, table, 100, S), table.procs[100])
    tagged(table, att, 200, "B", 10 * S, 11)  # `tmux new-window -d miner` in episode B
    ae = request(table, att, 200, 10 * S)
    assert ae.link is not None and ae.link.server.pid == 100
    assert ae.link.server.rl.episode_id == "A"
    assert [r.episode_id for r in ae.link.requesters] == ["B"]
    assert ae.crossed is not None and ae.crossed[0] == "request"
    fork(table, att, 100, 101, ts=10 * S + 10**6)  # the new window, in the window
    fork(table, att, 101, 102, ts=20 * S)  # the miner, later: inherited for good
    for pid in (101, 102):
        rl = rl_at(table, att, pid, 21 * S)
        assert rl["episode_id"] == "A"  # born there: claims and requests never move it
        assert [r["episode_id"] for r in rl["requested_by"]] == ["B"]
        assert rl["requested_by"][0]["via"] == "unix:" + PATH
    # the server's own events in the window are the requester's too, not after it
    assert rl_at(table, att, 100, 11 * S)["requested_by"][0]["pid"] == 200
    assert "requested_by" not in rl_at(table, att, 100, 16 * S)
    fork(table, att, 100, 103, ts=16 * S)  # a window of its own, after the request's
    assert "requested_by" not in rl_at(table, att, 103, 17 * S)


def test_work_of_a_server_outside_any_episode_is_the_requesters() -> None:
    table, _, att = world()
    exec_(table, att, 300, ts=S)  # a daemon started before any episode
    att.requests.on_unix_listen(
        unix(UnixListenEvent, table, 300, S, "@rlg-daemon"), table.procs[300]
    )
    tagged(table, att, 400, "B", 2 * S, 12)
    ae = request(table, att, 400, 2 * S, "@rlg-daemon")
    assert ae.link is not None and ae.crossed is None  # no other episode: no crossing
    fork(table, att, 300, 301, ts=3 * S)
    rl = rl_at(table, att, 301, 4 * S)
    assert (rl["episode_id"], rl["source"]) == ("B", "requested")
    m = att.membership(table.procs[301], 4 * S)
    assert m is not None and (m.episode_id, m.source) == ("B", "requested")


def test_requests_travel_through_a_chain_of_servers() -> None:
    """dockerd asked by B asks containerd: containerd's work is B's too."""
    table, _, att = world()
    exec_(table, att, 500, ts=S)  # dockerd
    exec_(table, att, 600, ts=S)  # containerd
    att.requests.on_unix_listen(
        unix(UnixListenEvent, table, 500, S, "/nx/docker.sock"), table.procs[500]
    )
    att.requests.on_unix_listen(
        unix(UnixListenEvent, table, 600, S, "/nx/ctd.sock"), table.procs[600]
    )
    tagged(table, att, 700, "B", 2 * S, 13)
    request(table, att, 700, 2 * S, "/nx/docker.sock")
    ae = request(table, att, 500, 2 * S + 10**8, "/nx/ctd.sock")  # dockerd, acting for B
    assert ae.link is not None and [r.episode_id for r in ae.link.requesters] == ["B"]
    fork(table, att, 600, 601, ts=3 * S)  # the shim
    assert rl_at(table, att, 601, 4 * S)["episode_id"] == "B"


def test_loopback_tcp_to_a_local_listener() -> None:
    table, _, att = world()
    tagged(table, att, 800, "A", S, 14)  # a Jupyter kernel of episode A
    h = {**hdr(800, ts=S), "flags": 1}
    listen = TcpStateEvent(
        **h,
        skaddr=77,
        oldstate=7,
        newstate=10,
        family=2,
        saddr="127.0.0.1",
        daddr="0.0.0.0",
        sport=8888,
        dport=0,
    )
    att.requests.on_tcp_state(listen, table.procs[800])
    tagged(table, att, 900, "B", 2 * S, 15)
    p = table.procs[900]
    ev = connect_event(table, 900, 2 * S, daddr="127.0.0.1", dport=8888)
    ae = att.attribute(ev, p)
    server = att.requests.tcp_server(ev)
    assert server is not None and server.pid == 800
    att.link(ae, server, "tcp")
    assert ae.crossed is not None
    assert rl_at(table, att, 800, 3 * S)["requested_by"][0]["episode_id"] == "B"
    # the listener closes: no more links to it
    close = TcpStateEvent(
        **h,
        skaddr=77,
        oldstate=10,
        newstate=7,
        family=2,
        saddr="127.0.0.1",
        daddr="0.0.0.0",
        sport=8888,
        dport=0,
    )
    att.requests.on_tcp_state(close, table.procs[800])
    assert att.requests.tcp_server(ev) is None
    ev.daddr = "198.51.100.7"  # not loopback: never a local request
    assert att.requests.tcp_server(ev) is None


def test_requesters_are_bounded_and_distinct() -> None:
    def r(ep: str, pid: int) -> Requester:
        return Requester(ep, None, None, pid, f"e{pid}", "x", "unix:/s", pid)

    got = merge((r("A", 1), r("B", 2)), (r("A", 1), r("C", 3), r("D", 4), r("E", 5)))
    assert [x.episode_id for x in got] == ["A", "C", "D", "E"]  # most recent last, four kept


def test_the_live_view_names_every_episode_of_a_line() -> None:
    from monitor.tui.model import build_row

    doc = {
        "event": {"kind": "event", "action": "unix_connect"},
        "process": {"pid": 7, "name": "tmux"},
        "rl": {"episode_id": "A", "requested_by": [{"episode_id": "B"}, "junk"]},
        "rlguard": {
            "unix": {"path": "/tmp/tmux-0/default\x1b[31m"},
            "link": {"server": {"name": "tmux", "pid": 5, "episode_id": "C"}},
        },
    }
    row = build_row(1, doc)
    assert row.episode == "A +B"
    assert row.summary.startswith("unix connect /tmp/tmux-0/default") and "\x1b" not in row.summary
    assert row.summary.endswith("-> tmux(5) of C")
