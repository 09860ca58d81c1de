"""What stream capture and the TLS uprobes cost per operation (issue 14), side by side.

Each round runs every workload bare (no monitor), then under `rlguard run` built from a
baseline tree (--baseline, e.g. an export of main: no stream capture), under this tree
with ``[streams] tls = false`` (stream capture, no uprobes, no sock_send_length program),
and under this tree's defaults.  The differences of the per-operation times are the
costs: baseline -> tls-off is the stream capture, tls-off -> full the TLS uprobes and the
socket-send program.  Medians with min-max over rounds.

Workloads (loopback, one client process timing its own loop):
  tls_write   SSL_write of 64 bytes on one Python ssl connection (the first 4 KiB of
              plaintext are captured, the rest of the writes return early in the probe)
  tls_capture SSL_write of 64 bytes, a new connection every 60 writes (capturing always)
  tcp_write   send() of 64 bytes with TCP_NODELAY on one connection (a segment each)

Besides (``--programs``): the programs' own run time per run, from the kernel's
``kernel.bpf_stats_enabled`` counters (``run_time_ns``/``run_cnt`` in the program fd's
fdinfo), with this tree's probes loaded in-process and each workload run once: what
each hook costs per packet or call, free of the machine's scheduling noise.

usage: sudo .venv/bin/python bench/streams_cost.py [--rounds 5] [-n 20000]
       [--baseline /path/to/main/export] [--programs]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
import run as bench  # noqa: E402  (bench/run.py: spawn, stop, Watcher, armed)

OUT = REPO / "bench" / "out"

SERVER = textwrap.dedent(
    r"""
    import socket, ssl, sys, threading
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(sys.argv[1], sys.argv[2])
    def listen():
        s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(64); return s
    tls, plain = listen(), listen()
    print(tls.getsockname()[1], plain.getsockname()[1], flush=True)
    def drain(c, wrap):
        try:
            if wrap:
                c = ctx.wrap_socket(c, server_side=True)
            while c.recv(65536):
                pass
        except OSError:
            pass
    def serve(s, wrap):
        while True:
            c, _ = s.accept()
            threading.Thread(target=drain, args=(c, wrap), daemon=True).start()
    threading.Thread(target=serve, args=(plain, False), daemon=True).start()
    serve(tls, True)
    """
)

CLIENT = textwrap.dedent(
    r"""
    import socket, ssl, sys, time
    kind, port, n, ca = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    msg = b"x" * 63 + b"\n"
    ctx = ssl.create_default_context(cafile=ca)
    def tls_conn():
        return ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)),
                               server_hostname="127.0.0.1")
    if kind == "tcp_write":
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t0 = time.perf_counter()
        for _ in range(n):
            s.send(msg)
        print(time.perf_counter() - t0)
    elif kind == "tls_write":
        s = tls_conn()
        t0 = time.perf_counter()
        for _ in range(n):
            s.sendall(msg)
        print(time.perf_counter() - t0)
    else:  # tls_capture: timing the writes only, not the handshakes
        spent = 0.0
        for _ in range(n // 60):
            s = tls_conn()
            t0 = time.perf_counter()
            for _ in range(60):
                s.sendall(msg)
            spent += time.perf_counter() - t0
            s.close()
        print(spent)
    """
)

WORKLOADS = ("tls_write", "tls_capture", "tcp_write")


def client(kind: str, ports: dict[str, int], n: int, ca: Path) -> float:
    port = ports["plain" if kind == "tcp_write" else "tls"]
    count = n * (5 if kind == "tcp_write" else 1)
    res = subprocess.run(
        [sys.executable, "-c", CLIENT, kind, str(port), str(count), str(ca)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-1000:])
    ops = count if kind != "tls_capture" else (count // 60) * 60
    return 1e6 * float(res.stdout) / ops  # microseconds per operation


def start_monitor(tree: Path, config: Path) -> Any:
    env = dict(os.environ, PYTHONPATH=str(tree))
    t0 = time.monotonic()
    mon = bench.spawn(
        [
            sys.executable,
            "-m",
            "monitor.cli",
            "run",
            "--config",
            str(config),
            "--output",
            "/dev/null",
        ],
        cwd=tree,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    w = bench.Watcher(mon.stderr, b"armed")
    bench.armed(mon, w, t0, str(tree))
    time.sleep(1.0)
    return mon


STATS_SYSCTL = Path("/proc/sys/kernel/bpf_stats_enabled")
PROGRAMS = (
    "rlg_egress",
    "rlg_ingress",
    "rlg_ssl_write",
    "rlg_ssl_write_ex",
    "rlg_ssl_set_fd",
    "tracepoint__sock__sock_send_length",
)


def prog_stats(funcs: dict[bytes, Any]) -> dict[str, tuple[int, int]]:
    """(run_time_ns, run_cnt) of each loaded program, from its fd's fdinfo."""
    out: dict[str, tuple[int, int]] = {}
    for name, fn in funcs.items():
        key = name.decode() if isinstance(name, bytes) else str(name)
        if key not in PROGRAMS:
            continue
        fields = {}
        for line in Path(f"/proc/self/fdinfo/{fn.fd}").read_text().splitlines():
            k, _, v = line.partition(":")
            fields[k.strip()] = v.strip()
        out[key] = (int(fields.get("run_time_ns", 0)), int(fields.get("run_cnt", 0)))
    return out


def program_costs(ports: dict[str, int], n: int, ca: Path) -> dict[str, Any]:
    """ns per program run and runs per operation, per workload (this tree's probes)."""
    from monitor.config import load_config
    from monitor.sensor.probes import Sensor
    from monitor.sensor.tls_libs import TlsLibraries

    cfg = load_config(None)
    sensor = Sensor(cfg.probes, list(cfg.tags.keys), (), cfg.streams)
    sensor.load()
    TlsLibraries(cfg.streams, sensor).start()
    before = STATS_SYSCTL.read_text().strip()
    STATS_SYSCTL.write_text("1")
    out: dict[str, Any] = {}
    try:
        for w in WORKLOADS:
            s0 = prog_stats(sensor.bpf.funcs)
            count = n * (5 if w == "tcp_write" else 1)
            client(w, ports, n, ca)
            sensor.drain()  # keep the ring from filling; records are not decoded
            s1 = prog_stats(sensor.bpf.funcs)
            per: dict[str, Any] = {}
            for name in s1:
                dt = s1[name][0] - s0.get(name, (0, 0))[0]
                dc = s1[name][1] - s0.get(name, (0, 0))[1]
                if dc:
                    per[name] = {"ns_per_run": dt / dc, "runs_per_op": dc / count}
            out[w] = per
    finally:
        STATS_SYSCTL.write_text(before)
        sensor.close()
    return out


def span(vals: list[float]) -> dict[str, float]:
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("-n", type=int, default=20000, help="writes per TLS workload (TCP: 5x)")
    ap.add_argument("--baseline", type=Path, help="a tree without stream capture (main)")
    ap.add_argument("--programs", action="store_true", help="also the programs' run times")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (loads eBPF programs)", file=sys.stderr)
        return 1
    OUT.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="rlg-streams-cost-"))
    from monitor.lab.relays import make_ca

    ca = make_ca(tmp, "127.0.0.1")
    full = tmp / "full.toml"
    full.write_text("# defaults\n")
    tls_off = tmp / "tls-off.toml"
    tls_off.write_text("[streams]\ntls = false\n")
    kinds: list[tuple[str, Path | None, Path]] = [("bare", None, full)]
    if args.baseline:
        kinds.append(("baseline", args.baseline, full))
    kinds += [("tls-off", REPO, tls_off), ("full", REPO, full)]
    srv = bench.spawn(
        [sys.executable, "-c", SERVER, str(tmp / "server.pem"), str(tmp / "server.key")],
        stdout=subprocess.PIPE,
    )
    assert srv.stdout is not None
    tls_port, plain_port = (int(x) for x in srv.stdout.readline().split())
    ports = {"tls": tls_port, "plain": plain_port}
    raw: dict[str, dict[str, list[float]]] = {w: {k: [] for k, _, _ in kinds} for w in WORKLOADS}
    res: dict[str, Any] = {"n": args.n, "rounds": args.rounds, "us_per_op": {}}
    try:
        if args.programs:
            res["programs"] = program_costs(ports, args.n, ca)
            for w, per in res["programs"].items():
                print(
                    f"programs {w}: "
                    + ", ".join(
                        f"{k} {v['ns_per_run']:.0f} ns x {v['runs_per_op']:.2f}/op"
                        for k, v in per.items()
                    ),
                    file=sys.stderr,
                )
        for rnd in range(args.rounds):
            for name, tree, config in kinds:
                mon = start_monitor(tree, config) if tree is not None else None
                try:
                    for w in WORKLOADS:
                        raw[w][name].append(client(w, ports, args.n, ca))
                finally:
                    if mon is not None:
                        bench.stop(mon)
                print(
                    f"round {rnd + 1}/{args.rounds} {name}: "
                    + ", ".join(f"{w} {raw[w][name][-1]:.2f} us" for w in WORKLOADS),
                    file=sys.stderr,
                )
    finally:
        bench.stop(srv)
        for p in list(bench.LIVE):
            bench.stop(p)
    for w in WORKLOADS:
        res["us_per_op"][w] = {k: span(v) for k, v in raw[w].items()}
    (OUT / "streams_cost.json").write_text(json.dumps(res, indent=2))
    names = [k for k, _, _ in kinds]
    print("workload      " + "  ".join(f"{k:>20}" for k in names))
    for w in WORKLOADS:
        cells = []
        for k in names:
            s = res["us_per_op"][w][k]
            cells.append(f"{s['median']:6.2f} [{s['min']:.2f}-{s['max']:.2f}]".rjust(20))
        print(f"{w:<13} " + "  ".join(cells))
    print(f"\nmicroseconds per operation, medians [min-max]; JSON: {OUT / 'streams_cost.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
