"""Side-by-side benchmark: bare / rlguard / bpftrace, interleaved rounds (issue #6).

Each round runs, per workload, the storm bare, then under the real `rlguard run
--output FILE`, then under the equivalent bpftrace one-liner.  Every figure is
a ratio or count from this run: ops/s and ratio to the same round's bare run,
events expected / received / dropped, start-up (launch to armed), CPU% of the
monitor over the storm, RSS before/after.  Medians with min-max over rounds.
Alert latency comes from bench/alert_latency.py.  Writes bench/out/results.json.

Workloads: refused connects, connects to a listening server, connects with a
first payload, fork+exec, and (rlguard only) 10^6 short-lived processes for
memory.  Connects are counted as the connects the lines stand for
(`rlguard.connect.count`: the kernel folds identical ones), not as lines.

usage: sudo .venv/bin/python bench/run.py [--quick] [--rounds 3] [-n N] [--exec-n N]
       [--payload-n N] [--churn-n N] [--only WORKLOAD] [--variant NAME=CFLAGS]
       [--baseline TREE] [--no-bpftrace] [--no-alert] [--fleet | --fleet-only]
       [--fleet-hosts N]

--fleet also runs bench/fleet.py (simulated hosts writing the episode ledger to a local
PostgreSQL, a trainer reading verdicts); --fleet-only runs only that.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out"
CLOSED_PORT = 9  # discard: nothing listens on loopback, each connect is refused at once
TICK = os.sysconf("SC_CLK_TCK")
LOST = re.compile(rb"^Lost (\d+) events", re.M)
CONNECT = "tracepoint:syscalls:sys_enter_connect"
EXEC = "tracepoint:sched:sched_process_exec"


@dataclass(frozen=True)
class Workload:
    """One storm: the helper and its arguments, what it should produce, its peers."""

    name: str
    helper: str  # a binary from build()
    args: tuple[str, ...]
    action: str  # the rlguard record type counted as "received"
    unit: str  # what ops/s counts
    bpftrace_probe: str | None  # the peer's one-liner probe; None: no bpftrace run
    bare: bool = True


def workloads(n: dict[str, int]) -> list[Workload]:
    return [
        Workload(
            "connect closed",
            "connect_flood",
            (str(CLOSED_PORT), str(n["connect"])),
            "connect",
            "connects",
            CONNECT,
        ),
        Workload(
            "connect listen",
            "conn_storm",
            ("listen", str(n["connect"])),
            "connect",
            "connects",
            CONNECT,
        ),
        Workload(
            "payload",
            "conn_storm",
            ("payload", str(n["payload"])),
            "send",
            "connections",
            CONNECT,
        ),
        Workload("exec", "exec_storm", (str(n["exec"]),), "exec", "execs", EXEC),
        Workload("churn", "churn", (str(n["churn"]),), "fork", "processes", None, bare=False),
    ]


# the peer: bpftrace printing one line per event; BEGIN (fired once every probe is
# attached) marks it armed
def bpftrace_prog(probe: str) -> str:
    return 'BEGIN { printf("armed\\n"); } ' + probe + ' { printf("%d\\n", pid); }'


# the defaults, whatever /etc/rlguard/rlguard.toml this host has: comparable runs
BENCH_CONFIG = OUT / "rlguard.bench.toml"
LIVE: list[subprocess.Popen[bytes]] = []  # stopped in main()'s finally, Ctrl-C included


def build() -> dict[str, Path]:
    OUT.mkdir(parents=True, exist_ok=True)
    BENCH_CONFIG.write_text("# bench: built-in defaults\n")
    srcs = {
        "connect_flood": (REPO / "tests" / "helpers" / "connect_flood.c", ()),
        "conn_storm": (REPO / "bench" / "conn_storm.c", ("-pthread",)),
        "exec_storm": (REPO / "bench" / "exec_storm.c", ()),
        "churn": (REPO / "bench" / "churn.c", ()),
    }
    bins = {}
    for name, (src, extra) in srcs.items():
        exe = OUT / name
        subprocess.run(["gcc", "-O2", *extra, "-o", str(exe), str(src)], check=True)
        bins[name] = exe
    return bins


def spawn(cmd: list[str], **kw: Any) -> subprocess.Popen[bytes]:
    p = subprocess.Popen(cmd, **kw)
    LIVE.append(p)
    return p


def stop(p: subprocess.Popen[bytes], sig: int = signal.SIGTERM, wait_s: float = 60) -> None:
    if p.poll() is None:
        p.send_signal(sig)
        try:
            p.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    if p in LIVE:
        LIVE.remove(p)


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class PeakRss:
    """Samples a process's VmRSS in a thread: the peak of a storm, start-up excluded.

    (VmHWM would include the probe compile at start-up, which peaks far above a
    storm.)  Sampling every 50 ms can miss a spike shorter than that.
    """

    def __init__(self, pid: int, every_s: float = 0.05) -> None:
        self.pid, self.every_s = pid, every_s
        self.peak = rss_mib(pid)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.peak = max(self.peak, rss_mib(self.pid))
            except OSError:
                return  # the process is gone

    def stop(self) -> float:
        self._stop.set()
        self.thread.join()
        return self.peak


def wait_idle(pid: int, cap_s: float) -> float:
    """Seconds until the process stops using CPU (its backlog is drained), capped."""
    t0 = time.monotonic()
    last, quiet = cpu_s(pid), 0
    while time.monotonic() - t0 < cap_s and quiet < 2:
        time.sleep(0.25)
        now = cpu_s(pid)
        quiet = quiet + 1 if now - last < 0.02 else 0
        last = now
    return time.monotonic() - t0


class Watcher:
    """Drains a child's stream in a thread (1 MiB reads, so the reader costs little).

    Notes when the line holding `marker` arrives; counts the lines after it that are
    one pid each (bpftrace: one per event) and the "Lost N events" bpftrace reports.
    """

    def __init__(self, stream: IO[bytes], marker: bytes) -> None:
        self.marker, self.fd = marker, stream.fileno()
        self.seen = threading.Event()
        self.events = 0
        self.lost = 0
        self.text = b""  # everything up to the marker line, for error messages
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while chunk := os.read(self.fd, 1 << 20):
            if not self.seen.is_set():
                self.text += chunk
                if self.marker not in self.text or b"\n" not in self.text.split(self.marker)[1]:
                    continue
                chunk = self.text.split(self.marker, 1)[1].split(b"\n", 1)[1]
                self.seen.set()
            lost = LOST.findall(chunk)
            self.lost += sum(int(x) for x in lost)
            self.events += chunk.count(b"\n") - len(lost)


def storm(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the storm process itself).

    The CPU time includes the kernel work done in the process's context (syscalls, the
    programs on its hooks, loopback softirq it runs), and unlike the wall time it hardly
    moves with other load on a shared machine.
    """
    t0 = time.perf_counter()
    p = spawn(cmd)
    _, status, ru = os.wait4(p.pid, 0)
    elapsed = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    LIVE.remove(p)
    if p.returncode != 0:
        raise RuntimeError(f"{cmd[0]} exited {p.returncode}")
    return elapsed, ru.ru_utime + ru.ru_stime


def armed(p: subprocess.Popen[bytes], w: Watcher, t0: float, what: str) -> float:
    while not w.seen.wait(0.1):
        if p.poll() is not None or time.monotonic() - t0 > 120:
            raise RuntimeError(f"{what} did not arm: {w.text.decode(errors='replace')}")
    return time.monotonic() - t0


def count_records(out: Path, wl: Workload) -> dict[str, Any]:
    """What the NDJSON says about the storm: lines, represented events, last stats."""
    import orjson

    helper = wl.helper[:15].encode()  # the comm the kernel reports
    tag = b'"action":"' + wl.action.encode() + b'"'
    lines = represented = 0
    stats: dict[str, Any] = {}
    with open(out, "rb") as fh:
        for line in fh:
            if b'"action":"stats"' in line:
                stats = orjson.loads(line)["rlguard"]
                continue
            if tag not in line or helper not in line:
                continue
            doc = orjson.loads(line)
            if wl.action == "exec":
                if doc["process"]["executable"] != "/bin/true":
                    continue
            elif wl.action == "fork":
                if doc["process"]["parent"]["name"] != wl.helper[:15]:
                    continue
            elif doc.get("process", {}).get("name") != wl.helper[:15]:
                continue
            lines += 1
            # a folded connect line stands for `count` connects (monitor/sensor/folds.py)
            represented += doc.get("rlguard", {}).get("connect", {}).get("count", 1)
    return {"lines": lines, "represented": represented, "stats": stats}


def _total(v: Any) -> int:
    """A counter that is a number, or per sink a dict of numbers (None: 0)."""
    if isinstance(v, dict):
        return sum(x or 0 for x in v.values())
    return int(v or 0)


def monitored(
    kind: str,
    wl: Workload,
    cmd: list[str],
    n: int,
    out: Path,
    cflags: str | None,
    tree: Path = REPO,
) -> dict[str, Any]:
    t0 = time.monotonic()
    if kind != "bpftrace":
        # this checkout's monitor package (or --baseline's), whatever the venv points at
        env = dict(os.environ, PYTHONPATH=str(tree))
        if cflags:
            env["RLGUARD_BPF_CFLAGS"] = cflags
        mon = spawn(
            [sys.executable, "-m", "monitor.cli", "run", "--config", str(BENCH_CONFIG)]
            + ["--output", str(out)],
            cwd=tree,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        assert mon.stderr is not None
        w = Watcher(mon.stderr, b"armed")
    else:
        assert wl.bpftrace_probe is not None
        mon = spawn(
            ["bpftrace", "-e", bpftrace_prog(wl.bpftrace_probe)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert mon.stdout is not None
        w = Watcher(mon.stdout, b"armed")
    try:
        startup = armed(mon, w, t0, kind)
        time.sleep(0.5)
        rss0, c0 = rss_mib(mon.pid), cpu_s(mon.pid)
        peak = PeakRss(mon.pid)
        elapsed, storm_cpu = storm(cmd)
        c1 = cpu_s(mon.pid)
        drain = wait_idle(mon.pid, 300 if kind != "bpftrace" else 30)
        res: dict[str, Any] = {
            "ops_s": n / elapsed,
            "storm_cpu_us": 1e6 * storm_cpu / n,
            "startup_s": startup,
            "cpu_storm_pct": 100 * (c1 - c0) / elapsed,
            "cpu_total_s": cpu_s(mon.pid) - c0,
            "drain_s": drain,
            "rss_before_mib": rss0,
            "rss_after_mib": rss_mib(mon.pid),
            "expected": n,
        }
        # the monitor's CPU per operation, drain included (user space's cost)
        res["monitor_cpu_us"] = 1e6 * res["cpu_total_s"] / n
        if wl.name == "churn" and kind != "bpftrace":
            # exited processes leave the table after exit_grace_s (5 s) + one expiry tick
            time.sleep(7)
            res["rss_settled_mib"] = rss_mib(mon.pid)
            res["rss_settled_pct"] = 100 * (res["rss_settled_mib"] - rss0) / rss0
        res["rss_peak_mib"] = peak.stop()
    finally:
        stop(mon, signal.SIGINT if kind == "bpftrace" else signal.SIGTERM)
        w.thread.join(timeout=10)
    if kind == "bpftrace":
        # every printf line, all pids (the host's own traffic is a small excess)
        res.update(received=w.events, dropped=w.lost)
        return res
    got = count_records(out, wl)
    out.unlink()
    stats = got["stats"]
    kern = stats["kernel"]
    res.update(
        received=got["represented"],
        lines=got["lines"],
        records_sent=sum(kern["sent"].values()),
        dropped=stats["drops_total"],
        dropped_type=kern["drops"].get(wl.action, 0),
        quiet=sum(kern.get("quiet", {}).values()),
        # lines the output could not hold (a loss too, after the kernel's)
        lines_lost=_total(stats["output"]["lines_lost"]),
        folded=kern.get("quiet", {}).get("connect_folded", 0),
    )
    return res


def summary(vals: list[float]) -> dict[str, float]:
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}


def alert_latency(n: int) -> dict[str, Any]:
    path = OUT / "alert_latency.json"
    path.unlink(missing_ok=True)
    p = spawn(
        [
            sys.executable,
            str(REPO / "bench" / "alert_latency.py"),
            "-n",
            str(n),
            "--json",
            str(path),
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
    )
    rc = p.wait()
    LIVE.remove(p)
    res: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    res["rc"] = rc
    return res


def table(res: dict[str, Any], kinds: list[str]) -> str:
    def span(s: dict[str, float], fmt: str) -> str:
        return f"{s['median']:{fmt}} [{s['min']:{fmt}}-{s['max']:{fmt}}]"

    def med(r: dict[str, Any], key: str, fmt: str) -> str:
        return f"{r[key]['median']:{fmt}}" if key in r else ""

    hdr = (
        "workload",
        "tool",
        "ops/s med [min-max]",
        "x bare med [min-max]",
        "storm cpu us/op",
        "monitor cpu us/op",
        "start s",
        "cpu%",
        "rss MiB before->after(->settled)",
        "rss peak",
        "expected",
        "received",
        "lines",
        "records sent",
        "not sent",
        "dropped",
        "lines lost",
        "drain s",
    )
    rows = [hdr]
    for what, per in res["workloads"].items():
        for kind in ["bare", *kinds]:
            r = per.get(kind)
            if not r:
                continue
            rss = ""
            if "rss_before_mib" in r:
                rss = f"{r['rss_before_mib']['median']:.0f}->{r['rss_after_mib']['median']:.0f}"
                if "rss_settled_mib" in r:
                    rss += f"->{r['rss_settled_mib']['median']:.0f}"
            rows.append(
                (
                    what,
                    kind,
                    span(r["ops_s"], ",.0f"),
                    span(r["ratio"], ".2f") if "ratio" in r else ("1" if kind == "bare" else ""),
                    span(r["storm_cpu_us"], ".1f") if "storm_cpu_us" in r else "",
                    med(r, "monitor_cpu_us", ".1f"),
                    med(r, "startup_s", ".2f"),
                    med(r, "cpu_storm_pct", ".0f"),
                    rss,
                    med(r, "rss_peak_mib", ".0f"),
                    med(r, "expected", ",.0f"),
                    med(r, "received", ",.0f"),
                    med(r, "lines", ",.0f"),
                    med(r, "records_sent", ",.0f"),
                    med(r, "quiet", ",.0f"),
                    med(r, "dropped", ",.0f"),
                    med(r, "lines_lost", ",.0f"),
                    med(r, "drain_s", ".1f"),
                )
            )
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(hdr))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    al = res.get("alert_latency") or {}
    lines.append(
        f"alert latency (n={al.get('clients')}, seen {al.get('alerts_seen')}): "
        f"p50 {al.get('p50_ms')} ms, p99 {al.get('p99_ms')} ms, max {al.get('max_ms')} ms"
    )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--quick", action="store_true", help="10^5 connects, 10^4 payloads/execs, 10^5 processes"
    )
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("-n", type=int, help="connects per storm (default 10^6, quick 10^5)")
    ap.add_argument("--payload-n", type=int, help="connections with payload (10^5, quick 10^4)")
    ap.add_argument("--exec-n", type=int, help="execs per storm (default 10^5, quick 10^4)")
    ap.add_argument("--churn-n", type=int, help="short-lived processes (10^6, quick 10^5)")
    ap.add_argument("--alert-n", type=int, help="alert-latency clients (default 1000, quick 200)")
    ap.add_argument(
        "--only", action="append", help="run only these workloads (repeatable; default all)"
    )
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=CFLAGS",
        help="also run rlguard with these probe flags, e.g. "
        "'no-filter=-DRLG_NO_TCP_FILTER -DRLG_NO_CONNECT_FOLD' (before/after in one run)",
    )
    ap.add_argument(
        "--baseline",
        type=Path,
        help="also run rlguard from this tree (e.g. an export of main) in every round: "
        "before and after side by side",
    )
    ap.add_argument("--no-bpftrace", action="store_true", help="skip the bpftrace peer")
    ap.add_argument("--no-alert", action="store_true", help="skip the alert-latency run")
    ap.add_argument("--fleet", action="store_true", help="also run bench/fleet.py")
    ap.add_argument("--fleet-only", action="store_true", help="run only bench/fleet.py")
    ap.add_argument("--fleet-hosts", type=int, help="simulated hosts (default 100, quick 20)")
    args = ap.parse_args()
    if args.fleet or args.fleet_only:
        fleet_args = ["--hosts", str(args.fleet_hosts or (20 if args.quick else 100))]
        if args.quick:
            fleet_args += ["--seconds", "20"]
        fleet = [sys.executable, str(REPO / "bench" / "fleet.py"), *fleet_args]
        if args.fleet_only:
            return subprocess.run(fleet, cwd=REPO).returncode
    else:
        fleet = []
    if os.geteuid() != 0:
        print("bench needs root (it loads eBPF programs): sudo make bench", file=sys.stderr)
        return 1
    ns = {
        "connect": args.n or (10**5 if args.quick else 10**6),
        "payload": args.payload_n or (10**4 if args.quick else 10**5),
        "exec": args.exec_n or (10**4 if args.quick else 10**5),
        "churn": args.churn_n or (10**5 if args.quick else 10**6),
    }
    variants: dict[str, str | None] = {"rlguard": None}
    for v in args.variant:
        name, _, flags = v.partition("=")
        variants[name] = flags
    if args.baseline:
        variants["baseline"] = None
    kinds = [*variants, *([] if args.no_bpftrace else ["bpftrace"])]
    bins = build()
    wls = [w for w in workloads(ns) if not args.only or w.name in args.only]
    raw: dict[str, list[dict[str, Any]]] = {w.name: [] for w in wls}
    res: dict[str, Any] = {
        "meta": {
            "kernel": platform.release(),
            "cpus": os.cpu_count(),
            "rounds": args.rounds,
            "n": ns,
            "variants": variants,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
    }
    try:
        for rnd in range(args.rounds):
            for wl in wls:
                n = int(wl.args[-1])
                cmd = [str(bins[wl.helper]), *wl.args]
                row: dict[str, Any] = {}
                bare = None
                if wl.bare:
                    elapsed, storm_cpu = storm(cmd)
                    bare = n / elapsed
                    row["bare"] = {"ops_s": bare, "storm_cpu_us": 1e6 * storm_cpu / n}
                # the monitored kinds in a rotated order each round: a load that comes and
                # goes on a shared machine does not always fall on the same one
                shift = rnd % len(kinds)
                for kind in kinds[shift:] + kinds[:shift]:
                    if kind == "bpftrace" and wl.bpftrace_probe is None:
                        continue
                    tree = args.baseline if kind == "baseline" else REPO
                    r = monitored(kind, wl, cmd, n, OUT / "events.ndjson", variants.get(kind), tree)
                    if bare:
                        r["ratio"] = r["ops_s"] / bare
                    row[kind] = r
                raw[wl.name].append(row)
                # every finished storm is kept, should a later one fail or be interrupted
                (OUT / "partial.json").write_text(json.dumps({**res, "raw": raw}, indent=2))
                print(
                    f"round {rnd + 1}/{args.rounds} {wl.name}: "
                    + ", ".join(
                        f"{k} {v['ops_s']:,.0f}/s"
                        + (f" x{v['ratio']:.2f}" if "ratio" in v else "")
                        + (f" recv {v['received']:,}/{n:,}" if "received" in v else "")
                        for k, v in row.items()
                    ),
                    file=sys.stderr,
                )
        if not args.no_alert:
            res["alert_latency"] = alert_latency(args.alert_n or (200 if args.quick else 1000))
    except KeyboardInterrupt:
        print("interrupted: monitors stopped, no results written", file=sys.stderr)
        return 130
    finally:
        for p in list(LIVE):
            stop(p, wait_s=30)
    res["workloads"] = {}
    for what, rows in raw.items():
        per: dict[str, Any] = {"rounds": rows}
        for kind in rows[0]:
            keys = [k for k, v in rows[0][kind].items() if isinstance(v, (int, float))]
            per[kind] = {k: summary([r[kind][k] for r in rows]) for k in keys}
        res["workloads"][what] = per
    (OUT / "results.json").write_text(json.dumps(res, indent=2))
    print(table(res, kinds), flush=True)
    print(f"\nJSON: {OUT / 'results.json'}")
    if fleet:
        return subprocess.run(fleet, cwd=REPO).returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
