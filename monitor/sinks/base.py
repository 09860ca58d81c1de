"""What every output is: the sink port the collector writes through.

A sink takes documents (``write``) or, from the fan-out that serialises each document once
for all of them, the finished line with its document (``write_line``); it reports what it
delivered, lost and still holds, so the ``stats`` line and /metrics can name the output
that is losing lines.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

Doc = dict[str, Any]


@runtime_checkable
class Sink(Protocol):
    def write(self, doc: Doc) -> None: ...

    def flush(self) -> Any: ...

    def close(self) -> None: ...


@runtime_checkable
class LineSink(Sink, Protocol):
    """A sink that takes a line the fan-out already serialised (NDJSON, one line)."""

    def write_line(self, line: bytes, doc: Doc) -> None: ...


@runtime_checkable
class Reopenable(Protocol):
    """A sink that reopens its file or retries its peer on SIGHUP (signal-safe)."""

    def reopen(self) -> None: ...


def sink_name(sink: object) -> str:
    """The name an output goes by in stats and /metrics: its ``name``, else its class."""
    return str(getattr(sink, "name", "") or type(sink).__name__.lower())
