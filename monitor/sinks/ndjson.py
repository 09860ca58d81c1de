"""Newline-delimited JSON to stdout or a file.

Lines are queued per drain cycle and written with os.write, so we always know
how many bytes reached the output.  A write error (full disk, closed pipe)
never loses a line silently: the unwritten remainder stays queued (no line is
duplicated or torn for good), and when the queue bound forces lines out they
are counted and reported in the next metric event.
"""

from __future__ import annotations

import os
from typing import Any

import orjson

MAX_PENDING_BYTES = 64 * 1024 * 1024


class NdjsonSink:
    def __init__(self, path: str = "-") -> None:
        self.path = path
        self._fd = -1
        self._pending = bytearray()
        self._lines_pending = 0
        self.lines_written = 0
        self.lines_lost = 0
        self.last_error: str | None = None
        self._open()

    def _open(self) -> None:
        if self.path == "-":
            self._fd = 1
        else:
            parent = os.path.dirname(os.path.abspath(self.path))
            os.makedirs(parent, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)

    def reopen(self) -> None:
        """Reopen the file (after an external rotation)."""
        if self.path != "-" and self._fd >= 0:
            os.close(self._fd)
        self._open()

    def write(self, doc: dict[str, Any]) -> None:
        line = orjson.dumps(doc, option=orjson.OPT_APPEND_NEWLINE)
        if len(self._pending) + len(line) > MAX_PENDING_BYTES:
            self.lines_lost += 1  # reported in the metric stream
            return
        self._pending += line
        self._lines_pending += 1

    def flush(self) -> bool:
        """Write queued lines; False (remainder kept) when the output refuses them."""
        view = memoryview(self._pending)
        done = 0
        ok = True
        try:
            while done < len(view):
                done += os.write(self._fd, view[done:])
        except OSError as exc:
            self.last_error = f"{self.path}: {exc.strerror}"
            ok = False
        finally:
            view.release()
        if done:
            written_lines = self._pending.count(b"\n", 0, done)
            del self._pending[:done]
            self.lines_written += written_lines
            self._lines_pending -= written_lines
        if ok:
            self.last_error = None
        return ok

    @property
    def pending(self) -> int:
        return self._lines_pending

    def close(self) -> None:
        self.flush()
        if self.path != "-" and self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
