"""One tracker for every outbound stream's opening, fed by every source.

The kernel sends, per outbound TCP connection (keyed by socket cookie): the first segment
(``send``), later chunks of the opening and of the reply placed by TCP sequence number
(``stream``), TLS plaintext from the library uprobes (``tls_data``, tied to the cookie by
``tls_bind`` or to an fd that a ``connect`` named), and the end of each connection
(``tcp_state`` CLOSE).  :class:`StreamTracker` reassembles each opening, bounded in bytes
(the kernel's bound) and in time (``window_s``), holds at most ``max_streams`` of them, and
counts what a bound or a loss cut.  ``view()`` peels the layers and gives the detectors a
:class:`StreamView`.

Pixie's socket tracer (conn_tracker.cc, data_stream.cc) is the model: one tracker per
connection fed by wire bytes and TLS plaintext alike.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from monitor.sensor.events import SendEvent, StreamEvent, TlsBindEvent, TlsDataEvent
from monitor.streams import unwrap
from monitor.streams.view import Layer, Level, StreamView

MAX_FD_MAP = 65536  # (pid, fd) -> cookie entries kept from connect records
NS = 1_000_000_000


@dataclass(slots=True)
class TlsObject:
    """Plaintext of one TLS library object (SSL *, gnutls session) within a process."""

    pid: int
    ssl: int
    library: str
    data: bytearray = field(default_factory=bytearray)
    cookie: int = 0
    fd: int = -1
    gaps: int = 0
    last_ns: int = 0


class Stream:
    """One connection's opening as far as it has come.

    A plain class with __slots__ and one __init__: made for every outbound connection,
    so it costs as little as a Python object can.
    """

    __slots__ = (
        "cookie", "pid", "owner_pid", "family", "saddr", "sport", "daddr", "dport", "out",
        "reply", "tls", "first_ns", "last_ns", "truncated", "cut_short", "gaps", "closed",
        "announced", "tls_announced",
    )  # fmt: skip

    def __init__(self, cookie: int, pid: int, owner_pid: int, ts: int) -> None:
        self.cookie = cookie
        self.pid = pid  # the subject: the process the detectors judge
        self.owner_pid = owner_pid
        self.family = 0
        self.saddr: str | None = None
        self.sport = 0
        self.daddr: str | None = None
        self.dport = 0
        self.out = bytearray()
        self.reply = bytearray()
        self.tls: TlsObject | None = None
        self.first_ns = ts
        self.last_ns = ts
        self.truncated = False
        self.cut_short = False
        self.gaps = 0
        self.closed = False
        self.announced: tuple[tuple[str, str | None, int | None], ...] = ()  # layers a line said
        self.tls_announced = False


CHANGED_DATA = frozenset({"data"})
CHANGED_REPLY = frozenset({"reply"})
CHANGED_TLS = frozenset({"tls"})


class StreamTracker:
    """Reassembles stream openings; the collector feeds it, the detectors read its views."""

    def __init__(
        self, *, max_streams: int = 4096, window_s: float = 60.0, unwrap_depth: int = 4
    ) -> None:
        self.max_streams = max_streams
        self.window_ns = int(window_s * NS)
        self.depth = unwrap_depth
        self.streams: OrderedDict[int, Stream] = OrderedDict()
        # openings of one segment so far, kept as their send record (most connections
        # never send a second chunk): a Stream is made only when one comes
        self._first: OrderedDict[int, tuple[SendEvent, int]] = OrderedDict()
        self.tls: OrderedDict[tuple[int, int], TlsObject] = OrderedDict()
        self._by_tuple: dict[tuple[str | None, int, str | None, int], int] = {}
        self._fds: OrderedDict[tuple[int, int], int] = OrderedDict()
        self.counts: dict[str, int] = {
            "streams": 0,  # streams opened (a first payload, or a reply seen first)
            "evicted": 0,  # dropped to stay within max_streams while still open
            "expired": 0,  # dropped after the window (the opening is over)
            "closed": 0,  # dropped after the connection closed
            "truncated": 0,  # the byte bound cut the opening
            "cut_short": 0,  # the time window ended it with bytes still coming
            "gaps": 0,  # chunks missing in the middle (a lost record)
            "orphan_chunks": 0,  # chunks for a stream never announced (its send lost)
            "tls_objects": 0,
            "tls_bound_fd": 0,  # tied to the stream through the fd (SSL_set_fd)
            "tls_bound_cookie": 0,  # tied by the socket send after the write
            "tls_unbound": 0,  # plaintext never tied to a connection (still judged)
        }

    # -- feeding -------------------------------------------------------------------------

    def on_connect(self, pid: int, fd: int, cookie: int) -> None:
        """A connect() named (pid, fd) for this cookie: how SSL_set_fd finds the stream."""
        if fd < 0 or not cookie:
            return
        key = (pid, fd)
        self._fds[key] = cookie
        self._fds.move_to_end(key)
        if len(self._fds) > MAX_FD_MAP:
            self._fds.popitem(last=False)

    def on_send(self, ev: SendEvent, pid: int) -> StreamView:
        """The first segment: a new stream (or the start of one a reply announced)."""
        s = self.streams.get(ev.cookie)
        if s is None:
            self.counts["streams"] += 1
            first = self._first
            first[ev.cookie] = (ev, pid)
            if len(first) > self.max_streams:
                first.popitem(last=False)
                self.counts["evicted"] += 1
            levels, layers = unwrap.levels(ev.data, depth=self.depth)
            return StreamView(
                ev.cookie,
                ev.daddr,
                ev.dport,
                levels,
                layers,
                sent=len(ev.data),
                changed=CHANGED_DATA,
                family=ev.family,
                saddr=ev.saddr,
                sport=ev.sport,
            )
        s.pid = pid
        self._endpoints(s, ev.family, ev.saddr, ev.sport, ev.daddr, ev.dport)
        self._place(s, s.out, 0, ev.data, ev.ts_ns)
        return self._view(s, CHANGED_DATA)

    def on_chunk(self, ev: StreamEvent) -> StreamView | None:
        """A later chunk of the opening or of the reply; None if it changed nothing."""
        s = self.get(ev.cookie)
        if s is None:
            if not ev.reply:  # a reply may come first (a server banner); our bytes may not
                self.counts["orphan_chunks"] += 1
            s = self._new(ev.cookie, ev.owner_pid, ev.owner_pid, ev.ts_ns)
            if ev.reply:  # the packet's source is the peer
                self._endpoints(s, ev.family, ev.daddr, ev.dport, ev.saddr, ev.sport)
            else:
                self._endpoints(s, ev.family, ev.saddr, ev.sport, ev.daddr, ev.dport)
        self._touch(s, ev.ts_ns)
        if ev.late:
            if not s.cut_short:
                s.cut_short = True
                self.counts["cut_short"] += 1
            return None
        if ev.gap:
            s.gaps += 1
            self.counts["gaps"] += 1
        if ev.truncated and not s.truncated:
            s.truncated = True
            self.counts["truncated"] += 1
        buf = s.reply if ev.reply else s.out
        if not self._place(s, buf, ev.offset, ev.data, ev.ts_ns):
            return None
        return self._view(s, CHANGED_REPLY if ev.reply else CHANGED_DATA)

    def on_tls_data(self, ev: TlsDataEvent) -> StreamView:
        """Plaintext a process handed its TLS library; judged whether or not it is bound."""
        key = (ev.pid, ev.ssl)
        obj = self.tls.get(key)
        if obj is None or ev.offset == 0 and obj.data:
            obj = TlsObject(ev.pid, ev.ssl, ev.library)
            self.tls[key] = obj
            self.counts["tls_objects"] += 1
            if len(self.tls) > self.max_streams:
                _, old = self.tls.popitem(last=False)
                if not old.cookie:
                    self.counts["tls_unbound"] += 1
        self.tls.move_to_end(key)
        obj.last_ns = ev.ts_ns
        if ev.offset > len(obj.data):
            obj.gaps += 1
            self.counts["gaps"] += 1
        elif ev.offset < len(obj.data):
            return self._tls_view(obj)  # already have these bytes
        obj.data += ev.data
        if ev.fd >= 0:
            obj.fd = ev.fd
        cookie = ev.cookie or obj.cookie or self._fds.get((ev.pid, obj.fd), 0)
        if cookie and not obj.cookie:
            self._bind(obj, cookie, "tls_bound_cookie" if ev.cookie else "tls_bound_fd")
        return self._tls_view(obj)

    def on_tls_bind(self, ev: TlsBindEvent) -> StreamView | None:
        """The kernel tied a TLS object to a socket: its plaintext joins that stream."""
        obj = self.tls.get((ev.pid, ev.ssl))
        if obj is None:
            obj = TlsObject(ev.pid, ev.ssl, "openssl")
            self.tls[(ev.pid, ev.ssl)] = obj
            self.counts["tls_objects"] += 1
        if obj.cookie == ev.cookie:
            return None
        self._bind(obj, ev.cookie, "tls_bound_cookie")
        return self._tls_view(obj) if obj.data else None

    def on_close(self, saddr: str | None, sport: int, daddr: str | None, dport: int) -> None:
        """The connection closed: the stream goes at the next expire() (late chunks first)."""
        cookie = self._by_tuple.pop((saddr, sport, daddr, dport), None)
        if cookie is not None:
            s = self.streams.get(cookie)
            if s is not None:
                s.closed = True

    def expire(self, now_ns: int) -> None:
        """Drop closed streams and those past their window; TLS objects idle as long."""
        limit = self.window_ns + 5 * NS
        first = self._first
        while first:
            cookie, (ev, _) = next(iter(first.items()))
            if now_ns - ev.ts_ns <= limit:
                break
            del first[cookie]
            self.counts["expired"] += 1
        for cookie in [c for c, s in self.streams.items() if s.closed]:
            self._drop(cookie, "closed")
        while self.streams:
            cookie, s = next(iter(self.streams.items()))
            if now_ns - s.last_ns <= limit:
                break
            self._drop(cookie, "expired")
        while self.tls:
            key, obj = next(iter(self.tls.items()))
            if now_ns - obj.last_ns <= limit:
                break
            del self.tls[key]
            if not obj.cookie:
                self.counts["tls_unbound"] += 1

    def stats(self) -> dict[str, Any]:
        return {
            **self.counts,
            "open": len(self.streams) + len(self._first),
            "tls_open": len(self.tls),
        }

    def get(self, cookie: int) -> Stream | None:
        """The stream (made now from its first segment if that is all there was)."""
        s = self.streams.get(cookie)
        if s is not None:
            return s
        got = self._first.pop(cookie, None)
        if got is None:
            return None
        ev, pid = got
        s = self._new(cookie, pid, ev.owner_pid, ev.ts_ns, counted=True)
        self._endpoints(s, ev.family, ev.saddr, ev.sport, ev.daddr, ev.dport)
        s.out += ev.data
        return s

    def announce(self, view: StreamView) -> bool:
        """Does this view say something a line has not (a new layer, plaintext first seen)?"""
        s = self.streams.get(view.cookie)
        if s is None:
            return False
        # only layers whose header is whole: a proxy once it names its target, TLS once its
        # ClientHello parsed (a greeting alone says nothing yet)
        settled = tuple(
            (layer.kind, layer.host, layer.port)
            for layer in view.layers
            if not (layer.is_proxy and layer.host is None)
            and not (layer.kind == "tls" and not layer.detail)
        )
        new_layers = bool(settled) and settled != s.announced
        new_tls = view.tls_library is not None and not s.tls_announced
        if new_layers:
            s.announced = settled
        if new_tls:
            s.tls_announced = True
        return new_layers or new_tls

    # -- internals ------------------------------------------------------------------------

    def _new(self, cookie: int, pid: int, owner: int, ts: int, counted: bool = False) -> Stream:
        s = Stream(cookie, pid, owner, ts)
        self.streams[cookie] = s
        if not counted:
            self.counts["streams"] += 1
        if len(self.streams) > self.max_streams:
            old_cookie, _ = next(iter(self.streams.items()))
            self._drop(old_cookie, "evicted")
        return s

    def _endpoints(
        self, s: Stream, family: int, saddr: str | None, sport: int, daddr: str | None, dport: int
    ) -> None:
        """The stream's local and peer address (as its first outbound segment has them)."""
        s.family, s.saddr, s.sport, s.daddr, s.dport = family, saddr, sport, daddr, dport
        self._by_tuple[(saddr, sport, daddr, dport)] = s.cookie

    def _drop(self, cookie: int, why: str) -> None:
        s = self.streams.pop(cookie, None)
        if s is None:
            return
        self.counts[why] += 1
        self._by_tuple.pop((s.saddr, s.sport, s.daddr, s.dport), None)
        if s.tls is not None:
            self.tls.pop((s.tls.pid, s.tls.ssl), None)

    def _touch(self, s: Stream, ts: int) -> None:
        if ts > s.last_ns:
            s.last_ns = ts
        self.streams.move_to_end(s.cookie)

    def _place(self, s: Stream, buf: bytearray, offset: int, data: bytes, ts: int) -> bool:
        """Put data at its stream offset; False when it adds nothing."""
        self._touch(s, ts)
        have = len(buf)
        if offset > have:
            s.gaps += 1
            self.counts["gaps"] += 1
            buf += data
            return bool(data)
        if offset + len(data) <= have:
            return False
        buf += data[have - offset :]
        return True

    def _bind(self, obj: TlsObject, cookie: int, how: str) -> None:
        obj.cookie = cookie
        self.counts[how] += 1
        s = self.get(cookie)
        if s is not None:
            s.tls = obj

    def _levels(self, s: Stream) -> tuple[list[Level], tuple[Layer, ...]]:
        # computed for each change and not kept: the views live as long as one event
        wire, layers = unwrap.levels(
            bytes(s.out), bytes(s.reply) if s.reply else b"", depth=self.depth
        )
        if s.tls is not None and s.tls.data:
            plain, layers = unwrap.levels(
                bytes(s.tls.data), source="tls", prefix=layers, depth=self.depth
            )
            wire = wire + plain
        return wire, layers

    def _view(self, s: Stream, changed: frozenset[str]) -> StreamView:
        lv, layers = self._levels(s)
        return StreamView(
            cookie=s.cookie,
            daddr=s.daddr,
            dport=s.dport,
            levels=lv,
            layers=layers,
            tls_library=s.tls.library if s.tls is not None and s.tls.data else None,
            sent=len(s.out),
            replied=len(s.reply),
            truncated=s.truncated,
            cut_short=s.cut_short,
            gaps=s.gaps,
            changed=changed,
            family=s.family,
            saddr=s.saddr,
            sport=s.sport,
        )

    def _tls_view(self, obj: TlsObject) -> StreamView:
        s = self.get(obj.cookie) if obj.cookie else None
        if s is not None:
            s.tls = obj
            self._touch(s, obj.last_ns)
            return self._view(s, CHANGED_TLS)
        # plaintext of a connection we cannot name: judged on its own
        lv, layers = unwrap.levels(
            bytes(obj.data), source="tls", prefix=(Layer("tls"),), depth=self.depth
        )
        return StreamView(
            cookie=0,
            daddr=None,
            dport=0,
            levels=lv,
            layers=layers,
            tls_library=obj.library,
            gaps=obj.gaps,
            changed=CHANGED_TLS,
        )
