"""The episode ledger, fed with synthetic record streams and a synthetic clock."""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from monitor.cli import app
from monitor.config import LedgerConfig, load_config
from monitor.sinks.ledger import (
    DROP_LOOKBACK_NS,
    SCHEMA_VERSION,
    EpisodeLedger,
    LedgerError,
    SqliteStore,
    format_table,
    iso,
    json_line,
    parse_iso,
    parse_since,
    read_episodes,
)
from monitor.state.registry.records import RegistryRecord
from tests.support import ledger as support
from tests.support.ledger import Input, feed
from tests.support.sensor import FakeSensor

pytestmark = pytest.mark.unit

S = 1_000_000_000
T0 = 1_800_000_000 * S  # 2027-01-15, a whole second
GRACE = 10


def cfg(**changes: Any) -> LedgerConfig:
    base = dataclasses.replace(
        load_config(None).ledger, verdict_grace_s=GRACE, idle_end_s=60.0, stale_end_s=3600.0
    )
    return dataclasses.replace(base, **changes)


def at(sec: float) -> int:
    return T0 + int(sec * S)


# what the collector hands the ledger (tests/support/ledger.py), at T0 + seconds


def rec(action: str, eid: str | None, sec: float, run: str | None = "run-1", **extra: Any) -> Input:
    daddr = extra["destination"]["ip"] if "destination" in extra else None
    return support.event(action, eid, at(sec), run, daddr)


def connect(eid: str | None, sec: float, ip: str = "127.0.0.1", port: int = 80) -> Input:
    return rec("connect", eid, sec, destination={"ip": ip, "port": port})


def alert(eid: str | None, sec: float, rule: str = "RLG-MIN-001", sev: str = "critical") -> Input:
    return support.alert(eid, at(sec), sev, rule)


def reg(action: str, eid: str | None, sec: float, run: str = "run-1", **registry: Any) -> Input:
    trajectory = f"traj-{eid}" if eid else None
    return support.registry(action, eid, at(sec), run, trajectory, **registry)


def dropped(sec: float, n: int = 5) -> Input:
    return support.drops(n, at(sec))


def gap(lo: float, hi: float, same_boot: bool = True) -> Input:
    return support.gap(at(lo), at(hi), same_boot)


def stats(sec: float, undecodable: int) -> Input:
    return support.stats(undecodable, at(sec))


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "episodes.db"


def verdicts(out: list[dict]) -> list[dict]:
    return [d for d in out if d["event"]["dataset"] == "rlguard.verdict"]


def v(doc: dict) -> dict:
    return doc["rlguard"]["verdict"]


def episode(ledger: EpisodeLedger, eid: str) -> dict:
    assert ledger.flush(at(0))
    return next(e for e in read_episodes(ledger.path) if e["episode_id"] == eid)


def run_episode(ledger: EpisodeLedger, eid: str, start: float, end: float, *records: Input) -> None:
    feed(ledger, reg("episode_start", eid, start), *records, reg("episode_end", eid, end))


# --- verdict rules ---------------------------------------------------------------------------


def test_clean_episode_is_kept_after_the_grace_period(db: Path) -> None:
    led = EpisodeLedger(db, cfg(), now_ns=at(0), host={"hostname": "h"})
    run_episode(
        led,
        "ep-1",
        1,
        20,
        rec("exec", "ep-1", 2),
        connect("ep-1", 3, "127.0.0.1"),
        connect("ep-1", 4, "198.51.100.7", 443),
        connect("ep-1", 5, "198.51.100.7", 8443),
        rec("dns", "ep-1", 6, destination={"ip": "10.0.0.53", "port": 53}),
    )
    assert verdicts(led.due(at(20 + GRACE) - 1)) == []
    (out,) = verdicts(led.due(at(20 + GRACE)))
    assert out["event"] == {
        "kind": "event",
        "dataset": "rlguard.verdict",
        "action": "episode_verdict",
    }
    assert out["rl"] == {
        "run_id": "run-1",
        "episode_id": "ep-1",
        "trajectory_id": "traj-ep-1",
        "sandbox_id": None,
    }
    assert out["host"] == {"hostname": "h"}
    body = v(out)
    assert (body["verdict"], body["reasons"], body["revision"]) == ("keep", [], 1)
    assert body["window"] == {"start": iso(at(1)), "end": iso(at(20))}
    assert body["counts"] == {
        "events": 5,
        "execs": 1,
        "connects": 3,
        "dns": 1,
        "external_destinations": 1,
        "destinations_overflow": 0,
    }
    assert body["coverage"]["complete"] is True
    assert verdicts(led.due(at(100))) == []  # once only
    led.close()


@pytest.mark.parametrize(
    ("severity", "verdict"),
    [("critical", "drop"), ("high", "review"), ("medium", "review"), ("low", "keep")],
)
def test_alert_severity_decides(db: Path, severity: str, verdict: str) -> None:
    led = EpisodeLedger(db, cfg(), now_ns=at(0))
    run_episode(led, "ep", 1, 5, alert("ep", 2, "RLG-X-1", severity))
    (out,) = verdicts(led.due(at(5 + GRACE)))
    assert v(out)["verdict"] == verdict
    expected = [] if severity == "low" else [f"alert:RLG-X-1:{severity}"]
    assert v(out)["reasons"] == expected
    assert v(out)["flagged"] is (severity == "critical")
    assert v(out)["alerts"][0]["rule_id"] == "RLG-X-1"


def test_severity_mapping_is_configuration(db: Path) -> None:
    led = EpisodeLedger(db, cfg(drop_on=("critical", "high"), review_on=("low",)), now_ns=at(0))
    run_episode(led, "a", 1, 5, alert("a", 2, "RLG-TUN-002", "high"))
    run_episode(led, "b", 1, 5, alert("b", 2, "RLG-MIN-004", "low"))
    run_episode(led, "c", 1, 5, alert("c", 2, "RLG-X", "medium"))
    got = {d["rl"]["episode_id"]: v(d) for d in led.due(at(100))}
    assert got["a"]["verdict"] == "drop"
    assert got["b"]["verdict"] == "review"
    assert got["c"]["verdict"] == "keep"


def test_drop_reasons_list_every_rule_and_tag_conflicts_review(db: Path) -> None:
    led = EpisodeLedger(db, cfg(), now_ns=at(0))
    run_episode(
        led,
        "ep",
        1,
        9,
        alert("ep", 2, "RLG-MIN-001", "critical"),
        alert("ep", 3, "RLG-TUN-001", "critical"),
        alert("ep", 4, "RLG-ATTR-001", "high"),
        alert("ep", 5, "RLG-MIN-001", "high"),  # same rule, lower: stays critical
    )
    (out,) = verdicts(led.due(at(100)))
    assert v(out)["verdict"] == "drop"
    assert v(out)["reasons"] == [
        "alert:RLG-MIN-001:critical",
        "alert:RLG-TUN-001:critical",
        "alert:RLG-ATTR-001:high",
    ]
    counts = {a["rule_id"]: a["count"] for a in v(out)["alerts"]}
    assert counts == {"RLG-ATTR-001": 1, "RLG-MIN-001": 2, "RLG-TUN-001": 1}


def test_unattributed_records_touch_no_episode(db: Path) -> None:
    led = EpisodeLedger(db, cfg(), now_ns=at(0))
    run_episode(led, "ep", 1, 5, alert(None, 2), connect(None, 3), rec("exec", "", 3))
    (out,) = verdicts(led.due(at(100)))
    assert v(out)["verdict"] == "keep"
    assert v(out)["counts"]["events"] == 0
    assert [e["episode_id"] for e in read_episodes(str(db))] == ["ep"]


# --- coverage --------------------------------------------------------------------------------


def test_drops_during_the_window_mean_review(db: Path) -> None:
    led = EpisodeLedger(db, cfg(), now_ns=at(0))
    run_episode(led, "in", 10, 20, dropped(15, 7))
    (out,) = verdicts(led.due(at(100)))
    assert v(out)["verdict"] == "review"
    assert v(out)["reasons"] == ["events_dropped"]
    assert v(out)["coverage"]["events_dropped"] == 7
    assert v(out)["coverage"]["complete"] is False


def test_drops_outside_the_window_do_not_count(db: Path) -> None:
    led = EpisodeLedger(db, cfg(), now_ns=at(0))
    feed(led, dropped(5))  # before it began
    run_episode(led, "ep", 10, 20)
    feed(led, dropped(20 + DROP_LOOKBACK_NS / S + 1))  # well after its end
    (out,) = verdicts(led.due(at(100)))
    assert v(out)["verdict"] == "keep"


def test_a_drop_reported_just_after_the_end_still_counts(db: Path) -> None:
    # the counters are read once a second: a drop reported at end+1s may be ours
    led = EpisodeLedger(db, cfg(), now_ns=at(0))
    run_episode(led, "ep", 10, 20)
    feed(led, dropped(21))
    (out,) = verdicts(led.due(at(100)))
    assert v(out)["verdict"] == "review"


def test_drops_reach_an_open_tag_only_episode(db: Path) -> None:
    led = EpisodeLedger(db, cfg(), now_ns=at(0))
    feed(led, rec("exec", "tagged", 1), dropped(30), rec("exec", "tagged", 40))
    (out,) = verdicts(led.due(at(40 + 60 + GRACE)))
    assert v(out)["verdict"] == "review"


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    start=st.integers(0, 100),
    length=st.integers(0, 100),
    drop_at=st.integers(0, 100),
    severities=st.lists(st.sampled_from(["low", "medium", "high"]), max_size=3),
)
def test_drops_in_the_window_never_keep(
    tmp_path_factory: pytest.TempPathFactory,
    start: int,
    length: int,
    drop_at: int,
    severities: list[str],
) -> None:
    db = tmp_path_factory.mktemp("prop") / "e.db"
    led = EpisodeLedger(db, cfg(), now_ns=at(0))
    end = start + length
    alerts = [alert("ep", start, f"R{i}", s) for i, s in enumerate(severities)]
    feed(led, reg("episode_start", "ep", start), *alerts)
    if drop_at <= end:
        feed(led, dropped(max(drop_at, start)))
    feed(led, reg("episode_end", "ep", end))
    (out,) = verdicts(led.due(at(1000)))
    if drop_at <= end:
        assert v(out)["verdict"] == "review"
        assert "events_dropped" in v(out)["reasons"]
    assert v(out)["verdict"] != "drop"
    led.close()


def test_gap_overlapping_the_window_means_review(db: Path) -> None:
    led = EpisodeLedger(db, cfg(), now_ns=at(0))
    run_episode(led, "hit", 10, 20)
    run_episode(led, "before", 1, 2)
    feed(led, gap(15, 30))
    run_episode(led, "after", 40, 50)
    got = {d["rl"]["episode_id"]: v(d) for d in verdicts(led.due(at(100)))}
    assert got["hit"]["verdict"] == "review"
    assert got["hit"]["reasons"] == ["monitoring_gap"]
    assert got["hit"]["coverage"]["monitoring_gaps"] == [{"start": iso(at(15)), "end": iso(at(30))}]
    assert got["before"]["verdict"] == "keep"
    assert got["after"]["verdict"] == "keep"


def test_undecodable_records_during_the_window_mean_review(db: Path) -> None:
    led = EpisodeLedger(db, cfg(), now_ns=at(0))
    feed(led, stats(0, 0))
    run_episode(led, "ep", 1, 5)
    feed(led, stats(10, 3))  # three undecodable records between 0 and 10
    run_episode(led, "later", 20, 25)
    feed(led, stats(30, 3))
    got = {d["rl"]["episode_id"]: v(d) for d in verdicts(led.due(at(100)))}
    assert got["ep"]["reasons"] == ["undecodable"]
    assert got["ep"]["coverage"]["undecodable"] == 3
    assert got["later"]["verdict"] == "keep"


def test_registry_end_without_start_is_review(db: Path) -> None:
    led = EpisodeLedger(db, cfg(), now_ns=at(0))
    feed(led, reg("episode_end", "ghost", 5, status="ok"))
    (out,) = verdicts(led.due(at(100)))
    assert v(out)["reasons"] == ["start_not_seen"]
    assert v(out)["status"] == "ok"


# --- revisions ---------------------------------------------------------------------------------


def test_late_alert_revises_the_verdict(db: Path) -> None:
    led = EpisodeLedger(db, cfg(), now_ns=at(0))
    run_episode(led, "ep", 1, 5, connect("ep", 2))
    (first,) = verdicts(led.due(at(5 + GRACE)))
    assert (v(first)["verdict"], v(first)["revision"]) == ("keep", 1)
    feed(led, alert("ep", 40, "RLG-MIN-001", "critical"))  # a late finding
    (second,) = verdicts(led.due(at(40)))
    assert (v(second)["verdict"], v(second)["revision"]) == ("drop", 2)
    assert v(second)["reasons"] == ["alert:RLG-MIN-001:critical"]
    feed(led, alert("ep", 41, "RLG-MIN-001", "critical"))  # nothing new to say
    assert verdicts(led.due(at(42))) == []
    feed(led, connect("ep", 43))  # a count alone does not revise
    assert verdicts(led.due(at(44))) == []
    assert episode(led, "ep")["counts"]["connects"] == 2
    hist = sqlite3.connect(db).execute(
        "SELECT revision, verdict FROM verdicts WHERE episode_id = 'ep' ORDER BY revision"
    )
    assert list(hist) == [(1, "keep"), (2, "drop")]


def test_alert_within_the_grace_period_is_in_the_first_verdict(db: Path) -> None:
    led = EpisodeLedger(db, cfg(), now_ns=at(0))
    run_episode(led, "ep", 1, 5)
    assert led.due(at(6)) == []
    feed(led, alert("ep", 7, "RLG-TUN-001", "high"))
    (out,) = verdicts(led.due(at(5 + GRACE)))
    assert (v(out)["verdict"], v(out)["revision"]) == ("review", 1)


def test_birth_episode_counts_by_the_records_episode_not_by_time(db: Path) -> None:
    """A background process born in episode 1 connects during episode 2: episode 1's."""
    led = EpisodeLedger(db, cfg(), now_ns=at(0))
    run_episode(led, "ep-1", 1, 10, rec("exec", "ep-1", 2))
    (first,) = verdicts(led.due(at(10 + GRACE)))
    feed(led, reg("episode_start", "ep-2", 30))
    # attribution put episode 1 on these records, while episode 2 is the open one
    feed(led, connect("ep-1", 35, "203.0.113.9", 3333), alert("ep-1", 35, "RLG-MIN-001"))
    revised = verdicts(led.due(at(36)))
    feed(led, reg("episode_end", "ep-2", 40))
    later = verdicts(led.due(at(40 + GRACE)))
    assert [d["rl"]["episode_id"] for d in revised] == ["ep-1"]
    assert (v(revised[0])["verdict"], v(revised[0])["revision"]) == ("drop", 2)
    assert v(revised[0])["counts"]["connects"] == 1
    assert v(revised[0])["window"]["end"] == iso(at(10))  # the window does not move
    assert [(d["rl"]["episode_id"], v(d)["verdict"]) for d in later] == [("ep-2", "keep")]
    assert v(later[0])["counts"]["connects"] == 0
    flagged = read_episodes(str(db), flagged=True)
    assert [e["episode_id"] for e in flagged] == ["ep-1"]


def test_tag_only_episode_ends_when_idle_and_revives(db: Path) -> None:
    led = EpisodeLedger(db, cfg(idle_end_s=60), now_ns=at(0))
    feed(led, rec("exec", "tags", 1), connect("tags", 5))
    assert verdicts(led.due(at(5 + 59))) == []
    (out,) = verdicts(led.due(at(5 + 60 + GRACE)))
    assert v(out)["window"] == {"start": iso(at(1)), "end": iso(at(5))}
    assert (v(out)["verdict"], v(out)["revision"], v(out)["source"]) == ("keep", 1, "tags")
    assert v(out)["end_reason"] == "idle"
    feed(led, rec("exec", "tags", 200))  # more records: the end was a guess
    assert verdicts(led.due(at(201))) == []
    assert episode(led, "tags")["open"] is True
    (again,) = verdicts(led.due(at(200 + 60 + GRACE)))
    assert v(again)["revision"] == 2
    assert v(again)["window"]["end"] == iso(at(200))
    assert v(again)["counts"]["execs"] == 2


def test_registry_upgrades_a_tag_episode_and_run_end_closes_it(db: Path) -> None:
    led = EpisodeLedger(db, cfg(), now_ns=at(0))
    feed(led, rec("exec", "ep", 1), reg("episode_start", "ep", 2), rec("exec", "ep", 3))
    feed(led, reg("run_end", None, 8))
    (out,) = verdicts(led.due(at(8 + GRACE)))
    assert v(out)["source"] == "registry"
    assert v(out)["window"] == {"start": iso(at(1)), "end": iso(at(8))}
    assert v(out)["end_reason"] == "run_end"
    assert v(out)["verdict"] == "keep"


def test_stale_registry_episode_is_closed_as_review(db: Path) -> None:
    led = EpisodeLedger(db, cfg(stale_end_s=100), now_ns=at(0))
    feed(led, reg("episode_start", "ep", 1), rec("exec", "ep", 2))
    assert verdicts(led.due(at(50))) == []
    (out,) = verdicts(led.due(at(2 + 100 + GRACE)))
    assert v(out)["reasons"] == ["end_not_seen"]


# --- restart ---------------------------------------------------------------------------------


def test_state_and_revisions_survive_a_restart(db: Path) -> None:
    led = EpisodeLedger(db, cfg(), now_ns=at(0))
    run_episode(led, "done", 1, 5, connect("done", 2, "198.51.100.1"), alert("done", 3, sev="high"))
    feed(led, reg("episode_start", "open", 6), rec("exec", "open", 7))
    (first,) = verdicts(led.due(at(5 + GRACE)))
    assert v(first)["verdict"] == "review"
    led.close(at(20))

    led = EpisodeLedger(db, cfg(), now_ns=at(50))  # the monitor was down from 20 to 50
    assert verdicts(led.due(at(50))) == []
    stored = episode(led, "done")
    assert stored["revision"] == 1 and stored["verdict"] == "review"
    assert stored["counts"]["connects"] == 1 and stored["counts"]["external_destinations"] == 1
    feed(led, alert("done", 60, "RLG-MIN-001", "critical"))
    (revised,) = verdicts(led.due(at(60)))
    assert v(revised)["revision"] == 2
    feed(led, reg("episode_end", "open", 70))
    (out,) = verdicts(led.due(at(70 + GRACE)))
    assert out["rl"]["episode_id"] == "open"
    assert v(out)["verdict"] == "review"  # it was open while nothing watched
    assert v(out)["reasons"] == ["monitoring_gap"]
    assert v(out)["coverage"]["monitoring_gaps"] == [{"start": iso(at(20)), "end": iso(at(50))}]
    assert v(out)["counts"]["execs"] == 1
    led.close()


def test_gap_record_after_restart_widens_the_gap_and_reaches_recent_episodes(db: Path) -> None:
    led = EpisodeLedger(db, cfg(), now_ns=at(0))
    run_episode(led, "ended-late", 1, 18)
    feed(led, reg("episode_start", "open", 6))
    assert len(verdicts(led.due(at(18 + GRACE)))) == 1
    led.close(at(30))
    led = EpisodeLedger(db, cfg(max_episodes=10), now_ns=at(60))
    # the heartbeat last beat at 15 (it beats every 10 s): the gap starts there
    feed(led, gap(15, 60))
    got = {d["rl"]["episode_id"]: v(d) for d in verdicts(led.due(at(61)))}
    assert got["ended-late"]["revision"] == 2
    assert got["ended-late"]["reasons"] == ["monitoring_gap"]
    feed(led, reg("episode_end", "open", 70))
    (out,) = verdicts(led.due(at(80)))
    assert out["rl"]["episode_id"] == "open"
    assert v(out)["coverage"]["monitoring_gaps"] == [{"start": iso(at(15)), "end": iso(at(60))}]


def test_reboot_ends_open_episodes(db: Path) -> None:
    led = EpisodeLedger(db, cfg(), now_ns=at(0))
    feed(led, reg("episode_start", "ep", 1), rec("exec", "ep", 2))
    led.close(at(5))
    led = EpisodeLedger(db, cfg(), now_ns=at(100))
    feed(led, gap(5, 100, same_boot=False))
    (out,) = verdicts(led.due(at(100 + GRACE)))
    assert v(out)["end_reason"] == "reboot"
    assert v(out)["reasons"] == ["monitoring_gap", "end_not_seen"]


def test_pending_verdict_is_written_after_a_restart(db: Path) -> None:
    led = EpisodeLedger(db, cfg(), now_ns=at(0))
    run_episode(led, "ep", 1, 5)
    led.due(at(6))  # ended, verdict not yet due
    led.close(at(6))
    led = EpisodeLedger(db, cfg(), now_ns=at(8))
    (out,) = verdicts(led.due(at(5 + GRACE)))
    assert (v(out)["verdict"], v(out)["revision"]) == ("keep", 1)


# --- flagged, reading ------------------------------------------------------------------------


def test_flagged_is_exactly_the_episodes_with_critical_alerts(db: Path) -> None:
    led = EpisodeLedger(db, cfg(drop_on=("critical", "high"), review_on=("medium",)), now_ns=at(0))
    run_episode(led, "crit", 1, 5, alert("crit", 2, "A", "critical"))
    run_episode(led, "high", 1, 5, alert("high", 2, "B", "high"))  # drop, but not flagged
    run_episode(led, "gap", 1, 5, dropped(3))
    run_episode(led, "late", 1, 5)
    run_episode(led, "clean", 1, 5, alert("clean", 2, "C", "low"))
    led.due(at(100))
    feed(led, alert("late", 200, "D", "critical"))
    led.due(at(200))
    assert {e["episode_id"] for e in read_episodes(str(db), flagged=True)} == {"crit", "late"}
    assert all(e["flagged"] for e in read_episodes(str(db), flagged=True))
    led.close()


def test_read_filters_run_and_since(db: Path) -> None:
    led = EpisodeLedger(db, cfg(), now_ns=at(0))
    feed(led, reg("episode_start", "a", 1, run="r-a"), reg("episode_end", "a", 2, run="r-a"))
    feed(led, reg("episode_start", "b", 100, run="r-b"), reg("episode_end", "b", 200, run="r-b"))
    feed(led, reg("episode_start", "c", 300, run="r-b"))
    led.due(at(400))
    assert [e["episode_id"] for e in read_episodes(str(db), run="r-b")] == ["b", "c"]
    assert [e["episode_id"] for e in read_episodes(str(db), since_ns=at(150))] == ["b", "c"]
    assert [e["episode_id"] for e in read_episodes(str(db), since_ns=at(250))] == ["c"]


def test_parse_since_and_iso() -> None:
    now = at(10_000)
    assert parse_since("2h", now) == now - 7200 * S
    assert parse_since("30m", now) == now - 1800 * S
    assert parse_since("1.5s", now) == now - 1_500_000_000
    assert parse_since("7d", now) == now - 7 * 86400 * S
    assert parse_since(iso(at(5)), now) == at(5)
    assert parse_since("2027-01-15T08:00:00+01:00") == parse_iso("2027-01-15T07:00:00Z")
    for bad in ("yesterday", "-2h", "h", ""):
        with pytest.raises(ValueError):
            parse_since(bad, now)
    assert parse_iso(iso(at(1.25))) == at(1.25)
    assert parse_iso("2026-11-27T04:34:41.662440Z") == 1795754081662440000
    assert parse_iso(None) is None and parse_iso("nope") is None


# --- a broken database never stops the stream ------------------------------------------------


def errors(out: list[dict]) -> list[dict]:
    return [d for d in out if d["event"]["action"] == "ledger_error"]


def test_path_that_cannot_exist_reports_once_and_keeps_judging(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    led = EpisodeLedger(blocker / "episodes.db", cfg(), now_ns=at(0))
    assert not led.persisting
    run_episode(led, "ep", 1, 5, alert("ep", 2))
    out = led.due(at(5 + GRACE))
    (err,) = errors(out)
    assert err["event"]["kind"] == "metric" and err["event"]["dataset"] == "rlguard.lifecycle"
    assert str(blocker) in err["rlguard"]["message"]
    assert err["rlguard"]["ledger"]["persisting"] is False
    (verdict,) = verdicts(out)
    assert v(verdict)["verdict"] == "drop"
    assert errors(led.due(at(5 + GRACE + 100))) == []  # reported once, retried quietly
    led.close()


def test_corrupt_file_is_reported_and_left_alone(db: Path) -> None:
    db.parent.mkdir(parents=True)
    garbage = b"this is not sqlite\x00" * 400
    db.write_bytes(garbage)
    led = EpisodeLedger(db, cfg(), now_ns=at(0))
    run_episode(led, "ep", 1, 5)
    out = led.due(at(5 + GRACE))
    (err,) = errors(out)
    assert "corrupt" in err["rlguard"]["message"]
    assert len(verdicts(out)) == 1
    led.close()
    assert db.read_bytes() == garbage
    with pytest.raises(LedgerError, match="cannot"):
        read_episodes(str(db))


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() != 0:
        ro.chmod(0o555)
        yield ro
        ro.chmod(0o755)
        return
    # root ignores permission bits: a read-only mount is what stops it
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)])
    if res.returncode != 0:
        pytest.skip("cannot mount a read-only tmpfs here")
    try:
        yield ro
    finally:
        subprocess.run(["umount", str(ro)])


def test_read_only_directory_is_reported(read_only_dir: Path) -> None:
    led = EpisodeLedger(read_only_dir / "episodes.db", cfg(), now_ns=at(0))
    run_episode(led, "ep", 1, 5)
    out = led.due(at(5 + GRACE))
    assert len(errors(out)) == 1 and len(verdicts(out)) == 1
    led.close()


def test_full_disk_is_reported_and_recovered(db: Path) -> None:
    led = EpisodeLedger(db, cfg(), now_ns=at(0))
    assert led.persisting and led.due(at(0)) == []
    assert isinstance(led.store, SqliteStore)
    conn = led.store.conn
    assert conn is not None
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")  # SQLITE_FULL from here on
    for i in range(300):
        run_episode(led, f"ep-{i}", 1, 5, connect(f"ep-{i}", 2, f"198.51.{i % 250}.1"))
    out = led.due(at(5 + GRACE))
    assert len(verdicts(out)) == 300
    (err,) = errors(out)
    assert "full" in err["rlguard"]["message"]
    conn.execute("PRAGMA max_page_count = 1000000")
    out = led.due(at(5 + GRACE + 31))  # retried after RETRY_NS
    assert [d["event"]["action"] for d in out] == ["ledger_recovered"]
    assert len(read_episodes(str(db))) == 300
    n = sqlite3.connect(db).execute("SELECT count(*) FROM verdicts").fetchone()[0]
    assert n == 300  # the verdict history written while the disk was full is not lost
    led.close()


def test_newer_schema_is_refused(db: Path) -> None:
    EpisodeLedger(db, cfg(), now_ns=at(0)).close()
    conn = sqlite3.connect(db)
    conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    conn.commit()
    conn.close()
    led = EpisodeLedger(db, cfg(), now_ns=at(0))
    assert "newer" in errors(led.due(at(1)))[0]["rlguard"]["message"]
    with pytest.raises(LedgerError, match="schema version"):
        read_episodes(str(db))


def test_missing_database_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match="no episode ledger at"):
        read_episodes(str(tmp_path / "none.db"))


def test_records_without_an_episode_or_content_change_nothing(db: Path) -> None:
    led = EpisodeLedger(db, cfg(), now_ns=at(0))
    feed(led, rec("connect", None, 1), rec("exec", "", 2), dropped(3, 0), gap(5, 4), stats(6, 0))
    feed(led, reg("episode_end", None, 7), reg("run_end", None, 8), alert(None, 9))
    assert led.episodes == {} and led.observe_errors == 0
    led.close()


# --- bounded memory --------------------------------------------------------------------------


def test_destinations_are_bounded(db: Path) -> None:
    led = EpisodeLedger(db, cfg(max_destinations=3), now_ns=at(0))
    run_episode(led, "ep", 1, 5, *(connect("ep", 2, f"198.51.100.{i}") for i in range(10)))
    (out,) = verdicts(led.due(at(100)))
    assert v(out)["counts"]["external_destinations"] == 3
    assert v(out)["counts"]["destinations_overflow"] == 7


def test_episodes_in_memory_are_bounded(db: Path) -> None:
    led = EpisodeLedger(db, cfg(max_episodes=10), now_ns=at(0))
    for i in range(50):
        run_episode(led, f"done-{i}", 1, 2)
    led.due(at(100))
    led.due(at(200))
    assert len(led.episodes) <= 10
    for i in range(30):  # tag-only episodes, all still open
        feed(led, rec("exec", f"tag-{i}", 300 + i))
    out = verdicts(led.due(at(340)))  # none idle for 60 s yet
    assert len(led.episodes) <= 30
    assert len(out) == 20  # the longest idle were ended early and judged
    feed(led, connect("done-3", 500, "203.0.113.1"))  # comes back from the database
    feed(led, alert("done-3", 500))
    (revised,) = [d for d in verdicts(led.due(at(501))) if d["rl"]["episode_id"] == "done-3"]
    assert (v(revised)["revision"], v(revised)["counts"]["connects"]) == (2, 1)
    assert len(read_episodes(str(db))) == 80


# --- wired into the collector -----------------------------------------------------------------


class Inner:
    name = "file"
    lines_written = 3

    def __init__(self) -> None:
        self.docs: list[dict] = []
        self.calls: list[str] = []

    def write(self, doc: dict) -> None:
        self.docs.append(doc)

    def flush(self) -> bool:
        self.calls.append("flush")
        return True

    def reopen(self) -> None:
        self.calls.append("reopen")

    def close(self) -> None:
        self.calls.append("close")


# --- output ----------------------------------------------------------------------------------

HOSTILE = "ep-\x1b[31mred\x1b]0;pwned\x07-\u202eevil\u200b-\x9b2J"


def test_table_and_json_never_carry_terminal_control(db: Path) -> None:
    led = EpisodeLedger(db, cfg(), now_ns=at(0))
    feed(led, reg("episode_start", HOSTILE, 1, run="run-\x1b[2J"))
    feed(led, alert(HOSTILE, 2, "RLG-\x1bX", "critical"), reg("episode_end", HOSTILE, 3))
    led.due(at(100))
    found = read_episodes(str(db))
    assert found[0]["episode_id"] == HOSTILE  # stored as given; escaped when shown
    table = format_table(found)
    lines = [json_line(e) for e in found]
    for text in (table, *lines):
        assert not any(ord(c) < 0x20 and c != "\n" for c in text)
        assert not any(0x7F <= ord(c) <= 0x9F for c in text)
        assert "\u202e" not in text and "\u200b" not in text
    assert "\\x1b[31mred" in table and "\\u{202e}" in table
    assert json.loads(lines[0])["episode_id"] == HOSTILE
    assert all(line.isascii() for line in lines)


def test_table_shows_provisional_and_revised_verdicts(db: Path) -> None:
    led = EpisodeLedger(db, cfg(), now_ns=at(0))
    run_episode(led, "done", 1, 5)
    led.due(at(100))
    feed(led, alert("done", 101, "RLG-MIN-001"))
    feed(led, reg("episode_start", "open", 102), dropped(103))
    led.due(at(103))
    table = format_table(read_episodes(str(db)))
    header, done, opened = table.splitlines()
    assert header.split()[:3] == ["EPISODE", "RUN", "WINDOW"]
    assert "drop r2" in done and "alert:RLG-MIN-001:critical" in done and "1 (1 critical)" in done
    assert "(review)" in opened and "open" in opened and "dropped 5" in opened


# --- the CLI -----------------------------------------------------------------------------------


def test_cli_lists_filters_and_fails_clearly(db: Path, tmp_path: Path) -> None:
    led = EpisodeLedger(db, cfg(), now_ns=at(0))
    run_episode(led, "bad", 1, 5, alert("bad", 2))
    run_episode(led, "good", 1, 5)
    led.due(at(100))
    runner = CliRunner()
    res = runner.invoke(app, ["episodes", "--db", str(db), "--json"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert [(r["episode_id"], r["verdict"]) for r in rows] == [("bad", "drop"), ("good", "keep")]
    res = runner.invoke(app, ["episodes", "--db", str(db), "--json", "--flagged"])
    assert [json.loads(x)["episode_id"] for x in res.stdout.splitlines()] == ["bad"]
    res = runner.invoke(app, ["episodes", "--db", str(db), "--run", "nope", "--json"])
    assert res.exit_code == 0 and res.stdout == ""
    res = runner.invoke(app, ["episodes", "--db", str(db)])
    assert res.exit_code == 0 and "bad" in res.stdout and "VERDICT" in res.stdout
    res = runner.invoke(app, ["episodes", "--db", str(db), "--since", "soon"])
    assert res.exit_code == 2 and "--since" in res.output
    res = runner.invoke(app, ["episodes", "--db", str(tmp_path / "missing.db")])
    assert res.exit_code == 1 and "no episode ledger at" in res.output
    cfg_file = tmp_path / "rlguard.toml"
    cfg_file.write_text(f'[ledger]\npath = "{db}"\n')
    res = runner.invoke(app, ["episodes", "--config", str(cfg_file), "--json", "--since", "1h"])
    assert res.exit_code == 0 and len(res.stdout.splitlines()) == 2  # T0 is in the future
    since = ["--since", "2030-01-01T00:00:00Z"]
    res = runner.invoke(app, ["episodes", "--config", str(cfg_file), "--json", *since])
    assert res.exit_code == 0 and res.stdout == ""


# --- the trainer-side example ----------------------------------------------------------------


def _example() -> Any:
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "docs" / "examples" / "trainer_filter.py"
    spec = importlib.util.spec_from_file_location("trainer_filter", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["trainer_filter"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_trainer_filter_example_reads_the_database_and_the_stream(db: Path, tmp_path: Path) -> None:
    tf = _example()
    led = EpisodeLedger(db, cfg(), now_ns=at(0))
    run_episode(led, "bad", 1, 5, alert("bad", 2))
    run_episode(led, "unsure", 10, 15, dropped(12))
    run_episode(led, "good", 1, 5)
    feed(led, reg("episode_start", "running", 6))
    stream = tmp_path / "events.ndjson"
    lines = led.due(at(100))
    feed(led, alert("good", 101))  # a late finding: revision 2 says drop
    lines += led.due(at(101))
    stream.write_text("".join(json.dumps(d) + "\n" for d in lines) + '{"partial": ')
    batch = [{"episode_id": e, "n": i} for i, e in enumerate(["bad", "unsure", "good", "running"])]
    batch.append({"episode_id": None, "n": 9})
    for source in (tf.VerdictSource.from_db(str(db)), tf.VerdictSource.from_ndjson(str(stream))):
        kept, gone = tf.filter_trajectories(
            batch, source, lambda t: t["episode_id"], timeout_s=0.2, missing="drop"
        )
        assert [t["n"] for t in kept] == [1, 9]
        why = {t["episode_id"]: w for t, w in gone}
        assert why.pop("running").startswith("no verdict in time")
        assert why == {
            "bad": "drop: alert:RLG-MIN-001:critical",
            "good": "drop: alert:RLG-MIN-001:critical",
        }
        kept, _ = tf.filter_trajectories(
            batch, source, lambda t: t["episode_id"], drop_review=True, timeout_s=0.0
        )
        assert [t["n"] for t in kept] == [3, 9]  # running: kept by default (missing="keep")
        assert tf.group_keep(batch[1:2], source, lambda t: t["episode_id"]) is True
        assert tf.group_keep(batch[:2], source, lambda t: t["episode_id"]) is False
    led.close()


def test_trainer_filter_waits_for_a_verdict(db: Path, tmp_path: Path) -> None:
    import threading

    tf = _example()
    stream = tmp_path / "events.ndjson"
    stream.write_text("")
    led = EpisodeLedger(db, cfg(), now_ns=at(0))
    run_episode(led, "ep", 1, 5)

    def later() -> None:
        time.sleep(0.3)
        with stream.open("a") as f:
            f.writelines(json.dumps(d) + "\n" for d in led.due(at(100)))

    thread = threading.Thread(target=later)
    thread.start()
    got = tf.VerdictSource.from_ndjson(str(stream)).wait(["ep"], timeout_s=10, poll_s=0.05)
    thread.join()
    assert got["ep"].verdict == "keep"
    led.close()


# --- wired into the collector ------------------------------------------------------------------


def test_collector_keeps_a_ledger_and_writes_its_verdicts(tmp_path: Path) -> None:
    from monitor.assembly import build_collector
    from monitor.config import parse_config

    config = parse_config(
        f'[service]\nstate_dir = "{tmp_path / "state"}"\n[ledger]\nverdict_grace_s = 0.0\n'
    )
    inner = Inner()
    c = build_collector(config, inner, sensor=FakeSensor(), heartbeat=False, ledger=True)
    assert c.ledger is not None and c.registry is not None
    assert c.ledger.path == str(tmp_path / "state" / "episodes.db")
    now = time.time_ns()
    for op in ("episode_start", "episode_end"):  # as the registry thread queues them
        c.registry.pending.append(
            RegistryRecord(op, now - 5 * S, 0, "ep", "run-1", None, None, status="ok")
        )
    c.ledger.on_finding(support.finding("ep", "RLG-MIN-001", "critical"), now - 5 * S)
    c.step()
    (line,) = [d for d in inner.docs if d["event"].get("dataset") == "rlguard.verdict"]
    assert v(line)["verdict"] == "drop"
    # the registry's two lines and the verdict, counted by output name
    assert c.sink.lines_written == {"file": 3}
    c.close()
    assert c.ledger.closed
    assert [e["verdict"] for e in read_episodes(str(tmp_path / "state" / "episodes.db"))] == [
        "drop"
    ]


def test_collector_ledger_is_opt_in_beside_the_service_and_can_be_disabled(tmp_path: Path) -> None:
    from monitor.assembly import build_collector
    from monitor.config import parse_config

    config = parse_config(f'[service]\nstate_dir = "{tmp_path}"\n')
    c = build_collector(config, Inner(), sensor=FakeSensor(), heartbeat=False)
    assert c.ledger is None  # demo, LiveMonitor
    off = parse_config(f'[service]\nstate_dir = "{tmp_path}"\n[ledger]\nenabled = false\n')
    c = build_collector(off, Inner(), sensor=FakeSensor(), heartbeat=False, ledger=True)
    assert c.ledger is None
    assert not (tmp_path / "episodes.db").exists()


def test_ledger_config_is_validated() -> None:
    from monitor.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match=r"ledger\.review_on: critical listed in both"):
        parse_config('[ledger]\nreview_on = ["critical"]\n')
    with pytest.raises(ConfigError, match=r"ledger\.enabled: expected a boolean, got an integer"):
        parse_config("[ledger]\nenabled = 1\n")
    with pytest.raises(ConfigError, match=r"ledger\.drop_on\[0\]: must be one of"):
        parse_config('[ledger]\ndrop_on = ["severe"]\n')
    assert parse_config("[ledger]\nenabled = false\n").ledger.enabled is False


def test_tail_viewer_summarises_verdict_and_ledger_lines() -> None:
    from monitor.tui.model import build_row

    row = build_row(
        1,
        {
            "event": {"kind": "event", "action": "episode_verdict", "dataset": "rlguard.verdict"},
            "rl": {"episode_id": "ep"},
            "rlguard": {"verdict": {"verdict": "drop", "revision": 2, "reasons": ["a", "b"]}},
        },
    )
    assert row.summary == "verdict drop (revision 2): a, b" and row.episode == "ep"
    for action in ("ledger_error", "fleet_error", "fleet_recovered"):
        err = {"event": {"kind": "metric", "action": action}, "rlguard": {"message": "x\x1b"}}
        assert build_row(2, err).summary == "x\\x1b"


def test_nothing_the_ledger_does_raises_into_the_collector(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    led = EpisodeLedger(str(db) + "\x00nul", cfg(), now_ns=at(0))  # a NUL from the config
    assert "episode ledger" in errors(led.due(at(1)))[0]["rlguard"]["message"]
    led = EpisodeLedger(db, cfg(), now_ns=at(0))

    def broken(now: int) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(led, "_scan", broken)
    (err,) = errors(led.due(at(2)))
    assert "internal error: bug" in err["rlguard"]["message"]
    led.close()


@st.composite
def streams(draw: st.DrawFn) -> list[tuple[str, str, int, str]]:
    """Records (kind, episode, second, severity) for up to 4 episodes, in any order."""
    items = draw(
        st.lists(
            st.tuples(
                st.sampled_from(["exec", "connect", "alert"]),
                st.sampled_from(["e1", "e2", "e3", "e4"]),
                st.integers(0, 50),
                st.sampled_from(SEVERITIES_ALL),
            ),
            max_size=40,
        )
    )
    return items


SEVERITIES_ALL = ["low", "medium", "high", "critical"]


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(items=streams(), order=st.randoms(use_true_random=False))
def test_counts_and_flags_follow_the_records_episode_whatever_the_windows(
    tmp_path_factory: pytest.TempPathFactory, items: list[tuple[str, str, int, str]], order: Any
) -> None:
    db = tmp_path_factory.mktemp("prop") / "e.db"
    led = EpisodeLedger(db, cfg(), now_ns=at(0))
    # registry windows one after another: e1 [0,10], e2 [10,20]... records land anywhere
    docs: list[dict] = []
    for i, eid in enumerate(["e1", "e2", "e3", "e4"]):
        docs += [reg("episode_start", eid, 10 * i), reg("episode_end", eid, 10 * i + 10)]
    for kind, eid, sec, sev in items:
        docs.append(alert(eid, sec, f"R-{sev}", sev) if kind == "alert" else rec(kind, eid, sec))
    order.shuffle(docs)
    feed(led, *docs)
    led.due(at(1000))
    led.due(at(2000))
    got = {e["episode_id"]: e for e in read_episodes(str(db))}
    for eid in ("e1", "e2", "e3", "e4"):
        mine = [x for x in items if x[1] == eid]
        assert got[eid]["counts"]["execs"] == sum(1 for x in mine if x[0] == "exec")
        assert got[eid]["counts"]["connects"] == sum(1 for x in mine if x[0] == "connect")
        critical = any(x[0] == "alert" and x[3] == "critical" for x in mine)
        assert got[eid]["flagged"] is critical
        assert (got[eid]["verdict"] == "drop") is critical
        if not any(x[0] == "alert" and x[3] != "low" for x in mine):
            assert got[eid]["verdict"] == "keep"
    flagged = {e["episode_id"] for e in read_episodes(str(db), flagged=True)}
    assert flagged == {x[1] for x in items if x[0] == "alert" and x[3] == "critical"}
    led.close()
