"""Detection content (IOC lists and allowlists), loaded from data.

The shipped lists live in monitor/data/iocs.toml; the user's `[detectors]`
config adds to them (or replaces a list named in `replace`), and
`[allowlist]` holds destinations, SSH hosts, internal networks and program
paths that never alert.  Everything here is immutable once built.
"""

from __future__ import annotations

import fnmatch
import glob
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from netaddr import IPAddress, IPSet

from monitor.config import IOC_LISTS, AllowlistConfig, ConfigError, DetectorsConfig

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
    pool_domains: frozenset[str]
    tunnel_tools: frozenset[str]
    tunnel_domains: frozenset[str]
    ssh_clients: frozenset[str]
    shells: frozenset[str]
    allow_destinations: IPSet
    ssh_destinations: IPSet
    internal_networks: IPSet
    allow_process_paths: tuple[str, ...]
    pool_port_connects: str = "context"
    miner_domains: frozenset[str] = frozenset()
    list_files: tuple[str, ...] = ()  # the operator list files that were read
    long_lived_s: float = 600.0  # RLG-TUN-007: how long an outside connection must be held

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


def domain_match(name: str, suffixes: tuple[str, ...] | frozenset[str]) -> str | None:
    """The listed domain that `name` equals or is a subdomain of, if any.

    Walks the name's own suffixes (a.b.c.d -> b.c.d -> c.d -> d) against the list, so the
    cost is the number of labels, not the size of the list.
    """
    if not isinstance(name, str) or not suffixes:
        return None
    name = name.lower().rstrip(".")
    wanted = suffixes if isinstance(suffixes, frozenset) else frozenset(suffixes)
    while name:
        if name in wanted:
            return name
        _, dot, name = name.partition(".")
        if not dot:
            break
    return None


def normalise_domain(entry: str) -> str:
    """A list entry as matched: lower case, no "*." / "." prefix, no trailing dot."""
    entry = entry.strip().lower().rstrip(".")
    if entry.startswith("*."):
        entry = entry[2:]
    return entry.lstrip(".")


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


def _list_file_entries(doc: dict[str, Any], path: str) -> dict[str, list[str | int]]:
    """The lists of one operator file: top-level or inside tables, names as in IOC_LISTS."""
    out: dict[str, list[str | int]] = {}
    for key, value in doc.items():
        if isinstance(value, dict):
            for name, items in _list_file_entries(value, path).items():
                out.setdefault(name, []).extend(items)
            continue
        if key not in IOC_LISTS:
            raise ConfigError(f"{path}: unknown list {key!r} (known: {', '.join(IOC_LISTS)})")
        if not isinstance(value, list):
            raise ConfigError(f"{path}: {key} must be an array")
        want = int if key == "pool_ports" else str
        for item in value:
            if isinstance(item, bool) or not isinstance(item, want):
                raise ConfigError(f"{path}: {key} holds {item!r}, not {want.__name__}")
        out.setdefault(key, []).extend(value)
    return out


def operator_lists(patterns: tuple[str, ...]) -> tuple[dict[str, list[str | int]], list[str]]:
    """Lists from the operator's files ([detectors] list_files), and the files read.

    Read at start and on every reload, so a list update needs no release.  A pattern that
    matches nothing is skipped; a file that does not parse is a ConfigError naming it.
    """
    merged: dict[str, list[str | int]] = {}
    read: list[str] = []
    for pattern in patterns:
        for path in sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]:
            try:
                with open(path, "rb") as fh:
                    doc = tomllib.load(fh)
            except FileNotFoundError:
                continue
            except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
                raise ConfigError(f"{path}: cannot read list file: {exc}") from exc
            for name, items in _list_file_entries(doc, path).items():
                merged.setdefault(name, []).extend(items)
            read.append(path)
    return merged, read


def build_iocs(detectors: DetectorsConfig, allowlist: AllowlistConfig) -> Iocs:
    """Shipped lists + the user's additions (or replacements) + operator list files +
    allowlists.  Raises ConfigError for a malformed list file."""
    shipped = shipped_lists()
    files, read = operator_lists(detectors.list_files)
    merged: dict[str, list[str | int]] = {}
    for name in IOC_LISTS:
        base = [] if name in detectors.replace else list(shipped[name])
        extra = list(getattr(detectors, name)) + files.get(name, [])
        items = base + [x for x in extra if x not in base]
        merged[name] = [
            normalise_domain(x) if isinstance(x, str) and "domain" in name else x for x in items
        ]
    return Iocs(
        miner_names=frozenset(str(x).lower() for x in merged["miner_names"]),
        miner_flags=frozenset(str(x) for x in merged["miner_flags"]),
        pool_url_schemes=tuple(str(x).lower() for x in merged["pool_url_schemes"]),
        pool_ports=frozenset(int(x) for x in merged["pool_ports"]),
        pool_domains=frozenset(str(x) for x in merged["pool_domains"]),
        miner_domains=frozenset(str(x) for x in merged["miner_domains"]),
        tunnel_tools=frozenset(str(x).lower() for x in merged["tunnel_tools"]),
        tunnel_domains=frozenset(str(x) for x in merged["tunnel_domains"]),
        ssh_clients=frozenset(str(x) for x in merged["ssh_clients"]),
        shells=frozenset(str(x) for x in merged["shells"]),
        allow_destinations=IPSet(allowlist.destinations),
        ssh_destinations=IPSet(allowlist.ssh_destinations),
        internal_networks=IPSet(allowlist.internal_networks),
        allow_process_paths=tuple(allowlist.process_paths),
        pool_port_connects=detectors.pool_port_connects,
        list_files=tuple(read),
        long_lived_s=detectors.long_lived_s,
    )


def default_iocs() -> Iocs:
    from monitor.config import load_config

    cfg = load_config(None)
    return build_iocs(cfg.detectors, cfg.allowlist)
