"""Trainer-side client of the rlguard registry (docs/registry.md).

    from monitor.client import episode, run

    with run(run_id="grpo-42"):
        with episode(episode_id="ep-17", trajectory_id="traj-3") as ep:
            subprocess.run(cmd, env=ep.env())   # the agent's tool call

``episode`` binds the calling thread (``bind="thread"``, the default: right for trainers that
run one episode per thread or coroutine runner) or the whole process (``bind="process"``) and
any cgroup / container / sandbox of the episode, waits for the monitor's reply, then runs the
block.  Children started inside the block belong to the episode even if they scrub their
environment.  ``ep.env()`` is a copy of ``os.environ`` with the ``RL_*`` tags set, for
subprocesses; ``set_environ=True`` also sets them in ``os.environ`` for the block (only safe
when one episode runs per process at a time).

The monitor being absent never breaks training: the block runs, ``ep.registered`` is False
and a warning is logged, unless ``strict=True``.  Only the standard library is used, so the
module can be copied into a trainer image as it is.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
from collections.abc import Iterator
from typing import Any

DEFAULT_SOCKET = "/run/rlguard/registry.sock"
SOCKET_ENV = "RLGUARD_REGISTRY"
log = logging.getLogger("rlguard.client")

TAG_ENV = {
    "run_id": "RL_RUN_ID",
    "episode_id": "RL_EPISODE_ID",
    "trajectory_id": "RL_TRAJECTORY_ID",
    "sandbox_id": "RL_SANDBOX_ID",
}


class RegistryUnavailable(OSError):
    """The registry could not be reached or refused the message (strict mode)."""


def socket_path(path: str | None = None) -> str:
    return path or os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET


def send(message: dict[str, Any], path: str | None = None, timeout: float = 5.0) -> dict[str, Any]:
    """Send one message and return the reply; raises RegistryUnavailable."""
    data = json.dumps(message, separators=(",", ":")).encode() + b"\n"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(socket_path(path))
            s.sendall(data)
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
    except OSError as exc:
        raise RegistryUnavailable(f"rlguard registry {socket_path(path)}: {exc}") from exc
    try:
        answer = json.loads(buf or b"{}")
    except ValueError:
        raise RegistryUnavailable("rlguard registry: unreadable reply") from None
    if not isinstance(answer, dict) or not answer.get("ok"):
        err = answer.get("error") if isinstance(answer, dict) else None
        raise RegistryUnavailable(f"rlguard registry refused the message: {err}")
    return answer


def _send_soft(message: dict[str, Any], path: str | None, strict: bool) -> bool:
    try:
        send(message, path)
        return True
    except RegistryUnavailable as exc:
        if strict:
            raise
        log.warning("%s", exc)
        return False


class EpisodeHandle:
    """What ``episode()`` yields: the ids, whether the monitor took it, and ``env()``."""

    def __init__(self, tags: dict[str, str], registered: bool) -> None:
        self.tags = tags
        self.registered = registered

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """An environment for subprocesses: BASE (default os.environ) plus the RL_* tags."""
        out = dict(os.environ if base is None else base)
        out.update(self.tags)
        return out


@contextlib.contextmanager
def run(run_id: str, path: str | None = None, strict: bool = False, **meta: Any) -> Iterator[None]:
    """Announce a training run (run_start / run_end)."""
    _send_soft({"op": "run_start", "run_id": run_id, "meta": meta}, path, strict)
    try:
        yield
    finally:
        _send_soft({"op": "run_end", "run_id": run_id}, path, strict)


@contextlib.contextmanager
def episode(
    episode_id: str,
    trajectory_id: str | None = None,
    run_id: str | None = None,
    *,
    bind: str = "thread",
    pids: list[int] | None = None,
    cgroup: str | None = None,
    container_id: str | None = None,
    container_name: str | None = None,
    sandbox_id: str | None = None,
    set_environ: bool = False,
    path: str | None = None,
    strict: bool = False,
) -> Iterator[EpisodeHandle]:
    """Bind this thread (or process) and the given sandbox to an episode for the block."""
    if bind not in ("thread", "process", "none"):
        raise ValueError('bind must be "thread", "process" or "none"')
    msg: dict[str, Any] = {"op": "episode_start", "episode_id": episode_id}
    ids = {"run_id": run_id, "trajectory_id": trajectory_id, "sandbox_id": sandbox_id}
    msg.update({k: v for k, v in ids.items() if v is not None})
    if bind == "thread":
        msg["tids"] = [threading.get_native_id()]
    elif bind == "process":
        msg["pids"] = [os.getpid()]
    if pids:
        msg["pids"] = [*msg.get("pids", []), *pids]
    extra = {"cgroup": cgroup, "container_id": container_id, "container_name": container_name}
    msg.update({k: v for k, v in extra.items() if v is not None})
    tags = {TAG_ENV[k]: str(v) for k, v in {**ids, "episode_id": episode_id}.items() if v}
    registered = _send_soft(msg, path, strict)
    saved = {k: os.environ.get(k) for k in tags} if set_environ else {}
    if set_environ:
        os.environ.update(tags)
    status = "ok"
    try:
        yield EpisodeHandle(tags, registered)
    except BaseException:
        status = "error"
        raise
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if registered:
            _send_soft(
                {"op": "episode_end", "episode_id": episode_id, "status": status}, path, strict
            )
