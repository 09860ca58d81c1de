"""Text from the stream, made safe to put on a terminal.

Every string in a line is attacker-controlled: the monitor sanitises at its edge
(monitor/sanitize.py), but ``rlguard tail --file`` reads whatever file it is given,
so the viewer does not trust that. Two things are guarded against here and in how
the app renders:

* terminal control: C0/C1 controls (ESC, BEL, CSI...), DEL, bidi and other format
  characters and line separators become visible escapes (``\\x1b``, ``\\u{202e}``),
  the same escapes and code point set as monitor/sanitize.py;
* markup: the result is plain text that the app only ever shows through
  ``rich.text.Text`` objects (see :func:`text`), never through a string that
  Rich or Textual would parse as markup, so ``[red]`` or ``[@click=app.quit]``
  stays literal.

Unlike :func:`monitor.sanitize.safe_text` a backslash is left alone: the monitor
already doubled it, and doubling again would show ``\\\\x0a`` for an escaped newline.
"""

from __future__ import annotations

import re
from typing import Final

import orjson
from rich.text import Text

# One source of truth for which code points are dangerous on a terminal.
from monitor.sanitize import _ESCAPED_RANGES

__all__ = ["clean", "text"]

_DANGER_RE: Final = re.compile(
    "[" + "".join(f"\\U{lo:08x}-\\U{hi:08x}" for lo, hi in _ESCAPED_RANGES) + "]"
)


def _escape(match: re.Match[str]) -> str:
    cp = ord(match.group())
    if cp <= 0x1F or 0x7F <= cp <= 0x9F:
        return f"\\x{cp:02x}"
    return f"\\u{{{cp:04x}}}"


def clean(value: object, limit: int = 256) -> str:
    """``value`` as one line of inert text of at most about ``limit`` characters.

    Strings are escaped; numbers and booleans are written out; None is empty;
    anything else (a dict or list where a string was expected) is shown as compact
    JSON. A cut string ends with ``…``.
    """
    if value is None:
        return ""
    if isinstance(value, str):
        s = value
    elif isinstance(value, (bool, int, float)):
        s = str(value).lower() if isinstance(value, bool) else str(value)
    else:
        try:
            s = orjson.dumps(value).decode()
        except (TypeError, orjson.JSONEncodeError):
            s = repr(type(value))
    cut = len(s) > limit
    if cut:
        s = s[:limit]
    if not s.isprintable():  # C fast path: every dangerous code point is non-printable
        s = _DANGER_RE.sub(_escape, s)
    return s + "…" if cut else s


def text(value: object, style: str = "", limit: int = 256) -> Text:
    """A Rich ``Text`` of :func:`clean` (value): literal, never parsed as markup."""
    return Text(clean(value, limit), style=style, no_wrap=True, overflow="ellipsis")
