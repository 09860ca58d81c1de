"""The episode ledger behind a real `rlguard run`: a tagged process, its verdict, a restart."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.support.live import REPO, RLGUARD, action, episodes_json, wait_line
from tests.support.live import start_run as start
from tests.support.live import stop_run as stop

pytestmark = pytest.mark.integration

LISTENER = (
    "import socket, time; s = socket.create_server(('127.0.0.1', 0)); "
    "print(s.getsockname()[1], flush=True); time.sleep(600)"
)


def test_tagged_process_gets_a_kept_episode_that_survives_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "ledger" / "episodes.db"
    cfg = tmp_path / "rlguard.toml"
    cfg.write_text(
        f'[service]\nstate_dir = "{tmp_path / "state"}"\n'
        "[output]\nmetrics_interval_s = 0.5\n"
        f'[ledger]\npath = "{db}"\nidle_end_s = 1.5\nverdict_grace_s = 0.3\n'
    )
    episode, run = f"ep-{uuid.uuid4().hex[:12]}", f"run-{uuid.uuid4().hex[:8]}"
    out = tmp_path / "events.ndjson"
    # a listener of its own: one in this process would make the test's later children
    # work done on the worker's request (rl.requested_by, docs/registry.md)
    listener = subprocess.Popen([sys.executable, "-c", LISTENER], stdout=subprocess.PIPE, text=True)
    assert listener.stdout is not None
    port = int(listener.stdout.readline())
    mon = start(cfg, out)
    try:
        wait_line(out, action("started"), timeout=60)
        worker = subprocess.run(
            [
                sys.executable,
                "-c",
                "import socket, sys; socket.create_connection(('127.0.0.1', int(sys.argv[1]))"
                ").close()",
                str(port),
            ],
            env={"PATH": "/usr/bin:/bin", "RL_EPISODE_ID": episode, "RL_RUN_ID": run},
            timeout=30,
        )
        assert worker.returncode == 0
        line = wait_line(
            out,
            lambda d: (
                d["event"].get("dataset") == "rlguard.verdict" and d["rl"]["episode_id"] == episode
            ),
        )
        verdict = line["rlguard"]["verdict"]
        assert line["rl"]["run_id"] == run
        assert (verdict["verdict"], verdict["reasons"], verdict["revision"]) == ("keep", [], 1)
        assert verdict["end_reason"] == "idle" and verdict["source"] == "tags"
        assert verdict["counts"]["connects"] >= 1 and verdict["counts"]["execs"] >= 1
        assert verdict["counts"]["external_destinations"] == 0  # loopback is internal
        # birth episode: a background process started in episode 1 connects while
        # episode 2 runs; its connect counts for episode 1
        first, second = f"{episode}-b1", f"{episode}-b2"
        connect = (
            "import socket, sys, time; time.sleep(float(sys.argv[2])); "
            "socket.create_connection(('127.0.0.1', int(sys.argv[1]))).close()"
        )
        background = subprocess.Popen(
            [sys.executable, "-c", connect, str(port), "1.0"],
            env={"PATH": "/usr/bin:/bin", "RL_EPISODE_ID": first, "RL_RUN_ID": run},
        )
        time.sleep(0.3)
        for _ in range(2):
            subprocess.run(
                [sys.executable, "-c", connect, str(port), "0"],
                env={"PATH": "/usr/bin:/bin", "RL_EPISODE_ID": second, "RL_RUN_ID": run},
                timeout=30,
                check=True,
            )
        assert background.wait(timeout=30) == 0
        got = {}
        for eid in (first, second):
            got[eid] = wait_line(
                out,
                lambda d, eid=eid: (
                    d["event"].get("dataset") == "rlguard.verdict" and d["rl"]["episode_id"] == eid
                ),
            )["rlguard"]["verdict"]
        assert got[first]["counts"]["connects"] == 1
        assert got[second]["counts"]["connects"] == 2
        # read-only while the monitor writes
        listed = {e["episode_id"]: e for e in episodes_json(cfg)}
        assert listed[episode]["verdict"] == "keep"
        assert listed[episode]["counts"]["connects"] == verdict["counts"]["connects"]
    finally:
        stop(mon)
        listener.kill()
        listener.wait()
    assert mon.returncode == 0, mon.stderr.read() if mon.stderr else ""

    out2 = tmp_path / "events2.ndjson"
    mon2 = start(cfg, out2)
    try:
        wait_line(out2, action("monitoring_gap"), timeout=60)
        listed = {e["episode_id"]: e for e in episodes_json(cfg)}
        assert episode in listed, "the ledger lost the episode across the restart"
        again = listed[episode]
        assert (again["verdict"], again["revision"], again["run_id"]) == ("keep", 1, run)
        assert again["open"] is False
        flagged = subprocess.run(
            [*RLGUARD, "episodes", "--config", str(cfg), "--flagged", "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        )
        assert episode not in flagged.stdout
        # it ended before the monitor stopped: the restart's gap does not touch it
        time.sleep(1.0)
        text = out2.read_text()
        assert f'"episode_id":"{episode}"' not in text.replace(" ", "") or all(
            json.loads(x)["event"].get("dataset") != "rlguard.verdict"
            for x in text.splitlines()
            if episode in x
        )
    finally:
        stop(mon2)
