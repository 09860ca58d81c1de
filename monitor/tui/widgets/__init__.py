"""Widgets of the ``rlguard tail`` viewer, one per module."""
