"""Forward every line to a SIEM collector over TCP or TLS, spooling to disk while it is away.

URLs (validated by ``monitor.config``):

* ``tcp://host:port``, ``tls://host:port``: one JSON document per line (NDJSON).
* ``syslog+tcp://host:port``, ``syslog+tls://host:port``: RFC 5424 messages with
  octet-counting framing (RFC 6587 3.4.1): ``LEN SP <PRI>1 TIMESTAMP HOSTNAME rlguard
  PID MSGID - MSG`` where MSG is the JSON document (sent as MSG-ANY, without a BOM, so
  a receiver can hand it to a JSON parser unchanged) and MSGID is ``event.kind``.

PRI = facility * 8 + severity:

* alerts (``event.kind == "alert"``): facility 4, security/authorization -- an
  intrusion finding is a security message, and auth/authpriv is what SIEM syslog
  pipelines route to their security index.  Severity from ECS ``event.severity``
  (the rule's score): critical (>= 99) -> 2 crit, high (>= 73) -> 3 err, medium
  (>= 47) -> 4 warning, low -> 5 notice.
* everything else (process, network and DNS telemetry, metrics): facility 13, log
  audit -- it is an audit trail, and keeping it off facility 4 lets a collector
  split alerts from bulk telemetry on PRI alone.  Severity 6 informational, except
  the monitor's own loss reports (``events_dropped``, ``record_error``): 4 warning.

Delivery.  ``write()`` only serialises and appends to an in-memory queue; all network
and spool I/O happens in one sender thread, so the collector never waits on the
network.  The sender sends batches and counts a line as delivered (``lines_written``)
only when the peer's TCP stack has acknowledged every byte of it (the socket's send
queue, SIOCOUTQ, has drained while the connection is still established): a line
written into a connection that turns out to be dead is resent, not silently lost.
While the collector is unreachable or too slow, lines go to an append-only spool of
segment files in ``spool_dir`` (written with os.write, not fsync'd: they survive a
crash of rlguard, not of the host).  Spooled lines are always sent before newer
ones, a segment is deleted once every line of it was delivered, and the read
position is kept in ``spool_dir/cursor``, so lines left in the spool by an earlier
run are sent first after a restart.  When the spool would exceed
``spool_max_bytes`` the OLDEST lines are dropped, counted in ``lines_lost`` and
explained in ``last_error``.

A collector that stops reading (no acknowledgement progress for connect_timeout_s,
or a backlog past half of QUEUE_MAX_BYTES) is cut off with a reset and retried; the
backlog waits in the spool meanwhile.  ``reopen()`` (SIGHUP) retries a down collector
at once instead of after the back-off (0.2 s doubling to 30 s).  ``close(timeout_s)``
delivers what it can in that time and leaves the rest in the spool.

Exactly once, and its limits: a collector that closes the connection (restart,
shutdown) is noticed before the next batch, so every line reaches it exactly once
and in order; over plain TCP a connection cut mid-batch settles exactly the frames
the peer acknowledged and resends the rest.  TCP alone cannot do better in two
cases: bytes the peer's kernel acknowledged but its process never read (it crashed
holding them) are lost, and over ``tls://`` a connection cut mid-batch resends the
whole batch, since acknowledged ciphertext cannot be mapped to lines, so the
collector may see up to one batch (BATCH_BYTES) of duplicates.
"""

from __future__ import annotations

import collections
import errno
import fcntl
import os
import re
import select
import socket
import ssl
import struct
import termios
import threading
import time
from dataclasses import dataclass
from typing import Any

import orjson

BATCH_BYTES = 256 * 1024  # one send-and-wait-for-ack round
QUEUE_SPILL_BYTES = 1 << 20  # a backlog above this between batches goes to the spool
QUEUE_MAX_BYTES = 32 << 20  # in-memory bound; past it write() drops (sender wedged)
SEND_CHUNK = 64 * 1024
POLL_S = 0.05  # how often a blocked send looks at its deadlines
IDLE_CHECK_S = 1.0  # an idle connection is checked for a peer close this often
RETRY_MIN_S = 0.2
RETRY_MAX_S = 30.0

_TCP_ESTABLISHED = 1
_TCP_CLOSE_WAIT = 8  # the peer sent FIN but may still read: its ACKs still count

FACILITY_SECURITY = 4  # security/authorization messages (RFC 5424 table 1)
FACILITY_LOG_AUDIT = 13
SEV_CRIT, SEV_ERR, SEV_WARNING, SEV_NOTICE, SEV_INFO = 2, 3, 4, 5, 6
_WARNING_ACTIONS = frozenset({"events_dropped", "record_error"})

_URL_RE = re.compile(
    r"(?P<scheme>tcp|tls|syslog\+tcp|syslog\+tls)://"
    r"(?:\[(?P<ip6>[0-9a-fA-F:.]+)\]|(?P<host>[^:/\s\[\]]+)):(?P<port>\d{1,5})"
)
_TS_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?(Z|[+-]\d\d:\d\d)")
_SEGMENT_RE = re.compile(r"(\d{12})\.ndjson")

Meta = tuple[int, str, str]  # syslog PRI, TIMESTAMP, MSGID


@dataclass(frozen=True)
class Endpoint:
    """A parsed SIEM URL."""

    scheme: str
    host: str
    port: int

    @property
    def tls(self) -> bool:
        return self.scheme.endswith("tls")

    @property
    def syslog(self) -> bool:
        return self.scheme.startswith("syslog+")

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def parse_url(url: str) -> Endpoint:
    """Parse ``scheme://host:port``; ValueError for anything else."""
    m = _URL_RE.fullmatch(url)
    if m is None or not 0 < int(m["port"]) < 65536:
        raise ValueError(
            f"SIEM url {url!r}: expected tcp://, tls://, syslog+tcp:// or syslog+tls:// "
            "followed by host:port"
        )
    return Endpoint(m["scheme"], m["ip6"] or m["host"], int(m["port"]))


# --- syslog -------------------------------------------------------------------------------


def _printable(text: str, limit: int) -> str:
    """RFC 5424 header fields: printable US-ASCII without spaces, or "-" (NILVALUE)."""
    out = "".join(c for c in text if "!" <= c <= "~")[:limit]
    return out or "-"


def syslog_meta(doc: dict[str, Any]) -> Meta:
    """PRI, TIMESTAMP and MSGID for one document (see the module docstring for PRI)."""
    event = doc.get("event")
    if not isinstance(event, dict):
        event = {}
    kind = event.get("kind")
    if kind == "alert":
        score = event.get("severity")
        score = score if isinstance(score, int | float) else 0
        if score >= 99:
            sev = SEV_CRIT
        elif score >= 73:
            sev = SEV_ERR
        elif score >= 47:
            sev = SEV_WARNING
        else:
            sev = SEV_NOTICE
        pri = FACILITY_SECURITY * 8 + sev
    else:
        sev = SEV_WARNING if event.get("action") in _WARNING_ACTIONS else SEV_INFO
        pri = FACILITY_LOG_AUDIT * 8 + sev
    ts = doc.get("@timestamp")
    if not (isinstance(ts, str) and _TS_RE.fullmatch(ts)):
        ts = _now_rfc3339()
    return pri, ts, _printable(str(kind) if kind else "", 32)


def _now_rfc3339() -> str:
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
    return f"{stamp}.{int(now % 1 * 1e6):06d}Z"


def syslog_frame(line: bytes, meta: Meta, hostname: str, pid: int) -> bytes:
    """One octet-counted RFC 5424 frame; ``line`` is the JSON text (trailing newline dropped)."""
    pri, ts, msgid = meta
    msg = f"<{pri}>1 {ts} {hostname} rlguard {pid} {msgid} - ".encode() + line.rstrip(b"\n")
    return b"%d %b" % (len(msg), msg)


# --- the spool ----------------------------------------------------------------------------


@dataclass
class _Segment:
    seq: int
    path: str
    size: int
    lines: int


class Spool:
    """Append-only segment files holding whole lines, oldest first; one owner (flock).

    Only the sender thread touches it once the sink runs.  ``offset``/``consumed`` are
    the read position in the head segment; everything after it is unsent.
    """

    def __init__(self, directory: str, max_bytes: int) -> None:
        self.dir = directory
        self.max_bytes = max_bytes
        # segments small enough that a fully sent head frees a useful share of the bound
        self.segment_bytes = max(4096, min(4 << 20, max_bytes // 8))
        os.makedirs(directory, mode=0o750, exist_ok=True)
        self._lock_fd = os.open(
            os.path.join(directory, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640
        )
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock_fd)
            raise OSError(
                errno.EBUSY, f"spool {directory} is in use by another rlguard process"
            ) from None
        self.segments: collections.deque[_Segment] = collections.deque()
        self.offset = 0
        self.consumed = 0
        self.unsent_bytes = 0
        self.unsent_lines = 0
        self.torn_lines = 0  # whole-line repairs made at load (a crash mid-append)
        self.error: OSError | None = None  # why the last append() stopped short
        self._wfd = -1
        self._rfd = -1
        self._rfd_seq = -1
        self._load()

    # -- load / persist ---------------------------------------------------------------------

    def _load(self) -> None:
        seqs = sorted(
            int(m[1]) for name in os.listdir(self.dir) if (m := _SEGMENT_RE.fullmatch(name))
        )
        cursor_seq, cursor_off = self._read_cursor()
        # never reuse a sequence number a stale cursor could still name
        self._next_seq = max([0, cursor_seq, *seqs]) + 1
        for seq in seqs:
            path = self._path(seq)
            size, lines = self._scan(path)
            if size == 0:
                os.unlink(path)
                continue
            self.segments.append(_Segment(seq, path, size, lines))
        if self.segments and self.segments[0].seq == cursor_seq:
            head = self.segments[0]
            off = min(cursor_off, head.size)
            with open(head.path, "rb") as fh:
                data = fh.read(off)
            off = data.rfind(b"\n") + 1  # a cursor always sits on a line boundary
            self.offset, self.consumed = off, data.count(b"\n", 0, off)
        self.unsent_bytes = sum(s.size for s in self.segments) - self.offset
        self.unsent_lines = sum(s.lines for s in self.segments) - self.consumed
        self._release_finished()

    def _scan(self, path: str) -> tuple[int, int]:
        """Size and line count; a torn last line (crash mid-append) is cut off."""
        lines = pos = whole = 0
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                n = chunk.count(b"\n")
                if n:
                    lines += n
                    whole = pos + chunk.rfind(b"\n") + 1
                pos += len(chunk)
        if whole < pos:
            os.truncate(path, whole)
            self.torn_lines += 1
        return whole, lines

    def _read_cursor(self) -> tuple[int, int]:
        try:
            with open(os.path.join(self.dir, "cursor")) as fh:
                name, off = fh.read().split()
            m = _SEGMENT_RE.fullmatch(name)
            return (int(m[1]), int(off)) if m else (-1, 0)
        except (OSError, ValueError):
            return -1, 0

    def _save_cursor(self) -> None:
        if not self.segments:
            return
        tmp = os.path.join(self.dir, "cursor.tmp")
        with open(tmp, "w") as fh:
            fh.write(f"{os.path.basename(self.segments[0].path)} {self.offset}\n")
        os.replace(tmp, os.path.join(self.dir, "cursor"))

    def _path(self, seq: int) -> str:
        return os.path.join(self.dir, f"{seq:012d}.ndjson")

    # -- writing ------------------------------------------------------------------------------

    def append(self, lines: list[bytes]) -> int:
        """Append whole lines at the tail; returns how many were appended.

        Fewer than ``len(lines)`` means a write failed (``self.error`` says why); a
        partly written chunk is cut back, so the spool never holds a torn line.
        """
        self.error = None
        i = 0
        try:
            while i < len(lines):
                i = self._append_some(lines, i)
        except OSError as exc:
            self.error = exc
        return i

    def _append_some(self, lines: list[bytes], i: int) -> int:
        """Fill the tail segment from ``lines[i:]``; returns the next index."""
        tail = self.segments[-1] if self.segments else None
        if tail is None or tail.size >= self.segment_bytes or self._wfd < 0:
            tail = self._new_segment()
        # fill this segment up to its size (at least one line)
        j, nbytes = i, 0
        while j < len(lines) and (j == i or tail.size + nbytes < self.segment_bytes):
            nbytes += len(lines[j])
            j += 1
        data = b"".join(lines[i:j])
        done = 0
        try:
            while done < len(data):
                done += os.write(self._wfd, data[done:])
        except OSError:
            if done:
                os.ftruncate(self._wfd, tail.size)  # never leave a torn line behind
            raise
        tail.size += len(data)
        tail.lines += j - i
        self.unsent_bytes += len(data)
        self.unsent_lines += j - i
        return j

    def _new_segment(self) -> _Segment:
        if self._wfd >= 0:
            os.close(self._wfd)
            self._wfd = -1
        seq = self._next_seq
        self._next_seq += 1
        path = self._path(seq)
        self._wfd = os.open(
            path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640
        )
        seg = _Segment(seq, path, 0, 0)
        self.segments.append(seg)
        return seg

    def trim(self) -> int:
        """Drop the oldest lines until the spool fits max_bytes; returns lines dropped."""
        dropped = 0
        while self.unsent_bytes > self.max_bytes and self.segments:
            head = self.segments[0]
            excess = self.unsent_bytes - self.max_bytes
            remaining = head.size - self.offset
            if remaining <= excess:
                n_lines = head.lines - self.consumed
                self._advance(n_lines, remaining)
            else:
                data = self._pread(self.offset, excess + 64 * 1024)
                cut = data.find(b"\n", excess - 1) + 1
                while cut == 0 and len(data) < remaining:  # a line longer than the read
                    data = self._pread(self.offset, len(data) * 2)
                    cut = data.find(b"\n", excess - 1) + 1
                cut = cut or len(data)  # cannot happen (segments hold whole lines); no spin
                n_lines = data.count(b"\n", 0, cut)
                self._advance(n_lines, cut)
            dropped += n_lines
        if dropped:
            self._save_cursor()
        return dropped

    # -- reading ------------------------------------------------------------------------------

    def read_batch(self, max_bytes: int) -> list[bytes]:
        """Unsent whole lines from the head segment, oldest first (not consumed yet)."""
        if not self.segments or self.unsent_lines == 0:
            return []
        head = self.segments[0]
        want = min(max_bytes, head.size - self.offset)
        data = self._pread(self.offset, want)
        cut = data.rfind(b"\n") + 1
        while cut == 0 and len(data) < head.size - self.offset:  # one line > max_bytes
            data = self._pread(self.offset, len(data) * 2)
            cut = data.rfind(b"\n") + 1
        return [line + b"\n" for line in data[:cut].split(b"\n")[:-1]]

    def consume(self, lines: list[bytes]) -> None:
        """Mark the first ``len(lines)`` unsent lines (as read_batch gave them) delivered."""
        if lines:
            self._advance(len(lines), sum(len(x) for x in lines))
            self._save_cursor()

    def _advance(self, n_lines: int, n_bytes: int) -> None:
        self.offset += n_bytes
        self.consumed += n_lines
        self.unsent_bytes -= n_bytes
        self.unsent_lines -= n_lines
        self._release_finished()

    def _release_finished(self) -> None:
        """Delete head segments whose every line was sent (or dropped)."""
        while self.segments and self.offset >= self.segments[0].size:
            head = self.segments.popleft()
            if self._rfd_seq == head.seq:
                os.close(self._rfd)
                self._rfd, self._rfd_seq = -1, -1
            if not self.segments and self._wfd >= 0:
                os.close(self._wfd)  # it was the tail too
                self._wfd = -1
            try:
                os.unlink(head.path)
            except FileNotFoundError:
                pass
            self.offset = self.consumed = 0
        if not self.segments:
            try:
                os.unlink(os.path.join(self.dir, "cursor"))
            except FileNotFoundError:
                pass

    def _pread(self, offset: int, n: int) -> bytes:
        head = self.segments[0]
        if self._rfd_seq != head.seq:
            if self._rfd >= 0:
                os.close(self._rfd)
            self._rfd = os.open(head.path, os.O_RDONLY | os.O_CLOEXEC)
            self._rfd_seq = head.seq
        return os.pread(self._rfd, n, offset)

    def close(self) -> None:
        """Close files and release the lock; unsent lines stay for the next run."""
        for fd in (self._wfd, self._rfd):
            if fd >= 0:
                os.close(fd)
        self._wfd = self._rfd = -1
        self._rfd_seq = -1
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1


# --- the sink -----------------------------------------------------------------------------


class _Abort(Exception):
    """The connection must go; ``acked`` bytes of the batch had been acknowledged."""

    def __init__(self, reason: str, acked: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.acked = acked


@dataclass
class _Batch:
    lines: list[bytes]
    metas: list[Meta | None]
    from_spool: bool


class SiemSink:
    """Sink interface (write/flush/reopen/close) for a SIEM collector; see the module doc.

    Attributes: ``lines_written`` (delivered), ``lines_lost``, ``pending`` (queued,
    in flight and spooled), ``last_error``, ``connected``, ``spool_bytes``.
    """

    name = "siem"

    def __init__(
        self,
        url: str,
        spool_dir: str,
        spool_max_bytes: int,
        connect_timeout_s: float,
        ca_file: str = "",
    ) -> None:
        self.endpoint = parse_url(url)
        self.connect_timeout_s = connect_timeout_s
        self.retry_min_s = RETRY_MIN_S
        self.retry_max_s = RETRY_MAX_S
        self._ssl: ssl.SSLContext | None = None
        if self.endpoint.tls:
            # system CAs, or only the given bundle; hostname checked (default context)
            self._ssl = ssl.create_default_context(cafile=ca_file or None)
            self._ssl.minimum_version = ssl.TLSVersion.TLSv1_2
        self._hostname = _printable(socket.gethostname(), 255)
        self._pid = os.getpid()
        self.spool = Spool(spool_dir, spool_max_bytes)
        self.lines_written = 0
        self.last_error: str | None = None
        # a spool left by an earlier run: repaired at load, and held to today's bound
        dropped = self.spool.trim()
        self.lines_lost = self.spool.torn_lines + dropped
        if self.lines_lost:
            self.last_error = (
                f"spool {spool_dir}: found {self.spool.torn_lines} torn line(s) and dropped "
                f"{dropped} oldest line(s) over spool_max_bytes at start"
            )
        self.connected = False
        self._queue: collections.deque[tuple[bytes, Meta | None]] = collections.deque()
        self._queue_bytes = 0
        self._inflight_lines = 0  # taken from the queue, not yet acknowledged
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._retry_now = False  # set by reopen(): a plain flag is signal-safe
        self._closing = False
        self._deadline = float("inf")
        self._sock: socket.socket | None = None
        self._thread = threading.Thread(target=self._run, name="rlguard-siem", daemon=True)
        self._thread.start()

    # -- the collector's side: never blocks on the network ---------------------------------

    def write(self, doc: dict[str, Any]) -> None:
        """Queue one document; the sender thread delivers it."""
        self.write_line(orjson.dumps(doc, option=orjson.OPT_APPEND_NEWLINE), doc)

    def write_line(self, line: bytes, doc: dict[str, Any]) -> None:
        """Queue one serialised document (the fan-out serialises once for every sink)."""
        meta = syslog_meta(doc) if self.endpoint.syslog else None
        with self._lock:
            if self._closing:
                self.lines_lost += 1
                self.last_error = "write after close"
                return
            if self._queue_bytes + len(line) > QUEUE_MAX_BYTES:
                self.lines_lost += 1  # the sender is wedged (disk): counted, reported
                self.last_error = "SIEM queue full: the sender thread is not keeping up"
                return
            self._queue.append((line, meta))
            self._queue_bytes += len(line)

    def flush(self) -> bool:
        """Wake the sender; False while the collector is unreachable (lines are spooled)."""
        self._wake.set()
        return self.connected or self.pending == 0

    def reopen(self) -> None:
        """SIGHUP: retry a down collector now instead of after the back-off."""
        self._retry_now = True  # only a flag: this runs in a signal handler

    @property
    def pending(self) -> int:
        """Lines not yet delivered: queued, in flight and spooled."""
        return len(self._queue) + self._inflight_lines + self.spool.unsent_lines

    @property
    def spool_bytes(self) -> int:
        """Bytes waiting in the spool."""
        return self.spool.unsent_bytes

    def close(self, timeout_s: float = 5.0) -> None:
        """Deliver what can be delivered within ``timeout_s``; the rest stays in the spool."""
        if self._closing and not self._thread.is_alive():
            return
        with self._lock:
            self._closing = True
            self._deadline = time.monotonic() + timeout_s
        self._retry_now = True
        self._wake.set()
        self._thread.join(timeout_s + self.connect_timeout_s + 2.0)
        if not self._thread.is_alive():
            self.spool.close()

    # -- the sender thread -----------------------------------------------------------------

    def _run(self) -> None:
        backoff = self.retry_min_s
        next_try = 0.0
        try:
            while True:
                if self._closing and (time.monotonic() >= self._deadline or self.pending == 0):
                    break
                if self._sock is None:
                    self._spill()  # nowhere to send: the queue goes to disk
                    now = time.monotonic()
                    if self._retry_now:
                        self._retry_now = False
                        next_try = now
                    if now < next_try:
                        self._wake.wait(min(next_try - now, 0.25))
                        self._wake.clear()
                        continue
                    if self._connect():
                        backoff = self.retry_min_s
                    else:
                        if self._closing:
                            break  # one last try was made
                        next_try = time.monotonic() + backoff
                        backoff = min(backoff * 2, self.retry_max_s)
                    continue
                if self._peer_closed():
                    self._disconnect("the collector closed the connection")
                    continue
                if self._queue_bytes > QUEUE_SPILL_BYTES:
                    self._spill()  # falling behind: keep the backlog on disk, not in memory
                batch = self._next_batch()
                if batch is None:
                    if self._closing:
                        break
                    self._wake.wait(IDLE_CHECK_S)
                    self._wake.clear()
                    continue
                self._deliver(batch)
        except Exception as exc:  # the sender must not die silently
            self.last_error = f"SIEM sender stopped: {type(exc).__name__}: {exc}"
        finally:
            if self._sock is not None:
                self._disconnect(None)
            try:
                self._spill()
            except Exception as exc:
                self.last_error = f"SIEM spool: {type(exc).__name__}: {exc}"

    def _connect(self) -> bool:
        ep = self.endpoint
        sock: socket.socket | None = None
        try:
            sock = socket.create_connection((ep.host, ep.port), timeout=self.connect_timeout_s)
            if sock.getsockname() == sock.getpeername():
                # TCP simultaneous open: a local port nobody listens on, picked as our own
                # ephemeral port, "connects" to itself and would swallow every line
                raise ConnectionRefusedError(errno.ECONNREFUSED, "connected to itself")
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            if self._ssl is not None:
                sock = self._ssl.wrap_socket(sock, server_hostname=ep.host)
        except (OSError, ssl.SSLError) as exc:
            if sock is not None:
                sock.close()
            self.last_error = f"{ep}: connect: {_reason(exc)}"
            return False
        sock.settimeout(POLL_S)
        self._sock = sock
        self.connected = True
        self.last_error = None
        return True

    def _disconnect(self, why: str | None, reset: bool = False) -> None:
        sock, self._sock = self._sock, None
        self.connected = False
        if why:
            self.last_error = f"{self.endpoint}: {why}"
        if sock is None:
            return
        try:
            if reset:  # drop unacknowledged data now rather than let it trickle out later
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        except OSError:
            pass

    def _peer_closed(self) -> bool:
        """True when the collector has closed its end (EOF, reset or TLS close)."""
        sock = self._sock
        assert sock is not None
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            if not readable and not (isinstance(sock, ssl.SSLSocket) and sock.pending()):
                return False
            sock.setblocking(False)
            try:
                data = sock.recv(65536)  # anything the collector says is ignored
            finally:
                sock.settimeout(POLL_S)
            return data == b""
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            return False
        except OSError:
            return True

    def _next_batch(self) -> _Batch | None:
        lines = self.spool.read_batch(BATCH_BYTES)
        if lines:
            metas: list[Meta | None] = (
                [_meta_of_line(x) for x in lines] if self.endpoint.syslog else [None] * len(lines)
            )
            return _Batch(lines, metas, True)
        with self._lock:
            if not self._queue:
                return None
            taken: list[tuple[bytes, Meta | None]] = []
            size = 0
            while self._queue and (not taken or size + len(self._queue[0][0]) <= BATCH_BYTES):
                item = self._queue.popleft()
                taken.append(item)
                size += len(item[0])
            self._queue_bytes -= size
            self._inflight_lines = len(taken)
        return _Batch([x[0] for x in taken], [x[1] for x in taken], False)

    def _frames(self, batch: _Batch) -> list[bytes]:
        if not self.endpoint.syslog:
            return batch.lines
        return [
            syslog_frame(line, meta or _meta_of_line(line), self._hostname, self._pid)
            for line, meta in zip(batch.lines, batch.metas, strict=True)
        ]

    def _deliver(self, batch: _Batch) -> None:
        """Send one batch and wait until the peer acknowledged it; settle it either way."""
        frames = self._frames(batch)
        try:
            self._send_and_wait(b"".join(frames))
            delivered = len(frames)
        except _Abort as exc:
            # plain TCP: the acknowledged bytes map to whole frames; under TLS they do not
            delivered = 0 if self.endpoint.tls else _whole_frames(frames, exc.acked)
            # a reset drops the unacknowledged rest at once instead of letting the kernel
            # deliver it later (a duplicate of the resend); the peer keeps what it acked
            self._disconnect(exc.reason, reset=True)
        self._settle(batch, delivered)

    def _send_and_wait(self, data: bytes) -> None:
        """Send ``data`` and wait until the peer acknowledged all of it; else raise _Abort.

        ``acked`` counts the bytes of ``data`` acknowledged so far (exact for plain TCP,
        where the socket carries nothing else and the previous batch was fully acked).
        """
        sock = self._sock
        assert sock is not None
        view = memoryview(data)
        sent = acked = 0
        last_outq = -1
        last_progress = time.monotonic()
        delay = 0.0002
        while True:
            if sent < len(data):
                try:
                    sent += sock.send(view[sent : sent + SEND_CHUNK])
                    last_progress = time.monotonic()
                    continue
                except (TimeoutError, ssl.SSLWantWriteError, BlockingIOError):
                    pass  # the peer's window is full: look at the deadlines below
                except OSError as exc:
                    raise _Abort(f"send: {_reason(exc)}", acked) from None
            outq, alive = _unacked(sock)
            if not alive:
                raise _Abort("connection lost", acked)
            if outq < last_outq:
                last_progress = time.monotonic()
            last_outq = outq
            acked = max(acked, sent - outq)
            if sent == len(data) and outq == 0:
                return
            now = time.monotonic()
            if now - last_progress > self.connect_timeout_s:
                raise _Abort(f"no progress for {self.connect_timeout_s:g}s", acked)
            if self._closing and now >= self._deadline:
                raise _Abort("closing: out of time", acked)
            if self._queue_bytes > QUEUE_MAX_BYTES // 2:
                raise _Abort("too slow: the backlog moves to the spool", acked)
            if sent == len(data):
                time.sleep(delay)
                delay = min(delay * 2, 0.02)

    def _settle(self, batch: _Batch, delivered: int) -> None:
        """Count what arrived; keep the rest, in order, ahead of everything newer."""
        self.lines_written += delivered
        if batch.from_spool:
            self.spool.consume(batch.lines[:delivered])
            return
        rest = batch.lines[delivered:]
        if rest:
            # taken from the queue only while the spool was empty, and nothing was spilled
            # since: so the spool's end is exactly where these lines belong
            self._spool_lines(rest)
        with self._lock:
            self._inflight_lines = 0

    def _spill(self) -> None:
        """Move the whole in-memory queue to the spool (oldest first)."""
        with self._lock:
            if not self._queue:
                return
            lines = [x[0] for x in self._queue]
            self._queue.clear()
            self._queue_bytes = 0
            # counted as in flight until on disk, so pending never dips
            self._inflight_lines += len(lines)
        try:
            self._spool_lines(lines)
        finally:
            with self._lock:
                self._inflight_lines -= len(lines)

    def _spool_lines(self, lines: list[bytes]) -> None:
        done = self.spool.append(lines)
        if done < len(lines):
            why = _reason(self.spool.error) if self.spool.error else "write failed"
            self._lose(len(lines) - done, f"spool {self.spool.dir}: {why}: lines lost")
        dropped = self.spool.trim()
        if dropped:
            self._lose(
                dropped,
                f"spool {self.spool.dir} over {self.spool.max_bytes} bytes while "
                f"{self.endpoint} is unreachable or slow: dropped the {dropped} oldest lines",
            )

    def _lose(self, n: int, why: str) -> None:
        with self._lock:  # write() counts losses too, from the collector's thread
            self.lines_lost += n
        self.last_error = why


def _whole_frames(frames: list[bytes], acked: int) -> int:
    """How many leading frames lie entirely within the first ``acked`` bytes."""
    n = end = 0
    for frame in frames:
        end += len(frame)
        if end > acked:
            break
        n += 1
    return n


def _unacked(sock: socket.socket) -> tuple[int, bool]:
    """(bytes not yet acknowledged by the peer, connection still usable).

    The queue size is read before the state: a reset purges the queue, so a zero is
    only trusted when the connection was still established after reading it.
    """
    buf = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")  # == SIOCOUTQ
    outq = struct.unpack("i", buf)[0]
    state = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    return outq, err == 0 and state in (_TCP_ESTABLISHED, _TCP_CLOSE_WAIT)


def _meta_of_line(line: bytes) -> Meta:
    try:
        doc = orjson.loads(line)
    except orjson.JSONDecodeError:
        doc = {}
    return syslog_meta(doc if isinstance(doc, dict) else {})


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: {exc.verify_message or exc.reason}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or exc}"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
