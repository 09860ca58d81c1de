"""Detection content (IOC lists and allowlists), loaded from data.

The shipped lists live in monitor/data/iocs.toml; the user's `[detectors]`
config adds to them (or replaces a list named in `replace`), and
`[allowlist]` holds destinations, SSH hosts, internal networks and program
paths that never alert.  Everything here is immutable once built.
"""

from __future__ import annotations

import fnmatch
import sys
from dataclasses import dataclass
from pathlib import Path

from netaddr import IPAddress, IPSet

from monitor.config import IOC_LISTS, AllowlistConfig, DetectorsConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

IOC_FILE = Path(__file__).resolve().parent.parent / "data" / "iocs.toml"


@dataclass(frozen=True)
class Iocs:
    miner_names: frozenset[str]
    miner_flags: frozenset[str]
    pool_url_schemes: tuple[str, ...]
    pool_ports: frozenset[int]
    pool_domains: tuple[str, ...]
    tunnel_tools: frozenset[str]
    tunnel_domains: tuple[str, ...]
    ssh_clients: frozenset[str]
    shells: frozenset[str]
    allow_destinations: IPSet
    ssh_destinations: IPSet
    internal_networks: IPSet
    allow_process_paths: tuple[str, ...]
    pool_port_connects: str = "context"

    def is_internal(self, ip: str | None) -> bool:
        return _in(ip, self.internal_networks)

    def is_allowed_destination(self, ip: str | None) -> bool:
        return _in(ip, self.allow_destinations)

    def is_ssh_destination(self, ip: str | None) -> bool:
        return _in(ip, self.ssh_destinations) or _in(ip, self.allow_destinations)

    def is_allowed_process(self, path: str | None) -> bool:
        return bool(path) and any(
            fnmatch.fnmatchcase(path or "", g) for g in self.allow_process_paths
        )


def _in(ip: str | None, nets: IPSet) -> bool:
    if not ip or not nets:
        return False
    try:
        return IPAddress(ip) in nets
    except (ValueError, TypeError):
        return False


def domain_match(name: str, suffixes: tuple[str, ...]) -> str | None:
    """The suffix that `name` equals or is a subdomain of, if any."""
    name = name.lower().rstrip(".")
    for suffix in suffixes:
        if name == suffix or name.endswith("." + suffix):
            return suffix
    return None


def shipped_lists(path: Path = IOC_FILE) -> dict[str, list[str | int]]:
    with open(path, "rb") as fh:
        doc = tomllib.load(fh)
    out: dict[str, list[str | int]] = {}
    for section in doc.values():
        out.update(section)
    missing = set(IOC_LISTS) - set(out)
    if missing:
        raise ValueError(f"{path}: missing lists {sorted(missing)}")
    return out


def build_iocs(detectors: DetectorsConfig, allowlist: AllowlistConfig) -> Iocs:
    """Shipped lists + the user's additions (or replacements) + allowlists."""
    shipped = shipped_lists()
    merged: dict[str, list[str | int]] = {}
    for name in IOC_LISTS:
        base = [] if name in detectors.replace else list(shipped[name])
        extra = list(getattr(detectors, name))
        items = base + [x for x in extra if x not in base]
        merged[name] = [x.lower() if isinstance(x, str) and "domain" in name else x for x in items]
    return Iocs(
        miner_names=frozenset(str(x).lower() for x in merged["miner_names"]),
        miner_flags=frozenset(str(x) for x in merged["miner_flags"]),
        pool_url_schemes=tuple(str(x).lower() for x in merged["pool_url_schemes"]),
        pool_ports=frozenset(int(x) for x in merged["pool_ports"]),
        pool_domains=tuple(str(x) for x in merged["pool_domains"]),
        tunnel_tools=frozenset(str(x).lower() for x in merged["tunnel_tools"]),
        tunnel_domains=tuple(str(x) for x in merged["tunnel_domains"]),
        ssh_clients=frozenset(str(x) for x in merged["ssh_clients"]),
        shells=frozenset(str(x) for x in merged["shells"]),
        allow_destinations=IPSet(allowlist.destinations),
        ssh_destinations=IPSet(allowlist.ssh_destinations),
        internal_networks=IPSet(allowlist.internal_networks),
        allow_process_paths=tuple(allowlist.process_paths),
        pool_port_connects=detectors.pool_port_connects,
    )


def default_iocs() -> Iocs:
    from monitor.config import load_config

    cfg = load_config(None)
    return build_iocs(cfg.detectors, cfg.allowlist)
