"""Reverse-tunnel detectors: pure functions over argv, config text and first bytes.

Nothing here reads a file, a socket or a global: the engine passes the argv of a new
process, the text of the ssh_config files that process would read, and the first bytes
it wrote on a new TCP connection.  Each function returns `Signal`s (or a string) and
never raises on hostile input.

Entry points:

* `argv_signals`          dispatch on the program name (ssh, autossh, tunnel tools)
* `ssh_forward_specs`     OpenSSH ``ssh`` argv (+ ssh_config text): -R, -w, RemoteForward, Tunnel
* `autossh_signals`       autossh argv: its own -M/-f, then the ssh parser on the rest
* `tunnel_tool_signals`   chisel, frpc, ngrok, bore, cloudflared, gost, ligolo-ng, rathole, ...
* `tunnel_dns_signal`     a DNS name under a tunnel-service domain
* `ssh_banner`            an SSH identification string at offset 0 (RFC 4253 section 4.2)
* `shell_banner_signal`   an interactive shell talking over an outbound socket

Sources for every rule are in tests/corpus/tunnels/CASES.md.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from monitor.detectors.iocs import Iocs, domain_match
from monitor.detectors.signals import CONFIDENCE_RANK, Confidence, Signal
from monitor.sanitize import safe_text

__all__ = [
    "DETAIL_MAX",
    "RULES",
    "RULE_REVERSE_SHELL",
    "RULE_SSH_CONNECT_BACK",
    "RULE_SSH_FORWARD",
    "RULE_SSH_PROTOCOL",
    "RULE_TUNNEL_DNS",
    "RULE_TUNNEL_TOOL",
    "SSH_BANNER_MAX",
    "argv_signals",
    "autossh_monitor_specs",
    "autossh_signals",
    "autossh_ssh_argv",
    "shell_banner_signal",
    "ssh_banner",
    "ssh_config_path",
    "ssh_destination",
    "ssh_forward_specs",
    "ssh_local_or_dynamic",
    "tunnel_dns_signal",
    "tunnel_tool_signals",
]

# The rules these detectors raise (monitor/data/rules.toml; checked against it at load).
# RLG-TUN-001 and the fd form of RLG-SHL-001 need per-process state: the engine keeps it.
RULE_SSH_CONNECT_BACK: Final = "RLG-TUN-001"
RULE_SSH_PROTOCOL: Final = "RLG-TUN-002"
RULE_SSH_FORWARD: Final = "RLG-TUN-003"
RULE_TUNNEL_TOOL: Final = "RLG-TUN-004"
RULE_TUNNEL_DNS: Final = "RLG-TUN-005"
RULE_REVERSE_SHELL: Final = "RLG-SHL-001"
RULES: Final = (
    RULE_SSH_CONNECT_BACK,
    RULE_SSH_PROTOCOL,
    RULE_SSH_FORWARD,
    RULE_TUNNEL_TOOL,
    RULE_TUNNEL_DNS,
    RULE_REVERSE_SHELL,
)

DETAIL_MAX: Final = 256  # Signal.detail bound
SSH_BANNER_MAX: Final = 255  # RFC 4253 4.2: the identification line is at most 255 chars

REMOTE_FORWARD: Final = "ssh.remote_forward"
TUN_FORWARD: Final = "ssh.tun_forward"

# ---------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------


def _detail(text: str | bytes, limit: int = DETAIL_MAX) -> str:
    """Sanitised text guaranteed to fit in `limit` characters.

    safe_text appends its "…[+N bytes]" marker after `limit` characters, so a long input
    would come out longer than the limit; shrink the cut until the whole fits.
    """
    out = safe_text(text, limit)
    cut = limit
    while len(out) > limit and cut > 0:
        cut = max(0, cut - (len(out) - limit))
        out = safe_text(text, cut)
    return out[:limit]


def _sig(kind: str, name: str, detail: str | bytes, confidence: Confidence) -> Signal:
    return Signal(kind=kind, name=name, detail=_detail(detail), confidence=confidence)


def _dedupe(signals: Iterable[Signal]) -> list[Signal]:
    """One signal per (kind, name, detail), keeping the highest confidence, first order."""
    best: dict[tuple[str, str, str], Signal] = {}
    for s in signals:
        key = (s.kind, s.name, s.detail)
        old = best.get(key)
        if old is None or CONFIDENCE_RANK[s.confidence] > CONFIDENCE_RANK[old.confidence]:
            best[key] = s
    return list(best.values())


def _prog(name: str | None) -> str:
    """Lower-case basename without a Windows ``.exe`` suffix ("" for None)."""
    if not name:
        return ""
    base = posixpath.basename(str(name).rstrip("/")).lower()
    return base[:-4] if base.endswith(".exe") else base


def _names_of(argv: Sequence[str], exe: str | None) -> tuple[str, ...]:
    """Program names to match on: argv[0] and the executable (either may be renamed)."""
    names = [_prog(argv[0]) if argv else "", _prog(exe)]
    return tuple(n for n in names if n)


def _is_tool(name: str, tool: str) -> bool:
    # Release archives ship versioned names: chisel_1.9.1_linux_amd64,
    # cloudflared-linux-amd64, ligolo-ng_agent_0.7.5_linux_amd64.
    return name == tool or any(name.startswith(tool + sep) for sep in "-_.")


# Invocations that print and exit without opening any connection.
_INFO_ARGS: Final = frozenset(
    {"-h", "--help", "-help", "help", "--version", "-version", "version", "-V", "-v"}
)


def _info_only(args: Sequence[str]) -> bool:
    return bool(args) and (all(a in _INFO_ARGS for a in args) or args[0] == "completion")


# ---------------------------------------------------------------------------------------
# OpenSSH ssh: getopt, exactly as ssh.c main() drives it
# ---------------------------------------------------------------------------------------

# ssh.c: getopt(ac, av, "1246ab:c:e:fgi:kl:m:no:p:qstvxAB:CD:E:F:GI:J:KL:MNO:P:Q:R:S:TVw:W:XYy")
# Letters followed by ':' take an argument.  `-P tag` takes one since OpenSSH 9.4; before
# that -P was a no-argument (deprecated) flag, so both readings are tried (see _ssh_parses).
_SSH_OPTSTRING: Final = "1246ab:c:e:fgi:kl:m:no:p:qstvxAB:CD:E:F:GI:J:KL:MNO:P:Q:R:S:TVw:W:XYy"


def _takes_arg(optstring: str) -> frozenset[str]:
    return frozenset(c for i, c in enumerate(optstring) if optstring[i + 1 : i + 2] == ":")


_SSH_ARGS_MODERN: Final = _takes_arg(_SSH_OPTSTRING)
_SSH_ARGS_LEGACY_P: Final = _SSH_ARGS_MODERN - {"P"}


@dataclass(frozen=True)
class _SshArgv:
    """What ssh's option parsing made of an argv."""

    options: tuple[tuple[str, str | None], ...]
    destination: str | None  # as typed: [user@]host or ssh://[user@]host[:port]
    command: tuple[str, ...]


def _getopt(
    args: Sequence[str], start: int, takes_arg: frozenset[str]
) -> tuple[list[tuple[str, str | None]], int, bool]:
    """BSD getopt(3) over args[start:] (no permutation: stops at the first non-option).

    OpenSSH on Linux uses its bundled openbsd-compat getopt (glibc has no optreset), which
    never permutes.  Returns (options, index of the first operand, ended by "--").
    Unknown letters are kept as flags rather than failing: a monitor must not be blinded
    by an option a newer ssh knows and this table does not.
    """
    opts: list[tuple[str, str | None]] = []
    i = start
    while i < len(args):
        arg = args[i]
        if arg == "--":
            return opts, i + 1, True
        if len(arg) < 2 or not arg.startswith("-"):
            return opts, i, False
        j = 1
        while j < len(arg):
            letter = arg[j]
            if letter in takes_arg:
                if j + 1 < len(arg):
                    opts.append((letter, arg[j + 1 :]))
                elif i + 1 < len(args):
                    i += 1
                    opts.append((letter, args[i]))
                else:
                    opts.append((letter, None))  # ssh would print usage and exit
                break
            opts.append((letter, None))
            j += 1
        i += 1
    return opts, i, False


def _parse_ssh(argv: Sequence[str], takes_arg: frozenset[str]) -> _SshArgv:
    """Options, destination and remote command, the way ssh.c main() finds them.

    ssh reads options up to the first operand (the destination); if more words follow and
    option parsing did not end with "--", it restarts getopt *after* the destination
    (`optind = optreset = 1; goto again`), so `ssh host -R 9000:x:22` does forward.
    Parsing stops for good at the next operand: `ssh host echo -R 1:2:3` runs a command.
    """
    args = list(argv[1:])
    opts, pos, terminated = _getopt(args, 0, takes_arg)
    rest = args[pos:]
    if not rest:
        return _SshArgv(tuple(opts), None, ())
    if len(rest) > 1 and not terminated:
        more, pos2, _ = _getopt(rest, 1, takes_arg)
        return _SshArgv(tuple(opts + more), rest[0], tuple(rest[pos2:]))
    return _SshArgv(tuple(opts), rest[0], tuple(rest[1:]))


def _ssh_parses(argv: Sequence[str]) -> tuple[_SshArgv, ...]:
    """The current reading first, then the pre-9.4 one where -P takes no argument."""
    modern = _parse_ssh(argv, _SSH_ARGS_MODERN)
    if not any(letter == "P" for letter, _ in modern.options):
        return (modern,)
    return modern, _parse_ssh(argv, _SSH_ARGS_LEGACY_P)


def _host_of(destination: str) -> str:
    """Host part of `[user@]host` or `ssh://[user@]host[:port]` (ssh.c, parse_ssh_uri)."""
    if destination.lower().startswith("ssh://"):
        rest = destination[6:]
        rest = rest.rsplit("@", 1)[-1]
        if rest.startswith("["):
            return rest[1:].split("]", 1)[0]
        return rest.split(":", 1)[0].split("/", 1)[0]
    return destination.rsplit("@", 1)[-1]


def ssh_destination(argv: Sequence[str]) -> str | None:
    """The host ssh connects to (user and URI decoration removed), or None.

    This is the name ssh matches `Host` patterns against; the engine uses it to pick the
    config blocks and to compare with the connection it sees.
    """
    dest = _parse_ssh(argv, _SSH_ARGS_MODERN).destination
    if dest is None:
        return None
    host = _host_of(dest)
    return host or None


def ssh_config_path(argv: Sequence[str]) -> str | None:
    """The -F file (the last one wins, as in ssh.c), or None.

    With -F, ssh reads only that file: the engine passes its text as `config_text` instead
    of ~/.ssh/config + /etc/ssh/ssh_config.  "-F none" means no config file at all.
    """
    value: str | None = None
    for letter, optarg in _parse_ssh(argv, _SSH_ARGS_MODERN).options:
        if letter == "F" and optarg is not None:
            value = optarg
    return value


# ---------------------------------------------------------------------------------------
# ssh_config lines (command line -o and files), as readconf.c reads them
# ---------------------------------------------------------------------------------------

_KEYWORD_RE: Final = re.compile(r"\s*([^\s=]+)[ \t]*(?:=[ \t]*)?(.*)\Z", re.DOTALL)
_TUNNEL_VALUES: Final = {
    "yes": True,
    "true": True,
    "point-to-point": True,
    "ethernet": True,
    "no": False,
    "false": False,
}
_FLAG_VALUES: Final = {"yes": True, "true": True, "no": False, "false": False}


def _split_config_args(text: str) -> list[str]:
    """Whitespace-separated words with "double" / 'single' quotes (misc.c argv_split).

    A '#' at the start of a word ends the line; an unbalanced quote keeps what was read.
    """
    words: list[str] = []
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i] in " \t\r\n":
            i += 1
        if i >= n or text[i] == "#":
            break
        word: list[str] = []
        quote = ""
        while i < n:
            c = text[i]
            if quote:
                if c == quote:
                    quote = ""
                elif c == "\\" and i + 1 < n and text[i + 1] in (quote, "\\"):
                    i += 1
                    word.append(text[i])
                else:
                    word.append(c)
            elif c in "\"'":
                quote = c
            elif c == "\\" and i + 1 < n:
                i += 1
                word.append(text[i])
            elif c in " \t\r\n":
                break
            else:
                word.append(c)
            i += 1
        words.append("".join(word))
    return words


def _config_line(line: str) -> tuple[str, list[str]] | None:
    """(lower-case keyword, arguments) of one config line, or None for blank/comment."""
    m = _KEYWORD_RE.match(line)
    if m is None or m.group(1).startswith("#"):
        return None
    return m.group(1).lower(), _split_config_args(m.group(2))


@dataclass
class _Forwarding:
    """What the options seen so far do, honouring ssh's "first obtained value" rule."""

    # (kind, spec, certain) for every RemoteForward / -R: these accumulate.
    remote: list[tuple[str, str, bool]] = field(default_factory=list)
    # (enabled, spec, kind, certain) for every Tunnel / -w, in order: first certain wins.
    tunnel: list[tuple[bool, str, str, bool]] = field(default_factory=list)
    # (value, certain) for ClearAllForwardings: first certain wins.
    clear: list[tuple[bool, bool]] = field(default_factory=list)
    stdio: bool = False  # -W: clears forwardings unless ClearAllForwardings says otherwise
    local: bool = False  # saw -L / -D / LocalForward / DynamicForward

    def option(self, keyword: str, args: list[str], kind: str, certain: bool) -> None:
        if keyword == "remoteforward" and args:
            # One argument is read as a dynamic forward, [addr:]port; readconf.c rejects
            # "9000:localhost:22" and ssh exits.  Still an attempt: kept, as uncertain.
            works = len(args) > 1 or _fields(args[0]) <= 2
            self.remote.append((kind, " ".join(args), certain and works))
        elif keyword == "tunnel" and args and args[0].lower() in _TUNNEL_VALUES:
            self.tunnel.append((_TUNNEL_VALUES[args[0].lower()], args[0], kind, certain))
        elif keyword == "clearallforwardings" and args and args[0].lower() in _FLAG_VALUES:
            self.clear.append((_FLAG_VALUES[args[0].lower()], certain))
        elif keyword in ("localforward", "dynamicforward") and args:
            self.local = True

    def signals(self) -> list[Signal]:
        cleared, doubt = self._cleared()
        if cleared:
            return []

        def conf(certain: bool) -> Confidence:
            return "high" if certain and not doubt else "medium"

        out = [_sig(kind, REMOTE_FORWARD, spec, conf(ok)) for kind, spec, ok in self.remote]
        for enabled, spec, kind, certain in self.tunnel:
            if enabled:
                out.append(_sig(kind, TUN_FORWARD, spec, conf(certain)))
            if certain:
                break  # the first value ssh is sure of decides; later ones are ignored
        return out

    def _cleared(self) -> tuple[bool, bool]:
        """(forwardings cleared for sure, maybe cleared by an uncertain Match block)."""
        doubt = False
        for value, certain in self.clear:
            if certain:
                return value, doubt
            doubt = doubt or value
        return self.stdio, doubt  # readconf.c: ClearAllForwardings defaults to on with -W


def _fields(spec: str) -> int:
    """Colon-separated fields of a forward spec, a [bracketed] field counting as one."""
    return len(re.sub(r"\[[^\]]*\]", "x", spec).split(":"))


def _glob(name: str, pattern: str) -> bool:
    """OpenSSH match_pattern(): only '*' and '?' are special."""
    rx = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(rx, name, re.DOTALL) is not None


def _host_block(patterns: list[str], host: str | None) -> bool | None:
    """Whether a `Host` line applies: a negated match vetoes, any other match enables.

    Matched case-insensitively (ssh lower-cases the name before its final pass).  None
    (unknown) when the destination is unknown.
    """
    if host is None:
        return None
    name = host.lower()
    matched = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        if _glob(name, pattern[1:].lower() if negated else pattern.lower()):
            if negated:
                return False
            matched = True
    return matched


def _match_block(args: list[str]) -> bool | None:
    # `Match all` always applies; every other criterion (host after HostName, user, exec,
    # localnetwork, canonical/final passes, tagged) needs state we do not have.
    return True if [a.lower() for a in args] == ["all"] else None


def _apply_config(state: _Forwarding, text: str, host: str | None) -> None:
    active: bool | None = True  # lines before the first Host/Match apply to every host
    for raw in text.splitlines():
        parsed = _config_line(raw)
        if parsed is None:
            continue
        keyword, args = parsed
        if keyword == "host":
            active = _host_block(args, host)
        elif keyword == "match":
            active = _match_block(args)
        elif active is not False:
            state.option(keyword, args, "config", active is True)


def _apply_cmdline(state: _Forwarding, options: Sequence[tuple[str, str | None]]) -> None:
    for letter, optarg in options:
        if optarg is None:
            continue
        if letter == "R":
            state.remote.append(("argv", optarg, True))
        elif letter == "w":
            # ssh.c: -w sets Tunnel only if nothing set it before (first value wins).
            state.tunnel.append((True, optarg, "argv", True))
        elif letter in "LD":
            state.local = True
        elif letter == "W":
            state.stdio = True
        elif letter == "o":
            parsed = _config_line(optarg)
            if parsed is not None:
                state.option(*parsed, "argv", True)


def _exits_early(options: Sequence[tuple[str, str | None]]) -> bool:
    """ssh prints something and exits (-G, -V, -Q) or sends a mux command that opens no
    new forward (-O check/exit/stop/cancel)."""
    for letter, optarg in options:
        if letter in "GVQ":
            return True
        if letter == "O" and optarg not in ("forward", "proxy"):
            return True
    return False


def _forwarding(parsed: _SshArgv, config_text: str | None) -> _Forwarding | None:
    if _exits_early(parsed.options):
        return None
    state = _Forwarding()
    _apply_cmdline(state, parsed.options)  # command-line options are read first
    config = [v for letter, v in parsed.options if letter == "F"]
    if config_text is not None and (not config or config[-1] != "none"):
        dest = parsed.destination
        _apply_config(state, config_text, _host_of(dest) if dest else None)
    return state


def ssh_forward_specs(argv: Sequence[str], config_text: str | None = None) -> list[Signal]:
    """Reverse forwards an OpenSSH ``ssh`` command line sets up.

    `argv` is the full argv of a process known to be OpenSSH ssh (argv[0] is skipped, not
    checked: use `argv_signals` to dispatch on the program).  `config_text` is the text of
    the -F file when there is one (see `ssh_config_path`), otherwise ~/.ssh/config followed
    by /etc/ssh/ssh_config; `Include`d files are not followed (pass them inline).

    Returns "ssh.remote_forward" for each -R / RemoteForward and "ssh.tun_forward" for
    -w / Tunnel, kind "argv" or "config", detail = the forward spec.  "high" unless the
    line sits in a `Match` block we cannot evaluate ("medium").  Nothing when ssh would
    exit before connecting (-G, -V, -Q, -O other than forward/proxy) or when
    ClearAllForwardings (explicit, or implied by -W) empties the list.
    """
    out: list[Signal] = []
    for parsed in _ssh_parses(argv):
        state = _forwarding(parsed, config_text)
        if state is not None:
            out.extend(state.signals())
    return _dedupe(out)


def ssh_local_or_dynamic(argv: Sequence[str]) -> bool:
    """True when the command line asks only for local (-L) / dynamic (-D) forwards.

    Command line only (-o LocalForward / DynamicForward count too); a config file can still
    add a RemoteForward, which `ssh_forward_specs` reports.
    """
    parsed = _parse_ssh(argv, _SSH_ARGS_MODERN)
    state = _Forwarding()
    _apply_cmdline(state, parsed.options)
    return state.local and not state.remote and not any(t[0] for t in state.tunnel)


# ---------------------------------------------------------------------------------------
# autossh
# ---------------------------------------------------------------------------------------

# autossh.c OPTION_STRING: its own M: and V, plus the ssh letters it knows about (used
# only by strip_arg to find where an option's argument starts).
_AUTOSSH_OPTSTRING: Final = "M:V1246ab:c:e:fgi:kl:m:no:p:qstvw:xACD:F:I:L:NO:PR:S:TXY"
_AUTOSSH_ARGS: Final = _takes_arg(_AUTOSSH_OPTSTRING)


def _strip_f(arg: str) -> str:
    """autossh strip_arg(arg, 'f', OPTION_STRING): drop -f from a flag cluster."""
    if len(arg) < 2 or not arg.startswith("-"):
        return arg
    out = ["-"]
    for i, c in enumerate(arg[1:], start=1):
        if c in _AUTOSSH_ARGS:
            out.append(arg[i:])  # the rest is this option's argument: left alone
            break
        if c != "f":
            out.append(c)
    stripped = "".join(out)
    return "" if stripped == "-" else stripped


def _autossh_monitor(argv: Sequence[str]) -> str | None:
    """The -M value (before the first "--"), or None."""
    for i, arg in enumerate(argv[1:], start=1):
        if arg == "--":
            return None
        if arg.startswith("-M"):
            if len(arg) > 2:
                return arg[2:]
            return argv[i + 1] if i + 1 < len(argv) else None
    return None


def autossh_ssh_argv(argv: Sequence[str]) -> list[str]:
    """The argv autossh hands to ssh, without the monitor forwards it inserts.

    As autossh.c main() builds it: the first "--" is autossh's own and dropped, "-M port"
    is dropped, "f" is stripped from flag clusters (autossh backgrounds itself), and
    everything else is passed through in order.
    """
    out = ["ssh"]
    seen_stop = False
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--") and not seen_stop:
            seen_stop = True  # autossh.c tests only the first two characters
        elif not seen_stop and arg.startswith("-M"):
            if arg == "-M":
                i += 1
        else:
            stripped = _strip_f(arg)
            if stripped:
                out.append(stripped)
        i += 1
    return out


def autossh_monitor_specs(argv: Sequence[str]) -> list[tuple[str, str]]:
    """The forwards autossh adds to its ssh child for -M monitoring, as (flag, spec).

    Without an echo port it builds a loop: ``-L M:127.0.0.1:M -R M:127.0.0.1:M+1``; with
    ``-M M:E`` only ``-L M:127.0.0.1:E``; ``-M 0`` turns monitoring off.  The engine can
    use this to recognise the child's -R as autossh's own loop (AUTOSSH_PORT in the
    environment overrides -M and is not visible here).
    """
    spec = _autossh_monitor(argv)
    if not spec:
        return []
    port_s, _, echo_s = spec.partition(":")
    if not port_s.isdigit() or (echo_s and not echo_s.isdigit()):
        return []
    port = int(port_s)
    if port == 0 or port > 65534:
        return []
    if echo_s:
        return [("-L", f"{port}:127.0.0.1:{int(echo_s)}")]
    return [("-L", f"{port}:127.0.0.1:{port}"), ("-R", f"{port}:127.0.0.1:{port + 1}")]


def autossh_signals(argv: Sequence[str], config_text: str | None = None) -> list[Signal]:
    """autossh: an "autossh" signal ("high" when the ssh it runs has a reverse forward,
    else "medium"), an informational "autossh.monitor" for a monitoring loop, and the
    `ssh_forward_specs` signals of the ssh command it runs."""
    own = list(argv[1 : argv.index("--")] if "--" in argv[1:] else argv[1:])
    if "-V" in own:
        return []  # prints its version and exits
    ssh_signals = ssh_forward_specs(autossh_ssh_argv(argv), config_text)
    reverse = any(s.confidence == "high" for s in ssh_signals)
    out = [_sig("argv", "autossh", " ".join(argv), "high" if reverse else "medium")]
    loop = autossh_monitor_specs(argv)
    if loop:
        out.append(_sig("argv", "autossh.monitor", " ".join(f"{f} {s}" for f, s in loop), "low"))
    return out + ssh_signals


# ---------------------------------------------------------------------------------------
# Other tunnel tools
# ---------------------------------------------------------------------------------------


def _flag_values(args: Sequence[str], names: Iterable[str]) -> list[str]:
    """Values of Go-style flags: -x v, -x=v, --x v, --x=v."""
    wanted = set(names)
    values: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("-"):
            key, eq, value = arg.lstrip("-").partition("=")
            if key in wanted:
                if eq:
                    values.append(value)
                elif i + 1 < len(args):
                    i += 1
                    values.append(args[i])
        i += 1
    return values


def _has_flag(args: Sequence[str], *names: str) -> bool:
    return any(a.lstrip("-").partition("=")[0] in names for a in args if a.startswith("-"))


def _positionals(args: Sequence[str], value_flags: frozenset[str]) -> list[str]:
    """Non-flag words, skipping the values of flags that take one."""
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            out.extend(args[i + 1 :])
            break
        if arg.startswith("-") and len(arg) > 1:
            key, eq, _ = arg.lstrip("-").partition("=")
            if key in value_flags and not eq:
                i += 1
        else:
            out.append(arg)
        i += 1
    return out


# chisel client --help: options that take a value.
_CHISEL_VALUE_FLAGS: Final = frozenset(
    {
        "fingerprint", "auth", "keepalive", "max-retry-count", "max-retry-interval", "proxy",
        "header", "hostname", "sni", "tls-ca", "tls-key", "tls-cert",
        "host", "port", "p", "key", "keyfile", "authfile", "backend", "tls-domain",
    }
)  # fmt: skip


def _chisel(args: Sequence[str]) -> list[Signal] | None:
    words = _positionals(args, _CHISEL_VALUE_FLAGS)
    if words[:1] == ["client"]:
        server, remotes = (words[1], words[2:]) if len(words) > 1 else ("", [])
        # chisel share/settings: a remote prefixed "R:" is a reverse port forward.
        reverse = [r for r in remotes if r.startswith("R:")]
        if reverse:
            return [_sig("argv", "chisel.reverse", r, "high") for r in reverse]
        return [_sig("argv", "chisel.client", " ".join([server, *remotes]), "medium")]
    if words[:1] == ["server"] and _has_flag(args, "reverse"):
        return [_sig("argv", "chisel.server_reverse", " ".join(args), "medium")]
    return None


# frpc proxy subcommands (cmd/frpc/sub/proxy.go): run one proxy from flags alone.
_FRPC_PROXIES: Final = frozenset({"tcp", "udp", "tcpmux", "http", "https", "stcp", "sudp", "xtcp"})


def _frpc(args: Sequence[str]) -> list[Signal] | None:
    words = _positionals(args, frozenset({"c", "config", "config_dir"}))
    verb = words[0] if words else ""
    if verb in _FRPC_PROXIES:
        if len(words) > 1 and words[1] == "visitor":
            return [_sig("argv", "frpc.visitor", " ".join(args), "medium")]
        return [_sig("argv", "frpc.proxy", " ".join(args), "high")]
    if verb in ("verify", "completion"):
        return []
    if verb in ("", "run") or verb.endswith((".ini", ".toml", ".yaml", ".yml", ".json")):
        # `frpc` alone reads ./frpc.ini; `-c frpc.toml` names the file.  The proxies are in
        # that file, so this stays medium until the engine has read it.
        return [_sig("argv", "frpc", " ".join(args) or "frpc", "medium")]
    return None  # reload / status / stop talk to a running frpc's admin API


_NGROK_TUNNELS: Final = frozenset({"http", "tcp", "tls", "start", "tunnel"})
_NGROK_OTHER: Final = frozenset(
    {"service", "config", "api", "diagnose", "update", "credits", "authtoken", "completion"}
)


def _ngrok(args: Sequence[str]) -> list[Signal] | None:
    verb = next((a for a in args if a in _NGROK_TUNNELS or a in _NGROK_OTHER), "")
    if verb in _NGROK_TUNNELS:
        return [_sig("argv", "ngrok", " ".join(args), "high")]
    if verb == "service":
        return [_sig("argv", "ngrok.service", " ".join(args), "medium")]
    return None


def _bore(args: Sequence[str]) -> list[Signal] | None:
    if args[:1] == ["local"]:
        return [_sig("argv", "bore.local", " ".join(args[1:]), "high")]
    return None


_CLOUDFLARED_QUICK: Final = ("url", "hostname", "hello-world", "token")
_CLOUDFLARED_COMMANDS: Final = frozenset(
    {"access", "update", "proxy-dns", "tail", "management", "login", "help"}
)
_CLOUDFLARED_MANAGE: Final = frozenset(
    {"list", "create", "delete", "login", "route", "info", "cleanup", "token", "vnet",
     "ingress", "diag", "help"}
)  # fmt: skip


def _cloudflared(args: Sequence[str]) -> list[Signal] | None:
    if "tunnel" in args:
        after = args[args.index("tunnel") + 1 :]
        if "run" in after or _has_flag(after, *_CLOUDFLARED_QUICK):
            return [_sig("argv", "cloudflared.tunnel", " ".join(args), "high")]
        if any(a in _CLOUDFLARED_MANAGE for a in after):
            return None  # account/tunnel management: the name-only match covers it
        # `cloudflared tunnel` alone runs the tunnel named in its config file.
        return [_sig("argv", "cloudflared.tunnel", " ".join(args), "medium")]
    if "service" in args:
        return [_sig("argv", "cloudflared.service", " ".join(args), "medium")]
    if any(a in _CLOUDFLARED_COMMANDS for a in args) or not args:
        return None  # access (client side: its --url is a local listener), update, tail...
    # cmd/cloudflared/main.go action(): any non-empty invocation without a subcommand runs
    # tunnel.TunnelCommand, e.g. the legacy `cloudflared --url http://localhost:8000`.
    quick = _has_flag(args, *_CLOUDFLARED_QUICK)
    return [_sig("argv", "cloudflared.tunnel", " ".join(args), "high" if quick else "medium")]


def _gost(args: Sequence[str]) -> list[Signal] | None:
    listen = _flag_values(args, ("L",))
    # rtcp:// and rudp:// listeners are remote port forwards: the far end listens and
    # connections come back through the chain (gost README, "Remote TCP port forwarding").
    reverse = [v for v in listen if v.lower().startswith(("rtcp://", "rudp://", "rtcp+", "rudp+"))]
    if reverse:
        return [_sig("argv", "gost.rtcp", v, "high") for v in reverse]
    chain = _flag_values(args, ("F",))
    if chain:
        return [_sig("argv", "gost.chain", " ".join(chain), "medium")]
    return None


_LIGOLO_TELLS: Final = ("ignore-cert", "accept-fingerprint", "retry")


def _ligolo(args: Sequence[str], named: bool) -> list[Signal] | None:
    """ligolo-ng agent: `agent -connect host:11601 [-ignore-cert]` (or -bind)."""
    peer = _flag_values(args, ("connect", "bind"))
    if not peer:
        return None
    if named:
        return [_sig("argv", "ligolo.agent", " ".join(args), "high")]
    # The release binary is just "agent": require a ligolo-specific flag as well.
    if _has_flag(args, *_LIGOLO_TELLS):
        return [_sig("argv", "ligolo.agent", " ".join(args), "medium")]
    return None


def _rathole(args: Sequence[str]) -> list[Signal] | None:
    if _has_flag(args, "client"):
        return [_sig("argv", "rathole.client", " ".join(args), "high")]
    if _has_flag(args, "genkey"):
        return []  # prints a keypair
    if _has_flag(args, "server"):
        return None
    # Mode comes from the config file ([client] or [server]); ./client.toml by default.
    return [_sig("argv", "rathole", " ".join(args) or "rathole", "medium")]


_SSH_NAMES: Final = ("ssh", "slogin")

_TOOL_PARSERS: Final = (
    ("chisel", _chisel),
    ("frpc", _frpc),
    ("ngrok", _ngrok),
    ("bore", _bore),
    ("cloudflared", _cloudflared),
    ("gost", _gost),
    ("rathole", _rathole),
)


def _known_tool(names: Sequence[str], tools: Iterable[str]) -> str | None:
    for tool in tools:
        if any(_is_tool(n, tool) for n in names):
            return tool
    return None


def tunnel_tool_signals(argv: Sequence[str], exe: str | None, iocs: Iocs) -> list[Signal]:
    """Tunnel tools recognised by name (argv[0] or executable basename) and arguments.

    A specific rule (chisel R: remotes, frpc, ngrok http|tcp|tls|start|tunnel, bore local,
    cloudflared tunnel, gost rtcp/rudp, ligolo-ng agent, rathole --client) gives its own
    signal; any other invocation of a name in `iocs.tunnel_tools` gives a "low"
    "tunnel_tool.name".  --help / --version style invocations give nothing: they print
    and exit without a connection.  ssh and autossh give nothing here: they have their
    own parsers (`ssh_forward_specs`, `autossh_signals`), so calling this on every exec
    alongside them never counts one tunnel twice.
    """
    names = _names_of(argv, exe)
    args = list(argv[1:])
    if not names or _known_tool(names, ("autossh",)) or any(n in _SSH_NAMES for n in names):
        return []
    if _info_only(args):
        return []
    # A parser returns its signals, [] for "known harmless", or None for "no opinion",
    # which falls back to the name-only match.
    found: list[Signal] | None = None
    tool = _known_tool(names, [t for t, _ in _TOOL_PARSERS])
    if tool is not None:
        found = dict(_TOOL_PARSERS)[tool](args)
    ligolo = _known_tool(names, ("ligolo",))
    if found is None and (ligolo or _known_tool(names, ("agent",))):
        found = _ligolo(args, named=ligolo is not None)
    if found is not None:
        return found
    if _known_tool(names, sorted(iocs.tunnel_tools)) is not None:
        return [_sig("argv", "tunnel_tool.name", " ".join(argv), "low")]
    return []


def argv_signals(
    argv: Sequence[str], exe: str | None, iocs: Iocs, config_text: str | None = None
) -> list[Signal]:
    """All argv-level tunnel signals for one exec, dispatched on the program name.

    ssh (argv[0] or exe basename "ssh"/"slogin") -> `ssh_forward_specs`; autossh ->
    `autossh_signals`; anything else -> `tunnel_tool_signals`.  `config_text` is used for
    ssh and autossh only.
    """
    names = _names_of(argv, exe)
    if any(n in _SSH_NAMES for n in names):
        return ssh_forward_specs(argv, config_text)
    if _known_tool(names, ("autossh",)):
        return autossh_signals(argv, config_text)
    return tunnel_tool_signals(argv, exe, iocs)


# ---------------------------------------------------------------------------------------
# DNS
# ---------------------------------------------------------------------------------------


def tunnel_dns_signal(name: str, iocs: Iocs) -> Signal | None:
    """A lookup of a name under a tunnel-service domain (ngrok, trycloudflare, bore.pub...)."""
    if not isinstance(name, str):
        return None
    suffix = domain_match(name, iocs.tunnel_domains)
    if suffix is None:
        return None
    return _sig("dns", "dns.tunnel_domain", f"{name.lower().rstrip('.')} ({suffix})", "high")


# ---------------------------------------------------------------------------------------
# First bytes on a new outbound connection
# ---------------------------------------------------------------------------------------

# RFC 4253 4.2: "SSH-protoversion-softwareversion SP comments CR LF"; 1.99 is the
# compatibility version of section 5.1.  Software versions that break the RFC's "no '-'"
# rule exist in the wild (JSCH-0.1.54, Cisco-1.25), so only the prefix is strict.
_SSH_ID_RE: Final = re.compile(rb"SSH-(?:2\.0|1\.99)-[\x21-\x7e]")


def ssh_banner(data: bytes) -> str | None:
    """The SSH identification line at offset 0 of `data`, sanitised, or None.

    A client must send its identification string first (servers may send other lines
    before theirs, clients may not), so only offset 0 counts.  Truncation after the
    software version and a missing CR are tolerated.  Returns the line without CR LF,
    at most 255 characters.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        return None
    head = bytes(data[: SSH_BANNER_MAX + 2])
    if _SSH_ID_RE.match(head) is None:
        return None
    line = head.split(b"\n", 1)[0]
    if line.endswith(b"\r"):
        line = line[:-1]
    return _detail(line[:SSH_BANNER_MAX], SSH_BANNER_MAX)


# bash jobs.c initialize_job_control(): sys_error("cannot set terminal process group
# (%d)") and "no job control in this shell"; dash/busybox ash jobs.c setjobctl():
# "can't access tty; job control turned off".  Printed when an interactive shell
# (`bash -i`, `sh -i`) starts with no terminal, i.e. on a socket, at the start of a line
# and after the shell's name ("bash: ", "sh: 0: ", "/bin/sh: ").
_JOB_CONTROL_RE: Final = re.compile(
    rb"(?m)^[\w./-]{1,64}: (?:\d+: )?"
    rb"(?:cannot set terminal process group \(-?\d+\)[^\r\n]{0,80}"
    rb"|no job control in this shell|can't access tty; job control turned off)"
)
# A plain-HTTP request (e.g. a log upload) may quote those lines in its body.
_HTTP_REQUEST_RE: Final = re.compile(rb"[A-Z]{3,10} [^ \r\n]{1,2048} HTTP/\d")

# Terminal escapes a prompt may carry: OSC window titles (Debian's PS1), bracketed
# paste mode (bash 5.1+ readline), colours.
_ESCAPE_RE: Final = re.compile(r"\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b\[[0-9;?]*[ -/]*[@-~]")
_PROMPT_RE: Final = re.compile(
    r"[\w.-]{1,64}@[\w.-]{1,253}:[^\n]{0,200}[#$] "  # Debian: user@host:~$
    r"|\[[\w.-]{1,64}@[\w.-]{1,253}(?: [^\]\n]{0,200})?\][#$] "  # RHEL: [root@host ~]#
    r"|(?:ba|z|k|mk|da|a)?sh-\d+(?:\.\d+)*[#$] "  # bash without PS1: bash-5.1#, sh-5.2$
    r"|(?:~|/)[^\s]{0,200} [#$] "  # busybox ash: "/ # ", "~ $ "
    r"|[\w.-]{1,64}(?:@[\w.-]{1,253})?% "  # zsh: host%
    r"|[#$] "  # sh/dash default PS1
    r"|>>> "  # python -i
)


def shell_banner_signal(data: bytes) -> Signal | None:
    """An interactive shell speaking on an outbound TCP socket (a reverse shell).

    "high" "shell.job_control" for the messages bash/dash print when started
    interactive without a terminal; "medium" "shell.prompt" when the bytes are exactly a
    shell prompt.  Kind "payload".
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        return None
    head = bytes(data[:4096])
    if _HTTP_REQUEST_RE.match(head):
        return None
    m = _JOB_CONTROL_RE.search(head)
    if m is not None:
        return _sig("payload", "shell.job_control", m.group().strip(), "high")
    if len(head) > 512:
        return None
    text = _ESCAPE_RE.sub("", head.decode("utf-8", "replace")).strip("\r\n")
    if _PROMPT_RE.fullmatch(text) is not None:
        return _sig("payload", "shell.prompt", text, "medium")
    return None
