"""Rich styles shared by the widgets (ours, never taken from the stream)."""

from __future__ import annotations

SEVERITY_STYLE = {
    "critical": "bold white on dark_red",
    "high": "bold red",
    "medium": "bold yellow",
    "low": "cyan",
}
METRIC_STYLE = "dim"
NOTICE_STYLE = "bold magenta"  # drops and lag notices: the view is incomplete
NOTICE_ACTIONS = frozenset({"events_dropped", "client_lagged", "record_error"})


def row_style(kind: str, action: str, severity: str) -> str:
    """The style of a table row."""
    if kind == "alert":
        return SEVERITY_STYLE.get(severity, "bold red")
    if kind == "metric":
        return NOTICE_STYLE if action in NOTICE_ACTIONS else METRIC_STYLE
    return ""
