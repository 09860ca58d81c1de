"""Episode lifecycle as typed records: what the registry tells the rest of the pipeline.

One record per accepted message (hello excepted).  The collector hands each to the ledger
and the GPU rule driver as it is, and to the renderer for its ``rlguard.episode`` line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from monitor.sensor.events import Event


@dataclass(frozen=True, slots=True)
class RegistryRecord:
    op: str  # run_start, run_end, episode_start, episode_end
    wall_ns: int  # when the message was applied (UTC)
    boot_ns: int  # the same instant on the kernel clock: bindings start and end here
    episode_id: str | None
    run_id: str | None
    trajectory_id: str | None
    sandbox_id: str | None
    peer: dict[str, int] = field(default_factory=dict)  # SO_PEERCRED: pid, uid, gid
    bindings: dict[str, Any] = field(default_factory=dict)  # pids, tids, cgroup, ...
    status: str | None = None
    meta: dict[str, Any] | None = None
    warnings: tuple[str, ...] = ()

    @property
    def is_start(self) -> bool:
        return self.op.endswith("start")


@dataclass(frozen=True, slots=True)
class RegistryRefusals:
    """A sample of the messages the registry refused (at most one record a second)."""

    wall_ns: int
    error: str
    client: dict[str, int] | None
    errors_since_last_record: int
    errors_total: int


@dataclass(slots=True)
class RegistryRefusedEvent(Event):
    """A registry message the gate refused, as an event of its sender (the subject).

    Not a kernel record: the gate (monitor/state/registry/gate.py) makes it so that the
    refusal is attributed, written and alerted on like any event, naming the episode the
    sender is in.
    """

    action: ClassVar[str] = "registry_refused"
    op: str = ""
    asked_episode_id: str | None = None
    reason: str = ""
    # sender_in_episode, untrusted_sender, unknown_sender, owned
    refused_because: str = ""
    sender_via: str = "connect"  # the connecting process (SO_PEERCRED) or a writer
    sender_episode_id: str | None = None
    sender_episode_source: str | None = None
    suppressed_before: int = 0  # refusals not written since the last one (a flood)
