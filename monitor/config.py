"""Configuration: built-in defaults plus an optional user TOML file, validated with clear errors.

The schema is data: ``SCHEMA`` is one table of sections and their fields (name, kind, default,
checks, doc) and it alone drives parsing, type and value validation, defaults and the
commented example file (``render_example``). A new section is a new ``SectionSpec`` entry,
a frozen dataclass for its values and an attribute on ``Config``.

Every error is a ``ConfigError`` whose message names the file and the dotted key, e.g.::

    /etc/rlguard/rlguard.toml: probes.ring_pages: must be a power of two, got 1000
"""

from __future__ import annotations

import difflib
import fnmatch
import re
import sys
import textwrap
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from enum import Enum
from functools import cached_property
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

__all__ = [
    "ARGS_BUF_MAX",
    "AttributionConfig",
    "RegistryConfig",
    "EXAMPLE_PATH",
    "MAX_TAGS",
    "SCHEMA",
    "TAG_KEY_LEN",
    "TAG_ROLES",
    "Check",
    "Config",
    "ConfigError",
    "DnsTunnelConfig",
    "FieldSpec",
    "GpuConfig",
    "Kind",
    "LedgerConfig",
    "MiningBehaviourConfig",
    "StreamsConfig",
    "OutputConfig",
    "ProbesConfig",
    "ProcessTableConfig",
    "RULES_FILE",
    "EntrySpec",
    "RuleSettings",
    "RulesConfig",
    "SectionSpec",
    "TagsConfig",
    "catalogue_rule_ids",
    "config_from_dict",
    "fnv1a_64",
    "load_config",
    "parse_config",
    "render_example",
]

# Kernel limits. They mirror the defaults in probes/rlguard.h; a unit test keeps them in step.
MAX_TAGS = 24  # RLG_MAX_TAGS: slots per tagset, one bit each in the kernel's u32 masks
TAG_KEY_LEN = 32  # RLG_TAG_KEY_LEN: the kernel hashes at most this many bytes of a key
ARGS_BUF_MAX = 131072  # largest RLG_ARGS_BUF (max_args * arg_size) we let the loader build

EXAMPLE_PATH = Path(__file__).with_name("data") / "rlguard.example.toml"
# the rule catalogue: [rules."ID"] tables may name only its ids
RULES_FILE = Path(__file__).with_name("data") / "rules.toml"

# Roles of tag keys, in precedence order: a key listed under two roles takes the first.
TAG_ROLES: tuple[str, ...] = ("episode", "worker", "run", "trajectory", "sandbox", "extra")

_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_MASK64 = (1 << 64) - 1


def fnv1a_64(key: str) -> int:
    """FNV-1a 64-bit hash of ``key``'s ASCII bytes, as the kernel computes it for env keys.

    User space fills the kernel's ``tag_keys`` map with these hashes, so the two must agree
    bit for bit. Raises ``UnicodeEncodeError`` (a ``ValueError``) for non-ASCII keys.
    """
    h = _FNV_OFFSET
    for byte in key.encode("ascii"):
        h ^= byte
        h = (h * _FNV_PRIME) & _MASK64
    return h


class ConfigError(Exception):
    """A config file that cannot be used; ``str(err)`` is the full message for the user.

    ``path`` is the file (None when parsing text without a file) and ``key`` the dotted key
    at fault (None for errors about the whole file, such as TOML syntax errors).
    """

    def __init__(self, message: str, path: Path | None = None, key: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.path = path
        self.key = key


# --- schema building blocks -------------------------------------------------------------


class Kind(Enum):
    """The TOML type a field accepts; the value is the phrase used in messages and docs."""

    STR = "a string"
    BOOL = "a boolean"
    INT = "an integer"
    FLOAT = "a number"
    STR_LIST = "an array of strings"
    INT_LIST = "an array of integers"


@dataclass(frozen=True)
class Check:
    """A value rule: ``ok(value)`` must hold; ``rule`` completes "must be ..." in messages."""

    rule: str
    ok: Callable[[Any], bool]


@dataclass(frozen=True)
class FieldSpec:
    """One key of a section. For list kinds the checks apply to every item."""

    name: str
    kind: Kind
    default: Any
    doc: str
    checks: tuple[Check, ...] = ()


def _find_field(specs: tuple[FieldSpec, ...], name: str) -> FieldSpec | None:
    for f in specs:
        if f.name == name:
            return f
    return None


@dataclass(frozen=True)
class EntrySpec:
    """Sub-tables ``[section."KEY"]`` that share one set of fields (e.g. one per rule).

    ``keys`` gives the KEYs allowed (called only when a file names one); the section's result
    dataclass holds the entries in its ``attr`` field as sorted (KEY, ``result``) pairs.
    """

    what: str  # what a KEY names, in messages and docs: "rule id"
    doc: str
    keys: Callable[[], tuple[str, ...]]
    example: str  # a KEY for the example file and the docs
    result: type[Any]
    attr: str
    fields: tuple[FieldSpec, ...]

    def field(self, name: str) -> FieldSpec | None:
        """The field called ``name``, or None."""
        return _find_field(self.fields, name)


# Cross-field rules and derived values: gets the section's values (defaults filled in) and the
# names the user set; returns the values for the result dataclass or raises _Invalid.
Finisher = Callable[[dict[str, Any], frozenset[str]], dict[str, Any]]


@dataclass(frozen=True)
class SectionSpec:
    """One ``[section]``: its fields, the frozen dataclass built from them, optional finisher."""

    name: str
    doc: str
    result: type[Any]
    fields: tuple[FieldSpec, ...]
    finish: Finisher | None = None
    entries: EntrySpec | None = None

    def field(self, name: str) -> FieldSpec | None:
        """The field called ``name``, or None."""
        return _find_field(self.fields, name)


class _Invalid(Exception):
    """Raised inside the loader with a key relative to the section ('' = the section)."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(reason)
        self.key = key
        self.reason = reason


def _fmt_num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def between(lo: float, hi: float) -> Check:
    """Inclusive range check."""
    return Check(f"between {_fmt_num(lo)} and {_fmt_num(hi)}", lambda v: lo <= v <= hi)


def _is_pow2(v: int) -> bool:
    return v > 0 and v & (v - 1) == 0


POWER_OF_TWO = Check("a power of two", _is_pow2)


def _is_cidr(v: str) -> bool:
    from netaddr import AddrFormatError, IPNetwork

    try:
        IPNetwork(v)
    except (AddrFormatError, ValueError, TypeError):
        return False
    return True


CIDR = Check("an IPv4/IPv6 address or CIDR", _is_cidr)
_DOMAIN_RE = re.compile(r"(?=.{1,253}$)([a-z0-9_-]{1,63}\.)*[a-z0-9_-]{1,63}")
DOMAIN = Check(
    "a lower-case domain name", lambda v: _DOMAIN_RE.fullmatch(v.rstrip(".")) is not None
)
IOC_LISTS = (
    "miner_names",
    "miner_flags",
    "pool_url_schemes",
    "pool_ports",
    "pool_domains",
    "miner_domains",
    "tunnel_tools",
    "tunnel_domains",
    "ssh_clients",
    "shells",
)
IOC_LIST_NAME = Check("one of " + ", ".join(IOC_LISTS), lambda v: v in IOC_LISTS)


_SIEM_RE = re.compile(r"(tcp|tls|syslog\+tcp|syslog\+tls)://(\[[0-9a-fA-F:.]+\]|[^:/\s]+):\d{1,5}")
SIEM_URL = Check(
    "empty, or scheme://host:port with scheme tcp, tls, syslog+tcp or syslog+tls",
    lambda v: v == "" or _SIEM_RE.fullmatch(v) is not None,
)


def _loopback_listen(v: str) -> bool:
    if v == "":
        return True
    host, _, port = v.rpartition(":")
    host = host.strip("[]")
    if not port.isdigit() or not 0 < int(port) < 65536:
        return False
    return host in ("127.0.0.1", "::1", "localhost") or host.startswith("127.")


LOOPBACK_LISTEN = Check('empty, or a loopback "host:port" such as 127.0.0.1:9464', _loopback_listen)


def one_of(*choices: str) -> Check:
    return Check("one of " + ", ".join(f'"{c}"' for c in choices), lambda v: v in choices)


NON_EMPTY = Check("non-empty", lambda v: len(v) > 0)
_HOST_RE = re.compile(r"[A-Za-z0-9._:-]{0,253}")
LEDGER_HOST = Check(
    "at most 253 characters from letters, digits and . _ : -",
    lambda v: _HOST_RE.fullmatch(v) is not None,
)
SEVERITY = one_of("low", "medium", "high", "critical")
SEVERITY_OR_EMPTY = one_of("", "low", "medium", "high", "critical")


def _regex_with(group: str) -> Check:
    def ok(v: str) -> bool:
        try:
            return group in re.compile(v).groupindex
        except re.error:
            return False

    return Check(f"a regular expression with a named group (?P<{group}>...)", ok)


HEURISTICS = ("ray_title", "iflow_env")

# The kernel compares at most TAG_KEY_LEN bytes of a key, so longer names could never match.
_ENV_NAME_RE = re.compile(rf"[A-Za-z_][A-Za-z0-9_]{{0,{TAG_KEY_LEN - 1}}}")
ENV_NAME = Check(
    f"an environment variable name (letters, digits and _, not starting with a digit, "
    f"at most {TAG_KEY_LEN} characters)",
    lambda v: _ENV_NAME_RE.fullmatch(v) is not None,
)
# Characters outside names and glob syntax could never match a key, so they are a typo.
_DENY_RE = re.compile(r"[A-Za-z0-9_*?\[\]!-]{1,64}")
DENY_PATTERN = Check(
    "a glob pattern of 1 to 64 characters from letters, digits, _ and * ? [ ] ! -",
    lambda v: _DENY_RE.fullmatch(v) is not None,
)


# --- result types -------------------------------------------------------------------------


@dataclass(frozen=True)
class OutputConfig:
    """``[output]``: where the event stream goes."""

    path: str
    metrics_interval_s: float
    rotate_bytes: int
    rotate_keep: int
    live_socket: str
    live_group: str


@dataclass(frozen=True)
class SiemConfig:
    """``[siem]``: a network sink to a SIEM collector, with an on-disk spool."""

    url: str
    ca_file: str
    spool_dir: str
    spool_max_bytes: int
    connect_timeout_s: float


@dataclass(frozen=True)
class RegistryConfig:
    """``[registry]``: the Unix socket on which the trainer announces runs and episodes."""

    socket: str
    group: str
    max_line_bytes: int
    max_clients: int
    retain_s: float
    trusted_uids: tuple[int, ...]
    trusted_groups: tuple[str, ...]
    trusted_executables: tuple[str, ...]
    trusted_cgroups: tuple[str, ...]


@dataclass(frozen=True)
class AttributionConfig:
    """``[attribution]``: cgroup/container identity, sandbox names and heuristics."""

    container_patterns: tuple[str, ...]
    sandbox_patterns: tuple[str, ...]
    heuristics: tuple[str, ...]
    conflict_roles: tuple[str, ...]
    request_window_s: float


@dataclass(frozen=True)
class ServiceConfig:
    """``[service]``: running as a daemon."""

    state_dir: str
    metrics_listen: str


@dataclass(frozen=True)
class TagsConfig:
    """``[tags]``: environment keys by role, after the deny filter.

    Role tuples hold only keys that survived ``deny``; ``denied`` lists what was removed as
    (key, first matching pattern).
    """

    episode: tuple[str, ...]
    worker: tuple[str, ...]
    run: tuple[str, ...]
    trajectory: tuple[str, ...]
    sandbox: tuple[str, ...]
    extra: tuple[str, ...]
    deny: tuple[str, ...]
    denied: tuple[tuple[str, str], ...] = ()

    @cached_property
    def _roles(self) -> dict[str, str]:
        # Insertion order is the kernel's tag index order; first role wins for duplicates.
        out: dict[str, str] = {}
        for role in TAG_ROLES:
            for key in getattr(self, role):
                out.setdefault(key, role)
        return out

    @property
    def keys(self) -> tuple[str, ...]:
        """All configured keys: ordered, de-duplicated union of the role lists.

        The position of a key is its tag index in the kernel.
        """
        return tuple(self._roles)

    def role_of(self, key: str) -> str:
        """The role of ``key`` (first role listing it); KeyError if it is not configured."""
        return self._roles[key]


@dataclass(frozen=True)
class ProbesConfig:
    """``[probes]``: sizes compiled into the kernel programs."""

    ring_pages: int
    first_bytes: int
    max_args: int
    arg_size: int
    env_scan: int
    poll_interval_ms: int


@dataclass(frozen=True)
class ProcessTableConfig:
    """``[process_table]``: the user-space lineage and attribution table."""

    exit_grace_s: float
    max_lineage: int
    max_entries: int
    max_exited: int


@dataclass(frozen=True)
class DetectorsConfig:
    """``[detectors]``: additions to the shipped IOC lists (monitor/data/iocs.toml)."""

    miner_names: tuple[str, ...]
    miner_flags: tuple[str, ...]
    pool_url_schemes: tuple[str, ...]
    pool_ports: tuple[int, ...]
    pool_domains: tuple[str, ...]
    miner_domains: tuple[str, ...]
    tunnel_tools: tuple[str, ...]
    tunnel_domains: tuple[str, ...]
    ssh_clients: tuple[str, ...]
    shells: tuple[str, ...]
    replace: tuple[str, ...]
    pool_port_connects: str
    list_files: tuple[str, ...]
    long_lived_s: float


@dataclass(frozen=True)
class DnsTunnelConfig:
    """``[dns_tunnel]``: DNS tunnelling per episode and registered domain."""

    enabled: bool
    window_s: float
    min_unique_names: int
    long_label: int
    min_entropy: float
    suspicious_fraction: float
    record_types: tuple[str, ...]
    min_record_queries: int
    max_tracked: int
    allow_domains: tuple[str, ...]


@dataclass(frozen=True)
class AllowlistConfig:
    """``[allowlist]``: destinations, hosts and programs that never alert."""

    destinations: tuple[str, ...]
    ssh_destinations: tuple[str, ...]
    internal_networks: tuple[str, ...]
    process_paths: tuple[str, ...]


@dataclass(frozen=True)
class RuleSettings:
    """``[rules."RULE-ID"]``: one rule's settings."""

    enabled: bool
    severity: str  # "" keeps the rule's own severity by confidence (rules.toml)


@dataclass(frozen=True)
class RulesConfig:
    """``[rules]``: which rules raise alerts, and how severe they are."""

    min_severity: str
    overrides: tuple[tuple[str, RuleSettings], ...] = ()

    def settings(self, rule_id: str) -> RuleSettings | None:
        """The ``[rules."rule_id"]`` table, or None when the file has none."""
        return dict(self.overrides).get(rule_id)


@dataclass(frozen=True)
class LedgerConfig:
    """``[ledger]``: the per-episode ledger and its keep/review/drop verdicts."""

    enabled: bool
    path: str
    verdict_grace_s: float
    idle_end_s: float
    stale_end_s: float
    drop_on: tuple[str, ...]
    review_on: tuple[str, ...]
    max_destinations: int
    max_episodes: int
    retention_days: float
    url: str
    host: str


@dataclass(frozen=True)
class GpuConfig:
    """``[gpu]``: GPU device holdings, their reconcile scan and the trainer allowlist."""

    devices: tuple[str, ...]
    reconcile_interval_s: float
    metrics_interval_s: float
    episode_end_grace_s: float
    allow_executables: tuple[str, ...]
    allow_helpers: tuple[str, ...]
    allow_cgroups: tuple[str, ...]
    allow_workers: tuple[str, ...]
    nvml: str
    max_scan_fds: int
    probes: str


@dataclass(frozen=True)
class StreamsConfig:
    """``[streams]``: the opening of every outbound TCP stream, its reply, TLS plaintext."""

    bytes: int
    reply_bytes: int
    window_s: float
    max_streams: int
    activity_interval_s: float
    unwrap_depth: int
    tls: bool
    tls_libraries: tuple[str, ...]
    tls_rescan_s: float
    ja4: tuple[str, ...]


@dataclass(frozen=True)
class MiningBehaviourConfig:
    """``[mining_behaviour]``: thresholds of the rule for mining that stays encrypted."""

    enabled: bool
    min_age_s: float
    min_active_intervals: int
    max_mean_write_bytes: int
    max_interval_bytes: int
    cpu_fraction: float
    max_destination_users: int


# --- finishers (cross-field rules) --------------------------------------------------------


def _deny_match(key: str, patterns: Iterable[str]) -> str | None:
    # Case-insensitive on purpose: "aws_secret" is as secret as "AWS_SECRET".
    upper = key.upper()
    for pattern in patterns:
        if fnmatch.fnmatchcase(upper, pattern.upper()):
            return pattern
    return None


def _finish_tags(values: dict[str, Any], given: frozenset[str]) -> dict[str, Any]:
    denied: dict[str, str] = {}
    union: dict[str, None] = {}
    for role in TAG_ROLES:
        kept: dict[str, None] = {}
        for key in values[role]:
            pattern = _deny_match(key, values["deny"])
            if pattern is not None:
                denied.setdefault(key, pattern)
            else:
                kept[key] = None
        values[role] = tuple(kept)
        union.update(kept)
    if len(union) > MAX_TAGS:
        raise _Invalid(
            "",
            f"{len(union)} environment keys configured after the deny filter, more than the "
            f"kernel limit of {MAX_TAGS} (RLG_MAX_TAGS): {', '.join(union)}",
        )
    values["denied"] = tuple(denied.items())
    return values


def _finish_probes(values: dict[str, Any], given: frozenset[str]) -> dict[str, Any]:
    n, size = values["max_args"], values["arg_size"]
    total = n * size
    if not _is_pow2(total) or total > ARGS_BUF_MAX:
        # Blame the key the user actually changed, so the message points at their edit.
        blame = "arg_size" if "arg_size" in given and "max_args" not in given else "max_args"
        raise _Invalid(
            blame,
            f"max_args * arg_size = {n} * {size} = {total}: must be a power of two no larger "
            f"than {ARGS_BUF_MAX} (the kernel's argv buffer, used as a mask)",
        )
    return values


def _finish_ledger(values: dict[str, Any], given: frozenset[str]) -> dict[str, Any]:
    both = sorted(set(values["drop_on"]) & set(values["review_on"]))
    if both:
        blame = "review_on" if "review_on" in given else "drop_on"
        raise _Invalid(blame, f"{', '.join(both)} listed in both drop_on and review_on")
    if values["url"]:
        problem = ledger_url_problem(values["url"])
        if problem:
            raise _Invalid("url", problem)
        import importlib.util

        if importlib.util.find_spec("psycopg") is None:
            raise _Invalid(
                "url",
                "a PostgreSQL ledger needs psycopg 3, which is not installed: install the "
                "fleet extra (pip install 'rlguard[fleet]')",
            )
    return values


def ledger_url_problem(url: str) -> str | None:
    """What is wrong with a ``[ledger] url`` (None: nothing), without printing its password."""
    import urllib.parse

    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        return f"not a URL ({exc})"
    if parts.scheme not in ("postgresql", "postgres"):
        return (
            f"expected postgresql://user@host/database, got the scheme {parts.scheme!r} "
            '(leave url = "" for the local SQLite ledger)'
        )
    if not parts.path.strip("/") and "dbname=" not in parts.query:
        return "names no database: postgresql://user@host/DATABASE"
    return None


GPU_MAX_PATTERNS = 16  # RLG_GPU_MAX_PATTERNS: slots of the kernel's gpu_patterns map
GPU_PATTERN_LEN = 64  # RLG_GPU_PATTERN_LEN: bytes per pattern, NUL included
_GPU_PATTERN_RE = re.compile(r"/[^*?\[\]\s]*\*?")
GPU_PATTERN = Check(
    f"an absolute path of at most {GPU_PATTERN_LEN - 1} characters, optionally ending in * "
    "(a prefix); no other glob characters or spaces",
    lambda v: len(v) < GPU_PATTERN_LEN and _GPU_PATTERN_RE.fullmatch(v) is not None,
)


def _finish_streams(values: dict[str, Any], given: frozenset[str]) -> dict[str, Any]:
    if values["reply_bytes"] > values["bytes"]:
        blame = "reply_bytes" if "reply_bytes" in given else "bytes"
        raise _Invalid(
            blame,
            f"reply_bytes ({values['reply_bytes']}) must be no larger than bytes "
            f"({values['bytes']}): one kernel buffer holds either direction",
        )
    return values


_JA4_RE = re.compile(
    r"[tqd](?:1[0-3]|s[23]|d[1-3]|00)[di]\d{4}[0-9A-Za-z]{2}_[0-9a-f]{12}_[0-9a-f]{12}=\S.{0,79}"
)
JA4_ENTRY = Check(
    'a JA4 fingerprint, "=" and a label, e.g. "t13d1516h2_8daaf6152771_b186095e22b6=chrome"',
    lambda v: _JA4_RE.fullmatch(v) is not None,
)
REPLY_BYTES = Check(
    "0 or a power of two between 256 and 16384",
    lambda v: v == 0 or (256 <= v <= 16384 and _is_pow2(v)),
)

TLS_LIBRARY_GLOBS = [
    "/usr/lib/*/libssl.so*",
    "/usr/lib/libssl.so*",
    "/lib/*/libssl.so*",
    "/usr/lib64/libssl.so*",
    "/usr/local/lib/libssl.so*",
    "/usr/local/lib/*/libssl.so*",
    "/opt/conda/lib/libssl.so*",
    "/opt/conda/envs/*/lib/libssl.so*",
    "/usr/lib/*/libgnutls.so*",
    "/usr/lib/libgnutls.so*",
    "/usr/lib64/libgnutls.so*",
]


def _finish_gpu(values: dict[str, Any], given: frozenset[str]) -> dict[str, Any]:
    if len(values["devices"]) > GPU_MAX_PATTERNS:
        raise _Invalid(
            "devices",
            f"{len(values['devices'])} patterns, more than the kernel's {GPU_MAX_PATTERNS} "
            "(RLG_GPU_MAX_PATTERNS)",
        )
    return values


def catalogue_rule_ids(path: Path = RULES_FILE) -> tuple[str, ...]:
    """The rule ids in the catalogue file; () when it cannot be read.

    Read when a config names a rule, so that an unknown id is a config error. A broken
    catalogue is reported by monitor.detectors.rules.load_rules, with the reason.
    """
    try:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError):
        return ()
    rules = doc.get("rule")
    if not isinstance(rules, list):
        return ()
    return tuple(r["id"] for r in rules if isinstance(r, dict) and isinstance(r.get("id"), str))


# --- the schema ---------------------------------------------------------------------------

_ENV = (ENV_NAME,)

SCHEMA: tuple[SectionSpec, ...] = (
    SectionSpec(
        name="output",
        doc="Where rlguard writes its event stream.",
        result=OutputConfig,
        fields=(
            FieldSpec(
                "path",
                Kind.STR,
                "-",
                'File that receives the NDJSON event stream; "-" means standard output.',
                (NON_EMPTY,),
            ),
            FieldSpec(
                "metrics_interval_s",
                Kind.FLOAT,
                10.0,
                "Seconds between metrics events (event, drop and miss counters).",
                (between(0.1, 3600),),
            ),
            FieldSpec(
                "rotate_bytes",
                Kind.INT,
                0,
                "Rotate the output file when it reaches this size (0: never; external "
                "logrotate with SIGHUP or copytruncate also works).",
                (between(0, 1 << 40),),
            ),
            FieldSpec(
                "rotate_keep",
                Kind.INT,
                5,
                "Rotated files kept (path.1 ... path.N).",
                (between(1, 1000),),
            ),
            FieldSpec(
                "live_socket",
                Kind.STR,
                "",
                "Unix socket publishing the live stream to `rlguard tail` clients "
                '(e.g. "/run/rlguard/live.sock"; "" disables it).',
                (),
            ),
            FieldSpec(
                "live_group",
                Kind.STR,
                "rlguard",
                "Group whose members may read the live socket (no root needed to watch).",
                (NON_EMPTY,),
            ),
        ),
    ),
    SectionSpec(
        name="tags",
        doc=(
            "Environment variables that tag processes with their RL context. The kernel reads "
            "these keys from the environment of every exec, and children inherit the tags. "
            "Keys are grouped by role; a key listed under two roles takes the first of "
            f"{', '.join(TAG_ROLES)}. At most {MAX_TAGS} keys in all after the deny filter "
            "(a kernel limit)."
        ),
        result=TagsConfig,
        fields=(
            FieldSpec(
                "episode",
                Kind.STR_LIST,
                ["RL_EPISODE_ID", "EPISODE_ID", "TASK_ID"],
                "Keys whose value names the RL episode.",
                _ENV,
            ),
            FieldSpec(
                "worker",
                Kind.STR_LIST,
                ["RL_WORKER_ID", "RL_WORKER", "WORKER_NAME", "RANK", "LOCAL_RANK"],
                "Keys whose value names the rollout worker or distributed rank.",
                _ENV,
            ),
            FieldSpec(
                "run",
                Kind.STR_LIST,
                ["RL_RUN_ID", "TORCHELASTIC_RUN_ID", "SLURM_JOB_ID", "RAY_JOB_ID"],
                "Keys whose value names the training run or job.",
                _ENV,
            ),
            FieldSpec(
                "trajectory",
                Kind.STR_LIST,
                ["RL_TRAJECTORY_ID"],
                "Keys whose value names the trajectory within an episode.",
                _ENV,
            ),
            FieldSpec(
                "sandbox",
                Kind.STR_LIST,
                ["RL_SANDBOX_ID"],
                "Keys whose value names the sandbox (container or VM) running the episode.",
                _ENV,
            ),
            FieldSpec(
                "extra",
                Kind.STR_LIST,
                ["IFLOW_ENV"],
                "Further keys, recorded raw, with no role in attribution (IFLOW_ENV feeds the "
                "iflow_env heuristic of [attribution]).",
                _ENV,
            ),
            FieldSpec(
                "deny",
                Kind.STR_LIST,
                [
                    "*KEY*",
                    "*TOKEN*",
                    "*SECRET*",
                    "*PASSWORD*",
                    "*PASSWD*",
                    "*CREDENTIAL*",
                    "*AUTH*",
                    "*PRIVATE*",
                    "AWS_*",
                    "AZURE_*",
                    "GCP_*",
                    "GOOGLE_APPLICATION_*",
                ],
                "Glob patterns (fnmatch, case-insensitive) of keys never read, even when a role "
                "above lists them, so that secrets cannot reach the event stream. A denied key "
                "is dropped and reported, not an error.",
                (DENY_PATTERN,),
            ),
        ),
        finish=_finish_tags,
    ),
    SectionSpec(
        name="probes",
        doc=(
            "Sizes compiled into the kernel programs. Larger values capture more, at the cost "
            "of kernel memory and ring-buffer bandwidth."
        ),
        result=ProbesConfig,
        fields=(
            FieldSpec(
                "ring_pages",
                Kind.INT,
                4096,
                "Ring-buffer size in memory pages, shared by all CPUs.",
                (between(8, 262144), POWER_OF_TWO),
            ),
            FieldSpec(
                "first_bytes",
                Kind.INT,
                256,
                "Payload bytes kept from the start of each new connection.",
                (between(256, 4096), POWER_OF_TWO),
            ),
            FieldSpec(
                "max_args",
                Kind.INT,
                32,
                "argv entries captured per exec.",
                (between(1, 128),),
            ),
            FieldSpec(
                "arg_size",
                Kind.INT,
                256,
                "Bytes kept of each argv entry. max_args * arg_size must be a power of two "
                f"no larger than {ARGS_BUF_MAX}.",
                (between(32, 4096), POWER_OF_TWO),
            ),
            FieldSpec(
                "env_scan",
                Kind.INT,
                256,
                "Environment entries scanned per exec when looking for tag keys.",
                (between(1, 1024),),
            ),
            FieldSpec(
                "poll_interval_ms",
                Kind.INT,
                10,
                "Ring-buffer poll timeout in milliseconds.",
                (between(1, 1000),),
            ),
        ),
        finish=_finish_probes,
    ),
    SectionSpec(
        name="process_table",
        doc="The user-space process table that holds lineage and episode attribution.",
        result=ProcessTableConfig,
        fields=(
            FieldSpec(
                "exit_grace_s",
                Kind.FLOAT,
                5.0,
                "Seconds an exited process stays in the table, so that late events are "
                "still attributed.",
                (between(0, 600),),
            ),
            FieldSpec(
                "max_lineage",
                Kind.INT,
                16,
                "Ancestors kept per process in its lineage.",
                (between(1, 64),),
            ),
            FieldSpec(
                "max_entries",
                Kind.INT,
                200000,
                "Most processes held in the table.",
                (between(1000, 10_000_000),),
            ),
            FieldSpec(
                "max_exited",
                Kind.INT,
                8192,
                "Most exited processes held for their grace period; beyond it (an exit flood) "
                "the oldest leaves early, counted in the stats line "
                "(rlguard.process_table.exited_evicted).",
                (between(1000, 10_000_000),),
            ),
        ),
    ),
    SectionSpec(
        name="detectors",
        doc=(
            "Additions to the detection content shipped in monitor/data/iocs.toml. Every list "
            "here is added to the shipped list of the same name; name a list in `replace` to "
            "drop the shipped entries and use only yours."
        ),
        result=DetectorsConfig,
        fields=(
            FieldSpec(
                "miner_names",
                Kind.STR_LIST,
                [],
                "Miner executable names (low confidence alone: a binary can be renamed).",
                (NON_EMPTY,),
            ),
            FieldSpec(
                "miner_flags",
                Kind.STR_LIST,
                [],
                "Command-line flags only miners use.",
                (NON_EMPTY,),
            ),
            FieldSpec(
                "pool_url_schemes",
                Kind.STR_LIST,
                [],
                "Pool URL schemes, e.g. stratum+tcp://.",
                (NON_EMPTY,),
            ),
            FieldSpec(
                "pool_ports",
                Kind.INT_LIST,
                [],
                "Ports mining pools listen on: context for the process's other mining alerts; an "
                'alert on its own only with pool_port_connects = "alert".',
                (between(1, 65535),),
            ),
            FieldSpec(
                "pool_domains",
                Kind.STR_LIST,
                [],
                "Mining pool domains: the domain and its subdomains match.",
                (DOMAIN,),
            ),
            FieldSpec(
                "miner_domains",
                Kind.STR_LIST,
                [],
                "Domains only miners contact (donation and update endpoints): the domain and "
                "its subdomains match, high confidence.",
                (DOMAIN,),
            ),
            FieldSpec(
                "tunnel_tools", Kind.STR_LIST, [], "Reverse-tunnel tool names.", (NON_EMPTY,)
            ),
            FieldSpec(
                "tunnel_domains", Kind.STR_LIST, [], "Tunnel-service domain suffixes.", (DOMAIN,)
            ),
            FieldSpec(
                "ssh_clients",
                Kind.STR_LIST,
                [],
                "Programs expected to speak SSH as "
                "clients (others sending an SSH banner are flagged).",
                (NON_EMPTY,),
            ),
            FieldSpec(
                "shells",
                Kind.STR_LIST,
                [],
                "Interactive shells (reverse-shell rule).",
                (NON_EMPTY,),
            ),
            FieldSpec(
                "replace",
                Kind.STR_LIST,
                [],
                "Lists whose shipped entries are dropped.",
                (IOC_LIST_NAME,),
            ),
            FieldSpec(
                "pool_port_connects",
                Kind.STR,
                "context",
                "What a connect to a common pool port produces. A port alone proves nothing: "
                '"context" (default) keeps it as evidence for the process\'s other mining '
                'alerts and never alerts on it alone; "alert" also raises a low-severity '
                'RLG-MIN-004 alert; "off" ignores pool ports.',
                (one_of("context", "alert", "off"),),
            ),
            FieldSpec(
                "list_files",
                Kind.STR_LIST,
                [],
                "Extra list files (TOML, globs allowed), read at start and on reload: each "
                "holds lists named like the keys above (`pool_domains = [...]`, optionally in "
                "tables) that are added to them, so operators update indicators without a "
                "release. A missing file is skipped; a malformed one is an error that names it.",
                (NON_EMPTY,),
            ),
            FieldSpec(
                "long_lived_s",
                Kind.FLOAT,
                600.0,
                "A program run from /dev/shm, /tmp, a memfd or a deleted file that holds an "
                "outside TCP connection this long is reported (RLG-PRC-001).",
                (between(10, 86400),),
            ),
        ),
    ),
    SectionSpec(
        name="dns_tunnel",
        doc=(
            "DNS tunnelling (RLG-TUN-006): per episode (or per process outside episodes) and "
            "registered domain (public-suffix list), within a window: many unique names whose "
            "labels are long or random, and a volume of TXT/NULL/CNAME-style queries."
        ),
        result=DnsTunnelConfig,
        fields=(
            FieldSpec("enabled", Kind.BOOL, True, "Track DNS queries for tunnelling.", ()),
            FieldSpec(
                "window_s",
                Kind.FLOAT,
                300.0,
                "Counting window; counts start again after it.",
                (between(1, 86400),),
            ),
            FieldSpec(
                "min_unique_names",
                Kind.INT,
                50,
                "Unique names under one registered domain in a window before the label shape "
                "is judged.",
                (between(5, 100000),),
            ),
            FieldSpec(
                "long_label",
                Kind.INT,
                40,
                "A label at least this long counts as long (DNS allows 63).",
                (between(16, 63),),
            ),
            FieldSpec(
                "min_entropy",
                Kind.FLOAT,
                3.5,
                "Shannon entropy (bits per character) of the subdomain part, for parts of 24 "
                "characters or more with the digit share of hex or base32 text (15 %+), that "
                "counts as random.",
                (between(1, 6),),
            ),
            FieldSpec(
                "suspicious_fraction",
                Kind.FLOAT,
                0.5,
                "Share of the unique names that must be long or random.",
                (between(0.05, 1),),
            ),
            FieldSpec(
                "record_types",
                Kind.STR_LIST,
                ["TXT", "NULL", "CNAME", "MX", "SRV", "ANY", "TYPE65399"],
                "Query types tunnels carry data in (iodine: NULL, PRIVATE=TYPE65399, TXT, "
                "SRV, MX, CNAME; dnscat2: TXT, CNAME, MX).",
                (NON_EMPTY,),
            ),
            FieldSpec(
                "min_record_queries",
                Kind.INT,
                100,
                "Queries of those types under one registered domain in a window.",
                (between(5, 1000000),),
            ),
            FieldSpec(
                "max_tracked",
                Kind.INT,
                4096,
                "(episode, registered domain) pairs held; the oldest is dropped beyond it.",
                (between(16, 1000000),),
            ),
            FieldSpec(
                "allow_domains",
                Kind.STR_LIST,
                [],
                "Registered domains never judged (a cluster's own service discovery).",
                (DOMAIN,),
            ),
        ),
    ),
    SectionSpec(
        name="allowlist",
        doc="What never alerts: known destinations, SSH bastions, internal networks, programs.",
        result=AllowlistConfig,
        fields=(
            FieldSpec(
                "destinations",
                Kind.STR_LIST,
                [],
                "Addresses or CIDRs (IPv4/IPv6) whose traffic never alerts.",
                (CIDR,),
            ),
            FieldSpec(
                "ssh_destinations",
                Kind.STR_LIST,
                [],
                "SSH bastions and git/rsync "
                "hosts (addresses or CIDRs): plain SSH to them is expected.",
                (CIDR,),
            ),
            FieldSpec(
                "internal_networks",
                Kind.STR_LIST,
                [
                    "127.0.0.0/8",
                    "::1/128",
                    "10.0.0.0/8",
                    "172.16.0.0/12",
                    "192.168.0.0/16",
                    "100.64.0.0/10",
                    "169.254.0.0/16",
                    "fc00::/7",
                    "fe80::/10",
                ],
                "Networks that count as inside (loopback and private): a connect-back from an "
                "SSH client into these is the reverse-forward behaviour.",
                (CIDR,),
            ),
            FieldSpec(
                "process_paths",
                Kind.STR_LIST,
                [],
                "Executable paths (fnmatch globs) whose alerts are suppressed.",
                (NON_EMPTY,),
            ),
        ),
    ),
    SectionSpec(
        name="rules",
        doc=(
            "Which detection rules raise alerts, and how severe they are (as Falco's rules are "
            "tuned). The rules are data, in monitor/data/rules.toml; `rlguard rules` lists them "
            'with the state these settings give. A [rules."RULE-ID"] table changes one rule.'
        ),
        result=RulesConfig,
        fields=(
            FieldSpec(
                "min_severity",
                Kind.STR,
                "low",
                "Alerts below this severity are not raised: not written, not counted by the "
                "episode ledger, not raised further to RLG-GPU-002. Their evidence is kept, so "
                "a later finding of the same rule and subject that reaches this severity is "
                "raised with all of it.",
                (SEVERITY,),
            ),
        ),
        entries=EntrySpec(
            what="rule id",
            doc="One rule, named by its id (`rlguard rules` lists them).",
            keys=catalogue_rule_ids,
            example="RLG-TUN-002",
            result=RuleSettings,
            attr="overrides",
            fields=(
                FieldSpec(
                    "enabled",
                    Kind.BOOL,
                    True,
                    "false: the rule raises no alerts. Its detector still runs and keeps the "
                    "state other rules need.",
                    (),
                ),
                FieldSpec(
                    "severity",
                    Kind.STR,
                    "",
                    "Every alert of the rule gets this severity, whatever the confidence of its "
                    'evidence; "" keeps the rule\'s severity by confidence (rules.toml).',
                    (SEVERITY_OR_EMPTY,),
                ),
            ),
        ),
    ),
    SectionSpec(
        name="siem",
        doc="Forward every line to a SIEM collector; when it is down, lines queue on disk.",
        result=SiemConfig,
        fields=(
            FieldSpec(
                "url",
                Kind.STR,
                "",
                'Collector address: "tcp://host:port" or "tls://host:port" (newline-framed '
                'NDJSON), "syslog+tcp://host:port" or "syslog+tls://host:port" (RFC 5424, '
                'octet-counted); "" disables the sink.',
                (SIEM_URL,),
            ),
            FieldSpec("ca_file", Kind.STR, "", "CA bundle for tls:// (default: system CAs).", ()),
            FieldSpec(
                "spool_dir",
                Kind.STR,
                "/var/lib/rlguard/spool",
                "Where lines wait while the collector is unreachable.",
                (NON_EMPTY,),
            ),
            FieldSpec(
                "spool_max_bytes",
                Kind.INT,
                256 * 1024 * 1024,
                "Spool bound; past it the oldest lines are dropped and the loss is counted "
                "and reported.",
                (between(1024, 1 << 40),),
            ),
            FieldSpec(
                "connect_timeout_s",
                Kind.FLOAT,
                5.0,
                "Connect and send timeout.",
                (between(0.1, 300),),
            ),
        ),
    ),
    SectionSpec(
        name="registry",
        doc=(
            "The trainer registry: a Unix socket on which the trainer announces run_start, "
            "episode_start (with the pids, threads, cgroup, container or sandbox of the "
            "episode) and episode_end as newline-delimited JSON (docs/registry.md). "
            "Registry bindings are the strongest attribution source."
        ),
        result=RegistryConfig,
        fields=(
            FieldSpec(
                "socket",
                Kind.STR,
                "/run/rlguard/registry.sock",
                'Path of the registry socket ("" disables the registry).',
                (),
            ),
            FieldSpec(
                "group",
                Kind.STR,
                "rlguard",
                "Group whose members (the trainer) may write to the socket; mode 0660.",
                (NON_EMPTY,),
            ),
            FieldSpec(
                "max_line_bytes",
                Kind.INT,
                65536,
                "Longest message accepted; a longer line gets an error reply and is discarded.",
                (between(1024, 1 << 24),),
            ),
            FieldSpec(
                "max_clients",
                Kind.INT,
                64,
                "Most simultaneous connections; more are refused with an error reply.",
                (between(1, 4096),),
            ),
            FieldSpec(
                "retain_s",
                Kind.FLOAT,
                900.0,
                "Seconds an ended episode's bindings are kept, so that late events (and "
                "processes born in it) are still attributed to it.",
                (between(1, 86400),),
            ),
            FieldSpec(
                "trusted_uids",
                Kind.INT_LIST,
                [0],
                "Trusted binders, by user: a message is accepted from a process whose uid is "
                "listed (or whose groups meet trusted_groups), that passes trusted_executables "
                "and trusted_cgroups, and that is not itself inside an episode by any source "
                "(a process inside an episode is refused whatever its uid). Checked for the "
                "connecting process (SO_PEERCRED) and the writer of every message "
                "(SCM_CREDENTIALS).",
                (between(0, (1 << 32) - 2),),
            ),
            FieldSpec(
                "trusted_groups",
                Kind.STR_LIST,
                ["rlguard"],
                "Trusted binders, by group (names or numeric gids): the sender's gid or one "
                "of its supplementary groups. A group that does not exist matches nobody.",
                (NON_EMPTY,),
            ),
            FieldSpec(
                "trusted_executables",
                Kind.STR_LIST,
                [],
                "If set, only these programs may bind (absolute paths of the trainer's "
                "executable, a trailing * matches a prefix): the sender's executable as the "
                "kernel resolved it at exec.",
                (Check("an absolute path", lambda v: v.startswith("/")),),
            ),
            FieldSpec(
                "trusted_cgroups",
                Kind.STR_LIST,
                [],
                "If set, only processes in these cgroup v2 subtrees may bind (the trainer's "
                "cgroup, relative to the cgroup2 mount, e.g. /system.slice/trainer.service).",
                (Check("a cgroup path starting with /", lambda v: v.startswith("/")),),
            ),
        ),
    ),
    SectionSpec(
        name="attribution",
        doc=(
            "How events are attributed beyond environment tags. Precedence: registry > "
            "cgroup/container > kernel lineage (inherited tags) > the process's own "
            "environment tags > heuristics."
        ),
        result=AttributionConfig,
        fields=(
            FieldSpec(
                "container_patterns",
                Kind.STR_LIST,
                [
                    r"docker-(?P<id>[0-9a-f]{64})\.scope",
                    r"/docker/(?P<id>[0-9a-f]{64})",
                    r"cri-containerd-(?P<id>[0-9a-f]{64})\.scope",
                    r"crio-(?P<id>[0-9a-f]{64})\.scope",
                    r"libpod-(?P<id>[0-9a-f]{64})\.scope",
                    r"/kubepods[^ ]*/(?P<id>[0-9a-f]{64})",
                ],
                "Regular expressions over the cgroup path; the first that matches gives the "
                "container id (named group `id`).",
                (_regex_with("id"),),
            ),
            FieldSpec(
                "sandbox_patterns",
                Kind.STR_LIST,
                [r"/(?P<sandbox>rl-sandbox-[A-Za-z0-9_.-]+)"],
                "Regular expressions over the cgroup path; the first that matches names the "
                "sandbox (named group `sandbox`).",
                (_regex_with("sandbox"),),
            ),
            FieldSpec(
                "heuristics",
                Kind.STR_LIST,
                list(HEURISTICS),
                'Weakest source, used when nothing else attributes a process: "ray_title" '
                '(a Ray worker\'s "ray::" process title names the worker) and "iflow_env" '
                "(IFLOW_ENV=train in the environment marks a training process).",
                (one_of(*HEURISTICS),),
            ),
            FieldSpec(
                "conflict_roles",
                Kind.STR_LIST,
                ["episode", "run", "trajectory"],
                "Roles whose value, set in a process's own environment and contradicting a "
                "stronger source, raises the tag_conflict alert (RLG-ATTR-001).",
                (one_of("episode", "worker", "run", "trajectory", "sandbox"),),
            ),
            FieldSpec(
                "request_window_s",
                Kind.FLOAT,
                3.0,
                "Work done on request: after a process connects to a local listener (an "
                "AF_UNIX stream socket or loopback TCP), what the listening process does and "
                "the processes it starts within this many seconds are attributed to the "
                "requester as well (rl.requested_by). 0 turns request links off.",
                (between(0, 600),),
            ),
        ),
    ),
    SectionSpec(
        name="service",
        doc="Running as a systemd service.",
        result=ServiceConfig,
        fields=(
            FieldSpec(
                "state_dir",
                Kind.STR,
                "/var/lib/rlguard",
                "Heartbeat and state kept across restarts (for gap records).",
                (NON_EMPTY,),
            ),
            FieldSpec(
                "metrics_listen",
                Kind.STR,
                "",
                'Prometheus metrics endpoint, loopback only (e.g. "127.0.0.1:9464"; "" off).',
                (LOOPBACK_LISTEN,),
            ),
        ),
    ),
    SectionSpec(
        name="ledger",
        doc=(
            "The episode ledger: an SQLite database with, per RL episode, its window, counts, "
            "alerts, coverage and a keep/review/drop verdict, also written to the stream as an "
            "`rlguard.verdict` line (docs/ledger.md). `rlguard episodes` reads it. With "
            "`url`, every host's ledger also goes to one PostgreSQL database that trainers "
            "read (docs/fleet.md)."
        ),
        result=LedgerConfig,
        fields=(
            FieldSpec("enabled", Kind.BOOL, True, "Keep the ledger while `rlguard run` runs.", ()),
            FieldSpec(
                "path",
                Kind.STR,
                "",
                'SQLite file of the ledger; "" means episodes.db in [service] state_dir.',
                (),
            ),
            FieldSpec(
                "verdict_grace_s",
                Kind.FLOAT,
                10.0,
                "Seconds after an episode's end before its verdict line is written, so that "
                "late alerts and drop reports still count.",
                (between(0, 3600),),
            ),
            FieldSpec(
                "idle_end_s",
                Kind.FLOAT,
                300.0,
                "An episode known only from environment tags (no registry) ends when none of "
                "its processes has done anything for this long.",
                (between(0.01, 86400),),
            ),
            FieldSpec(
                "stale_end_s",
                Kind.FLOAT,
                21600.0,
                "A registry episode whose end was never announced is closed after this long "
                "without a record (verdict at least review: end_not_seen).",
                (between(1, 30 * 86400),),
            ),
            FieldSpec(
                "drop_on",
                Kind.STR_LIST,
                ["critical"],
                "Alert severities that make an episode's verdict drop.",
                (SEVERITY,),
            ),
            FieldSpec(
                "review_on",
                Kind.STR_LIST,
                ["high", "medium"],
                "Alert severities that make an episode's verdict review (coverage problems "
                "always do).",
                (SEVERITY,),
            ),
            FieldSpec(
                "max_destinations",
                Kind.INT,
                256,
                "Distinct external destinations remembered per episode; more are counted as "
                "overflow.",
                (between(1, 100000),),
            ),
            FieldSpec(
                "max_episodes",
                Kind.INT,
                10000,
                "Episodes held in memory; past it finished ones are left to the database and "
                "the longest-idle tag-only episodes are ended early.",
                (between(10, 10_000_000),),
            ),
            FieldSpec(
                "retention_days",
                Kind.FLOAT,
                30.0,
                "Episodes that ended longer ago than this are deleted (0 keeps them forever); "
                "with url, also this host's rows in PostgreSQL.",
                (between(0, 36500),),
            ),
            FieldSpec(
                "url",
                Kind.STR,
                "",
                "PostgreSQL database the whole fleet writes to (docs/fleet.md), e.g. "
                '"postgresql://rlguard_writer@db.example/rlguard?sslmode=verify-full"; the '
                "local SQLite file stays as the spool. Needs the fleet extra (psycopg 3). "
                'Keep the password out of it (~/.pgpass or PGPASSFILE). "" keeps the ledger '
                "on this host only.",
                (),
            ),
            FieldSpec(
                "host",
                Kind.STR,
                "",
                "This host's name on every ledger row (the fleet's key); \"\" means the "
                "machine's hostname.",
                (LEDGER_HOST,),
            ),
        ),
        finish=_finish_ledger,
    ),
    SectionSpec(
        name="gpu",
        doc=(
            "GPU device holdings: who opens the GPU device nodes, who holds them, in which "
            "episode, and which of those processes are expected (the trainer allowlist). "
            "Globs are fnmatch patterns."
        ),
        result=GpuConfig,
        fields=(
            FieldSpec(
                "devices",
                Kind.STR_LIST,
                ["/dev/nvidia*", "/dev/dri/renderD*", "/dev/kfd"],
                "Device paths watched at open(): an exact path, or a prefix ending in *. "
                "The reconcile scan also counts any character device with the same device "
                f"number as a node these match. At most {GPU_MAX_PATTERNS}; an empty list turns "
                "GPU monitoring off.",
                (GPU_PATTERN,),
            ),
            FieldSpec(
                "reconcile_interval_s",
                Kind.FLOAT,
                10.0,
                "Seconds between scans of /proc/PID/fd for fds on the watched devices (catches "
                "relative and linked opens, other nodes of the same device, inherited fds and "
                "holdings from before start-up); 0 turns the scan off.",
                (between(0, 86400),),
            ),
            FieldSpec(
                "metrics_interval_s",
                Kind.FLOAT,
                10.0,
                "Seconds between gpu_holders metric events (one also follows a change, at "
                "most once a second).",
                (between(0.5, 3600),),
            ),
            FieldSpec(
                "episode_end_grace_s",
                Kind.FLOAT,
                5.0,
                "After an episode_end record, how long its processes may still hold a GPU "
                "before RLG-GPU-003.",
                (between(0, 3600),),
            ),
            FieldSpec(
                "allow_executables",
                Kind.STR_LIST,
                [],
                "Trainer executables (globs on process.executable, the path given to exec) "
                "that may open GPUs inside an episode without an alert.",
                (NON_EMPTY,),
            ),
            FieldSpec(
                "allow_helpers",
                Kind.STR_LIST,
                ["*/nvidia-smi"],
                "Helper executables (globs) that are quiet when an allowed process started "
                "them (nvidia-smi run by the trainer).",
                (NON_EMPTY,),
            ),
            FieldSpec(
                "allow_cgroups",
                Kind.STR_LIST,
                [],
                'cgroup v2 paths (globs, e.g. "/system.slice/trainer.service") whose processes '
                "may open GPUs.",
                (NON_EMPTY,),
            ),
            FieldSpec(
                "allow_workers",
                Kind.STR_LIST,
                [],
                "Worker tag values (globs on rl.worker_id) whose processes may open GPUs.",
                (NON_EMPTY,),
            ),
            FieldSpec(
                "nvml",
                Kind.STR,
                "auto",
                "Per-process GPU memory and utilisation from NVML (the optional nvidia-ml-py): "
                '"auto" uses it when it loads, "off" never does.',
                (one_of("auto", "off"),),
            ),
            FieldSpec(
                "max_scan_fds",
                Kind.INT,
                200_000,
                "Upper bound on fds one reconcile scan looks at (it stops there and says so).",
                (between(1000, 10_000_000),),
            ),
            FieldSpec(
                "probes",
                Kind.STR,
                "auto",
                'The kernel programs on open()/close() that see GPU opens as they happen: "auto" '
                "loads them when a device the patterns name exists at start-up (a host without "
                "a GPU pays nothing on every open and close, and ~0.8 s less compile), "
                '"on" always, "off" never. Without them the reconcile scan still finds holders '
                "(every reconcile_interval_s).",
                (one_of("auto", "on", "off"),),
            ),
        ),
        finish=_finish_gpu,
    ),
    SectionSpec(
        name="streams",
        doc=(
            "The opening of every outbound TCP stream: its first bytes across segments and "
            "writes, the reply, and TLS plaintext where the process uses a shared TLS library "
            "(uprobes). Proxies (SOCKS, HTTP CONNECT), WebSocket frames and HTTP bodies are "
            "unwrapped and the detectors run on what is inside. Bounded per stream in bytes and "
            "time; what a bound cuts is counted (rlguard.streams in the stats line) and marked."
        ),
        result=StreamsConfig,
        fields=(
            FieldSpec(
                "bytes",
                Kind.INT,
                4096,
                "Bytes of each outbound stream's opening captured (after the first segment, "
                "which probes.first_bytes bounds), and of each TLS object's plaintext.",
                (between(256, 16384), POWER_OF_TWO),
            ),
            FieldSpec(
                "reply_bytes",
                Kind.INT,
                1024,
                "Bytes of the reply captured (a proxy's grant, a server's banner); 0 loads no "
                "ingress program at all.",
                (REPLY_BYTES,),
            ),
            FieldSpec(
                "window_s",
                Kind.FLOAT,
                60.0,
                "Seconds after a stream's first payload during which its opening is captured; "
                "bytes after it end the capture (the stream is marked cut short).",
                (between(1, 3600),),
            ),
            FieldSpec(
                "max_streams",
                Kind.INT,
                4096,
                "Streams whose opening user space holds at once (each at most bytes + "
                "reply_bytes + bytes of TLS plaintext); beyond it the oldest is dropped and "
                "counted (rlguard.streams.evicted).",
                (between(64, 1_000_000),),
            ),
            FieldSpec(
                "activity_interval_s",
                Kind.FLOAT,
                30.0,
                "A live stream's activity (segments and bytes each way) is reported at most "
                "this often while it sends; the mining behaviour rule reads it.",
                (between(1, 3600),),
            ),
            FieldSpec(
                "unwrap_depth",
                Kind.INT,
                4,
                "Protocols peeled off one inside another (SOCKS, HTTP CONNECT, WebSocket, HTTP "
                "bodies, TLS) before the detectors give up.",
                (between(2, 8),),
            ),
            FieldSpec(
                "tls",
                Kind.BOOL,
                True,
                "Uprobes on the write calls of every shared libssl and libgnutls on the host "
                "(files matching tls_libraries, and any a process maps), so that TLS plaintext "
                "reaches the same detectors.",
            ),
            FieldSpec(
                "tls_libraries",
                Kind.STR_LIST,
                TLS_LIBRARY_GLOBS,
                "Glob patterns of TLS library files attached at start-up; files other processes "
                "map are found in /proc/PID/maps (new processes, and every tls_rescan_s).",
                (Check("an absolute glob pattern", lambda v: v.startswith("/")),),
            ),
            FieldSpec(
                "tls_rescan_s",
                Kind.FLOAT,
                60.0,
                "Seconds between scans of every process's /proc/PID/maps for TLS libraries not "
                "yet attached (container copies, venv and conda copies); 0: only new processes "
                "are looked at.",
                (between(0, 3600),),
            ),
            FieldSpec(
                "ja4",
                Kind.STR_LIST,
                [],
                "TLS client fingerprints to add to monitor/data/tls_fingerprints.toml, each "
                '"JA4=label"; a listed fingerprint is low-confidence evidence (a fingerprint '
                "names a TLS library and its settings, not a program).",
                (JA4_ENTRY,),
            ),
        ),
        finish=_finish_streams,
    ),
    SectionSpec(
        name="mining_behaviour",
        doc=(
            "Mining that stays encrypted (a statically linked TLS client, a Noise channel): a "
            "long-lived outbound connection from an episode's process, with small writes in "
            "most activity intervals, from a process that holds a GPU or burns CPU, to a "
            "destination nothing else on the host uses. Each threshold below is one condition; "
            "all must hold. The signal is low confidence on its own (RLG-MIN-006) and raises "
            "the severity of the process's other mining alerts."
        ),
        result=MiningBehaviourConfig,
        fields=(
            FieldSpec("enabled", Kind.BOOL, True, "Judge long-lived connections at all."),
            FieldSpec(
                "min_age_s",
                Kind.FLOAT,
                600.0,
                "Seconds since the connection's first payload before its shape counts.",
                (between(1, 86400),),
            ),
            FieldSpec(
                "min_active_intervals",
                Kind.INT,
                8,
                "Activity intervals (streams.activity_interval_s) in which the connection sent "
                "something: share submissions recur.",
                (between(1, 10000),),
            ),
            FieldSpec(
                "max_mean_write_bytes",
                Kind.INT,
                600,
                "Largest mean payload per outbound segment: share submissions are small.",
                (between(16, 65536),),
            ),
            FieldSpec(
                "max_interval_bytes",
                Kind.INT,
                65536,
                "Most bytes sent per activity interval on average: more is a transfer, not a "
                "trickle of shares.",
                (between(256, 1 << 30),),
            ),
            FieldSpec(
                "cpu_fraction",
                Kind.FLOAT,
                0.5,
                "CPU time of the process over the connection's life, in cores, from which it "
                "counts as burning CPU (a GPU holder counts whatever its CPU).",
                (between(0.01, 1024),),
            ),
            FieldSpec(
                "max_destination_users",
                Kind.INT,
                1,
                "Most processes on the host that connected to the destination address for it "
                "to count as used by nothing else (1: only this one).",
                (between(1, 1000),),
            ),
        ),
    ),
)


@dataclass(frozen=True)
class Config:
    """The validated configuration. ``source`` is the file it came from (None = defaults)."""

    output: OutputConfig
    tags: TagsConfig
    probes: ProbesConfig
    process_table: ProcessTableConfig
    detectors: DetectorsConfig
    dns_tunnel: DnsTunnelConfig
    allowlist: AllowlistConfig
    rules: RulesConfig
    siem: SiemConfig
    registry: RegistryConfig
    attribution: AttributionConfig
    service: ServiceConfig
    ledger: LedgerConfig
    gpu: GpuConfig
    streams: StreamsConfig
    mining_behaviour: MiningBehaviourConfig
    source: Path | None = None

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for printing (JSON-ready: lists, not tuples).

        Sections hold their schema keys; ``tags`` also shows the derived ``keys`` and
        ``denied``; entries sit under their KEY, as in the file (``rules["RLG-TUN-002"]``).
        """
        out: dict[str, Any] = {"source": None if self.source is None else str(self.source)}
        for spec in SCHEMA:
            section = getattr(self, spec.name)
            entries = spec.entries.attr if spec.entries is not None else None
            out[spec.name] = {
                f.name: _plain(getattr(section, f.name))
                for f in fields(section)
                if f.name != entries
            }
            for key, entry in getattr(section, entries) if entries else ():
                out[spec.name][key] = {
                    f.name: _plain(getattr(entry, f.name)) for f in fields(entry)
                }
        out["tags"]["keys"] = list(self.tags.keys)
        return out


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


# --- loading ------------------------------------------------------------------------------


def _label(source: Path | None) -> str:
    return "<config>" if source is None else str(source)


def _toml_type(value: Any) -> str:
    # Say what the user wrote in TOML terms; bool first, since bool is an int in Python.
    for typ, name in (
        (bool, "a boolean"),
        (int, "an integer"),
        (float, "a float"),
        (str, "a string"),
        (list, "an array"),
        (dict, "a table"),
    ):
        if isinstance(value, typ):
            return name
    return f"a {type(value).__name__}"  # TOML dates and times


def _toml_str(s: str) -> str:
    out = ['"']
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _toml_value(value: Any) -> str:
    """Render a scalar or list of scalars as TOML (also used to quote values in messages)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return _toml_str(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return str(value)


def _shown(value: Any) -> str:
    text = _toml_value(value) if not isinstance(value, dict) else "{...}"
    return text if len(text) <= 60 else text[:57] + "..."


def _suggest(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f"did you mean {close[0]!r}? " if close else ""


def _apply_checks(f: FieldSpec, value: Any, key: str) -> None:
    for check in f.checks:
        if not check.ok(value):
            raise _Invalid(key, f"must be {check.rule}, got {_shown(value)}")


def _convert(f: FieldSpec, value: Any) -> Any:
    """Type-check and validate one value; returns it in its frozen form."""
    if f.kind in (Kind.STR_LIST, Kind.INT_LIST):
        if not isinstance(value, list):
            raise _Invalid(
                f.name, f"expected {f.kind.value}, got {_toml_type(value)} ({_shown(value)})"
            )
        want_str = f.kind is Kind.STR_LIST
        for i, item in enumerate(value):
            key = f"{f.name}[{i}]"
            ok = (
                isinstance(item, str)
                if want_str
                else isinstance(item, int) and not isinstance(item, bool)
            )
            if not ok:
                what = "a string" if want_str else "an integer"
                raise _Invalid(key, f"expected {what}, got {_toml_type(item)} ({_shown(item)})")
            _apply_checks(f, item, key)
        return tuple(value)
    # bool is a subclass of int, and `ring_pages = true` is never what anyone meant.
    if f.kind is Kind.INT:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif f.kind is Kind.FLOAT:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif f.kind is Kind.BOOL:
        ok = isinstance(value, bool)
    else:
        ok = isinstance(value, str)
    if not ok:
        raise _Invalid(
            f.name, f"expected {f.kind.value}, got {_toml_type(value)} ({_shown(value)})"
        )
    _apply_checks(f, value, f.name)  # before float(): a huge int must not overflow
    return float(value) if f.kind is Kind.FLOAT else value


def _frozen_default(f: FieldSpec) -> Any:
    return tuple(f.default) if f.kind in (Kind.STR_LIST, Kind.INT_LIST) else f.default


def _build_section(spec: SectionSpec, raw: Mapping[str, Any], source: Path | None) -> Any:
    def fail(key: str, reason: str) -> ConfigError:
        dotted = f"{spec.name}.{key}" if key else spec.name
        return ConfigError(f"{_label(source)}: {dotted}: {reason}", path=source, key=dotted)

    known = [f.name for f in spec.fields]
    values: dict[str, Any] = {}
    entries: dict[str, Any] = {}
    for key, value in raw.items():
        f = spec.field(key)
        if f is None and spec.entries is not None:
            try:
                entries[key] = _build_entry(spec, spec.entries, key, value)
            except _Invalid as e:
                raise fail(e.key, e.reason) from None
            continue
        if f is None:
            raise fail(
                key,
                f"unknown key; {_suggest(key, known)}known keys in [{spec.name}]: "
                f"{', '.join(known)}",
            )
        try:
            values[key] = _convert(f, value)
        except _Invalid as e:
            raise fail(e.key, e.reason) from None
    if spec.entries is not None:
        values[spec.entries.attr] = tuple(sorted(entries.items()))
    given = frozenset(values)
    for f in spec.fields:
        if f.name not in values:
            values[f.name] = _frozen_default(f)
    if spec.finish is not None:
        try:
            values = spec.finish(values, given)
        except _Invalid as e:
            raise fail(e.key, e.reason) from None
    return spec.result(**values)


def _build_entry(section: SectionSpec, spec: EntrySpec, key: str, raw: Any) -> Any:
    """One ``[section."KEY"]`` table; raises _Invalid with a key relative to the section."""
    quoted = _toml_str(key)
    if not isinstance(raw, Mapping):
        known = [f.name for f in section.fields]
        if key not in spec.keys():
            raise _Invalid(
                key,
                f"unknown key; {_suggest(key, known)}known keys in [{section.name}]: "
                f"{', '.join(known)}, and a table [{section.name}.{_toml_str(spec.example)}] "
                f"per {spec.what}",
            )
        raise _Invalid(
            quoted,
            f"expected a table ([{section.name}.{quoted}]), got {_toml_type(raw)} ({_shown(raw)})",
        )
    keys = spec.keys()
    if key not in keys:
        raise _Invalid(
            quoted,
            f"unknown {spec.what}; {_suggest(key, keys)}known: {', '.join(keys) or 'none'}",
        )
    values: dict[str, Any] = {}
    for name, value in raw.items():
        f = spec.field(name)
        if f is None:
            fields_ = [f.name for f in spec.fields]
            raise _Invalid(
                f"{quoted}.{name}",
                f"unknown key; {_suggest(name, fields_)}known keys in "
                f"[{section.name}.{quoted}]: {', '.join(fields_)}",
            )
        try:
            values[name] = _convert(f, value)
        except _Invalid as e:
            raise _Invalid(f"{quoted}.{e.key}", e.reason) from None
    for f in spec.fields:
        values.setdefault(f.name, _frozen_default(f))
    return spec.result(**values)


def config_from_dict(data: Mapping[str, Any], source: str | Path | None = None) -> Config:
    """Validate an already-parsed TOML document (sections -> keys -> values).

    ``source`` only labels messages and ``Config.source``. Raises ``ConfigError``.
    """
    src = None if source is None else Path(source)
    known = [s.name for s in SCHEMA]
    for name, value in data.items():
        if name not in known:
            raise ConfigError(
                f"{_label(src)}: {name}: unknown section; {_suggest(name, known)}"
                f"known sections: {', '.join(known)}",
                path=src,
                key=name,
            )
        if not isinstance(value, Mapping):
            raise ConfigError(
                f"{_label(src)}: {name}: expected a table ([{name}]), got {_toml_type(value)} "
                f"({_shown(value)})",
                path=src,
                key=name,
            )
    built = {spec.name: _build_section(spec, data.get(spec.name, {}), src) for spec in SCHEMA}
    return Config(source=src, **built)


def parse_config(text: str, source: str | Path | None = None) -> Config:
    """Parse and validate TOML text. ``source`` labels messages. Raises ``ConfigError``."""
    src = None if source is None else Path(source)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        # tomllib's message carries "(at line L, column C)".
        raise ConfigError(f"{_label(src)}: invalid TOML: {e}", path=src) from None
    return config_from_dict(data, src)


def load_config(path: str | Path | None) -> Config:
    """Load and validate the config file at ``path``; None gives the built-in defaults.

    Keys the file leaves out keep their defaults. Raises ``ConfigError`` with a message that
    names the file and, where there is one, the dotted key at fault.
    """
    if path is None:
        return config_from_dict({})
    src = Path(path)
    try:
        raw = src.read_bytes()
    except OSError as e:
        raise ConfigError(f"{src}: cannot read config file: {e.strerror or e}", path=src) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{src}: invalid TOML: not UTF-8 (bad byte at offset {e.start})", path=src
        ) from None
    return parse_config(text, src)


# --- the example file ---------------------------------------------------------------------

_WIDTH = 100
_HEADER = """\
rlguard configuration: every key, shown at its default.

Copy this file, keep the keys you want to change and delete the rest: a key left out
keeps its default, and an unknown key is an error.

Generated from the schema in monitor/config.py by render_example(); edit the schema,
not this file."""


def _comment(text: str) -> list[str]:
    lines: list[str] = []
    for para in text.split("\n"):
        wrapped = textwrap.wrap(para, _WIDTH - 2) or [""]
        lines.extend(f"# {line}".rstrip() for line in wrapped)
    return lines


def _allowed(f: FieldSpec) -> str:
    rules = [c.rule for c in f.checks]
    if f.kind in (Kind.STR_LIST, Kind.INT_LIST):
        each = f"; each {', '.join(rules)}" if rules else ""
        return f"Allowed: {f.kind.value}{each}."
    return "Allowed: " + ", ".join([f.kind.value, *rules]) + "."


def _assignment(f: FieldSpec) -> list[str]:
    one_line = f"{f.name} = {_toml_value(f.default)}"
    if len(one_line) <= _WIDTH or f.kind not in (Kind.STR_LIST, Kind.INT_LIST):
        return [one_line]
    return [f"{f.name} = [", *(f"    {_toml_value(v)}," for v in f.default), "]"]


def render_example() -> str:
    """The commented example TOML, generated from ``SCHEMA`` with every key at its default."""
    lines = _comment(_HEADER)
    for spec in SCHEMA:
        lines += ["", "", *_comment(spec.doc), f"[{spec.name}]"]
        for f in spec.fields:
            lines += ["", *_comment(f.doc), *_comment(_allowed(f)), *_assignment(f)]
        e = spec.entries
        if e is not None:  # commented out: an entry at its defaults changes nothing
            lines += [
                "",
                *_comment(f"{e.doc} For example:"),
                f"# [{spec.name}.{_toml_str(e.example)}]",
            ]
            for f in e.fields:
                lines += ["#", *_comment(f.doc), *_comment(_allowed(f))]
                lines += [f"# {line}" for line in _assignment(f)]
    return "\n".join(lines) + "\n"
