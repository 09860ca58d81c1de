"""What the programs that see every send cost per send: sock:sock_send_length (who sent a
connection's first bytes, probes/sender.bpf.h) and the egress hook, side by side.

Each round runs bench/send_storm.c (UDP, AF_UNIX datagram and established TCP sends) bare,
under the probes as `rlguard run` loads them, and under the same probes built without
the sock_send_length program (-URLG_HAVE_SOCK_SEND_LENGTH).  Other sessions' programs on
a shared machine slow every column alike; the differences between columns are ours.  The
kernel's own accounting (kernel.bpf_stats_enabled, switched on for the run and back) gives
the run time per invocation of the sock_send_length program, which no other load moves.

usage: sudo .venv/bin/python bench/send_cost.py [--rounds 3] [-n 300000] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

VARIANTS = {"bare": None, "rlguard": "", "no sock_send_length": "-URLG_HAVE_SOCK_SEND_LENGTH"}
MODES = ("udp", "unix", "tcp")


def storm(exe: Path, mode: str, n: int) -> float:
    out = subprocess.run([str(exe), mode, str(n)], capture_output=True, text=True, check=True)
    return float(out.stdout.split()[1])


def main() -> None:
    from monitor.config import load_config
    from monitor.sensor.probes import EXTRA_CFLAGS_ENV, Sensor

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("-n", type=int, default=300000)
    ap.add_argument("--json")
    args = ap.parse_args()
    exe = REPO / "bench" / "out" / "send_storm"
    exe.parent.mkdir(parents=True, exist_ok=True)
    src = REPO / "bench" / "send_storm.c"
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(src), "-lpthread"], check=True)
    cfg = load_config(None)
    got: dict[str, dict[str, list[float]]] = {v: {m: [] for m in MODES} for v in VARIANTS}
    per_call: dict[str, list[float]] = {}
    stats = Path("/proc/sys/kernel/bpf_stats_enabled")
    was = stats.read_text().strip()
    stats.write_text("1")
    try:
        run_rounds(args, exe, cfg, Sensor, EXTRA_CFLAGS_ENV, got, per_call)
    finally:
        stats.write_text(was)
    table = {v: {m: statistics.median(x) for m, x in by.items()} for v, by in got.items()}
    print(f"{'ns per send (median)':22}" + "".join(f"{m:>10}" for m in MODES))
    for v, by in table.items():
        print(f"{v:22}" + "".join(f"{by[m]:10.0f}" for m in MODES))
    for mode, ns in per_call.items():
        print(f"sock_send_length program, {mode} sends: {statistics.median(ns):.0f} ns per call")
    if args.json:
        out = {"median_ns": table, "raw": got, "sock_send_length_ns_per_call": per_call}
        Path(args.json).write_text(json.dumps(out, indent=2))


def prog_stats(sensor: object) -> tuple[int, int]:
    """(run_time_ns, run_cnt) of the sock_send_length program, from its fdinfo."""
    bpf = getattr(sensor, "bpf", None)
    fn = bpf.funcs.get(b"tracepoint__sock__sock_send_length") if bpf is not None else None
    if fn is None:
        return (0, 0)
    vals = {}
    for line in Path(f"/proc/self/fdinfo/{fn.fd}").read_text().splitlines():
        k, _, v = line.partition(":")
        vals[k.strip()] = v.strip()
    return int(vals.get("run_time_ns", 0)), int(vals.get("run_cnt", 0))


def run_rounds(args, exe, cfg, Sensor, env_name, got, per_call) -> None:  # type: ignore[no-untyped-def]
    for r in range(args.rounds):
        for variant, flags in VARIANTS.items():
            sensor = None
            if flags is not None:
                os.environ[env_name] = flags
                sensor = Sensor(cfg.probes, list(cfg.tags.keys))
                sensor.load()
            try:
                for mode in MODES:
                    before = prog_stats(sensor)
                    got[variant][mode].append(storm(exe, mode, args.n))
                    after = prog_stats(sensor)
                    if after[1] > before[1]:
                        ns = (after[0] - before[0]) / (after[1] - before[1])
                        per_call.setdefault(mode, []).append(ns)
                    if sensor is not None:
                        sensor.drain()
            finally:
                if sensor is not None:
                    sensor.close()
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)


if __name__ == "__main__":
    main()
