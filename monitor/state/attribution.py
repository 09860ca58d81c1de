"""Which episode an event belongs to, and which source said so.

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
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from monitor.config import AttributionConfig
from monitor.sensor.events import Event, ExecEvent, ForkEvent
from monitor.state.cgroups import CgroupIdentity, CgroupResolver
from monitor.state.process_table import ROLES, Process, ProcessTable
from monitor.state.registry.state import Episode, Registry

MAX_OVERRIDES = 65536
BIRTHS_PRUNE_MIN = 4096  # births held before the first pruning pass
RAY_PREFIX = "ray::"


@dataclass(frozen=True, slots=True)
class Birth:
    """The episode a process was born into, and how it got it."""

    episode: Episode
    source: str  # "registry" or "cgroup"
    via: str  # "thread", "process", "ancestor", "cgroup"


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
        # Ray titles by pid, valid for one table generation only (see _ray_title)
        self._ray_cache: dict[int, str | None] = {}
        self._ray_generation = -1

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

    def _stronger(self, p: Process, ev: Event) -> tuple[Episode, str, str] | None:
        reg = self.registry
        if not self.births and (reg is None or not (reg.has_tasks() or reg.cgroup_bindings)):
            return None  # nothing was ever bound: the common case without a trainer registry
        if reg is not None and reg.has_tasks():
            hit = reg.for_task(p.pid, ev.tid, ev.ts_ns)
            if hit is not None:
                return hit[0], "registry", hit[1]
        b = self.birth_of(p)
        if b is not None:
            return b.episode, b.source, b.via
        ep = self._cgroup_episode(ev.cgroup_id, ev.ts_ns)
        if ep is not None:
            return ep, "cgroup", "cgroup"
        return None

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
        stronger = self._stronger(p, ev)
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

    # -- the rl block ---------------------------------------------------------------------

    def rl_block(self, ev: Event, p: Process, lineage: list[Process]) -> dict[str, Any]:
        tagset_id, origin = ev.tagset_id, ev.tag_origin
        conflict = self.overrides.get(tagset_id) if tagset_id else None
        if conflict is not None and conflict.kept is not None:
            tagset_id, origin = conflict.kept
        block = dict(self.table.rl_block(p, tagset_id, origin, lineage))
        if conflict is not None:
            block["source"] = "inherited"
            block["conflict"] = conflict.as_dict()
        stronger = self._stronger(p, ev)
        if stronger is not None:
            ep, source, via = stronger
            for k, v in ep.rl_fields().items():
                if v is not None:
                    block[k] = v
            block["source"] = source
            block["binding"] = {"via": via, "episode_start_ns": ep.start_ns}
        ident = self.identity(ev.cgroup_id)
        if ident is not None and block.get("sandbox_id") is None and ident.sandbox_id:
            block["sandbox_id"] = ident.sandbox_id
        if block["source"] == "none" or (
            block.get("episode_id") is None and stronger is None and "heuristic" not in block
        ):
            self._heuristics(ev, p, lineage, block)
        return block

    def _heuristics(
        self, ev: Event, p: Process, lineage: list[Process], block: dict[str, Any]
    ) -> None:
        wanted = self.config.heuristics
        if "ray_title" in wanted:
            title = ev.comm if ev.comm.startswith(RAY_PREFIX) else self._ray_title(p, lineage)
            if title is not None:
                if block.get("worker_id") is None:
                    block["worker_id"] = title[len(RAY_PREFIX) :] or None
                block["source"] = "heuristic"
                block["heuristic"] = "ray_title"
                return
        if "iflow_env" in wanted and block.get("tags", {}).get("IFLOW_ENV") == "train":
            if all(block.get(r + "_id") is None for r in ROLES):
                block["source"] = "heuristic"
                block["heuristic"] = "iflow_env"

    def _ray_title(self, p: Process, lineage: list[Process]) -> str | None:
        # names change only with fork/exec/exit, which bump the table's generation: the
        # cache holds the current generation's titles only.  Entries of older generations
        # could never hit again, and kept by pid they pinned ~100 bytes per pid ever seen
        # (a process churn left megabytes of scattered small objects behind)
        gen = self.table.generation
        if gen != self._ray_generation:
            self._ray_cache.clear()
            self._ray_generation = gen
        elif p.pid in self._ray_cache:
            return self._ray_cache[p.pid]
        title = next(
            (n for n in (p.name, *(a.name for a in lineage)) if n.startswith(RAY_PREFIX)), None
        )
        self._ray_cache[p.pid] = title
        return title
