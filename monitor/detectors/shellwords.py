"""A bounded lexer for shell command strings (`sh -c`, `bash -c`, ProxyCommand, `eval`).

Not a shell: it splits a script the way bash would into pipelines of simple commands, with
quote removal (``'…'``, ``"…"``, ``$'…'`` ANSI-C escapes, backslashes), redirections
(``>&``, ``<>``, ``0<&196``, ``&>``, ``<<<``, here-documents) and the text of command
substitutions (``$(…)``, backquotes), so the intent detectors can reason about what each
command does with its file descriptors.  Parameter expansion is not performed: a word that
still holds ``$NAME`` is marked dynamic.  Pure, no I/O, never raises on hostile input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final

SCRIPT_MAX: Final = 16 * 1024  # characters of one script looked at
MAX_COMMANDS: Final = 256  # simple commands kept per script

# Words that open or close compound commands: dropped, and they start a new command.
RESERVED: Final = frozenset(
    {"if", "then", "else", "elif", "fi", "do", "done", "while", "until", "for", "in",
     "case", "esac", "{", "}", "!", "function", "select", "time", "[[", "]]"}
)  # fmt: skip
_OPERATORS: Final = ("&&", "||", ";;", "|&", "|", ";", "&", "\n", "(", ")")
_OPERATOR_RE: Final = re.compile("|".join(re.escape(o) for o in _OPERATORS))
# Characters with no special meaning in a word outside quotes.
_PLAIN: Final = re.compile(r"[^ \t\r\n;&|()<>\\'\"$`]+")
_REDIR_OPS: Final = ("&>>", "&>", "<<<", "<<-", "<<", "<>", ">>", ">&", "<&", ">|", ">", "<")
_ANSI_SIMPLE: Final = {
    "n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b", "e": "\x1b", "E": "\x1b",
    "f": "\f", "v": "\v", "\\": "\\", "'": "'", '"': '"', "?": "?",
}  # fmt: skip


@dataclass(slots=True)
class Redir:
    """One redirection: ``fd`` (None = the operator's default), operator, target word."""

    fd: int | None
    op: str
    target: str


@dataclass(slots=True)
class Command:
    """A simple command: its words after quote removal, redirections, substitutions."""

    words: list[str] = field(default_factory=list)
    redirs: list[Redir] = field(default_factory=list)
    # command substitutions found in the words, as scripts
    subs: list[str] = field(default_factory=list)
    # indexes of words that still contain an unquoted or double-quoted $ expansion
    dynamic: set[int] = field(default_factory=set)
    piped: bool = False  # stdout goes to the next command of the pipeline


@dataclass(slots=True)
class Script:
    """Pipelines of simple commands, in order; `truncated` when limits cut the input."""

    pipelines: list[list[Command]]
    truncated: bool = False


class _Lexer:
    def __init__(self, text: str) -> None:
        self.s = text[:SCRIPT_MAX]
        self.truncated = len(text) > SCRIPT_MAX
        self.i = 0
        self.pending_heredocs: list[tuple[Redir, str, bool]] = []

    # -- helpers ---------------------------------------------------------------------

    def _peek(self, k: int = 0) -> str:
        j = self.i + k
        return self.s[j] if j < len(self.s) else ""

    def _balanced(self, open_: str, close: str) -> str:
        """Text up to the matching close (self.i just past the opener); quotes respected."""
        depth, start, n = 1, self.i, len(self.s)
        quote = ""
        while self.i < n:
            c = self.s[self.i]
            if quote:
                if c == "\\" and quote == '"':
                    self.i += 1
                elif c == quote:
                    quote = ""
            elif c in "'\"":
                quote = c
            elif c == "\\":
                self.i += 1
            elif c == open_:
                depth += 1
            elif c == close:
                depth -= 1
                if depth == 0:
                    out = self.s[start : self.i]
                    self.i += 1
                    return out
            self.i += 1
        return self.s[start:]

    def _ansi_c(self) -> str:
        """The body of $'…' (self.i just past the opening quote)."""
        out: list[str] = []
        s, n = self.s, len(self.s)
        while self.i < n:
            c = s[self.i]
            if c == "'":
                self.i += 1
                break
            if c == "\\" and self.i + 1 < n:
                e = s[self.i + 1]
                self.i += 2
                if e in _ANSI_SIMPLE:
                    out.append(_ANSI_SIMPLE[e])
                elif e == "x":
                    digits = _take(s, self.i, "0123456789abcdefABCDEF", 2)
                    self.i += len(digits)
                    out.append(chr(int(digits, 16)) if digits else "\\x")
                elif e in "uU":
                    digits = _take(s, self.i, "0123456789abcdefABCDEF", 4 if e == "u" else 8)
                    self.i += len(digits)
                    code = int(digits, 16) if digits else 0
                    out.append(chr(code) if 0 < code < 0x110000 else "")
                elif e in "01234567":
                    digits = e + _take(s, self.i, "01234567", 2)
                    self.i += len(digits) - 1
                    out.append(chr(int(digits, 8) & 0xFF))
                elif e == "c" and self.i < n:
                    out.append(chr(ord(s[self.i]) & 0x1F))
                    self.i += 1
                else:
                    out.append("\\" + e)
                continue
            out.append(c)
            self.i += 1
        return "".join(out)

    # -- words -----------------------------------------------------------------------

    def word(self, cmd: Command) -> str:
        """One word from self.i, quotes removed; substitutions recorded on `cmd`."""
        out: list[str] = []
        s, n = self.s, len(self.s)
        dynamic = False
        while self.i < n:
            plain = _PLAIN.match(s, self.i)
            if plain is not None:  # a run of ordinary characters at once
                out.append(plain.group())
                self.i = plain.end()
                continue
            c = s[self.i]
            if c in " \t\r\n;&|()<>":
                break
            if c == "\\":
                if self.i + 1 < n and s[self.i + 1] != "\n":
                    out.append(s[self.i + 1])
                self.i += 2
            elif c == "'":
                end = s.find("'", self.i + 1)
                end = n if end < 0 else end
                out.append(s[self.i + 1 : end])
                self.i = end + 1
            elif c == '"':
                self.i += 1
                dynamic |= self._double(out, cmd)
            elif c == "$" and self._peek(1) == "'":
                self.i += 2
                out.append(self._ansi_c())
            elif c in "$`" and self._substitution(out, cmd):
                dynamic = True
            else:  # a lone "$" (an expansion) or "`" without its pair
                dynamic = dynamic or c == "$"
                out.append(c)
                self.i += 1
        text = "".join(out)
        if dynamic:
            cmd.dynamic.add(len(cmd.words))
        return text

    def _substitution(self, out: list[str], cmd: Command) -> bool:
        """$(…) or `…` at self.i: recorded on `cmd`, kept verbatim in the word."""
        s, n = self.s, len(self.s)
        if s.startswith("$(", self.i) and self._peek(2) != "(":
            self.i += 2
            sub = self._balanced("(", ")")
        elif s.startswith("`", self.i):
            end = s.find("`", self.i + 1)
            end = n if end < 0 else end
            sub = s[self.i + 1 : end]
            self.i = end + 1
        else:
            return False
        cmd.subs.append(sub)
        out.append(f"$({sub})")
        return True

    def _double(self, out: list[str], cmd: Command) -> bool:
        s, n = self.s, len(self.s)
        dynamic = False
        while self.i < n:
            c = s[self.i]
            if c == '"':
                self.i += 1
                break
            if c == "\\" and self.i + 1 < n and s[self.i + 1] in '$`"\\\n':
                if s[self.i + 1] != "\n":
                    out.append(s[self.i + 1])
                self.i += 2
                continue
            if c in "$`" and self._substitution(out, cmd):
                dynamic = True
                continue
            if c == "$":
                dynamic = True
            out.append(c)
            self.i += 1
        return dynamic

    # -- the script ------------------------------------------------------------------

    def _redir_op(self) -> str | None:
        for op in _REDIR_OPS:
            if self.s.startswith(op, self.i):
                return op
        return None

    def _heredocs(self) -> None:
        """After a newline: read pending here-document bodies."""
        for redir, delim, strip in self.pending_heredocs:
            lines: list[str] = []
            while self.i < len(self.s):
                end = self.s.find("\n", self.i)
                end = len(self.s) if end < 0 else end
                line = self.s[self.i : end]
                self.i = end + 1
                if (line.lstrip("\t") if strip else line) == delim:
                    break
                lines.append(line.lstrip("\t") if strip else line)
            redir.target = "\n".join(lines)
        self.pending_heredocs.clear()

    def run(self) -> Script:
        pipelines: list[list[Command]] = []
        pipeline: list[Command] = []
        cmd = Command()
        count = 0
        s, n = self.s, len(self.s)

        def finish(piped: bool) -> None:
            nonlocal cmd, pipeline, count
            if cmd.words or cmd.redirs or cmd.subs:
                cmd.piped = piped
                pipeline.append(cmd)
                count += 1
            cmd = Command()
            if not piped and pipeline:
                pipelines.append(pipeline)
                pipeline = []

        while self.i < n and count < MAX_COMMANDS:
            c = s[self.i]
            if c in " \t\r":
                self.i += 1
                continue
            if c == "\\" and self._peek(1) == "\n":
                self.i += 2
                continue
            if c == "#" and not cmd.words:
                end = s.find("\n", self.i)
                self.i = n if end < 0 else end
                continue
            # "N>" / "N<": a file descriptor number glued to a redirection operator
            fd: int | None = None
            if c.isdigit():
                j = self.i
                while j < n and s[j].isdigit() and j - self.i < 4:
                    j += 1
                if j < n and s[j] in "<>":
                    fd = int(s[self.i : j])
                    self.i = j
                    c = s[self.i]
            op = self._redir_op() if c in "<>" or (c == "&" and self._peek(1) == ">") else None
            if op is not None:
                self.i += len(op)
                while self.i < n and s[self.i] in " \t":
                    self.i += 1
                if op in ("<<", "<<-"):
                    delim = self.word(cmd)
                    redir = Redir(fd, op, "")
                    self.pending_heredocs.append((redir, delim, op == "<<-"))
                    cmd.redirs.append(redir)
                    continue
                target = self.word(cmd)
                cmd.redirs.append(Redir(fd, op, target))
                continue
            m = _OPERATOR_RE.match(s, self.i) if c in "&|;()\n" else None
            matched = m.group() if m is not None else None
            if matched is not None:
                self.i += len(matched)
                if matched in ("|", "|&"):
                    if matched == "|&":
                        cmd.redirs.append(Redir(2, ">&", "1"))
                    finish(True)
                else:
                    finish(False)
                if matched == "\n" and self.pending_heredocs:
                    self._heredocs()
                continue
            w = self.word(cmd)
            if not cmd.words and w in RESERVED and cmd.dynamic.isdisjoint({0}):
                finish(False)
                continue
            cmd.words.append(w)
        finish(False)
        if self.pending_heredocs:
            self._heredocs()
        return Script(pipelines, self.truncated or count >= MAX_COMMANDS)


def _take(s: str, i: int, alphabet: str, limit: int) -> str:
    j = i
    while j < len(s) and j - i < limit and s[j] in alphabet:
        j += 1
    return s[i:j]


def parse(text: str) -> Script:
    """Pipelines of simple commands of a shell script; never raises."""
    if not isinstance(text, str):
        return Script([])
    try:
        return _Lexer(text).run()
    except (RecursionError, ValueError, IndexError):  # pragma: no cover - defensive
        return Script([], truncated=True)
