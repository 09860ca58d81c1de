"""The episodes view of `rlguard tail` shows who holds a GPU (from gpu_holders records)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from monitor.tui.app import TailApp
from monitor.tui.model import EventStore, build_row
from monitor.tui.widgets.episodes import EpisodeTable
from tests.unit.test_tui import DEMO_LINES, SIZE, loaded, run, until

pytestmark = pytest.mark.unit


def holders_doc(*holders: dict[str, Any], device: str = "/dev/nvidia0") -> dict[str, Any]:
    return {
        "@timestamp": "2026-11-27T04:34:40.000000Z",
        "event": {"kind": "metric", "dataset": "rlguard.gpu", "action": "gpu_holders"},
        "rlguard": {
            "gpu": {
                "devices": [{"device": device, "rdev": "195:0", "holders": list(holders)}],
                "holders": len(holders),
                "holdings": len(holders),
                "nvml": {"present": True},
            }
        },
    }


MINER = {
    "pid": 4242,
    "name": "[red]xmrig",
    "episode_id": "ep-17",
    "fds": [3],
    "nvml": {"memory_bytes": 3 * 2**30},
}
TRAINER = {"pid": 100, "name": "python", "episode_id": "ep-gpu", "fds": [5]}


def test_gpu_holders_row_and_episode_summary() -> None:
    store = EventStore()
    row = store.add_doc(holders_doc(MINER, TRAINER))
    assert row.kind == "metric" and row.summary == "GPU holders: 2 processes on 1 devices"
    assert store.episodes["ep-17"].gpu == ["nvidia0 [red]xmrig(4242) 3.0 GiB"]
    assert store.episodes["ep-gpu"].gpu == ["nvidia0 python(100)"]
    # the next record is a snapshot: released holdings disappear
    store.add_doc(holders_doc(TRAINER))
    assert store.episodes["ep-17"].gpu == [] and store.episodes["ep-gpu"].gpu
    # hostile shapes are ignored, not fatal
    bad = holders_doc()
    bad["rlguard"]["gpu"]["devices"] = [None, 3, {"holders": [None, {"episode_id": 5}]}]
    build_row(1, bad)
    store.add_doc(bad)


def test_episodes_view_shows_gpu_holders(tmp_path: Path) -> None:
    src = tmp_path / "stream.ndjson"
    extra = [json.dumps(holders_doc(MINER, TRAINER))]
    src.write_text("\n".join(DEMO_LINES + extra) + "\n")

    async def scenario() -> None:
        app = TailApp(src)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, loaded(app, len(DEMO_LINES) + 1))
            await pilot.press("e")
            table = app.query_one(EpisodeTable)
            rows = {table.get_row_at(i)[0].plain: table.get_row_at(i) for i in range(2)}
            assert set(rows) == {"ep-17", "ep-gpu"}
            gpu_col = [c.label.plain for c in table.columns.values()].index("GPU holders")
            # markup in a process name stays literal
            assert rows["ep-17"][gpu_col].plain == "nvidia0 [red]xmrig(4242) 3.0 GiB"
            assert rows["ep-gpu"][gpu_col].plain == "nvidia0 python(100)"

    run(scenario())
