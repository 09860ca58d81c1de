"""Sockets crossing episodes, without a kernel: the owner is named even after it left."""

from __future__ import annotations

import pytest

from monitor.sensor.events import SEND_OWNER_DIFFERS, SEND_SENDER_KNOWN, SendEvent
from monitor.state.attributed import AttributedEvent
from tests.support.events import connect_event, hdr
from tests.unit.test_attribution_registry import S, exec_, tagset, world

pytestmark = pytest.mark.unit


def test_the_owner_is_named_after_it_left_and_a_crossing_is_flagged() -> None:
    table, _, att = world()
    for pid, ep, tid in ((100, "A", 10), (200, "B", 11)):
        tagset(table, tid, pid, {"RL_EPISODE_ID": ep})
        exec_(table, att, pid, ts=S, tagset_id=tid, own=1)
    a = table.procs[100]
    conn = connect_event(table, 100, 2 * S, cookie=42, daddr="198.51.100.9", dport=3333)
    att.on_stream_connect(att.attribute(conn, a), 42)
    del table.procs[100]  # the owner hands the socket over and is long gone
    flags = SEND_OWNER_DIFFERS | SEND_SENDER_KNOWN
    send = SendEvent(
        **{**hdr(200, ts=30 * S), "tagset_id": 11, "tag_origin": 200, "flags": flags},
        cookie=42,
        owner_pid=100,
        family=2,
    )
    ae: AttributedEvent = att.attribute(send, table.procs[200])
    att.socket_owner(ae, 42, 100)
    doc = ae.rl.as_doc()
    assert doc["episode_id"] == "B"
    assert doc["socket_owner"]["episode_id"] == "A" and doc["socket_owner"]["pid"] == 100
    assert ae.crossed is not None and ae.crossed[0] == "socket"
    assert ae.rl.episodes() == ("B", "A")
    assert 42 not in att.sockets  # used once


def test_a_socket_of_the_same_episode_is_named_without_a_crossing() -> None:
    table, _, att = world()
    for pid, tid in ((300, 20), (400, 21)):
        tagset(table, tid, pid, {"RL_EPISODE_ID": "A"})
        exec_(table, att, pid, ts=S, tagset_id=tid, own=1)
    send = SendEvent(
        **{**hdr(400, ts=2 * S), "tagset_id": 21, "tag_origin": 400},
        cookie=7,
        owner_pid=300,
        family=2,
    )
    ae = att.attribute(send, table.procs[400])
    att.socket_owner(ae, 7, 300)
    assert ae.rl.socket_owner is not None and ae.rl.socket_owner.pid == 300
    assert ae.crossed is None
