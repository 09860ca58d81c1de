"""Test hosts in network namespaces, with documentation-range addresses.

Addresses come from 198.51.100.0/24 and 2001:db8::/32 (RFC 5737 / RFC 3849):
they look external to the detectors and are routed only over our own veth
pair, so nothing leaves the machine.  Each host takes the lowest address no other
host on this machine uses (allocated under a lock), so test runs side by side, or
a demo beside a test run, never collide.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

ALLOC_LOCK = "/run/lock/rlguard-lab.lock"
FIRST_INDEX, LAST_INDEX = 2, 250


@contextlib.contextmanager
def _alloc_lock() -> Iterator[None]:
    os.makedirs(os.path.dirname(ALLOC_LOCK), exist_ok=True)
    with open(ALLOC_LOCK, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _used_indexes() -> set[int]:
    """Host parts of the 198.51.100.0/24 routes and addresses in use on this machine."""
    used: set[int] = set()
    for cmd in (("ip", "-4", "-o", "route", "show"), ("ip", "-4", "-o", "addr", "show")):
        for word in sh(*cmd, check=False).stdout.split():
            if word.startswith("198.51.100."):
                tail = word.split("/")[0].rsplit(".", 1)[1]
                if tail.isdigit():
                    used.add(int(tail))
    return used


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), check=check, capture_output=True, text=True)


@dataclass
class NetnsHost:
    """One namespace 'outside host' joined to the root namespace by a veth pair."""

    index: int = 0  # 0: the lowest free one (a fixed one only where nothing else runs)
    name: str = field(default_factory=lambda: f"rlg-{uuid.uuid4().hex[:8]}")
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def host_if(self) -> str:
        return f"{self.name[:10]}h"

    @property
    def ns_if(self) -> str:
        return f"{self.name[:10]}n"

    @property
    def ip4(self) -> str:
        return f"198.51.100.{self.index}"

    @property
    def ip6(self) -> str:
        return f"2001:db8:51::{self.index}"

    @property
    def gw4(self) -> str:
        return "198.51.100.1"

    @property
    def gw6(self) -> str:
        return "2001:db8:51::1"

    def up(self) -> NetnsHost:
        with _alloc_lock():
            if not self.index or self.index in _used_indexes():
                free = sorted(set(range(FIRST_INDEX, LAST_INDEX + 1)) - _used_indexes())
                if not free:
                    raise RuntimeError("no free 198.51.100.0/24 address for a test host")
                self.index = free[0]
            return self._up()

    def _up(self) -> NetnsHost:
        try:
            sh("ip", "netns", "add", self.name)
            sh("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
            sh("ip", "link", "set", self.ns_if, "netns", self.name)
            sh("ip", "addr", "add", f"{self.gw4}/32", "dev", self.host_if)
            sh("ip", "-6", "addr", "add", f"{self.gw6}/128", "dev", self.host_if, "nodad")
            sh("ip", "link", "set", self.host_if, "up")
            sh("ip", "route", "add", f"{self.ip4}/32", "dev", self.host_if)
            sh("ip", "-6", "route", "add", f"{self.ip6}/128", "dev", self.host_if)
            ns = ("ip", "netns", "exec", self.name)
            sh(*ns, "ip", "link", "set", "lo", "up")
            sh(*ns, "ip", "addr", "add", f"{self.ip4}/24", "dev", self.ns_if)
            sh(*ns, "ip", "-6", "addr", "add", f"{self.ip6}/64", "dev", self.ns_if, "nodad")
            sh(*ns, "ip", "link", "set", self.ns_if, "up")
            sh(*ns, "ip", "route", "add", f"{self.gw4}/32", "dev", self.ns_if)
            sh(*ns, "ip", "route", "add", "default", "via", self.gw4, "dev", self.ns_if)
            sh(*ns, "ip", "-6", "route", "add", f"{self.gw6}/128", "dev", self.ns_if)
            sh(*ns, "ip", "-6", "route", "add", "default", "via", self.gw6, "dev", self.ns_if)
        except subprocess.CalledProcessError as exc:
            self.down()
            raise RuntimeError(f"netns setup failed: {exc.cmd}: {exc.stderr}") from exc
        return self

    def spawn(self, *cmd: str, **kw: object) -> subprocess.Popen[bytes]:
        """Start a process inside the namespace; stopped by down()."""
        p = subprocess.Popen(["ip", "netns", "exec", self.name, *cmd], **kw)  # type: ignore[call-overload]
        self.procs.append(p)
        return p

    def down(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self.procs.clear()
        # killing every process left in the namespace before deleting it
        pids = sh("ip", "netns", "pids", self.name, check=False).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), 9)
            except (ProcessLookupError, ValueError):
                pass
        sh("ip", "link", "del", self.host_if, check=False)
        sh("ip", "netns", "del", self.name, check=False)

    def __enter__(self) -> NetnsHost:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()
