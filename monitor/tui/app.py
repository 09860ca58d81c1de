"""``rlguard tail``: a terminal viewer for the live event stream.

The app reads NDJSON lines from the monitor's live socket or from a file it
follows (replaying what the file already holds), keeps a bounded scroll-back
(:class:`monitor.tui.model.EventStore`) and shows it through filters.

Pause keeps receiving: new rows are held back (the table stops moving) and are
shown on resume. Following is implicit: while the cursor is on the last row it
moves to each new row; move it up to read and it stays where it is.

Every string from the stream reaches the screen only as ``rich.text.Text``
made by :mod:`monitor.tui.safe`, so control sequences are escaped and Rich or
Textual markup in a process name stays literal.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

from textual import on
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.timer import Timer
from textual.widgets import ContentSwitcher, Footer, Header, Input

from monitor.tui.model import SCROLLBACK, EventStore, Filter, Row, episode_query
from monitor.tui.safe import clean
from monitor.tui.source import LineSplitter, SourceKind, detect_kind, follow_file, follow_socket
from monitor.tui.widgets.counters import CountersBar, render_counters
from monitor.tui.widgets.detail import DetailPane
from monitor.tui.widgets.episodes import EpisodeTable
from monitor.tui.widgets.event_list import EventHeader, EventList
from monitor.tui.widgets.help import HelpScreen

FILTER_DEBOUNCE_S = 0.3  # re-filtering 50k rows per keystroke would stutter
REFRESH_S = 0.25  # counters and the episodes view redraw at most this often
DETAIL_DELAY_S = 0.1  # while following a busy stream the detail pane redraws at most ~10/s
REBUILD_SLACK = 0.1  # the table may outgrow the scroll-back by this share before a trim

__all__ = ["TailApp", "rlguard_tail"]


class TailApp(App[int]):
    """The viewer. ``source`` is a live socket path or an NDJSON file to follow."""

    CSS_PATH = "app.tcss"
    TITLE = "rlguard tail"
    BINDINGS = [
        Binding("a", "toggle_alerts", "alerts only"),
        Binding("slash", "focus_filter", "filter"),
        Binding("p,space", "toggle_pause", "pause"),
        Binding("f", "follow", "follow"),
        Binding("e", "toggle_episodes", "episodes"),
        Binding("d", "toggle_detail", "detail"),
        Binding("question_mark", "help", "help"),
        Binding("q", "quit_app", "quit"),
        Binding("escape", "escape", "back", show=False),
    ]

    def __init__(
        self,
        source: str | os.PathLike[str],
        kind: SourceKind | None = None,
        capacity: int = SCROLLBACK,
    ) -> None:
        super().__init__()
        self.source = Path(source)
        self.kind = kind or detect_kind(source)
        self.store = EventStore(capacity)
        self.filter = Filter()
        self.paused = False
        self.held: list[Row] = []
        self.status = "starting"
        self.splitter = LineSplitter()
        self._dirty = True
        self._filter_timer: Timer | None = None
        self._detail_timer: Timer | None = None
        self._detail_seq: int | None = None
        self.sub_title = clean(str(self.source), 120)

    # -- layout ----------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False)
        yield Input(
            placeholder="/ filter: episode:EP worker:W rule:RLG-TUN proc:ssh dest:1.2.3.4 words",
            id="filter",
        )
        with Vertical(id="main"):
            with ContentSwitcher(initial="events", id="views"):
                with Vertical(id="events"):
                    yield EventHeader()
                    yield EventList(id="event-list")
                yield EpisodeTable(id="episodes")
            yield DetailPane(id="detail")
        yield CountersBar(id="counters")
        yield Footer()

    def on_mount(self) -> None:
        # kept, not queried: the reader may deliver a batch while the screen is torn down
        self.event_list = self.query_one(EventList)
        self.detail = self.query_one(DetailPane)
        self.counters_bar = self.query_one(CountersBar)
        self.episode_table = self.query_one(EpisodeTable)
        self.switcher = self.query_one(ContentSwitcher)
        self.filter_box = self.query_one("#filter", Input)
        self.event_list.focus()
        self.set_interval(REFRESH_S, self._refresh)
        self._refresh()
        self.run_worker(self._read(), name="source", group="source", exclusive=True)

    async def _read(self) -> None:
        if self.kind is SourceKind.SOCKET:
            await follow_socket(self.source, self.on_lines, self.on_status, self.splitter)
        else:
            await follow_file(self.source, self.on_lines, self.on_status, self.splitter)

    # -- data in ---------------------------------------------------------------------

    def on_lines(self, lines: list[bytes]) -> None:
        """A batch from the source: store it, then show what passes the filter."""
        oversize = self.splitter.take_oversize()
        if oversize:
            self.store.count_bad(oversize)
        rows = self.store.add_lines(lines)
        self._dirty = True
        shown = [r for r in rows if self.filter.matches(r)]
        if not shown:
            return
        if self.paused:
            self.held.extend(shown)
            if len(self.held) > self.store.capacity:  # they would be evicted anyway
                del self.held[: len(self.held) - self.store.capacity]
            return
        self._show(shown)

    def on_status(self, message: str) -> None:
        self.status = message
        self._dirty = True

    def _show(self, rows: list[Row]) -> None:
        table = self.event_list
        table.append(rows, follow=table.at_bottom)
        if table.row_count > self.store.capacity * (1 + REBUILD_SLACK):
            # the store evicted old rows: trim the list to what it still holds
            table.set_rows(self.store.matching(self.filter), keep_seq=table.seq_at_cursor())

    def _refresh(self) -> None:
        if not self._dirty:
            return
        self._dirty = False
        table = self.event_list
        self.counters_bar.update(
            render_counters(
                self.store.counters,
                self.status,
                self.filter,
                table.row_count,
                self.paused,
                len(self.held),
            )
        )
        switcher = self.switcher
        if switcher.current == "episodes":
            self.episode_table.refresh_from(self.store)

    # -- filters ---------------------------------------------------------------------

    def apply_filter(self, flt: Filter) -> None:
        """Show the scroll-back through ``flt`` (held rows included: it is a fresh view)."""
        self.filter = flt
        table = self.event_list
        table.set_rows(self.store.matching(flt), keep_seq=table.seq_at_cursor())
        self.held.clear()
        self._dirty = True
        self._refresh()
        self._show_detail(table.seq_at_cursor())

    def _filter_from_input(self) -> Filter:
        return Filter.parse(self.filter_box.value, self.filter.alerts_only)

    @on(Input.Changed, "#filter")
    def _filter_changed(self, _event: Input.Changed) -> None:
        if self._filter_timer is not None:
            self._filter_timer.stop()
        self._filter_timer = self.set_timer(
            FILTER_DEBOUNCE_S, lambda: self.apply_filter(self._filter_from_input())
        )

    @on(Input.Submitted, "#filter")
    def _filter_submitted(self, _event: Input.Submitted) -> None:
        if self._filter_timer is not None:
            self._filter_timer.stop()
            self._filter_timer = None
        self.apply_filter(self._filter_from_input())
        self.event_list.focus()

    def set_query(self, query: str) -> None:
        """Replace the filter text and apply it now."""
        box = self.filter_box
        with box.prevent(Input.Changed):
            box.value = query
        self.apply_filter(Filter.parse(query, self.filter.alerts_only))

    # -- selection -------------------------------------------------------------------

    @on(EventList.Highlighted)
    def _row_highlighted(self, event: EventList.Highlighted) -> None:
        self._detail_seq = event.seq
        if self._detail_timer is None:
            self._detail_timer = self.set_timer(DETAIL_DELAY_S, self._detail_due)

    def _detail_due(self) -> None:
        self._detail_timer = None
        self._show_detail(self._detail_seq)

    def _show_detail(self, seq: int | None) -> None:
        self.detail.show(self.store.get(seq) if seq is not None else None)

    @on(EpisodeTable.Chosen)
    def _episode_chosen(self, event: EpisodeTable.Chosen) -> None:
        self.switcher.current = "events"
        self.set_query(episode_query(event.episode))
        self.event_list.focus()

    # -- actions ---------------------------------------------------------------------

    def action_toggle_alerts(self) -> None:
        self.apply_filter(self.filter.with_alerts_only(not self.filter.alerts_only))

    def action_focus_filter(self) -> None:
        self.filter_box.focus()

    def action_toggle_pause(self) -> None:
        self.paused = not self.paused
        if not self.paused:
            held = [r for r in self.held if r.seq in self.store.by_seq]
            self.held.clear()
            if held:
                self._show(held)
        self._dirty = True
        self._refresh()

    def action_follow(self) -> None:
        """Resume if paused and put the cursor on the newest row."""
        if self.paused:
            self.action_toggle_pause()
        table = self.event_list
        if table.row_count:
            table.move_cursor(table.row_count - 1)
        table.focus()

    def action_toggle_episodes(self) -> None:
        switcher = self.switcher
        if switcher.current == "episodes":
            switcher.current = "events"
            self.event_list.focus()
        else:
            switcher.current = "episodes"
            episodes = self.episode_table
            episodes.refresh_from(self.store)
            episodes.focus()

    def action_toggle_detail(self) -> None:
        detail = self.detail
        detail.display = not detail.display

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def action_escape(self) -> None:
        box = self.filter_box
        if box.has_focus:
            self.event_list.focus()
        elif self.switcher.current == "episodes":
            self.action_toggle_episodes()
        elif box.value:
            self.set_query("")

    def action_quit_app(self) -> None:
        self.exit(0)


def rlguard_tail(source: str | os.PathLike[str], kind: str = "auto") -> int:
    """Run the viewer on a terminal; returns the exit status for the CLI.

    ``kind`` is ``"socket"``, ``"file"`` or ``"auto"`` (a socket if ``source`` is one).
    A missing socket is waited for (the monitor may start later); a missing file too,
    unless ``kind`` is ``"auto"``, where it is more likely a typo.
    """
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        print("rlguard tail: needs a terminal", file=sys.stderr)
        return 2
    path = os.fspath(source)
    if kind == "auto":
        if not os.path.exists(path):
            print(f"rlguard tail: {path}: no such file or socket", file=sys.stderr)
            return 2
        src_kind = detect_kind(path)
    else:
        src_kind = SourceKind(kind)
    if src_kind is SourceKind.SOCKET:
        # fail fast on the one error waiting cannot fix
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except PermissionError:
            print(
                f"rlguard tail: {path}: permission denied; ask to be added to the "
                "monitor's live_group (default: rlguard), or run as root",
                file=sys.stderr,
            )
            return 1
        except OSError:
            pass  # not there yet: the app waits for it
        finally:
            probe.close()
    result = TailApp(path, src_kind).run()
    return result if isinstance(result, int) else 0
