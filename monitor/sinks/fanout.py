"""One sink that writes every document to several sinks, each on its own.

A failing sink never stops the others: every call goes to every sink, and an
exception from one is caught, counted and reported under that sink's name.  The
counters are dicts keyed by sink name, so the collector's ``stats`` line shows each
output separately (``{"file": 1200, "siem": 1187}``) instead of one sum that would
hide which output is losing lines.

Sink names come from each sink's ``name`` attribute (NdjsonSink: "file" or "stdout",
SiemSink: "siem"), else the class name; a repeated name gets "-2", "-3"...

Each document is serialised once here, and the line goes to every sink that takes lines
(``write_line``): one ``orjson.dumps`` per line, however many outputs there are.
"""

from __future__ import annotations

from typing import Any

import orjson

from monitor.sinks.base import LineSink, Reopenable, Sink, sink_name


class FanoutSink:
    """Writes to every sink in ``sinks``; the interface of a single sink."""

    def __init__(self, *sinks: Sink) -> None:
        if not sinks:
            raise ValueError("FanoutSink needs at least one sink")
        self.sinks: dict[str, Any] = {}
        for sink in sinks:
            base = sink_name(sink)
            name, n = base, 1
            while name in self.sinks:
                n += 1
                name = f"{base}-{n}"
            self.sinks[name] = sink
        self.failures: dict[str, int] = dict.fromkeys(self.sinks, 0)
        self._refused: dict[str, int] = dict.fromkeys(self.sinks, 0)  # writes that raised
        self._errors: dict[str, str] = {}
        self._line_sinks = {n: isinstance(k, LineSink) for n, k in self.sinks.items()}

    def _call(self, name: str, sink: Any, method: str, *args: Any) -> Any:
        try:
            result = getattr(sink, method)(*args)
        except Exception as exc:  # one broken output must not take the others down
            self.failures[name] += 1
            if method.startswith("write"):
                self._refused[name] += 1  # that sink never got the line: it is lost
            self._errors[name] = f"{method}: {type(exc).__name__}: {exc}"[:300]
            return None
        if not method.startswith("write"):
            self._errors.pop(name, None)  # a good flush/reopen clears an old failure
        return result

    def write(self, doc: dict[str, Any]) -> None:
        """Serialise ``doc`` once and give the line to every sink."""
        line = orjson.dumps(doc, option=orjson.OPT_APPEND_NEWLINE)
        for name, sink in self.sinks.items():
            if self._line_sinks[name]:
                self._call(name, sink, "write_line", line, doc)
            else:
                self._call(name, sink, "write", doc)

    def flush(self) -> bool:
        """Flush every sink; True only if all of them took everything."""
        ok = True
        for name, sink in self.sinks.items():
            ok = self._call(name, sink, "flush") is True and ok
        return ok

    def reopen(self) -> None:
        """Reopen every sink (SIGHUP): only flags and file reopens, signal-safe."""
        for name, sink in self.sinks.items():
            if isinstance(sink, Reopenable):
                self._call(name, sink, "reopen")

    def close(self) -> None:
        """Close every sink, even when one of them fails to."""
        for name, sink in self.sinks.items():
            self._call(name, sink, "close")

    def _per_sink(self, attr: str) -> dict[str, Any]:
        return {name: getattr(sink, attr, None) for name, sink in self.sinks.items()}

    @property
    def lines_written(self) -> dict[str, Any]:
        """Lines each sink delivered, by sink name."""
        return self._per_sink("lines_written")

    @property
    def lines_lost(self) -> dict[str, Any]:
        """Lines each sink lost, by sink name (a write that raised counts as lost)."""
        out = self._per_sink("lines_lost")
        for name, refused in self._refused.items():
            if refused:
                out[name] = (out[name] or 0) + refused
        return out

    @property
    def pending(self) -> dict[str, Any]:
        """Lines each sink still holds, by sink name."""
        return self._per_sink("pending")

    @property
    def last_error(self) -> dict[str, str] | None:
        """The current problem of each sink that has one, or None when all are fine."""
        errors = {
            name: str(err)
            for name, sink in self.sinks.items()
            if (err := self._errors.get(name) or getattr(sink, "last_error", None))
        }
        return errors or None

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per-sink counters for the metrics endpoint (its optional ``sinks`` entry)."""
        out: dict[str, dict[str, Any]] = {}
        for name, sink in self.sinks.items():
            entry = {
                attr: getattr(sink, attr, None)
                for attr in ("lines_written", "pending", "last_error")
            }
            entry["lines_lost"] = self.lines_lost[name]
            if name in self._errors:
                entry["last_error"] = self._errors[name]
            for extra in ("connected", "spool_bytes"):
                if hasattr(sink, extra):
                    entry[extra] = getattr(sink, extra)
            entry["failures"] = self.failures[name]
            out[name] = entry
        return out
