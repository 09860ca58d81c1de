"""cgroup identity: the cgroup id every record carries -> cgroup path -> container / sandbox.

The kernel stamps each record with ``bpf_get_current_cgroup_id()``: the cgroup v2 id, which is
the inode number of the cgroup's directory in the cgroup2 filesystem.  We turn it into a path
with ``open_by_handle_at`` (a kernfs file handle is the id itself: O(1), no directory walk) and
fall back to a rate-limited walk of the hierarchy where that call is not allowed.  Paths are
matched against configured patterns (data, not code) for a container id and a sandbox name.
Results are cached per id; nothing here runs per event once an id is known.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import struct
import time
from dataclasses import dataclass
from typing import Any

from monitor.sensor.probes import find_cgroup2

FILEID_KERNFS = 0xFE  # include/linux/exportfs.h: a kernfs node id as the whole handle
WALK_MIN_INTERVAL_S = 1.0
MAX_CACHED = 65536
MAX_WALK_ENTRIES = 200_000


@dataclass(frozen=True, slots=True)
class CgroupIdentity:
    id: int
    path: str | None  # relative to the cgroup2 mount, "/" for the root; None when unknown
    container_id: str | None = None
    sandbox_id: str | None = None

    def as_dict(self) -> dict[str, object]:
        return {"id": self.id, "path": self.path}


def proc_cgroup_path(pid: int | str = "self") -> str | None:
    """The cgroup v2 path of a process (the "0::" line of /proc/PID/cgroup), or None."""
    try:
        with open(f"/proc/{pid}/cgroup") as fh:
            for line in fh:
                if line.startswith("0::"):
                    return line[3:].strip()
    except OSError:
        pass
    return None


def normalise_path(path: str, mount: str | None) -> str:
    """A user-given cgroup path as a path relative to the mount ("/a/b")."""
    p = path.strip()
    if mount and (p == mount or p.startswith(mount.rstrip("/") + "/")):
        p = p[len(mount.rstrip("/")) :]
    p = "/" + p.strip("/")
    return p


class _Handles:
    """open_by_handle_at(2) through libc; unavailable -> None."""

    def __init__(self) -> None:
        name = ctypes.util.find_library("c") or "libc.so.6"
        self.fn: Any = None
        try:
            self.libc = ctypes.CDLL(name, use_errno=True)
            self.fn = self.libc.open_by_handle_at
        except (OSError, AttributeError):
            self.fn = None

    def path(self, mount_fd: int, cgroup_id: int) -> str | None:
        if self.fn is None:
            return None
        # struct file_handle { u32 handle_bytes; int handle_type; u8 f_handle[8]; }
        buf = ctypes.create_string_buffer(
            struct.pack("=Ii", 8, FILEID_KERNFS) + cgroup_id.to_bytes(8, "little")
        )
        fd = self.fn(mount_fd, buf, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        if fd < 0:
            return None
        try:
            return os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return None
        finally:
            os.close(fd)


class CgroupResolver:
    """cgroup id -> :class:`CgroupIdentity`, cached."""

    def __init__(
        self,
        container_patterns: tuple[str, ...] = (),
        sandbox_patterns: tuple[str, ...] = (),
        mount: str | None = None,
    ) -> None:
        self.mount = mount if mount is not None else find_cgroup2()
        self.container_res = [re.compile(p) for p in container_patterns]
        self.sandbox_res = [re.compile(p) for p in sandbox_patterns]
        self._cache: dict[int, CgroupIdentity] = {}
        self._handles = _Handles()
        self._mount_fd: int | None = None
        self._walked: dict[int, str] = {}
        self._last_walk = 0.0
        self.lookups = 0
        self.walks = 0
        if self.mount:
            try:
                self._mount_fd = os.open(self.mount, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError:
                self._mount_fd = None

    def close(self) -> None:
        if self._mount_fd is not None:
            os.close(self._mount_fd)
            self._mount_fd = None

    def identity(self, cgroup_id: int) -> CgroupIdentity:
        got = self._cache.get(cgroup_id)
        if got is not None:
            return got
        path = self._resolve(cgroup_id)
        ident = self.classify(cgroup_id, path)
        if path is not None or len(self._cache) < MAX_CACHED:
            # an unknown id is cached too, but forgotten when the cache is cleared
            if len(self._cache) >= MAX_CACHED:
                self._cache.clear()
            self._cache[cgroup_id] = ident
        return ident

    def path(self, cgroup_id: int) -> str | None:
        """The cgroup's path below the mount, or None (unknown, gone, or id 0)."""
        return self.identity(cgroup_id).path if cgroup_id else None

    def forget_unknown(self) -> None:
        """Drop cached misses (called when the registry names a new cgroup)."""
        for k in [k for k, v in self._cache.items() if v.path is None]:
            del self._cache[k]

    def classify(self, cgroup_id: int, path: str | None) -> CgroupIdentity:
        if path is None:
            return CgroupIdentity(cgroup_id, None)
        container = sandbox = None
        for rx in self.container_res:
            m = rx.search(path)
            if m:
                container = m.group("id")
                break
        for rx in self.sandbox_res:
            m = rx.search(path)
            if m:
                sandbox = m.group("sandbox")[:256]
                break
        return CgroupIdentity(cgroup_id, path, container, sandbox)

    def id_of(self, path: str) -> int | None:
        """The cgroup id of a path (relative to the mount or absolute), or None."""
        if not self.mount:
            return None
        rel = normalise_path(path, self.mount)
        try:
            return os.stat(self.mount.rstrip("/") + rel).st_ino
        except OSError:
            return None

    def _resolve(self, cgroup_id: int) -> str | None:
        self.lookups += 1
        if not self.mount or cgroup_id == 0:
            return None
        if cgroup_id == 1:
            return "/"
        if self._mount_fd is not None:
            full = self._handles.path(self._mount_fd, cgroup_id)
            if full is not None:
                return normalise_path(full, self.mount)
        path = self._walked.get(cgroup_id)
        if path is None and time.monotonic() - self._last_walk >= WALK_MIN_INTERVAL_S:
            self._walk()
            path = self._walked.get(cgroup_id)
        return path

    def _walk(self) -> None:
        """Map every cgroup directory's inode to its path (bounded)."""
        self._last_walk = time.monotonic()
        self.walks += 1
        found: dict[int, str] = {}
        root = (self.mount or "").rstrip("/")
        for dirpath, _dirs, _files in os.walk(root or "/"):
            try:
                found[os.stat(dirpath).st_ino] = normalise_path(dirpath, self.mount)
            except OSError:
                continue
            if len(found) >= MAX_WALK_ENTRIES:
                break
        self._walked = found
