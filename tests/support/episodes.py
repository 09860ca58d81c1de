"""Helpers for end-to-end tests that launch workers with their own episode tags and wait for
the monitor's alerts about them (each test filters on its own unique episode id)."""

from __future__ import annotations

import uuid

from tests.support.live import LiveMonitor


def episode() -> str:
    """A fresh episode id no other test (or session on this machine) uses."""
    return f"ep-{uuid.uuid4().hex[:8]}"


def worker_env(ep: str, path_prefix: str = "") -> dict[str, str]:
    """The environment of an RL worker in episode `ep` (the kernel reads the tags at exec)."""
    return {
        "PATH": f"{path_prefix}/usr/bin:/bin:/usr/sbin:/sbin",
        "HOME": "/root",
        "RL_EPISODE_ID": ep,
        "RL_WORKER_ID": "w-e2e",
    }


def in_test_episode(doc: dict) -> bool:
    """Lines attributed to an episode a test made (`ep-…`): what a LiveMonitor of an
    end-to-end module needs to keep on a machine other sessions also load."""
    rl = doc.get("rl")
    ep = rl.get("episode_id") if isinstance(rl, dict) else None
    return isinstance(ep, str) and ep.startswith("ep-")


def alerts(mon: LiveMonitor, ep: str) -> list[dict]:
    """Every alert the monitor wrote so far for episode `ep`."""
    return mon.sink.find_all(
        lambda d: d["event"]["kind"] == "alert" and d.get("rl", {}).get("episode_id") == ep
    )


def wait_alert(
    mon: LiveMonitor, ep: str, rule: str, timeout: float = 15, severity: str | None = None
) -> dict:
    """The first alert of `rule` for episode `ep` (at `severity`, when given)."""
    return mon.wait_for(
        lambda d: (
            d["event"]["kind"] == "alert"
            and d["rule"]["id"] == rule
            and d.get("rl", {}).get("episode_id") == ep
            and (severity is None or d["rlguard"]["alert"]["severity"] == severity)
        ),
        timeout=timeout,
    )
