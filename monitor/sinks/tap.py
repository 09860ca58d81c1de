"""A sink wrapper that shows every written line to observers (the ledger, the GPU table)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Observer = Callable[[dict[str, Any]], None]


class TapSink:
    """Every line goes to ``inner`` as before, then to each observer, in order.

    Counters and anything else the collector reads (lines_written, pending, last_error…)
    are the inner sink's.
    """

    def __init__(self, inner: Any, *observers: Observer) -> None:
        self.inner = inner
        self.observers = observers

    def write(self, doc: dict[str, Any]) -> None:
        try:
            self.inner.write(doc)
        finally:
            for observe in self.observers:
                observe(doc)

    def flush(self) -> Any:
        return self.inner.flush()

    def reopen(self) -> None:
        if hasattr(self.inner, "reopen"):
            self.inner.reopen()

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
