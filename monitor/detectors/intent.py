"""Intent at exec: reverse shells read off a command line, whether or not they connect.

A reverse shell the network blocks never produces the connect and dup2 that RLG-SHL-001
needs, yet for an RL trainer the attempt is what matters.  This module reads the command
line the way the programs would:

* shell scripts (``sh -c``, ``bash -c``, ``eval``, here-documents, ``$(…)``) through the
  lexer in :mod:`monitor.detectors.shellwords`: ``/dev/tcp`` and ``/dev/udp`` redirections
  tracked per file descriptor (``exec 196<>/dev/tcp/…; sh <&196 >&196``), a shell in one
  pipeline with a network client (the ``mkfifo`` + ``nc`` and ``openssl s_client`` loops,
  telnet pairs), decoder pipelines into a shell (``echo … | base64 -d | bash``) decoded
  and read again;
* ``nc``/``ncat``/``netcat`` with ``-e``/``-c``/``--exec``/``--sh-exec`` and ``socat``
  with an ``EXEC:``/``SYSTEM:`` address beside a connecting one;
* interpreter one-liners: Python through :mod:`ast` (``__import__`` aliases, attribute
  aliases such as ``o=a("os").dup2``, string concatenation, ``exec(base64…)`` decoded);
  Perl, PHP, Ruby, Node, Lua and awk through a token reader (string literals joined,
  ``base64_decode``/``decode_base64``/``Base64.decode64`` of literals decoded);
* a renamed interpreter: code after ``-c``/``-e``/``-r`` is read as each language in turn.

What could not be decoded (a variable, a file, a computed string) is said in a low
signal, never guessed.  Everything is pure and bounded; hostile input never raises.
The engine raises :data:`RULE_SHELL_INTENT` from the result and confirms it (a follow-up
at a higher severity) when RLG-SHL-001 sees the behaviour.
"""

from __future__ import annotations

import ast
import base64
import binascii
import codecs
import posixpath
import re
import warnings
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Final

from monitor.detectors import shellwords
from monitor.detectors.signals import CONFIDENCE_RANK, Confidence, Signal, bounded

RULE_SHELL_INTENT: Final = "RLG-SHL-002"
RULES: Final = (RULE_SHELL_INTENT,)

MAX_DEPTH: Final = 4  # nested scripts / decodings followed
CODE_MAX: Final = 16 * 1024  # characters of one one-liner looked at
DECODED_MAX: Final = 64 * 1024  # bytes a decoder may produce
DETAIL_MAX: Final = 200

_WRAPPERS: Final = frozenset(
    {"exec", "nohup", "setsid", "command", "builtin", "stdbuf", "nice", "ionice", "chroot",
     "timeout", "env", "sudo", "doas", "su", "xargs", "unbuffer", "script", "busybox",
     "time", "taskset", "chrt", "runuser", "sg", "flock", "faketime", "proxychains",
     "proxychains4", "torsocks", "strace", "ltrace"}
)  # fmt: skip
# Wrapper options that take a value (timeout -s SIG, nice -n N, taskset -c LIST...).
_WRAPPER_VALUE_OPTS: Final = frozenset(
    {"-s", "--signal", "-k", "--kill-after", "-n", "--adjustment", "-u", "--user", "-g",
     "--group", "-c", "--cpu-list", "-p", "-i", "-o", "-e", "-C", "-E", "-w"}
)  # fmt: skip
_NC_NAMES: Final = frozenset({"nc", "netcat", "ncat", "nc.traditional", "nc.openbsd", "pwncat"})
# Options of nc/ncat whose value is a program to run on the connection.
_NC_EXEC_OPTS: Final = frozenset({"-e", "-c", "--exec", "--sh-exec", "--lua-exec"})
# Options of nc/ncat (openbsd, traditional, ncat) that take a value.
_NC_VALUE_OPTS: Final = frozenset(
    {"-p", "-s", "-w", "-i", "-q", "-x", "-X", "-P", "-O", "-I", "-T", "-V", "-M", "-m",
     "-W", "-g", "-G", "-o", "-d", "--proxy", "--proxy-type", "--proxy-auth", "--output",
     "--hex-dump", "--source-port", "--source", "--wait", "--idle-timeout", "--delay",
     "--max-conns", "--allow", "--deny", "--ssl-cert", "--ssl-key", "--append-output"}
)  # fmt: skip
_INTERPRETERS: Final = {
    "python": "python", "python2": "python", "python3": "python", "pypy": "python",
    "pypy3": "python", "perl": "perl", "php": "php", "ruby": "ruby", "irb": "ruby",
    "node": "node", "nodejs": "node", "deno": "node", "bun": "node", "lua": "lua",
    "luajit": "lua", "awk": "awk", "gawk": "awk", "mawk": "awk", "nawk": "awk",
    "busybox-awk": "awk",
}  # fmt: skip
# The option that takes inline code, per language (python -c, perl -e, php -r, ...).
_CODE_OPTS: Final = {
    "python": ("-c",), "perl": ("-e", "-E"), "php": ("-r",), "ruby": ("-e",),
    "node": ("-e", "--eval", "-p", "--print"), "lua": ("-e",), "awk": (),
}  # fmt: skip
_DECODERS: Final = {"base64", "base32", "xxd", "openssl", "rev", "gzip", "gunzip", "zcat"}
_CLIENTS: Final = _NC_NAMES | {"telnet", "openssl", "socat", "curl", "sshpass"}
_TCP_DEV_RE: Final = re.compile(r"/dev/(tcp|udp)/([^/\s]+)/(\w+)")
_B64_RE: Final = re.compile(r"[A-Za-z0-9+/=_\-\s]{8,}")
_PY_SHELL_CALLS: Final = frozenset(
    {"pty.spawn", "os.system", "os.popen", "subprocess.call", "subprocess.Popen",
     "subprocess.run", "subprocess.check_call", "subprocess.check_output",
     "subprocess.getoutput", "subprocess.getstatusoutput", "commands.getoutput",
     "os.execv", "os.execve", "os.execl", "os.execlp", "os.execvp", "os.execvpe",
     "os.execle", "os.spawnl", "os.spawnv", "os.spawnlp", "os.spawnvp", "os.posix_spawn",
     "os.posix_spawnp", "platform.popen"}
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Target:
    """Where a command line says it connects (as written: a host or an $EXPANSION)."""

    host: str | None
    port: str | None

    def as_dict(self) -> dict[str, str | None]:
        return {"address": self.host, "port": self.port}


@dataclass(slots=True)
class Intent:
    """What a command line means to do: the evidence, and the connect-back target."""

    signals: list[Signal] = field(default_factory=list)
    target: Target | None = None

    def best(self) -> Confidence | None:
        if not self.signals:
            return None
        top = max(CONFIDENCE_RANK[s.confidence] for s in self.signals)
        return {1: "low", 2: "medium", 3: "high"}[top]  # type: ignore[return-value]


@dataclass(slots=True)
class _Acc:
    """Evidence gathered while reading nested scripts."""

    found: list[tuple[Confidence, str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what could not be decoded
    decoded: list[str] = field(default_factory=list)  # what was
    renamed: list[str] = field(default_factory=list)  # interpreters under another name
    target: Target | None = None

    def add(self, conf: Confidence, name: str, detail: str, target: Target | None = None) -> None:
        if len(self.found) < 16:
            self.found.append((conf, name, detail))
        if target is not None and self.target is None:
            self.target = target


@lru_cache(maxsize=8192)
def _base(word: str) -> str:
    return posixpath.basename(word.rstrip("/")).lower() if word else ""


_VERSIONED: Final = re.compile(r"(python|pypy|perl|ruby|lua|php)\d?(?:\.\d+)?")


@lru_cache(maxsize=8192)
def _lang(word: str) -> str | None:
    """The interpreter language of a program name (python3.11 -> python)."""
    base = _base(word)
    got = _INTERPRETERS.get(base)
    if got is None and base[:2] in ("py", "pe", "ru", "lu", "ph"):
        m = _VERSIONED.fullmatch(base)
        got = _INTERPRETERS.get(m.group(1)) if m else None
    return got


# ---------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------


def exec_intent(argv: Sequence[str], exe: str | None, shells: Iterable[str]) -> Intent:
    """The reverse-shell intent of one exec's argv (and executable path).

    At most one ``medium`` signal comes back (the strongest reading); what else was seen,
    decoded or left undecoded follows as ``low`` context, so two readings of one command
    line never add up to more than one piece of evidence.
    """
    shell_set = frozenset(shells)
    acc = _Acc()
    args = [str(a)[:CODE_MAX] for a in list(argv)[:256]]
    if not args:
        return Intent()
    try:
        _command(args, exe, shell_set, acc, 0)
    except (RecursionError, MemoryError, ValueError):  # pragma: no cover - defensive
        acc.notes.append("command line too complex to read")
    return _result(acc)


def _result(acc: _Acc) -> Intent:
    if not acc.found:
        if acc.notes and any(n.startswith("into a shell") for n in acc.notes):
            sig = _sig("intent.undecoded", "; ".join(acc.notes), "low")
            return Intent([sig], acc.target)
        return Intent()
    ranked = sorted(acc.found, key=lambda f: -CONFIDENCE_RANK[f[0]])
    conf, name, detail = ranked[0]
    out = [_sig(name, detail, conf)]
    seen = {(name, detail)}
    for _conf, n, d in ranked[1:3]:
        if (n, d) not in seen:
            seen.add((n, d))
            out.append(_sig(n, d, "low"))
    for text in acc.decoded[:2]:
        out.append(_sig("intent.decoded", text, "low"))
    for text in acc.renamed[:1]:
        out.append(_sig("intent.renamed_interpreter", text, "low"))
    if acc.notes:
        out.append(_sig("intent.undecoded", "; ".join(acc.notes[:3]), "low"))
    return Intent(out, acc.target)


def _sig(name: str, detail: str, conf: Confidence) -> Signal:
    return Signal("argv", name, bounded(detail, DETAIL_MAX), conf)


# ---------------------------------------------------------------------------------------
# One program's argv
# ---------------------------------------------------------------------------------------


def _strip_wrappers(words: list[str]) -> list[str]:
    """`nohup setsid timeout 5 env X=1 sudo -u u prog args` -> `prog args`."""
    i, n = 0, len(words)
    while i < n:
        w = words[i]
        if "=" in w and not w.startswith("-") and re.match(r"[A-Za-z_]\w*=", w):
            i += 1  # VAR=value prefix
            continue
        base = _base(w)
        if base not in _WRAPPERS:
            break
        i += 1
        if base == "busybox":
            continue
        while i < n and words[i].startswith("-"):
            opt = words[i]
            i += 1
            if opt in _WRAPPER_VALUE_OPTS and i < n:
                i += 1
        if base == "timeout" and i < n and re.fullmatch(r"[\d.]+[smhd]?", words[i]):
            i += 1
        if base in ("nice", "ionice", "chrt", "taskset") and i < n and words[i].isdigit():
            i += 1
        if base == "flock" and i < n:
            i += 1  # the lock file
    return words[i:]


def _command(
    args: list[str], exe: str | None, shells: frozenset[str], acc: _Acc, depth: int
) -> None:
    """One program and its arguments (an exec, or a simple command of a script)."""
    if depth > MAX_DEPTH:
        acc.notes.append("nested too deep")
        return
    words = _strip_wrappers(args)
    if not words:
        return
    prog = _base(words[0])
    rest = words[1:]
    names = {prog, _base(exe or "")} - {""}
    if names & shells:
        script = _shell_code(rest)
        if script is not None:
            _shell(script, shells, acc, depth + 1)
        return
    if prog == "eval":
        _shell(" ".join(rest), shells, acc, depth + 1)
        return
    if names & _NC_NAMES:
        _nc(rest, shells, acc)
        return
    if "socat" in names:
        _socat(rest, shells, acc)
        return
    lang = _lang(words[0]) or (_lang(exe) if exe else None)
    if lang is not None:
        code = _inline_code(lang, rest)
        if code is not None:
            _code(lang, code, shells, acc, depth + 1)
        return
    # a launcher that runs another program (ip netns exec NS python3 -c, docker exec,
    # nsenter, chroot DIR sh -c): read the program it names
    if names & _LAUNCHERS:
        for i, w in enumerate(rest[:32]):
            if _base(w) in shells or _lang(w) is not None or _base(w) in _NC_NAMES | {"socat"}:
                _command(rest[i:], None, shells, acc, depth + 1)
                return
    # a renamed interpreter: inline code after -c/-e/-r, read as Python when it parses as
    # Python, else as each other language; only a full reading (medium) counts
    for i, w in enumerate(rest[:-1]):
        if w in ("-c", "-e", "-r", "-E") and _code_like(rest[i + 1]):
            guesses = ("python",) if _parses_as_python(rest[i + 1]) else _OTHER_LANGS
            for guess in guesses:
                trial = _Acc()
                _code(guess, rest[i + 1], shells, trial, depth + 1)
                if any(conf == "medium" for conf, _n, _d in trial.found):
                    acc.found.extend(trial.found)
                    acc.decoded.extend(trial.decoded)
                    acc.target = acc.target or trial.target
                    acc.renamed.append(f"{prog} runs {guess} code")
                    break
            break


def _shell_code(rest: list[str]) -> str | None:
    """The script of `sh [-opts] -c SCRIPT`, `bash -lc SCRIPT`; None when not -c."""
    for i, w in enumerate(rest):
        if w == "--":
            return None
        if w.startswith("-") and not w.startswith("--") and "c" in w[1:]:
            return rest[i + 1] if i + 1 < len(rest) else None
        if not w.startswith(("-", "+")):
            return None
    return None


def _inline_code(lang: str, rest: list[str]) -> str | None:
    opts = _CODE_OPTS[lang]
    if lang == "awk":
        # awk [-F x] [-v a=b] 'program' files...; -f file reads it from a file
        i = 0
        while i < len(rest):
            w = rest[i]
            if w in ("-f", "--file"):
                return None
            if w in ("-F", "-v", "--assign", "--field-separator"):
                i += 2
                continue
            if w.startswith("-"):
                i += 1
                continue
            return w
        return None
    parts: list[str] = []
    i = 0
    while i < len(rest):
        w = rest[i]
        if w == "--" or (not w.startswith("-") and not parts):
            break  # a script file (or stdin) runs, not inline code
        hit = next((o for o in opts if w == o or (len(o) == 2 and w.startswith(o))), None)
        if hit is not None:
            if w == hit:
                if i + 1 < len(rest):
                    parts.append(rest[i + 1])
                i += 2
            else:
                parts.append(w[len(hit) :])
                i += 1
            continue
        # a cluster ending in the code option: python -Sc CODE, perl -we CODE
        if w.startswith("-") and not w.startswith("--") and w[-1:] in "cer" and len(w) > 2:
            if "-" + w[-1] in opts and i + 1 < len(rest):
                parts.append(rest[i + 1])
                i += 2
                continue
        i += 1
    return "\n".join(parts) if parts else None


_OTHER_LANGS: Final = ("perl", "ruby", "php", "node")
# Programs whose arguments name another program to run.
_LAUNCHERS: Final = frozenset(
    {"ip", "docker", "podman", "nerdctl", "crictl", "kubectl", "oc", "nsenter", "chroot",
     "unshare", "systemd-run", "firejail", "bwrap", "runc", "ctr", "lxc-attach", "schroot",
     "proot", "fakeroot", "parallel", "watch", "ssh-agent", "dbus-run-session",
     "xvfb-run", "catchsegv", "valgrind", "perf", "gdb", "setpriv", "capsh", "numactl"}
)  # fmt: skip


def _parses_as_python(code: str) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ast.parse(code[:CODE_MAX])
    except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError):
        return False
    return True


def _code_like(text: str) -> bool:
    return len(text) > 16 and "(" in text and any(c in text for c in ";\n=")


# ---------------------------------------------------------------------------------------
# Shell scripts
# ---------------------------------------------------------------------------------------


def _dev_target(path: str) -> Target | None:
    m = _TCP_DEV_RE.fullmatch(path.strip())
    if m is None:
        return None
    return Target(m.group(2), m.group(3))


def _apply_redirs(cmd: shellwords.Command, fds: dict[int, object]) -> dict[int, object]:
    """The fd table of a command after its redirections (values: Target, "file", None)."""
    local = dict(fds)
    for r in cmd.redirs:
        target = _dev_target(r.target)
        op = r.op
        if op in ("&>", "&>>") or (op == ">&" and r.fd is None and not r.target.isdigit()):
            value: object = target if target is not None else "file"
            local[1] = value
            local[2] = value
            continue
        if op in (">&", "<&"):
            fd = r.fd if r.fd is not None else (1 if op == ">&" else 0)
            if r.target.isdigit():
                local[fd] = local.get(int(r.target), ("fd", int(r.target)))
            elif r.target == "-":
                local.pop(fd, None)
            else:
                local[fd] = target if target is not None else "file"
            continue
        if op in ("<<", "<<-", "<<<"):
            local[0] = "here"
            continue
        default = 0 if op in ("<", "<>") else 1
        fd = r.fd if r.fd is not None else default
        local[fd] = target if target is not None else "file"
    return local


def _shell(script: str, shells: frozenset[str], acc: _Acc, depth: int) -> None:
    if depth > MAX_DEPTH:
        acc.notes.append("nested too deep")
        return
    parsed = shellwords.parse(script)
    fds: dict[int, object] = {}
    # a loop fed from a socket whose commands answer on it: cat <&5 | while read l; do $l >&5
    fed_from: set[Target] = set()
    answers_to: set[Target] = set()
    for pipeline in parsed.pipelines:
        roles: list[str] = []
        for cmd in pipeline:
            local = _apply_redirs(cmd, fds)
            words = _strip_wrappers(cmd.words)
            if not words or (cmd.words and cmd.words[0] == "exec" and len(cmd.words) == 1):
                fds = {k: v for k, v in local.items() if v is not None}  # exec N<>...: persists
            for sub in cmd.subs:
                _substitution(sub, cmd, shells, acc, depth)
            if not words:
                roles.append("")
                continue
            prog = _base(words[0])
            dynamic = 0 in cmd.dynamic or words[0].startswith("$")
            stdin, stdout = local.get(0), local.get(1)
            if prog in shells or _lang(words[0]) is not None or dynamic:
                _wired_shell(words, stdin, stdout, acc, answers_to)
            if isinstance(stdin, Target) and cmd.piped:
                fed_from.add(stdin)
            role = _role(words, shells)
            roles.append(role)
            heredoc = next((r.target for r in cmd.redirs if r.op in ("<<", "<<-", "<<<")), None)
            if heredoc and (prog in shells or _lang(words[0])):
                lang = _lang(words[0])
                if lang and lang != "awk":
                    _code(lang, heredoc, shells, acc, depth + 1)
                elif prog in shells:
                    _shell(heredoc, shells, acc, depth + 1)
            _command(words, None, shells, acc, depth)
        if len(pipeline) > 1:
            _pipeline(pipeline, roles, shells, acc, depth)
    for tgt in fed_from & answers_to:
        acc.add("medium", "intent.shell_stdio_socket",
                f"commands read from /dev/tcp/{tgt.host}/{tgt.port} answer on it", tgt)  # fmt: skip


def _where(fd_value: object) -> str | None:
    """How an fd table entry reads in evidence, or None when it is not a socket."""
    if isinstance(fd_value, Target):
        return f"/dev/tcp/{fd_value.host}/{fd_value.port}"
    if isinstance(fd_value, tuple):
        return f"inherited fd {fd_value[1]}"  # <&3 inside an interpreter that opened it
    return None


def _wired_shell(
    words: list[str], stdin: object, stdout: object, acc: _Acc, answers_to: set[Target]
) -> None:
    """A shell (or a command run from a variable) with stdin and/or stdout on a socket."""
    w_in, w_out = _where(stdin), _where(stdout)
    text = " ".join(words)[:80]
    tgt = stdin if isinstance(stdin, Target) else stdout if isinstance(stdout, Target) else None
    if w_in and stdin == stdout:
        acc.add("medium", "intent.shell_stdio_socket", f"{text} with stdin/stdout on {w_in}", tgt)
    elif tgt is not None:
        if isinstance(stdout, Target) and not w_in:
            answers_to.add(stdout)
        conf: Confidence = "medium" if w_in and w_out else "low"
        acc.add(conf, "intent.shell_stdio_socket", f"{text} with stdio on {w_in or w_out}", tgt)


def _role(words: list[str], shells: frozenset[str]) -> str:
    """ "shell", "client" (connects somewhere with its stdio), "decoder", "source" or ""."""
    prog = _base(words[0])
    if prog in shells and _shell_code(words[1:]) is None:
        return "shell"
    lang = _lang(words[0])
    if lang is not None and lang != "awk" and _inline_code(lang, words[1:]) is None:
        return "shell"  # an interpreter reading its program from stdin
    if prog in _CLIENTS and client_target(prog, words[1:]) is not None:
        return "client"
    if prog in _DECODERS and _is_decoder(prog, words[1:]):
        return "decoder"
    if prog in ("echo", "printf", "cat"):
        return "source"
    return ""


def _is_decoder(prog: str, rest: list[str]) -> bool:
    if prog in ("base64", "base32"):
        return any(a in ("-d", "--decode", "-D") or (a.startswith("-") and "d" in a)
                   for a in rest)  # fmt: skip
    if prog == "xxd":
        return "-r" in rest or "-r" in "".join(rest)
    if prog == "openssl":
        return bool(rest) and rest[0] in ("base64", "enc") and "-d" in rest
    return prog in ("rev", "gunzip", "zcat") or (prog == "gzip" and "-d" in rest)


def client_target(prog: str, rest: list[str]) -> Target | None:
    """host/port a network client connects to (None for listeners and unknown shapes)."""
    if prog in _NC_NAMES:
        if any(
            a in ("-l", "--listen")
            or (a.startswith("-") and not a.startswith("--") and "l" in a[1:] and len(a) < 8)
            for a in rest
        ):
            return None  # fmt: skip
        pos = _positionals(rest, _NC_VALUE_OPTS | _NC_EXEC_OPTS)
        if len(pos) >= 2:
            return Target(pos[0], pos[1])
        if len(pos) == 1 and ":" in pos[0]:
            host, _, port = pos[0].rpartition(":")
            return Target(host, port)
        return None
    if prog == "telnet":
        pos = [a for a in rest if not a.startswith("-")]
        return Target(pos[0], pos[1] if len(pos) > 1 else "23") if pos else None
    if prog == "openssl":
        if not rest or rest[0] != "s_client":
            return None
        for i, a in enumerate(rest):
            if a == "-connect" and i + 1 < len(rest):
                host, _, port = rest[i + 1].rpartition(":")
                return Target(host or rest[i + 1], port or None)
        return None
    if prog == "socat":
        addrs = socat_addresses(rest)
        for kind, tgt, _prog in addrs:
            if kind == "connect":
                return tgt
        return None
    if prog == "curl":
        url = next((a for a in rest if a.lower().startswith("telnet://")), None)
        if url:
            hp = url[9:].split("/", 1)[0]
            host, _, port = hp.rpartition(":")
            return Target(host or hp, port or "23")
    return None


def _positionals(rest: list[str], value_opts: frozenset[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(rest):
        a = rest[i]
        if a.startswith("-") and len(a) > 1:
            if a in value_opts or (a[:2] in value_opts and len(a) == 2):
                i += 1
            elif not a.startswith("--") and a[-1:] in "ecpswiqxXPOITVMmW" and len(a) > 2:
                # a cluster ending in a value-taking letter: -nvlp 4444, -nve /bin/sh
                i += 1
        else:
            out.append(a)
        i += 1
    return out


def _pipeline(
    pipeline: list[shellwords.Command], roles: list[str], shells: frozenset[str], acc: _Acc,
    depth: int,
) -> None:  # fmt: skip
    shells_at = [i for i, r in enumerate(roles) if r == "shell"]
    clients_at = [i for i, r in enumerate(roles) if r == "client"]
    if shells_at and clients_at:
        cmd = pipeline[clients_at[0]]
        words = _strip_wrappers(cmd.words)
        tgt = client_target(_base(words[0]), words[1:])
        shell_words = " ".join(_strip_wrappers(pipeline[shells_at[0]].words))
        acc.add("medium", "intent.shell_pipe_client",
                f"{shell_words[:60]} piped with {' '.join(words)[:100]}", tgt)  # fmt: skip
    for i, role in enumerate(roles):
        if role != "decoder":
            continue
        sink = next((j for j in range(i + 1, len(roles)) if roles[j] == "shell"), None)
        if sink is None:
            continue
        sink_words = _strip_wrappers(pipeline[sink].words)
        lang = _lang(sink_words[0]) if sink_words else None
        _run_decoded(pipeline[:sink], lang, shells, acc, depth)
        break


def _run_decoded(
    chain: list[shellwords.Command], lang: str | None, shells: frozenset[str], acc: _Acc,
    depth: int,
) -> None:  # fmt: skip
    """Decode a source | decoder chain and read the result as the sink would run it."""
    text, why = _decode_chain(chain)
    if text is None:
        acc.notes.append(f"into a shell: {why}")
        return
    acc.decoded.append(text)
    if lang and lang != "awk":
        _code(lang, text, shells, acc, depth + 1)
    else:
        _shell(text, shells, acc, depth + 1)


def _decode_chain(cmds: list[shellwords.Command]) -> tuple[str | None, str]:
    """Run a source | decoder [| decoder…] chain on literal data, or say why not."""
    data: bytes | None = None
    why = "the decoded data comes from a file or a variable"
    for cmd in cmds:
        words = _strip_wrappers(cmd.words)
        if not words:
            continue
        prog = _base(words[0])
        here = next((r.target for r in cmd.redirs if r.op == "<<<"), None)
        if prog in ("echo", "printf") and data is None:
            if 1 in cmd.dynamic or any(i in cmd.dynamic for i in range(1, len(words))):
                return None, f"{prog} of an expansion ({' '.join(words[1:])[:60]})"
            vals = [w for w in words[1:] if not (w.startswith("-") and len(w) <= 3)]
            text = " ".join(vals)
            if prog == "printf":
                text = _printf_escapes(text)
            data = text.encode("utf-8", "surrogateescape")
            continue
        if here is not None and data is None:
            data = here.encode("utf-8", "surrogateescape")
        if prog in _DECODERS and _is_decoder(prog, words[1:]):
            if data is None:
                files = [w for w in words[1:] if not w.startswith("-")]
                return None, f"{prog} reads {files[0] if files else 'stdin'}"
            data = _run_decoder(prog, words[1:], data)
            if data is None:
                return None, f"{prog} input is not valid"
        elif prog == "cat" and data is None:
            files = [w for w in words[1:] if not w.startswith("-")]
            return None, f"cat {files[0] if files else 'stdin'}"
    if data is None:
        return None, why
    return data.decode("utf-8", "replace"), ""


_ESC_RE: Final = re.compile(r"\\(x[0-9a-fA-F]{1,2}|[0-7]{1,3}|.)", re.DOTALL)
_ESC_SIMPLE: Final = {"n": "\n", "t": "\t", "r": "\r", "e": "\x1b", "a": "\a", "0": "\0"}


def _printf_escapes(text: str) -> str:
    """C-style backslash escapes (printf, double-quoted strings of perl/php/ruby/node)."""

    def one(m: re.Match[str]) -> str:
        e = m.group(1)
        if e[0] == "x" and len(e) > 1:
            return chr(int(e[1:], 16))
        if e[0] in "01234567" and (len(e) > 1 or e != "0"):
            return chr(int(e, 8) & 0xFF)
        return _ESC_SIMPLE.get(e, e)

    return _ESC_RE.sub(one, text)


def _run_decoder(prog: str, rest: list[str], data: bytes) -> bytes | None:
    try:
        if prog in ("base64", "openssl"):
            clean = re.sub(rb"\s", b"", data)
            return base64.b64decode(clean + b"=" * (-len(clean) % 4), validate=False)[:DECODED_MAX]
        if prog == "base32":
            clean = re.sub(rb"\s", b"", data).upper()
            return base64.b32decode(clean + b"=" * (-len(clean) % 8))[:DECODED_MAX]
        if prog == "xxd":
            return binascii.unhexlify(re.sub(rb"[^0-9a-fA-F]", b"", data))[:DECODED_MAX]
        if prog == "rev":
            return b"\n".join(line[::-1] for line in data.split(b"\n"))
        if prog in ("gunzip", "zcat", "gzip"):
            return _inflate(data, 16 + zlib.MAX_WBITS)
    except (binascii.Error, ValueError):
        return None
    return None


def _inflate(data: bytes, wbits: int) -> bytes | None:
    try:
        d = zlib.decompressobj(wbits)
        return d.decompress(data, DECODED_MAX)
    except zlib.error:
        return None


def _substitution(
    sub: str, cmd: shellwords.Command, shells: frozenset[str], acc: _Acc, depth: int
) -> None:
    """$(…) in a command: read as a script; a decoder's output used as code is decoded."""
    inner = shellwords.parse(sub)
    words = _strip_wrappers(cmd.words)
    prog = _base(words[0]) if words else ""
    runs_output = prog in ("eval", "source", ".") or (
        prog in shells and _shell_code(words[1:]) is not None
    ) or (words and words[0].startswith("$("))  # fmt: skip
    lang = _lang(words[0]) if words else None
    if lang is not None and _inline_code(lang, words[1:]):
        runs_output = True
    for pipeline in inner.pipelines:
        roles = [_role(_strip_wrappers(c.words), shells) if c.words else "" for c in pipeline]
        if runs_output and "decoder" in roles:
            _run_decoded(pipeline, lang, shells, acc, depth)
    _shell(sub, shells, acc, depth + 1)


# ---------------------------------------------------------------------------------------
# nc / ncat / socat
# ---------------------------------------------------------------------------------------


def _is_shellish(program: str, shells: frozenset[str]) -> bool:
    words = program.replace("'", " ").replace('"', " ").split()
    if not words:
        return False
    return _base(words[0]) in shells or _lang(words[0]) is not None or words[0] in ("cmd.exe",)


def _nc(rest: list[str], shells: frozenset[str], acc: _Acc) -> None:
    program: str | None = None
    listen = False
    for i, a in enumerate(rest):
        if a in _NC_EXEC_OPTS or a.startswith(("--exec=", "--sh-exec=", "--lua-exec=")):
            program = a.partition("=")[2] or (rest[i + 1] if i + 1 < len(rest) else "")
        elif a.startswith("-") and not a.startswith("--") and len(a) > 2:
            # clusters: -nve /bin/sh, -e/bin/sh, -lvnp 4444
            if "l" in a[1:] and a[1] != "e" and a[1] != "c":
                listen = True
            if a[1] in "ec" and len(a) > 2:
                program = a[2:]
            elif a[-1] in "ec":
                program = rest[i + 1] if i + 1 < len(rest) else ""
        elif a in ("-l", "--listen"):
            listen = True
    if program is None:
        return
    tgt = None if listen else client_target("nc", rest)
    shellish = _is_shellish(program, shells)
    kind = "intent.bind_shell" if listen else "intent.nc_exec"
    where = "listening" if listen else f"to {tgt.host}:{tgt.port}" if tgt else "connecting"
    acc.add("medium" if shellish else "low", kind, f"nc runs '{program}' {where}", tgt)


_SOCAT_CONNECT: Final = frozenset(
    {"tcp", "tcp4", "tcp6", "tcp-connect", "tcp4-connect", "tcp6-connect", "openssl",
     "ssl", "openssl-connect", "udp", "udp4", "udp6", "udp-connect", "udp4-connect",
     "udp6-connect", "sctp-connect", "sctp", "proxy", "proxy-connect", "socks", "socks4",
     "socks4a", "socks5", "socks5-connect", "dccp-connect", "dtls", "openssl-dtls-client"}
)  # fmt: skip
_SOCAT_LISTEN: Final = frozenset(
    {"tcp-listen", "tcp-l", "tcp4-listen", "tcp6-listen", "openssl-listen", "ssl-l",
     "udp-listen", "udp-l", "udp4-listen", "udp6-listen", "sctp-listen", "tcp-accept",
     "udp-recv", "udp-recvfrom", "dtls-listen"}
)  # fmt: skip
_SOCAT_EXEC: Final = frozenset({"exec", "system", "shell"})
# socat options that take a value (socat(1) OPTIONS).
_SOCAT_VALUE_OPTS: Final = frozenset({"-b", "-t", "-T", "-L", "-W", "-lf", "-lp", "-d0"})


def socat_addresses(rest: list[str]) -> list[tuple[str, Target | None, str | None]]:
    """(kind, target, program) for the two socat addresses: connect/listen/exec/local."""
    out: list[tuple[str, Target | None, str | None]] = []
    i = 0
    while i < len(rest):
        a = rest[i]
        i += 1
        if a.startswith("-") and a != "-":
            if a in _SOCAT_VALUE_OPTS:
                i += 1
            continue
        out.append(_socat_address(a))
    return out[:2]


def _socat_address(addr: str) -> tuple[str, Target | None, str | None]:
    head, sep, tail = addr.partition(":")
    kind = head.split(",", 1)[0].strip().lower()
    if not sep:
        return "local", None, None
    if kind in _SOCAT_EXEC:
        program = _socat_value(tail)
        return "exec", None, program
    if kind in _SOCAT_CONNECT:
        params = _socat_value(tail)
        if kind.startswith(("proxy", "socks")):
            parts = params.split(":")
            params = ":".join(parts[-2:]) if len(parts) >= 2 else params
        host, _, port = params.rpartition(":")
        return "connect", Target(host.strip("[]") or params, port or None), None
    if kind in _SOCAT_LISTEN:
        return "listen", None, None
    return "local", None, None


def _socat_value(tail: str) -> str:
    """The address parameter before ',options', with socat's own quotes removed."""
    out: list[str] = []
    quote = ""
    for c in tail:
        if quote:
            if c == quote:
                quote = ""
            else:
                out.append(c)
        elif c in "'\"":
            quote = c
        elif c == ",":
            break
        else:
            out.append(c)
    return "".join(out)


def _socat(rest: list[str], shells: frozenset[str], acc: _Acc) -> None:
    addrs = socat_addresses(rest)
    kinds = [k for k, _t, _p in addrs]
    program = next((p for k, _t, p in addrs if k == "exec"), None)
    target = next((t for k, t, _p in addrs if k == "connect"), None)
    if program is not None and "connect" in kinds:
        conf: Confidence = "medium" if _is_shellish(program, shells) else "low"
        acc.add(conf, "intent.socat_exec",
                f"socat runs '{program}' on a connection to {target.host}:{target.port}"
                if target else f"socat runs '{program}'", target)  # fmt: skip
    elif program is not None and "listen" in kinds and _is_shellish(program, shells):
        acc.add("medium", "intent.bind_shell", f"socat serves '{program}' on a listener")


# ---------------------------------------------------------------------------------------
# Interpreter one-liners
# ---------------------------------------------------------------------------------------


def _code(lang: str, code: str, shells: frozenset[str], acc: _Acc, depth: int) -> None:
    if depth > MAX_DEPTH:
        acc.notes.append("nested too deep")
        return
    code = code[:CODE_MAX]
    if lang == "python":
        if _python(code, shells, acc, depth):
            return
    if lang == "awk":
        _awk(code, acc)
        return
    _lexical(lang, code, shells, acc, depth)


# -- Python: the real parser ---------------------------------------------------------------


@dataclass(slots=True)
class _Py:
    names: dict[str, str] = field(default_factory=dict)  # local name -> dotted meaning
    connect: Target | None = None
    connected: bool = False
    dup_std: set[int] = field(default_factory=set)
    spawn: list[str] = field(default_factory=list)
    wired: bool = False  # a spawn given the socket as stdin/stdout
    exec_codes: list[str] = field(default_factory=list)
    undecoded: list[str] = field(default_factory=list)


def _python(code: str, shells: frozenset[str], acc: _Acc, depth: int) -> bool:
    """Read Python with ast; False when it does not parse (the token reader takes over)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escapes in the agent's strings
            tree = ast.parse(code, mode="exec")
    except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError):
        return False
    st = _Py()
    try:
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    st.names[alias.asname or alias.name.split(".")[0]] = (
                        alias.name if alias.asname else alias.name.split(".")[0]
                    )
            elif isinstance(node, ast.ImportFrom) and node.module:
                for alias in node.names:
                    st.names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        # assignments in source order: aliases (a=__import__; o=a("os").dup2; f=s.fileno)
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign):
                meaning = _py_meaning(node.value, st)
                for t in node.targets:
                    if isinstance(t, ast.Name) and meaning:
                        st.names[t.id] = meaning
            elif isinstance(node, ast.NamedExpr) and isinstance(node.target, ast.Name):
                meaning = _py_meaning(node.value, st)
                if meaning:
                    st.names[node.target.id] = meaning
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                _py_call(node, st, shells)
    except RecursionError:  # pragma: no cover - deep trees
        return False
    spawns_shell = any(_is_shellish(s, shells) for s in st.spawn)
    where = f" to {st.connect.host}:{st.connect.port}" if st.connect else ""
    if st.connected and spawns_shell and ({0, 1} <= st.dup_std or st.wired):
        acc.add("medium", "intent.python",
                f"python connects{where}, puts the socket on stdio and runs "
                f"{st.spawn[0][:40]}", st.connect)  # fmt: skip
    elif st.connected and spawns_shell:
        acc.add("low", "intent.python", f"python connects{where} and runs {st.spawn[0][:40]}",
                st.connect)  # fmt: skip
    elif st.connected and {0, 1} <= st.dup_std:
        acc.add("low", "intent.python", f"python connects{where} and puts the socket on stdio",
                st.connect)  # fmt: skip
    for text in st.exec_codes[:4]:
        acc.decoded.append(text)
        _code("python", text, shells, acc, depth + 1)
    acc.notes.extend(st.undecoded[:2])
    return True


def _py_name(node: ast.AST, st: _Py) -> str | None:
    """Dotted meaning of a Name/Attribute/import call: `o` -> os.dup2, `s.connect`."""
    if isinstance(node, ast.Name):
        return st.names.get(node.id, node.id)
    if isinstance(node, ast.Attribute):
        base = _py_name(node.value, st)
        return f"{base}.{node.attr}" if base else f"?.{node.attr}"
    if isinstance(node, ast.Call):
        fn = _py_name(node.func, st)
        if fn in ("__import__", "importlib.import_module", "builtins.__import__") and node.args:
            mod = _py_fold(node.args[0], st)
            if isinstance(mod, str):
                return mod
        if fn in ("getattr",) and len(node.args) >= 2:
            base = _py_name(node.args[0], st)
            attr = _py_fold(node.args[1], st)
            if base and isinstance(attr, str):
                return f"{base}.{attr}"
        if fn and fn.endswith(("socket.socket", "socket.create_connection")):
            return "<socket>"
    return None


def _py_meaning(value: ast.AST, st: _Py) -> str | None:
    name = _py_name(value, st)
    if name and name not in ("?",):
        return name
    return None


def _py_fold(node: ast.AST, st: _Py, budget: list[int] | None = None) -> str | bytes | None:
    """Constant value of an expression: literals, +, %, join, base64/hex/zlib/rot13 decodes."""
    budget = budget if budget is not None else [64]
    budget[0] -= 1
    if budget[0] < 0:
        return None
    if isinstance(node, ast.Constant) and isinstance(node.value, (str, bytes)):
        return node.value
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        a, b = _py_fold(node.left, st, budget), _py_fold(node.right, st, budget)
        if isinstance(a, str) and isinstance(b, str):
            return (a + b)[:DECODED_MAX]
        if isinstance(a, bytes) and isinstance(b, bytes):
            return (a + b)[:DECODED_MAX]
        return None
    if isinstance(node, ast.JoinedStr):
        parts = []
        for v in node.values:
            f = _py_fold(v, st, budget)
            if not isinstance(f, str):
                return None
            parts.append(f)
        return "".join(parts)
    if isinstance(node, ast.Call):
        fn = _py_name(node.func, st) or ""
        arg = _py_fold(node.args[0], st, budget) if node.args else None
        short = fn.rsplit(".", 1)[-1]
        try:
            if short in ("b64decode", "decodebytes", "decodestring", "standard_b64decode",
                         "urlsafe_b64decode") and arg is not None:  # fmt: skip
                raw = arg.encode() if isinstance(arg, str) else arg
                raw = re.sub(rb"\s", b"", raw)
                if short == "urlsafe_b64decode":
                    raw = raw.replace(b"-", b"+").replace(b"_", b"/")
                return base64.b64decode(raw + b"=" * (-len(raw) % 4))[:DECODED_MAX]
            if short == "b32decode" and arg is not None:
                raw = arg.encode() if isinstance(arg, str) else arg
                return base64.b32decode(raw + b"=" * (-len(raw) % 8))[:DECODED_MAX]
            if short in ("unhexlify", "a2b_hex") and arg is not None:
                return binascii.unhexlify(arg)[:DECODED_MAX]
            if fn.endswith("fromhex") and isinstance(arg, str):
                return bytes.fromhex(arg)[:DECODED_MAX]
            if short in ("decompress",) and isinstance(arg, bytes):
                return _inflate(arg, zlib.MAX_WBITS | 32)
            if short == "decode" and isinstance(node.func, ast.Attribute):
                inner = _py_fold(node.func.value, st, budget)
                enc = _py_fold(node.args[0], st, budget) if node.args else "utf-8"
                if fn.startswith("codecs.") and arg is not None and len(node.args) > 1:
                    inner, enc = arg, _py_fold(node.args[1], st, budget)
                if isinstance(inner, bytes) and isinstance(enc, str) and enc in ("base64",):
                    return base64.b64decode(inner)[:DECODED_MAX]
                if isinstance(inner, bytes):
                    return inner.decode("utf-8", "replace")
                if isinstance(inner, str) and isinstance(enc, str):
                    if enc.replace("_", "") in ("rot13", "rot-13"):
                        return codecs.decode(inner, "rot13")
                    if enc in ("base64",):
                        return base64.b64decode(inner)[:DECODED_MAX].decode("utf-8", "replace")
                    if enc == "hex":
                        return bytes.fromhex(inner).decode("utf-8", "replace")
            if short == "encode" and isinstance(node.func, ast.Attribute):
                inner = _py_fold(node.func.value, st, budget)
                if isinstance(inner, str):
                    return inner.encode("utf-8", "surrogateescape")
            if short == "join" and isinstance(node.func, ast.Attribute) and node.args:
                sep = _py_fold(node.func.value, st, budget)
                seq = node.args[0]
                if isinstance(sep, str) and isinstance(seq, (ast.List, ast.Tuple)):
                    items = [_py_fold(e, st, budget) for e in seq.elts]
                    if all(isinstance(x, str) for x in items):
                        return sep.join(items)  # type: ignore[arg-type]
            if short == "bytes" and node.args and isinstance(node.args[0], (ast.List, ast.Tuple)):
                vals = [e.value for e in node.args[0].elts if isinstance(e, ast.Constant)]
                if all(isinstance(v, int) and 0 <= v < 256 for v in vals):
                    return bytes(vals)  # type: ignore[arg-type]
        except (binascii.Error, ValueError, TypeError, UnicodeError, zlib.error):
            return None
    return None


def _py_const(node: ast.AST, st: _Py) -> str | None:
    """A host/port as written: a literal, int("…"), os.getenv("X") -> $X."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (str, int)):
        return str(node.value)
    if isinstance(node, ast.Call):
        fn = _py_name(node.func, st) or ""
        if fn in ("int", "str") and node.args:
            return _py_const(node.args[0], st)
        if fn.endswith(("getenv", "environ.get")) and node.args:
            v = _py_fold(node.args[0], st)
            return f"${v}" if isinstance(v, str) else "$?"
    if isinstance(node, ast.Subscript):
        base = _py_name(node.value, st) or ""
        if base.endswith("environ"):
            v = _py_fold(node.slice, st)
            return f"${v}" if isinstance(v, str) else "$?"
    folded = _py_fold(node, st)
    return folded if isinstance(folded, str) else None


def _py_call(node: ast.Call, st: _Py, shells: frozenset[str]) -> None:
    fn = _py_name(node.func, st) or ""
    short = fn.rsplit(".", 1)[-1]
    if short in ("connect", "connect_ex", "create_connection") and node.args:
        addr = node.args[0]
        if isinstance(addr, ast.Tuple) and len(addr.elts) >= 2:
            st.connected = True
            st.connect = st.connect or Target(
                _py_const(addr.elts[0], st), _py_const(addr.elts[1], st)
            )
        elif short == "create_connection" or fn.startswith("<socket>"):
            st.connected = True
        return
    if fn.endswith("dup2") and len(node.args) >= 2:
        second = node.args[1]
        if isinstance(second, ast.Constant) and isinstance(second.value, int):
            st.dup_std.add(second.value)
        elif isinstance(second, ast.Name):
            st.dup_std.update({0, 1, 2})  # [os.dup2(s.fileno(), fd) for fd in (0,1,2)]
        return
    if fn in _PY_SHELL_CALLS or short in ("spawn", "call", "Popen", "system", "popen"):
        cmd = node.args[0] if node.args else None
        text = _py_fold(cmd, st) if cmd is not None else None
        if isinstance(cmd, (ast.List, ast.Tuple)) and cmd.elts:
            first = _py_fold(cmd.elts[0], st)
            text = " ".join(str(_py_fold(e, st) or "?") for e in cmd.elts) if first else None
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        if isinstance(text, str):
            st.spawn.append(text)
        for kw in node.keywords:
            if kw.arg in ("stdin", "stdout") and kw.value is not None:
                src = ast.unparse(kw.value) if hasattr(ast, "unparse") else ""
                if "fileno" in src or "sock" in src.lower() or isinstance(kw.value, ast.Call):
                    st.wired = True
        return
    if fn in ("exec", "eval", "compile", "builtins.exec", "builtins.eval") and node.args:
        value = _py_fold(node.args[0], st)
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        if isinstance(value, str):
            if len(st.exec_codes) < 4:
                st.exec_codes.append(value)
        elif len(st.undecoded) < 2:
            st.undecoded.append("python exec of a computed value")


# -- other languages: a token reader ------------------------------------------------------

_TOKEN_RE: Final = re.compile(
    r"""(?P<str>"(?:[^"\\]|\\.)*"?|'(?:[^'\\]|\\.)*'?)"""
    r"""|(?P<cmd>`[^`]*`?)"""
    r"""|(?P<id>[$@%]?[A-Za-z_][\w]*(?:(?:::|\.|->|:)[A-Za-z_]\w*)*)"""
    r"""|(?P<num>\d+)"""
    r"""|(?P<op>\.\.|[.+,()\[\]{};=<>&|])""",
    re.DOTALL,
)
_CONNECT_IDS: Final = {
    "perl": ("socket", "connect", "IO::Socket::INET", "IO::Socket::IP", "IO::Socket::SSL"),
    "php": ("fsockopen", "pfsockopen", "stream_socket_client", "socket_connect"),
    "ruby": ("TCPSocket.open", "TCPSocket.new", "Socket.tcp", "TCPSocket", "UDPSocket",
             "OpenSSL::SSL::SSLSocket"),
    "node": ("net.connect", "net.createConnection", "net.Socket", "connect", "tls.connect",
             "createConnection"),
    "lua": ("socket.tcp", "socket.connect", "t:connect", "connect"),
}  # fmt: skip
_EXEC_IDS: Final = {
    # open(F, "|cmd") runs a program, but open(STDIN, ">&S") only wires fds: not listed
    "perl": ("exec", "system", "qx", "fdopen", "STDIN->fdopen"),
    "php": ("exec", "shell_exec", "system", "passthru", "popen", "proc_open", "pcntl_exec"),
    "ruby": ("exec", "system", "spawn", "IO.popen", "Open3.popen3", "Process.spawn",
             "PTY.spawn", "popen"),
    "node": ("spawn", "exec", "execSync", "execFile", "child_process.spawn",
             "child_process.exec", "fork"),
    "lua": ("os.execute", "io.popen"),
}  # fmt: skip
_DECODE_IDS: Final = frozenset(
    {"base64_decode", "decode_base64", "MIME::Base64::decode", "Base64.decode64",
     "Base64.strict_decode64", "Base64.urlsafe_decode64", "atob", "unpack", "unpack1",
     "hex2bin", "pack", "str_rot13", "gzinflate", "gzuncompress", "gzdecode"}
)  # fmt: skip


def _unquote(tok: str) -> str:
    body = tok[1:-1] if len(tok) >= 2 and tok[-1] == tok[0] else tok[1:]
    if tok[0] == '"':
        return _printf_escapes(body)
    return body.replace("\\'", "'").replace("\\\\", "\\")


def _tokens(code: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for m in _TOKEN_RE.finditer(code[:CODE_MAX]):
        kind = m.lastgroup or "op"
        text = m.group()
        if kind == "str":
            out.append(("str", _unquote(text)))
        elif kind == "cmd":
            out.append(("cmd", text.strip("`")))
        else:
            out.append((kind, text))
        if len(out) > 4096:
            break
    # string concatenation: "a"."b" (perl, php), "a"+"b" (ruby, node), "a".."b" (lua)
    folded: list[tuple[str, str]] = []
    for tok in out:
        if (
            tok[0] == "str"
            and len(folded) >= 2
            and folded[-1][0] == "op"
            and folded[-1][1] in (".", "+", "..")
            and folded[-2][0] == "str"
        ):
            folded.pop()
            prev = folded.pop()
            folded.append(("str", prev[1] + tok[1]))
        else:
            folded.append(tok)
    return folded


def _lexical(lang: str, code: str, shells: frozenset[str], acc: _Acc, depth: int) -> None:
    toks = _tokens(code)
    ids = [t for k, t in toks if k == "id"]
    idset = set(ids) | {i.lstrip("$@%") for i in ids}
    idset |= {re.split(r"\.|::|->|:", i)[-1] for i in idset}  # cp.spawn -> spawn
    connects = [c for c in _CONNECT_IDS.get(lang, ()) if c in idset]
    strings = [t for k, t in toks if k == "str"]
    cmds = [t for k, t in toks if k == "cmd"]
    execs = [e for e in _EXEC_IDS.get(lang, ()) if e in idset] + (["`…`"] if cmds else [])
    # ruby -rsocket: TCPSocket.open appears as one dotted id
    shell_strings = [s for s in strings + cmds if _is_shellish(s, shells)]
    wired = any(re.search(r"[<>]&\s*(%d|\d|\$\w+|#\{\w+\})", s) for s in shell_strings) or any(
        s in (">&S", ">&", "<&") or s.startswith((">&", "<&")) for s in strings
    ) or "fdopen" in " ".join(ids) or "proc_open" in idset  # fmt: skip
    host, port = _literal_target(strings, [t for k, t in toks if k == "num"])
    target = Target(host, port) if host or port else None
    where = f" to {host}:{port}" if host or port else ""
    dynamic_exec = lang == "ruby" and "IO.popen" in idset or (
        lang == "perl" and "system" in idset and "while" in idset
    )  # fmt: skip
    if connects and (shell_strings or dynamic_exec) and execs:
        conf: Confidence = "medium" if wired or dynamic_exec or shell_strings else "low"
        what = shell_strings[0][:40] if shell_strings else "received lines"
        acc.add(conf, f"intent.{lang}",
                f"{lang} {connects[0]}{where} then {execs[0]} {what}", target)  # fmt: skip
    elif connects and execs:
        acc.add("low", f"intent.{lang}", f"{lang} {connects[0]}{where} then {execs[0]}", target)
    # decode calls on literals: decode and read again; on anything else: say so
    for i, (kind, text) in enumerate(toks):
        if kind != "id" or text.rsplit(".", 1)[-1].rsplit("::", 1)[-1] not in _DECODE_IDS | {
            t.rsplit(".", 1)[-1] for t in _DECODE_IDS
        }:
            continue
        lit = next((t for k, t in toks[i + 1 : i + 4] if k == "str"), None)
        if lit is None:
            acc.notes.append(f"{lang} {text}() of a computed value")
            continue
        decoded = _b64_text(lit)
        if decoded is None:
            continue
        acc.decoded.append(decoded)
        _code(lang, decoded, shells, acc, depth + 1)
    # shell strings with their own wiring (php exec("/bin/sh -i <&3 >&3"))
    for s in shell_strings[:2]:
        if re.search(r"/dev/(tcp|udp)/", s):
            _shell(s, shells, acc, depth + 1)


def _b64_text(lit: str) -> str | None:
    clean = re.sub(r"\s", "", lit)
    if len(clean) < 8 or not re.fullmatch(r"[A-Za-z0-9+/=_-]+", clean):
        return None
    try:
        raw = base64.b64decode(clean + "=" * (-len(clean) % 4), altchars=b"-_"
                               if "-" in clean or "_" in clean else None)  # fmt: skip
    except (binascii.Error, ValueError):
        return None
    text = raw[:DECODED_MAX].decode("utf-8", "replace")
    printable = sum(1 for c in text if c.isprintable() or c in "\n\t")
    return text if text and printable >= 0.9 * len(text) else None


_HOST_RE: Final = re.compile(
    r"(?:\d{1,3}(?:\.\d{1,3}){3}|\[?[0-9a-fA-F:]*:[0-9a-fA-F:]+\]?|[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)"
    r"(?::(\d{1,5}))?"
)


def _literal_target(strings: list[str], nums: list[str]) -> tuple[str | None, str | None]:
    """The first host-looking literal (with :port) and a port-looking number."""
    host = port = None
    for s in strings:
        m = _HOST_RE.fullmatch(s.strip())
        if m and not s.startswith("/"):
            host = s.strip()
            if m.group(1):
                host, port = host.rsplit(":", 1)
            break
        inet = re.search(r"/inet\d?/tcp/\d+/([^/]+)/(\d+)", s)
        if inet:
            return inet.group(1), inet.group(2)
    if port is None:
        port = next((n for n in nums if 0 < int(n) < 65536 and int(n) > 20), None)
        if port is None:
            port = next((s for s in strings if s.isdigit() and 0 < int(s) < 65536), None)
    return host, port


def _awk(code: str, acc: _Acc) -> None:
    """gawk's /inet/tcp special files with a |& coprocess: the awk reverse shell."""
    m = re.search(r"/inet[46]?/(tcp|udp)/\d+/([^/\"\s]+)/(\d+)", code)
    if m is None:
        return
    tgt = Target(m.group(2), m.group(3))
    conf: Confidence = "medium" if "|&" in code and "getline" in code else "low"
    acc.add(conf, "intent.awk", f"gawk {m.group(0)} coprocess", tgt)
