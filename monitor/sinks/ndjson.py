"""Newline-delimited JSON to stdout or a file, with size-based rotation.

Lines are queued per drain cycle and written with os.write, so we always know
how many bytes reached the output.  A write error (full disk, closed pipe)
never loses a line silently: the unwritten remainder stays queued (no line is
duplicated or torn for good), and when the queue bound forces lines out they
are counted and reported in the next metric event.

Rotation and external log rotation:

* ``rotate_bytes > 0``: before a line would take the file past ``rotate_bytes``
  we rename ``path.(N-1)`` -> ``path.N`` ... ``path`` -> ``path.1`` and open a
  fresh ``path``.  We only cut between whole lines, so no line is ever split
  across files; a single line longer than ``rotate_bytes`` gets a file of its own.
  At most ``rotate_keep`` rotated files are kept.
* logrotate with ``create`` + SIGHUP: ``reopen()`` switches to the new file.  Lines
  already written stay in the old file and queued lines go to the new one, so no
  line is lost or duplicated.  ``reopen()`` only sets a flag when it interrupts a
  flush (it is called from a signal handler), and the flush applies it between
  lines.
* logrotate ``copytruncate``: the file is opened with O_APPEND, so after an
  external truncation the kernel puts our next write at the new end of the file
  (without O_APPEND it would land at the old offset, after a hole of NUL bytes).
  We notice the shrink (fstat size < our offset), count it in ``truncations`` and
  restart the size accounting for rotation from the new size.  Lines written
  between logrotate's copy and its truncate are lost: that window is logrotate's
  own documented limitation, and why SIGHUP rotation is the recommended mode.
"""

from __future__ import annotations

import os
import stat
from typing import Any

import orjson

MAX_PENDING_BYTES = 64 * 1024 * 1024


class NdjsonSink:
    """Writes one JSON document per line to ``path`` ("-" is stdout).

    Interface shared by all sinks: ``write(doc)``, ``flush() -> bool``, ``reopen()``,
    ``close()`` and the attributes ``lines_written``, ``lines_lost``, ``pending``,
    ``last_error``.  Rotation applies to regular files only (never to stdout, a pipe
    or a device).
    """

    def __init__(self, path: str = "-", rotate_bytes: int = 0, rotate_keep: int = 5) -> None:
        if rotate_bytes < 0:
            raise ValueError(f"rotate_bytes must be >= 0, got {rotate_bytes}")
        if rotate_keep < 1:
            raise ValueError(f"rotate_keep must be >= 1, got {rotate_keep}")
        self.path = path
        self.rotate_bytes = rotate_bytes
        self.rotate_keep = rotate_keep
        self.name = "stdout" if path == "-" else "file"
        self._fd = -1
        self._regular = False
        self._offset = 0  # bytes in the current file, as far as we know
        self._mid_line = False  # a write stopped inside a line: its rest must follow it
        self._pending = bytearray()
        self._lines_pending = 0
        self._busy = False  # inside flush/close: reopen() from a signal only sets the flag
        self._reopen_requested = False
        self._open_error: str | None = None
        self.lines_written = 0
        self.lines_lost = 0
        self.rotations = 0
        self.truncations = 0
        self.last_error: str | None = None
        self._open()

    # -- opening -------------------------------------------------------------------------

    def _open(self) -> None:
        if self.path == "-":
            self._fd = 1
            self._regular = False
            return
        parent = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(parent, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        st = os.fstat(fd)
        self._fd = fd
        self._regular = stat.S_ISREG(st.st_mode)
        self._offset = st.st_size
        if self._regular and st.st_size > 0 and self._last_byte(fd, st.st_size) != b"\n":
            # A previous writer died mid-line: end its fragment so our first line stays whole.
            try:
                self._offset += os.write(fd, b"\n")
            except OSError:
                pass

    @staticmethod
    def _last_byte(fd: int, size: int) -> bytes:
        # Our descriptor is write-only; read the same inode through /proc, immune to renames.
        try:
            rfd = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return b"\n"
        try:
            return os.pread(rfd, 1, size - 1)
        except OSError:
            return b"\n"
        finally:
            os.close(rfd)

    def _switch(self) -> None:
        """Open ``path`` afresh and close the old descriptor (raises OSError, old fd kept)."""
        old = self._fd
        self._open()
        if old > 2:
            os.close(old)

    def reopen(self) -> None:
        """Reopen the file after an external rotation (SIGHUP).

        Safe in a signal handler: when it interrupts a flush it only sets a flag, and the
        flush switches files between two whole lines.  If the new file cannot be opened
        we keep writing to the old one (nothing is lost) and retry on every flush.
        """
        if self.path == "-":
            return
        self._reopen_requested = True
        if not self._busy and not self._mid_line:
            self._apply_reopen()

    def _apply_reopen(self) -> None:
        try:
            self._switch()
        except OSError as exc:
            self._open_error = f"{self.path}: reopen failed: {exc.strerror}"
            return
        self._reopen_requested = False
        self._open_error = None

    # -- writing -------------------------------------------------------------------------

    def write(self, doc: dict[str, Any]) -> None:
        """Queue one document as one line; written by the next flush()."""
        self.write_line(orjson.dumps(doc, option=orjson.OPT_APPEND_NEWLINE), doc)

    def write_line(self, line: bytes, doc: dict[str, Any]) -> None:
        """Queue one serialised document (the fan-out serialises once for every sink)."""
        if len(self._pending) + len(line) > MAX_PENDING_BYTES:
            self.lines_lost += 1  # reported in the metric stream
            return
        self._pending += line
        self._lines_pending += 1

    def flush(self) -> bool:
        """Write queued lines; False (remainder kept) when the output refuses them."""
        self._busy = True
        try:
            ok = self._flush()
        finally:
            self._busy = False
        # a SIGHUP that arrived during the flush, once we are between lines
        if self._reopen_requested and not self._mid_line and self._open_error is None:
            self._apply_reopen()
        return ok

    def _flush(self) -> bool:
        write_error: str | None = None
        if self._reopen_requested and not self._mid_line:
            self._apply_reopen()
        if self._pending and self._regular:
            self._sync_offset()
        rotate_error: str | None = None
        while self._pending:
            n, rotate_error = self._next_chunk(rotate_error)
            write_error = self._write_chunk(n)
            if write_error is not None:
                break
            if self._reopen_requested and not self._mid_line and self._open_error is None:
                self._apply_reopen()  # a signal came in mid-flush: switch between lines
        self.last_error = self._open_error or write_error or rotate_error
        return write_error is None

    def _sync_offset(self) -> None:
        """Take the file's real size; a shrink means someone truncated it (copytruncate)."""
        try:
            size = os.fstat(self._fd).st_size
        except OSError:
            return
        if size < self._offset:
            self.truncations += 1
        self._offset = size

    def _next_chunk(self, rotate_error: str | None) -> tuple[int, str | None]:
        """How many queued bytes to write next (whole lines), rotating first if due."""
        pending = self._pending
        if self._mid_line:
            # finish the torn line in the file that holds its head
            return pending.find(b"\n") + 1, rotate_error
        if not (self.rotate_bytes and self._regular):
            return len(pending), rotate_error
        room = self.rotate_bytes - self._offset
        if len(pending) <= room:
            return len(pending), rotate_error
        cut = pending.rfind(b"\n", 0, max(room, 0)) + 1
        if cut:
            return cut, rotate_error
        if self._offset > 0 and rotate_error is None:
            rotate_error = self._rotate()
            if rotate_error is None:
                return self._next_chunk(rotate_error)
        # a line longer than rotate_bytes (or a failed rotation): write it whole anyway
        return pending.find(b"\n") + 1, rotate_error

    def _write_chunk(self, n: int) -> str | None:
        view = memoryview(self._pending)
        done = 0
        error: str | None = None
        try:
            while done < n:
                done += os.write(self._fd, view[done:n])
        except OSError as exc:
            error = f"{self.path}: {exc.strerror}"
        finally:
            view.release()
        if done:
            written_lines = self._pending.count(b"\n", 0, done)
            self._mid_line = self._pending[done - 1] != 0x0A
            del self._pending[:done]
            self.lines_written += written_lines
            self._lines_pending -= written_lines
            self._offset += done
        return error

    def _rotate(self) -> str | None:
        """Rename path -> path.1 -> ... -> path.N and open a new path; None on success."""
        path = self.path
        try:
            mine = os.fstat(self._fd)
            try:
                there = os.stat(path)
            except FileNotFoundError:
                there = None
            if there is None or (there.st_dev, there.st_ino) != (mine.st_dev, mine.st_ino):
                # rotated away by someone else already: start a new file, rename nothing
                self._switch()
                return None
            self._prune()
            for n in range(self.rotate_keep - 1, 0, -1):
                try:
                    os.replace(f"{path}.{n}", f"{path}.{n + 1}")  # replaces the oldest
                except FileNotFoundError:
                    pass
            os.replace(path, f"{path}.1")
            self._switch()
        except OSError as exc:
            # keep appending to the current file: an oversized file beats a lost line
            return f"{path}: rotation failed: {exc.strerror}"
        self.rotations += 1
        return None

    def _prune(self) -> None:
        """Remove path.N for N > rotate_keep, left over from a larger rotate_keep."""
        parent = os.path.dirname(os.path.abspath(self.path))
        prefix = os.path.basename(self.path) + "."
        for name in os.listdir(parent):
            suffix = name[len(prefix) :] if name.startswith(prefix) else ""
            if suffix.isdigit() and int(suffix) > self.rotate_keep:
                try:
                    os.unlink(os.path.join(parent, name))
                except FileNotFoundError:
                    pass

    @property
    def pending(self) -> int:
        """Lines queued but not yet written."""
        return self._lines_pending

    def close(self) -> None:
        """Flush what the output takes, then close the file (stdout stays open)."""
        self.flush()
        self._busy = True
        try:
            if self.path != "-" and self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
        finally:
            self._busy = False
