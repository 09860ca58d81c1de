"""The ledger's store layer without a server: SQLite migrations and spool order, the client on
a host's SQLite file (standard library only), configuration errors, the metrics.

The PostgreSQL side runs against a real server in tests/integration/test_fleet.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from monitor.client import VerdictReader, verdicts
from monitor.config import ConfigError, load_config, parse_config
from monitor.sinks.ledger import EpisodeLedger, SqliteStore, read_episodes
from monitor.sinks.ledger import store as store_mod
from monitor.sinks.ledger.postgres import redact
from monitor.sinks.metrics_http import render
from tests.support.ledger import alert as crit
from tests.support.ledger import registry as reg

pytestmark = pytest.mark.unit

S = 1_000_000_000
REPO = Path(__file__).resolve().parents[2]
SYS_PYTHON = "/usr/bin/python3"


def cfg(**changes: Any) -> Any:
    return dataclasses.replace(load_config(None).ledger, **changes)


def test_a_version_1_file_is_migrated_in_place_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "episodes.db"
    conn = sqlite3.connect(path)
    for ddl in store_mod._DDL:  # the layout the first ledger made
        conn.execute(ddl)
    conn.execute("INSERT INTO schema_version VALUES (1)")
    old = EpisodeLedger(tmp_path / "scratch.db", cfg(verdict_grace_s=0.0), now_ns=10 * S)
    reg("episode_start", "ep-old", 1 * S)(old)
    reg("episode_end", "ep-old", 2 * S)(old)
    (line,) = old.due(3 * S)
    row = store_mod.to_row(old.episodes["ep-old"], ("keep", []), 3 * S)
    conn.execute(f"INSERT INTO episodes VALUES ({','.join('?' * len(row))})", row)
    conn.execute(
        "INSERT INTO verdicts VALUES (?, 1, ?, 'keep', '[]', ?)",
        ("ep-old", 3 * S, json.dumps(line)),
    )
    conn.commit()
    conn.close()
    old.close()
    (before,) = read_episodes(str(path))  # a reader never migrates: it reads version 1
    assert (before["host"], before["episode_id"], before["verdict"]) == (None, "ep-old", "keep")
    assert read_episodes(str(path), host="gpu-7") == []

    st = SqliteStore(path, host="gpu-7")
    st.open()
    assert st.conn is not None
    assert st.conn.execute("SELECT version FROM schema_version").fetchone()[0] == 2
    assert [tuple(r) for r in st.conn.execute("SELECT host, seq FROM episodes")] == [("gpu-7", 0)]
    assert [tuple(r) for r in st.conn.execute("SELECT host, seq FROM verdicts")] == [("gpu-7", 0)]
    spool = st.spool_id
    st.close()
    (ep,) = read_episodes(str(path))
    assert (ep["host"], ep["episode_id"], ep["verdict"]) == ("gpu-7", "ep-old", "keep")
    again = SqliteStore(path, host="gpu-7")
    again.open()
    assert again.spool_id == spool  # the file's identity: made once, kept
    again.close()


def test_every_write_is_numbered_in_order_across_both_tables(tmp_path: Path) -> None:
    led = EpisodeLedger(SqliteStore(tmp_path / "e.db", "h"), cfg(verdict_grace_s=0.0), now_ns=0)
    for i in range(3):
        reg("episode_start", f"ep{i}", 1 * S)(led)
        reg("episode_end", f"ep{i}", 2 * S)(led)
    led.due(3 * S)
    crit("ep1", 4 * S)(led)  # a revision: the episode row is written again
    led.due(5 * S)
    conn = sqlite3.connect(tmp_path / "e.db")
    eps = dict(conn.execute("SELECT episode_id, seq FROM episodes"))
    vds = {(e, r): s for e, r, s in conn.execute("SELECT episode_id, revision, seq FROM verdicts")}
    seqs = sorted([*eps.values(), *vds.values()])
    assert len(set(seqs)) == len(seqs) and seqs[0] >= 1  # unique, one counter
    assert eps["ep1"] > vds[("ep1", 1)] and vds[("ep1", 2)] > vds[("ep1", 1)]
    assert eps["ep1"] > max(eps["ep0"], eps["ep2"])  # rewritten last: shipped last
    reopened = SqliteStore(tmp_path / "e.db", "h")
    reopened.open()
    assert reopened.seq == max(seqs)  # the counter continues after a restart
    reopened.close()
    led.close()


def test_client_reads_a_host_file_and_says_why_verdicts_are_missing(tmp_path: Path) -> None:
    path = tmp_path / "episodes.db"
    now = time.time_ns()
    quick = EpisodeLedger(SqliteStore(path, "gpu-1"), cfg(verdict_grace_s=0.0), now_ns=now)
    reg("episode_start", "bad", now)(quick)
    crit("bad", now)(quick)
    reg("episode_end", "bad", now + 1)(quick)
    quick.due(now + S)
    quick.close()
    led = EpisodeLedger(SqliteStore(path, "gpu-1"), cfg(verdict_grace_s=3600.0), now_ns=now)
    reg("episode_start", "running", now)(led)
    reg("episode_start", "ended", now)(led)
    reg("episode_end", "ended", now + 1)(led)
    assert led.flush(now)
    got = verdicts(["bad", "running", "ended", "ghost"], url=str(path))
    assert got.verdicts["bad"].verdict == "drop" and got.verdicts["bad"].hosts == ("gpu-1",)
    assert got.verdicts["bad"].reasons == ("alert:RLG-MIN-001:critical",)
    why = {e: m.reason for e, m in got.missing.items()}
    assert why == {"running": "open", "ended": "pending", "ghost": "not_seen"}
    elsewhere = verdicts(["ghost"], url=str(path), hosts={"ghost": "gpu-9"})
    assert elsewhere.missing["ghost"].reason == "host_never_seen"
    time.sleep(0.2)
    silent = VerdictReader(str(path), silent_after_s=0.1).verdicts(["ghost"])
    assert silent.missing["ghost"].reason == "coverage_gap"
    nothing = verdicts(["x"], url=str(tmp_path / "none.db"))
    assert nothing.missing["x"].reason == "host_never_seen"
    led.close()


def sys_python(code: str) -> subprocess.CompletedProcess[str]:
    """CODE under Debian's python3 without site-packages: the standard library only."""
    return subprocess.run(
        [SYS_PYTHON, "-S", "-c", code],
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_client_is_standard_library_only_for_sqlite(tmp_path: Path) -> None:
    """Debian's own python3 (no psycopg, no typer) imports it and reads a ledger file."""
    if not os.path.exists(SYS_PYTHON):
        pytest.skip(f"no {SYS_PYTHON}")
    led = EpisodeLedger(tmp_path / "e.db", cfg(verdict_grace_s=0.0), now_ns=0)
    reg("episode_start", "ep", 1 * S)(led)
    reg("episode_end", "ep", 2 * S)(led)
    led.due(3 * S)
    led.close()
    code = (
        "import sys, monitor.client as c\n"
        f"got = c.verdicts(['ep'], url={str(tmp_path / 'e.db')!r})\n"
        "print(got.verdicts['ep'].verdict, sorted(m for m in sys.modules if "
        "m.split('.')[0] in ('psycopg', 'typer', 'orjson', 'psutil')))\n"
    )
    res = sys_python(code)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["keep", "[]"]


def test_fleet_configuration_errors_are_clear() -> None:
    for text, says in (
        ('url = "mysql://db/x"', "expected postgresql://user@host/database"),
        ('url = "postgresql://u@db:99999/x"', "not a URL"),
        ('url = "postgresql://u@db/"', "names no database"),
        ('host = "two words"', "ledger.host: must be"),
    ):
        with pytest.raises(ConfigError, match=says):
            parse_config(f"[ledger]\n{text}\n")
    got = parse_config('[ledger]\nurl = "postgres://u:pw@db/x?sslmode=verify-full"\nhost = "g-1"')
    assert (got.ledger.url, got.ledger.host) == ("postgres://u:pw@db/x?sslmode=verify-full", "g-1")
    assert (
        redact("postgresql://u:s3cret@db/x?password=also") == "postgresql://u:***@db/x?password=***"
    )


def test_a_missing_fleet_extra_is_a_configuration_error() -> None:
    """Debian's python3 has no psycopg: the URL is refused with how to install it."""
    if not os.path.exists(SYS_PYTHON):
        pytest.skip(f"no {SYS_PYTHON}")
    if sys_python("import psycopg").returncode == 0:
        pytest.skip(f"{SYS_PYTHON} has psycopg: no interpreter without the extra here")
    code = (
        "from monitor.config import ConfigError, parse_config\n"
        "try:\n"
        "    parse_config('[ledger]\\nurl = \"postgresql://u@db/x\"\\n')\n"
        "except ConfigError as e:\n"
        "    print(e)\n"
    )
    res = sys_python(code)
    assert "ledger.url: a PostgreSQL ledger needs psycopg 3" in res.stdout, res.stderr
    assert "pip install 'rlguard[fleet]'" in res.stdout


def test_ledger_and_fleet_figures_reach_metrics() -> None:
    snap = {
        "ledger": {
            "persisting": True,
            "episodes_in_memory": 12,
            "fleet": {
                "connected": False,
                "backlog_rows": 40,
                "backlog_age_s": 12.5,
                "shipped_rows": 1000,
                "failures": 3,
            },
        }
    }
    text = render(snap)
    for line in (
        "rlguard_ledger_persisting 1",
        "rlguard_ledger_episodes_in_memory 12",
        "rlguard_ledger_fleet_connected 0",
        "rlguard_ledger_fleet_backlog_rows 40",
        "rlguard_ledger_fleet_backlog_age_seconds 12.5",
        "rlguard_ledger_fleet_shipped_rows_total 1000",
        "rlguard_ledger_fleet_failures_total 3",
    ):
        assert line in text.splitlines()
    assert "# TYPE rlguard_ledger_fleet_failures_total counter" in text
    assert "rlguard_ledger_fleet" not in render({"ledger": {"persisting": True}})
