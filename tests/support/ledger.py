"""Typed records for the episode ledger, as the collector hands them over (tests and bench).

Each builder returns an input: a callable that gives its record to a ledger at the
record's wall-clock time (ns).  ``feed(ledger, *inputs)`` runs them in order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from monitor.detectors.engine import Finding
from monitor.detectors.rules import Rule
from monitor.detectors.signals import Signal
from monitor.sensor.events import ConnectEvent, DnsEvent, Event, ExecEvent, ForkEvent, SendEvent
from monitor.sinks.ledger import EpisodeLedger
from monitor.state.attributed import AttributedEvent, RlContext
from monitor.state.registry.records import RegistryRecord
from tests.support.events import hdr

Input = Callable[[EpisodeLedger], None]
EVENTS: dict[str, type[Event]] = {
    "connect": ConnectEvent,
    "dns": DnsEvent,
    "send": SendEvent,
    "exec": ExecEvent,
}


def feed(ledger: EpisodeLedger, *inputs: Input) -> None:
    for give in inputs:
        give(ledger)


def event(
    action: str, eid: str | None, ts: int, run: str | None = "run-1", daddr: str | None = None
) -> Input:
    """An event line of EID (attributed by tags) at TS; ``daddr`` for connect/dns/send."""
    cls = EVENTS.get(action, ForkEvent)
    ev = cls(**hdr(1), **({"daddr": daddr} if daddr else {}))  # type: ignore[arg-type]
    ae = AttributedEvent(ev, None, None, [], RlContext(episode_id=eid, run_id=run))
    return lambda led: led.on_event(ae, ts)


def finding(eid: str | None, rule: str = "RLG-MIN-001", severity: str = "critical") -> Finding:
    """A finding of RULE at SEVERITY raised on an event of EID."""
    sev = {"low": severity, "medium": severity, "high": severity}
    r = Rule(rule, rule, "", "mining", (), sev, ())
    trigger = AttributedEvent(
        ConnectEvent(**hdr(1)), None, None, [], RlContext(episode_id=eid, run_id="run-1")
    )
    return Finding(r, "subject", [Signal("payload", "x", "x", "high")], trigger)


def alert(eid: str | None, ts: int, severity: str = "critical", rule: str = "RLG-MIN-001") -> Input:
    f = finding(eid, rule, severity)
    return lambda led: led.on_finding(f, ts)


def registry(
    op: str,
    eid: str | None,
    ts: int,
    run: str | None = "run-1",
    trajectory: str | None = None,
    **fields: Any,
) -> Input:
    """The registry's record of OP (episode_start/episode_end/run_end) at TS."""
    rec = RegistryRecord(op, ts, ts, eid, run, trajectory, None, **fields)
    return lambda led: led.on_registry(rec)


def drops(n: int, ts: int) -> Input:
    return lambda led: led.on_drops(n, ts)


def gap(lo: int, hi: int, same_boot: bool = True) -> Input:
    return lambda led: led.on_gap(lo, hi, same_boot, hi)


def stats(undecodable: int, ts: int) -> Input:
    return lambda led: led.on_stats(undecodable, ts)
