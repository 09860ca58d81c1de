"""Work done on request: a process that asks a local server for work, and the work it gets.

A long-lived server (a tmux or screen server, an ssh ControlMaster, dockerd, a Jupyter
kernel, anything listening) does work for whoever connects to it: ``tmux new-window -d
miner`` from episode B makes the tmux server, born in episode A or outside any episode, fork
the miner.  By lineage the miner is A's (or nobody's); this module links it to B as well.

- Listeners: AF_UNIX paths and abstract names from the kernel's ``unix_listen`` records,
  TCP ports from ``tcp_state`` LISTEN (which names the listening task), and both seeded from
  /proc at start-up (``/proc/net/unix``, ``/proc/net/tcp*`` and the fds that hold them).
- Requests: a ``unix_connect`` to a listener's path (matched by the socket file's device
  and inode where /proc lets us stat it, else by the path), or a ``connect`` to a loopback
  address on a listened port, by a process acting for an episode (its own episode, or the
  ones it was itself asked to work for) opens a window on the listener's owner.
- Work: what the owner does within ``[attribution] request_window_s`` of a request, and the
  processes it forks then (and their descendants, for good) carry ``rl.requested_by``: the
  requesters' episodes.  A process outside any episode whose work was requested is
  attributed to its requester (``rl.source: "requested"``).

Bounded everywhere: a few requesters per server and per process, listeners by count, the
inherited links pruned with the process table.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections import deque
from dataclasses import dataclass
from typing import Any

from monitor.sensor.events import ConnectEvent, TcpStateEvent, UnixEvent
from monitor.state.process_table import ByProcess, Process, ProcessTable

MAX_PER_SERVER = 8  # recent requests kept per server
MAX_REQUESTERS = 4  # distinct requesters a process carries
MAX_LISTENERS = 65536
SEED_MAX_FDS = 500_000  # fds read at start-up to find the owners of listeners
TCP_LISTEN = 10
_LOOPBACK = re.compile(r"127\.\d+\.\d+\.\d+|::1|::ffff:127\.\d+\.\d+\.\d+")


@dataclass(frozen=True, slots=True)
class Requester:
    """A process that asked a server for work, and the episode it asked for."""

    episode_id: str
    run_id: str | None
    trajectory_id: str | None
    pid: int
    entity_id: str
    name: str
    via: str  # "unix:/tmp/tmux-0/default", "unix:@name", "tcp:127.0.0.1:8888"
    ts_ns: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "episode_id": self.episode_id,
            "run_id": self.run_id,
            "trajectory_id": self.trajectory_id,
            "pid": self.pid,
            "entity_id": self.entity_id,
            "name": self.name,
            "via": self.via,
        }


@dataclass(frozen=True, slots=True)
class Listener:
    """A listening socket and the process that owns it."""

    pid: int
    entity_id: str
    via: str  # how a requester reaches it (as in Requester.via)


class RequestLinks:
    def __init__(self, table: ProcessTable, window_s: float) -> None:
        self.table = table
        self.window_ns = int(window_s * 1e9)
        self.unix_by_name: dict[str, Listener] = {}  # absolute path or "@abstract"
        self.unix_by_inode: dict[tuple[int, int], Listener] = {}
        self.tcp_by_port: dict[int, dict[str, Listener]] = {}  # port -> bound address -> owner
        self._tcp_by_sk: dict[int, tuple[int, str]] = {}  # listening socket -> (port, address)
        self.windows: dict[int, deque[Requester]] = {}  # server pid -> recent requests
        self._window_entity: dict[int, str] = {}
        self.inherited: ByProcess[tuple[Requester, ...]] = ByProcess(table)  # for good
        # servers whose work is never a request's: the monitor itself, and trainers (the
        # processes the registry accepted messages from): an agent that connects to a
        # trainer's port must not make the trainer's next workers its own
        self.ignored_pids: set[int] = {os.getpid()}
        self.trainers: set[str] = set()  # entity ids
        self.links = 0

    @property
    def enabled(self) -> bool:
        return self.window_ns > 0

    # -- listeners ------------------------------------------------------------------------

    def on_unix_listen(self, ev: UnixEvent, p: Process) -> Listener | None:
        if not self.enabled or not ev.path:
            return None
        name, inode = _resolve(ev.pid, ev.path, ev.abstract)
        lst = Listener(p.pid, p.entity_id, "unix:" + name)
        self._put_unix(name, inode, lst)
        return lst

    def _put_unix(self, name: str, inode: tuple[int, int] | None, lst: Listener) -> None:
        if len(self.unix_by_name) >= MAX_LISTENERS:
            self.unix_by_name.clear()  # a flood of listeners: start over, never grow
            self.unix_by_inode.clear()
        self.unix_by_name[name] = lst
        if inode is not None:
            self.unix_by_inode[inode] = lst

    def on_tcp_state(self, ev: TcpStateEvent, p: Process | None) -> None:
        """A listener starts (LISTEN, named by the listening task) or stops."""
        if not self.enabled:
            return
        if ev.newstate == TCP_LISTEN and p is not None and ev.owner_known:
            addr = ev.saddr or ""
            lst = Listener(p.pid, p.entity_id, f"tcp:{addr}:{ev.sport}")
            if len(self._tcp_by_sk) >= MAX_LISTENERS:
                self._tcp_by_sk.clear()
                self.tcp_by_port.clear()
            self.tcp_by_port.setdefault(ev.sport, {})[addr] = lst
            self._tcp_by_sk[ev.skaddr] = (ev.sport, addr)
        elif ev.oldstate == TCP_LISTEN:
            got = self._tcp_by_sk.pop(ev.skaddr, None)
            if got is not None:
                port, addr = got
                by_addr = self.tcp_by_port.get(port, {})
                by_addr.pop(addr, None)
                if not by_addr:
                    self.tcp_by_port.pop(port, None)

    def unix_server(self, ev: UnixEvent) -> Listener | None:
        """The listener a unix_connect reached, if known."""
        if not ev.path:
            return None
        name, inode = _resolve(ev.pid, ev.path, ev.abstract)
        if inode is not None:
            got = self.unix_by_inode.get(inode)
            if got is not None:
                return got
        return self.unix_by_name.get(name)

    def tcp_server(self, ev: ConnectEvent) -> Listener | None:
        """The local listener a loopback TCP connect reached, if known."""
        by_addr = self.tcp_by_port.get(ev.dport)
        if not by_addr or ev.daddr is None or not _LOOPBACK.fullmatch(ev.daddr):
            return None
        for addr in (ev.daddr, "0.0.0.0", "::", "127.0.0.1", "::1"):
            got = by_addr.get(addr)
            if got is not None:
                return got
        return None

    # -- requests and the work they get ---------------------------------------------------

    def serves(self, server: Listener) -> bool:
        """May this listener's owner do work on request (not the monitor, not a trainer)?"""
        return server.pid not in self.ignored_pids and server.entity_id not in self.trainers

    def link(self, server: Listener, requesters: list[Requester]) -> None:
        """Requests to ``server``: its work in the next window is theirs too."""
        if not requesters:
            return
        self.links += 1
        win = self.windows.get(server.pid)
        if win is None or self._window_entity.get(server.pid) != server.entity_id:
            win = self.windows[server.pid] = deque(maxlen=MAX_PER_SERVER)
            self._window_entity[server.pid] = server.entity_id
        win.extend(requesters)

    def work_of(self, p: Process) -> tuple[Requester, ...]:
        """The requesters p was started for (born to a requested server, or to such work)."""
        return (self.inherited.of(p) or ()) if self.inherited else ()

    def requested_by(self, p: Process, ts_ns: int) -> tuple[Requester, ...]:
        """Who p works for: requesters it inherited, and requests to it in the window."""
        got: tuple[Requester, ...] = (self.inherited.of(p) or ()) if self.inherited else ()
        if self.windows and p.pid in self.windows:
            got = merge(got, self._in_window(p, ts_ns))
        return got

    def _in_window(self, p: Process, ts_ns: int) -> tuple[Requester, ...]:
        win = self.windows.get(p.pid)
        if not win or self._window_entity.get(p.pid) != p.entity_id:
            return ()
        start = ts_ns - self.window_ns
        return tuple(r for r in win if start <= r.ts_ns <= ts_ns)

    def on_fork(self, parent: Process | None, child: Process, ts_ns: int) -> None:
        """A process born to a requested server (in the window) or to requested work."""
        if parent is None or not (self.inherited or self.windows):
            return
        got = self.requested_by(parent, ts_ns)
        if not got:
            return
        self.inherited.put(child, got)

    def expire(self, now_ns: int) -> None:
        """Once a second: forget windows that closed."""
        start = now_ns - self.window_ns
        for pid in [k for k, w in self.windows.items() if not w or w[-1].ts_ns < start]:
            del self.windows[pid]
            self._window_entity.pop(pid, None)

    # -- seeding ---------------------------------------------------------------------------

    def seed_from_proc(self, proc: str = "/proc") -> int:
        """Listeners that exist before the probes, with the processes holding them."""
        if not self.enabled:
            return 0
        unix = _unix_listeners(f"{proc}/net/unix")
        tcp = _tcp_listeners(proc)
        if not unix and not tcp:
            return 0
        holders = _socket_holders(proc, set(unix) | set(tcp))
        n = 0
        for inode, name in unix.items():
            owner = self._seed_owner(holders.get(inode, []))
            if owner is None:
                continue
            node = _stat_inode(name) if not name.startswith("@") else None
            self._put_unix(name, node, Listener(owner.pid, owner.entity_id, "unix:" + name))
            n += 1
        for inode, (addr, port) in tcp.items():
            owner = self._seed_owner(holders.get(inode, []))
            if owner is None:
                continue
            lst = Listener(owner.pid, owner.entity_id, f"tcp:{addr}:{port}")
            self.tcp_by_port.setdefault(port, {})[addr] = lst
            n += 1
        return n

    def _seed_owner(self, pids: list[int]) -> Process | None:
        # a socket-activated listener is held by its manager (pid 1) and by the service:
        # the service does the work
        procs = [q for pid in sorted(pids) if (q := self.table.procs.get(pid)) is not None]
        served = [q for q in procs if q.pid != 1] or procs
        return served[0] if served else None


def requester_of(
    p: Process, episode: tuple[str, str | None, str | None] | None, via: str, ts_ns: int
) -> Requester | None:
    """The requester a process is for its own episode (episode, run, trajectory)."""
    if episode is None:
        return None
    return Requester(episode[0], episode[1], episode[2], p.pid, p.entity_id, p.name, via, ts_ns)


def merge(a: tuple[Requester, ...], b: tuple[Requester, ...]) -> tuple[Requester, ...]:
    """Distinct requesters (by episode and process), most recent last, bounded."""
    if not b:
        return a
    seen: dict[tuple[str, str], Requester] = {}
    for r in (*a, *b):
        seen.pop((r.episode_id, r.entity_id), None)
        seen[(r.episode_id, r.entity_id)] = r
    return tuple(seen.values())[-MAX_REQUESTERS:]


def _resolve(pid: int, path: str, abstract: bool) -> tuple[str, tuple[int, int] | None]:
    """A socket path as the process meant it: (absolute name, (dev, ino) of the file)."""
    if abstract:
        return path, None
    if not path.startswith("/"):
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            return posixpath.normpath(path), None
        path = posixpath.join(cwd, path)
    path = posixpath.normpath(path)
    # through the process's root: its mount namespace or chroot, not ours
    node = _stat_inode(f"/proc/{pid}/root{path}")
    return path, node if node is not None else _stat_inode(path)


def _stat_inode(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _unix_listeners(path: str) -> dict[int, str]:
    """inode -> path of the listening AF_UNIX sockets in /proc/net/unix."""
    out: dict[int, str] = {}
    try:
        with open(path) as fh:
            next(fh, None)
            for line in fh:
                parts = line.split()
                # Num RefCount Protocol Flags Type St Inode Path; Flags 00010000: listening
                if len(parts) >= 8 and int(parts[3], 16) & 0x10000:
                    out[int(parts[6])] = parts[7]
    except (OSError, ValueError):
        pass
    return out


def _tcp_listeners(proc: str) -> dict[int, tuple[str, int]]:
    """inode -> (address, port) of the listening TCP sockets in /proc/net/tcp and tcp6."""
    import socket
    import struct

    out: dict[int, tuple[str, int]] = {}
    for name, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        try:
            with open(f"{proc}/net/{name}") as fh:
                next(fh, None)
                for line in fh:
                    parts = line.split()
                    if len(parts) < 10 or parts[3] != "0A":
                        continue
                    hexaddr, hexport = parts[1].split(":")
                    raw = bytes.fromhex(hexaddr)
                    # the kernel prints each 32-bit word in host order
                    words = struct.unpack(f"<{len(raw) // 4}I", raw)
                    packed = struct.pack(f">{len(words)}I", *words)
                    out[int(parts[9])] = (socket.inet_ntop(family, packed), int(hexport, 16))
        except (OSError, ValueError):
            continue
    return out


def _socket_holders(proc: str, inodes: set[int]) -> dict[int, list[int]]:
    """inode -> pids holding a socket with that inode (bounded walk of /proc/*/fd)."""
    out: dict[int, list[int]] = {}
    seen = 0
    try:
        pids = [int(d) for d in os.listdir(proc) if d.isdigit()]
    except OSError:
        return out
    for pid in pids:
        try:
            fds = os.listdir(f"{proc}/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            seen += 1
            if seen > SEED_MAX_FDS:
                return out
            try:
                target = os.readlink(f"{proc}/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                ino = int(target[8:-1])
                if ino in inodes:
                    holders = out.setdefault(ino, [])
                    if pid not in holders:
                        holders.append(pid)
    return out
