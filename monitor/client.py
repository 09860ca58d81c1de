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

Before the policy update, ``verdicts()`` says which episodes are safe (docs/fleet.md)::

    from monitor.client import verdicts

    got = verdicts(["ep-17", "ep-18"], timeout_s=30,
                   url="postgresql://trainer@db/rlguard?sslmode=verify-full")
    got.verdicts["ep-17"].verdict     # keep / review / drop, highest revision
    got.missing["ep-18"].reason       # open, pending, not_seen, host_never_seen, coverage_gap

``url`` is the fleet's PostgreSQL (waits with LISTEN/NOTIFY; psycopg is imported only then)
or a host's SQLite ledger file (default ``RLGUARD_LEDGER``, else /var/lib/rlguard/episodes.db).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

DEFAULT_SOCKET = "/run/rlguard/registry.sock"
SOCKET_ENV = "RLGUARD_REGISTRY"
DEFAULT_LEDGER = "/var/lib/rlguard/episodes.db"
LEDGER_ENV = "RLGUARD_LEDGER"
CHANNEL = "rlguard_verdict"  # monitor/sinks/ledger/postgres.py notifies here
SEVERITY = {"keep": 0, "review": 1, "drop": 2}
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


def send(message: dict[str, Any], path: str | None = None, timeout: float = 2.0) -> dict[str, Any]:
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


# --- verdicts (the trainer's filter) ----------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """An episode's verdict: the highest revision; over several hosts, the strictest."""

    episode_id: str
    verdict: str  # keep, review, drop
    reasons: tuple[str, ...]
    revision: int
    hosts: tuple[str, ...]


@dataclass(frozen=True)
class Missing:
    """Why an episode has no verdict (yet).

    ``reason``: ``open`` (still running), ``pending`` (ended; its verdict comes after the
    grace period), ``host_never_seen`` (its host, or any host, never wrote to this
    ledger), ``coverage_gap`` (its host, or some host, has been silent: monitor or link
    down, rows waiting in its spool), ``not_seen`` (every host reports and none saw it).
    """

    episode_id: str
    reason: str
    detail: str


@dataclass
class VerdictResult:
    verdicts: dict[str, Verdict] = field(default_factory=dict)
    missing: dict[str, Missing] = field(default_factory=dict)


def _is_pg(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


class VerdictReader:
    """Reads verdicts from a ledger: the fleet's PostgreSQL or a host's SQLite file.

    Keep one per trainer process and call ``verdicts()`` per batch: on PostgreSQL it
    holds one connection that LISTENs for new verdicts.
    """

    def __init__(self, url: str | None = None, silent_after_s: float = 30.0) -> None:
        self.url = url or os.environ.get(LEDGER_ENV) or DEFAULT_LEDGER
        self.silent_after_ns = int(silent_after_s * 1e9)
        self._pg: Any = None
        self._mark = "%s" if _is_pg(self.url) else "?"
        self._prefix = "rlguard." if _is_pg(self.url) else ""

    # -- connections --------------------------------------------------------------------

    def _connect_pg(self) -> Any:
        if self._pg is None:
            import psycopg  # the fleet extra; only this path needs it

            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=10)
            conn.execute(f"LISTEN {CHANNEL}")  # before any read: no verdict slips between
            self._pg = conn
        return self._pg

    def _query(self, sql: str, args: list[Any]) -> list[tuple[Any, ...]]:
        if _is_pg(self.url):
            import psycopg

            try:
                return [tuple(r) for r in self._connect_pg().execute(sql, args).fetchall()]
            except psycopg.errors.UndefinedTable:
                return []  # no host has written yet: nothing known
            except psycopg.OperationalError:
                self.close()  # the server restarted: one new connection, then give up
                return [tuple(r) for r in self._connect_pg().execute(sql, args).fetchall()]
        path = self.url[len("sqlite://") :] if self.url.startswith("sqlite://") else self.url
        uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=ro"
        try:
            conn = sqlite3.connect(uri, uri=True, timeout=5.0)
        except sqlite3.Error:
            return []  # no ledger yet: nothing known
        try:
            return [tuple(r) for r in conn.execute(sql, args).fetchall()]
        except sqlite3.Error:
            return []  # no tables yet, or locked: known next time
        finally:
            conn.close()

    def close(self) -> None:
        if self._pg is not None:
            self._pg.close()
            self._pg = None

    def __enter__(self) -> VerdictReader:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    # -- reading ------------------------------------------------------------------------

    def _in(self, ids: list[str]) -> tuple[str, list[Any]]:
        if self._mark == "%s":
            return "= ANY(%s)", [ids]
        return f"IN ({','.join('?' * len(ids))})", list(ids)

    def _known(self, ids: list[str]) -> dict[str, Verdict]:
        """Verdicts of these episodes: per host the highest revision, then the strictest."""
        per: dict[str, list[tuple[str, str, str, int]]] = {}
        seen: dict[str, set[str]] = {}  # episode -> hosts with a row for it
        for i in range(0, len(ids), 500):  # stay under SQLite's variable limit
            clause, args = self._in(ids[i : i + 500])
            rows = self._query(
                f"SELECT host, episode_id, verdict, reasons, revision FROM {self._prefix}verdicts"
                f" v WHERE episode_id {clause} AND revision = (SELECT max(revision) FROM "
                f"{self._prefix}verdicts w WHERE w.host = v.host AND w.episode_id = v.episode_id)",
                args,
            )
            for host, eid, verdict, reasons, revision in rows:
                per.setdefault(eid, []).append((host, verdict, reasons, revision))
            if rows:
                table = f"{self._prefix}episodes"
                for host, eid in self._query(
                    f"SELECT host, episode_id FROM {table} WHERE episode_id {clause}", args
                ):
                    seen.setdefault(eid, set()).add(host)
        out: dict[str, Verdict] = {}
        for eid, parts in per.items():
            judged = {p[0] for p in parts}
            if seen.get(eid, judged) - judged:
                continue  # also seen on a host that has not judged it yet: not decided
            worst = max(parts, key=lambda p: (SEVERITY.get(p[1], 2), p[3]))
            reasons = tuple(dict.fromkeys(r for p in parts for r in json.loads(p[2] or "[]")))
            out[eid] = Verdict(
                eid, worst[1], reasons, max(p[3] for p in parts), tuple(sorted(judged))
            )
        return out

    def _hosts(self) -> dict[str, int | None]:
        """host -> its ledger's last sign of life (wall ns)."""
        if _is_pg(self.url):
            return dict(self._query("SELECT host, last_alive_ns FROM rlguard.hosts", []))
        alive = self._query("SELECT value FROM meta WHERE key = 'last_alive_ns'", [])
        hosts = self._query("SELECT DISTINCT host FROM episodes", [])
        when = int(alive[0][0]) if alive else None
        return {h: when for (h,) in hosts} or ({"": when} if alive else {})

    def _why(self, ids: list[str], expected: Mapping[str, str]) -> dict[str, Missing]:
        now = time.time_ns()
        hosts = self._hosts()
        silent = {h: t for h, t in hosts.items() if t is None or now - t > self.silent_after_ns}
        rows: dict[str, list[tuple[str, Any]]] = {}
        for i in range(0, len(ids), 500):
            clause, args = self._in(ids[i : i + 500])
            found = self._query(
                f"SELECT episode_id, host, end_ns FROM {self._prefix}episodes "
                f"WHERE episode_id {clause}",
                args,
            )
            for eid, host, end in found:
                rows.setdefault(eid, []).append((host, end))
        out: dict[str, Missing] = {}
        for eid in ids:
            seen = rows.get(eid)
            want = expected.get(eid)
            if seen:
                still = [h for h, end in seen if end is None]
                if still:
                    out[eid] = Missing(eid, "open", f"still running on {', '.join(still)}")
                else:
                    out[eid] = Missing(eid, "pending", "ended; its verdict is due shortly")
            elif (want is not None and want not in hosts) or not hosts:
                out[eid] = Missing(
                    eid, "host_never_seen", f"no ledger rows from host {want or '(any)'}"
                )
            elif want is not None and want in silent:
                out[eid] = Missing(eid, "coverage_gap", f"host {want} {_silence(silent[want])}")
            elif want is None and silent:
                names = ", ".join(sorted(silent)[:10])
                out[eid] = Missing(
                    eid, "coverage_gap", f"not seen; silent hosts (it may be on one): {names}"
                )
            else:
                out[eid] = Missing(
                    eid,
                    "not_seen",
                    "no host saw it: it ran nothing the monitor attributes, or its id differs",
                )
        return out

    def verdicts(
        self,
        episode_ids: Iterable[str],
        timeout_s: float = 0.0,
        hosts: Mapping[str, str] | None = None,
    ) -> VerdictResult:
        """Each episode's verdict, waiting up to ``timeout_s`` for those not decided yet.

        ``hosts`` (episode id -> host name), when the trainer knows where an episode
        ran, makes the reasons for missing verdicts precise. On PostgreSQL the wait is
        LISTEN/NOTIFY (no polling); on SQLite the file is read every 0.2 s.
        """
        wanted = list(dict.fromkeys(episode_ids))
        deadline = time.monotonic() + timeout_s
        got: dict[str, Verdict] = {}
        while True:
            missing = [e for e in wanted if e not in got]
            if missing:
                got.update(self._known(missing))
                missing = [e for e in wanted if e not in got]
            left = deadline - time.monotonic()
            if not missing or left <= 0:
                break
            if _is_pg(self.url):
                self._wait_notify(set(missing), left)
            else:
                time.sleep(min(0.2, left))
        result = VerdictResult({e: got[e] for e in wanted if e in got})
        still = [e for e in wanted if e not in got]
        if still:
            result.missing = self._why(still, hosts or {})
        return result

    def _wait_notify(self, missing: set[str], left: float) -> None:
        """Until a verdict of one of ``missing`` is announced, or ``left`` seconds pass."""
        import psycopg

        conn = self._connect_pg()
        deadline = time.monotonic() + left
        try:
            while (remaining := deadline - time.monotonic()) > 0:
                # consume the generator whole: it holds the connection's lock while open
                notes = list(conn.notifies(timeout=remaining, stop_after=1))
                if any(n.payload in missing for n in notes):
                    return
        except psycopg.OperationalError:
            self.close()  # lost: the caller reads again (reconnecting, LISTEN first)
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))


def _silence(last_alive_ns: int | None) -> str:
    if last_alive_ns is None:
        return "never reported it was alive"
    ago = (time.time_ns() - last_alive_ns) / 1e9
    return f"silent for {ago:.0f} s (monitor down, or rows waiting in its spool)"


def verdicts(
    episode_ids: Iterable[str],
    timeout_s: float = 0.0,
    url: str | None = None,
    hosts: Mapping[str, str] | None = None,
) -> VerdictResult:
    """One-shot ``VerdictReader(url).verdicts(...)``; keep a reader for repeated calls."""
    with VerdictReader(url) as reader:
        return reader.verdicts(episode_ids, timeout_s, hosts)
