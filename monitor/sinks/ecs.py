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
from typing import Any, cast

from monitor.clock import Clock, iso_wall
from monitor.detectors.engine import Finding
from monitor.detectors.rules import SEVERITY_SCORE
from monitor.sanitize import printable_preview
from monitor.sensor.events import (
    CONNECT_KERNEL,
    EXEC_ARGV_UNREADABLE,
    EXEC_ENV_SCAN_TRUNCATED,
    EXEC_TAG_TRUNCATED,
    O_CLOEXEC,
    SEND_OWNER_DIFFERS,
    SEND_SENDER_KNOWN,
    SEND_SENDER_QUEUED,
    SOCK_TYPES,
    TCP_STATES,
    ConnectEvent,
    DnsEvent,
    DupEvent,
    ExecEvent,
    ExitEvent,
    GpuCloseEvent,
    GpuOpenEvent,
    SendEvent,
    StreamTickEvent,
    TcpStateEvent,
    UnixEvent,
    errno_name,
)
from monitor.sinks.community_id import community_id_v1
from monitor.state.attributed import AttributedEvent
from monitor.state.process_table import Process, ProcessTable
from monitor.state.registry.records import (
    RegistryRecord,
    RegistryRefusals,
    RegistryRefusedEvent,
)

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
    "registry_refused": (["configuration"], ["denied"], "rlguard.registry"),
    "unix_listen": (["network"], ["start"], "rlguard.network"),
    "unix_connect": (["network"], ["connection", "start"], "rlguard.network"),
    # a stream's opening showed something new: a proxy's target, a WebSocket, TLS plaintext
    "stream": (["network"], ["connection", "protocol"], "rlguard.network"),
    "tls_data": (["network"], ["connection", "protocol"], "rlguard.network"),
    "tls_bind": (["network"], ["connection", "protocol"], "rlguard.network"),
    "stream_tick": (["network"], ["connection"], "rlguard.network"),
}


class Renderer:
    """Turns typed, attributed events and the monitor's own records into ECS documents.

    The last stage: nothing after it reads the documents except the sinks.
    """

    def __init__(self, table: ProcessTable, clock: Clock, hostname: str | None = None) -> None:
        self.table = table
        self.clock = clock
        self.host = {"hostname": hostname or socket.gethostname(), "boot": {"id": table.boot_id}}
        # kernel socket addresses are pointers: publish a keyed hash, never the value
        self._sock_key = os.urandom(16)
        # process fields and lineage docs by pid, valid for one table generation
        self._generation = -1
        self._procs: dict[int, tuple[dict[str, Any], list[dict[str, Any]]]] = {}

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

    def _process(
        self, p: Process, lineage: list[Process]
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Process fields and lineage doc; names and parents change only with the generation."""
        gen = self.table.generation
        if gen != self._generation:
            self._generation = gen
            self._procs.clear()
        got = self._procs.get(p.pid)
        if got is None:
            got = self._procs[p.pid] = (
                self.process_fields(p),
                [{"pid": a.pid, "name": a.name, "entity_id": a.entity_id} for a in lineage],
            )
        return got

    def base(self, dataset: str, action: str, kind: str = "metric") -> dict[str, Any]:
        """The skeleton of one of the monitor's own lines, stamped now."""
        return {
            "@timestamp": self.clock.now_iso(),
            "event": {"kind": kind, "dataset": dataset, "action": action},
            "host": self.host,
        }

    def context(self, ae: AttributedEvent) -> dict[str, Any]:
        """host, process (with thread) and rl (with lineage) of an attributed event."""
        doc: dict[str, Any] = {"host": self.host}
        rl = dict(ae.rl.as_doc())
        p = ae.process
        if p is None:
            rl["lineage"] = []
        else:
            proc_fields, lineage_doc = self._process(p, ae.lineage)
            proc = dict(proc_fields)
            ev = ae.event
            if ev.tid != ev.pid and ev.pid == p.pid:
                proc["thread"] = {"id": ev.tid}
            doc["process"] = proc
            rl["lineage"] = lineage_doc
        doc["rl"] = rl
        return doc

    def render(self, ae: AttributedEvent) -> dict[str, Any]:
        """The line of an event (memoised on the event: alerts copy their context from it)."""
        if ae.rendered is not None:
            return ae.rendered
        ev = ae.event
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
        }
        doc.update(self.context(ae))
        extra = getattr(self, "_" + action)(ae, doc)
        if ev.cgroup_id:
            extra.setdefault("cgroup_id", ev.cgroup_id)
            ident = ae.cgroup
            if ident is not None:
                extra["cgroup"] = {"id": ev.cgroup_id, "path": ident.path}
                if ident.container_id:
                    doc["container"] = {"id": ident.container_id}
        doc["rlguard"] = extra
        ae.rendered = doc
        return doc

    def render_alert(self, f: Finding) -> dict[str, Any]:
        """The alert line: the rule, the evidence and the triggering event's context."""
        rule = f.rule
        sev = f.severity
        ae = f.trigger
        src = self.render(ae) if ae.event.action in CATEGORY else self.context(ae)
        doc: dict[str, Any] = {
            "@timestamp": self.clock.now_iso(),
            "event": {
                "kind": "alert",
                "category": ["intrusion_detection"],
                "type": ["indicator"],
                "action": rule.id,
                "dataset": "rlguard.alert",
                "severity": SEVERITY_SCORE[sev],
                "reason": f"{rule.name}: " + "; ".join(s.detail for s in f.signals)[:400],
            },
            "rule": {
                "id": rule.id,
                "name": rule.name,
                "description": rule.description,
                "category": rule.category,
                "ruleset": "rlguard",
            },
            "threat": {
                "framework": "MITRE ATT&CK",
                "technique": [{"id": t[0], "name": t[1]} for t in rule.techniques],
            },
        }
        for key in ("host", "process", "rl", "destination", "source", "network", "dns", "tls"):
            if key in src:
                doc[key] = src[key]
        doc["rlguard"] = {
            "alert": {
                "severity": sev,
                "subject": f.subject,
                "evidence": [s.as_dict() for s in f.signals],
                "trigger": {
                    "action": ae.event.action,
                    "@timestamp": self.clock.iso(ae.event.ts_ns),
                },
                **f.extra,
            }
        }
        return doc

    # -- the monitor's own records ---------------------------------------------------------

    def render_registry(self, rec: RegistryRecord) -> dict[str, Any]:
        """The ``rlguard.episode`` line of one registry message."""
        reg: dict[str, Any] = {"client": rec.peer}
        if rec.bindings:
            reg["bindings"] = rec.bindings
        if rec.status:
            reg["status"] = rec.status
        if rec.meta:
            reg["meta"] = rec.meta
        if rec.warnings:
            reg["warnings"] = list(rec.warnings)
        return {
            "@timestamp": iso_wall(rec.wall_ns),
            "event": {
                "kind": "event",
                "category": ["session"],
                "type": ["start" if rec.is_start else "end"],
                "action": rec.op,
                "dataset": "rlguard.episode",
            },
            "rl": {
                "episode_id": rec.episode_id,
                "run_id": rec.run_id,
                "trajectory_id": rec.trajectory_id,
                "sandbox_id": rec.sandbox_id,
                "source": "registry",
            },
            "rlguard": {"registry": reg},
            "host": self.host,
        }

    def render_registry_error(self, err: RegistryRefusals) -> dict[str, Any]:
        return {
            "@timestamp": iso_wall(err.wall_ns),
            "event": {"kind": "metric", "action": "registry_error", "dataset": "rlguard.registry"},
            "rlguard": {
                "registry": {
                    "error": err.error,
                    "client": err.client,
                    "errors_since_last_record": err.errors_since_last_record,
                    "errors_total": err.errors_total,
                }
            },
            "host": self.host,
        }

    def render_gpu_holders(self, snapshot: dict[str, Any]) -> dict[str, Any]:
        """The ``gpu_holders`` line: holders' start times on the wall clock."""
        iso = self.clock.iso
        for dev in snapshot["devices"]:
            dev["holders"] = [
                {
                    ("since" if k == "since_ns" else k): (iso(v) if k == "since_ns" else v)
                    for k, v in h.items()
                }
                for h in dev["holders"]
            ]
        doc = self.base("rlguard.gpu", "gpu_holders")
        doc["rlguard"] = {"gpu": snapshot}
        return doc

    # one method per action: fills ECS fields in doc, returns rlguard.* detail

    def _exec(self, ae: AttributedEvent, doc: dict[str, Any]) -> dict[str, Any]:
        ev = cast(ExecEvent, ae.event)
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

    def _fork(self, ae: AttributedEvent, doc: dict[str, Any]) -> dict[str, Any]:
        # the subject is the new child (its process fields and lineage); the forking
        # process is its parent
        return {"fork": {"parent_tid": ae.event.tid}}

    def _exit(self, ae: AttributedEvent, doc: dict[str, Any]) -> dict[str, Any]:
        ev = cast(ExitEvent, ae.event)
        proc = doc["process"]
        proc["exit_code"] = ev.exit_code if ev.exit_code >= 0 else None
        detail: dict[str, Any] = {"exit": {}}
        if ev.exit_signal:
            detail["exit"]["signal"] = ev.exit_signal
        return detail

    def _gpu_open(self, ae: AttributedEvent, doc: dict[str, Any]) -> dict[str, Any]:
        ev = cast(GpuOpenEvent, ae.event)
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

    def _gpu_close(self, ae: AttributedEvent, doc: dict[str, Any]) -> dict[str, Any]:
        ev = cast(GpuCloseEvent, ae.event)
        if ev.path:
            doc["file"] = {"path": ev.path}
        gpu: dict[str, Any] = {"fd": ev.fd, "via": ev.via}
        if ev.last_fd != ev.fd:
            gpu["last_fd"] = ev.last_fd
        return {"gpu": gpu}

    def _dup(self, ae: AttributedEvent, doc: dict[str, Any]) -> dict[str, Any]:
        ev = cast(DupEvent, ae.event)
        return {"dup": {"oldfd": ev.oldfd, "newfd": ev.newfd}}

    def _registry_refused(self, ae: AttributedEvent, doc: dict[str, Any]) -> dict[str, Any]:
        ev = cast(RegistryRefusedEvent, ae.event)
        doc["event"]["outcome"] = "failure"
        doc["event"]["reason"] = ev.reason
        reg: dict[str, Any] = {
            "op": ev.op,
            "episode_id": ev.asked_episode_id,
            "refused_because": ev.refused_because,
            "sender": {"pid": ev.pid, "uid": ev.uid, "gid": ev.gid, "via": ev.sender_via},
            "sender_episode": {
                "episode_id": ev.sender_episode_id,
                "source": ev.sender_episode_source,
            },
        }
        if ev.suppressed_before:
            reg["suppressed_before"] = ev.suppressed_before
        return {"registry": reg}

    @staticmethod
    def _net_type(family: int) -> str:
        return "ipv6" if family == 10 else "ipv4"

    def _connect(self, ae: AttributedEvent, doc: dict[str, Any]) -> dict[str, Any]:
        ev = cast(ConnectEvent, ae.event)
        doc["destination"] = {"ip": ev.daddr, "port": ev.dport}
        doc["network"] = {"transport": ev.transport, "type": self._net_type(ev.family)}
        result = errno_name(ev.ret)
        if ev.ret in (0, -115):
            doc["event"]["outcome"] = "success"
        elif ev.ret == 1:
            doc["event"]["outcome"] = "unknown"
        else:
            doc["event"]["outcome"] = "failure"
        connect: dict[str, Any] = {
            "fd": ev.fd if ev.fd >= 0 else None,
            "result": result,
            "errno": -ev.ret if ev.ret < 0 else 0,
            "via": "kernel" if ev.flags & CONNECT_KERNEL else "syscall",
            "socket_type": SOCK_TYPES.get(ev.sock_type),
            "cookie": ev.cookie or None,
        }
        if ae.connect_count is not None:
            connect["count"] = ae.connect_count
        if ae.summary:
            connect["summary"] = True
        if ae.link is not None:
            return {"connect": connect, "link": ae.link.as_doc()}
        return {"connect": connect}

    def _unix_listen(self, ae: AttributedEvent, doc: dict[str, Any]) -> dict[str, Any]:
        ev = cast(UnixEvent, ae.event)
        doc["network"] = {"transport": "unix"}
        return {"unix": {"path": ev.path, "abstract": ev.abstract, "fd": ev.fd}}

    def _unix_connect(self, ae: AttributedEvent, doc: dict[str, Any]) -> dict[str, Any]:
        detail = self._unix_listen(ae, doc)
        if ae.link is not None:
            detail["link"] = ae.link.as_doc()
        return detail

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

    def _tcp_state(self, ae: AttributedEvent, doc: dict[str, Any]) -> dict[str, Any]:
        ev = cast(TcpStateEvent, ae.event)
        self._five_tuple(doc, ev.family, ev.saddr, ev.sport, ev.daddr, ev.dport, 6)
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

    def _send(self, ae: AttributedEvent, doc: dict[str, Any]) -> dict[str, Any]:
        ev = cast(SendEvent, ae.event)
        self._five_tuple(doc, ev.family, ev.saddr, ev.sport, ev.daddr, ev.dport, 6)
        detail: dict[str, Any] = {
            "payload": self.payload(ev.data, ev.payload_len),
            "socket": {"cookie": ev.cookie, "owner_pid": ev.owner_pid},
        }
        if ev.flags & SEND_OWNER_DIFFERS:
            detail["socket"]["owner_differs"] = True
        if ev.flags & SEND_SENDER_KNOWN:  # the kernel named the task that sent the bytes
            detail["socket"]["sender"] = "queued" if ev.flags & SEND_SENDER_QUEUED else "call"
        if ae.dns is not None:  # DNS over TCP: the same dns.* as UDP
            self._dns_fields(ae, doc)
            detail["dns"] = {"parsed": True, "transport": "tcp"}
        self._stream_fields(ae, doc, detail)
        return detail

    @staticmethod
    def _stream_fields(ae: AttributedEvent, doc: dict[str, Any], detail: dict[str, Any]) -> None:
        """tls.* (ECS) and rlguard.stream of a stream whose layers are known."""
        view = ae.stream
        if view is None:
            return
        hello = view.tls_hello()
        if hello is not None:
            client: dict[str, Any] = {}
            if hello.host:
                client["server_name"] = hello.host
            ja4 = hello.get("ja4")
            if ja4:
                client["ja4"] = ja4
            tls: dict[str, Any] = {"client": client}
            version = hello.get("version")
            if version and version[0].isdigit():
                tls["version"] = f"{version[0]}.{version[1]}"
                tls["version_protocol"] = "tls"
            doc["tls"] = tls
        if view.layers or view.tls_library:
            detail["stream"] = view.summary()

    def _stream_line(self, ae: AttributedEvent, doc: dict[str, Any]) -> dict[str, Any]:
        """A stream showed something new: its layers, effective destination, plaintext."""
        view = ae.stream
        detail: dict[str, Any] = {}
        if view is not None and view.daddr:
            self._five_tuple(doc, view.family, view.saddr, view.sport, view.daddr, view.dport, 6)
        self._stream_fields(ae, doc, detail)
        return detail

    _stream = _stream_line
    _tls_data = _stream_line
    _tls_bind = _stream_line

    def _stream_tick(self, ae: AttributedEvent, doc: dict[str, Any]) -> dict[str, Any]:
        ev = cast(StreamTickEvent, ae.event)
        doc["destination"] = {"ip": ev.daddr, "port": ev.dport}
        doc["network"] = {"transport": "tcp", "type": self._net_type(ev.family)}
        return {
            "activity": {
                "cookie": ev.cookie,
                "segments": ev.segs,
                "bytes": ev.bytes,
                "reply_segments": ev.rsegs,
                "reply_bytes": ev.rbytes,
                "first_payload": self.clock.iso(ev.first_ns),
            }
        }

    @staticmethod
    def _dns_fields(ae: AttributedEvent, doc: dict[str, Any]) -> None:
        q = ae.dns
        if q is None:
            return
        doc["network"]["protocol"] = "dns"
        doc["dns"] = {
            "id": str(q.id),
            "type": "answer" if q.is_response else "query",
            "question": {"name": q.name, "type": q.qtype_name},
        }

    def _dns(self, ae: AttributedEvent, doc: dict[str, Any]) -> dict[str, Any]:
        ev = cast(DnsEvent, ae.event)
        self._five_tuple(doc, ev.family, ev.saddr, ev.sport, ev.daddr, ev.dport, 17)
        doc["network"]["protocol"] = "dns"
        self._dns_fields(ae, doc)
        parsed = ae.dns is not None
        return {"payload": self.payload(ev.data, ev.payload_len), "dns": {"parsed": parsed}}
