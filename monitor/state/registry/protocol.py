"""The registry protocol: one JSON object per line from the trainer, one reply per line.

Pure: parsing and validation only, so it unit-tests (and fuzzes) without a socket.  Every
value is attacker-reachable (anyone in the trainer's group can write), so ids are bounded and
sanitised here, at the edge, and anything unexpected is a :class:`ProtocolError` that becomes
an error reply, never an exception in the collector.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from monitor.sanitize import safe_text

OPS = ("hello", "run_start", "episode_start", "episode_end", "run_end")
MAX_ID_LEN = 256
MAX_TASKS = 1024  # pids or tids per message
MAX_META_BYTES = 4096
_CONTAINER_ID_RE = re.compile(r"[0-9a-f]{12,64}")
_ID_FIELDS = ("run_id", "episode_id", "trajectory_id", "sandbox_id", "container_name")
_KNOWN = {
    "op",
    "pids",
    "tids",
    "cgroup",
    "container_id",
    "status",
    "meta",
    *_ID_FIELDS,
}


class ProtocolError(ValueError):
    """A message we refuse; ``str()`` is the reply's error text."""


class Refused(ProtocolError):
    """A well-formed message its sender may not send (docs/registry.md, "Who may bind")."""


@dataclass(frozen=True, slots=True)
class Message:
    op: str
    run_id: str | None = None
    episode_id: str | None = None
    trajectory_id: str | None = None
    sandbox_id: str | None = None
    container_name: str | None = None
    container_id: str | None = None
    cgroup: str | None = None
    pids: tuple[int, ...] = ()
    tids: tuple[int, ...] = ()
    status: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def _id(obj: dict[str, Any], key: str) -> str | None:
    v = obj.get(key)
    if v is None:
        return None
    if isinstance(v, int) and not isinstance(v, bool):
        v = str(v)
    if not isinstance(v, str) or not v:
        raise ProtocolError(f"{key}: expected a non-empty string")
    if len(v) > MAX_ID_LEN:
        raise ProtocolError(f"{key}: longer than {MAX_ID_LEN} characters")
    return safe_text(v, MAX_ID_LEN)


def _tasks(obj: dict[str, Any], key: str) -> tuple[int, ...]:
    v = obj.get(key, [])
    if isinstance(v, int) and not isinstance(v, bool):
        v = [v]
    if not isinstance(v, list):
        raise ProtocolError(f"{key}: expected a list of positive integers")
    if len(v) > MAX_TASKS:
        raise ProtocolError(f"{key}: more than {MAX_TASKS} entries")
    out = []
    for x in v:
        if not isinstance(x, int) or isinstance(x, bool) or not 0 < x < 1 << 31:
            raise ProtocolError(f"{key}: expected a list of positive integers")
        out.append(x)
    return tuple(out)


def parse_message(line: bytes) -> Message:
    """One line (without its newline) -> Message, or ProtocolError."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"not JSON: {exc.msg}"[:200]) from None
    if not isinstance(obj, dict):
        raise ProtocolError("expected a JSON object")
    op = obj.get("op")
    if op not in OPS:
        raise ProtocolError(f"op: expected one of {', '.join(OPS)}")
    unknown = sorted(k for k in obj if k not in _KNOWN)
    if unknown:
        shown = ", ".join(safe_text(str(k), 40) for k in unknown[:5])
        raise ProtocolError(f"unknown field(s): {shown}")
    ids = {k: _id(obj, k) for k in _ID_FIELDS}
    container_id = obj.get("container_id")
    if container_id is not None:
        if not isinstance(container_id, str) or not _CONTAINER_ID_RE.fullmatch(container_id):
            raise ProtocolError("container_id: expected 12 to 64 lower-case hex digits")
    cgroup = obj.get("cgroup")
    if cgroup is not None:
        if not isinstance(cgroup, str) or not cgroup or len(cgroup) > 4096 or "\0" in cgroup:
            raise ProtocolError("cgroup: expected a cgroup path")
        if ".." in cgroup.split("/"):
            raise ProtocolError("cgroup: '..' is not allowed")
    status = obj.get("status")
    if status is not None and not isinstance(status, str):
        raise ProtocolError("status: expected a string")
    meta = obj.get("meta") or {}
    if not isinstance(meta, dict):
        raise ProtocolError("meta: expected an object")
    if meta and len(orjson.dumps(meta)) > MAX_META_BYTES:
        raise ProtocolError(f"meta: larger than {MAX_META_BYTES} bytes")
    msg = Message(
        op=op,
        pids=_tasks(obj, "pids"),
        tids=_tasks(obj, "tids"),
        container_id=container_id,
        cgroup=cgroup,
        status=safe_text(status, 64) if status else None,
        meta={safe_text(str(k), 64): v for k, v in meta.items()},
        **ids,
    )
    if op in ("episode_start", "episode_end") and not msg.episode_id:
        raise ProtocolError(f"{op}: episode_id is required")
    if op in ("run_start", "run_end") and not msg.run_id:
        raise ProtocolError(f"{op}: run_id is required")
    return msg


def reply(ok: bool, **fields: Any) -> bytes:
    return orjson.dumps({"ok": ok, **fields}) + b"\n"
