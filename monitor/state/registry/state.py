"""What the trainer told us: runs, episodes and their bindings, as time intervals.

The server thread applies messages; the collector thread asks "which episode was active for
this task / this cgroup at time t".  Bindings are intervals on CLOCK_BOOTTIME (the clock of
every kernel record), stamped when a message is received: the client waits for the reply
before it forks, so a child's fork record is always later than the binding it inherits, and
a record processed late is still judged by when it happened.  Readers take no lock: every
shared container is replaced, never mutated in place, while they may be reading it.
"""

from __future__ import annotations

import glob
import itertools
import os
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson

from monitor.state.cgroups import CgroupIdentity, normalise_path
from monitor.state.registry.protocol import Message, ProtocolError, Refused
from monitor.state.registry.records import RegistryRecord, RegistryRefusals

MAX_OPEN_EPISODES = 65536
MAX_PENDING_RECORDS = 10000
_seq = itertools.count(1)


@dataclass(slots=True, eq=False)
class Episode:
    episode_id: str
    run_id: str | None
    trajectory_id: str | None
    sandbox_id: str | None
    start_ns: int
    end_ns: int | None = None
    status: str | None = None
    seq: int = field(default_factory=lambda: next(_seq))

    def active_at(self, ts_ns: int) -> bool:
        return self.start_ns <= ts_ns and (self.end_ns is None or ts_ns < self.end_ns)

    def rl_fields(self) -> dict[str, str | None]:
        return {
            "episode_id": self.episode_id,
            "run_id": self.run_id,
            "trajectory_id": self.trajectory_id,
            "sandbox_id": self.sandbox_id,
        }


@dataclass(frozen=True, slots=True)
class CgroupBinding:
    episode: Episode
    path: str | None = None  # relative to the cgroup2 mount; matches the subtree
    container_id: str | None = None  # a prefix of the full id (12+ hex digits)
    sandbox_id: str | None = None  # as named by [attribution] sandbox_patterns

    def matches(self, ident: CgroupIdentity) -> bool:
        if self.path is not None and ident.path is not None:
            if ident.path == self.path or ident.path.startswith(self.path.rstrip("/") + "/"):
                return True
        if self.container_id and ident.container_id:
            if ident.container_id.startswith(self.container_id):
                return True
        return bool(self.sandbox_id and ident.sandbox_id == self.sandbox_id)

    def overlaps(self, path: str | None, container_id: str | None, sandbox_id: str | None) -> bool:
        """Could a cgroup match both this binding and the one given?  The same subtree (either
        inside the other), the same container (one id a prefix of the other) or sandbox."""
        if self.path is not None and path is not None:
            a, b = self.path.rstrip("/") + "/", path.rstrip("/") + "/"
            if a.startswith(b) or b.startswith(a):
                return True
        if self.container_id and container_id:
            mine, theirs = self.container_id, container_id
            if mine.startswith(theirs) or theirs.startswith(mine):
                return True
        return bool(self.sandbox_id and self.sandbox_id == sandbox_id)

    def describe(self) -> str:
        if self.path is not None:
            return f"cgroup {self.path}"
        if self.container_id:
            return f"container {self.container_id}"
        return f"sandbox {self.sandbox_id}"


def docker_container_id(name: str, root: str = "/var/lib/docker/containers") -> str | None:
    """Best effort: a Docker container's id from its name, read from Docker's state files."""
    want = "/" + name.lstrip("/")
    for cfg in glob.glob(os.path.join(root, "*", "config.v2.json"))[:10000]:
        try:
            with open(cfg, "rb") as fh:
                doc = orjson.loads(fh.read(1 << 20))
        except (OSError, orjson.JSONDecodeError):
            continue
        if isinstance(doc, dict) and doc.get("Name") == want and isinstance(doc.get("ID"), str):
            return str(doc["ID"])
    return None


class Registry:
    def __init__(self, retain_ns: int = 900 * 10**9, cgroup_mount: str | None = None) -> None:
        self.retain_ns = retain_ns
        self.cgroup_mount = cgroup_mount
        self.by_pid: dict[int, tuple[Episode, ...]] = {}
        self.by_tid: dict[int, tuple[Episode, ...]] = {}
        # (table, task, episode seq) of bindings a process made of itself or of its own
        # threads: the trainer binding its own work does not put it inside the episode
        self.self_bound: frozenset[tuple[str, int, int]] = frozenset()
        self.cgroup_bindings: tuple[CgroupBinding, ...] = ()
        self.episodes: dict[str, Episode] = {}  # latest episode of each id
        self.runs: dict[str, dict[str, Any]] = {}
        self.run_of_client: dict[int, str] = {}
        self.version = 0  # bumped on every change; readers key caches on it
        self.pending: deque[RegistryRecord | RegistryRefusals] = deque()
        self.pending_dropped = 0
        self.lock = threading.Lock()  # writers only
        self.messages = 0

    # -- queries (collector thread, no lock) ----------------------------------------

    def for_task(self, pid: int, tid: int, ts_ns: int) -> tuple[Episode, str] | None:
        """The episode bound to this thread, else to this process, at ts_ns."""
        for table, via in ((self.by_tid, "thread"), (self.by_pid, "process")):
            key = tid if via == "thread" else pid
            eps = table.get(key)
            if eps:
                for ep in reversed(eps):
                    if ep.active_at(ts_ns):
                        return ep, via
        return None

    def for_task_by_others(self, pid: int, tid: int, ts_ns: int) -> tuple[Episode, str] | None:
        """Like :meth:`for_task`, without the bindings the process made of itself."""
        for table, via, key in ((self.by_tid, "thread", tid), (self.by_pid, "process", pid)):
            for ep in reversed(table.get(key, ())):
                if ep.active_at(ts_ns) and (via, key, ep.seq) not in self.self_bound:
                    return ep, via
        return None

    def open_binding(self, table: str, key: int) -> Episode | None:
        """The open episode a pid ("process") or tid ("thread") is bound to, if any."""
        eps = (self.by_pid if table == "process" else self.by_tid).get(key, ())
        return next((e for e in reversed(eps) if e.end_ns is None), None)

    def has_tasks(self) -> bool:
        return bool(self.by_pid or self.by_tid)

    def for_cgroup(self, ident: CgroupIdentity, ts_ns: int) -> Episode | None:
        best: Episode | None = None
        for b in self.cgroup_bindings:
            if b.episode.active_at(ts_ns) and b.matches(ident):
                if best is None or b.episode.start_ns > best.start_ns:
                    best = b.episode
        return best

    # -- updates (server thread) ----------------------------------------------------------

    def apply(
        self, msg: Message, now_ns: int, wall_ns: int, peer: dict[str, int] | None = None
    ) -> dict[str, Any]:
        """Apply one message; returns the reply's extra fields or raises ProtocolError."""
        with self.lock:
            self.messages += 1
            out = getattr(self, "_" + msg.op)(msg, now_ns, peer or {})
            self.version += 1
            self._record(msg, now_ns, wall_ns, peer or {}, out)
            return out

    def _hello(self, msg: Message, now_ns: int, peer: dict[str, int]) -> dict[str, Any]:
        return {"open_episodes": sum(1 for e in self.episodes.values() if e.end_ns is None)}

    def _run_start(self, msg: Message, now_ns: int, peer: dict[str, int]) -> dict[str, Any]:
        assert msg.run_id
        self.runs[msg.run_id] = {"start_ns": now_ns, "end_ns": None, "meta": msg.meta}
        if peer.get("pid"):
            self.run_of_client[peer["pid"]] = msg.run_id
        return {"run_id": msg.run_id}

    def _run_end(self, msg: Message, now_ns: int, peer: dict[str, int]) -> dict[str, Any]:
        assert msg.run_id
        run = self.runs.get(msg.run_id)
        if run is None:
            raise ProtocolError(f"run_end: unknown run {msg.run_id!r}")
        run["end_ns"] = now_ns
        return {"run_id": msg.run_id}

    def _episode_start(self, msg: Message, now_ns: int, peer: dict[str, int]) -> dict[str, Any]:
        assert msg.episode_id
        ep: Episode | None = self.episodes.get(msg.episode_id)
        warnings: list[str] = []
        container_id = msg.container_id
        if msg.container_name and not container_id:
            container_id = docker_container_id(msg.container_name)
            if container_id is None:
                warnings.append(f"container_name {msg.container_name!r} not found")
        path = normalise_path(msg.cgroup, self.cgroup_mount) if msg.cgroup else None
        if path == "/":
            raise ProtocolError("cgroup: the root cgroup cannot be bound to an episode")
        # what a live episode owns stays its own until the trainer ends it: checked before
        # anything changes, so a refused message binds nothing
        self._refuse_owned(msg, path, container_id)
        if ep is None or ep.end_ns is not None:
            if sum(1 for e in self.episodes.values() if e.end_ns is None) >= MAX_OPEN_EPISODES:
                raise ProtocolError(f"more than {MAX_OPEN_EPISODES} open episodes")
            run_id = msg.run_id or self.run_of_client.get(peer.get("pid", 0))
            if run_id is None:
                open_runs = [r for r, v in self.runs.items() if v["end_ns"] is None]
                run_id = open_runs[0] if len(open_runs) == 1 else None
            ep = Episode(msg.episode_id, run_id, msg.trajectory_id, msg.sandbox_id, now_ns)
            episodes = dict(self.episodes)
            episodes[msg.episode_id] = ep
            self.episodes = episodes
        # a repeated episode_start adds bindings to the open episode
        sender = peer.get("pid", 0)
        own = {("process", p, ep.seq) for p in msg.pids if p == sender}
        own |= {("thread", t, ep.seq) for t in msg.tids if _thread_of(t, sender)}
        if own:
            self.self_bound = self.self_bound | own
        if msg.pids:
            self.by_pid = _bind(self.by_pid, msg.pids, ep)
        if msg.tids:
            self.by_tid = _bind(self.by_tid, msg.tids, ep)
        if path or container_id or msg.sandbox_id:
            b = CgroupBinding(ep, path, container_id, msg.sandbox_id)
            self.cgroup_bindings = (*self.cgroup_bindings, b)
        out: dict[str, Any] = {"episode_id": ep.episode_id, "run_id": ep.run_id}
        if warnings:
            out["warnings"] = warnings
        return out

    def _refuse_owned(self, msg: Message, path: str | None, container_id: str | None) -> None:
        """ProtocolError when the message binds a task or cgroup another open episode owns."""
        episode_id = msg.episode_id
        for table, keys in (("process", msg.pids), ("thread", msg.tids)):
            for key in keys:
                owner = self.open_binding(table, key)
                if owner is not None and owner.episode_id != episode_id:
                    what = "pid" if table == "process" else "tid"
                    raise Refused(
                        f"{what} {key} is bound to live episode {owner.episode_id!r}: "
                        "end that episode first"
                    )
        if not (path or container_id or msg.sandbox_id):
            return
        for b in self.cgroup_bindings:
            if b.episode.end_ns is not None or b.episode.episode_id == episode_id:
                continue
            if b.overlaps(path, container_id, msg.sandbox_id):
                raise Refused(
                    f"{b.describe()} is bound to live episode {b.episode.episode_id!r}: "
                    "end that episode first"
                )

    def _episode_end(self, msg: Message, now_ns: int, peer: dict[str, int]) -> dict[str, Any]:
        assert msg.episode_id
        ep = self.episodes.get(msg.episode_id)
        if ep is None:
            raise ProtocolError(f"episode_end: unknown episode {msg.episode_id!r}")
        if ep.end_ns is not None:
            raise ProtocolError(f"episode_end: episode {msg.episode_id!r} already ended")
        ep.end_ns = now_ns
        ep.status = msg.status
        return {"episode_id": ep.episode_id, "run_id": ep.run_id}

    def _record(
        self, msg: Message, now_ns: int, wall_ns: int, peer: dict[str, int], out: dict[str, Any]
    ) -> None:
        """Queue the typed record of this message (the collector passes it on)."""
        if msg.op == "hello":
            return
        ep = self.episodes.get(msg.episode_id or "")
        ids: tuple[str | None, str | None, str | None, str | None] = (None, msg.run_id, None, None)
        if ep is not None and msg.op.startswith("episode"):
            ids = (ep.episode_id, ep.run_id, ep.trajectory_id, ep.sandbox_id)
        bindings = {
            k: v
            for k, v in (
                ("pids", list(msg.pids)),
                ("tids", list(msg.tids)),
                ("cgroup", msg.cgroup),
                ("container_id", msg.container_id),
                ("container_name", msg.container_name),
                ("sandbox_id", msg.sandbox_id),
            )
            if v
        }
        rec = RegistryRecord(
            op=msg.op,
            wall_ns=wall_ns,
            boot_ns=now_ns,
            episode_id=ids[0],
            run_id=ids[1],
            trajectory_id=ids[2],
            sandbox_id=ids[3],
            peer=dict(peer),
            bindings=bindings,
            status=msg.status,
            meta=msg.meta or None,
            warnings=tuple(out.get("warnings") or ()),
        )
        if len(self.pending) >= MAX_PENDING_RECORDS:
            self.pending_dropped += 1
            return
        self.pending.append(rec)

    def expire(self, now_ns: int) -> int:
        """Forget bindings of episodes that ended more than retain_s ago."""
        cutoff = now_ns - self.retain_ns

        def stale(ep: Episode) -> bool:
            return ep.end_ns is not None and ep.end_ns < cutoff

        with self.lock:
            gone = [k for k, e in self.episodes.items() if stale(e)]
            if not gone and not any(stale(b.episode) for b in self.cgroup_bindings):
                return 0
            self.episodes = {k: e for k, e in self.episodes.items() if not stale(e)}
            self.by_pid = _prune(self.by_pid, stale)
            self.by_tid = _prune(self.by_tid, stale)
            live = {e.seq for t in (self.by_pid, self.by_tid) for eps in t.values() for e in eps}
            self.self_bound = frozenset(k for k in self.self_bound if k[2] in live)
            self.cgroup_bindings = tuple(b for b in self.cgroup_bindings if not stale(b.episode))
            self.version += 1
            return len(gone)


def _thread_of(tid: int, pid: int) -> bool:
    """Is tid a thread of process pid (now)?"""
    if not pid:
        return False
    return tid == pid or os.path.isdir(f"/proc/{pid}/task/{tid}")


def _bind(
    table: dict[int, tuple[Episode, ...]], keys: tuple[int, ...], ep: Episode
) -> dict[int, tuple[Episode, ...]]:
    new = dict(table)
    for k in keys:
        eps = new.get(k, ())
        if ep not in eps:
            new[k] = (*eps[-7:], ep)  # a task's recent history, bounded
    return new


def _prune(table: dict[int, tuple[Episode, ...]], stale: Any) -> dict[int, tuple[Episode, ...]]:
    out = {}
    for k, eps in table.items():
        keep = tuple(e for e in eps if not stale(e))
        if keep:
            out[k] = keep
    return out
