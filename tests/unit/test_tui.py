"""The `rlguard tail` viewer: model, sanitising, pilot-driven UI, snapshots, a real terminal.

Pilot tests replay tests/corpus/tui/demo.ndjson (real `rlguard demo` lines) through
`TailApp` with `App.run_test()`; the tmux test runs `python -m monitor.tui` on a real
terminal and checks that hostile strings never reach it as control sequences.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from rich.text import Text

from monitor.sinks.live import LiveSocketSink
from monitor.tui.app import TailApp
from monitor.tui.model import EventStore, Filter, build_row, episode_query
from monitor.tui.safe import clean
from monitor.tui.source import LineSplitter, SourceKind, follow_file
from monitor.tui.widgets.counters import render_counters
from monitor.tui.widgets.detail import render_detail
from monitor.tui.widgets.episodes import EpisodeTable
from monitor.tui.widgets.event_list import EventList, row_values
from monitor.tui.widgets.help import HelpScreen

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "tests" / "corpus" / "tui" / "demo.ndjson"
DEMO_LINES = DEMO.read_text().splitlines()
DEMO_DOCS = [json.loads(line) for line in DEMO_LINES]
N_ALERTS = sum(d["event"]["kind"] == "alert" for d in DEMO_DOCS)
N_EP17 = sum((d.get("rl") or {}).get("episode_id") == "ep-17" for d in DEMO_DOCS)
SIZE = (120, 40)

# Strings an attacker controls on the host: terminal escapes and Rich/Textual markup.
CLEAR = "\u001b[2J"
OSC_TITLE = "\u001b]0;pwned\u0007"
HOSTILE_ARGS = [
    "/bin/sh",
    f"{CLEAR}{OSC_TITLE}wiped",
    "[red]x",
    "[@click=app.quit]click me[/]",
    "rtl\u202egpj.exe",
    "c1\u009b31mred",
]


def hostile_exec(name: str = "[red]x", episode: str = "ep-[b]evil[/b]") -> dict[str, Any]:
    """An exec line as a hostile writer could put it in a file the viewer follows."""
    return {
        "@timestamp": "2026-11-27T04:34:30.000000Z",
        "event": {"kind": "event", "action": "exec", "dataset": "rlguard.process"},
        "process": {
            "pid": 4242,
            "name": name,
            "executable": "/tmp/[@click=app.quit]",
            "args": HOSTILE_ARGS,
            "parent": {"pid": 1, "name": "init"},
        },
        "rl": {
            "episode_id": episode,
            "worker_id": "w\u001b[31m",
            "lineage": [{"pid": 1, "name": "[@click=app.bell]init", "entity_id": "x"}],
        },
    }


def ndjson(docs: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(d) + "\n" for d in docs)


def run(coro: Awaitable[None]) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


async def until(pilot: Any, cond: Callable[[], bool], timeout: float = 10.0) -> None:
    """Let the app run until ``cond()`` holds."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await pilot.pause(0.05)


def loaded(app: TailApp, n: int) -> Callable[[], bool]:
    return lambda: app.store.counters.lines >= n


def screen_lines(view: EventList) -> list[str]:
    return [view.render_line(y).text for y in range(view.scrollable_content_region.height)]


# --- sanitising and the model --------------------------------------------------------


def test_clean_escapes_terminal_controls() -> None:
    s = clean(f"a{CLEAR}b{OSC_TITLE}c\u202ed\u009be\u2028f\tg")
    assert "\u001b" not in s and "\u0007" not in s and "\u202e" not in s and "\u009b" not in s
    assert s == "a\\x1b[2Jb\\x1b]0;pwned\\x07c\\u{202e}d\\x9be\\u{2028}f\\x09g"
    assert s.isprintable()


def test_clean_keeps_backslashes_and_bounds_length() -> None:
    # the monitor already escaped this newline; the viewer must not double it
    assert clean("a\\x0ab") == "a\\x0ab"
    assert clean("x" * 1000, 10) == "x" * 10 + "…"
    assert clean(None) == "" and clean(True) == "true" and clean(7) == "7"
    assert clean({"a": "\u001b"}) == '{"a":"\\u001b"}'


def test_rows_from_real_lines() -> None:
    store = EventStore()
    rows = store.add_lines(line.encode() for line in DEMO_LINES)
    assert len(rows) == len(DEMO_LINES)
    alerts = [r for r in rows if r.is_alert]
    assert {r.rule for r in alerts} == {"RLG-TUN-001", "RLG-TUN-002", "RLG-TUN-003", "RLG-MIN-001"}
    tun3 = next(r for r in alerts if r.rule == "RLG-TUN-003")
    assert (tun3.severity, tun3.name, tun3.episode, tun3.pid) == ("high", "ssh", "ep-17", "32555")
    assert tun3.time == "04:34:24.919"
    miner = next(r for r in alerts if r.rule == "RLG-MIN-001")
    assert miner.destination == "198.51.100.2:3333"
    assert store.counters.alerts == N_ALERTS
    assert store.counters.alerts_by_severity["critical"] == 2
    ep = store.episodes["ep-17"]
    assert ep.alerts == N_ALERTS and ep.max_severity == "critical"
    assert ep.events == N_EP17 - N_ALERTS and ep.workers == ["rollout-3"]


def test_bad_lines_are_counted_not_fatal() -> None:
    store = EventStore()
    rows = store.add_lines([b"{not json", b"[1,2]", b'"s"', b'{"event": 5, "process": []}'])
    assert store.counters.bad_lines == 3
    assert len(rows) == 1 and rows[0].kind == "?"


def test_hostile_row_is_inert() -> None:
    row = build_row(1, hostile_exec())
    for value in row_values(row):
        assert value.isprintable(), value
    assert "\\x1b[2J\\x1b]0;pwned\\x07wiped" in row.summary
    assert "[@click=app.quit]click me[/]" in row.summary
    assert row.name == "[red]x" and row.worker == "w\\x1b[31m"
    detail = render_detail(row)
    assert "\u001b" not in detail.plain and "\u202e" not in detail.plain
    assert "[@click=app.bell]init(1)" in detail.plain  # lineage, literal
    # no span was made from the markup-looking text: only our own styles
    assert not any("click" in str(span.style) for span in detail.spans)


def test_scrollback_is_bounded() -> None:
    store = EventStore(capacity=100)
    for i in range(250):
        store.add_doc({"event": {"kind": "event", "action": "exec"}, "process": {"pid": i}})
    assert len(store.rows) == 100 and len(store.by_seq) == 100
    assert store.rows[0].pid == "150" and store.counters.evicted == 150


def test_filter_parse_and_match() -> None:
    store = EventStore()
    rows = store.add_lines(line.encode() for line in DEMO_LINES)
    flt = Filter.parse("episode:ep-17 proc:ssh dest:198.51.100.2")
    got = [r for r in rows if flt.matches(r)]
    assert got and all(r.name == "ssh" and r.episode == "ep-17" for r in got)
    assert all(r.destination.startswith("198.51.100.2") for r in got)
    by_pid = [r for r in rows if Filter.parse("proc:32561").matches(r)]
    # the forked child is "sh" until it execs the disguised miner
    assert by_pid and {r.name for r in by_pid} == {"sh", "data-loader"}
    assert [r.rule for r in rows if Filter.parse("rule:RLG-MIN").matches(r)] == ["RLG-MIN-001"]
    alerts = [r for r in rows if Filter.parse("", alerts_only=True).matches(r)]
    assert len(alerts) == N_ALERTS
    exact = Filter.parse(episode_query("ep-1"))
    assert not any(exact.matches(r) for r in rows)  # "=ep-1" is not a prefix match
    assert Filter.parse('worker:"rollout 3"').terms == (("worker", "rollout 3"),)
    assert Filter.parse("unbalanced 'quote").words == ("unbalanced", "'quote")
    assert Filter.parse("proc:ssh", True).describe() == "alerts only, proc:ssh"


def test_counters_from_metric_lines() -> None:
    store = EventStore()

    def metric(action: str, rg: dict[str, Any]) -> dict[str, Any]:
        return {"event": {"kind": "metric", "action": action}, "rlguard": rg}

    store.add_doc(metric("started", {}))
    store.add_doc(metric("events_dropped", {"drops": {"delta": {"exec": 3}, "total": {"exec": 3}}}))
    store.add_doc(metric("stats", {"drops_total": 5, "output": {"lines_lost": 2}}))
    store.add_doc(metric("stats", {"drops_total": "lots", "output": {"lines_lost": -1}}))
    assert (store.counters.kernel_drops, store.counters.output_lost) == (5, 2)
    store.add_doc(metric("started", {}))  # a restart: earlier losses stay counted
    store.add_doc(metric("stats", {"drops_total": 1, "output": {"lines_lost": 0}}))
    assert (store.counters.kernel_drops, store.counters.output_lost) == (6, 2)
    store.add_doc(
        {
            "event": {"kind": "metric", "action": "client_lagged", "dataset": "rlguard.live"},
            "rlguard": {"live": {"skipped_lines": 1234}},
        }
    )
    c = store.counters
    assert (c.lag_notices, c.lag_skipped) == (1, 1234)
    line = render_counters(c, "connected", Filter(), 3, True, 2).plain
    assert "drops 6" in line and "lagged 1" in line and "skipped 1234" in line
    assert "PAUSED +2" in line


def test_line_splitter_bounds_lines() -> None:
    sp = LineSplitter(max_line=10)
    assert sp.feed(b"abc\nde") == [b"abc"]
    assert sp.feed(b"f\n") == [b"def"]
    assert sp.feed(b"x" * 25) == []  # over the limit: dropped, not buffered
    assert sp.feed(b"yyy\nok\n") == [b"ok"]
    assert sp.take_oversize() == 1
    assert sp.feed(b"0123456789A\nfine\n") == [b"fine"]
    assert sp.take_oversize() == 1


def test_follow_file_replays_follows_and_survives_truncation(tmp_path: Path) -> None:
    path = tmp_path / "events.ndjson"
    path.write_text("one\ntwo\npart")
    got: list[bytes] = []
    status: list[str] = []

    async def scenario() -> None:
        task = asyncio.create_task(
            follow_file(path, got.extend, status.append, LineSplitter(), poll_s=0.01)
        )
        await asyncio.sleep(0.1)
        assert got == [b"one", b"two"]  # the partial line waits for its newline
        with path.open("a") as f:
            f.write("ial\nthree\n")
        await asyncio.sleep(0.1)
        assert got[2:] == [b"partial", b"three"]
        path.write_text("new\n")  # truncated by copytruncate-style rotation
        await asyncio.sleep(0.1)
        assert got[-1] == b"new"
        path.unlink()
        path.write_text("rotated\n")  # a new file under the name
        await asyncio.sleep(0.1)
        assert got[-1] == b"rotated"
        task.cancel()

    run(scenario())
    assert any("truncated" in s for s in status) and any("rotated" in s for s in status)


# --- the app, driven by the pilot ------------------------------------------------------


def test_alerts_only_toggle() -> None:
    async def scenario() -> None:
        app = TailApp(DEMO)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, loaded(app, len(DEMO_LINES)))
            view = app.query_one(EventList)
            assert view.row_count == len(DEMO_LINES)
            await pilot.press("a")
            assert view.row_count == N_ALERTS
            assert all(r.is_alert for r in view.rows)
            assert "ALERT critical" in "\n".join(screen_lines(view))
            await pilot.press("a")
            assert view.row_count == len(DEMO_LINES)

    run(scenario())


def test_episode_filter_applies_to_received_and_new_rows(tmp_path: Path) -> None:
    path = tmp_path / "stream.ndjson"
    path.write_text("\n".join(DEMO_LINES) + "\n")

    async def scenario() -> None:
        app = TailApp(path)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, loaded(app, len(DEMO_LINES)))
            view = app.query_one(EventList)
            await pilot.press("slash")
            await pilot.press(*"episode:ep-17", "enter")
            assert view.row_count == N_EP17
            assert {r.episode for r in view.rows} == {"ep-17"}
            assert app.focused is view  # Enter leaves the filter bar
            other = {"event": {"kind": "event", "action": "exec"}, "rl": {"episode_id": "ep-9"}}
            mine = {"event": {"kind": "event", "action": "exec"}, "rl": {"episode_id": "ep-17"}}
            with path.open("a") as f:
                f.write(ndjson([other, mine, other]))
            await until(pilot, loaded(app, len(DEMO_LINES) + 3))
            assert view.row_count == N_EP17 + 1
            await pilot.press("escape")  # in the list: clears the filter
            assert view.row_count == len(DEMO_LINES) + 3

    run(scenario())


def test_typed_filter_is_debounced_then_applied() -> None:
    async def scenario() -> None:
        app = TailApp(DEMO)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, loaded(app, len(DEMO_LINES)))
            view = app.query_one(EventList)
            await pilot.press("slash", *"rule:RLG-TUN")
            await until(pilot, lambda: view.row_count == 3)
            assert {r.rule for r in view.rows} == {"RLG-TUN-001", "RLG-TUN-002", "RLG-TUN-003"}

    run(scenario())


def test_detail_pane_shows_evidence_and_lineage() -> None:
    async def scenario() -> None:
        app = TailApp(DEMO)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, loaded(app, len(DEMO_LINES)))
            await pilot.press("a")
            view = app.query_one(EventList)
            # select the first alert, RLG-TUN-003 (the -R in ssh's argv)
            await pilot.press("home")
            assert view.rows[view.cursor].rule == "RLG-TUN-003"
            await until(pilot, lambda: app.detail.seq == view.seq_at_cursor())
            shown = app.detail.body.content
            assert isinstance(shown, Text)  # never a markup string
            text = shown.plain
            assert "evidence" in text and "ssh.remote_forward: 9000:127.0.0.1:8081" in text
            assert "ssh(32555) < sh(32554) < python(32552)" in text
            assert '"rule": {' in text  # the whole document, pretty-printed
            # clicking a row selects it too
            await pilot.click(EventList, offset=(5, 2))
            assert view.cursor == 2 and view.rows[2].rule == "RLG-TUN-001"
            await until(pilot, lambda: app.detail.seq == view.rows[2].seq)

    run(scenario())


def test_pause_holds_new_rows_and_resume_shows_them(tmp_path: Path) -> None:
    path = tmp_path / "stream.ndjson"
    path.write_text("\n".join(DEMO_LINES) + "\n")
    more = [{"event": {"kind": "event", "action": "exec"}, "process": {"pid": i}} for i in range(5)]

    async def scenario() -> None:
        app = TailApp(path)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, loaded(app, len(DEMO_LINES)))
            view = app.query_one(EventList)
            await pilot.press("p")
            assert app.paused
            top_before = screen_lines(view)
            with path.open("a") as f:
                f.write(ndjson(more))
            await until(pilot, loaded(app, len(DEMO_LINES) + 5))  # still receiving
            assert view.row_count == len(DEMO_LINES) and len(app.held) == 5
            assert screen_lines(view) == top_before  # nothing moved
            await pilot.pause(0.3)
            assert (
                "PAUSED +5"
                in render_counters(
                    app.store.counters, app.status, app.filter, view.row_count, True, 5
                ).plain
            )
            await pilot.press("p")
            assert not app.paused and view.row_count == len(DEMO_LINES) + 5
            assert view.cursor == view.row_count - 1  # it was following: it still is

    run(scenario())


def test_episodes_view_and_choosing_an_episode() -> None:
    async def scenario() -> None:
        app = TailApp(DEMO)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, loaded(app, len(DEMO_LINES)))
            await pilot.press("e")
            table = app.query_one(EpisodeTable)
            assert app.switcher.current == "episodes" and table.row_count == 1
            cells = [c.plain for c in table.get_row_at(0)]
            assert cells[:5] == ["ep-17", "rollout-3", str(N_EP17 - N_ALERTS), "4", "critical"]
            await pilot.press("enter")
            assert app.switcher.current == "events"
            assert app.filter_box.value == "episode:=ep-17"
            assert app.query_one(EventList).row_count == N_EP17

    run(scenario())


def test_help_screen() -> None:
    async def scenario() -> None:
        app = TailApp(DEMO)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("question_mark")
            assert isinstance(app.screen, HelpScreen)
            await pilot.press("escape")
            assert not isinstance(app.screen, HelpScreen)

    run(scenario())


def test_markup_in_the_stream_stays_literal(tmp_path: Path) -> None:
    path = tmp_path / "stream.ndjson"
    path.write_text(ndjson([hostile_exec(name="[@click=app.quit]")]))

    async def scenario() -> None:
        app = TailApp(path)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, loaded(app, 1))
            view = app.query_one(EventList)
            line = screen_lines(view)[0]
            # cut to the column widths, but literal
            assert "[@click=app.qui" in line and "ep-[b]evil[/" in line
            await pilot.click(EventList, offset=(35, 0))  # on the process name
            await pilot.pause(0.2)
            assert app.is_running  # the markup was text, not an action
            await until(pilot, lambda: app.detail.seq == 1)
            shown = app.detail.body.content
            assert isinstance(shown, Text)
            assert "[@click=app.quit]click me[/]" in shown.plain
            assert '"name": "[@click=app.quit]"' in shown.plain
            await pilot.press("e")
            cells = [c.plain for c in app.query_one(EpisodeTable).get_row_at(0)]
            assert cells[0] == "ep-[b]evil[/b]"
            await pilot.press("enter")  # filter by it: quoted, literal, exact
            assert app.filter_box.value == "episode:'=ep-[b]evil[/b]'"
            assert view.row_count == 1 and app.is_running

    run(scenario())


def test_live_socket_source(tmp_path: Path) -> None:
    sink = LiveSocketSink(str(tmp_path / "live.sock"), group="no-such-group-rlg")

    async def scenario() -> None:
        app = TailApp(tmp_path / "live.sock")
        assert app.kind is SourceKind.SOCKET
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: sink.flush() and sink.clients == 1)
            for doc in DEMO_DOCS:
                sink.write(doc)
            sink.write(
                {
                    "event": {
                        "kind": "metric",
                        "action": "client_lagged",
                        "dataset": "rlguard.live",
                    },
                    "rlguard": {"live": {"skipped_lines": 7}},
                }
            )
            sink.flush()
            await until(pilot, loaded(app, len(DEMO_DOCS) + 1))
            assert app.store.counters.alerts == N_ALERTS
            assert app.store.counters.lag_skipped == 7
            assert "connected" in app.status
            sink.close()  # the monitor stops: the viewer waits for it to return
            await until(pilot, lambda: "reconnecting" in app.status or "waiting" in app.status)

    try:
        run(scenario())
    finally:
        sink.close()


def test_entry_points(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from monitor.tui import __main__ as entry
    from monitor.tui import app as app_module

    assert app_module.rlguard_tail(DEMO) == 2  # pytest's stdin is not a terminal
    assert "needs a terminal" in capsys.readouterr().err
    calls: list[tuple[str, str]] = []

    def fake_tail(src: str, kind: str) -> int:
        calls.append((src, kind))
        return 0

    monkeypatch.setattr(entry, "rlguard_tail", fake_tail)
    assert entry.main(["--socket", "/run/rlguard/live.sock"]) == 0
    assert entry.main(["--file", "x.ndjson"]) == 0
    assert entry.main(["y.ndjson"]) == 0
    assert calls == [
        ("/run/rlguard/live.sock", "socket"),
        ("x.ndjson", "file"),
        ("y.ndjson", "auto"),
    ]


# --- snapshots (pytest-textual-snapshot) --------------------------------------------------


def _snapshot_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    # a relative path: the header shows it, and it must not depend on where tests run
    monkeypatch.chdir(tmp_path)
    Path("stream.ndjson").write_text("\n".join(DEMO_LINES) + "\n" + ndjson([hostile_exec()]))
    return "stream.ndjson"


def test_snapshot_live_view(
    snap_compare: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = TailApp(_snapshot_source(tmp_path, monkeypatch))

    async def ready(pilot: Any) -> None:
        await until(pilot, loaded(app, len(DEMO_LINES) + 1))
        await until(pilot, lambda: app.detail.seq == app.store.rows[-1].seq)
        await pilot.pause(0.3)  # counters redraw

    assert snap_compare(app, terminal_size=SIZE, run_before=ready)


def test_snapshot_alert_detail(
    snap_compare: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = TailApp(_snapshot_source(tmp_path, monkeypatch))

    async def ready(pilot: Any) -> None:
        await until(pilot, loaded(app, len(DEMO_LINES) + 1))
        await pilot.press("a", "up")  # the RLG-TUN-001 alert, critical
        view = app.query_one(EventList)
        await until(pilot, lambda: app.detail.seq == view.seq_at_cursor())
        await pilot.pause(0.3)

    assert snap_compare(app, terminal_size=SIZE, run_before=ready)


# --- a real terminal ---------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_real_terminal_gets_no_escape_sequences(tmp_path: Path) -> None:
    stream = tmp_path / "stream.ndjson"
    stream.write_text("\n".join(DEMO_LINES[:20]) + "\n" + ndjson([hostile_exec()]))
    server = f"rlg-test-{uuid.uuid4().hex[:8]}"  # a private tmux server, killed below
    tmux = ["tmux", "-L", server, "-f", "/dev/null"]
    env = {**os.environ, "TERM": "xterm-256color", "PYTHONPATH": str(REPO)}
    env.pop("TMUX", None)

    def capture(*flags: str) -> str:
        return subprocess.run(
            [*tmux, "capture-pane", "-p", *flags, "-t", "tail"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    def title() -> str:
        return subprocess.run(
            [*tmux, "display", "-p", "-t", "tail", "#{pane_title}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()

    try:
        subprocess.run(
            [
                *tmux,
                "new-session",
                "-d",
                "-s",
                "tail",
                "-x",
                "120",
                "-y",
                "40",
                f"{sys.executable} -m monitor.tui {stream}; sleep 60",
            ],
            check=True,
            env=env,
            cwd=REPO,
        )
        title_before = title()
        deadline = time.monotonic() + 30
        plain = ""
        while time.monotonic() < deadline:
            plain = capture()
            if "wiped" in plain and "lineage" in plain:  # the row and, below, its detail
                break
            time.sleep(0.2)
        assert "wiped" in plain, plain
        styled = capture("-e")
        # Nothing but colour (SGR) reached the terminal: no clear screen, no OSC title.
        assert "\u001b]" not in styled and "\u0007" not in styled
        assert "\u001b[2J" not in styled
        assert title() == title_before and "pwned" not in title()
        # The screen was not wiped: the header and older rows are still there.
        assert "rlguard tail" in plain and "kind/action" in plain
        # The strings are shown, escaped, as text.
        assert "\\x1b[2J\\x1b]0;pwned\\x07wiped" in plain
        assert "[red]x" in plain
        assert "[@click=app.quit]click me[/]" in plain
        assert "rtl\\u{202e}gpj.exe" in plain and "c1\\x9b31mred" in plain
        # and the app still answers keys
        subprocess.run([*tmux, "send-keys", "-t", "tail", "a"], check=True)
        deadline = time.monotonic() + 10
        while "filter: alerts only" not in capture() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "filter: alerts only" in capture()
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)
