"""Process lineage and episode attribution (typed -> attributed).

The kernel carries tags down the process tree (fork inherits, an exec with its
own tags replaces); each record's header names its tagset and the process whose
environment defined it.  This table keeps what the header cannot: names,
argv, parents and start times, seeded from /proc at start-up so processes that
were already running have lineage too.  It never reads /proc per event.
"""

from __future__ import annotations

import gc
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from monitor.clock import boottime_ns
from monitor.config import TagsConfig
from monitor.sensor.events import Event, ExecEvent, ExitEvent, ForkEvent, TagsetEvent

ROLES = ("episode", "worker", "run", "trajectory", "sandbox")
# user-space tagset ids (seeding) live in the top half; kernel ids are boot-time ns
SEED_TAGSET_BASE = 1 << 63


def read_boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            return fh.read().strip()
    except OSError:
        return "unknown-boot"


@dataclass(slots=True)
class Process:
    pid: int
    entity_id: str
    ppid: int
    parent_entity_id: str | None
    start_ns: int
    name: str
    executable: str | None = None
    args: list[str] = field(default_factory=list)
    args_truncated: bool = False
    uid: int | None = None
    gid: int | None = None
    tagset_id: int = 0
    tag_origin: int = 0
    own_tag_mask: int = 0
    exited_ns: int | None = None
    exit_code: int | None = None
    exit_signal: int | None = None
    # how we learned of it: fork, exec (no fork seen), proc (seeded), event (stub)
    seen_via: str = "event"
    cgroup_id: int = 0  # of its latest record


@dataclass(frozen=True, slots=True)
class Tagset:
    values: dict[str, str]
    truncated: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class SeedRecord:
    """What seeding learned of one running process, for the kernel maps."""

    pid: int
    ppid: int
    tagset_id: int
    tag_origin: int


COMPACT_MIN = 4096  # tables smaller than this are never worth compacting


def trim_heap() -> None:
    """Return free heap to the kernel (glibc keeps it otherwise); best effort."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class ProcessTable:
    """Live processes by pid, with exited ones kept for a short grace period.

    The grace lets late events of a process that just exited (a TCP FIN, a
    thread's last send) render with its name and lineage.  It is bounded by
    time (``exit_grace_s``) and by count (``max_exited``): at 15k exits/s a
    5 s grace alone would hold 75k exited entries.  Under such a flood the
    oldest exited entry leaves first and is counted in ``exited_evicted``.
    """

    def __init__(
        self,
        tags: TagsConfig,
        boot_id: str | None = None,
        max_lineage: int = 16,
        exit_grace_s: float = 5.0,
        max_entries: int = 200_000,
        max_exited: int = 8192,
        tagset_fallback: Callable[[int], Tagset | None] | None = None,
    ) -> None:
        self.tags = tags
        self.keys: list[str] = list(tags.keys)
        self.boot_id = boot_id or read_boot_id()
        self._boot8 = self.boot_id.replace("-", "")[:8]
        self.max_lineage = max_lineage
        self.exit_grace_ns = int(exit_grace_s * 1e9)
        self.max_entries = max_entries
        self.max_exited = max_exited
        self.procs: dict[int, Process] = {}
        # bounded: an evicted tagset is read back from the kernel map on demand
        self.tagsets: OrderedDict[int, Tagset] = OrderedDict()
        self.max_tagsets = 65536
        # the pids of exited entries -> end of their grace (boot ns), oldest exit first:
        # exactly the table's exited entries, so expiry and eviction are O(1) at the front
        self._exited: OrderedDict[int, int] = OrderedDict()
        self._high_water = 0  # most entries since the last compaction
        self._next_seed_id = SEED_TAGSET_BASE + 1
        self.evicted = 0  # entries dropped because the table held max_entries
        self.exited_evicted = 0  # exited entries dropped before their grace (max_exited)
        # bumped on every change that can alter a rendered name, parent or lineage
        self.generation = 0
        # fetches a tagset the stream did not carry (the kernel map)
        self.tagset_fallback = tagset_fallback

    # -- identity --------------------------------------------------------------

    def entity_id(self, pid: int, start_ns: int) -> str:
        """Unique across PID reuse and reboots: boot id, start time, pid."""
        return f"{self._boot8}-{start_ns:x}-{pid}"

    def __len__(self) -> int:
        return len(self.procs)

    @property
    def exited(self) -> int:
        """Exited processes held for their grace period."""
        return len(self._exited)

    # -- seeding ---------------------------------------------------------------

    def seed_from_proc(self) -> list[SeedRecord]:
        """Add every running process (psutil), with tags from /proc/PID/environ.

        Tag inheritance follows the kernel's rules: a process whose own
        environment has no configured key inherits its parent's tagset; one
        whose own values differ gets a new tagset (own values over inherited).
        Only configured keys are ever kept from an environment.
        """
        import psutil

        boot = psutil.boot_time()
        wanted = set(self.keys)
        rows: dict[int, tuple[int, dict[str, str], Process]] = {}
        attrs = ["pid", "ppid", "name", "exe", "cmdline", "create_time", "uids", "gids"]
        for proc in psutil.process_iter(attrs):
            info = proc.info
            pid = info["pid"]
            try:
                env = proc.environ()
                # values are attacker-controlled: sanitise like everything from the kernel
                own = {k: _safe(v) for k, v in env.items() if k in wanted}
                del env  # never keep the rest of an environment
            except (psutil.Error, OSError):
                own = {}
            start_ns = int(max(0.0, (info.get("create_time") or boot) - boot) * 1e9)
            p = Process(
                pid=pid,
                entity_id=self.entity_id(pid, start_ns),
                ppid=info.get("ppid") or 0,
                parent_entity_id=None,
                start_ns=start_ns,
                name=_safe(info.get("name") or ""),
                executable=_safe(info["exe"]) if info.get("exe") else None,
                args=[_safe(a) for a in (info.get("cmdline") or [])][:128],
                uid=info["uids"].real if info.get("uids") else None,
                gid=info["gids"].real if info.get("gids") else None,
                seen_via="proc",
            )
            rows[pid] = (p.ppid, own, p)

        out: list[SeedRecord] = []
        done: dict[int, tuple[int, int]] = {}

        def resolve(pid: int, depth: int = 0) -> tuple[int, int]:
            if pid in done:
                return done[pid]
            row = rows.get(pid)
            if row is None or depth > 512:
                return (0, 0)
            ppid, own, p = row
            inherited = resolve(ppid, depth + 1) if ppid and ppid != pid else (0, 0)
            result = inherited
            if own:
                base = self.tagsets.get(inherited[0]) if inherited[0] else None
                if base is None or any(base.values.get(k) != v for k, v in own.items()):
                    values = dict(base.values) if base else {}
                    values.update(own)
                    tid = self._next_seed_id
                    self._next_seed_id += 1
                    self.tagsets[tid] = Tagset(values)
                    result = (tid, pid)
                p.own_tag_mask = sum(1 << self.keys.index(k) for k in own)
            done[pid] = result
            return result

        for pid in sorted(rows):
            tid, origin = resolve(pid)
            ppid, _own, p = rows[pid]
            p.tagset_id, p.tag_origin = tid, origin
            parent = rows.get(ppid)
            p.parent_entity_id = parent[2].entity_id if parent else None
            if pid not in self.procs:
                self.procs[pid] = p
            out.append(SeedRecord(pid, ppid, tid, origin))
        return out

    def tagset_values_by_index(self, tagset_id: int) -> dict[int, str]:
        ts = self.tagsets.get(tagset_id)
        if ts is None:
            return {}
        return {self.keys.index(k): v for k, v in ts.values.items() if k in self.keys}

    # -- updates from events -----------------------------------------------------

    def on_tagset(self, ev: TagsetEvent) -> None:
        values = {k: v for k, v in zip(self.keys, ev.values, strict=False) if v is not None}
        truncated = frozenset(k for i, k in enumerate(self.keys) if ev.truncated_mask & (1 << i))
        self._put_tagset(ev.id, Tagset(values, truncated))

    def _put_tagset(self, tagset_id: int, ts: Tagset) -> None:
        self.tagsets[tagset_id] = ts
        if len(self.tagsets) > self.max_tagsets:
            self.tagsets.popitem(last=False)

    def _stub(self, ev: Event) -> Process:
        """A process first seen through one of its events (missed fork/exec)."""
        parent = self.procs.get(ev.ppid)
        p = Process(
            pid=ev.pid,
            entity_id=self.entity_id(ev.pid, ev.ts_ns),
            ppid=ev.ppid,
            parent_entity_id=parent.entity_id if parent else None,
            start_ns=ev.ts_ns,
            name=ev.comm,
            uid=ev.uid,
            gid=ev.gid,
            tagset_id=ev.tagset_id,
            tag_origin=ev.tag_origin,
            cgroup_id=ev.cgroup_id,
        )
        self._insert(p)
        return p

    def _insert(self, p: Process) -> None:
        self.generation += 1
        self._exited.pop(p.pid, None)  # a reused pid: the new process replaces the exited one
        if len(self.procs) >= self.max_entries and p.pid not in self.procs:
            self.evicted += 1
            self._evict_one()
        self.procs[p.pid] = p

    def _evict_one(self) -> None:
        # the oldest exited entry first, else the oldest entry
        if self._exited:
            pid, _deadline = self._exited.popitem(last=False)
        else:
            pid = next(iter(self.procs))
        del self.procs[pid]

    def process_for(self, ev: Event) -> Process:
        """The table entry an event belongs to, created if unknown."""
        p = self.procs.get(ev.pid)
        if p is None:
            p = self._stub(ev)
        else:
            # an exited entry still owns late events (a TCP FIN after exit);
            # a reused pid arrives through a fork, which replaces the entry
            # the kernel's view of tags is authoritative
            p.tagset_id = ev.tagset_id or p.tagset_id
            p.tag_origin = ev.tag_origin if ev.tagset_id else p.tag_origin
            p.cgroup_id = ev.cgroup_id or p.cgroup_id
        return p

    def on_fork(self, ev: ForkEvent) -> Process:
        self.generation += 1
        parent = self.process_for(ev)
        child = Process(
            pid=ev.child_pid,
            entity_id=self.entity_id(ev.child_pid, ev.ts_ns),
            ppid=ev.pid,
            parent_entity_id=parent.entity_id,
            start_ns=ev.ts_ns,
            name=parent.name,
            executable=parent.executable,
            args=parent.args,
            args_truncated=parent.args_truncated,
            uid=ev.uid,
            gid=ev.gid,
            tagset_id=ev.tagset_id,
            tag_origin=ev.tag_origin,
            seen_via="fork",
            cgroup_id=ev.cgroup_id,
        )
        self._insert(child)
        return child

    def on_exec(self, ev: ExecEvent) -> Process:
        self.generation += 1
        p = self.procs.get(ev.pid)
        if p is None or p.exited_ns is not None:
            p = self._stub(ev)
            p.seen_via = "exec"
        p.name = ev.comm
        p.executable = ev.filename
        p.args = ev.argv
        p.args_truncated = ev.args_truncated
        p.uid, p.gid = ev.uid, ev.gid
        p.tagset_id, p.tag_origin = ev.tagset_id, ev.tag_origin
        p.own_tag_mask = ev.own_tag_mask
        p.cgroup_id = ev.cgroup_id
        return p

    def on_exit(self, ev: ExitEvent) -> Process:
        self.generation += 1
        p = self.process_for(ev)
        p.exited_ns = ev.ts_ns
        p.exit_code = ev.exit_code if ev.exit_code >= 0 else None
        p.exit_signal = ev.exit_signal or None
        self._exited.pop(p.pid, None)  # a repeated exit record restarts the grace, last in line
        self._exited[p.pid] = ev.ts_ns + self.exit_grace_ns
        if len(self._exited) > self.max_exited:
            # an exit flood: cut the oldest grace short rather than grow without bound
            pid, _deadline = self._exited.popitem(last=False)
            del self.procs[pid]
            self.exited_evicted += 1
        return p

    def expire(self, now_ns: int | None = None) -> int:
        """Drop exited processes whose grace period is over; returns how many."""
        now = boottime_ns() if now_ns is None else now_ns
        n = 0
        exited = self._exited
        # exits arrive in (nearly) time order, so deadlines ascend from the front
        while exited and next(iter(exited.values())) <= now:
            pid, _deadline = exited.popitem(last=False)
            del self.procs[pid]
            n += 1
        if n:
            self.generation += 1
        size = len(self.procs)
        self._high_water = max(self._high_water, size)
        if n and self._high_water > COMPACT_MIN and size * 4 < self._high_water:
            # a dict never shrinks when entries are deleted: after a churn of
            # short-lived processes, copy the table into right-sized storage
            # and hand the freed heap back (RSS returns to its start value)
            self.procs = dict(self.procs)
            self._exited = OrderedDict(self._exited)  # a copy keeps the exit order
            self._high_water = size
            gc.collect()  # cycles among the expired entries: free them now
            trim_heap()
        return n

    # -- attribution ---------------------------------------------------------------

    def lineage(self, p: Process) -> list[Process]:
        """Ancestors, nearest first, bounded by max_lineage."""
        out: list[Process] = []
        seen = {p.pid}
        cur = p
        while len(out) < self.max_lineage and cur.ppid and cur.ppid not in seen:
            parent = self.procs.get(cur.ppid)
            if parent is None:
                break
            out.append(parent)
            seen.add(parent.pid)
            cur = parent
        return out

    def tagset(self, tagset_id: int) -> Tagset | None:
        ts = self.tagsets.get(tagset_id)
        if ts is not None:
            self.tagsets.move_to_end(tagset_id)  # least recently used goes first
        if ts is None and tagset_id and self.tagset_fallback is not None:
            ts = self.tagset_fallback(tagset_id)
            if ts is not None:
                self._put_tagset(tagset_id, ts)
        return ts

    def role_values(self, ts: Tagset) -> dict[str, str | None]:
        """Each role's value in a tagset: the first of the role's keys that is present."""
        return {
            role: next((ts.values[k] for k in getattr(self.tags, role) if k in ts.values), None)
            for role in ROLES
        }


def _safe(text: str) -> str:
    from monitor.sanitize import safe_text

    return safe_text(text, 1024)


T = TypeVar("T")
BY_PROCESS_PRUNE_MIN = 4096  # entries held before the first pruning pass


class ByProcess(dict[int, tuple[str, T]]):
    """Values by process, tied to the entity they were set for (a reused pid gets nothing),
    and pruned relative to the table: once there are as many as twice the table's entries,
    those of processes that left it go (amortised O(1); bounded by the table, not by
    max_entries: an exit flood would otherwise keep hundreds of thousands).  A dict, so
    that an empty one costs nothing to test on the per-record path."""

    def __init__(self, table: ProcessTable, prune_min: int = BY_PROCESS_PRUNE_MIN) -> None:
        super().__init__()
        self.table = table
        self.prune_min = prune_min

    def of(self, p: Process) -> T | None:
        got = self.get(p.pid)
        return got[1] if got is not None and got[0] == p.entity_id else None

    def put(self, p: Process, value: T) -> None:
        live = self.table.procs
        if len(self) >= max(self.prune_min, 2 * len(live)):
            keep = {
                pid: v
                for pid, v in self.items()
                if (q := live.get(pid)) is not None and q.entity_id == v[0]
            }
            self.clear()
            self.update(keep)
        self[p.pid] = (p.entity_id, value)
