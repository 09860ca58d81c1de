"""Test hosts in network namespaces, with documentation-range addresses.

Addresses come from 198.51.100.0/24 and 2001:db8::/32 (RFC 5737 / RFC 3849):
they look external to the detectors and are routed only over our own veth
pair, so nothing leaves the machine.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from dataclasses import dataclass, field


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), check=check, capture_output=True, text=True)


@dataclass
class NetnsHost:
    """One namespace 'outside host' joined to the root namespace by a veth pair."""

    index: int = 2
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
