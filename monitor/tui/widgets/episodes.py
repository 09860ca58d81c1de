"""The per-episode summary: events, alerts and last activity of each RL episode."""

from __future__ import annotations

from rich.text import Text
from textual.message import Message
from textual.widgets import DataTable

from monitor.tui.model import EpisodeSummary, EventStore
from monitor.tui.widgets.styles import SEVERITY_STYLE

MAX_SHOWN = 500  # the most recently active episodes


class EpisodeTable(DataTable[Text]):
    """One row per episode, most recently active first; Enter filters the events by it."""

    class Chosen(Message):
        """The user picked an episode."""

        def __init__(self, episode: str) -> None:
            super().__init__()
            self.episode = episode

    def __init__(self, **kwargs: object) -> None:
        super().__init__(cursor_type="row", **kwargs)  # type: ignore[arg-type]
        self._shown: list[str] = []

    def on_mount(self) -> None:
        for key, label, width in (
            ("episode", "episode", 24),
            ("workers", "workers", 20),
            ("events", "events", 8),
            ("alerts", "alerts", 7),
            ("severity", "max severity", 12),
            ("gpu", "GPU holders", 30),
            ("first", "first seen", 12),
            ("last", "last activity", 13),
            ("what", "last event", None),
        ):
            self.add_column(label, width=width, key=key)

    @staticmethod
    def cells(ep: EpisodeSummary) -> tuple[Text, ...]:
        style = SEVERITY_STYLE.get(ep.max_severity, "")
        values = (
            ep.episode,
            ", ".join(ep.workers),
            str(ep.events),
            str(ep.alerts),
            ep.max_severity or "-",
            ", ".join(ep.gpu) or "-",
            ep.first_seen,
            ep.last_seen,
            ep.last_summary,
        )
        # Text, never str: the values come from the stream (already cleaned by the store)
        return tuple(Text(v, style=style, no_wrap=True, overflow="ellipsis") for v in values)

    def refresh_from(self, store: EventStore) -> None:
        """Redraw from the store, keeping the cursor on the same episode when possible."""
        current = self._shown[self.cursor_row] if 0 <= self.cursor_row < len(self._shown) else None
        episodes = list(reversed(store.episodes.values()))[:MAX_SHOWN]
        self.clear()
        self._shown = [ep.episode for ep in episodes]
        for i, ep in enumerate(episodes):
            self.add_row(*self.cells(ep), key=str(i))
        if current in self._shown:
            self.move_cursor(row=self._shown.index(current), animate=False)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        idx = self.cursor_row
        if 0 <= idx < len(self._shown):
            self.post_message(self.Chosen(self._shown[idx]))
