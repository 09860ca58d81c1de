"""Cost of the GPU open/close probes on opens that are not GPU opens.

Runs bench/open_storm (10^5 open+close of a regular file) in interleaved
rounds: bare (nothing attached), rlguard's probes with the GPU programs
(default [gpu] devices) and without them ([gpu] devices = []). Root only.

    sudo .venv/bin/python bench/gpu_open_cost.py [--rounds 5] [--n 100000]
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from monitor.config import load_config  # noqa: E402
from monitor.sensor.probes import Sensor  # noqa: E402


def build() -> Path:
    out = REPO / "bench" / "build" / "open_storm"
    src = REPO / "bench" / "open_storm.c"
    if not out.exists() or out.stat().st_mtime < src.stat().st_mtime:
        out.parent.mkdir(parents=True, exist_ok=True)
        cc = shutil.which("gcc") or shutil.which("cc") or "cc"
        subprocess.run([cc, "-O2", "-o", str(out), str(src)], check=True)
    return out


def one(binary: Path, n: int) -> float:
    res = subprocess.run([str(binary), "/etc/hostname", str(n)], capture_output=True, text=True)
    return float(res.stdout)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--n", type=int, default=100_000)
    args = ap.parse_args()
    binary = build()
    cfg = load_config(None)
    with_gpu = Sensor(cfg.probes, list(cfg.tags.keys), cfg.gpu.devices)
    without = Sensor(dataclasses.replace(cfg.probes), list(cfg.tags.keys), ())
    results: dict[str, list[float]] = {"bare": [], "rlguard, GPU probes": [], "rlguard, no GPU": []}
    for _ in range(args.rounds):
        results["bare"].append(one(binary, args.n))
        with_gpu.load()
        try:
            results["rlguard, GPU probes"].append(one(binary, args.n))
            with_gpu.drain()
        finally:
            with_gpu.close()
        without.load()
        try:
            results["rlguard, no GPU"].append(one(binary, args.n))
            without.drain()
        finally:
            without.close()
    print(f"{args.n} x open()+close() of /etc/hostname, {args.rounds} interleaved rounds")
    print(f"{'':22} {'median ns/pair':>15} {'min':>8} {'max':>8}")
    for name, xs in results.items():
        print(f"{name:22} {statistics.median(xs):15.1f} {min(xs):8.1f} {max(xs):8.1f}")


if __name__ == "__main__":
    main()
