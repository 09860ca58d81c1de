"""Find the TLS libraries on the host and attach the plaintext uprobes to each file once.

A uprobe sits on a file (its inode), so one attach covers every process that maps that
file, now and later.  The files: the config's globs at start-up (the system libssl and
libgnutls, conda's), then whatever the processes map (``/proc/PID/maps``): a container's
copy, a venv's or a wheel's bundled libssl.  New processes are looked at shortly after
their exec (twice: the dynamic loader maps DT_NEEDED libraries at once, Python imports
``ssl`` later), and every process every ``tls_rescan_s``.  A file is known by (device,
inode), whatever path reaches it (``/proc/PID/root/...`` for a container).

What this cannot see: TLS compiled into the program (Go, Rust with rustls, a static
OpenSSL such as XMRig's release builds, Node's bundled OpenSSL): no shared library call
to probe.  The first writes of a process whose library file is new to us, before the
next look at its maps.
"""

from __future__ import annotations

import glob
import os
import time
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from monitor.config import StreamsConfig

KINDS = (("libssl.so", "openssl"), ("libgnutls.so", "gnutls"))
EXEC_CHECKS_S = (0.5, 3.0)  # looks at a new process's maps this long after its exec
MAX_PENDING = 4096  # queued exec checks (a fork storm only delays them)
MAX_ATTACHED = 256  # library files attached at most (each costs probes in the kernel)


class UprobeSensor(Protocol):
    def attach_tls(self, path: str, kind: str) -> list[str]: ...


@dataclass(frozen=True, slots=True)
class Library:
    path: str  # as attached
    kind: str  # "openssl" / "gnutls"
    dev: int
    ino: int
    symbols: tuple[str, ...]
    found_by: str  # "glob", "maps", "exec"


def library_kind(path: str) -> str | None:
    """ "openssl" for a libssl.so*, "gnutls" for a libgnutls.so*, else None."""
    base = os.path.basename(path.removesuffix(" (deleted)"))
    for prefix, kind in KINDS:
        if base.startswith(prefix):
            return kind
    return None


def maps_libraries(text: bytes) -> set[tuple[str, str]]:
    """(path, mapping range) of every TLS library a /proc/PID/maps text names."""
    out: set[tuple[str, str]] = set()
    for line in text.splitlines():
        if b"libssl" not in line and b"libgnutls" not in line:
            continue
        parts = line.split(maxsplit=5)
        if len(parts) < 6:
            continue
        path = parts[5].decode("utf-8", "surrogateescape")
        if library_kind(path) is not None:
            out.add((path, parts[0].decode("ascii", "replace")))
    return out


class TlsLibraries:
    """The TLS library files attached so far, and the looks at processes still due."""

    def __init__(self, cfg: StreamsConfig, sensor: UprobeSensor, proc: str = "/proc") -> None:
        self.cfg = cfg
        self.sensor = sensor
        self.proc = proc
        self.attached: dict[tuple[int, int], Library] = {}
        self.failed: dict[tuple[int, int], str] = {}
        self._pending: deque[tuple[float, int]] = deque()
        self._last_scan = 0.0
        self.scans = 0
        self.scan_seconds = 0.0

    # -- entry points ----------------------------------------------------------------

    def start(self) -> list[Library]:
        """Attach to every file the globs name (the system's libraries, before "armed");
        the files running processes map are looked for at the first tick()."""
        if not self.cfg.tls:
            return []
        new: list[Library] = []
        for pattern in self.cfg.tls_libraries:
            for path in sorted(glob.glob(pattern)):
                if os.path.isfile(path) and not os.path.islink(path):
                    lib = self._attach(path, "glob")
                    if lib is not None:
                        new.append(lib)
        self._last_scan = -float("inf")  # the first tick scans every process
        return new

    def on_exec(self, pid: int, now: float | None = None) -> None:
        """Look at this new process's libraries soon (the loader maps them after exec)."""
        if not self.cfg.tls or len(self._pending) >= MAX_PENDING:
            return
        t = time.monotonic() if now is None else now
        for delay in EXEC_CHECKS_S:
            self._pending.append((t + delay, pid))

    def tick(self, now: float | None = None) -> list[Library]:
        """Due exec checks, and the periodic full scan; returns files newly attached."""
        if not self.cfg.tls:
            return []
        t = time.monotonic() if now is None else now
        new: list[Library] = []
        pids: set[int] = set()
        while self._pending and self._pending[0][0] <= t:
            pids.add(self._pending.popleft()[1])
        for pid in pids:
            new += self.scan_pid(pid, "exec")
        if self._last_scan == -float("inf") or (
            self.cfg.tls_rescan_s and t - self._last_scan >= self.cfg.tls_rescan_s
        ):
            new += self.scan_all(t)
        return new

    def scan_all(self, now: float | None = None) -> list[Library]:
        started = time.monotonic()
        self._last_scan = started if now is None else now
        new: list[Library] = []
        try:
            pids = [int(d) for d in os.listdir(self.proc) if d.isdigit()]
        except OSError:
            return new
        for pid in pids:
            new += self.scan_pid(pid, "maps")
        self.scans += 1
        self.scan_seconds += time.monotonic() - started
        return new

    def scan_pid(self, pid: int, how: str) -> list[Library]:
        if pid == os.getpid():
            return []  # our own TLS (the SIEM sink) is not captured
        try:
            with open(f"{self.proc}/{pid}/maps", "rb") as fh:
                text = fh.read()
        except OSError:
            return []
        new: list[Library] = []
        for path, rng in maps_libraries(text):
            lib = self._attach_mapped(pid, path, rng, how)
            if lib is not None:
                new.append(lib)
        return new

    def stats(self) -> dict[str, object]:
        return {
            "attached": len(self.attached),
            "failed": len(self.failed),
            "scans": self.scans,
            "scan_seconds": round(self.scan_seconds, 3),
            "pending_checks": len(self._pending),
        }

    # -- internals ---------------------------------------------------------------------

    def _attach_mapped(self, pid: int, path: str, rng: str, how: str) -> Library | None:
        """A mapped file: the host path if it is the same file, else through the process."""
        candidates = []
        if path.endswith(" (deleted)"):
            candidates.append(f"{self.proc}/{pid}/map_files/{rng}")  # the unlinked inode
        else:
            candidates += [path, f"{self.proc}/{pid}/root{path}"]
        seen: set[tuple[int, int]] = set()
        for cand in candidates:
            try:
                st = os.stat(cand)
            except OSError:
                continue
            key = (st.st_dev, st.st_ino)
            if key in seen:
                continue
            seen.add(key)
            if key in self.attached or key in self.failed:
                continue  # the host's file; a container's copy behind its root may differ
            return self._attach(cand, how, library_kind(path))
        return None

    def _attach(self, path: str, how: str, kind: str | None = None) -> Library | None:
        kind = kind or library_kind(path)
        if kind is None:
            return None
        try:
            st = os.stat(path)
        except OSError:
            return None
        key = (st.st_dev, st.st_ino)
        if key in self.attached or key in self.failed:
            return None
        if len(self.attached) >= MAX_ATTACHED:
            self.failed[key] = f"more than {MAX_ATTACHED} TLS library files"
            return None
        try:
            symbols = self.sensor.attach_tls(path, kind)
        except Exception as exc:  # a file we cannot probe is reported, never fatal
            self.failed[key] = f"{type(exc).__name__}: {exc}"[:300]
            return None
        lib = Library(path, kind, st.st_dev, st.st_ino, tuple(symbols), how)
        self.attached[key] = lib
        return lib
