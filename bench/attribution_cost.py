"""The collector's cost per record, side by side with an earlier tree (issue 16's check that
attribution did not get noticeably dearer).

Feeds typed records straight into ``Collector.handle`` (no kernel: the fake sensor), the
whole per-record path: process table, attribution, detectors, rendering and the one
serialisation.  Times are the process's CPU time (the machines are shared: wall time
would count other sessions' work).  A workload is a worker that forks children, each of
which execs, connects out, sends its first bytes and exits (5 records a child).  Variants:
the worker's episode from environment tags only, or bound through the registry (births).
``attribute`` alone is timed too, on the connect records, and the calls (Python and C)
made per record are counted: the one figure here that other sessions on the machine
cannot disturb.

    sudo .venv/bin/python bench/attribution_cost.py --base 93e0e9b [--rounds 5] [-n 20000]

With ``--base REV`` the tree at REV is extracted with `git archive` and every round runs
both trees in turn (fresh processes, same machine, same moment), so the ratios compare like
with like; without it only this tree runs.  Prints a table; ``--json FILE`` writes it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def one_run(n: int, variant: str) -> dict[str, float]:
    """Runs inside the tree under test (its monitor package on sys.path)."""
    got = _run(n, variant, count_calls=False)
    # the deterministic figure: Python and C calls per record, on a fresh collector
    got["calls_per_record"] = _run(min(n, 2000), variant, count_calls=True)["calls_per_record"]
    return got


def _run(n: int, variant: str, count_calls: bool) -> dict[str, float]:
    from monitor.assembly import build_collector
    from monitor.config import config_from_dict
    from monitor.sensor.events import (
        ConnectEvent,
        ExecEvent,
        ExitEvent,
        ForkEvent,
        SendEvent,
        TagsetEvent,
    )
    from tests.support.events import hdr as support_hdr
    from tests.support.sensor import FakeSensor

    class NullSink:
        name = "null"

        def write(self, doc: Any) -> None:
            pass

        def flush(self) -> bool:
            return True

        def close(self) -> None:
            pass

    registry = variant == "registry"
    cfg = config_from_dict(
        {"registry": {"socket": "/nonexistent/rlg-bench.sock" if registry else ""}}
    )
    c = build_collector(cfg, NullSink(), sensor=FakeSensor(), heartbeat=False, ledger=False)
    keys = list(cfg.tags.keys)
    worker, tagset_id = 4_000_000, 7
    values = [None] * len(keys)
    values[keys.index("RL_EPISODE_ID")] = "ep-bench"
    values[keys.index("RL_WORKER_ID")] = "w-bench"
    mask = sum(1 << i for i, v in enumerate(values) if v is not None)

    def hdr(pid: int, ts: int, origin: int = worker) -> dict[str, Any]:
        return support_hdr(pid, ppid=worker, ts=ts, tagset=tagset_id, origin=origin, comm="bench")

    ts = 10**9
    c.handle(
        TagsetEvent(
            **hdr(worker, ts, origin=worker),
            id=tagset_id,
            present_mask=mask,
            own_mask=mask,
            truncated_mask=0,
            values=values,
        )
    )
    c.handle(
        ExecEvent(
            **hdr(worker, ts), filename="/usr/bin/python3", argv=["python3", "w"], own_tag_mask=mask
        )
    )
    if registry:
        from monitor.state.registry.protocol import parse_message

        assert c.registry is not None
        msg = parse_message(b'{"op":"episode_start","episode_id":"ep-bench","pids":[4000000]}')
        c.registry.apply(msg, ts, 0, {"pid": 1})
    events: list[Any] = []
    for i in range(n):
        child = 100_000 + (i % 3_000_000)
        t = ts + 1000 * (i + 1)
        events.append(ForkEvent(**{**hdr(worker, t), "tid": worker}, child_pid=child))
        events.append(
            ExecEvent(
                **{**hdr(child, t + 1), "ppid": worker},
                filename="/bin/tool",
                argv=["tool", str(i)],
                own_tag_mask=mask,
            )
        )
        events.append(
            ConnectEvent(
                **{**hdr(child, t + 2), "ppid": worker},
                fd=3,
                ret=0,
                cookie=i + 1,
                family=2,
                daddr="198.51.100.9",
                dport=443,
                sock_type=1,
                protocol=6,
            )
        )
        events.append(
            SendEvent(
                **{**hdr(child, t + 3), "ppid": worker},
                cookie=i + 1,
                owner_pid=child,
                payload_len=16,
                family=2,
                saddr="198.51.100.1",
                daddr="198.51.100.9",
                sport=40000,
                dport=443,
                data=b"GET / HTTP/1.1\r\n",
            )
        )
        events.append(ExitEvent(**{**hdr(child, t + 4), "ppid": worker}, exit_code=0))
    handle = c.handle
    if count_calls:
        calls = [0]

        def count(_frame: Any, event: str, _arg: Any) -> None:
            if event in ("call", "c_call"):
                calls[0] += 1

        sys.setprofile(count)
        for ev in events:
            handle(ev)
        sys.setprofile(None)
        return {"calls_per_record": calls[0] / len(events)}
    start = time.process_time()
    for ev in events:
        handle(ev)
    per_record = (time.process_time() - start) / len(events) * 1e6
    # attribution alone, on the connect records (the table holds the exited children)
    connects = [ev for ev in events if isinstance(ev, ConnectEvent)][-3000:]
    procs = [c.table.procs.get(ev.pid) for ev in connects]
    attribute = c.attributor.attribute
    start = time.process_time()
    for _ in range(5):
        for ev, p in zip(connects, procs, strict=True):
            attribute(ev, p)
    per_attr = (time.process_time() - start) / (5 * len(connects)) * 1e6
    return {"us_per_record": per_record, "us_per_attribute": per_attr}


def extract(rev: str) -> Path:
    out = Path(tempfile.mkdtemp(prefix="rlg-bench-base-"))
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", rev], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    return out


def run_tree(tree: Path, n: int, variant: str) -> dict[str, float]:
    code = (
        "import json,sys; sys.path.insert(0, sys.argv[1]); "
        "sys.path.insert(1, sys.argv[2]); from attribution_cost import one_run; "
        "print(json.dumps(one_run(int(sys.argv[3]), sys.argv[4])))"
    )
    res = subprocess.run(
        [sys.executable, "-c", code, str(tree), str(REPO / "bench"), str(n), variant],
        capture_output=True,
        text=True,
        cwd=tree,
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-2000:])
    return dict(json.loads(res.stdout.strip().splitlines()[-1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", help="git revision to compare with (extracted to a temp dir)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("-n", type=int, default=20000, help="children per run (5 records each)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    trees = {"this": REPO}
    if args.base:
        trees = {"base": extract(args.base), "this": REPO}
    results: dict[str, dict[str, dict[str, list[float]]]] = {}
    for r in range(args.rounds):
        for variant in ("tags", "registry"):
            for name, tree in trees.items():
                got = run_tree(tree, args.n, variant)
                slot = results.setdefault(variant, {}).setdefault(name, {})
                for k, v in got.items():
                    slot.setdefault(k, []).append(v)
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    table: dict[str, Any] = {"n_children": args.n, "rounds": args.rounds, "base": args.base}
    print(f"{'variant':10} {'metric':18} " + " ".join(f"{t:>16}" for t in trees) + "   ratio")
    for variant, by_tree in results.items():
        for metric in ("us_per_record", "us_per_attribute", "calls_per_record"):
            med = {t: statistics.median(by_tree[t][metric]) for t in trees}
            lo_hi = {t: (min(by_tree[t][metric]), max(by_tree[t][metric])) for t in trees}
            ratio = med["this"] / med["base"] if "base" in med else 1.0
            cells = " ".join(f"{med[t]:7.2f} ({lo_hi[t][0]:.1f}-{lo_hi[t][1]:.1f})" for t in trees)
            print(f"{variant:10} {metric:18} {cells}   {ratio:.3f}")
            table[f"{variant}.{metric}"] = {"median": med, "range": lo_hi, "ratio": ratio}
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
