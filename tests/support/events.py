"""Header fields for typed events built in unit tests, their attributed form and rl block."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from monitor.sensor.events import ConnectEvent, Event
    from monitor.state.attributed import AttributedEvent
    from monitor.state.attribution import Attributor
    from monitor.state.process_table import Process, ProcessTable


def hdr(
    pid: int, ppid: int = 1, ts: int = 1000, tagset: int = 0, origin: int = 0, comm: str = "p"
) -> dict[str, Any]:
    """The struct rlg_header fields of an event from `pid`."""
    return dict(
        pid=pid,
        tid=pid,
        ppid=ppid,
        ts_ns=ts,
        cgroup_id=1,
        tagset_id=tagset,
        tag_origin=origin,
        uid=0,
        gid=0,
        flags=0,
        comm=comm,
    )


def connect_event(table: ProcessTable, pid: int, ts: int, **fields: Any) -> ConnectEvent:
    """A TCP connect by pid at ts with its current tagset (FIELDS override the rest)."""
    from monitor.sensor.events import ConnectEvent

    p = table.procs[pid]
    args: dict[str, Any] = dict(fd=3, ret=0, cookie=1, family=2, dport=1, sock_type=1)
    args.update(protocol=6, daddr="127.0.0.1")
    args.update(fields)
    return ConnectEvent(
        **{**hdr(pid, ts=ts), "tagset_id": p.tagset_id, "tag_origin": p.tag_origin}, **args
    )


def rl_at(table: ProcessTable, att: Attributor, pid: int, ts: int) -> dict[str, Any]:
    """The rl block the attributor gives a connect by pid at ts (its current tagset)."""
    return att.attribute(connect_event(table, pid, ts), table.procs[pid]).rl.as_doc()


def attributed(
    table: ProcessTable,
    ev: Event,
    p: Process | None,
    parent: Process | None = None,
    attributor: Attributor | None = None,
) -> AttributedEvent:
    """The attributed event the collector would build (tags only, unless an attributor)."""
    from monitor.config import load_config
    from monitor.state.attribution import Attributor

    att = attributor or Attributor(table, load_config(None).attribution)
    return att.attribute(ev, p, parent)


def rl_of(table: ProcessTable, p: Process, tagset_id: int, origin: int) -> dict[str, Any]:
    """The rl block of a record of ``p`` carrying (tagset_id, origin) in its header."""
    from monitor.sensor.events import ExitEvent

    ev = ExitEvent(**{**hdr(p.pid, ppid=p.ppid), "tagset_id": tagset_id, "tag_origin": origin})
    return attributed(table, ev, p).rl.as_doc()
