"""The ``rlguard tail`` terminal viewer (Textual)."""

from __future__ import annotations

from monitor.tui.app import TailApp, rlguard_tail

__all__ = ["TailApp", "rlguard_tail"]
