"""Prometheus metrics over HTTP, on loopback only.

``MetricsServer(listen, snapshot)`` binds ``listen`` ("127.0.0.1:9464", "[::1]:9464",
"localhost:9464"; port 0 picks a free one) and serves ``GET /metrics`` from a daemon
thread; every other path is a 404.  Addresses that are not loopback are refused
(ValueError): the counters describe the host's processes, and a scraper that needs
them remotely should come through an authenticated proxy, not an open port.

``snapshot()`` is called once per scrape, in the server's thread, and returns the
``rlguard`` object of the collector's ``stats`` document (``Collector._metrics()``),
optionally with two more keys::

    {
      "events": {"exec": 120, "connect": 40, ...},          # by event type (action)
      "kernel": {"sent": {type: n}, "drops": {type: n}, "misses": {kind: n}},
      "undecodable": 0, "errors": 0,
      "process_table": {"size": 812, "tagsets": 9},
      "alerts": {"rule-id": 2, ...},
      "uptime_s": 3600.5,
      "output": {"lines_written": n | {sink: n}, "lines_lost": ..., "pending": ...},
      # optional:
      "sinks": {name: {"lines_written": n, "lines_lost": n, "pending": n,
                       "spool_bytes": n, "connected": bool}},  # FanoutSink.stats()
      "ring_pages": 256,                                        # config.probes.ring_pages
      "ledger": {"persisting": bool, "episodes_in_memory": n,   # EpisodeLedger.stats()
                 "fleet": {"connected": bool, "backlog_rows": n, "backlog_age_s": x,
                           "shipped_rows": n, "failures": n}},  # with [ledger] url only
    }

Per-sink output metrics come from ``sinks`` when present, else from ``output`` (a dict
per sink name from FanoutSink, or a single number, labelled ``sink="output"``).
Missing or non-numeric values are left out rather than reported as zero.  Every metric
name starts with ``rlguard_`` (Prometheus naming: one application prefix).
"""

from __future__ import annotations

import ipaddress
import math
import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PREFIX = "rlguard_"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Snapshot = Mapping[str, Any]


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port`` -> (loopback IP, port); ValueError for anything else.

    Only IP literals and "localhost" are accepted, so no name is ever looked up.
    """
    host, sep, port_text = listen.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) < 65536:
        raise ValueError(f"metrics_listen {listen!r}: expected host:port")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if host == "localhost":
        host = "127.0.0.1"
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"metrics_listen {listen!r}: the host must be a loopback address "
            "(127.0.0.1, ::1 or localhost)"
        ) from None
    if not addr.is_loopback:
        raise ValueError(
            f"metrics_listen {listen!r}: {host} is not a loopback address; the metrics "
            "endpoint only listens on 127.0.0.0/8 or ::1"
        )
    return str(addr), int(port_text)


# --- text format ----------------------------------------------------------------------------


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: Any) -> str | None:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "+Inf" if value > 0 else "-Inf"
        return repr(value)
    return None


class _Text:
    """Accumulates families: HELP and TYPE once, then the samples."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(
        self,
        name: str,
        kind: str,
        help_text: str,
        samples: Iterable[tuple[dict[str, str], Any]],
        always: bool = False,
    ) -> None:
        rendered = []
        for labels, value in samples:
            num = _number(value)
            if num is None:
                continue
            if labels:
                inner = ",".join(f'{k}="{_escape(str(v))}"' for k, v in sorted(labels.items()))
                rendered.append(f"{PREFIX}{name}{{{inner}}} {num}")
            else:
                rendered.append(f"{PREFIX}{name} {num}")
        if not rendered and not always:
            return  # an unlabelled value that is missing: no family at all
        self.lines.append(f"# HELP {PREFIX}{name} {help_text}")
        self.lines.append(f"# TYPE {PREFIX}{name} {kind}")
        self.lines.extend(rendered)

    def labelled(self, name: str, kind: str, help_text: str, label: str, values: Any) -> None:
        items = values.items() if isinstance(values, Mapping) else ()
        self.family(name, kind, help_text, (({label: str(k)}, v) for k, v in items), True)

    def single(self, name: str, kind: str, help_text: str, value: Any) -> None:
        self.family(name, kind, help_text, [({}, value)])

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _d(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _sink_table(snap: Snapshot) -> Mapping[str, Mapping[str, Any]]:
    """Per-sink counters: ``sinks`` if given, else rebuilt from ``output``."""
    sinks = snap.get("sinks")
    if isinstance(sinks, Mapping):
        return {str(k): _d(v) for k, v in sinks.items()}
    out = _d(snap.get("output"))
    table: dict[str, dict[str, Any]] = {}
    for key in ("lines_written", "lines_lost", "pending"):
        value = out.get(key)
        if isinstance(value, Mapping):
            for name, v in value.items():
                table.setdefault(str(name), {})[key] = v
        elif value is not None:
            table.setdefault("output", {})[key] = value
    return table


# name, type, help, label (None: one unlabelled value), path into the snapshot
_FAMILIES: tuple[tuple[str, str, str, str | None, tuple[str, ...]], ...] = (
    ("events_total", "counter", "Events received from the kernel, by type.", "type",
     ("events",)),
    ("kernel_sent_total", "counter", "Events the kernel programs submitted, by type.", "type",
     ("kernel", "sent")),
    ("kernel_drops_total", "counter",
     "Events the kernel could not queue (ring buffer full), by type.", "type",
     ("kernel", "drops")),
    ("kernel_misses_total", "counter",
     "Kernel-side lookups that found nothing (state lost), by kind.", "kind",
     ("kernel", "misses")),
    ("alerts_total", "counter", "Alerts raised, by rule.", "rule", ("alerts",)),
    ("undecodable_total", "counter", "Records that could not be decoded.", None,
     ("undecodable",)),
    ("errors_total", "counter", "Records whose processing failed.", None, ("errors",)),
    ("process_table_size", "gauge", "Processes in the lineage table.", None,
     ("process_table", "size")),
    ("process_table_exited", "gauge", "Exited processes held for their grace period.", None,
     ("process_table", "exited")),
    ("process_table_exited_evicted_total", "counter",
     "Exited processes dropped before their grace ended (an exit flood).", None,
     ("process_table", "exited_evicted")),
    ("tagsets", "gauge", "Distinct RL tag sets known.", None, ("process_table", "tagsets")),
    ("ring_pages", "gauge", "Pages in the kernel ring buffer.", None, ("ring_pages",)),
    ("ring_backlog_events", "gauge",
     "Records the kernel queued that the collector has not processed yet (ring usage).", None,
     ("ring_backlog_events",)),
    ("uptime_seconds", "gauge", "Seconds since the monitor started.", None, ("uptime_s",)),
    ("gpu_holders", "gauge", "Processes holding a GPU device node.", None, ("gpu", "holders")),
    ("gpu_holdings", "gauge", "File descriptors on GPU device nodes.", None,
     ("gpu", "holdings")),
    ("gpu_devices_held", "gauge", "GPU device nodes with at least one holder.", None,
     ("gpu", "devices")),
    ("gpu_scans_total", "counter", "Reconcile scans of /proc/PID/fd for GPU fds.", None,
     ("gpu", "scans")),
    ("ledger_persisting", "gauge", "1 while the episode ledger's local database is written.",
     None, ("ledger", "persisting")),
    ("ledger_episodes_in_memory", "gauge", "Episodes the ledger holds in memory.", None,
     ("ledger", "episodes_in_memory")),
    ("ledger_fleet_connected", "gauge", "1 while the fleet PostgreSQL is connected.", None,
     ("ledger", "fleet", "connected")),
    ("ledger_fleet_backlog_rows", "gauge",
     "Ledger row writes in the local spool not yet in the fleet PostgreSQL.", None,
     ("ledger", "fleet", "backlog_rows")),
    ("ledger_fleet_backlog_age_seconds", "gauge",
     "Age of the oldest ledger write not yet in the fleet PostgreSQL (0: none).", None,
     ("ledger", "fleet", "backlog_age_s")),
    ("ledger_fleet_shipped_rows_total", "counter", "Ledger rows shipped to the fleet PostgreSQL.",
     None, ("ledger", "fleet", "shipped_rows")),
    ("ledger_fleet_failures_total", "counter",
     "Failed connects and batches to the fleet PostgreSQL.", None,
     ("ledger", "fleet", "failures")),
)  # fmt: skip

# name, type, help, key in each sink's row, always shown (else only if some sink has it)
_SINK_FAMILIES: tuple[tuple[str, str, str, str, bool], ...] = (
    ("output_lines_written_total", "counter", "Lines each output delivered.", "lines_written",
     True),
    ("output_lines_lost_total", "counter", "Lines each output lost.", "lines_lost", True),
    ("output_pending", "gauge", "Lines each output holds, not yet delivered.", "pending", True),
    ("output_spool_bytes", "gauge", "Bytes waiting in an output's disk spool.", "spool_bytes",
     False),
    ("output_connected", "gauge", "1 while a network output is connected.", "connected",
     False),
)  # fmt: skip


def _at(snap: Snapshot, path: tuple[str, ...]) -> Any:
    value: Any = snap
    for key in path:
        value = _d(value).get(key)
    return value


def render(snap: Snapshot) -> str:
    """The Prometheus text exposition (format 0.0.4) of one snapshot."""
    t = _Text()
    for name, kind, help_text, label, path in _FAMILIES:
        if label is None:
            t.single(name, kind, help_text, _at(snap, path))
        else:
            t.labelled(name, kind, help_text, label, _at(snap, path))
    sinks = _sink_table(snap)
    for name, kind, help_text, key, always in _SINK_FAMILIES:
        if always or any(key in row for row in sinks.values()):
            t.labelled(name, kind, help_text, "sink", {n: r.get(key) for n, r in sinks.items()})
    return t.text()


# --- the server -----------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = 5  # a stuck client cannot hold a thread for long
    server_version = "rlguard"

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def _answer(self, body: bool) -> None:
        if self.path.split("?", 1)[0] != "/metrics":
            self._send(404, "text/plain; charset=utf-8", b"not found: try /metrics\n", body)
            return
        try:
            payload = render(self.server.snapshot()).encode()
        except Exception as exc:  # a broken snapshot is a 500, never a dead server
            msg = f"snapshot failed: {type(exc).__name__}: {exc}\n".encode()
            self._send(500, "text/plain; charset=utf-8", msg, body)
            return
        self._send(200, CONTENT_TYPE, payload, body)

    def _send(self, code: int, ctype: str, payload: bytes, body: bool) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if body:
            self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # scrapes every few seconds would flood stderr


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    snapshot: Callable[[], Snapshot]


class MetricsServer:
    """Serves ``/metrics`` on a loopback address from a daemon thread until close()."""

    def __init__(self, listen: str, snapshot: Callable[[], Snapshot]) -> None:
        host, port = parse_listen(listen)

        class Server(_Server):
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

        self._server = Server((host, port), _Handler)
        self._server.snapshot = snapshot
        self.host = host
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.25},
            name="rlguard-metrics",
            daemon=True,
        )
        self._thread.start()

    @property
    def url(self) -> str:
        """Where to scrape, e.g. http://127.0.0.1:9464/metrics."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=2)
