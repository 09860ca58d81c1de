"""The Prometheus endpoint over real HTTP on loopback, fed by the collector's own stats.

No root and no kernel programs (the sensor is a stand-in), so these are unit-marked.
The exposition is checked by a strict parser of the text format written here, and
also by prometheus_client's parser when that package is installed.
"""

from __future__ import annotations

import http.client
import math
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from monitor.assembly import build_collector
from monitor.collector import Collector
from monitor.config import load_config
from monitor.sensor.probes import Counters
from monitor.sinks.fanout import FanoutSink
from monitor.sinks.metrics_http import MetricsServer, parse_listen, render
from monitor.sinks.ndjson import NdjsonSink
from tests.support.sensor import FakeSensor

pytestmark = pytest.mark.unit

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE_RE = re.compile(rf"({_NAME})(?:\{{(.*)\}})? (\S+)")
_LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(,|$)')
_VALUE_RE = re.compile(r"[+-]?(?:\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+|Inf|NaN)")

Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse_exposition(text: str) -> tuple[Series, dict[str, str]]:
    """Strict reader of the 0.0.4 text format; returns (series, type by family).

    Fails on: a sample before its TYPE, a TYPE twice, an unknown type, a malformed
    name, label or value, a duplicate series, a missing final newline.
    """
    assert text.endswith("\n"), "exposition must end with a newline"
    types: dict[str, str] = {}
    helps: set[str] = set()
    series: Series = {}
    for n, line in enumerate(text[:-1].split("\n"), 1):
        where = f"line {n}: {line!r}"
        if line.startswith("# HELP "):
            name = line.split(" ", 3)[2]
            assert re.fullmatch(_NAME, name) and name not in helps, where
            helps.add(name)
            continue
        if line.startswith("# TYPE "):
            parts = line.split(" ")
            assert len(parts) == 4, where
            name, kind = parts[2], parts[3]
            assert re.fullmatch(_NAME, name) and name not in types, where
            assert kind in ("counter", "gauge", "untyped", "summary", "histogram"), where
            types[name] = kind
            continue
        assert not line.startswith("#") and line.strip() == line and line, where
        m = _SAMPLE_RE.fullmatch(line)
        assert m, where
        name, label_text, value = m[1], m[2], m[3]
        assert name in types, f"{where}: sample before its TYPE"
        labels: list[tuple[str, str]] = []
        if label_text:
            pos = 0
            while pos < len(label_text):
                lm = _LABEL_RE.match(label_text, pos)
                assert lm, where
                raw = lm[2]
                unescaped = re.sub(r"\\(.)", lambda x: {"n": "\n"}.get(x[1], x[1]), raw)
                labels.append((lm[1], unescaped))
                pos = lm.end()
        assert _VALUE_RE.fullmatch(value), where
        key = (name, tuple(sorted(labels)))
        assert key not in series, f"{where}: duplicate series"
        series[key] = float(value.replace("Inf", "inf"))
    return series, types


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[tuple[Collector, FanoutSink]]:
    fan = FanoutSink(NdjsonSink(str(tmp_path / "events.ndjson")), NdjsonSink("/dev/full"))
    counters = Counters(
        sent={"exec": 50, "connect": 7},
        drops={"exec": 2, "connect": 0},
        misses={"tagset": 3, "sock": 0},
    )
    c = build_collector(load_config(None), fan, sensor=FakeSensor(counters), heartbeat=False)
    c.received["exec"] += 48
    c.received["connect"] += 7
    c.engine.alerts_by_rule["reverse-shell"] = 2
    for i in range(3):
        fan.write({"i": i})
    fan.flush()
    yield c, fan
    fan.close()


def _get(server: MetricsServer, path: str = "/metrics") -> tuple[int, str, str]:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type") or "", resp.read().decode()
    finally:
        conn.close()


@pytest.fixture
def serve() -> Iterator[Any]:
    servers: list[MetricsServer] = []

    def start(listen: str, snapshot: Any) -> MetricsServer:
        s = MetricsServer(listen, snapshot)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.close()


def test_collector_stats_over_http(collector, serve) -> None:
    c, fan = collector
    cfg = c.config

    def snapshot() -> dict[str, Any]:
        return {
            **c._metrics()["rlguard"],
            "sinks": fan.stats(),
            "ring_pages": cfg.probes.ring_pages,
        }

    server = serve("127.0.0.1:0", snapshot)
    assert server.url == f"http://127.0.0.1:{server.port}/metrics"
    status, ctype, body = _get(server)
    assert status == 200
    assert ctype == "text/plain; version=0.0.4; charset=utf-8"
    series, types = parse_exposition(body)

    def v(name: str, **labels: str) -> float:
        return series[("rlguard_" + name, tuple(sorted(labels.items())))]

    assert v("events_total", type="exec") == 48 and v("events_total", type="connect") == 7
    assert v("kernel_sent_total", type="exec") == 50
    assert v("kernel_drops_total", type="exec") == 2
    assert v("kernel_drops_total", type="connect") == 0
    assert v("kernel_misses_total", kind="tagset") == 3
    assert v("alerts_total", rule="reverse-shell") == 2
    assert v("process_table_size") == 0 and v("tagsets") == 0
    assert v("output_lines_written_total", sink="file") == 3
    assert v("output_lines_written_total", sink="file-2") == 0
    assert v("output_pending", sink="file-2") == 3  # /dev/full keeps them queued
    assert v("output_lines_lost_total", sink="file") == 0
    assert v("ring_pages") == cfg.probes.ring_pages
    assert v("uptime_seconds") > 0
    assert v("undecodable_total") == 0 and v("errors_total") == 0
    assert types["rlguard_events_total"] == "counter"
    assert types["rlguard_output_pending"] == "gauge"
    assert "rlguard_output_spool_bytes" not in types  # no spooling sink here
    # every metric the brief names is present
    for name in (
        "events_total",
        "kernel_sent_total",
        "kernel_drops_total",
        "kernel_misses_total",
        "alerts_total",
        "process_table_size",
        "tagsets",
        "output_lines_written_total",
        "output_lines_lost_total",
        "output_pending",
        "ring_pages",
        "uptime_seconds",
    ):
        assert "rlguard_" + name in types, name


def test_output_counters_without_a_sinks_entry() -> None:
    # a single sink: plain numbers, labelled sink="output"
    series, _ = parse_exposition(
        render({"output": {"lines_written": 10, "lines_lost": 1, "pending": 0, "error": None}})
    )
    assert series[("rlguard_output_lines_written_total", (("sink", "output"),))] == 10
    assert series[("rlguard_output_lines_lost_total", (("sink", "output"),))] == 1
    # FanoutSink counters inside the stats line: dicts by sink name
    series, _ = parse_exposition(
        render({"output": {"lines_written": {"file": 4, "siem": 3}, "pending": {"siem": 1}}})
    )
    assert series[("rlguard_output_lines_written_total", (("sink", "siem"),))] == 3
    assert series[("rlguard_output_pending", (("sink", "siem"),))] == 1


def test_spool_and_connection_gauges_and_odd_values() -> None:
    snap = {
        "sinks": {"siem": {"lines_written": 5, "lines_lost": 0, "pending": 2,
                           "spool_bytes": 4096, "connected": False}},
        "uptime_s": math.inf,
        "undecodable": None,  # missing values are left out, never shown as 0
        "errors": "n/a",
    }  # fmt: skip
    series, types = parse_exposition(render(snap))
    assert series[("rlguard_output_spool_bytes", (("sink", "siem"),))] == 4096
    assert series[("rlguard_output_connected", (("sink", "siem"),))] == 0
    assert series[("rlguard_uptime_seconds", ())] == math.inf
    assert "rlguard_undecodable_total" not in types and "rlguard_errors_total" not in types


def test_label_values_are_escaped() -> None:
    rule = 'odd "rule"\\with\nnewline'
    series, _ = parse_exposition(render({"alerts": {rule: 1}}))
    assert series[("rlguard_alerts_total", (("rule", rule),))] == 1


def test_only_metrics_path_and_broken_snapshot(serve) -> None:
    calls = 0

    def flaky() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("collector not started")
        return {"uptime_s": 1.5}

    server = serve("localhost:0", flaky)
    assert server.host == "127.0.0.1"
    assert _get(server, "/")[0] == 404
    assert _get(server, "/metrics/../etc")[0] == 404
    status, _, body = _get(server)
    assert status == 500 and "collector not started" in body
    status, _, body = _get(server)  # the server survived it
    assert status == 200 and "rlguard_uptime_seconds 1.5" in body


@pytest.mark.parametrize(
    "listen",
    [
        "0.0.0.0:9464",
        "10.1.2.3:9464",
        "[::]:9464",
        "[2001:db8::1]:9464",
        "metrics.example.com:9464",  # refused without a DNS lookup
        "127.0.0.1",
        "127.0.0.1:99999",
        "",
    ],
)
def test_refuses_anything_but_loopback(listen: str) -> None:
    with pytest.raises(ValueError, match="metrics_listen"):
        parse_listen(listen)
    with pytest.raises(ValueError):
        MetricsServer(listen, dict)


@pytest.mark.parametrize(
    ("listen", "want"),
    [
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        ("127.0.0.2:0", ("127.0.0.2", 0)),
        ("localhost:9464", ("127.0.0.1", 9464)),
        ("[::1]:9464", ("::1", 9464)),
    ],
)
def test_accepts_loopback(listen: str, want: tuple[str, int]) -> None:
    assert parse_listen(listen) == want


def test_ipv6_loopback(serve) -> None:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    server = serve("[::1]:0", lambda: {"uptime_s": 2})
    assert server.url.startswith("http://[::1]:")
    status, _, body = _get(server)
    assert status == 200 and "rlguard_uptime_seconds 2" in body


def test_prometheus_client_parses_it(collector) -> None:
    parser = pytest.importorskip("prometheus_client.parser")
    c, fan = collector
    text = render({**c._metrics()["rlguard"], "sinks": fan.stats(), "ring_pages": 64})
    families = {f.name: f for f in parser.text_string_to_metric_families(text)}
    assert families["rlguard_events"].type == "counter"
    assert {s.labels["type"]: s.value for s in families["rlguard_events"].samples} == {
        "exec": 48,
        "connect": 7,
    }
