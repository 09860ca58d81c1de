"""Fleet ledger bench: simulated hosts writing to one local PostgreSQL, a trainer reading.

Each simulated host is a real ``EpisodeLedger`` on a real ``FleetStore`` (its own SQLite
spool, its own writer thread and PostgreSQL connection); only the event stream is
synthetic: HOSTS hosts each start EPISODES_PER_HOUR episodes an hour, each with a few
execs and connects, some with alerts (drop or review), a few revised after their verdict.
The server is a throwaway cluster (tests/support/postgres.py) with fsync on.

A separate trainer process LISTENs for verdicts and reads each one back through
``monitor.client.VerdictReader`` the moment it is announced. Reported:

* write latency: the commit time of the writers' batches (p50/p99/max, rows per batch);
* database CPU: the server processes' CPU seconds over the run, as % of one core;
* verdict latency: from the verdict line (its time, as written) to the trainer holding
  the verdict (p50/p99/max), the figure the target (<= 1 s p99) is about.

usage: sudo .venv/bin/python bench/fleet.py [--hosts 100] [--episodes-per-hour 1000]
       [--seconds 60] [--json bench/out/fleet.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from monitor.config import load_config  # noqa: E402
from monitor.sinks.ledger import EpisodeLedger  # noqa: E402
from monitor.sinks.ledger.fleet import FleetStore  # noqa: E402
from tests.support.ledger import alert, event, registry  # noqa: E402
from tests.support.postgres import Cluster, why_not  # noqa: E402

S = 1_000_000_000
TICK_S = 0.05  # the collector's loop calls due() about this often


def pct(vals: list[float], q: float) -> float:
    if not vals:
        return float("nan")
    vals = sorted(vals)
    return vals[min(len(vals) - 1, int(round(q * (len(vals) - 1))))]


def spread(vals: list[float], scale: float = 1.0, nd: int = 1) -> dict[str, Any]:
    return {
        "n": len(vals),
        "p50": round(pct(vals, 0.5) * scale, nd),
        "p99": round(pct(vals, 0.99) * scale, nd),
        "max": round(max(vals) * scale, nd) if vals else None,
    }


def server_cpu_s(cluster: Cluster) -> float:
    """CPU seconds of the postmaster and every process it started (backends, workers)."""
    pid = int((cluster.data / "postmaster.pid").read_text().split()[0])
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        ppid = int(fields[1])
        if int(entry) == pid or ppid == pid:
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


# --- the trainer (a process of its own) ------------------------------------------------


def trainer(url: str, out: str, stop_file: str) -> int:
    """LISTEN; read every announced verdict through VerdictReader; log when it was held."""
    import psycopg

    from monitor.client import CHANNEL, VerdictReader

    reader = VerdictReader(url)
    seen: list[tuple[str, int, int]] = []
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"LISTEN {CHANNEL}")
        Path(out + ".ready").touch()
        while not os.path.exists(stop_file):
            notes = list(conn.notifies(timeout=0.5, stop_after=1))
            ids = list(dict.fromkeys(n.payload for n in notes))
            if not ids:
                continue
            got = reader.verdicts(ids).verdicts  # what a trainer's filter does
            held = time.time_ns()
            seen.extend((eid, v.revision, held) for eid, v in got.items())
    reader.close()
    Path(out).write_text(json.dumps(seen))
    return 0


# --- the simulated fleet ----------------------------------------------------------------


@dataclasses.dataclass
class Sim:
    eid: str
    start: float
    end: float
    alert: str | None  # critical / high / None
    late_alert: bool
    ended: bool = False


def simulate(args: argparse.Namespace) -> dict[str, Any]:
    reason = why_not()
    if reason:
        raise SystemExit(f"bench/fleet.py: {reason}")
    cluster = Cluster(fsync=True, extra_conf=f"max_connections = {args.hosts + 50}\n")
    tmp = Path(tempfile.mkdtemp(prefix="rlguard-fleet-bench-"))
    ledgers: dict[str, EpisodeLedger] = {}
    trainer_proc = None
    try:
        cluster.start()
        db = cluster.database("fleet")
        url = cluster.url(db=db)
        cfg = dataclasses.replace(load_config(None).ledger, verdict_grace_s=args.grace)
        hosts = [f"sim-{i:04d}" for i in range(args.hosts)]
        for h in hosts:
            ledgers[h] = EpisodeLedger(FleetStore(str(tmp / f"{h}.db"), url, h), cfg)
        # wait until every writer has connected (the schema made once, under its lock)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for led in ledgers.values():
                led.due()
            if all(led.stats()["fleet"]["connected"] for led in ledgers.values()):
                break
            time.sleep(0.1)
        out = str(tmp / "trainer.json")
        stop_file = str(tmp / "stop")
        trainer_proc = subprocess.Popen(
            [sys.executable, __file__, "--trainer", url, out, stop_file], cwd=REPO
        )
        while not os.path.exists(out + ".ready"):
            time.sleep(0.05)
        rng = random.Random(42)
        period = 3600.0 / args.episodes_per_hour
        run = "bench-run"
        next_start = {h: time.monotonic() + rng.uniform(0, period) for h in hosts}
        active: dict[str, list[Sim]] = {h: [] for h in hosts}
        lines: dict[tuple[str, str, int], int] = {}  # (host, episode, revision) -> line ns
        n_episodes = n_events = 0
        cpu0 = server_cpu_s(cluster)
        t0 = time.monotonic()
        stop_at = t0 + args.seconds
        while True:
            now = time.monotonic()
            if now >= stop_at and not any(active.values()):
                break
            wall = time.time_ns()
            for h, led in ledgers.items():
                if now < stop_at and now >= next_start[h]:
                    next_start[h] += period
                    n_episodes += 1
                    roll = rng.random()
                    sim = Sim(
                        eid=f"{h}-ep{n_episodes}",
                        start=now,
                        end=now + rng.uniform(1.0, 4.0),
                        alert="critical" if roll < 0.05 else "high" if roll < 0.15 else None,
                        late_alert=rng.random() < 0.02,
                    )
                    active[h].append(sim)
                    registry("episode_start", sim.eid, wall, run)(led)
                for sim in list(active[h]):
                    if not sim.ended:
                        for action in ("exec", "connect"):
                            ip = f"203.0.113.{rng.randrange(1, 255)}"
                            event(action, sim.eid, wall, run, ip)(led)
                            n_events += 1
                        if sim.alert and rng.random() < 0.1:
                            alert(sim.eid, wall, sim.alert)(led)
                            sim.alert = None if sim.alert == "high" else sim.alert
                        if now >= sim.end:
                            sim.ended = True
                            registry("episode_end", sim.eid, wall, run)(led)
                    elif now >= sim.end + args.grace + 1.0:
                        if sim.late_alert:
                            alert(sim.eid, wall, "critical")(led)
                        active[h].remove(sim)
                for line in led.due():
                    if line["event"]["dataset"] == "rlguard.verdict":
                        v = line["rlguard"]["verdict"]
                        lines[(h, line["rl"]["episode_id"], v["revision"])] = wall
            time.sleep(max(0.0, TICK_S - (time.monotonic() - now)))
        # the writers' last rows, then the trainer's last reads
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(
            led.stats()["fleet"]["backlog_rows"] for led in ledgers.values()
        ):
            for led in ledgers.values():
                led.due()
            time.sleep(0.1)
        elapsed = time.monotonic() - t0
        cpu = server_cpu_s(cluster) - cpu0
        time.sleep(2.0)
        Path(stop_file).touch()
        trainer_proc.wait(timeout=30)
        seen = json.loads(Path(out).read_text())
        batches = [b for led in ledgers.values() for b in led.store.shipper.batch_s]  # type: ignore[attr-defined]
        shipped = sum(led.stats()["fleet"]["shipped_rows"] for led in ledgers.values())
        failures = sum(led.stats()["fleet"]["failures"] for led in ledgers.values())
        by_line = {(eid, rev): ns for (_h, eid, rev), ns in lines.items()}
        lat = [(held - by_line[(eid, rev)]) / S for eid, rev, held in seen if (eid, rev) in by_line]
        missed = len(by_line) - len({(e, r) for e, r, _ in seen} & set(by_line))
        return {
            "hosts": args.hosts,
            "episodes_per_hour_per_host": args.episodes_per_hour,
            "seconds": round(elapsed, 1),
            "episodes": n_episodes,
            "events_observed": n_events,
            "verdict_lines": len(lines),
            "rows_shipped": shipped,
            "writer_failures": failures,
            "batch_commit_ms": spread(batches, 1000, 2),
            "rows_per_batch": round(shipped / max(1, len(batches)), 1),
            "db_cpu_pct_of_one_core": round(100 * cpu / elapsed, 1),
            "db_cpu_s": round(cpu, 2),
            "verdict_to_trainer_s": spread(lat, 1.0, 3),
            "verdicts_not_seen_by_trainer": missed,
            "postgres": cluster.sql("SHOW server_version")[0][0],
            "cpus": os.cpu_count(),
        }
    finally:
        for led in ledgers.values():
            led.close()
        if trainer_proc is not None and trainer_proc.poll() is None:
            trainer_proc.kill()
        cluster.destroy()
        subprocess.run(["rm", "-rf", str(tmp)], check=False)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--trainer":
        return trainer(*sys.argv[2:5])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hosts", type=int, default=100)
    ap.add_argument("--episodes-per-hour", type=int, default=1000, help="per host")
    ap.add_argument("--seconds", type=float, default=60.0, help="how long episodes start")
    ap.add_argument("--grace", type=float, default=1.0, help="[ledger] verdict_grace_s")
    ap.add_argument("--json", default=str(REPO / "bench" / "out" / "fleet.json"))
    args = ap.parse_args()
    res = simulate(args)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(res, indent=2))
    for k, v in res.items():
        print(f"{k:32} {v}")
    print(f"\nJSON: {args.json}")
    if res["verdicts_not_seen_by_trainer"] or res["writer_failures"]:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
