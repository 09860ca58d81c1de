"""Alert latency: from a client's send() to the alert line being readable.

Starts the real `rlguard run` writing NDJSON to a file, a stratum "pool" on
loopback, and N short-lived client processes that each connect and send a
mining.subscribe (each is a new process, so each yields its own alert).  A
reader tails the file; latency = time the alert line was read - time the
client called send().  Prints p50/p99/max and writes JSON with --json.

usage: sudo .venv/bin/python bench/alert_latency.py [-n 1000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def pool_server(sock: socket.socket, stop: threading.Event) -> None:
    sock.settimeout(0.2)
    while not stop.is_set():
        try:
            c, _ = sock.accept()
        except OSError:
            continue
        try:
            c.recv(4096)
        except OSError:
            pass
        c.close()


def tail_alerts(path: Path, found: dict[int, int], stop: threading.Event) -> None:
    while not path.exists() and not stop.is_set():
        time.sleep(0.001)
    with open(path, "rb") as fh:
        buf = b""
        while not stop.is_set():
            chunk = fh.read(1 << 20)
            if not chunk:
                time.sleep(0.0005)
                continue
            now = time.time_ns()
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                if b'"kind":"alert"' not in line or b"RLG-MIN-001" not in line:
                    continue
                doc = json.loads(line)
                pid = doc.get("process", {}).get("pid")
                if pid is not None and pid not in found:
                    found[pid] = now


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=1000)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    repo = Path(__file__).resolve().parent.parent
    tmp = Path(tempfile.mkdtemp(prefix="rlg-bench-"))
    out = tmp / "events.ndjson"
    cfg = tmp / "rlguard.toml"  # the defaults, whatever /etc/rlguard has
    cfg.write_text("# bench: built-in defaults\n")
    mon = subprocess.Popen(
        [sys.executable, "-m", "monitor.cli", "run", "--config", str(cfg), "--output", str(out)],
        cwd=repo,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert mon.stderr is not None
    t0 = time.monotonic()
    line = mon.stderr.readline()
    armed_s = time.monotonic() - t0
    if "armed" not in line:
        print("monitor failed:", line, mon.stderr.read(), file=sys.stderr)
        return 1
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(256)
    port = srv.getsockname()[1]
    stop = threading.Event()
    found: dict[int, int] = {}
    threads = [
        threading.Thread(target=pool_server, args=(srv, stop), daemon=True),
        threading.Thread(target=tail_alerts, args=(out, found, stop), daemon=True),
    ]
    for t in threads:
        t.start()
    sent: dict[int, int] = {}
    try:
        for i in range(args.n):
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(r)
                s = socket.create_connection(("127.0.0.1", port))
                msg = b'{"id":1,"method":"mining.subscribe","params":["bench/%d"]}\n' % i
                t = time.time_ns()
                s.sendall(msg)
                os.write(w, str(t).encode())
                os._exit(0)
            os.close(w)
            sent[pid] = int(os.read(r, 64))
            os.close(r)
            os.waitpid(pid, 0)
            time.sleep(0.002)  # one client at a time: latency, not throughput
        deadline = time.monotonic() + 10
        while len(found) < len(sent) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        mon.terminate()
        mon.wait(timeout=30)
    lat = sorted((found[p] - sent[p]) / 1e6 for p in sent if p in found)
    missing = len(sent) - len(lat)
    res = {
        "clients": len(sent),
        "alerts_seen": len(lat),
        "missing": missing,
        "p50_ms": round(statistics.median(lat), 2) if lat else None,
        "p99_ms": round(lat[int(len(lat) * 0.99) - 1], 2) if lat else None,
        "max_ms": round(lat[-1], 2) if lat else None,
        "armed_s": round(armed_s, 2),
    }
    print(json.dumps(res))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return 0 if missing == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
