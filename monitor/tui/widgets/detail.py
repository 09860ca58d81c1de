"""The detail pane: the selected line in full, with its lineage and detection evidence."""

from __future__ import annotations

import json
from typing import Any

from rich.highlighter import JSONHighlighter
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Static

from monitor.tui.model import Row
from monitor.tui.safe import clean
from monitor.tui.widgets.styles import SEVERITY_STYLE

MAX_JSON_LINES = 2000  # a 128 KiB argv pretty-printed stays readable and cheap
MAX_JSON_LINE = 1000
_json_highlight = JSONHighlighter()


def _d(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def pretty_json(doc: dict[str, Any]) -> Text:
    """The document indented, every line made safe, JSON-highlighted (no markup involved)."""
    dumped = json.dumps(doc, indent=2, ensure_ascii=False, default=str)
    lines = dumped.split("\n")
    shown = [clean(line, MAX_JSON_LINE) for line in lines[:MAX_JSON_LINES]]
    if len(lines) > MAX_JSON_LINES:
        shown.append(f"… {len(lines) - MAX_JSON_LINES} more lines")
    return _json_highlight(Text("\n".join(shown)))


def lineage_text(doc: dict[str, Any]) -> Text:
    """``name(pid) < parent(pid) < ...``: the process and its ancestors, nearest first."""
    proc = _d(doc.get("process"))
    chain = [proc] if proc else []
    chain += [_d(a) for a in _list(_d(doc.get("rl")).get("lineage"))]
    out = Text()
    for i, p in enumerate(chain):
        if i:
            out.append(" < ", style="dim")
        out.append(clean(p.get("name"), 64) or "?", style="bold" if i == 0 else "")
        out.append(f"({clean(p.get('pid'), 12)})", style="dim")
    return out


def render_detail(row: Row) -> Text:
    """Everything the pane shows for ``row``."""
    doc = row.doc
    sev_style = SEVERITY_STYLE.get(row.severity, "bold")
    out = Text()
    if row.kind == "alert":
        rule = _d(doc.get("rule"))
        out.append(f" {row.severity.upper() or 'ALERT'} ", style=sev_style)
        out.append(f" {row.rule} ", style="bold")
        out.append(clean(rule.get("name"), 200))
        out.append("\n")
    else:
        out.append(f"{row.kind} {row.action}", style="bold")
        out.append(f"  {row.summary}\n")
    rl = _d(doc.get("rl"))
    out.append(f"time {clean(doc.get('@timestamp'), 40)}", style="dim")
    if row.episode or row.worker:
        run = clean(rl.get("run_id"), 80)
        out.append(f"   episode {row.episode or '-'}  worker {row.worker or '-'}  run {run or '-'}")
    if row.destination:
        out.append(f"   destination {row.destination}")
    out.append("\n")
    if _d(doc.get("process")) or _list(rl.get("lineage")):
        out.append("lineage  ", style="bold")
        out.append_text(lineage_text(doc))
        out.append("\n")
    alert = _d(_d(doc.get("rlguard")).get("alert"))
    evidence = _list(alert.get("evidence"))
    if evidence:
        out.append("evidence\n", style="bold")
        for ev in evidence[:50]:
            e = _d(ev)
            conf = clean(e.get("confidence"), 16)
            out.append("  • ")
            out.append(f"[{conf}]", style=SEVERITY_STYLE.get(conf, ""))
            out.append(f" {clean(e.get('kind'), 40)} {clean(e.get('name'), 80)}: ")
            out.append(clean(e.get("detail"), 1000))
            out.append("\n")
    if alert.get("follow_up"):
        prev = clean(alert.get("previous_severity"), 16)
        out.append(f"follow-up: severity raised from {prev}\n", style="italic")
    out.append("document\n", style="bold")
    out.append_text(pretty_json(doc))
    return out


class DetailPane(VerticalScroll):
    """Scrollable view of one row."""

    PLACEHOLDER = "Select a row to see it in full."

    def __init__(self, **kwargs: str | None) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.body = Static(Text(self.PLACEHOLDER, style="dim"), id="detail-body")
        self.seq: int | None = None

    def compose(self) -> ComposeResult:
        yield self.body

    def show(self, row: Row | None) -> None:
        """Show ``row`` (None: nothing selected)."""
        if row is None:
            self.seq = None
            self.body.update(Text(self.PLACEHOLDER, style="dim"))
            return
        if row.seq == self.seq:
            return
        self.seq = row.seq
        self.body.update(render_detail(row))
        self.scroll_home(animate=False)
