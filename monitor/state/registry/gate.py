"""Who may bind: the registry messages the collector accepts, and the refusals it records.

The server thread parses messages; the decision is made here, in the collector thread,
once the kernel records from before the message have been processed (the collector keeps
that horizon), so the sender's lineage, tags, cgroup and births are known.  A message is
accepted only when every process that sent it (the connecting process from SO_PEERCRED,
and every writer from SCM_CREDENTIALS) is a trusted binder ([registry] trusted_uids,
trusted_groups, trusted_executables, trusted_cgroups) and is not itself inside an episode
by any source (:meth:`monitor.state.attribution.Attributor.membership`), whatever its uid,
except a request link alone: that is a window guess, and a trainer started by a process
that had just served an episode (a reward or environment server on loopback) is not an
episode's process.
The registry then refuses bindings of tasks and cgroups that another live episode owns.
Every refusal is answered, written as a ``registry_refused`` event of its sender and raises
RLG-ATTR-002 (the collector does both).
"""

from __future__ import annotations

import grp
import os
import time
from dataclasses import dataclass, field
from typing import Any

from monitor.config import RegistryConfig
from monitor.state.attribution import Attributor, Membership
from monitor.state.cgroups import CgroupResolver, proc_cgroup_path
from monitor.state.process_table import Process, ProcessTable
from monitor.state.registry.protocol import Message, ProtocolError, Refused
from monitor.state.registry.records import RegistryRefusedEvent
from monitor.state.registry.server import Cred, Request
from monitor.state.registry.state import Registry

REFUSALS_PER_S = 20  # refusal lines a second; more are counted in the next one
MAX_TRAINERS = 4096  # trainer processes remembered before the ones that left are forgotten
STATE_OPS = ("run_start", "run_end", "episode_start", "episode_end")


@dataclass(frozen=True)
class Trust:
    """The trusted binders of [registry], resolved once."""

    uids: frozenset[int]
    gids: frozenset[int]
    executables: tuple[str, ...]
    cgroups: tuple[str, ...]

    @classmethod
    def from_config(cls, cfg: RegistryConfig) -> Trust:
        gids = set()
        for g in cfg.trusted_groups:
            if g.isdigit():
                gids.add(int(g))
                continue
            try:
                gids.add(grp.getgrnam(g).gr_gid)
            except KeyError:
                pass  # a group that does not exist matches nobody
        cgroups = tuple("/" + c.strip("/") for c in cfg.trusted_cgroups)
        return cls(frozenset(cfg.trusted_uids), frozenset(gids), cfg.trusted_executables, cgroups)

    def refuses(self, cred: Cred, exe: str | None, cgroup: str | None) -> str | None:
        """Why this sender is not a trusted binder, or None when it is."""
        pid, uid, gid = cred
        if uid not in self.uids and not (self.gids and self.gids & _groups(pid, gid)):
            return f"uid {uid} is not a trusted binder (trusted_uids, trusted_groups)"
        if self.executables and not any(_exe_matches(exe, e) for e in self.executables):
            return f"executable {exe!r} is not in trusted_executables"
        if self.cgroups and not any(_under(cgroup, c) for c in self.cgroups):
            return f"cgroup {cgroup!r} is not in trusted_cgroups"
        return None


@dataclass
class Decision:
    """The answer to one request, and the refusal to record (None: accepted)."""

    ok: bool
    fields: dict[str, Any]
    refusal: RegistryRefusedEvent | None = None
    sender: Process | None = None


@dataclass
class RegistryGate:
    registry: Registry
    attributor: Attributor
    table: ProcessTable
    cgroups: CgroupResolver
    trust: Trust
    refused: int = 0
    suppressed: int = 0
    _second: int = field(default=-1)
    _in_second: int = 0

    def decide(self, req: Request) -> Decision:
        msg = req.msg
        if msg.op in STATE_OPS:
            why = self._senders(req)
            if why is not None:
                return why
            owned = self._owned_tasks(msg, req.boot_ns)
            if owned is not None:
                return self._refuse(req, req.peer, "owned", owned, None)
        peer = _peer_dict(req.peer)
        try:
            fields = self.registry.apply(msg, req.boot_ns, req.wall_ns, peer)
        except Refused as exc:
            return self._refuse(req, req.peer, "owned", str(exc), None)
        except ProtocolError as exc:
            return Decision(False, {"error": str(exc)})
        if msg.op == "episode_start" and msg.cgroup:
            self.cgroups.forget_unknown()  # a cgroup made just before its binding
        trainer = self.table.procs.get(req.peer[0]) if req.peer else None
        if trainer is not None:
            trainers = self.attributor.requests.trainers  # never a "server"
            if len(trainers) >= MAX_TRAINERS:  # one-shot senders: keep the live ones
                live = {q.entity_id for q in self.table.procs.values()}
                trainers.intersection_update(live)
            trainers.add(trainer.entity_id)
        return Decision(True, fields)

    # -- senders ---------------------------------------------------------------------------

    def _senders(self, req: Request) -> Decision | None:
        """The refusal of the first sender that may not bind, or None."""
        seen: set[int] = set()
        senders = [(req.peer, "connect")] if req.peer else []
        senders += [(w, "write") for w in req.writers]
        if not senders:
            return self._refuse(req, None, "unknown_sender", "no credentials for the sender", None)
        for cred, via in senders:
            if cred is None or cred[0] in seen:
                continue
            seen.add(cred[0])
            why = self._sender(req, cred, via)
            if why is not None:
                return why
        return None

    def _sender(self, req: Request, cred: Cred, via: str) -> Decision | None:
        pid = cred[0]
        p = self.table.procs.get(pid)
        if p is None:
            reason = f"pid {pid} is unknown to the monitor (records lost?)"
            return self._refuse(req, cred, "unknown_sender", reason, None, via=via)
        path = proc_cgroup_path(pid) if p.exited_ns is None else None
        cgroup_id = (self.cgroups.id_of(path) or 0) if path else 0
        # inside an episode: refused whatever its uid (it could otherwise move itself).
        # A request link alone is a guess (a process a loopback or socket server started
        # within the window after serving some episode): it does not make a trusted
        # trainer an episode's; an untrusted one is refused below as untrusted anyway
        m = self.attributor.membership(p, req.boot_ns, cgroup_id)
        if m is not None and m.source != "requested":
            reason = (
                f"pid {pid} ({p.name}) is inside episode {m.episode_id!r} (by {m.source}): "
                "a process inside an episode may not start, bind or end episodes"
            )
            return self._refuse(req, cred, "sender_in_episode", reason, m, p, via)
        exe = p.executable or _readlink(f"/proc/{pid}/exe")
        if path is None:
            path = self.cgroups.path(p.cgroup_id)
        why = self.trust.refuses(cred, exe, path)
        if why is not None:
            return self._refuse(req, cred, "untrusted_sender", f"pid {pid}: {why}", None, p, via)
        return None

    def _owned_tasks(self, msg: Message, ts_ns: int) -> str | None:
        """A pid of the message that a live episode other than the target owns."""
        if msg.op != "episode_start":
            return None
        for pid in msg.pids:
            q = self.table.procs.get(pid)
            if q is None:
                continue
            m = self.attributor.membership(q, ts_ns)
            ep = self.registry.episodes.get(m.episode_id) if m is not None else None
            if m is not None and ep is not None and ep.end_ns is None:
                if m.episode_id != msg.episode_id:
                    return (
                        f"pid {pid} belongs to live episode {m.episode_id!r} (by {m.source}): "
                        "end that episode first"
                    )
        return None

    # -- refusals ---------------------------------------------------------------------------

    def _refuse(
        self,
        req: Request,
        cred: Cred | None,
        because: str,
        reason: str,
        m: Membership | None,
        p: Process | None = None,
        via: str = "connect",
    ) -> Decision:
        self.refused += 1
        if p is None and cred is not None:
            p = self.table.procs.get(cred[0])
        ev: RegistryRefusedEvent | None = None
        if self._may_write():
            pid, uid, gid = cred if cred is not None else (0, -1, -1)
            ev = RegistryRefusedEvent(
                pid=pid,
                tid=pid,
                ppid=p.ppid if p is not None else 0,
                ts_ns=req.boot_ns,
                cgroup_id=p.cgroup_id if p is not None else 0,
                tagset_id=p.tagset_id if p is not None else 0,
                tag_origin=p.tag_origin if p is not None else 0,
                uid=uid,
                gid=gid,
                flags=0,
                comm=p.name if p is not None else "",
                op=req.msg.op,
                asked_episode_id=req.msg.episode_id,
                reason=reason,
                refused_because=because,
                sender_via=via,
                sender_episode_id=m.episode_id if m is not None else None,
                sender_episode_source=m.source if m is not None else None,
                suppressed_before=self.suppressed,
            )
            self.suppressed = 0
        return Decision(False, {"error": "refused: " + reason}, ev, p)

    def _may_write(self) -> bool:
        """At most REFUSALS_PER_S refusal lines a second; the others are counted."""
        sec = int(time.monotonic())
        if sec != self._second:
            self._second, self._in_second = sec, 0
        self._in_second += 1
        if self._in_second > REFUSALS_PER_S:
            self.suppressed += 1
            return False
        return True


def _peer_dict(cred: Cred | None) -> dict[str, int]:
    return {} if cred is None else {"pid": cred[0], "uid": cred[1], "gid": cred[2]}


def _groups(pid: int, gid: int) -> frozenset[int]:
    """The gid and supplementary groups of a process (its /proc status, read now)."""
    out = {gid}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("Groups:"):
                    out.update(int(g) for g in line.split()[1:] if g.isdigit())
                    break
    except OSError:
        pass
    return frozenset(out)


def _exe_matches(exe: str | None, pattern: str) -> bool:
    if exe is None:
        return False
    return exe.startswith(pattern[:-1]) if pattern.endswith("*") else exe == pattern


def _under(path: str | None, root: str) -> bool:
    if path is None:
        return False
    return root == "/" or path == root or path.startswith(root.rstrip("/") + "/")


def _readlink(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None
