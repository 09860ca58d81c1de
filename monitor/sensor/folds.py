"""Connect folding, user-space half: how many connects each line stands for.

The kernel folds identical connects (same process image, fd, destination,
type and result) within a short window into a count (``connect_folds`` in
probes/connect.bpf.h).  The first connect of a key is always sent in full; a
later record of the same key carries the key's running count.  Here each
connect line gets ``rlguard.connect.count``: the connects it stands for (1
for an ordinary record, more when folded ones precede it), and an idle fold
whose last connects no record carried yet is reported by a summary line
(``rlguard.connect.summary: true``).  Summed over all connect lines, ``count``
is every connect the kernel saw, folded or not (minus counted ring drops).
"""

from __future__ import annotations

from typing import Any, Protocol

from monitor.sanitize import safe_text
from monitor.sensor.events import ConnectEvent


class FoldSource(Protocol):
    """The sensor's connect_folds map (monitor.sensor.probes.Sensor)."""

    def folds(self) -> list[Any]: ...

    def retire_fold(self, key: Any) -> int | None: ...


# a fold whose last connect is older than this has no record in flight
# (records are drained every poll interval): its tail can be reported
FLUSH_IDLE_NS = 1_500_000_000
# and after this long it leaves the kernel map (new connects start a new fold)
RETIRE_IDLE_NS = 10_000_000_000


class ConnectFolds:
    """Per fold id, the highest count already reported on a line."""

    def __init__(self) -> None:
        self.reported: dict[int, int] = {}
        self.represented = 0  # connects accounted for on connect lines so far
        self.summaries = 0

    def on_record(self, ev: ConnectEvent) -> int:
        """The number of connects this record's line stands for."""
        if not ev.fold_id:
            self.represented += 1
            return 1
        prev = self.reported.get(ev.fold_id, 0)
        n = max(ev.fold_count - prev, 0)
        if n:
            self.reported[ev.fold_id] = ev.fold_count
        self.represented += n
        return n

    def flush(
        self, sensor: FoldSource, now_ns: int, final: bool = False
    ) -> list[tuple[ConnectEvent, int]]:
        """Summary events for idle folds with unreported connects; retires old folds.

        Call right after draining the ring: a fold idle for FLUSH_IDLE_NS has
        no record left in it, so nothing is reported twice.  ``final`` (at
        shutdown, after the last drain) reports every fold's tail at once.
        """
        out: list[tuple[ConnectEvent, int]] = []
        for fold in sensor.folds():
            idle = now_ns - fold.last_seen_ns
            if idle < FLUSH_IDLE_NS and not final:
                continue
            count = fold.count
            if idle >= RETIRE_IDLE_NS:
                last = sensor.retire_fold(fold.key)
                if last is not None:
                    count = max(count, last)
            prev = self.reported.get(fold.id, 0)
            if count > prev:
                out.append((summary_event(fold.key, fold.last_seen_ns), count - prev))
                self.reported[fold.id] = count
                self.represented += count - prev
                self.summaries += 1
            if idle >= RETIRE_IDLE_NS:
                self.reported.pop(fold.id, None)
        return out


def summary_event(key: Any, ts_ns: int) -> ConnectEvent:
    """A connect event rebuilt from a fold key (struct rlg_connect_key)."""
    family = int(key.family)
    raw = bytes(key.daddr)
    from monitor.sensor.events import COMM_LIMIT, format_ip

    return ConnectEvent(
        pid=int(key.tgid),
        tid=int(key.tgid),
        ppid=0,
        ts_ns=ts_ns,
        cgroup_id=int(key.cgroup_id),
        tagset_id=int(key.tagset_id),
        tag_origin=0,
        uid=int(key.uid),
        gid=0,
        flags=1,  # CONNECT_SYSCALL: only syscall connects fold
        comm=safe_text(bytes(key.comm).split(b"\0", 1)[0], COMM_LIMIT),
        fd=int(key.fd),
        ret=int(key.ret),
        family=family,
        daddr=format_ip(family, raw),
        dport=int(key.dport),
        sock_type=int(key.sock_type),
    )
