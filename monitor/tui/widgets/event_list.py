"""The live list of events: one line per row, alerts coloured by severity.

A virtual list (``ScrollView`` + ``render_line``): only the lines on screen are
drawn, so appending is O(1) and re-filtering 50k rows is one list comprehension.
Textual's DataTable measures every cell of every row, which costs about half a
millisecond a row: far too slow for a scroll-back of 50k lines at monitor rates.

Cells are drawn as plain Rich ``Segment`` text: nothing from the stream is ever
parsed as markup, and row strings were made safe by the store.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

from rich.cells import cell_len, set_cell_size
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.geometry import Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.widget import Widget

from monitor.tui.model import Row
from monitor.tui.widgets.styles import row_style

# (label, width); the summary (last) takes what is left
COLUMNS: tuple[tuple[str, int], ...] = (
    ("time", 12),
    ("kind/action", 14),
    ("pid", 7),
    ("process", 15),
    ("episode", 12),
    ("destination", 21),
)
SUMMARY_LABEL = "summary"
MIN_SUMMARY = 16
GAP = 1  # blank cells between columns
FIXED_WIDTH = sum(w + GAP for _, w in COLUMNS)


def row_values(row: Row) -> tuple[str, ...]:
    """The column texts of ``row``, summary last."""
    if row.kind == "alert":
        what = f"ALERT {row.severity}".strip()
    elif row.kind == "event":
        what = row.action
    else:
        what = f"{row.kind}/{row.action}"
    summary = f"{row.rule} {row.summary}".strip()
    return (row.time, what, row.pid, row.name, row.episode, row.destination, summary)


def layout_line(values: Sequence[str], total_width: int) -> str:
    """One line of cells padded or cut to the column widths, ``total_width`` cells long."""
    summary_width = max(MIN_SUMMARY, total_width - FIXED_WIDTH)
    parts = [set_cell_size(v, w) + " " * GAP for v, (_, w) in zip(values, COLUMNS, strict=False)]
    last = values[len(COLUMNS)] if len(values) > len(COLUMNS) else ""
    if cell_len(last) > summary_width:
        last = set_cell_size(last, summary_width - 1) + "…"
    parts.append(set_cell_size(last, summary_width))
    return "".join(parts)


@lru_cache(maxsize=64)
def _parse(style: str) -> Style:
    return Style.parse(style) if style else Style()


class EventHeader(Widget):
    """The column titles above the list, laid out like its lines."""

    DEFAULT_CSS = """
    EventHeader { height: 1; text-style: bold; background: $panel; }
    """

    def render(self) -> Text:
        labels = [label for label, _ in COLUMNS] + [SUMMARY_LABEL]
        return Text(layout_line(labels, self.size.width), no_wrap=True)


class EventList(ScrollView, can_focus=True):
    """Rows (a filtered view of the store), a cursor, and following of new rows."""

    COMPONENT_CLASSES = {"event-list--cursor"}
    DEFAULT_CSS = """
    EventList { background: $surface; }
    EventList > .event-list--cursor { background: $accent 50%; }
    EventList:focus > .event-list--cursor { background: $accent; }
    """
    BINDINGS = [
        Binding("up,k", "cursor(-1)", "up", show=False),
        Binding("down,j", "cursor(1)", "down", show=False),
        Binding("pageup", "page(-1)", "page up", show=False),
        Binding("pagedown", "page(1)", "page down", show=False),
        Binding("home,g", "first", "oldest", show=False),
        Binding("end,G", "app.follow", "newest", show=False),
    ]

    class Highlighted(Message):
        """The cursor moved to another row (``seq`` None: the list is empty)."""

        def __init__(self, seq: int | None) -> None:
            super().__init__()
            self.seq = seq

    def __init__(self, **kwargs: str | None) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.rows: list[Row] = []
        self.cursor = -1
        self._highlighted: int | None = None

    # -- contents --------------------------------------------------------------------

    @property
    def row_count(self) -> int:
        return len(self.rows)

    @property
    def at_bottom(self) -> bool:
        """Whether the cursor is on the last row (then new rows keep it there)."""
        return self.cursor >= len(self.rows) - 1

    def append(self, rows: Sequence[Row], follow: bool) -> None:
        """Add rows at the bottom; with ``follow`` the cursor moves to the newest."""
        if not rows:
            return
        self.rows.extend(rows)
        self._resize()
        if follow:
            self.move_cursor(len(self.rows) - 1)

    def set_rows(self, rows: list[Row], keep_seq: int | None = None) -> None:
        """Show exactly ``rows``; the cursor goes back to ``keep_seq`` if shown, else the end."""
        self.rows = rows
        self._resize()
        target = len(rows) - 1
        if keep_seq is not None:
            for i in range(len(rows) - 1, -1, -1):  # usually near the end
                if rows[i].seq == keep_seq:
                    target = i
                    break
        self.cursor = -1
        self.move_cursor(target)
        self.refresh()

    def seq_at_cursor(self) -> int | None:
        """The store sequence number of the highlighted row."""
        return self.rows[self.cursor].seq if 0 <= self.cursor < len(self.rows) else None

    def move_cursor(self, index: int) -> None:
        """Put the cursor on row ``index`` (clamped) and scroll it into view."""
        self.cursor = max(0, min(index, len(self.rows) - 1)) if self.rows else -1
        self._scroll_to_cursor()
        # the first rows arrive before layout has sized us: look again once it has
        self.call_after_refresh(self._scroll_to_cursor)
        self.refresh()
        seq = self.seq_at_cursor()
        if seq != self._highlighted:
            self._highlighted = seq
            self.post_message(self.Highlighted(seq))

    def _scroll_to_cursor(self) -> None:
        if self.cursor < 0:
            return
        height = max(1, self.scrollable_content_region.height)
        top = round(self.scroll_y)
        if self.cursor < top:
            self.scroll_to(y=self.cursor, animate=False, immediate=True)
        elif self.cursor >= top + height:
            self.scroll_to(y=self.cursor - height + 1, animate=False, immediate=True)

    def _resize(self) -> None:
        self.virtual_size = Size(self.scrollable_content_region.width, len(self.rows))

    # -- input -----------------------------------------------------------------------

    def action_cursor(self, delta: int) -> None:
        self.move_cursor(self.cursor + delta)

    def action_page(self, direction: int) -> None:
        self.move_cursor(self.cursor + direction * max(1, self.scrollable_content_region.height))

    def action_first(self) -> None:
        self.move_cursor(0)

    def on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)
        if offset is not None:
            self.move_cursor(round(self.scroll_y) + offset.y)

    def on_resize(self, _event: events.Resize) -> None:
        self._resize()
        self.call_after_refresh(self._scroll_to_cursor)

    # -- drawing ---------------------------------------------------------------------

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        index = round(self.scroll_y) + y
        base = self.rich_style
        if not 0 <= index < len(self.rows):
            return Strip.blank(width, base)
        row = self.rows[index]
        style = base + _parse(row_style(row.kind, row.action, row.severity))
        if index == self.cursor:
            style += self.get_component_rich_style("event-list--cursor")
        text = layout_line(row_values(row), width)
        return Strip([Segment(text, style)], cell_len(text)).crop(0, width)
