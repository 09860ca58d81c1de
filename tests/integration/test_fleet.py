"""The fleet ledger against a real PostgreSQL (a throwaway cluster, tests/support/postgres.py).

Roles come from docs/examples/fleet_roles.sql, exactly as an administrator would run it:
monitors write as rlguard_writer, trainers read as rlguard_reader.

Three `rlguard run` monitors with their own host identities share the machine, so each
sees every process; their episodes are announced through each monitor's own registry
socket, so each episode belongs to one host, as on a real fleet.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from monitor.config import load_config
from monitor.sinks.ledger import EpisodeLedger
from monitor.sinks.ledger.fleet import FleetStore
from tests.support.ledger import alert
from tests.support.ledger import registry as reg
from tests.support.live import REPO, RLGUARD, start_run, stop_run, wait_line
from tests.support.postgres import Cluster, why_not

pytestmark = [pytest.mark.postgres]

ROLES_SQL = REPO / "docs" / "examples" / "fleet_roles.sql"
WRITER_PW = uuid.uuid4().hex
READER_PW = uuid.uuid4().hex
S = 1_000_000_000


@dataclasses.dataclass
class Fleet:
    cluster: Cluster
    db: str

    def writer(self) -> str:
        return self.cluster.url("rlguard_writer", WRITER_PW, self.db)

    def reader(self) -> str:
        return self.cluster.url("rlguard_reader", READER_PW, self.db)

    def rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(self.cluster.url(db=self.db), autocommit=True) as conn:
            return [tuple(r) for r in conn.execute(sql, args).fetchall()]  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    reason = why_not()
    if reason:
        pytest.skip(reason)
    cluster = Cluster()
    try:
        cluster.start()
        db = cluster.database("fleet")
        cluster.sql(ROLES_SQL.read_text(), db=db)
        cluster.sql(
            [
                f"ALTER ROLE rlguard_writer PASSWORD '{WRITER_PW}'",
                f"ALTER ROLE rlguard_reader PASSWORD '{READER_PW}'",
            ]
        )
        yield Fleet(cluster, db)
    finally:
        cluster.destroy()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """This checkout's `rlguard ARGS`, its output captured."""
    return subprocess.run([*RLGUARD, *args], capture_output=True, text=True, timeout=60, cwd=REPO)


def wait_until(cond: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


# --- in-process writers: ordering, exactly once, a server that goes away --------------------


def spool_rows(path: Path) -> tuple[set[tuple[Any, ...]], set[tuple[Any, ...]]]:
    """(episodes, verdicts) of a host's SQLite spool, as the fleet keeps them."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        eps = set(conn.execute("SELECT host, episode_id, events, revision, verdict FROM episodes"))
        vds = set(conn.execute("SELECT host, episode_id, revision, verdict FROM verdicts"))
    finally:
        conn.close()
    return eps, vds


def test_writers_replay_their_spool_in_order_and_exactly_once(fleet: Fleet, tmp_path) -> None:
    """Three writers, the server stopped mid-run and started again: all arrives, once."""
    cfg = dataclasses.replace(load_config(None).ledger, verdict_grace_s=0.0)
    run = f"run-{uuid.uuid4().hex[:8]}"
    hosts = [f"w{i}-{uuid.uuid4().hex[:6]}" for i in range(3)]
    spools = {h: tmp_path / f"{h}.db" for h in hosts}
    ledgers = {h: EpisodeLedger(FleetStore(str(spools[h]), fleet.writer(), h), cfg) for h in hosts}
    issued: dict[str, list[tuple[str, int, str]]] = {h: [] for h in hosts}

    def wave(tag: str, n: int) -> None:
        now = time.time_ns()
        for h, led in ledgers.items():
            for i in range(n):
                eid = f"{h}-{tag}-{i}"
                reg("episode_start", eid, now, run)(led)
                if i % 7 == 0:
                    alert(eid, now)(led)
                reg("episode_end", eid, now + 1000, run)(led)
            for doc in led.due(now + S):
                if doc["event"]["dataset"] == "rlguard.verdict":
                    v = doc["rlguard"]["verdict"]
                    issued[h].append((doc["rl"]["episode_id"], v["revision"], v["verdict"]))

    try:
        wave("a", 200)
        fleet.cluster.stop("immediate")  # a crash: the writers' connections just die
        wave("b", 300)  # verdicts made while the server is away wait in the spools
        for h, led in ledgers.items():
            alert(f"{h}-a-1", time.time_ns())(led)  # a revision, also while away
            for doc in led.due(time.time_ns() + 2 * S):
                if doc["event"]["dataset"] == "rlguard.verdict":
                    v = doc["rlguard"]["verdict"]
                    issued[h].append((doc["rl"]["episode_id"], v["revision"], v["verdict"]))
        backlog = wait_until(
            lambda: [
                led.stats()["fleet"]
                for led in ledgers.values()
                if led.stats()["fleet"]["backlog_rows"] > 0
            ],
            20,
            "a backlog while the server is down",
        )
        assert not backlog[0]["connected"] and backlog[0]["failures"] >= 1
        assert "127.0.0.1" in backlog[0]["last_error"] and WRITER_PW not in json.dumps(backlog)
        fleet.cluster.start()
        for h in hosts:
            wait_until(
                lambda h=h: (
                    fleet.rows("SELECT count(*) FROM rlguard.verdicts WHERE host = %s", h)[0][0]
                    >= 501
                ),
                60,
                f"{h}'s verdicts after the restart",
            )
    finally:
        for led in ledgers.values():
            led.close()
    for h in hosts:
        got = set(
            fleet.rows(
                "SELECT episode_id, revision, verdict FROM rlguard.verdicts WHERE host = %s", h
            )
        )
        assert got == set(issued[h])  # every verdict line, none twice (the key is unique)
        assert len(issued[h]) == 501
        eps, vds = spool_rows(spools[h])
        pg_eps = set(
            fleet.rows(
                "SELECT host, episode_id, events, revision, verdict FROM rlguard.episodes "
                "WHERE host = %s",
                h,
            )
        )
        assert pg_eps == eps and len(eps) == 500
        assert {(h, *v) for v in got} == vds
        shipped, alive = fleet.rows(
            "SELECT shipped_seq, last_alive_ns FROM rlguard.hosts WHERE host = %s", h
        )[0]
        assert shipped > 0 and alive is not None


def test_a_stuck_database_never_holds_up_the_ledger(fleet: Fleet, tmp_path) -> None:
    """The writer blocks on a table lock; the ledger goes on judging meanwhile."""
    import psycopg

    cfg = dataclasses.replace(load_config(None).ledger, verdict_grace_s=0.0)
    host = f"slow-{uuid.uuid4().hex[:6]}"
    led = EpisodeLedger(FleetStore(str(tmp_path / "s.db"), fleet.writer(), host), cfg)
    try:
        wait_until(lambda: led.stats()["fleet"]["connected"], 30, "the writer to connect")
        with psycopg.connect(fleet.cluster.url(db=fleet.db)) as admin:
            admin.execute("LOCK TABLE rlguard.verdicts IN ACCESS EXCLUSIVE MODE")
            issued = []
            now = time.time_ns()
            for i in range(100):
                reg("episode_start", f"{host}-{i}", now, "r")(led)
                reg("episode_end", f"{host}-{i}", now + 1, "r")(led)
                issued += [d for d in led.due() if d["event"]["dataset"] == "rlguard.verdict"]
            # every verdict line came out while the database could take none of them
            assert len(issued) == 100
            wait_until(
                lambda: led.stats()["fleet"]["backlog_rows"] > 0, 20, "a backlog behind the lock"
            )
            assert fleet.rows("SELECT count(*) FROM rlguard.hosts WHERE host = %s", host)
            admin.rollback()  # the lock goes: the writer's batch goes through
        wait_until(
            lambda: (
                fleet.rows("SELECT count(*) FROM rlguard.verdicts WHERE host = %s", host)[0][0]
                == 100
            ),
            30,
            "the verdicts after the lock",
        )
        wait_until(lambda: led.stats()["fleet"]["backlog_rows"] == 0, 20, "an empty backlog")
    finally:
        led.close()


def test_trainer_is_told_why_and_waits_for_every_host_of_an_episode(fleet: Fleet, tmp_path) -> None:
    from monitor.client import VerdictReader

    m = uuid.uuid4().hex[:6]
    a, b = f"why-a-{m}", f"why-b-{m}"
    quick = dataclasses.replace(load_config(None).ledger, verdict_grace_s=0.0)
    slow = dataclasses.replace(quick, verdict_grace_s=3600.0)
    led_a = EpisodeLedger(FleetStore(str(tmp_path / "a.db"), fleet.writer(), a), quick)
    led_b = EpisodeLedger(FleetStore(str(tmp_path / "b.db"), fleet.writer(), b), slow)
    now = time.time_ns()
    shared, running, ended = f"shared-{m}", f"running-{m}", f"ended-{m}"
    reg("episode_start", shared, now, "r")(led_a)  # one episode, two hosts
    reg("episode_start", shared, now, "r")(led_b)
    alert(shared, now)(led_b)
    reg("episode_start", running, now, "r")(led_b)
    reg("episode_start", ended, now, "r")(led_b)
    reg("episode_end", ended, now + 1, "r")(led_b)
    reg("episode_end", shared, now + 1, "r")(led_a)
    led_a.due()
    led_b.due()
    reader = VerdictReader(fleet.reader())
    try:
        ids = [shared, running, ended, f"ghost-{m}", f"lost-{m}"]
        expect = {f"ghost-{m}": b, f"lost-{m}": f"never-{m}"}
        deadline = time.monotonic() + 30
        while True:  # until both writers have shipped what they hold
            got = reader.verdicts(ids, hosts=expect)
            reasons = {x.reason for e, x in got.missing.items() if e in (shared, ended, running)}
            if len(got.missing) == 5 and reasons <= {"open", "pending"}:
                break
            assert time.monotonic() < deadline, got
            time.sleep(0.2)
        assert {e: x.reason for e, x in got.missing.items()} == {
            shared: "open",  # host a judged it keep; on host b it still runs
            running: "open",
            ended: "pending",
            f"ghost-{m}": "not_seen",
            f"lost-{m}": "host_never_seen",
        }
        assert b in got.missing[running].detail and b in got.missing[shared].detail
        # host b's verdict comes while the trainer waits: the strictest of both
        reg("episode_end", shared, now + 2, "r")(led_b)
        led_b.close()  # its pending verdicts stay pending in its spool; b stops reporting
        fast_b = EpisodeLedger(FleetStore(str(tmp_path / "b.db"), fleet.writer(), b), quick)
        fast_b.due()
        final = reader.verdicts([shared], timeout_s=30)
        v = final.verdicts[shared]
        assert (v.verdict, v.hosts) == ("drop", (a, b)), final
        assert v.reasons == ("alert:RLG-MIN-001:critical",)
        fast_b.close()
        led_a.close()
        time.sleep(2.0)  # both hosts now silent for longer than the reader's 1 s
        quiet = VerdictReader(fleet.reader(), silent_after_s=1.0)
        gap = quiet.verdicts([f"ghost-{m}"], hosts={f"ghost-{m}": b})
        quiet.close()
        assert gap.missing[f"ghost-{m}"].reason == "coverage_gap"
    finally:
        reader.close()
        led_a.close()
        led_b.close()


def test_reader_role_reads_and_cannot_write(fleet: Fleet, tmp_path) -> None:
    import psycopg

    cfg = dataclasses.replace(load_config(None).ledger, verdict_grace_s=0.0)
    led = EpisodeLedger(FleetStore(str(tmp_path / "r.db"), fleet.writer(), "reader-test"), cfg)
    now = time.time_ns()
    reg("episode_start", "ro-1", now, "r")(led)
    reg("episode_end", "ro-1", now + 1, "r")(led)
    led.due(now + S)
    led.close()
    with psycopg.connect(fleet.reader(), autocommit=True) as conn:
        assert conn.execute(
            "SELECT verdict FROM rlguard.episodes WHERE episode_id = 'ro-1'"
        ).fetchall() == [("keep",)]
        for sql in (
            "UPDATE rlguard.episodes SET verdict = 'keep'",
            "DELETE FROM rlguard.verdicts",
            "INSERT INTO rlguard.hosts VALUES ('x', 'x', 0, 0, 0, 0, 'x')",
            "CREATE TABLE rlguard.mine (x int)",
            "CREATE TABLE public.mine (x int)",
            "TRUNCATE rlguard.episodes",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(sql)
    with psycopg.connect(fleet.writer(), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("CREATE TABLE public.elsewhere (x int)")  # its own schema only


def test_bad_password_and_bad_url_are_clear(fleet: Fleet, tmp_path) -> None:
    wrong = fleet.cluster.url("rlguard_writer", "not-the-password", fleet.db)
    cfg = dataclasses.replace(load_config(None).ledger, verdict_grace_s=0.0)
    led = EpisodeLedger(FleetStore(str(tmp_path / "a.db"), wrong, "auth-test"), cfg)
    try:
        msgs = wait_until(
            lambda: [
                d["rlguard"]["message"] for d in led.due() if d["event"]["action"] == "fleet_error"
            ],
            20,
            "a fleet_error line",
        )
    finally:
        led.close()
    assert "authentication failed" in msgs[0] and "not-the-password" not in msgs[0]
    assert "***" in msgs[0]
    conf = tmp_path / "rlguard.toml"
    conf.write_text(f'[ledger]\nurl = "{wrong}"\npath = "{tmp_path / "b.db"}"\n')
    res = cli("check", "--no-load", "--config", str(conf))
    assert "fleet ledger: " in res.stdout and "authentication failed" in res.stdout
    assert "not-the-password" not in res.stdout
    for url, says in (
        (fleet.writer(), "[  ok] fleet ledger: "),
        (fleet.reader(), "which cannot write the ledger"),
    ):
        conf.write_text(f'[ledger]\nurl = "{url}"\npath = "{tmp_path / "c.db"}"\n')
        res = cli("check", "--no-load", "--config", str(conf))
        assert says in res.stdout, res.stdout
    conf.write_text('[ledger]\nurl = "mysql://db.example/x"\n')
    res = cli("episodes", "--config", str(conf))
    assert res.returncode == 2 and "ledger.url: expected postgresql://" in res.stderr


# --- three real monitors ---------------------------------------------------------------------


CLEAN_ENV = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}


def host_config(tmp: Path, host: str, url: str) -> Path:
    cfg = tmp / f"{host}.toml"
    cfg.write_text(
        f'[service]\nstate_dir = "{tmp / host / "state"}"\n'
        "[output]\nmetrics_interval_s = 0.5\n"
        f'[registry]\nsocket = "{tmp / host / "registry.sock"}"\n'
        f'[ledger]\npath = "{tmp / host / "episodes.db"}"\nverdict_grace_s = 0.3\n'
        f'url = "{url}"\nhost = "{host}"\n'
    )
    return cfg


def run_episodes(sock: Path, run: str, episodes: list[str], port: int) -> None:
    """A trainer on this host: each episode's worker connects to PORT once."""
    benign = "import socket, sys; socket.create_connection(('127.0.0.1', int(sys.argv[1]))).close()"
    trainer = f"""
import subprocess, sys
from monitor.client import episode
for eid in {episodes!r}:
    with episode(eid, run_id={run!r}, path={str(sock)!r}, bind="process", strict=True):
        subprocess.run([sys.executable, "-c", {benign!r}, "{port}"], check=True)
"""
    subprocess.run([sys.executable, "-c", trainer], env=CLEAN_ENV, check=True, timeout=120)


def verdict_line(eid: str) -> Callable[[dict[str, Any]], bool]:
    return lambda d: (
        d["event"].get("dataset") == "rlguard.verdict" and d["rl"].get("episode_id") == eid
    )


def stream_verdicts(out: Path, host_eps: set[str]) -> set[tuple[str, int, str]]:
    got = set()
    for line in out.read_text().splitlines():
        d = json.loads(line)
        if d["event"].get("dataset") == "rlguard.verdict" and d["rl"]["episode_id"] in host_eps:
            v = d["rlguard"]["verdict"]
            got.add((d["rl"]["episode_id"], v["revision"], v["verdict"]))
    return got


@pytest.mark.integration
def test_three_monitors_one_fleet_an_outage_and_a_waiting_trainer(fleet: Fleet, tmp_path) -> None:
    from monitor.client import VerdictReader

    m = uuid.uuid4().hex[:8]
    run = f"run-{m}"
    hosts = [f"gpu-{i}-{m}" for i in range(3)]
    cfgs = {h: host_config(tmp_path, h, fleet.writer()) for h in hosts}
    outs = {h: tmp_path / f"{h}.ndjson" for h in hosts}
    mine: dict[str, set[str]] = {h: set() for h in hosts}
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    mons = {h: start_run(cfgs[h], outs[h]) for h in hosts}
    reader = VerdictReader(fleet.reader())
    try:
        for h in hosts:
            wait_line(outs[h], lambda d: d["event"].get("action") == "started", timeout=120)

        # 1. each host runs its episodes; the trainer reads all verdicts in one place
        for h in hosts:
            eps = [f"{h}-ep{i}" for i in range(2)]
            mine[h].update(eps)
            run_episodes(tmp_path / h / "registry.sock", run, eps, port)
        every = sorted(e for h in hosts for e in mine[h])
        got = reader.verdicts(every, timeout_s=60)
        assert not got.missing, got.missing
        assert {e: v.verdict for e, v in got.verdicts.items()} == {e: "keep" for e in every}
        for h in hosts:
            for e in mine[h]:
                assert got.verdicts[e].hosts == (h,)  # attributed by its own host only

        # 2. a trainer waiting for a verdict that is written after it asked
        late = f"{hosts[1]}-late"
        mine[hosts[1]].add(late)
        waited: dict[str, Any] = {}

        def wait() -> None:
            with VerdictReader(fleet.reader()) as r:
                waited["asked"] = time.time_ns()
                waited["result"] = r.verdicts([late], timeout_s=90, hosts={late: hosts[1]})

        t = threading.Thread(target=wait)
        t.start()
        time.sleep(0.5)
        early = reader.verdicts([late], hosts={late: hosts[1]})
        assert early.missing[late].reason == "not_seen"
        run_episodes(tmp_path / hosts[1] / "registry.sock", run, [late], port)
        t.join(timeout=120)
        res = waited["result"]
        assert res.verdicts[late].verdict == "keep", res.missing
        at = fleet.rows("SELECT at_ns FROM rlguard.verdicts WHERE episode_id = %s", late)[0][0]
        assert at > waited["asked"]  # written after the trainer asked

        # 3. the database goes away mid-run: episodes and verdicts wait in the spools
        fleet.cluster.stop()
        for h in hosts:
            wait_line(outs[h], lambda d: d["event"].get("action") == "fleet_error", timeout=60)
        away = {h: [f"{h}-away{i}" for i in range(2)] for h in hosts}
        for h in hosts:
            mine[h].update(away[h])
            run_episodes(tmp_path / h / "registry.sock", run, away[h], port)
        for h in hosts:
            for e in away[h]:
                wait_line(outs[h], verdict_line(e), timeout=60)
            stats = wait_line(
                outs[h],
                lambda d: (
                    d["event"].get("action") == "stats"
                    and ((d["rlguard"].get("ledger") or {}).get("fleet") or {}).get(
                        "backlog_rows", 0
                    )
                    > 0
                ),
                timeout=30,
            )
            assert stats["rlguard"]["ledger"]["fleet"]["connected"] is False
        missing = VerdictReader(str(tmp_path / hosts[0] / "episodes.db")).verdicts(away[hosts[0]])
        assert not missing.missing  # the host's own file has them meanwhile
        fleet.cluster.start()
        for h in hosts:
            wait_line(outs[h], lambda d: d["event"].get("action") == "fleet_recovered", timeout=60)
        back = reader.verdicts([e for h in hosts for e in away[h]], timeout_s=60)
        assert not back.missing, back.missing

        # rlguard episodes --url: the fleet, one host, one run
        res = cli("episodes", "--url", fleet.reader(), "--run", run, "--json")
        assert res.returncode == 0, res.stderr
        listed = [json.loads(x) for x in res.stdout.splitlines()]
        assert {(e["host"], e["episode_id"]) for e in listed} == {
            (h, e) for h in hosts for e in mine[h]
        }
        res = cli("episodes", "--url", fleet.reader(), "--host", hosts[2], "--run", run)
        assert res.returncode == 0, res.stderr
        head, *rows = res.stdout.splitlines()
        assert head.startswith("HOST") and len(rows) == len(mine[hosts[2]])
        assert all(r.startswith(hosts[2]) for r in rows)
    finally:
        reader.close()
        for mon in mons.values():
            stop_run(mon)
        listener.close()
    for mon in mons.values():
        assert mon.returncode == 0, mon.stderr.read() if mon.stderr else ""
    # nothing lost, nothing twice: each host's rows in PostgreSQL are its spool's rows, and
    # its verdicts are the verdict lines it wrote
    for h in hosts:
        eps, vds = spool_rows(tmp_path / h / "episodes.db")
        pg_eps = set(
            fleet.rows(
                "SELECT host, episode_id, events, revision, verdict FROM rlguard.episodes "
                "WHERE host = %s",
                h,
            )
        )
        assert pg_eps == eps
        pg_vds = set(
            fleet.rows(
                "SELECT host, episode_id, revision, verdict FROM rlguard.verdicts WHERE host = %s",
                h,
            )
        )
        assert pg_vds == vds
        ours = {v for v in pg_vds if v[1] in mine[h]}
        assert {v[1:] for v in ours} == stream_verdicts(outs[h], mine[h])
        assert {v[1] for v in ours} == mine[h]
