"""NdjsonSink rotation: by size, by SIGHUP (logrotate create) and under copytruncate.

The invariant throughout: every line lands whole, exactly once, in order, across the
set of files; rotation never splits a line.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import BinaryIO

import pytest

from monitor.sinks.ndjson import NdjsonSink

pytestmark = pytest.mark.unit


def _doc(i: int, pad: int = 20) -> dict[str, object]:
    return {"seq": i, "pad": "x" * pad}


def _whole_lines(data: bytes) -> list[int]:
    """Sequence numbers of a file that must hold whole JSON lines only."""
    assert b"\0" not in data
    assert data == b"" or data.endswith(b"\n"), "file ends inside a line"
    return [json.loads(line)["seq"] for line in data.split(b"\n")[:-1]]


def _rotated(path: Path) -> list[Path]:
    """Rotated files, oldest first (path.N ... path.1)."""
    found = [p for p in path.parent.iterdir() if p.name.startswith(path.name + ".")]
    return sorted(found, key=lambda p: -int(p.name.rsplit(".", 1)[1]))


def test_rotation_count_retention_and_sizes(tmp_path: Path) -> None:
    path = tmp_path / "events.ndjson"
    sink = NdjsonSink(str(path), rotate_bytes=1000, rotate_keep=3)
    line_len = len(json.dumps(_doc(0), separators=(",", ":"))) + 1
    n = 400
    for i in range(n):
        sink.write(_doc(i))
        if i % 7 == 0:
            assert sink.flush()
    sink.close()

    rotated = _rotated(path)
    assert [p.name for p in rotated] == ["events.ndjson.3", "events.ndjson.2", "events.ndjson.1"]
    seqs: list[int] = []
    for p in [*rotated, path]:
        data = p.read_bytes()
        assert len(data) <= 1000
        if p != path:
            # full: the next line would not have fitted
            assert len(data) + line_len + 10 > 1000
        seqs += _whole_lines(data)
    # the kept files are a contiguous tail of the stream
    assert seqs == list(range(seqs[0], n))
    assert sink.rotations >= 3
    assert sink.lines_written == n and sink.pending == 0 and sink.last_error is None


def test_one_flush_spanning_many_rotations(tmp_path: Path) -> None:
    path = tmp_path / "e.ndjson"
    sink = NdjsonSink(str(path), rotate_bytes=300, rotate_keep=100)
    for i in range(200):
        sink.write(_doc(i, pad=i % 50))  # uneven line lengths
    assert sink.flush()
    seqs: list[int] = []
    for p in [*_rotated(path), path]:
        data = p.read_bytes()
        assert 0 < len(data) <= 300
        seqs += _whole_lines(data)
    assert seqs == list(range(200))
    assert sink.rotations == len(_rotated(path))


def test_oversized_line_gets_its_own_file(tmp_path: Path) -> None:
    path = tmp_path / "e.ndjson"
    sink = NdjsonSink(str(path), rotate_bytes=100, rotate_keep=5)
    sink.write(_doc(0))
    sink.write(_doc(1, pad=500))  # larger than rotate_bytes on its own
    sink.write(_doc(2))
    assert sink.flush()
    files = [*_rotated(path), path]
    assert [_whole_lines(p.read_bytes()) for p in files] == [[0], [1], [2]]
    assert len(files[1].read_bytes()) > 100


def test_existing_file_size_counts_and_leftovers_pruned(tmp_path: Path) -> None:
    path = tmp_path / "e.ndjson"
    path.write_bytes(b'{"seq":-1}\n' * 80)  # 880 bytes from an earlier run
    (tmp_path / "e.ndjson.7").write_text("left over from rotate_keep = 7\n")
    sink = NdjsonSink(str(path), rotate_bytes=1000, rotate_keep=2)
    sink.write(_doc(0, pad=200))  # would take the old file past 1000
    assert sink.flush()
    assert _whole_lines((tmp_path / "e.ndjson.1").read_bytes()) == [-1] * 80
    assert _whole_lines(path.read_bytes()) == [0]
    assert not (tmp_path / "e.ndjson.7").exists()


def test_torn_tail_of_previous_run_is_sealed(tmp_path: Path) -> None:
    path = tmp_path / "e.ndjson"
    path.write_bytes(b'{"seq":0}\n{"seq":1, "cut sh')
    sink = NdjsonSink(str(path))
    sink.write(_doc(2))
    assert sink.flush()
    lines = path.read_bytes().split(b"\n")
    assert lines[1] == b'{"seq":1, "cut sh'
    assert json.loads(lines[2])["seq"] == 2


def test_failed_rotation_keeps_writing(tmp_path: Path) -> None:
    path = tmp_path / "e.ndjson"
    sink = NdjsonSink(str(path), rotate_bytes=100, rotate_keep=2)
    sink.write(_doc(0, pad=60))
    assert sink.flush()
    os.chmod(tmp_path, 0o500)  # renames now fail (EACCES) for non-root users
    try:
        sink.write(_doc(1, pad=60))
        assert sink.flush()
        if os.geteuid() != 0:
            assert "rotation failed" in (sink.last_error or "")
            assert _whole_lines(path.read_bytes()) == [0, 1]  # oversized beats lost
    finally:
        os.chmod(tmp_path, 0o700)
    sink.write(_doc(2, pad=60))
    assert sink.flush()
    seqs = [s for p in [*_rotated(path), path] for s in _whole_lines(p.read_bytes())]
    assert seqs == [0, 1, 2]
    assert sink.last_error is None


def test_reopen_defers_to_a_line_boundary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A SIGHUP that lands inside a short write never splits the line across files."""
    path = tmp_path / "e.ndjson"
    sink = NdjsonSink(str(path))
    real_write = os.write
    calls = 0

    def short_write(fd: int, data: bytes | memoryview) -> int:
        nonlocal calls
        calls += 1
        if calls == 2:  # logrotate renames, then signals us while a line is half out
            os.rename(path, tmp_path / "e.ndjson.1")
            sink.reopen()
        return real_write(fd, bytes(data[:13]))  # 13 bytes: always stops inside a line

    monkeypatch.setattr(os, "write", short_write)
    for i in range(10):
        sink.write(_doc(i))
    assert sink.flush()
    monkeypatch.setattr(os, "write", real_write)
    for i in range(10, 15):
        sink.write(_doc(i))
    assert sink.flush()
    old = _whole_lines((tmp_path / "e.ndjson.1").read_bytes())
    new = _whole_lines(path.read_bytes())
    assert old + new == list(range(15))
    assert new and new[-1] == 14


def test_sighup_rotation_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    """logrotate `create` + SIGHUP, with real signals landing anywhere in the loop."""
    path = tmp_path / "e.ndjson"
    sink = NdjsonSink(str(path))
    previous = signal.signal(signal.SIGHUP, lambda _s, _f: sink.reopen())
    stop = threading.Event()
    rotations = 0

    def logrotate() -> None:
        nonlocal rotations
        while not stop.is_set() and rotations < 25:
            time.sleep(0.004)
            if not path.exists():
                continue  # the last SIGHUP is not handled yet (logrotate is hours apart)
            rotations += 1
            os.rename(path, tmp_path / f"e.ndjson.r{rotations:03d}")
            os.kill(os.getpid(), signal.SIGHUP)

    t = threading.Thread(target=logrotate)
    n = 20000
    try:
        t.start()
        for i in range(n):
            sink.write(_doc(i))
            if i % 50 == 0:
                assert sink.flush()
            if i % 400 == 0:
                time.sleep(0.001)  # let the rotator in
        stop.set()
        t.join()
        sink.close()
    finally:
        signal.signal(signal.SIGHUP, previous)
    files = sorted(tmp_path.glob("e.ndjson.r*")) + [path]
    seqs = [s for p in files if p.exists() for s in _whole_lines(p.read_bytes())]
    assert seqs == list(range(n))
    assert rotations >= 5


def test_copytruncate_every_line_exactly_once(tmp_path: Path) -> None:
    """copytruncate between drain cycles: the copies plus the file hold every line once.

    The sink keeps its descriptor across truncations; O_APPEND puts the next write at
    the new end, so there is no NUL hole and no line is duplicated.
    """
    path = tmp_path / "e.ndjson"
    sink = NdjsonSink(str(path), rotate_bytes=1 << 20)
    assert fcntl.fcntl(sink._fd, fcntl.F_GETFL) & os.O_APPEND
    lock = threading.Lock()
    copies: list[bytes] = []
    done = threading.Event()

    def copytruncate() -> None:
        while not done.is_set():
            time.sleep(0.002)
            with lock:  # logrotate's copy + truncate, between two of our flushes
                copies.append(path.read_bytes())
                os.truncate(path, 0)

    t = threading.Thread(target=copytruncate)
    t.start()
    n = 0
    while n < 20000 or len(copies) < 5:  # at least a few truncations, however busy the host
        sink.write(_doc(n))
        n += 1
        if n % 40 == 0:
            with lock:
                assert sink.flush()
    with lock:
        sink.close()
    done.set()
    t.join()
    seqs = [s for c in [*copies, path.read_bytes()] for s in _whole_lines(c)]
    assert seqs == list(range(n))
    assert sink.truncations >= 1
    assert sink.rotations == 0  # the size accounting restarted after each truncation


def test_copytruncate_underneath_concurrent_writes(tmp_path: Path) -> None:
    """copytruncate racing our writes: no hole, no duplicate, no torn line in the file.

    Only logrotate's own window can lose lines (written after its copy, before its
    truncate) and only its copy can end in a fragment (a read racing a write); both
    show up exactly at a copy boundary, nowhere else.
    """
    path = tmp_path / "e.ndjson"
    sink = NdjsonSink(str(path))
    copies: list[bytes] = []
    done = threading.Event()

    def copytruncate() -> None:
        while not done.is_set():
            time.sleep(0.001)
            copies.append(path.read_bytes())
            os.truncate(path, 0)

    t = threading.Thread(target=copytruncate)
    t.start()
    n = 40000
    for i in range(n - 1):
        sink.write(_doc(i))
        if i % 25 == 0:
            assert sink.flush()
    assert sink.flush()
    done.set()
    t.join()
    sink.write(_doc(n - 1))  # after the last truncation: lands at the new end, whole
    sink.close()

    final = _whole_lines(path.read_bytes())  # the live file: whole lines only
    pieces: list[list[int]] = []
    for c in copies:
        assert b"\0" not in c
        body = c[: c.rfind(b"\n") + 1]  # a fragment may only trail a copy
        pieces.append(_whole_lines(body))
    pieces.append(final)
    seqs = [s for p in pieces for s in p]
    assert seqs == sorted(set(seqs)), "duplicated or reordered line"
    # every gap sits at a copy boundary: between the end of one piece and the next
    inner_gap = [p for p in pieces if p and p != list(range(p[0], p[-1] + 1))]
    assert not inner_gap
    assert seqs[-1] == n - 1
    assert len(copies) >= 3 and sink.truncations >= 1


def test_rotation_under_concurrent_reader(tmp_path: Path) -> None:
    """A reader following by inode sees every line once, whole and in order, across rotations.

    The reader drains a file once it has been renamed away (nothing is written to it after
    the rename) and then finds its successor by name: if the finished file is now path.j,
    the next one is path.(j-1), or path itself for j = 1.
    """
    path = tmp_path / "e.ndjson"
    sink = NdjsonSink(str(path), rotate_bytes=4096, rotate_keep=1000)
    got: list[int] = []
    errors: list[str] = []
    done = threading.Event()
    n = 20000

    def ino(p: Path | str) -> int | None:
        try:
            return os.stat(p).st_ino
        except FileNotFoundError:
            return None

    def successor(cur: int) -> BinaryIO | None:
        for j in range(1, 2000):
            there = ino(f"{path}.{j}")
            if there is None:
                return None  # mid-rotation: look again
            if there == cur:
                try:
                    fh = open(path if j == 1 else f"{path}.{j - 1}", "rb")
                except FileNotFoundError:
                    return None
                if ino(f"{path}.{j}") == cur:  # no rotation started meanwhile
                    return fh
                fh.close()
                return None
        return None

    def follow() -> None:
        while not path.exists():
            time.sleep(0.0005)
        fh: BinaryIO = open(path, "rb")
        buf = b""
        while True:
            chunk = fh.read()
            if chunk:
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    try:
                        got.append(json.loads(line)["seq"])
                    except ValueError:
                        errors.append(repr(line[:80]))
                continue
            cur = os.fstat(fh.fileno()).st_ino
            if ino(path) != cur:
                chunk = fh.read()  # renamed away: nothing more will be written, drain it
                if chunk:
                    buf += chunk
                    continue
                nxt = successor(cur)
                if nxt is None:
                    time.sleep(0.0002)
                    continue
                if buf:
                    errors.append(f"partial line at the end of a rotated file: {buf[:80]!r}")
                    buf = b""
                fh.close()
                fh = nxt
                continue
            if done.is_set() and len(got) >= n:
                break
            if time.monotonic() > deadline:
                errors.append("reader timed out")
                break
            time.sleep(0.0005)
        fh.close()

    deadline = time.monotonic() + 60
    reader = threading.Thread(target=follow)
    reader.start()
    for i in range(n):
        sink.write(_doc(i, pad=i % 40))
        if i % 30 == 0:
            assert sink.flush()
    sink.close()
    done.set()
    reader.join(timeout=70)
    assert not reader.is_alive()
    assert not errors
    assert got == list(range(n))
    assert sink.rotations >= 50
