"""Side-by-side benchmark: bare / rlguard / bpftrace, interleaved rounds (issue #6).

Each round runs, per workload, the storm bare, then under the real `rlguard run
--output FILE`, then under the equivalent bpftrace one-liner.  Every figure is
a ratio or count from this run: ops/s and ratio to the same round's bare run,
events expected / received / dropped, start-up (launch to armed), CPU% of the
monitor over the storm, RSS before/after.  Medians with min-max over rounds.
Alert latency comes from bench/alert_latency.py.  Writes bench/out/results.json.

usage: sudo .venv/bin/python bench/run.py [--quick] [--rounds 3] [-n N] [--exec-n N]
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
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out"
CLOSED_PORT = 9  # discard: nothing listens on loopback, each connect is refused at once
TICK = os.sysconf("SC_CLK_TCK")
LOST = re.compile(rb"^Lost (\d+) events", re.M)
# the peer: bpftrace printing one line per event; BEGIN (fired once every probe is
# attached) marks it armed
BPFTRACE = {
    what: 'BEGIN { printf("armed\\n"); } ' + probe + ' { printf("%d\\n", pid); }'
    for what, probe in {
        "connect": "tracepoint:syscalls:sys_enter_connect",
        "exec": "tracepoint:sched:sched_process_exec",
    }.items()
}
LIVE: list[subprocess.Popen[bytes]] = []  # stopped in main()'s finally, Ctrl-C included


def build() -> dict[str, Path]:
    OUT.mkdir(parents=True, exist_ok=True)
    srcs = {
        "connect": REPO / "tests" / "helpers" / "connect_flood.c",
        "exec": REPO / "bench" / "exec_storm.c",
    }
    bins = {}
    for name, src in srcs.items():
        exe = OUT / src.stem
        subprocess.run(["gcc", "-O2", "-o", str(exe), str(src)], check=True)
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


def storm(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    p = spawn(cmd)
    if p.wait() != 0:
        raise RuntimeError(f"{cmd[0]} exited {p.returncode}")
    LIVE.remove(p)
    return time.perf_counter() - t0


def armed(p: subprocess.Popen[bytes], w: Watcher, t0: float, what: str) -> float:
    while not w.seen.wait(0.1):
        if p.poll() is not None or time.monotonic() - t0 > 120:
            raise RuntimeError(f"{what} did not arm: {w.text.decode(errors='replace')}")
    return time.monotonic() - t0


def monitored(kind: str, what: str, cmd: list[str], n: int, out: Path) -> dict[str, Any]:
    t0 = time.monotonic()
    if kind == "rlguard":
        mon = spawn(
            [str(REPO / ".venv/bin/rlguard"), "run", "--output", str(out)],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        assert mon.stderr is not None
        w = Watcher(mon.stderr, b"armed")
    else:
        mon = spawn(
            ["bpftrace", "-e", BPFTRACE[what]], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        assert mon.stdout is not None
        w = Watcher(mon.stdout, b"armed")
    try:
        startup = armed(mon, w, t0, kind)
        time.sleep(0.5)
        rss0, c0 = rss_mib(mon.pid), cpu_s(mon.pid)
        elapsed = storm(cmd)
        c1 = cpu_s(mon.pid)
        drain = wait_idle(mon.pid, 120 if kind == "rlguard" else 30)
        res: dict[str, Any] = {
            "ops_s": n / elapsed,
            "startup_s": startup,
            "cpu_storm_pct": 100 * (c1 - c0) / elapsed,
            "cpu_total_s": cpu_s(mon.pid) - c0,
            "drain_s": drain,
            "rss_before_mib": rss0,
            "rss_after_mib": rss_mib(mon.pid),
            "expected": n,
        }
    finally:
        stop(mon, signal.SIGINT if kind == "bpftrace" else signal.SIGTERM)
        w.thread.join(timeout=10)
    if kind == "bpftrace":
        # every printf line, all pids (the host's own traffic is a small excess)
        res.update(received=w.events, dropped=w.lost, kernel_sent=None)
        return res
    stats = {}
    with open(out, "rb") as fh:
        for line in fh:
            if b'"action":"stats"' in line:
                stats = json.loads(line)["rlguard"]
    out.unlink()
    kern = stats["kernel"]
    res.update(
        kernel_sent=kern["sent"].get(what),
        received=stats["events"].get(what, 0),
        dropped=kern["drops"].get(what, 0),
        dropped_all_types=stats["drops_total"],
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


def table(res: dict[str, Any]) -> str:
    def span(s: dict[str, float], fmt: str) -> str:
        return f"{s['median']:{fmt}} [{s['min']:{fmt}}-{s['max']:{fmt}}]"

    hdr = (
        "workload",
        "tool",
        "ops/s med [min-max]",
        "x bare",
        "start s",
        "cpu%",
        "rss MiB",
        "expected",
        "received",
        "dropped",
        "drain s",
    )
    rows = [hdr]
    for what in ("connect", "exec"):
        for kind, r in res[what].items():
            if kind == "rounds":
                continue
            rows.append(
                (
                    what,
                    kind,
                    span(r["ops_s"], ",.0f"),
                    span(r["ratio"], ".2f") if "ratio" in r else "1",
                    f"{r['startup_s']['median']:.2f}" if "startup_s" in r else "",
                    f"{r['cpu_storm_pct']['median']:.0f}" if "cpu_storm_pct" in r else "",
                    (
                        f"{r['rss_before_mib']['median']:.0f}->{r['rss_after_mib']['median']:.0f}"
                        if "rss_before_mib" in r
                        else ""
                    ),
                    f"{r['expected']['median']:,.0f}" if "expected" in r else "",
                    f"{r['received']['median']:,.0f}" if "received" in r else "",
                    f"{r['dropped']['median']:,.0f}" if "dropped" in r else "",
                    f"{r['drain_s']['median']:.1f}" if "drain_s" in r else "",
                )
            )
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(hdr))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    al = res["alert_latency"]
    lines.append(
        f"alert latency (n={al.get('clients')}, seen {al.get('alerts_seen')}): "
        f"p50 {al.get('p50_ms')} ms, p99 {al.get('p99_ms')} ms, max {al.get('max_ms')} ms"
    )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="10^5 connects, 10^4 execs")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("-n", type=int, help="connects per storm (default 10^6, quick 10^5)")
    ap.add_argument("--exec-n", type=int, help="execs per storm (default 10^5, quick 10^4)")
    ap.add_argument("--alert-n", type=int, help="alert-latency clients (default 1000, quick 200)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench needs root (it loads eBPF programs): sudo make bench", file=sys.stderr)
        return 1
    ns = {
        "connect": args.n or (10**5 if args.quick else 10**6),
        "exec": args.exec_n or (10**4 if args.quick else 10**5),
    }
    bins = build()
    cmds = {
        "connect": [str(bins["connect"]), str(CLOSED_PORT), str(ns["connect"])],
        "exec": [str(bins["exec"]), str(ns["exec"])],
    }
    raw: dict[str, list[dict[str, Any]]] = {"connect": [], "exec": []}
    res: dict[str, Any] = {
        "meta": {
            "kernel": platform.release(),
            "cpus": os.cpu_count(),
            "rounds": args.rounds,
            "n": ns,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
    }
    try:
        for rnd in range(args.rounds):
            for what in ("connect", "exec"):
                bare = ns[what] / storm(cmds[what])
                row: dict[str, Any] = {"bare": {"ops_s": bare}}
                for kind in ("rlguard", "bpftrace"):
                    r = monitored(kind, what, cmds[what], ns[what], OUT / "events.ndjson")
                    r["ratio"] = r["ops_s"] / bare
                    row[kind] = r
                raw[what].append(row)
                print(
                    f"round {rnd + 1}/{args.rounds} {what}: bare {bare:,.0f}/s, "
                    f"rlguard x{row['rlguard']['ratio']:.2f}, "
                    f"bpftrace x{row['bpftrace']['ratio']:.2f}",
                    file=sys.stderr,
                )
        res["alert_latency"] = alert_latency(args.alert_n or (200 if args.quick else 1000))
    except KeyboardInterrupt:
        print("interrupted: monitors stopped, no results written", file=sys.stderr)
        return 130
    finally:
        for p in list(LIVE):
            stop(p, wait_s=30)
    for what, rows in raw.items():
        res[what] = {"rounds": rows}
        for kind in ("bare", "rlguard", "bpftrace"):
            keys = [k for k, v in rows[0][kind].items() if isinstance(v, (int, float))]
            res[what][kind] = {k: summary([r[kind][k] for r in rows]) for k in keys}
    (OUT / "results.json").write_text(json.dumps(res, indent=2))
    print(table(res), flush=True)
    print(f"\nJSON: {OUT / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
