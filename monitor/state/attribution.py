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

from monitor.config import AttributionConfig
from monitor.sensor.dns import parse_dns_message, parse_stream_query
from monitor.sensor.events import DnsEvent, Event, ExecEvent, ForkEvent, SendEvent
from monitor.state.attributed import (
    NO_CONTEXT,
    AttributedEvent,
    Binding,
    Conflict,
    Origin,
    RlContext,
)
from monitor.state.cgroups import CgroupIdentity, CgroupResolver
from monitor.state.process_table import ROLES, SEED_TAGSET_BASE, Process, ProcessTable
from monitor.state.registry.state import Episode, Registry

MAX_OVERRIDES = 65536
BIRTHS_PRUNE_MIN = 4096  # births held before the first pruning pass
TAG_CONTEXTS_MAX = 4096  # tag-only contexts kept between table expiries
RAY_PREFIX = "ray::"

__all__ = ["Attributor", "Birth", "Conflict"]


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
    ) -> None:
        self.table = table
        self.config = config
        self.registry = registry
        self.cgroups = cgroups
        self.births: dict[int, Birth] = {}  # by pid; tied to the entity below
        self._birth_entity: dict[int, str] = {}
        # forged tagset id -> the conflict it came from (descendants inherit the forged tags)
        self.overrides: OrderedDict[int, Conflict] = OrderedDict()
        self.conflicts = 0
        # the context the tags alone give, by (tagset, origin, own, via lineage)
        self._tag_contexts: dict[tuple[int, int, bool, bool], RlContext] = {}
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
        b = self.births.get(p.pid)
        if b is not None and self._birth_entity.get(p.pid) == p.entity_id:
            return b
        return None

    def _set_birth(self, p: Process, b: Birth) -> None:
        # drop the births of processes that left the table once they are as many as the
        # table (amortised O(1)): bounded by max_entries alone, an exit flood inside a bound
        # episode kept up to 400k of them
        live = self.table.procs
        if len(self.births) >= max(BIRTHS_PRUNE_MIN, 2 * len(live)):
            keep = {
                pid
                for pid, entity in self._birth_entity.items()
                if (q := live.get(pid)) is not None and q.entity_id == entity
            }
            self.births = {k: v for k, v in self.births.items() if k in keep}
            self._birth_entity = {k: v for k, v in self._birth_entity.items() if k in keep}
        self.births[p.pid] = b
        self._birth_entity[p.pid] = p.entity_id

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
            prev_id, prev_origin = prev_tags
            if not prev_id or prev_origin == p.pid:
                return None
            inherited = self.table.tagset(prev_id)
            if inherited is None:
                return None
            kept_roles = self.table.role_values(inherited)
            source, kept = "inherited", (prev_id, prev_origin)
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
        if kept is not None:
            self.overrides[ev.tagset_id] = c
            if len(self.overrides) > MAX_OVERRIDES:
                self.overrides.popitem(last=False)
        self.conflicts += 1
        return c

    def expire(self) -> None:
        """Once a second: forget tag contexts whose origin names may have gone stale."""
        if len(self._tag_contexts) > TAG_CONTEXTS_MAX:
            self._tag_contexts.clear()

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
        if conflict is not None and conflict.kept is not None:
            tagset_id, origin = conflict.kept
        rl = self._tag_context(p, tagset_id, origin, lineage)
        changes: dict[str, object] = {}
        if conflict is not None:
            changes.update(source="inherited", conflict=conflict)
        stronger = self._stronger(p, tid, ts_ns, p.cgroup_id if ev is None else ev.cgroup_id)
        if stronger is not None:
            ep, source, via = stronger
            for k, v in ep.rl_fields().items():
                if v is not None:
                    changes[k] = v
            changes["source"] = source
            changes["binding"] = Binding(via, ep.start_ns)
        sandbox = changes.get("sandbox_id", rl.sandbox_id)
        if ident is not None and sandbox is None and ident.sandbox_id:
            changes["sandbox_id"] = ident.sandbox_id
        if changes:
            rl = dataclasses.replace(rl, _doc=None, **changes)  # type: ignore[arg-type]
        if rl.source == "none" or (rl.episode_id is None and stronger is None):
            heuristic = self._heuristic(p, lineage, rl, ev)
            if heuristic is not None:
                rl = heuristic
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
