"""The live stream: every document as an NDJSON line to any number of local clients.

``rlguard tail`` connects to a Unix stream socket (``[output] live_socket``) and
reads the same lines the file sink writes, from the moment it connects. The
socket is mode 0660 and owned by ``[output] live_group``, so members of that
group can watch without root.

The collector must never wait for a viewer, so everything here runs in the
collector's own thread and never blocks:

* ``write()`` is O(1): with no client connected it only counts; with clients it
  serialises once and appends to a batch shared by all of them.
* ``flush()`` (called by the collector after every drain) accepts new clients,
  hands the batch to each client's queue and sends what each socket accepts
  with non-blocking ``send``.
* Each client queue is bounded (``max_queue_bytes``, 4 MiB). A client that falls
  that far behind has its queue dropped (never a torn line: a partly sent line is
  finished first); it receives nothing more until what is left has gone out, and
  then one notice line::

      {"@timestamp": ..., "event": {"kind": "metric", "action": "client_lagged",
       "dataset": "rlguard.live"}, "rlguard": {"live": {"skipped_lines": N}}}

  after which it gets the stream again.
* A client that accepts no byte at all for ``stall_timeout_s`` (30 s) while data
  waits for it is disconnected: a viewer that never reads would otherwise pin a
  full queue forever. A slow but moving client is never disconnected.

Attributes, as for the other sinks: ``lines_written`` counts lines published
while at least one client was connected; ``lines_lost`` counts lines skipped for
lagging clients (summed over clients); ``pending`` counts lines not yet handed
to every client's socket; ``last_error`` holds the latest problem (a missing
group, a failed accept) and is not cleared by a good flush, since a permission
fallback stays true for the life of the socket.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import orjson

from monitor.unix_socket import listen_group_socket

MAX_QUEUE_BYTES = 4 * 1024 * 1024
MAX_CLIENTS = 32
STALL_TIMEOUT_S = 30.0
_RECV_DISCARD = 65536  # clients have nothing to say: read and drop at most this per flush


@dataclass
class _Client:
    """One connected viewer and the lines queued for it."""

    sock: socket.socket
    connected_mono: float
    # Chunks of whole lines (bytes, line count); the first may be partly sent.
    queue: deque[tuple[bytes, int]] = field(default_factory=deque)
    head_offset: int = 0
    queued_bytes: int = 0
    queued_lines: int = 0
    skipped: int = 0  # lines dropped since the last notice
    lagging: bool = False
    last_progress: float = 0.0
    sent_lines: int = 0
    notices: int = 0
    read_closed: bool = False  # it shut its write side; it may still read


def _now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lag_notice(skipped: int) -> bytes:
    """The line a lagging client gets once it has caught up."""
    doc = {
        "@timestamp": _now_iso(),
        "event": {"kind": "metric", "action": "client_lagged", "dataset": "rlguard.live"},
        "rlguard": {"live": {"skipped_lines": skipped}},
    }
    return orjson.dumps(doc, option=orjson.OPT_APPEND_NEWLINE)


class LiveSocketError(OSError):
    """The socket cannot be created (path in use by a live monitor, or not a socket)."""


class LiveSocketSink:
    """Publishes every document to the clients of a Unix stream socket; never blocks."""

    name = "live"  # its key in FanoutSink's per-sink counters

    def __init__(
        self,
        path: str,
        group: str = "rlguard",
        *,
        max_queue_bytes: int = MAX_QUEUE_BYTES,
        max_clients: int = MAX_CLIENTS,
        stall_timeout_s: float = STALL_TIMEOUT_S,
    ) -> None:
        self.path = os.path.abspath(path)
        self.group = group
        self.max_queue_bytes = max_queue_bytes
        self.max_clients = max_clients
        self.stall_timeout_s = stall_timeout_s
        self.lines_written = 0
        self.lines_lost = 0
        self.last_error: str | None = None
        self.clients_served = 0
        self.clients_refused = 0
        self.clients_stalled = 0
        self.mode = 0
        self._clients: list[_Client] = []
        self._batch: list[bytes] = []
        self._batch_bytes = 0
        self._batch_dropped = 0
        self._ino: tuple[int, int] | None = None
        self._listener = self._listen()

    # -- set-up ----------------------------------------------------------------------

    def _listen(self) -> socket.socket:
        try:
            gs = listen_group_socket(self.path, self.group, backlog=16)
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.EADDRINUSE):
                raise LiveSocketError(exc.errno, exc.strerror or str(exc)) from None
            raise
        self._ino = gs.ino
        self.mode = gs.mode
        if gs.note:
            self.last_error = (
                f"live socket {self.path}: {gs.note}; only its owner may connect (0600)"
            )
        return gs.sock

    # -- the sink interface ----------------------------------------------------------

    def write(self, doc: dict[str, Any]) -> None:
        """Queue one document for every connected client (cheap when there are none)."""
        if self._clients:
            self.write_line(orjson.dumps(doc, option=orjson.OPT_APPEND_NEWLINE), doc)

    def write_line(self, line: bytes, doc: dict[str, Any]) -> None:
        """Queue one serialised document (the fan-out serialises once for every sink)."""
        if not self._clients:
            return
        if self._batch_bytes + len(line) > self.max_queue_bytes:
            # no flush for a long time: every client would overflow anyway
            self._batch_dropped += 1
            return
        self._batch.append(line)
        self._batch_bytes += len(line)
        self.lines_written += 1

    def flush(self) -> bool:
        """Accept clients, hand them the batch and send what their sockets take now.

        Always True: a slow viewer is the viewer's problem, never the output's.
        """
        now = time.monotonic()
        self._accept(now)
        chunk = b"".join(self._batch)
        lines = len(self._batch)
        dropped = self._batch_dropped
        self._batch.clear()
        self._batch_bytes = 0
        self._batch_dropped = 0
        self._reap()
        for client in list(self._clients):
            if not self._serve(client, chunk, lines, dropped, now):
                self._drop(client)
        return True

    def reopen(self) -> None:
        """Nothing to reopen (SIGHUP is for rotated files)."""

    @property
    def pending(self) -> int:
        """Lines not yet handed to every client's socket (the batch plus the longest queue)."""
        return len(self._batch) + max((c.queued_lines for c in self._clients), default=0)

    @property
    def clients(self) -> int:
        """Clients connected now."""
        return len(self._clients)

    def close(self) -> None:
        """Send what the sockets take now, disconnect everyone and remove the socket file."""
        try:
            self.flush()
        finally:
            for client in list(self._clients):
                self._drop(client)
            self._listener.close()
            try:
                st = os.lstat(self.path)
                if self._ino == (st.st_dev, st.st_ino):  # never remove a successor's socket
                    os.unlink(self.path)
            except FileNotFoundError:
                pass

    # -- clients ---------------------------------------------------------------------

    def _accept(self, now: float) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: try again next flush
                self.last_error = f"live socket {self.path}: accept: {exc.strerror}"
                return
            if len(self._clients) >= self.max_clients:
                self.clients_refused += 1
                sock.close()
                continue
            sock.setblocking(False)
            self._clients.append(_Client(sock, now, last_progress=now))
            self.clients_served += 1

    def _serve(self, c: _Client, chunk: bytes, lines: int, dropped: int, now: float) -> bool:
        """Queue and send for one client; False when it is gone or stalled."""
        if not self._pump(c, now):
            return False
        if lines:
            if c.lagging:
                self._skip(c, lines)
            elif c.queued_bytes + len(chunk) > self.max_queue_bytes:
                self._overflow(c, lines)
            else:
                c.queue.append((chunk, lines))
                c.queued_bytes += len(chunk)
                c.queued_lines += lines
        if dropped:
            self._skip(c, dropped)
            c.lagging = True
        if not self._pump(c, now):
            return False
        if (c.queue or c.lagging) and now - c.last_progress > self.stall_timeout_s:
            self.clients_stalled += 1
            return False
        return True

    def _skip(self, c: _Client, n: int) -> None:
        c.skipped += n
        self.lines_lost += n

    def _overflow(self, c: _Client, new_lines: int) -> None:
        """Drop the client's queue, keeping only the rest of a partly sent line."""
        kept: deque[tuple[bytes, int]] = deque()
        kept_bytes = 0
        lost = new_lines
        if c.head_offset and c.queue:
            head, head_lines = c.queue[0]
            end = head.index(b"\n", c.head_offset) + 1
            kept.append((head[:end], 1))
            kept_bytes = end - c.head_offset
            done = head.count(b"\n", 0, c.head_offset)
            c.sent_lines += done
            lost += head_lines - 1 - done
            for _, n in list(c.queue)[1:]:
                lost += n
        else:
            lost += c.queued_lines
            c.head_offset = 0
        c.queue = kept
        c.queued_bytes = kept_bytes
        c.queued_lines = len(kept)
        c.lagging = True
        self._skip(c, lost)

    def _pump(self, c: _Client, now: float) -> bool:
        """Send until the socket would block or nothing is owed; False on a dead peer."""
        while c.queue:
            head, head_lines = c.queue[0]
            n = self._send(c, memoryview(head)[c.head_offset :])
            if n < 0:
                return False
            if n == 0:
                return True
            c.last_progress = now
            c.head_offset += n
            c.queued_bytes -= n
            if c.head_offset >= len(head):
                c.queue.popleft()
                c.head_offset = 0
                c.queued_lines -= head_lines
                c.sent_lines += head_lines
        if c.lagging:
            # Caught up after a lag: the notice is built and offered only now, so its count
            # is current and an overflow can never drop it. If the socket is still full it
            # is simply offered again at the next flush.
            notice = lag_notice(c.skipped)
            n = self._send(c, memoryview(notice))
            if n < 0:
                return False
            if n == 0:
                return True
            if n < len(notice):  # the rest goes out like any queued line
                c.queue.append((notice, 1))
                c.head_offset = n
                c.queued_bytes = len(notice) - n
                c.queued_lines = 1
            c.skipped = 0
            c.lagging = False
            c.notices += 1
        c.last_progress = now  # nothing owed: an idle viewer is not a stalled one
        return True

    @staticmethod
    def _send(c: _Client, data: memoryview) -> int:
        """Bytes the socket took (0 when full); -1 when the peer is gone."""
        try:
            return c.sock.send(data, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError:
            return -1

    def _reap(self) -> None:
        """Drop clients that hung up; read and discard whatever clients sent."""
        if not self._clients:
            return
        poller = select.poll()
        by_fd: dict[int, _Client] = {}
        for c in self._clients:
            by_fd[c.sock.fileno()] = c
            # POLLHUP and POLLERR are always reported; ask for input only while it may come
            poller.register(c.sock, 0 if c.read_closed else select.POLLIN)
        for fd, ev in poller.poll(0):
            c = by_fd[fd]
            if ev & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
                self._drop(c)  # a Unix socket reports POLLHUP only once both sides are shut
            elif ev & select.POLLIN:
                try:
                    data = c.sock.recv(_RECV_DISCARD, socket.MSG_DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    self._drop(c)
                    continue
                if not data:
                    # `socat - UNIX-CONNECT:...` with stdin at EOF: still a viewer
                    c.read_closed = True

    def _drop(self, c: _Client) -> None:
        if c in self._clients:
            self._clients.remove(c)
        # lines it will never get are lost too, for the metrics
        self.lines_lost += c.queued_lines
        c.sock.close()
