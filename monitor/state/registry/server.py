"""The registry socket: a Unix stream socket served by one thread with a selector.

Never blocks the collector and never dies on what a client sends: reads and writes are
non-blocking, lines are bounded (an oversized line gets an error reply and is discarded up to
its newline), clients that stop reading their replies or sit half-open are disconnected, and
the number of clients is capped.  Every error is answered on the socket and counted; a sample
goes to the event stream as a `registry_error` record.

Who sent a message is read for every message: the connecting process (SO_PEERCRED, read
again per message) and, with SO_PASSCRED, every process that wrote a byte of the line
(SCM_CREDENTIALS: the kernel never merges two writers' bytes into one read).  A message that
parses is not applied here: it becomes a :class:`Request` that the collector decides
(monitor/state/registry/gate.py) once it has processed the kernel records from before the
message, so that it knows who the sender is; the answer comes back through
:meth:`RegistryServer.answer`.  A client waits for its answer before its next line is read.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import selectors
import socket
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from monitor.clock import boottime_ns
from monitor.state.registry.protocol import Message, ProtocolError, parse_message, reply
from monitor.state.registry.records import RegistryRefusals
from monitor.state.registry.state import Registry
from monitor.unix_socket import listen_group_socket

IDLE_TIMEOUT_S = 60.0
MAX_OUTBUF = 256 * 1024
ERROR_RECORD_INTERVAL_S = 1.0
MAX_QUEUED_LINES = 64  # lines a client may send ahead of its answers
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
Cred = tuple[int, int, int]  # (pid, uid, gid)


@dataclass(frozen=True, slots=True)
class Request:
    """A parsed message for the collector to decide."""

    client: int  # the client's id, for the answer
    msg: Message
    peer: Cred | None  # SO_PEERCRED of the connection, read for this message
    writers: tuple[Cred, ...]  # SCM_CREDENTIALS of every write that made up the line
    boot_ns: int  # when it was received (CLOCK_BOOTTIME)
    wall_ns: int


@dataclass
class _Client:
    sock: socket.socket
    peer: dict[str, int]
    id: int = 0
    inbuf: bytearray = field(default_factory=bytearray)
    inbuf_writers: set[Cred] = field(default_factory=set)  # writers of the partial line
    lines: deque[tuple[bytes, frozenset[Cred]]] = field(default_factory=deque)
    waiting: bool = False  # a request of this client is with the collector
    outbuf: bytearray = field(default_factory=bytearray)
    discarding: bool = False
    last_active: float = field(default_factory=time.monotonic)


class RegistryError(OSError):
    """The socket cannot be served (path in use by a live server, no permission...)."""


class RegistryServer:
    def __init__(
        self,
        registry: Registry,
        path: str,
        group: str = "rlguard",
        max_line_bytes: int = 65536,
        max_clients: int = 64,
    ) -> None:
        self.registry = registry
        self.path = path
        self.group = group
        self.max_line = max_line_bytes
        self.max_clients = max_clients
        self.clients: dict[int, _Client] = {}
        self.errors = 0
        self.refused = 0
        self.last_error: str | None = None
        self._last_error_record = 0.0
        self._errors_since_record = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sel = selectors.DefaultSelector()
        self._listener: socket.socket | None = None
        self.mode = 0
        self.note: str | None = None
        # parsed messages for the collector, and its answers (appended by the other thread)
        self.requests: deque[Request] = deque()
        self._answers: deque[tuple[int, bytes]] = deque()
        self._ids = itertools.count(1)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)

    # -- life cycle ----------------------------------------------------------------

    def start(self) -> None:
        """Bind the socket (mode 0660, the trainer's group) and start serving."""
        try:
            gs = listen_group_socket(self.path, self.group, backlog=128)
        except OSError as exc:
            raise RegistryError(exc.errno, f"registry socket: {exc.strerror or exc}") from None
        lst = gs.sock
        # every write of every client comes with its writer's credentials (accepted
        # sockets inherit the flag)
        lst.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.mode = gs.mode
        self.note = gs.note
        self._listener = lst
        self._sel.register(lst, selectors.EVENT_READ, None)
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._thread = threading.Thread(target=self._serve, name="rlguard-registry", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for c in list(self.clients.values()):
            self._drop(c)
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._sel.unregister(self._listener)
            self._listener.close()
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        self._sel.close()
        self._wake_r.close()
        self._wake_w.close()

    # -- the collector's side ----------------------------------------------------------

    def take(self, horizon_ns: int) -> list[Request]:
        """Requests received at or before ``horizon_ns``, oldest first (collector thread)."""
        out = []
        while self.requests and self.requests[0].boot_ns <= horizon_ns:
            out.append(self.requests.popleft())
        return out

    def answer(self, req: Request, ok: bool, **fields: object) -> None:
        """The reply to a request (collector thread); the server thread writes it."""
        if not ok:
            self.errors += 1
        self._answers.append((req.client, reply(ok, **fields)))
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    # -- the loop ---------------------------------------------------------------------

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                for key, mask in self._sel.select(timeout=0.2):
                    if key.data is None:
                        self._accept()
                    elif key.data == "wake":
                        self._deliver()
                    else:
                        self._service(key.data, mask)
                self._reap_idle()
            except Exception as exc:  # the registry must never take the monitor down
                self._error(f"registry loop: {type(exc).__name__}: {exc}")
                time.sleep(0.05)

    def _accept(self) -> None:
        assert self._listener is not None
        try:
            sock, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        sock.setblocking(False)
        if len(self.clients) >= self.max_clients:
            self.refused += 1
            with contextlib.suppress(OSError):
                sock.send(reply(False, error="too many clients"))
            sock.close()
            return
        c = _Client(sock, _peer(sock), id=next(self._ids))
        self.clients[sock.fileno()] = c
        self._sel.register(sock, selectors.EVENT_READ, c)

    def _deliver(self) -> None:
        """Write the collector's answers; a client answered may go on with its next line."""
        with contextlib.suppress(OSError):
            while self._wake_r.recv(4096):
                pass
        by_id = {c.id: c for c in self.clients.values()}
        while self._answers:
            cid, data = self._answers.popleft()
            c = by_id.get(cid)
            if c is None:
                continue  # it left before its answer
            c.waiting = False
            self._answer(c, data)
            self._next_lines(c)

    def _service(self, c: _Client, mask: int) -> None:
        if mask & selectors.EVENT_READ:
            try:
                data, anc, _flags, _addr = c.sock.recvmsg(65536, socket.CMSG_SPACE(_UCRED.size))
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError:
                self._drop(c)
                return
            if data == b"":
                self._drop(c)
                return
            if data:
                c.last_active = time.monotonic()
                self._feed(c, data, _writer(anc))
        if mask & selectors.EVENT_WRITE or c.outbuf:
            self._flush(c)

    def _feed(self, c: _Client, data: bytes, writer: Cred | None) -> None:
        c.inbuf += data
        if writer is not None:
            c.inbuf_writers.add(writer)
        while True:
            nl = c.inbuf.find(b"\n")
            if nl < 0:
                if len(c.inbuf) > self.max_line:
                    if not c.discarding:  # answered once; the rest is dropped up to its newline
                        self._oversized(c)
                    c.discarding = True
                    c.inbuf.clear()
                break
            line = bytes(c.inbuf[:nl])
            writers = frozenset(c.inbuf_writers)
            del c.inbuf[: nl + 1]
            # the rest of this read is the same writer's
            c.inbuf_writers = {writer} if writer is not None and c.inbuf else set()
            if c.discarding:  # the tail of an oversized line
                c.discarding = False
            elif len(line) > self.max_line:
                self._oversized(c)
            elif line.strip():
                if len(c.lines) >= MAX_QUEUED_LINES:
                    self._error("client sends far ahead of its answers", c)
                    self._drop(c)
                    return
                c.lines.append((line, writers))
        self._next_lines(c)

    def _next_lines(self, c: _Client) -> None:
        """Handle queued lines until one waits for the collector."""
        while c.lines and not c.waiting and c.sock.fileno() >= 0:
            line, writers = c.lines.popleft()
            self._handle(c, line, writers)

    def _oversized(self, c: _Client) -> None:
        self._answer(c, reply(False, error=f"line longer than {self.max_line} bytes"))
        self._error("oversized line", c)

    def _handle(self, c: _Client, line: bytes, writers: frozenset[Cred]) -> None:
        try:
            msg = parse_message(line)
            if msg.op == "hello":  # changes nothing: answered at once
                extra = self.registry.apply(msg, boottime_ns(), time.time_ns(), c.peer)
                self._answer(c, reply(True, **extra))
                return
        except ProtocolError as exc:
            self._answer(c, reply(False, error=str(exc)))
            self._error(str(exc), c)
            return
        peer = _peer(c.sock)  # again for every message
        cred = (peer["pid"], peer["uid"], peer["gid"]) if peer else None
        c.waiting = True
        self.requests.append(
            Request(c.id, msg, cred, tuple(sorted(writers)), boottime_ns(), time.time_ns())
        )

    def _answer(self, c: _Client, data: bytes) -> None:
        c.outbuf += data
        if len(c.outbuf) > MAX_OUTBUF:  # it does not read its replies
            self._error("client does not read replies", c)
            self._drop(c)
            return
        self._flush(c)

    def _flush(self, c: _Client) -> None:
        if c.sock.fileno() < 0:
            return
        try:
            while c.outbuf:
                n = c.sock.send(c.outbuf)
                del c.outbuf[:n]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._drop(c)
            return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if c.outbuf else 0)
        with contextlib.suppress(KeyError, ValueError):
            self._sel.modify(c.sock, events, c)

    def _reap_idle(self) -> None:
        now = time.monotonic()
        for c in list(self.clients.values()):
            if now - c.last_active > IDLE_TIMEOUT_S:
                self._drop(c)

    def _drop(self, c: _Client) -> None:
        fd = c.sock.fileno()
        if fd >= 0:
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(c.sock)
            self.clients.pop(fd, None)
        c.sock.close()

    def _error(self, text: str, c: _Client | None = None) -> None:
        self.errors += 1
        self.last_error = text[:300]
        self._errors_since_record += 1
        now = time.monotonic()
        if now - self._last_error_record < ERROR_RECORD_INTERVAL_S:
            return
        self._last_error_record = now
        rec = RegistryRefusals(
            wall_ns=time.time_ns(),
            error=self.last_error,
            client=c.peer if c else None,
            errors_since_last_record=self._errors_since_record,
            errors_total=self.errors,
        )
        self._errors_since_record = 0
        self.registry.pending.append(rec)


def _peer(sock: socket.socket) -> dict[str, int]:
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
        pid, uid, gid = _UCRED.unpack(raw)
        return {"pid": pid, "uid": uid, "gid": gid}
    except OSError:
        return {}


def _writer(ancillary: list[tuple[int, int, bytes]]) -> Cred | None:
    """The SCM_CREDENTIALS of one read, if the kernel attached them."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            if len(data) >= _UCRED.size:
                pid, uid, gid = _UCRED.unpack_from(data)
                return (pid, uid, gid)
    return None
