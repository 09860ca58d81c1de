"""A real monitor (real eBPF probes) running in a thread, its documents kept in memory."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from monitor.assembly import build_collector
from monitor.config import Config

Doc = dict[str, Any]


class MemorySink:
    """Keeps every document, serialised and parsed back, exactly as a reader sees it.

    `keep`, when given, selects the documents held (every one is still serialised and
    parsed): the monitor sees the whole machine, and other sessions' floods would otherwise
    fill memory and make every wait scan millions of lines.
    """

    def __init__(self, keep: Callable[[Doc], bool] | None = None) -> None:
        self.keep = keep
        self.lines: list[bytes] = []
        self.docs: list[Doc] = []
        self._cond = threading.Condition()
        self.lines_written = 0
        self.lines_lost = 0
        self.pending = 0
        self.last_error = None

    def write(self, doc: Doc) -> None:
        line = orjson.dumps(doc)
        parsed = orjson.loads(line)  # a strict parser: proof that the line is valid JSON
        if self.keep is not None and not self.keep(parsed):
            self.lines_written += 1
            return
        with self._cond:
            self.lines.append(line)
            self.docs.append(parsed)
            self.lines_written += 1
            self._cond.notify_all()

    def flush(self) -> bool:
        return True

    def wait_for(self, pred: Callable[[Doc], bool], timeout: float = 10.0, start: int = 0) -> Doc:
        deadline = time.monotonic() + timeout
        idx = start
        with self._cond:
            while True:
                while idx < len(self.docs):
                    if pred(self.docs[idx]):
                        return self.docs[idx]
                    idx += 1
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no matching event within {timeout}s")
                self._cond.wait(left)

    def find_all(self, pred: Callable[[Doc], bool]) -> list[Doc]:
        with self._cond:
            return [d for d in self.docs if pred(d)]

    def mark(self) -> int:
        with self._cond:
            return len(self.docs)


class LiveMonitor:
    def __init__(
        self, config: Config, ledger: bool = False, keep: Callable[[Doc], bool] | None = None
    ) -> None:
        self.sink = MemorySink(keep)
        self.collector = build_collector(config, self.sink, heartbeat=False, ledger=ledger)
        self._thread: threading.Thread | None = None

    def start(self) -> LiveMonitor:
        self.collector.start()
        self._thread = threading.Thread(target=self.collector.run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.collector.stop_event.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.collector.close()

    # shortcuts
    def wait_for(self, pred: Callable[[Doc], bool], timeout: float = 10.0, start: int = 0) -> Doc:
        return self.sink.wait_for(pred, timeout, start)

    def mark(self) -> int:
        return self.sink.mark()


def action(name: str) -> Callable[[Doc], bool]:
    return lambda d: d.get("event", {}).get("action") == name


def exec_of(pid: int) -> Callable[[Doc], bool]:
    return lambda d: d["event"]["action"] == "exec" and d.get("process", {}).get("pid") == pid


def exec_with_arg(marker: str) -> Callable[[Doc], bool]:
    return lambda d: d["event"]["action"] == "exec" and marker in d["process"].get("args", [])


def wait_line(out: Path, pred: Callable[[Doc], bool], timeout: float = 30) -> Doc:
    """The first line of the NDJSON file OUT that matches, waiting for it to be written."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if out.exists():
            for line in out.read_text().splitlines():
                if line.strip() and pred(doc := json.loads(line)):
                    return doc
        time.sleep(0.1)
    raise AssertionError(f"expected line not written to {out}")


REPO = Path(__file__).resolve().parents[2]
RLGUARD = [sys.executable, "-m", "monitor.cli"]


def start_run(cfg: Path, out: Path) -> subprocess.Popen[str]:
    """A real `rlguard run --config CFG --output OUT`, this checkout's code."""
    return subprocess.Popen(
        [*RLGUARD, "run", "--config", str(cfg), "--output", str(out)],
        env={"PATH": "/usr/bin:/bin"},
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )


def stop_run(mon: subprocess.Popen[str]) -> None:
    """SIGTERM (the clean stop), SIGKILL only if it hangs."""
    if mon.poll() is None:
        mon.send_signal(signal.SIGTERM)
        try:
            mon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            mon.kill()
            mon.wait()


def episodes_json(cfg: Path, *args: str) -> list[Doc]:
    """`rlguard episodes --json` (with ARGS such as --flagged), parsed."""
    res = subprocess.run(
        [*RLGUARD, "episodes", "--config", str(cfg), "--json", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert res.returncode == 0, res.stderr
    return [json.loads(line) for line in res.stdout.splitlines()]
