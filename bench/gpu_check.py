"""GPU check for a machine with an NVIDIA GPU: is a CUDA workload seen holding the GPU,
with its NVML memory figure?

    sudo .venv/bin/python bench/gpu_check.py [--mib 512] [--out result.json]

What it does:

1. checks the prerequisites (root, /dev/nvidia*, torch with CUDA, nvidia-ml-py) and
   says what is missing (exit 2: not run);
2. starts rlguard in-process: the full monitor (eBPF probes) when bcc loads, else the
   user-space half only (the /proc reconcile scan and NVML; mode "scan-only");
3. starts a small torch workload in an RL episode (RL_EPISODE_ID=ep-gpu-check) that
   allocates --mib MiB on cuda:0 and waits;
4. passes (exit 0) when the holder table lists the workload's pid on an NVIDIA device,
   attributed to the episode, with an NVML memory figure of at least --mib MiB; with
   the probes it also wants the workload's gpu_open records and RLG-GPU-001 (the
   workload is in an episode and not on the allowlist). Exit 1 otherwise.

The summary (JSON) goes to stdout and to --out (or $OUT/gpu_check.json when $OUT is
set, as on the device machines).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

EPISODE = "ep-gpu-check"
WORKLOAD = """
import sys, time, torch
x = torch.empty(int(sys.argv[1]) * 2**20, dtype=torch.uint8, device="cuda:0")
x.fill_(1)
torch.cuda.synchronize()
print("ready", flush=True)
time.sleep(float(sys.argv[2]))
"""


def prerequisites() -> list[str]:
    missing = []
    if os.geteuid() != 0:
        missing.append("root (the probes and /proc/PID/fd of other users need it)")
    if not glob.glob("/dev/nvidia[0-9]*"):
        missing.append("an NVIDIA device node (/dev/nvidia0)")
    try:
        import pynvml  # noqa: F401
    except ImportError:
        missing.append("nvidia-ml-py (pip install 'rlguard[gpu]')")
    probe = subprocess.run(
        [sys.executable, "-c", "import torch; assert torch.cuda.is_available()"],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        missing.append("torch with CUDA in this interpreter")
    return missing


# --rehearse: a dry run on a machine without a GPU (a mknod node stands in for
# /dev/nvidia0, a Python process that opens it for torch; NVML is expected absent)
FAKE_WORKLOAD = """
import os, sys, time
fd = os.open(sys.argv[3], os.O_RDWR | os.O_CLOEXEC)
print("ready", flush=True)
time.sleep(float(sys.argv[2]))
"""


def config(interval: float, devices: list[str] | None = None) -> Any:
    from monitor.config import config_from_dict

    gpu: dict[str, Any] = {"reconcile_interval_s": interval, "metrics_interval_s": 1.0}
    if devices is not None:
        gpu["devices"] = devices
    return config_from_dict(
        {
            "gpu": gpu,
            "output": {"metrics_interval_s": 5.0},
        }
    )


class Sink:
    def __init__(self) -> None:
        self.docs: list[dict[str, Any]] = []

    def write(self, doc: dict[str, Any]) -> None:
        self.docs.append(json.loads(json.dumps(doc, default=str)))

    def flush(self) -> bool:
        return True


def start_full(cfg: Any) -> tuple[Any, Sink, Any]:
    """The whole monitor in a thread (needs bcc and kernel headers)."""
    import threading

    from monitor.assembly import build_collector

    sink = Sink()
    col = build_collector(cfg, sink, heartbeat=False)
    col.start()
    t = threading.Thread(target=col.run, daemon=True)
    t.start()
    return col, sink, t


class ScanOnly:
    """The user-space half: process table seeded from /proc, holder table, scan, NVML."""

    def __init__(self, cfg: Any) -> None:
        from monitor.clock import Clock
        from monitor.sinks.ecs import Renderer
        from monitor.state.attribution import Attributor
        from monitor.state.cgroups import CgroupResolver
        from monitor.state.gpu import GpuHolders
        from monitor.state.process_table import ProcessTable

        self.sink = Sink()
        self.table = ProcessTable(cfg.tags)
        cgroups = CgroupResolver()
        self.attributor = Attributor(self.table, cfg.attribution, None, cgroups)
        self.renderer = Renderer(self.table, Clock())
        self.gpu = GpuHolders(cfg.gpu, self.table, cgroups)

    def step(self) -> None:
        self.table.seed_from_proc()  # no exec records here: learn new processes from /proc
        scan = self.gpu.scan_now()
        for ev in self.gpu.reconcile(scan) if scan is not None else []:
            ae = self.attributor.attribute(ev, self.table.process_for(ev))
            self.sink.write(self.renderer.render(ae))
            self.gpu.apply(ae)
        snapshot = self.gpu.snapshot_due()
        if snapshot is not None:
            self.sink.write(self.renderer.render_gpu_holders(snapshot))


def holder_entry(
    docs: list[dict[str, Any]], pid: int, want_nvml: bool
) -> tuple[dict[str, Any], str] | None:
    """The workload's entry in the latest gpu_holders record (one with NVML figures if asked)."""
    for d in reversed(docs):
        if d.get("event", {}).get("action") != "gpu_holders":
            continue
        for dev in d["rlguard"]["gpu"]["devices"]:
            for h in dev["holders"]:
                if h["pid"] == pid and (h.get("nvml") or not want_nvml):
                    return h, dev["device"]
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--mib", type=int, default=512, help="MiB the workload allocates")
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--out", default=None)
    ap.add_argument("--rehearse", action="store_true", help="dry run without a GPU (see code)")
    ap.add_argument("--scan-only", action="store_true", help="do not load the eBPF probes")
    args = ap.parse_args()
    out_path = args.out or (
        os.path.join(os.environ["OUT"], "gpu_check.json") if os.environ.get("OUT") else None
    )
    summary: dict[str, Any] = {"ran": False, "passed": False, "host": os.uname().nodename}

    def finish(code: int) -> int:
        text = json.dumps(summary, indent=2, default=str)
        print(text)
        if out_path:
            Path(out_path).write_text(text + "\n")
        return code

    fake_dir = None
    workload, extra_args, devices = WORKLOAD, [], None
    if args.rehearse:
        import stat
        import tempfile

        fake_dir = tempfile.mkdtemp(prefix="rlg-gpu-check-")
        node = os.path.join(fake_dir, "nvidia0")
        os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(1, 8))
        workload, extra_args, devices = FAKE_WORKLOAD, [node], [f"{fake_dir}/nvidia*"]
        summary["rehearsal"] = True
    else:
        missing = prerequisites()
        if missing:
            summary["missing"] = missing
            return finish(2)
    summary["ran"] = True
    from monitor.state.gpu import nvml_status

    summary["nvml"] = nvml_status("auto")[1]
    cfg = config(interval=2.0, devices=devices)
    mode = "full"
    col = thread = scan_only = None
    try:
        if args.scan_only:
            raise RuntimeError("--scan-only")
        col, sink, thread = start_full(cfg)
    except Exception as exc:  # no bcc / headers on this machine: the user-space half only
        summary["full_monitor_error"] = f"{type(exc).__name__}: {exc}"[:500]
        mode = "scan-only"
        scan_only = ScanOnly(cfg)
        scan_only.gpu.start()
        sink = scan_only.sink
    summary["mode"] = mode
    env = dict(os.environ, RL_EPISODE_ID=EPISODE)
    work = subprocess.Popen(
        [sys.executable, "-c", workload, str(args.mib), str(args.timeout + 30), *extra_args],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert work.stdout is not None
        ready = work.stdout.readline().strip() == "ready"
        summary["workload"] = {"pid": work.pid, "ready": ready, "mib": args.mib}
        deadline = time.monotonic() + args.timeout
        found = None
        while time.monotonic() < deadline and found is None:
            if scan_only is not None:
                scan_only.step()
            time.sleep(1.0)
            found = holder_entry(sink.docs, work.pid, want_nvml=True)
        if found is None:
            found = holder_entry(sink.docs, work.pid, want_nvml=False)
        checks: dict[str, bool] = {"workload_ready": ready}
        if found is not None:
            entry, device = found
            summary["holder"] = {"device": device, **entry}
            mem = (entry.get("nvml") or {}).get("memory_bytes") or 0
            checks["holder_listed"] = True
            checks["nvidia_device"] = "nvidia" in os.path.basename(device)
            checks["episode_attributed"] = entry.get("episode_id") == EPISODE
            if args.rehearse:  # no NVML here: the figure must be absent, not wrong
                checks["nvml_absent_in_rehearsal"] = "nvml" not in entry
            else:
                checks["nvml_memory_at_least_requested"] = mem >= args.mib * 2**20
        else:
            checks["holder_listed"] = False
        opens = [
            d
            for d in sink.docs
            if d.get("event", {}).get("action") == "gpu_open"
            and d.get("process", {}).get("pid") == work.pid
        ]
        summary["gpu_open_paths"] = sorted({d["file"]["path"] for d in opens})
        summary["gpu_open_via"] = sorted({d["rlguard"]["gpu"]["via"] for d in opens})
        alerts = [
            d["rule"]["id"]
            for d in sink.docs
            if d.get("event", {}).get("kind") == "alert"
            and d.get("process", {}).get("pid") == work.pid
        ]
        summary["alerts"] = alerts
        if mode == "full":
            checks["probe_saw_opens"] = any(d["rlguard"]["gpu"]["via"] != "scan" for d in opens)
            checks["rlg_gpu_001"] = "RLG-GPU-001" in alerts
        summary["checks"] = checks
        summary["passed"] = all(checks.values())
        return finish(0 if summary["passed"] else 1)
    finally:
        work.kill()
        work.wait()
        if col is not None:
            col.stop_event.set()
            if thread is not None:
                thread.join(timeout=10)
            col.close()
        if scan_only is not None:
            scan_only.gpu.close()
        if fake_dir is not None:
            import shutil

            shutil.rmtree(fake_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
