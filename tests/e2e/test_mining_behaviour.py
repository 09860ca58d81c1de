"""The mining behaviour rule (RLG-MIN-006) end to end: a long TLS connection with small
periodic writes, from a process in an episode that burns CPU, to an address nothing else
uses; and the look-alikes that must stay silent (no CPU, no episode, a shared address).

Thresholds are shortened for the test (seconds, not minutes); each case gets a namespace
host of its own, so no address is shared by accident.  A silent case is judged only after
the monitor saw the connection's activity ticks: it had every chance to fire.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from monitor.config import load_config
from monitor.lab.relays import LabHost
from monitor.sensor.events import StreamTickEvent
from monitor.state.attributed import AttributedEvent
from tests.support.live import LiveMonitor

pytestmark = pytest.mark.e2e

MIN_AGE_S = 4.0
INTERVALS = 3
# the test host is shared: a burner gets a fraction of a core under load, an idle client a
# few hundredths at most
CPU_FRACTION = 0.05


class Ticks:
    def __init__(self) -> None:
        self.by_port: dict[tuple[str | None, int], int] = {}
        self.lock = threading.Lock()

    def __call__(self, ae: AttributedEvent) -> None:
        ev = ae.event
        if isinstance(ev, StreamTickEvent):
            with self.lock:
                key = (ev.daddr, ev.dport)
                self.by_port[key] = self.by_port.get(key, 0) + 1


@pytest.fixture(scope="module")
def mon() -> Iterator[tuple[LiveMonitor, Ticks]]:
    cfg = load_config(None)
    cfg = dataclasses.replace(
        cfg,
        streams=dataclasses.replace(cfg.streams, activity_interval_s=1),
        mining_behaviour=dataclasses.replace(
            cfg.mining_behaviour,
            min_age_s=MIN_AGE_S,
            min_active_intervals=INTERVALS,
            cpu_fraction=CPU_FRACTION,
        ),
    )
    m = LiveMonitor(cfg)
    ticks = Ticks()
    m.collector.observers.append(ticks)
    m.start()
    try:
        yield m, ticks
    finally:
        m.stop()


@pytest.fixture(scope="module")
def hosts() -> Iterator[Callable[[], LabHost]]:
    made: list[LabHost] = []

    def new() -> LabHost:
        h = LabHost()
        h.up()
        made.append(h)
        h.start_lab("tlspool:3443")
        return h

    try:
        yield new
    finally:
        for h in made:
            h.down()


CLIENT = textwrap.dedent(
    r"""
    import os, socket, ssl, sys, threading, time
    ip, ca, burn = sys.argv[1], sys.argv[2], sys.argv[3] == "burn"
    if burn:  # hashing releases the GIL: two threads can keep two cores busy
        import hashlib
        block = os.urandom(1 << 20)
        def spin():
            while True:
                hashlib.sha256(block).digest()
        for _ in range(2):
            threading.Thread(target=spin, daemon=True).start()
    ctx = ssl.create_default_context(cafile=ca)
    s = ctx.wrap_socket(socket.create_connection((ip, 3443), timeout=10),
                        server_hostname="pool.example")
    end = time.time() + float(sys.argv[4])
    while time.time() < end:
        s.sendall(os.urandom(48).hex().encode() + b"\n")  # a share-sized write
        s.recv(200)
        time.sleep(0.4)
    """
)


def run(h: LabHost, ep: str | None, burn: bool, seconds: float = 8.0) -> None:
    env = {"PATH": "/usr/bin:/bin", "RL_WORKER_ID": "w-behaviour"}
    if ep is not None:
        env["RL_EPISODE_ID"] = ep
    res = subprocess.run(
        [sys.executable, "-c", CLIENT, h.ip4, str(h.ca), "burn" if burn else "idle", str(seconds)],
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr.decode()[-1500:]


def shape_alerts(m: LiveMonitor, ip: str) -> list[dict]:
    return m.sink.find_all(
        lambda d: (
            d["event"]["kind"] == "alert"
            and d["rule"]["id"] == "RLG-MIN-006"
            and d["rlguard"]["alert"]["connection"]["ip"] == ip
        )
    )


def assert_judged_silent(m: LiveMonitor, ticks: Ticks, h: LabHost) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with ticks.lock:
            seen = ticks.by_port.get((h.ip4, 3443), 0)
        if seen >= INTERVALS + 2:
            break
        time.sleep(0.2)
    assert seen >= INTERVALS + 2, "the monitor saw the connection's activity"
    time.sleep(0.5)
    assert not shape_alerts(m, h.ip4)


def test_burner_in_an_episode_on_a_private_address_is_flagged(mon, hosts) -> None:
    m, _ = mon
    h = hosts()
    ep = f"ep-{uuid.uuid4().hex[:8]}"
    run(h, ep, burn=True)
    a = m.wait_for(
        lambda d: (
            d["event"]["kind"] == "alert"
            and d["rule"]["id"] == "RLG-MIN-006"
            and d.get("rl", {}).get("episode_id") == ep
        ),
        timeout=20,
    )
    assert a["rlguard"]["alert"]["severity"] == "low"
    assert a["rlguard"]["alert"]["connection"]["port"] == 3443
    assert a["rl"]["worker_id"] == "w-behaviour"


def test_idle_process_is_silent(mon, hosts) -> None:
    m, ticks = mon
    h = hosts()
    run(h, f"ep-{uuid.uuid4().hex[:8]}", burn=False)
    assert_judged_silent(m, ticks, h)


def test_trainer_outside_any_episode_is_silent(mon, hosts) -> None:
    m, ticks = mon
    h = hosts()
    run(h, None, burn=True)
    assert_judged_silent(m, ticks, h)


def test_a_shared_destination_is_silent(mon, hosts) -> None:
    m, ticks = mon
    h = hosts()
    run(h, None, burn=False, seconds=0.5)  # another process talks to the same address first
    run(h, f"ep-{uuid.uuid4().hex[:8]}", burn=True)
    assert_judged_silent(m, ticks, h)
