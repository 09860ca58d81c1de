"""The NDJSON form of attributed events: ECS field names where ECS has them.

`rl.*` carries the RL attribution (episode, worker, run, trajectory, sandbox,
where the tags came from, lineage); `rlguard.*` carries sensor detail that
ECS has no field for (flags, socket ids, payload bytes).  docs/schema.md
documents every field.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from monitor.sanitize import printable_preview
from monitor.sensor.dns import parse_dns_message
from monitor.sensor.events import (
    CONNECT_KERNEL,
    EXEC_ARGV_UNREADABLE,
    EXEC_ENV_SCAN_TRUNCATED,
    EXEC_TAG_TRUNCATED,
    O_CLOEXEC,
    SEND_OWNER_DIFFERS,
    SOCK_TYPES,
    TCP_STATES,
    ConnectEvent,
    DnsEvent,
    Event,
    ExecEvent,
    ExitEvent,
    ForkEvent,
    GpuCloseEvent,
    GpuOpenEvent,
    SendEvent,
    TcpStateEvent,
    errno_name,
)
from monitor.sinks.community_id import community_id_v1
from monitor.state.process_table import Process, ProcessTable

if TYPE_CHECKING:
    from monitor.state.attribution import Attributor

CATEGORY = {
    "exec": (["process"], ["start"], "rlguard.process"),
    "fork": (["process"], ["start"], "rlguard.process"),
    "exit": (["process"], ["end"], "rlguard.process"),
    "connect": (["network"], ["connection", "start"], "rlguard.network"),
    "tcp_state": (["network"], ["connection"], "rlguard.network"),
    "send": (["network"], ["connection", "protocol"], "rlguard.network"),
    "dns": (["network"], ["protocol"], "rlguard.dns"),
    "dup": (["process"], ["change"], "rlguard.process"),
    "gpu_open": (["file"], ["access"], "rlguard.gpu"),
    "gpu_close": (["file"], ["end"], "rlguard.gpu"),
}


class Clock:
    """CLOCK_BOOTTIME ns (the kernel's timestamps) -> wall-clock ISO 8601."""

    def __init__(self) -> None:
        self.resync()

    def resync(self) -> None:
        self.offset_ns = time.time_ns() - time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        self._prefixes: dict[int, str] = {}

    def iso(self, boot_ns: int) -> str:
        wall = boot_ns + self.offset_ns
        sec, rem = divmod(wall, 1_000_000_000)
        prefix = self._prefixes.get(sec)
        if prefix is None:  # strftime once per distinct second, not per event
            if len(self._prefixes) > 4096:
                self._prefixes.clear()
            prefix = datetime.fromtimestamp(sec, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
            self._prefixes[sec] = prefix
        return f"{prefix}.{rem // 1000:06d}Z"

    def now_iso(self) -> str:
        return self.iso(time.clock_gettime_ns(time.CLOCK_BOOTTIME))


class Renderer:
    """Builds the ECS dict for an event, with process, lineage and `rl`."""

    def __init__(self, table: ProcessTable, hostname: str | None = None) -> None:
        self.table = table
        # set by the collector: registry, cgroup and precedence on top of the tags
        self.attributor: Attributor | None = None
        self.clock = Clock()
        self.host = {"hostname": hostname or socket.gethostname(), "boot": {"id": table.boot_id}}
        # kernel socket addresses are pointers: publish a keyed hash, never the value
        self._sock_key = os.urandom(16)

    def sock_id(self, skaddr: int) -> str:
        return hashlib.blake2b(
            skaddr.to_bytes(8, "little"), key=self._sock_key, digest_size=8
        ).hexdigest()

    def process_fields(self, p: Process) -> dict[str, Any]:
        parent = self.table.procs.get(p.ppid)
        out: dict[str, Any] = {
            "pid": p.pid,
            "entity_id": p.entity_id,
            "name": p.name,
            "executable": p.executable,
            "args": p.args,
            "args_count": len(p.args),
            "start": self.clock.iso(p.start_ns),
            "parent": {
                "pid": p.ppid,
                "entity_id": parent.entity_id if parent else p.parent_entity_id,
                "name": parent.name if parent else None,
            },
            # ECS keeps ids as keywords (strings)
            "user": {"id": None if p.uid is None else str(p.uid)},
            "group": {"id": None if p.gid is None else str(p.gid)},
        }
        return out

    def render(self, ev: Event, p: Process) -> dict[str, Any]:
        action = ev.action
        categories, types, dataset = CATEGORY[action]
        doc: dict[str, Any] = {
            "@timestamp": self.clock.iso(ev.ts_ns),
            "event": {
                "kind": "event",
                "category": categories,
                "type": types,
                "action": action,
                "dataset": dataset,
            },
            "host": self.host,
        }
        gen = self.table.generation
        cache = p.render_cache
        if cache is None or cache[0] != gen:
            # names, parents and lineage change only with fork/exec/exit: reuse in between
            lineage = self.table.lineage(p)
            cache = p.render_cache = (
                gen,
                (
                    lineage,
                    self.process_fields(p),
                    [{"pid": a.pid, "name": a.name, "entity_id": a.entity_id} for a in lineage],
                ),
            )
        lineage, proc_fields, lineage_doc = cache[1]
        proc = dict(proc_fields)
        if ev.tid != ev.pid:
            proc["thread"] = {"id": ev.tid}
        doc["process"] = proc
        att = self.attributor
        if att is None:
            rl = dict(self.table.rl_block(p, ev.tagset_id, ev.tag_origin, lineage))
        else:
            rl = att.rl_block(ev, p, lineage)
        rl["lineage"] = lineage_doc
        doc["rl"] = rl
        extra = getattr(self, "_" + action)(ev, doc)
        if ev.cgroup_id:
            extra.setdefault("cgroup_id", ev.cgroup_id)
            ident = att.identity(ev.cgroup_id) if att is not None else None
            if ident is not None:
                extra["cgroup"] = {"id": ev.cgroup_id, "path": ident.path}
                if ident.container_id:
                    doc["container"] = {"id": ident.container_id}
        doc["rlguard"] = extra
        return doc

    # one method per action: fills ECS fields in doc, returns rlguard.* detail

    def _exec(self, ev: ExecEvent, doc: dict[str, Any]) -> dict[str, Any]:
        detail: dict[str, Any] = {"exec": {"args_truncated": ev.args_truncated}}
        for bit, name in (
            (EXEC_ENV_SCAN_TRUNCATED, "env_scan_truncated"),
            (EXEC_TAG_TRUNCATED, "tag_truncated"),
            (EXEC_ARGV_UNREADABLE, "argv_unreadable"),
        ):
            if ev.flags & bit:
                detail["exec"][name] = True
        if ev.own_tag_mask:
            keys = self.table.keys
            detail["exec"]["own_tag_keys"] = [
                k for i, k in enumerate(keys) if ev.own_tag_mask & (1 << i)
            ]
        return detail

    def _fork(self, ev: ForkEvent, doc: dict[str, Any]) -> dict[str, Any]:
        # the subject is the new child; the forking process is its parent
        child = self.table.procs.get(ev.child_pid)
        if child is not None:
            doc["process"] = self.process_fields(child)
            doc["rl"]["lineage"] = [
                {"pid": a.pid, "name": a.name, "entity_id": a.entity_id}
                for a in self.table.lineage(child)
            ]
        return {"fork": {"parent_tid": ev.tid}}

    def _exit(self, ev: ExitEvent, doc: dict[str, Any]) -> dict[str, Any]:
        proc = doc["process"]
        proc["exit_code"] = ev.exit_code if ev.exit_code >= 0 else None
        detail: dict[str, Any] = {"exit": {}}
        if ev.exit_signal:
            detail["exit"]["signal"] = ev.exit_signal
        return detail

    def _gpu_open(self, ev: GpuOpenEvent, doc: dict[str, Any]) -> dict[str, Any]:
        doc["file"] = {"path": ev.path}
        if ev.fd >= 0:
            doc["event"]["outcome"] = "success"
        else:
            doc["event"]["outcome"] = "failure"
        gpu: dict[str, Any] = {
            "fd": ev.fd if ev.fd >= 0 else None,
            "result": errno_name(ev.ret),
            "via": ev.via,
            "open_flags": ev.open_flags,
            "cloexec": bool(ev.open_flags & O_CLOEXEC),
        }
        if ev.rdev is not None:
            gpu["rdev"] = f"{os.major(ev.rdev)}:{os.minor(ev.rdev)}"
        return {"gpu": gpu}

    def _gpu_close(self, ev: GpuCloseEvent, doc: dict[str, Any]) -> dict[str, Any]:
        if ev.path:
            doc["file"] = {"path": ev.path}
        gpu: dict[str, Any] = {"fd": ev.fd, "via": ev.via}
        if ev.last_fd != ev.fd:
            gpu["last_fd"] = ev.last_fd
        return {"gpu": gpu}

    def _dup(self, ev: Any, doc: dict[str, Any]) -> dict[str, Any]:
        return {"dup": {"oldfd": ev.oldfd, "newfd": ev.newfd}}

    @staticmethod
    def _net_type(family: int) -> str:
        return "ipv6" if family == 10 else "ipv4"

    def _connect(self, ev: ConnectEvent, doc: dict[str, Any]) -> dict[str, Any]:
        doc["destination"] = {"ip": ev.daddr, "port": ev.dport}
        doc["network"] = {"transport": ev.transport, "type": self._net_type(ev.family)}
        result = errno_name(ev.ret)
        if ev.ret in (0, -115):
            doc["event"]["outcome"] = "success"
        elif ev.ret == 1:
            doc["event"]["outcome"] = "unknown"
        else:
            doc["event"]["outcome"] = "failure"
        return {
            "connect": {
                "fd": ev.fd if ev.fd >= 0 else None,
                "result": result,
                "errno": -ev.ret if ev.ret < 0 else 0,
                "via": "kernel" if ev.flags & CONNECT_KERNEL else "syscall",
                "socket_type": SOCK_TYPES.get(ev.sock_type),
                "cookie": ev.cookie or None,
            }
        }

    def _five_tuple(
        self,
        doc: dict[str, Any],
        family: int,
        saddr: str | None,
        sport: int,
        daddr: str | None,
        dport: int,
        proto: int,
    ) -> None:
        doc["source"] = {"ip": saddr, "port": sport}
        doc["destination"] = {"ip": daddr, "port": dport}
        net: dict[str, Any] = {
            "transport": "tcp" if proto == 6 else "udp",
            "type": self._net_type(family),
        }
        if saddr and daddr:
            net["community_id"] = community_id_v1(saddr, daddr, sport, dport, proto)
        doc["network"] = net

    def _tcp_state(self, ev: TcpStateEvent, doc: dict[str, Any]) -> dict[str, Any]:
        self._five_tuple(doc, ev.family, ev.saddr, ev.sport, ev.daddr, ev.dport, 6)
        if not ev.owner_known:
            # softirq context, no recorded owner: no process to name
            doc.pop("process", None)
            doc["rl"] = {
                **{r + "_id": None for r in ("episode", "worker", "run", "trajectory", "sandbox")},
                "tags": {},
                "source": "none",
                "lineage": [],
            }
        tcp = {
            "old_state": TCP_STATES.get(ev.oldstate, str(ev.oldstate)),
            "new_state": TCP_STATES.get(ev.newstate, str(ev.newstate)),
            "sock_id": self.sock_id(ev.skaddr),
            "owner_known": ev.owner_known,
        }
        if ev.accept_count:
            # accepts from this peer on this port so far; those between lines were folded
            tcp["accept_count"] = ev.accept_count
        return {"tcp": tcp}

    @staticmethod
    def payload(data: bytes, total: int) -> dict[str, Any]:
        return {
            "length": total,
            "captured": len(data),
            "hex": data.hex(),
            "preview": printable_preview(data, len(data)),
        }

    def _send(self, ev: SendEvent, doc: dict[str, Any]) -> dict[str, Any]:
        self._five_tuple(doc, ev.family, ev.saddr, ev.sport, ev.daddr, ev.dport, 6)
        detail: dict[str, Any] = {
            "payload": self.payload(ev.data, ev.payload_len),
            "socket": {"cookie": ev.cookie, "owner_pid": ev.owner_pid},
        }
        if ev.flags & SEND_OWNER_DIFFERS:
            detail["socket"]["owner_differs"] = True
        return detail

    def _dns(self, ev: DnsEvent, doc: dict[str, Any]) -> dict[str, Any]:
        self._five_tuple(doc, ev.family, ev.saddr, ev.sport, ev.daddr, ev.dport, 17)
        doc["network"]["protocol"] = "dns"
        q = parse_dns_message(ev.data)
        if q is not None:
            doc["dns"] = {
                "id": str(q.id),
                "type": "answer" if q.is_response else "query",
                "question": {"name": q.name, "type": q.qtype_name},
            }
        return {"payload": self.payload(ev.data, ev.payload_len), "dns": {"parsed": q is not None}}
