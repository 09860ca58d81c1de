"""Header fields for typed events built in unit tests."""

from __future__ import annotations

from typing import Any


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
