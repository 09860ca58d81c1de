"""GPU diversion: pure judgements about who holds a GPU device.

Three rules (monitor/data/rules.toml):

- RLG-GPU-001: a process inside an RL episode's tree opened a GPU device and
  is not an allowed trainer (by executable, cgroup or worker tag; helpers
  such as nvidia-smi are quiet when an allowed process started them).
- RLG-GPU-002: a process that holds a GPU raised a mining or tunnel alert;
  the GPU alert is one step more severe than the alert it builds on.
- RLG-GPU-003: a GPU is still held by a process of an episode after the
  episode ended.

No I/O here: the holder table (monitor/state/gpu.py) gathers the facts, these
functions judge them.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from monitor.config import GpuConfig
from monitor.detectors.signals import Confidence, Signal, bounded

# The rules these judgements raise (monitor/data/rules.toml; checked against it at load);
# the holder table (monitor/state/gpu.py) reports them.
RULE_OPEN_IN_EPISODE: Final = "RLG-GPU-001"  # open_signals
RULE_HOLDER_ALERT: Final = "RLG-GPU-002"  # holder_alert_signal
RULE_HELD_AFTER_END: Final = "RLG-GPU-003"  # held_after_end_signal
RULES: Final = (RULE_OPEN_IN_EPISODE, RULE_HOLDER_ALERT, RULE_HELD_AFTER_END)

# severity of an alert -> confidence of the GPU-002 signal built on it; the rule's
# severity map then raises it one step (low->medium, medium->high, high->critical)
ALERT_TO_CONFIDENCE: dict[str, Confidence] = {
    "low": "low",
    "medium": "medium",
    "high": "high",
    "critical": "high",
}
ESCALATED_CATEGORIES = frozenset({"mining", "tunnel"})


@dataclass(frozen=True)
class GpuAllowlist:
    """Who may open a GPU inside an episode (globs, fnmatch, case-sensitive)."""

    executables: tuple[str, ...] = ()
    helpers: tuple[str, ...] = ()
    cgroups: tuple[str, ...] = ()
    workers: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, cfg: GpuConfig) -> GpuAllowlist:
        return cls(cfg.allow_executables, cfg.allow_helpers, cfg.allow_cgroups, cfg.allow_workers)


@dataclass(frozen=True)
class Subject:
    """What the rules need to know about one process."""

    pid: int
    name: str
    executable: str | None
    episode_id: str | None
    worker_id: str | None = None
    cgroup: str | None = None  # cgroup v2 path, when resolved


def _match(value: str | None, globs: Iterable[str]) -> str | None:
    if not value:
        return None
    for g in globs:
        if fnmatch.fnmatchcase(value, g):
            return g
    return None


def allowed_reason(s: Subject, allow: GpuAllowlist) -> str | None:
    """Why the process is an allowed trainer, or None."""
    g = _match(s.executable, allow.executables)
    if g is not None:
        return f"executable {s.executable} matches {g}"
    g = _match(s.cgroup, allow.cgroups)
    if g is not None:
        return f"cgroup {s.cgroup} matches {g}"
    g = _match(s.worker_id, allow.workers)
    if g is not None:
        return f"worker {s.worker_id} matches {g}"
    return None


def is_quiet(s: Subject, parent: Subject | None, allow: GpuAllowlist) -> bool:
    """An allowed trainer, or an allowed helper that an allowed process started."""
    if allowed_reason(s, allow) is not None:
        return True
    if parent is not None and _match(s.executable, allow.helpers) is not None:
        return allowed_reason(parent, allow) is not None
    return False


def open_signals(
    s: Subject,
    parent: Subject | None,
    path: str,
    device: str,
    via: str,
    allow: GpuAllowlist,
) -> list[Signal]:
    """RLG-GPU-001 evidence for one holding (empty: nothing to report).

    ``path`` is the node the process opened, ``device`` the configured device it
    is (the same unless another node of the device was used), ``via`` how the
    holding was learned: "openat"/"openat2"/"open" (the probe) or "scan"
    (/proc, the open itself was not seen). Inherited holdings ("fork") are
    never reported: the parent opened the device.
    """
    if s.episode_id is None or via == "fork" or is_quiet(s, parent, allow):
        return []
    helper = _match(s.executable, allow.helpers) is not None
    who = f"{s.name} ({s.pid}) in episode {s.episode_id}"
    sigs = [
        Signal(
            "behaviour",
            "gpu.helper_in_episode" if helper else "gpu.open_in_episode",
            bounded(f"{who} opened {path}"),
            "low" if helper else "medium",
        )
    ]
    if via == "scan":
        sigs.append(
            Signal(
                "fd",
                "gpu.open_not_seen",
                bounded(
                    f"fd on {device} found in /proc; the open was not seen by the probe "
                    f"(relative path, link, another node or io_uring)"
                ),
                "high",
            )
        )
    if path != device:
        sigs.append(
            Signal(
                "fd",
                "gpu.other_node",
                bounded(f"{path} is not a configured device path but is {device}"),
                "high",
            )
        )
    return sigs


def holder_alert_signal(rule_id: str, category: str, severity: str, devices: list[str]) -> Signal:
    """RLG-GPU-002 evidence: a GPU holder raised a mining or tunnel alert."""
    held = ", ".join(sorted(devices)[:4])
    return Signal(
        "behaviour",
        f"gpu.holder_{category}",
        bounded(f"{rule_id} ({severity}) from a process holding {held}"),
        ALERT_TO_CONFIDENCE.get(severity, "medium"),
    )


def escalates(category: str) -> bool:
    return category in ESCALATED_CATEGORIES


def held_after_end_signal(
    s: Subject, episode_id: str, devices: list[str], allowed: bool, ended_s_ago: float
) -> Signal:
    """RLG-GPU-003 evidence; an allowed trainer still holding is medium, anyone else high."""
    held = ", ".join(sorted(devices)[:4])
    return Signal(
        "behaviour",
        "gpu.held_after_episode_end",
        bounded(
            f"{s.name} ({s.pid}) of episode {episode_id} still holds {held} "
            f"{ended_s_ago:.1f} s after the episode ended"
        ),
        "medium" if allowed else "high",
    )
