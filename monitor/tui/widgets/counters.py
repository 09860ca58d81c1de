"""The counters line: what was received, what was lost, where it comes from."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from monitor.tui.model import Counters, Filter
from monitor.tui.safe import clean
from monitor.tui.widgets.styles import NOTICE_STYLE, SEVERITY_STYLE


def render_counters(
    c: Counters, status: str, flt: Filter, shown: int, paused: bool, held: int
) -> Text:
    """Two lines: totals and losses; then pause state, source status and the filter."""
    out = Text(no_wrap=True, overflow="ellipsis")
    out.append(f"lines {c.lines}  events {c.events}  alerts {c.alerts}")
    for sev in ("critical", "high", "medium", "low"):
        n = c.alerts_by_severity.get(sev, 0)
        if n:
            out.append(f" {sev[0].upper()}{n}", style=SEVERITY_STYLE[sev])
    out.append(f"  shown {shown}")
    losses = (
        ("drops", c.kernel_drops),
        ("output lost", c.output_lost),
        ("lagged", c.lag_notices),
        ("skipped", c.lag_skipped),
        ("bad", c.bad_lines),
    )
    out.append("  |")
    for label, n in losses:
        out.append(f" {label} {n}", style=NOTICE_STYLE if n else "")
    if c.evicted:
        out.append(f"  scrolled out {c.evicted}", style="dim")
    out.append("\n")
    if paused:
        out.append(f" PAUSED +{held} ", style="bold black on yellow")
        out.append(" ")
    out.append(clean(status, 200), style="dim")
    out.append(f"   filter: {clean(flt.describe(), 200)}", style="italic")
    return out


class CountersBar(Static):
    """Shows :func:`render_counters`; the app updates it a few times a second at most."""
