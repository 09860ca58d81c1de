"""The typed event every stage after attribution works on.

The collector turns each decoded record into one :class:`AttributedEvent`: the record, the
process it belongs to (with parent and lineage), the episode context (:class:`RlContext`,
with the source that decided it), the cgroup/container identity and what was parsed from
the payload.  Detectors, the GPU table and the ledger read these fields; the renderer
(monitor/sinks/ecs.py) turns them into the NDJSON line last.  Nobody reads another stage's
output documents.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from monitor.sensor.dns import DnsQuestion
from monitor.sensor.events import Event
from monitor.state.cgroups import CgroupIdentity
from monitor.state.process_table import ROLES, Process
from monitor.state.requests import Requester
from monitor.streams.view import StreamView


@dataclass(frozen=True, slots=True)
class Origin:
    """The process whose environment defined the tags."""

    pid: int
    entity_id: str | None
    name: str | None


@dataclass(frozen=True, slots=True)
class Binding:
    """How a registry or cgroup source bound the process to its episode."""

    via: str  # "thread", "process", "ancestor", "cgroup"
    episode_start_ns: int


@dataclass(frozen=True, slots=True)
class Conflict:
    """Own environment tags that contradict a stronger source."""

    source: str  # the stronger source that was kept
    roles: dict[str, tuple[str | None, str | None]]  # role -> (own value, kept value)
    forged_tagset_id: int
    kept: tuple[int, int] | None  # (tagset_id, origin) used instead, for lineage conflicts

    def as_dict(self) -> dict[str, Any]:
        return {
            "kept_source": self.source,
            "roles": {r: {"own_env": a, "kept": b} for r, (a, b) in self.roles.items()},
        }

    def claimed(self) -> dict[str, str | None]:
        """What the process claimed and did not get (``rl.claimed``): role id -> value."""
        return {r + "_id": own for r, (own, _kept) in self.roles.items()}


@dataclass(slots=True, eq=False)
class RlContext:
    """The episode context of an event and where it came from.

    Treated as immutable once built: the attributor shares one instance between every event
    with the same tags, and :meth:`as_doc` memoises its rendering.
    """

    episode_id: str | None = None
    worker_id: str | None = None
    run_id: str | None = None
    trajectory_id: str | None = None
    sandbox_id: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    tags_truncated: tuple[str, ...] = ()
    # registry, cgroup, inherited, lineage, own_env, proc_environ, heuristic, none
    source: str = "none"
    origin: Origin | None = None
    conflict: Conflict | None = None
    binding: Binding | None = None
    heuristic: str | None = None
    # processes of episodes that asked the process's server (or an ancestor's) for this work
    requested_by: tuple[Requester, ...] = ()
    # the process that connected the socket, when another one sends on it
    socket_owner: Peer | None = None
    _doc: dict[str, Any] | None = field(default=None, repr=False)

    def role(self, role: str) -> str | None:
        value: str | None = getattr(self, role + "_id")
        return value

    def as_doc(self) -> dict[str, Any]:
        """The `rl` object of a line (without lineage); shared: copy before changing it."""
        doc = self._doc
        if doc is None:
            doc = {r + "_id": getattr(self, r + "_id") for r in ROLES}
            doc["tags"] = dict(self.tags)
            if self.tags_truncated:
                doc["tags_truncated"] = list(self.tags_truncated)
            doc["source"] = self.source
            if self.origin is not None:
                o = self.origin
                doc["origin"] = {"pid": o.pid, "entity_id": o.entity_id, "name": o.name}
            if self.conflict is not None:
                doc["conflict"] = self.conflict.as_dict()
                doc["claimed"] = self.conflict.claimed()
            if self.binding is not None:
                b = self.binding
                doc["binding"] = {"via": b.via, "episode_start_ns": b.episode_start_ns}
            if self.heuristic is not None:
                doc["heuristic"] = self.heuristic
            if self.requested_by:
                doc["requested_by"] = [r.as_dict() for r in self.requested_by]
            if self.socket_owner is not None:
                doc["socket_owner"] = self.socket_owner.as_doc()
            self._doc = doc
        return doc

    def episodes(self) -> tuple[str, ...]:
        """Every episode this context names: its own, requesters', the socket owner's."""
        out = [self.episode_id] if self.episode_id else []
        out += [r.episode_id for r in self.requested_by if r.episode_id not in out]
        owner = self.socket_owner
        if owner is not None and owner.rl.episode_id and owner.rl.episode_id not in out:
            out.append(owner.rl.episode_id)
        return tuple(out)


@dataclass(frozen=True, slots=True)
class Peer:
    """The other process of a link (a server that was asked, a socket's owner) and its
    episode context."""

    pid: int
    entity_id: str | None
    name: str | None
    rl: RlContext

    def as_doc(self) -> dict[str, Any]:
        rl = self.rl
        return {
            "pid": self.pid,
            "entity_id": self.entity_id,
            "name": self.name,
            "episode_id": rl.episode_id,
            "run_id": rl.run_id,
            "trajectory_id": rl.trajectory_id,
            "source": rl.source,
        }


@dataclass(frozen=True, slots=True)
class RequestLink:
    """A connect that reached a local listener: the server, and who the request is for."""

    server: Peer
    via: str
    requesters: tuple[Requester, ...]

    def as_doc(self) -> dict[str, Any]:
        return {
            "via": self.via,
            "server": self.server.as_doc(),
            "requesters": [r.as_dict() for r in self.requesters],
        }


NO_CONTEXT = RlContext()


@dataclass(slots=True, eq=False)
class AttributedEvent:
    """One event with everything the later stages need to judge and show it."""

    event: Event
    # the subject: the exec'ing, connecting, sending process; for a fork, the new child.
    # None only for a TCP state change the kernel saw with no owner (softirq)
    process: Process | None
    parent: Process | None
    lineage: list[Process]  # ancestors of the subject, nearest first, bounded
    rl: RlContext
    cgroup: CgroupIdentity | None = None
    dns: DnsQuestion | None = None  # parsed once, for dns records
    stream: StreamView | None = None  # the stream's opening so far (send, stream, tls_* records)
    connect_count: int | None = None  # connects this connect line stands for (folding)
    summary: bool = False  # a fold summary line, not a kernel record
    quiet: bool = False  # state only: detectors see it, no line is written
    link: RequestLink | None = None  # a connect that reached a local server
    # work crossed episodes here: (kind, evidence, subject) for RLG-ATTR-003
    crossed: tuple[str, str, str] | None = None
    rendered: dict[str, Any] | None = field(default=None, repr=False)  # the renderer's memo

    @property
    def action(self) -> str:
        return self.event.action

    @property
    def episode_id(self) -> str | None:
        return self.rl.episode_id
