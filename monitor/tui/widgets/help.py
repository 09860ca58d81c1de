"""The key help screen (``?``)."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static

HELP = """\
rlguard tail: the live event stream

  a          alerts only on/off
  /          edit the filter; Enter or Esc to leave it
  Esc        leave the filter bar (in the table: clear the filter)
  p, space   pause / resume (lines keep arriving, the table stops moving)
  End        jump to the newest row and resume
  e          episodes view (Enter on an episode filters the events by it)
  d          show / hide the detail pane
  ?          this help
  q          quit

Filter words: episode:EP  worker:W  rule:RLG-TUN  proc:NAME-or-PID  dest:IP-or-NAME
  Terms match case-insensitive substrings; "=x" matches exactly x (episode:=ep-17).
  Other words match anywhere in the row. Filters apply to the whole scroll-back.

Counters: kernel drops and output lost come from the monitor's metric lines;
lagged/skipped count client_lagged notices (this viewer fell behind the socket).
"""


class HelpScreen(ModalScreen[None]):
    """Key help; any of Esc, q or ? closes it."""

    BINDINGS = [
        Binding("escape,q,question_mark", "dismiss_help", "close", show=False),
    ]

    def compose(self) -> ComposeResult:
        with Vertical(id="help-box"):
            yield Static(Text(HELP), id="help-text")

    def action_dismiss_help(self) -> None:
        self.dismiss(None)
