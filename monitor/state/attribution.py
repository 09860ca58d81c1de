"""Which episode an event belongs to, and which source said so: the one attribution path.

Precedence, strongest first (docs/registry.md):

1. ``registry``  - the trainer bound this thread or process (episode_start pids/tids), or an
   ancestor's thread/process when this process was born (the birth-episode rule);
2. ``cgroup``    - the process runs in (or was born in) a cgroup, container or sandbox the
   registry bound to an episode;
3. ``inherited`` / ``lineage`` - tags carried down the process tree by the kernel (or found on
   the nearest tagged ancestor);
4. ``own_env`` / ``proc_environ`` - the process's own environment;
5. ``heuristic`` - a Ray ``ray::`` process title, an ``IFLOW_ENV=train`` marker.

A process's own environment tags that contradict a stronger source are kept out of the
attribution and reported (``rl.conflict`` and the RLG-ATTR-001 alert): a forged episode tag is
itself suspicious.  Birth: a process keeps the episode that was active for its parent (thread)
when it was forked, so a miner started in episode 17 is still episode 17's when it phones home
during episode 19.

Every consumer gets its context from here: event lines (:meth:`Attributor.attribute`) and the
subjects of rules that are not raised by a record, such as a GPU still held after its
episode ended (:meth:`Attributor.context_of`).
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass

from monitor.clock import boottime_ns
from monitor.config import AttributionConfig
from monitor.sensor.dns import parse_dns_message, parse_stream_query
from monitor.sensor.events import DnsEvent, Event, ExecEvent, ForkEvent, SendEvent
from monitor.state.attributed import (
    NO_CONTEXT,
    AttributedEvent,
    Binding,
    Conflict,
    Origin,
    Peer,
    RequestLink,
    RlContext,
)
from monitor.state.cgroups import CgroupIdentity, CgroupResolver
from monitor.state.process_table import (
    ROLES,
    SEED_TAGSET_BASE,
    ByProcess,
    Process,
    ProcessTable,
)
from monitor.state.registry.state import Episode, Registry
from monitor.state.requests import Listener, Requester, RequestLinks, merge

MAX_OVERRIDES = 65536
MAX_SOCKETS = 16384  # stream sockets connected inside an episode, whose owner we remember
BIRTHS_PRUNE_MIN = 4096  # births held before the first pruning pass
TAG_CONTEXTS_MAX = 4096  # tag-only contexts kept between table expiries
RAY_PREFIX = "ray::"

__all__ = ["Attributor", "Birth", "Conflict", "Membership"]


@dataclass(frozen=True, slots=True)
class Membership:
    """Why a process is inside an episode (see :meth:`Attributor.membership`)."""

    episode_id: str
    # registry (bound by someone else), birth (born to a bound task), cgroup, the tag
    # sources (inherited, lineage, own_env, proc_environ), requested (rl.requested_by)
    source: str


@dataclass(frozen=True, slots=True)
class Birth:
    """The episode a process was born into, and how it got it."""

    episode: Episode
    source: str  # "registry" or "cgroup"
    via: str  # "thread", "process", "ancestor", "cgroup"


class Attributor:
    def __init__(
        self,
        table: ProcessTable,
        config: AttributionConfig,
        registry: Registry | None = None,
        cgroups: CgroupResolver | None = None,
        requests: RequestLinks | None = None,
    ) -> None:
        self.table = table
        self.config = config
        self.registry = registry
        self.cgroups = cgroups
        # work done on request: links from requesters to local servers (rl.requested_by)
        self.requests = requests or RequestLinks(table, config.request_window_s)
        # cookie -> (pid, entity id, name, context) of the process that connected it then
        # (rl.socket_owner of a later sender, even after the owner left the table)
        self.sockets: OrderedDict[int, tuple[int, str, str, RlContext]] = OrderedDict()
        self.births: ByProcess[Birth] = ByProcess(table, BIRTHS_PRUNE_MIN)
        # forged tagset id -> the conflict it came from (descendants inherit the forged tags)
        self.overrides: OrderedDict[int, Conflict] = OrderedDict()
        self.conflicts = 0
        # the context the tags alone give, by (tagset, origin, own, via lineage)
        self._tag_contexts: dict[tuple[int, int, bool, bool], RlContext] = {}
        # the context a tag context and a binding give (see _context)
        self._bound_contexts: dict[tuple[object, ...], RlContext] = {}
        # lineages and Ray titles by pid, valid for one table generation only: names and
        # parents change only with fork/exec/exit, which bump the generation
        self._generation = -1
        self._lineages: dict[int, list[Process]] = {}
        self._ray_cache: dict[int, str | None] = {}

    # -- helpers -------------------------------------------------------------------------

    def identity(self, cgroup_id: int) -> CgroupIdentity | None:
        if self.cgroups is None or not cgroup_id:
            return None
        return self.cgroups.identity(cgroup_id)

    def birth_of(self, p: Process) -> Birth | None:
        return self.births.of(p)

    def _set_birth(self, p: Process, b: Birth) -> None:
        self.births.put(p, b)

    def _cgroup_episode(self, cgroup_id: int, ts_ns: int) -> Episode | None:
        reg = self.registry
        if reg is None or not reg.cgroup_bindings:
            return None
        ident = self.identity(cgroup_id)
        return reg.for_cgroup(ident, ts_ns) if ident is not None else None

    def _stronger(
        self, p: Process, tid: int, ts_ns: int, cgroup_id: int
    ) -> tuple[Episode, str, str] | None:
        reg = self.registry
        if not self.births and (reg is None or not (reg.has_tasks() or reg.cgroup_bindings)):
            return None  # nothing was ever bound: the common case without a trainer registry
        if reg is not None and reg.has_tasks():
            hit = reg.for_task(p.pid, tid, ts_ns)
            if hit is not None:
                return hit[0], "registry", hit[1]
        b = self.birth_of(p)
        if b is not None:
            return b.episode, b.source, b.via
        ep = self._cgroup_episode(cgroup_id, ts_ns)
        if ep is not None:
            return ep, "cgroup", "cgroup"
        return None

    def _fresh_generation(self) -> None:
        gen = self.table.generation
        if gen != self._generation:
            self._generation = gen
            self._lineages.clear()
            self._ray_cache.clear()

    def lineage(self, p: Process) -> list[Process]:
        """Ancestors, nearest first (cached for the table's current generation)."""
        self._fresh_generation()
        got = self._lineages.get(p.pid)
        if got is None:
            got = self._lineages[p.pid] = self.table.lineage(p)
        return got

    # -- process life cycle ---------------------------------------------------------------

    def on_fork(self, ev: ForkEvent, child: Process, parent: Process | None) -> None:
        """Birth rule: the child keeps the episode active for the forking thread now."""
        self.requests.on_fork(parent, child, ev.ts_ns)
        reg = self.registry
        if reg is None:
            return
        hit = reg.for_task(ev.pid, ev.tid, ev.ts_ns) if reg.has_tasks() else None
        if hit is not None:
            self._set_birth(child, Birth(hit[0], "registry", "ancestor"))
            return
        pb = self.birth_of(parent) if parent is not None else None
        if pb is not None:
            self._set_birth(child, Birth(pb.episode, pb.source, "ancestor"))
            return
        ep = self._cgroup_episode(ev.cgroup_id, ev.ts_ns)
        if ep is not None:
            self._set_birth(child, Birth(ep, "cgroup", "cgroup"))

    def on_exec(self, ev: ExecEvent, p: Process, prev_tags: tuple[int, int]) -> Conflict | None:
        """After the table applied an exec: birth by cgroup, and own-tag conflicts.

        ``prev_tags`` is the (tagset id, origin) the process had before this exec.
        """
        if self.birth_of(p) is None:
            # entered a bound sandbox (docker exec: the runtime joins the cgroup, then execs)
            ep = self._cgroup_episode(ev.cgroup_id, ev.ts_ns)
            if ep is not None:
                self._set_birth(p, Birth(ep, "cgroup", "cgroup"))
        if ev.tag_origin != ev.pid or not ev.tagset_id or not ev.own_tag_mask:
            return None  # no own tags from this exec
        own = self.table.tagset(ev.tagset_id)
        if own is None:
            return None
        own_roles = self.table.role_values(own)
        stronger = self._stronger(p, ev.tid, ev.ts_ns, ev.cgroup_id)
        if stronger is not None:
            ep, source, _via = stronger
            kept_roles = {k.removesuffix("_id"): v for k, v in ep.rl_fields().items()}
            kept: tuple[int, int] | None = None
        else:
            # the tags the process had before this exec, whoever set them: inherited from an
            # ancestor, or its own from an earlier exec (an exec in place, `RL_EPISODE_ID=B
            # exec miner`, keeps the pid).  An earlier claim was already overruled: compare
            # with what was kept then
            prev = self._kept_tags(prev_tags)
            if prev is None:
                return None
            prev_id, prev_origin = prev
            inherited = self.table.tagset(prev_id)
            if inherited is None:
                return None
            kept_roles = self.table.role_values(inherited)
            source = "own_env" if prev_origin == p.pid else "inherited"
            kept = (prev_id, prev_origin)
        clash = {
            r: (own_roles.get(r), kept_roles.get(r))
            for r in self.config.conflict_roles
            if own_roles.get(r) is not None
            and kept_roles.get(r) is not None
            and own_roles.get(r) != kept_roles.get(r)
        }
        if not clash:
            return None
        c = Conflict(source, clash, ev.tagset_id, kept)
        # every event of the process (and of descendants, which inherit the forged tagset)
        # says what was claimed; a lineage claim also says which tags are used instead
        self.overrides[ev.tagset_id] = c
        if len(self.overrides) > MAX_OVERRIDES:
            self._prune_overrides()
        self.conflicts += 1
        return c

    def _kept_tags(self, tags: tuple[int, int]) -> tuple[int, int] | None:
        """The (tagset, origin) that attribution uses for these kernel tags, None for none."""
        if not tags[0]:
            return None
        c = self.overrides.get(tags[0])
        return c.kept if c is not None and c.kept is not None else tags

    def _prune_overrides(self) -> None:
        # keep every override a live process still carries: evicting one would hand its
        # processes the forged episode back (an agent could flood claims to that end)
        live = {q.tagset_id for q in self.table.procs.values()}
        keep = [(k, c) for k, c in self.overrides.items() if k in live]
        if len(keep) > MAX_OVERRIDES:
            keep = keep[-MAX_OVERRIDES:]  # more live forged tagsets than we hold: oldest go
        self.overrides = OrderedDict(keep)

    def expire(self) -> None:
        """Once a second: forget tag contexts whose origin names may have gone stale."""
        if len(self._tag_contexts) > TAG_CONTEXTS_MAX:
            self._tag_contexts.clear()
            self._bound_contexts.clear()  # keyed on tag contexts: they go together
        self.requests.expire(boottime_ns())

    def membership(self, p: Process, ts_ns: int, cgroup_id: int = 0) -> Membership | None:
        """The episode ``p`` is inside at ``ts_ns`` by any source, None when outside all.

        Every source counts (registry, birth, cgroup, tags, requests), except a binding the
        process made of itself: a trainer that binds its own thread or process to run an
        episode's work stays the trainer.  ``cgroup_id``: the cgroup it is in now, when the
        caller knows better than its last record.
        """
        reg = self.registry
        if reg is not None and reg.has_tasks():
            hit = reg.for_task_by_others(p.pid, p.pid, ts_ns)
            if hit is not None:
                return Membership(hit[0].episode_id, "registry")
        b = self.birth_of(p)
        if b is not None:
            return Membership(b.episode.episode_id, "birth" if b.source == "registry" else "cgroup")
        ep = self._cgroup_episode(cgroup_id or p.cgroup_id, ts_ns)
        if ep is not None:
            return Membership(ep.episode_id, "cgroup")
        tags = self._kept_tags((p.tagset_id, p.tag_origin)) or (0, 0)
        rl = self._tag_context(p, tags[0], tags[1], self.lineage(p))
        if rl.episode_id is not None:
            return Membership(rl.episode_id, rl.source)
        # started as requested work (a server acting for a requester is not inside: only
        # what it starts for them is)
        req = self.requests.work_of(p)
        if req:
            return Membership(req[-1].episode_id, "requested")
        return None

    # -- links between processes ------------------------------------------------------------

    def peer(self, pid: int, ts_ns: int) -> Peer | None:
        """Another process and its context now (a server, a socket's owner)."""
        q = self.table.procs.get(pid)
        if q is None:
            return None
        return Peer(q.pid, q.entity_id, q.name, self.context_of(q, ts_ns))

    def on_stream_connect(self, ae: AttributedEvent, cookie: int) -> None:
        """A stream socket connected inside an episode: remember who connected it."""
        p = ae.process
        if p is None or ae.rl.episode_id is None:
            return  # only a socket of an episode can carry work across episodes
        socks = self.sockets
        socks[cookie] = (p.pid, p.entity_id, p.name, ae.rl)
        if len(socks) > MAX_SOCKETS:
            socks.popitem(last=False)  # the oldest

    def socket_owner(self, ae: AttributedEvent, cookie: int, owner_pid: int) -> None:
        """First bytes sent by a process other than the one that connected the socket: name
        the owner (rl.socket_owner) and, when they are in different episodes, a crossing."""
        p = ae.process
        known = self.sockets.pop(cookie, None)
        if known is not None and known[0] == owner_pid:
            owner = Peer(*known)
        else:
            owner = self.peer(owner_pid, ae.event.ts_ns) or Peer(owner_pid, None, None, NO_CONTEXT)
        if p is None or owner.entity_id == p.entity_id:
            return
        ae.rl = dataclasses.replace(ae.rl, socket_owner=owner, _doc=None)
        how = f"sent the first bytes on a socket {owner.name} ({owner.pid}) of"
        _cross(ae, owner.rl.episode_id, "socket", how, f"{p.entity_id}+{owner.entity_id}")

    def link(self, ae: AttributedEvent, server: Listener, transport: str) -> None:
        """A connect reached a local listener: record who asked, for which episodes, and
        open the server's window for them; a server of another episode is a crossing."""
        p, ev = ae.process, ae.event
        if p is None or server.pid == p.pid or not self.requests.serves(server):
            return
        peer = self.peer(server.pid, ev.ts_ns)
        if peer is None or peer.entity_id != server.entity_id:
            return  # the listener's owner is gone
        rl = ae.rl
        requesters = rl.requested_by
        if rl.episode_id is not None and rl.source != "requested":  # its own episode too
            own = Requester(
                rl.episode_id,
                rl.run_id,
                rl.trajectory_id,
                p.pid,
                p.entity_id,
                p.name,
                server.via,
                ev.ts_ns,
            )
            requesters = merge(requesters, (own,))
        # the server's own episode: not one it only has because it was asked for work
        theirs = peer.rl.episode_id if peer.rl.source != "requested" else None
        # a server of the requester's own episode does its own episode's work
        requesters = tuple(r for r in requesters if r.episode_id != theirs)
        ae.link = RequestLink(peer, server.via, requesters)
        self.requests.link(server, list(requesters))
        how = f"asked over {transport} {server.via} {peer.name} ({peer.pid}) of"
        _cross(ae, theirs, "request", how, f"{p.entity_id}>{peer.entity_id}")

    # -- attribution ----------------------------------------------------------------------

    def attribute(
        self, ev: Event, p: Process | None, parent: Process | None = None
    ) -> AttributedEvent:
        """The typed event: subject, lineage, episode context, cgroup identity, parsed DNS."""
        ident = self.identity(ev.cgroup_id)
        if p is None:  # a TCP state change in softirq with no recorded owner
            return AttributedEvent(ev, None, None, [], NO_CONTEXT, ident)
        lineage = self.lineage(p)
        if parent is None and p.ppid:
            parent = self.table.procs.get(p.ppid)
        rl = self._context(p, lineage, ev.tagset_id, ev.tag_origin, ev.tid, ev.ts_ns, ident, ev)
        if isinstance(ev, DnsEvent):
            dns = parse_dns_message(ev.data)
        elif isinstance(ev, SendEvent):  # DNS over TCP: the stream's opening bytes
            dns = parse_stream_query(ev.data, ev.dport)
        else:
            dns = None
        return AttributedEvent(ev, p, parent, lineage, rl, ident, dns)

    def context_of(self, p: Process, ts_ns: int) -> RlContext:
        """The context of a process now, for a subject no record raised (same precedence)."""
        ident = self.identity(p.cgroup_id)
        return self._context(
            p, self.lineage(p), p.tagset_id, p.tag_origin, p.pid, ts_ns, ident, None
        )

    def _context(
        self,
        p: Process,
        lineage: list[Process],
        tagset_id: int,
        origin: int,
        tid: int,
        ts_ns: int,
        ident: CgroupIdentity | None,
        ev: Event | None,
    ) -> RlContext:
        conflict = self.overrides.get(tagset_id) if tagset_id else None
        changes: dict[str, object] = {}
        if conflict is not None:
            changes["conflict"] = conflict
            if conflict.kept is not None:
                tagset_id, origin = conflict.kept
                changes["source"] = conflict.source
        rl = self._tag_context(p, tagset_id, origin, lineage)
        stronger = self._stronger(p, tid, ts_ns, p.cgroup_id if ev is None else ev.cgroup_id)
        req = self.requests
        by = req.requested_by(p, ts_ns) if req.inherited or req.windows else ()
        if stronger is not None and not changes and not by:
            # the common bound case: the same tags and binding give the same context, so
            # build it once (a dataclasses.replace per record cost more than the rest)
            key = (rl, *stronger, ident.sandbox_id if ident is not None else None)
            got = self._bound_contexts.get(key)
            if got is None:
                if len(self._bound_contexts) > TAG_CONTEXTS_MAX:
                    self._bound_contexts.clear()
                got = self._bound_contexts[key] = self._applied(rl, stronger, (), ident, changes)
            return got
        if stronger is not None or by or changes or (ident is not None and ident.sandbox_id):
            rl = self._applied(rl, stronger, by, ident, changes)
        if rl.source == "none" or (rl.episode_id is None and stronger is None):
            heuristic = self._heuristic(p, lineage, rl, ev)
            if heuristic is not None:
                rl = heuristic
        return rl

    @staticmethod
    def _applied(
        rl: RlContext,
        stronger: tuple[Episode, str, str] | None,
        by: tuple[Requester, ...],
        ident: CgroupIdentity | None,
        changes: dict[str, object],
    ) -> RlContext:
        """The tag context with what stronger sources, requests and the cgroup say."""
        if stronger is not None:
            ep, source, via = stronger
            for k, v in ep.rl_fields().items():
                if v is not None:
                    changes[k] = v
            changes["source"] = source
            changes["binding"] = Binding(via, ep.start_ns)
        if by:  # work done on request, for these requesters
            changes["requested_by"] = by
            if "episode_id" not in changes and rl.episode_id is None:
                # nothing else names an episode: the latest requester's
                last = by[-1]
                changes.update(
                    episode_id=last.episode_id,
                    run_id=last.run_id,
                    trajectory_id=last.trajectory_id,
                    source="requested",
                )
        sandbox = changes.get("sandbox_id", rl.sandbox_id)
        if ident is not None and sandbox is None and ident.sandbox_id:
            changes["sandbox_id"] = ident.sandbox_id
        if changes:
            rl = dataclasses.replace(rl, _doc=None, **changes)  # type: ignore[arg-type]
        return rl

    def _tag_context(
        self, p: Process, tagset_id: int, tag_origin: int, lineage: list[Process]
    ) -> RlContext:
        """What the kernel's tags say: the tagset of the record, else the nearest ancestor's."""
        via_lineage = False
        if not tagset_id:
            for anc in lineage:
                if anc.tagset_id:
                    tagset_id, tag_origin = anc.tagset_id, anc.tag_origin
                    via_lineage = True
                    break
        own = tag_origin == p.pid
        key = (tagset_id, tag_origin, own, via_lineage)
        cached = self._tag_contexts.get(key)
        if cached is not None:
            return cached
        ts = self.table.tagset(tagset_id) if tagset_id else None
        if ts is None:
            rl = NO_CONTEXT
        else:
            if via_lineage:
                source = "lineage"
            elif tagset_id >= SEED_TAGSET_BASE and own:
                source = "proc_environ"
            elif own:
                source = "own_env"
            else:
                source = "inherited"
            o = self.table.procs.get(tag_origin)
            roles = self.table.role_values(ts)
            rl = RlContext(
                episode_id=roles["episode"],
                worker_id=roles["worker"],
                run_id=roles["run"],
                trajectory_id=roles["trajectory"],
                sandbox_id=roles["sandbox"],
                tags=dict(ts.values),
                tags_truncated=tuple(sorted(ts.truncated)),
                source=source,
                origin=Origin(tag_origin, o.entity_id if o else None, o.name if o else None),
            )
        self._tag_contexts[key] = rl
        return rl

    def _heuristic(
        self, p: Process, lineage: list[Process], rl: RlContext, ev: Event | None
    ) -> RlContext | None:
        wanted = self.config.heuristics
        if "ray_title" in wanted:
            comm = ev.comm if ev is not None else p.name
            title = comm if comm.startswith(RAY_PREFIX) else self._ray_title(p, lineage)
            if title is not None:
                worker = rl.worker_id
                if worker is None:
                    worker = title[len(RAY_PREFIX) :] or None
                return dataclasses.replace(
                    rl, worker_id=worker, source="heuristic", heuristic="ray_title", _doc=None
                )
        if "iflow_env" in wanted and rl.tags.get("IFLOW_ENV") == "train":
            if all(rl.role(r) is None for r in ROLES):
                return dataclasses.replace(rl, source="heuristic", heuristic="iflow_env", _doc=None)
        return None

    def _ray_title(self, p: Process, lineage: list[Process]) -> str | None:
        self._fresh_generation()
        if p.pid in self._ray_cache:
            return self._ray_cache[p.pid]
        title = next(
            (n for n in (p.name, *(a.name for a in lineage)) if n.startswith(RAY_PREFIX)), None
        )
        self._ray_cache[p.pid] = title
        return title


def _cross(ae: AttributedEvent, theirs: str | None, kind: str, how: str, subject: str) -> None:
    """Work crossed from the event's episode into another: the RLG-ATTR-003 evidence."""
    mine, p = ae.rl.episode_id, ae.process
    if mine and theirs and theirs != mine and p is not None:
        detail = f"{p.name} ({p.pid}) of episode {mine!r} {how} episode {theirs!r}"
        ae.crossed = (kind, detail, subject)
