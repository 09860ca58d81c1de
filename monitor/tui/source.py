"""Where the viewer's lines come from: the live socket, or a file followed like ``tail -f``.

Both readers are asyncio coroutines that run inside the app's event loop and
hand over complete lines in batches through a callback. Lines longer than
``MAX_LINE`` are discarded (and counted) rather than buffered without bound: the
stream is attacker-influenced and a viewer must not be made to eat its memory.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Callable
from enum import Enum
from pathlib import Path

MAX_LINE = 1 << 20  # the monitor's lines are far smaller (argv is capped at 128 KiB)
READ_CHUNK = 1 << 16
BATCH_S = 0.05  # a backlog is handed over in slices of about this much work, then the UI runs
FILE_POLL_S = 0.25
RETRY_S = 1.0

LinesCallback = Callable[[list[bytes]], None]
StatusCallback = Callable[[str], None]


class SourceKind(Enum):
    SOCKET = "socket"
    FILE = "file"


def detect_kind(path: str | os.PathLike[str]) -> SourceKind:
    """A socket if ``path`` is one now, else a file (which may not exist yet)."""
    try:
        return SourceKind.SOCKET if stat.S_ISSOCK(os.stat(path).st_mode) else SourceKind.FILE
    except OSError:
        return SourceKind.FILE


class LineSplitter:
    """Cuts a byte stream into lines, dropping any line longer than ``max_line``."""

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self.oversize = 0  # lines discarded since the last take_oversize()
        self._buf = bytearray()
        self._skipping = False  # inside an oversize line: drop until its newline

    def feed(self, data: bytes) -> list[bytes]:
        """Complete lines in ``data`` (after what was buffered), without their newlines."""
        out: list[bytes] = []
        start = 0
        while True:
            nl = data.find(b"\n", start)
            if nl < 0:
                break
            if self._skipping:
                self._skipping = False
            elif len(self._buf) + nl - start > self.max_line:
                self.oversize += 1
                self._buf.clear()
            else:
                if self._buf:
                    self._buf += data[start:nl]
                    out.append(bytes(self._buf))
                    self._buf.clear()
                else:
                    out.append(data[start:nl])
            start = nl + 1
        if not self._skipping:
            self._buf += data[start:]
            if len(self._buf) > self.max_line:
                self.oversize += 1
                self._buf.clear()
                self._skipping = True
        return [line for line in out if line.strip()]

    def reset(self) -> None:
        """Forget a partial line (the stream restarted)."""
        self._buf.clear()
        self._skipping = False

    def take_oversize(self) -> int:
        n, self.oversize = self.oversize, 0
        return n


async def follow_file(
    path: str | os.PathLike[str],
    on_lines: LinesCallback,
    on_status: StatusCallback,
    splitter: LineSplitter,
    poll_s: float = FILE_POLL_S,
) -> None:
    """Replay ``path`` from its start, then follow it; reopen it after rotation or truncation.

    A partial last line waits for its newline, as with ``tail -f``. Runs until cancelled.
    """
    path = Path(path)
    loop = asyncio.get_running_loop()
    announced_missing = False
    while True:
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed below, kept open across polls
        except OSError as exc:
            if not announced_missing:
                on_status(f"waiting for {path}: {exc.strerror}")
                announced_missing = True
            await asyncio.sleep(poll_s)
            continue
        announced_missing = False
        splitter.reset()
        on_status(f"following {path}")
        with f:
            ino = os.fstat(f.fileno()).st_ino
            while True:
                # Read a slice of backlog as one batch: one screen update per slice, not per
                # 64 KiB, keeps a long replay fast; the slice bound keeps the screen live.
                lines = []
                deadline = loop.time() + BATCH_S
                while True:
                    data = f.read(READ_CHUNK)
                    if not data:
                        break
                    lines += splitter.feed(data)
                    if loop.time() >= deadline:
                        break
                if lines or splitter.oversize:
                    on_lines(lines)
                if data:
                    await asyncio.sleep(0)
                    continue
                try:
                    st = os.stat(path)
                except OSError:
                    st = None
                if st is None or st.st_ino != ino:
                    on_status(f"{path} was rotated; reopening")
                    break
                if st.st_size < f.tell():
                    on_status(f"{path} was truncated; reading from its start")
                    f.seek(0)
                    splitter.reset()
                    continue
                await asyncio.sleep(poll_s)


async def follow_socket(
    path: str | os.PathLike[str],
    on_lines: LinesCallback,
    on_status: StatusCallback,
    splitter: LineSplitter,
    retry_s: float = RETRY_S,
) -> None:
    """Read the monitor's live socket; reconnect when it goes away. Runs until cancelled."""
    last_status = ""

    def status(msg: str) -> None:
        nonlocal last_status
        if msg != last_status:  # a retry loop must not flood the status line
            last_status = msg
            on_status(msg)

    while True:
        try:
            reader, writer = await asyncio.open_unix_connection(os.fspath(path))
        except PermissionError:
            status(f"{path}: permission denied (is this user in the monitor's live_group?)")
            await asyncio.sleep(retry_s)
            continue
        except OSError as exc:
            status(f"waiting for the monitor at {path}: {exc.strerror or exc}")
            await asyncio.sleep(retry_s)
            continue
        status(f"connected to {path}")
        splitter.reset()
        try:
            while True:
                data = await reader.read(READ_CHUNK)
                if not data:
                    break
                lines = splitter.feed(data)
                if lines or splitter.oversize:
                    on_lines(lines)
        except OSError as exc:
            status(f"{path}: {exc.strerror or exc}")
        finally:
            writer.close()
        status(f"the monitor closed {path}; reconnecting")
        await asyncio.sleep(retry_s)
